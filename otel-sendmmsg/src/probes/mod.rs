//! Kernel hooks: loads the BPF object, attaches the programs of the hooks that [`choose`] picks
//! for the running kernel, and detaches them again.

pub mod btf_types;
pub mod choose;
pub mod context_cleanup;
pub mod hooks;
pub mod kernel;
pub mod kernel_misses;
pub mod kretprobe_events;
pub mod load;
pub mod markers;
pub mod offsets;
pub mod pin_dir;
pub mod selftest;
pub mod shared_context;

use std::{
    any::Any,
    collections::HashSet,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeScope},
        FEntry, FExit, KProbe, TracePoint, UProbe,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use otel_sendmmsg_common::{
    filter, CallRecord, Counter, FilterSettings, KernelOffsets, CONTEXT_MARKER_SYMBOL,
};
use tracing::{debug, info, warn};

use self::{
    hooks::{program, Family, MessageHook, PROTOCOL_SENDMSG},
    kernel::{Kernel, TRACEFS},
    kretprobe_events::KretprobeEvent,
    load::{ensure_tracefs, raise_memlock_limit},
    markers::{printable, proc_maps::FileId, Found, Marker},
    shared_context::SharedMap,
};
use crate::{
    cgroup,
    config::{Config, ConfigError, KernelMessages},
};

static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/otel-sendmmsg.bpf.o"));

/// An attached hook; dropping the link detaches it.
struct Attached {
    what: String,
    _link: Box<dyn Any>,
}

pub struct Probes {
    ebpf: Ebpf,
    loaded: HashSet<&'static str>,
    entry_exit: Vec<Attached>,
    message: Vec<Attached>,
    /// The context-marker uprobes, one per file; dropping one releases that file.
    markers: std::collections::HashMap<FileId, Attached>,
    /// In-flight entries removed because their thread is gone: calls whose exit never ran.
    exits_missed_swept: u64,
    context_cleanup: Vec<Attached>,
    /// `maxactive` of the kretprobe on the syscall (the kprobe family's exit).
    exit_maxactive: u32,
    /// Returns missed by tracefs kretprobes already detached ([`KretprobeEvent::missed`]).
    kretprobe_missed_detached: u64,
}

