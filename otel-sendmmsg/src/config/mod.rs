//! Settings: the one reader of the environment. The project's own `OTEL_SENDMMSG_*` variables
//! (the fields of [`OwnVars`], read with envy) and the standard `OTEL_*` ones ([`standard`]) become
//! one typed [`Config`], checked before anything starts, so a typo stops start-up with the
//! variable's name and what it accepts instead of being silently ignored. Probes, export and
//! self-metrics are built from it; nothing else reads the environment.
//!
//! Adding a variable: a field here (or in `standard.rs`), its parsing into `Config`, its row in
//! README.md's Configuration table (a test holds the two together; `--help` prints that row,
//! see [`documented`]), and its consumer.

mod call_metrics;
pub mod documented;
mod standard;
mod tls;
mod values;

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

pub use self::call_metrics::{CallMetricsSettings, Histogram, DEFAULT_MAX_METRIC_SERIES};
pub use self::standard::{
    BatchConfig, Compression, Headers, MetricsOutput, Otlp, Output, ParentRule, Protocol, ResourceSettings,
    Sampler, Temporality, DEFAULT_CONCURRENT_EXPORTS, DEFAULT_SERVICE_NAME,
};
pub use self::tls::{ClientIdentity, Pem, Tls};
use self::{
    standard::StandardVars,
    values::{bounded_int, fields, invalid, list, parse_bool, parse_int, positive_duration},
};

pub const PREFIX: &str = "OTEL_SENDMMSG_";

/// Settings that are gone, and what replaces each: a user who still sets one hears how to say
/// it now, rather than only that it is unknown.
const RETIRED: &[(&str, &str)] = &[(
    "SAMPLE_RATIO",
    "OTEL_TRACES_SAMPLER=parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG=<ratio> does what it did",
)];

/// The project's own variables as given, each `OTEL_SENDMMSG_<FIELD>`; [`Config::from_vars`]
/// validates them.
#[derive(Debug, Default, Deserialize)]
struct OwnVars {
    /// Ring-buffer size between kernel and sidecar: bytes, or with a `KiB`/`MiB` suffix; a power
    /// of two of at least one page. Default [`DEFAULT_RING_BUFFER_BYTES`].
    ring_buffer_bytes: Option<String>,
    /// How many threads can be inside `sendmmsg` at once and still be traced, with the hash map
    /// store. Default [`DEFAULT_MAX_INFLIGHT`].
    max_inflight: Option<String>,
    /// `auto` (default: task-local storage where the kernel has it), `task-storage` or
    /// `hash-map`: where the kernel keeps each thread's call between entry and exit.
    call_store: Option<String>,
    /// How many processes that define the OTEP 4947 thread context have it read at once, 1 to
    /// [`MAX_CONTEXT_PROCESSES_LIMIT`]. Default [`DEFAULT_MAX_CONTEXT_PROCESSES`].
    max_context_processes: Option<String>,
    /// `auto` (default: the cheapest family that works here), `fentry`, `kprobe` or `tracepoint`.
    attach: Option<String>,
    /// `events` (default), `spans`, `sizes` or `none`: how each message of a call is shown.
    message_detail: Option<String>,
    /// Comma-separated process ids; only their calls are traced.
    pids: Option<String>,
    /// Comma-separated process names (as in /proc/PID/comm, 15 bytes at most).
    comms: Option<String>,
    /// Comma-separated cgroup v2 directories, absolute or under /sys/fs/cgroup.
    cgroups: Option<String>,
    /// Only calls at least this slow are exported (`50us`, `2ms`, ...).
    min_duration: Option<String>,
    /// `true`: only calls that failed or had a failed message are exported.
    errors_only: Option<String>,
    /// How often growing loss counters are logged while running (default 60s).
    loss_report_interval: Option<String>,
    /// The longest SIGTERM's drain and flush may take before the sidecar exits anyway (default
    /// 20s, inside Kubernetes' default 30 s grace period).
    shutdown_timeout: Option<String>,
    /// `true`: spans carry `sendmmsg.msgvec`, the caller's pointer (default false: it reveals
    /// the caller's memory layout to whoever reads the traces).
    msgvec_address: Option<String>,
    /// `host:port` to serve `GET /livez` and `/readyz` on (default: no listener).
    health_endpoint: Option<String>,
    /// How long a part of the pipeline may stand still before `/livez` fails.
    health_stall_after: Option<String>,
    /// `text` (default): the console's readable lines; `json`: one JSON object per span.
    console_format: Option<String>,
    /// `true`: every call's latency, messages and bytes as OTLP metrics (default false).
    call_metrics: Option<String>,
    /// Series the kernel holds for the call metrics (default [`DEFAULT_MAX_METRIC_SERIES`]).
    max_metric_series: Option<String>,
    /// `sendmmsg.duration`'s explicit bucket bounds (`10us,100us,1ms`); unset: exponential.
    duration_buckets: Option<String>,
    /// `true`: the call metrics' series are told apart by peer address and port.
    metrics_by_peer: Option<String>,
}

