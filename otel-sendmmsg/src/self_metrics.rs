//! The sidecar's health as OTLP metrics: the counters of the closing summary (losses, what the
//! export made of the spans, calls in flight), so a collector can alert on a tracer that drops
//! data instead of someone reading its log.
//!
//! The run loop copies the counters into [`Totals`] every [`REFRESH`]; the SDK's periodic reader
//! reads that copy on its own thread every `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s) and
//! exports it, and once more at shutdown with the final counts.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use opentelemetry::{metrics::MeterProvider as _, KeyValue};
use opentelemetry_otlp::{MetricExporter, WithHttpConfig};
use opentelemetry_sdk::{
    metrics::{PeriodicReader, SdkMeterProvider},
    Resource,
};

use crate::{
    config::{Otlp, Protocol, Temporality},
    export::transport::{blocking_http_client, grpc_settings, http_settings},
};

/// How often the run loop copies the counters for the reader: the most a metric lags.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Each summary counter as a metric: (summary name, metric name, `reason` attribute). Counters
/// of one metric differ by `reason`, so a dashboard can sum them or tell them apart.
const METRICS: &[(&str, &str, Option<&str>)] = &[
    ("ring_buffer_full", "otel_sendmmsg.records.dropped", Some("ring_buffer_full")),
    ("inflight_full", "otel_sendmmsg.records.dropped", Some("inflight_full")),
    ("exit_missed", "otel_sendmmsg.records.dropped", Some("exit_missed")),
    ("exit_without_entry", "otel_sendmmsg.records.dropped", Some("exit_without_entry")),
    ("undecodable_records", "otel_sendmmsg.records.dropped", Some("undecodable")),
    ("spans", "otel_sendmmsg.spans", None),
    ("exported", "otel_sendmmsg.spans.exported", None),
    ("export_queue_full", "otel_sendmmsg.spans.dropped", Some("export_queue_full")),
    ("export_failed", "otel_sendmmsg.spans.dropped", Some("export_failed")),
    ("filtered_at_exit", "otel_sendmmsg.calls.filtered", None),
    ("stray_messages", "otel_sendmmsg.messages.stray", None),
    // A cause, not more calls: its losses are already among `records.dropped`.
    ("kernel_missed", "otel_sendmmsg.programs.missed", None),
    ("kretprobe_missed", "otel_sendmmsg.kretprobes.missed", None),
    // Spans still delivered, under a resource named after their thread.
    ("process_metadata_unavailable", "otel_sendmmsg.processes.unread", None),
    // Identities captured in the kernel at a process's first call; those missing something
    // (completed from /proc while the process lives); those lost to a full ring buffer.
    ("identities_captured", "otel_sendmmsg.identities.captured", None),
    ("identities_incomplete", "otel_sendmmsg.identities.incomplete", None),
    ("identities_dropped", "otel_sendmmsg.identities.dropped", None),
    // The OTEP 4947 thread context: calls left out under an unsampled parent (the sampler, not a
    // loss); records that could not be read or were malformed (calls traced without that
    // parent); processes not read at the cap.
    ("parent_not_sampled", "otel_sendmmsg.calls.unsampled", None),
    ("thread_context_unreadable", "otel_sendmmsg.thread_contexts.refused", Some("unreadable")),
    ("thread_context_malformed", "otel_sendmmsg.thread_contexts.refused", Some("malformed")),
    // Calls the call metrics could not count: a new series found the series map full.
    ("metric_series_full", "otel_sendmmsg.calls.uncounted", None),
    ("context_processes_refused", "otel_sendmmsg.context_processes.refused", None),
    // Processes still described, from their environment instead of their process context.
    ("process_contexts_refused", "otel_sendmmsg.process_contexts.refused", None),
];

/// Not a running total: the calls inside `sendmmsg` right now.
const INFLIGHT: (&str, &str) = ("inflight", "otel_sendmmsg.calls.inflight");

