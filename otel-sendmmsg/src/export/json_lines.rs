//! The console's JSON lines (`OTEL_SENDMMSG_CONSOLE_FORMAT=json`), for `jq` and log shippers:
//! each span one JSON object on one line, a call's message child spans each a line of their
//! own, as OTLP carries them. The fields are the OTLP span's, named as in its protobuf
//! (`trace_id`, `parent_span_id`, `start_time_unix_nano`, `status.code`, ...) with the values it
//! carries: ids in lowercase hex and 64-bit times as decimal strings (as OTLP/JSON has them: a
//! JSON number loses nanoseconds in any reader that parses numbers as doubles, jq 1.6
//! included); enums by their protobuf names (`SPAN_KIND_INTERNAL`, `STATUS_CODE_ERROR`);
//! attributes as an object of typed values (ints as numbers, strings, bools), so
//! `.attributes["error.type"]` works. Added: the span's resource and scope, and two fields OTLP
//! leaves to readers, `start_time` (RFC 3339) and `duration_ns`. `parent_span_id` is absent for
//! a root, a status message when there is none.
//!
//! Strings come from traced processes (thread names, their resource): JSON's own escaping keeps
//! each object on one line (a newline is `\n`, ESC is `\u001b`); DEL, the C1 controls and the
//! Unicode line separators are escaped too, so nothing printed is a control to a terminal.

use std::{
    io,
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    trace::{SpanId, SpanKind, Status},
    Array, KeyValue, Value,
};
use opentelemetry_sdk::{trace::SpanData, Resource};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// `span` under `resource` as one line of JSON, without its newline.
pub fn json_line(span: &SpanData, resource: &Resource) -> String {
    let mut line = Vec::with_capacity(1024);
    let mut serializer = serde_json::Serializer::with_formatter(&mut line, TerminalSafe);
    // Writing to memory cannot fail, and nothing below returns an error of its own.
    if (JsonSpan { span, resource }).serialize(&mut serializer).is_err() {
        return String::from("{}");
    }
    // serde_json writes UTF-8 only.
    String::from_utf8(line).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

struct JsonSpan<'a> {
    span: &'a SpanData,
    resource: &'a Resource,
}

impl Serialize for JsonSpan<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let span = self.span;
        let context = &span.span_context;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", span.name.as_ref())?;
        map.serialize_entry("trace_id", &Shown(context.trace_id()))?;
        map.serialize_entry("span_id", &Shown(context.span_id()))?;
        if span.parent_span_id != SpanId::INVALID {
            map.serialize_entry("parent_span_id", &Shown(span.parent_span_id))?;
        }
        map.serialize_entry("kind", kind_name(&span.span_kind))?;
        map.serialize_entry("start_time_unix_nano", &unix_nanos(span.start_time).to_string())?;
        map.serialize_entry("end_time_unix_nano", &unix_nanos(span.end_time).to_string())?;
        if let Some(start) = rfc3339(span.start_time) {
            map.serialize_entry("start_time", &start)?;
        }
        let duration = span.end_time.duration_since(span.start_time).unwrap_or_default();
        map.serialize_entry("duration_ns", &(duration.as_nanos() as u64))?;
        map.serialize_entry("status", &JsonStatus(&span.status))?;
        map.serialize_entry("attributes", &Attributes(&span.attributes))?;
        map.serialize_entry("events", &Events(span))?;
        map.serialize_entry("resource", &JsonResource(self.resource))?;
        map.serialize_entry("scope", &Scope(span))?;
        map.end()
    }
}

/// As OTLP's protobuf names the span kinds.
fn kind_name(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Client => "SPAN_KIND_CLIENT",
        SpanKind::Server => "SPAN_KIND_SERVER",
        SpanKind::Producer => "SPAN_KIND_PRODUCER",
        SpanKind::Consumer => "SPAN_KIND_CONSUMER",
        SpanKind::Internal => "SPAN_KIND_INTERNAL",
    }
}

/// Nanoseconds since the Unix epoch (0 before it), as OTLP's `fixed64` times.
fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The time in RFC 3339, UTC, to the nanosecond, when it has such a form (humantime's: from
/// the epoch to the end of the year 9999; span times are never outside).
fn rfc3339(time: SystemTime) -> Option<String> {
    const YEAR_10000: u64 = 253_402_300_800;
    let since_epoch = time.duration_since(UNIX_EPOCH).ok()?;
    (since_epoch.as_secs() < YEAR_10000).then(|| humantime::format_rfc3339_nanos(time).to_string())
}

/// A value written as its `Display` text: trace and span ids, lowercase hex.
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

struct JsonStatus<'a>(&'a Status);