/// 4 MiB holds ~3,600 records: about 36 ms of a 100k calls/s burst while the sidecar is busy.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 4 << 20;
/// Threads inside `sendmmsg` at the same moment; each costs one ~1.1 KiB map entry.
pub const DEFAULT_MAX_INFLIGHT: u32 = 4096;
const PAGE_SIZE: u64 = 4096;
const MAX_RING_BUFFER_BYTES: u64 = 1 << 30;
const MAX_INFLIGHT_LIMIT: u64 = 1 << 20;
/// Kubernetes sends SIGKILL 30 s after SIGTERM by default: 20 s leaves room for the rest of the
/// pod's shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Processes whose threads' OTEP 4947 context is read, at once: each is one 40-byte entry of a
/// BPF hash map (its key, how to reach the variable); 4096 is more publishing processes than a
/// node runs, for 200 KiB.
pub const DEFAULT_MAX_CONTEXT_PROCESSES: u32 = 4096;
pub const MAX_CONTEXT_PROCESSES_LIMIT: u64 = 1 << 18;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub ring_buffer_bytes: u32,
    pub max_inflight: u32,
    /// Where the kernel keeps each thread's call between entry and exit.
    pub call_store: CallStore,
    pub max_context_processes: u32,
    pub attach: Attach,
    /// What the kernel collects about each message (`OTEL_SENDMMSG_MESSAGE_DETAIL`).
    pub kernel_messages: KernelMessages,
    /// How a span shows its call's messages (`OTEL_SENDMMSG_MESSAGE_DETAIL`).
    pub message_view: MessageView,
    pub filters: Filters,
    pub loss_report_interval: Duration,
    /// How long stopping may take: drain, flush, final metrics.
    pub shutdown_timeout: Duration,
    /// Whether spans show the caller's `msgvec` pointer.
    pub msgvec_address: bool,
    pub output: Output,
    /// How the console prints spans, when `output` is the console.
    pub console_format: ConsoleFormat,
    /// The export queue's bounds and timing (`OTEL_BSP_*`).
    pub batch: BatchConfig,
    pub metrics: MetricsOutput,
    /// The call metrics, counted in the kernel when `metrics` goes to a collector.
    pub call_metrics: CallMetricsSettings,
    pub resource: ResourceSettings,
    /// `RUST_LOG`, for the logger.
    pub log_filter: Option<String>,
    /// The health endpoints, when asked for (`OTEL_SENDMMSG_HEALTH_ENDPOINT`).
    pub health: Option<HealthSettings>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    pub address: std::net::SocketAddr,
    /// `/livez` fails once the drain or the export task stood still this long.
    pub stall_after: Duration,
}

/// Long enough for any export the defaults allow (30 s) after a schedule delay (5 s), with room.
pub const DEFAULT_HEALTH_STALL_AFTER: Duration = Duration::from_secs(60);

/// Which calls are traced, decided in the kernel. Empty lists filter nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// As given (relative ones are under the cgroup v2 mount); resolved to cgroup ids when
    /// the probes load.
    pub cgroups: Vec<PathBuf>,
    pub min_duration: Duration,
    pub errors_only: bool,
    /// `OTEL_TRACES_SAMPLER`: which calls are traced at all.
    pub sampler: Sampler,
}

impl Default for Filters {
    fn default() -> Self {
        Filters {
            pids: Vec::new(),
            comms: Vec::new(),
            cgroups: Vec::new(),
            min_duration: Duration::ZERO,
            errors_only: false,
            sampler: Sampler::default(),
        }
    }
}

/// The kernel's `TASK_COMM_LEN` less the terminating NUL.
const MAX_COMM_BYTES: usize = 15;

/// An attach family for a call's entry and exit, cheapest first (after the kernel's own trigger
/// benchmark: fentry/fexit ~3-10 ns a hit, tracepoints ~10 ns, kprobes ~15 ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Fentry,
    Tracepoint,
    Kprobe,
}

impl Family {
    pub const BY_COST: [Family; 3] = [Family::Fentry, Family::Tracepoint, Family::Kprobe];

    pub fn name(self) -> &'static str {
        match self {
            Family::Fentry => "fentry",
            Family::Tracepoint => "tracepoint",
            Family::Kprobe => "kprobe",
        }
    }
}

/// What the kernel collects about each message of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMessages {
    /// A per-message hook (the cheapest that proves itself at start-up): each message's result,
    /// time and destination.
    Hooked,
    /// No per-message hook at all (the cheapest): each sent message's size, read from the
    /// caller's `msgvec` at exit; no per-message errors or times.
    SizesAtExit,
}

/// How a call's span shows its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageView {
    /// Span events on the call's span: cheap, and shown inline by Jaeger.
    Events,
    /// Child spans of the call's span, for backends that query spans, not events.
    Spans,
    /// Counters only.
    None,
}

/// How the console exporter prints spans (`OTEL_SENDMMSG_CONSOLE_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsoleFormat {
    /// One readable line per call: time, duration, status, `key=value` attributes.
    #[default]
    Text,
    /// One JSON object per span, as OTLP has it (see `export/json_lines.rs`): for `jq`.
    Json,
}

/// Which attach family to use for a call's entry and exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// The cheapest family that loads, attaches and passes the self-test here.
    Auto,
    /// This family or nothing: start-up fails (exit 2) if the kernel cannot give it.
    Only(Family),
}

/// Where the kernel keeps each thread's call between entry and exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallStore {
    /// Task-local storage where the kernel gives it to tracing programs (5.12+), else the
    /// hash map.
    Auto,
    /// Task-local storage or nothing: start-up fails without it, with the kernel's error.
    TaskStorage,
    /// A hash map keyed by thread id, of `OTEL_SENDMMSG_MAX_INFLIGHT` entries: what kernels
    /// before 5.12 use.
    HashMap,
}

/// A variable with a value this sidecar cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {variable}={value:?}: expected {accepts}")]
pub struct ConfigError {
    pub variable: String,
    pub value: String,
    pub accepts: String,
}

