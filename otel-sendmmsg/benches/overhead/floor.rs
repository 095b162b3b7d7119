//! The overhead benchmark's floor: empty BPF programs (`floor_*`, which return at once, in an
//! object of their own, `otel-sendmmsg-ebpf/src/floor.rs`) attached to exactly the hooks the
//! tracepoint family uses. What a workload loses with them attached is what the hooks cost
//! before any of our logic runs; the benchmark compares the sidecar against it. Only the
//! benchmark builds this in: the sidecar neither carries nor loads these programs.
//!
//!     let floor = Floor::attach(true)?; // hooks in place
//!     // ... measure ...
//!     drop(floor); // detached

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{raw_trace_point::RawTracePointLink, trace_point::TracePointLink, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use otel_sendmmsg::probes::{
    kernel::Kernel,
    load::{ensure_tracefs, raise_memlock_limit},
};

/// Built with the sidecar's by its build script, which leaves both objects in `OUT_DIR`.
static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/otel-sendmmsg-floor.bpf.o"));

/// Each empty program and its tracepoint (category, event), exit first like the sidecar does;
/// the per-message hook last.
const HOOKS: [(&str, &str, &str); 3] = [
    ("floor_sendmmsg_exit", "syscalls", "sys_exit_sendmmsg"),
    ("floor_sendmmsg_enter", "syscalls", "sys_enter_sendmmsg"),
    ("floor_sendmmsg_message", "sock", "sock_send_length"),
];

/// The per-message hook's empty program run as a raw tracepoint, and its event.
const RAW_MESSAGE_HOOK: (&str, &str) = ("floor_sendmmsg_message_raw", "sock_send_length");

/// The empty programs, attached; dropping it detaches them and unloads the object.
pub struct Floor {
    // Only held: dropping them detaches. Declared before the object, so they go first.
    _links: Vec<TracePointLink>,
    _raw_links: Vec<RawTracePointLink>,
    _ebpf: Ebpf,
}

impl Floor {
    /// Loads the floor's BPF object and attaches its empty programs: on the entry and exit
    /// hooks, and on the per-message one when `per_message`, as a raw tracepoint when
    /// `raw_message`. Needs what the sidecar needs (root, or CAP_BPF and CAP_PERFMON, and
    /// tracefs).
    pub fn attach(per_message: bool, raw_message: bool) -> Result<Floor> {
        ensure_tracefs()?;
        raise_memlock_limit();
        let hooks = if per_message { &HOOKS[..] } else { &HOOKS[..2] };
        for &(_, category, event) in hooks {
            if !Kernel::has_tracepoint(category, event) {
                bail!("tracepoint {category}:{event} is not present on this kernel");
            }
        }
        let mut ebpf = EbpfLoader::new().load(FLOOR_OBJECT).context("loading the floor's BPF object")?;
        let mut links = Vec::with_capacity(hooks.len());
        let mut raw_links = Vec::new();
        if per_message && raw_message {
            let (name, event) = RAW_MESSAGE_HOOK;
            let prog: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("BPF program {name} missing from the object"))?
                .try_into()
                .with_context(|| format!("BPF program {name} is not a raw tracepoint program"))?;
            prog.load().with_context(|| format!("loading {name}"))?;
            let id = prog.attach(event).with_context(|| format!("attaching {name} to {event}"))?;
            raw_links.push(prog.take_link(id)?);
        }
        let hooks = if per_message && raw_message { &hooks[..2] } else { hooks };
        for &(name, category, event) in hooks {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("BPF program {name} missing from the object"))?
                .try_into()
                .with_context(|| format!("BPF program {name} is not a tracepoint program"))?;
            prog.load().with_context(|| format!("loading {name}"))?;
            let id = prog
                .attach(category, event)
                .with_context(|| format!("attaching {name} to {category}:{event}"))?;
            links.push(prog.take_link(id)?);
        }
        Ok(Floor { _links: links, _raw_links: raw_links, _ebpf: ebpf })
    }
}
