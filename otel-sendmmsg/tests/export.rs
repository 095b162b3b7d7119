//! End to end, as root: what the OTLP export makes of real calls. Each process's spans arrive
//! under a resource of its own (its service, executable, pid, container); message child spans
//! hang under their call; and with the collector down every span is still accounted for.

mod support;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use support::*;

fn sidecar(receiver: &Receiver, protocol: Protocol, extra: &[(&str, &str)]) -> Sidecar {
    let mut vars = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    vars.extend_from_slice(extra);
    Sidecar::start(&vars)
}

/// Every span of `pid` came with this resource.
fn check_resource(spans: &[ReceivedSpan], pid: u32, service: &str) {
    assert!(!spans.is_empty(), "no spans of pid {pid}");
    for span in spans {
        let resource = &span.resource;
        assert_eq!(str_attr(resource, "service.name"), Some(service), "pid {pid}: {resource:#?}");
        assert_eq!(int_attr(resource, "process.pid"), Some(pid as i64), "{resource:#?}");
        assert_eq!(str_attr(resource, "process.executable.name"), Some("sendmmsg-workload"), "{resource:#?}");
        // The sidecar's own resource attributes are under every process's.
        assert_eq!(str_attr(resource, "host.name"), Some("export-test-host"), "{resource:#?}");
        assert_eq!(str_attr(resource, "telemetry.sdk.language"), Some("rust"), "{resource:#?}");
    }
}

#[test]
fn each_process_is_exported_under_its_own_service() {
    require_root();
    // Over HTTP/protobuf (the other tests use gRPC): the async client, one request per process.
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let sidecar = sidecar(
        &receiver,
        Protocol::HttpProtobuf,
        &[
            // Neither names a traced process's service.
            ("OTEL_SERVICE_NAME", "the-sidecar"),
            ("OTEL_RESOURCE_ATTRIBUTES", "host.name=export-test-host,service.name=not-this-either"),
        ],
    );
    receiver.wait_until_draining();
    let named = loop_workload(2.0, 2, 20, &[("OTEL_SERVICE_NAME", "svc-a")]).spawn().unwrap();
    let unnamed = loop_workload(2.0, 2, 20, &[]).env_remove("OTEL_SERVICE_NAME").spawn().unwrap();
    let (named, unnamed) = (loop_report(named), loop_report(unnamed));
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    for (report, service) in [(&named, "svc-a"), (&unnamed, "sendmmsg-workload")] {
        let spans = receiver.spans_of(report.pid);
        assert_eq!(
            spans.len() as u64,
            report.calls,
            "one span per call of pid {}:\n{}",
            report.pid,
            stopped.stderr
        );
        check_resource(&spans, report.pid, service);
    }
}

#[test]
fn message_child_spans_hang_under_their_call() {
    require_root();
    let receiver = Receiver::start(Protocol::Grpc);
    let sidecar = sidecar(&receiver, Protocol::Grpc, &[("OTEL_SENDMMSG_MESSAGE_DETAIL", "spans")]);
    let calls = run_workload(&["refused-mid-batch"]);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let spans = receiver.spans_of(calls[0].pid);
    assert_eq!(spans.len(), 1, "the call's span (its children carry no process.pid):\n{}", stopped.stderr);
    let call = &spans[0];
    assert_eq!(call.span.name, "sendmmsg");
    assert!(call.span.events.is_empty(), "messages are child spans, not events");
    let mut children: Vec<ReceivedSpan> =
        receiver.spans().into_iter().filter(|s| s.span.parent_span_id == call.span.span_id).collect();
    children.sort_by_key(|s| s.int("sendmmsg.message.index"));
    assert_eq!(children.len(), 3, "one child per message tried: {children:#?}");
    let mut previous_end = call.span.start_time_unix_nano;
    for (index, child) in children.iter().enumerate() {
        let ctx = format!("child {index}: {:#?}", child.span);
        assert_eq!(child.span.name, "sendmmsg.message", "{ctx}");
        assert_eq!(child.span.kind, SpanKind::Internal as i32, "{ctx}");
        assert_eq!(child.span.trace_id, call.span.trace_id, "{ctx}");
        assert_ne!(child.span.span_id, call.span.span_id, "{ctx}");
        assert_eq!(child.int("sendmmsg.message.index"), Some(index as i64), "{ctx}");
        assert_eq!(child.resource, call.resource, "{ctx}: the call's process");
        // Each from the previous one's end (the call's start for the first), inside the call.
        assert_eq!(child.span.start_time_unix_nano, previous_end, "{ctx}");
        assert!(child.span.end_time_unix_nano <= call.span.end_time_unix_nano, "{ctx}");
        previous_end = child.span.end_time_unix_nano;
        let status = child.span.status.as_ref().map_or(StatusCode::Unset as i32, |s| s.code);
        if index < 2 {
            assert_eq!(status, StatusCode::Unset as i32, "{ctx}");
            assert_eq!(child.int("sendmmsg.message.bytes"), Some([10, 20][index]), "{ctx}");
            assert_eq!(child.str("error.type"), None, "{ctx}");
        } else {
            assert_eq!(status, StatusCode::Error as i32, "{ctx}");
            assert_eq!(child.str("error.type"), Some("EMSGSIZE"), "{ctx}");
        }
    }
    // Children are spans: counted, and here all exported.
    let total = summary_spans(&stopped.stderr);
    assert_eq!(summary_count(&stopped.stderr, "exported"), total, "{}", stopped.stderr);
    assert!(total >= 4, "{}", stopped.stderr);
}

