//! End to end, as root: the real BPF programs, a real sendmmsg workload, and the spans a real
//! OTLP receiver got, checked exactly for every scenario, over gRPC and HTTP/protobuf.

mod support;

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use support::*;

/// What each scenario must produce, written down independently of what the sidecar does.
struct Expected {
    scenario: &'static str,
    sent: Option<i64>,
    bytes: i64,
    attempted: i64,
    failed: i64,
    error: Option<&'static str>,
    /// Per message: Ok(bytes) or Err(errno name).
    messages: &'static [Result<i64, &'static str>],
}

/// The udp4 and udp6 scenarios send the same eight messages over a connected socket.
const fn connected_udp(scenario: &'static str) -> Expected {
    Expected {
        scenario,
        sent: Some(8),
        bytes: 828,
        attempted: 8,
        failed: 0,
        error: None,
        messages: &[Ok(100), Ok(101), Ok(102), Ok(103), Ok(104), Ok(105), Ok(106), Ok(107)],
    }
}

const EXPECTED: &[Expected] = &[
    connected_udp("udp4"),
    connected_udp("udp6"),
    Expected {
        scenario: "udp4-unconnected",
        sent: Some(6),
        bytes: 375,
        attempted: 6,
        failed: 0,
        error: None,
        messages: &[Ok(60), Ok(61), Ok(62), Ok(63), Ok(64), Ok(65)],
    },
    Expected {
        scenario: "unix",
        sent: Some(5),
        bytes: 150,
        attempted: 5,
        failed: 0,
        error: None,
        messages: &[Ok(10), Ok(20), Ok(30), Ok(40), Ok(50)],
    },
    Expected {
        scenario: "bad-fd",
        sent: None,
        bytes: 0,
        attempted: 0,
        failed: 0,
        error: Some("EBADF"),
        messages: &[],
    },
    Expected {
        scenario: "not-socket",
        sent: None,
        bytes: 0,
        attempted: 0,
        failed: 0,
        error: Some("ENOTSOCK"),
        messages: &[],
    },
    Expected {
        scenario: "bad-msgvec",
        sent: None,
        bytes: 0,
        attempted: 0,
        failed: 0,
        error: Some("EFAULT"),
        messages: &[],
    },
    Expected {
        scenario: "refused-mid-batch",
        sent: Some(2),
        bytes: 30,
        attempted: 3,
        failed: 1,
        error: Some("EMSGSIZE"),
        messages: &[Ok(10), Ok(20), Err("EMSGSIZE")],
    },
    Expected {
        scenario: "vlen-zero",
        sent: Some(0),
        bytes: 0,
        attempted: 0,
        failed: 0,
        error: None,
        messages: &[],
    },
];

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn check_span(
    call: &CallReport,
    expected: &Expected,
    got: &ReceivedSpan,
    window: (u64, u64),
    msgvec_shown: bool,
) {
    let ctx = format!("scenario {}: {:#?}", expected.scenario, got.span);
    let span = &got.span;
    assert_eq!(span.name, "sendmmsg", "{ctx}");
    assert_eq!(span.kind, SpanKind::Internal as i32, "{ctx}");
    // Arguments, as the workload passed them.
    assert_eq!(got.int("sendmmsg.sockfd"), Some(call.sockfd as i64), "{ctx}");
    assert_eq!(got.int("sendmmsg.vlen"), Some(call.vlen as i64), "{ctx}");
    assert_eq!(got.int("sendmmsg.flags"), Some(call.flags), "{ctx}");
    // The pointer is shown only where the sidecar was asked to (OTEL_SENDMMSG_MSGVEC_ADDRESS).
    let msgvec = msgvec_shown.then(|| format!("{:#x}", call.msgvec));
    assert_eq!(got.str("sendmmsg.msgvec"), msgvec.as_deref(), "{ctx}");
    let flag_names = match call.flags as i32 {
        0 => None,
        f if f == libc::MSG_DONTWAIT => Some("MSG_DONTWAIT"),
        f if f == libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL => Some("MSG_DONTWAIT|MSG_NOSIGNAL"),
        f => panic!("workload used unexpected flags {f:#x}"),
    };
    assert_eq!(got.str("sendmmsg.flags.names"), flag_names, "{ctx}");
    // Who.
    assert_eq!(got.int("process.pid"), Some(call.pid as i64), "{ctx}");
    assert_eq!(got.int("thread.id"), Some(call.tid as i64), "{ctx}");
    // comm is the executable name cut to 15 bytes.
    assert_eq!(got.str("thread.name"), Some("sendmmsg-worklo"), "{ctx}");
    // Results: the independent expectation, and what user space saw.
    assert_eq!(got.int("sendmmsg.sent"), expected.sent, "{ctx}");
    assert_eq!(expected.sent.unwrap_or(-1), call.ret, "{ctx}: the workload saw another result");
    assert_eq!(got.int("sendmmsg.bytes"), Some(expected.bytes), "{ctx}");
    assert_eq!(call.msg_len.iter().sum::<usize>() as i64, expected.bytes, "{ctx}: kernel msg_len disagrees");
    assert_eq!(got.int("sendmmsg.messages.attempted"), Some(expected.attempted), "{ctx}");
    assert_eq!(got.int("sendmmsg.messages.failed"), Some(expected.failed), "{ctx}");
    assert_eq!(got.str("error.type"), expected.error, "{ctx}");
    let status = span.status.as_ref().map(|s| s.code).unwrap_or(StatusCode::Unset as i32);
    let want_status = if expected.error.is_some() { StatusCode::Error } else { StatusCode::Unset };
    assert_eq!(status, want_status as i32, "{ctx}");
    // Time: inside the window the workload ran in, events inside the span.
    assert!(window.0 <= span.start_time_unix_nano, "{ctx}: starts before the workload ran");
    assert!(span.start_time_unix_nano <= span.end_time_unix_nano, "{ctx}");
    assert!(span.end_time_unix_nano <= window.1, "{ctx}: ends after the workload finished");
    // Per message, in order.
    assert_eq!(span.events.len(), expected.messages.len(), "{ctx}");
    for (index, (event, want)) in span.events.iter().zip(expected.messages).enumerate() {
        assert_eq!(event.name, "message", "{ctx}");
        assert_eq!(int_attr(&event.attributes, "sendmmsg.message.index"), Some(index as i64), "{ctx}");
        match want {
            Ok(bytes) => {
                assert_eq!(int_attr(&event.attributes, "sendmmsg.message.bytes"), Some(*bytes), "{ctx}");
                assert_eq!(str_attr(&event.attributes, "error.type"), None, "{ctx}");
            }
            Err(errno) => {
                assert_eq!(str_attr(&event.attributes, "error.type"), Some(*errno), "{ctx}");
                assert_eq!(int_attr(&event.attributes, "sendmmsg.message.bytes"), None, "{ctx}");
            }
        }
        let offset = int_attr(&event.attributes, "sendmmsg.message.offset_ns").unwrap() as u64;
        assert_eq!(event.time_unix_nano, span.start_time_unix_nano + offset, "{ctx}");
        assert!(event.time_unix_nano <= span.end_time_unix_nano, "{ctx}: event after the span's end");
    }
}

