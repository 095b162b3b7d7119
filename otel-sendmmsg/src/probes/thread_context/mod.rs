//! Finds the processes whose executable or libraries define the OTEP 4947 TLS variable
//! `otel_thread_ctx_v1`, and works out for each where its threads keep it ([`tls_access`]), so
//! the BPF side can read a thread's published span at each call (`THREAD_CONTEXT_ACCESS`). A
//! file is read once, whatever number of processes map it; the relocations the dynamic linker
//! applied are read per process. A process is looked at when it is first seen (every
//! [`scan::RESCAN_PROCESSES`]), and again when its new program makes its first call (an exec
//! keeps the pid but brings other files, a library may be loaded late); an exited process's
//! entry is removed.
//!
//! Everything here runs on the scan thread and treats other processes as hostile: their maps
//! are read by fields with a byte cap ([`proc_maps`]), only the regular file really mapped is
//! opened ([`mapped_file`]), its symbols and relocations are read within a fixed budget
//! ([`elf_tls`]), and each look at a file or into a process's memory has a deadline. The thread
//! itself is [`scan`].

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::RecvTimeoutError,
        Arc,
    },
    time::Duration,
};

use otel_sendmmsg_common::ThreadContextAccess;
use tracing::{debug, warn};

pub mod elf_tls;
pub mod mapped_file;
pub mod proc_maps;
pub mod proc_mounts;
pub mod scan;
pub mod tls_access;

use self::{
    elf_tls::{thread_context_variable, Defined, SizedFile, TlsVariable},
    proc_maps::{executable_mappings, read_maps, FileId, Mapping},
    proc_mounts::Filesystems,
    tls_access::{Libc, Module, Unresolved},
};
use crate::process::{process_context::ProcessMemory, read_stat};

/// What the scan found for the event loop to do with the BPF side's map.
#[derive(Debug, PartialEq)]
pub enum Found {
    /// A process whose threads' `otel_thread_ctx_v1` can be read from now on. `again`: it was
    /// reached before, in the same way (its entry is put back all the same: an exec of the
    /// same program removed it).
    Reach { pid: u32, access: ThreadContextAccess, file: PathBuf, again: bool },
    /// A process reached before that exited or was looked at anew: its entry goes.
    Forget { pid: u32 },
}

/// What has been looked at already, so each process and each file is examined once.
pub struct Discovery {
    proc_root: PathBuf,
    /// Never looked into: the sidecar publishes no context.
    own_pid: u32,
    max_processes: usize,
    /// Live processes already read: pid -> start time (so a reused pid is read again), the
    /// files it maps, and whether it is reached.
    processes: HashMap<u32, Process>,
    files: HashMap<FileId, Known>,
    /// Processes with an entry in the BPF side's map.
    reached: usize,
    scans: u64,
    /// Processes that define the variable but were not reached because `max_processes` were.
    refused: Arc<AtomicU64>,
    /// Files whose symbols were read since [`Discovery::take_files_read`] last asked.
    files_read: usize,
    deadline: Deadline,
    /// What each look that took longer than the deadline stalled on, one per thread left stuck.
    stuck: Vec<Stall>,
    /// [`look_into`], or a stand-in that stalls (tests).
    look_into: fn(&Path, &Mapping, &[u64], &AtomicBool) -> Defined,
    /// The mounts of the process last looked into (`/proc/PID`), for its next files; emptied
    /// after each scan, as mounts come and go.
    filesystems: Option<(PathBuf, Filesystems)>,
}

/// What a look that did not end in time was waiting on, and so what is not looked into again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stall {
    /// Opening a file through its process (`/proc/PID/map_files` waits on the process's memory
    /// lock, which the process itself can hold for ever), or reading its memory: that user's
    /// processes.
    User(u32),
    /// Reading the file once open: its filesystem.
    Device(u64),
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
    reach: Reach,
    /// What the BPF side was given for it, when reached.
    access: Option<ThreadContextAccess>,
    /// Its name when it was looked at (`/proc/PID/stat`).
    comm: String,
    /// It calls `sendmmsg` (its program's first call named it): while it is not reached, its
    /// mappings are read again every [`RELOOK_EVERY`] scans, for a library it loads late.
    calls: bool,
    /// First seen by the last scan: read once more by the next, as that scan may have come
    /// between its exec and its dynamic linker mapping its libraries.
    new: bool,
}