/// A cgroup v2 directory named as Docker's systemd driver names a container's, removed (with
/// its parent) when dropped.
struct ContainerCgroup {
    parent: PathBuf,
    scope: PathBuf,
    id: String,
}

impl ContainerCgroup {
    fn new() -> ContainerCgroup {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let id = format!("{:016x}{:016x}{:016x}{:016x}", nanos, std::process::id(), !nanos, 0x5e4d3c2b1a_u64);
        let parent = otel_sendmmsg::cgroup::v2_mount()
            .join(format!("otel-sendmmsg-export-test-{}", std::process::id()));
        let scope = parent.join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&scope).expect("creating a test cgroup under the cgroup v2 mount");
        ContainerCgroup { parent, scope, id }
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.scope);
        let _ = std::fs::remove_dir(&self.parent);
    }
}

#[test]
fn a_process_in_a_container_cgroup_carries_its_container_id() {
    require_root();
    let receiver = Receiver::start(Protocol::Grpc);
    let cgroup = ContainerCgroup::new();
    assert_eq!(cgroup.id.len(), 64);
    let sidecar =
        sidecar(&receiver, Protocol::Grpc, &[("OTEL_RESOURCE_ATTRIBUTES", "host.name=export-test-host")]);
    receiver.wait_until_draining();
    let script =
        format!("echo $$ > {} && exec {WORKLOAD} loop 2 2 20", cgroup.scope.join("cgroup.procs").display());
    let inside =
        loop_report(Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap());
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let spans = receiver.spans_of(inside.pid);
    assert_eq!(spans.len() as u64, inside.calls, "{}", stopped.stderr);
    check_resource(&spans, inside.pid, "sendmmsg-workload");
    for span in &spans {
        assert_eq!(
            str_attr(&span.resource, "container.id"),
            Some(cgroup.id.as_str()),
            "{:#?}",
            span.resource
        );
    }
}

#[test]
fn with_the_collector_down_every_span_is_counted_and_the_sidecar_stops() {
    require_root();
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let endpoint = format!("http://{closed}");
    let mut sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "3000"),
    ]);
    let calls = run_workload(&["udp4"; 20]);
    assert_eq!(calls.len(), 20);
    // Time for exports to be tried and fail while it runs.
    std::thread::sleep(Duration::from_secs(2));
    assert!(sidecar.is_running(), "the sidecar exited:\n{}", sidecar.stderr());
    let stopping = Instant::now();
    let stopped = sidecar.stop();
    let took = stopping.elapsed();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    // One export in progress and the flush, each bounded by OTEL_BSP_EXPORT_TIMEOUT.
    assert!(took < Duration::from_secs(15), "stopping took {took:?}:\n{}", stopped.stderr);

    let spans = summary_spans(&stopped.stderr);
    let exported = summary_count(&stopped.stderr, "exported");
    let queue_full = summary_count(&stopped.stderr, "export_queue_full");
    let failed = summary_count(&stopped.stderr, "export_failed");
    assert!(spans >= 20, "{}", stopped.stderr);
    assert_eq!(exported, 0, "nothing can be exported:\n{}", stopped.stderr);
    assert!(queue_full > 0, "20 calls at once overflow a queue of 4:\n{}", stopped.stderr);
    assert!(failed > 0, "{}", stopped.stderr);
    assert_eq!(exported + queue_full + failed, spans, "every span accounted for:\n{}", stopped.stderr);
}

