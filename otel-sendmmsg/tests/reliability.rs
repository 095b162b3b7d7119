//! End to end, as root: hostile or odd callers get correct spans or counted drops, never a
//! leaked in-flight entry, and every loss is counted exactly.

mod support;

use std::process::Command;

use support::*;

fn grpc_sidecar(receiver: &Receiver, extra: &[(&str, &str)]) -> Sidecar {
    let mut vars = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
    ];
    vars.extend_from_slice(extra);
    Sidecar::start(&vars)
}

#[test]
fn hostile_callers_get_correct_spans_and_leave_nothing_in_flight() {
    require_root();
    let receiver = Receiver::start(Protocol::Grpc);
    // Room for the 2000-thread burst: this test is about correctness, the next about loss.
    // Only these callers are traced, so the flood of the test running beside it cannot count.
    let caller = renamed_workload("hostile-caller");
    let sidecar = grpc_sidecar(
        &receiver,
        &[("OTEL_SENDMMSG_RING_BUFFER_BYTES", "32MiB"), ("OTEL_SENDMMSG_COMMS", "hostile-caller")],
    );
    let odd = workload_calls(Command::new(&caller).args([
        "null-msgvec",
        "vlen-over-limit",
        "vlen-zero",
        "bad-msgvec",
    ]));
    let killed = Command::new(&caller).arg("killed-mid-call").output().unwrap();
    let killed: serde_json::Value =
        serde_json::from_slice(&killed.stdout).expect("the killed workload's pid");
    let threads = workload_calls(Command::new(&caller).arg("threads-2000"));
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let spans = receiver.spans_of(odd[0].pid);
    assert_eq!(spans.len(), 4, "{}", stopped.stderr);
    assert_eq!(spans[0].str("sendmmsg.msgvec"), Some("0x0"));
    assert_eq!(spans[0].str("error.type"), Some("EFAULT"));
    let over = &spans[1];
    assert_eq!(over.int("sendmmsg.vlen"), Some(1100), "vlen as passed");
    assert_eq!(over.int("sendmmsg.sent"), Some(1024), "the kernel's limit");
    assert_eq!(over.int("sendmmsg.messages.attempted"), Some(1024));
    assert_eq!(over.int("sendmmsg.bytes"), Some(8 * 1024));
    assert_eq!(over.span.events.len(), 64, "detail for the first 64, counters for all");
    assert_eq!(spans[2].int("sendmmsg.sent"), Some(0));
    assert_eq!(spans[3].str("error.type"), Some("EFAULT"));

    // The thread died inside its call: the kernel still ran the exit hook, with a restart code.
    let killed = receiver.spans_of(killed["pid"].as_u64().unwrap() as u32);
    assert_eq!(killed.len(), 1, "{}", stopped.stderr);
    assert_eq!(killed[0].str("error.type"), Some("ERESTARTSYS"), "{:?}", killed[0].span.attributes);

    let threads_pid = threads[0].pid;
    assert_eq!(threads.len(), 2000);
    assert_eq!(receiver.spans_of(threads_pid).len(), 2000, "{}", stopped.stderr);
    let tids: std::collections::HashSet<i64> =
        receiver.spans_of(threads_pid).iter().map(|s| s.int("thread.id").unwrap()).collect();
    assert_eq!(tids.len(), 2000, "one span per thread, each with its own thread id");

    for key in
        ["ring_buffer_full", "inflight_insert_failed", "stray_messages", "undecodable_records", "inflight"]
    {
        assert_eq!(summary_count(&stopped.stderr, key), 0, "{key}: {}", stopped.stderr);
    }
}

/// A ring buffer far too small for the rate: whatever is lost is counted, exactly.
#[test]
fn a_full_ring_buffer_counts_exactly_the_calls_it_lost() {
    require_root();
    let receiver = Receiver::start(Protocol::Grpc);
    let flood = renamed_workload("ring-flood");
    // Two records fit (the self-test needs that); only this process is traced.
    let sidecar = grpc_sidecar(
        &receiver,
        &[
            ("OTEL_SENDMMSG_RING_BUFFER_BYTES", "8KiB"),
            ("OTEL_SENDMMSG_COMMS", "ring-flood"),
            ("OTEL_SENDMMSG_LOSS_REPORT_INTERVAL", "500ms"),
        ],
    );
    let out = Command::new(&flood).args(["loop", "2", "1"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let calls = report["calls"].as_u64().unwrap();
    let received = receiver.spans_of(report["pid"].as_u64().unwrap() as u32).len() as u64;
    let lost = summary_count(&stopped.stderr, "ring_buffer_full");
    assert!(lost > 0, "the ring buffer never filled: {calls} calls, {received} spans");
    assert_eq!(received + lost, calls, "{}", stopped.stderr);
    // Said while it happened, not only at the end.
    let reported =
        stopped.stderr.lines().filter(|l| l.contains("losses so far") && l.contains("ring_buffer_full="));
    assert!(reported.count() >= 1, "{}", stopped.stderr);
}
