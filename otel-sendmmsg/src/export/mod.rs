//! Finished spans -> the configured destination: an OTLP collector (gRPC or HTTP/protobuf,
//! through [`batcher`], each process's spans under its own resource), or stdout: one readable
//! line per call, or one JSON object per span ([`json_lines`]). The span module makes a call's
//! spans into the form this exporter takes ([`Exporter::spans_of`]: OTLP's bytes for a
//! collector, written as they are made, the SDK's `SpanData` for the console), and they come
//! with their process's resource: export only queues, batches, sends and counts. Every span
//! handed over is accounted for in [`ExportStats`].

pub mod batcher;
pub mod json_lines;
pub mod otlp;
pub mod otlp_encode;
pub mod retry;
pub mod transport;

use std::{io::Write, sync::Arc};

use anyhow::{Context as _, Result};
use opentelemetry::{trace::Status, Key, Value};
use opentelemetry_sdk::{
    trace::{RandomIdGenerator, SpanData},
    Resource,
};

use crate::{
    clock::WallClock,
    config::{BatchConfig, ConsoleFormat, Output},
    health::Beat,
    records::Call,
    span::{self, attributes::Attributes, SpanHead, SpanOptions, SpanSink, Written},
};
use batcher::Batcher;
use json_lines::json_line;
use otlp::{OtlpExporter, Signal};
use otlp_encode::{EncodedSpans, Encoder};

/// What became of the spans handed to the exporter, each counted once: a call's span and each
/// of its message child spans (`OTEL_SENDMMSG_MESSAGE_DETAIL=spans`) count one each, so
/// `exported + dropped_queue_full + failed` is every span handed over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Accepted by the collector (OTLP), or written to stdout (console text: a call's line
    /// stands for its span and its children; JSON: a line each).
    pub exported: u64,
    /// Dropped on arrival because `OTEL_BSP_MAX_QUEUE_SIZE` spans were already waiting.
    pub dropped_queue_full: u64,
    /// Sent but not accepted: the exporter gave up after its own retries, the export took
    /// longer than `OTEL_BSP_EXPORT_TIMEOUT`, or the flush at shutdown ran out of time for it
    /// (console: the line could not be written).
    pub failed: u64,
}

pub enum Exporter {
    Console {
        out: std::io::Stdout,
        format: ConsoleFormat,
        stats: ExportStats,
    },
    Otlp {
        batcher: Batcher,
        encoder: Encoder,
    },
    /// Exports and counts nothing (`OTEL_TRACES_EXPORTER=none`).
    Discard,
}

/// One call's spans, made the way the exporter that made them takes them
/// ([`Exporter::spans_of`]).
pub struct CallSpans(Made);

enum Made {
    Finished(Vec<SpanData>),
    Encoded(EncodedSpans),
    Nothing(usize),
}

impl CallSpans {
    /// How many spans: the call's and its message children.
    pub fn count(&self) -> usize {
        match &self.0 {
            Made::Finished(spans) => spans.len(),
            Made::Encoded(spans) => spans.count(),
            Made::Nothing(count) => *count,
        }
    }
}

/// A [`SpanSink`] that keeps nothing: what [`span::write`] says of the spans is all there is.
struct Nowhere;

