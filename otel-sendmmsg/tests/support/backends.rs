//! The real backends of docker-compose.yml, run natively (no Docker engine here): Jaeger v2
//! with in-memory storage and an OpenTelemetry Collector built from the upstream modules, as
//! `scripts/setup.sh --tests` (scripts/setup-observability.sh) builds them; and what a user would
//! see, asked of Jaeger's query API.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BIN_DIR: &str = "/var/cache/otel-sendmmsg/bin";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// A binary scripts/setup-observability.sh built.
pub fn backend(name: &str) -> PathBuf {
    let path = Path::new(BIN_DIR).join(name);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh --tests", path.display());
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A backend process, its output kept, killed when dropped.
pub struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
    name: String,
}

impl Running {
    pub fn start(name: &str, command: &mut Command) -> Running {
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

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `ready` holds, or fails with the process's log.
    pub fn wait(&mut self, what: &str, ready: impl Fn() -> bool) {
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

/// `GET path` at `address` (host:port): (status code, body), or None when nothing answers.
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Jaeger v2 as tools/jaeger/config.yaml runs it, on 127.0.0.1.
pub struct Jaeger {
    pub process: Running,
    /// Where its OTLP/gRPC receiver listens (host:port).
    pub otlp: String,
    /// Where its query API answers (host:port).
    pub query: String,
}

pub fn start_jaeger() -> Jaeger {
    let (otlp, query, query_grpc) = (free_port(), free_port(), free_port());
    let mut process = Running::start(
        "jaeger",
        Command::new(backend("jaeger"))
            .arg(format!("--config={}", workspace().join("tools/jaeger/config.yaml").display()))
            .env("JAEGER_OTLP_GRPC_PORT", otlp.to_string())
            .env("JAEGER_QUERY_HTTP_PORT", query.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", query_grpc.to_string()),
    );
    let query = format!("127.0.0.1:{query}");
    process.wait("answering queries", || http_get(&query, "/api/services").is_some_and(|(s, _)| s == 200));
    Jaeger { process, otlp: format!("127.0.0.1:{otlp}"), query }
}

/// A Collector on one of collector-config/'s files, on its own loopback address.
pub struct Collector {
    pub name: &'static str,
    /// The file in collector-config/.
    pub config: &'static str,
    /// The loopback address (127.x.y.z) its receivers and health check listen on.
    pub host: String,
    /// Its OTLP/gRPC port (HTTP/protobuf and the health check get free ones).
    pub grpc_port: u16,
    /// The config's other `${env:...}` settings.
    pub env: Vec<(&'static str, String)>,
    /// More `--config` sources merged over the file (the Collector's `yaml:` provider).
    pub overrides: Vec<String>,
    /// `/etc/hosts` as this Collector alone sees it (a mount namespace of its own): names that
    /// resolve to several of the test's loopback addresses, as a headless Service's do.
    pub hosts: Option<String>,
}

impl Collector {
    pub fn new(name: &'static str, config: &'static str, host: &str) -> Collector {
        Collector {
            name,
            config,
            host: host.to_owned(),
            grpc_port: free_port(),
            env: Vec::new(),
            overrides: Vec::new(),
            hosts: None,
        }
    }

    /// Where its OTLP/gRPC receiver listens (host:port).
    pub fn grpc(&self) -> String {
        format!("{}:{}", self.host, self.grpc_port)
    }

    /// Started with its own metrics endpoint off (a fixed port every Collector of a test would
    /// want), and healthy.
    pub fn start(self) -> Running {
        let health = format!("{}:{}", self.host, free_port());
        let mut command = match &self.hosts {
            None => Command::new(backend("otelcol")),
            Some(hosts) => {
                let file = std::env::temp_dir().join(format!(
                    "otel-sendmmsg-hosts-{}-{}",
                    std::process::id(),
                    self.name
                ));
                std::fs::write(&file, hosts).unwrap();
                let mut command = Command::new("unshare");
                command
                    .args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!("mount --bind {} /etc/hosts && exec \"$0\" \"$@\"", file.display()));
                command.arg(backend("otelcol"));
                command
            }
        };
        command
            .arg(format!("--config={}", workspace().join("collector-config").join(self.config).display()))
            .args(self.overrides.iter().map(|o| format!("--config=yaml:{o}")))
            .arg("--set=service::telemetry::metrics::level=none")
            .env("OTLP_GRPC_ENDPOINT", self.grpc())
            .env("OTLP_HTTP_ENDPOINT", format!("{}:{}", self.host, free_port()))
            .env("HEALTH_CHECK_ENDPOINT", &health)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut collector = Running::start(self.name, &mut command);
        collector.wait("healthy", || http_get(&health, "/").is_some_and(|(s, _)| s == 200));
        collector
    }
}

/// docker-compose.yml's service `name`.
pub fn compose_service(name: &str) -> yaml_rust2::Yaml {
    let text = std::fs::read_to_string(workspace().join("docker-compose.yml")).unwrap();
    let compose = yaml_rust2::YamlLoader::load_from_str(&text).unwrap().remove(0);
    let service = compose["services"][name].clone();
    assert!(!service.is_badvalue(), "docker-compose.yml has no service {name}");
    service
}

/// The environment docker-compose.yml gives service `name` (a map of strings).
pub fn compose_environment(name: &str) -> Vec<(String, String)> {
    let service = compose_service(name);
    let env = service["environment"].as_hash().unwrap_or_else(|| panic!("{name}: environment is a map"));
    env.iter()
        .map(|(k, v)| {
            let value = v.as_str().unwrap_or_else(|| panic!("{name}: {k:?} is not a string"));
            (k.as_str().unwrap().to_owned(), value.to_owned())
        })
        .collect()
}

/// The compose file's capabilities for the sidecar, in setpriv's spelling.
pub fn compose_capabilities() -> Vec<String> {
    let service = compose_service("sidecar");
    let adds = service["cap_add"].as_vec().expect("the sidecar's cap_add is a list");
    adds.iter().map(|c| c.as_str().unwrap().to_ascii_lowercase()).collect()
}

/// Jaeger's traces of `service`, as its query API returns them.
pub fn traces(jaeger: &Jaeger, service: &str) -> Vec<Value> {
    let path = format!("/api/traces?service={service}&limit=1000&lookback=1h");
    let Some((200, body)) = http_get(&jaeger.query, &path) else {
        return Vec::new();
    };
    let json: Value = serde_json::from_str(&body).unwrap();
    json["data"].as_array().cloned().unwrap_or_default()
}

/// Jaeger's traces of `service` once `done` holds for them (within 30 s; the Collectors batch
/// for up to 1 s each).
pub fn traces_when(
    jaeger: &Jaeger,
    service: &str,
    done: impl Fn(&[Value]) -> bool,
    logs: &[&Running],
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = traces(jaeger, service);
        if done(&found) {
            return found;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|r| format!("{}:\n{}", r.name, r.log())).collect();
            panic!("Jaeger's traces of {service} are not complete: {found:#?}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn spans(trace: &Value) -> &[Value] {
    trace["spans"].as_array().map(Vec::as_slice).unwrap_or_default()
}

pub fn spans_named<'a>(trace: &'a Value, name: &str) -> Vec<&'a Value> {
    spans(trace).iter().filter(|s| s["operationName"] == name).collect()
}

pub fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"].as_array()?.iter().find(|t| t["key"] == key).map(|t| &t["value"])
}

/// A tag of the resource (Jaeger's "process") a span is under.
pub fn process_tag<'a>(trace: &'a Value, span: &Value, key: &str) -> Option<&'a Value> {
    let process = &trace["processes"][span["processID"].as_str()?];
    if key == "service.name" {
        return Some(&process["serviceName"]);
    }
    process["tags"].as_array()?.iter().find(|t| t["key"] == key).map(|t| &t["value"])
}

/// The demo app of the compose stack, run once to the end: `iterations` batches exported to
/// `endpoint` (OTLP/gRPC) as service `service`, to a local UDP sink, with `env` on top. It starts
/// sending only once `sidecar` reads its thread context. Returns its pid.
pub fn run_demo_app(
    sidecar: &super::Sidecar,
    service: &str,
    endpoint: &str,
    iterations: usize,
    env: &[(&str, &str)],
) -> u32 {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = sink.local_addr().unwrap();
    let mut app = super::demo_app(
        &mut Command::new(super::build_demo_app()),
        service,
        endpoint,
        target,
        iterations,
        50,
    )
    .envs(env.iter().copied())
    .spawn()
    .unwrap();
    let pid = app.id();
    let mut lines = BufReader::new(app.stdout.take().unwrap()).lines().map_while(Result::ok);
    assert!(lines.any(|l| l == "waiting"), "the demo app did not get ready");
    super::wait_until_thread_context_read(sidecar, pid);
    writeln!(app.stdin.take().unwrap(), "go").unwrap();
    assert!(app.wait().unwrap().success());
    pid
}
