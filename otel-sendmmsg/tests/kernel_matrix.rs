//! The kernel matrix: the end-to-end suite inside Debian's 5.10, 6.1 and 6.12 kernels under qemu
//! (kprobes and BTF; `sock:sock_send_length` on 6.12 only; `sock_sendmsg` off sendmmsg's path
//! on all three), for every attach family each kernel offers, exactly as it runs on this
//! machine's kernel: the same test binaries, run in the guest.
//!
//! One boot per family, each a test of its own, a guest per host core at a time. Each boot first starts the sidecar alone to check
//! what the family chose, as its start-up log says it (the `BOOTS_ON_DEBIAN_*` tables, which the
//! README's kernel table repeats), then runs test binaries with `OTEL_SENDMMSG_ATTACH` set to the
//! family, which the tests' sidecars inherit: each kernel's first boot (fentry, which `auto`
//! takes on all three) the whole [`SUITE`], its other boots all of it but the tests of the
//! export alone ([`EXPORT_ONLY`]). The guest runs the release builds of the sidecar and the
//! workload (built here first, a no-op when up to date), placed where the test binaries look for
//! them (`SIDECAR`, `WORKLOAD`): software emulation is tens of times slower than the host, and
//! there a debug sidecar takes ~13 s to start, a release one ~4 s. What the tests would build in
//! the guest (the demo app, the C publishers) is built here and staged ([`support::PREBUILT`]).
//! A boot's console is also written, as it comes, to `console` in its guest directory under the
//! temporary directory.

mod support;

use std::{path::Path, time::Duration};

use support::{qemu, require_root, summary_count, SIDECAR, WORKLOAD};

/// The test binaries (`tests/<name>.rs`) the boots run: exact spans over
/// gRPC, HTTP/protobuf and the console (pipeline); socket context, destinations, filters and
/// sampling (context); hostile and 2000 concurrent callers, killed threads, exec, a full ring
/// buffer and collector outages (reliability); parents from the app's thread context and the
/// shared map (correlation); resources, child spans, containers, a collector down, headers,
/// compression (export).
const SUITE: [&str; 5] = ["pipeline", "context", "reliability", "correlation", "export"];

/// Test binaries that only each kernel's first boot (fentry) runs, after the [`SUITE`]: every
/// call's latency, messages and bytes as OTLP metrics (call_metrics). What they test is the
/// pairing every family's hooks feed alike, and the counting after it: one family per kernel
/// shows it loads and counts exactly there, where all nine boots would add minutes the hour
/// the README's test command has cannot spare.
const FIRST_BOOT_SUITE: [&str; 1] = ["call_metrics"];

/// The test binaries a boot runs, in order.
fn suite(first_boot: bool) -> impl Iterator<Item = &'static str> {
    let first: &[&'static str] = if first_boot { &FIRST_BOOT_SUITE } else { &[] };
    SUITE.iter().chain(first).copied()
}

/// Tests whose subject is the OTLP export alone: collector outages and a collector that never
/// answers (the queue, retries, the memory bound, the shutdown deadline), headers and
/// compression on the wire. Which hook made a record cannot change them, so they run in each
/// kernel's first boot (fentry) only; every other boot runs the rest of the [`SUITE`]. They are
/// 4 of the 7 minutes a boot's whole suite takes under emulation here, which the hour the
/// README's test command has cannot hold for six more boots.
const EXPORT_ONLY: [&str; 7] = [
    "a_grpc_collector_outage_under_load_is_survived_and_accounted_for",
    "an_http_collector_outage_under_load_is_survived_and_accounted_for",
    "with_the_collector_down_every_span_is_counted_and_the_sidecar_stops",
    "a_collector_that_never_answers_cannot_hold_the_shutdown_past_its_deadline",
    "a_second_signal_stops_at_once_with_the_summary",
    "each_signals_headers_reach_the_collector",
    "compression_is_what_the_receiver_gets_on_the_wire",
];

