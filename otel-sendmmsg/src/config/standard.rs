//! The standard `OTEL_*` variables this sidecar honours (and `RUST_LOG`), read as the
//! OpenTelemetry specification defines them, into explicit values: the exporters, the export
//! queue, the metrics reader and the resource are built from these, never from the environment.

use std::{fmt, time::Duration};

use serde::Deserialize;

use super::{
    tls::{self, ClientIdentity, Tls},
    values::{bounded_int, invalid, millis, parse_bool, parse_int},
    ConfigError,
};
use crate::resource_attributes::{parse_resource_attributes, percent_decode, Malformed};

/// Each field is the variable of its name in upper case.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StandardVars {
    otel_traces_exporter: Option<String>,
    otel_traces_sampler: Option<String>,
    otel_traces_sampler_arg: Option<String>,
    otel_exporter_otlp_endpoint: Option<String>,
    otel_exporter_otlp_traces_endpoint: Option<String>,
    otel_exporter_otlp_protocol: Option<String>,
    otel_exporter_otlp_traces_protocol: Option<String>,
    otel_exporter_otlp_timeout: Option<String>,
    otel_exporter_otlp_traces_timeout: Option<String>,
    otel_exporter_otlp_headers: Option<String>,
    otel_exporter_otlp_traces_headers: Option<String>,
    otel_exporter_otlp_compression: Option<String>,
    otel_exporter_otlp_traces_compression: Option<String>,
    otel_exporter_otlp_metrics_compression: Option<String>,
    otel_exporter_otlp_certificate: Option<String>,
    otel_exporter_otlp_traces_certificate: Option<String>,
    otel_exporter_otlp_metrics_certificate: Option<String>,
    otel_exporter_otlp_client_certificate: Option<String>,
    otel_exporter_otlp_traces_client_certificate: Option<String>,
    otel_exporter_otlp_metrics_client_certificate: Option<String>,
    otel_exporter_otlp_client_key: Option<String>,
    otel_exporter_otlp_traces_client_key: Option<String>,
    otel_exporter_otlp_metrics_client_key: Option<String>,
    otel_exporter_otlp_insecure: Option<String>,
    otel_exporter_otlp_traces_insecure: Option<String>,
    otel_exporter_otlp_metrics_insecure: Option<String>,
    otel_bsp_schedule_delay: Option<String>,
    otel_bsp_export_timeout: Option<String>,
    otel_bsp_max_queue_size: Option<String>,
    otel_bsp_max_export_batch_size: Option<String>,
    otel_bsp_max_concurrent_exports: Option<String>,
    otel_metrics_exporter: Option<String>,
    otel_exporter_otlp_metrics_endpoint: Option<String>,
    otel_exporter_otlp_metrics_protocol: Option<String>,
    otel_exporter_otlp_metrics_timeout: Option<String>,
    otel_exporter_otlp_metrics_headers: Option<String>,
    otel_metric_export_interval: Option<String>,
    otel_exporter_otlp_metrics_temporality_preference: Option<String>,
    otel_resource_attributes: Option<String>,
    otel_service_name: Option<String>,
    rust_log: Option<String>,
}

/// Where spans go.
// Made once at start-up: the OTLP variant's size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// One line per call on stdout: the default when no OTLP endpoint is configured.
    Console,
    /// OTLP to a collector.
    Otlp(Otlp),
    /// Trace, count, export nothing (`OTEL_TRACES_EXPORTER=none`).
    Discard,
}

/// Which calls are traced (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`), decided in the
/// kernel at each call's entry, so a call left out costs no record. A call's parent is the span
/// its thread published (OTEP 4947), or OBI's entry for the thread (which has no flags: sampled).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// The share of calls without a parent that are traced, drawn at random.
    pub root_ratio: f64,
    /// What decides for a call with a parent.
    pub with_parent: ParentRule,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParentRule {
    /// The parent's sampled flag (the `parentbased_*` samplers).
    FollowFlag,
    /// This share of trace ids, by the randomness in the parent's trace id, whatever its flag
    /// (`always_on`: 1, `always_off`: 0, `traceidratio`).
    TraceIdRatio(f64),
}

