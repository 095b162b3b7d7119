//! Kernel hooks: loads the BPF object ([`load`]), attaches the programs of the hooks the
//! catalogue lists ([`hooks`]) through one path ([`attach`]) once [`choose`] has picked them for
//! the running kernel, and detaches them again. [`thread_context`] finds the processes whose
//! OTEP 4947 thread context the BPF side reads, and how.

pub mod attach;
pub mod btf_types;
pub mod choose;
pub mod context_cleanup;
pub mod hooks;
pub mod kernel;
pub mod kernel_misses;
pub mod kretprobe_events;
pub mod load;
pub mod offsets;
pub mod pin_dir;
pub mod selftest;
pub mod shared_context;
pub mod thread_context;

use std::{os::fd::AsFd, path::Path};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf,
};
use otel_sendmmsg_common::{
    call_metrics::{CountedCall, PairedCall, SeriesKey, SeriesValue},
    CallRecord, Counter, ThreadContextAccess,
};
use tracing::{debug, info, warn};

use self::{
    attach::{Point, Programs, Set},
    hooks::{Family, MessageHook, CONTEXT_CLEANUP, IDENTITY_EXEC},
    kernel::Kernel,
    thread_context::{printable, Found},
};
use crate::config::Config;

pub struct Probes {
    ebpf: Ebpf,
    programs: Programs,
    entry_exit: Set,
    message: Set,
    context_cleanup: Set,
    identity_exec: Set,
    /// In-flight entries removed because their thread is gone: calls whose exit never ran.
    exits_missed_swept: u64,
    /// `maxactive` of the kretprobe on the syscall (the kprobe family's exit).
    exit_maxactive: u32,
}

impl Probes {
    /// Loads the BPF object, sized by `config`, and attaches the trace-context cleanup; no
    /// other program is loaded into the kernel yet.
    pub fn load(config: &Config, kernel: &Kernel) -> Result<Self> {
        let loaded = load::object(config, kernel)?;
        let mut probes = Probes {
            ebpf: loaded.ebpf,
            programs: Programs::default(),
            entry_exit: Set::default(),
            message: Set::default(),
            context_cleanup: Set::default(),
            identity_exec: Set::default(),
            exits_missed_swept: 0,
            exit_maxactive: kretprobe_events::maxactive(config.max_inflight),
        };
        if let Err(e) = probes.attach_context_cleanup(loaded.sweep_dead_contexts) {
            warn!(
                "{e}: a thread that gets the tid of one that published a context may inherit its parent span"
            );
        }
        let identity_offsets = kernel.offsets.as_ref().is_ok_and(|off| off.identity_valid == 1);
        match probes.start_identity_capture(identity_offsets) {
            Ok(()) => info!("process identities are captured in the kernel at each process's first call"),
            Err(e) => warn!(
                "{e}: process identities come from /proc only (a process that exits right after its call \
                 is named after its thread)"
            ),
        }
        Ok(probes)
    }

    /// Turns on the capture of each traced process's identity at its first call, once its exec
    /// hook is attached: without that hook an exec'd program would keep the old one's identity.
    fn start_identity_capture(&mut self, offsets_known: bool) -> Result<(), String> {
        if !offsets_known {
            return Err("the kernel's BTF does not describe the fields the identity capture reads".into());
        }
        let hooks::Kind::Tracepoint { category, event } = IDENTITY_EXEC.kind else {
            unreachable!("the identity exec hook is a tracepoint")
        };
        self.identity_exec.attach_all(
            &mut self.programs,
            &mut self.ebpf,
            [(IDENTITY_EXEC.program, Point::Tracepoint { category, event })],
        )?;
        let map = self.ebpf.map_mut("IDENTITY_ON").ok_or("map IDENTITY_ON missing from the BPF object")?;
        let mut on = Array::<_, u32>::try_from(map).map_err(|e| e.to_string())?;
        on.set(0, 1, 0).map_err(|e| format!("turning the identity capture on: {e}"))
    }

    /// Hands over the ring buffer the records arrive in; start reading it before attaching.
    pub fn take_records(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("RECORDS").context("map RECORDS missing from the BPF object")?;
        RingBuf::try_from(map).context("map RECORDS is not a ring buffer")
    }

