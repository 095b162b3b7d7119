//! End to end, as root: the call metrics a real OTLP receiver got for a workload whose outcomes
//! are known, counted exactly per process and `error.type`, whatever became of the spans:
//! every span sent, none sampled, spans off (metrics only), a collector down for a while;
//! cumulative and delta; exemplars that name spans the receiver got.

mod support;

use std::{collections::BTreeMap, time::Duration};

use support::*;

/// The workload: three good calls, one on a closed fd, one whose third message UDP refuses.
const SCENARIOS: [&str; 5] = ["udp4", "udp4", "udp4", "bad-fd", "refused-mid-batch"];

/// What one series must count, written down from the workload, not from the sidecar.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Counts {
    calls: i64,
    sent: i64,
    failed: i64,
    unsent: i64,
    bytes: i64,
}

/// Per series (error.type, network.transport): the counts for one run of [`SCENARIOS`].
fn expected() -> BTreeMap<(Option<&'static str>, Option<&'static str>), Counts> {
    BTreeMap::from([
        // 8 messages of 100..=107 bytes each.
        ((None, Some("udp")), Counts { calls: 3, sent: 24, failed: 0, unsent: 0, bytes: 3 * 828 }),
        // A closed fd has no socket to describe; neither of its 2 messages was tried.
        ((Some("EBADF"), None), Counts { calls: 1, sent: 0, failed: 0, unsent: 2, bytes: 0 }),
        // 10 and 20 bytes sent, the oversized third refused, the fourth never tried.
        ((Some("EMSGSIZE"), Some("udp")), Counts { calls: 1, sent: 2, failed: 1, unsent: 1, bytes: 30 }),
    ])
}

/// OTLP's `AggregationTemporality`.
const DELTA: i32 = 1;
const CUMULATIVE: i32 = 2;

/// The counts the receiver got for process `pid`, per series: cumulative points' latest values,
/// or delta points' sum. Every point must be of the process's own resource and of `temporality`.
fn received(
    receiver: &Receiver,
    pid: u32,
    temporality: i32,
) -> BTreeMap<(Option<String>, Option<String>), Counts> {
    let points: Vec<ReceivedPoint> = receiver
        .metric_points()
        .into_iter()
        .filter(|p| {
            p.metric.starts_with("sendmmsg.") && int_attr(&p.resource, "process.pid") == Some(pid.into())
        })
        .collect();
    assert!(!points.is_empty(), "no call metrics of pid {pid}: {:#?}", receiver.metric_points());
    let mut out: BTreeMap<(Option<String>, Option<String>), Counts> = BTreeMap::new();
    // Cumulative: the latest point of each series and outcome wins; delta: they add up.
    let mut latest: BTreeMap<(String, Vec<String>), (u64, i64)> = BTreeMap::new();
    for p in &points {
        assert_eq!(p.temporality, temporality, "{p:#?}");
        assert_eq!(str_attr(&p.resource, "service.name"), Some("sendmmsg-workload"), "{p:#?}");
        assert!(p.start_time_unix_nano > 0 && p.start_time_unix_nano <= p.time_unix_nano, "{p:#?}");
        let mut attributes: Vec<String> = p.attributes.iter().map(|kv| format!("{kv:?}")).collect();
        attributes.sort();
        let slot = latest.entry((p.metric.clone(), attributes)).or_insert((0, 0));
        if temporality == CUMULATIVE {
            if p.time_unix_nano >= slot.0 {
                *slot = (p.time_unix_nano, p.value);
            }
        } else {
            slot.1 += p.value;
        }
    }
    for p in &points {
        let mut attributes: Vec<String> = p.attributes.iter().map(|kv| format!("{kv:?}")).collect();
        attributes.sort();
        let value = latest[&(p.metric.clone(), attributes)].1;
        let outcome = str_attr(&p.attributes, "sendmmsg.message.outcome");
        let error = str_attr(&p.attributes, "error.type").map(str::to_owned);
        let transport = str_attr(&p.attributes, "network.transport").map(str::to_owned);
        if let Some(t) = &transport {
            assert_eq!(
                (t.as_str(), str_attr(&p.attributes, "network.type")),
                ("udp", Some("ipv4")),
                "{p:#?}"
            );
        }
        // A message's error.type is its own: none on a sent one.
        let series_error = match outcome {
            Some("sent") => {
                assert_eq!(error, None, "{p:#?}");
                continue;
            }
            _ => error,
        };
        let counts = out.entry((series_error, transport)).or_insert(Counts {
            calls: 0,
            sent: 0,
            failed: 0,
            unsent: 0,
            bytes: 0,
        });
        match (p.metric.as_str(), outcome) {
            ("sendmmsg.duration", _) => counts.calls = value,
            ("sendmmsg.bytes", _) => counts.bytes = value,
            ("sendmmsg.messages", Some("failed")) => counts.failed = value,
            ("sendmmsg.messages", Some("unsent")) => counts.unsent = value,
            other => panic!("unexpected point {other:?}: {p:#?}"),
        }
    }
    // Sent messages carry no error.type: the good calls' and the refused batch's are one point
    // (the same attributes), whose total is checked.
    let sent: i64 = latest
        .iter()
        .filter(|((metric, attributes), _)| {
            metric == "sendmmsg.messages" && attributes.iter().any(|a| a.contains("\"sent\""))
        })
        .map(|(_, (_, value))| value)
        .sum();
    out.insert((Some("sent".into()), None), Counts { calls: 0, sent, failed: 0, unsent: 0, bytes: 0 });
    out
}

