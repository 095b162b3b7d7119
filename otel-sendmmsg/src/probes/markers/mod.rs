//! Finds the executables and shared libraries that export the context marker
//! (`otel_sendmmsg_set_context`) in running processes, so a uprobe can be attached to each file
//! once; processes started later from a file already attached are covered by that uprobe. It
//! remembers which live processes map each file: once none does, the file's uprobe is released,
//! and at most a set number of files are attached at once.
//!
//! Everything here runs on the scan thread and treats other processes as hostile: their maps
//! are read by fields with a byte cap ([`proc_maps`]), only the regular file really mapped is
//! opened ([`mapped_file`]), and its symbols are read within a fixed budget ([`elf_marker`]).
//! The event loop only attaches to the descriptor found here, and closes it; the thread itself
//! is [`scan`].

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::RecvTimeoutError,
        Arc,
    },
    time::Duration,
};

use tracing::{debug, warn};

pub mod elf_marker;
pub mod mapped_file;
pub mod proc_maps;
pub mod proc_mounts;
pub mod scan;

use crate::process::read_stat;

use self::{
    elf_marker::{marker_offset, SizedFile},
    proc_maps::{executable_mappings, read_maps, FileId, Mapping},
    proc_mounts::Filesystems,
};

/// What the scan found for the event loop to do.
#[derive(Debug)]
pub enum Found {
    /// A file that exports the marker, open and checked: attach to it, then close it.
    Attach(Marker),
    /// No process maps this file any more: release its uprobe.
    Release { id: FileId, name: PathBuf },
}

/// A verified file exporting the marker.
#[derive(Debug)]
pub struct Marker {
    /// Open for reading, proved to be the mapped regular file: the uprobe goes on this very
    /// inode through `/proc/self/fd/N`.
    pub file: File,
    pub id: FileId,
    /// The marker function's offset in the file, as the uprobe wants it.
    pub offset: u64,
    /// `/proc/PID/root/<path>` of the process it was found in, for the log.
    pub name: PathBuf,
}

/// What has been looked at already, so each process and each file is examined once.
pub struct Discovery {
    proc_root: PathBuf,
    /// Never looked into: our own maps hold no marker, and reading them is noise.
    own_pid: u32,
    max_files: usize,
    /// Live processes already read: pid -> start time (so a reused pid is read again) and the
    /// files it maps.
    processes: HashMap<u32, Process>,
    files: HashMap<FileId, Known>,
    /// Files handed over for attaching and not released yet.
    attached: usize,
    /// Files that export the marker but were not attached because `max_files` were.
    refused: Arc<AtomicU64>,
    /// Files whose symbols were read since [`Discovery::take_files_read`] last asked.
    files_read: usize,
    deadline: Deadline,
    /// What each look that took longer than the deadline stalled on, one per thread left stuck.
    stuck: Vec<Stall>,
    /// [`look_into`], or a stand-in that stalls (tests).
    look_into: fn(&Path, &Mapping, &[u64], &AtomicBool) -> Option<Marker>,
    /// The mounts of the process last looked into (`/proc/PID`), for its next files; emptied
    /// after each scan, as mounts come and go.
    filesystems: Option<(PathBuf, Filesystems)>,
}

/// What a look that did not end in time was waiting on, and so what is not looked into again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stall {
    /// Opening the file through its process (`/proc/PID/map_files` waits on the process's
    /// memory lock, which the process itself can hold for ever): that user's processes.
    User(u32),
    /// Reading the file once open: its filesystem.
    Device(u64),
}

/// What looking into a file came to.
enum Look {
    Marker(Marker),
    NoMarker,
    /// Not looked into (a stall, or one before it): the file may be looked into through another
    /// process, so nothing is remembered of it.
    NotLooked,
}

/// How long looking into one file may take, and how many threads may be left stuck.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub each: Duration,
    pub stuck_at_most: usize,
}

