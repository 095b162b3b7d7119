//! pid -> who the process is: its service name, executable and container, kept in a bounded
//! cache, so each process's spans get a resource of their own. It comes first from the identity
//! the kernel captured at the process's first traced call ([`ProcessCache::capture`]: race-free
//! for a process that exits or execs right after calling), else from `/proc`, read once per
//! process, which also completes a capture that lacks something while the process lives.
//!
//! A record names its process only by pid, which the kernel reuses. A cached entry therefore
//! remembers the process's start time (`/proc/PID/stat` field 22) and is checked against it by
//! [`ProcessCache::sweep`], which [`crate::run`] calls periodically: an entry whose pid now
//! belongs to another process is forgotten at once; one whose process exited is forgotten one
//! sweep later, so the records of its last calls, still on their way, keep its metadata.
//!
//! An `exec` keeps the pid and start time but may bring another executable, service and
//! environment. The calls of the new program come from threads named after it, so a thread
//! name not seen before for a cached pid has the entry checked at once (one read of
//! `/proc/PID/stat`): its spans carry the new program from its first call, not from the next
//! sweep.
//!
//! What a process declares about itself comes first from the OTEP 4719 process context its SDK
//! publishes ([`process_context`]), else from its environment. A context is re-checked by each
//! sweep (one 8-byte read of its timestamp): a process that publishes again has its entry
//! forgotten and read anew at its next call, so its spans carry the new resource at most one
//! sweep period ([`crate::run`]: 10 s) after the update.

use std::{num::NonZeroUsize, path::Path, sync::Arc};

use lru::LruCache;

use crate::records::Identity;

pub mod identity;
pub mod process_context;
pub mod read;
pub mod resolver;

/// Processes remembered at once; beyond it the least recently seen is forgotten (and read again
/// if it calls again). Each entry is a few short strings.
pub const DEFAULT_CAPACITY: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

/// The semantic conventions' `service.name` when nothing names the service.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Thread names remembered per process: a thread pool's few names fit, and a process that
/// names each thread differently costs one stat read per new name until then.
const THREAD_NAMES: usize = 32;

/// What a traced process's resource says about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProcessInfo {
    pub pid: u32,
    /// `process.executable.name`: the base name of `/proc/PID/exe`; the process's name (from
    /// `/proc/PID/stat`) when that link cannot be read (a kernel thread, a zombie), or the
    /// calling thread's name when the process was gone before it was looked at.
    pub executable_name: Option<String>,
    /// `service.name`: the one of the process's context when it publishes a valid one with a
    /// service name, else its own `OTEL_SERVICE_NAME`, else the `service.name` of its
    /// `OTEL_RESOURCE_ATTRIBUTES`, else its executable name, else [`UNKNOWN_SERVICE`].
    pub service_name: String,
    /// `container.id`, from `/proc/PID/cgroup`, when the process runs in a container.
    pub container_id: Option<String>,
    /// The rest of the resource the process declares, from its process context when it
    /// publishes a valid one, else from its `OTEL_RESOURCE_ATTRIBUTES` (e.g. `service.namespace`,
    /// `service.version`, `deployment.environment.name`).
    pub attributes: Vec<opentelemetry::KeyValue>,
}

impl ProcessInfo {
    /// A process not known (yet): its pid, under [`UNKNOWN_SERVICE`].
    pub fn unknown(pid: u32) -> ProcessInfo {
        ProcessInfo::from_comm(pid, "")
    }

    /// What can be said of a process that is gone: the name of the thread that called.
    fn from_comm(pid: u32, comm: &str) -> ProcessInfo {
        let name = (!comm.is_empty()).then(|| comm.to_owned());
        ProcessInfo {
            pid,
            service_name: name.clone().unwrap_or_else(|| UNKNOWN_SERVICE.to_owned()),
            executable_name: name,
            container_id: None,
            attributes: Vec::new(),
        }
    }
}

/// Known processes by pid, least recently used first out. The cache itself never touches
/// `/proc`: [`ProcessCache::lookup`] answers from memory or says a read is needed, a resolver
/// thread does the read with [`read_process`] (see [`resolver`]), and
/// [`ProcessCache::apply`] takes its answer in.
pub struct ProcessCache {
    entries: LruCache<u32, Entry>,
    /// Reads that found a process context and refused it (torn, malformed, over the bounds):
    /// those processes were described from their environment. For the summary.
    contexts_refused: u64,
    /// Counts the identities taken in ([`ProcessCache::capture`]), so a read's answer can tell
    /// whether it was asked for the capture the entry holds now.
    captures: u64,
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// The process the entry describes, as `/proc/PID/stat` said when it was read; `None` when
    /// the process was already gone, or could not be read in time.
    identity: Option<Stat>,
    /// A sweep found the process gone; the next sweep forgets it.
    gone: bool,
    /// Made from the calling thread's name alone because reading the process took too long:
    /// it answers every lookup until the read's answer replaces it.
    provisional: bool,
    info: Arc<ProcessInfo>,
    /// Names of the threads whose calls were checked against this entry; at most
    /// [`THREAD_NAMES`], beyond which new names are left to the sweep.
    threads: Vec<String>,
    /// The process context the entry was read from, which each sweep checks is still the one
    /// published.
    context: Option<process_context::Stamp>,
    /// The read found a process context and refused it.
    context_refused: bool,
    /// Made from the identity the kernel captured at the process's first call: it answers for
    /// every thread of the process, with no `/proc` read, until the kernel captures it again
    /// (after an `exec`) or the process is swept.
    capture: Option<Capture>,
}

#[derive(Clone, Debug)]
struct Capture {
    /// Which capture of [`ProcessCache::captures`] this is.
    number: u64,
    /// What the kernel's capture alone says, to tell a repeat of it (another thread's first
    /// call, an entry the kernel's map evicted) from a new one.
    captured: Arc<ProcessInfo>,
    /// The environment block was read whole (else the variables may lie past what was read).
    environ_complete: bool,
    /// Something was missing and a `/proc` read to complete it is under way.
    completing: bool,
}

/// What [`ProcessCache::capture`] made of a captured identity.
#[derive(Debug)]
pub enum Captured {
    /// The same as the one the entry already holds: nothing to do.
    Repeat,
    New {
        /// For the calls of the pid still waiting for a `/proc` read: they came before this
        /// capture, so it does not describe them (it may follow an `exec`); this does.
        earlier: Option<Arc<ProcessInfo>>,
        /// The capture lacks something: read `/proc` for it while the process may still live.
        /// Its calls wait for the answer as for any read.
        read: Option<ReadRequest>,
    },
}

/// What a resolver thread must do for a call of `pid` from thread `comm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub pid: u32,
    /// The calling process's start time in clock ticks after boot, as `/proc/PID/stat` shows
    /// it, when the record carried it: a process by that pid that started at another time is
    /// not the one that called.
    pub start_ticks: Option<u64>,
    pub comm: String,
    /// The identity the cache holds for `pid` (a thread name not seen before: perhaps the
    /// first call after an exec), or `None` when nothing is cached.
    pub known: Option<Option<Stat>>,
    /// The kernel capture this read completes ([`Captured::New`]), by number.
    pub completes: Option<u64>,
}