impl Serialize for JsonStatus<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.0 {
            Status::Unset => map.serialize_entry("code", "STATUS_CODE_UNSET")?,
            Status::Ok => map.serialize_entry("code", "STATUS_CODE_OK")?,
            Status::Error { description } => {
                map.serialize_entry("code", "STATUS_CODE_ERROR")?;
                if !description.is_empty() {
                    map.serialize_entry("message", description.as_ref())?;
                }
            }
        }
        map.end()
    }
}

/// Attributes as one object, key to typed value. Keys are unique within a span, an event or a
/// resource (the span mapping and the SDK's resource see to it).
struct Attributes<'a>(&'a [KeyValue]);

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|kv| (kv.key.as_str(), JsonValue(&kv.value))))
    }
}

struct JsonValue<'a>(&'a Value);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::I64(i) => serializer.serialize_i64(*i),
            Value::F64(f) => Double(*f).serialize(serializer),
            Value::String(s) => serializer.serialize_str(s.as_str()),
            Value::Array(Array::Bool(items)) => serializer.collect_seq(items),
            Value::Array(Array::I64(items)) => serializer.collect_seq(items),
            Value::Array(Array::F64(items)) => serializer.collect_seq(items.iter().copied().map(Double)),
            Value::Array(Array::String(items)) => serializer.collect_seq(items.iter().map(|s| s.as_str())),
            // A kind of value newer than this code: its text.
            other => serializer.collect_str(other),
        }
    }
}

/// A double as a number, or as protobuf's JSON mapping spells what JSON cannot hold: `"NaN"`,
/// `"Infinity"`, `"-Infinity"`.
struct Double(f64);

impl Serialize for Double {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            f if f.is_finite() => serializer.serialize_f64(f),
            f if f.is_nan() => serializer.serialize_str("NaN"),
            f if f > 0.0 => serializer.serialize_str("Infinity"),
            _ => serializer.serialize_str("-Infinity"),
        }
    }
}

struct Events<'a>(&'a SpanData);

impl Serialize for Events<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.events.len()))?;
        for event in self.0.events.iter() {
            seq.serialize_element(&JsonEvent(event))?;
        }
        seq.end()
    }
}

struct JsonEvent<'a>(&'a opentelemetry::trace::Event);

impl Serialize for JsonEvent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("name", self.0.name.as_ref())?;
        map.serialize_entry("time_unix_nano", &unix_nanos(self.0.timestamp).to_string())?;
        map.serialize_entry("attributes", &Attributes(&self.0.attributes))?;
        map.end()
    }
}

struct JsonResource<'a>(&'a Resource);

impl Serialize for JsonResource<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("attributes", &ResourceAttributes(self.0))?;
        map.end()
    }
}

struct ResourceAttributes<'a>(&'a Resource);

impl Serialize for ResourceAttributes<'_> {
    /// By key: the resource keeps its attributes in a hash map, whose order would change from
    /// one run to the next.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut attributes: Vec<_> = self.0.iter().collect();
        attributes.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        serializer.collect_map(attributes.into_iter().map(|(key, value)| (key.as_str(), JsonValue(value))))
    }
}

struct Scope<'a>(&'a SpanData);

impl Serialize for Scope<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let scope = &self.0.instrumentation_scope;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", scope.name())?;
        if let Some(version) = scope.version() {
            map.serialize_entry("version", version)?;
        }
        map.end()
    }
}

/// serde_json's compact output, with the characters a terminal may take as controls escaped
/// even where JSON allows them raw: DEL, the C1 controls (U+0080 to U+009F: U+009B starts an
/// escape sequence on some terminals), and U+2028/U+2029, which some readers take for line
/// breaks. JSON already escapes quotes, backslashes and everything below U+0020.
struct TerminalSafe;

