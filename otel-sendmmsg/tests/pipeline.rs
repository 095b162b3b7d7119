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

fn every_scenario_reaches_the_collector_exactly(protocol: Protocol) {
    require_root();
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
/// the kernel matrix too, for every family.
#[test]
fn programs_gone_right_after_their_call_are_named_by_their_own_environment() {
    require_root();
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
