//! Finds where an ELF file another process maps defines the OTEP 4947 TLS variable
//! `otel_thread_ctx_v1`, and the dynamic relocations that name it (which, once the process's
//! dynamic linker has applied them, say where each thread's copy is), reading at most
//! [`READ_BUDGET`] bytes of the file with `pread` into buffers of our own. Never `mmap`: the
//! owner can truncate the file under us, and a mapped read past the new end is SIGBUS. Every
//! size and offset the file states is a claim, checked against the file's length before a byte
//! is allocated for it; a read that comes back short (the file shrank) means "not defined".
//!
//! x86-64 only: the relocation types and the TLS layout (variant II) are that architecture's.

use std::{fs::File, io, mem::size_of, os::unix::fs::FileExt};

use object::{
    elf,
    pod::{bytes_of_slice_mut, slice_from_all_bytes, Pod},
    read::elf::{FileHeader, ProgramHeader, Rela, SectionHeader, Sym},
    Endianness, FileKind,
};
use otel_sendmmsg_common::thread_context::SYMBOL;

/// The most read from one file: its headers, then its symbol tables and their strings, then its
/// dynamic relocations. A large binary's `.symtab` with its strings is tens of MiB (hundreds of
/// thousands of symbols); a file that needs more is looked at only through what fits
/// (`.dynsym`, read first, is small). A fixed cost per file, and the scan reads one file at a time.
pub const READ_BUDGET: u64 = 64 << 20;
/// Relocations naming the variable kept from one file: a library accesses it from a handful of
/// places, and any one of them locates it.
const MAX_RELOCATIONS: usize = 16;
/// Program headers read from one file: real files have about a dozen.
const MAX_PROGRAM_HEADERS: u64 = 256;

/// Something to read an ELF file from at offsets: the file itself, or bytes (tests, fuzzing).
pub trait ReadAt {
    /// The length the reads are checked against (for a file, from `fstat` when it was opened).
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`, or fails: a short read is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let bytes = start.checked_add(buf.len()).and_then(|end| self.get(start..end));
        buf.copy_from_slice(bytes.ok_or(io::ErrorKind::UnexpectedEof)?);
        Ok(())
    }
}

/// A file, with the length `fstat` gave when it was checked.
pub struct SizedFile<'a> {
    pub file: &'a File,
    pub len: u64,
}

impl ReadAt for SizedFile<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self.file, buf, offset)
    }
}

/// What a file says of `otel_thread_ctx_v1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Defined {
    /// Not defined here (or not readable as an x86-64 ELF file within the budget).
    No,
    /// Defined, but not as a TLS variable: not the standard's, never read.
    NotTls,
    Tls(TlsVariable),
}

/// The variable as the file defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsVariable {
    /// `st_value`: its offset in the module's TLS block.
    pub offset: u64,
    /// Exported in `.dynsym`, as the OTEP requires; `false`: found in `.symtab` only, which is
    /// enough for an executable's local-exec access (and what the eBPF profiler falls back to).
    pub exported: bool,
    /// The module's `PT_TLS` segment (`p_memsz`, `p_align`), for local-exec in an executable.
    pub tls_segment: Option<(u64, u64)>,
    /// `PT_LOAD` segments as (`p_offset`, `p_vaddr`, `p_filesz`), to find where a mapping of the
    /// file put its addresses.
    pub loads: Vec<(u64, u64, u64)>,
    pub relocations: Vec<TlsRelocation>,
}

/// A dynamic relocation naming the variable: the dynamic linker writes there (an address in the
/// module, before the load bias) what locates the variable for each thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsRelocation {
    pub at: u64,
    pub kind: RelocationKind,
    pub addend: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelocationKind {
    /// `R_X86_64_TPOFF64` (initial-exec): the variable's offset from the thread pointer.
    TpOff,
    /// `R_X86_64_TLSDESC`: a descriptor {resolver, argument}.
    TlsDesc,
    /// `R_X86_64_DTPMOD64` (global-dynamic): {module id, offset in the module's block}.
    DtpMod,
}