impl Probes {
    /// Loads the BPF object, sized by `config`, and attaches the trace-context cleanup; no
    /// other program is loaded into the kernel yet.
    pub fn load(config: &Config, kernel: &Kernel) -> Result<Self> {
        if let Some(why) = kernel.locked_down() {
            bail!(why);
        }
        ensure_tracefs()?;
        raise_memlock_limit();
        let self_tgid = std::process::id();
        let wrapper = u32::from(kernel.syscall_symbol.as_ref().is_none_or(|(_, wrapped)| *wrapped));
        let offsets = kernel.offsets.clone().unwrap_or_else(|why| {
            warn!("{why}: spans will carry no socket context (network.*)");
            KernelOffsets::default()
        });
        let filters = &config.filters;
        if !filters.comms.is_empty() && offsets.valid == 0 {
            warn!("without kernel BTF, OTEL_SENDMMSG_COMMS matches thread names, not process names");
        }
        let cgroup_ids = cgroup_ids(&filters.cgroups)?;
        let settings = FilterSettings {
            flags: [
                (!filters.pids.is_empty(), filter::PIDS),
                (!filters.comms.is_empty(), filter::COMMS),
                (!filters.cgroups.is_empty(), filter::CGROUPS),
                (filters.errors_only, filter::ERRORS_ONLY),
                (filters.sample_ratio < 1.0, filter::SAMPLE),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |flags, (_, bit)| flags | bit),
            // The share of the u32 range below which a random draw traces the call.
            sample_below: (filters.sample_ratio * f64::from(u32::MAX)) as u32,
            min_duration_ns: u64::try_from(filters.min_duration.as_nanos()).unwrap_or(u64::MAX),
        };
        let load = |pin: Option<PathBuf>| {
            let mut loader = EbpfLoader::new();
            // The kernel's BTF is already parsed: the loader would parse its own copy otherwise.
            loader.btf(kernel.btf.as_ref().ok());
            if let Some(path) = pin {
                loader.map_pin_path("TRACES_CTX", path);
            }
            loader
                .override_global("SELF_TGID", &self_tgid, true)
                .override_global("SYSCALL_WRAPPER", &wrapper, true)
                .override_global("OFFSETS", &offsets, true)
                .override_global("FILTERS", &settings, true)
                .override_global(
                    "SIZES_AT_EXIT",
                    &u32::from(config.kernel_messages == KernelMessages::SizesAtExit),
                    true,
                )
                // Wake the reader once an eighth of the ring is pending; its timer drains the rest.
                .override_global("WAKEUP_BYTES", &u64::from(config.ring_buffer_bytes / 8), true)
                .map_max_entries("INFLIGHT", config.max_inflight)
                .map_max_entries("RECORDS", config.ring_buffer_bytes)
                .load(BPF_OBJECT)
        };
        let load_error = |e: EbpfError| privilege_hint(anyhow!(e).context("loading the BPF object"));
        let shared = shared_context::prepare();
        let pinned = matches!(shared, SharedMap::Pinned { .. });
        let mut ebpf = match load(shared.loader_path()) {
            Err(EbpfError::MapError(e @ MapError::PinError { .. })) if pinned => {
                shared_context::refuse(&format!("{:#}", anyhow!(e)));
                load(None)
            }
            loaded => loaded,
        }
        .map_err(load_error)?;
        if pinned {
            if let Err(why) = shared_context::loaded_info(&ebpf).and_then(|info| shared.confirm(&info)) {
                shared_context::refuse(&why);
                ebpf = load(None).map_err(load_error)?;
            }
        }
        fill_set(&mut ebpf, "FILTER_PIDS", filters.pids.iter().copied())?;
        fill_set(&mut ebpf, "FILTER_COMMS", filters.comms.iter().map(|c| comm_key(c)))?;
        fill_set(&mut ebpf, "FILTER_CGROUPS", cgroup_ids)?;
        let mut probes = Probes {
            ebpf,
            loaded: HashSet::new(),
            entry_exit: Vec::new(),
            message: Vec::new(),
            markers: std::collections::HashMap::new(),
            exits_missed_swept: 0,
            context_cleanup: Vec::new(),
            exit_maxactive: kretprobe_events::maxactive(config.max_inflight),
            kretprobe_missed_detached: 0,
        };
        let sweep = matches!(shared, SharedMap::Pinned { existing: Some(_), .. });
        if let Err(e) = probes.attach_context_cleanup(sweep) {
            warn!(
                "{e}: a thread that gets the tid of one that published a context may inherit its parent span"
            );
        }
        Ok(probes)
    }

    /// Hands over the ring buffer the records arrive in; start reading it before attaching.
    pub fn take_records(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("RECORDS").context("map RECORDS missing from the BPF object")?;
        RingBuf::try_from(map).context("map RECORDS is not a ring buffer")
    }

    /// Attaches a family's entry and exit hooks, exit first, so no call is entered without its
    /// exit hook in place. The error says why the family is unusable here.
    pub fn attach_entry_exit(&mut self, family: Family, kernel: &Kernel) -> Result<(), String> {
        let attached = match family {
            Family::Tracepoint => {
                for event in ["sys_enter_sendmmsg", "sys_exit_sendmmsg"] {
                    if !Kernel::has_tracepoint("syscalls", event) {
                        return Err(format!(
                            "tracepoint syscalls:{event} not present (kernel without CONFIG_FTRACE_SYSCALLS?)"
                        ));
                    }
                }
                vec![
                    self.attach_tracepoint(program::TP_EXIT, "syscalls", "sys_exit_sendmmsg"),
                    self.attach_tracepoint(program::TP_ENTER, "syscalls", "sys_enter_sendmmsg"),
                ]
            }
            Family::Kprobe => {
                kernel.kprobes.clone()?;
                let (symbol, _) =
                    kernel.syscall_symbol.clone().ok_or("no sendmmsg syscall symbol in /proc/kallsyms")?;
                let maxactive = self.exit_maxactive;
                vec![
                    self.attach_kprobe(program::KRETPROBE_EXIT, &symbol, maxactive),
                    self.attach_kprobe(program::KPROBE_ENTER, &symbol, 0),
                ]
            }
            Family::Fentry => {
                let btf = kernel.btf.as_ref().map_err(Clone::clone)?;
                vec![
                    self.attach_fexit(program::FEXIT_EXIT, "__sys_sendmmsg", btf),
                    self.attach_fentry(program::FENTRY_ENTER, "__sys_sendmmsg", btf),
                ]
            }
        };
        // Keep what attached even on failure, so dropping it detaches cleanly.
        let mut error = None;
        for a in attached {
            match a {
                Ok(a) => self.entry_exit.push(a),
                Err(e) => error = error.or(Some(e)),
            }
        }
        match error {
            None => Ok(()),
            Some(e) => {
                self.detach_entry_exit();
                Err(e)
            }
        }
    }