/// Tests that start the sidecar as nobody with exactly its capabilities and are not already in
/// [`EXPORT_ONLY`]: Debian's kernels refuse nobody the perf events that the kprobe and tracepoint
/// families attach through (`kernel.perf_event_paranoid` 3, which the second of these tests
/// checks), so they run in the fentry boot, whose hooks are BPF links.
const AS_NOBODY: [&str; 2] = [
    "the_memlock_limit_stops_start_up_only_before_5_11_and_is_named",
    "perf_events_kept_from_nobody_are_named_by_the_setting_that_keeps_them",
];

/// util-linux's tools the tests run where busybox's lack what they use: `setpriv --reuid
/// --inh-caps --ambient-caps` (a sidecar started as nobody with exactly its capabilities) and
/// `unshare --propagation` (its own bpffs). Staged in /bin, before busybox's links.
const UTIL_LINUX: [&str; 2] = ["/usr/bin/setpriv", "/usr/bin/unshare"];

/// Test binaries whose tests run one at a time in a guest: their loads (thousands of threads, a
/// ring-buffer flood, calls under a collector outage) starve each other under emulation. (The
/// call metrics' take turns by themselves.)
const ONE_AT_A_TIME: [&str; 1] = ["reliability"];

/// Test binaries whose tests run one at a time under the fentry family: they have calls that
/// sleep inside `sendmmsg` (the slow call of the minimum duration), and a sidecar that another
/// test starts meanwhile attaches to `__sys_sendmmsg`, which makes the kernel skip the fexit
/// programs of every call inside (README, `exit_missed`): a span the test waits for would be lost.
const ONE_AT_A_TIME_UNDER_FENTRY: [&str; 1] = ["context"];

/// Bounds one boot: the start-up checks and the whole suite, under software emulation.
const BOOT_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// What a kernel gives one attach family, as the sidecar's start-up log says it.
#[derive(Clone, Copy)]
struct Choice {
    family: &'static str,
    entry_exit: &'static str,
    message: &'static str,
    /// Parts of the log lines that say why other hooks are not used.
    passed_over: &'static [&'static str],
}

const FENTRY_SYS_SENDMMSG: &str = "fexit __sys_sendmmsg, fentry __sys_sendmmsg";
const FEXIT_PROTOCOL: &str = "fexit inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg";

const AUTO_TAKES_FENTRY: Choice = Choice {
    family: "auto",
    entry_exit: FENTRY_SYS_SENDMMSG,
    message: FEXIT_PROTOCOL,
    passed_over: &["not trying tracepoint, kprobe for entry/exit: a cheaper hook works"],
};
const FENTRY: Choice =
    Choice { family: "fentry", entry_exit: FENTRY_SYS_SENDMMSG, message: FEXIT_PROTOCOL, passed_over: &[] };
/// A kretprobe on `sock_sendmsg` sees none of sendmmsg's messages: from 6.6 on (and in Debian's
/// 6.1, which carries the fix "net: prevent rewrite of msg_name in sock_sendmsg()") sendmmsg
/// does not call it, and on Debian's 5.10 the self-test finds it silent too (its call on that
/// path is not the out-of-line copy a probe sees). The protocol send functions see every message.
const KPROBE: Choice = Choice {
    family: "kprobe",
    // OTEL_SENDMMSG_MAX_INFLIGHT's default, 4096, is also the kernel's limit on maxactive.
    entry_exit: "kretprobe __x64_sys_sendmmsg (maxactive 4096), kprobe __x64_sys_sendmmsg",
    message: "kretprobe inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg",
    passed_over: &[
        "not using kretprobe sock_sendmsg for messages: attached, but saw 0 of call 0's 3 messages",
    ],
};
const SYSCALL_TRACEPOINTS: &str =
    "tracepoint syscalls:sys_exit_sendmmsg, tracepoint syscalls:sys_enter_sendmmsg";
/// Before 6.3 there is no `sock:sock_send_length`: the tracepoint family takes fexit for messages.
const TRACEPOINT_BEFORE_6_3: Choice = Choice {
    family: "tracepoint",
    entry_exit: SYSCALL_TRACEPOINTS,
    message: FEXIT_PROTOCOL,
    passed_over: &["sock:sock_send_length for messages: tracepoint sock:sock_send_length not present"],
};