/// Where and how the file defines `otel_thread_ctx_v1`.
pub fn thread_context_variable(source: &(impl ReadAt + ?Sized)) -> Defined {
    let mut ident = [0u8; 16];
    if source.read_exact_at(&mut ident, 0).is_err() {
        return Defined::No;
    }
    let mut budget = Budget { left: READ_BUDGET, len: source.size() };
    match FileKind::parse(&ident[..]) {
        Ok(FileKind::Elf64) => find::<elf::FileHeader64<Endianness>>(source, &mut budget, SYMBOL.as_bytes())
            .unwrap_or(Defined::No),
        _ => Defined::No,
    }
}

/// What may still be read from one file.
struct Budget {
    left: u64,
    len: u64,
}

impl Budget {
    /// `count` values of `T` at `offset`, if the file holds them and the budget allows them.
    fn read<T: Pod>(
        &mut self,
        source: &(impl ReadAt + ?Sized),
        offset: u64,
        count: u64,
    ) -> Option<Aligned<T>> {
        let bytes = count.checked_mul(size_of::<T>() as u64)?;
        if offset.checked_add(bytes)? > self.len || bytes > self.left {
            return None;
        }
        self.left -= bytes;
        let mut buffer = Aligned::new(usize::try_from(count).ok()?)?;
        source.read_exact_at(buffer.bytes_mut(), offset).ok()?;
        Some(buffer)
    }
}

/// Values read as bytes into storage aligned for `T` (object's ELF types require it): a `Vec<u64>`
/// suits every ELF structure.
struct Aligned<T> {
    words: Vec<u64>,
    count: usize,
    _type: std::marker::PhantomData<T>,
}

impl<T: Pod> Aligned<T> {
    fn new(count: usize) -> Option<Self> {
        if std::mem::align_of::<T>() > std::mem::align_of::<u64>() {
            return None;
        }
        let bytes = count.checked_mul(size_of::<T>())?;
        Some(Aligned { words: vec![0; bytes.div_ceil(8)], count, _type: std::marker::PhantomData })
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let bytes = self.count * size_of::<T>();
        &mut bytes_of_slice_mut(&mut self.words)[..bytes]
    }

    fn values(&self) -> &[T] {
        let bytes = self.count * size_of::<T>();
        slice_from_all_bytes(&object::pod::bytes_of_slice(&self.words)[..bytes]).unwrap_or(&[])
    }
}

fn find<Elf: FileHeader<Endian = Endianness>>(
    source: &(impl ReadAt + ?Sized),
    budget: &mut Budget,
    name: &[u8],
) -> Option<Defined>
where
    Elf::Rela: Pod,
{
    let header = budget.read::<Elf>(source, 0, 1)?;
    let header = header.values().first()?;
    let endian = header.endian().ok()?;
    // Relocatable objects (.o) are not what processes map; their symbols are section-relative.
    if !matches!(header.e_type(endian), elf::ET_EXEC | elf::ET_DYN)
        || header.e_machine(endian) != elf::EM_X86_64
    {
        return None;
    }
    if usize::from(header.e_shentsize(endian)) != size_of::<Elf::SectionHeader>() {
        return None;
    }
    let table: u64 = header.e_shoff(endian).into();
    let mut count = u64::from(header.e_shnum(endian));
    if table == 0 {
        return None;
    }
    if count == 0 {
        // More than 0xff00 sections: the count is in section 0's sh_size (elf(5)).
        let first = budget.read::<Elf::SectionHeader>(source, table, 1)?;
        count = first.values().first()?.sh_size(endian).into();
    }
    let sections = budget.read::<Elf::SectionHeader>(source, table, count)?;
    let sections = sections.values();
    let mut not_tls = false;
    // The dynamic table first: small, and what the OTEP says a writer exports. `.symtab` after,
    // for an executable that defines the variable without exporting it.
    for wanted in [elf::SHT_DYNSYM, elf::SHT_SYMTAB] {
        for (table_index, table) in sections.iter().enumerate().filter(|(_, s)| s.sh_type(endian) == wanted) {
            let strings = sections.get(usize::try_from(table.sh_link(endian)).ok()?)?;
            if strings.sh_type(endian) != elf::SHT_STRTAB {
                continue;
            }
            let strings =
                Table { offset: strings.sh_offset(endian).into(), size: strings.sh_size(endian).into() };
            let symbols =
                Table { offset: table.sh_offset(endian).into(), size: table.sh_size(endian).into() };
            let Some(at) = name_offsets(source, budget, strings, name) else {
                continue;
            };
            if at.is_empty() {
                continue;
            }
            let found = each_symbol::<Elf>(source, budget, symbols, |index, symbol| {
                let defined = symbol.st_shndx(endian) != elf::SHN_UNDEF;
                if !defined || !at.contains(&u64::from(symbol.st_name(endian))) {
                    return None;
                }
                if symbol.st_type() != elf::STT_TLS {
                    not_tls = true;
                    return None;
                }
                Some((index, symbol.st_value(endian).into()))
            });
            let Some((index, offset)) = found else {
                continue;
            };
            let exported = wanted == elf::SHT_DYNSYM;
            let relocations = if exported {
                relocations_of::<Elf>(source, budget, sections, endian, table_index, index)?
            } else {
                Vec::new()
            };
            let (tls_segment, loads) = segments(source, budget, header, endian)?;
            return Some(Defined::Tls(TlsVariable { offset, exported, tls_segment, loads, relocations }));
        }
    }
    Some(if not_tls { Defined::NotTls } else { Defined::No })
}