/// Scans between reads of the mappings of calling processes not reached: a library loaded with
/// `dlopen` after the first call is found within this many [`scan::RESCAN_PROCESSES`].
const RELOOK_EVERY: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Nothing to reach: no file of it defines the variable, or it cannot be located.
    Nothing,
    Reached,
    /// Defines it, but `max_processes` were reached: tried again once a slot is free.
    OverCap,
    /// Its dynamic linker had not resolved the variable's descriptor yet: tried again at the
    /// next scans, this many more times.
    Retry(u32),
}

/// Scans a process waits for a lazily resolved descriptor: a lazily bound TLSDESC (glibc before
/// 2.34) is resolved at the thread's first access, usually right at start.
const RETRIES: u32 = 30;

struct Known {
    /// The live processes seen mapping it.
    users: HashSet<u32>,
    defined: Arc<Defined>,
}

impl Discovery {
    /// Looks at the processes under `proc_root`; reaches at most `max_processes` at once and
    /// counts the processes refused beyond that in `refused`.
    pub fn new(proc_root: &Path, max_processes: usize, refused: Arc<AtomicU64>) -> Discovery {
        Discovery {
            proc_root: proc_root.to_owned(),
            own_pid: std::process::id(),
            max_processes,
            processes: HashMap::new(),
            files: HashMap::new(),
            reached: 0,
            scans: 0,
            refused,
            files_read: 0,
            deadline: Deadline::default(),
            stuck: Vec::new(),
            look_into,
            filesystems: None,
        }
    }