    /// Attaches a family's entry and exit hooks, exit first, so no call is entered without its
    /// exit hook in place. The error says why the family is unusable here.
    pub fn attach_entry_exit(&mut self, family: Family, kernel: &Kernel) -> Result<(), String> {
        let hooks::EntryExit { entry, exit } = family.entry_exit();
        entry.check(kernel)?;
        exit.check(kernel)?;
        let points = [
            (exit.program, exit.point(kernel, self.exit_maxactive)?),
            (entry.program, entry.point(kernel, self.exit_maxactive)?),
        ];
        self.entry_exit.attach_all(&mut self.programs, &mut self.ebpf, points)
    }

    /// Attaches a per-message hook (all its targets); the error says why it is unusable here.
    pub fn attach_message(&mut self, hook: MessageHook, kernel: &Kernel) -> Result<(), String> {
        let points = hook.hooks().points(kernel, self.exit_maxactive)?;
        self.message.attach_all(&mut self.programs, &mut self.ebpf, points)
    }

    /// Attaches the exit and exec cleanups of published trace contexts ([`context_cleanup`]).
    fn attach_context_cleanup(&mut self, sweep: bool) -> Result<(), String> {
        let points = CONTEXT_CLEANUP.iter().map(|hook| {
            let hooks::Kind::Tracepoint { category, event } = hook.kind else {
                unreachable!("the context cleanup hooks are tracepoints")
            };
            (hook.program, Point::Tracepoint { category, event })
        });
        self.context_cleanup.attach_all(&mut self.programs, &mut self.ebpf, points)?;
        if sweep {
            context_cleanup::sweep(&mut self.ebpf)?;
        }
        Ok(())
    }

    /// Whether the OTEP 4947 thread context can be read: the thread pointer's offset is known
    /// and the identity capture runs (its exec hook forgets a process's entry when its program
    /// changes, and its records name the processes to look at).
    pub fn reads_thread_context(&self, kernel: &Kernel) -> bool {
        kernel.offsets.as_ref().is_ok_and(|off| off.task_fsbase != 0)
            && self.identity_exec.describe().next().is_some()
    }

    /// Lets the BPF side read the threads' context of a process the scan reached, or stops it.
    pub fn follow_thread_context(&mut self, found: Found) {
        let result =
            self.ebpf.map_mut("THREAD_CONTEXT_ACCESS").ok_or("map missing".to_owned()).and_then(|map| {
                let mut map =
                    HashMap::<_, u32, ThreadContextAccess>::try_from(map).map_err(|e| e.to_string())?;
                match &found {
                    Found::Reach { pid, access, .. } => map.insert(pid, access, 0),
                    Found::Forget { pid } => map.remove(pid),
                }
                .map_err(|e| e.to_string())
            });
        match (found, result) {
            (Found::Reach { pid, again: true, .. }, Ok(())) => {
                debug!("thread context: process {pid} runs a program again, read as before")
            }
            (Found::Reach { pid, access, file, .. }, Ok(())) => info!(
                "thread context: reading otel_thread_ctx_v1 of process {pid} (defined in {}, {})",
                printable(&file),
                match access.module {
                    0 => format!("static TLS at thread pointer {:+}", access.offset),
                    module => format!("module {module} at {:+} in its block", access.offset),
                }
            ),
            (Found::Reach { pid, .. }, Err(e)) => warn!("thread context: not read in process {pid}: {e}"),
            (Found::Forget { pid }, Ok(())) => debug!("thread context: process {pid} forgotten"),
            // The BPF side removed it first (the process exec'd).
            (Found::Forget { .. }, Err(_)) => {}
        }
    }

    /// Detaches the entry and exit hooks, entry first (it was attached last), so calls already
    /// inside still reach their exit.
    pub fn detach_entry_exit(&mut self) {
        self.entry_exit.detach();
    }

    pub fn detach_message(&mut self) {
        self.message.detach();
    }

    /// Detaches every hook, entry first.
    pub fn detach(&mut self) {
        self.detach_entry_exit();
        self.detach_message();
        self.context_cleanup.detach();
        self.identity_exec.detach();
    }

    /// What is attached now, for the log.
    pub fn attached(&self) -> Vec<String> {
        self.entry_exit.describe().chain(self.message.describe()).map(str::to_owned).collect()
    }

    /// The per-message kretprobes attached now, as the log names them (with their
    /// `maxactive`, or the kprobe PMU they fell back to); empty for other hooks.
    pub fn message_kretprobes(&self) -> Vec<String> {
        self.message.describe().filter(|what| what.starts_with("kretprobe ")).map(str::to_owned).collect()
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
        out.push(("kretprobe_missed", self.entry_exit.kretprobe_missed() + self.message.kretprobe_missed()));
        out.push(("inflight", self.calls_in_flight()?));
        Ok(out)
    }