/// The latest counts, by summary name, shared with the reader's callbacks.
#[derive(Clone, Default)]
pub struct Totals(Arc<Mutex<Vec<(&'static str, u64)>>>);

impl Totals {
    /// Replaces the counts named in `counts`; others keep their last value.
    pub fn update(&self, counts: impl IntoIterator<Item = (&'static str, u64)>) {
        let mut totals = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, n) in counts {
            match totals.iter_mut().find(|(known, _)| *known == name) {
                Some((_, value)) => *value = n,
                None => totals.push((name, n)),
            }
        }
    }

    fn get(&self, name: &str) -> Option<u64> {
        let totals = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        totals.iter().find(|(known, _)| *known == name).map(|(_, n)| *n)
    }

    /// The data points of metric `metric`: one per counter mapped to it that has a value.
    fn points(&self, metric: &str) -> Vec<(u64, Vec<KeyValue>)> {
        METRICS
            .iter()
            .filter(|(_, name, _)| *name == metric)
            .filter_map(|(counter, _, reason)| {
                let attributes = reason.map(|r| vec![KeyValue::new("reason", r)]).unwrap_or_default();
                Some((self.get(counter)?, attributes))
            })
            .collect()
    }
}

/// The meter provider that exports [`Totals`].
pub struct SelfMetrics {
    provider: SdkMeterProvider,
    pub totals: Totals,
}

impl SelfMetrics {
    /// Starts exporting to `otlp` every `interval`, under the sidecar's own resource: `base`
    /// (the one every span's resource starts from) named `service_name`. Must run inside the
    /// tokio runtime: the gRPC client's connection task lives there.
    pub fn start(
        otlp: &Otlp,
        interval: Duration,
        temporality: Temporality,
        base: Vec<KeyValue>,
        service_name: &str,
    ) -> Result<SelfMetrics> {
        let temporality = match temporality {
            Temporality::Cumulative => opentelemetry_sdk::metrics::Temporality::Cumulative,
            Temporality::Delta => opentelemetry_sdk::metrics::Temporality::Delta,
        };
        let exporter = match otlp.protocol {
            Protocol::Grpc => {
                grpc_settings(MetricExporter::builder().with_tonic().with_temporality(temporality), otlp)?
                    .build()
            }
            Protocol::HttpProtobuf => {
                let client = blocking_http_client(otlp)?;
                let builder = MetricExporter::builder().with_http().with_http_client(client);
                http_settings(builder.with_temporality(temporality), otlp).build()
            }
        }
        .context("building the OTLP metric exporter")?;
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter).with_interval(interval).build())
            .with_resource(own_resource(base, service_name))
            .build();
        let totals = Totals::default();
        let meter = provider.meter("otel-sendmmsg");
        let mut names: Vec<&'static str> = Vec::new();
        for (_, name, _) in METRICS {
            if !names.contains(name) {
                names.push(name);
            }
        }
        for name in names {
            let totals = totals.clone();
            meter
                .u64_observable_counter(name)
                .with_description(description(name))
                .with_callback(move |observer| {
                    for (value, attributes) in totals.points(name) {
                        observer.observe(value, &attributes);
                    }
                })
                .build();
        }
        let inflight = totals.clone();
        meter
            .u64_observable_gauge(INFLIGHT.1)
            .with_description("calls inside sendmmsg being traced right now")
            .with_callback(move |observer| {
                if let Some(n) = inflight.get(INFLIGHT.0) {
                    observer.observe(n, &[]);
                }
            })
            .build();
        Ok(SelfMetrics { provider, totals })
    }

    /// Exports the counts as they are now one last time and stops. The SDK blocks while it
    /// exports, so it runs off the runtime's threads (the gRPC client needs them meanwhile).
    pub async fn shutdown(self) {
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("exporting the sidecar's own metrics at shutdown: {e}"),
            Err(e) => tracing::warn!("stopping the sidecar's own metrics: {e}"),
        }
    }
}

/// The sidecar's own resource: its service name over `base`, the resource every span's
/// resource starts from (`OTEL_RESOURCE_ATTRIBUTES`, `telemetry.sdk.*`).
fn own_resource(base: Vec<KeyValue>, service_name: &str) -> Resource {
    // Later attributes win.
    Resource::builder_empty()
        .with_attributes(base.into_iter().chain([KeyValue::new("service.name", service_name.to_owned())]))
        .build()
}

