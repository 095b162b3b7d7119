//! Least privilege: the Linux capabilities the sidecar needs, found by running it as an
//! unprivileged user (`setpriv --reuid 65534 ... --ambient-caps ...`) on Linux 6.18 and dropping
//! one capability at a time; checked at start-up, so a container that lacks one stops with a
//! message naming it instead of failing somewhere deep in the BPF loader.
//!
//! | capability | without it, as a non-root user on 6.18 |
//! | --- | --- |
//! | `CAP_BPF` | creating the first map fails: `failed to create map ...: Operation not permitted` |
//! | `CAP_PERFMON` | the kernel refuses tracing programs (`BPF_PROG_LOAD`: EPERM), so no hook attaches; it also guards `perf_event_open` on tracepoints |
//! | `CAP_DAC_OVERRIDE` | tracefs (`/sys/kernel/tracing`, mode 0700 root) cannot even be looked into, nor other users' `/proc/PID/environ` (0400) read; with `CAP_DAC_READ_SEARCH` instead, both work but OBI's `/sys/fs/bpf/otel/traces_ctx_v1` (0600 root) cannot be opened read-write, nor created in a 0700 bpffs |
//! | `CAP_SYS_PTRACE` | other users' processes are opaque: `/proc/PID/exe`, `/proc/PID/auxv`, `/proc/PID/root/...` (the binaries of other containers, where `otel_thread_ctx_v1` is looked for) and their memory (`process_vm_readv`: the relocations the dynamic linker applied, the OTEP 4719 process context) are refused |
//! | `CAP_CHECKPOINT_RESTORE` (optional) | `/proc/PID/map_files/` cannot be followed (`proc_map_files_get_link` wants it or `CAP_SYS_ADMIN`): a library deleted since it was mapped (an upgraded package) cannot be looked into; files are still reached by their path under `/proc/PID/root` |
//!
//! `CAP_SYS_ADMIN` is not needed: nothing is attached to user space (no uprobe), the thread
//! context being read by the entry hook itself. (Except on Debian's and Ubuntu's kernels with
//! `kernel.perf_event_paranoid` above 2, their default, where a patch of theirs keeps every perf
//! event, so every tracepoint and kprobe, for it: there the fentry family works without it, and
//! a refused attach names the setting; see `probes::kernel::perf_events_refused_because`.) `CAP_SYS_RESOURCE` is not needed: since Linux
//! 5.11 BPF memory is charged to the cgroup, not to `RLIMIT_MEMLOCK`. Before 5.11 it is charged
//! to that limit, which the deployment lifts instead (docker-compose.yml's `ulimits`); under a
//! small one start-up stops naming it (found by the kernel matrix on Debian's 5.10).
//!
//! Containers start a non-root user with an empty effective set: the image gives the binary
//! these capabilities as file capabilities, permitted only (`setcap ...=p`), and [`check`]
//! raises the ones it needs into the effective set. Were the file capabilities effective
//! (`=ep`), a container missing one in its bounding set would refuse to exec the binary at all,
//! with no word on which one.

use std::fmt;

use tracing::{debug, warn};

/// What the sidecar cannot do without a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Without it nothing can be traced: start-up stops.
    Required,
    /// Only a library deleted since it was mapped is not looked into for the thread context;
    /// start-up goes on with a warning.
    MapFiles,
}

/// A capability, by the name and number of `linux/capability.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// As the kernel headers, `capsh` and Kubernetes' docs spell it: `CAP_BPF`.
    pub name: &'static str,
    pub number: u32,
    /// What the sidecar uses it for, in the words of the start-up message.
    pub purpose: &'static str,
    pub need: Need,
}

impl Capability {
    /// The name Docker's `cap_add` and Kubernetes' `capabilities.add` use: `BPF`.
    pub fn short_name(&self) -> &'static str {
        self.name.trim_start_matches("CAP_")
    }

    /// The name `setcap`/`getcap` use: `cap_bpf`.
    pub fn setcap_name(&self) -> String {
        self.name.to_ascii_lowercase()
    }

    fn bit(&self) -> u64 {
        1 << self.number
    }
}

/// Every capability the sidecar uses, required ones first. The Dockerfile, docker-compose.yml
/// and the Kubernetes DaemonSet grant exactly these (tests/deployment.rs holds them to it).
pub const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "CAP_BPF",
        number: 39,
        purpose: "load BPF programs and create BPF maps",
        need: Need::Required,
    },
    Capability {
        name: "CAP_PERFMON",
        number: 38,
        purpose: "load tracing BPF programs and attach them to tracepoints with perf_event_open",
        need: Need::Required,
    },
    Capability {
        name: "CAP_DAC_OVERRIDE",
        number: 1,
        purpose: "read the root-only tracefs at /sys/kernel/tracing and other users' \
                  /proc/PID/environ, and open or pin the shared trace-context map under /sys/fs/bpf",
        need: Need::Required,
    },
    Capability {
        name: "CAP_SYS_PTRACE",
        number: 19,
        purpose: "read other users' processes: /proc/PID/exe, /proc/PID/root to find \
                  otel_thread_ctx_v1 in other containers' binaries, and their memory",
        need: Need::Required,
    },
    Capability {
        name: "CAP_CHECKPOINT_RESTORE",
        number: 40,
        purpose: "follow /proc/PID/map_files to a library deleted since it was mapped",
        need: Need::MapFiles,
    },
];

/// Required capabilities the process lacks: start-up cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub struct MissingCapabilities(pub Vec<&'static Capability>);