/// A resolver thread's answer to a [`ReadRequest`].
#[derive(Clone, Debug)]
pub enum ReadOutcome {
    /// The cached entry still describes the process: the new thread is one of its own.
    Unchanged,
    /// The process as read now.
    Read(Entry),
    /// The process that called is gone and its pid belongs to another now: what the calling
    /// thread's name says, with nothing cached.
    Gone,
}

impl ProcessCache {
    pub fn new(capacity: NonZeroUsize) -> ProcessCache {
        ProcessCache { entries: LruCache::new(capacity), contexts_refused: 0, captures: 0 }
    }

    /// Takes in the identity the kernel captured for a process at its first traced call (or its
    /// first after an `exec`): its entry is made from it at once, replacing whatever the pid had.
    /// `waiting` is the read the pid's earlier calls wait for, if any.
    pub fn capture(&mut self, identity: &Identity, waiting: Option<&ReadRequest>) -> Captured {
        let Some(start) = start_ticks(identity.process_start_ns) else {
            return Captured::Repeat; // the kernel never sends one without
        };
        let captured = Arc::new(info_from_identity(identity));
        let current = self.entries.peek(&identity.pid);
        let held = current.filter(|e| e.started() == Some(start));
        if let Some(capture) = held.and_then(|e| e.capture.as_ref()) {
            if capture.captured == captured {
                return Captured::Repeat;
            }
        }
        // The calls waiting belong to the process whose capture their read completes, even when
        // this capture is of another process that got its pid since.
        let earlier = waiting.map(|request| match current {
            // Waiting for the completion of this process's previous capture: that capture
            // described these calls.
            Some(entry) if entry.capture.as_ref().is_some_and(|c| request.completes == Some(c.number)) => {
                entry.info.clone()
            }
            // A read asked with no capture (this process's first was lost to a full ring
            // buffer): this is the first capture of it, and the best there is.
            _ if request.start_ticks == Some(start) && request.completes.is_none() => captured.clone(),
            _ => Arc::new(ProcessInfo::from_comm(request.pid, &request.comm)),
        });
        self.captures += 1;
        let number = self.captures;
        let comm = identity.comm.clone();
        // Read `/proc` as well while the process may live: for what the capture lacks, and for
        // the process context its SDK may publish (OTEP 4719), which only user space can read
        // and which outranks its environment. A process already gone keeps its capture.
        let read = Some(ReadRequest {
            pid: identity.pid,
            start_ticks: Some(start),
            comm: comm.clone(),
            known: None,
            completes: Some(number),
        });
        let entry = Entry {
            identity: Some(Stat { comm: comm.clone(), start_time: start }),
            gone: false,
            provisional: false,
            info: captured.clone(),
            threads: vec![comm],
            context: None,
            context_refused: false,
            capture: Some(Capture {
                number,
                captured,
                environ_complete: identity.environ_complete,
                completing: true,
            }),
        };
        self.entries.put(identity.pid, entry);
        Captured::New { earlier, read }
    }

    /// The process `pid` for a call from thread `comm`, if the cache can say without reading
    /// `/proc`; otherwise what must be read.
    /// `start_ticks` is when the calling process started (see [`start_ticks`]), if known: an
    /// entry of another process by the same pid does not answer for it.
    pub fn lookup(
        &mut self,
        pid: u32,
        start_ticks: Option<u64>,
        comm: &str,
    ) -> Result<Arc<ProcessInfo>, ReadRequest> {
        let request = |known| ReadRequest { pid, start_ticks, comm: comm.to_owned(), known, completes: None };
        let Some(entry) = self.entries.get_mut(&pid) else {
            return Err(request(None));
        };
        if entry.provisional {
            return Ok(entry.info.clone());
        }
        let other_process =
            matches!((&entry.identity, start_ticks), (Some(stat), Some(start)) if stat.start_time != start);
        if other_process {
            return Err(request(None));
        }
        if entry.capture.is_some() {
            // The kernel captures the process again after an exec, before the new program's
            // first call: no thread name needs checking.
            return Ok(entry.info.clone());
        }
        if entry.threads.iter().any(|known| known == comm) || entry.threads.len() >= THREAD_NAMES {
            return Ok(entry.info.clone());
        }
        Err(request(Some(entry.identity.clone())))
    }

    /// Takes a read's answer in, and returns the process for the calls that waited for it,
    /// whose threads' names are `comms`: the read happened after all of them, so it describes
    /// each.
    pub fn apply(&mut self, request: &ReadRequest, outcome: ReadOutcome, comms: &[&str]) -> Arc<ProcessInfo> {
        if let Some(number) = request.completes {
            // A read asked to complete a capture completes that capture or nothing: another
            // capture may hold the pid by now (an exec, or another process given the pid).
            return match self.entries.get_mut(&request.pid) {
                Some(entry) if entry.capture.as_ref().is_some_and(|c| c.number == number) => {
                    self.contexts_refused += u64::from(entry.complete_capture(request, outcome));
                    entry.info.clone()
                }
                _ => match outcome {
                    ReadOutcome::Read(read) if read.identity.is_some() => read.info,
                    _ => Arc::new(ProcessInfo::from_comm(request.pid, &request.comm)),
                },
            };
        }
        if let Some(entry) = self.entries.get_mut(&request.pid) {
            if entry.capture.is_some()
                && request.start_ticks.is_some()
                && entry.started() == request.start_ticks
            {
                // The kernel's capture of this very process is newer than any read asked for
                // before it: the read adds nothing.
                return entry.info.clone();
            }
            if matches!((request.start_ticks, entry.started()), (Some(asked), Some(held)) if asked < held) {
                // Asked for a process that has since given its pid to the one the entry holds
                // (captured by the kernel, or read): the answer describes the earlier process
                // at most, and must not replace the entry.
                return match outcome {
                    ReadOutcome::Read(read) if read.identity.is_some() => read.info,
                    _ => Arc::new(ProcessInfo::from_comm(request.pid, &request.comm)),
                };
            }
        }
        let entry = match (outcome, self.entries.get_mut(&request.pid)) {
            (ReadOutcome::Gone, _) => return Arc::new(ProcessInfo::from_comm(request.pid, &request.comm)),
            (ReadOutcome::Unchanged, Some(entry)) => entry,
            (ReadOutcome::Unchanged, None) => {
                // Forgotten meanwhile (evicted or swept): what the calls' thread says.
                self.entries.put(request.pid, Entry::from_comm(request.pid, &request.comm, false));
                self.entries.get_mut(&request.pid).expect("just put")
            }
            (ReadOutcome::Read(entry), _) => {
                self.contexts_refused += u64::from(entry.context_refused);
                self.entries.put(request.pid, entry);
                self.entries.get_mut(&request.pid).expect("just put")
            }
        };
        entry.provisional = false;
        for comm in comms {
            if entry.threads.len() < THREAD_NAMES && !entry.threads.iter().any(|known| known == comm) {
                entry.threads.push((*comm).to_owned());
            }
        }
        entry.info.clone()
    }

    /// What the cache knows of process `pid` (started at `start_ticks`, when known), without a
    /// thread's name to check: for the call metrics, whose series have none. None for another
    /// process by that pid, or one not known yet.
    pub fn known(&mut self, pid: u32, start_ticks: Option<u64>) -> Option<Arc<ProcessInfo>> {
        let entry = self.entries.get(&pid)?;
        let other_process =
            matches!((&entry.identity, start_ticks), (Some(stat), Some(start)) if stat.start_time != start);
        (!other_process).then(|| entry.info.clone())
    }

