//! Loads the BPF programs, attaches them to the kernel's hooks, and detaches them again.
//!
//! This is the tracepoint family (`syscalls:sys_{enter,exit}_sendmmsg` and
//! `sock:sock_send_length`), the one with a stable ABI.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{trace_point::TracePointLinkId, TracePoint},
    Ebpf, EbpfLoader,
};
use otel_sendmmsg_common::Counter;
use tracing::{debug, info, warn};

use crate::config::Config;

static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/otel-sendmmsg.bpf.o"));

/// A hook: BPF program name, tracepoint category and name, and whether tracing works without it.
struct Hook {
    program: &'static str,
    category: &'static str,
    name: &'static str,
    required: bool,
}

/// In attach order: exit first and entry last, so no call is entered without its exit hook
/// already in place (it would linger in the in-flight map). Detach goes the other way.
const HOOKS: [Hook; 3] = [
    Hook { program: "sendmmsg_exit", category: "syscalls", name: "sys_exit_sendmmsg", required: true },
    // Since about 6.3; without it spans still carry the call's result, but no per-message detail.
    Hook { program: "sendmmsg_message", category: "sock", name: "sock_send_length", required: false },
    Hook { program: "sendmmsg_enter", category: "syscalls", name: "sys_enter_sendmmsg", required: true },
];

const TRACEFS: &str = "/sys/kernel/tracing";

pub struct Probes {
    ebpf: Ebpf,
    links: Vec<(&'static str, TracePointLinkId)>,
}

impl Probes {
    /// Loads the programs into the kernel (not attached yet), sized by `config`.
    pub fn load(config: &Config) -> Result<Self> {
        ensure_tracefs()?;
        raise_memlock_limit();
        let self_tgid = std::process::id();
        let ebpf = EbpfLoader::new()
            .override_global("SELF_TGID", &self_tgid, true)
            .map_max_entries("INFLIGHT", config.max_inflight)
            .map_max_entries("RECORDS", config.ring_buffer_bytes)
            .load(BPF_OBJECT)
            .map_err(|e| privilege_hint(anyhow!(e).context("loading the BPF object")))?;
        let mut probes = Probes { ebpf, links: Vec::new() };
        for hook in &HOOKS {
            probes.tracepoint(hook.program)?.load().map_err(|e| {
                privilege_hint(anyhow!(e).context(format!("loading BPF program {}", hook.program)))
            })?;
        }
        Ok(probes)
    }

    fn tracepoint(&mut self, program: &str) -> Result<&mut TracePoint> {
        self.ebpf
            .program_mut(program)
            .with_context(|| format!("BPF program {program} missing from the object"))?
            .try_into()
            .with_context(|| format!("BPF program {program} is not a tracepoint program"))
    }

    /// Hands over the ring buffer the records arrive in; start reading it before [`attach`].
    pub fn take_records(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("RECORDS").context("map RECORDS missing from the BPF object")?;
        RingBuf::try_from(map).context("map RECORDS is not a ring buffer")
    }

    /// Attaches every hook; returns the names of those attached.
    pub fn attach(&mut self) -> Result<Vec<String>> {
        let mut attached = Vec::new();
        for hook in &HOOKS {
            let event = Path::new(TRACEFS).join("events").join(hook.category).join(hook.name);
            if !hook.required && !event.exists() {
                warn!(
                    "this kernel has no {}:{} tracepoint (added in Linux 6.3): spans will carry each \
                     call's result but no per-message detail",
                    hook.category, hook.name
                );
                continue;
            }
            let link = self
                .tracepoint(hook.program)?
                .attach(hook.category, hook.name)
                .with_context(|| format!("attaching to tracepoint {}:{}", hook.category, hook.name))?;
            self.links.push((hook.program, link));
            attached.push(format!("tracepoint {}:{}", hook.category, hook.name));
        }
        Ok(attached)
    }

    /// Detaches every hook, entry first, so calls already inside still reach their exit hook.
    pub fn detach(&mut self) {
        while let Some((program, link)) = self.links.pop() {
            if let Err(e) = self.tracepoint(program).and_then(|p| p.detach(link).map_err(Into::into)) {
                warn!("detaching {program}: {e:#}");
            }
        }
    }

    /// The BPF side's loss and anomaly counters, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        let map = self.ebpf.map("COUNTERS").context("map COUNTERS missing from the BPF object")?;
        let counters = PerCpuArray::<_, u64>::try_from(map)?;
        Counter::ALL.iter().map(|&c| Ok((c, counters.get(&(c as u32), 0)?.iter().sum()))).collect()
    }
}

/// Tracepoints are found through tracefs, which is not mounted on every boot.
fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    info!("tracefs is not mounted; mounting it at {TRACEFS}");
    let status = std::process::Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed; mount it with \
             `mount -t tracefs nodev {TRACEFS}` (as root), or bind-mount it into the container"
        ),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid resource id and pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; loading may fail on kernels before 5.11");
    }
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