impl Default for Sampler {
    /// The specification's default, `parentbased_always_on`.
    fn default() -> Self {
        Sampler { root_ratio: 1.0, with_parent: ParentRule::FollowFlag }
    }
}

/// Where the sidecar's metrics about itself (its loss and export counters) go.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsOutput {
    /// Not exported; the loss log and the closing summary still say it all.
    Off,
    /// OTLP every `interval` (`OTEL_METRIC_EXPORT_INTERVAL`).
    Otlp { otlp: Otlp, interval: Duration, temporality: Temporality },
}

/// What a sum's or a histogram's points count (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`):
/// everything since the series began, or only what came since the last export. Every
/// instrument here is a counter or a histogram, for which `lowmemory` means delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// One signal's OTLP exporter, complete: what the exporter is built with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Otlp {
    pub protocol: Protocol,
    /// The URL requests go to: over HTTP with the signal's path (`/v1/traces`) appended to a
    /// generic endpoint, as the specification says; a signal's own endpoint is used as given.
    pub endpoint: String,
    pub headers: Headers,
    /// One request's limit (`OTEL_EXPORTER_OTLP_*TIMEOUT`, default 10 s).
    pub timeout: Duration,
    /// How requests are compressed (`OTEL_EXPORTER_OTLP_*COMPRESSION`, default none).
    pub compression: Compression,
    /// The certificates of an `https://` endpoint (`OTEL_EXPORTER_OTLP_*CERTIFICATE`,
    /// `..._CLIENT_CERTIFICATE`, `..._CLIENT_KEY`); unused over `http://`.
    pub tls: Tls,
}

impl Otlp {
    /// Whether requests go over TLS.
    pub fn is_https(&self) -> bool {
        self.endpoint.starts_with("https://")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Request headers, as `key=value` pairs with the values percent-decoded. Their values are
/// credentials (API keys, tokens): debug output shows only their size.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, format!("<{} bytes>", v.len())))).finish()
    }
}

/// How the export queue is bounded and when it is sent (`OTEL_BSP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Spans that can wait to be exported (`OTEL_BSP_MAX_QUEUE_SIZE`, default
    /// [`DEFAULT_MAX_QUEUE_SIZE`]); a call whose spans do not fit is dropped whole and counted.
    pub max_queue_size: usize,
    /// Spans per batch (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512, at most the queue's
    /// size): a batch is sent as soon as this many wait.
    pub max_export_batch_size: usize,
    /// Whatever waits is sent this often (`OTEL_BSP_SCHEDULE_DELAY`, default 5000 ms, at least
    /// 1 ms: a timer needs a period).
    pub schedule_delay: Duration,
    /// The longest one export may take, retries included (`OTEL_BSP_EXPORT_TIMEOUT`, default
    /// 30000 ms; 0 for no limit), and the longest the flush at shutdown may take in all.
    pub export_timeout: Option<Duration>,
    /// Exports in flight at once (`OTEL_BSP_MAX_CONCURRENT_EXPORTS`, as the Rust SDK names it;
    /// default [`DEFAULT_CONCURRENT_EXPORTS`]), each over a connection of its own.
    pub max_concurrent_exports: usize,
}

