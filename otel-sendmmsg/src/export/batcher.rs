//! The export queue: finished spans wait in a bounded queue and a tokio task sends them to the
//! OTLP exporter in batches, one export per resource (each process's spans go under their own),
//! counting what happened to every span: exported, dropped because the queue was full, or failed.
//! Spans are queued encoded ([`otlp_encode`]): a third of the memory the SDK's `SpanData` of
//! the same spans takes, and the request is their bytes put together.
//!
//! The SDK's batch span processor cannot do this: it has one resource, and does not say how
//! many spans it lost. The `OTEL_BSP_*` variables keep their meaning ([`BatchConfig`]).

use std::{
    collections::{HashMap, VecDeque},
    fmt::Debug,
    future::Future,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::Duration,
};

use anyhow::{anyhow, Result};
use opentelemetry::Key;
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    Resource,
};
use prost::bytes::Bytes;
use tokio::{
    sync::mpsc,
    task::{JoinHandle, JoinSet},
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, warn};

use super::{
    otlp_encode::{request, EncodedResource, EncodedSpans},
    ExportStats,
};
use crate::{config::BatchConfig, health::Beat};

/// Where the batches go: the OTLP exporter ([`super::otlp`]), which sends each request, retries
/// included, and says how it went.
pub trait Sender: Debug + Send + Sync + 'static {
    /// Sends one OTLP request: an `ExportTraceServiceRequest`'s protobuf bytes.
    fn send(&self, request: Bytes) -> impl Future<Output = OTelSdkResult> + Send;

    /// Closes its connection; nothing is sent after.
    fn shutdown(&self) -> OTelSdkResult {
        Ok(())
    }
}

/// One call's spans, encoded, waiting, with the resource they go under.
struct Queued {
    resource: Arc<Resource>,
    call: EncodedSpans,
}

/// Spans counted as they are settled; shared with the task so losses can be reported while
/// running.
#[derive(Default)]
struct Counters {
    /// Spans taken into the queue; each ends up exported or failed.
    accepted: AtomicU64,
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    failed: AtomicU64,
}