/// Starts a sidecar exporting to a collector that never answers, with exports under way (the
/// schedule sends them at once and each waits out its long timeout).
fn sidecar_with_a_silent_collector(
    protocol: Protocol,
    shutdown_timeout: &str,
) -> (Sidecar, Vec<CallReport>, SharedDir) {
    require_root();
    let silent = SilentCollector::start();
    // As deployed: unprivileged, with exactly its capabilities.
    let dir = SharedDir::new(&format!("silent-{protocol:?}-{shutdown_timeout}"));
    let sidecar = start_as_nobody(
        &dir,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", silent.endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            // Far longer than Kubernetes' grace period: only the shutdown deadline can end them.
            ("OTEL_BSP_EXPORT_TIMEOUT", "120000"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "120000"),
            ("OTEL_SENDMMSG_SHUTDOWN_TIMEOUT", shutdown_timeout),
        ],
    );
    let calls = run_workload(&["udp4"; 5]);
    // Time for the exports to be sent and to hang.
    std::thread::sleep(Duration::from_secs(1));
    (sidecar, calls, dir)
}

/// Every span the summary counts was neither exported nor silently lost.
fn assert_all_counted_as_failed(stopped: &Stopped, calls: usize) {
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let spans = summary_spans(&stopped.stderr);
    assert!(spans >= calls as u64, "{}", stopped.stderr);
    assert_eq!(summary_count(&stopped.stderr, "exported"), 0, "{}", stopped.stderr);
    let dropped =
        summary_count(&stopped.stderr, "export_failed") + summary_count(&stopped.stderr, "export_queue_full");
    assert_eq!(dropped, spans, "every span accounted for:\n{}", stopped.stderr);
}

#[test]
fn a_collector_that_never_answers_cannot_hold_the_shutdown_past_its_deadline() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let (sidecar, calls, _dir) = sidecar_with_a_silent_collector(protocol, "3s");
        let stopping = Instant::now();
        let stopped = sidecar.stop();
        let took = stopping.elapsed();
        // 3 s, and the process's own exit; without the deadline the exports' 120 s timeouts.
        assert!(took < Duration::from_secs(10), "{protocol:?}: stopping took {took:?}:\n{}", stopped.stderr);
        assert!(stopped.stderr.contains("(within 3s; a second signal stops at once)"), "{}", stopped.stderr);
        assert_all_counted_as_failed(&stopped, calls.len());
    }
}

#[test]
fn a_second_signal_stops_at_once_with_the_summary() {
    let (sidecar, calls, _dir) = sidecar_with_a_silent_collector(Protocol::Grpc, "10m");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sidecar.pid() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_secs(1));
    let stopping = Instant::now();
    let stopped = sidecar.stop(); // the second SIGTERM
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "stopping took {took:?}:\n{}", stopped.stderr);
    assert!(stopped.stderr.contains("stopping at once (second signal)"), "{}", stopped.stderr);
    assert_all_counted_as_failed(&stopped, calls.len());
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, which the sidecar cannot lift without
/// CAP_SYS_RESOURCE: there, under a small limit, start-up stops saying which limit and how to lift
/// it; from 5.11 on the limit does not matter and it traces.
#[test]
fn the_memlock_limit_stops_start_up_only_before_5_11_and_is_named() {
    require_root();
    let _one = one_sidecar_at_a_time();
    let dir = SharedDir::new("memlock");
    let receiver = Receiver::start(Protocol::Grpc);
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ];
    let started = try_start_as_nobody(&dir, &vars, 64 << 10);
    if otel_sendmmsg::probes::load::maps_charged_to_memlock() {
        let (status, log) = started.err().expect("maps charged to a 64 KiB limit cannot all be created");
        assert_eq!(status.code(), Some(i32::from(otel_sendmmsg::cli::EXIT_ENVIRONMENT)), "{log}");
        assert!(log.contains("RLIMIT_MEMLOCK, which is 64 KiB for the sidecar"), "{log}");
        assert!(log.contains("--ulimit memlock=-1") && log.contains("CAP_SYS_RESOURCE"), "{log}");
    } else {
        one_call_arrives(started.unwrap_or_else(|(status, log)| panic!("{status}:\n{log}")), &receiver);
    }
}

