//! Finds the context marker's file offset in an ELF file another process controls, reading at
//! most [`READ_BUDGET`] bytes of it with `pread` into buffers of our own. Never `mmap`: the
//! owner can truncate the file under us, and a mapped read past the new end is SIGBUS. Every
//! size and offset the file states is a claim, checked against the file's length before a byte
//! is allocated for it; a read that comes back short (the file shrank) means "no marker".

use std::{fs::File, io, mem::size_of, os::unix::fs::FileExt};

use object::{
    elf,
    pod::{bytes_of_slice_mut, slice_from_all_bytes, Pod},
    read::elf::{FileHeader, SectionHeader, Sym},
    Endianness, FileKind,
};
use otel_sendmmsg_common::CONTEXT_MARKER_SYMBOL;

/// The most read from one file: its section headers, then its symbol tables and their strings.
/// A large binary's `.symtab` with its strings is tens of MiB (hundreds of thousands of symbols);
/// a file that needs more is looked at only through what fits (`.dynsym`, read first, is small).
/// A fixed cost per file, and the scan reads one file at a time.
pub const READ_BUDGET: u64 = 64 << 20;

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

/// The file offset of the marker function, if the file defines it (in `.dynsym` or `.symtab`):
/// where a uprobe on this file must go, computed here so nothing parses the file again.
pub fn marker_offset(source: &(impl ReadAt + ?Sized)) -> Option<u64> {
    let mut ident = [0u8; 16];
    source.read_exact_at(&mut ident, 0).ok()?;
    let mut budget = Budget { left: READ_BUDGET, len: source.size() };
    let name = CONTEXT_MARKER_SYMBOL.as_bytes();
    match FileKind::parse(&ident[..]).ok()? {
        FileKind::Elf64 => find::<elf::FileHeader64<Endianness>>(source, &mut budget, name),
        FileKind::Elf32 => find::<elf::FileHeader32<Endianness>>(source, &mut budget, name),
        _ => None,
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
) -> Option<u64> {
    let header = budget.read::<Elf>(source, 0, 1)?;
    let header = header.values().first()?;
    let endian = header.endian().ok()?;
    // Relocatable objects (.o) are not what processes map; their symbols are section-relative.
    if !matches!(header.e_type(endian), elf::ET_EXEC | elf::ET_DYN) {
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
    let budget_len = budget.len;
    // The dynamic table first: small, and what a library exports. `.symtab` after, for an
    // executable that defines the marker without exporting it.
    for wanted in [elf::SHT_DYNSYM, elf::SHT_SYMTAB] {
        for table in sections.iter().filter(|s| s.sh_type(endian) == wanted) {
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
            if let Some(offset) = each_symbol::<Elf>(source, budget, symbols, |symbol| {
                at.contains(&u64::from(symbol.st_name(endian)))
                    .then(|| file_offset::<Elf>(symbol, sections, endian, budget_len))
                    .flatten()
            }) {
                return Some(offset);
            }
        }
    }
    None
}

/// Bytes of a symbol table or of its strings held at once: the scan's memory, whatever the size
/// of the tables (a large binary's are tens of MiB).
const CHUNK: u64 = 64 << 10;
/// Places in one string table where the marker's name may start; a real one has one or two.
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

/// Calls `check` on each symbol of the table, a chunk at a time, until it returns a value.
fn each_symbol<Elf: FileHeader<Endian = Endianness>>(
    source: &(impl ReadAt + ?Sized),
    budget: &mut Budget,
    symbols: Table,
    mut check: impl FnMut(&Elf::Sym) -> Option<u64>,
) -> Option<u64> {
    let entry = size_of::<Elf::Sym>() as u64;
    let total = symbols.size / entry;
    let per_chunk = (CHUNK / entry).max(1);
    let mut index = 0;
    while index < total {
        let count = (total - index).min(per_chunk);
        let chunk = budget.read::<Elf::Sym>(source, symbols.offset.checked_add(index * entry)?, count)?;
        if let Some(found) = chunk.values().iter().find_map(&mut check) {
            return Some(found);
        }
        index += count;
    }
    None
}

/// Where a defined function symbol's code lies in the file: its address translated through the
/// section that holds it (`st_value - sh_addr + sh_offset`, as the kernel's uprobe offset wants
/// it), if that section is code present in the file and the result is inside the file.
fn file_offset<Elf: FileHeader<Endian = Endianness>>(
    symbol: &Elf::Sym,
    sections: &[Elf::SectionHeader],
    endian: Endianness,
    file_len: u64,
) -> Option<u64> {
    if symbol.st_type() != elf::STT_FUNC {
        return None;
    }
    let index = symbol.st_shndx(endian);
    if index == elf::SHN_UNDEF || index >= elf::SHN_LORESERVE {
        return None;
    }
    let section = sections.get(usize::from(index))?;
    let flags: u64 = section.sh_flags(endian).into();
    if section.sh_type(endian) != elf::SHT_PROGBITS || flags & u64::from(elf::SHF_EXECINSTR) == 0 {
        return None;
    }
    let (address, start, size): (u64, u64, u64) =
        (symbol.st_value(endian).into(), section.sh_addr(endian).into(), section.sh_size(endian).into());
    let within = address.checked_sub(start).filter(|&d| d < size)?;
    let offset = within.checked_add(section.sh_offset(endian).into())?;
    (offset < file_len).then_some(offset)
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
        let name = CONTEXT_MARKER_SYMBOL.as_bytes();
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

    fn offset_in(path: &Path) -> Option<u64> {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len();
        marker_offset(&SizedFile { file: &file, len })
    }

    /// The marker's offset as binutils computes it: `nm`'s address through `readelf`'s .text.
    fn offset_by_binutils(path: &Path) -> u64 {
        let nm = std::process::Command::new("nm").arg("-D").arg("--defined-only").arg(path).output().unwrap();
        let nm = String::from_utf8(nm.stdout).unwrap();
        let address = nm.lines().find(|l| l.ends_with(CONTEXT_MARKER_SYMBOL)).expect("nm lists the marker");
        let address = u64::from_str_radix(address.split_whitespace().next().unwrap(), 16).unwrap();
        let sections = std::process::Command::new("readelf").arg("-SW").arg(path).output().unwrap();
        let sections = String::from_utf8(sections.stdout).unwrap();
        let text = sections.lines().find(|l| l.contains(" .text ")).expect(".text");
        let fields: Vec<&str> = text.split(" .text ").nth(1).unwrap().split_whitespace().collect();
        let (addr, off) =
            (u64::from_str_radix(fields[1], 16).unwrap(), u64::from_str_radix(fields[2], 16).unwrap());
        address - addr + off
    }

    #[test]
    fn the_marker_is_found_where_it_is_defined_not_where_it_is_called() {
        let define = format!("void {CONTEXT_MARKER_SYMBOL}(void) {{}}\nint main(void) {{ return 0; }}\n");
        let call =
            format!("void {CONTEXT_MARKER_SYMBOL}(void);\nvoid f(void) {{ {CONTEXT_MARKER_SYMBOL}(); }}\n");
        let data = format!("int {CONTEXT_MARKER_SYMBOL} = 1;\n");
        let library = compiled("libdefines.so", &define, &["-shared", "-fPIC"]);
        let stripped = compiled("stripped.so", &define, &["-shared", "-fPIC", "-s"]);
        let executable = compiled("defines", &define, &[]);
        let caller = compiled("libcalls.so", &call, &["-shared", "-fPIC"]);
        let variable = compiled("libvariable.so", &data, &["-shared", "-fPIC"]);
        let expected = offset_by_binutils(&library);
        assert_eq!(offset_in(&library), Some(expected), "symbol and dynamic tables");
        assert_eq!(offset_in(&stripped), Some(offset_by_binutils(&stripped)), "dynamic table only");
        assert!(offset_in(&executable).is_some(), "symbol table");
        assert_eq!(offset_in(&caller), None, "only an undefined reference");
        assert_eq!(offset_in(&variable), None, "a variable of that name is no function");
        // The same bytes in memory give the same answer.
        assert_eq!(marker_offset(&std::fs::read(&library).unwrap()[..]), Some(expected));
        for file in [library, stripped, executable, caller, variable] {
            let _ = std::fs::remove_dir_all(file.parent().unwrap());
        }
    }

    #[test]
    fn a_binary_without_the_marker_is_not_a_candidate() {
        assert_eq!(offset_in(Path::new("/bin/sh")), None);
        assert_eq!(marker_offset(&b"\x7fELF"[..]), None);
        assert_eq!(marker_offset(&[][..]), None);
    }

    /// A small stripped library defining the marker, built for the test `name` alone.
    fn marker_library(name: &str) -> Vec<u8> {
        let define = format!("void {CONTEXT_MARKER_SYMBOL}(void) {{}}\n");
        let library = compiled(&format!("lib{name}.so"), &define, &["-shared", "-fPIC", "-s"]);
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
        let genuine = marker_library("absurd");
        assert!(marker_offset(&genuine[..]).is_some());
        for (kind, at, value) in [
            (elf::SHT_DYNSYM, 0x20, u64::MAX),
            (elf::SHT_DYNSYM, 0x20, 1 << 40),
            (elf::SHT_DYNSYM, 0x18, u64::MAX - 8),
            (elf::SHT_STRTAB, 0x20, 1 << 40),
            (elf::SHT_STRTAB, 0x18, 1 << 62),
        ] {
            let mut elf = genuine.clone();
            claim(&mut elf, kind, at, value);
            assert_eq!(marker_offset(&elf[..]), None, "type {kind} field {at:#x} = {value:#x}");
        }
        let mut many_sections = genuine.clone();
        many_sections[0x3c..0x3e].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(marker_offset(&many_sections[..]), None);
        let mut far_table = genuine.clone();
        far_table[0x28..0x30].copy_from_slice(&(u64::MAX - 100).to_le_bytes());
        assert_eq!(marker_offset(&far_table[..]), None);
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
        let mut elf = marker_library("sparse");
        let real = marker_offset(&elf[..]).expect("the untouched library has the marker");
        claim(&mut elf, elf::SHT_DYNSYM, 0x20, 200 << 20);
        let path = std::env::temp_dir().join(format!("otel-sendmmsg-elf-sparse-{}", std::process::id()));
        std::fs::write(&path, &elf).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        file.set_len(8 << 30).unwrap();
        let counting = Counting { inner: SizedFile { file: &file, len: 8 << 30 }, asked: 0.into() };
        // The table is read a chunk at a time: the real symbols come first, and the claimed
        // rest is never needed.
        assert_eq!(marker_offset(&counting), Some(real));
        assert!(counting.asked.get() <= READ_BUDGET, "read {} bytes", counting.asked.get());
        // A file that really is that large, without the marker, is read up to the budget only.
        let mut empty = marker_library("sparse-unnamed");
        let at = empty
            .windows(CONTEXT_MARKER_SYMBOL.len())
            .position(|w| w == CONTEXT_MARKER_SYMBOL.as_bytes())
            .unwrap();
        empty[at] = b'X';
        claim(&mut empty, elf::SHT_DYNSYM, 0x20, 200 << 20);
        std::fs::write(&path, &empty).unwrap();
        file.set_len(8 << 30).unwrap();
        let counting = Counting { inner: SizedFile { file: &file, len: 8 << 30 }, asked: 0.into() };
        assert_eq!(marker_offset(&counting), None);
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
    fn a_file_truncated_while_it_is_read_has_no_marker() {
        let elf = marker_library("truncated");
        let path = std::env::temp_dir().join(format!("otel-sendmmsg-elf-truncated-{}", std::process::id()));
        std::fs::write(&path, &elf).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let len = elf.len() as u64;
        assert!(marker_offset(&SizedFile { file: &file, len }).is_some());
        let truncating = TruncatedMidScan { inner: SizedFile { file: &file, len }, reads: 0.into() };
        assert_eq!(marker_offset(&truncating), None);
        assert!(truncating.reads.get() >= 4, "the truncation happened mid-scan");
        std::fs::remove_file(path).unwrap();
    }
}
