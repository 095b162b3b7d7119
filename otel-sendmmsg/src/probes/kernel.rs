//! What the running kernel offers BPF, read once at start-up from the files that tell.

use std::{collections::HashSet, path::Path};

use aya::Btf;
use otel_sendmmsg_common::KernelOffsets;

use super::offsets::{self, VMLINUX_BTF};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// The kernel functions any hook of ours may target.
pub const SEND_FUNCTIONS: &[&str] =
    &["__sys_sendmmsg", "sock_sendmsg", "inet_sendmsg", "inet6_sendmsg", "unix_dgram_sendmsg"];

pub struct Kernel {
    /// Those of [`SEND_FUNCTIONS`] and the syscall symbols present in `/proc/kallsyms`.
    symbols: HashSet<String>,
    /// The architecture's `sendmmsg` syscall symbol and whether it is a `pt_regs` wrapper.
    pub syscall_symbol: Option<(String, bool)>,
    pub btf: Result<Btf, String>,
    /// Field offsets for socket context and process names; Err says why they are unknown.
    pub offsets: Result<KernelOffsets, String>,
    pub kprobes: Result<(), String>,
}

impl Kernel {
    pub fn inspect() -> Kernel {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let wanted: HashSet<&str> = SEND_FUNCTIONS.iter().copied().chain(syscall_symbol_names()).collect();
        let symbols: HashSet<String> = kallsyms
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .filter(|name| wanted.contains(name))
            .map(str::to_owned)
            .collect();
        let syscall_symbol = syscall_symbol_names()
            .find(|name| symbols.contains(*name))
            .map(|name| (name.to_owned(), name != "__se_sys_sendmmsg" && name != "sys_sendmmsg"));
        let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF at {VMLINUX_BTF} ({e})"));
        let offsets = offsets::from_btf_file(VMLINUX_BTF);
        // aya attaches kprobes through the kprobe PMU, or kprobe_events on older kernels.
        let kprobes = if Path::new("/sys/bus/event_source/devices/kprobe").exists()
            || Path::new(TRACEFS).join("kprobe_events").exists()
        {
            Ok(())
        } else {
            Err("not available: no kprobe PMU and no kprobe_events (kernel built without CONFIG_KPROBES)"
                .into())
        };
        Kernel { symbols, syscall_symbol, btf, offsets, kprobes }
    }

    pub fn has_symbol(&self, name: &str) -> bool {
        self.symbols.contains(name)
    }

    pub fn has_tracepoint(category: &str, name: &str) -> bool {
        Path::new(TRACEFS).join("events").join(category).join(name).is_dir()
    }
}

/// `sendmmsg`'s syscall symbols, most specific first: the running architecture's `pt_regs`
/// wrapper (since 4.17), then the plain ones of kernels without wrappers.
fn syscall_symbol_names() -> impl Iterator<Item = &'static str> {
    let wrapper = match std::env::consts::ARCH {
        "x86_64" => Some("__x64_sys_sendmmsg"),
        "aarch64" => Some("__arm64_sys_sendmmsg"),
        "riscv64" => Some("__riscv_sys_sendmmsg"),
        "s390x" => Some("__s390x_sys_sendmmsg"),
        _ => None,
    };
    wrapper.into_iter().chain(["__se_sys_sendmmsg", "sys_sendmmsg"])
}