/// Sized for 100,000 spans/s, issue 15's rate: 164 ms of them. Measured on the project's 2-core
/// VM (BENCHMARKS.md, pipeline part): with the specification's 2048 (20 ms of them) spans were
/// dropped at 100,000 calls/s over gRPC and HTTP whenever exports fell behind for longer; with
/// 16384 every span arrived. Spans wait encoded (export/otlp_encode.rs): 656 bytes each for a
/// call of one message, 7,940 with 64 message events (benches/queue_memory.rs), so a full queue
/// holds about 11 MB, or 130 MB if every call carries 64 events and the collector is down.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 16_384;
/// One export waits a round trip for the collector's answer; a second in flight keeps the
/// pipe full meanwhile (the benchmark's pipeline part shows the difference).
pub const DEFAULT_CONCURRENT_EXPORTS: usize = 2;
/// More would only multiply connections and memory.
const MAX_CONCURRENT_EXPORTS: u64 = 16;
/// The specification's default for one OTLP request.
const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(10);
/// The specification's default between metric exports.
const DEFAULT_METRIC_EXPORT_INTERVAL: Duration = Duration::from_secs(60);
/// The sidecar's own service name, for its own metrics.
pub const DEFAULT_SERVICE_NAME: &str = "otel-sendmmsg";

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            max_export_batch_size: 512,
            schedule_delay: Duration::from_millis(5000),
            export_timeout: Some(Duration::from_millis(30_000)),
            max_concurrent_exports: DEFAULT_CONCURRENT_EXPORTS,
        }
    }
}

/// The sidecar's own resource settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceSettings {
    /// `OTEL_RESOURCE_ATTRIBUTES`: under every traced process's resource, and the sidecar's.
    pub attributes: Vec<(String, String)>,
    /// `OTEL_SERVICE_NAME`: the sidecar's own (its metrics), never a span's.
    pub service_name: String,
}

/// Which signal an OTLP exporter carries: its variables' infix and its HTTP path.
#[derive(Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
}

impl StandardVars {
    pub(super) fn output(&self) -> Result<Output, ConfigError> {
        let target = self.otlp(Signal::Traces)?;
        match self.otel_traces_exporter.as_deref().map(|v| (v, v.trim())) {
            // No exporter named: OTLP only when the user pointed us at a collector.
            None | Some((_, "")) => Ok(match target {
                (otlp, true) => Output::Otlp(otlp),
                (_, false) => Output::Console,
            }),
            Some((_, "otlp")) => Ok(Output::Otlp(target.0)),
            Some((_, "console")) => Ok(Output::Console),
            Some((_, "none")) => Ok(Output::Discard),
            Some((v, _)) => Err(invalid("OTEL_TRACES_EXPORTER", v, "otlp, console or none")),
        }
    }

    pub(super) fn sampler(&self) -> Result<Sampler, ConfigError> {
        const NAMES: &str = "always_on, always_off, traceidratio, parentbased_always_on, \
                             parentbased_always_off or parentbased_traceidratio";
        let ratio = || match &self.otel_traces_sampler_arg {
            // The specification's default when the argument is not given.
            None => Ok(1.0),
            Some(v) => v.trim().parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or_else(|| {
                invalid("OTEL_TRACES_SAMPLER_ARG", v, "a sampling probability from 0 to 1, e.g. 0.25")
            }),
        };
        use ParentRule::{FollowFlag, TraceIdRatio};
        let (root_ratio, with_parent) = match self.otel_traces_sampler.as_deref().map(|v| (v, v.trim())) {
            None | Some((_, "parentbased_always_on")) => (1.0, FollowFlag),
            Some((_, "parentbased_always_off")) => (0.0, FollowFlag),
            Some((_, "parentbased_traceidratio")) => (ratio()?, FollowFlag),
            Some((_, "always_on")) => (1.0, TraceIdRatio(1.0)),
            Some((_, "always_off")) => (0.0, TraceIdRatio(0.0)),
            Some((_, "traceidratio")) => {
                let ratio = ratio()?;
                (ratio, TraceIdRatio(ratio))
            }
            Some((v, "jaeger_remote" | "parentbased_jaeger_remote" | "xray")) => {
                return Err(invalid(
                    "OTEL_TRACES_SAMPLER",
                    v,
                    format!("{NAMES}: the sampler is decided in the kernel, not by a remote service"),
                ))
            }
            Some((v, _)) => return Err(invalid("OTEL_TRACES_SAMPLER", v, NAMES)),
        };
        Ok(Sampler { root_ratio, with_parent })
    }