impl serde_json::ser::Formatter for TerminalSafe {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut rest = fragment;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
            writer.write_all(&rest.as_bytes()[..at])?;
            write!(writer, "\\u{:04x}", c as u32)?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

fn needs_escape(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::{
        trace::{Event, SpanContext, TraceFlags, TraceId, TraceState},
        KeyValue,
    };
    use serde_json::{json, Value as Json};

    use super::*;
    use crate::{
        export::tests::finished,
        process::ProcessInfo,
        span::{resource::resource_for, MESSAGE_SPAN_NAME, SPAN_NAME},
    };

    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)
    }

    fn process(service_name: &str, thread_name: &str) -> ProcessInfo {
        ProcessInfo {
            pid: 4242,
            executable_name: Some(thread_name.into()),
            service_name: service_name.into(),
            container_id: None,
            attributes: vec![KeyValue::new("deployment.environment.name", "prod")],
        }
    }

    /// A call's span as the span module makes them: a root, or the child of `parent`.
    fn call_span(parent: Option<SpanId>, thread_name: &str) -> SpanData {
        let mut span = finished(
            SPAN_NAME,
            start(),
            start() + Duration::from_nanos(3_100),
            vec![
                KeyValue::new("sendmmsg.sockfd", 7),
                KeyValue::new("sendmmsg.flags.names", "MSG_DONTWAIT"),
                KeyValue::new("error.type", "EMSGSIZE"),
                KeyValue::new("thread.name", thread_name.to_owned()),
                KeyValue::new("test.bool", true),
                KeyValue::new("test.double", 0.5),
                KeyValue::new("test.ints", Value::Array(Array::I64(vec![1, -2]))),
            ],
            vec![
                Event::new(
                    "message",
                    start() + Duration::from_nanos(1_000),
                    vec![
                        KeyValue::new("sendmmsg.message.index", 0),
                        KeyValue::new("sendmmsg.message.bytes", 10),
                    ],
                    0,
                ),
                Event::new(
                    "message",
                    start() + Duration::from_nanos(2_000),
                    vec![KeyValue::new("sendmmsg.message.index", 1), KeyValue::new("error.type", "EMSGSIZE")],
                    0,
                ),
            ],
            Status::error("message 2 of 2 failed: EMSGSIZE"),
        );
        span.span_context = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        if let Some(parent) = parent {
            span.parent_span_id = parent;
            span.parent_span_is_remote = true;
        }
        span
    }

    fn parsed(line: &str) -> Json {
        assert!(!line.contains('\n'), "one line: {line:?}");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    #[test]
    fn a_span_is_the_otlp_spans_fields_with_typed_values() {
        let parent = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let resource = resource_for(&[KeyValue::new("host.name", "node-1")], &process("dns", "unbound"));
        let got = parsed(&json_line(&call_span(Some(parent), "unbound"), &resource));
        assert_eq!(
            got,
            json!({
                "name": "sendmmsg",
                "trace_id": "0af7651916cd43dd8448eb211c80319c",
                "span_id": "b7ad6b7169203331",
                "parent_span_id": "00f067aa0ba902b7",
                "kind": "SPAN_KIND_INTERNAL",
                "start_time_unix_nano": "1700000000123456789",
                "end_time_unix_nano": "1700000000123459889",
                "start_time": "2023-11-14T22:13:20.123456789Z",
                "duration_ns": 3100,
                "status": {"code": "STATUS_CODE_ERROR", "message": "message 2 of 2 failed: EMSGSIZE"},
                "attributes": {
                    "sendmmsg.sockfd": 7,
                    "sendmmsg.flags.names": "MSG_DONTWAIT",
                    "error.type": "EMSGSIZE",
                    "thread.name": "unbound",
                    "test.bool": true,
                    "test.double": 0.5,
                    "test.ints": [1, -2],
                },
                "events": [
                    {
                        "name": "message",
                        "time_unix_nano": "1700000000123457789",
                        "attributes": {"sendmmsg.message.index": 0, "sendmmsg.message.bytes": 10},
                    },
                    {
                        "name": "message",
                        "time_unix_nano": "1700000000123458789",
                        "attributes": {"sendmmsg.message.index": 1, "error.type": "EMSGSIZE"},
                    },
                ],
                "resource": {"attributes": {
                    "host.name": "node-1",
                    "deployment.environment.name": "prod",
                    "service.name": "dns",
                    "process.pid": 4242,
                    "process.executable.name": "unbound",
                }},
                "scope": {"name": "otel-sendmmsg", "version": env!("CARGO_PKG_VERSION")},
            })
        );
    }

    #[test]
    fn resource_attributes_come_in_the_same_order_every_time() {
        let resource = resource_for(&[KeyValue::new("host.name", "node-1")], &process("dns", "unbound"));
        let line = json_line(&call_span(None, "unbound"), &resource);
        let resource_part = line.split(r#""resource":"#).nth(1).unwrap();
        let at = |key: &str| resource_part.find(&format!(r#""{key}":"#)).unwrap_or_else(|| panic!("{key}"));
        let keys = [
            "deployment.environment.name",
            "host.name",
            "process.executable.name",
            "process.pid",
            "service.name",
        ];
        assert!(keys.windows(2).all(|w| at(w[0]) < at(w[1])), "{line}");
    }

    #[test]
    fn a_root_has_no_parent_and_an_unset_status_no_message() {
        let resource = resource_for(&[], &process("dns", "unbound"));
        let mut span = call_span(None, "unbound");
        span.status = Status::Unset;
        span.events = Default::default();
        let got = parsed(&json_line(&span, &resource));
        let fields = got.as_object().unwrap();
        assert!(!fields.contains_key("parent_span_id"), "{got}");
        assert_eq!(got["status"], json!({"code": "STATUS_CODE_UNSET"}));
        assert_eq!(got["events"], json!([]));
        let message = finished(MESSAGE_SPAN_NAME, start(), start(), vec![], vec![], Status::error(""));
        assert_eq!(parsed(&json_line(&message, &resource))["status"], json!({"code": "STATUS_CODE_ERROR"}));
    }

    #[test]
    fn names_from_traced_processes_stay_on_one_line_and_out_of_the_terminal() {
        // Any process names its threads (`prctl(PR_SET_NAME)`, 15 bytes, any bytes but NUL, which
        // the decoder makes lossy UTF-8) and chooses its service name and resource.
        let hostile = "w\"\\\n\r\t\x1b[2J\x07\u{7f}\u{9b}31m\u{2028}\u{fffd}é";
        let process = ProcessInfo {
            attributes: vec![KeyValue::new(format!("key\n{hostile}"), hostile.to_owned())],
            ..process(hostile, hostile)
        };
        let line = json_line(&call_span(None, hostile), &resource_for(&[], &process));
        assert!(!line.contains(|c: char| c.is_control() || needs_escape(c)), "{line:?}");
        assert!(
            line.contains(r#""thread.name":"w\"\\\n\r\t\u001b[2J\u0007\u007f\u009b31m\u2028�é""#),
            "{line}"
        );
        let got = parsed(&line);
        assert_eq!(got["attributes"]["thread.name"], hostile, "the reader gets the name back exactly");
        assert_eq!(got["resource"]["attributes"]["service.name"], hostile);
        assert_eq!(got["resource"]["attributes"][format!("key\n{hostile}")], hostile);
    }

    #[test]
    fn doubles_json_cannot_hold_are_spelled_as_protobuf_does() {
        let span = finished(
            SPAN_NAME,
            start(),
            start(),
            vec![
                KeyValue::new("nan", f64::NAN),
                KeyValue::new("inf", f64::INFINITY),
                KeyValue::new("minus_inf", f64::NEG_INFINITY),
                KeyValue::new("doubles", Value::Array(Array::F64(vec![1.5, f64::NAN]))),
                KeyValue::new("strings", Value::Array(Array::String(vec!["a".into(), "b\n".into()]))),
                KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            ],
            vec![],
            Status::Ok,
        );
        let got = parsed(&json_line(&span, &resource_for(&[], &process("s", "t"))));
        assert_eq!(
            got["attributes"],
            json!({
                "nan": "NaN",
                "inf": "Infinity",
                "minus_inf": "-Infinity",
                "doubles": [1.5, "NaN"],
                "strings": ["a", "b\n"],
                "bools": [true, false],
            })
        );
        assert_eq!(got["status"], json!({"code": "STATUS_CODE_OK"}));
    }

    #[test]
    fn times_outside_rfc_3339s_range_are_not_a_panic() {
        let resource = resource_for(&[], &process("s", "t"));
        let before = UNIX_EPOCH - Duration::from_secs(1);
        let got = parsed(&json_line(
            &finished(SPAN_NAME, before, before, vec![], vec![], Status::Unset),
            &resource,
        ));
        assert_eq!((got["start_time_unix_nano"].as_str(), got["duration_ns"].as_u64()), (Some("0"), Some(0)));
        assert_eq!(got.get("start_time"), None);
        let far = UNIX_EPOCH + Duration::from_nanos(u64::MAX);
        let got =
            parsed(&json_line(&finished(SPAN_NAME, far, far, vec![], vec![], Status::Unset), &resource));
        assert_eq!(got["start_time_unix_nano"], u64::MAX.to_string());
        assert_eq!(got["start_time"], "2554-07-21T23:34:33.709551615Z");
    }
}