    /// The process `pid` when its read did not answer in time: named after its thread for now,
    /// and so for its later calls until the read answers.
    pub fn provisional(&mut self, pid: u32, comm: &str) -> Arc<ProcessInfo> {
        if let Some(entry) = self.entries.get_mut(&pid) {
            if let Some(capture) = entry.capture.as_mut() {
                // What the kernel captured beats the thread's name.
                capture.completing = false;
                return entry.info.clone();
            }
        }
        let entry = Entry::from_comm(pid, comm, true);
        let info = entry.info.clone();
        self.entries.put(pid, entry);
        info
    }

    /// The pids a sweep must look at.
    pub fn pids(&self) -> Vec<u32> {
        self.entries.iter().map(|(pid, _)| *pid).collect()
    }

    /// What a sweep must look at: each pid, with the process context its entry was read from.
    pub fn to_sweep(&self) -> Vec<(u32, Option<process_context::Stamp>)> {
        self.entries.iter().map(|(pid, entry)| (*pid, entry.context)).collect()
    }

    /// Process contexts found and refused so far (see [`process_context::Refused`]).
    pub fn contexts_refused(&self) -> u64 {
        self.contexts_refused
    }

    /// Forgets processes that are no longer what their entry describes, given each one's
    /// identity now (`None`: gone): at once when the pid now belongs to another process (another
    /// start time) or the process changed its name (an `exec`, which may bring another
    /// executable and environment) or published its process context again; one sweep after it
    /// is first found gone. Returns how many entries were forgotten.
    pub fn apply_sweep(&mut self, now: Vec<Checked>) -> usize {
        let mut forgotten = 0;
        for Checked { pid, stat, republished } in now {
            let Some(entry) = self.entries.peek_mut(&pid) else { continue };
            let forget = match stat {
                None if entry.gone => true,
                None => {
                    entry.gone = true;
                    false
                }
                // A captured entry follows an exec through the kernel's next capture, so only
                // another start time (another process) makes it stale: this sweep may have read
                // the process before the capture the entry now holds.
                Some(now) if entry.capture.is_some() => {
                    entry.started() != Some(now.start_time) || republished
                }
                Some(now) => entry.identity.as_ref() != Some(&now) || republished,
            };
            if forget {
                self.entries.pop(&pid);
                forgotten += 1;
            }
        }
        forgotten
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Entry {
    /// What can be said of a process from its calling thread's name alone.
    fn from_comm(pid: u32, comm: &str, provisional: bool) -> Entry {
        Entry {
            identity: None,
            gone: false,
            provisional,
            info: Arc::new(ProcessInfo::from_comm(pid, comm)),
            threads: vec![comm.to_owned()],
            context: None,
            context_refused: false,
            capture: None,
        }
    }

    /// When the process the entry describes started, in clock ticks, if known.
    fn started(&self) -> Option<u64> {
        self.identity.as_ref().map(|stat| stat.start_time)
    }

    /// Takes in the answer of the read that completes a capture, if the process was still there
    /// (the same process: the read checked its start time) and still runs the program captured
    /// (an `exec` since would make the read describe the next program): its process context
    /// replaces what its environment declared, and what the kernel could not read comes from
    /// `/proc`. If it was gone, or exec'd, the capture stands as it is. Returns whether the read
    /// found a process context of this program and refused it.
    fn complete_capture(&mut self, request: &ReadRequest, outcome: ReadOutcome) -> bool {
        let Some(capture) = self.capture.as_mut() else { return false };
        if !capture.completing || request.completes != Some(capture.number) {
            return false;
        }
        capture.completing = false;
        let ReadOutcome::Read(read) = outcome else { return false };
        if read.identity.is_none() {
            return false; // gone before it could be read
        }
        let captured = &capture.captured;
        let same_program = match (&captured.executable_name, &read.info.executable_name) {
            (Some(then), Some(now)) => then == now,
            _ => true,
        };
        if !same_program {
            return false;
        }
        let (from_proc, context) = (&read.info, read.context);
        let (service_name, attributes) = if context.is_some() || !capture.environ_complete {
            (from_proc.service_name.clone(), from_proc.attributes.clone())
        } else {
            (captured.service_name.clone(), captured.attributes.clone())
        };
        self.info = Arc::new(ProcessInfo {
            pid: captured.pid,
            executable_name: captured.executable_name.clone().or_else(|| from_proc.executable_name.clone()),
            service_name,
            container_id: captured.container_id.clone().or_else(|| from_proc.container_id.clone()),
            attributes,
        });
        self.context = context;
        read.context_refused
    }
}

/// A process's resource from what the kernel captured of it: its declared service and
/// attributes from its environment block (as [`declared_in_environ`] reads `/proc/PID/environ`),
/// its executable's name (else its name), its container from its cgroup's names.
pub fn info_from_identity(identity: &Identity) -> ProcessInfo {
    let mut environ = identity.environ.as_slice();
    if !identity.environ_complete {
        // An entry cut at the end of what was read is not the variable's value.
        let whole = environ.iter().rposition(|&b| b == 0).map_or(0, |nul| nul + 1);
        environ = &environ[..whole];
    }
    let declared = declared_in_environ(environ, read::ENVIRON_SCAN_CAP);
    let executable_name =
        identity.executable.clone().or_else(|| (!identity.comm.is_empty()).then(|| identity.comm.clone()));
    let service_name = declared
        .service_name
        .or_else(|| executable_name.clone())
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
    // The innermost container wins, as in `container_id`.
    let container_id = [&identity.cgroup, &identity.cgroup_parent]
        .into_iter()
        .flatten()
        .find_map(|s| container_id_in_segment(s));
    ProcessInfo {
        pid: identity.pid,
        executable_name,
        service_name,
        container_id,
        attributes: declared.attributes,
    }
}

/// Answers a [`ReadRequest`] from `/proc` (`root`): the only code that reads a traced process's
/// files for its resource, each read bounded ([`read`]). Runs on a resolver thread: any of these
/// reads may take as long as the process makes it.
pub fn read_process(root: &Path, request: &ReadRequest) -> ReadOutcome {
    let ReadRequest { pid, start_ticks, comm, known, .. } = request;
    let dir = root.join(pid.to_string());
    let stat = read_stat(&dir);
    if let (Some(stat), Some(start)) = (&stat, start_ticks) {
        if stat.start_time != *start {
            return ReadOutcome::Gone;
        }
    }
    if let Some(identity) = known {
        if identity.is_none() || stat.is_none() || stat == *identity {
            return ReadOutcome::Unchanged;
        }
    }
    let Some(stat) = stat else {
        return ReadOutcome::Read(Entry::from_comm(*pid, comm, false));
    };
    let executable_name = std::fs::read_link(dir.join("exe"))
        .ok()
        .and_then(|target| executable_name(&target))
        .or_else(|| (!stat.comm.is_empty()).then(|| stat.comm.clone()))
        .or_else(|| (!comm.is_empty()).then(|| comm.clone()));
    let environ = || {
        read::open(&dir, "environ")
            .map(|environ| declared_in_environ(environ, read::ENVIRON_SCAN_CAP))
            .unwrap_or_default()
    };
    // The process context, when valid, is the resource the app's own spans carry; the
    // environment is what it was started with, and stands in for a missing or refused context.
    // A refused one keeps its stamp too: the sweep reads the process again once it publishes anew.
    let (stamp, context_refused, declared) = match process_context::read(root, *pid) {
        Ok(Some(context)) => {
            let service_name = context.service_name.or_else(|| environ().service_name);
            let declared =
                identity::Declared { service_name, attributes: context.attributes, refused: false };
            (Some(context.stamp), false, declared)
        }
        Ok(None) => (None, false, environ()),
        Err(refused) => {
            tracing::debug!(
                "process {pid}: its process context is refused ({}); its environment is read",
                refused.why
            );
            (refused.stamp, true, environ())
        }
    };
    let service_name = declared
        .service_name
        .or_else(|| executable_name.clone())
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
    let container_id = read::read_capped(&dir, "cgroup", read::CGROUP_CAP)
        .ok()
        .and_then(|cgroups| container_id(&String::from_utf8_lossy(&cgroups)));
    let info = ProcessInfo {
        pid: *pid,
        executable_name,
        service_name,
        container_id,
        attributes: declared.attributes,
    };
    ReadOutcome::Read(Entry {
        identity: Some(stat),
        gone: false,
        provisional: false,
        info: Arc::new(info),
        threads: vec![comm.clone()],
        context: stamp,
        context_refused,
        capture: None,
    })
}

/// A process start time the BPF side gives (`start_boottime`, ns after boot) in the clock ticks
/// `/proc/PID/stat` shows (`nsec_to_clock_t`); `None` when the kernel did not give it.
pub fn start_ticks(start_ns: u64) -> Option<u64> {
    (start_ns != 0).then(|| start_ns / ns_per_tick())
}

/// Nanoseconds per clock tick (`USER_HZ`), the unit of `/proc/PID/stat`'s times.
pub fn ns_per_tick() -> u64 {
    static NS_PER_TICK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NS_PER_TICK.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        1_000_000_000 / u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
    })
}