/// What Debian's 6.1 gives each family, one boot per family (`auto` is checked in the boot of
/// the family it takes): fentry/fexit trampolines load under qemu, no `sock:sock_send_length`.
const BOOTS_ON_DEBIAN_6_1: [&[Choice]; 3] =
    [&[AUTO_TAKES_FENTRY, FENTRY], &[KPROBE], &[TRACEPOINT_BEFORE_6_3]];
/// Debian 11's 5.10 gives each family the same as 6.1 (its BTF has every field the identity
/// capture reads, and fentry/fexit load).
const BOOTS_ON_DEBIAN_5_10: [&[Choice]; 3] =
    [&[AUTO_TAKES_FENTRY, FENTRY], &[KPROBE], &[TRACEPOINT_BEFORE_6_3]];
/// Debian 12's 6.12 has `sock:sock_send_length`: the tracepoint family needs no other hook.
const BOOTS_ON_DEBIAN_6_12: [&[Choice]; 3] = [
    &[AUTO_TAKES_FENTRY, FENTRY],
    &[KPROBE],
    &[Choice {
        family: "tracepoint",
        entry_exit: SYSCALL_TRACEPOINTS,
        message: "tracepoint sock:sock_send_length",
        passed_over: &[
            "not trying fexit inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg, kretprobe sock_sendmsg",
        ],
    }],
];

/// Threads the kprobe boot blocks in `sendmmsg` at once (plus one blocked first): more than
/// the kernel's default `maxactive` for a kretprobe, max(10, 2 x CPUs), 10 in the 2-CPU guest.
const BLOCKED_IN_GUEST: usize = 40;

/// The kprobe boot's extra script. A sidecar killed outright leaves its kretprobe events in
/// tracefs (`EVENTS killed=`); then the workload's `blocked-N` runs under a console sidecar
/// (`blocked RUN MAX_INFLIGHT`), which removes them at start: with its kretprobes sized through
/// tracefs ("sized"; no event of ours is left after it stops, `EVENTS after=`), with
/// `OTEL_SENDMMSG_MAX_INFLIGHT=10` so `maxactive` is 10 ("small"), and with `kprobe_events`
/// made unwritable so it falls back to the kprobe PMU and the kernel's default ("default").
/// Prints `BLOCKED <run> ...`. Each run logs to a file of its own: the shell truncates a log
/// in the background child, so a shared one could still show the last run's `ready:` to the
/// wait that follows (seen once: a workload that ran before its sidecar had attached).
fn blocked_runs_script() -> String {
    format!(
        r#"NO_COLOR=1 RUST_LOG=info OTEL_TRACES_EXPORTER=none {SIDECAR} >/dev/null 2>/tmp/klog &
kpid=$!; i=0
while ! grep -q "ready:" /tmp/klog && kill -0 $kpid 2>/dev/null && [ $i -lt 600 ]; do
  sleep 0.2; i=$((i+1))
done
kill -KILL $kpid; wait $kpid
echo "EVENTS killed=$(grep -c "otel_sendmmsg/p${{kpid}}_" /sys/kernel/tracing/kprobe_events)"
blocked() {{
  OTEL_SENDMMSG_MAX_INFLIGHT=$2 NO_COLOR=1 RUST_LOG=info OTEL_TRACES_EXPORTER=console \
    {SIDECAR} >/tmp/spans 2>/tmp/blog-$1 &
  spid=$!; i=0
  while ! grep -qs "ready:" /tmp/blog-$1 && kill -0 $spid 2>/dev/null && [ $i -lt 600 ]; do
    sleep 0.2; i=$((i+1))
  done
  echo go | {WORKLOAD} blocked-{BLOCKED_IN_GUEST} >/tmp/calls &
  wpid=$!; wait $wpid; echo "BLOCKED $1 workload exit=$?"
  kill -INT $spid; wait $spid; echo "BLOCKED $1 sidecar exit=$?"
  echo "BLOCKED $1 calls=$(grep -c . /tmp/calls) spans=$(grep -c "process.pid=$wpid " /tmp/spans)"
  grep -e "stopped: " -e "kretprobe __x64_sys_sendmmsg" -e "removed the kretprobe" /tmp/blog-$1 \
    | sed "s/^/BLOCKED $1 LOG /"
}}
blocked sized 4096
echo "EVENTS after=$(grep -c otel_sendmmsg /sys/kernel/tracing/kprobe_events)"
blocked small 10
mount --bind /proc/version /sys/kernel/tracing/kprobe_events
blocked default 4096
umount /sys/kernel/tracing/kprobe_events
"#
    )
}

