//! Reads `/proc/PID/maps` by its fields. Another process chooses the paths it maps: a path may
//! hold spaces, a newline (printed as `\012`), or end in ` (deleted)`, and a process may have
//! millions of mappings; nothing it writes there may make us misread a line or read without end.

use std::{
    ffi::OsStr,
    io::{self, Read},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// The most of one `/proc/PID/maps` read: ~80,000 lines of a typical length, above the kernel's
/// default `vm.max_map_count` (65530). A process with more mappings is read this far; the
/// libraries of a normal process are among them.
pub const MAPS_BYTES: u64 = 8 << 20;

/// What `d_path` appends to the path of a file unlinked since it was mapped.
const DELETED: &[u8] = b" (deleted)";
/// `seq_file_path(m, file, "\n")` (fs/proc/task_mmu.c, `show_map_vma`) escapes a newline in a
/// path as a backslash and three octal digits, and nothing else: not even a backslash.
const ESCAPED_NEWLINE: &[u8] = b"\\012";

/// One file, however many paths reach it: the device (as `st_dev` gives it) and the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// An executable mapping of a file, as one line of `/proc/PID/maps` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The mapped range: also the name of its entry in `/proc/PID/map_files/`.
    pub start: u64,
    pub end: u64,
    /// Where in the file the mapping begins (page-aligned).
    pub offset: u64,
    pub file: FileId,
    /// Absolute, as the kernel printed it (relative to the reader's root), `\012` read as a
    /// newline and a trailing ` (deleted)` taken off.
    pub path: PathBuf,
    /// The file was unlinked after it was mapped: `path` names something else now, if anything,
    /// and only `/proc/PID/map_files/` still reaches the file.
    pub deleted: bool,
    /// The line's path text before unescaping: the kernel leaves a backslash as it is, so a
    /// literal `\012` in a name cannot be told from an escaped newline.
    printed: Vec<u8>,
}

impl Mapping {
    /// The paths this line can mean, the likeliest first: the parsed one, then the printed text
    /// taken literally (a name that itself holds `\012` or ends in ` (deleted)`). Whichever is
    /// opened must still prove to be the mapped file (device and inode).
    pub fn candidate_paths(&self) -> Vec<PathBuf> {
        let literal = PathBuf::from(OsStr::from_bytes(&self.printed));
        let mut paths = vec![self.path.clone()];
        if self.deleted {
            let mut with_suffix = self.path.clone().into_os_string();
            with_suffix.push(OsStr::from_bytes(DELETED));
            paths.push(with_suffix.into());
        }
        if !paths.contains(&literal) {
            paths.push(literal);
        }
        paths
    }

    /// `/proc/PID/map_files/<start>-<end>`, the kernel's own link to the mapped file.
    pub fn map_files_name(&self) -> String {
        format!("{:x}-{:x}", self.start, self.end)
    }
}

/// The executable mappings of files in one `/proc/PID/maps` text. Lines that do not have the
/// kernel's shape are skipped, never guessed at.
pub fn executable_mappings(maps: &[u8]) -> Vec<Mapping> {
    maps.split(|&b| b == b'\n')
        .filter_map(parse_line)
        .filter(|m| m.is_executable)
        .map(|m| m.mapping)
        .collect()
}

struct Parsed {
    is_executable: bool,
    mapping: Mapping,
}

/// `start-end perms offset major:minor inode` separated by single spaces (show_vma_header_prefix),
/// then padding spaces and the path up to the end of the line; no path for anonymous memory.
fn parse_line(line: &[u8]) -> Option<Parsed> {
    let mut fields = line.splitn(6, |&b| b == b' ');
    let (range, perms, offset, dev, inode) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let rest = fields.next()?;
    let (start, end) = split_once(range, b'-')?;
    let (start, end) = (hex(start)?, hex(end)?);
    let (major, minor) = split_once(dev, b':')?;
    let dev = libc::makedev(u32::try_from(hex(major)?).ok()?, u32::try_from(hex(minor)?).ok()?);
    let ino = decimal(inode)?;
    let offset = hex(offset)?;
    let printed = rest.trim_ascii_start();
    // Pseudo-files ([vdso], [heap]), anonymous memory, and names not reachable as a path
    // (`anon_inode:...`) have nothing to open; NUL never appears in a real path.
    if start >= end || ino == 0 || printed.first() != Some(&b'/') || printed.contains(&0) {
        return None;
    }
    let (printed, deleted) = match printed.strip_suffix(DELETED) {
        Some(p) if !p.is_empty() => (p, true),
        _ => (printed, false),
    };
    let path = PathBuf::from(OsStr::from_bytes(&unescape(printed)));
    Some(Parsed {
        is_executable: perms.len() == 4 && perms[2] == b'x',
        mapping: Mapping {
            start,
            end,
            offset,
            file: FileId { dev, ino },
            path,
            deleted,
            printed: printed.to_vec(),
        },
    })
}

fn split_once(field: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = field.iter().position(|&b| b == at)?;
    Some((&field[..i], &field[i + 1..]))
}