/// What a sweep found of one cached process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub pid: u32,
    /// Its identity now; `None`: gone.
    pub stat: Option<Stat>,
    /// The process context its entry was read from is no longer the one published.
    pub republished: bool,
}

/// Each process's identity now, and whether its context changed, for
/// [`ProcessCache::apply_sweep`]; on a resolver thread.
pub fn read_identities(root: &Path, processes: Vec<(u32, Option<process_context::Stamp>)>) -> Vec<Checked> {
    processes
        .into_iter()
        .map(|(pid, context)| Checked {
            pid,
            stat: read_stat(&root.join(pid.to_string())),
            republished: context.is_some_and(|stamp| !process_context::still_published(pid, stamp)),
        })
        .collect()
}

/// What identifies a process behind a pid: its start time (clock ticks after boot) and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub start_time: u64,
}

/// `/proc/PID/stat` of the process whose directory is `dir`, read bounded (see [`read`]).
pub fn read_stat(dir: &Path) -> Option<Stat> {
    parse_stat(&String::from_utf8_lossy(&read::read_capped(dir, "stat", read::STAT_CAP).ok()?))
}

/// `/proc/PID/stat`: `pid (comm) state ppid ...`, the start time being field 22. The name may
/// hold spaces and parentheses, so it ends at the last `)`.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // Fields 3 onwards follow the name; field 22 is the 20th of them.
    let start_time = stat[close + 1..].split_whitespace().nth(19)?.parse().ok()?;
    Some(Stat { comm, start_time })
}

/// The base name of `/proc/PID/exe`'s target, without the ` (deleted)` the kernel appends when
/// the file was removed or replaced (as by an upgrade) after the process started.
fn executable_name(target: &Path) -> Option<String> {
    let name = target.file_name()?.to_string_lossy();
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
    (!name.is_empty()).then(|| name.to_owned())
}

/// The process's `OTEL_SERVICE_NAME` from its environment block (`/proc/PID/environ`:
/// NUL-separated `KEY=VALUE` entries), as its own SDK reads it: when the key is repeated the
/// first entry is the one `getenv` returns (glibc, musl, Go and CPython all take the first),
/// and an empty value means unset, as the specification says. Reads at most `scan_cap` bytes.
pub fn service_name_from_environ(environ: impl std::io::Read, scan_cap: u64) -> Option<String> {
    declared_in_environ(environ, scan_cap).service_name
}

/// What the process declares in its environment block ([`identity::declared`]), read in one
/// pass of at most `scan_cap` bytes.
pub fn declared_in_environ(environ: impl std::io::Read, scan_cap: u64) -> identity::Declared {
    let [service, attributes] = read::find_variables(
        environ,
        [b"OTEL_SERVICE_NAME".as_slice(), b"OTEL_RESOURCE_ATTRIBUTES"],
        scan_cap,
    );
    identity::declared(service.as_deref(), attributes.as_deref())
}

/// Unit name prefixes container runtimes give the cgroup of a container, before its 64-hex id:
/// Docker and Kubernetes with the systemd cgroup driver, containerd's CRI plugin, CRI-O, podman.
const SCOPE_PREFIXES: &[&str] = &["docker-", "cri-containerd-", "crio-", "libpod-"];

/// The container id in `/proc/PID/cgroup` text, for the common runtimes' layouts:
/// - `/docker/<id>` (Docker, cgroupfs driver) and `/kubepods/<qos>/pod<uid>/<id>` (Kubernetes,
///   cgroupfs driver): a path segment that is the id itself;
/// - `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`
///   (systemd driver, under `system.slice`, `machine.slice` or `kubepods.slice`).
///
/// The cgroup v2 line (`0::`) is read first, then v1 lines; within a path the innermost match
/// wins (a container in a container). Runtime monitors (`crio-conmon-<id>.scope`) are not
/// containers and do not match.
pub fn container_id(cgroups: &str) -> Option<String> {
    let paths = cgroups.lines().filter_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        Some((!(id == "0" && controllers.is_empty()), path))
    });
    let mut paths: Vec<(bool, &str)> = paths.collect();
    // v2 first (false sorts first); stable, so v1 lines keep their order.
    paths.sort_by_key(|(v1, _)| *v1);
    paths.into_iter().find_map(|(_, path)| path.split('/').rev().find_map(container_id_in_segment))
}

fn container_id_in_segment(segment: &str) -> Option<String> {
    if is_container_id(segment) {
        return Some(segment.to_owned());
    }
    let unit = segment.strip_suffix(".scope")?;
    SCOPE_PREFIXES
        .iter()
        .find_map(|prefix| unit.strip_prefix(prefix))
        .filter(|id| is_container_id(id))
        .map(str::to_owned)
}

