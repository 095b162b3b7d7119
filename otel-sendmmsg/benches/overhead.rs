//! What tracing costs a `sendmmsg` workload, and how much the sidecar can export (issue #5).
//!
//!     cargo bench --bench overhead          (as root; scripts/bench.sh runs setup first)
//!
//! Part 1, overhead: `sendmmsg-workload loop` (threads x vlen x payload, connected UDP over
//! loopback, drained receivers) reports messages/s, in rounds that interleave every
//! configuration: untraced; the floor (empty BPF programs on the tracepoint family's hooks);
//! the sidecar for every attach family the kernel offers and every detail level, exporting
//! nowhere; and bpftrace running `bench/peer.bt`. Each configuration's rate is divided by the
//! untraced rate of the same round; the table gives the median ratio and its spread.
//!
//! Part 2, pipeline: the sidecar exports to a local OTLP receiver (gRPC, then HTTP/protobuf)
//! while the workload calls at increasing paced rates; per rate, the spans received, the
//! sidecar's own loss counters, whether they account for every call, its CPU per 10k spans/s and
//! its peak RSS.
//!
//! Part 3, first call (`first_call.rs`): what a short-lived process's first traced call pays for
//! the kernel's capture of its identity, against the capture off and untraced, and its second
//! call.
//!
//! Everything is configurable through `BENCH_*` variables (see `Settings`); every number printed
//! is measured in this run.

#[path = "overhead/bpf_stats.rs"]
mod bpf_stats;
#[path = "overhead/first_call.rs"]
mod first_call;
#[path = "overhead/floor.rs"]
mod floor;
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use floor::Floor;
use serde::Deserialize;
use support::{Protocol, Receiver, Sidecar};

/// The process name the pipeline's workload runs under, so the sidecar can trace it alone and
/// its counters count only its calls.
const PIPELINE_COMM: &str = "otelbench-load";

