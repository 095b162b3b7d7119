//! What the running kernel offers BPF, read once at start-up from the files that tell.

use std::{collections::HashSet, path::Path};

use aya::Btf;
use otel_sendmmsg_common::KernelOffsets;

use super::offsets::{self, VMLINUX_BTF};

pub const TRACEFS: &str = "/sys/kernel/tracing";
/// securityfs's view of the lockdown LSM: `none [integrity] confidentiality`.
pub const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

/// How far the kernel keeps `perf_event_open` from unprivileged callers.
pub const PERF_EVENT_PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

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
    /// The lockdown mode (`none`, `integrity`, `confidentiality`), when securityfs shows it.
    pub lockdown: Option<String>,
}

impl Kernel {
    pub fn inspect() -> Kernel {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let symbols = symbols_in(&kallsyms, SEND_FUNCTIONS.iter().copied().chain(syscall_symbol_names()));
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
        let lockdown =
            std::fs::read_to_string(LOCKDOWN).ok().and_then(|text| lockdown_mode(&text).map(str::to_owned));
        Kernel { symbols, syscall_symbol, btf, offsets, kprobes, lockdown }
    }

    /// Why this kernel cannot be traced at all, if its lockdown mode says so. Confidentiality
    /// mode denies tracefs (so tracepoints), kprobes and BPF reads of kernel memory (which every
    /// family's exit program needs); integrity mode denies none of them.
    pub fn locked_down(&self) -> Option<String> {
        (self.lockdown.as_deref() == Some("confidentiality")).then(|| {
            format!(
                "the kernel is locked down in confidentiality mode ({LOCKDOWN}), which denies what \
                 tracing needs: tracefs, kprobes and BPF reads of kernel memory; boot with \
                 lockdown=integrity (which allows the sidecar) or lockdown=none"
            )
        })
    }

    pub fn has_symbol(&self, name: &str) -> bool {
        self.symbols.contains(name)
    }

    pub fn has_tracepoint(category: &str, name: &str) -> bool {
        Path::new(TRACEFS).join("events").join(category).join(name).is_dir()
    }
}

/// Why `perf_event_open` refused us with EACCES, when the kernel's setting explains it: above 2,
/// a patch Debian and Ubuntu carry (not upstream, where CAP_PERFMON is enough at any level)
/// refuses every perf event to all but CAP_SYS_ADMIN, and both ship 3 or more. Tracepoints and
/// kprobes attach through perf events; fentry/fexit through BPF links, which it does not touch.
/// Seen in Debian's 5.10, 6.1 and 6.12: as nobody with CAP_PERFMON, refused at 3, attached at 2.
pub fn perf_events_refused_because(paranoid: Option<i32>) -> Option<String> {
    let level = paranoid.filter(|level| *level > 2)?;
    Some(format!(
        "kernel.perf_event_paranoid is {level} ({PERF_EVENT_PARANOID}): above 2, Debian's and \
         Ubuntu's kernels open perf events, which tracepoints and kprobes attach through, for \
         CAP_SYS_ADMIN only, CAP_PERFMON or not; set it to 2 (sysctl kernel.perf_event_paranoid=2), \
         grant CAP_SYS_ADMIN, or use the fentry family, which needs no perf event"
    ))
}

/// The current `kernel.perf_event_paranoid`, if readable.
pub fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string(PERF_EVENT_PARANOID).ok()?.trim().parse().ok()
}

/// Which of `wanted` name a symbol in `kallsyms` (`ADDRESS TYPE NAME`, then `\t[MODULE]` for a
/// module's). A search for each name, not a split of each of its ~150,000 lines: that split
/// took 3.3 s of a 6.5 s start-up under software emulation (20 ms natively).
fn symbols_in<'a>(kallsyms: &str, wanted: impl Iterator<Item = &'a str>) -> HashSet<String> {
    wanted
        .filter(|name| {
            kallsyms.match_indices(name).any(|(at, _)| {
                let before = kallsyms[..at].bytes().next_back();
                let after = kallsyms[at + name.len()..].bytes().next();
                before == Some(b' ') && matches!(after, None | Some(b'\n' | b'\t'))
            })
        })
        .map(str::to_owned)
        .collect()
}

/// The selected mode in securityfs's lockdown file: the bracketed word.
fn lockdown_mode(text: &str) -> Option<&str> {
    text.split_whitespace().find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_paranoid_level_above_2_explains_a_refused_perf_event() {
        for level in [None, Some(-1), Some(0), Some(1), Some(2)] {
            assert_eq!(perf_events_refused_because(level), None, "{level:?}");
        }
        let why = perf_events_refused_because(Some(3)).unwrap();
        assert!(why.starts_with("kernel.perf_event_paranoid is 3 "), "{why}");
        for fix in ["kernel.perf_event_paranoid=2", "CAP_SYS_ADMIN", "fentry"] {
            assert!(why.contains(fix), "{why} names no {fix}");
        }
        assert!(perf_events_refused_because(Some(4)).unwrap().contains(" is 4 "));
    }

    #[test]
    fn a_symbol_is_present_by_its_whole_name_only() {
        let kallsyms = "ffffffff81000000 T __sock_sendmsg\n\
                        ffffffff81000010 t sock_sendmsg_nosec\n\
                        ffffffff81000020 T inet_sendmsg\n\
                        ffffffffc0000000 t unix_dgram_sendmsg\t[unix]\n\
                        ffffffff81000030 T __x64_sys_sendmmsg";
        let found = symbols_in(kallsyms, SEND_FUNCTIONS.iter().copied().chain(["__x64_sys_sendmmsg"]));
        let mut found: Vec<&str> = found.iter().map(String::as_str).collect();
        found.sort_unstable();
        assert_eq!(found, ["__x64_sys_sendmmsg", "inet_sendmsg", "unix_dgram_sendmsg"]);
    }

    #[test]
    fn the_lockdown_mode_is_the_bracketed_one() {
        assert_eq!(lockdown_mode("none integrity [confidentiality]\n"), Some("confidentiality"));
        assert_eq!(lockdown_mode("[none] integrity confidentiality\n"), Some("none"));
        assert_eq!(lockdown_mode(""), None);
    }
}
