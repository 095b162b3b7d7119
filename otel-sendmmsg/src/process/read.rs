//! Bounded reads of another process's `/proc` files. Everything there is the other process's to
//! shape: its environment may be gigabytes (`prctl(PR_SET_MM_MAP)` needs no privilege), in
//! memory whose reading never returns (see [`super::resolver`]), its cgroup path as long
//! as a delegated hierarchy allows. So every read here takes at most a fixed number of bytes,
//! keeps only what it looks for, and runs on a resolver thread, never on the event loop
//! (see [`super::resolver`]).

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// `/proc/PID/stat` is a few hundred bytes; its command name is at most 64.
pub const STAT_CAP: u64 = 4096;
/// `/proc/PID/cgroup`: one line per hierarchy; a v2 path is at most a few components deep in
/// real runtimes, and a delegated one that is longer names no container we recognise anyway.
pub const CGROUP_CAP: u64 = 64 * 1024;
/// How much of `/proc/PID/environ` is scanned for the variables we want. Linux caps one string
/// at 128 KiB at exec, and real environments are a few KiB; past this the process keeps its
/// secrets and loses its service name, nothing more.
pub const ENVIRON_SCAN_CAP: u64 = 1 << 20;
/// The longest value of a variable we keep; a longer one is not a service name.
pub const ENV_VALUE_CAP: usize = 4096;

/// Opens a file under `/proc/PID` for reading: never through a symlink, never blocking on open.
pub fn open(dir: &Path, name: &str) -> io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dir.join(name))
}