    /// Attaches a per-message hook (all its targets); the error says why it is unusable here.
    pub fn attach_message(&mut self, hook: MessageHook, kernel: &Kernel) -> Result<(), String> {
        let targets: Vec<&str> = match hook {
            MessageHook::KretprobeSockSendmsg => vec!["sock_sendmsg"],
            _ => PROTOCOL_SENDMSG.iter().copied().filter(|f| kernel.has_symbol(f)).collect(),
        };
        let attached: Vec<Result<Attached, String>> = match hook {
            MessageHook::Tracepoint => {
                if !Kernel::has_tracepoint("sock", "sock_send_length") {
                    return Err("tracepoint sock:sock_send_length not present (added in Linux 6.3)".into());
                }
                vec![self.attach_tracepoint(program::TP_MESSAGE, "sock", "sock_send_length")]
            }
            MessageHook::KretprobeSockSendmsg | MessageHook::KretprobeProtocol => {
                kernel.kprobes.clone()?;
                if targets.is_empty() {
                    return Err("none of its functions is in /proc/kallsyms".into());
                }
                if hook == MessageHook::KretprobeSockSendmsg && !kernel.has_symbol("sock_sendmsg") {
                    return Err("sock_sendmsg is not in /proc/kallsyms".into());
                }
                // Every send on the host's sockets passes through these, not only sendmmsg's:
                // as many at once as the kernel allows.
                let maxactive = kretprobe_events::MAXACTIVE_MAX;
                targets.iter().map(|f| self.attach_kprobe(program::KRETPROBE_MESSAGE, f, maxactive)).collect()
            }
            MessageHook::FexitProtocol => {
                let btf = kernel.btf.as_ref().map_err(Clone::clone)?;
                program::FEXIT_PROTOCOL
                    .iter()
                    .filter(|(_, f)| targets.contains(f))
                    .map(|(p, f)| self.attach_fexit(p, f, btf))
                    .collect()
            }
        };
        let mut error = None;
        for a in attached {
            match a {
                Ok(a) => self.message.push(a),
                Err(e) => error = error.or(Some(e)),
            }
        }
        match error {
            None if self.message.is_empty() => Err("nothing to attach to".into()),
            None => Ok(()),
            Some(e) => {
                self.detach_message();
                Err(e)
            }
        }
    }

    /// Attaches the context-marker uprobe to a file the scan found and checked, for every
    /// process that runs it, now or later. The target is `/proc/self/fd/N` of the descriptor
    /// the scan opened, at the offset it computed: the kernel follows that link to exactly the
    /// inode checked, and aya neither opens nor parses any path (with an absolute offset and a
    /// path that is not a bare name, `UProbe::attach` hands the path straight to
    /// `perf_event_open`). The uprobe holds the inode; the caller closes the descriptor.
    pub fn attach_marker(&mut self, marker: &Marker) -> Result<(), String> {
        let name = program::CONTEXT_MARKER;
        let first = self.loaded.insert(name);
        let prog: &mut UProbe = self.program(name)?;
        if first {
            prog.load().map_err(|e| load_error(name, e))?;
        }
        let target = PathBuf::from(format!("/proc/self/fd/{}", marker.file.as_raw_fd()));
        let id = prog
            .attach(UProbeAttachLocation::AbsoluteOffset(marker.offset), &target, UProbeScope::AllProcesses)
            .map_err(|e| format!("attach refused: {:#}", anyhow!(e)))?;
        let link = prog.take_link(id).map_err(|e| e.to_string())?;
        let what = format!("uprobe {}+{:#x} ({CONTEXT_MARKER_SYMBOL})", marker.name.display(), marker.offset);
        self.markers.insert(marker.id, Attached { what, _link: Box::new(link) });
        Ok(())
    }