/// What one `blocked` run of [`blocked_runs_script`] printed: (calls, spans, its log lines).
fn blocked_run<'a>(console: &'a str, run: &str) -> (u64, u64, Vec<&'a str>) {
    let prefix = format!("BLOCKED {run} ");
    let lines: Vec<&str> = console.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect();
    let count = |key: &str| {
        lines
            .iter()
            .flat_map(|l| l.split_whitespace())
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("{run}: no {key} in:\n{console}"))
    };
    assert!(lines.contains(&"workload exit=0"), "{run}: the workload failed:\n{console}");
    assert!(lines.contains(&"sidecar exit=0"), "{run}: the sidecar failed:\n{console}");
    let log = lines.iter().filter_map(|l| l.strip_prefix("LOG ")).collect();
    (count("calls="), count("spans="), log)
}

// One test per boot, not per kernel: the harness then keeps every core busy to the end, where a
// kernel's boots in a row left one core idle for a last kernel's (measured: the matrix took 34
// minutes as three tests, two kernels at once).

#[test]
fn the_suite_passes_on_debian_6_12_under_fentry() {
    the_boot_passes(qemu::Debian::V6_12, &BOOTS_ON_DEBIAN_6_12, 0);
}

#[test]
fn the_suite_passes_on_debian_6_12_under_kprobe() {
    the_boot_passes(qemu::Debian::V6_12, &BOOTS_ON_DEBIAN_6_12, 1);
}

#[test]
fn the_suite_passes_on_debian_6_12_under_tracepoint() {
    the_boot_passes(qemu::Debian::V6_12, &BOOTS_ON_DEBIAN_6_12, 2);
}

#[test]
fn the_suite_passes_on_debian_6_1_under_fentry() {
    the_boot_passes(qemu::Debian::V6_1, &BOOTS_ON_DEBIAN_6_1, 0);
}

#[test]
fn the_suite_passes_on_debian_6_1_under_kprobe() {
    the_boot_passes(qemu::Debian::V6_1, &BOOTS_ON_DEBIAN_6_1, 1);
}

#[test]
fn the_suite_passes_on_debian_6_1_under_tracepoint() {
    the_boot_passes(qemu::Debian::V6_1, &BOOTS_ON_DEBIAN_6_1, 2);
}

#[test]
fn the_suite_passes_on_debian_5_10_under_fentry() {
    the_boot_passes(qemu::Debian::V5_10, &BOOTS_ON_DEBIAN_5_10, 0);
}

#[test]
fn the_suite_passes_on_debian_5_10_under_kprobe() {
    the_boot_passes(qemu::Debian::V5_10, &BOOTS_ON_DEBIAN_5_10, 1);
}

#[test]
fn the_suite_passes_on_debian_5_10_under_tracepoint() {
    the_boot_passes(qemu::Debian::V5_10, &BOOTS_ON_DEBIAN_5_10, 2);
}

/// As many guests at once as the host has cores: each runs on one host thread (see
/// [`qemu::Guest::run`]), and more than that starve each other's timed waits (seen: outage tests
/// that timed out, three guests on this machine kind's two cores).
static GUESTS: GuestSlots = GuestSlots { taken: std::sync::Mutex::new(0), freed: std::sync::Condvar::new() };