/// The `PT_TLS` segment's (`p_memsz`, `p_align`) and the `PT_LOAD` segments.
#[allow(clippy::type_complexity)]
fn segments<Elf: FileHeader<Endian = Endianness>>(
    source: &(impl ReadAt + ?Sized),
    budget: &mut Budget,
    header: &Elf,
    endian: Endianness,
) -> Option<(Option<(u64, u64)>, Vec<(u64, u64, u64)>)> {
    if usize::from(header.e_phentsize(endian)) != size_of::<Elf::ProgramHeader>() {
        return None;
    }
    let count = u64::from(header.e_phnum(endian)).min(MAX_PROGRAM_HEADERS);
    let headers = budget.read::<Elf::ProgramHeader>(source, header.e_phoff(endian).into(), count)?;
    let mut tls = None;
    let mut loads = Vec::new();
    for segment in headers.values() {
        match segment.p_type(endian) {
            elf::PT_TLS => tls = Some((segment.p_memsz(endian).into(), segment.p_align(endian).into())),
            elf::PT_LOAD => loads.push((
                segment.p_offset(endian).into(),
                segment.p_vaddr(endian).into(),
                segment.p_filesz(endian).into(),
            )),
            _ => {}
        }
    }
    Some((tls, loads))
}

/// The dynamic relocations (`SHT_RELA` sections linked to the symbol table `symbols`) that name
/// symbol `index` with a TLS type a reader can follow, a chunk at a time.
fn relocations_of<Elf: FileHeader<Endian = Endianness>>(
    source: &(impl ReadAt + ?Sized),
    budget: &mut Budget,
    sections: &[Elf::SectionHeader],
    endian: Endianness,
    symbols: usize,
    index: u64,
) -> Option<Vec<TlsRelocation>>
where
    Elf::Rela: Pod,
{
    let mut found = Vec::new();
    let entry = size_of::<Elf::Rela>() as u64;
    let per_chunk = (CHUNK / entry).max(1);
    for section in sections.iter().filter(|s| s.sh_type(endian) == elf::SHT_RELA) {
        if usize::try_from(section.sh_link(endian)).ok() != Some(symbols) {
            continue;
        }
        let (offset, size): (u64, u64) = (section.sh_offset(endian).into(), section.sh_size(endian).into());
        let total = size / entry;
        let mut at = 0;
        while at < total {
            let count = (total - at).min(per_chunk);
            let chunk = budget.read::<Elf::Rela>(source, offset.checked_add(at * entry)?, count)?;
            for rela in chunk.values() {
                if u64::from(rela.r_sym(endian, false)) != index {
                    continue;
                }
                let kind = match rela.r_type(endian, false) {
                    elf::R_X86_64_TPOFF64 => RelocationKind::TpOff,
                    elf::R_X86_64_TLSDESC => RelocationKind::TlsDesc,
                    elf::R_X86_64_DTPMOD64 => RelocationKind::DtpMod,
                    _ => continue,
                };
                let addend: i64 = rela.r_addend(endian).into();
                found.push(TlsRelocation { at: rela.r_offset(endian).into(), kind, addend });
                if found.len() == MAX_RELOCATIONS {
                    return Some(found);
                }
            }
            at += count;
        }
    }
    Some(found)
}