/// Every variable the settings read, by name.
pub fn variables() -> Vec<String> {
    let own = fields::<OwnVars>().iter().map(|f| format!("{PREFIX}{}", f.to_ascii_uppercase()));
    own.chain(fields::<StandardVars>().iter().map(|f| f.to_ascii_uppercase())).collect()
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // `std::env::vars` panics on a name or value that is not UTF-8, and any process can be
        // started with one; ours are all ASCII, so a replaced byte is a value the checks refuse.
        Self::from_vars(
            std::env::vars_os().map(|(name, value)| {
                (name.to_string_lossy().into_owned(), value.to_string_lossy().into_owned())
            }),
        )
    }

    /// Reads and validates the given variables (the environment, or a test's).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        for (name, value) in &vars {
            if let Some(field) = name.strip_prefix(PREFIX) {
                if let Some((_, instead)) = RETIRED.iter().find(|(retired, _)| *retired == field) {
                    return Err(invalid(name, value, format!("no such setting any more: {instead}")));
                }
                let own = fields::<OwnVars>();
                if !own.iter().any(|f| f.to_ascii_uppercase() == field) {
                    let known: Vec<String> =
                        own.iter().map(|f| format!("{PREFIX}{}", f.to_ascii_uppercase())).collect();
                    return Err(invalid(
                        name,
                        value,
                        format!("no such setting; known: {}", known.join(", ")),
                    ));
                }
            }
        }
        let vars = as_getenv_reads(vars);
        // Every field is an optional string and no name repeats, so envy cannot fail; the checks
        // below say what is wrong in terms of the variable. Values are matched trimmed, and
        // quoted as set (a stray `\r` shows).
        let own: OwnVars = envy::prefixed(PREFIX).from_iter(vars.clone()).unwrap_or_default();
        let std_vars: StandardVars = envy::from_iter(vars).unwrap_or_default();

        let ring_buffer_bytes = match &own.ring_buffer_bytes {
            None => DEFAULT_RING_BUFFER_BYTES,
            Some(v) => parse_ring_buffer_bytes(v)
                .ok_or_else(|| invalid("OTEL_SENDMMSG_RING_BUFFER_BYTES", v, ring_buffer_accepts()))?,
        };
        let max_inflight = bounded_int("OTEL_SENDMMSG_MAX_INFLIGHT", &own.max_inflight, MAX_INFLIGHT_LIMIT)?
            .unwrap_or(DEFAULT_MAX_INFLIGHT);
        let max_context_processes = bounded_int(
            "OTEL_SENDMMSG_MAX_CONTEXT_PROCESSES",
            &own.max_context_processes,
            MAX_CONTEXT_PROCESSES_LIMIT,
        )?
        .unwrap_or(DEFAULT_MAX_CONTEXT_PROCESSES);
        let call_store = match own.call_store.as_deref().map(|v| (v, v.trim())) {
            None | Some((_, "auto")) => CallStore::Auto,
            Some((_, "task-storage")) => CallStore::TaskStorage,
            Some((_, "hash-map")) => CallStore::HashMap,
            Some((v, _)) => {
                return Err(invalid("OTEL_SENDMMSG_CALL_STORE", v, "auto, task-storage or hash-map"))
            }
        };
        let attach = match own.attach.as_deref().map(|v| (v, v.trim())) {
            None | Some((_, "auto")) => Attach::Auto,
            Some((v, name)) => Family::BY_COST
                .into_iter()
                .find(|f| f.name() == name)
                .map(Attach::Only)
                .ok_or_else(|| invalid("OTEL_SENDMMSG_ATTACH", v, "auto, fentry, kprobe or tracepoint"))?,
        };
        use KernelMessages::{Hooked, SizesAtExit};
        let (kernel_messages, message_view) = match own.message_detail.as_deref().map(|v| (v, v.trim())) {
            None | Some((_, "events")) => (Hooked, MessageView::Events),
            Some((_, "spans")) => (Hooked, MessageView::Spans),
            Some((_, "none")) => (Hooked, MessageView::None),
            Some((_, "sizes")) => (SizesAtExit, MessageView::Events),
            Some((v, _)) => {
                return Err(invalid("OTEL_SENDMMSG_MESSAGE_DETAIL", v, "events, spans, sizes or none"))
            }
        };
        let filters = Filters { sampler: std_vars.sampler()?, ..own.filters()? };
        let loss_report_interval =
            positive_duration("OTEL_SENDMMSG_LOSS_REPORT_INTERVAL", &own.loss_report_interval, "60s or 5m")?
                .unwrap_or(Duration::from_secs(60));
        let shutdown_timeout =
            positive_duration("OTEL_SENDMMSG_SHUTDOWN_TIMEOUT", &own.shutdown_timeout, "20s")?
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        let msgvec_address = match &own.msgvec_address {
            None => false,
            Some(v) => {
                parse_bool(v).ok_or_else(|| invalid("OTEL_SENDMMSG_MSGVEC_ADDRESS", v, "true or false"))?
            }
        };
        let console_format = match own.console_format.as_deref().map(|v| (v, v.trim())) {
            None | Some((_, "text")) => ConsoleFormat::Text,
            Some((_, "json")) => ConsoleFormat::Json,
            Some((v, _)) => return Err(invalid("OTEL_SENDMMSG_CONSOLE_FORMAT", v, "text or json")),
        };
        let output = std_vars.output()?;
        let batch = std_vars.batch()?;
        let health = match own.health_endpoint.as_deref().filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => {
                let address = v.trim().parse().map_err(|_| {
                    invalid("OTEL_SENDMMSG_HEALTH_ENDPOINT", v, "an IP address and port, e.g. 0.0.0.0:13133")
                })?;
                // An export may rightly take its whole timeout after a schedule delay: liveness
                // must not fail on that unless the user says so.
                let longest_quiet = batch.schedule_delay + batch.export_timeout.unwrap_or_default();
                let stall_after =
                    positive_duration("OTEL_SENDMMSG_HEALTH_STALL_AFTER", &own.health_stall_after, "60s")?
                        .unwrap_or(DEFAULT_HEALTH_STALL_AFTER.max(longest_quiet + Duration::from_secs(10)));
                Some(HealthSettings { address, stall_after })
            }
        };
        let metrics = std_vars.metrics()?;
        let call_metrics = call_metrics::parse(
            &own.call_metrics,
            &own.max_metric_series,
            &own.duration_buckets,
            &own.metrics_by_peer,
        )?;
        let resource = std_vars.resource()?;
        let log_filter = std_vars.log_filter();
        Ok(Config {
            ring_buffer_bytes,
            max_inflight,
            call_store,
            max_context_processes,
            attach,
            kernel_messages,
            message_view,
            filters,
            loss_report_interval,
            shutdown_timeout,
            msgvec_address,
            output,
            console_format,
            batch,
            metrics,
            call_metrics,
            resource,
            log_filter,
            health,
        })
    }
}