impl fmt::Display for MissingCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let each: Vec<String> =
            self.0.iter().map(|c| format!("missing {} ({})", c.name, c.purpose)).collect();
        write!(
            f,
            "{}. Run as root, or grant {} (docker: cap_add; Kubernetes: securityContext.capabilities.add; \
             see docker-compose.yml and deploy/kubernetes/)",
            each.join("; "),
            CAPABILITIES.iter().map(|c| c.short_name()).collect::<Vec<_>>().join(", ")
        )
    }
}

impl std::error::Error for MissingCapabilities {}

/// What an effective set lacks: Err for required capabilities, Ok with the others missing.
pub fn assess(effective: u64) -> Result<Vec<&'static Capability>, MissingCapabilities> {
    let missing = |need: Need| -> Vec<&'static Capability> {
        CAPABILITIES.iter().filter(|c| c.need == need && effective & c.bit() == 0).collect()
    };
    let required = missing(Need::Required);
    if required.is_empty() {
        Ok(missing(Need::MapFiles))
    } else {
        Err(MissingCapabilities(required))
    }
}

/// A `Cap*:` set from `/proc/PID/status` text (hex, as the kernel prints it).
pub fn parse_set(status: &str, field: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    u64::from_str_radix(value.trim(), 16).ok()
}

/// Raises the needed capabilities that are permitted but not effective (file capabilities
/// without the effective bit), then checks the effective set. Root with every capability passes
/// unchanged. Missing optional capabilities are logged, with what is lost without them.
pub fn check() -> Result<(), MissingCapabilities> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let (Some(mut effective), Some(permitted)) = (parse_set(&status, "CapEff"), parse_set(&status, "CapPrm"))
    else {
        // No procfs to read: the kernel's own refusals will have to say it.
        warn!("cannot read the capability sets from /proc/self/status; not checking capabilities");
        return Ok(());
    };
    let wanted: u64 = CAPABILITIES.iter().map(Capability::bit).fold(0, |a, b| a | b);
    let raise = permitted & wanted & !effective;
    if raise != 0 {
        match set_effective(effective | raise) {
            Ok(()) => effective |= raise,
            Err(e) => warn!("cannot raise permitted capabilities {raise:#x} into the effective set: {e}"),
        }
    }
    for c in assess(effective)? {
        warn!(
            "missing {} ({}): a library that defines otel_thread_ctx_v1 and was deleted or replaced \
             since its process mapped it is not looked into; every other file is, by its path",
            c.name, c.purpose
        );
    }
    debug!("capabilities: effective set {effective:#x}");
    Ok(())
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets this thread's effective set (before any other thread exists, so the whole process's),
/// keeping its permitted and inheritable sets.
fn set_effective(effective: u64) -> std::io::Result<()> {
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: a version-3 header and room for the two words that version uses.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    data[0].effective = effective as u32;
    data[1].effective = (effective >> 32) as u32;
    // SAFETY: as above; the kernel only reads them.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(names: &[&str]) -> u64 {
        CAPABILITIES.iter().filter(|c| names.contains(&c.name)).map(Capability::bit).fold(0, |a, b| a | b)
    }

    #[test]
    fn reads_the_sets_as_the_kernel_prints_them() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
                      CapEff:\t000000c000080002\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(parse_set(status, "CapEff"), Some(0xc0_0008_0002));
        assert_eq!(parse_set(status, "CapPrm"), Some(0x1ff_feff_ffff));
        assert_eq!(parse_set(status, "CapAmb"), None);
        assert_eq!(parse_set("CapEff:\tzz\n", "CapEff"), None);
    }

    #[test]
    fn root_with_every_capability_passes() {
        // This machine's root lacks CAP_SYS_RESOURCE (bit 24), which the sidecar does not need.
        assert_eq!(assess(0x1ff_feff_ffff), Ok(vec![]));
        assert_eq!(assess(u64::MAX), Ok(vec![]));
    }

    #[test]
    fn each_missing_required_capability_is_named_with_its_purpose() {
        let all =
            mask(&["CAP_BPF", "CAP_PERFMON", "CAP_DAC_OVERRIDE", "CAP_SYS_PTRACE", "CAP_CHECKPOINT_RESTORE"]);
        for c in CAPABILITIES.iter().filter(|c| c.need == Need::Required) {
            let err = assess(all & !c.bit()).unwrap_err();
            assert_eq!(err.0, vec![c]);
            let text = err.to_string();
            assert!(text.starts_with(&format!("missing {} ({})", c.name, c.purpose)), "{text}");
            assert_eq!(text.matches("missing ").count(), 1, "{text}");
        }
        let none = assess(0).unwrap_err().to_string();
        for c in CAPABILITIES.iter().filter(|c| c.need == Need::Required) {
            assert!(none.contains(&format!("missing {} (", c.name)), "{none}");
        }
        assert!(
            !none.contains("missing CAP_CHECKPOINT_RESTORE"),
            "optional, so not a reason to stop: {none}"
        );
    }

    #[test]
    fn without_checkpoint_restore_only_map_files_is_lost_and_sys_admin_is_never_asked_for() {
        let required = mask(&["CAP_BPF", "CAP_PERFMON", "CAP_DAC_OVERRIDE", "CAP_SYS_PTRACE"]);
        let lost = assess(required).unwrap();
        assert_eq!(lost.iter().map(|c| c.name).collect::<Vec<_>>(), ["CAP_CHECKPOINT_RESTORE"]);
        assert!(CAPABILITIES.iter().all(|c| c.name != "CAP_SYS_ADMIN"));
    }

    #[test]
    fn names_in_each_tool_s_spelling() {
        let bpf = &CAPABILITIES[0];
        assert_eq!((bpf.name, bpf.short_name(), bpf.setcap_name()), ("CAP_BPF", "BPF", "cap_bpf".to_owned()));
    }
}