/// The counts per series as [`received`] reads them: the sent messages of all series in one.
fn as_received() -> BTreeMap<(Option<String>, Option<String>), Counts> {
    let mut out: BTreeMap<(Option<String>, Option<String>), Counts> = expected()
        .into_iter()
        .map(|((e, t), c)| ((e.map(str::to_owned), t.map(str::to_owned)), Counts { sent: 0, ..c }))
        .collect();
    let sent = expected().values().map(|c| c.sent).sum();
    out.insert((Some("sent".into()), None), Counts { calls: 0, sent, failed: 0, unsent: 0, bytes: 0 });
    out
}

fn run(protocol: Protocol, temporality: &str, extra: &[(&str, &str)]) -> (Receiver, Stopped, u32) {
    let _one = one_sidecar_at_a_time();
    let receiver = Receiver::start(protocol);
    let mut vars = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", temporality),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ("OTEL_SENDMMSG_CALL_METRICS", "true"),
    ];
    vars.extend_from_slice(extra);
    let sidecar = Sidecar::start(&vars);
    let calls = run_workload(&SCENARIOS);
    // At least one periodic export before the one at shutdown.
    std::thread::sleep(Duration::from_millis(800));
    let stopped = stop_cleanly(sidecar);
    (receiver, stopped, calls[0].pid)
}

#[test]
fn every_call_is_counted_by_process_and_outcome_with_spans_as_exemplars() {
    require_root();
    let (receiver, stopped, pid) = run(Protocol::Grpc, "cumulative", &[]);
    assert_eq!(received(&receiver, pid, CUMULATIVE), as_received(), "{}", stopped.stderr);
    // Every exemplar names a span of the process the receiver got, with its duration.
    let spans = receiver.spans_of(pid);
    assert_eq!(spans.len(), SCENARIOS.len(), "{}", stopped.stderr);
    let durations: Vec<(Vec<u8>, Vec<u8>, f64)> = spans
        .iter()
        .map(|s| {
            let seconds = (s.span.end_time_unix_nano - s.span.start_time_unix_nano) as f64 / 1e9;
            (s.span.trace_id.clone(), s.span.span_id.clone(), seconds)
        })
        .collect();
    let histograms: Vec<ReceivedPoint> = receiver
        .metric_points()
        .into_iter()
        .filter(|p| {
            p.metric == "sendmmsg.duration" && int_attr(&p.resource, "process.pid") == Some(pid.into())
        })
        .collect();
    let exemplars: Vec<(Vec<u8>, Vec<u8>, f64)> =
        histograms.iter().flat_map(|p| p.histogram.clone().unwrap().exemplars).collect();
    assert!(!exemplars.is_empty(), "{histograms:#?}");
    for (trace_id, span_id, seconds) in &exemplars {
        let span = durations.iter().find(|(t, s, _)| t == trace_id && s == span_id);
        let (_, _, duration) =
            span.unwrap_or_else(|| panic!("exemplar of a span not received: {span_id:02x?}"));
        assert!((duration - seconds).abs() < 1e-6, "exemplar {seconds} s, span {duration} s");
    }
    // The exponential histogram holds every call, in buckets that bracket each call's duration.
    for point in &histograms {
        let h = point.histogram.as_ref().unwrap();
        let (scale, offset) = h.exponential.expect("exponential by default");
        assert_eq!(h.counts.iter().sum::<u64>() as i64, point.value, "{point:#?}");
        let base = 2f64.powf(2f64.powi(-scale));
        let lowest = base.powi(offset);
        let highest = base.powi(offset + h.counts.len() as i32);
        let (min, max) = (h.min.unwrap(), h.max.unwrap());
        assert!(lowest < min && max <= highest, "{min}..{max} s outside {lowest}..{highest}: {point:#?}");
        assert!(min <= h.sum / point.value as f64 && h.sum / point.value as f64 <= max, "{point:#?}");
    }
}

