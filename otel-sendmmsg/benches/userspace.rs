//! What the sidecar's user space costs per span, without a kernel, a collector or a network:
//! realistic ring-buffer records go through the real path, decode -> span -> encoded into the
//! export queue -> batches -> the OTLP request's protobuf bytes as the exporter sends them, and
//! are dropped.
//!
//!     scripts/userspace-cost.sh             instructions/span (callgrind) and ns/span
//!     cargo bench --bench userspace -- --calls 200000 --vlen 1 --reps 5
//!
//! Left out: reading the ring buffer (an epoll wake-up per batch of records), the process
//! lookup (an LRU hit per call), and sending the bytes. Instructions per span are counted by
//! running this under callgrind twice with different call counts and dividing the difference
//! (scripts/userspace-cost.sh), so start-up costs cancel and machine load does not matter;
//! ns/span is the wall clock of the measured reps, meaningful on an idle machine only.

#[path = "userspace/workload.rs"]
mod workload;

use std::{
    hint::black_box,
    num::NonZeroUsize,
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use opentelemetry_sdk::trace::RandomIdGenerator;
use otel_sendmmsg::{
    clock::WallClock,
    config::{BatchConfig, MessageView, ResourceSettings},
    export::{batcher::Batcher, otlp_encode::Encoder, ExportStats},
    records::Decoder,
    span::{
        resource::{base_resource, Resources},
        SpanOptions,
    },
};
use workload::{process, record};

/// What to run, from the command line.
struct Args {
    /// Calls per rep.
    calls: usize,
    /// Messages per call.
    vlen: u32,
    /// Timed reps after one untimed warm-up rep (0: the warm-up alone, for callgrind).
    reps: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { calls: 100_000, vlen: 1, reps: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` appends `--bench`; nothing else is expected.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--calls" => args.calls = number(&value)?,
            "--vlen" => args.vlen = u32::try_from(number(&value)?).map_err(|e| e.to_string())?,
            "--reps" => args.reps = number(&value)?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if args.calls == 0 || args.vlen == 0 {
        return Err("--calls and --vlen must be above 0".into());
    }
    Ok(args)
}

/// What one rep did: spans exported and OTLP bytes encoded.
struct Rep {
    spans: u64,
    bytes: u64,
    took: Duration,
}

/// `calls` calls of `wire` through decode -> spans encoded -> queue -> request, on a single-threaded
/// runtime (deterministic for callgrind; the sidecar's export task runs on another thread, the
/// work is the same).
fn rep(wire: &[u8], calls: usize) -> Result<Rep, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let bytes = Arc::new(AtomicU64::new(0));
        let options = SpanOptions { per_message: true, view: MessageView::Events, msgvec_address: false };
        let batch = BatchConfig {
            // Room for every span: nothing is dropped, whatever the schedule.
            max_queue_size: calls * 2 + 1024,
            // The schedule never fires: batches go out full, as at a high rate.
            schedule_delay: Duration::from_secs(3600),
            ..BatchConfig::default()
        };
        let encoder = {
            let bytes = bytes.clone();
            move || encoding::Encoder::new(bytes.clone())
        };
        let mut batcher = Batcher::start(encoder, batch, Arc::default());
        let mut resources = Resources::new(
            base_resource(&ResourceSettings { attributes: Vec::new(), service_name: "bench".into() }),
            NonZeroUsize::new(64).expect("above 0"),
        );
        let process = process();
        let clock = WallClock::from_readings(1_700_000_000_000_000_000, 0);
        let mut decoder = Decoder::default();
        let mut spans = Encoder::default();

        let started = Instant::now();
        for i in 0..calls {
            let call = decoder.decode(black_box(wire)).map_err(|e| format!("decoding: {e}"))?;
            let (spans, _) = spans.call(&call, &clock, options, &RandomIdGenerator::default());
            decoder.recycle(call);
            batcher.enqueue(spans, resources.of(&process));
            // The export task takes its turn, as it would on its own thread.
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
        }
        batcher.flush(None).await.map_err(|e| e.to_string())?;
        let took = started.elapsed();
        let stats = batcher.final_stats();
        let expected = ExportStats { exported: calls as u64, dropped_queue_full: 0, failed: 0 };
        if stats != expected {
            return Err(format!("expected {expected:?}, got {stats:?}"));
        }
        Ok(Rep { spans: stats.exported, bytes: bytes.load(Relaxed), took })
    })
}

/// The exporter with the wire left out: takes each request's bytes, as the batcher put them
/// together (encoded as queued), counts them and drops them.
mod encoding {
    use std::sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    };

    use opentelemetry_sdk::error::OTelSdkResult;
    use otel_sendmmsg::export::batcher::Sender;
    use prost::bytes::Bytes;

    #[derive(Debug)]
    pub struct Encoder {
        bytes: Arc<AtomicU64>,
    }

    impl Encoder {
        pub fn new(bytes: Arc<AtomicU64>) -> Encoder {
            Encoder { bytes }
        }
    }

    impl Sender for Encoder {
        async fn send(&self, request: Bytes) -> OTelSdkResult {
            self.bytes.fetch_add(std::hint::black_box(request).len() as u64, Relaxed);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("userspace: {e}\nusage: userspace [--calls N] [--vlen V] [--reps R]");
            return ExitCode::from(2);
        }
    };
    let record = record(args.vlen);
    let wire = record.wire_bytes();
    let mut per_span = Vec::new();
    // The first rep warms the allocator and the caches; under callgrind it is the whole run.
    for n in 0..=args.reps {
        match rep(wire, args.calls) {
            Ok(rep) => {
                let ns = rep.took.as_nanos() as f64 / rep.spans as f64;
                eprintln!(
                    "rep {n}: {} spans, {} OTLP bytes ({:.0}/span), {ns:.0} ns/span{}",
                    rep.spans,
                    rep.bytes,
                    rep.bytes as f64 / rep.spans as f64,
                    if n == 0 { " (warm-up)" } else { "" }
                );
                if n > 0 {
                    per_span.push(ns);
                }
            }
            Err(e) => {
                eprintln!("userspace: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !per_span.is_empty() {
        per_span.sort_by(f64::total_cmp);
        // The median of the reps: one disturbed rep does not move it.
        println!("ns_per_span={:.0}", per_span[per_span.len() / 2]);
    }
    ExitCode::SUCCESS
}