/// Debian's and Ubuntu's kernels refuse perf events, which tracepoints and kprobes attach through,
/// to all but CAP_SYS_ADMIN when `kernel.perf_event_paranoid` is above 2 (they ship 3): the
/// sidecar as nobody with its documented capabilities is refused the tracepoint family there,
/// and says which setting refused it and the ways out; at 2 it traces. Where the level is above
/// 2 (Debian's kernels in the kernel matrix), it is set to 2 for the second half and put back.
#[test]
fn perf_events_kept_from_nobody_are_named_by_the_setting_that_keeps_them() {
    require_root();
    let _one = one_sidecar_at_a_time();
    let dir = SharedDir::new("paranoid");
    let receiver = Receiver::start(Protocol::Grpc);
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SENDMMSG_ATTACH", "tracepoint"),
    ];
    let setting = otel_sendmmsg::probes::kernel::PERF_EVENT_PARANOID;
    let level = otel_sendmmsg::probes::kernel::perf_event_paranoid().expect(setting);
    let debian = std::fs::read_to_string("/proc/version").unwrap().contains("Debian");
    let restore = (level > 2).then(|| PutBack(setting, level.to_string()));
    if level > 2 {
        match try_start_as_nobody(&dir, &vars, libc::RLIM_INFINITY) {
            Err((status, log)) => {
                assert_eq!(status.code(), Some(i32::from(otel_sendmmsg::cli::EXIT_CONFIG)), "{log}");
                let why = format!("Permission denied (os error 13); kernel.perf_event_paranoid is {level} ");
                assert!(
                    log.contains("OTEL_SENDMMSG_ATTACH=tracepoint: this kernel cannot give it: "),
                    "{log}"
                );
                assert!(log.contains(&why) && log.contains("sysctl kernel.perf_event_paranoid=2"), "{log}");
            }
            // Upstream's kernels let CAP_PERFMON open perf events at any level.
            Ok(sidecar) => {
                assert!(
                    !debian,
                    "Debian's kernel let nobody open perf events at perf_event_paranoid {level}"
                );
                assert!(sidecar.stop().status.success());
            }
        }
        std::fs::write(setting, "2").unwrap();
    }
    let sidecar = try_start_as_nobody(&dir, &vars, libc::RLIM_INFINITY)
        .unwrap_or_else(|(status, log)| panic!("refused at perf_event_paranoid 2 ({status}):\n{log}"));
    assert!(!sidecar.stderr().contains("perf_event_paranoid"), "{}", sidecar.stderr());
    one_call_arrives(sidecar, &receiver);
    drop(restore);
}

