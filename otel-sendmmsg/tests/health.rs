//! The health endpoints (`OTEL_SENDMMSG_HEALTH_ENDPOINT`) of the real sidecar: `/readyz` says
//! "not ready" from before the probes are attached until they are, then "ready"; `/livez` is
//! fine while spans flow, and fails, naming the export task, once that task is held by a
//! collector that never answers for longer than `OTEL_SENDMMSG_HEALTH_STALL_AFTER`.

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use support::{backends::*, *};

/// Polls `path` every 10 ms from now until stopped: the statuses seen, in order, repeats
/// collapsed (`None`: nothing answered).
struct Poller {
    seen: Arc<Mutex<Vec<Option<u16>>>>,
    stop: Arc<AtomicBool>,
}

impl Poller {
    fn start(address: String, path: &'static str) -> Poller {
        let (seen, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (log, done) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let status = http_get(&address, path).map(|(status, _)| status);
                let mut log = log.lock().unwrap();
                if log.last() != Some(&status) {
                    log.push(status);
                }
                drop(log);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Poller { seen, stop }
    }

    fn stop(self) -> Vec<Option<u16>> {
        self.stop.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        self.seen.lock().unwrap().clone()
    }
}

fn answer(address: &str, path: &str) -> (u16, String) {
    http_get(address, path).unwrap_or_else(|| panic!("nothing answers {path} at {address}"))
}

#[test]
fn readiness_follows_the_attachment_and_liveness_the_pipeline() {
    require_root();
    let _one = one_sidecar_at_a_time();
    let address = format!("127.0.0.1:{}", free_port());
    let receiver = Receiver::start(Protocol::Grpc);
    let ready = Poller::start(address.clone(), "/readyz");
    let sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SENDMMSG_HEALTH_ENDPOINT", address.as_str()),
        ("OTEL_SENDMMSG_HEALTH_STALL_AFTER", "2s"),
    ]);
    // Sidecar::start returns once the sidecar logged that it is ready.
    let calls = run_workload(&["udp4", "unix"]);
    assert_eq!(answer(&address, "/livez"), (200, "ok\n".to_owned()));
    // Quiet for longer than the stall limit: both parts keep turning without calls.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(answer(&address, "/livez"), (200, "ok\n".to_owned()));
    let seen = ready.stop();
    // Nothing, then "not ready" (the listener is up before the probes are), then "ready".
    let answered: Vec<u16> = seen.iter().flatten().copied().collect();
    assert_eq!(answered, [503, 200], "{seen:?}");
    assert_eq!(answer(&address, "/nothing-here").0, 404);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(receiver.spans_of(calls[0].pid).len(), calls.len());
    assert!(http_get(&address, "/livez").is_none(), "the listener closes with the sidecar");
}

#[test]
fn liveness_fails_when_the_export_task_is_stuck() {
    require_root();
    let _one = one_sidecar_at_a_time();
    let address = format!("127.0.0.1:{}", free_port());
    let silent = SilentCollector::start();
    let sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", silent.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_METRICS_EXPORTER", "none"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // One export at a time, of one span, with no limit but a 10-minute request timeout: the
        // first export hangs, and the task waits for it to hand its exporter back.
        ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", "1"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "0"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "600000"),
        ("OTEL_SENDMMSG_HEALTH_ENDPOINT", address.as_str()),
        ("OTEL_SENDMMSG_HEALTH_STALL_AFTER", "2s"),
        ("OTEL_SENDMMSG_SHUTDOWN_TIMEOUT", "2s"),
    ]);
    assert_eq!(answer(&address, "/livez").0, 200, "alive before anything is exported");
    run_workload(&["udp4"; 3]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = answer(&address, "/livez");
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("the export task has not turned for "), "{body}");
    assert_eq!(answer(&address, "/readyz").0, 200, "still attached");
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}
