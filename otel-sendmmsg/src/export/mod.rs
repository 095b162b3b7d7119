//! Span -> the configured destination: an OTLP collector (gRPC or HTTP/protobuf, through the
//! OpenTelemetry SDK's batch processor), or one readable line per call on stdout.

use std::io::Write;

use anyhow::{Context as _, Result};
use opentelemetry::{
    trace::{
        Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
        TraceId, TraceState, TracerProvider as _,
    },
    Context, Value,
};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::{
    trace::{Sampler, SdkTracer, SdkTracerProvider},
    Resource,
};

use crate::{
    config::{Output, Protocol},
    spans::{SyscallSpan, SPAN_NAME},
};

/// The resource's `service.name` when `OTEL_SERVICE_NAME` does not name one.
const DEFAULT_SERVICE_NAME: &str = "otel-sendmmsg";

pub enum Exporter {
    Console(std::io::Stdout),
    Otlp { provider: SdkTracerProvider, tracer: SdkTracer },
    Discard,
}

impl Exporter {
    /// Builds the exporter for `output`. For OTLP the SDK reads endpoint, headers, timeout and
    /// `OTEL_BSP_*` from the environment, which `config` has already validated. Must run inside
    /// the tokio runtime: the gRPC channel's tasks live there.
    pub fn new(output: &Output) -> Result<Self> {
        Ok(match output {
            Output::Console => Exporter::Console(std::io::stdout()),
            Output::Discard => Exporter::Discard,
            Output::Otlp { protocol, .. } => {
                let exporter = match protocol {
                    Protocol::Grpc => SpanExporter::builder().with_tonic().build(),
                    Protocol::HttpProtobuf => SpanExporter::builder().with_http().build(),
                }
                .context("building the OTLP exporter")?;
                let mut resource = Resource::builder();
                if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
                    resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
                }
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    // Every call the kernel reported is exported; filtering happens in the kernel.
                    .with_sampler(Sampler::AlwaysOn)
                    .with_resource(resource.build())
                    .build();
                let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
                Exporter::Otlp { provider, tracer }
            }
        })
    }

    pub fn export(&mut self, span: SyscallSpan) {
        match self {
            Exporter::Console(out) => {
                // A closed stdout (the reader went away) must not stop tracing.
                let _ = writeln!(out.lock(), "{}", console_line(&span));
            }
            Exporter::Otlp { tracer, .. } => {
                // The app's span, as a remote parent: the syscall span joins its trace.
                let parent = match span.parent {
                    Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                        TraceId::from_bytes(p.trace_id),
                        SpanId::from_bytes(p.span_id),
                        TraceFlags::SAMPLED,
                        true,
                        TraceState::default(),
                    )),
                    None => Context::new(),
                };
                let mut otel_span = SpanBuilder::from_name(SPAN_NAME)
                    .with_kind(SpanKind::Internal)
                    .with_start_time(span.start)
                    .with_attributes(span.attributes)
                    .with_events(span.events)
                    .start_with_context(tracer, &parent);
                otel_span.set_status(span.status);
                otel_span.end_with_timestamp(span.end);
            }
            Exporter::Discard => {}
        }
    }

    /// Flushes every pending span and stops the exporter.
    pub fn shutdown(self) -> Result<()> {
        match self {
            Exporter::Console(out) => out.lock().flush().context("flushing stdout"),
            Exporter::Otlp { provider, .. } => provider.shutdown().context("flushing spans to the collector"),
            Exporter::Discard => Ok(()),
        }
    }
}

/// One line per call: time, name, duration, status, then every attribute as `key=value`.
pub fn console_line(span: &SyscallSpan) -> String {
    use std::fmt::Write as _;
    let duration = span.end.duration_since(span.start).unwrap_or_default();
    let mut line = format!(
        "{} {SPAN_NAME} {:.1}us",
        humantime::format_rfc3339_micros(span.start),
        duration.as_nanos() as f64 / 1000.0
    );
    match &span.status {
        Status::Error { .. } => line.push_str(" ERROR"),
        _ => line.push_str(" OK"),
    }
    for kv in &span.attributes {
        match &kv.value {
            Value::String(s) if s.as_str().contains(' ') || s.as_str().is_empty() => {
                let _ = write!(line, " {}={:?}", kv.key, s.as_str());
            }
            v => {
                let _ = write!(line, " {}={}", kv.key, v);
            }
        }
    }
    if !span.events.is_empty() {
        let _ = write!(line, " events={}", span.events.len());
    }
    line
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry::{trace::Event, KeyValue};

    use super::*;

    #[test]
    fn a_console_line_shows_time_duration_status_and_attributes() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let span = SyscallSpan {
            pid: 7,
            parent: None,
            children: vec![],
            start,
            end: start + Duration::from_nanos(3_100),
            attributes: vec![
                KeyValue::new("sendmmsg.sockfd", 7),
                KeyValue::new("error.type", "EMSGSIZE"),
                KeyValue::new("thread.name", "my worker"),
            ],
            events: vec![Event::new("message", start, vec![], 0)],
            status: Status::error("message 1 of 2 failed: EMSGSIZE"),
        };
        assert_eq!(
            console_line(&span),
            "2023-11-14T22:13:20.000000Z sendmmsg 3.1us ERROR sendmmsg.sockfd=7 error.type=EMSGSIZE \
             thread.name=\"my worker\" events=1"
        );
    }
}