/// The queue's sending side, owned by the pipeline; the task that exports runs beside it.
pub struct Batcher {
    /// Dropped to tell the task that nothing more comes: it flushes and ends.
    sender: Option<mpsc::UnboundedSender<Queued>>,
    /// When the flush must be over, set before the queue is closed.
    stop_by: Arc<OnceLock<Instant>>,
    /// Spans accepted and not yet taken into a batch: at most `capacity`. (The channel itself
    /// is unbounded; this count bounds it, in spans rather than calls.)
    queued: Arc<AtomicUsize>,
    capacity: usize,
    /// Calls dropped so far, to log the first and then every power of two.
    drops: AtomicU64,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Batcher {
    /// Starts the export task on the current tokio runtime.
    /// `new_exporter` makes one exporter per concurrent export (`max_concurrent_exports`).
    /// `beat` is the export task's heartbeat for the health endpoint: once per schedule delay.
    pub fn start<E: Sender>(
        mut new_exporter: impl FnMut() -> E,
        config: BatchConfig,
        beat: Arc<Beat>,
    ) -> Batcher {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(Counters::default());
        let stop_by = Arc::new(OnceLock::new());
        let worker = Worker {
            stop_by: stop_by.clone(),
            idle: (0..config.max_concurrent_exports.max(1)).map(|_| new_exporter()).collect(),
            in_flight: JoinSet::new(),
            in_flight_spans: HashMap::new(),
            config,
            pending: VecDeque::new(),
            pending_spans: 0,
            queued: queued.clone(),
            counters: counters.clone(),
            failed_exports: 0,
            beat,
        };
        let task = tokio::spawn(worker.run(receiver));
        Batcher {
            sender: Some(sender),
            stop_by,
            queued,
            capacity: config.max_queue_size,
            drops: AtomicU64::new(0),
            counters,
            task,
        }
    }

    /// Queues a call's spans (its own and its message children, encoded) under `resource`
    /// without waiting; when the queue has no room for all of them, drops them, counts them,
    /// and returns false.
    pub fn enqueue(&mut self, call: EncodedSpans, resource: Arc<Resource>) -> bool {
        let spans = call.count();
        let room =
            self.queued.fetch_update(Relaxed, Relaxed, |q| (q + spans <= self.capacity).then_some(q + spans));
        if room.is_ok() {
            if self.sender.as_ref().is_some_and(|sender| sender.send(Queued { resource, call }).is_ok()) {
                self.counters.accepted.fetch_add(spans as u64, Relaxed);
                return true;
            }
            // The task is gone (it panicked); shutdown reports that.
            self.queued.fetch_sub(spans, Relaxed);
        }
        let total = self.counters.dropped_queue_full.fetch_add(spans as u64, Relaxed) + spans as u64;
        let drops = self.drops.fetch_add(1, Relaxed) + 1;
        if drops.is_power_of_two() {
            warn!(
                "export queue full (OTEL_BSP_MAX_QUEUE_SIZE={}): {total} spans dropped so far",
                self.capacity
            );
        }
        false
    }

    /// The counts so far.
    pub fn stats(&self) -> ExportStats {
        ExportStats {
            exported: self.counters.exported.load(Relaxed),
            dropped_queue_full: self.counters.dropped_queue_full.load(Relaxed),
            failed: self.counters.failed.load(Relaxed),
        }
    }

    /// Closes the queue and exports everything in it, all of it within one `export_timeout`
    /// and by `deadline`: what is left then counts as failed. Shuts the exporters down.
    /// Awaited once; the caller may give up on it early (a second signal), and
    /// [`Batcher::final_stats`] still accounts for every span.
    pub async fn flush(&mut self, deadline: Option<Instant>) -> Result<()> {
        if let Some(deadline) = deadline {
            let _ = self.stop_by.set(deadline);
        }
        // Set before the queue closes, so the task sees it once it finds the queue closed.
        drop(self.sender.take());
        let ended = match deadline {
            None => Ok((&mut self.task).await),
            // The task may be waiting on an export that started long before (a collector that
            // accepts and never answers): the deadline holds whatever it is doing.
            Some(deadline) => tokio::time::timeout_at(deadline, &mut self.task).await,
        };
        match ended {
            Ok(ended) => ended.map_err(|e| anyhow!("the export task failed: {e}")),
            Err(_) => {
                self.task.abort();
                warn!("stopping: the deadline passed with spans still being exported; they count as failed");
                Ok(())
            }
        }
    }

    /// The counts once stopping is over, or given up on: a span accepted but neither exported
    /// nor failed yet never reached the collector, and counts as failed.
    pub fn final_stats(&self) -> ExportStats {
        let counters = &self.counters;
        let exported = counters.exported.load(Relaxed);
        let failed = counters.failed.load(Relaxed);
        let unsettled = counters.accepted.load(Relaxed).saturating_sub(exported + failed);
        ExportStats {
            exported,
            dropped_queue_full: counters.dropped_queue_full.load(Relaxed),
            failed: failed + unsettled,
        }
    }

    /// [`Batcher::flush`] with no deadline but the export timeout, then the final counts.
    pub async fn shutdown(mut self) -> Result<ExportStats> {
        self.flush(None).await?;
        Ok(self.final_stats())
    }
}

struct Worker<E> {
    /// The sidecar's deadline for stopping, if it set one.
    stop_by: Arc<OnceLock<Instant>>,
    /// Exporters not exporting now; the others are inside `in_flight`.
    idle: Vec<E>,
    /// Exports under way: each hands its exporter back with the outcome.
    in_flight: JoinSet<Export<E>>,
    /// The spans of each export under way, to count them should its task die.
    in_flight_spans: HashMap<tokio::task::Id, u64>,
    config: BatchConfig,
    /// Spans taken from the channel, oldest first, each call's with its resource.
    pending: VecDeque<(Arc<Resource>, EncodedSpans)>,
    /// How many spans `pending` holds.
    pending_spans: usize,
    queued: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    /// Exports that failed, to log the first and then every power of two.
    failed_exports: u64,
    beat: Arc<Beat>,
}

/// A finished export: its exporter, the resource of its spans, how many, and how it went.
struct Export<E> {
    exporter: E,
    resource: Arc<Resource>,
    count: u64,
    outcome: OTelSdkResult,
}

impl<E: Sender> Worker<E> {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Queued>) {
        let delay = self.config.schedule_delay;
        let mut timer = tokio::time::interval_at(Instant::now() + delay, delay);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.beat.beat();
        loop {
            tokio::select! {
                queued = receiver.recv() => match queued {
                    Some(queued) => {
                        self.take(queued);
                        while self.pending_spans >= self.config.max_export_batch_size {
                            self.export_batch(None).await;
                        }
                    }
                    // Closed and empty: everything accepted is pending.
                    None => break,
                },
                _ = timer.tick() => {
                    // Once per schedule delay, not per call: the tick comes round unless an
                    // export holds the task, which is what the health check is to see.
                    self.beat.beat();
                    while let Ok(queued) = receiver.try_recv() {
                        self.take(queued);
                    }
                    while !self.pending.is_empty() {
                        self.export_batch(None).await;
                    }
                }
                Some(done) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => self.settle(done),
            }
        }
        let by_timeout = self.config.export_timeout.map(|timeout| Instant::now() + timeout);
        let deadline = match (by_timeout, self.stop_by.get().copied()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        while !self.pending.is_empty() {
            self.export_batch(deadline).await;
        }
        // Exports started before stopping are bounded only by their own timeout, which may end
        // after the deadline (a collector that accepts and never answers).
        loop {
            let next = match deadline {
                None => self.in_flight.join_next_with_id().await,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.in_flight.join_next_with_id()).await {
                        Ok(next) => next,
                        Err(_) => {
                            let cut: u64 = self.in_flight_spans.drain().map(|(_, count)| count).sum();
                            self.in_flight.abort_all();
                            self.counters.failed.fetch_add(cut, Relaxed);
                            warn!("stopping: {cut} spans still being exported when the time ran out, counted as failed");
                            break;
                        }
                    }
                }
            };
            match next {
                Some(done) => self.settle(done),
                None => break,
            }
        }
        for exporter in &self.idle {
            if let Err(e) = exporter.shutdown() {
                debug!("shutting the OTLP exporter down: {e}");
            }
        }
    }

    fn take(&mut self, Queued { resource, call }: Queued) {
        self.pending_spans += call.count();
        self.pending.push_back((resource, call));
    }

    /// The oldest `max_export_batch_size` pending spans (a call's are split if they straddle
    /// the end), grouped by resource, groups in the order their first span came. A process's
    /// spans share one `Arc` ([`crate::span::resource::Resources`]): the pointer tells them
    /// apart, without comparing resources attribute by attribute.
    fn next_batch(&mut self) -> Vec<(Arc<Resource>, Vec<EncodedSpans>)> {
        let mut room = self.config.max_export_batch_size;
        let mut groups: Vec<(Arc<Resource>, Vec<EncodedSpans>)> = Vec::new();
        while room > 0 {
            let Some((resource, mut spans)) = self.pending.pop_front() else { break };
            if spans.count() > room {
                let first = spans.split_to(room);
                self.pending.push_front((resource.clone(), spans));
                spans = first;
            }
            room -= spans.count();
            match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &resource)) {
                Some((_, group)) => group.push(spans),
                None => groups.push((resource, vec![spans])),
            }
        }
        let taken = self.config.max_export_batch_size - room;
        self.pending_spans -= taken;
        self.queued.fetch_sub(taken, Relaxed);
        groups
    }

    /// Starts exporting the oldest batch of pending spans, one export per resource, each as soon
    /// as an exporter is free. `deadline` bounds them all (at shutdown); each is bounded by the
    /// export timeout too.
    async fn export_batch(&mut self, deadline: Option<Instant>) {
        for (resource, spans) in self.next_batch() {
            let count = spans.iter().map(EncodedSpans::count).sum::<usize>() as u64;
            let exporter = loop {
                if let Some(exporter) = self.idle.pop() {
                    break exporter;
                }
                match self.in_flight.join_next_with_id().await {
                    Some(done) => self.settle(done),
                    None => unreachable!("every exporter is idle or in flight"),
                }
            };
            let limit = match (self.config.export_timeout, deadline) {
                (timeout, None) => timeout,
                (timeout, Some(deadline)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    Some(timeout.map_or(left, |t| t.min(left)))
                }
            };
            if limit == Some(Duration::ZERO) {
                let timeout = OTelSdkError::Timeout(self.config.export_timeout.unwrap_or_default());
                self.finish(Export { exporter, resource, count, outcome: Err(timeout) });
                continue;
            }
            let task = self.in_flight.spawn(async move {
                // Put together here, on the export's task, not the queue's.
                let request = request(&EncodedResource::new(&resource), &spans);
                drop(spans);
                let export = exporter.send(request);
                let outcome = match limit {
                    Some(limit) => {
                        tokio::time::timeout(limit, export).await.unwrap_or(Err(OTelSdkError::Timeout(limit)))
                    }
                    None => export.await,
                };
                Export { exporter, resource, count, outcome }
            });
            self.in_flight_spans.insert(task.id(), count);
        }
    }

    /// Takes in an export task's end.
    fn settle(&mut self, done: Result<(tokio::task::Id, Export<E>), tokio::task::JoinError>) {
        match done {
            Ok((id, export)) => {
                self.in_flight_spans.remove(&id);
                self.finish(export);
            }
            Err(e) => {
                // The task died (the exporter panicked): its spans are lost, and counted.
                let count = self.in_flight_spans.remove(&e.id()).unwrap_or(0);
                self.counters.failed.fetch_add(count, Relaxed);
                warn!("an OTLP export task failed ({e}); {count} spans lost");
            }
        }
    }

    /// Counts a finished export's spans and takes its exporter back.
    fn finish(&mut self, Export { exporter, resource, count, outcome }: Export<E>) {
        self.idle.push(exporter);
        match outcome {
            Ok(()) => {
                self.counters.exported.fetch_add(count, Relaxed);
            }
            Err(e) => {
                let total = self.counters.failed.fetch_add(count, Relaxed) + count;
                self.failed_exports += 1;
                if self.failed_exports.is_power_of_two() {
                    let attr = |key| {
                        resource.get(&Key::from_static_str(key)).map_or_else(String::new, |v| v.to_string())
                    };
                    warn!(
                        "exporting {count} spans of {} (pid {}) failed: {e}; {total} spans failed so far",
                        attr("service.name"),
                        attr("process.pid")
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{num::NonZeroUsize, sync::Mutex};

    use opentelemetry::KeyValue;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value,
    };
    use opentelemetry_sdk::{error::OTelSdkResult, trace::RandomIdGenerator};
    use prost::Message as _;

    use super::*;
    use crate::{
        clock::WallClock,
        config::MessageView,
        export::otlp_encode::Encoder,
        process::ProcessInfo,
        records::{decode, tests::bytes_of, tests::record},
        span::{
            resource::{resource_for, Resources},
            SpanOptions,
        },
    };

    /// A call's spans as queued: its own, then `children` message spans.
    fn call(children: usize) -> EncodedSpans {
        let call = decode(&bytes_of(&record(&vec![10; children.max(1)]))).unwrap();
        let view = if children == 0 { MessageView::None } else { MessageView::Spans };
        let options = SpanOptions { per_message: true, view, msgvec_address: false };
        let clock = WallClock::from_readings(1_700_000_000_000_000_000, 0);
        Encoder::default().call(&call, &clock, options, &RandomIdGenerator::default()).0
    }

    /// What the test exporter does with each export.
    #[derive(Clone, Copy, Debug)]
    enum Behaviour {
        Succeed,
        Fail,
        /// Never answers: only a timeout ends the export.
        Hang,
    }

    /// An exporter that records each export (the service it was for and its span names).
    #[derive(Debug)]
    struct Recorder {
        behaviour: Behaviour,
        exports: Exports,
    }

    impl Sender for Recorder {
        async fn send(&self, request: Bytes) -> OTelSdkResult {
            let request = ExportTraceServiceRequest::decode(request).expect("a request");
            let [resource_spans] = &request.resource_spans[..] else { panic!("one resource: {request:?}") };
            let resource = resource_spans.resource.as_ref().expect("a resource");
            let service = resource.attributes.iter().find(|kv| kv.key == "service.name");
            let service = match service.and_then(|kv| kv.value.as_ref()?.value.as_ref()) {
                Some(any_value::Value::StringValue(name)) => name.clone(),
                other => panic!("service.name: {other:?}"),
            };
            let names =
                resource_spans.scope_spans.iter().flat_map(|s| &s.spans).map(|s| s.name.clone()).collect();
            self.exports.lock().unwrap().push((service, names));
            match self.behaviour {
                Behaviour::Succeed => Ok(()),
                Behaviour::Fail => Err(OTelSdkError::InternalFailure("collector said no".into())),
                Behaviour::Hang => std::future::pending().await,
            }
        }
    }

    type Exports = Arc<Mutex<Vec<(String, Vec<String>)>>>;

    fn start(behaviour: Behaviour, config: BatchConfig) -> (Batcher, Exports) {
        let exports = Exports::default();
        let recorder = || Recorder { behaviour, exports: exports.clone() };
        (Batcher::start(recorder, config, Arc::default()), exports.clone())
    }

    fn base() -> Vec<KeyValue> {
        vec![KeyValue::new("host.name", "test-host")]
    }

    fn info(pid: u32, service: &str) -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo {
            pid,
            executable_name: Some(service.into()),
            service_name: service.into(),
            container_id: None,
            attributes: Vec::new(),
        })
    }

    /// A process's resource, as the span module hands it over.
    fn process(pid: u32, service: &str) -> Arc<Resource> {
        Arc::new(resource_for(&base(), &info(pid, service)))
    }

    fn config(max_queue_size: usize, batch: usize, delay_ms: u64, timeout_ms: u64) -> BatchConfig {
        BatchConfig {
            max_queue_size,
            max_export_batch_size: batch,
            schedule_delay: Duration::from_millis(delay_ms),
            export_timeout: Some(Duration::from_millis(timeout_ms)),
            // One at a time, unless a test says otherwise: the order of exports is then known.
            max_concurrent_exports: 1,
        }
    }

    async fn wait_for_exports(exports: &Exports, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while exports.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "{n} exports expected, got {:?}", exports.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    const HOUR: u64 = 3_600_000;

    #[tokio::test]
    async fn a_full_batch_is_sent_at_once() {
        let (mut batcher, exports) = start(Behaviour::Succeed, config(100, 4, HOUR, 1000));
        let app = process(1, "app");
        for _ in 0..9 {
            assert!(batcher.enqueue(call(0), app.clone()));
        }
        wait_for_exports(&exports, 2).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(exports.lock().unwrap().len(), 2, "the ninth waits for the timer or the shutdown");
        let stats = batcher.shutdown().await.unwrap();
        assert_eq!(stats, ExportStats { exported: 9, dropped_queue_full: 0, failed: 0 });
        assert_eq!(exports.lock().unwrap().iter().map(|(_, s)| s.len()).collect::<Vec<_>>(), [4, 4, 1]);
    }

    #[tokio::test]
    async fn a_call_with_more_spans_than_a_batch_goes_in_two() {
        let (mut batcher, exports) = start(Behaviour::Succeed, config(100, 4, HOUR, 1000));
        assert!(batcher.enqueue(call(5), process(1, "app")));
        let stats = batcher.shutdown().await.unwrap();
        assert_eq!(stats, ExportStats { exported: 6, dropped_queue_full: 0, failed: 0 });
        let exports = exports.lock().unwrap();
        assert_eq!(exports.iter().map(|(_, s)| s.len()).collect::<Vec<_>>(), [4, 2]);
        assert_eq!(exports[0].1[0], "sendmmsg");
        assert!(exports[1].1.iter().all(|name| name == "sendmmsg.message"));
    }

    #[tokio::test]
    async fn what_waits_is_sent_on_the_schedule() {
        let (mut batcher, exports) = start(Behaviour::Succeed, config(100, 50, 30, 1000));
        batcher.enqueue(call(2), process(1, "app"));
        wait_for_exports(&exports, 1).await;
        assert_eq!(batcher.stats(), ExportStats { exported: 3, dropped_queue_full: 0, failed: 0 });
        assert_eq!(
            exports.lock().unwrap()[0],
            (
                "app".to_string(),
                vec!["sendmmsg".into(), "sendmmsg.message".into(), "sendmmsg.message".into()]
            )
        );
        batcher.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn each_process_is_exported_under_its_own_resource() {
        let (mut batcher, exports) = start(Behaviour::Succeed, config(100, 5, HOUR, 1000));
        let mut resources = Resources::new(base(), NonZeroUsize::new(8).unwrap());
        let (a, b) = (info(1, "svc-a"), info(2, "svc-b"));
        // Another Arc with the same process: one group.
        let a_again = Arc::new((*a).clone());
        for (p, children) in [(&a, 0), (&b, 1), (&a_again, 0), (&b, 0)] {
            batcher.enqueue(call(children), resources.of(p));
        }
        wait_for_exports(&exports, 2).await;
        assert_eq!(
            *exports.lock().unwrap(),
            [
                ("svc-a".to_string(), vec!["sendmmsg".to_string(), "sendmmsg".into()]),
                (
                    "svc-b".to_string(),
                    vec!["sendmmsg".to_string(), "sendmmsg.message".into(), "sendmmsg".into()]
                ),
            ]
        );
        assert_eq!(batcher.shutdown().await.unwrap().exported, 5);
    }

    #[tokio::test]
    async fn a_full_queue_drops_whole_calls_and_counts_their_spans() {
        let (mut batcher, exports) = start(Behaviour::Hang, config(4, 4, HOUR, 300));
        let app = process(1, "app");
        for _ in 0..4 {
            assert!(batcher.enqueue(call(0), app.clone()));
        }
        // That batch is now being exported (and hangs): the queue is empty again.
        wait_for_exports(&exports, 1).await;
        assert!(batcher.enqueue(call(2), app.clone()), "3 spans fit");
        assert!(!batcher.enqueue(call(1), app.clone()), "2 spans do not");
        assert!(batcher.enqueue(call(0), app.clone()), "1 does");
        assert!(!batcher.enqueue(call(0), app.clone()));
        assert_eq!(batcher.stats().dropped_queue_full, 3);
        let stats = batcher.shutdown().await.unwrap();
        // Both batches timed out.
        assert_eq!(stats, ExportStats { exported: 0, dropped_queue_full: 3, failed: 8 });
    }

    #[tokio::test]
    async fn failed_exports_are_counted() {
        let (mut batcher, _) = start(Behaviour::Fail, config(100, 3, HOUR, 1000));
        for pid in 0..7 {
            batcher.enqueue(call(0), process(pid, "app"));
        }
        let stats = batcher.shutdown().await.unwrap();
        assert_eq!(stats, ExportStats { exported: 0, dropped_queue_full: 0, failed: 7 });
    }

    #[tokio::test]
    async fn the_flush_at_shutdown_is_bounded_by_one_export_timeout() {
        let (mut batcher, exports) = start(Behaviour::Hang, config(100, 100, HOUR, 200));
        for pid in 0..5 {
            batcher.enqueue(call(0), process(pid, &format!("svc-{pid}")));
        }
        let started = std::time::Instant::now();
        let stats = batcher.shutdown().await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(800), "{took:?}");
        assert_eq!(stats, ExportStats { exported: 0, dropped_queue_full: 0, failed: 5 });
        assert_eq!(exports.lock().unwrap().len(), 1, "the others were not tried: no time was left");
    }

    #[tokio::test]
    async fn a_flush_deadline_cuts_off_exports_already_under_way_and_counts_them() {
        // A 10-minute export timeout: the export started on the schedule would hold the flush
        // that long; the stop deadline ends it after 300 ms.
        let (mut batcher, exports) = start(Behaviour::Hang, config(100, 100, 50, 600_000));
        for pid in 0..3 {
            batcher.enqueue(call(1), process(pid, "svc"));
        }
        wait_for_exports(&exports, 1).await;
        let started = std::time::Instant::now();
        batcher.flush(Some(Instant::now() + Duration::from_millis(300))).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
        assert_eq!(batcher.final_stats(), ExportStats { exported: 0, dropped_queue_full: 0, failed: 6 });
    }

    #[tokio::test]
    async fn spans_given_up_on_are_counted_as_failed() {
        let (mut batcher, _exports) = start(Behaviour::Hang, config(100, 100, HOUR, 600_000));
        batcher.enqueue(call(2), process(1, "svc"));
        // The caller stops waiting (a second signal) with the flush still under way.
        let flush = tokio::time::timeout(Duration::from_millis(100), batcher.flush(None)).await;
        assert!(flush.is_err(), "the export hangs");
        assert_eq!(batcher.final_stats(), ExportStats { exported: 0, dropped_queue_full: 0, failed: 3 });
    }

    #[tokio::test]
    async fn exports_run_concurrently_up_to_the_limit_and_all_are_counted() {
        let concurrent = BatchConfig { max_concurrent_exports: 2, ..config(100, 100, HOUR, 300) };
        let (mut batcher, exports) = start(Behaviour::Hang, concurrent);
        for pid in 0..3 {
            batcher.enqueue(call(1), process(pid, &format!("svc-{pid}")));
        }
        // On the schedule nothing is sent for an hour: the flush at shutdown sends the three
        // processes' exports, two at once; the third waits for an exporter, and by then the
        // deadline has passed.
        // One at a time, the first would use up the deadline and the second never be tried.
        let stats = batcher.shutdown().await.unwrap();
        assert_eq!(exports.lock().unwrap().len(), 2, "two in flight at once, not one after the other");
        assert_eq!(stats, ExportStats { exported: 0, dropped_queue_full: 0, failed: 6 });
    }
}
