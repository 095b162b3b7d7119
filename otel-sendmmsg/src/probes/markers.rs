//! Finds the executables and shared libraries that export the context marker
//! (`otel_sendmmsg_set_context`), in running processes, so a uprobe can be attached to each
//! file once; processes started later from a file already attached are covered by that uprobe.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
};

use object::{
    elf,
    read::{
        elf::{FileHeader, SectionHeader, Sym},
        ReadCache,
    },
    Endianness, FileKind, SectionIndex,
};
use otel_sendmmsg_common::CONTEXT_MARKER_SYMBOL;

/// A mapped file, as `/proc/PID/maps` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Device (as "major:minor" in hex) and inode: one file, however many paths reach it.
    pub file: (String, u64),
    pub path: PathBuf,
}

/// The executable file mappings of one `/proc/PID/maps` text.
pub fn executable_mappings(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_range, perms, _offset, dev, inode) =
                (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            let path = fields.next()?;
            let inode: u64 = inode.parse().ok()?;
            (perms.contains('x') && inode != 0 && path.starts_with('/'))
                .then(|| Mapping { file: (dev.to_owned(), inode), path: PathBuf::from(path) })
        })
        .collect()
}

/// Whether the ELF file exports the marker, in its symbol table or its dynamic one.
pub fn exports_marker(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    // Reads only the parts the symbol tables need, not the whole (possibly huge) file.
    let data = ReadCache::new(file);
    let name = CONTEXT_MARKER_SYMBOL.as_bytes();
    match FileKind::parse(&data) {
        Ok(FileKind::Elf64) => defines::<elf::FileHeader64<Endianness>>(&data, name),
        Ok(FileKind::Elf32) => defines::<elf::FileHeader32<Endianness>>(&data, name),
        _ => false,
    }
}

/// Whether the ELF `data` defines symbol `name`. Each symbol table and its strings are read in
/// one piece and compared in place: going symbol by symbol through object's `ReadCache` caches
/// every name read separately, tens of MiB for a large binary's 100k symbols.
fn defines<Elf: FileHeader<Endian = Endianness>>(data: &ReadCache<File>, name: &[u8]) -> bool {
    let found = || -> object::Result<bool> {
        let header = Elf::parse(data)?;
        let endian = header.endian()?;
        let sections = header.sections(endian, data)?;
        for section in sections.iter() {
            if !matches!(section.sh_type(endian), elf::SHT_SYMTAB | elf::SHT_DYNSYM) {
                continue;
            }
            let symbols: &[Elf::Sym] = section.data_as_array(endian, data)?;
            let strings =
                sections.section(SectionIndex(section.sh_link(endian) as usize))?.data(endian, data)?;
            let named = |sym: &Elf::Sym| {
                let start = sym.st_name(endian) as usize;
                strings.get(start..).and_then(|s| s.split(|&b| b == 0).next()) == Some(name)
            };
            if symbols.iter().any(|sym| sym.st_shndx(endian) != elf::SHN_UNDEF && named(sym)) {
                return Ok(true);
            }
        }
        Ok(false)
    };
    found().unwrap_or(false)
}

/// What has been looked at already, so each process and each file is examined once.
#[derive(Default)]
pub struct Discovery {
    /// pid -> process start time (so a reused pid is looked at again).
    pids: HashMap<u32, u64>,
    files: HashSet<(String, u64)>,
    /// Files whose symbols were read since [`Discovery::take_files_read`] last asked.
    files_read: usize,
}

impl Discovery {
    /// Scans processes not seen before; returns the new files that export the marker, as paths
    /// reachable from here (through the process's root, for other mount namespaces).
    pub fn scan(&mut self, proc_root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut alive = HashMap::new();
        for entry in std::fs::read_dir(proc_root).into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let dir = entry.path();
            let Some(start) = start_time(&dir) else {
                continue; // gone already
            };
            alive.insert(pid, start);
            if self.pids.get(&pid) == Some(&start) {
                continue;
            }
            let maps = std::fs::read_to_string(dir.join("maps")).unwrap_or_default();
            for mapping in executable_mappings(&maps) {
                if self.files.insert(mapping.file.clone()) {
                    self.files_read += 1;
                    let reachable =
                        dir.join("root").join(mapping.path.strip_prefix("/").unwrap_or(&mapping.path));
                    if exports_marker(&reachable) {
                        found.push(reachable);
                    }
                }
            }
        }
        // Forget exited processes, so the map stays as large as the process table.
        self.pids = alive;
        found
    }

    /// How many files had their symbol tables read since the last call. A large binary's
    /// tables take tens of MiB while they are read, which the allocator keeps unless asked.
    pub fn take_files_read(&mut self) -> usize {
        std::mem::take(&mut self.files_read)
    }
}

/// Field 22 of /proc/PID/stat (after the parenthesised command name, which may hold spaces).
fn start_time(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_executable_file_mappings_only() {
        let maps = "\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 1234 /usr/bin/app
55d0a0001000-55d0a0009000 r-xp 00001000 fd:01 1234 /usr/bin/app
7f0000000000-7f0000020000 r-xp 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000100000-7f0000121000 rw-p 00000000 00:00 0 [heap]
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
7f0000200000-7f0000201000 r-xp 00000000 00:05 77 /memfd:jit (deleted)";
        let found = executable_mappings(maps);
        assert_eq!(
            found,
            vec![
                Mapping { file: ("fd:01".into(), 1234), path: "/usr/bin/app".into() },
                Mapping { file: ("fd:01".into(), 99), path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into() },
                Mapping { file: ("00:05".into(), 77), path: "/memfd:jit".into() },
            ]
        );
    }

    /// Compiles `source` with gcc (`args` added) into a file in a fresh directory.
    fn compiled(name: &str, source: &str, args: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("otel-sendmmsg-markers-{}-{name}", std::process::id()));
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
    fn the_marker_is_found_where_it_is_defined_not_where_it_is_called() {
        let define = format!("void {CONTEXT_MARKER_SYMBOL}(void) {{}}\nint main(void) {{ return 0; }}\n");
        let call =
            format!("void {CONTEXT_MARKER_SYMBOL}(void);\nvoid f(void) {{ {CONTEXT_MARKER_SYMBOL}(); }}\n");
        let library = compiled("libdefines.so", &define, &["-shared", "-fPIC"]);
        let stripped = compiled("stripped.so", &define, &["-shared", "-fPIC", "-s"]);
        let executable = compiled("defines", &define, &[]);
        let caller = compiled("libcalls.so", &call, &["-shared", "-fPIC"]);
        assert!(exports_marker(&library), "symbol and dynamic tables");
        assert!(exports_marker(&stripped), "dynamic table only");
        assert!(exports_marker(&executable), "symbol table");
        assert!(!exports_marker(&caller), "only an undefined reference");
        for file in [library, stripped, executable, caller] {
            let _ = std::fs::remove_dir_all(file.parent().unwrap());
        }
    }

    #[test]
    fn a_binary_without_the_marker_is_not_a_candidate() {
        assert!(!exports_marker(Path::new("/bin/sh")));
        assert!(!exports_marker(Path::new("/nonexistent")));
    }

    #[test]
    fn the_start_time_survives_spaces_in_the_command_name() {
        let dir = std::env::temp_dir().join(format!("markers-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            "42 (my (odd) app) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 0",
        )
        .unwrap();
        assert_eq!(start_time(&dir), Some(98765));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
