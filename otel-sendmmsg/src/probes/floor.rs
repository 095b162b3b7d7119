//! The overhead benchmark's floor: the BPF object's empty programs (`floor_*`, which return at
//! once) attached to exactly the hooks the tracepoint family uses. What a workload loses with
//! them attached is what the hooks cost before any of our logic runs; the benchmark compares the
//! sidecar against it. The sidecar itself never loads them.
//!
//! ```no_run
//! let floor = otel_sendmmsg::probes::floor::Floor::attach()?; // hooks in place
//! // ... measure ...
//! drop(floor); // detached
//! # anyhow::Ok(())
//! ```

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{trace_point::TracePointLink, TracePoint},
    Ebpf, EbpfLoader,
};

use super::{ensure_tracefs, kernel::Kernel, raise_memlock_limit, BPF_OBJECT};

/// Each empty program and its tracepoint (category, event), exit first like the sidecar does.
pub const HOOKS: [(&str, &str, &str); 3] = [
    ("floor_sendmmsg_exit", "syscalls", "sys_exit_sendmmsg"),
    ("floor_sendmmsg_enter", "syscalls", "sys_enter_sendmmsg"),
    ("floor_sendmmsg_message", "sock", "sock_send_length"),
];

/// The empty programs, attached; dropping it detaches them and unloads the object.
pub struct Floor {
    // Declared before the object, so the links go first.
    links: Vec<TracePointLink>,
    _ebpf: Ebpf,
}

impl Floor {
    /// Loads the BPF object (its maps at their compiled-in sizes; no other program is loaded)
    /// and attaches every empty program. Needs what the sidecar needs (root, or CAP_BPF and
    /// CAP_PERFMON, and tracefs).
    pub fn attach() -> Result<Floor> {
        ensure_tracefs()?;
        raise_memlock_limit();
        for (_, category, event) in HOOKS {
            if !Kernel::has_tracepoint(category, event) {
                bail!("tracepoint {category}:{event} is not present on this kernel");
            }
        }
        let mut ebpf = EbpfLoader::new().load(BPF_OBJECT).context("loading the BPF object")?;
        let mut links = Vec::with_capacity(HOOKS.len());
        for (name, category, event) in HOOKS {
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
        Ok(Floor { links, _ebpf: ebpf })
    }

    /// The hooks attached, for logs: `tracepoint syscalls:sys_exit_sendmmsg`, ...
    pub fn hooks(&self) -> Vec<String> {
        HOOKS.iter().take(self.links.len()).map(|(_, c, e)| format!("tracepoint {c}:{e}")).collect()
    }
}