/// At most `cap` bytes of a file.
pub fn read_capped(dir: &Path, name: &str, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open(dir, name)?.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The first value of variable `name` in a NUL-separated environment block read from `block`
/// (see [`find_variables`]).
pub fn find_variable(block: impl Read, name: &[u8], scan_cap: u64) -> Option<Vec<u8>> {
    let [value] = find_variables(block, [name], scan_cap);
    value
}

/// The first value of each variable of `names` in a NUL-separated environment block read from
/// `block`, as `getenv` would return it (the first entry of a repeated name), in one pass over at
/// most `scan_cap` bytes, keeping no entry but the ones wanted; `None` for a name absent within
/// the cap, or whose value is longer than [`ENV_VALUE_CAP`].
pub fn find_variables<const N: usize>(
    block: impl Read,
    names: [&[u8]; N],
    scan_cap: u64,
) -> [Option<Vec<u8>>; N] {
    enum State {
        /// The start of an entry, up to its `=`: still possibly one wanted.
        Head(Vec<u8>),
        /// Inside the value of wanted name `i`.
        Value(usize, Vec<u8>),
        /// Inside another entry (or a value over the cap), until its NUL.
        Skip,
    }
    let longest = names.iter().map(|n| n.len()).max().unwrap_or(0) + 1;
    let mut found: [Option<Vec<u8>>; N] = std::array::from_fn(|_| None);
    // A wanted name's entry that was too long: its later entries are not what getenv returns.
    let mut settled = [false; N];
    let mut block = block.take(scan_cap);
    let mut chunk = [0u8; 16 * 1024];
    let mut state = State::Head(Vec::with_capacity(longest));
    let mut scanned = 0u64;
    loop {
        let n = match block.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        scanned += n as u64;
        for &byte in &chunk[..n] {
            state = match (state, byte) {
                (State::Value(i, value), 0) => {
                    found[i] = Some(value);
                    settled[i] = true;
                    if settled.iter().all(|s| *s) {
                        return found;
                    }
                    State::Head(Vec::with_capacity(longest))
                }
                (State::Value(i, mut value), b) => {
                    if value.len() == ENV_VALUE_CAP {
                        settled[i] = true;
                        State::Skip
                    } else {
                        value.push(b);
                        State::Value(i, value)
                    }
                }
                (_, 0) => State::Head(Vec::with_capacity(longest)),
                (State::Skip, _) => State::Skip,
                (State::Head(mut head), b) => {
                    let wanted = |i: usize| !settled[i] && names[i].len() == head.len();
                    match (0..N).find(|&i| b == b'=' && wanted(i) && names[i] == head.as_slice()) {
                        Some(i) => State::Value(i, Vec::new()),
                        None => {
                            head.push(b);
                            if names.iter().any(|name| name.starts_with(&head)) {
                                State::Head(head)
                            } else {
                                State::Skip
                            }
                        }
                    }
                }
            };
        }
    }
    // The block may end without a NUL after its last entry; one cut by the cap is not whole.
    if let State::Value(i, value) = state {
        if scanned < scan_cap {
            found[i] = Some(value);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(block: &[u8], cap: u64) -> Option<String> {
        find_variable(block, b"OTEL_SERVICE_NAME", cap).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn finds_the_first_entry_as_getenv_does() {
        assert_eq!(
            find(b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0HOME=/\0", 1 << 20).as_deref(),
            Some("checkout")
        );
        assert_eq!(find(b"OTEL_SERVICE_NAME=a", 1 << 20).as_deref(), Some("a"));
        assert_eq!(
            find(b"OTEL_SERVICE_NAME=first\0OTEL_SERVICE_NAME=second\0", 1 << 20).as_deref(),
            Some("first")
        );
        assert_eq!(find(b"OTEL_SERVICE_NAME=\0", 1 << 20).as_deref(), Some(""));
        assert_eq!(find(b"MY_OTEL_SERVICE_NAME=x\0OTEL_SERVICE_NAMES=y\0OTEL_SERVICE_NAME\0", 1 << 20), None);
        assert_eq!(find(b"", 1 << 20), None);
    }

    #[test]
    fn entries_across_chunk_boundaries_are_whole() {
        // A 16 KiB chunk boundary falls inside the wanted entry and inside a long one before it.
        let mut block = vec![b'X'; 16 * 1024 - 5];
        block.extend_from_slice(b"\0OTEL_SERVICE_NAME=split-across\0");
        assert_eq!(find(&block, 1 << 20).as_deref(), Some("split-across"));
    }

    #[test]
    fn only_the_cap_is_scanned_and_long_values_are_refused() {
        let mut block = vec![b'A'; 2 << 20];
        block.extend_from_slice(b"\0OTEL_SERVICE_NAME=too-far\0");
        assert_eq!(find(&block, ENVIRON_SCAN_CAP), None, "beyond the scanned part");
        assert_eq!(find(&block, 4 << 20).as_deref(), Some("too-far"));
        let long = [b"OTEL_SERVICE_NAME=".as_slice(), &vec![b'v'; ENV_VALUE_CAP + 1], b"\0"].concat();
        assert_eq!(find(&long, 1 << 20), None);
    }

    #[test]
    fn several_variables_are_found_in_one_pass_each_by_its_first_entry() {
        let block =
            b"OTEL_RESOURCE_ATTRIBUTES=a=1\0PATH=/bin\0OTEL_SERVICE_NAME=svc\0OTEL_RESOURCE_ATTRIBUTES=b=2\0";
        let [service, attributes, missing] = find_variables(
            &block[..],
            [b"OTEL_SERVICE_NAME".as_slice(), b"OTEL_RESOURCE_ATTRIBUTES", b"HOME"],
            1 << 20,
        );
        assert_eq!(service.as_deref(), Some(b"svc".as_slice()));
        assert_eq!(attributes.as_deref(), Some(b"a=1".as_slice()));
        assert_eq!(missing, None);
        // A name that is a prefix of another is still told apart.
        let [short, long] = find_variables(&b"AB=2\0A=1\0"[..], [b"A".as_slice(), b"AB"], 1 << 20);
        assert_eq!((short.as_deref(), long.as_deref()), (Some(b"1".as_slice()), Some(b"2".as_slice())));
        // A first entry over the cap is not replaced by a later one: getenv returns the first.
        let long_first = [b"A=".as_slice(), &vec![b'v'; ENV_VALUE_CAP + 1], b"\0A=second\0"].concat();
        assert_eq!(find_variable(&long_first[..], b"A", 1 << 20), None);
    }

    /// A block that never ends, as a process can make its environment look: the scan stops at
    /// the cap having kept nothing but a chunk.
    #[test]
    fn an_endless_environment_is_read_only_up_to_the_cap() {
        let endless = std::io::repeat(b'A');
        assert_eq!(find_variable(endless, b"OTEL_SERVICE_NAME", ENVIRON_SCAN_CAP), None);
    }
}
