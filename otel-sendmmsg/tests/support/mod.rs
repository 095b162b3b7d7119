//! What the end-to-end tests run against: a real OTLP receiver (gRPC and HTTP/protobuf, built on
//! the official protocol definitions), the real sidecar binary, and the real workload binary.
#![allow(dead_code)] // each test binary uses its own part of this

pub mod backends;
pub mod qemu;

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    common::v1::{any_value::Value, KeyValue},
    trace::v1::Span,
};
use prost::Message;
use serde::Deserialize;
use tonic::codec::CompressionEncoding;

pub const SIDECAR: &str = env!("CARGO_BIN_EXE_otel-sendmmsg");
pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_sendmmsg-workload");

/// End-to-end tests load BPF programs: without root they cannot test anything, and must say so
/// rather than pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end tests load BPF programs and must run as root (see README.md)"
    );
}

/// A span as a collector received it, with its resource's attributes.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub resource: Vec<KeyValue>,
    pub span: Span,
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

pub fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match find(attrs, key)? {
        Value::IntValue(v) => Some(*v),
        other => panic!("attribute {key} is {other:?}, expected an int"),
    }
}

pub fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match find(attrs, key)? {
        Value::StringValue(v) => Some(v),
        other => panic!("attribute {key} is {other:?}, expected a string"),
    }
}

impl ReceivedSpan {
    pub fn int(&self, key: &str) -> Option<i64> {
        int_attr(&self.span.attributes, key)
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        str_attr(&self.span.attributes, key)
    }
}

type Store = Arc<Mutex<Vec<ReceivedSpan>>>;

/// Where received spans go: kept whole (what the tests check), or only counted by their
/// resource's `process.pid` (the benchmark: keeping hundreds of thousands of spans would make
/// the receiver, on the same cores, the bottleneck it measures).
#[derive(Clone, Default)]
struct Sink {
    spans: Store,
    counts: Option<Arc<Mutex<std::collections::HashMap<i64, u64>>>>,
}

impl Sink {
    fn store(&self, request: ExportTraceServiceRequest) {
        if let Some(counts) = &self.counts {
            let mut counts = counts.lock().unwrap();
            for rs in request.resource_spans {
                let pid = rs.resource.and_then(|r| int_attr(&r.attributes, "process.pid")).unwrap_or(0);
                let spans: usize = rs.scope_spans.iter().map(|ss| ss.spans.len()).sum();
                *counts.entry(pid).or_default() += spans as u64;
            }
            return;
        }
        let mut spans = self.spans.lock().unwrap();
        for rs in request.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(ReceivedSpan { resource: resource.clone(), span });
                }
            }
        }
    }
}

/// A data point of a sum, gauge or histogram as a collector received it.
#[derive(Clone, Debug)]
pub struct ReceivedPoint {
    pub resource: Vec<KeyValue>,
    pub metric: String,
    pub attributes: Vec<KeyValue>,
    /// A sum's or gauge's value; a histogram's count.
    pub value: i64,
    pub monotonic_sum: bool,
    /// `AggregationTemporality` of a sum or histogram (0 for a gauge).
    pub temporality: i32,
    pub start_time_unix_nano: u64,
    pub time_unix_nano: u64,
    pub histogram: Option<ReceivedHistogram>,
}

/// What a histogram's point says besides its count.
#[derive(Clone, Debug)]
pub struct ReceivedHistogram {
    pub sum: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Exponential: its scale, first bucket's index and counts; explicit: its bounds (`bounds`)
    /// and counts.
    pub exponential: Option<(i32, i32)>,
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    /// Each exemplar's (trace id, span id, value).
    pub exemplars: Vec<(Vec<u8>, Vec<u8>, f64)>,
}

type PointStore = Arc<Mutex<Vec<ReceivedPoint>>>;

/// The header every test request may carry, as the receiver saw it on each request.
pub const TEST_HEADER: &str = "x-sendmmsg-test";

/// What the receiver saw of one request besides its body.
#[derive(Clone, Debug)]
struct RequestSeen {
    /// `traces` or `metrics`.
    signal: &'static str,
    /// Its [`TEST_HEADER`] value.
    test_header: Option<String>,
    /// How its body was compressed, as it said on the wire (`grpc-encoding`,
    /// `content-encoding`).
    encoding: Option<String>,
    user_agent: Option<String>,
}

type HeaderLog = Arc<Mutex<Vec<RequestSeen>>>;

