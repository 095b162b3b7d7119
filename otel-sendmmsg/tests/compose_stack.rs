//! End to end with the real backends of docker-compose.yml, run natively (no Docker engine
//! here): Jaeger v2 with in-memory storage, an OpenTelemetry Collector built from the upstream
//! modules (`tools/otelcol`, the components `collector-config/` uses) running
//! `collector-config/compose.yaml` itself, the demo app, and the sidecar as `nobody` with exactly
//! the compose file's capabilities. What a user would see is asked of Jaeger's query API.
//! Every collector config is also checked by the real binary's `validate`.
//!
//! The binaries are built by `scripts/setup.sh --tests` (scripts/setup-observability.sh).

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

const BIN_DIR: &str = "/var/cache/otel-sendmmsg/bin";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// A binary scripts/setup-observability.sh built.
fn backend(name: &str) -> PathBuf {
    let path = Path::new(BIN_DIR).join(name);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh --tests", path.display());
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A backend process, its output kept, killed when dropped.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
    name: String,
}

impl Running {
    fn start(name: &str, command: &mut Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Running { child, log, name: name.to_owned() }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `ready` holds, or fails with the process's log.
    fn wait(&mut self, what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}) before {what}:\n{}", self.name, self.log());
            }
            assert!(Instant::now() < deadline, "{}: not {what} within 60 s:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on 127.0.0.1:`port`: (status code, body), or None when nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Jaeger v2 as tools/jaeger/config.yaml runs it: (process, OTLP gRPC port, query HTTP port).
fn start_jaeger() -> (Running, u16, u16) {
    let (otlp, query, query_grpc) = (free_port(), free_port(), free_port());
    let mut jaeger = Running::start(
        "jaeger",
        Command::new(backend("jaeger"))
            .arg(format!("--config={}", workspace().join("tools/jaeger/config.yaml").display()))
            .env("JAEGER_OTLP_GRPC_PORT", otlp.to_string())
            .env("JAEGER_QUERY_HTTP_PORT", query.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", query_grpc.to_string()),
    );
    jaeger.wait("answering queries", || http_get(query, "/api/services").is_some_and(|(s, _)| s == 200));
    (jaeger, otlp, query)
}

/// The Collector on `config`, with `env` (the config's `${env:...}` ports), its own metrics
/// endpoint off (a fixed port another Collector of the test would hold), healthy.
fn start_collector(name: &str, config: &Path, env: &[(&str, String)], health: u16) -> Running {
    let mut collector = Running::start(
        name,
        Command::new(backend("otelcol"))
            .arg(format!("--config={}", config.display()))
            .arg("--set=service::telemetry::metrics::level=none")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
    );
    collector.wait("healthy", || http_get(health, "/").is_some_and(|(s, _)| s == 200));
    collector
}

/// The compose file's capabilities, in setpriv's spelling.
fn compose_capabilities() -> Vec<String> {
    let compose = std::fs::read_to_string(workspace().join("docker-compose.yml")).unwrap();
    let sidecar = compose.split("\n  sidecar:").nth(1).unwrap();
    let adds = sidecar.split("cap_add:").nth(1).unwrap();
    adds.lines()
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|c| c.split_whitespace().next().unwrap().to_ascii_lowercase())
        .collect()
}

/// Jaeger's traces of `service`, as its query API returns them.
fn traces(query: u16, service: &str) -> Vec<Value> {
    let Some((200, body)) = http_get(query, &format!("/api/traces?service={service}&limit=100&lookback=1h"))
    else {
        return Vec::new();
    };
    let json: Value = serde_json::from_str(&body).unwrap();
    json["data"].as_array().cloned().unwrap_or_default()
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"].as_array()?.iter().find(|t| t["key"] == key).map(|t| &t["value"])
}

const SERVICE: &str = "compose-stack-app";
const ITERATIONS: usize = 5;

/// The compose stack: the demo app's `publish-batch` spans reach Jaeger with the sidecar's
/// `sendmmsg` spans as their children, as a user would see them; the sidecar's own metrics reach
/// the Collector.
#[test]
fn jaeger_shows_the_demo_apps_spans_with_their_sendmmsg_children() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let (_jaeger, jaeger_otlp, query) = start_jaeger();
    let (grpc, http, health) = (free_port(), free_port(), free_port());
    let collector = start_collector(
        "collector",
        &workspace().join("collector-config/compose.yaml"),
        &[
            ("OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{grpc}")),
            ("OTLP_HTTP_ENDPOINT", format!("127.0.0.1:{http}")),
            ("HEALTH_CHECK_ENDPOINT", format!("127.0.0.1:{health}")),
            ("JAEGER_ENDPOINT", format!("127.0.0.1:{jaeger_otlp}")),
        ],
        health,
    );
    let endpoint = format!("http://127.0.0.1:{grpc}");
    // The sidecar as the compose file runs it: nobody, exactly its capabilities.
    let caps = compose_capabilities();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let binary = copy_for_other_users(Path::new(SIDECAR), "otel-sendmmsg-compose");
    let sidecar = Sidecar::try_start_command(
        in_own_bpffs(&setpriv(NOBODY, &caps, true, &binary)),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    )
    .unwrap_or_else(|(status, log)| panic!("the sidecar did not start ({status}):\n{log}"));
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut app = Command::new(build_demo_app())
        .env_clear()
        .env("OTEL_SERVICE_NAME", SERVICE)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("DEMO_TARGET", sink.local_addr().unwrap().to_string())
        .env("DEMO_ITERATIONS", ITERATIONS.to_string())
        .env("DEMO_INTERVAL_MS", "50")
        .env("DEMO_WAIT_FOR_STDIN", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = app.id();
    let mut lines = BufReader::new(app.stdout.take().unwrap()).lines().map_while(Result::ok);
    assert!(lines.any(|l| l == "waiting"), "the demo app did not get ready");
    wait_until_thread_context_read(&sidecar, pid);
    writeln!(app.stdin.take().unwrap(), "go").unwrap();
    assert!(app.wait().unwrap().success());
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    // What Jaeger shows: every batch's trace, whole (the Collector batches for up to 1 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let complete = |traces: &[Value]| {
        let batches = traces
            .iter()
            .filter(|t| {
                let spans = t["spans"].as_array().map(Vec::as_slice).unwrap_or_default();
                spans.iter().any(|s| s["operationName"] == "publish-batch")
                    && spans.iter().any(|s| s["operationName"] == "sendmmsg")
            })
            .count();
        batches == ITERATIONS
    };
    let mut found = traces(query, SERVICE);
    while !complete(&found) {
        assert!(
            Instant::now() < deadline,
            "Jaeger has not every batch with its syscall: {found:#?}\ncollector:\n{}",
            collector.log()
        );
        std::thread::sleep(Duration::from_millis(250));
        found = traces(query, SERVICE);
    }
    let has = |trace: &Value, name: &str| {
        trace["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["operationName"] == name))
    };
    // The demo's heartbeat thread publishes no span: its calls are traces of their own, one root
    // span each.
    let heartbeats: Vec<&Value> = found.iter().filter(|t| !has(t, "publish-batch")).collect();
    assert!(!heartbeats.is_empty(), "{found:#?}");
    for trace in heartbeats {
        let spans = trace["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 1, "{trace:#}");
        assert_eq!(spans[0]["operationName"], "sendmmsg");
        assert!(spans[0]["references"].as_array().is_none_or(Vec::is_empty), "a root: {trace:#}");
        assert_eq!(tag(&spans[0], "thread.name").and_then(Value::as_str), Some("heartbeat"));
    }
    for trace in found.iter().filter(|t| has(t, "publish-batch")) {
        let spans = trace["spans"].as_array().unwrap();
        let parents: Vec<&Value> = spans.iter().filter(|s| s["operationName"] == "publish-batch").collect();
        assert_eq!(parents.len(), 1, "{trace:#}");
        let parent = parents[0];
        let children: Vec<&Value> = spans.iter().filter(|s| s["operationName"] == "sendmmsg").collect();
        assert_eq!(children.len(), 1, "one sendmmsg per batch: {trace:#}");
        let child = children[0];
        let reference = &child["references"][0];
        assert_eq!(
            (reference["refType"].as_str(), &reference["spanID"]),
            (Some("CHILD_OF"), &parent["spanID"])
        );
        let (p0, pd) = (parent["startTime"].as_u64().unwrap(), parent["duration"].as_u64().unwrap());
        let (c0, cd) = (child["startTime"].as_u64().unwrap(), child["duration"].as_u64().unwrap());
        assert!(p0 <= c0 && c0 + cd <= p0 + pd, "the syscall lies inside its batch: {trace:#}");
        // Both under the app's own service (the sidecar read its process context).
        let processes = &trace["processes"];
        for span in [parent, child] {
            let process = span["processID"].as_str().unwrap();
            assert_eq!(processes[process]["serviceName"], SERVICE, "{trace:#}");
        }
        assert_eq!(tag(child, "span.kind").and_then(Value::as_str), Some("internal"), "{child:#}");
        assert_eq!(tag(child, "sendmmsg.messages.failed").and_then(Value::as_i64), Some(0), "{child:#}");
        assert_eq!(tag(child, "network.transport").and_then(Value::as_str), Some("udp"), "{child:#}");
        assert_eq!(tag(child, "process.pid").and_then(Value::as_i64), Some(i64::from(pid)), "{child:#}");
        let vlen = tag(child, "sendmmsg.vlen").and_then(Value::as_i64).expect("sendmmsg.vlen");
        assert_eq!(tag(child, "sendmmsg.sent").and_then(Value::as_i64), Some(vlen), "{child:#}");
        assert!(tag(child, "otel.status_code").is_none_or(|s| s == "OK"), "{child:#}");
    }
    // The sidecar's own metrics went through the Collector's metrics pipeline: its debug
    // exporter logs each batch it passes on. The demo app sets up no meter provider, so every
    // metric there is the sidecar's.
    let log = collector.log();
    let metrics_logged = log.lines().filter(|l| l.contains("\"otelcol.signal\": \"metrics\"")).any(|l| {
        l.split("\"metrics\": ")
            .nth(1)
            .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok())
            > Some(0)
    });
    assert!(metrics_logged, "no metrics reached the collector:\n{log}");
}

/// Each collector config as the real binary of the release the tests run checks it.
#[test]
fn every_collector_config_is_valid_for_the_collector_release_we_build() {
    for config in ["compose.yaml", "agent.yaml", "gateway.yaml"] {
        let path = workspace().join("collector-config").join(config);
        let out = Command::new(backend("otelcol"))
            .arg("validate")
            .arg(format!("--config={}", path.display()))
            .env("K8S_NODE_NAME", "node-1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{config}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