#[test]
fn calls_the_sampler_leaves_out_are_counted_as_delta_all_the_same() {
    require_root();
    let extra = [("OTEL_TRACES_SAMPLER", "always_off"), ("OTEL_SENDMMSG_DURATION_BUCKETS", "1us,100us,10ms")];
    let (receiver, stopped, pid) = run(Protocol::HttpProtobuf, "delta", &extra);
    assert!(receiver.spans_of(pid).is_empty(), "always_off exported spans");
    assert_eq!(received(&receiver, pid, DELTA), as_received(), "{}", stopped.stderr);
    for point in receiver.metric_points().iter().filter(|p| p.metric == "sendmmsg.duration") {
        let h = point.histogram.as_ref().unwrap();
        assert_eq!((h.exponential, h.bounds.as_slice()), (None, &[1e-6, 1e-4, 1e-2][..]), "{point:#?}");
        assert_eq!(h.counts.len(), 4);
        assert!(h.exemplars.is_empty(), "no span, no exemplar: {point:#?}");
    }
}

#[test]
fn metrics_only_exports_no_span_and_the_same_counts() {
    require_root();
    let (receiver, stopped, pid) = run(Protocol::Grpc, "cumulative", &[("OTEL_TRACES_EXPORTER", "none")]);
    assert!(receiver.spans().is_empty(), "metrics only exported spans");
    assert_eq!(received(&receiver, pid, CUMULATIVE), as_received(), "{}", stopped.stderr);
    // Not one record crossed the ring buffer for those calls.
    assert_eq!(summary_count(&stopped.stderr, "ring_buffer_full"), 0);
    assert_eq!(summary_spans(&stopped.stderr), 0, "{}", stopped.stderr);
}

#[test]
fn cumulative_counts_survive_a_collector_outage() {
    require_root();
    let _one = one_sidecar_at_a_time();
    let mut receiver = Receiver::start(Protocol::Grpc);
    let sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", Protocol::Grpc.env_value()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ("OTEL_SENDMMSG_CALL_METRICS", "true"),
        // Each export gives up fast while the collector is down.
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "1000"),
    ]);
    receiver.stop();
    let calls = run_workload(&SCENARIOS);
    std::thread::sleep(Duration::from_millis(1500));
    let failed_while_down = Sidecar::stderr(&sidecar).matches("exporting the call metrics").count();
    receiver.restart();
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = stop_cleanly(sidecar);
    assert!(failed_while_down > 0, "no export failed while the collector was down:\n{}", stopped.stderr);
    assert_eq!(received(&receiver, calls[0].pid, CUMULATIVE), as_received(), "{}", stopped.stderr);
}

/// By peer (`OTEL_SENDMMSG_METRICS_BY_PEER`): a connected socket's series names its peer, an
/// unconnected one's its first message's destination, each as the workload saw them; without
/// the setting no series names a peer.
#[test]
fn series_by_peer_name_the_connected_peer_or_the_first_destination() {
    require_root();
    let _one = one_sidecar_at_a_time();
    for (by_peer, spans) in [("true", "none"), ("true", "otlp"), ("false", "none")] {
        let receiver = Receiver::start(Protocol::Grpc);
        let sidecar = Sidecar::start(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
            ("OTEL_SENDMMSG_CALL_METRICS", "true"),
            ("OTEL_SENDMMSG_METRICS_BY_PEER", by_peer),
            ("OTEL_TRACES_EXPORTER", spans),
        ]);
        let calls = run_workload(&["udp4", "udp4-unconnected"]);
        let stopped = stop_cleanly(sidecar);
        let ctx = format!("by peer {by_peer}, spans {spans}:\n{}", stopped.stderr);
        let peers: std::collections::BTreeSet<(String, i64)> = receiver
            .metric_points()
            .iter()
            .filter(|p| {
                p.metric == "sendmmsg.duration"
                    && int_attr(&p.resource, "process.pid") == Some(calls[0].pid.into())
            })
            .map(|p| {
                let address = str_attr(&p.attributes, "network.peer.address").unwrap_or("").to_owned();
                (address, int_attr(&p.attributes, "network.peer.port").unwrap_or(0))
            })
            .collect();
        let expected: std::collections::BTreeSet<(String, i64)> = if by_peer == "true" {
            let connected = &calls[0].peer;
            let first_destination = &calls[1].dests[0];
            [connected, first_destination]
                .iter()
                .map(|a| {
                    let a: std::net::SocketAddr = a.parse().unwrap_or_else(|e| panic!("{a:?}: {e}"));
                    (a.ip().to_string(), i64::from(a.port()))
                })
                .collect()
        } else {
            [(String::new(), 0)].into()
        };
        assert_eq!(peers, expected, "{ctx}");
    }
}