struct GuestSlots {
    taken: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

/// A slot of [`GUESTS`], given back on drop (also when the test holding it fails).
struct GuestSlot;

impl GuestSlots {
    fn take(&'static self) -> GuestSlot {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut taken = self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *taken >= cores {
            taken = self.freed.wait(taken).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *taken += 1;
        GuestSlot
    }
}

impl Drop for GuestSlot {
    fn drop(&mut self) {
        *GUESTS.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner) -= 1;
        GUESTS.freed.notify_one();
    }
}

/// What every guest gets, built once on the host before the first boot: the release sidecar
/// and workload, the test binaries, and what they would otherwise build in the guest. Once:
/// boots run two at a time, and a second build (the C publishers are compiled again whether or
/// not they changed) rewrote files the other boot was copying into its guest.
static STAGED: std::sync::OnceLock<Staged> = std::sync::OnceLock::new();

struct Staged {
    files: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    tests: std::collections::HashMap<String, std::path::PathBuf>,
}

impl Staged {
    fn build() -> Staged {
        let release = qemu::release_binaries("otel-sendmmsg");
        let tests = qemu::test_binaries(&suite(true).collect::<Vec<_>>());
        let demo = support::build_demo_app();
        let publishers = support::build_c_publishers();
        let library = publishers[0].1.with_file_name("libotel_sendmmsg_context.so");
        let mut files = vec![
            (release["otel-sendmmsg"].clone(), SIDECAR.into()),
            (release["sendmmsg-workload"].clone(), WORKLOAD.into()),
            (demo.clone(), demo),
            (library.clone(), library),
        ];
        files.extend(tests.values().map(|t| (t.clone(), t.clone())));
        files.extend(UTIL_LINUX.iter().map(|tool| {
            let name = Path::new(tool).file_name().unwrap();
            (std::path::PathBuf::from(tool), Path::new("/bin").join(name))
        }));
        files.extend(publishers.into_iter().map(|(_, p)| (p.clone(), p)));
        Staged { files, tests }
    }
}

/// The script that checks one choice: the sidecar started alone with `OTEL_SENDMMSG_ATTACH` set
/// to its family, its log printed as `LOG <family> ...` (a log of its own per family, as in
/// [`blocked_runs_script`]).
fn choice_script(family: &str) -> String {
    format!(
        r#"OTEL_SENDMMSG_ATTACH={family} NO_COLOR=1 RUST_LOG=info OTEL_TRACES_EXPORTER=none {SIDECAR} >/dev/null 2>/tmp/log-{family} &
pid=$!; i=0
while ! grep -qs "ready:" /tmp/log-{family} && kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do
  sleep 0.2; i=$((i+1))
done
kill -INT $pid 2>/dev/null; wait $pid; echo "SIDECAR {family} exit=$?"
sed "s/^/LOG {family} /" /tmp/log-{family}
"#
    )
}

/// Runs each test binary of the [`SUITE`] (in a kernel's first boot with the [`EXPORT_ONLY`]
/// and [`AS_NOBODY`] tests, in the others without), its output between `SUITE <name>` and `SUITE <name> exit=N`.
fn suite_script(
    binaries: &std::collections::HashMap<String, std::path::PathBuf>,
    family: &str,
    first_boot: bool,
) -> String {
    let skips: String = if first_boot {
        String::new()
    } else {
        EXPORT_ONLY.iter().chain(&AS_NOBODY).map(|t| format!(" --skip {t}")).collect()
    };
    suite(first_boot)
        .map(|name| {
            let binary = binaries[name].display();
            let alone = ONE_AT_A_TIME.contains(&name)
                || (family == "fentry" && ONE_AT_A_TIME_UNDER_FENTRY.contains(&name));
            let threads = if alone { " --test-threads=1" } else { "" };
            format!("echo \"SUITE {name}\"\n{binary} --exact{threads}{skips} 2>&1\necho \"SUITE {name} exit=$?\"\n")
        })
        .collect()
}

/// The start-up log's last word on where the calls in flight wait, on `debian`: task-local
/// storage from 5.12 on (a refusal there would fall back to the hash map and say so), the hash
/// map before.
fn store_line(debian: qemu::Debian) -> &'static str {
    match debian {
        qemu::Debian::V5_10 => "calls in flight: a hash map by thread id",
        qemu::Debian::V6_1 | qemu::Debian::V6_12 => "calls in flight: task-local storage",
    }
}