fn description(metric: &str) -> &'static str {
    match metric {
        "otel_sendmmsg.records.dropped" => "calls whose record was lost before it became a span, by reason",
        "otel_sendmmsg.spans" => {
            "spans made from calls and handed to the exporter (message child spans count one each)"
        }
        "otel_sendmmsg.spans.exported" => "spans the collector accepted",
        "otel_sendmmsg.spans.dropped" => {
            "spans handed to the exporter that never reached the collector, by reason"
        }
        "otel_sendmmsg.calls.filtered" => {
            "calls dropped by OTEL_SENDMMSG_MIN_DURATION or ERRORS_ONLY (not a loss)"
        }
        "otel_sendmmsg.messages.stray" => {
            "per-message hook hits that were not the traced call's messages (ignored)"
        }
        "otel_sendmmsg.programs.missed" => {
            "runs of the sidecar's BPF programs the kernel skipped (their calls are counted in records.dropped)"
        }
        "otel_sendmmsg.kretprobes.missed" => {
            "returns the kernel missed on the sidecar's kretprobes, maxactive calls being inside already (their calls are counted in records.dropped)"
        }
        "otel_sendmmsg.processes.unread" => {
            "processes whose spans went under a resource named after their thread: reading /proc took too long"
        }
        "otel_sendmmsg.identities.captured" => {
            "process identities (environment, executable, cgroup) captured in the kernel at a process's first call"
        }
        "otel_sendmmsg.identities.incomplete" => {
            "captured identities missing part of the environment, the executable or the cgroup (completed from /proc while the process lives)"
        }
        "otel_sendmmsg.identities.dropped" => {
            "identities the kernel could not send, the ring buffer being full (the process's next call tries again)"
        }
        "otel_sendmmsg.calls.unsampled" => {
            "calls not traced because the thread's published OTEP 4947 span is not sampled (the parent-based sampler; not a loss)"
        }
        "otel_sendmmsg.thread_contexts.refused" => {
            "OTEP 4947 thread contexts not taken as a call's parent, by reason: unreadable memory, or a malformed record"
        }
        "otel_sendmmsg.calls.uncounted" => {
            "calls left out of the sendmmsg.* metrics because OTEL_SENDMMSG_MAX_METRIC_SERIES series were full"
        }
        "otel_sendmmsg.context_processes.refused" => {
            "processes defining the OTEP 4947 thread context not read because OTEL_SENDMMSG_MAX_CONTEXT_PROCESSES were"
        }
        "otel_sendmmsg.process_contexts.refused" => {
            "reads of a process's OTEP 4719 process context refused (torn, malformed or over the bounds): its resource came from its environment"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::Key;

    use super::*;

    #[test]
    fn each_counter_becomes_a_point_of_its_metric_with_its_reason() {
        let totals = Totals::default();
        totals.update([("ring_buffer_full", 7), ("undecodable_records", 2), ("exported", 40)]);
        totals.update([("ring_buffer_full", 9)]);
        let dropped = totals.points("otel_sendmmsg.records.dropped");
        assert_eq!(
            dropped,
            vec![
                (9, vec![KeyValue::new("reason", "ring_buffer_full")]),
                (2, vec![KeyValue::new("reason", "undecodable")]),
            ]
        );
        assert_eq!(totals.points("otel_sendmmsg.spans.exported"), vec![(40, vec![])]);
        // Never read: no point rather than a made-up zero.
        assert!(totals.points("otel_sendmmsg.spans.dropped").is_empty());
    }

    #[test]
    fn every_loss_the_summary_names_is_a_metric() {
        for counter in crate::run::LOSSES {
            let lost = |metric: &str| metric.ends_with(".dropped") || metric.ends_with(".missed");
            assert!(METRICS.iter().any(|(name, metric, _)| name == counter && lost(metric)), "{counter}");
        }
        for (_, metric, _) in METRICS {
            assert!(!description(metric).is_empty(), "{metric} has no description");
        }
    }

    #[test]
    fn the_sidecar_names_its_own_service() {
        let service = |r: &Resource| r.get(&Key::from_static_str("service.name")).map(|v| v.to_string());
        let base =
            vec![KeyValue::new("service.name", "from-resource-attributes"), KeyValue::new("host.name", "n")];
        let resource = own_resource(base, "node-tracer");
        assert_eq!(service(&resource).as_deref(), Some("node-tracer"));
        assert_eq!(
            resource.get(&Key::from_static_str("host.name")).map(|v| v.to_string()).as_deref(),
            Some("n")
        );
    }
}
