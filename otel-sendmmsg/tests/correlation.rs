//! End to end, as root: syscall spans inside the application's own trace. The demo app and the
//! sidecar export to one real OTLP receiver; the app publishes its span through the context
//! library, the OTEP 4947 way (the TLS variable `otel_thread_ctx_v1`, read by the entry hook: no
//! uprobe), and (as OBI would) the test also fills the shared map directly.

mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::UdpSocket,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use otel_sendmmsg_common::TraceContext;
use support::*;

const PIN: &str = "/sys/fs/bpf/otel/traces_ctx_v1";
const ITERATIONS: usize = 5;

/// The demo app, started and stopped before it sends, its threads' ids known.
struct Demo {
    child: Child,
    stdin: ChildStdin,
    tids: HashMap<String, u32>,
}

impl Demo {
    fn start(endpoint: &str, sink: &UdpSocket) -> Demo {
        let binary = build_demo_app();
        let target = sink.local_addr().unwrap();
        let mut child = demo_app(&mut Command::new(&binary), "my-app", endpoint, target, ITERATIONS, 20)
            .spawn()
            .expect("starting the demo app");
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut tids = HashMap::new();
        let mut waiting = false;
        while !(waiting && tids.len() == 2) {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("the demo app did not get ready");
            if let Some(rest) = line.strip_prefix("thread ") {
                let (name, tid) = rest.split_once(' ').unwrap();
                tids.insert(name.to_owned(), tid.parse().unwrap());
            }
            waiting |= line == "waiting";
        }
        Demo { child, stdin, tids }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it send its batches and waits for it to flush and exit.
    fn run(mut self) {
        writeln!(self.stdin, "go").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the demo app failed: {status}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Outcome {
    app_spans: Vec<ReceivedSpan>,
    syscall_spans: Vec<ReceivedSpan>,
}

impl Outcome {
    fn of_thread(&self, name: &str) -> Vec<&ReceivedSpan> {
        self.syscall_spans.iter().filter(|s| s.str("thread.name") == Some(name)).collect()
    }
}

/// Runs the demo under the sidecar; `before_go` may fill the shared map for its threads.
fn run_demo(before_go: impl FnOnce(&Demo)) -> Outcome {
    require_root();
    let receiver = Receiver::start(Protocol::Grpc);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let demo = Demo::start(&receiver.endpoint, &sink);
    let pid = demo.pid();
    wait_until_thread_context_read(&sidecar, pid);
    before_go(&demo);
    demo.run();
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let all = receiver.spans();
    let app_spans: Vec<ReceivedSpan> =
        all.iter().filter(|s| s.span.name == "publish-batch").cloned().collect();
    let syscall_spans = receiver.spans_of(pid).into_iter().filter(|s| s.span.name == "sendmmsg").collect();
    assert_eq!(app_spans.len(), ITERATIONS, "the app's own spans");
    Outcome { app_spans, syscall_spans }
}

/// Every publisher call is a child of one of the app's spans, inside its time range; the
/// heartbeat thread published nothing, so its calls are roots of traces of their own.
#[test]
fn syscall_spans_are_children_of_the_app_span_that_made_them() {
    let outcome = run_demo(|_| {});
    let parents: HashMap<Vec<u8>, &ReceivedSpan> =
        outcome.app_spans.iter().map(|s| (s.span.span_id.clone(), s)).collect();
    let published = outcome.of_thread("publisher");
    assert_eq!(published.len(), ITERATIONS);
    let mut seen_parents = std::collections::HashSet::new();
    for span in published {
        let parent = parents
            .get(&span.span.parent_span_id)
            .unwrap_or_else(|| panic!("parent {} is not an app span", hex(&span.span.parent_span_id)));
        assert_eq!(span.span.trace_id, parent.span.trace_id, "same trace");
        assert!(
            parent.span.start_time_unix_nano <= span.span.start_time_unix_nano,
            "starts inside its parent"
        );
        assert!(span.span.end_time_unix_nano <= parent.span.end_time_unix_nano, "ends inside its parent");
        seen_parents.insert(span.span.parent_span_id.clone());
    }
    assert_eq!(seen_parents.len(), ITERATIONS, "one call per app span");
    let app_traces: Vec<&Vec<u8>> = outcome.app_spans.iter().map(|s| &s.span.trace_id).collect();
    let roots = outcome.of_thread("heartbeat");
    assert_eq!(roots.len(), ITERATIONS);
    for span in roots {
        assert!(span.span.parent_span_id.is_empty(), "the heartbeat published no context: a root span");
        assert!(!app_traces.contains(&&span.span.trace_id), "and a trace of its own");
    }
}

/// What OBI does: write a thread's context into the pinned map. The heartbeat thread (which
/// publishes nothing itself) gets that parent; the publisher's own OTEP 4947 record is
/// authoritative (the OTEP's precedence), even with an OBI entry for its thread too.
#[test]
fn a_context_written_to_the_shared_map_as_obi_does_is_the_fallback_parent() {
    let trace_id =
        [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
    let span_id = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
    let mut keys = Vec::new();
    let outcome = run_demo(|demo| {
        let mut map: BpfHashMap<MapData, u64, TraceContext> =
            BpfHashMap::try_from(aya::maps::Map::LruHashMap(MapData::from_pin(PIN).expect("the pinned map")))
                .unwrap();
        for thread in ["heartbeat", "publisher"] {
            let key = (u64::from(demo.pid()) << 32) | u64::from(demo.tids[thread]);
            map.insert(key, TraceContext { trace_id, span_id }, 0).unwrap();
            keys.push(key);
        }
    });
    // The demo has exited, and the sidecar removed its threads' contexts as they did.
    let map: BpfHashMap<MapData, u64, TraceContext> =
        BpfHashMap::try_from(aya::maps::Map::LruHashMap(MapData::from_pin(PIN).unwrap())).unwrap();
    for key in keys {
        assert!(map.get(&key, 0).is_err(), "the exited threads' contexts are gone");
    }

    let heartbeat = outcome.of_thread("heartbeat");
    assert_eq!(heartbeat.len(), ITERATIONS);
    for span in heartbeat {
        assert_eq!(
            (hex(&span.span.trace_id), hex(&span.span.parent_span_id)),
            (hex(&trace_id), hex(&span_id))
        );
    }
    let app_spans: Vec<&Vec<u8>> = outcome.app_spans.iter().map(|s| &s.span.span_id).collect();
    let publisher = outcome.of_thread("publisher");
    assert_eq!(publisher.len(), ITERATIONS);
    for span in publisher {
        assert!(app_spans.contains(&&span.span.parent_span_id), "the app's own record wins over OBI's entry");
    }
}

/// The C header's path: a C program linked with the library publishes a span for one batch and
/// clears it for the next, linked statically and dynamically ([`build_c_publishers`]).
#[test]
fn a_c_program_publishes_its_span_through_the_header() {
    require_root();
    let publishers = build_c_publishers();
    let receiver = Receiver::start(Protocol::Grpc);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let mut pids = Vec::new();
    for (kind, binary) in publishers {
        let mut child = Command::new(&binary)
            .args(["wait", &sink.local_addr().unwrap().port().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
        let pid: u32 = lines.next().unwrap().strip_prefix("pid ").unwrap().parse().unwrap();
        assert_eq!(lines.next().as_deref(), Some("waiting"));
        wait_until_thread_context_read(&sidecar, pid);
        writeln!(child.stdin.take().unwrap(), "go").unwrap();
        assert!(child.wait().unwrap().success());
        pids.push((kind, pid));
    }
    let stopped = sidecar.stop();
    for (kind, pid) in pids {
        let mut spans = receiver.spans_of(pid);
        spans.sort_by_key(|s| s.span.start_time_unix_nano);
        assert_eq!(spans.len(), 2, "{kind}: {}", stopped.stderr);
        assert_eq!(hex(&spans[0].span.trace_id), "0af7651916cd43dd8448eb211c80319c", "{kind}");
        assert_eq!(hex(&spans[0].span.parent_span_id), "b7ad6b7169203331", "{kind}");
        assert!(spans[1].span.parent_span_id.is_empty(), "{kind}: cleared, a root span");
        assert_ne!(spans[1].span.trace_id, spans[0].span.trace_id, "{kind}");
    }
    let shared_line = stopped
        .stderr
        .lines()
        .find(|l| l.contains("reading otel_thread_ctx_v1") && l.contains("libotel_sendmmsg_context.so"))
        .map(str::to_owned);
    assert!(shared_line.is_some(), "the shared library's variable was located:\n{}", stopped.stderr);
}