    pub(super) fn metrics(&self) -> Result<MetricsOutput, ConfigError> {
        let (otlp, named) = self.otlp(Signal::Metrics)?;
        let interval = match &self.otel_metric_export_interval {
            None => DEFAULT_METRIC_EXPORT_INTERVAL,
            Some(v) => parse_int(v).filter(|&ms| ms > 0).map(Duration::from_millis).ok_or_else(|| {
                invalid("OTEL_METRIC_EXPORT_INTERVAL", v, "a whole number of milliseconds above 0")
            })?,
        };
        let temporality = match self
            .otel_exporter_otlp_metrics_temporality_preference
            .as_deref()
            .map(|v| (v, v.trim().to_ascii_lowercase()))
        {
            None => Temporality::Cumulative,
            Some((_, t)) if t.is_empty() || t == "cumulative" => Temporality::Cumulative,
            Some((_, t)) if t == "delta" || t == "lowmemory" => Temporality::Delta,
            Some((v, _)) => {
                return Err(invalid(
                    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                    v,
                    "cumulative, delta or lowmemory",
                ))
            }
        };
        let on = MetricsOutput::Otlp { otlp, interval, temporality };
        match self.otel_metrics_exporter.as_deref().map(|v| (v, v.trim())) {
            // No exporter named: on when a collector is named for metrics or for every signal
            // (a traces-only endpoint says nothing about where metrics are welcome).
            None | Some((_, "")) => Ok(if named { on } else { MetricsOutput::Off }),
            Some((_, "otlp")) => Ok(on),
            Some((_, "none")) => Ok(MetricsOutput::Off),
            Some((v, _)) => Err(invalid("OTEL_METRICS_EXPORTER", v, "otlp or none")),
        }
    }

    pub(super) fn batch(&self) -> Result<BatchConfig, ConfigError> {
        let defaults = BatchConfig::default();
        let size = |name: &str, value: &Option<String>, default: usize| match value {
            None => Ok(default),
            Some(v) => parse_int(v)
                .filter(|&n| n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| invalid(name, v, "a whole number above 0")),
        };
        let max_queue_size =
            size("OTEL_BSP_MAX_QUEUE_SIZE", &self.otel_bsp_max_queue_size, defaults.max_queue_size)?;
        let max_export_batch_size = size(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            &self.otel_bsp_max_export_batch_size,
            defaults.max_export_batch_size,
        )?
        .min(max_queue_size);
        let schedule_delay = millis("OTEL_BSP_SCHEDULE_DELAY", &self.otel_bsp_schedule_delay)?
            .unwrap_or(defaults.schedule_delay)
            .max(Duration::from_millis(1));
        let export_timeout = match millis("OTEL_BSP_EXPORT_TIMEOUT", &self.otel_bsp_export_timeout)? {
            None => defaults.export_timeout,
            Some(Duration::ZERO) => None,
            Some(limit) => Some(limit),
        };
        let max_concurrent_exports = bounded_int(
            "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
            &self.otel_bsp_max_concurrent_exports,
            MAX_CONCURRENT_EXPORTS,
        )?
        .map_or(defaults.max_concurrent_exports, |n| n as usize);
        Ok(BatchConfig {
            max_queue_size,
            max_export_batch_size,
            schedule_delay,
            export_timeout,
            max_concurrent_exports,
        })
    }

    /// `OTEL_RESOURCE_ATTRIBUTES` as the specification defines it (see
    /// [`crate::resource_attributes`]), and `OTEL_SERVICE_NAME`.
    pub(super) fn resource(&self) -> Result<ResourceSettings, ConfigError> {
        let attributes = match &self.otel_resource_attributes {
            None => Vec::new(),
            Some(v) => parse_resource_attributes(v).map_err(|why| {
                let accepts = match why {
                    Malformed::Entry | Malformed::Encoding => {
                        "comma-separated key=value pairs, values percent-encoded, e.g. host.name=node-1,k8s.cluster.name=prod%20eu"
                    }
                    Malformed::TooLarge => "at most 64 key=value pairs, keys of 256 bytes and values of 1024 at most",
                };
                invalid("OTEL_RESOURCE_ATTRIBUTES", v, accepts)
            })?,
        };
        let service_name = self
            .otel_service_name
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(DEFAULT_SERVICE_NAME)
            .to_owned();
        Ok(ResourceSettings { attributes, service_name })
    }