fn log_request(
    log: &HeaderLog,
    signal: &'static str,
    headers: &axum::http::HeaderMap,
    encoding_header: &str,
) {
    let text = |name: &str| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    log.lock().unwrap().push(RequestSeen {
        signal,
        test_header: text(TEST_HEADER),
        encoding: text(encoding_header),
        user_agent: text("user-agent"),
    });
}

/// An OTLP/HTTP body as it was sent, decompressed as its `content-encoding` says.
fn decompressed(headers: &axum::http::HeaderMap, body: axum::body::Bytes) -> Vec<u8> {
    use std::io::Read as _;
    match headers.get("content-encoding").map(|v| v.as_bytes()) {
        None => body.to_vec(),
        Some(b"gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).expect("a gzip body");
            out
        }
        Some(b"zstd") => zstd::decode_all(&body[..]).expect("a zstd body"),
        Some(other) => panic!("an OTLP/HTTP body in {:?}", String::from_utf8_lossy(other)),
    }
}

fn store_metrics(store: &PointStore, request: ExportMetricsServiceRequest) {
    use opentelemetry_proto::tonic::metrics::v1::{
        exemplar::Value as ExemplarValue, metric::Data, number_data_point::Value as Number, Exemplar,
    };
    let exemplars = |exemplars: Vec<Exemplar>| -> Vec<(Vec<u8>, Vec<u8>, f64)> {
        exemplars
            .into_iter()
            .map(|e| {
                let value = match e.value {
                    Some(ExemplarValue::AsDouble(v)) => v,
                    Some(ExemplarValue::AsInt(v)) => v as f64,
                    None => f64::NAN,
                };
                (e.trace_id, e.span_id, value)
            })
            .collect()
    };
    let mut points = store.lock().unwrap();
    for rm in request.resource_metrics {
        let resource = rm.resource.map(|r| r.attributes).unwrap_or_default();
        for metric in rm.scope_metrics.into_iter().flat_map(|sm| sm.metrics) {
            let point =
                |attributes, value, monotonic_sum, temporality, start, time, histogram| ReceivedPoint {
                    resource: resource.clone(),
                    metric: metric.name.clone(),
                    attributes,
                    value,
                    monotonic_sum,
                    temporality,
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    histogram,
                };
            // A histogram's points, explicit or exponential alike: (attributes, count, start,
            // time, what else it says).
            let histograms: Option<(i32, Vec<(Vec<KeyValue>, u64, u64, u64, ReceivedHistogram)>)> =
                match &metric.data {
                    Some(Data::Histogram(h)) => Some((
                        h.aggregation_temporality,
                        h.data_points
                            .iter()
                            .map(|p| {
                                let histogram = ReceivedHistogram {
                                    sum: p.sum.unwrap_or(f64::NAN),
                                    min: p.min,
                                    max: p.max,
                                    exponential: None,
                                    bounds: p.explicit_bounds.clone(),
                                    counts: p.bucket_counts.clone(),
                                    exemplars: exemplars(p.exemplars.clone()),
                                };
                                (
                                    p.attributes.clone(),
                                    p.count,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    histogram,
                                )
                            })
                            .collect(),
                    )),
                    Some(Data::ExponentialHistogram(h)) => Some((
                        h.aggregation_temporality,
                        h.data_points
                            .iter()
                            .map(|p| {
                                let positive = p.positive.clone().unwrap_or_default();
                                let histogram = ReceivedHistogram {
                                    sum: p.sum.unwrap_or(f64::NAN),
                                    min: p.min,
                                    max: p.max,
                                    exponential: Some((p.scale, positive.offset)),
                                    bounds: Vec::new(),
                                    counts: positive.bucket_counts,
                                    exemplars: exemplars(p.exemplars.clone()),
                                };
                                (
                                    p.attributes.clone(),
                                    p.count,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    histogram,
                                )
                            })
                            .collect(),
                    )),
                    _ => None,
                };
            if let Some((temporality, histograms)) = histograms {
                for (attributes, count, start, time, histogram) in histograms {
                    points.push(point(
                        attributes,
                        count as i64,
                        false,
                        temporality,
                        start,
                        time,
                        Some(histogram),
                    ));
                }
                continue;
            }
            let (data_points, monotonic_sum, temporality) = match &metric.data {
                Some(Data::Sum(sum)) => {
                    (sum.data_points.clone(), sum.is_monotonic, sum.aggregation_temporality)
                }
                Some(Data::Gauge(gauge)) => (gauge.data_points.clone(), false, 0),
                other => panic!("metric {} is of a kind the sidecar does not send: {other:?}", metric.name),
            };
            for p in data_points {
                let value = match p.value {
                    Some(Number::AsInt(v)) => v,
                    other => panic!("metric {} has a non-integer point: {other:?}", metric.name),
                };
                let (start, time) = (p.start_time_unix_nano, p.time_unix_nano);
                points.push(point(p.attributes, value, monotonic_sum, temporality, start, time, None));
            }
        }
    }
}