impl Default for Deadline {
    /// A local file is opened and its symbols read in milliseconds (a large binary's `.symtab`,
    /// a few hundred on a slow disk); 10 s is only ever reached by a filesystem that does not
    /// answer. A stuck thread costs its stack (256 KiB, mostly untouched); one user can leave at
    /// most one, as its processes are not looked into again after it.
    fn default() -> Self {
        Deadline { each: Duration::from_secs(10), stuck_at_most: 16 }
    }
}

struct Process {
    start: u64,
    files: Vec<FileId>,
}

struct Known {
    /// The live processes seen mapping it.
    users: HashSet<u32>,
    state: State,
}

enum State {
    NoMarker,
    Attached {
        name: PathBuf,
    },
    /// Exports the marker, but the cap was reached: how each user maps it, to try again
    /// through one of them once a slot is free.
    OverCap {
        mappings: HashMap<u32, Mapping>,
    },
}

impl Discovery {
    /// Looks at the processes under `proc_root`; attaches at most `max_files` files at once and
    /// counts the files refused beyond that in `refused`.
    pub fn new(proc_root: &Path, max_files: usize, refused: Arc<AtomicU64>) -> Discovery {
        Discovery {
            proc_root: proc_root.to_owned(),
            own_pid: std::process::id(),
            max_files,
            processes: HashMap::new(),
            files: HashMap::new(),
            attached: 0,
            refused,
            files_read: 0,
            deadline: Deadline::default(),
            stuck: Vec::new(),
            look_into,
            filesystems: None,
        }
    }

    /// Forgets the processes that exited (releasing files no live process maps), reads the new
    /// ones, and tries files refused earlier if slots came free.
    pub fn scan(&mut self) -> Vec<Found> {
        let mut found = Vec::new();
        let alive = self.live_processes();
        let exited: Vec<u32> = self
            .processes
            .iter()
            .filter(|(pid, p)| alive.get(pid) != Some(&p.start))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in exited {
            if let Some(process) = self.processes.remove(&pid) {
                for id in process.files {
                    self.drop_user(id, pid, &mut found);
                }
            }
        }
        let mut new: Vec<(u32, u64)> =
            alive.into_iter().filter(|(pid, _)| !self.processes.contains_key(pid)).collect();
        new.sort_unstable();
        for (pid, start) in new {
            let dir = self.proc_root.join(pid.to_string());
            let maps = read_maps(&dir.join("maps")).unwrap_or_default();
            let mut files = Vec::new();
            for mapping in executable_mappings(&maps) {
                if !files.contains(&mapping.file) {
                    files.push(mapping.file);
                    self.add_user(pid, &dir, mapping, &mut found);
                }
            }
            self.processes.insert(pid, Process { start, files });
        }
        self.retry_over_cap(&mut found);
        self.filesystems = None;
        found
    }

    /// How many files had their symbols read since the last call (each read takes up to
    /// [`elf_marker::READ_BUDGET`], which the allocator keeps unless asked).
    pub fn take_files_read(&mut self) -> usize {
        std::mem::take(&mut self.files_read)
    }

    /// Files handed over for attaching and not released since.
    pub fn attached(&self) -> usize {
        self.attached
    }