/// What the sidecar chose for `choice`, from its start-up log in `console`; `store`: its
/// [`store_line`].
fn check_choice(console: &str, choice: &Choice, store: &str, ctx: &str) {
    let Choice { family, entry_exit, message, passed_over } = *choice;
    assert!(
        console.contains(&format!("SIDECAR {family} exit=0")),
        "{ctx}: the sidecar did not start and stop cleanly"
    );
    let prefix = format!("LOG {family} ");
    let log = |text: &str| console.lines().any(|l| l.starts_with(&prefix) && l.contains(text));
    assert!(log(&format!("entry/exit hooks: {entry_exit} (self-test passed)")), "{ctx}: entry/exit hooks");
    assert!(log(&format!("per-message hook: {message} (self-test saw every message)")), "{ctx}: per message");
    for reason in passed_over {
        assert!(log(reason), "{ctx}: no \"{reason}\"");
    }
    // Each kernel's BTF has every field the identity capture reads (kernfs_node.parent under
    // the name that kernel gives it), and its exec hook attaches.
    assert!(log("process identities are captured in the kernel"), "{ctx}: identity capture");
    // The whole line: a refused store's line starts the same.
    assert!(console.lines().any(|l| l.starts_with(&prefix) && l.ends_with(store)), "{ctx}: no \"{store}\"");
    let summary = console.lines().find(|l| l.starts_with(&prefix) && l.contains("stopped: "));
    let summary = summary.unwrap_or_else(|| panic!("{ctx}: no closing summary"));
    assert!(summary.contains(" kretprobe_missed=0 "), "{ctx}: {summary}");
    if family == "kprobe" {
        // The per-message kretprobes see every send of the host: as many at once as allowed.
        let kretprobes = ["inet_sendmsg", "inet6_sendmsg", "unix_dgram_sendmsg"]
            .map(|f| format!("kretprobe {f} (maxactive 4096)"))
            .join(", ");
        assert!(log(&format!("(self-test saw every message): {kretprobes}")), "{ctx}: maxactive");
    }
}

/// What the kprobe boot's [`blocked_runs_script`] printed.
fn check_blocked_runs(console: &str, ctx: &str) {
    // A killed sidecar's four kretprobes (the exit and three per-message) stay in tracefs until
    // the next sidecar starts; a stopped one leaves none.
    let events = |key: &str| console.lines().find_map(|l| l.strip_prefix(key)?.parse::<u64>().ok());
    assert_eq!(events("EVENTS killed="), Some(4), "{ctx}: events of the killed sidecar");
    assert_eq!(events("EVENTS after="), Some(0), "{ctx}: events left by a stopped sidecar");
    let count = |log: &[&str], key: &str| summary_count(&log.join("\n"), key);
    let (calls, spans, log) = blocked_run(console, "sized");
    let removed = log.iter().filter(|l| l.contains("removed the kretprobe event")).count();
    assert_eq!(removed, 4, "{ctx}: the killed sidecar's events: {log:#?}");
    assert_eq!(calls, BLOCKED_IN_GUEST as u64 + 1, "{ctx}: sized: {log:#?}");
    assert!(log.iter().any(|l| l.contains("kretprobe __x64_sys_sendmmsg (maxactive 4096)")), "{log:#?}");
    // Every call inside at once came back: a span each, nothing missed.
    assert_eq!(spans, calls, "{ctx}: sized: {log:#?}");
    for key in ["kretprobe_missed", "exit_missed", "exit_without_entry", "inflight"] {
        assert_eq!(count(&log, key), 0, "{ctx}: sized: {key}: {log:#?}");
    }
    // maxactive 10 (the map's size, the kernel's default here): the kernel counts each return it
    // cannot catch, and every call is a span or counted.
    let (calls, spans, log) = blocked_run(console, "small");
    assert!(log.iter().any(|l| l.contains("kretprobe __x64_sys_sendmmsg (maxactive 10)")), "{log:#?}");
    assert_eq!(count(&log, "kretprobe_missed"), calls - 10, "{ctx}: small: {log:#?}");
    let accounted = spans + count(&log, "inflight_full") + count(&log, "exit_missed");
    assert_eq!(accounted, calls, "{ctx}: small: {log:#?}");
    // The old way, aya's kprobe PMU, allows the kernel's default: the returns beyond it are
    // missed, found as exit_missed once the threads are gone.
    let (calls, spans, log) = blocked_run(console, "default");
    eprintln!("kprobe PMU fallback: {spans} spans of {calls} calls blocked at once");
    assert!(log.iter().any(|l| l.contains("kretprobe __x64_sys_sendmmsg (kprobe PMU")), "{log:#?}");
    assert!(spans < calls, "{ctx}: default maxactive: {spans} spans of {calls} calls: {log:#?}");
    assert_eq!(spans + count(&log, "exit_missed"), calls, "{ctx}: default: {log:#?}");
}