/// Set while the receiver goes down: requests are refused, not stored, so whatever it stored
/// is exactly what its clients were told it accepted.
type Down = Arc<std::sync::atomic::AtomicBool>;

fn is_down(down: &Down) -> bool {
    down.load(std::sync::atomic::Ordering::SeqCst)
}

struct GrpcCollector(Sink, Down, HeaderLog);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if is_down(&self.1) {
            return Err(tonic::Status::unavailable("shutting down"));
        }
        log_request(&self.2, "traces", &request.metadata().clone().into_headers(), "grpc-encoding");
        self.0.store(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

struct GrpcMetricsCollector(PointStore, Down, HeaderLog);

#[tonic::async_trait]
impl MetricsService for GrpcMetricsCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if is_down(&self.1) {
            return Err(tonic::Status::unavailable("shutting down"));
        }
        log_request(&self.2, "metrics", &request.metadata().clone().into_headers(), "grpc-encoding");
        store_metrics(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn env_value(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// An OTLP trace and metrics receiver on loopback, serving from its own thread and runtime so
/// tests can block on processes freely. It can be stopped and started again on the same port,
/// as a collector that goes down and comes back.
pub struct Receiver {
    pub endpoint: String,
    protocol: Protocol,
    addr: SocketAddr,
    sink: Sink,
    points: PointStore,
    headers: HeaderLog,
    down: Down,
    /// The runtime that serves; `None` while the receiver is down. Dropping it closes the
    /// listener and every connection.
    runtime: Option<tokio::runtime::Runtime>,
    /// Starts the server's graceful shutdown, and the server's task, which ends with it.
    server: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

fn receiver_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

impl Receiver {
    pub fn start(protocol: Protocol) -> Receiver {
        Receiver::start_with(protocol, Sink::default())
    }

    /// A receiver that only counts spans by their resource's `process.pid` ([`Receiver::count_of`]).
    pub fn start_counting(protocol: Protocol) -> Receiver {
        Receiver::start_with(protocol, Sink { counts: Some(Arc::default()), ..Sink::default() })
    }

    fn start_with(protocol: Protocol, sink: Sink) -> Receiver {
        let runtime = receiver_runtime();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mut receiver = Receiver {
            endpoint: format!("http://{addr}"),
            protocol,
            addr,
            sink,
            points: PointStore::default(),
            headers: HeaderLog::default(),
            down: Down::default(),
            runtime: None,
            server: None,
        };
        receiver.serve(runtime, listener);
        receiver
    }

    fn serve(&mut self, runtime: tokio::runtime::Runtime, listener: tokio::net::TcpListener) {
        let (spans, points, down) = (self.sink.clone(), self.points.clone(), self.down.clone());
        let headers = self.headers.clone();
        let (shut_down, shutdown) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = shutdown.await;
        };
        let task = match self.protocol {
            Protocol::Grpc => {
                runtime.spawn(async move {
                    // Without TCP_NODELAY each response waits out the client's delayed ACK.
                    let incoming =
                        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                    tonic::transport::Server::builder()
                        .add_service(
                            TraceServiceServer::new(GrpcCollector(spans, down.clone(), headers.clone()))
                                .accept_compressed(CompressionEncoding::Gzip)
                                .accept_compressed(CompressionEncoding::Zstd),
                        )
                        .add_service(
                            MetricsServiceServer::new(GrpcMetricsCollector(points, down, headers))
                                .accept_compressed(CompressionEncoding::Gzip)
                                .accept_compressed(CompressionEncoding::Zstd),
                        )
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                        .expect("gRPC receiver failed");
                })
            }
            Protocol::HttpProtobuf => {
                let traces_down = down.clone();
                let traces_headers = headers.clone();
                let app = axum::Router::new()
                    .route(
                        "/v1/traces",
                        axum::routing::post(move |sent: axum::http::HeaderMap, body: axum::body::Bytes| {
                            let (spans, down, log) =
                                (spans.clone(), traces_down.clone(), traces_headers.clone());
                            async move {
                                if is_down(&down) {
                                    return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                                }
                                log_request(&log, "traces", &sent, "content-encoding");
                                let request =
                                    ExportTraceServiceRequest::decode(&decompressed(&sent, body)[..])
                                        .expect("a protobuf export request");
                                spans.store(request);
                                Ok(protobuf_response(ExportTraceServiceResponse { partial_success: None }))
                            }
                        }),
                    )
                    .route(
                        "/v1/metrics",
                        axum::routing::post(move |sent: axum::http::HeaderMap, body: axum::body::Bytes| {
                            let (points, down, log) = (points.clone(), down.clone(), headers.clone());
                            async move {
                                if is_down(&down) {
                                    return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                                }
                                log_request(&log, "metrics", &sent, "content-encoding");
                                let request =
                                    ExportMetricsServiceRequest::decode(&decompressed(&sent, body)[..])
                                        .expect("a protobuf metrics export request");
                                store_metrics(&points, request);
                                Ok(protobuf_response(ExportMetricsServiceResponse { partial_success: None }))
                            }
                        }),
                    );
                runtime.spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                        .expect("HTTP receiver failed")
                })
            }
        };
        self.server = Some((shut_down, task));
        self.runtime = Some(runtime);
    }

    /// Goes down as a collector does: refuses requests, answers those it already took, then
    /// closes the listener and every connection. Every span it keeps was answered as received
    /// (a fixed grace period could cut off a request it had stored but not yet answered, under
    /// emulation slow enough to outlast it); nothing sent after is received.
    pub fn stop(&mut self) {
        let runtime = self.runtime.take().expect("the receiver is not running");
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some((shut_down, task)) = self.server.take() {
            let _ = shut_down.send(());
            // Bounded: a connection kept busy past it is closed as before.
            let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await });
        }
        runtime.shutdown_background();
    }

    /// Comes back on the same port.
    pub fn restart(&mut self) {
        assert!(self.runtime.is_none(), "the receiver is already running");
        let runtime = receiver_runtime();
        let listener = runtime.block_on(tokio::net::TcpListener::bind(self.addr)).unwrap_or_else(|e| {
            panic!("listening again on {}: {e}", self.addr);
        });
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
        self.serve(runtime, listener);
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.sink.spans.lock().unwrap().clone()
    }

    /// Spans received whose resource names process `pid` (a counting receiver only).
    pub fn count_of(&self, pid: u32) -> u64 {
        let counts = self.sink.counts.as_ref().expect("a receiver started with start_counting");
        counts.lock().unwrap().get(&i64::from(pid)).copied().unwrap_or(0)
    }

    /// The spans whose `process.pid` is `pid`, in the order the calls started.
    pub fn spans_of(&self, pid: u32) -> Vec<ReceivedSpan> {
        let mut spans: Vec<_> =
            self.spans().into_iter().filter(|s| s.int("process.pid") == Some(pid as i64)).collect();
        spans.sort_by_key(|s| s.span.start_time_unix_nano);
        spans
    }

    /// Every metric data point received, oldest first.
    /// Returns once a call made now reaches the receiver: the sidecar is reading records, so the
    /// processes started next are looked up while they still run (one already gone is known only
    /// by what the kernel captured of it, or its thread's name).
    pub fn wait_until_draining(&self) {
        let probe = run_workload(&["vlen-zero"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.spans_of(probe[0].pid).is_empty() {
            assert!(Instant::now() < deadline, "the sidecar exported no span of pid {}", probe[0].pid);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Each request's signal and [`TEST_HEADER`] value, in the order they came.
    pub fn test_headers(&self) -> Vec<(&'static str, Option<String>)> {
        self.headers.lock().unwrap().iter().map(|r| (r.signal, r.test_header.clone())).collect()
    }

    /// Each request's signal and `User-Agent`, in the order they came.
    pub fn user_agents(&self) -> Vec<(&'static str, Option<String>)> {
        self.headers.lock().unwrap().iter().map(|r| (r.signal, r.user_agent.clone())).collect()
    }

    /// Each request's signal and the compression it said it used, in the order they came.
    pub fn encodings(&self) -> Vec<(&'static str, Option<String>)> {
        self.headers.lock().unwrap().iter().map(|r| (r.signal, r.encoding.clone())).collect()
    }

    pub fn metric_points(&self) -> Vec<ReceivedPoint> {
        self.points.lock().unwrap().clone()
    }

    /// The latest value received of `metric` with these attributes (exactly), if any.
    pub fn last_metric(&self, metric: &str, attributes: &[(&str, &str)]) -> Option<i64> {
        self.metric_points()
            .into_iter()
            .rev()
            .find(|p| {
                p.metric == metric
                    && p.attributes.len() == attributes.len()
                    && attributes.iter().all(|(k, v)| str_attr(&p.attributes, k) == Some(*v))
            })
            .map(|p| p.value)
    }
}

fn protobuf_response(message: impl Message) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    ([("content-type", "application/x-protobuf")], message.encode_to_vec())
}

/// The sidecar binary, started and known to be tracing.
pub struct Sidecar {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Option<std::process::ChildStdout>,
}

pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

impl Sidecar {
    /// Starts the sidecar with exactly these variables (plus PATH), and waits until it reports
    /// its probes attached.
    pub fn start(vars: &[(&str, &str)]) -> Sidecar {
        Sidecar::try_start(vars).unwrap_or_else(|(status, stderr)| {
            panic!("the sidecar exited before it was ready ({status}):\n{stderr}")
        })
    }

    /// Like [`Sidecar::start`], but a sidecar that exits before it is ready is an answer, not
    /// a failure: its exit status and log.
    pub fn try_start(vars: &[(&str, &str)]) -> Result<Sidecar, (ExitStatus, String)> {
        Sidecar::try_start_command(Command::new(SIDECAR), vars)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for it to flush and exit.
    pub fn stop(mut self) -> Stopped {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut stdout = String::new();
        let reader = self.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = out.read_to_string(&mut s);
                s
            })
        });
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the sidecar did not stop within {STOP_TIMEOUT:?} of SIGTERM:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = reader {
            stdout = reader.join().unwrap();
        }
        // Let the stderr thread see EOF.
        std::thread::sleep(Duration::from_millis(100));
        Stopped { status, stdout, stderr: self.stderr() }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call as the workload saw it from user space.
#[derive(Clone, Debug, Deserialize)]
pub struct CallReport {
    pub scenario: String,
    pub pid: u32,
    pub tid: u32,
    pub sockfd: i32,
    pub msgvec: u64,
    pub vlen: u32,
    pub flags: i64,
    pub ret: i64,
    pub errno: i32,
    pub sizes: Vec<usize>,
    pub msg_len: Vec<usize>,
    /// getsockname / getpeername after the call ("" for none or non-IP).
    pub local: String,
    pub peer: String,
    /// Each message's explicit destination as given ("" for the connected peer).
    pub dests: Vec<String>,
}

/// Runs the workload's scenarios in one process and returns its calls in order.
pub fn run_workload(scenarios: &[&str]) -> Vec<CallReport> {
    workload_calls(Command::new(WORKLOAD).args(scenarios))
}

/// Runs a prepared workload command and returns its calls in order.
pub fn workload_calls(command: &mut Command) -> Vec<CallReport> {
    let out = command.output().expect("running the workload");
    assert!(out.status.success(), "workload failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad workload line {l:?}: {e}")))
        .collect()
}