/// Container ids are 64 lower-case hex digits (a SHA-256).
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::symlink, path::PathBuf};

    use super::*;

    const ID: &str = "3f1c0a9e8b7d6c5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a19";

    #[test]
    fn docker_with_the_cgroupfs_driver() {
        assert_eq!(container_id(&format!("0::/docker/{ID}\n")).as_deref(), Some(ID));
        // cgroup v1: every controller's line carries it.
        let v1 = format!("12:memory:/docker/{ID}\n11:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(container_id(&v1).as_deref(), Some(ID));
    }

    #[test]
    fn docker_with_the_systemd_driver() {
        let line = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id(&line).as_deref(), Some(ID));
    }

    #[test]
    fn kubernetes_with_containerd() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_id(&systemd).as_deref(), Some(ID));
        let cgroupfs = format!("0::/kubepods/besteffort/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/{ID}\n");
        assert_eq!(container_id(&cgroupfs).as_deref(), Some(ID));
    }

    #[test]
    fn cri_o_and_podman() {
        let crio = format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope\n");
        assert_eq!(container_id(&crio).as_deref(), Some(ID));
        let podman = format!("0::/machine.slice/libpod-{ID}.scope/container\n");
        assert_eq!(container_id(&podman).as_deref(), Some(ID));
        // The monitor process beside the container is not in it.
        assert_eq!(container_id(&format!("0::/machine.slice/libpod-conmon-{ID}.scope\n")), None);
        assert_eq!(container_id(&format!("0::/system.slice/crio-conmon-{ID}.scope\n")), None);
    }

    #[test]
    fn the_v2_line_and_the_innermost_container_win() {
        let other = "a".repeat(64);
        let mixed = format!("4:memory:/docker/{other}\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id(&mixed).as_deref(), Some(ID));
        let nested = format!("0::/docker/{other}/docker/{ID}\n");
        assert_eq!(container_id(&nested).as_deref(), Some(ID));
    }

    #[test]
    fn hosts_and_look_alikes_are_not_containers() {
        for cgroups in [
            "0::/\n",
            "0::/init.scope\n",
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "0::/system.slice/sshd.service\n",
            // This machine's own (a 32-hex v1 memory cgroup).
            "4:memory:/process_api/4c44791128fac6a1e00956c484667a1f\n0::/\n",
            &format!("0::/system.slice/docker-{}.scope\n", &ID[1..]),
            &format!("0::/system.slice/docker-{}.scope\n", ID.to_uppercase()),
            &format!("0::/system.slice/unknown-{ID}.scope\n"),
            "",
        ] {
            assert_eq!(container_id(cgroups), None, "{cgroups:?}");
        }
    }

    #[test]
    fn otel_service_name_is_read_as_getenv_would() {
        let environ = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0HOME=/\0";
        assert_eq!(service_name_from_environ(&environ[..], 1 << 20).as_deref(), Some("checkout"));
        // No trailing NUL.
        assert_eq!(service_name_from_environ(&b"OTEL_SERVICE_NAME=a"[..], 1 << 20).as_deref(), Some("a"));
        // Repeated: getenv returns the first.
        let twice = b"OTEL_SERVICE_NAME=first\0OTEL_SERVICE_NAME=second\0";
        assert_eq!(service_name_from_environ(&twice[..], 1 << 20).as_deref(), Some("first"));
        // Empty means unset, even when a later entry has a value the app's getenv never sees.
        assert_eq!(service_name_from_environ(&b"OTEL_SERVICE_NAME=\0"[..], 1 << 20), None);
        assert_eq!(
            service_name_from_environ(&b"OTEL_SERVICE_NAME=\0OTEL_SERVICE_NAME=x\0"[..], 1 << 20),
            None
        );
        assert_eq!(service_name_from_environ(&b"OTEL_SERVICE_NAME=  \0"[..], 1 << 20), None);
        // Other variables that merely contain the name.
        assert_eq!(
            service_name_from_environ(&b"MY_OTEL_SERVICE_NAME=x\0OTEL_SERVICE_NAMES=y\0"[..], 1 << 20),
            None
        );
        assert_eq!(service_name_from_environ(&b""[..], 1 << 20), None);
    }

    #[test]
    fn stat_gives_the_name_and_start_time_even_with_odd_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 \
                    12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
        assert_eq!(parse_stat(stat), Some(Stat { comm: "my (odd) name".into(), start_time: 987654 }));
        assert_eq!(parse_stat("4242 (short) S 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn the_executable_is_the_base_name_of_the_exe_link() {
        assert_eq!(executable_name(Path::new("/usr/sbin/unbound")).as_deref(), Some("unbound"));
        assert_eq!(executable_name(Path::new("/opt/app/server (deleted)")).as_deref(), Some("server"));
        assert_eq!(executable_name(Path::new("/")), None);
    }

    /// The cache with its reads done at once, as a resolver thread does them.
    struct SyncCache {
        root: PathBuf,
        cache: ProcessCache,
    }

    impl SyncCache {
        fn get(&mut self, pid: u32, comm: &str) -> Arc<ProcessInfo> {
            self.get_started(pid, None, comm)
        }

        fn get_started(&mut self, pid: u32, start_ticks: Option<u64>, comm: &str) -> Arc<ProcessInfo> {
            match self.cache.lookup(pid, start_ticks, comm) {
                Ok(info) => info,
                Err(request) => {
                    let outcome = read_process(&self.root, &request);
                    self.cache.apply(&request, outcome, &[comm])
                }
            }
        }

        fn sweep(&mut self) -> usize {
            let processes = self.cache.to_sweep();
            self.cache.apply_sweep(read_identities(&self.root, processes))
        }

        fn len(&self) -> usize {
            self.cache.len()
        }
    }

    /// A directory laid out like `/proc`, removed when dropped.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(name: &str) -> FakeProc {
            let dir = std::env::temp_dir().join(format!("otel-sendmmsg-proc-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeProc(dir)
        }

        fn process(&self, pid: u32, comm: &str, start_time: u64, exe: &str, environ: &[u8], cgroup: &str) {
            let dir = self.0.join(pid.to_string());
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let stat =
                format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start_time} 0 0");
            std::fs::write(dir.join("stat"), stat).unwrap();
            symlink(exe, dir.join("exe")).unwrap();
            std::fs::write(dir.join("environ"), environ).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        }

        fn exit(&self, pid: u32) {
            std::fs::remove_dir_all(self.0.join(pid.to_string())).unwrap();
        }

        fn cache(&self, capacity: usize) -> SyncCache {
            SyncCache { root: self.0.clone(), cache: ProcessCache::new(NonZeroUsize::new(capacity).unwrap()) }
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_process_is_read_once_with_its_service_executable_and_container() {
        let proc = FakeProc::new("read");
        proc.process(
            10,
            "checkout-main",
            500,
            "/srv/bin/checkout-server",
            b"OTEL_SERVICE_NAME=checkout\0",
            &format!("0::/system.slice/docker-{ID}.scope\n"),
        );
        proc.process(11, "dnsd", 600, "/usr/sbin/dnsd (deleted)", b"PATH=/bin\0", "0::/init.scope\n");
        let mut cache = proc.cache(16);
        let checkout = cache.get(10, "worker-1");
        assert_eq!(
            *checkout,
            ProcessInfo {
                pid: 10,
                executable_name: Some("checkout-server".into()),
                service_name: "checkout".into(),
                container_id: Some(ID.into()),
                attributes: Vec::new(),
            }
        );
        let dnsd = cache.get(11, "dnsd");
        assert_eq!(dnsd.service_name, "dnsd", "no OTEL_SERVICE_NAME: the executable's name");
        assert_eq!(dnsd.executable_name.as_deref(), Some("dnsd"));
        assert_eq!(dnsd.container_id, None);
        // Cached: the same entry, not read again.
        proc.process(10, "checkout-main", 500, "/srv/bin/checkout-server", b"OTEL_SERVICE_NAME=other\0", "");
        assert!(Arc::ptr_eq(&checkout, &cache.get(10, "worker-1")));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_process_gone_before_it_is_looked_at_is_named_by_its_thread() {
        let proc = FakeProc::new("gone");
        let mut cache = proc.cache(16);
        let info = cache.get(77, "sendmmsg-worklo");
        assert_eq!(
            *info,
            ProcessInfo {
                pid: 77,
                executable_name: Some("sendmmsg-worklo".into()),
                service_name: "sendmmsg-worklo".into(),
                container_id: None,
                attributes: Vec::new(),
            }
        );
        assert_eq!(cache.get(78, "").service_name, UNKNOWN_SERVICE);
    }

    #[test]
    fn an_unreadable_exe_link_falls_back_to_the_process_name() {
        let proc = FakeProc::new("zombie");
        proc.process(12, "kworker/0:1", 1, "/none", b"", "");
        std::fs::remove_file(proc.0.join("12/exe")).unwrap();
        let info = proc.cache(4).get(12, "thread-name");
        assert_eq!(info.executable_name.as_deref(), Some("kworker/0:1"));
        assert_eq!(info.service_name, "kworker/0:1");
    }

    #[test]
    fn sweeping_notices_reused_pids_renames_and_exits() {
        let proc = FakeProc::new("sweep");
        proc.process(20, "a", 100, "/bin/a", b"OTEL_SERVICE_NAME=svc-a\0", "");
        proc.process(21, "b", 100, "/bin/b", b"", "");
        proc.process(22, "c", 100, "/bin/c", b"", "");
        proc.process(23, "d", 100, "/bin/d", b"", "");
        let mut cache = proc.cache(16);
        for pid in 20..24 {
            cache.get(pid, "t");
        }
        assert_eq!(cache.sweep(), 0, "nothing changed");

        // 20's pid now belongs to another process (a later start time); 21 exec'd another
        // program; 22 exited; 23 is unchanged.
        proc.process(20, "a", 900, "/bin/other", b"", "");
        proc.process(21, "sh", 100, "/bin/sh", b"", "");
        proc.exit(22);
        assert_eq!(cache.sweep(), 2, "the reused pid and the exec are forgotten at once");
        assert_eq!(cache.get(20, "t").service_name, "other");
        assert_eq!(cache.get(21, "t").service_name, "sh");
        // The exited process's last records still find it.
        assert_eq!(cache.get(22, "t").service_name, "c");
        assert_eq!(cache.sweep(), 1, "the exited process, one sweep later");
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(22, "t").service_name, "t", "read again: gone, named by its thread");
        assert_eq!(cache.get(23, "t").service_name, "d");

        // An entry made for a process already gone is forgotten the same way, and at once if
        // its pid comes back.
        cache.get(30, "t");
        proc.process(30, "new", 5, "/bin/new", b"", "");
        assert_eq!(cache.sweep(), 1);
        assert_eq!(cache.get(30, "t").service_name, "new");
    }

    #[test]
    fn a_new_thread_name_after_an_exec_brings_the_new_program_at_once() {
        let proc = FakeProc::new("exec");
        proc.process(40, "launcher", 100, "/bin/launcher", b"OTEL_SERVICE_NAME=launch\0", "");
        let mut cache = proc.cache(16);
        let before = cache.get(40, "launcher");
        assert_eq!(before.service_name, "launch");
        // Another thread of the same program: checked once, still the same process.
        assert!(Arc::ptr_eq(&before, &cache.get(40, "io-worker")));
        assert!(Arc::ptr_eq(&before, &cache.get(40, "io-worker")));
        // exec: same pid and start time, another program. The old program's last records
        // (its thread names) keep the old entry until a new name shows up.
        proc.process(40, "dns-server", 100, "/usr/sbin/dns-server", b"", "");
        assert!(Arc::ptr_eq(&before, &cache.get(40, "launcher")));
        let after = cache.get(40, "dns-server");
        assert_eq!(after.service_name, "dns-server");
        assert_eq!(after.executable_name.as_deref(), Some("dns-server"));
        assert!(Arc::ptr_eq(&after, &cache.get(40, "dns-server")));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_provisional_entry_answers_until_the_read_does() {
        let proc = FakeProc::new("provisional");
        proc.process(50, "slow", 1, "/bin/slow-app", b"OTEL_SERVICE_NAME=slow-svc\0", "");
        let mut cache = proc.cache(4);
        let request = cache.cache.lookup(50, None, "worker").unwrap_err();
        // The read did not answer in time: the thread's name stands in, for every thread.
        assert_eq!(cache.cache.provisional(50, "worker").service_name, "worker");
        assert_eq!(cache.cache.lookup(50, None, "other-thread").unwrap().service_name, "worker");
        // Its answer replaces it.
        let outcome = read_process(&proc.0, &request);
        assert_eq!(cache.cache.apply(&request, outcome, &["worker"]).service_name, "slow-svc");
        assert_eq!(cache.get(50, "worker").service_name, "slow-svc");
    }

    #[test]
    fn a_call_of_a_process_whose_pid_is_now_anothers_never_gets_the_new_owners_identity() {
        let proc = FakeProc::new("reused");
        // Pid 60 now belongs to a process that started at tick 500 and says it is "victim".
        proc.process(60, "liar", 500, "/bin/liar", b"OTEL_SERVICE_NAME=victim\0", "");
        let mut cache = proc.cache(4);
        // A record of the process that had pid 60 before (started at tick 400).
        let old = cache.get_started(60, Some(400), "old-sender");
        assert_eq!((old.service_name.as_str(), old.container_id.as_ref()), ("old-sender", None));
        assert_eq!(cache.len(), 0, "nothing cached for a process that is gone");
        // The new owner's own calls get its own resource, cached...
        assert_eq!(cache.get_started(60, Some(500), "liar").service_name, "victim");
        // ...which never answers for the old process's late records.
        assert_eq!(cache.get_started(60, Some(400), "old-sender").service_name, "old-sender");
        assert_eq!(cache.get_started(60, Some(500), "liar").service_name, "victim");
    }

    /// An identity as the kernel captures it, of a process started at tick 500.
    fn captured(pid: u32, environ: &[u8], exe: &str, cgroup: &str) -> Identity {
        Identity {
            pid,
            process_start_ns: 5_000_000_000,
            comm: "launcher".into(),
            executable: Some(exe.into()),
            cgroup: Some(cgroup.into()),
            cgroup_parent: Some("system.slice".into()),
            cgroup_id: 1,
            environ: environ.to_vec(),
            environ_complete: true,
            flags: 0,
        }
    }

    fn new_read(outcome: Captured) -> (Option<Arc<ProcessInfo>>, Option<ReadRequest>) {
        match outcome {
            Captured::New { earlier, read } => (earlier, read),
            Captured::Repeat => panic!("a new capture"),
        }
    }

    #[test]
    fn a_captured_identity_answers_every_thread_without_waiting_for_proc() {
        // /proc knows nothing of the process: it is gone.
        let proc = FakeProc::new("captured");
        let mut cache = proc.cache(8);
        let identity = captured(
            70,
            b"OTEL_SERVICE_NAME=checkout\0OTEL_RESOURCE_ATTRIBUTES=service.namespace=a,deployment.environment.name=b\0",
            "checkout-server",
            &format!("docker-{ID}.scope"),
        );
        let (earlier, read) = new_read(cache.cache.capture(&identity, None));
        // Complete: /proc is read only for a process context its SDK may publish.
        assert!(earlier.is_none() && read.is_some_and(|r| r.completes.is_some()));
        for thread in ["launcher", "worker-1", "worker-2"] {
            let info = cache.cache.lookup(70, Some(500), thread).expect("answered from the capture");
            assert_eq!(info.service_name, "checkout");
            assert_eq!(info.executable_name.as_deref(), Some("checkout-server"));
            assert_eq!(info.container_id.as_deref(), Some(ID));
            let attributes: Vec<(String, String)> =
                info.attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect();
            assert_eq!(
                attributes,
                [("service.namespace", "a"), ("deployment.environment.name", "b")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            );
        }
        // The same identity again (another thread's first call): nothing changes.
        assert!(matches!(cache.cache.capture(&identity, None), Captured::Repeat));
        // A later process given the same pid is not answered by it.
        assert!(cache.cache.lookup(70, Some(900), "other").is_err());
    }

    #[test]
    fn a_capture_falls_back_to_the_executable_and_the_cgroups_parent() {
        let mut cache = ProcessCache::new(NonZeroUsize::new(4).unwrap());
        let mut podman = captured(71, b"PATH=/bin\0", "dnsd", "container");
        podman.cgroup_parent = Some(format!("libpod-{ID}.scope"));
        cache.capture(&podman, None);
        let info = cache.lookup(71, Some(500), "t").unwrap();
        assert_eq!((info.service_name.as_str(), info.container_id.as_deref()), ("dnsd", Some(ID)));
        // No executable name: the process's name; no container in a host cgroup.
        let mut bare = captured(72, b"", "x", "session-2.scope");
        bare.executable = None;
        bare.flags = otel_sendmmsg_common::identity_flags::EXE_UNREADABLE;
        cache.capture(&bare, None);
        let info = cache.lookup(72, Some(500), "t").unwrap();
        assert_eq!((info.service_name.as_str(), info.container_id.as_deref()), ("launcher", None));
    }

    #[test]
    fn an_exec_brings_a_new_capture_and_earlier_waiting_calls_keep_what_described_them() {
        let proc = FakeProc::new("captured-exec");
        let mut cache = proc.cache(8);
        cache.cache.capture(&captured(73, b"OTEL_SERVICE_NAME=before\0", "launcher", "x"), None);
        assert_eq!(cache.cache.lookup(73, Some(500), "launcher").unwrap().service_name, "before");
        // exec: same pid, same start, another program; its record comes before its calls.
        let after = captured(73, b"OTEL_SERVICE_NAME=after\0", "server", "x");
        let (earlier, read) = new_read(cache.cache.capture(&after, None));
        assert!(earlier.is_none() && read.is_some());
        let info = cache.cache.lookup(73, Some(500), "launcher").unwrap();
        assert_eq!((info.service_name.as_str(), info.executable_name.as_deref()), ("after", Some("server")));
        // A read asked before the capture (its first identity was lost) answers late: the
        // capture stands.
        let stale = ReadRequest {
            pid: 73,
            start_ticks: Some(500),
            comm: "launcher".into(),
            known: None,
            completes: None,
        };
        proc.process(73, "launcher", 500, "/bin/stale", b"OTEL_SERVICE_NAME=stale\0", "");
        let outcome = read_process(&proc.0, &stale);
        assert_eq!(cache.cache.apply(&stale, outcome, &[]).service_name, "after");
        assert_eq!(cache.cache.lookup(73, Some(500), "t").unwrap().service_name, "after");
    }

    #[test]
    fn a_completing_read_that_finds_the_next_program_after_an_exec_is_not_taken() {
        let proc = FakeProc::new("captured-exec-race");
        let mut cache = proc.cache(8);
        let mut cut = captured(77, b"A=1\0OTEL_SERVICE_NA", "launcher-bin", "x");
        cut.environ_complete = false;
        cut.flags = otel_sendmmsg_common::identity_flags::ENV_CUT;
        let (_, read) = new_read(cache.cache.capture(&cut, None));
        let read = read.expect("a read to complete it");
        // It exec'd before the read: /proc shows the next program, same pid and start.
        proc.process(77, "server", 500, "/usr/bin/server", b"OTEL_SERVICE_NAME=next\0", "");
        let outcome = read_process(&proc.0, &read);
        assert_eq!(cache.cache.apply(&read, outcome, &[]).service_name, "launcher-bin");
    }

    #[test]
    fn calls_of_a_process_gone_before_its_pid_was_reused_keep_its_capture() {
        let mut cache = ProcessCache::new(NonZeroUsize::new(4).unwrap());
        let first = captured(80, b"OTEL_SERVICE_NAME=first\0", "a", "x");
        let (_, read) = new_read(cache.capture(&first, None));
        let completing = read.expect("a read for its context");
        // Before that read answers, another process gets the pid and calls.
        let mut second = captured(80, b"OTEL_SERVICE_NAME=second\0", "b", "x");
        second.process_start_ns = 9_000_000_000;
        let (earlier, _) = new_read(cache.capture(&second, Some(&completing)));
        assert_eq!(earlier.expect("the first's calls released").service_name, "first");
        assert_eq!(cache.lookup(80, start_ticks(9_000_000_000), "b").unwrap().service_name, "second");
    }

    #[test]
    fn a_late_answer_about_an_earlier_owner_of_the_pid_leaves_the_later_capture() {
        let proc = FakeProc::new("late-answer");
        let mut cache = proc.cache(8);
        let first = captured(81, b"OTEL_SERVICE_NAME=first\0", "a", "x");
        let (_, read) = new_read(cache.cache.capture(&first, None));
        let stale = read.expect("a read for its context");
        let mut second = captured(81, b"OTEL_SERVICE_NAME=second\0", "b", "x");
        second.process_start_ns = 9_000_000_000;
        cache.cache.capture(&second, Some(&stale));
        // Both gone when the first's read runs: it finds nothing, and must not erase the second.
        let outcome = read_process(&proc.0, &stale);
        cache.cache.apply(&stale, outcome, &[]);
        assert_eq!(cache.cache.lookup(81, start_ticks(9_000_000_000), "b").unwrap().service_name, "second");
    }

    #[test]
    fn a_sweep_that_read_the_program_before_an_exec_leaves_the_new_capture() {
        let mut cache = ProcessCache::new(NonZeroUsize::new(4).unwrap());
        cache.capture(&captured(82, b"OTEL_SERVICE_NAME=before\0", "a", "x"), None);
        // The sweep reads the process as it was before its exec...
        let before = Stat { comm: "before-name".into(), start_time: 500 };
        // ...and answers after the kernel captured the program it exec'd into.
        let mut after = captured(82, b"OTEL_SERVICE_NAME=after\0", "b", "x");
        after.comm = "after-name".into();
        cache.capture(&after, None);
        let checked = Checked { pid: 82, stat: Some(before), republished: false };
        assert_eq!(cache.apply_sweep(vec![checked]), 0);
        assert_eq!(cache.lookup(82, Some(500), "after-name").unwrap().service_name, "after");
        // Another process at the pid (another start time) still makes it stale.
        let reused =
            Checked { pid: 82, stat: Some(Stat { comm: "x".into(), start_time: 900 }), republished: false };
        assert_eq!(cache.apply_sweep(vec![reused]), 1);
    }

    #[test]
    fn calls_waiting_for_a_read_when_a_capture_arrives_get_what_came_before_it() {
        let mut cache = ProcessCache::new(NonZeroUsize::new(4).unwrap());
        let waiting = cache.lookup(74, Some(500), "old-name").unwrap_err();
        // Same process, no capture before: the capture is the first and best there is.
        let first = captured(74, b"OTEL_SERVICE_NAME=first\0", "a", "x");
        let (earlier, _) = new_read(cache.capture(&first, Some(&waiting)));
        assert_eq!(earlier.unwrap().service_name, "first");
        // Waiting for another process by that pid (another start): its thread's name.
        let mut cache = ProcessCache::new(NonZeroUsize::new(4).unwrap());
        let older = cache.lookup(75, Some(400), "old-name").unwrap_err();
        let (earlier, _) = new_read(cache.capture(&captured(75, b"", "a", "x"), Some(&older)));
        assert_eq!(earlier.unwrap().service_name, "old-name");
    }

    #[test]
    fn an_incomplete_capture_is_completed_from_proc_while_the_process_lives() {
        let proc = FakeProc::new("captured-incomplete");
        let mut cache = proc.cache(8);
        // The environment was cut inside the window: the service name lies beyond.
        let mut cut = captured(76, b"A=1\0OTEL_SERVICE_NA", "server", &format!("docker-{ID}.scope"));
        cut.environ_complete = false;
        cut.flags = otel_sendmmsg_common::identity_flags::ENV_CUT;
        let (_, read) = new_read(cache.cache.capture(&cut, None));
        let read = read.expect("a read to complete it");
        assert_eq!((read.pid, read.start_ticks), (76, Some(500)));
        // Until then, what was captured (a cut entry is not a value).
        assert_eq!(cache.cache.lookup(76, Some(500), "t").unwrap().service_name, "server");
        // Alive: the environment comes from /proc, the container from the capture.
        proc.process(76, "launcher", 500, "/srv/server", b"A=1\0OTEL_SERVICE_NAME=far\0", "0::/\n");
        let outcome = read_process(&proc.0, &read);
        let info = cache.cache.apply(&read, outcome, &["t"]);
        assert_eq!(info.service_name, "far");
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(cache.cache.lookup(76, Some(500), "t").unwrap().service_name, "far");

        // Gone before the read (or its pid another's): the capture stands.
        let mut gone = cut.clone();
        gone.pid = 77;
        let (_, read) = new_read(cache.cache.capture(&gone, None));
        let read = read.unwrap();
        let outcome = read_process(&proc.0, &read);
        assert_eq!(cache.cache.apply(&read, outcome, &["t"]).service_name, "server");
        proc.process(78, "launcher", 900, "/bin/other", b"OTEL_SERVICE_NAME=not-it\0", "");
        let mut reused = cut.clone();
        reused.pid = 78;
        let (_, read) = new_read(cache.cache.capture(&reused, None));
        let read = read.unwrap();
        let outcome = read_process(&proc.0, &read);
        assert_eq!(cache.cache.apply(&read, outcome, &["t"]).service_name, "server");
        // A read that never answers in time: the capture, not the thread's name.
        let mut slow = cut.clone();
        slow.pid = 79;
        cache.cache.capture(&slow, None);
        assert_eq!(cache.cache.provisional(79, "thread").service_name, "server");
    }

    #[test]
    fn a_process_context_comes_before_the_environment_and_a_refused_one_is_counted() {
        let proc = FakeProc::new("context");
        // The process is this one (its memory is read for real); its maps are the test's.
        let me = std::process::id();
        let environ = b"OTEL_SERVICE_NAME=from-env\0OTEL_RESOURCE_ATTRIBUTES=service.version=env,team=env\0";
        proc.process(me, "app", 100, "/srv/app", environ, "");
        let mut page = vec![0u8; 4096];
        let context =
            [("service.name", "from-context"), ("service.version", "2.0"), ("service.instance.id", "i-9")];
        process_context::lay_out_for_test(&mut page, 7, &context);
        let start = page.as_ptr() as u64;
        let maps = format!("{start:x}-{:x} rw-p 00000000 00:00 0    [anon:OTEL_CTX]\n", start + 4096);
        std::fs::write(proc.0.join(format!("{me}/maps")), maps).unwrap();
        let mut cache = proc.cache(4);
        let info = cache.get(me, "app");
        assert_eq!(info.service_name, "from-context");
        assert_eq!(
            info.attributes,
            vec![
                opentelemetry::KeyValue::new("service.version", "2.0"),
                opentelemetry::KeyValue::new("service.instance.id", "i-9"),
            ],
            "the context's resource whole, nothing of the environment's"
        );
        assert_eq!(cache.cache.contexts_refused(), 0);
        assert_eq!(cache.sweep(), 0, "still the same publication");

        // Published again: the sweep forgets the entry, the next call reads the new resource.
        process_context::lay_out_for_test(&mut page, 8, &[("service.name", "renamed")]);
        assert_eq!(cache.sweep(), 1);
        let info = cache.get(me, "app");
        assert_eq!((info.service_name.as_str(), info.attributes.len()), ("renamed", 0));

        // Without a service name, the environment's.
        process_context::lay_out_for_test(&mut page, 9, &[("service.version", "3")]);
        cache.sweep();
        assert_eq!(cache.get(me, "app").service_name, "from-env");

        // Torn (being updated at every read), then malformed: the environment, and counted.
        page[16..24].fill(0);
        cache.sweep();
        let info = cache.get(me, "app");
        assert_eq!(info.service_name, "from-env");
        assert_eq!(
            info.attributes,
            vec![
                opentelemetry::KeyValue::new("service.version", "env"),
                opentelemetry::KeyValue::new("team", "env")
            ]
        );
        assert_eq!(cache.cache.contexts_refused(), 1);
        process_context::lay_out_for_test(&mut page, 10, &[("service.name", "x")]);
        page[64] = 0xff;
        assert_eq!(cache.sweep(), 1);
        assert_eq!(cache.get(me, "app").service_name, "from-env");
        assert_eq!(cache.cache.contexts_refused(), 2);
    }

    #[test]
    fn start_times_convert_to_the_ticks_proc_shows() {
        assert_eq!(start_ticks(0), None, "unknown");
        // USER_HZ is 100 on every architecture Linux runs BPF on: 10 ms a tick.
        assert_eq!(start_ticks(1_234_567_890), Some(123));
        let me = read_stat(Path::new("/proc/self")).unwrap().start_time;
        assert!(me > 0);
    }

    #[test]
    fn the_cache_is_bounded_least_recently_used_first_out() {
        let proc = FakeProc::new("bounded");
        for pid in 1..=3 {
            proc.process(pid, "p", 1, &format!("/bin/p{pid}"), b"", "");
        }
        let mut cache = proc.cache(2);
        let first = cache.get(1, "t");
        cache.get(2, "t");
        cache.get(1, "t"); // 2 is now the least recently used
        cache.get(3, "t");
        assert_eq!(cache.len(), 2);
        assert!(Arc::ptr_eq(&first, &cache.get(1, "t")), "1 was kept");
        proc.process(2, "p", 1, "/bin/renamed", b"", "");
        assert_eq!(cache.get(2, "t").service_name, "renamed", "2 was forgotten and read again");
    }

    #[test]
    fn this_process_as_the_real_proc_shows_it() {
        let mut cache = SyncCache { root: "/proc".into(), cache: ProcessCache::new(DEFAULT_CAPACITY) };
        let me = cache.get(std::process::id(), "ignored");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(me.executable_name.as_deref(), exe.file_name().and_then(|n| n.to_str()));
        let expected = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| me.executable_name.clone().unwrap());
        assert_eq!(me.service_name, expected);
        assert_eq!(cache.sweep(), 0);
    }
}