    /// The calls in flight now: the entries of the hash map store, or what the task storage
    /// store counts (calls begun less calls ended, per CPU), as user space cannot list it.
    fn calls_in_flight(&self) -> Result<u64> {
        if let Some(sums) = self.ebpf.map("INFLIGHT_CALLS") {
            let sums = PerCpuArray::<_, i64>::try_from(sums)?;
            let n: i64 = sums.get(&0, 0)?.iter().sum();
            return Ok(n.max(0) as u64);
        }
        let inflight = self.ebpf.map("INFLIGHT").context("map INFLIGHT missing from the BPF object")?;
        let inflight = HashMap::<_, u32, CallRecord>::try_from(inflight)?.keys().count();
        let counted =
            self.ebpf.map("COUNTED_INFLIGHT").context("map COUNTED_INFLIGHT missing from the BPF object")?;
        let counted = HashMap::<_, u32, CountedCall>::try_from(counted)?.keys().count();
        Ok((inflight + counted) as u64)
    }

    /// Runs of our loaded programs the kernel skipped ([`kernel_misses`]), summed.
    fn kernel_missed(&self) -> u64 {
        self.programs
            .loaded()
            .filter_map(|name| self.ebpf.program(name)?.fd().ok())
            .filter_map(|fd| kernel_misses::recursion_misses(fd.as_fd()).ok())
            .sum()
    }

    /// Removes the hash map store's entries no call will come back for: those of threads that
    /// no longer exist (their exit never ran: counted as `exit_missed`), and those of calls that
    /// did finish but whose delete failed (they have an end; not a loss). A thread that
    /// still exists keeps its entry: its next call replaces and counts it. Returns the entries
    /// removed. Task storage needs none of it: the kernel frees a thread's with the thread, and
    /// the BPF side counts a call it still had as its exit missed.
    pub fn sweep_inflight(&mut self, proc: &Path) -> Result<u64> {
        if self.ebpf.map("INFLIGHT").is_none() {
            return Ok(0);
        }
        let records = self.sweep_calls::<CallRecord>("INFLIGHT", proc)?;
        Ok(records + self.sweep_calls::<CountedCall>("COUNTED_INFLIGHT", proc)?)
    }

    /// [`Probes::sweep_inflight`] of one map of calls in flight.
    fn sweep_calls<V: PairedCall + aya::Pod>(&mut self, name: &str, proc: &Path) -> Result<u64> {
        let map =
            self.ebpf.map_mut(name).with_context(|| format!("map {name} missing from the BPF object"))?;
        let mut inflight = HashMap::<_, u32, V>::try_from(map)?;
        let tids: Vec<u32> = inflight.keys().filter_map(Result::ok).collect();
        let mut removed = 0;
        for tid in tids {
            let Ok(call) = inflight.get(&tid, 0) else {
                continue; // its exit came meanwhile
            };
            let finished = call.end_ns() != 0;
            if !finished && proc.join(format!("{}/task/{tid}", call.pid())).exists() {
                continue;
            }
            // Only if it is still that call: the thread id may have been reused by a thread
            // that entered sendmmsg since (its entry counted the stale one already).
            if inflight.get(&tid, 0).is_ok_and(|now| now.start_ns() == call.start_ns())
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

    /// The call metrics' series and their totals, each summed over the CPUs. A series that
    /// cannot be read is left for the next collection.
    pub fn call_series(&self) -> Result<Vec<(SeriesKey, SeriesValue)>> {
        let map = self.ebpf.map("CALL_METRICS").context("map CALL_METRICS missing from the BPF object")?;
        let series = PerCpuHashMap::<_, SeriesKey, SeriesValue>::try_from(map)?;
        Ok(series
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| {
                let mut total = SeriesValue::default();
                for value in per_cpu.iter() {
                    total.add(value);
                }
                (key, total)
            })
            .collect())
    }

    /// Removes `keys` from the call metrics' series; a call of one after this starts it again.
    pub fn retire_series(&mut self, keys: &[SeriesKey]) -> Result<()> {
        let map =
            self.ebpf.map_mut("CALL_METRICS").context("map CALL_METRICS missing from the BPF object")?;
        let mut series = PerCpuHashMap::<_, SeriesKey, SeriesValue>::try_from(map)?;
        for key in keys {
            let _ = series.remove(key);
        }
        Ok(())
    }
}