impl Attributes for Nowhere {
    fn int(&mut self, _: &'static str, _: i64) {}
    fn text(&mut self, _: &'static str, _: &str) {}
}

impl SpanSink for Nowhere {
    fn begin(&mut self, _: &SpanHead) {}
    fn begin_event(&mut self, _: &'static str, _: std::time::SystemTime) {}
    fn end_event(&mut self) {}
    fn end(&mut self, _: Status) {}
}

impl Exporter {
    /// Builds the exporter for `output`: the console printing in `format`, OTLP with a queue
    /// bounded and timed by `batch` and `beat` as its task's heartbeat (health.rs). Must run
    /// inside the tokio runtime: the export task and the clients' connections live there.
    pub fn new(output: &Output, format: ConsoleFormat, batch: BatchConfig, beat: Arc<Beat>) -> Result<Self> {
        Ok(match output {
            Output::Console => {
                Exporter::Console { out: std::io::stdout(), format, stats: ExportStats::default() }
            }
            Output::Discard => Exporter::Discard,
            Output::Otlp(otlp) => {
                // Built before starting, so an error comes back here; one per concurrent export.
                let mut exporters = (0..batch.max_concurrent_exports.max(1))
                    .map(|_| OtlpExporter::new(otlp, Signal::Traces).context("building the OTLP exporter"))
                    .collect::<Result<Vec<_>>>()?;
                let batcher = Batcher::start(
                    move || exporters.pop().expect("one exporter per concurrent export"),
                    batch,
                    beat,
                );
                Exporter::Otlp { batcher, encoder: Encoder::default() }
            }
        })
    }

    /// One call's spans ([`span::write`]) made the way this exporter takes them: the SDK's
    /// `SpanData` for the console, OTLP's bytes straight away for a collector; and what they
    /// were. They wait for their resource, if need be, and go to [`Exporter::export`].
    pub fn spans_of(&mut self, call: &Call, clock: &WallClock, options: SpanOptions) -> (CallSpans, Written) {
        let ids = RandomIdGenerator::default();
        match self {
            Exporter::Console { .. } => {
                let (spans, written) = span::finished(call, clock, options, &ids);
                (CallSpans(Made::Finished(spans)), written)
            }
            Exporter::Otlp { encoder, .. } => {
                let (spans, written) = encoder.call(call, clock, options, &ids);
                (CallSpans(Made::Encoded(spans)), written)
            }
            Exporter::Discard => {
                let written = span::write(call, clock, options, &ids, &mut Nowhere);
                (CallSpans(Made::Nothing(written.spans)), written)
            }
        }
    }

    /// Hands over one call's spans, as [`Exporter::spans_of`] made them, and the resource
    /// they go under. Never blocks.
    pub fn export(&mut self, spans: CallSpans, resource: Arc<Resource>) {
        match (self, spans.0) {
            (Exporter::Console { out, format, stats }, Made::Finished(spans)) => {
                let count = spans.len() as u64;
                // Written at once, so a call's lines stay together and are counted together. A
                // closed stdout (the reader went away) must not stop tracing: counted.
                match writeln!(out.lock(), "{}", console_lines(*format, &spans, &resource)) {
                    Ok(()) => stats.exported += count,
                    Err(_) => stats.failed += count,
                }
            }
            (Exporter::Otlp { batcher, .. }, Made::Encoded(spans)) => {
                batcher.enqueue(spans, resource);
            }
            // Discarded; or made by another exporter, which cannot be: a pipeline has one.
            _ => {}
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> ExportStats {
        match self {
            Exporter::Console { stats, .. } => *stats,
            Exporter::Otlp { batcher, .. } => batcher.stats(),
            Exporter::Discard => ExportStats::default(),
        }
    }

    /// Flushes every pending span (for OTLP within one `OTEL_BSP_EXPORT_TIMEOUT` and by
    /// `deadline`) and stops the exporter. Spans the collector did not take are counted, not an
    /// error. The caller may give up on it; [`Exporter::final_stats`] still counts every span.
    pub async fn flush(&mut self, deadline: tokio::time::Instant) -> Result<()> {
        match self {
            Exporter::Console { out, .. } => out.lock().flush().context("flushing stdout"),
            Exporter::Otlp { batcher, .. } => batcher.flush(Some(deadline)).await,
            Exporter::Discard => Ok(()),
        }
    }

    /// The counts after [`Exporter::flush`], or once it was given up on: spans not yet settled
    /// then count as failed.
    pub fn final_stats(&self) -> ExportStats {
        match self {
            Exporter::Otlp { batcher, .. } => batcher.final_stats(),
            _ => self.stats(),
        }
    }
}

/// What the console prints for one call's spans (its own first), without the last newline:
/// as text, one line for the call; as JSON, a line per span, children too, as OTLP has them.
pub fn console_lines(format: ConsoleFormat, spans: &[SpanData], resource: &Resource) -> String {
    match format {
        ConsoleFormat::Text => spans.first().map(|call| console_line(call, resource)).unwrap_or_default(),
        ConsoleFormat::Json => {
            spans.iter().map(|span| json_line(span, resource)).collect::<Vec<_>>().join("\n")
        }
    }
}

/// One line per call, from the call's own span: time, name, duration, status, the
/// `service.name` of its resource (its process's), then every attribute as `key=value`.
pub fn console_line(span: &SpanData, resource: &Resource) -> String {
    use std::fmt::Write as _;
    let duration = span.end_time.duration_since(span.start_time).unwrap_or_default();
    let mut line = format!(
        "{} {} {:.1}us",
        humantime::format_rfc3339_micros(span.start_time),
        span.name,
        duration.as_nanos() as f64 / 1000.0
    );
    match &span.status {
        Status::Error { .. } => line.push_str(" ERROR"),
        _ => line.push_str(" OK"),
    }
    if let Some(service) = resource.get(&Key::from_static_str("service.name")) {
        push_value(&mut line, "service.name", &service);
    }
    for kv in &span.attributes {
        push_value(&mut line, kv.key.as_str(), &kv.value);
    }
    if !span.events.is_empty() {
        let _ = write!(line, " events={}", span.events.len());
    }
    line
}

/// ` key=value`, the value quoted and escaped when it is empty or has whitespace or a control
/// character. Thread and service names come from the traced processes (any process can name its
/// threads `a\nb` with `prctl(PR_SET_NAME)`): raw, a newline would forge a line and an escape
/// sequence would reach the reader's terminal.
fn push_value(line: &mut String, key: &str, value: &Value) {
    use std::fmt::Write as _;
    let _ = match value {
        Value::String(s)
            if s.as_str().is_empty()
                || s.as_str().contains(|c: char| c.is_whitespace() || c.is_control()) =>
        {
            write!(line, " {key}={:?}", s.as_str())
        }
        v => write!(line, " {key}={v}"),
    };
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use opentelemetry::{
        trace::{Event, SpanContext, SpanKind},
        KeyValue,
    };
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;
    use crate::{
        process::ProcessInfo,
        span::{resource::resource_for, scope, MESSAGE_SPAN_NAME, SPAN_NAME},
    };

    /// A process of pid 7 named `service`, without an executable or container.
    fn process(service: &str) -> ProcessInfo {
        ProcessInfo {
            pid: 7,
            executable_name: None,
            service_name: service.into(),
            container_id: None,
            attributes: Vec::new(),
        }
    }

    /// A finished span as the span module makes them; only what export reads is set.
    pub(super) fn finished(
        name: &'static str,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
        events: Vec<Event>,
        status: Status,
    ) -> SpanData {
        let mut span_events = SpanEvents::default();
        span_events.events = events;
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: span_events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope(),
        }
    }

    #[test]
    fn a_console_line_shows_time_duration_status_and_attributes() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let span = finished(
            SPAN_NAME,
            start,
            start + Duration::from_nanos(3_100),
            vec![
                KeyValue::new("sendmmsg.sockfd", 7),
                KeyValue::new("error.type", "EMSGSIZE"),
                KeyValue::new("thread.name", "my worker"),
            ],
            vec![Event::new("message", start, vec![], 0)],
            Status::error("message 1 of 2 failed: EMSGSIZE"),
        );
        let process = ProcessInfo {
            pid: 7,
            executable_name: Some("dns-server".into()),
            service_name: "dns".into(),
            container_id: None,
            attributes: Vec::new(),
        };
        assert_eq!(
            console_line(&span, &resource_for(&[], &process)),
            "2023-11-14T22:13:20.000000Z sendmmsg 3.1us ERROR service.name=dns sendmmsg.sockfd=7 \
             error.type=EMSGSIZE thread.name=\"my worker\" events=1"
        );
        let spaced = ProcessInfo { service_name: "my dns".into(), ..process };
        assert!(console_line(&span, &resource_for(&[], &spaced))
            .contains(" ERROR service.name=\"my dns\" sendmmsg.sockfd=7 "));
    }

    #[test]
    fn names_from_traced_processes_cannot_break_the_line() {
        // Found by fuzzing (fuzz/fuzz_targets/records_decode.rs): a thread named with a newline
        // or an escape sequence was printed raw.
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let span = finished(
            SPAN_NAME,
            start,
            start,
            vec![KeyValue::new("thread.name", "w\n2023-11-14T22:13:20Z fake")],
            vec![],
            Status::Unset,
        );
        let process = process("evil\x1b[2J\tname");
        let line = console_line(&span, &resource_for(&[], &process));
        assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
        assert!(line
            .ends_with(r#" service.name="evil\u{1b}[2J\tname" thread.name="w\n2023-11-14T22:13:20Z fake""#));
    }
    #[test]
    fn as_json_each_span_of_a_call_is_a_line_of_its_own() {
        let process = process("svc");
        let resource = resource_for(&[], &process);
        let clock = crate::clock::WallClock::from_readings(1_700_000_000_000_000_000, 0);
        let record = crate::records::tests::record(&[100, -libc::EMSGSIZE]);
        let call = crate::records::decode(&crate::records::tests::bytes_of(&record)).unwrap();
        let options = crate::span::SpanOptions {
            per_message: true,
            view: crate::config::MessageView::Spans,
            msgvec_address: false,
        };
        let spans = crate::span::build(&call, &clock, options);
        assert_eq!(spans.len(), 3);
        assert_eq!(console_lines(ConsoleFormat::Text, &spans, &resource).lines().count(), 1);
        let json = console_lines(ConsoleFormat::Json, &spans, &resource);
        let lines: Vec<serde_json::Value> =
            json.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        assert_eq!(lines.len(), 3, "{json}");
        assert_eq!(lines[0]["name"], SPAN_NAME);
        for (index, child) in lines[1..].iter().enumerate() {
            assert_eq!(child["name"], MESSAGE_SPAN_NAME);
            assert_eq!(child["trace_id"], lines[0]["trace_id"]);
            assert_eq!(child["parent_span_id"], lines[0]["span_id"]);
            assert_eq!(child["attributes"]["sendmmsg.message.index"], index);
        }
        assert_eq!(lines[2]["status"]["code"], "STATUS_CODE_ERROR");
    }

    #[tokio::test]
    async fn the_console_counts_a_line_for_the_call_and_its_children() {
        let clock = crate::clock::WallClock::from_readings(1_700_000_000_000_000_000, 0);
        let call =
            crate::records::decode(&crate::records::tests::bytes_of(&crate::records::tests::record(&[
                1, 2, 3,
            ])))
            .unwrap();
        let options =
            SpanOptions { per_message: true, view: crate::config::MessageView::Spans, msgvec_address: false };
        let process = process("svc");
        let resource = Arc::new(resource_for(&[], &process));
        let mut console =
            Exporter::new(&Output::Console, ConsoleFormat::Text, BatchConfig::default(), Arc::default())
                .unwrap();
        let (spans, written) = console.spans_of(&call, &clock, options);
        assert_eq!((spans.count(), written.spans), (4, 4));
        console.export(spans, resource.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        console.flush(deadline).await.unwrap();
        assert_eq!(console.final_stats(), ExportStats { exported: 4, dropped_queue_full: 0, failed: 0 });
        let mut discard =
            Exporter::new(&Output::Discard, ConsoleFormat::Text, BatchConfig::default(), Arc::default())
                .unwrap();
        let (spans, written) = discard.spans_of(&call, &clock, options);
        assert_eq!((spans.count(), written.spans), (4, 4));
        discard.export(spans, resource);
        discard.flush(deadline).await.unwrap();
        assert_eq!(discard.final_stats(), ExportStats::default());
    }
}