/// What to run, from the environment.
struct Settings {
    /// `BENCH_PARTS`: `overhead`, `pipeline`, `first-call` (default all three).
    parts: Vec<String>,
    /// `BENCH_ROUNDS` (5): rounds of every configuration.
    rounds: usize,
    /// `BENCH_SECONDS` (3): each workload run.
    seconds: f64,
    /// `BENCH_VLENS` (1,64): messages per call.
    vlens: Vec<usize>,
    /// `BENCH_THREADS` (1): sending threads (each with its own socket and receiver thread).
    threads: Vec<usize>,
    /// `BENCH_PAYLOAD` (64): bytes per message.
    payload: usize,
    /// `BENCH_FAMILIES` (tracepoint,kprobe,fentry): attach families to try.
    families: Vec<String>,
    /// `BENCH_DETAILS` (events,spans,sizes,none): `OTEL_SENDMMSG_MESSAGE_DETAIL` values.
    details: Vec<String>,
    /// `BENCH_BPFTRACE` (bpftrace): the bpftrace binary; empty to leave the peer out.
    bpftrace: String,
    /// `BENCH_CAPTURE_OFF` (true): also run each family, detail events, with the identity
    /// capture off (the steady state before it).
    capture_off: bool,
    /// `BENCH_THREAD_CONTEXT` (true): also run each family, detail events, with the workload
    /// publishing an OTEP 4947 thread context.
    thread_context: bool,
    /// `BENCH_METRICS_ONLY` (true): also run each family with the call metrics and no span.
    metrics_only: bool,
    /// `BENCH_HASH_MAP` (true): also run each family, detail events and metrics only, with the
    /// calls in flight in the hash map (`OTEL_SENDMMSG_CALL_STORE=hash-map`), beside task storage.
    hash_map: bool,
    /// `BENCH_RAW_FLOOR` (true): also run the floor with its per-message program as a raw
    /// tracepoint, beside the tracepoint's.
    raw_floor: bool,
    /// `BENCH_PIPELINE_PROTOCOLS` (grpc,http).
    protocols: Vec<Protocol>,
    /// `BENCH_PIPELINE_RATES` (10000,25000,50000,100000,150000): calls/s asked of the workload.
    rates: Vec<u64>,
    /// `BENCH_PIPELINE_SECONDS` (5).
    pipeline_seconds: f64,
    /// `BENCH_PIPELINE_VLEN` (1).
    pipeline_vlen: usize,
    /// `BENCH_PIPELINE_THREADS` (1).
    pipeline_threads: usize,
    /// `BENCH_PIPELINE_DETAIL` (events).
    pipeline_detail: String,
    /// Sidecar settings passed through from the environment when set: `OTEL_BSP_*`,
    /// `OTEL_SENDMMSG_RING_BUFFER_BYTES`, `OTEL_SENDMMSG_MAX_INFLIGHT`.
    passthrough: Vec<(String, String)>,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_list<T: FromStr>(name: &str, default: &str) -> Vec<T> {
    let value = env_or(name, default);
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{name}: cannot parse {s:?} in {value:?}")))
        .collect()
}

fn env_num<T: FromStr>(name: &str, default: &str) -> T {
    let value = env_or(name, default);
    value.trim().parse().unwrap_or_else(|_| panic!("{name}: cannot parse {value:?}"))
}

impl Settings {
    fn from_env() -> Settings {
        let protocols = env_list::<String>("BENCH_PIPELINE_PROTOCOLS", "grpc,http")
            .iter()
            .map(|p| match p.as_str() {
                "grpc" => Protocol::Grpc,
                "http" | "http/protobuf" => Protocol::HttpProtobuf,
                other => panic!("BENCH_PIPELINE_PROTOCOLS: unknown protocol {other:?} (grpc, http)"),
            })
            .collect();
        let passthrough = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("OTEL_BSP_")
                    || k == "OTEL_SENDMMSG_RING_BUFFER_BYTES"
                    || k == "OTEL_SENDMMSG_MAX_INFLIGHT"
            })
            .collect();
        Settings {
            parts: env_list("BENCH_PARTS", "overhead,pipeline,first-call"),
            rounds: env_num("BENCH_ROUNDS", "5"),
            seconds: env_num("BENCH_SECONDS", "3"),
            vlens: env_list("BENCH_VLENS", "1,64"),
            threads: env_list("BENCH_THREADS", "1"),
            payload: env_num("BENCH_PAYLOAD", "64"),
            families: env_list("BENCH_FAMILIES", "tracepoint,kprobe,fentry"),
            details: env_list("BENCH_DETAILS", "events,spans,sizes,none"),
            bpftrace: env_or("BENCH_BPFTRACE", "bpftrace"),
            capture_off: env_num("BENCH_CAPTURE_OFF", "true"),
            thread_context: env_num("BENCH_THREAD_CONTEXT", "true"),
            metrics_only: env_num("BENCH_METRICS_ONLY", "true"),
            hash_map: env_num("BENCH_HASH_MAP", "true"),
            raw_floor: env_num("BENCH_RAW_FLOOR", "true"),
            protocols,
            rates: env_list("BENCH_PIPELINE_RATES", "10000,25000,50000,100000,150000"),
            pipeline_seconds: env_num("BENCH_PIPELINE_SECONDS", "5"),
            pipeline_vlen: env_num("BENCH_PIPELINE_VLEN", "1"),
            pipeline_threads: env_num("BENCH_PIPELINE_THREADS", "1"),
            pipeline_detail: env_or("BENCH_PIPELINE_DETAIL", "events"),
            passthrough,
        }
    }

    fn part(&self, name: &str) -> bool {
        self.parts.iter().any(|p| p == name)
    }
}

/// What `sendmmsg-workload loop` prints when it is done.
#[derive(Debug, Deserialize)]
struct LoopRun {
    pid: u32,
    calls: u64,
    seconds: f64,
    messages_per_second: f64,
    failed_calls: u64,
}

/// Runs the workload to the end and returns its report.
fn run_workload(
    program: &std::path::Path,
    seconds: f64,
    vlen: usize,
    rate: u64,
    threads: usize,
    payload: usize,
    publish: bool,
) -> LoopRun {
    let args =
        [seconds.to_string(), vlen.to_string(), rate.to_string(), threads.to_string(), payload.to_string()];
    let out = Command::new(program)
        .env("WORKLOAD_THREAD_CONTEXT", if publish { "1" } else { "0" })
        .arg("loop")
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(out.status.success(), "workload loop {args:?} failed ({})", out.status);
    let run: LoopRun = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad loop report {:?}: {e}", String::from_utf8_lossy(&out.stdout)));
    if run.failed_calls > 0 {
        eprintln!("  note: {} of {} calls failed", run.failed_calls, run.calls);
    }
    run
}