/// Bytes of a symbol table or of its strings held at once: the scan's memory, whatever the size
/// of the tables (a large binary's are tens of MiB).
const CHUNK: u64 = 64 << 10;
/// Places in one string table where the variable's name may start; a real one has one or two.
const MAX_NAME_PLACES: usize = 64;

/// A section's extent in the file, as its header claims it.
#[derive(Clone, Copy)]
struct Table {
    offset: u64,
    size: u64,
}

/// Every offset in the string table `strings` at which `name` followed by a NUL starts (a
/// symbol's `st_name` may point into a longer string whose tail it shares), read chunk by chunk.
/// `None` when the table cannot be read whole within the file and the budget.
fn name_offsets(
    source: &(impl ReadAt + ?Sized),
    budget: &mut Budget,
    strings: Table,
    name: &[u8],
) -> Option<Vec<u64>> {
    let wanted: Vec<u8> = name.iter().copied().chain([0]).collect();
    let overlap = wanted.len() as u64 - 1;
    let mut found = Vec::new();
    let mut at = 0u64;
    while at < strings.size {
        // Each chunk starts `overlap` bytes before the last one ended, so a name that spans two
        // chunks is seen whole; a match seen in both is kept once.
        let start = at.saturating_sub(if at == 0 { 0 } else { overlap });
        let len = (strings.size - start).min(CHUNK + overlap);
        let bytes = budget.read::<u8>(source, strings.offset.checked_add(start)?, len)?;
        let values = bytes.values();
        // Only where the name's first byte is: a table of tens of MiB (or of zeros, in a sparse
        // file) is passed over at the speed of a byte search, not compared at every offset.
        let mut from = 0;
        while let Some(i) = values.get(from..).and_then(|rest| rest.iter().position(|&b| b == wanted[0])) {
            let i = from + i;
            let place = start + i as u64;
            if values[i..].starts_with(&wanted) && !found.contains(&place) {
                if found.len() == MAX_NAME_PLACES {
                    return None;
                }
                found.push(place);
            }
            from = i + 1;
        }
        at = start + len;
    }
    Some(found)
}

