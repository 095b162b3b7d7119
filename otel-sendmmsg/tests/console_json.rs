//! End to end, as root: `OTEL_SENDMMSG_CONSOLE_FORMAT=json` prints what OTLP carries, for the
//! same calls.
//!
//! The sidecar prints or exports, not both, so two sidecars run at once, one printing JSON
//! lines and one exporting to the test's OTLP receiver, and the real workload runs once while
//! both trace it. Both see the very same calls, so everything the calls are (pid, tid, fd,
//! ports, addresses, bytes, errors, statuses, resource) must be equal exactly. Only what each
//! sidecar measures or makes up itself may differ: span ids (random), times (each sidecar's BPF
//! programs read the clock themselves, one after the other, and each maps the kernel's clock to
//! the wall on its own) and the message offsets derived from them; those are compared within a
//! bound, and each output is checked for its own consistency. Two runs one after the other would
//! leave pids, ports and times all different, and an exact comparison of the rest impossible.
//! Every line on stdout must parse as JSON, the other processes' too.

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::{
    common::v1::{any_value::Value as Any, KeyValue},
    trace::v1::{span::SpanKind, status::StatusCode, Span},
};
use serde_json::{json, Map, Value as Json};
use support::*;

/// The most two sidecars' times of one call may differ: each reads the clock in its own
/// programs and maps it to the wall by its own reading of both clocks at start-up.
const CLOCK_SKEW: Duration = Duration::from_millis(2);

/// Attributes whose values each sidecar measures itself.
const MEASURED: &[&str] = &["sendmmsg.message.offset_ns"];

/// An OTLP value as the JSON lines write it: ints as numbers, strings, bools, arrays.
fn json_of(value: Option<&Any>) -> Json {
    match value {
        Some(Any::StringValue(s)) => json!(s),
        Some(Any::IntValue(i)) => json!(i),
        Some(Any::BoolValue(b)) => json!(b),
        Some(Any::DoubleValue(d)) => json!(d),
        Some(Any::ArrayValue(a)) => Json::Array(a.values.iter().map(|v| json_of(v.value.as_ref())).collect()),
        other => panic!("no JSON for {other:?}"),
    }
}