    /// `RUST_LOG`, as given: the logger falls back to its default when it cannot use it.
    pub(super) fn log_filter(&self) -> Option<String> {
        self.rust_log.clone()
    }

    /// A signal's exporter, and whether an endpoint was named for it (its own or the generic
    /// one). Its own variables win over the generic ones. Made whichever output is chosen, so a
    /// bad value of any exporter variable is heard about, even when that exporter is off.
    fn otlp(&self, signal: Signal) -> Result<(Otlp, bool), ConfigError> {
        let (endpoint, protocol) = match signal {
            Signal::Traces => (
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &self.otel_exporter_otlp_traces_endpoint),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", &self.otel_exporter_otlp_traces_protocol),
            ),
            Signal::Metrics => (
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &self.otel_exporter_otlp_metrics_endpoint),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", &self.otel_exporter_otlp_metrics_protocol),
            ),
        };
        let protocol =
            match pick(protocol, ("OTEL_EXPORTER_OTLP_PROTOCOL", &self.otel_exporter_otlp_protocol)) {
                None => Protocol::HttpProtobuf, // the specification's default
                Some((name, v)) => match v.trim().to_ascii_lowercase().as_str() {
                    "grpc" => Protocol::Grpc,
                    "http/protobuf" => Protocol::HttpProtobuf,
                    _ => return Err(invalid(name, v, "grpc or http/protobuf")),
                },
            };
        let own = set(endpoint);
        let generic = set(("OTEL_EXPORTER_OTLP_ENDPOINT", &self.otel_exporter_otlp_endpoint));
        for (name, v) in own.into_iter().chain(generic) {
            check_endpoint(v, protocol).map_err(|why| invalid(name, v, why))?;
        }
        let named = own.is_some() || generic.is_some();
        // A gRPC endpoint without a scheme is TLS unless `..._INSECURE` says otherwise.
        let insecure = self.insecure(signal)?;
        let scheme = |v: &str| match v.contains("://") {
            true => v.to_owned(),
            false => format!("{}://{v}", if insecure { "http" } else { "https" }),
        };
        let endpoint = match (own, generic, protocol) {
            (Some((_, v)), _, _) => scheme(v.trim()),
            (None, Some((_, v)), Protocol::Grpc) => scheme(v.trim()),
            (None, Some((_, v)), Protocol::HttpProtobuf) => with_path(v.trim(), signal),
            (None, None, Protocol::Grpc) => "http://localhost:4317".to_owned(),
            (None, None, Protocol::HttpProtobuf) => with_path("http://localhost:4318", signal),
        };
        let otlp = Otlp {
            protocol,
            endpoint,
            headers: self.headers(signal)?,
            timeout: self.timeout(signal)?,
            compression: self.compression(signal)?,
            tls: self.tls(signal)?,
        };
        Ok((otlp, named))
    }

    fn timeout(&self, signal: Signal) -> Result<Duration, ConfigError> {
        let own = match signal {
            Signal::Traces => ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", &self.otel_exporter_otlp_traces_timeout),
            Signal::Metrics => {
                ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", &self.otel_exporter_otlp_metrics_timeout)
            }
        };
        let own = millis(own.0, own.1)?;
        let generic = millis("OTEL_EXPORTER_OTLP_TIMEOUT", &self.otel_exporter_otlp_timeout)?;
        Ok(own.or(generic).unwrap_or(DEFAULT_OTLP_TIMEOUT))
    }

    /// The signal's own variable if set, else the generic one, parsed: (name, value) of the one
    /// that counts. Each that is set is parsed, once: a mistake in either is worth hearing
    /// about, named by its variable with what it accepts (`parse`'s error).
    fn either<T>(
        &self,
        signal: Signal,
        traces: (&'static str, &Option<String>),
        metrics: (&'static str, &Option<String>),
        generic: (&'static str, &Option<String>),
        parse: impl Fn(&str) -> Result<T, &'static str>,
    ) -> Result<Option<(&'static str, T)>, ConfigError> {
        let own = match signal {
            Signal::Traces => traces,
            Signal::Metrics => metrics,
        };
        let mut chosen = None;
        for (name, value) in [set(own), set(generic)].into_iter().flatten() {
            let parsed = parse(value).map_err(|why| invalid(name, value, why))?;
            chosen = chosen.or(Some((name, parsed)));
        }
        Ok(chosen)
    }

    fn compression(&self, signal: Signal) -> Result<Compression, ConfigError> {
        let chosen = self.either(
            signal,
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", &self.otel_exporter_otlp_traces_compression),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", &self.otel_exporter_otlp_metrics_compression),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", &self.otel_exporter_otlp_compression),
            |v| match v.trim().to_ascii_lowercase().as_str() {
                "none" => Ok(Compression::None),
                "gzip" => Ok(Compression::Gzip),
                "zstd" => Ok(Compression::Zstd),
                _ => Err("gzip, zstd or none"),
            },
        )?;
        Ok(chosen.map_or(Compression::None, |(_, c)| c))
    }

    /// Whether a gRPC endpoint given without a scheme is plain text (`..._INSECURE=true`);
    /// without, it is TLS, as the specification says.
    fn insecure(&self, signal: Signal) -> Result<bool, ConfigError> {
        let chosen = self.either(
            signal,
            ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", &self.otel_exporter_otlp_traces_insecure),
            ("OTEL_EXPORTER_OTLP_METRICS_INSECURE", &self.otel_exporter_otlp_metrics_insecure),
            ("OTEL_EXPORTER_OTLP_INSECURE", &self.otel_exporter_otlp_insecure),
            |v| parse_bool(v).ok_or("true or false"),
        )?;
        Ok(chosen.is_some_and(|(_, insecure)| insecure))
    }

    /// The certificate files, each read once.
    fn tls(&self, signal: Signal) -> Result<Tls, ConfigError> {
        let ca = self.either(
            signal,
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &self.otel_exporter_otlp_traces_certificate),
            ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", &self.otel_exporter_otlp_metrics_certificate),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &self.otel_exporter_otlp_certificate),
            tls::certificates,
        )?;
        let certificate = self.either(
            signal,
            (
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                &self.otel_exporter_otlp_traces_client_certificate,
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                &self.otel_exporter_otlp_metrics_client_certificate,
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &self.otel_exporter_otlp_client_certificate),
            tls::certificates,
        )?;
        let key = self.either(
            signal,
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", &self.otel_exporter_otlp_traces_client_key),
            ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", &self.otel_exporter_otlp_metrics_client_key),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &self.otel_exporter_otlp_client_key),
            tls::private_key,
        )?;
        let client = match (certificate, key) {
            (Some((_, certificate)), Some((_, key))) => Some(ClientIdentity { certificate, key }),
            (None, None) => None,
            (Some((name, c)), None) => {
                return Err(invalid(
                    name,
                    &c.path,
                    "a client certificate together with its key (OTEL_EXPORTER_OTLP_CLIENT_KEY)",
                ))
            }
            (None, Some((name, k))) => {
                return Err(invalid(
                    name,
                    &k.path,
                    "a client key together with its certificate (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE)",
                ))
            }
        };
        Ok(Tls { ca: ca.map(|(_, pem)| pem), client })
    }

    fn headers(&self, signal: Signal) -> Result<Headers, ConfigError> {
        let own = match signal {
            Signal::Traces => ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", &self.otel_exporter_otlp_traces_headers),
            Signal::Metrics => {
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", &self.otel_exporter_otlp_metrics_headers)
            }
        };
        let generic = ("OTEL_EXPORTER_OTLP_HEADERS", &self.otel_exporter_otlp_headers);
        // Both are checked (a mistake in either is worth hearing about); the signal's own wins.
        let mut chosen = None;
        for (name, value) in [own, generic] {
            if let Some(v) = value {
                // Credentials: the message names the variable and its size, never its text.
                let headers = parse_headers(v)
                    .map_err(|why| invalid(name, &format!("<{} bytes, not shown>", v.len()), why))?;
                chosen = chosen.or(Some(headers));
            }
        }
        Ok(chosen.unwrap_or_default())
    }
}