/// Calls `check` on each symbol of the table with its index, a chunk at a time, until it
/// returns a value.
fn each_symbol<Elf: FileHeader<Endian = Endianness>>(
    source: &(impl ReadAt + ?Sized),
    budget: &mut Budget,
    symbols: Table,
    mut check: impl FnMut(u64, &Elf::Sym) -> Option<(u64, u64)>,
) -> Option<(u64, u64)> {
    let entry = size_of::<Elf::Sym>() as u64;
    let total = symbols.size / entry;
    let per_chunk = (CHUNK / entry).max(1);
    let mut index = 0;
    while index < total {
        let count = (total - index).min(per_chunk);
        let chunk = budget.read::<Elf::Sym>(source, symbols.offset.checked_add(index * entry)?, count)?;
        let found = chunk.values().iter().enumerate().find_map(|(i, symbol)| check(index + i as u64, symbol));
        if found.is_some() {
            return found;
        }
        index += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Compiles `source` with gcc (`args` added) into a file in a fresh directory.
    fn compiled(name: &str, source: &str, args: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("otel-sendmmsg-elf-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("src.c"), source).unwrap();
        let out = dir.join(name);
        let status = std::process::Command::new("gcc")
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg(dir.join("src.c"))
            .status()
            .expect("running gcc");
        assert!(status.success(), "gcc {args:?}");
        out
    }

    #[test]
    fn the_name_is_found_across_chunk_boundaries_and_as_a_shared_tail() {
        let name = SYMBOL.as_bytes();
        for place in [0, 5, CHUNK - 3, CHUNK, 2 * CHUNK + 7] {
            let mut strings = vec![b'x'; place as usize];
            strings.extend_from_slice(name);
            strings.push(0);
            strings.extend_from_slice(&[b'y'; 100]);
            let mut budget = Budget { left: READ_BUDGET, len: strings.len() as u64 };
            let table = Table { offset: 0, size: strings.len() as u64 };
            assert_eq!(name_offsets(&strings[..], &mut budget, table, name), Some(vec![place]), "at {place}");
        }
        // Not followed by its NUL: another name that merely starts the same.
        let longer = [name, b"_v2\0".as_slice()].concat();
        let mut budget = Budget { left: READ_BUDGET, len: longer.len() as u64 };
        let table = Table { offset: 0, size: longer.len() as u64 };
        assert_eq!(name_offsets(&longer[..], &mut budget, table, name), Some(vec![]));
    }

    fn defined_in(path: &Path) -> Defined {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len();
        thread_context_variable(&SizedFile { file: &file, len })
    }

    fn tls(defined: Defined) -> TlsVariable {
        match defined {
            Defined::Tls(variable) => variable,
            other => panic!("not found as TLS: {other:?}"),
        }
    }

    /// `readelf -rW`'s relocations naming the variable: (offset, type).
    fn relocations_by_binutils(path: &Path) -> Vec<(u64, String)> {
        let out = std::process::Command::new("readelf").arg("-rW").arg(path).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.contains(SYMBOL))
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (u64::from_str_radix(fields[0], 16).unwrap(), fields[2].to_owned())
            })
            .collect()
    }

    const DEFINE: &str = "__thread void *otel_thread_ctx_v1;\n\
        void set(void *p) { otel_thread_ctx_v1 = p; }\n";

    /// Each access model the OTEP names leaves its own trace in the file: a TLSDESC, a
    /// DTPMOD64 or a TPOFF64 relocation in a library, none in an executable (local-exec).
    #[test]
    fn the_variable_and_the_relocations_of_each_tls_model_are_found() {
        for (name, args, kind, binutils) in [
            (
                "libdesc.so",
                &["-shared", "-fPIC", "-O2", "-mtls-dialect=gnu2"][..],
                RelocationKind::TlsDesc,
                "R_X86_64_TLSDESC",
            ),
            (
                "libgd.so",
                &["-shared", "-fPIC", "-O2", "-mtls-dialect=gnu"][..],
                RelocationKind::DtpMod,
                "R_X86_64_DTPMOD64",
            ),
            (
                "libie.so",
                &["-shared", "-fPIC", "-O2", "-ftls-model=initial-exec"][..],
                RelocationKind::TpOff,
                "R_X86_64_TPOFF64",
            ),
        ] {
            let library = compiled(name, DEFINE, args);
            let variable = tls(defined_in(&library));
            assert!(variable.exported, "{name}");
            let expected: Vec<u64> = relocations_by_binutils(&library)
                .into_iter()
                .filter(|(_, t)| t == binutils)
                .map(|(at, _)| at)
                .collect();
            assert!(!expected.is_empty(), "{name}: binutils sees the relocation");
            let found: Vec<u64> =
                variable.relocations.iter().filter(|r| r.kind == kind).map(|r| r.at).collect();
            assert_eq!(found, expected, "{name}");
            assert!(variable.tls_segment.is_some() && !variable.loads.is_empty(), "{name}");
            // The same bytes in memory give the same answer.
            assert_eq!(
                thread_context_variable(&std::fs::read(&library).unwrap()[..]),
                Defined::Tls(variable)
            );
            let _ = std::fs::remove_dir_all(library.parent().unwrap());
        }
        let main = format!("{DEFINE}int main(void) {{ set(0); return 0; }}\n");
        let exported =
            compiled("exported", &main, &["-O2", "-Wl,--export-dynamic-symbol=otel_thread_ctx_v1"]);
        let variable = tls(defined_in(&exported));
        assert!(variable.exported && variable.relocations.is_empty(), "local-exec: {variable:?}");
        let (memsz, align) = variable.tls_segment.expect("PT_TLS");
        assert!(memsz >= 8 && align >= 8);
        let unexported = compiled("unexported", &main, &["-O2"]);
        assert!(!tls(defined_in(&unexported)).exported, "found in .symtab only");
        for file in [exported, unexported] {
            let _ = std::fs::remove_dir_all(file.parent().unwrap());
        }
    }

    #[test]
    fn a_reference_or_a_plain_variable_of_that_name_is_not_the_standard_variable() {
        let reference = compiled(
            "libref.so",
            "extern __thread void *otel_thread_ctx_v1;\nvoid *get(void) { return otel_thread_ctx_v1; }\n",
            &["-shared", "-fPIC"],
        );
        let plain = compiled("libplain.so", "void *otel_thread_ctx_v1 = 0;\n", &["-shared", "-fPIC"]);
        assert_eq!(defined_in(&reference), Defined::No, "only an undefined reference");
        assert_eq!(defined_in(&plain), Defined::NotTls);
        assert_eq!(defined_in(Path::new("/bin/sh")), Defined::No);
        assert_eq!(thread_context_variable(&b"\x7fELF"[..]), Defined::No);
        assert_eq!(thread_context_variable(&[][..]), Defined::No);
        for file in [reference, plain] {
            let _ = std::fs::remove_dir_all(file.parent().unwrap());
        }
    }

    /// A small stripped library defining the variable, built for the test `name` alone.
    fn tls_library(name: &str) -> Vec<u8> {
        let library =
            compiled(&format!("lib{name}.so"), DEFINE, &["-shared", "-fPIC", "-s", "-mtls-dialect=gnu2"]);
        let bytes = std::fs::read(&library).unwrap();
        let _ = std::fs::remove_dir_all(library.parent().unwrap());
        bytes
    }

    /// (e_shoff, e_shnum) of a 64-bit little-endian ELF.
    fn section_table(elf: &[u8]) -> (usize, usize) {
        let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap()) as usize;
        let shnum = u16::from_le_bytes(elf[0x3c..0x3e].try_into().unwrap()) as usize;
        (shoff, shnum)
    }

    /// Sets field `at` (sh_offset 0x18, sh_size 0x20) of every section of type `kind` to `value`.
    fn claim(elf: &mut [u8], kind: u32, at: usize, value: u64) {
        let (shoff, shnum) = section_table(elf);
        for i in 0..shnum {
            let header = shoff + i * 64;
            if u32::from_le_bytes(elf[header + 4..header + 8].try_into().unwrap()) == kind {
                elf[header + at..header + at + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
    }

    #[test]
    fn absurd_sizes_and_offsets_are_refused_before_anything_is_allocated() {
        let genuine = tls_library("absurd");
        assert!(matches!(thread_context_variable(&genuine[..]), Defined::Tls(_)));
        for (kind, at, value) in [
            (elf::SHT_DYNSYM, 0x20, u64::MAX),
            (elf::SHT_DYNSYM, 0x20, 1 << 40),
            (elf::SHT_DYNSYM, 0x18, u64::MAX - 8),
            (elf::SHT_STRTAB, 0x20, 1 << 40),
            (elf::SHT_STRTAB, 0x18, 1 << 62),
            (elf::SHT_RELA, 0x20, 1 << 40),
            (elf::SHT_RELA, 0x18, u64::MAX - 8),
        ] {
            let mut elf = genuine.clone();
            claim(&mut elf, kind, at, value);
            assert_eq!(
                thread_context_variable(&elf[..]),
                Defined::No,
                "type {kind} field {at:#x} = {value:#x}"
            );
        }
        let mut many_sections = genuine.clone();
        many_sections[0x3c..0x3e].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(thread_context_variable(&many_sections[..]), Defined::No);
        let mut far_table = genuine.clone();
        far_table[0x28..0x30].copy_from_slice(&(u64::MAX - 100).to_le_bytes());
        assert_eq!(thread_context_variable(&far_table[..]), Defined::No);
    }

    /// Counts the bytes asked for.
    struct Counting<'a> {
        inner: SizedFile<'a>,
        asked: std::cell::Cell<u64>,
    }

    impl ReadAt for Counting<'_> {
        fn size(&self) -> u64 {
            self.inner.len
        }

        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.asked.set(self.asked.get() + buf.len() as u64);
            self.inner.read_exact_at(buf, offset)
        }
    }

    /// A sparse file of 8 GiB whose symbol table claims 200 MiB of it: inside the file, so only
    /// the read budget stands between the claim and reading (and allocating) all of it.
    #[test]
    fn a_huge_claimed_table_inside_a_huge_sparse_file_stays_within_the_budget() {
        let mut elf = tls_library("sparse");
        let real = thread_context_variable(&elf[..]);
        assert!(matches!(real, Defined::Tls(_)), "the untouched library defines it");
        claim(&mut elf, elf::SHT_DYNSYM, 0x20, 200 << 20);
        let path = std::env::temp_dir().join(format!("otel-sendmmsg-elf-sparse-{}", std::process::id()));
        std::fs::write(&path, &elf).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        file.set_len(8 << 30).unwrap();
        let counting = Counting { inner: SizedFile { file: &file, len: 8 << 30 }, asked: 0.into() };
        // The table is read a chunk at a time: the real symbols come first, and the claimed
        // rest is never needed.
        assert_eq!(thread_context_variable(&counting), real);
        assert!(counting.asked.get() <= READ_BUDGET, "read {} bytes", counting.asked.get());
        // A file that really is that large, without the variable, is read up to the budget only.
        let mut empty = tls_library("sparse-unnamed");
        let at = empty.windows(SYMBOL.len()).position(|w| w == SYMBOL.as_bytes()).unwrap();
        empty[at] = b'X';
        claim(&mut empty, elf::SHT_DYNSYM, 0x20, 200 << 20);
        std::fs::write(&path, &empty).unwrap();
        file.set_len(8 << 30).unwrap();
        let counting = Counting { inner: SizedFile { file: &file, len: 8 << 30 }, asked: 0.into() };
        assert_eq!(thread_context_variable(&counting), Defined::No);
        assert!(counting.asked.get() <= READ_BUDGET, "read {} bytes", counting.asked.get());
        std::fs::remove_file(path).unwrap();
    }

    /// A file its owner truncates once the section headers were read, before the symbols are.
    struct TruncatedMidScan<'a> {
        inner: SizedFile<'a>,
        reads: std::cell::Cell<u32>,
    }

    impl ReadAt for TruncatedMidScan<'_> {
        fn size(&self) -> u64 {
            self.inner.len
        }

        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.reads.set(self.reads.get() + 1);
            // 1: the identification, 2: the header, 3: the section headers, 4: .dynsym.
            if self.reads.get() == 4 {
                self.inner.file.set_len(64).unwrap();
            }
            self.inner.read_exact_at(buf, offset)
        }
    }

    #[test]
    fn a_file_truncated_while_it_is_read_defines_nothing() {
        let elf = tls_library("truncated");
        let path = std::env::temp_dir().join(format!("otel-sendmmsg-elf-truncated-{}", std::process::id()));
        std::fs::write(&path, &elf).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let len = elf.len() as u64;
        assert!(matches!(thread_context_variable(&SizedFile { file: &file, len }), Defined::Tls(_)));
        let truncating = TruncatedMidScan { inner: SizedFile { file: &file, len }, reads: 0.into() };
        assert_eq!(thread_context_variable(&truncating), Defined::No);
        assert!(truncating.reads.get() >= 4, "the truncation happened mid-scan");
        std::fs::remove_file(path).unwrap();
    }
}