/// One way of running the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Setup {
    Untraced,
    /// Empty programs on the tracepoint family's entry and exit hooks, and on its per-message
    /// hook when `per_message` (a detail level without one is compared with the floor without).
    /// `raw_message`: the per-message hook's program as a raw tracepoint (issue 15's lead: a
    /// cheaper kind of hook), compared with the tracepoint's in the same run.
    Floor {
        per_message: bool,
        raw_message: bool,
    },
    /// `capture`: false clears the sidecar's identity capture after start-up (`first_call`),
    /// to compare the steady state with the capture's once-per-process check and without.
    /// `published`: the workload's senders publish an OTEP 4947 thread context, read at each call.
    /// `metrics_only`: the call metrics on and no span (`OTEL_TRACES_EXPORTER=none`).
    /// `hash_map`: the calls in flight in the hash map, not the kernel's default store.
    Sidecar {
        family: String,
        detail: String,
        capture: bool,
        published: bool,
        metrics_only: bool,
        hash_map: bool,
    },
    Bpftrace,
}

impl Setup {
    fn label(&self) -> String {
        match self {
            Setup::Untraced => "untraced".into(),
            Setup::Floor { per_message: true, raw_message: false } => "floor (empty programs)".into(),
            Setup::Floor { per_message: true, raw_message: true } => {
                "floor (empty programs), message hook a raw tracepoint".into()
            }
            Setup::Floor { per_message: false, .. } => "floor (empty programs), entry/exit only".into(),
            Setup::Sidecar { family, metrics_only: true, hash_map, .. } => {
                format!("sidecar {family}, metrics only{}", if *hash_map { ", hash map" } else { "" })
            }
            Setup::Sidecar { family, detail, capture, published, hash_map, .. } => format!(
                "sidecar {family}, detail {detail}{}{}{}",
                if *capture { "" } else { ", capture off" },
                if *published { ", thread context published" } else { "" },
                if *hash_map { ", hash map" } else { "" }
            ),
            Setup::Bpftrace => "bpftrace peer.bt".into(),
        }
    }
}

/// A tracer in place while the workload runs.
enum Session {
    Nothing,
    Floor(Floor),
    Sidecar(Sidecar),
    Bpftrace(Bpftrace),
}

impl Session {
    /// The tracer's own process, if it has one.
    fn pid(&self) -> Option<u32> {
        match self {
            Session::Nothing | Session::Floor(_) => None,
            Session::Sidecar(sidecar) => Some(sidecar.pid()),
            Session::Bpftrace(bpftrace) => Some(bpftrace.child.id()),
        }
    }
}

/// What a tracer reported when stopped (host-wide): the sidecar's spans, bpftrace's calls; and
/// the losses it counted itself (the sidecar's lost records, bpftrace's "Lost N events").
#[derive(Default, Clone, Copy)]
struct Seen {
    traced: u64,
    lost: u64,
}

/// What a tracer reports per call of `vlen` messages: the sidecar makes a child span per message
/// (the first 64) in the `spans` detail level, one span otherwise; bpftrace counts calls.
fn per_call(setup: &Setup, vlen: usize) -> u64 {
    match setup {
        Setup::Sidecar { metrics_only: true, .. } => 0,
        Setup::Sidecar { detail, .. } if detail == "spans" => 1 + vlen.min(64) as u64,
        _ => 1,
    }
}

fn sidecar_vars<'a>(
    family: &'a str,
    detail: &'a str,
    metrics_only: bool,
    hash_map: bool,
    settings: &'a Settings,
) -> Vec<(&'a str, &'a str)> {
    let mut vars = vec![
        ("OTEL_SENDMMSG_ATTACH", family),
        ("OTEL_SENDMMSG_MESSAGE_DETAIL", detail),
        ("OTEL_TRACES_EXPORTER", "none"),
    ];
    if hash_map {
        vars.push(("OTEL_SENDMMSG_CALL_STORE", "hash-map"));
    }
    if metrics_only {
        // Every call counted in the kernel; nothing exported while the workload runs (the one
        // export, at shutdown, goes to a closed port and gives up at once).
        vars.extend([
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_SENDMMSG_CALL_METRICS", "true"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
        ]);
    }
    vars.extend(settings.passthrough.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    vars
}

/// The last meaningful line of a log that ended in an error, without its timestamp.
fn reason(log: &str) -> String {
    let line = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)");
    let line = line.split_once(" ERROR ").map_or(line, |(_, rest)| rest);
    line.to_owned()
}