/// The variable, when it is set and not blank.
fn set<'a>((name, value): (&'static str, &'a Option<String>)) -> Option<(&'static str, &'a String)> {
    value.as_ref().filter(|v| !v.trim().is_empty()).map(|v| (name, v))
}

/// The first variable of the two that is set and not blank.
fn pick<'a>(
    first: (&'static str, &'a Option<String>),
    second: (&'static str, &'a Option<String>),
) -> Option<(&'static str, &'a String)> {
    set(first).or_else(|| set(second))
}

/// A generic endpoint with the signal's OTLP/HTTP path.
fn with_path(endpoint: &str, signal: Signal) -> String {
    let path = match signal {
        Signal::Traces => "v1/traces",
        Signal::Metrics => "v1/metrics",
    };
    format!("{}/{path}", endpoint.trim_end_matches('/'))
}

/// An endpoint URL: `http://` or `https://`, a host and an optional port, and for gRPC also
/// `host:port` alone (its scheme then follows `..._INSECURE`).
fn check_endpoint(v: &str, protocol: Protocol) -> Result<(), &'static str> {
    let v = v.trim();
    let rest = match (v.split_once("://"), protocol) {
        (Some(("http" | "https", rest)), _) => rest,
        (None, Protocol::Grpc) => v,
        _ => return Err("a URL starting with http:// or https://, e.g. http://localhost:4317"),
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host_ok = !authority.is_empty() && !authority.contains(char::is_whitespace);
    let port_ok = match authority.rsplit_once(':') {
        // An IPv6 literal without a port ends in `]`.
        Some((_, port)) if !port.ends_with(']') => port.parse::<u16>().is_ok(),
        _ => true,
    };
    if host_ok && port_ok {
        Ok(())
    } else {
        Err("a URL with a host and an optional port, e.g. http://localhost:4317")
    }
}

