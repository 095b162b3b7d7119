//! kretprobes with an explicit `maxactive`, created through tracefs `kprobe_events`.
//!
//! aya attaches kretprobes through the kprobe PMU (`perf_event_open` with the PMU's `retprobe`
//! bit, Linux >= 4.17), which takes no `maxactive`: the kernel then allows max(10, 2 * CPUs)
//! calls of the function to be inside at once, and the return of every call beyond that is
//! missed without a word (it shows up later as `exit_missed`). A tracefs event
//! `r<MAXACTIVE>:GROUP/EVENT SYMBOL` (Documentation/trace/kprobetrace.rst) sets it, up to the
//! kernel's `KRETPROBE_MAXACTIVE_MAX` (4096, `kernel/trace/trace_kprobe.c`); the program is
//! then attached to the event's tracepoint perf event the way aya attaches it to a tracepoint
//! (`perf_event_open(PERF_TYPE_TRACEPOINT, id)` with pid -1 and CPU 0: a kprobe event runs its
//! BPF program on every CPU), by `PERF_EVENT_IOC_SET_BPF` and `PERF_EVENT_IOC_ENABLE`.
//!
//! The kernel counts the returns it missed per event; `kprobe_profile` shows them
//! (`EVENT HITS MISSES`), read here as [`KretprobeEvent::missed`].
//!
//! Events are named `p<PID>_<SYMBOL>_<N>` in the group [`GROUP`], so two sidecars never share
//! one, and one left by a sidecar that was killed (its pid gone) is removed at the next start
//! ([`remove_stale`]).

use std::{
    fs::OpenOptions,
    io::{self, Write},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Once,
    },
};

use tracing::{debug, info, warn};

