//! End to end, as root: the kernel gives a pid again to another process, made to happen on
//! purpose (`sendmmsg-workload at-pid`, clone3 with set_tid). Each process's spans go under its
//! own resource: the new process never inherits what the sidecar knew of the old one.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use support::*;

/// A pid no process has now: one that was just used and released (pids are handed out in
/// increasing order, so it is not given again soon by itself).
fn free_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("running true");
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// One `vlen-zero` call from a process that has pid `pid` and names itself `service` with
/// `attributes`, staying `linger_ms` after its call.
fn call_at(pid: u32, service: &str, attributes: &str, linger_ms: u32) -> CallReport {
    let mut command = Command::new(WORKLOAD);
    command
        .args(["at-pid", &pid.to_string(), "vlen-zero"])
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_RESOURCE_ATTRIBUTES", attributes)
        .env("WORKLOAD_LINGER_MS", linger_ms.to_string());
    let calls = workload_calls(&mut command);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].pid, pid, "the workload did not get the pid asked for");
    calls.into_iter().next().unwrap()
}

/// Each owner of a reused pid makes one call and exits at once (`linger_ms` 0: gone before any
/// `/proc` read, so only the kernel's capture can tell them apart) or stays a while (read and
/// cached under the pid first).
fn check_reuse(linger_ms: u32) {
    require_root();
    let _one = one_sidecar_at_a_time();
    let receiver = Receiver::start(Protocol::Grpc);
    let sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    // The first process lives long enough to be read and cached under its pid; the second,
    // started at the same pid right after it exits, must be read anew.
    let pid = free_pid();
    call_at(pid, "first-owner", "service.namespace=one,deployment.environment.name=prod%20eu", linger_ms);
    call_at(pid, "second-owner", "service.namespace=two,service.name=not-this", linger_ms);

    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.spans_of(pid).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let mut spans = receiver.spans_of(pid);
    assert_eq!(spans.len(), 2, "one span per process at pid {pid}: {spans:#?}\n{}", stopped.stderr);
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    // Each its own, as its own SDK would read it: percent-decoded, OTEL_SERVICE_NAME over
    // `service.name`, nothing of the other process's.
    let owners = [("first-owner", "one", Some("prod eu")), ("second-owner", "two", None)];
    for (span, (service, namespace, environment)) in spans.iter().zip(owners) {
        let resource = &span.resource;
        assert_eq!(str_attr(resource, "service.name"), Some(service), "{resource:#?}");
        assert_eq!(str_attr(resource, "service.namespace"), Some(namespace), "{resource:#?}");
        assert_eq!(str_attr(resource, "deployment.environment.name"), environment, "{resource:#?}");
        assert_eq!(int_attr(resource, "process.pid"), Some(pid as i64), "{resource:#?}");
    }
}

#[test]
fn a_reused_pid_never_inherits_the_old_process_identity() {
    check_reuse(1500);
}

#[test]
fn owners_of_a_reused_pid_gone_at_once_keep_their_own_identity() {
    check_reuse(0);
}