    /// Attaches the context-marker uprobe to a file the scan found, then closes the file; or
    /// releases the uprobe of a file no process maps any more.
    pub fn follow_marker(&mut self, found: Found) {
        match found {
            Found::Attach(marker) => match self.attach_marker(&marker) {
                Ok(()) => info!("context marker: attached to {}", printable(&marker.name)),
                Err(e) => warn!("context marker: not attached to {}: {e}", printable(&marker.name)),
            },
            Found::Release { id, name } => {
                if self.release_marker(id) {
                    info!(
                        "context marker: released {} (no process maps it any more; {} files attached)",
                        printable(&name),
                        self.markers_attached()
                    );
                }
            }
        }
    }

    /// Detaches the context-marker uprobe from a file; whether it was attached.
    pub fn release_marker(&mut self, id: FileId) -> bool {
        self.markers.remove(&id).is_some()
    }

    /// How many files carry a context-marker uprobe now.
    pub fn markers_attached(&self) -> usize {
        self.markers.len()
    }

    pub fn detach_entry_exit(&mut self) {
        // Entry first (it was attached last), so calls already inside still reach their exit.
        while let Some(a) = self.entry_exit.pop() {
            debug!("detaching {}", a.what);
            self.kretprobe_missed_detached += kretprobe_missed(&a);
        }
    }

    pub fn detach_message(&mut self) {
        for a in self.message.drain(..) {
            self.kretprobe_missed_detached += kretprobe_missed(&a);
        }
    }

    /// Detaches every hook, entry first.
    pub fn detach(&mut self) {
        self.detach_entry_exit();
        self.detach_message();
        self.markers.clear();
        self.context_cleanup.clear();
    }

    /// What is attached now, for the log.
    pub fn attached(&self) -> Vec<String> {
        self.entry_exit.iter().chain(&self.message).map(|a| a.what.clone()).collect()
    }

    /// The per-message kretprobes attached now, as the log names them (with their
    /// `maxactive`, or the kprobe PMU they fell back to); empty for other hooks.
    pub fn message_kretprobes(&self) -> Vec<String> {
        self.message.iter().filter(|a| a.what.starts_with("kretprobe ")).map(|a| a.what.clone()).collect()
    }

    /// Lets the BPF side trace the sidecar's own thread `tid` (0: none again).
    pub fn set_self_test_thread(&mut self, tid: u32) -> Result<()> {
        let map = self.ebpf.map_mut("SELF_TEST_TID").context("map SELF_TEST_TID missing")?;
        Array::<_, u32>::try_from(map)?.set(0, tid, 0).context("setting the self-test thread")
    }

