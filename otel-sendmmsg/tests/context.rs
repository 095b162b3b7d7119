//! End to end, as root: who and where. Socket context and per-message destinations checked
//! against what the workload saw from user space, and each in-kernel filter shown to drop
//! exactly what it should and keep the rest.

mod support;

use std::{path::PathBuf, process::Command};

use support::*;

fn collector() -> (Receiver, Vec<(&'static str, String)>) {
    let receiver = Receiver::start(Protocol::Grpc);
    let vars = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    (receiver, vars)
}

fn start(base: &[(&'static str, String)], extra: &[(&'static str, &str)]) -> Sidecar {
    let mut vars: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend_from_slice(extra);
    Sidecar::start(&vars)
}

fn split(addr: &str) -> (String, i64) {
    let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
    (addr.ip().to_string(), i64::from(addr.port()))
}

#[test]
fn socket_context_and_destinations_match_what_user_space_saw() {
    require_root();
    let (receiver, vars) = collector();
    let sidecar = start(&vars, &[]);
    let calls =
        run_workload(&["udp4", "udp6", "udp4-unconnected", "unix", "bad-msg-name", "msgvec-at-page-end"]);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let spans = receiver.spans_of(calls[0].pid);
    assert_eq!(spans.len(), calls.len(), "{}", stopped.stderr);

    for (call, span) in calls.iter().zip(&spans) {
        let ctx = format!("{}: {:#?}", call.scenario, span.span.attributes);
        let transport = if call.scenario == "unix" { "unix" } else { "udp" };
        assert_eq!(span.str("network.transport"), Some(transport), "{ctx}");
        let net_type = match call.scenario.as_str() {
            "unix" => None,
            "udp6" => Some("ipv6"),
            _ => Some("ipv4"),
        };
        assert_eq!(span.str("network.type"), net_type, "{ctx}");
        // Local end: what getsockname said, for every IP socket.
        if call.local.is_empty() {
            assert_eq!(span.str("network.local.address"), None, "{ctx}");
        } else {
            let (ip, port) = split(&call.local);
            assert_eq!(
                (span.str("network.local.address"), span.int("network.local.port")),
                (Some(ip.as_str()), Some(port)),
                "{ctx}"
            );
        }
        // Peer: the connected one, else none (these unconnected calls have several destinations).
        if call.peer.is_empty() {
            assert_eq!(span.str("network.peer.address"), None, "{ctx}");
        } else {
            let (ip, port) = split(&call.peer);
            assert_eq!(
                (span.str("network.peer.address"), span.int("network.peer.port")),
                (Some(ip.as_str()), Some(port)),
                "{ctx}"
            );
        }
        // Per message: the destination the caller gave.
        assert_eq!(span.span.events.len(), call.ret.max(0) as usize, "{ctx}");
        for (event, dest) in span.span.events.iter().zip(&call.dests) {
            let peer = (
                str_attr(&event.attributes, "network.peer.address"),
                int_attr(&event.attributes, "network.peer.port"),
            );
            if dest.is_empty() {
                assert_eq!(peer, (None, None), "{ctx}");
            } else {
                let (ip, port) = split(dest);
                assert_eq!(peer, (Some(ip.as_str()), Some(port)), "{ctx}");
            }
        }
    }
    let bad = &spans[4];
    assert_eq!(bad.int("sendmmsg.sent"), Some(1));
    assert_eq!(bad.int("sendmmsg.msg_name.unreadable_index"), Some(1));
    assert!(spans[..4].iter().all(|s| s.int("sendmmsg.msg_name.unreadable_index").is_none()));
    // The msgvec cannot be read whole: each readable header still gives its destination.
    let cut = &spans[5];
    assert_eq!(calls[5].ret, 2, "{:?}", calls[5]);
    assert_eq!(cut.int("sendmmsg.sent"), Some(2));
    assert_eq!(cut.int("sendmmsg.msg_name.unreadable_index"), Some(2), "{:#?}", cut.span.attributes);
}

#[test]
fn a_pid_filter_keeps_that_process_only() {
    require_root();
    let (receiver, vars) = collector();
    let noise = Noise::start();
    let pid = noise.pid().to_string();
    let sidecar = start(&vars, &[("OTEL_SENDMMSG_PIDS", &pid)]);
    let calls = run_workload(&["udp4", "bad-fd"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(receiver.spans_of(calls[0].pid).len(), 0, "an unlisted process was traced");
    assert!(
        !receiver.spans_of(noise.pid()).is_empty(),
        "the listed process was not traced:\n{}",
        stopped.stderr
    );
}

#[test]
fn a_comm_filter_matches_the_process_name_whatever_the_thread_is_called() {
    require_root();
    let (receiver, vars) = collector();
    let publisher = renamed_workload("dns-publisher");
    let sidecar = start(&vars, &[("OTEL_SENDMMSG_COMMS", "dns-publisher,no-such-process")]);
    let kept = workload_calls(Command::new(&publisher).args(["udp4-in-thread", "udp4"]));
    let other = run_workload(&["udp4"]);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let spans = receiver.spans_of(kept[0].pid);
    assert_eq!(spans.len(), 2, "{}", stopped.stderr);
    assert_eq!(spans[0].str("thread.name"), Some("sender-thread"));
    assert_eq!(spans[1].str("thread.name"), Some("dns-publisher"));
    assert_eq!(receiver.spans_of(other[0].pid).len(), 0, "another process was traced");
}

/// A cgroup v2 directory for one test, removed (with its child) when dropped.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> TestCgroup {
        let name = format!("otel-sendmmsg-test-{}", std::process::id());
        let dir = otel_sendmmsg::cgroup::v2_mount().join(name);
        std::fs::create_dir_all(dir.join("inner")).expect("creating a test cgroup under the cgroup v2 mount");
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0.join("inner"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_cgroup_filter_covers_the_cgroups_below_it() {
    require_root();
    let (receiver, vars) = collector();
    let cgroup = TestCgroup::new();
    let sidecar = start(&vars, &[("OTEL_SENDMMSG_CGROUPS", cgroup.0.to_str().unwrap())]);
    let procs = cgroup.0.join("inner/cgroup.procs");
    let script = format!("echo $$ > {} && exec {WORKLOAD} udp4 bad-fd", procs.display());
    let inside = workload_calls(Command::new("sh").args(["-c", &script]));
    let outside = run_workload(&["udp4"]);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(receiver.spans_of(inside[0].pid).len(), 2, "{}", stopped.stderr);
    assert_eq!(receiver.spans_of(outside[0].pid).len(), 0, "a process outside the cgroup was traced");
}

#[test]
fn a_missing_cgroup_is_a_configuration_error() {
    require_root();
    match Sidecar::try_start(&[("OTEL_SENDMMSG_CGROUPS", "no-such-cgroup.slice")]) {
        Ok(_) => panic!("started with a cgroup that does not exist"),
        Err((status, stderr)) => {
            assert_eq!(status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("OTEL_SENDMMSG_CGROUPS"), "{stderr}");
            let missing = otel_sendmmsg::cgroup::v2_mount().join("no-such-cgroup.slice");
            assert!(stderr.contains(&format!("{} is not one", missing.display())), "{stderr}");
        }
    }
}

#[test]
fn a_minimum_duration_keeps_only_slow_calls() {
    require_root();
    let (receiver, vars) = collector();
    let sidecar = start(&vars, &[("OTEL_SENDMMSG_MIN_DURATION", "50ms")]);
    let calls = run_workload(&["udp4", "slow-unix", "bad-fd"]);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let spans = receiver.spans_of(calls[0].pid);
    assert_eq!(spans.len(), 1, "{}", stopped.stderr);
    assert_eq!(spans[0].int("sendmmsg.sockfd"), Some(calls[1].sockfd as i64));
    let duration = spans[0].span.end_time_unix_nano - spans[0].span.start_time_unix_nano;
    assert!(duration >= 50_000_000, "kept a call of {duration} ns");
    assert!(summary_count(&stopped.stderr, "filtered_at_exit") >= 2, "{}", stopped.stderr);
}

#[test]
fn errors_only_keeps_failed_calls_and_calls_with_a_failed_message() {
    require_root();
    let (receiver, vars) = collector();
    let sidecar = start(&vars, &[("OTEL_SENDMMSG_ERRORS_ONLY", "true")]);
    let calls = run_workload(&["udp4", "bad-fd", "refused-mid-batch", "unix"]);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let spans = receiver.spans_of(calls[0].pid);
    let kept: Vec<Option<&str>> = spans.iter().map(|s| s.str("error.type")).collect();
    assert_eq!(kept, vec![Some("EBADF"), Some("EMSGSIZE")], "{}", stopped.stderr);
    assert!(summary_count(&stopped.stderr, "filtered_at_exit") >= 2, "{}", stopped.stderr);
}

/// The ratio samplers draw for roots at random in the kernel: about the given share of 2000
/// calls, and none at 0.
#[test]
fn head_sampling_draws_the_given_share_of_roots() {
    require_root();
    for (sampler, ratio, low, high) in [
        ("traceidratio", "0.5", 0.4, 0.6),
        ("parentbased_traceidratio", "0.5", 0.4, 0.6),
        ("parentbased_traceidratio", "0", 0.0, 0.0),
    ] {
        let (receiver, vars) = collector();
        let sidecar = start(&vars, &[("OTEL_TRACES_SAMPLER", sampler), ("OTEL_TRACES_SAMPLER_ARG", ratio)]);
        let out = Command::new(WORKLOAD).args(["loop", "2", "4", "1000"]).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let stopped = sidecar.stop();
        assert!(stopped.status.success(), "{}", stopped.stderr);
        let calls = report["calls"].as_u64().unwrap() as f64;
        let pid = report["pid"].as_u64().unwrap() as u32;
        let share = receiver.spans_of(pid).len() as f64 / calls;
        // 2000 draws at p = 0.5: the bounds are 9 standard deviations out.
        assert!((low..=high).contains(&share), "{sampler} {ratio}: {share} of {calls} calls traced");
    }
}

/// The cheapest level: no per-message hook; sizes come from msg_len at exit. It sees what was
/// sent, not what failed.
#[test]
fn sizes_from_msg_len_need_no_per_message_hook() {
    require_root();
    let (receiver, vars) = collector();
    let sidecar = start(&vars, &[("OTEL_SENDMMSG_MESSAGE_DETAIL", "sizes")]);
    let calls = run_workload(&["udp4", "refused-mid-batch", "unix"]);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(!stopped.stderr.contains("tracepoint sock:sock_send_length"), "{}", stopped.stderr);
    let spans = receiver.spans_of(calls[0].pid);
    assert_eq!(spans.len(), 3, "{}", stopped.stderr);
    let bytes = |s: &ReceivedSpan| -> Vec<i64> {
        s.span.events.iter().map(|e| int_attr(&e.attributes, "sendmmsg.message.bytes").unwrap()).collect()
    };
    assert_eq!(bytes(&spans[0]), (100..108).collect::<Vec<i64>>());
    assert_eq!(spans[0].int("sendmmsg.bytes"), Some(828));
    assert_eq!(spans[0].int("sendmmsg.messages.attempted"), None, "unknown without the hook");
    // Two sent, the third refused: only the sent ones are visible, and the refusal is not.
    assert_eq!(bytes(&spans[1]), vec![10, 20]);
    assert_eq!((spans[1].int("sendmmsg.sent"), spans[1].str("error.type")), (Some(2), None));
    assert_eq!(bytes(&spans[2]), vec![10, 20, 30, 40, 50]);
    for span in &spans {
        for event in &span.span.events {
            assert_eq!(event.time_unix_nano, span.span.end_time_unix_nano, "sizes are known at exit");
        }
    }
}