/// The kernel matrix keeps both cores busy for minutes (a release build, then qemu): the other
/// tests of this binary wait for it rather than race it against their start-up timeouts.
static HOST: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by each native test: many at once, never beside the matrix.
fn native_test() -> std::sync::RwLockReadGuard<'static, ()> {
    HOST.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn every_scenario_reaches_the_collector_exactly(protocol: Protocol) {
    require_root();
    let _host = native_test();
    let receiver = Receiver::start(protocol);
    // One protocol's run shows the caller's msgvec pointer, the other keeps the default (hidden).
    let msgvec_shown = protocol == Protocol::Grpc;
    let sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
        ("OTEL_SENDMMSG_MSGVEC_ADDRESS", if msgvec_shown { "true" } else { "false" }),
        // Nothing is exported on schedule: every span must come from the shutdown flush.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
        ("OTEL_SERVICE_NAME", "sendmmsg-e2e"),
    ]);
    let noise = Noise::start();

    let scenarios: Vec<&str> = EXPECTED.iter().map(|e| e.scenario).collect();
    let before = unix_nanos();
    let calls = run_workload(&scenarios);
    let after = unix_nanos();
    assert_eq!(calls.len(), EXPECTED.len(), "one call per scenario: {calls:#?}");
    std::thread::sleep(std::time::Duration::from_millis(300)); // some noise on either side
    let noise_pid = noise.pid();
    drop(noise);

    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "sidecar exited with {}:\n{}", stopped.status, stopped.stderr);

    let pid = calls[0].pid;
    let spans = receiver.spans_of(pid);
    assert_eq!(spans.len(), calls.len(), "exactly one span per call of pid {pid}:\n{}", stopped.stderr);
    for ((call, expected), span) in calls.iter().zip(EXPECTED).zip(&spans) {
        assert_eq!(call.scenario, expected.scenario);
        check_span(call, expected, span, (before, after), msgvec_shown);
        assert_eq!(int_attr(&span.resource, "process.pid"), Some(pid as i64), "the caller's own resource");
    }
    // The other process was traced too (so the exact count above is not luck of an idle host).
    assert!(!receiver.spans_of(noise_pid).is_empty(), "the noise process's calls were not traced");
    assert!(stopped.stderr.contains("ring_buffer_full=0"), "{}", stopped.stderr);
}