impl OwnVars {
    fn filters(&self) -> Result<Filters, ConfigError> {
        let mut filters = Filters::default();
        for item in list(&self.pids) {
            let pid = item.parse().ok().filter(|&p| p > 0);
            filters.pids.push(pid.ok_or_else(|| {
                invalid(
                    "OTEL_SENDMMSG_PIDS",
                    self.pids.as_deref().unwrap_or(""),
                    "comma-separated process ids, e.g. 1234,5678",
                )
            })?);
        }
        for item in list(&self.comms) {
            if item.len() > MAX_COMM_BYTES || item.contains('\0') {
                return Err(invalid(
                    "OTEL_SENDMMSG_COMMS",
                    self.comms.as_deref().unwrap_or(""),
                    "comma-separated process names of at most 15 bytes each, as in /proc/PID/comm",
                ));
            }
            filters.comms.push(item.to_owned());
        }
        filters.cgroups.extend(list(&self.cgroups).map(PathBuf::from));
        if let Some(v) = self.min_duration.as_deref().filter(|v| !v.trim().is_empty()) {
            filters.min_duration = humantime::parse_duration(v.trim()).map_err(|_| {
                invalid("OTEL_SENDMMSG_MIN_DURATION", v, "a duration such as 500ns, 50us, 2ms or 1s")
            })?;
        }
        if let Some(v) = &self.errors_only {
            filters.errors_only =
                parse_bool(v).ok_or_else(|| invalid("OTEL_SENDMMSG_ERRORS_ONLY", v, "true or false"))?;
        }
        Ok(filters)
    }
}