    /// The BPF side's loss and anomaly counters, summed over CPUs (with the missed exits user
    /// space found, [`Probes::sweep_inflight`]), the runs of our programs the kernel skipped
    /// (`kernel_missed`), and the calls still in flight (after detaching, anything left there
    /// would be a leak).
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>> {
        let map = self.ebpf.map("COUNTERS").context("map COUNTERS missing from the BPF object")?;
        let counters = PerCpuArray::<_, u64>::try_from(map)?;
        let mut out: Vec<(&'static str, u64)> = Counter::ALL
            .iter()
            .map(|&c| {
                let n: u64 = counters.get(&(c as u32), 0)?.iter().sum();
                let swept = if c == Counter::ExitMissed { self.exits_missed_swept } else { 0 };
                Ok((c.name(), n + swept))
            })
            .collect::<Result<_>>()?;
        out.push(("kernel_missed", self.kernel_missed()));
        let attached: u64 = self.entry_exit.iter().chain(&self.message).map(kretprobe_missed).sum();
        out.push(("kretprobe_missed", self.kretprobe_missed_detached + attached));
        let inflight = self.ebpf.map("INFLIGHT").context("map INFLIGHT missing from the BPF object")?;
        let inflight = HashMap::<_, u32, CallRecord>::try_from(inflight)?;
        out.push(("inflight", inflight.keys().count() as u64));
        Ok(out)
    }

    /// Runs of our loaded programs the kernel skipped ([`kernel_misses`]), summed.
    fn kernel_missed(&self) -> u64 {
        self.loaded
            .iter()
            .filter_map(|name| self.ebpf.program(name)?.fd().ok())
            .filter_map(|fd| kernel_misses::recursion_misses(fd.as_fd()).ok())
            .sum()
    }

    /// Removes the in-flight entries no call will come back for: those of threads that no
    /// longer exist (their exit never ran: counted as `exit_missed`), and those of calls that
    /// did finish but whose delete failed (they have an end; not a loss). A thread that
    /// still exists keeps its entry: its next call replaces and counts it. Returns the entries
    /// removed.
    pub fn sweep_inflight(&mut self, proc: &Path) -> Result<u64> {
        let map = self.ebpf.map_mut("INFLIGHT").context("map INFLIGHT missing from the BPF object")?;
        let mut inflight = HashMap::<_, u32, CallRecord>::try_from(map)?;
        let tids: Vec<u32> = inflight.keys().filter_map(Result::ok).collect();
        let mut removed = 0;
        for tid in tids {
            let Ok(call) = inflight.get(&tid, 0) else {
                continue; // its exit came meanwhile
            };
            let finished = call.end_ns != 0;
            if !finished && proc.join(format!("{}/task/{tid}", call.pid)).exists() {
                continue;
            }
            // Only if it is still that call: the thread id may have been reused by a thread
            // that entered sendmmsg since (its entry counted the stale one already).
            if inflight.get(&tid, 0).is_ok_and(|now| now.start_ns == call.start_ns)
                && inflight.remove(&tid).is_ok()
            {
                removed += 1;
                if !finished {
                    self.exits_missed_swept += 1;
                }
            }
        }
        Ok(removed)
    }

    fn program<'a, P>(&'a mut self, name: &str) -> Result<&'a mut P, String>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program>,
    {
        let prog = self.ebpf.program_mut(name).ok_or_else(|| format!("BPF program {name} missing"))?;
        prog.try_into().map_err(|_| format!("BPF program {name} has another type"))
    }

    fn attach_tracepoint(
        &mut self,
        name: &'static str,
        category: &str,
        event: &str,
    ) -> Result<Attached, String> {
        let first = self.loaded.insert(name);
        let prog: &mut TracePoint = self.program(name)?;
        if first {
            prog.load().map_err(|e| load_error(name, e))?;
        }
        let id = prog.attach(category, event).map_err(|e| format!("attach refused: {e}"))?;
        let link = prog.take_link(id).map_err(|e| e.to_string())?;
        Ok(Attached { what: format!("tracepoint {category}:{event}"), _link: Box::new(link) })
    }

    /// Attaches a kprobe, or a kretprobe allowing `maxactive` calls inside at once: through a
    /// tracefs event of our own ([`kretprobe_events`]), or, where tracefs refuses it, through
    /// aya's kprobe PMU with the kernel's default (max(10, 2 x CPUs)).
    fn attach_kprobe(
        &mut self,
        name: &'static str,
        function: &str,
        maxactive: u32,
    ) -> Result<Attached, String> {
        let first = self.loaded.insert(name);
        let prog: &mut KProbe = self.program(name)?;
        if first {
            prog.load().map_err(|e| load_error(name, e))?;
        }
        let ret = name.contains("kretprobe");
        let mut what = format!("{} {function}", if ret { "kretprobe" } else { "kprobe" });
        if ret {
            let fd = prog.fd().map_err(|e| e.to_string())?.as_fd();
            match KretprobeEvent::attach(Path::new(TRACEFS), fd, function, maxactive) {
                Ok(event) => {
                    debug!("kretprobe {function}: tracefs event with maxactive {maxactive}");
                    return Ok(Attached {
                        what: format!("{what} (maxactive {maxactive})"),
                        _link: Box::new(event),
                    });
                }
                Err(e) => {
                    warn!(
                        "kretprobe {function}: tracefs refused an event with maxactive {maxactive} ({e}); \
                         attaching through the kprobe PMU, where the kernel allows max(10, 2 x CPUs) \
                         calls inside at once and misses the returns of any more (exit_missed)"
                    );
                    what.push_str(" (kprobe PMU, default maxactive)");
                }
            }
        }
        let id = prog.attach(function, 0).map_err(|e| format!("attach to {function} refused: {e}"))?;
        let link = prog.take_link(id).map_err(|e| e.to_string())?;
        Ok(Attached { what, _link: Box::new(link) })
    }