fn start(setup: &Setup, settings: &Settings) -> Result<Session, String> {
    match setup {
        Setup::Untraced => Ok(Session::Nothing),
        Setup::Floor { per_message, raw_message } => {
            Floor::attach(*per_message, *raw_message).map(Session::Floor).map_err(|e| format!("{e:#}"))
        }
        Setup::Sidecar { family, detail, capture, metrics_only, hash_map, .. } => {
            let sidecar =
                Sidecar::try_start(&sidecar_vars(family, detail, *metrics_only, *hash_map, settings))
                    .map_err(|(status, log)| format!("{status}: {}", reason(&log)))?;
            if !capture {
                first_call::capture_off()?;
            }
            Ok(Session::Sidecar(sidecar))
        }
        Setup::Bpftrace => Bpftrace::start(&settings.bpftrace).map(Session::Bpftrace),
    }
}

fn stop(session: Session) -> Option<Seen> {
    match session {
        Session::Nothing => None,
        Session::Floor(floor) => {
            drop(floor); // detaches
            None
        }
        Session::Sidecar(sidecar) => {
            let stopped = sidecar.stop();
            let summary = Summary::parse(&stopped.stderr);
            Some(Seen {
                traced: summary.spans,
                lost: summary.get("ring_buffer_full")
                    + summary.get("inflight_full")
                    + summary.get("exit_missed"),
            })
        }
        Session::Bpftrace(bpftrace) => Some(bpftrace.stop()),
    }
}

/// bpftrace running the peer script.
struct Bpftrace {
    child: Child,
    output: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/peer.bt")
}