/// The tracefs group of our events.
pub const GROUP: &str = "otel_sendmmsg";
/// The kernel's limit on `maxactive` (`KRETPROBE_MAXACTIVE_MAX`, `kernel/trace/trace_kprobe.c`).
pub const MAXACTIVE_MAX: u32 = 4096;

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IO('$', 0)`, `_IO('$', 1)`, `_IOW('$', 8, u32)` (`include/uapi/linux/perf_event.h`).
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// `struct perf_event_attr` up to `config1` (`PERF_ATTR_SIZE_VER0`, 64 bytes: every kernel
/// accepts it and zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

static EVENT_INDEX: AtomicUsize = AtomicUsize::new(0);
static STALE_REMOVED: Once = Once::new();

/// The `maxactive` for our kretprobes: as many calls at once as the in-flight map holds, never
/// fewer than the kernel's own default (max(10, 2 * possible CPUs)), at most the kernel's limit.
pub fn maxactive(max_inflight: u32) -> u32 {
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| possible_cpus(&s))
        .unwrap_or(1);
    max_inflight.max(10).max(2 * cpus).min(MAXACTIVE_MAX)
}

/// The count of a CPU list such as `0-3,8`.
fn possible_cpus(list: &str) -> Option<u32> {
    list.trim().split(',').try_fold(0u32, |n, part| {
        let count = match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => part.parse::<u32>().map(|_| 1).ok()?,
        };
        Some(n + count)
    })
}

/// A BPF program attached as a kretprobe through a tracefs event of our own; dropping it
/// detaches the program and removes the event.
pub struct KretprobeEvent {
    tracefs: PathBuf,
    /// The event's name in [`GROUP`].
    name: String,
    perf: Option<OwnedFd>,
    /// How many calls of the function may be inside at once before returns are missed.
    pub maxactive: u32,
}

impl KretprobeEvent {
    /// Creates the event `r<maxactive>:otel_sendmmsg/<name> <function>` and attaches `program`
    /// (a loaded kprobe program) to it.
    pub fn attach(
        tracefs: &Path,
        program: BorrowedFd<'_>,
        function: &str,
        maxactive: u32,
    ) -> io::Result<KretprobeEvent> {
        STALE_REMOVED.call_once(|| remove_stale(tracefs, Path::new("/proc")));
        let name = event_name(std::process::id(), function, EVENT_INDEX.fetch_add(1, Ordering::Relaxed));
        write_events(tracefs, &format!("r{maxactive}:{GROUP}/{name} {function}"))
            .map_err(|e| io::Error::new(e.kind(), format!("creating a kretprobe in kprobe_events: {e}")))?;
        // From here on, dropping `event` removes what was created.
        let mut event = KretprobeEvent { tracefs: tracefs.to_owned(), name, perf: None, maxactive };
        let id_file = tracefs.join("events").join(GROUP).join(&event.name).join("id");
        let id: u64 = std::fs::read_to_string(&id_file)?
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("{}: {e}", id_file.display())))?;
        let perf = open_tracepoint(id)?;
        let ioctl = |request, arg: libc::c_int, what: &str| {
            // SAFETY: a perf event descriptor we own, and requests that take an int argument.
            if unsafe { libc::ioctl(perf.as_raw_fd(), request, arg) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
            }
            Ok(())
        };
        ioctl(PERF_EVENT_IOC_SET_BPF, program.as_raw_fd(), "PERF_EVENT_IOC_SET_BPF")?;
        ioctl(PERF_EVENT_IOC_ENABLE, 0, "PERF_EVENT_IOC_ENABLE")?;
        event.perf = Some(perf);
        Ok(event)
    }

    /// The returns the kernel missed on this event so far (`kprobe_profile`'s last column:
    /// no free instance out of `maxactive`, or the probe re-entered).
    pub fn missed(&self) -> io::Result<u64> {
        let profile = std::fs::read_to_string(self.tracefs.join("kprobe_profile"))?;
        profile_misses(&profile, &self.name)
            .ok_or_else(|| io::Error::other(format!("{} not in kprobe_profile", self.name)))
    }
}

impl Drop for KretprobeEvent {
    fn drop(&mut self) {
        if let Some(perf) = self.perf.take() {
            // SAFETY: a perf event descriptor we own; the request takes no argument.
            unsafe { libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_DISABLE, 0) };
            // Closing it detaches the program; the event cannot be removed while it is open.
            drop(perf);
        }
        if let Err(e) = write_events(&self.tracefs, &format!("-:{GROUP}/{}", self.name)) {
            warn!("removing the kretprobe event {GROUP}/{}: {e}", self.name);
        }
    }
}

/// `p<pid>_<function>_<index>`, with characters an event name cannot have replaced.
fn event_name(pid: u32, function: &str, index: usize) -> String {
    let function: String =
        function.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("p{pid}_{function}_{index}")
}

/// The pid in one of our event names.
fn event_pid(name: &str) -> Option<u32> {
    name.strip_prefix('p')?.split('_').next()?.parse().ok()
}

/// The misses column of `event`'s line in `kprobe_profile` (`EVENT HITS MISSES`).
fn profile_misses(profile: &str, event: &str) -> Option<u64> {
    profile.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == event).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Appends one command to `kprobe_events`.
fn write_events(tracefs: &Path, command: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().append(true).open(tracefs.join("kprobe_events"))?;
    file.write_all(format!("{command}\n").as_bytes())
}

/// Removes the events of our group whose sidecar (the pid in the name) no longer runs: left
/// by one that was killed before it could remove them.
pub fn remove_stale(tracefs: &Path, proc: &Path) {
    let Ok(events) = std::fs::read_to_string(tracefs.join("kprobe_events")) else {
        return;
    };
    for name in stale_events(&events, |pid| proc.join(pid.to_string()).exists()) {
        match write_events(tracefs, &format!("-:{GROUP}/{name}")) {
            Ok(()) => info!("removed the kretprobe event {GROUP}/{name} of a sidecar that is gone"),
            Err(e) => debug!("removing the stale kretprobe event {GROUP}/{name}: {e}"),
        }
    }
}

/// The names of our group's events in `kprobe_events` whose pid is not `running`.
fn stale_events(kprobe_events: &str, running: impl Fn(u32) -> bool) -> Vec<String> {
    let prefix = format!(":{GROUP}/");
    kprobe_events
        .lines()
        .filter_map(|line| {
            let definition = line.split_whitespace().next()?;
            let name = &definition[definition.find(&prefix)? + prefix.len()..];
            let pid = event_pid(name)?;
            (!running(pid)).then(|| name.to_owned())
        })
        .collect()
}

/// Opens the tracepoint perf event `id` as aya opens tracepoints: all processes, CPU 0.
fn open_tracepoint(id: u64) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_type: PERF_SAMPLE_RAW,
        wakeup_events: 1,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid `perf_event_attr` of the size it declares and outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("perf_event_open: {e}")));
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxactive_is_the_map_size_within_the_kernels_default_and_limit() {
        assert_eq!(possible_cpus("0-3,8\n"), Some(5));
        assert_eq!(possible_cpus("0\n"), Some(1));
        assert_eq!(possible_cpus("x"), None);
        assert_eq!(maxactive(1 << 20), MAXACTIVE_MAX);
        assert!(maxactive(1) >= 10);
        assert_eq!(maxactive(1000).max(1000), maxactive(1000));
    }

    #[test]
    fn event_names_carry_the_pid_and_a_clean_symbol() {
        let name = event_name(1234, "__x64_sys_sendmmsg.cold", 7);
        assert_eq!(name, "p1234___x64_sys_sendmmsg_cold_7");
        assert_eq!(event_pid(&name), Some(1234));
    }

    #[test]
    fn only_our_events_of_sidecars_that_are_gone_are_stale() {
        let events = "r4096:otel_sendmmsg/p10___x64_sys_sendmmsg_0 __x64_sys_sendmmsg\n\
                      r4096:otel_sendmmsg/p11_inet_sendmsg_1 inet_sendmsg\n\
                      r10:other/p10_inet_sendmsg_0 inet_sendmsg\n\
                      p:kprobes/aya_10_p_x 0xffff\n";
        assert_eq!(stale_events(events, |pid| pid == 11), vec!["p10___x64_sys_sendmmsg_0"]);
    }

    #[test]
    fn the_misses_are_the_last_column_of_the_events_line() {
        let profile = "  p1_a_0                                  12               0\n  \
                       p1_a_01                                 40              31\n";
        assert_eq!(profile_misses(profile, "p1_a_01"), Some(31));
        assert_eq!(profile_misses(profile, "p1_a_0"), Some(0));
        assert_eq!(profile_misses(profile, "p1_b"), None);
    }
}