#[test]
fn every_scenario_reaches_a_grpc_collector_exactly() {
    every_scenario_reaches_the_collector_exactly(Protocol::Grpc);
}

#[test]
fn every_scenario_reaches_an_http_protobuf_collector_exactly() {
    every_scenario_reaches_the_collector_exactly(Protocol::HttpProtobuf);
}

#[test]
fn without_a_collector_each_call_is_one_console_line() {
    require_root();
    let _host = native_test();
    let sidecar = Sidecar::start(&[]);
    let calls = run_workload(&["udp4", "refused-mid-batch", "bad-fd"]);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let pid = format!("process.pid={}", calls[0].pid);
    let lines: Vec<&str> = stopped.stdout.lines().filter(|l| l.split(' ').any(|w| w == pid)).collect();
    assert_eq!(lines.len(), 3, "{}", stopped.stdout);
    assert!(
        lines[0].contains(" OK ") && lines[0].contains(" sendmmsg.sent=8 ") && lines[0].contains(" events=8"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains(" ERROR ") && lines[1].contains(" error.type=EMSGSIZE "), "{}", lines[1]);
    assert!(lines[2].contains(" ERROR ") && lines[2].contains(" error.type=EBADF "), "{}", lines[2]);
    assert!(lines.iter().all(|l| !l.contains("sendmmsg.msgvec=")), "the pointer is hidden by default");
    assert!(stopped.stderr.contains("spans go to stdout"), "{}", stopped.stderr);
}

/// A process that calls once and execs at once into a program that calls once and exits: each
/// call's line names its own program's service and executable, from the identity the kernel
/// captured at the call (both programs are gone before any `/proc` read could find them). In
/// the 6.1 matrix too, for every family.
#[test]
fn programs_gone_right_after_their_call_are_named_by_their_own_environment() {
    require_root();
    let _host = native_test();
    let sidecar = Sidecar::start(&[]);
    let calls = workload_calls(
        std::process::Command::new(WORKLOAD)
            .arg("udp4-then-exec")
            .env("OTEL_SERVICE_NAME", "before-exec")
            .env("WORKLOAD_EXEC_ENV_OTEL_SERVICE_NAME", "after-exec"),
    );
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(calls.len(), 2);
    let pid = format!("process.pid={}", calls[0].pid);
    let mut lines: Vec<&str> = stopped.stdout.lines().filter(|l| l.split(' ').any(|w| w == pid)).collect();
    // Each line starts with the span's start time (RFC 3339, UTC): in call order when sorted.
    lines.sort();
    assert_eq!(lines.len(), 2, "{}\n{}", stopped.stdout, stopped.stderr);
    assert!(lines[0].contains(" service.name=before-exec "), "{}\n{}", lines[0], stopped.stderr);
    assert!(lines[1].contains(" service.name=after-exec "), "{}\n{}", lines[1], stopped.stderr);
    assert!(support::summary_count(&stopped.stderr, "identities_captured") >= 2, "{}", stopped.stderr);
}

/// Each family either traces correctly or is refused at start-up with exit code 2 and the
/// kernel's reason; which, must match what the kernel offers.
#[test]
fn each_attach_family_traces_or_is_refused_with_the_reason() {
    require_root();
    let _host = native_test();
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || Path::new("/sys/kernel/tracing/kprobe_events").exists();
    let syscall_tracepoints = Path::new("/sys/kernel/tracing/events/syscalls/sys_enter_sendmmsg").exists();
    for (family, entry_hook, offered) in [
        ("tracepoint", "tracepoint syscalls:sys_enter_sendmmsg", Some(syscall_tracepoints)),
        // The test kernels are x86-64.
        ("kprobe", "kprobe __x64_sys_sendmmsg", Some(kprobes)),
        // Whether trampolines load is only known by trying (this machine refuses them: EPERM).
        ("fentry", "fentry __sys_sendmmsg", None),
    ] {
        match Sidecar::try_start(&[("OTEL_SENDMMSG_ATTACH", family)]) {
            Ok(sidecar) => {
                assert_ne!(
                    offered,
                    Some(false),
                    "{family} started on a kernel without it:\n{}",
                    sidecar.stderr()
                );
                let calls = run_workload(&["udp4"]);
                let stopped = sidecar.stop();
                assert!(stopped.status.success(), "{family}: {}", stopped.stderr);
                let chosen = "entry/exit hooks: ";
                assert!(
                    stopped.stderr.contains(chosen) && stopped.stderr.contains(entry_hook),
                    "{family}: {}",
                    stopped.stderr
                );
                let pid = format!("process.pid={}", calls[0].pid);
                let lines: Vec<&str> =
                    stopped.stdout.lines().filter(|l| l.split(' ').any(|w| w == pid)).collect();
                assert_eq!(lines.len(), 1, "{family}: {}", stopped.stdout);
                assert!(
                    lines[0].contains(" sendmmsg.sent=8 ") && lines[0].contains(" events=8"),
                    "{family}: {}",
                    lines[0]
                );
            }
            Err((status, stderr)) => {
                assert_ne!(offered, Some(true), "{family} refused on a kernel that offers it:\n{stderr}");
                assert_eq!(status.code(), Some(2), "{family}: {stderr}");
                let refusal = format!("OTEL_SENDMMSG_ATTACH={family}: this kernel cannot give it: ");
                assert!(stderr.contains(&refusal), "{family}: {stderr}");
            }
        }
    }
}

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

/// What Debian's 6.1 gives each family: fentry/fexit trampolines load under qemu, no
/// `sock:sock_send_length`.
const CHOICES_ON_DEBIAN_6_1: [Choice; 4] = [AUTO_TAKES_FENTRY, FENTRY, KPROBE, TRACEPOINT_BEFORE_6_3];
/// Debian 11's 5.10 gives each family the same as 6.1 (its BTF has every field the identity
/// capture reads, and fentry/fexit load).
const CHOICES_ON_DEBIAN_5_10: [Choice; 4] = [AUTO_TAKES_FENTRY, FENTRY, KPROBE, TRACEPOINT_BEFORE_6_3];
/// Debian 12's 6.12 has `sock:sock_send_length`: the tracepoint family needs no other hook.
const CHOICES_ON_DEBIAN_6_12: [Choice; 4] = [
    AUTO_TAKES_FENTRY,
    FENTRY,
    KPROBE,
    Choice {
        family: "tracepoint",
        entry_exit: SYSCALL_TRACEPOINTS,
        message: "tracepoint sock:sock_send_length",
        passed_over: &[
            "not trying fexit inet_sendmsg/inet6_sendmsg/unix_dgram_sendmsg, kretprobe sock_sendmsg",
        ],
    },
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
/// Prints `BLOCKED <run> ...`.
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
    {SIDECAR} >/tmp/spans 2>/tmp/blog &
  spid=$!; i=0
  while ! grep -q "ready:" /tmp/blog && kill -0 $spid 2>/dev/null && [ $i -lt 600 ]; do
    sleep 0.2; i=$((i+1))
  done
  echo go | {WORKLOAD} blocked-{BLOCKED_IN_GUEST} >/tmp/calls &
  wpid=$!; wait $wpid; echo "BLOCKED $1 workload exit=$?"
  kill -INT $spid; wait $spid; echo "BLOCKED $1 sidecar exit=$?"
  echo "BLOCKED $1 calls=$(grep -c . /tmp/calls) spans=$(grep -c "process.pid=$wpid " /tmp/spans)"
  grep -e "stopped: " -e "kretprobe __x64_sys_sendmmsg" -e "removed the kretprobe" /tmp/blog \
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

/// The end-to-end tests above that every family must pass on each kernel of the matrix,
/// exactly as they pass here.
const TESTS_PER_FAMILY: [&str; 4] = [
    "every_scenario_reaches_a_grpc_collector_exactly",
    "every_scenario_reaches_an_http_protobuf_collector_exactly",
    "without_a_collector_each_call_is_one_console_line",
    "programs_gone_right_after_their_call_are_named_by_their_own_environment",
];

/// The kernel matrix: the tests above, inside Debian's 5.10, 6.1 and 6.12 kernels (kprobes and
/// BTF; `sock:sock_send_length` on 6.12 only; `sock_sendmsg` off sendmmsg's path on all three),
/// by running this very test binary in a qemu guest, one boot per attach family, in turn. Each
/// boot first starts the sidecar alone to check what the family chose (`CHOICES_ON_DEBIAN_*`),
/// then runs
/// `TESTS_PER_FAMILY` with `OTEL_SENDMMSG_ATTACH` set to the family; the auto boot also runs
/// `each_attach_family_traces_or_is_refused_with_the_reason`.
///
/// The guest runs the release builds of the sidecar and the workload (built here first, a no-op
/// when up to date), placed where this binary looks for them (`SIDECAR`, `WORKLOAD`): software
/// emulation is several times slower than the host, and there a debug sidecar takes ~13 s to
/// start, a release one ~5 s. The four boots take about 2 minutes on 2 cores (with the debug
/// binaries, ~5); each is bounded at 5 minutes.
#[test]
fn the_same_tests_pass_on_debian_6_1_for_every_family_it_offers() {
    the_same_tests_pass_on(support::qemu::Debian::V6_1, &CHOICES_ON_DEBIAN_6_1);
}

#[test]
fn the_same_tests_pass_on_debian_6_12_for_every_family_it_offers() {
    the_same_tests_pass_on(support::qemu::Debian::V6_12, &CHOICES_ON_DEBIAN_6_12);
}

#[test]
fn the_same_tests_pass_on_debian_5_10_for_every_family_it_offers() {
    the_same_tests_pass_on(support::qemu::Debian::V5_10, &CHOICES_ON_DEBIAN_5_10);
}

fn the_same_tests_pass_on(debian: support::qemu::Debian, choices: &[Choice]) {
    require_root();
    let _host = HOST.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let binaries = support::qemu::release_binaries("otel-sendmmsg");
    let (sidecar, workload) = (&binaries["otel-sendmmsg"], &binaries["sendmmsg-workload"]);
    let tests = std::env::current_exe().unwrap();
    let guest = support::qemu::Guest::debian(
        debian,
        &[(&tests, &tests), (sidecar, Path::new(SIDECAR)), (workload, Path::new(WORKLOAD))],
    );
    let kernel = guest.kernel_release();
    for &Choice { family, entry_exit, message, passed_over } in choices {
        let mut tests_here = TESTS_PER_FAMILY.to_vec();
        if family == "auto" {
            tests_here.push("each_attach_family_traces_or_is_refused_with_the_reason");
        }
        let script = format!(
            r#"echo "KERNEL $(uname -r)"
export OTEL_SENDMMSG_ATTACH={family}
NO_COLOR=1 RUST_LOG=info OTEL_TRACES_EXPORTER=none {SIDECAR} >/dev/null 2>/tmp/log &
pid=$!; i=0
while ! grep -q "ready:" /tmp/log && kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do
  sleep 0.2; i=$((i+1))
done
kill -INT $pid 2>/dev/null; wait $pid; echo "SIDECAR exit=$?"
sed "s/^/LOG /" /tmp/log
{blocked}
{tests} --exact {names} --test-threads=1 2>&1
"#,
            tests = tests.display(),
            names = tests_here.join(" "),
            blocked = if family == "kprobe" { blocked_runs_script() } else { String::new() },
        );
        let run = guest.run(&script, std::time::Duration::from_secs(300));
        let console = run.console.replace('\r', "");
        eprintln!("{} guest, OTEL_SENDMMSG_ATTACH={family}, {:?}:\n{console}", debian.name(), run.duration);
        let ctx = format!("OTEL_SENDMMSG_ATTACH={family} on {kernel}");
        assert!(console.contains(&format!("KERNEL {kernel}")), "{ctx}: the guest did not boot:\n{console}");
        assert!(console.contains("SIDECAR exit=0"), "{ctx}: the sidecar did not start and stop cleanly");
        let log = |text: &str| console.lines().any(|l| l.starts_with("LOG ") && l.contains(text));
        assert!(
            log(&format!("entry/exit hooks: {entry_exit} (self-test passed)")),
            "{ctx}: entry/exit hooks"
        );
        assert!(
            log(&format!("per-message hook: {message} (self-test saw every message)")),
            "{ctx}: per message"
        );
        for reason in passed_over {
            assert!(log(reason), "{ctx}: no \"{reason}\"");
        }
        // Each kernel's BTF has every field the identity capture reads (kernfs_node.parent under
        // the name that kernel gives it), and its exec hook attaches.
        assert!(log("process identities are captured in the kernel"), "{ctx}: identity capture");
        let summary = console.lines().find(|l| l.starts_with("LOG ") && l.contains("stopped: "));
        let summary = summary.unwrap_or_else(|| panic!("{ctx}: no closing summary"));
        if family == "kprobe" {
            // The per-message kretprobes see every send of the host: as many at once as allowed.
            let kretprobes = ["inet_sendmsg", "inet6_sendmsg", "unix_dgram_sendmsg"]
                .map(|f| format!("kretprobe {f} (maxactive 4096)"))
                .join(", ");
            assert!(log(&format!("(self-test saw every message): {kretprobes}")), "{ctx}: maxactive");
            assert!(summary.contains(" kretprobe_missed=0 "), "{ctx}: {summary}");
            // A killed sidecar's four kretprobes (the exit and three per-message) stay in
            // tracefs until the next sidecar starts; a stopped one leaves none.
            let events = |key: &str| console.lines().find_map(|l| l.strip_prefix(key)?.parse::<u64>().ok());
            assert_eq!(events("EVENTS killed="), Some(4), "{ctx}: events of the killed sidecar");
            assert_eq!(events("EVENTS after="), Some(0), "{ctx}: events left by a stopped sidecar");
            let (calls, spans, log) = blocked_run(&console, "sized");
            let removed = log.iter().filter(|l| l.contains("removed the kretprobe event")).count();
            assert_eq!(removed, 4, "{ctx}: the killed sidecar's events: {log:#?}");
            let count = |log: &[&str], key: &str| support::summary_count(&log.join("\n"), key);
            assert_eq!(calls, BLOCKED_IN_GUEST as u64 + 1, "{ctx}: sized: {log:#?}");
            assert!(
                log.iter().any(|l| l.contains("kretprobe __x64_sys_sendmmsg (maxactive 4096)")),
                "{log:#?}"
            );
            // Every call inside at once came back: a span each, nothing missed.
            assert_eq!(spans, calls, "{ctx}: sized: {log:#?}");
            for key in ["kretprobe_missed", "exit_missed", "exit_without_entry", "inflight"] {
                assert_eq!(count(&log, key), 0, "{ctx}: sized: {key}: {log:#?}");
            }
            // maxactive 10 (the map's size, the kernel's default here): the kernel counts each
            // return it cannot catch, and every call is a span or counted.
            let (calls, spans, log) = blocked_run(&console, "small");
            assert!(
                log.iter().any(|l| l.contains("kretprobe __x64_sys_sendmmsg (maxactive 10)")),
                "{log:#?}"
            );
            assert_eq!(count(&log, "kretprobe_missed"), calls - 10, "{ctx}: small: {log:#?}");
            let accounted = spans + count(&log, "inflight_full") + count(&log, "exit_missed");
            assert_eq!(accounted, calls, "{ctx}: small: {log:#?}");
            // The old way, aya's kprobe PMU, allows the kernel's default: the returns beyond
            // it are missed, found as exit_missed once the threads are gone.
            let (calls, spans, log) = blocked_run(&console, "default");
            eprintln!("kprobe PMU fallback: {spans} spans of {calls} calls blocked at once");
            assert!(log.iter().any(|l| l.contains("kretprobe __x64_sys_sendmmsg (kprobe PMU")), "{log:#?}");
            assert!(spans < calls, "{ctx}: default maxactive: {spans} spans of {calls} calls: {log:#?}");
            assert_eq!(spans + count(&log, "exit_missed"), calls, "{ctx}: default: {log:#?}");
        } else {
            assert!(summary.contains(" kretprobe_missed=0 "), "{ctx}: {summary}");
        }
        for name in &tests_here {
            assert!(console.contains(&format!("test {name} ... ok")), "{ctx}: {name} did not pass");
        }
        let summary = format!("test result: ok. {} passed; 0 failed", tests_here.len());
        assert!(console.contains(&summary), "{ctx}: not every test ran and passed");
        assert_eq!(run.exit_code, Some(0), "{ctx}: the test binary failed, or the guest timed out");
    }
}