    /// Forgets the processes that exited, reads the new ones and those `named` (their
    /// program changed or started calling), and retries those waiting for a slot or for their
    /// dynamic linker.
    pub fn scan(&mut self, named: &[u32]) -> Vec<Found> {
        let mut found = Vec::new();
        self.scans += 1;
        let mut again = named.to_vec();
        if self.scans.is_multiple_of(RELOOK_EVERY) {
            again.extend(self.changed(|p| p.calls));
        }
        let alive = self.live_processes();
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(pid, p)| alive.get(pid).map(|(start, _)| start) != Some(&p.start))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.forget(pid, &mut found);
        }
        // A process seen between its fork and its exec was read as the program it was then; the
        // exec keeps pid and start time but, nearly always, changes its name.
        let renamed: Vec<u32> = self
            .processes
            .iter()
            .filter(|(pid, p)| alive.get(pid).is_some_and(|(_, comm)| *comm != p.comm))
            .map(|(pid, _)| *pid)
            .collect();
        again.extend(renamed);
        again.extend(self.changed(|p| p.new));
        for process in self.processes.values_mut() {
            process.new = false;
        }
        again.sort_unstable();
        again.dedup();
        for &pid in &again {
            let Some(before) = self.processes.get(&pid).map(|p| p.access) else {
                continue;
            };
            let (start, calls) = (self.processes[&pid].start, self.processes[&pid].calls);
            let comm = alive.get(&pid).map(|(_, comm)| comm.clone()).unwrap_or_default();
            self.forget(pid, &mut Vec::new());
            let mut now = Vec::new();
            self.look_at(pid, start, comm, &mut now);
            if let Some(process) = self.processes.get_mut(&pid) {
                process.calls = calls;
            }
            for item in &mut now {
                if let Found::Reach { access, again, .. } = item {
                    *again = before == Some(*access);
                }
            }
            if before.is_some() && now.is_empty() {
                found.push(Found::Forget { pid });
            }
            found.extend(now);
        }
        let mut new: Vec<(u32, (u64, String))> =
            alive.into_iter().filter(|(pid, _)| !self.processes.contains_key(pid)).collect();
        new.sort_unstable();
        for (pid, (start, comm)) in new {
            self.look_at(pid, start, comm, &mut found);
            if let Some(process) = self.processes.get_mut(&pid) {
                process.new = true;
            }
        }
        // Only the processes whose first call named them are known callers; a renamed one is not.
        for pid in named {
            if let Some(process) = self.processes.get_mut(pid) {
                process.calls = true;
            }
        }
        self.retry(&mut found);
        self.filesystems = None;
        found
    }

    /// How many files had their symbols read since the last call (each read takes up to
    /// [`elf_tls::READ_BUDGET`], which the allocator keeps unless asked).
    pub fn take_files_read(&mut self) -> usize {
        std::mem::take(&mut self.files_read)
    }

    /// The processes not reached, of those `which` picks, whose executable mappings name other
    /// files than when they were looked at.
    fn changed(&self, which: impl Fn(&Process) -> bool) -> Vec<u32> {
        let mut changed: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| which(p) && p.reach == Reach::Nothing)
            .filter(|(pid, p)| {
                let maps = read_maps(&self.proc_root.join(pid.to_string()).join("maps")).unwrap_or_default();
                let mut files: Vec<FileId> = executable_mappings(&maps).iter().map(|m| m.file).collect();
                files.sort_unstable();
                files.dedup();
                let mut known = p.files.clone();
                known.sort_unstable();
                !files.is_empty() && files != known
            })
            .map(|(pid, _)| *pid)
            .collect();
        changed.sort_unstable();
        changed
    }

    /// Processes whose threads' context the BPF side reads now.
    pub fn reached(&self) -> usize {
        self.reached
    }

    /// pid -> (start time, name) of every process but ours.
    fn live_processes(&self) -> HashMap<u32, (u64, String)> {
        let mut alive = HashMap::new();
        for entry in std::fs::read_dir(&self.proc_root).into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == self.own_pid {
                continue;
            }
            if let Some(stat) = read_stat(&entry.path()) {
                alive.insert(pid, (stat.start_time, stat.comm));
            }
        }
        alive
    }

    fn forget(&mut self, pid: u32, found: &mut Vec<Found>) {
        let Some(process) = self.processes.remove(&pid) else {
            return;
        };
        if process.reach == Reach::Reached {
            self.reached -= 1;
            found.push(Found::Forget { pid });
        }
        for id in process.files {
            if let Some(known) = self.files.get_mut(&id) {
                known.users.remove(&pid);
                if known.users.is_empty() {
                    self.files.remove(&id);
                }
            }
        }
    }

    /// Reads a process's maps, looks into the files it maps that were not looked into yet, and
    /// reaches it if one of them defines the variable.
    fn look_at(&mut self, pid: u32, start: u64, comm: String, found: &mut Vec<Found>) {
        let dir = self.proc_root.join(pid.to_string());
        let maps = read_maps(&dir.join("maps")).unwrap_or_default();
        let mappings = executable_mappings(&maps);
        let mut files = Vec::new();
        let mut defining = Vec::new();
        for mapping in &mappings {
            if files.contains(&mapping.file) {
                continue;
            }
            files.push(mapping.file);
            let Some(defined) = self.defined(pid, &dir, mapping) else {
                continue;
            };
            match &*defined {
                Defined::Tls(_) => defining.push((mapping.clone(), defined)),
                Defined::NotTls => debug!(
                    "thread context: process {pid} maps {}, which defines otel_thread_ctx_v1 but not as a TLS variable: not read",
                    printable(&mapping.path)
                ),
                Defined::No => {}
            }
        }
        let reach = if defining.is_empty() { Reach::Nothing } else { Reach::Retry(RETRIES) };
        self.processes
            .insert(pid, Process { start, files, reach, access: None, comm, calls: false, new: false });
        if reach != Reach::Nothing {
            let libc = libc_of(&mappings);
            self.try_reach(pid, &dir, libc, defining, found);
        }
    }

    /// The file's verdict, looked into once for all the processes that map it; `None` when it
    /// could not be looked into (it may be, through another process).
    fn defined(&mut self, pid: u32, dir: &Path, mapping: &Mapping) -> Option<Arc<Defined>> {
        if let Some(known) = self.files.get_mut(&mapping.file) {
            known.users.insert(pid);
            return Some(known.defined.clone());
        }
        let defined = Arc::new(self.examine(dir, mapping)?);
        self.files.insert(mapping.file, Known { users: HashSet::from([pid]), defined: defined.clone() });
        Some(defined)
    }

    /// Works out where the process's threads keep the variable, in a thread under the deadline
    /// (it reads the process's memory, whose lock the process can hold), and hands it over.
    fn try_reach(
        &mut self,
        pid: u32,
        dir: &Path,
        libc: Libc,
        defining: Vec<(Mapping, Arc<Defined>)>,
        found: &mut Vec<Found>,
    ) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        if self.reached >= self.max_processes {
            if process.reach != Reach::OverCap {
                process.reach = Reach::OverCap;
                self.refuse(pid);
            }
            return;
        }
        let tries = match process.reach {
            Reach::Retry(n) => n,
            _ => RETRIES,
        };
        let (dir_owned, start) = (dir.to_owned(), process.start);
        let resolved =
            self.with_deadline(dir, None, move |_| Some(resolve(&dir_owned, pid, libc, &defining)));
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        process.reach = match resolved {
            Some(Ok((mut access, file))) => {
                access.start_ticks = start;
                access.ns_per_tick = crate::process::ns_per_tick();
                self.reached += 1;
                process.access = Some(access);
                found.push(Found::Reach { pid, access, file, again: false });
                Reach::Reached
            }
            Some(Err(Unresolved::NotYet(why))) if tries > 1 => {
                debug!("thread context: process {pid}: {why}; trying again");
                Reach::Retry(tries - 1)
            }
            Some(Err(why)) => {
                let why = match why {
                    Unresolved::NotYet(why) => format!("{why} after {RETRIES} scans"),
                    Unresolved::Never(why) => why,
                };
                debug!("thread context: process {pid} defines otel_thread_ctx_v1, not read: {why}");
                Reach::Nothing
            }
            None => Reach::Nothing,
        };
    }

    fn refuse(&mut self, pid: u32) {
        let before = self.refused.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            warn!(
                "thread context: not read in process {pid}: {} processes are read already, the most \
                 OTEL_SENDMMSG_MAX_CONTEXT_PROCESSES allows; raise it to read more (processes refused are \
                 counted as context_processes_refused and tried again once a slot is free)",
                self.max_processes
            );
        } else {
            debug!(
                "thread context: not read in process {pid}: {} processes are read already",
                self.max_processes
            );
        }
    }

    /// Tries again the processes waiting for a slot or for their dynamic linker.
    fn retry(&mut self, found: &mut Vec<Found>) {
        let mut waiting: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| matches!(p.reach, Reach::OverCap | Reach::Retry(_)))
            .map(|(pid, _)| *pid)
            .collect();
        waiting.sort_unstable();
        for pid in waiting {
            if self.reached >= self.max_processes && self.processes[&pid].reach == Reach::OverCap {
                continue;
            }
            let Some(process) = self.processes.get(&pid) else { continue };
            let defining: Vec<(FileId, Arc<Defined>)> = process
                .files
                .iter()
                .filter_map(|id| Some((*id, self.files.get(id)?.defined.clone())))
                .filter(|(_, d)| matches!(**d, Defined::Tls(_)))
                .collect();
            // The mappings are read again: where each file is mapped is what the access needs.
            let dir = self.proc_root.join(pid.to_string());
            let maps = read_maps(&dir.join("maps")).unwrap_or_default();
            let mappings = executable_mappings(&maps);
            let with_mappings: Vec<(Mapping, Arc<Defined>)> = defining
                .into_iter()
                .filter_map(|(id, d)| Some((mappings.iter().find(|m| m.file == id)?.clone(), d)))
                .collect();
            if with_mappings.is_empty() {
                if let Some(p) = self.processes.get_mut(&pid) {
                    p.reach = Reach::Nothing;
                }
                continue;
            }
            self.try_reach(pid, &dir, libc_of(&mappings), with_mappings, found);
        }
    }

    /// Looks into the file `mapping` names in process `dir`, under the deadline: a file on a
    /// filesystem its owner serves (FUSE) can make the kernel wait on that owner in any lookup,
    /// `fstat` or read, forever.
    ///
    /// Before that, the process's mountinfo must show the file's filesystem mounted and not
    /// FUSE ([`Filesystems::refuse`]): a thread waiting on a FUSE request cannot even be killed,
    /// so the deadline is for what remains (a network filesystem that stops answering).
    fn examine(&mut self, dir: &Path, mapping: &Mapping) -> Option<Defined> {
        if self.filesystems.as_ref().is_none_or(|(of, _)| of != dir) {
            self.filesystems = Some((dir.to_owned(), Filesystems::of(dir)));
        }
        let (_, filesystems) = self.filesystems.as_ref()?;
        if let Some(why) = filesystems.refuse(mapping.file.dev) {
            debug!("thread context: not looked into {}: {why}", printable(&mapping.path));
            return Some(Defined::No);
        }
        let mounts = filesystems.mount_ids(mapping.file.dev);
        let (dir_owned, owned, look_into) = (dir.to_owned(), mapping.clone(), self.look_into);
        let looked = self.with_deadline(dir, Some(mapping), move |opened| {
            Some(look_into(&dir_owned, &owned, &mounts, opened))
        });
        if looked.is_some() {
            self.files_read += 1;
        }
        looked
    }

    /// Runs `work` on a thread of its own given [`Deadline::each`]. A thread still stuck then is
    /// left behind (it ends when what it waits on answers; what it found is dropped), and what
    /// it waited on is not looked into again: the user of the process while it was still
    /// reaching into the process (a process can hold its own memory lock, on which
    /// `map_files` and reading its memory wait, for ever: only that user's processes lose
    /// discovery), else the device of the file it had opened (`mapping`). After
    /// [`Deadline::stuck_at_most`] of them nothing new is looked into, so neither the scan nor
    /// its threads can be held without bound. `None`: not looked into, or it found nothing.
    fn with_deadline<T: Send + 'static>(
        &mut self,
        dir: &Path,
        mapping: Option<&Mapping>,
        work: impl FnOnce(&AtomicBool) -> Option<T> + Send + 'static,
    ) -> Option<T> {
        // The owner of /proc/PID, from the directory itself: nothing of the process is waited on.
        let user = std::fs::metadata(dir).ok().map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if self.stuck.len() >= self.deadline.stuck_at_most
            || mapping.is_some_and(|m| self.stuck.contains(&Stall::Device(m.file.dev)))
            || user.is_some_and(|uid| self.stuck.contains(&Stall::User(uid)))
        {
            return None;
        }
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let opened = Arc::new(AtomicBool::new(false));
        let opened_there = opened.clone();
        let spawned =
            std::thread::Builder::new().name("context-look".into()).stack_size(256 << 10).spawn(move || {
                let _ = sender.send(work(&opened_there));
            });
        if let Err(e) = spawned {
            warn!("thread context: no thread to look into a process: {e}");
            return None;
        }
        match receiver.recv_timeout(self.deadline.each) {
            Ok(result) => result,
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                let what_path = mapping.map_or_else(|| dir.display().to_string(), |m| printable(&m.path));
                let (stall, what) = match (opened.load(Ordering::Acquire), user, mapping) {
                    (true, _, Some(m)) | (false, None, Some(m)) => (
                        Stall::Device(m.file.dev),
                        format!(
                            "its filesystem (device {}:{}) does not answer; files on it",
                            libc::major(m.file.dev),
                            libc::minor(m.file.dev)
                        ),
                    ),
                    (_, Some(uid), _) => (
                        Stall::User(uid),
                        format!(
                            "reaching into process {} of user {uid} does not end; that user's processes",
                            dir.display()
                        ),
                    ),
                    (_, None, None) => return None,
                };
                self.stuck.push(stall);
                warn!(
                    "thread context: gave up on {what_path} after {:?}: {what} are not looked into again{}",
                    self.deadline.each,
                    if self.stuck.len() >= self.deadline.stuck_at_most {
                        "; that is the last such stall: nothing new is looked into from now on"
                    } else {
                        ""
                    }
                );
                None
            }
        }
    }
}

