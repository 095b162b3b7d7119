//! End to end, as root: more threads inside `sendmmsg` at once than the hash map store holds
//! (`OTEL_SENDMMSG_CALL_STORE=hash-map`, `OTEL_SENDMMSG_MAX_INFLIGHT`), with and without an entry
//! filter, and with the call metrics alone (whose calls the kernel keeps in a map of their own,
//! of the same size); and the same threads with task-local storage, which has no such bound.
//! Every call is a span (or counted in the metrics) or counted once, by the counters the closing
//! summary names: refused at entry (`inflight_full`), or begun before the sidecar attached
//! (`exit_without_entry`).

mod support;

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

const MAX_INFLIGHT: u64 = 8;
/// Threads blocked in `sendmmsg` at once after the sidecar is ready; one more was blocked before.
const BLOCKED: u64 = 24;

/// Whether a thread of `pid` is inside `sendmmsg` now.
fn inside_sendmmsg(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|task| {
        std::fs::read_to_string(task.path().join("syscall"))
            .is_ok_and(|s| s.split_whitespace().next() == Some(&libc::SYS_sendmmsg.to_string()))
    })
}

/// `blocked-N`, started with one thread already blocked inside `sendmmsg`; the others block
/// once a line is written to its stdin.
fn start_blocked(workload: &Renamed) -> Child {
    let child = Command::new(workload)
        .arg(format!("blocked-{BLOCKED}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the workload");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !inside_sendmmsg(child.id()) {
        assert!(Instant::now() < deadline, "the workload's first thread never blocked in sendmmsg");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

struct Outcome {
    calls: Vec<CallReport>,
    /// The workload's spans, or with the metrics alone its calls the metrics counted.
    spans: u64,
    /// Spans of processes other than the workload and the sidecar.
    foreign_spans: u64,
    log: String,
}

/// Where the sidecar keeps the calls in flight (`OTEL_SENDMMSG_CALL_STORE`).
#[derive(Clone, Copy, PartialEq)]
enum Store {
    HashMap,
    TaskStorage,
}

/// Runs the workload under a sidecar with the hash map store of `MAX_INFLIGHT` (or task
/// storage, with the same setting), tracing only the workload's pid when `filtered`; with
/// `metrics_only`, no spans and the call metrics on.
fn blocked_beyond_the_map(filtered: bool, metrics_only: bool, store: Store) -> Outcome {
    // The unfiltered run counts the host's calls: the other test's blocked workload would be
    // among them (its threads already inside `sendmmsg` at attach, its calls filling the map).
    let _alone = one_sidecar_at_a_time();
    let receiver = Receiver::start(Protocol::Grpc);
    let name = match (store, filtered, metrics_only) {
        (Store::HashMap, _, true) => "inflight-metrics",
        (Store::HashMap, true, false) => "inflight-pid",
        (Store::HashMap, false, false) => "inflight-all",
        (Store::TaskStorage, _, true) => "inflight-ts-met",
        (Store::TaskStorage, _, false) => "inflight-ts-pid",
    };
    let workload = renamed_workload(name);
    let mut child = start_blocked(&workload);
    let pid = child.id();
    let pids = pid.to_string();
    let max = MAX_INFLIGHT.to_string();
    let mut vars = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SENDMMSG_MAX_INFLIGHT", max.as_str()),
        (
            "OTEL_SENDMMSG_CALL_STORE",
            match store {
                Store::HashMap => "hash-map",
                Store::TaskStorage => "task-storage",
            },
        ),
    ];
    if filtered {
        vars.push(("OTEL_SENDMMSG_PIDS", pids.as_str()));
    }
    if metrics_only {
        vars.extend([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_SENDMMSG_CALL_METRICS", "true")]);
    }
    // As deployed: unprivileged, with exactly its capabilities.
    let dir = SharedDir::new(name);
    let sidecar = start_as_nobody(&dir, &vars);
    let sidecar_pid = sidecar.pid();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "workload failed: {}", String::from_utf8_lossy(&out.stderr));
    let calls: Vec<CallReport> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad workload line {l:?}: {e}")))
        .collect();
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let foreign_spans = receiver
        .spans()
        .iter()
        .filter(|s| ![pid, sidecar_pid].map(i64::from).contains(&s.int("process.pid").unwrap_or(0)))
        .count() as u64;
    let spans = if metrics_only {
        assert!(receiver.spans().is_empty(), "metrics only exported spans");
        // Every call sent its one message: one series, cumulative, its last point the total.
        let counted = receiver.metric_points().into_iter().rev().find(|p| {
            p.metric == "sendmmsg.duration" && int_attr(&p.resource, "process.pid") == Some(pid.into())
        });
        counted.map_or(0, |p| p.value as u64)
    } else {
        receiver.spans_of(pid).len() as u64
    };
    Outcome { calls, spans, foreign_spans, log: stopped.stderr }
}

/// Checks what both variants promise: every call is a span or counted once.
fn check(outcome: &Outcome) -> Result<(), String> {
    let Outcome { calls, spans, log, .. } = outcome;
    assert_eq!(calls.len() as u64, BLOCKED + 1, "{calls:#?}");
    assert!(calls.iter().all(|c| c.ret == 1), "every call sent its message: {calls:#?}");
    let count = |key| summary_count(log, key);
    let accounted = spans + count("inflight_full") + count("exit_without_entry");
    if accounted != calls.len() as u64 {
        return Err(format!(
            "{spans} spans + counted losses = {accounted}, not {} calls:\n{log}",
            calls.len()
        ));
    }
    for key in ["exit_missed", "ring_buffer_full", "inflight"] {
        if count(key) != 0 {
            return Err(format!("{key} is not 0:\n{log}"));
        }
    }
    Ok(())
}

#[test]
fn more_threads_in_sendmmsg_than_the_map_holds_are_counted_exactly_with_a_pid_filter() {
    require_root();
    let outcome = blocked_beyond_the_map(true, false, Store::HashMap);
    let log = &outcome.log;
    // Only the workload is traced: the map holds exactly MAX_INFLIGHT of its calls, refuses the
    // rest, and the call already blocked at attach is the only exit without an entry.
    assert_eq!(outcome.spans, MAX_INFLIGHT, "{log}");
    assert_eq!(summary_count(log, "inflight_full"), BLOCKED - MAX_INFLIGHT, "{log}");
    assert_eq!(summary_count(log, "exit_without_entry"), 1, "{log}");
    // The kernel's own count of our skipped runs is in the summary (its value is the host's).
    summary_count(log, "kernel_missed");
    check(&outcome).unwrap_or_else(|e| panic!("{e}"));
}

/// Without a filter the counters are the host's: another process's call while the map is full
/// is refused and counted too. A run in which another process was seen calling is run again
/// (at most 3 times); a run without one must be exact.
#[test]
fn more_threads_in_sendmmsg_than_the_map_holds_are_counted_exactly_without_a_filter() {
    require_root();
    for attempt in 1..=3 {
        let outcome = blocked_beyond_the_map(false, false, Store::HashMap);
        match check(&outcome) {
            Ok(()) => {
                assert!(
                    summary_count(&outcome.log, "inflight_full") >= BLOCKED - MAX_INFLIGHT,
                    "{}",
                    outcome.log
                );
                return;
            }
            Err(e) if outcome.foreign_spans > 0 && attempt < 3 => {
                eprintln!(
                    "attempt {attempt}: {} spans of other processes, trying again: {e}",
                    outcome.foreign_spans
                );
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// With the call metrics alone the kernel keeps each call in a map of its own, sized by the same
/// setting: it holds exactly MAX_INFLIGHT of the workload's calls, each counted in the metrics,
/// and refuses the rest, counted.
#[test]
fn with_the_metrics_alone_more_threads_than_the_map_holds_are_counted_exactly() {
    require_root();
    let outcome = blocked_beyond_the_map(true, true, Store::HashMap);
    let log = &outcome.log;
    assert_eq!(outcome.spans, MAX_INFLIGHT, "calls the metrics counted:\n{log}");
    assert_eq!(summary_count(log, "inflight_full"), BLOCKED - MAX_INFLIGHT, "{log}");
    assert_eq!(summary_count(log, "exit_without_entry"), 1, "{log}");
    assert_eq!(summary_spans(log), 0, "{log}");
    check(&outcome).unwrap_or_else(|e| panic!("{e}"));
}

/// Task-local storage has no bound of its own: every blocked thread's call is traced, whatever
/// `OTEL_SENDMMSG_MAX_INFLIGHT` says, and the calls in flight counted per CPU come back to 0.
#[test]
fn with_task_storage_every_thread_in_sendmmsg_is_traced() {
    require_root();
    let outcome = blocked_beyond_the_map(true, false, Store::TaskStorage);
    let log = &outcome.log;
    assert!(log.contains("calls in flight: task-local storage"), "{log}");
    assert_eq!(outcome.spans, BLOCKED, "{log}");
    assert_eq!(summary_count(log, "inflight_full"), 0, "{log}");
    assert_eq!(summary_count(log, "exit_without_entry"), 1, "{log}");
    check(&outcome).unwrap_or_else(|e| panic!("{e}"));
}

/// The same with the call metrics alone: every blocked thread's call is counted.
#[test]
fn with_task_storage_and_the_metrics_alone_every_thread_in_sendmmsg_is_counted() {
    require_root();
    let outcome = blocked_beyond_the_map(true, true, Store::TaskStorage);
    let log = &outcome.log;
    assert!(log.contains("calls in flight: task-local storage"), "{log}");
    assert_eq!(outcome.spans, BLOCKED, "calls the metrics counted:\n{log}");
    assert_eq!(summary_count(log, "inflight_full"), 0, "{log}");
    assert_eq!(summary_count(log, "exit_without_entry"), 1, "{log}");
    assert_eq!(summary_spans(log), 0, "{log}");
    check(&outcome).unwrap_or_else(|e| panic!("{e}"));
}