/// Each test binary of the boot's suite ran and every one of its tests passed.
fn check_suite(console: &str, ctx: &str, first_boot: bool) {
    for name in suite(first_boot) {
        let begin = format!("SUITE {name}\n");
        let start = console.find(&begin).unwrap_or_else(|| panic!("{ctx}: {name} did not run"));
        let section = &console[start..];
        let end = section
            .find(&format!("SUITE {name} exit="))
            .unwrap_or_else(|| panic!("{ctx}: {name} did not finish"));
        let (section, rest) = section.split_at(end);
        let failed: Vec<&str> =
            section.lines().filter(|l| l.starts_with("test ") && l.ends_with(" FAILED")).collect();
        assert!(failed.is_empty(), "{ctx}: {name}: {failed:#?}");
        let passed = section
            .lines()
            .find_map(|l| l.strip_prefix("test result: ok. ")?.split(' ').next()?.parse::<u32>().ok());
        assert!(passed.is_some_and(|n| n > 0), "{ctx}: {name}: no passing test result");
        assert!(rest.starts_with(&format!("SUITE {name} exit=0")), "{ctx}: {name} failed");
    }
}

/// Boot `boot` of `boots` on `debian`: the first (fentry) with the whole suite.
fn the_boot_passes(debian: qemu::Debian, boots: &[&[Choice]], boot: usize) {
    require_root();
    let _slot = GUESTS.take();
    let staged = STAGED.get_or_init(Staged::build);
    let files: Vec<(&Path, &Path)> = staged.files.iter().map(|(a, b)| (a.as_path(), b.as_path())).collect();
    let guest = qemu::Guest::debian(debian, &files);
    let kernel = guest.kernel_release();
    let choices = boots[boot];
    let family = choices.last().unwrap().family;
    let checks: String = choices.iter().map(|c| choice_script(c.family)).collect();
    let script = format!(
        "echo \"KERNEL $(uname -r)\"\n{checks}export OTEL_SENDMMSG_ATTACH={family}\n{blocked}\
         export {prebuilt}=1\n{suite}",
        blocked = if family == "kprobe" { blocked_runs_script() } else { String::new() },
        prebuilt = support::PREBUILT,
        suite = suite_script(&staged.tests, family, boot == 0),
    );
    let run = guest.run(&script, BOOT_TIMEOUT);
    let console = run.console.replace('\r', "");
    eprintln!("{} guest, OTEL_SENDMMSG_ATTACH={family}, {:?}:\n{console}", debian.name(), run.duration);
    let ctx = format!("OTEL_SENDMMSG_ATTACH={family} on {kernel}");
    assert!(console.contains(&format!("KERNEL {kernel}")), "{ctx}: the guest did not boot:\n{console}");
    for choice in choices {
        let ctx = format!("OTEL_SENDMMSG_ATTACH={} on {kernel}", choice.family);
        check_choice(&console, choice, store_line(debian), &ctx);
    }
    if family == "kprobe" {
        check_blocked_runs(&console, &ctx);
    }
    check_suite(&console, &ctx, boot == 0);
    assert_eq!(run.exit_code, Some(0), "{ctx}: the guest's script failed, or the guest timed out");
}