/// musl's dynamic loader is `ld-musl-<arch>.so.1`; anything else is taken for glibc.
fn libc_of(mappings: &[Mapping]) -> Libc {
    let musl = mappings
        .iter()
        .any(|m| m.path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"ld-musl-")));
    if musl {
        Libc::Musl
    } else {
        Libc::Glibc
    }
}

/// `AT_ENTRY`: the executable's entry point, in `/proc/PID/auxv`.
const AT_ENTRY: u64 = 9;
/// auxv is a few dozen pairs.
const AUXV_CAP: u64 = 4096;

/// The process's executable's entry point, from its auxiliary vector.
fn entry_point(dir: &Path) -> Option<u64> {
    let auxv = crate::process::read::read_capped(dir, "auxv", AUXV_CAP).ok()?;
    auxv.chunks_exact(16).find_map(|pair| {
        let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
        let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
        (key == AT_ENTRY).then_some(value)
    })
}

/// Where process `pid`'s threads keep the variable, from the first file that lets it be located:
/// the executable's own definition first (the dynamic linker binds every reference to it then).
fn resolve(
    dir: &Path,
    pid: u32,
    libc: Libc,
    defining: &[(Mapping, Arc<Defined>)],
) -> Result<(ThreadContextAccess, PathBuf), Unresolved> {
    let entry = entry_point(dir);
    let memory = ProcessMemory(pid);
    let mut modules: Vec<(&Mapping, &TlsVariable, bool)> = defining
        .iter()
        .filter_map(|(mapping, defined)| match &**defined {
            Defined::Tls(variable) => {
                Some((mapping, variable, entry.is_some_and(|e| (mapping.start..mapping.end).contains(&e))))
            }
            _ => None,
        })
        .collect();
    modules.sort_by_key(|(_, _, executable)| !executable);
    let mut last = Unresolved::Never("no mapping of the file matches its segments".into());
    for (mapping, variable, executable) in modules {
        let Some(bias) = tls_access::bias(variable, mapping.start, mapping.offset) else {
            continue;
        };
        match tls_access::resolve(&Module { variable, bias, executable }, libc, &memory) {
            Ok(access) => return Ok((access, mapping.path.clone())),
            Err(why) => last = why,
        }
    }
    Err(last)
}