/// OTLP attributes as the JSON lines' object, less those each sidecar measures itself.
fn attributes_of(attributes: &[KeyValue]) -> Map<String, Json> {
    attributes
        .iter()
        .filter(|kv| !MEASURED.contains(&kv.key.as_str()))
        .map(|kv| (kv.key.clone(), json_of(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
        .collect()
}

fn without_measured(attributes: &Json) -> Map<String, Json> {
    let mut attributes = attributes.as_object().expect("attributes are an object").clone();
    for key in MEASURED {
        attributes.remove(*key);
    }
    attributes
}

fn nanos(field: &Json) -> u64 {
    field.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a decimal string: {field}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One call as each output has it: its own span first, then its message spans.
struct Call<T> {
    spans: Vec<T>,
}

/// The JSON lines of process `pid` (by their resource: message spans carry no `process.pid`
/// of their own), grouped by call in the order the calls started; every line of `stdout` must
/// be one JSON object.
fn json_calls(stdout: &str, pid: u32) -> Vec<Call<Json>> {
    let lines: Vec<Json> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}")))
        .collect();
    assert!(lines.iter().all(Json::is_object), "one object per line");
    let mine: Vec<Json> =
        lines.into_iter().filter(|l| l["resource"]["attributes"]["process.pid"] == json!(pid)).collect();
    let mut calls: Vec<Call<Json>> = mine
        .iter()
        .filter(|l| l.get("parent_span_id").is_none())
        .map(|call| {
            let mut spans = vec![call.clone()];
            spans.extend(mine.iter().filter(|l| l["parent_span_id"] == call["span_id"]).cloned());
            Call { spans }
        })
        .collect();
    calls.sort_by_key(|c| nanos(&c.spans[0]["start_time_unix_nano"]));
    let grouped: usize = calls.iter().map(|c| c.spans.len()).sum();
    assert_eq!(grouped, mine.len(), "every line of pid {pid} is a call or one of its message spans");
    calls
}

/// The same from the receiver.
fn otlp_calls(receiver: &Receiver, pid: u32) -> Vec<Call<ReceivedSpan>> {
    let mine: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| int_attr(&s.resource, "process.pid") == Some(i64::from(pid)))
        .collect();
    let mut calls: Vec<Call<ReceivedSpan>> = mine
        .iter()
        .filter(|s| s.span.parent_span_id.is_empty())
        .map(|call| {
            let mut spans = vec![call.clone()];
            spans.extend(mine.iter().filter(|s| s.span.parent_span_id == call.span.span_id).cloned());
            Call { spans }
        })
        .collect();
    calls.sort_by_key(|c| c.spans[0].span.start_time_unix_nano);
    calls
}

/// A JSON line against the OTLP span of the same span of the same call.
fn same_span(json: &Json, otlp: &ReceivedSpan, ctx: &str) {
    let span: &Span = &otlp.span;
    let ctx = format!("{ctx}\nJSON: {json}\nOTLP: {span:?}");
    assert_eq!(json["name"], json!(span.name), "{ctx}");
    let kind = SpanKind::try_from(span.kind).unwrap();
    assert_eq!(json["kind"], json!(kind.as_str_name()), "{ctx}");
    let status = span.status.clone().unwrap_or_default();
    let code = StatusCode::try_from(status.code).unwrap();
    assert_eq!(json["status"]["code"], json!(code.as_str_name()), "{ctx}");
    assert_eq!(
        json["status"].get("message"),
        (!status.message.is_empty()).then(|| json!(status.message)).as_ref(),
        "{ctx}"
    );
    assert_eq!(without_measured(&json["attributes"]), attributes_of(&span.attributes), "{ctx}");
    assert_eq!(json["resource"]["attributes"].as_object().unwrap(), &attributes_of(&otlp.resource), "{ctx}");
    // The same moments, as two observers read them.
    let (start, end) = (nanos(&json["start_time_unix_nano"]), nanos(&json["end_time_unix_nano"]));
    let skew = start.abs_diff(span.start_time_unix_nano).max(end.abs_diff(span.end_time_unix_nano));
    assert!(skew <= CLOCK_SKEW.as_nanos() as u64, "{ctx}: {skew} ns apart");
    // Events: the same, in order, but for when each sidecar saw them.
    let events = json["events"].as_array().unwrap();
    assert_eq!(events.len(), span.events.len(), "{ctx}");
    for (json_event, event) in events.iter().zip(&span.events) {
        assert_eq!(json_event["name"], json!(event.name), "{ctx}");
        assert_eq!(without_measured(&json_event["attributes"]), attributes_of(&event.attributes), "{ctx}");
        let at = nanos(&json_event["time_unix_nano"]);
        assert!(at.abs_diff(event.time_unix_nano) <= CLOCK_SKEW.as_nanos() as u64, "{ctx}");
    }
}

/// What a JSON line must say of itself, whatever OTLP says.
fn consistent(line: &Json, ctx: &str) {
    let ctx = format!("{ctx}: {line}");
    let is_hex = |field: &str, len| {
        line[field]
            .as_str()
            .is_some_and(|s| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    };
    assert!(is_hex("trace_id", 32) && is_hex("span_id", 16), "{ctx}");
    let (start, end) = (nanos(&line["start_time_unix_nano"]), nanos(&line["end_time_unix_nano"]));
    assert_eq!(line["duration_ns"], json!(end - start), "{ctx}");
    let rfc3339 = humantime::parse_rfc3339(line["start_time"].as_str().unwrap()).unwrap();
    assert_eq!(rfc3339.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64, start, "{ctx}");
    assert_eq!(
        line["scope"],
        json!({"name": "otel-sendmmsg", "version": env!("CARGO_PKG_VERSION")}),
        "{ctx}"
    );
    for event in line["events"].as_array().unwrap() {
        let offset = event["attributes"]["sendmmsg.message.offset_ns"].as_u64().unwrap();
        assert_eq!(nanos(&event["time_unix_nano"]), start + offset, "{ctx}");
    }
}

/// Runs `scenarios` once under a JSON-printing sidecar and an OTLP-exporting one at once, both
/// with `vars` besides, and compares every span of the workload's calls; returns the JSON calls
/// and the largest time difference seen.
fn same_calls_both_ways(scenarios: &[&str], vars: &[(&str, &str)]) -> (Vec<Call<Json>>, u64) {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let receiver = Receiver::start(Protocol::Grpc);
    let json_vars: Vec<(&str, &str)> =
        vars.iter().copied().chain([("OTEL_SENDMMSG_CONSOLE_FORMAT", "json")]).collect();
    let printing = Sidecar::start(&json_vars);
    let otlp_vars: Vec<(&str, &str)> = vars
        .iter()
        .copied()
        .chain([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            // Everything from the flush at shutdown, nothing dropped.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
        ])
        .collect();
    let exporting = Sidecar::start(&otlp_vars);
    let calls = run_workload(scenarios);
    let exported = exporting.stop();
    let printed = printing.stop();
    for stopped in [&printed, &exported] {
        assert!(stopped.status.success(), "{}", stopped.stderr);
        assert!(stopped.stderr.contains("ring_buffer_full=0"), "{}", stopped.stderr);
    }
    assert_eq!(summary_count(&printed.stderr, "export_failed"), 0, "{}", printed.stderr);

    let pid = calls[0].pid;
    let json = json_calls(&printed.stdout, pid);
    let otlp = otlp_calls(&receiver, pid);
    assert_eq!(json.len(), calls.len(), "one JSON call per call:\n{}", printed.stdout);
    assert_eq!(otlp.len(), calls.len(), "one OTLP call per call");
    let mut largest_skew = 0;
    for ((call, printed), exported) in calls.iter().zip(&json).zip(&otlp) {
        let ctx = format!("scenario {}", call.scenario);
        assert_eq!(printed.spans.len(), exported.spans.len(), "{ctx}: spans of the call");
        for (line, span) in printed.spans.iter().zip(&exported.spans) {
            consistent(line, &ctx);
            same_span(line, span, &ctx);
            largest_skew = largest_skew
                .max(nanos(&line["start_time_unix_nano"]).abs_diff(span.span.start_time_unix_nano));
        }
        // Within each output, a call's message spans are its children in its trace.
        let (own, children) = printed.spans.split_first().unwrap();
        for child in children {
            assert_eq!(
                (&child["trace_id"], &child["parent_span_id"]),
                (&own["trace_id"], &own["span_id"]),
                "{ctx}"
            );
        }
        let (own, children) = exported.spans.split_first().unwrap();
        for child in children {
            assert_eq!(
                (hex(&child.span.trace_id), &child.span.parent_span_id),
                (hex(&own.span.trace_id), &own.span.span_id)
            );
        }
        // And the call is the one the workload made.
        assert_eq!(printed.spans[0]["attributes"]["thread.id"], json!(call.tid), "{ctx}");
        assert_eq!(printed.spans[0]["attributes"]["sendmmsg.sockfd"], json!(call.sockfd), "{ctx}");
    }
    (json, largest_skew)
}

#[test]
fn json_lines_carry_what_otlp_carries_for_the_same_calls() {
    let scenarios = ["udp4", "udp4-unconnected", "refused-mid-batch", "bad-fd", "unix"];
    let (calls, skew) = same_calls_both_ways(&scenarios, &[]);
    eprintln!("largest start-time difference between the two sidecars: {skew} ns");
    // What the lines say, written down independently (as tests/pipeline.rs expects it).
    let refused = &calls[2].spans[0];
    assert_eq!(
        refused["status"],
        json!({"code": "STATUS_CODE_ERROR", "message": "message 2 of 4 failed: EMSGSIZE"})
    );
    assert_eq!(refused["attributes"]["error.type"], "EMSGSIZE");
    assert_eq!(refused["attributes"]["sendmmsg.sent"], 2);
    assert_eq!(refused["attributes"]["thread.name"], "sendmmsg-worklo");
    let outcomes: Vec<(&Json, &Json)> = refused["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (&e["attributes"]["sendmmsg.message.bytes"], &e["attributes"]["error.type"]))
        .collect();
    assert_eq!(
        outcomes,
        [(&json!(10), &Json::Null), (&json!(20), &Json::Null), (&Json::Null, &json!("EMSGSIZE"))]
    );
    assert_eq!(calls[0].spans[0]["status"], json!({"code": "STATUS_CODE_UNSET"}));
    assert_eq!(calls[0].spans[0]["attributes"]["network.type"], "ipv4");
    assert_eq!(calls[3].spans[0]["attributes"]["error.type"], "EBADF");
    assert!(calls.iter().all(|c| c.spans[0].get("parent_span_id").is_none()), "no app published a parent");
}

#[test]
fn as_json_each_message_span_is_a_line_as_in_otlp() {
    let (calls, _) =
        same_calls_both_ways(&["refused-mid-batch", "udp4"], &[("OTEL_SENDMMSG_MESSAGE_DETAIL", "spans")]);
    let spans: Vec<usize> = calls.iter().map(|c| c.spans.len()).collect();
    assert_eq!(spans, [4, 9], "the call's span and one per message");
    let last = &calls[0].spans[3];
    assert_eq!(
        (&last["name"], &last["status"]["code"]),
        (&json!("sendmmsg.message"), &json!("STATUS_CODE_ERROR"))
    );
    for call in &calls {
        assert_eq!(call.spans[0]["events"], json!([]), "messages are spans, not events");
    }
}