/// Another process calling sendmmsg at a steady pace, to show that other traffic on the machine
/// does not disturb a workload's exact counts.
pub struct Noise(Child);

impl Noise {
    pub fn start() -> Noise {
        Noise(
            Command::new(WORKLOAD)
                .args(["loop", "120", "4", "200"])
                .stdout(Stdio::null())
                .spawn()
                .expect("starting the noise workload"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The workload under another executable name, so its process name differs.
pub fn renamed_workload(name: &str) -> Renamed {
    let dir = std::env::temp_dir().join(format!("otel-sendmmsg-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    copy_executable(std::path::Path::new(WORKLOAD), &path);
    Renamed(path)
}

/// A copy of the workload (tens of MiB in a debug build), removed with its directory once the
/// last copy of this test process is dropped: left behind, every run kept hundreds of MiB.
pub struct Renamed(std::path::PathBuf);

impl std::ops::Deref for Renamed {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Renamed {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Renamed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        // Fails while other copies remain: the last one takes the directory.
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A `key=N` field of the sidecar's closing summary line.
pub fn summary_count(stderr: &str, key: &str) -> u64 {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("stopped: "))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in: {line}"))
}

/// A copy of `binary` that other users can run, in a directory only root can write:
/// `target/` may sit where they cannot reach it, and tests may give the copy file capabilities.
pub fn copy_for_other_users(binary: &std::path::Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("otel-sendmmsg-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(name);
    copy_executable(binary, &path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Copies an executable the tests then run, through `cp`: written by this test process itself,
/// the copy's descriptor would be inherited by any child another test thread forks meanwhile,
/// and running the copy then fails with ETXTBSY ("text file busy") until that child has exec'd.
pub fn copy_executable(from: &std::path::Path, to: &std::path::Path) {
    let status = Command::new("cp").arg("--").arg(from).arg(to).status().expect("running cp");
    assert!(status.success(), "copying {} to {}", from.display(), to.display());
}

/// The user tests run the sidecar as when it must not be root: `nobody`.
pub const NOBODY: u32 = 65534;

/// `setpriv` running `program` as `uid` (its own group, no supplementary groups) with exactly
/// `caps` (setpriv's spelling: `bpf`, `sys_ptrace`): in the bounding set always, and in the
/// inheritable and ambient sets too when `ambient`, so they survive the exec. Without `ambient`
/// this is how a container runtime starts a non-root user: only file capabilities give any.
pub fn setpriv(uid: u32, caps: &[&str], ambient: bool, program: &std::path::Path) -> Command {
    let list: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(format!("--bounding-set={list}"));
    if ambient {
        command.arg(format!("--inh-caps={list}")).arg(format!("--ambient-caps={list}"));
    } else {
        command.arg("--inh-caps=-all");
    }
    command.arg(program);
    command
}

/// `command` in a mount namespace of its own with a fresh, empty bpffs (mode 0700, as systemd
/// mounts it) at `/sys/fs/bpf`, gone with the namespace. For a sidecar that is not root: it
/// would create `/sys/fs/bpf/otel` as its own user on the host, which root sidecars of later
/// tests rightly refuse. It execs `command` in the end, so its pid is the command's.
pub fn in_own_bpffs(command: &Command) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount -t bpf -o mode=0700 bpf /sys/fs/bpf && exec "$0" "$@""#)
        .arg(on_path(command.get_program()))
        .args(command.get_args());
    wrapped
}

/// `program` as the file PATH finds (as it is when it names a path): a shell told to exec a
/// bare name may run its own built-in instead (busybox's `sh` runs its `setpriv` applet, which
/// lacks `--reuid`, before util-linux's in PATH).
fn on_path(program: &std::ffi::OsStr) -> std::path::PathBuf {
    let name = std::path::Path::new(program);
    if name.components().count() > 1 {
        return name.to_owned();
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
        .unwrap_or_else(|| panic!("{} is not in PATH", name.display()))
}

impl Sidecar {
    /// Like [`Sidecar::try_start`], for a prepared command that ends up exec'ing the sidecar
    /// (`setpriv ... otel-sendmmsg`), so its pid is the sidecar's.
    pub fn try_start_command(
        mut command: Command,
        vars: &[(&str, &str)],
    ) -> Result<Sidecar, (ExitStatus, String)> {
        let mut child = command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // The kernel matrix runs these tests once per attach family.
            .envs(std::env::var("OTEL_SENDMMSG_ATTACH").ok().map(|v| ("OTEL_SENDMMSG_ATTACH", v)))
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the sidecar");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("ready: tracing sendmmsg") {
                    let _ = ready_tx.send(());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take();
        let mut sidecar = Sidecar { child, stderr, stdout };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(sidecar);
            }
            if let Some(status) = sidecar.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // the log's last lines
                return Err((status, sidecar.stderr()));
            }
            if Instant::now() > deadline {
                let _ = sidecar.child.kill();
                panic!("the sidecar was not ready within {READY_TIMEOUT:?}:\n{}", sidecar.stderr());
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Set in the kernel matrix's guests, which have no toolchain: what the tests would build there
/// ([`build_demo_app`], [`build_c_publishers`]) the host built before the boot, at the same paths.
pub const PREBUILT: &str = "OTEL_SENDMMSG_TESTS_PREBUILT";

fn prebuilt() -> bool {
    std::env::var_os(PREBUILT).is_some()
}

/// Whether this test runs in one of the kernel matrix's guests, under software emulation (one
/// host core for the guest's every process, the sidecar a few hundred spans a second).
pub fn emulated() -> bool {
    prebuilt()
}

/// This test binary's profile directory (`target/debug`), where cargo puts the workspace's builds.
pub fn profile_dir() -> std::path::PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned()
}

/// Builds `package` in this test's profile (another package: cargo does not build it for this
/// one's tests, and a stale one would test old code); in a guest, the host already did.
fn build_package(package: &str) {
    if prebuilt() {
        return;
    }
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--locked", "--package", package]);
    if profile_dir().ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo");
    assert!(status.success(), "building {package} failed");
}

/// The demo app's binary, built now.
pub fn build_demo_app() -> std::path::PathBuf {
    build_package("otel-sendmmsg-demo");
    profile_dir().join("otel-sendmmsg-demo")
}

/// The context library's C example (`examples/publish.c`), compiled against the library two
/// ways: `("static", program)`, linked with the static library (the linker relaxes the access to
/// initial-exec or local-exec in the executable), and `("shared", program)`, with the shared
/// one beside it, as an app ships it (TLSDESC).
pub fn build_c_publishers() -> [(&'static str, std::path::PathBuf); 2] {
    let profile = profile_dir();
    let dir = profile.join("c-publisher");
    let programs = ["static", "shared"].map(|kind| (kind, dir.join(format!("publish-{kind}"))));
    if prebuilt() {
        return programs;
    }
    build_package("otel-sendmmsg-context");
    let context =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("otel-sendmmsg-context");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(profile.join("libotel_sendmmsg_context.so"), dir.join("libotel_sendmmsg_context.so"))
        .unwrap();
    for (kind, program) in &programs {
        let link: Vec<std::ffi::OsString> = match *kind {
            "static" => vec![
                profile.join("libotel_sendmmsg_context.a").into(),
                "-Wl,--export-dynamic-symbol=otel_thread_ctx_v1".into(),
            ],
            _ => vec![
                "-L".into(),
                dir.clone().into(),
                "-lotel_sendmmsg_context".into(),
                "-Wl,-rpath,$ORIGIN".into(),
            ],
        };
        let cc = Command::new("cc")
            .arg("-O2")
            .arg(context.join("examples/publish.c"))
            .arg("-I")
            .arg(context.join("include"))
            .args(&link)
            .args(["-lpthread", "-ldl", "-lm", "-o"])
            .arg(program)
            .status()
            .expect("running cc");
        assert!(cc.success(), "compiling the C example ({kind})");
    }
    programs
}

/// The demo app's settings as the tests run it, on `command` (the demo's binary, or a wrapper
/// that runs it): service `service`, its spans over OTLP/gRPC to `endpoint`, `iterations`
/// batches every `interval_ms` to `target`, starting when a line arrives on stdin (it prints
/// `waiting` first, and each thread's id).
pub fn demo_app<'a>(
    command: &'a mut Command,
    service: &str,
    endpoint: &str,
    target: SocketAddr,
    iterations: usize,
    interval_ms: u64,
) -> &'a mut Command {
    command
        .env_clear()
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("DEMO_TARGET", target.to_string())
        .env("DEMO_ITERATIONS", iterations.to_string())
        .env("DEMO_INTERVAL_MS", interval_ms.to_string())
        .env("DEMO_WAIT_FOR_STDIN", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
}

/// What `sendmmsg-workload loop` reports when it is done.
#[derive(Clone, Debug, Deserialize)]
pub struct LoopReport {
    pub pid: u32,
    pub calls: u64,
}

/// `sendmmsg-workload loop SECONDS VLEN RATE`: calls at a steady pace for a while, so the
/// process is still running when the sidecar first reads its records (a process already gone
/// by then is known only by its thread's name). With `env` added to its environment.
pub fn loop_workload(seconds: f64, vlen: usize, rate: u32, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(WORKLOAD);
    command
        .args(["loop", &seconds.to_string(), &vlen.to_string(), &rate.to_string()])
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    command
}

/// Waits for a started `loop` workload and returns its report.
pub fn loop_report(child: Child) -> LoopReport {
    let out = child.wait_with_output().expect("waiting for the workload");
    assert!(out.status.success(), "workload failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad loop report {:?}: {e}", String::from_utf8_lossy(&out.stdout)))
}

/// The `N` of the closing summary's `stopped: N spans;`.
pub fn summary_spans(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("stopped: "))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    line.split("stopped: ")
        .nth(1)
        .and_then(|rest| rest.split(" spans;").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no span count in: {line}"))
}

impl Sidecar {
    /// Whether the sidecar is still running (it has not exited, whatever its status).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("checking on the sidecar").is_none()
    }
}

/// Waits until the sidecar logs that it reads process `pid`'s OTEP 4947 thread context (found
/// by its scan of new processes, or at the process's first call).
pub fn wait_until_thread_context_read(sidecar: &Sidecar, pid: u32) {
    let line = format!("thread context: reading otel_thread_ctx_v1 of process {pid} ");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sidecar.stderr().contains(&line) {
        assert!(Instant::now() < deadline, "the sidecar never read process {pid}:\n{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sidecar at a time within a test binary: sidecars share the host's tracepoints and the
/// pinned context map, scan every process (each other's included), and a peak RSS measured must
/// be one sidecar's work alone.
pub fn one_sidecar_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SIDECARS: Mutex<()> = Mutex::new(());
    SIDECARS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A directory other users can enter (mode 0755), removed with everything in it when dropped.
pub struct SharedDir(pub std::path::PathBuf);

impl SharedDir {
    pub fn new(name: &str) -> SharedDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("otel-sendmmsg-hostile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        SharedDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Writes `bytes` to `name` in it, readable by everyone.
    pub fn file(&self, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `/proc/PID/status` field's first value.
pub fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).unwrap().trim();
    line.split_whitespace().next().unwrap().to_owned()
}

/// SIGTERM once the sidecar handles it (a sidecar started through a wrapper such as setpriv
/// may not have installed its handler yet); it must exit 0 with its summary.
pub fn stop_cleanly(sidecar: Sidecar) -> Stopped {
    const SIGTERM_BIT: u64 = 1 << (libc::SIGTERM - 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while u64::from_str_radix(&status_field(sidecar.pid(), "SigCgt"), 16).unwrap() & SIGTERM_BIT == 0 {
        assert!(Instant::now() < deadline, "the sidecar never caught SIGTERM:\n{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "the sidecar exited with {}:\n{}", stopped.status, stopped.stderr);
    assert!(stopped.stderr.contains("stopped: "), "no summary:\n{}", stopped.stderr);
    stopped
}

/// The sidecar as a hardened deployment runs it: as `nobody`, with exactly the capabilities
/// `privileges::CAPABILITIES` lists (ambient, so they survive the exec), in a bpffs of its own,
/// its RLIMIT_MEMLOCK lifted as docker-compose.yml lifts it (kernels before 5.11 charge BPF maps
/// to it). The binary is copied into `dir`, where `nobody` can run it.
pub fn start_as_nobody(dir: &SharedDir, vars: &[(&str, &str)]) -> Sidecar {
    try_start_as_nobody(dir, vars, libc::RLIM_INFINITY)
        .unwrap_or_else(|(status, log)| panic!("the sidecar did not start as nobody ({status}):\n{log}"))
}

/// Like [`start_as_nobody`], under an RLIMIT_MEMLOCK of `memlock` bytes (at most the hard limit
/// where it cannot be raised).
pub fn try_start_as_nobody(
    dir: &SharedDir,
    vars: &[(&str, &str)],
    memlock: libc::rlim_t,
) -> Result<Sidecar, (ExitStatus, String)> {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let binary = dir.path().join("otel-sendmmsg");
    if !binary.exists() {
        copy_executable(std::path::Path::new(SIDECAR), &binary);
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let caps: Vec<String> =
        otel_sendmmsg::privileges::CAPABILITIES.iter().map(|c| c.short_name().to_ascii_lowercase()).collect();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let mut command = in_own_bpffs(&setpriv(NOBODY, &caps, true, &binary));
    let limit = libc::rlimit { rlim_cur: memlock, rlim_max: memlock };
    // SAFETY: get/setrlimit are async-signal-safe; set as root before the exec, kept across
    // setpriv. A root without CAP_SYS_RESOURCE (this machine kind's) cannot go past its hard
    // limit: lifting then stops there.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) == 0 {
                return Ok(());
            }
            let mut hard = limit;
            libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut hard);
            hard.rlim_cur = hard.rlim_max;
            if memlock < hard.rlim_max || libc::setrlimit(libc::RLIMIT_MEMLOCK, &hard) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let sidecar = Sidecar::try_start_command(command, vars)?;
    assert_eq!(status_field(sidecar.pid(), "Uid"), NOBODY.to_string(), "the sidecar runs as nobody");
    Ok(sidecar)
}

/// A collector that accepts connections and never reads or answers: the worst a network or a
/// hung collector can do to an exporter, whose every request then waits for its timeout.
pub struct SilentCollector {
    pub endpoint: String,
}

impl SilentCollector {
    pub fn start() -> SilentCollector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            // Held open, never read: the test process's exit closes them.
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        SilentCollector { endpoint }
    }
}