/// A path another process chose, fit for one log line: a newline in it would forge a line of its
/// own, so control characters (and quotes and backslashes, to stay unambiguous) are escaped.
pub fn printable(path: &Path) -> String {
    path.to_string_lossy().escape_debug().to_string()
}

/// Opens the file `mapping` names in process `dir` and reads what it defines. `opened` is set
/// once the file is open: from then on only its filesystem can keep us waiting.
fn look_into(dir: &Path, mapping: &Mapping, mounts: &[u64], opened: &AtomicBool) -> Defined {
    let file = match mapped_file::open(dir, mapping, mounts) {
        Ok(file) => file,
        Err(why) => {
            debug!("thread context: not looked into {}: {}", printable(&mapping.path), why.escape_debug());
            return Defined::No;
        }
    };
    opened.store(true, Ordering::Release);
    let defined = thread_context_variable(&SizedFile { file: &file.file, len: file.len });
    if let Defined::Tls(variable) = &defined {
        debug!(
            "thread context: otel_thread_ctx_v1 defined in {} ({}, {} relocations, through {})",
            printable(&mapping.path),
            if variable.exported { ".dynsym" } else { ".symtab only" },
            variable.relocations.len(),
            printable(&file.via)
        );
    }
    defined
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
            // The first file is the executable: its entry point is in its mapping.
            let auxv: Vec<u8> =
                [AT_ENTRY, self.next_range + 0x100, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
            std::fs::write(dir.join("auxv"), auxv).unwrap();
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

    /// An executable that defines the variable (local-exec: no memory of the process is read
    /// to locate it).
    fn defining_executable(dir: &Path) -> Vec<u8> {
        let source =
            "__thread void *otel_thread_ctx_v1;\nint main(void) { otel_thread_ctx_v1 = 0; return 0; }\n";
        std::fs::write(dir.join("app.c"), source).unwrap();
        let out = dir.join("app");
        let status = std::process::Command::new("gcc")
            .args(["-O2", "-Wl,--export-dynamic-symbol=otel_thread_ctx_v1", "-o"])
            .arg(&out)
            .arg(dir.join("app.c"))
            .status()
            .expect("running gcc");
        assert!(status.success());
        std::fs::read(out).unwrap()
    }

    /// (reached pids with their file's name, forgotten pids) of one scan.
    fn outcome(found: Vec<Found>) -> (Vec<(u32, String)>, Vec<u32>) {
        let mut reached = Vec::new();
        let mut forgotten = Vec::new();
        for f in found {
            match f {
                Found::Reach { pid, access, file, .. } => {
                    assert_eq!(access.module, 0, "an executable's own variable is in static TLS");
                    assert!(access.offset < 0 && access.start_ticks == u64::from(pid) * 10);
                    reached.push((pid, file.file_name().unwrap().to_string_lossy().into_owned()));
                }
                Found::Forget { pid } => forgotten.push(pid),
            }
        }
        (reached, forgotten)
    }

    fn named(v: &[(u32, &str)]) -> Vec<(u32, String)> {
        v.iter().map(|(pid, s)| (*pid, s.to_string())).collect()
    }

    #[test]
    fn processes_are_capped_forgotten_when_they_exit_and_refused_ones_get_free_slots() {
        let mut proc = FakeProc::new("cap");
        let app = defining_executable(&proc.dir);
        let apps: Vec<PathBuf> = (0..3).map(|i| proc.dir.join(format!("app{i} with space"))).collect();
        for path in &apps {
            std::fs::write(path, &app).unwrap();
        }
        let plain = proc.dir.join("plain.so");
        std::fs::write(&plain, b"not an ELF file").unwrap();
        proc.process(100, &[&apps[0], &plain], true);
        proc.process(101, &[&apps[1]], false);
        proc.process(102, &[&apps[2], &plain], false);
        let refused = Arc::new(AtomicU64::new(0));
        let mut discovery = Discovery::new(&proc.proc(), 2, refused.clone());

        assert_eq!(
            outcome(discovery.scan(&[])),
            (named(&[(100, "app0 with space"), (101, "app1 with space")]), vec![])
        );
        assert_eq!((refused.load(Ordering::Relaxed), discovery.reached()), (1, 2), "102 over the cap");
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]), "nothing new");
        // A look again at a reached process (its program's first call) gives the same access.
        assert_eq!(outcome(discovery.scan(&[101])), (named(&[(101, "app1 with space")]), vec![]));

        proc.exit(100);
        assert_eq!(
            outcome(discovery.scan(&[])),
            (named(&[(102, "app2 with space")]), vec![100]),
            "100 forgotten; 102 takes its slot"
        );
        proc.exit(101);
        proc.exit(102);
        let (reached, mut forgotten) = outcome(discovery.scan(&[]));
        forgotten.sort();
        assert_eq!((reached, forgotten), (vec![], vec![101, 102]));
        assert_eq!(discovery.reached(), 0);
        assert!(
            discovery.files.is_empty() && discovery.processes.is_empty(),
            "nothing kept of exited processes"
        );
        assert_eq!(refused.load(Ordering::Relaxed), 1);
    }

    /// A process seen between its fork and its exec: the exec keeps pid and start time, and is
    /// noticed by the name it brings.
    #[test]
    fn a_process_that_execs_after_it_was_seen_is_looked_at_again() {
        let mut proc = FakeProc::new("exec");
        let app = defining_executable(&proc.dir);
        let (shell, program) = (proc.dir.join("sh"), proc.dir.join("program"));
        std::fs::write(&shell, b"not an ELF file").unwrap();
        std::fs::write(&program, &app).unwrap();
        proc.process(500, &[&shell], false);
        let mut discovery = Discovery::new(&proc.proc(), 8, Arc::default());
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]));
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]), "the look again at a new process");
        proc.exit(500);
        proc.process(500, &[&program], false);
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]), "the same name: not noticed");
        let stat = proc.proc().join("500/stat");
        let renamed = std::fs::read_to_string(&stat).unwrap().replace("(app)", "(program)");
        std::fs::write(&stat, renamed).unwrap();
        assert_eq!(outcome(discovery.scan(&[])), (named(&[(500, "program")]), vec![]));
    }

    /// A scan that comes between a process's exec and its dynamic linker mapping the defining
    /// library: the next scan reads it once more, and only that one. (A library's TLS block is
    /// found in the process's memory, which a stand-in lacks: the maps' change stands for the
    /// linker's work.)
    #[test]
    fn a_new_process_is_read_again_by_the_next_scan_for_the_files_mapped_after_its_exec() {
        let mut proc = FakeProc::new("loader");
        let app = defining_executable(&proc.dir);
        let (loader, program) = (proc.dir.join("loader"), proc.dir.join("program"));
        std::fs::write(&loader, b"not an ELF file").unwrap();
        std::fs::write(&program, &app).unwrap();
        proc.process(600, &[&loader], false);
        proc.process(601, &[&loader], false);
        let mut discovery = Discovery::new(&proc.proc(), 8, Arc::default());
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]));
        proc.exit(600);
        proc.process(600, &[&program], false);
        assert_eq!(outcome(discovery.scan(&[])), (named(&[(600, "program")]), vec![]));
        proc.exit(601);
        proc.process(601, &[&program], false);
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]), "not read a third time");
    }

    #[test]
    fn decoys_where_the_mapped_path_was_are_never_opened_for_reading() {
        let mut proc = FakeProc::new("decoys");
        let library = defining_executable(&proc.dir);
        let genuine = proc.dir.join("genuine");
        std::fs::write(&genuine, &library).unwrap();
        let swapped = proc.dir.join("swapped");
        std::fs::write(&swapped, &library).unwrap();
        let mapped = identity(&swapped);
        let mut discovery = Discovery::new(&proc.proc(), 8, Arc::default());
        // The maps line names swapped's inode; the path is a FIFO by now.
        std::fs::remove_file(&swapped).unwrap();
        let name = std::ffi::CString::new(swapped.as_os_str().to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated name.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o666) }, 0);
        proc.process_as(200, &[(&swapped, mapped)], false);
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]), "the FIFO");
        proc.exit(200);
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]));
        // Then a symlink to a genuine defining executable.
        std::fs::remove_file(&swapped).unwrap();
        std::os::unix::fs::symlink(&genuine, &swapped).unwrap();
        proc.process_as(201, &[(&swapped, mapped)], false);
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]), "the symlink");
        // The genuine library, mapped under its own name, is found.
        proc.process(202, &[&genuine], false);
        assert_eq!(outcome(discovery.scan(&[])), (named(&[(202, "genuine")]), vec![]));
    }

    /// Stands in for what never answers: files on devices of major 250 once open (a filesystem),
    /// and of major 251 while being opened through their process (its memory lock).
    fn stalling(dir: &Path, mapping: &Mapping, mounts: &[u64], opened: &AtomicBool) -> Defined {
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
        let library = defining_executable(&proc.dir);
        let ok: Vec<PathBuf> = (0..3).map(|i| proc.dir.join(format!("ok{i}"))).collect();
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
            &[(&ok[0], identity(&ok[0])), (&stall, fuse(1, 10)), (&stall, fuse(1, 11))],
            false,
        );
        let started = std::time::Instant::now();
        assert_eq!(outcome(discovery.scan(&[])), (named(&[(300, "ok0")]), vec![]));
        assert!(started.elapsed() < Duration::from_millis(300 * 2), "one deadline, not two");
        assert_eq!(discovery.stuck, vec![Stall::Device(libc::makedev(250, 1))]);

        // A second device stuck: the most allowed; from then on no new file is looked into.
        proc.process_as(301, &[(&ok[1], identity(&ok[1])), (&stall, fuse(2, 12))], false);
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]));
        proc.process(302, &[&ok[2]], false);
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]));
        assert_eq!(discovery.stuck.len(), 2);
    }

    #[test]
    fn a_process_that_holds_its_own_lock_costs_only_its_users_discovery() {
        let mut proc = FakeProc::new("jammed");
        let library = defining_executable(&proc.dir);
        let shared = proc.dir.join("shared");
        std::fs::write(&shared, &library).unwrap();
        let jammed = |ino| FileId { dev: libc::makedev(251, 0), ino };
        let mut discovery = Discovery::new(&proc.proc(), 8, Arc::default());
        discovery.deadline = Deadline { each: Duration::from_millis(300), stuck_at_most: 4 };
        discovery.look_into = stalling;
        // A process of user 4321 whose opens never end; it also maps the genuine library, which
        // must not be written off with it.
        proc.process_as(400, &[(&shared, jammed(1))], false);
        std::os::unix::fs::chown(proc.proc().join("400"), Some(4321), None).unwrap();
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]));
        assert_eq!(discovery.stuck, vec![Stall::User(4321)]);
        // That user's next process is not looked into; another user's is, the same device too,
        // and the genuine library is found through it.
        proc.process_as(401, &[(&shared, identity(&shared))], false);
        std::os::unix::fs::chown(proc.proc().join("401"), Some(4321), None).unwrap();
        assert_eq!(outcome(discovery.scan(&[])), (vec![], vec![]));
        proc.process(402, &[&shared], false);
        assert_eq!(outcome(discovery.scan(&[])), (named(&[(402, "shared")]), vec![]));
        assert_eq!(discovery.stuck, vec![Stall::User(4321)], "one stuck thread, nothing else written off");
    }
}