impl Bpftrace {
    fn start(program: &str) -> Result<Bpftrace, String> {
        if program.is_empty() {
            return Err("BENCH_BPFTRACE is empty".into());
        }
        let mut child = Command::new(program)
            // Unbuffered, so "Attaching N probes..." arrives when it is printed.
            .args(["-B", "none"])
            .arg(peer_script())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e} (scripts/bench.sh installs it)"))?;
        let output = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let pipe = child.stdout.take().unwrap();
        let log = output.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.starts_with("Attaching ") {
                    let _ = ready_tx.send(());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                // bpftrace says "Attaching" before it attaches; the calls it saw are checked
                // against the workload's afterwards.
                std::thread::sleep(Duration::from_secs(1));
                return Ok(Bpftrace { child, output, reader });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
                return Err(format!("bpftrace exited ({status}): {}", reason(&err)));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("bpftrace did not attach within 60 s".into());
            }
        }
    }

    /// SIGINT (bpftrace prints its maps and exits); returns its `@calls` and the events it
    /// says it lost (`Lost N events`, on either stream).
    fn stop(mut self) -> Seen {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut errors = String::new();
        let _ = std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut errors);
        let status = self.child.wait().expect("waiting for bpftrace");
        let _ = self.reader.join();
        let output = self.output.lock().unwrap().clone();
        let traced = output
            .lines()
            .find_map(|l| l.strip_prefix("@calls: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("bpftrace ({status}) printed no @calls:\n{output}"));
        let lost = output
            .lines()
            .chain(errors.lines())
            .filter_map(|l| l.trim().strip_prefix("Lost ")?.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Seen { traced, lost }
    }
}

/// The sidecar's closing summary: `stopped: N spans; key=value ...`.
struct Summary {
    spans: u64,
    counters: BTreeMap<String, u64>,
}

impl Summary {
    fn parse(stderr: &str) -> Summary {
        let spans = support::summary_spans(stderr);
        let line = stderr.lines().rev().find(|l| l.contains("stopped: ")).unwrap_or_default();
        let counters = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect();
        Summary { spans, counters }
    }

    fn get(&self, key: &str) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Messages/s of one (setup, threads, vlen), one entry per round (None: the setup did not run).
type Rates = BTreeMap<(usize, usize, usize), Vec<Option<f64>>>;

fn overhead(settings: &Settings) -> String {
    const FLOOR: Setup = Setup::Floor { per_message: true, raw_message: false };
    const RAW_FLOOR: Setup = Setup::Floor { per_message: true, raw_message: true };
    const ENTRY_EXIT_FLOOR: Setup = Setup::Floor { per_message: false, raw_message: false };
    let mut setups = vec![Setup::Untraced, FLOOR];
    if settings.raw_floor {
        setups.push(RAW_FLOOR);
    }
    // Detail `sizes` attaches no per-message hook: its floor attaches none either.
    if settings.details.iter().any(|d| d == "sizes") {
        setups.push(ENTRY_EXIT_FLOOR);
    }
    let mut unavailable: Vec<(String, String)> = Vec::new();
    // Which families the kernel gives: the sidecar itself says (exit 2 with the reason).
    for family in &settings.families {
        let probe = Setup::Sidecar {
            family: family.clone(),
            detail: "events".into(),
            capture: true,
            published: false,
            metrics_only: false,
            hash_map: false,
        };
        match start(&probe, settings) {
            Ok(session) => {
                stop(session);
                setups.extend(settings.details.iter().map(|d| Setup::Sidecar {
                    family: family.clone(),
                    detail: d.clone(),
                    capture: true,
                    published: false,
                    metrics_only: false,
                    hash_map: false,
                }));
                // Every call's latency as metrics, no span: what the call metrics cost alone.
                if settings.metrics_only {
                    setups.push(Setup::Sidecar {
                        family: family.clone(),
                        detail: "events".into(),
                        capture: true,
                        published: false,
                        metrics_only: true,
                        hash_map: false,
                    });
                }
                // The same, detail events and metrics only, with the calls in flight in the hash
                // map: what task storage saves.
                if settings.hash_map {
                    for metrics_only in [false, true].into_iter().filter(|m| !m || settings.metrics_only) {
                        setups.push(Setup::Sidecar {
                            family: family.clone(),
                            detail: "events".into(),
                            capture: true,
                            published: false,
                            metrics_only,
                            hash_map: true,
                        });
                    }
                }
                // The same calls with a span published the OTEP 4947 way: what reading it costs.
                if settings.thread_context {
                    setups.push(Setup::Sidecar {
                        family: family.clone(),
                        detail: "events".into(),
                        capture: true,
                        published: true,
                        metrics_only: false,
                        hash_map: false,
                    });
                }
                // The steady state before the identity capture: the same, capture off.
                if settings.capture_off {
                    setups.push(Setup::Sidecar {
                        family: family.clone(),
                        detail: "events".into(),
                        capture: false,
                        published: false,
                        metrics_only: false,
                        hash_map: false,
                    });
                }
            }
            Err(why) => {
                eprintln!("sidecar {family}: unavailable: {why}");
                unavailable.push((format!("sidecar {family}"), why));
            }
        }
    }
    setups.push(Setup::Bpftrace);
    for setup in [FLOOR, RAW_FLOOR, ENTRY_EXIT_FLOOR, Setup::Bpftrace] {
        if !setups.contains(&setup) {
            continue;
        }
        if let Err(why) = start(&setup, settings).map(stop) {
            eprintln!("{}: unavailable: {why}", setup.label());
            unavailable.push((setup.label(), why));
            setups.retain(|s| *s != setup);
        }
    }

    let shapes: Vec<(usize, usize)> =
        settings.threads.iter().flat_map(|&t| settings.vlens.iter().map(move |&v| (t, v))).collect();
    let workload = PathBuf::from(support::WORKLOAD);
    // Warm-up: caches, page tables, CPU frequency; not counted.
    for &(threads, vlen) in &shapes {
        run_workload(&workload, 1.0, vlen, 0, threads, settings.payload, false);
    }
    let mut rates: Rates = BTreeMap::new();
    // The programs' own time, from the kernel's statistics, on for the whole part.
    let stats = bpf_stats::enable();
    if let Err(why) = &stats {
        eprintln!("no per-program times: {why}");
    }
    let mut program_costs: BTreeMap<(usize, usize, usize), (Vec<bpf_stats::ProgramCost>, u64)> =
        BTreeMap::new();
    let mut seen: Vec<(Seen, u64)> = vec![(Seen::default(), 0); setups.len()];
    // The tracer process's CPU seconds while the workload ran, and the workload's seconds.
    let mut tracer_cpus: BTreeMap<(usize, usize, usize), (f64, f64)> = BTreeMap::new();
    let rounds = settings.rounds;
    for round in 0..rounds {
        // Each round starts one setup further on, so no setup always follows the same one.
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            let setup = &setups[i];
            let session = match start(setup, settings) {
                Ok(s) => s,
                Err(why) => {
                    eprintln!("round {}: {}: could not start: {why}", round + 1, setup.label());
                    continue;
                }
            };
            let mut expected = 0;
            for &(threads, vlen) in &shapes {
                let tracer_cpu = session.pid().map(cpu_seconds);
                let published = matches!(setup, Setup::Sidecar { published: true, .. });
                let before = bpf_stats::snapshot();
                let run =
                    run_workload(&workload, settings.seconds, vlen, 0, threads, settings.payload, published);
                if stats.is_ok() {
                    let (costs, calls) = program_costs.entry((i, threads, vlen)).or_default();
                    bpf_stats::add(costs, before.until(&bpf_stats::snapshot()));
                    *calls += run.calls;
                }
                if let (Some(pid), Some(before)) = (session.pid(), tracer_cpu) {
                    let cpu = tracer_cpus.entry((i, threads, vlen)).or_default();
                    cpu.0 += cpu_seconds(pid) - before;
                    cpu.1 += run.seconds;
                }
                eprintln!(
                    "round {}/{rounds} {:<34} threads {threads} vlen {vlen:>3}: {:>9.0} msgs/s ({} calls in {:.2} s)",
                    round + 1,
                    setup.label(),
                    run.messages_per_second,
                    run.calls,
                    run.seconds
                );
                expected += run.calls * per_call(setup, vlen);
                rates.entry((i, threads, vlen)).or_insert_with(|| vec![None; rounds])[round] =
                    Some(run.messages_per_second);
            }
            if let Some(s) = stop(session) {
                seen[i].0.traced += s.traced;
                seen[i].0.lost += s.lost;
                seen[i].1 += expected;
            }
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Overhead: {rounds} rounds of {} s, payload {} B; messages/s and ratio to untraced in the same round\n",
        settings.seconds, settings.payload
    );
    let _ = writeln!(
        out,
        "| threads | vlen | configuration | msgs/s (median) | ratio (median) | spread (min–max) | BPF ns per call | x its floor | tracer process CPU | traced / expected | lost (counted) |"
    );
    let _ = writeln!(out, "|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|");
    // Programs' ns per workload call, by setup and shape.
    let ns_per_call = |i: usize, threads: usize, vlen: usize| {
        let (costs, calls) = program_costs.get(&(i, threads, vlen))?;
        (*calls > 0).then(|| costs.iter().map(|c| c.ns).sum::<u64>() as f64 / *calls as f64)
    };
    let floor_of = |setup: &Setup| {
        let per_message = !matches!(setup, Setup::Sidecar { detail, .. } if detail == "sizes");
        setups.iter().position(|s| *s == Setup::Floor { per_message, raw_message: false })
    };
    for &(threads, vlen) in &shapes {
        let base = rates.get(&(0, threads, vlen)).cloned().unwrap_or_default();
        for (i, setup) in setups.iter().enumerate() {
            let Some(values) = rates.get(&(i, threads, vlen)) else { continue };
            let mut msgs: Vec<f64> = values.iter().flatten().copied().collect();
            let mut ratios: Vec<f64> =
                values.iter().zip(&base).filter_map(|(v, b)| Some(v.as_ref()? / b.as_ref()?)).collect();
            if msgs.is_empty() || ratios.is_empty() {
                continue;
            }
            let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            let (saw, lost) = match seen[i] {
                (s, expected) if expected > 0 => {
                    (format!("{:.3}", s.traced as f64 / expected as f64), s.lost.to_string())
                }
                _ => ("–".into(), "–".into()),
            };
            let tracer_cpu = match tracer_cpus.get(&(i, threads, vlen)) {
                Some((cpu, secs)) if *secs > 0.0 => format!("{:.0}%", cpu / secs * 100.0),
                _ => "–".into(),
            };
            let bpf_ns = ns_per_call(i, threads, vlen);
            let versus_floor =
                match (setup, bpf_ns, floor_of(setup).and_then(|f| ns_per_call(f, threads, vlen))) {
                    (Setup::Sidecar { .. }, Some(ns), Some(floor)) if floor > 0.0 => {
                        format!("{:.1}", ns / floor)
                    }
                    _ => "–".into(),
                };
            let bpf_ns = bpf_ns.map_or("–".into(), |ns| format!("{ns:.0}"));
            let _ = writeln!(
                out,
                "| {threads} | {vlen} | {} | {:.0} | {:.3} | {lo:.3}–{hi:.3} | {bpf_ns} | {versus_floor} | {tracer_cpu} | {saw} | {lost} |",
                setup.label(),
                median(&mut msgs),
                median(&mut ratios),
            );
        }
    }
    // Where the programs' time goes: each program's runs per call and ns per run.
    if !program_costs.is_empty() {
        let _ = writeln!(out, "\n### Per program (the kernel's BPF statistics), over all rounds\n");
        let _ = writeln!(
            out,
            "| threads | vlen | configuration | program | runs per call | ns per run | ns per call |"
        );
        let _ = writeln!(out, "|---:|---:|---|---|---:|---:|---:|");
        for &(threads, vlen) in &shapes {
            for (i, setup) in setups.iter().enumerate() {
                let Some((costs, calls)) = program_costs.get(&(i, threads, vlen)) else { continue };
                if *calls == 0 {
                    continue;
                }
                for cost in costs {
                    let _ = writeln!(
                        out,
                        "| {threads} | {vlen} | {} | `{}` | {:.2} | {:.0} | {:.0} |",
                        setup.label(),
                        cost.name,
                        cost.runs as f64 / *calls as f64,
                        cost.ns_per_run(),
                        cost.ns as f64 / *calls as f64,
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "\n\"BPF ns per call\": the time the kernel's statistics (`BPF_ENABLE_STATS`) give all \
         programs that ran during the workload, divided by its calls (host-wide: on an idle \
         machine, the workload's); the hooks' own dispatch is not in it. \"x its floor\": that \
         over the same for the empty programs on the same hooks (entry/exit only for detail \
         sizes). \"tracer process CPU\": the sidecar's or bpftrace's own utime+stime while the workload \
         ran, in % of one core (BPF programs run in the workload's threads and count there). \
         \"traced / expected\": what the tracer reported when stopped (the sidecar's spans, \
         bpftrace's @calls; host-wide, so other processes' calls add to it) \
         over what the workload's calls should give (one span per call; in detail spans, one more \
         per message up to 64), over all rounds and shapes, losses not added; \"lost (counted)\": \
         what the tracer itself counted as lost: the sidecar's ring_buffer_full + inflight_full + \
         exit_missed, bpftrace's \"Lost N events\"."
    );
    for (what, why) in unavailable {
        let _ = writeln!(out, "\n{what}: unavailable: {why}");
    }
    out
}

/// `utime + stime` of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU seconds (user + system) of every child this process has waited for.
fn children_cpu_seconds() -> f64 {
    // SAFETY: an rusage the kernel fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A memory field of /proc/PID/status, in KiB: `VmHWM` (peak resident set), `VmRSS` (now).
fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("reading /proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn pipeline(settings: &Settings) -> String {
    let workload = support::renamed_workload(PIPELINE_COMM);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Pipeline: sidecar (tracepoint, detail {}) -> local OTLP receiver; workload vlen {}, {} thread(s), {} s per rate\n",
        settings.pipeline_detail, settings.pipeline_vlen, settings.pipeline_threads, settings.pipeline_seconds
    );
    let _ = writeln!(
        out,
        "| protocol | calls/s asked | calls/s made | calls | spans expected | spans received | ring_buffer_full | inflight_full + exit_missed | export_queue_full | export_failed | accounted | all delivered | sidecar CPU per 10k spans/s | peak RSS (VmHWM) | RSS at end |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|");
    let mut best: Vec<String> = Vec::new();
    for &protocol in &settings.protocols {
        let mut highest: Option<u64> = None;
        for &rate in &settings.rates {
            // A receiver per rate, counting spans by process: one that kept them all would cost
            // more CPU, on the same cores, than the sidecar it measures.
            let receiver = Receiver::start_counting(protocol);
            let setup = Setup::Sidecar {
                family: "tracepoint".into(),
                detail: settings.pipeline_detail.clone(),
                capture: true,
                published: false,
                metrics_only: false,
                hash_map: false,
            };
            let mut vars = vec![
                ("OTEL_SENDMMSG_ATTACH", "tracepoint"),
                ("OTEL_SENDMMSG_MESSAGE_DETAIL", settings.pipeline_detail.as_str()),
                ("OTEL_SENDMMSG_COMMS", PIPELINE_COMM),
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
            ];
            vars.extend(settings.passthrough.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let sidecar = match Sidecar::try_start(&vars) {
                Ok(s) => s,
                Err((status, log)) => {
                    let _ = writeln!(out, "\nthe sidecar did not start ({status}): {}", reason(&log));
                    return out;
                }
            };
            let pid = sidecar.pid();
            let cpu_at_start = cpu_seconds(pid);
            let run = run_workload(
                &workload,
                settings.pipeline_seconds,
                settings.pipeline_vlen,
                rate,
                settings.pipeline_threads,
                settings.payload,
                false,
            );
            // Let it catch up with what is pending, then read its peak memory and stop it (the
            // stop flushes every queued span).
            std::thread::sleep(Duration::from_secs(1));
            let (hwm, rss) = (memory_kib(pid, "VmHWM"), memory_kib(pid, "VmRSS"));
            let children_before = children_cpu_seconds();
            let stopped = sidecar.stop();
            // Its whole life's CPU, less what start-up took: tracing, exporting and the flush.
            let cpu = children_cpu_seconds() - children_before - cpu_at_start;
            let summary = Summary::parse(&stopped.stderr);
            // Spans, message child spans included (by their resource, which names the process):
            // what the export counters count too. The kernel-side counters count calls.
            let received = receiver.count_of(run.pid);
            let per_call = per_call(&setup, settings.pipeline_vlen);
            let expected = run.calls * per_call;
            let lost_records = summary.get("ring_buffer_full")
                + summary.get("inflight_full")
                + summary.get("exit_missed")
                + summary.get("undecodable_records");
            let lost_export = summary.get("export_queue_full") + summary.get("export_failed");
            let accounted = received + lost_records * per_call + lost_export;
            let all = received == expected;
            if all {
                highest = highest.max(Some(rate));
            }
            let per_10k = if received > 0 {
                format!("{:.1}% of a core", cpu / received as f64 * 10_000.0 * 100.0)
            } else {
                "–".into()
            };
            eprintln!(
                "pipeline {:<13} rate {rate:>7}: {} calls, {received} spans received, summary: {}",
                protocol.env_value(),
                run.calls,
                stopped.stderr.lines().rev().find(|l| l.contains("stopped: ")).unwrap_or("(none)")
            );
            let _ = writeln!(
                out,
                "| {} | {rate} | {:.0} | {} | {expected} | {received} | {} | {} | {} | {} | {} | {} | {per_10k} | {:.1} MiB | {:.1} MiB |",
                protocol.env_value(),
                run.calls as f64 / run.seconds,
                run.calls,
                summary.get("ring_buffer_full"),
                summary.get("inflight_full") + summary.get("exit_missed"),
                summary.get("export_queue_full"),
                summary.get("export_failed"),
                if accounted == expected { "yes".to_owned() } else { format!("NO ({accounted})") },
                if all { "yes" } else { "no" },
                hwm as f64 / 1024.0,
                rss as f64 / 1024.0,
            );
        }
        best.push(match highest {
            Some(rate) => format!("{}: {rate} calls/s", protocol.env_value()),
            None => format!("{}: none of the rates tried", protocol.env_value()),
        });
    }
    let _ = writeln!(
        out,
        "\nHighest rate asked with every span delivered: {}.\n\"spans expected\": one per call (in \
         detail spans, one more per message up to 64). \"accounted\": spans received + the \
         sidecar's loss counters (export_queue_full, export_failed; ring_buffer_full, \
         inflight_full, exit_missed and undecodable_records count calls, times spans per call) = \
         spans expected. CPU: the sidecar's utime+stime from the workload's start to its exit \
         (the final flush included) over the spans received. Peak RSS includes start-up.",
        best.join(", ")
    );
    if let Some(dir) = workload.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "machine: {cpu}, {cores} CPUs, Linux {}; load average at start {}; sidecar at {}",
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        sidecar_commit()
    )
}

/// The commit the measured sidecar was built from, as its `--version` says: a binary left by a
/// build of another checkout in the same target directory shows here, not as a surprise in the
/// numbers.
fn sidecar_commit() -> String {
    let output = std::process::Command::new(support::SIDECAR).arg("--version").output();
    let text = output.ok().and_then(|o| String::from_utf8(o.stdout).ok()).unwrap_or_default();
    text.lines().find_map(|line| line.strip_prefix("git commit: ")).map_or_else(
        || "an unknown commit".to_owned(),
        |commit| format!("commit {}", commit.chars().take(12).collect::<String>()),
    )
}

fn main() {
    support::require_root();
    let settings = Settings::from_env();
    let started = Instant::now();
    let mut report = machine();
    report.push('\n');
    eprintln!("{report}");
    if settings.part("overhead") {
        report.push_str(&overhead(&settings));
    }
    if settings.part("pipeline") {
        report.push_str(&pipeline(&settings));
    }
    if settings.part("first-call") {
        report.push_str(&first_call::first_call(&settings));
    }
    let _ = writeln!(report, "\ntotal time {:.0} s", started.elapsed().as_secs_f64());
    println!("{report}");
}