/// The variables as the OTLP exporter and the SDK read them (`getenv`), whatever envy would make
/// of them: names are case-sensitive (envy lower-cases them, and would take
/// `otel_bsp_max_queue_size` for `OTEL_BSP_MAX_QUEUE_SIZE`), the first entry of a repeated name
/// counts (envy fails on a repeat, and every variable would be ignored), and a standard variable
/// set to the empty string is unset, as the OpenTelemetry specification says. The project's own
/// variables keep their documented meaning of an empty value.
fn as_getenv_reads(vars: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    vars.into_iter()
        .filter(|(name, _)| name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
        .filter(|(name, _)| seen.insert(name.clone()))
        .filter(|(name, value)| !value.is_empty() || name.starts_with(PREFIX))
        .collect()
}

fn ring_buffer_accepts() -> String {
    format!(
        "a power of two from {PAGE_SIZE} to {MAX_RING_BUFFER_BYTES} bytes, as bytes or with a KiB or MiB suffix (e.g. 4MiB)"
    )
}

fn parse_ring_buffer_bytes(v: &str) -> Option<u32> {
    let v = v.trim();
    let (digits, unit) = if let Some(d) = v.strip_suffix("MiB") {
        (d, 1 << 20)
    } else if let Some(d) = v.strip_suffix("KiB") {
        (d, 1 << 10)
    } else {
        (v, 1)
    };
    let bytes = parse_int(digits)?.checked_mul(unit)?;
    // The kernel wants a power-of-two multiple of the page size.
    (bytes.is_power_of_two() && (PAGE_SIZE..=MAX_RING_BUFFER_BYTES).contains(&bytes)).then_some(bytes as u32)
}

#[cfg(test)]
mod readme;

#[cfg(test)]
mod tests {
    use super::*;

    /// An OTLP output's protocol and endpoint.
    fn target(output: &Output) -> Option<(Protocol, &str)> {
        match output {
            Output::Otlp(otlp) => Some((otlp.protocol, otlp.endpoint.as_str())),
            _ => None,
        }
    }

    /// A refused value as the error quotes it: header values are secrets, so only their size.
    fn as_shown(name: &str, value: &str) -> String {
        if name.ends_with("_HEADERS") {
            format!("<{} bytes, not shown>", value.len())
        } else {
            value.to_owned()
        }
    }

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_print_to_the_console() {
        let c = config(&[("PATH", "/bin")]).unwrap();
        assert_eq!(
            c,
            Config {
                ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
                max_inflight: DEFAULT_MAX_INFLIGHT,
                call_store: CallStore::Auto,
                max_context_processes: DEFAULT_MAX_CONTEXT_PROCESSES,
                attach: Attach::Auto,
                kernel_messages: KernelMessages::Hooked,
                message_view: MessageView::Events,
                filters: Filters::default(),
                loss_report_interval: Duration::from_secs(60),
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                msgvec_address: false,
                output: Output::Console,
                console_format: ConsoleFormat::Text,
                batch: BatchConfig::default(),
                metrics: MetricsOutput::Off,
                call_metrics: CallMetricsSettings::default(),
                resource: ResourceSettings { attributes: vec![], service_name: DEFAULT_SERVICE_NAME.into() },
                log_filter: None,
                health: None,
            }
        );
    }

    #[test]
    fn the_health_endpoint_and_its_stall_limit() {
        let health = |vars: &[(&str, &str)]| config(vars).map(|c| c.health);
        let at = ("OTEL_SENDMMSG_HEALTH_ENDPOINT", "0.0.0.0:13133");
        let h = health(&[at]).unwrap().unwrap();
        assert_eq!(
            (h.address.to_string().as_str(), h.stall_after),
            ("0.0.0.0:13133", DEFAULT_HEALTH_STALL_AFTER)
        );
        // Never shorter than an export the settings allow after a schedule delay.
        let slow = health(&[at, ("OTEL_BSP_EXPORT_TIMEOUT", "120000")]).unwrap().unwrap();
        assert_eq!(slow.stall_after, Duration::from_secs(5 + 120 + 10));
        let set = health(&[at, ("OTEL_SENDMMSG_HEALTH_STALL_AFTER", "5s")]).unwrap().unwrap();
        assert_eq!(set.stall_after, Duration::from_secs(5));
        assert_eq!(
            health(&[("OTEL_SENDMMSG_HEALTH_STALL_AFTER", "5s")]),
            Ok(None),
            "off without an endpoint"
        );
        for bad in ["13133", "localhost:13133", "0.0.0.0"] {
            let e = health(&[("OTEL_SENDMMSG_HEALTH_ENDPOINT", bad)]).unwrap_err();
            assert_eq!(e.variable, "OTEL_SENDMMSG_HEALTH_ENDPOINT");
        }
        let e = health(&[at, ("OTEL_SENDMMSG_HEALTH_STALL_AFTER", "0s")]).unwrap_err();
        assert_eq!(e.variable, "OTEL_SENDMMSG_HEALTH_STALL_AFTER");
    }

    #[test]
    fn an_endpoint_selects_otlp_with_the_given_protocol() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(target(&c.output), Some((Protocol::Grpc, "http://collector:4317")));
        let c = config(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c.example/v1/traces")]).unwrap();
        assert_eq!(target(&c.output), Some((Protocol::HttpProtobuf, "http://c.example/v1/traces")));
        // A generic endpoint over HTTP gets the signal's path, as the specification says.
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).unwrap();
        assert_eq!(target(&c.output), Some((Protocol::HttpProtobuf, "http://collector:4318/v1/traces")));
    }

    #[test]
    fn signal_specific_variables_win() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(target(&c.output), Some((Protocol::Grpc, "http://traces:4317")));
    }

    #[test]
    fn traces_exporter_overrides_the_choice() {
        let c = config(&[("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap();
        assert_eq!(target(&c.output), Some((Protocol::Grpc, "http://localhost:4317")));
        let c =
            config(&[("OTEL_TRACES_EXPORTER", "console"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
                .unwrap();
        assert_eq!(c.output, Output::Console);
        assert_eq!(config(&[("OTEL_TRACES_EXPORTER", "none")]).unwrap().output, Output::Discard);
    }

    #[test]
    fn metrics_follow_a_generic_or_metrics_endpoint_not_a_traces_only_one() {
        let metrics = |vars: &[(&str, &str)]| {
            config(vars).map(|c| match c.metrics {
                MetricsOutput::Off => None,
                MetricsOutput::Otlp { otlp, .. } => Some((otlp.protocol, otlp.endpoint)),
            })
        };
        let otlp = |protocol, endpoint: &str| Some((protocol, endpoint.to_owned()));
        assert_eq!(metrics(&[]), Ok(None));
        assert_eq!(
            metrics(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            ]),
            Ok(otlp(Protocol::Grpc, "http://c:4317"))
        );
        assert_eq!(metrics(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318")]), Ok(None));
        assert_eq!(
            metrics(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4318"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ]),
            Ok(otlp(Protocol::HttpProtobuf, "http://m:4318"))
        );
        assert_eq!(
            metrics(&[("OTEL_METRICS_EXPORTER", "otlp")]),
            Ok(otlp(Protocol::HttpProtobuf, "http://localhost:4318/v1/metrics"))
        );
        assert_eq!(
            metrics(&[("OTEL_METRICS_EXPORTER", "none"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
            Ok(None)
        );
        for (name, value) in [
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1m"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "5s"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "novalue"),
        ] {
            let err = config(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, name);
            assert_eq!(err.value, as_shown(name, value));
        }
    }

    #[test]
    fn the_standard_variables_set_the_queue_and_batches() {
        assert_eq!(config(&[]).unwrap().batch, BatchConfig::default());
        let c = config(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "0"),
            ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", "4"),
        ])
        .unwrap();
        assert_eq!(
            c.batch,
            BatchConfig {
                max_queue_size: 100,
                max_export_batch_size: 10,
                schedule_delay: Duration::from_millis(250),
                export_timeout: None,
                max_concurrent_exports: 4,
            }
        );
        let concurrency = |v: &str| {
            config(&[("OTEL_BSP_MAX_CONCURRENT_EXPORTS", v)]).map(|c| c.batch.max_concurrent_exports)
        };
        assert_eq!(
            (concurrency("1"), concurrency("16"), concurrency("")),
            (Ok(1), Ok(16), Ok(DEFAULT_CONCURRENT_EXPORTS))
        );
        for refused in ["0", "17", "1000"] {
            assert_eq!(concurrency(refused).unwrap_err().accepts, "a whole number from 1 to 16");
        }
        // A batch is never larger than the queue; empty means unset.
        let small =
            config(&[("OTEL_BSP_MAX_QUEUE_SIZE", "4"), ("OTEL_BSP_SCHEDULE_DELAY", "")]).unwrap().batch;
        assert_eq!((small.max_export_batch_size, small.schedule_delay), (4, Duration::from_millis(5000)));
        assert_eq!(
            config(&[("OTEL_BSP_SCHEDULE_DELAY", "0")]).unwrap().batch.schedule_delay,
            Duration::from_millis(1)
        );
    }

    #[test]
    fn each_signal_gets_its_own_or_the_generic_timeout_and_headers() {
        let c = config(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=generic"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key=m%2Fkey,tenant=a"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
        ])
        .unwrap();
        let Output::Otlp(traces) = c.output else { panic!("{:?}", c.output) };
        assert_eq!(traces.timeout, Duration::from_millis(700));
        assert_eq!(traces.headers.0, vec![("api-key".to_owned(), "generic".to_owned())]);
        let MetricsOutput::Otlp { otlp: metrics, interval, .. } = c.metrics else {
            panic!("{:?}", c.metrics)
        };
        assert_eq!((metrics.timeout, interval), (Duration::from_millis(2500), Duration::from_millis(1500)));
        assert_eq!(
            metrics.headers.0,
            vec![("api-key".to_owned(), "m/key".to_owned()), ("tenant".to_owned(), "a".to_owned())]
        );
        // Empty is unset: the generic one applies.
        let c = config(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", ""),
        ])
        .unwrap();
        let Output::Otlp(traces) = c.output else { panic!() };
        assert_eq!((traces.timeout, traces.headers.0.len()), (Duration::from_millis(2500), 0));
        let Output::Otlp(defaults) = config(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap().output else {
            panic!()
        };
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        // A header value never shows in the settings' debug output, which may be logged.
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "k=s3cr3t"),
        ]);
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn resource_attributes_service_name_and_log_filter() {
        let c = config(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "host.name=node-1, k8s.node.name = n%201 ,"),
            ("OTEL_SERVICE_NAME", "node-tracer"),
            ("RUST_LOG", "debug"),
        ])
        .unwrap();
        assert_eq!(
            c.resource,
            ResourceSettings {
                attributes: vec![
                    ("host.name".into(), "node-1".into()),
                    ("k8s.node.name".into(), "n 1".into())
                ],
                service_name: "node-tracer".into(),
            }
        );
        assert_eq!(c.log_filter.as_deref(), Some("debug"));
        assert_eq!(
            config(&[("OTEL_SERVICE_NAME", " ")]).unwrap().resource.service_name,
            DEFAULT_SERVICE_NAME
        );
    }

    #[test]
    fn ring_buffer_size_accepts_units_and_powers_of_two_only() {
        let size = |v: &str| config(&[("OTEL_SENDMMSG_RING_BUFFER_BYTES", v)]).map(|c| c.ring_buffer_bytes);
        assert_eq!(size("8MiB"), Ok(8 << 20));
        assert_eq!(size("64KiB"), Ok(64 << 10));
        assert_eq!(size("4096"), Ok(4096));
        for bad in ["3MiB", "2048", "abc", "", "-4096", "2048MiB", "99999999999999999999MiB"] {
            let err = size(bad).unwrap_err();
            assert_eq!(err.variable, "OTEL_SENDMMSG_RING_BUFFER_BYTES", "{bad}");
            assert!(err.to_string().contains("power of two"), "{err}");
        }
    }

    #[test]
    fn attach_names_a_family_or_auto() {
        let store = |v: &str| config(&[("OTEL_SENDMMSG_CALL_STORE", v)]).map(|c| c.call_store);
        assert_eq!(store("auto"), Ok(CallStore::Auto));
        assert_eq!(store(" task-storage"), Ok(CallStore::TaskStorage));
        assert_eq!(store("hash-map"), Ok(CallStore::HashMap));
        assert_eq!(store("lru").unwrap_err().accepts, "auto, task-storage or hash-map");
        let attach = |v: &str| config(&[("OTEL_SENDMMSG_ATTACH", v)]).map(|c| c.attach);
        assert_eq!(attach("auto"), Ok(Attach::Auto));
        assert_eq!(attach("kprobe"), Ok(Attach::Only(Family::Kprobe)));
        assert_eq!(attach("fentry"), Ok(Attach::Only(Family::Fentry)));
        assert_eq!(attach("tracepoint"), Ok(Attach::Only(Family::Tracepoint)));
        let err = attach("uprobe").unwrap_err();
        assert_eq!(
            (err.variable.as_str(), err.accepts.as_str()),
            ("OTEL_SENDMMSG_ATTACH", "auto, fentry, kprobe or tracepoint")
        );
    }

    #[test]
    fn message_detail_is_events_spans_or_none() {
        let detail = |v: &str| {
            config(&[("OTEL_SENDMMSG_MESSAGE_DETAIL", v)]).map(|c| (c.kernel_messages, c.message_view))
        };
        assert_eq!(detail("events"), Ok((KernelMessages::Hooked, MessageView::Events)));
        assert_eq!(detail("spans"), Ok((KernelMessages::Hooked, MessageView::Spans)));
        assert_eq!(detail("none"), Ok((KernelMessages::Hooked, MessageView::None)));
        assert_eq!(detail("sizes"), Ok((KernelMessages::SizesAtExit, MessageView::Events)));
        assert_eq!(detail("all").unwrap_err().accepts, "events, spans, sizes or none");
    }

    #[test]
    fn filters_parse_lists_durations_and_flags() {
        let c = config(&[
            ("OTEL_SENDMMSG_PIDS", "12, 34"),
            ("OTEL_SENDMMSG_COMMS", "unbound,quic-server"),
            ("OTEL_SENDMMSG_CGROUPS", "system.slice/docker-ab.scope,/sys/fs/cgroup/kubepods"),
            ("OTEL_SENDMMSG_MIN_DURATION", "50us"),
            ("OTEL_SENDMMSG_ERRORS_ONLY", "true"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        assert_eq!(
            c.filters,
            Filters {
                pids: vec![12, 34],
                comms: vec!["unbound".into(), "quic-server".into()],
                cgroups: vec!["system.slice/docker-ab.scope".into(), "/sys/fs/cgroup/kubepods".into()],
                min_duration: Duration::from_micros(50),
                errors_only: true,
                sampler: Sampler { root_ratio: 0.25, with_parent: ParentRule::FollowFlag },
            }
        );
        assert_eq!(config(&[]).unwrap().filters, Filters::default());
    }

    #[test]
    fn bad_filter_values_name_the_variable() {
        for (name, value) in [
            ("OTEL_SENDMMSG_PIDS", "12,abc"),
            ("OTEL_SENDMMSG_PIDS", "0"),
            ("OTEL_SENDMMSG_COMMS", "a-name-longer-than-15"),
            ("OTEL_SENDMMSG_MIN_DURATION", "fast"),
            ("OTEL_SENDMMSG_ERRORS_ONLY", "yes please"),
            ("OTEL_TRACES_SAMPLER", "traceid_ratio"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_SENDMMSG_LOSS_REPORT_INTERVAL", "0s"),
            ("OTEL_SENDMMSG_LOSS_REPORT_INTERVAL", "soon"),
        ] {
            let err = config(&[(name, value)]).unwrap_err();
            assert_eq!((err.variable.as_str(), err.value.as_str()), (name, value));
        }
    }

    #[test]
    fn each_standard_sampler_is_a_root_ratio_and_a_rule_for_calls_with_a_parent() {
        use ParentRule::{FollowFlag, TraceIdRatio};
        let sampler = |name: &str, arg: Option<&str>| {
            let mut vars = vec![("OTEL_TRACES_SAMPLER", name)];
            vars.extend(arg.map(|a| ("OTEL_TRACES_SAMPLER_ARG", a)));
            let s = config(&vars).unwrap().filters.sampler;
            (s.root_ratio, s.with_parent)
        };
        assert_eq!(sampler("always_on", None), (1.0, TraceIdRatio(1.0)));
        assert_eq!(sampler("always_off", None), (0.0, TraceIdRatio(0.0)));
        assert_eq!(sampler("traceidratio", Some("0.5")), (0.5, TraceIdRatio(0.5)));
        assert_eq!(sampler("traceidratio", None), (1.0, TraceIdRatio(1.0)), "the spec's default argument");
        assert_eq!(sampler("parentbased_always_on", None), (1.0, FollowFlag));
        assert_eq!(sampler("parentbased_always_off", None), (0.0, FollowFlag));
        assert_eq!(sampler(" parentbased_traceidratio ", Some(" 0.1 ")), (0.1, FollowFlag));
        // The argument is only read by the ratio samplers, as in the SDKs.
        assert_eq!(sampler("always_on", Some("2")), (1.0, TraceIdRatio(1.0)));
        for bad in ["1.5", "-0.1", "NaN", "half"] {
            for name in ["traceidratio", "parentbased_traceidratio"] {
                let e =
                    config(&[("OTEL_TRACES_SAMPLER", name), ("OTEL_TRACES_SAMPLER_ARG", bad)]).unwrap_err();
                assert_eq!((e.variable.as_str(), e.value.as_str()), ("OTEL_TRACES_SAMPLER_ARG", bad));
            }
        }
        assert_eq!(config(&[]).unwrap().filters.sampler, Sampler::default());
        assert_eq!(Sampler::default(), Sampler { root_ratio: 1.0, with_parent: FollowFlag });
    }

    #[test]
    fn the_retired_sample_ratio_says_what_replaces_it() {
        let e = config(&[("OTEL_SENDMMSG_SAMPLE_RATIO", "0.5")]).unwrap_err();
        assert_eq!(e.variable, "OTEL_SENDMMSG_SAMPLE_RATIO");
        assert!(e.accepts.contains("OTEL_TRACES_SAMPLER=parentbased_traceidratio"), "{e}");
    }

    #[test]
    fn shutdown_timeout_and_msgvec_address() {
        let c = config(&[("OTEL_SENDMMSG_SHUTDOWN_TIMEOUT", "5s"), ("OTEL_SENDMMSG_MSGVEC_ADDRESS", "true")])
            .unwrap();
        assert_eq!((c.shutdown_timeout, c.msgvec_address), (Duration::from_secs(5), true));
        for (name, bad) in [("OTEL_SENDMMSG_SHUTDOWN_TIMEOUT", "0s"), ("OTEL_SENDMMSG_MSGVEC_ADDRESS", "yes")]
        {
            assert_eq!(config(&[(name, bad)]).unwrap_err().variable, name);
        }
    }

    #[test]
    fn console_format_is_text_or_json() {
        let format = |v: &str| config(&[("OTEL_SENDMMSG_CONSOLE_FORMAT", v)]).map(|c| c.console_format);
        assert_eq!(config(&[]).unwrap().console_format, ConsoleFormat::Text);
        assert_eq!(
            (format("text"), format("json"), format(" json ")),
            (Ok(ConsoleFormat::Text), Ok(ConsoleFormat::Json), Ok(ConsoleFormat::Json))
        );
        for bad in ["JSON", "jsonl", "", "otlp"] {
            let err = format(bad).unwrap_err();
            assert_eq!(
                (err.variable.as_str(), err.value.as_str(), err.accepts.as_str()),
                ("OTEL_SENDMMSG_CONSOLE_FORMAT", bad, "text or json")
            );
        }
    }

    #[test]
    fn a_bad_header_value_is_never_printed() {
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        ] {
            let e = config(&[(name, "Authorization Bearer s3cr3t-token")]).unwrap_err();
            assert_eq!(e.variable, name);
            let shown = e.to_string();
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("<33 bytes, not shown>"), "{shown}");
        }
    }

    #[test]
    fn max_inflight_is_bounded() {
        let inflight = |v: &str| config(&[("OTEL_SENDMMSG_MAX_INFLIGHT", v)]).map(|c| c.max_inflight);
        assert_eq!(inflight("128"), Ok(128));
        assert_eq!(inflight("0").unwrap_err().variable, "OTEL_SENDMMSG_MAX_INFLIGHT");
        assert!(inflight("2000000").is_err());
    }

    #[test]
    fn max_context_processes_is_bounded() {
        let processes =
            |v: &str| config(&[("OTEL_SENDMMSG_MAX_CONTEXT_PROCESSES", v)]).map(|c| c.max_context_processes);
        assert_eq!(processes("4"), Ok(4));
        assert_eq!(processes("262144"), Ok(262144));
        assert_eq!(processes("0").unwrap_err().variable, "OTEL_SENDMMSG_MAX_CONTEXT_PROCESSES");
        assert!(processes("262145").is_err());
        assert!(processes("many").is_err());
    }

    #[test]
    fn compression_is_chosen_per_signal_and_validated() {
        let of = |vars: &[(&str, &str)]| {
            let c = config(&[&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")], vars].concat()).unwrap();
            let MetricsOutput::Otlp { otlp: metrics, .. } = c.metrics else { panic!("metrics on") };
            let Output::Otlp(traces) = c.output else { panic!("OTLP") };
            (traces.compression, metrics.compression)
        };
        assert_eq!(of(&[]), (Compression::None, Compression::None));
        assert_eq!(of(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]), (Compression::Gzip, Compression::Gzip));
        assert_eq!(
            of(&[
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP"),
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")
            ]),
            (Compression::Zstd, Compression::Gzip)
        );
        assert_eq!(
            of(&[
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
                ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none")
            ]),
            (Compression::Zstd, Compression::None)
        );
    }

    #[test]
    fn https_endpoints_and_schemeless_grpc_follow_insecure() {
        let endpoint = |vars: &[(&str, &str)]| match config(vars).unwrap().output {
            Output::Otlp(otlp) => (otlp.endpoint.clone(), otlp.is_https()),
            other => panic!("{other:?}"),
        };
        let grpc = ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        assert_eq!(
            endpoint(&[grpc, ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317")]),
            ("https://c:4317".into(), true)
        );
        assert_eq!(
            endpoint(&[grpc, ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")]),
            ("https://c:4317".into(), true)
        );
        assert_eq!(
            endpoint(&[
                grpc,
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "true")
            ]),
            ("http://c:4317".into(), false)
        );
        // A scheme wins over INSECURE, as the specification says.
        assert_eq!(
            endpoint(&[
                grpc,
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "true")
            ]),
            ("https://c:4317".into(), true)
        );
        assert_eq!(
            endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]),
            ("https://c:4318/v1/traces".into(), true)
        );
        // Over HTTP the scheme is required.
        assert!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]).is_err());
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let dir = std::env::temp_dir().join(format!("otel-sendmmsg-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
            .args(["-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=client"])
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(openssl.status.success());
        let (cert, key) =
            (dir.join("cert.pem").display().to_string(), dir.join("key.pem").display().to_string());
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318");
        let e = config(&[endpoint, ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert)]).unwrap_err();
        assert_eq!(e.variable, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE");
        let e = config(&[endpoint, ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", &key)]).unwrap_err();
        assert_eq!(e.variable, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY");
        let both = config(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
        ])
        .unwrap();
        let Output::Otlp(otlp) = &both.output else { panic!("OTLP") };
        assert_eq!(otlp.tls.ca.as_ref().map(|p| p.path.as_str()), Some(cert.as_str()));
        assert_eq!(otlp.tls.client.as_ref().map(|c| c.key.path.as_str()), Some(key.as_str()));
        // A key's bytes never reach a log line.
        assert!(!format!("{both:?}").contains("PRIVATE KEY"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_standard_values_name_the_variable() {
        let cases: &[(&str, &str)] = &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:99999"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gz"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "deflate"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "zip"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "yes"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "/nonexistent/key.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "/proc/self/status"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "=x"),
            ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", "two"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
        ];
        for (name, value) in cases {
            let err = config(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, *name);
            assert_eq!(err.value, as_shown(name, value));
            assert!(!err.accepts.is_empty());
        }
    }

    #[test]
    fn good_standard_values_pass() {
        config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1]:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr%20t,tenant=a"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
            ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", "4"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "GRPC"),
        ])
        .unwrap();
        // Empty means unset, as in the specification.
        assert_eq!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap().output, Output::Console);
    }

    #[test]
    fn an_unknown_own_variable_is_a_typo_not_a_silent_default() {
        let err = config(&[("OTEL_SENDMMSG_RING_BUFER_BYTES", "8MiB")]).unwrap_err();
        assert_eq!(err.variable, "OTEL_SENDMMSG_RING_BUFER_BYTES");
        assert!(err.accepts.contains("OTEL_SENDMMSG_RING_BUFFER_BYTES"), "{}", err.accepts);
    }

    // The four below were found by fuzzing (fuzz/fuzz_targets/config.rs): the environment must be
    // read as the exporter and the SDK read it, with getenv.

    #[test]
    fn an_empty_standard_variable_is_unset() {
        for name in [
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_BSP_SCHEDULE_DELAY",
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "OTEL_TRACES_EXPORTER",
            "OTEL_METRIC_EXPORT_INTERVAL",
        ] {
            assert_eq!(config(&[(name, "")]), config(&[]), "{name}");
        }
        // The project's own variables keep their documented meaning of an empty value.
        assert!(config(&[("OTEL_SENDMMSG_RING_BUFFER_BYTES", "")]).is_err());
    }

    #[test]
    fn a_repeated_name_counts_once_by_its_first_entry() {
        let c = config(&[
            ("OTEL_SENDMMSG_PIDS", "12"),
            ("OTEL_SENDMMSG_PIDS", "34"),
            ("OTEL_SENDMMSG_ERRORS_ONLY", "true"),
        ])
        .unwrap();
        assert_eq!((c.filters.pids, c.filters.errors_only), (vec![12], true));
        let err = config(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0"), ("OTEL_BSP_MAX_QUEUE_SIZE", "10")]).unwrap_err();
        assert_eq!((err.variable.as_str(), err.value.as_str()), ("OTEL_BSP_MAX_QUEUE_SIZE", "0"));
    }

    #[test]
    fn names_are_case_sensitive() {
        assert_eq!(
            config(&[("otel_traces_exporter", "none"), ("Otel_Bsp_Max_Queue_Size", "0")]),
            config(&[])
        );
    }

    #[test]
    fn an_error_quotes_the_value_as_set() {
        for (name, value) in [
            ("OTEL_SENDMMSG_ATTACH", "kprobes\r"),
            ("OTEL_SENDMMSG_MESSAGE_DETAIL", " all"),
            ("OTEL_SENDMMSG_LOSS_REPORT_INTERVAL", "soon "),
            ("OTEL_TRACES_EXPORTER", "jaeger\r"),
            ("OTEL_METRICS_EXPORTER", " prometheus"),
        ] {
            let err = config(&[(name, value)]).unwrap_err();
            assert_eq!((err.variable.as_str(), err.value.as_str()), (name, value));
        }
    }
}