fn hex(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

fn decimal(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Undoes the kernel's one escape: `\012` back to a newline.
fn unescape(printed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(printed.len());
    let mut rest = printed;
    while !rest.is_empty() {
        if rest.starts_with(ESCAPED_NEWLINE) {
            out.push(b'\n');
            rest = &rest[ESCAPED_NEWLINE.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// Reads a maps file, at most [`MAPS_BYTES`] of it; a line cut by the cap is left out, so a
/// path is never read short.
pub fn read_maps(path: &Path) -> io::Result<Vec<u8>> {
    read_capped(std::fs::File::open(path)?, MAPS_BYTES)
}

pub(crate) fn read_capped(from: impl Read, cap: u64) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    from.take(cap).read_to_end(&mut text)?;
    if text.len() as u64 >= cap {
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        text.truncate(whole);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(major: u32, minor: u32, ino: u64) -> FileId {
        FileId { dev: libc::makedev(major, minor), ino }
    }

    fn paths(maps: &str) -> Vec<(PathBuf, bool)> {
        executable_mappings(maps.as_bytes()).into_iter().map(|m| (m.path, m.deleted)).collect()
    }

    #[test]
    fn keeps_executable_file_mappings_only() {
        let maps = "\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 1234                       /usr/bin/app
55d0a0001000-55d0a0009000 r-xp 00001000 fd:01 1234                       /usr/bin/app
7f0000000000-7f0000020000 r-xp 00000000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000100000-7f0000121000 rw-p 00000000 00:00 0                          [heap]
7f0000121000-7f0000122000 r-xp 00000000 00:00 0 
7f0000122000-7f0000123000 r-xp 00000000 00:00 0
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
7f0000200000-7f0000201000 r-xp 00000000 00:05 77                         /memfd:jit (deleted)
7f0000300000-7f0000301000 rwxp 00000000 00:0f 12                         anon_inode:[perf_event]
";
        let found = executable_mappings(maps.as_bytes());
        let summary: Vec<_> =
            found.iter().map(|m| (m.start, m.end, m.file, m.path.clone(), m.deleted)).collect();
        assert_eq!(
            summary,
            vec![
                (0x55d0a0001000, 0x55d0a0009000, id(0xfd, 1, 1234), "/usr/bin/app".into(), false),
                (
                    0x7f0000000000,
                    0x7f0000020000,
                    id(0xfd, 1, 99),
                    "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                    false
                ),
                (0x7f0000200000, 0x7f0000201000, id(0, 5, 77), "/memfd:jit".into(), true),
            ]
        );
        assert_eq!(found[0].map_files_name(), "55d0a0001000-55d0a0009000");
    }

    #[test]
    fn a_path_with_spaces_stays_whole() {
        let maps = "7f0000000000-7f0000001000 r-xp 00000000 08:02 42  /tmp/my dir/lib  x.so\n";
        assert_eq!(paths(maps), vec![("/tmp/my dir/lib  x.so".into(), false)]);
    }

    #[test]
    fn an_escaped_newline_is_a_newline_and_the_literal_reading_is_a_candidate() {
        let maps = "7f0000000000-7f0000001000 r-xp 00000000 08:02 42 /tmp/a\\012b c.so (deleted)\n";
        let found = executable_mappings(maps.as_bytes());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, Path::new("/tmp/a\nb c.so"));
        assert!(found[0].deleted);
        assert_eq!(
            found[0].candidate_paths(),
            vec![
                PathBuf::from("/tmp/a\nb c.so"),
                PathBuf::from("/tmp/a\nb c.so (deleted)"),
                PathBuf::from("/tmp/a\\012b c.so"),
            ]
        );
    }

    #[test]
    fn other_backslashes_are_left_alone() {
        let maps = "7f0000000000-7f0000001000 r-xp 00000000 08:02 42 /tmp/a\\b\\01\\0123\n";
        assert_eq!(paths(maps), vec![("/tmp/a\\b\\01\n3".into(), false)]);
    }

    #[test]
    fn a_name_that_ends_in_deleted_stays_a_candidate() {
        // The kernel prints a live file named "x (deleted)" as it prints a deleted "x".
        let maps = "7f0000000000-7f0000001000 r-xp 00000000 08:02 42 /tmp/x (deleted)\n";
        let found = executable_mappings(maps.as_bytes());
        assert_eq!(
            found[0].candidate_paths(),
            vec![PathBuf::from("/tmp/x"), PathBuf::from("/tmp/x (deleted)")]
        );
    }

    #[test]
    fn lines_not_in_the_kernels_shape_are_skipped() {
        let maps = "\
7f0000000000-7f0000001000 r-xp 00000000 08:02 42 relative/path.so
7f0000000000 r-xp 00000000 08:02 42 /no/range.so
7f0000001000-7f0000000000 r-xp 00000000 08:02 42 /backwards.so
7f0000000000-7f0000001000 r-xp 00000000 0802 42 /no/minor.so
7f0000000000-7f0000001000 r-xp 00000000 08:02 -42 /negative.so
7f0000000000-7f0000001000  r-xp 00000000 08:02 42 /double/space.so
7f0000000000-7f0000001000 r-xp 00000000 08:02 42 /nul\0byte.so
";
        assert_eq!(paths(maps), vec![]);
    }

    #[test]
    fn a_read_cut_by_the_cap_drops_the_cut_line() {
        let text = b"line one\nline two is long\n";
        assert_eq!(read_capped(&text[..], 14).unwrap(), b"line one\n");
        assert_eq!(read_capped(&text[..], 1000).unwrap(), text);
    }
}
