//! What a span waiting in the export queue costs in memory: the heap held per queued span when
//! the collector does not keep up and the queue fills (`OTEL_BSP_MAX_QUEUE_SIZE` bounds it in
//! spans, so this times the queue size is what a full queue holds).
//!
//!     cargo bench --bench queue_memory          (scripts/userspace-cost.sh runs it too)
//!
//! The benchmark workload's calls (benches/userspace/workload.rs) are decoded, made into spans
//! and queued, as the sidecar does, while the export task never gets to run; the heap still
//! allocated afterwards, divided by the spans queued, is printed per vlen:
//!   queue: vlen 1: N bytes/span

#[path = "userspace/workload.rs"]
mod workload;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    num::NonZeroUsize,
    process::ExitCode,
    sync::{
        atomic::{AtomicIsize, Ordering::Relaxed},
        Arc,
    },
};

use opentelemetry_sdk::{error::OTelSdkResult, trace::RandomIdGenerator};
use otel_sendmmsg::{
    clock::WallClock,
    config::{BatchConfig, MessageView, ResourceSettings},
    export::{
        batcher::{Batcher, Sender},
        otlp_encode::Encoder,
    },
    records::Decoder,
    span::{
        resource::{base_resource, Resources},
        SpanOptions,
    },
};
use prost::bytes::Bytes;

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only the count is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An exporter that is never called: the export task does not run here.
#[derive(Debug)]
struct Unused;

impl Sender for Unused {
    async fn send(&self, _request: Bytes) -> OTelSdkResult {
        Ok(())
    }
}

/// Calls queued per vlen: enough that the channel's blocks and the first call's one-off
/// allocations (the process's resource) are lost in the average.
const CALLS: usize = 16_384;

fn bytes_per_span(vlen: u32) -> Result<isize, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let batch = BatchConfig { max_queue_size: CALLS + 1, ..BatchConfig::default() };
        let mut batcher = Batcher::start(|| Unused, batch, Arc::default());
        let mut resources = Resources::new(
            base_resource(&ResourceSettings { attributes: Vec::new(), service_name: "bench".into() }),
            NonZeroUsize::new(64).expect("above 0"),
        );
        let options = SpanOptions { per_message: true, view: MessageView::Events, msgvec_address: false };
        let clock = WallClock::from_readings(1_700_000_000_000_000_000, 0);
        let (record, process) = (workload::record(vlen), workload::process());
        let mut decoder = Decoder::default();
        let mut spans = Encoder::default();
        let mut queue_one = || -> Result<(), String> {
            let call = decoder.decode(record.wire_bytes()).map_err(|e| format!("decoding: {e}"))?;
            let (spans, _) = spans.call(&call, &clock, options, &RandomIdGenerator::default());
            decoder.recycle(call);
            match batcher.enqueue(spans, resources.of(&process)) {
                true => Ok(()),
                false => Err("the queue refused a call".into()),
            }
        };
        // The first call builds the process's resource, once for all of its spans.
        queue_one()?;
        let before = LIVE.load(Relaxed);
        for _ in 0..CALLS {
            queue_one()?;
        }
        Ok((LIVE.load(Relaxed) - before) / CALLS as isize)
    })
}

fn main() -> ExitCode {
    for vlen in [1, 64] {
        match bytes_per_span(vlen) {
            Ok(bytes) => println!("queue: vlen {vlen}: {bytes} bytes/span"),
            Err(e) => {
                eprintln!("queue_memory: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