    fn attach_fentry(
        &mut self,
        name: &'static str,
        function: &str,
        btf: &aya::Btf,
    ) -> Result<Attached, String> {
        let first = self.loaded.insert(name);
        let prog: &mut FEntry = self.program(name)?;
        if first {
            prog.load(function, btf).map_err(|e| load_error(name, e))?;
        }
        let id = prog.attach().map_err(|e| format!("attach refused: {e}"))?;
        let link = prog.take_link(id).map_err(|e| e.to_string())?;
        Ok(Attached { what: format!("fentry {function}"), _link: Box::new(link) })
    }

    fn attach_fexit(
        &mut self,
        name: &'static str,
        function: &str,
        btf: &aya::Btf,
    ) -> Result<Attached, String> {
        let first = self.loaded.insert(name);
        let prog: &mut FExit = self.program(name)?;
        if first {
            prog.load(function, btf).map_err(|e| load_error(name, e))?;
        }
        let id = prog.attach().map_err(|e| format!("attach refused: {e}"))?;
        let link = prog.take_link(id).map_err(|e| e.to_string())?;
        Ok(Attached { what: format!("fexit {function}"), _link: Box::new(link) })
    }
}

/// The returns a tracefs kretprobe missed so far; 0 for any other hook (the kernel does not
/// tell the misses of a kprobe PMU kretprobe).
fn kretprobe_missed(attached: &Attached) -> u64 {
    let Some(event) = attached._link.downcast_ref::<KretprobeEvent>() else {
        return 0;
    };
    event.missed().unwrap_or_else(|e| {
        debug!("reading the misses of {}: {e}", attached.what);
        0
    })
}

/// Puts every key in the BPF hash map `name` (a set: the value is unused).
fn fill_set<K: aya::Pod>(ebpf: &mut Ebpf, name: &str, keys: impl IntoIterator<Item = K>) -> Result<()> {
    let mut set =
        HashMap::<_, K, u8>::try_from(ebpf.map_mut(name).with_context(|| format!("map {name} missing"))?)?;
    for key in keys {
        set.insert(key, 1, 0)
            .with_context(|| format!("filling the filter map {name} (too many entries?)"))?;
    }
    Ok(())
}

/// A process name as the kernel stores it: NUL-padded to TASK_COMM_LEN.
fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..name.len()].copy_from_slice(name.as_bytes());
    key
}

/// The cgroup v2 ids of each configured directory and of every cgroup below it now. A missing
/// directory is the user's setting to fix.
fn cgroup_ids(entries: &[PathBuf]) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in entries {
        let dir = cgroup::resolve(entry);
        if !cgroup::is_cgroup(&dir) {
            let value = entries.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(",");
            let accepts = format!("existing cgroup v2 directories; {} is not one", dir.display());
            return Err(ConfigError { variable: "OTEL_SENDMMSG_CGROUPS".into(), value, accepts }.into());
        }
        ids.extend(cgroup::ids_below(&dir).with_context(|| format!("listing cgroup {}", dir.display()))?);
    }
    Ok(ids)
}

/// "load refused: <the kernel's reason>", with the verifier log's first line at most.
fn load_error(program: &str, e: aya::programs::ProgramError) -> String {
    let text = format!("{:#}", anyhow!(e));
    let first = text.lines().next().unwrap_or_default();
    format!("load of {program} refused: {first}")
}

/// Adds the likely fix to a load error that comes from missing privileges.
fn privilege_hint(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted")
        || text.contains("EPERM")
        || text.contains("Permission denied")
    {
        err.context("the kernel refused to load BPF programs: run as root, or with CAP_BPF and CAP_PERFMON")
    } else {
        err
    }
}