/// A call of the workload reaches `receiver` through `sidecar`, which then stops cleanly.
fn one_call_arrives(sidecar: Sidecar, receiver: &Receiver) {
    let calls = run_workload(&["udp4"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.spans_of(calls[0].pid).is_empty() {
        assert!(Instant::now() < deadline, "the call never arrived:\n{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sidecar.stop().status.success());
}

/// Writes a setting's old value back when dropped, also when the test fails.
struct PutBack(&'static str, String);

impl Drop for PutBack {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// The headers configured for each signal reach the collector with every request, over both
/// protocols: the exporters are built from the settings' values (percent-decoded), the signal's
/// own headers winning over the generic ones.
#[test]
fn each_signals_headers_reach_the_collector() {
    require_root();
    let _one = one_sidecar_at_a_time();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = Receiver::start(protocol);
        let generic = format!("{TEST_HEADER}=generic%20value");
        let metrics = format!("{TEST_HEADER}=metrics-only");
        let sidecar = sidecar(
            &receiver,
            protocol,
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", generic.as_str()),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", metrics.as_str()),
                ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
            ],
        );
        receiver.wait_until_draining();
        let stopped = sidecar.stop();
        assert!(stopped.status.success(), "{}", stopped.stderr);
        let seen = receiver.test_headers();
        let of = |signal: &str| -> Vec<Option<String>> {
            seen.iter().filter(|(s, _)| *s == signal).map(|(_, v)| v.clone()).collect()
        };
        let (traces, metrics) = (of("traces"), of("metrics"));
        assert!(!traces.is_empty() && !metrics.is_empty(), "{protocol:?}: {seen:?}");
        assert!(traces.iter().all(|v| v.as_deref() == Some("generic value")), "{protocol:?}: {traces:?}");
        // The span exporter says what it is, as the OTLP specification asks.
        let agents = receiver.user_agents();
        let agents: Vec<_> = agents.iter().filter(|(s, _)| *s == "traces").map(|(_, v)| v).collect();
        assert!(
            agents.iter().all(|v| v.as_deref().is_some_and(|ua| ua.starts_with("otel-sendmmsg/"))),
            "{protocol:?}: {agents:?}"
        );
        assert!(metrics.iter().all(|v| v.as_deref() == Some("metrics-only")), "{protocol:?}: {metrics:?}");
    }
}

/// `OTEL_EXPORTER_OTLP_COMPRESSION` as the receiver sees it on the wire: every request of each
/// signal says the configured encoding (`grpc-encoding`, `content-encoding`), its body decodes
/// as such, and every call's span arrives, over both protocols; the signal's own setting wins.
#[test]
fn compression_is_what_the_receiver_gets_on_the_wire() {
    require_root();
    let _one = one_sidecar_at_a_time();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        for (traces, metrics) in [("gzip", "zstd"), ("zstd", "none")] {
            let receiver = Receiver::start(protocol);
            let sidecar = sidecar(
                &receiver,
                protocol,
                &[
                    ("OTEL_EXPORTER_OTLP_COMPRESSION", traces),
                    ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", metrics),
                    ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
                ],
            );
            let calls = run_workload(&["udp4", "refused-mid-batch", "unix"]);
            receiver.wait_until_draining();
            let stopped = sidecar.stop();
            assert!(stopped.status.success(), "{}", stopped.stderr);
            assert_eq!(receiver.spans_of(calls[0].pid).len(), calls.len(), "{protocol:?} {traces}");
            let seen = receiver.encodings();
            for (signal, expected) in [("traces", traces), ("metrics", metrics)] {
                let encodings: Vec<Option<&str>> =
                    seen.iter().filter(|(s, _)| *s == signal).map(|(_, e)| e.as_deref()).collect();
                let expected = (expected != "none").then_some(expected);
                assert!(!encodings.is_empty(), "{protocol:?}: no {signal} request");
                assert!(encodings.iter().all(|e| *e == expected), "{protocol:?} {signal}: {encodings:?}");
            }
        }
    }
}

/// What a span's resource must say of a process that declared itself.
fn check_declared(
    span: &ReceivedSpan,
    pid: u32,
    service: &str,
    namespace: &str,
    environment: &str,
    exe: &str,
) {
    let resource = &span.resource;
    assert_eq!(str_attr(resource, "service.name"), Some(service), "pid {pid}: {resource:#?}");
    assert_eq!(str_attr(resource, "service.namespace"), Some(namespace), "pid {pid}: {resource:#?}");
    assert_eq!(
        str_attr(resource, "deployment.environment.name"),
        Some(environment),
        "pid {pid}: {resource:#?}"
    );
    assert_eq!(str_attr(resource, "process.executable.name"), Some(exe), "pid {pid}: {resource:#?}");
    assert_eq!(int_attr(resource, "process.pid"), Some(pid as i64), "{resource:#?}");
    assert_eq!(str_attr(resource, "host.name"), Some("export-test-host"), "{resource:#?}");
}

/// Processes that call once and exit at once, and processes that call once and exec another
/// program that calls once and exits, 50 at a time: each is gone long before a `/proc` read
/// could find it, and each span still carries exactly its own program's resource, captured in
/// the kernel at its call.
#[test]
fn processes_gone_right_after_their_call_carry_their_own_resource() {
    require_root();
    let receiver = Receiver::start(Protocol::Grpc);
    let sidecar =
        sidecar(&receiver, Protocol::Grpc, &[("OTEL_RESOURCE_ATTRIBUTES", "host.name=export-test-host")]);
    receiver.wait_until_draining();
    let exec_into = renamed_workload("exec-target");
    const EACH: usize = 25;
    let attributes = |who: &str, i: usize| {
        format!("service.namespace=ns-{who}-{i},deployment.environment.name=env-{who}-{i}")
    };
    let mut children = Vec::new();
    for i in 0..EACH {
        let once = Command::new(WORKLOAD)
            .arg("udp4")
            .env("OTEL_SERVICE_NAME", format!("once-{i}"))
            .env("OTEL_RESOURCE_ATTRIBUTES", attributes("once", i))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let exec = Command::new(WORKLOAD)
            .arg("udp4-then-exec")
            .env("OTEL_SERVICE_NAME", format!("before-exec-{i}"))
            .env("OTEL_RESOURCE_ATTRIBUTES", attributes("before", i))
            .env("WORKLOAD_EXEC_INTO", &*exec_into)
            .env("WORKLOAD_EXEC_ENV_OTEL_SERVICE_NAME", format!("after-exec-{i}"))
            .env("WORKLOAD_EXEC_ENV_OTEL_RESOURCE_ATTRIBUTES", attributes("after", i))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        children.push((i, false, once));
        children.push((i, true, exec));
    }
    let runs: Vec<(usize, bool, Vec<CallReport>)> = children
        .into_iter()
        .map(|(i, exec, child)| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "workload {i} failed");
            let calls = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<CallReport>(l).unwrap())
                .collect();
            (i, exec, calls)
        })
        .collect();
    // Every span reaches the receiver before the sidecar stops.
    let expected: usize = runs.iter().map(|(_, _, calls)| calls.len()).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids: Vec<u32> = runs.iter().map(|(_, _, calls)| calls[0].pid).collect();
    while pids.iter().map(|&pid| receiver.spans_of(pid).len()).sum::<usize>() < expected {
        assert!(Instant::now() < deadline, "not every span arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(summary_count(&stopped.stderr, "identities_captured") >= 3 * EACH as u64, "{}", stopped.stderr);
    assert_eq!(summary_count(&stopped.stderr, "identities_dropped"), 0, "{}", stopped.stderr);

    for (i, exec, calls) in &runs {
        let pid = calls[0].pid;
        let mut spans = receiver.spans_of(pid);
        spans.sort_by_key(|s| s.span.start_time_unix_nano);
        if !exec {
            assert_eq!(spans.len(), 1, "pid {pid}:\n{}", stopped.stderr);
            check_declared(
                &spans[0],
                pid,
                &format!("once-{i}"),
                &format!("ns-once-{i}"),
                &format!("env-once-{i}"),
                "sendmmsg-workload",
            );
            continue;
        }
        assert_eq!((calls.len(), calls[1].pid), (2, pid), "the exec keeps the pid");
        assert_eq!(spans.len(), 2, "pid {pid}:\n{}", stopped.stderr);
        // The call before the exec under the first program, the one after under the second.
        check_declared(
            &spans[0],
            pid,
            &format!("before-exec-{i}"),
            &format!("ns-before-{i}"),
            &format!("env-before-{i}"),
            "sendmmsg-workload",
        );
        check_declared(
            &spans[1],
            pid,
            &format!("after-exec-{i}"),
            &format!("ns-after-{i}"),
            &format!("env-after-{i}"),
            "exec-target",
        );
    }
}

/// A process that enters a container-like cgroup, calls once and exits at once still carries its
/// container.id: the kernel captured its cgroup's name at the call.
#[test]
fn a_process_gone_right_after_its_call_in_a_container_cgroup_carries_its_container_id() {
    require_root();
    let receiver = Receiver::start(Protocol::Grpc);
    let cgroup = ContainerCgroup::new();
    let sidecar =
        sidecar(&receiver, Protocol::Grpc, &[("OTEL_RESOURCE_ATTRIBUTES", "host.name=export-test-host")]);
    receiver.wait_until_draining();
    let script = format!("echo $$ > {} && exec {WORKLOAD} udp4", cgroup.scope.join("cgroup.procs").display());
    let calls =
        workload_calls(Command::new("sh").args(["-c", &script]).env("OTEL_SERVICE_NAME", "in-a-container"));
    assert_eq!(calls.len(), 1);
    let pid = calls[0].pid;
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.spans_of(pid).is_empty() {
        assert!(Instant::now() < deadline, "no span of pid {pid}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The container is gone too before the sidecar stops.
    let container = cgroup.id.clone();
    drop(cgroup);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let spans = receiver.spans_of(pid);
    assert_eq!(spans.len(), 1, "{}", stopped.stderr);
    let resource = &spans[0].resource;
    assert_eq!(str_attr(resource, "service.name"), Some("in-a-container"), "{resource:#?}");
    assert_eq!(str_attr(resource, "process.executable.name"), Some("sendmmsg-workload"), "{resource:#?}");
    assert_eq!(str_attr(resource, "container.id"), Some(container.as_str()), "{resource:#?}");
}