    fn live_processes(&self) -> HashMap<u32, u64> {
        let mut alive = HashMap::new();
        for entry in std::fs::read_dir(&self.proc_root).into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == self.own_pid {
                continue;
            }
            if let Some(start) = read_stat(&entry.path()).map(|stat| stat.start_time) {
                alive.insert(pid, start);
            }
        }
        alive
    }

    fn add_user(&mut self, pid: u32, dir: &Path, mapping: Mapping, found: &mut Vec<Found>) {
        if let Some(known) = self.files.get_mut(&mapping.file) {
            known.users.insert(pid);
            if let State::OverCap { mappings } = &mut known.state {
                mappings.insert(pid, mapping);
            }
            return;
        }
        let id = mapping.file;
        let state = match self.examine(dir, &mapping) {
            Look::NotLooked => return,
            Look::NoMarker => State::NoMarker,
            Look::Marker(marker) if self.attached < self.max_files => {
                self.attached += 1;
                let name = marker.name.clone();
                found.push(Found::Attach(marker));
                State::Attached { name }
            }
            Look::Marker(marker) => {
                self.refuse(&marker.name);
                State::OverCap { mappings: HashMap::from([(pid, mapping)]) }
            }
        };
        self.files.insert(id, Known { users: HashSet::from([pid]), state });
    }

    fn drop_user(&mut self, id: FileId, pid: u32, found: &mut Vec<Found>) {
        let Some(known) = self.files.get_mut(&id) else {
            return;
        };
        known.users.remove(&pid);
        if let State::OverCap { mappings } = &mut known.state {
            mappings.remove(&pid);
        }
        if !known.users.is_empty() {
            return;
        }
        if let Some(Known { state: State::Attached { name }, .. }) = self.files.remove(&id) {
            self.attached -= 1;
            found.push(Found::Release { id, name });
        }
    }

    /// Looks into the file `mapping` names in process `dir`, on a thread of its own that is
    /// given [`Deadline::each`]: a file on a filesystem its owner serves (FUSE) can make the
    /// kernel wait on that owner in any lookup, `fstat` or read, forever. A thread still stuck
    /// then is left behind (it ends when the filesystem answers; what it found is dropped). What
    /// it waited on is not looked into again: the user of the process when it was still opening
    /// the file through it (a process can hold its own memory lock, on which `map_files` waits,
    /// for ever: only that user's processes lose discovery), else the file's device. After
    /// [`Deadline::stuck_at_most`] of them no new file is, so neither the scan nor its threads can
    /// be held without bound.
    ///
    /// Before that, the process's mountinfo must show the file's filesystem mounted and not
    /// FUSE ([`Filesystems::refuse`]): a thread waiting on a FUSE request cannot even be killed,
    /// so the deadline is for what remains (a network filesystem that stops answering).
    fn examine(&mut self, dir: &Path, mapping: &Mapping) -> Look {
        // The owner of /proc/PID, from the directory itself: nothing of the process is waited on.
        let user = std::fs::metadata(dir).ok().map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if self.stuck.len() >= self.deadline.stuck_at_most
            || self.stuck.contains(&Stall::Device(mapping.file.dev))
            || user.is_some_and(|uid| self.stuck.contains(&Stall::User(uid)))
        {
            return Look::NotLooked;
        }
        if self.filesystems.as_ref().is_none_or(|(of, _)| of != dir) {
            self.filesystems = Some((dir.to_owned(), Filesystems::of(dir)));
        }
        let Some((_, filesystems)) = self.filesystems.as_ref() else {
            return Look::NotLooked;
        };
        if let Some(why) = filesystems.refuse(mapping.file.dev) {
            debug!("context marker: not looked into {}: {why}", printable(&mapping.path));
            return Look::NoMarker;
        }
        let mounts = filesystems.mount_ids(mapping.file.dev);
        self.files_read += 1;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let opened = Arc::new(AtomicBool::new(false));
        let (dir_owned, owned, opened_there) = (dir.to_owned(), mapping.clone(), opened.clone());
        let look_into = self.look_into;
        let spawned =
            std::thread::Builder::new().name("marker-file".into()).stack_size(256 << 10).spawn(move || {
                let _ = sender.send(look_into(&dir_owned, &owned, &mounts, &opened_there));
            });
        if let Err(e) = spawned {
            warn!("context marker: no thread to look into a file: {e}");
            return Look::NotLooked;
        }
        match receiver.recv_timeout(self.deadline.each) {
            Ok(Some(marker)) => Look::Marker(marker),
            Ok(None) | Err(RecvTimeoutError::Disconnected) => Look::NoMarker,
            Err(RecvTimeoutError::Timeout) => {
                let (stall, what) = match (opened.load(Ordering::Acquire), user) {
                    (false, Some(uid)) => (
                        Stall::User(uid),
                        format!(
                            "opening it through process {} of user {uid} does not end; that user's processes",
                            dir.display()
                        ),
                    ),
                    _ => (
                        Stall::Device(mapping.file.dev),
                        format!(
                            "its filesystem (device {}:{}) does not answer; files on it",
                            libc::major(mapping.file.dev),
                            libc::minor(mapping.file.dev)
                        ),
                    ),
                };
                self.stuck.push(stall);
                warn!(
                    "context marker: gave up on {} after {:?}: {what} are not looked into again{}",
                    printable(&mapping.path),
                    self.deadline.each,
                    if self.stuck.len() >= self.deadline.stuck_at_most {
                        "; that is the last such stall: no new file is looked into from now on"
                    } else {
                        ""
                    }
                );
                Look::NotLooked
            }
        }
    }

    fn refuse(&mut self, name: &Path) {
        let before = self.refused.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            warn!(
                "context marker: not attached to {}: {} files are attached already, the most \
                 OTEL_SENDMMSG_MAX_CONTEXT_FILES allows; raise it to trace more (files refused \
                 are counted as context_files_refused and tried again once a slot is free)",
                printable(name),
                self.max_files
            );
        } else {
            debug!(
                "context marker: not attached to {}: {} files are attached already",
                printable(name),
                self.max_files
            );
        }
    }

    /// Gives the slots that came free to files refused earlier, reached through a process that
    /// maps them now.
    fn retry_over_cap(&mut self, found: &mut Vec<Found>) {
        let mut waiting: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, known)| matches!(known.state, State::OverCap { .. }))
            .map(|(id, _)| *id)
            .collect();
        waiting.sort_unstable();
        for id in waiting {
            if self.attached >= self.max_files {
                return;
            }
            let Some(Known { state: State::OverCap { mappings }, .. }) = self.files.get_mut(&id) else {
                continue;
            };
            let mut tries: Vec<(u32, Mapping)> = mappings.drain().collect();
            tries.sort_unstable_by_key(|(pid, _)| *pid);
            let marker = tries.iter().find_map(|(pid, mapping)| {
                let dir = self.proc_root.join(pid.to_string());
                match self.examine(&dir, mapping) {
                    Look::Marker(marker) => Some(marker),
                    Look::NoMarker | Look::NotLooked => None,
                }
            });
            let state = match marker {
                Some(marker) => {
                    self.attached += 1;
                    let name = marker.name.clone();
                    found.push(Found::Attach(marker));
                    State::Attached { name }
                }
                // None of its users maps it where it did: it is no longer what was refused.
                None => State::NoMarker,
            };
            if let Some(known) = self.files.get_mut(&id) {
                known.state = state;
            }
        }
    }
}