/// `key=value` pairs separated by commas, values percent-decoded, as the OTLP exporter reads
/// them; refused when a pair has no key, a key is not a valid header name, or a value cannot be
/// sent in a header (the exporter would silently leave such a header out).
fn parse_headers(v: &str) -> Result<Headers, &'static str> {
    const WHY: &str = "comma-separated key=value pairs, e.g. api-key=secret,tenant=a (keys are \
                       header names; values percent-encoded, without control characters)";
    let mut headers = Vec::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or(WHY)?;
        let key = key.trim();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if key.is_empty() || !key.chars().all(token) {
            return Err(WHY);
        }
        let value = percent_decode(value.trim()).ok_or(WHY)?;
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(WHY);
        }
        if !value.is_empty() {
            headers.push((key.to_owned(), value));
        }
    }
    Ok(Headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_percent_decoded_and_never_shown() {
        let h = parse_headers("api-key=s3cr%20t, tenant=a,,empty=").unwrap();
        assert_eq!(h.0, vec![("api-key".into(), "s3cr t".into()), ("tenant".into(), "a".into())]);
        let shown = format!("{h:?}");
        assert!(!shown.contains("s3cr") && shown.contains("<6 bytes>"), "{shown}");
        for bad in ["novalue", "=x", "bad key=x", "k=%zz", "k=%0a"] {
            assert!(parse_headers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_generic_http_endpoint_gets_the_signals_path() {
        assert_eq!(with_path("http://c:4318", Signal::Traces), "http://c:4318/v1/traces");
        assert_eq!(with_path("http://c:4318/base/", Signal::Metrics), "http://c:4318/base/v1/metrics");
    }
}