/// A path another process chose, fit for one log line: a newline in it would forge a line of its
/// own, so control characters (and quotes and backslashes, to stay unambiguous) are escaped.
pub fn printable(path: &Path) -> String {
    path.to_string_lossy().escape_debug().to_string()
}

/// Opens the file `mapping` names in process `dir` and reads whether it exports the marker.
/// `opened` is set once the file is open: from then on only its filesystem can keep us waiting.
fn look_into(dir: &Path, mapping: &Mapping, mounts: &[u64], opened: &AtomicBool) -> Option<Marker> {
    let file = mapped_file::open(dir, mapping, mounts)
        .inspect_err(|why| {
            debug!("context marker: not looked into {}: {}", printable(&mapping.path), why.escape_debug())
        })
        .ok()?;
    opened.store(true, Ordering::Release);
    let opened = file;
    let offset = marker_offset(&SizedFile { file: &opened.file, len: opened.len })?;
    let relative = mapping.path.strip_prefix("/").unwrap_or(&mapping.path);
    let mut name = dir.join("root").join(relative).into_os_string();
    if mapping.deleted {
        name.push(" (deleted)");
    }
    debug!(
        "context marker: found in {} (offset {offset:#x}, through {})",
        printable(Path::new(&name)),
        printable(&opened.via)
    );
    Some(Marker { file: opened.file, id: mapping.file, offset, name: name.into() })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A stand-in for /proc: `<pid>/stat`, `<pid>/maps`, `<pid>/root` (the real root) and
    /// `<pid>/map_files/<range>` links to the files, so the bookkeeping is tested without root.
    struct FakeProc {
        dir: PathBuf,
        next_range: u64,
    }

    impl FakeProc {
        fn new(name: &str) -> FakeProc {
            let dir =
                std::env::temp_dir().join(format!("otel-sendmmsg-fakeproc-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("proc")).unwrap();
            FakeProc { dir, next_range: 0x7f00_0000_0000 }
        }

        fn proc(&self) -> PathBuf {
            self.dir.join("proc")
        }

        /// A process mapping `files` executable; `linked`: with map_files entries.
        fn process(&mut self, pid: u32, files: &[&Path], linked: bool) {
            let files: Vec<(&Path, FileId)> = files.iter().map(|f| (*f, identity(f))).collect();
            self.process_as(pid, &files, linked)
        }

        /// A process whose maps name these paths with these identities.
        fn process_as(&mut self, pid: u32, files: &[(&Path, FileId)], linked: bool) {
            let dir = self.proc().join(pid.to_string());
            std::fs::create_dir_all(dir.join("map_files")).unwrap();
            std::fs::write(
                dir.join("stat"),
                format!("{pid} (app) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {pid}0 0"),
            )
            .unwrap();
            std::os::unix::fs::symlink("/", dir.join("root")).unwrap();
            let mut maps = String::new();
            for (file, id) in files {
                let (start, end) = (self.next_range, self.next_range + 0x1000);
                self.next_range += 0x10000;
                let (major, minor) = (libc::major(id.dev), libc::minor(id.dev));
                maps += &format!(
                    "{start:x}-{end:x} r-xp 00000000 {major:02x}:{minor:02x} {}    {}\n",
                    id.ino,
                    file.display()
                );
                if linked {
                    std::os::unix::fs::symlink(file, dir.join(format!("map_files/{start:x}-{end:x}")))
                        .unwrap();
                }
            }
            std::fs::write(dir.join("maps"), maps).unwrap();
            // Every device mounted, as a local filesystem.
            let mut devices: Vec<u64> = files.iter().map(|(_, id)| id.dev).collect();
            devices.dedup();
            let mountinfo: String = devices
                .iter()
                .enumerate()
                .map(|(i, dev)| {
                    format!(
                        "{} 1 {}:{} / /m{i} rw - ext4 none rw\n",
                        100 + i,
                        libc::major(*dev),
                        libc::minor(*dev)
                    )
                })
                .collect();
            std::fs::write(dir.join("mountinfo"), mountinfo).unwrap();
        }

        fn exit(&self, pid: u32) {
            std::fs::remove_dir_all(self.proc().join(pid.to_string())).unwrap();
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn identity(path: &Path) -> FileId {
        let meta = std::fs::metadata(path).unwrap();
        FileId { dev: meta.dev(), ino: meta.ino() }
    }

    fn marker_library(dir: &Path) -> Vec<u8> {
        let source = format!("void {}(void) {{}}\n", otel_sendmmsg_common::CONTEXT_MARKER_SYMBOL);
        std::fs::write(dir.join("marker.c"), source).unwrap();
        let out = dir.join("marker.so");
        let status = std::process::Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&out)
            .arg(dir.join("marker.c"))
            .status()
            .expect("running gcc");
        assert!(status.success());
        std::fs::read(out).unwrap()
    }

    /// (attached, released) file names of one scan.
    fn outcome(found: Vec<Found>) -> (Vec<String>, Vec<String>) {
        let base = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        let mut attached = Vec::new();
        let mut released = Vec::new();
        for f in found {
            match f {
                Found::Attach(m) => {
                    assert_eq!(
                        m.id.ino,
                        m.file.metadata().unwrap().ino(),
                        "the descriptor is the file found"
                    );
                    attached.push(base(&m.name));
                }
                Found::Release { name, .. } => released.push(base(&name)),
            }
        }
        (attached, released)
    }

    #[test]
    fn files_are_capped_released_when_unmapped_and_refused_ones_get_free_slots() {
        let mut proc = FakeProc::new("cap");
        let library = marker_library(&proc.dir);
        let libs: Vec<PathBuf> = (0..3).map(|i| proc.dir.join(format!("lib{i} with space.so"))).collect();
        for lib in &libs {
            std::fs::write(lib, &library).unwrap();
        }
        let plain = proc.dir.join("plain.so");
        std::fs::write(&plain, b"not an ELF file").unwrap();
        proc.process(100, &[&libs[0], &libs[1], &plain], true);
        proc.process(101, &[&libs[2], &libs[0]], false);
        let refused = Arc::new(AtomicU64::new(0));
        let mut discovery = Discovery::new(&proc.proc(), 2, refused.clone());

        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(outcome(discovery.scan()), (names(&["lib0 with space.so", "lib1 with space.so"]), vec![]));
        assert_eq!((refused.load(Ordering::Relaxed), discovery.attached()), (1, 2), "lib2 over the cap");
        assert_eq!(outcome(discovery.scan()), (vec![], vec![]), "nothing new");

        proc.exit(100);
        assert_eq!(
            outcome(discovery.scan()),
            (names(&["lib2 with space.so"]), names(&["lib1 with space.so"])),
            "lib1 unmapped; lib0 still mapped by 101; lib2 takes the free slot"
        );
        proc.exit(101);
        let (attached, mut released) = outcome(discovery.scan());
        released.sort();
        assert_eq!((attached, released), (vec![], names(&["lib0 with space.so", "lib2 with space.so"])));
        assert_eq!(discovery.attached(), 0);
        assert!(
            discovery.files.is_empty() && discovery.processes.is_empty(),
            "nothing kept of exited processes"
        );
        assert_eq!(refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn decoys_where_the_mapped_path_was_are_never_opened_for_reading() {
        let mut proc = FakeProc::new("decoys");
        let library = marker_library(&proc.dir);
        let genuine = proc.dir.join("genuine.so");
        std::fs::write(&genuine, &library).unwrap();
        let swapped = proc.dir.join("swapped.so");
        std::fs::write(&swapped, &library).unwrap();
        let mapped = identity(&swapped);
        let mut discovery = Discovery::new(&proc.proc(), 8, Arc::default());
        // The maps line names swapped.so's inode; the path is a FIFO by now.
        std::fs::remove_file(&swapped).unwrap();
        let name = std::ffi::CString::new(swapped.as_os_str().to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated name.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o666) }, 0);
        proc.process_as(200, &[(&swapped, mapped)], false);
        assert_eq!(outcome(discovery.scan()), (vec![], vec![]), "the FIFO");
        proc.exit(200);
        assert_eq!(outcome(discovery.scan()), (vec![], vec![]));
        // Then a symlink to a genuine marker library.
        std::fs::remove_file(&swapped).unwrap();
        std::os::unix::fs::symlink(&genuine, &swapped).unwrap();
        proc.process_as(201, &[(&swapped, mapped)], false);
        assert_eq!(outcome(discovery.scan()), (vec![], vec![]), "the symlink");
        // The genuine library, mapped under its own name, is found.
        proc.process(202, &[&genuine], false);
        assert_eq!(outcome(discovery.scan()), (vec!["genuine.so".to_string()], vec![]));
    }

    /// Stands in for what never answers: files on devices of major 250 once open (a filesystem),
    /// and of major 251 while being opened through their process (its memory lock).
    fn stalling(dir: &Path, mapping: &Mapping, mounts: &[u64], opened: &AtomicBool) -> Option<Marker> {
        match libc::major(mapping.file.dev) {
            250 => opened.store(true, Ordering::Release),
            251 => {}
            _ => return look_into(dir, mapping, mounts, opened),
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    #[test]
    fn a_file_that_never_answers_costs_one_deadline_per_device_and_a_bounded_number_of_threads() {
        let mut proc = FakeProc::new("stall");
        let library = marker_library(&proc.dir);
        let ok: Vec<PathBuf> = (0..3).map(|i| proc.dir.join(format!("ok{i}.so"))).collect();
        for lib in &ok {
            std::fs::write(lib, &library).unwrap();
        }
        let fuse = |minor, ino| FileId { dev: libc::makedev(250, minor), ino };
        let stall = proc.dir.join("stall.so");
        let mut discovery = Discovery::new(&proc.proc(), 8, Arc::default());
        discovery.deadline = Deadline { each: Duration::from_millis(300), stuck_at_most: 2 };
        discovery.look_into = stalling;

        // One stuck file; a local one in the same process is still found, and another file on
        // the stuck device is not waited on again.
        proc.process_as(
            300,
            &[(&stall, fuse(1, 10)), (&ok[0], identity(&ok[0])), (&stall, fuse(1, 11))],
            false,
        );
        let started = std::time::Instant::now();
        assert_eq!(outcome(discovery.scan()), (vec!["ok0.so".to_string()], vec![]));
        assert!(started.elapsed() < Duration::from_millis(300 * 2), "one deadline, not two");
        assert_eq!(discovery.stuck, vec![Stall::Device(libc::makedev(250, 1))]);

        // A second device stuck: the most allowed; from then on no new file is looked into.
        proc.process_as(301, &[(&stall, fuse(2, 12)), (&ok[1], identity(&ok[1]))], false);
        assert_eq!(outcome(discovery.scan()), (vec![], vec![]));
        proc.process(302, &[&ok[2]], false);
        assert_eq!(outcome(discovery.scan()), (vec![], vec![]));
        assert_eq!(discovery.stuck.len(), 2);
    }

    #[test]
    fn a_process_that_holds_its_own_lock_costs_only_its_users_discovery() {
        let mut proc = FakeProc::new("jammed");
        let library = marker_library(&proc.dir);
        let shared = proc.dir.join("shared.so");
        std::fs::write(&shared, &library).unwrap();
        let jammed = |ino| FileId { dev: libc::makedev(251, 0), ino };
        let mut discovery = Discovery::new(&proc.proc(), 8, Arc::default());
        discovery.deadline = Deadline { each: Duration::from_millis(300), stuck_at_most: 4 };
        discovery.look_into = stalling;
        // A process of user 4321 whose opens never end; it also maps the genuine library, which
        // must not be written off with it.
        proc.process_as(400, &[(&shared, jammed(1))], false);
        std::os::unix::fs::chown(proc.proc().join("400"), Some(4321), None).unwrap();
        assert_eq!(outcome(discovery.scan()), (vec![], vec![]));
        assert_eq!(discovery.stuck, vec![Stall::User(4321)]);
        // That user's next process is not looked into; another user's is, the same device too,
        // and the genuine library is found through it.
        proc.process_as(401, &[(&shared, identity(&shared))], false);
        std::os::unix::fs::chown(proc.proc().join("401"), Some(4321), None).unwrap();
        assert_eq!(outcome(discovery.scan()), (vec![], vec![]));
        proc.process(402, &[&shared], false);
        assert_eq!(outcome(discovery.scan()), (vec!["shared.so".to_string()], vec![]));
        assert_eq!(discovery.stuck, vec![Stall::User(4321)], "one stuck thread, nothing else written off");
    }
}
