//! Wires the data path together (kernel hooks -> ring buffer -> records -> spans -> exporter)
//! and runs it from start-up to the closing summary: the hooks are chosen by self-test trials
//! whose records come through the same path as every other, then it traces until a stop signal.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};
use tracing::{debug, info, warn};

use crate::{
    call_metrics::{self, export::MetricsExport, CallMetrics, Exemplar, Point},
    clock::WallClock,
    config::{Config, KernelMessages, MetricsOutput, Output},
    export::{CallSpans, ExportStats, Exporter},
    health::{self, Health},
    memory::release_freed_memory,
    probes::{
        choose::{Choosing, Next},
        kernel::Kernel,
        selftest::Trial,
        thread_context, Probes,
    },
    process::{
        self,
        resolver::{Answer, Job, Resolver},
        ProcessCache, ProcessInfo, ReadRequest,
    },
    records::{Call, Decoder, Identity, Record},
    self_metrics::{self, SelfMetrics},
    shutdown::StopSignals,
    span::{
        resource::{base_resource, Resources},
        SpanOptions,
    },
};

/// The longest a record waits in the ring buffer when too few are pending to wake us.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// How often cached process metadata is checked against `/proc`: a reused pid is noticed within
/// this long, and an exited process is forgotten one to two of these after it exits.
const SWEEP_PROCESSES: Duration = Duration::from_secs(10);
/// The longest a call's span waits for its process to be read from `/proc` (normally well
/// under a millisecond); then it goes with what its thread's name says. A process's call
/// metrics wait as long, then go under its pid alone.
const READ_DEADLINE: Duration = Duration::from_secs(1);
/// Spans waiting for their process to be read, at most; beyond, they go at once with what their
/// thread's name says. A flood of new processes cannot make us hold more.
const MAX_WAITING: usize = 8192;
/// The longest one turn of the loop handles records. Calls can come faster than they become
/// spans (a burst, or a host short of CPU); a ring buffer that never empties must not keep the
/// loop from its other work: the `/proc` answers spans wait for, the loss reports, the liveness
/// beat, a stop signal.
const DRAIN_TURN: Duration = DRAIN_INTERVAL;
/// Records handled between two looks at the clock in a turn.
const DRAIN_CHECK_EVERY: usize = 256;

/// Spans of processes being read from `/proc`, in the order their calls came, by pid.
#[derive(Default)]
struct Waiting {
    by_pid: HashMap<u32, WaitingFor>,
    spans: usize,
}

struct WaitingFor {
    request: ReadRequest,
    since: Instant,
    /// Each call's spans, with its thread's name.
    spans: Vec<(CallSpans, String)>,
}

/// Records -> spans -> exporter, with the totals for the closing summary.
struct Pipeline {
    exporter: Exporter,
    processes: ProcessCache,
    /// Each process's resource, which its spans go under.
    resources: Resources,
    options: SpanOptions,
    clock: WallClock,
    decoder: Decoder,
    /// Spans handed to the exporter: calls' spans and their message child spans.
    spans: u64,
    undecodable: u64,
    resolver: Resolver,
    waiting: Waiting,
    /// Processes named after their thread because reading them took too long or could not be
    /// done (see [`process::resolver`]).
    metadata_unavailable: u64,
    /// Processes defining the thread context left unread at the cap; the scan thread counts.
    context_processes_refused: Arc<AtomicU64>,
    /// Where to name a process whose new program made its first call, for the thread-context
    /// scan to look at (none when the thread context is not read).
    look_again: Option<std::sync::mpsc::Sender<u32>>,
    /// The start-up self-test under way, which takes its own thread's calls.
    self_test: Option<Trial>,
    /// The call metrics, when they are counted: the spans handed over are their exemplars.
    call_metrics: Option<CallMetrics>,
}

impl Pipeline {
    fn handle(&mut self, item: &[u8]) {
        match self.decoder.decode_record(item) {
            Ok(Record::Identity(identity)) => self.identity(&identity),
            Ok(Record::Call(call)) => {
                let call = match self.self_test.as_mut() {
                    // The self-test's calls prove the hooks; they are no span.
                    Some(trial) if trial.tid() == call.tid => return trial.record(call),
                    _ => call,
                };
                self.take_call(&call);
                self.decoder.recycle(call);
            }
            Err(e) => {
                self.undecodable += 1;
                if self.undecodable.is_power_of_two() {
                    warn!("dropped an undecodable record ({e}); {} so far", self.undecodable);
                }
            }
        }
    }

    /// A call's spans, made and handed to the exporter under its process's resource, or kept
    /// waiting for the process to be read.
    fn take_call(&mut self, call: &Call) {
        // Complete but for the resource, which waits for the process to be known.
        let (spans, written) = self.exporter.spans_of(call, &self.clock, self.options);
        if let Some(metrics) = self.call_metrics.as_mut() {
            let key = self.decoder.series_of_last_call(metrics.settings().by_peer);
            let exemplar = Exemplar {
                trace_id: written.trace_id,
                span_id: written.span_id,
                duration_ns: call.end_ns.saturating_sub(call.start_ns),
                time: written.end,
            };
            metrics.exemplar(key, exemplar);
        }
        self.spans += written.spans as u64;
        // Behind the calls of the same process that already wait, so they stay in order.
        if let Some(waiting) = self.waiting.by_pid.get_mut(&call.pid) {
            waiting.spans.push((spans, call.comm.clone()));
            self.waiting.spans += 1;
            return;
        }
        match self.processes.lookup(call.pid, process::start_ticks(call.process_start_ns), &call.comm) {
            Ok(process) => self.exporter.export(spans, self.resources.of(&process)),
            Err(_) if self.waiting.spans >= MAX_WAITING => {
                self.metadata_unavailable += 1;
                let process = self.processes.provisional(call.pid, &call.comm);
                self.exporter.export(spans, self.resources.of(&process));
            }
            Err(request) => {
                self.resolver.submit(Job::Read(request.clone()));
                let spans = vec![(spans, call.comm.clone())];
                self.waiting.by_pid.insert(call.pid, WaitingFor { request, since: Instant::now(), spans });
                self.waiting.spans += 1;
            }
        }
    }

    /// A process's identity as the kernel captured it before its call's record: its entry is
    /// made from it at once. Its pid's calls still waiting for `/proc` came before it and go
    /// now; an incomplete capture is completed from `/proc`, its calls waiting as for any read.
    fn identity(&mut self, identity: &Identity) {
        if let Some(look_again) = &self.look_again {
            let _ = look_again.send(identity.pid);
        }
        if identity.incomplete() {
            debug!(
                "process {} ({}): captured identity incomplete (flags {:#x}, {} bytes of environment)",
                identity.pid,
                identity.comm,
                identity.flags,
                identity.environ.len()
            );
        }
        let waiting = self.waiting.by_pid.get(&identity.pid).map(|w| &w.request);
        let process::Captured::New { earlier, read } = self.processes.capture(identity, waiting) else {
            return;
        };
        if let (Some(process), Some(waiting)) = (earlier, self.waiting.by_pid.remove(&identity.pid)) {
            self.release(waiting, process);
        }
        if let Some(request) = read {
            self.resolver.submit(Job::Read(request.clone()));
            let waiting = WaitingFor { request, since: Instant::now(), spans: Vec::new() };
            self.waiting.by_pid.insert(identity.pid, waiting);
        }
    }

    /// Every count so far: the BPF side's (`probes`), then the span total, undecodable records
    /// and what the exporter made of the spans. None when the BPF counters cannot be read.
    fn counts(&self, probes: &Probes) -> Option<Vec<(&'static str, u64)>> {
        let mut counts = probes.counters().ok()?;
        counts.extend([
            ("spans", self.spans),
            ("undecodable_records", self.undecodable),
            ("process_metadata_unavailable", self.metadata_unavailable),
            ("process_contexts_refused", self.processes.contexts_refused()),
            ("context_processes_refused", self.context_processes_refused.load(Ordering::Relaxed)),
        ]);
        counts.extend(export_counters(&self.exporter.stats()));
        Some(counts)
    }

    /// This collection's call metrics as a request, under each process's resource, and the
    /// series of processes gone removed from the kernel. A process not known yet is read, and
    /// its series wait for it (`READ_DEADLINE` at most; not in the `last` collection): its
    /// identity record can still be in the ring buffer, behind the calls the kernel counted.
    /// After that it goes under its pid alone, until it is known.
    fn call_metrics_request(&mut self, probes: &mut Probes, last: bool) -> Option<Vec<u8>> {
        let series = probes.call_series().inspect_err(|e| warn!("reading the call metrics: {e:#}")).ok()?;
        // Each process once: what is known of it, and a read of those not known.
        let mut known: HashMap<(u32, u64), Option<Arc<ProcessInfo>>> = HashMap::new();
        for (key, _) in &series {
            let process = (key.pid, key.process_start_ns);
            if known.contains_key(&process) {
                continue;
            }
            let (pid, start) = (key.pid, process::start_ticks(key.process_start_ns));
            let info = self.processes.known(pid, start);
            if info.is_none() {
                if let Err(request) = self.processes.lookup(pid, start, "") {
                    if !self.waiting.by_pid.contains_key(&pid) {
                        self.resolver.submit(Job::Read(request));
                    }
                }
            }
            known.insert(process, info);
        }
        let metrics = self.call_metrics.as_mut()?;
        let proc = Path::new("/proc");
        let (points, retire) = metrics.collect(
            series,
            SystemTime::now(),
            |key| !proc.join(key.pid.to_string()).exists(),
            |key| !last && matches!(known.get(&(key.pid, key.process_start_ns)), Some(None)),
        );
        if let Err(e) = probes.retire_series(&retire) {
            warn!("removing the call metrics of processes gone: {e:#}");
        }
        let mut by_process: BTreeMap<(u32, u64), Vec<Point>> = BTreeMap::new();
        for point in points {
            by_process.entry((point.key.pid, point.key.process_start_ns)).or_default().push(point);
        }
        if by_process.is_empty() {
            return None;
        }
        let mut processes = Vec::with_capacity(by_process.len());
        for ((pid, start_ns), points) in by_process {
            let process = known
                .remove(&(pid, start_ns))
                .flatten()
                .unwrap_or_else(|| Arc::new(ProcessInfo::unknown(pid)));
            processes.push((self.resources.of(&process), points));
        }
        let metrics = self.call_metrics.as_ref()?;
        Some(call_metrics::encode::request(
            &processes,
            &metrics.settings().histogram,
            metrics.temporality(),
            SystemTime::now(),
        ))
    }

    /// Handles the records pending, for one turn ([`DRAIN_TURN`]) at most; true when some are
    /// left for the next turn.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> bool {
        // NTP may step the wall clock: re-read the offset once per wake-up.
        self.clock = WallClock::now();
        let turn_ends = Instant::now() + DRAIN_TURN;
        let mut behind = false;
        'turn: loop {
            for _ in 0..DRAIN_CHECK_EVERY {
                let Some(item) = ring.next() else { break 'turn };
                self.handle(&item);
            }
            if Instant::now() >= turn_ends {
                behind = true;
                break;
            }
        }
        self.take_answers();
        behind
    }

    /// Handles every record pending, however many turns that takes.
    fn drain_all(&mut self, ring: &mut RingBuf<MapData>) {
        while self.drain(ring) {}
    }

    /// Takes in what the resolver threads have read, releasing the spans that waited for it,
    /// and lets the spans of processes whose read is past its deadline go with what their
    /// thread's name says.
    fn take_answers(&mut self) {
        let answers: Vec<Answer> = self.resolver.answers().collect();
        for answer in answers {
            match answer {
                Answer::Read(request, outcome) => {
                    // The spans waiting for the pid may wait for a later read: that of another
                    // capture of it (an exec, or another process given the pid since).
                    let asked = self.waiting.by_pid.get(&request.pid).is_some_and(|w| w.request == request);
                    let Some(waiting) = asked.then(|| self.waiting.by_pid.remove(&request.pid)).flatten()
                    else {
                        // Its spans went on at the deadline, or with a later capture; the answer
                        // still replaces the provisional entry for the process's later calls.
                        if let Some(outcome) = outcome {
                            self.processes.apply(&request, outcome, &[]);
                        }
                        continue;
                    };
                    let process = match outcome {
                        Some(outcome) => {
                            let comms: Vec<&str> =
                                waiting.spans.iter().map(|(_, comm)| comm.as_str()).collect();
                            self.processes.apply(&request, outcome, &comms)
                        }
                        None => {
                            self.metadata_unavailable += 1;
                            self.processes.provisional(request.pid, &request.comm)
                        }
                    };
                    self.release(waiting, process);
                }
                Answer::Sweep(identities) => {
                    let forgotten = self.processes.apply_sweep(identities);
                    debug!("process metadata: {forgotten} forgotten, {} kept", self.processes.len());
                }
            }
        }
        self.expire_waiting(Instant::now() - READ_DEADLINE);
        self.resolver.check_stalls();
    }

    /// Lets go, with what their thread's name says, the spans of every process whose read was
    /// asked for before `asked_before`.
    fn expire_waiting(&mut self, asked_before: Instant) {
        let late: Vec<u32> = self
            .waiting
            .by_pid
            .iter()
            .filter(|(_, w)| w.since <= asked_before)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in late {
            let waiting = self.waiting.by_pid.remove(&pid).expect("listed");
            self.metadata_unavailable += 1;
            let process = self.processes.provisional(pid, &waiting.request.comm);
            self.release(waiting, process);
        }
    }

    fn release(&mut self, waiting: WaitingFor, process: Arc<ProcessInfo>) {
        self.waiting.spans -= waiting.spans.len();
        let resource = self.resources.of(&process);
        for (spans, _) in waiting.spans {
            self.exporter.export(spans, resource.clone());
        }
    }

    /// At shutdown: every waiting span goes, read or not, within [`READ_DEADLINE`].
    async fn release_all_waiting(&mut self) {
        let until = Instant::now() + READ_DEADLINE;
        while !self.waiting.by_pid.is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.take_answers();
        }
        self.expire_waiting(Instant::now());
    }
}

/// The thread-context scan's next finding; never, when it is not running.
async fn next_found(
    scan: &mut Option<tokio::sync::mpsc::UnboundedReceiver<thread_context::Found>>,
) -> Option<thread_context::Found> {
    match scan {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Traces until the first stop signal, then detaches, drains what the kernel already reported,
/// and flushes the exporter, all within `config.shutdown_timeout`; a second signal cuts that
/// short. The closing summary is logged either way.
pub async fn run(config: Config, mut signals: StopSignals) -> Result<()> {
    // First, so an orchestrator sees "not ready" through the whole start-up.
    let health = Arc::new(Health::new(matches!(config.output, Output::Otlp(_))));
    if let Some(settings) = config.health {
        health::serve(settings.address, health.clone(), settings.stall_after).await?;
    }
    let kernel = Kernel::inspect();
    let mut probes = Probes::load(&config, &kernel)?;
    // Read before attaching, so nothing is reported to a ring buffer nobody watches.
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, until it is dropped,
    // which only happens with the AsyncFd that owns it.
    let mut records = unsafe { AsyncFd::register_with_interest(probes.take_records()?, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the ring buffer: {e}"))?;
    let mut pipeline = Pipeline {
        exporter: Exporter::new(
            &config.output,
            config.console_format,
            config.batch,
            health.export.clone().unwrap_or_default(),
        )?,
        processes: ProcessCache::new(process::DEFAULT_CAPACITY),
        resources: Resources::new(base_resource(&config.resource), process::DEFAULT_CAPACITY),
        // Until a per-message hook has proved itself, calls carry no trustworthy message detail.
        options: SpanOptions {
            per_message: false,
            view: config.message_view,
            msgvec_address: config.msgvec_address,
        },
        clock: WallClock::now(),
        decoder: Decoder::default(),
        spans: 0,
        undecodable: 0,
        resolver: Resolver::start("/proc").context("starting the /proc reader threads")?,
        waiting: Waiting::default(),
        metadata_unavailable: 0,
        context_processes_refused: Arc::default(),
        look_again: None,
        self_test: None,
        call_metrics: None,
    };
    let metrics = start_self_metrics(&config);
    // The call metrics go where the sidecar's own go, every interval; the kernel counts them
    // (probes/load.rs) whenever metrics go to a collector.
    let (mut metrics_export, metrics_interval) = match &config.metrics {
        MetricsOutput::Otlp { otlp, interval, temporality } if config.call_metrics.on => {
            pipeline.call_metrics = Some(CallMetrics::new(
                config.call_metrics.clone(),
                *temporality,
                SystemTime::now(),
                READ_DEADLINE,
            ));
            let export = MetricsExport::new(otlp)
                .inspect_err(|e| warn!("the call metrics are counted but cannot be exported: {e:#}"))
                .ok();
            (export, *interval)
        }
        _ => (None, Duration::MAX),
    };
    let mut choosing = Choosing::new(config.attach, config.kernel_messages == KernelMessages::Hooked);
    let choice = loop {
        match choosing.next(&mut probes, &kernel)? {
            Next::Chosen(choice) => break choice,
            Next::Trial(trial) => {
                // Records are read as always; the pipeline hands the trial its thread's calls.
                pipeline.self_test = Some(trial);
                let mut behind = pipeline.drain(records.get_mut());
                while let Some(left) = pipeline.self_test.as_ref().and_then(Trial::time_left) {
                    if !behind {
                        if let Ok(Ok(mut guard)) = tokio::time::timeout(left, records.readable_mut()).await {
                            guard.clear_ready();
                        }
                    }
                    behind = pipeline.drain(records.get_mut());
                }
                choosing.verdict(&mut probes, pipeline.self_test.take().expect("set above"))?;
            }
        }
    };
    pipeline.options.per_message = choice.message.is_some();
    // The kernel's BTF, parsed twice to load and place the hooks, is tens of MiB no longer
    // needed; hand it, and the allocator's freed pages, back.
    let reads_thread_context = probes.reads_thread_context(&kernel);
    drop(kernel);
    release_freed_memory();
    // The signal handlers were installed before start-up began, so a SIGTERM right after the
    // line below stops us cleanly instead of killing us unflushed.
    info!(
        "ready: tracing sendmmsg through {}; spans go to {}{}",
        probes.attached().join(", "),
        describe(&config.output),
        match &config.metrics {
            MetricsOutput::Otlp { otlp, .. } if metrics.is_some() => {
                format!("; the sidecar's own metrics to OTLP {} at {}", otlp.protocol.name(), otlp.endpoint)
            }
            _ => String::new(),
        }
    );

    health.set_ready();
    let mut losses = LossLog::default();
    let mut report = tokio::time::interval(config.loss_report_interval);
    let mut thread_contexts = if reads_thread_context {
        let scan = thread_context::scan::spawn(
            config.max_context_processes as usize,
            pipeline.context_processes_refused.clone(),
        )?;
        pipeline.look_again = Some(scan.again);
        Some(scan.found)
    } else {
        warn!(
            "the OTEP 4947 thread context is not read (no thread-pointer offset in the kernel's BTF, \
             or no identity capture): apps publishing their span that way get no parent here"
        );
        None
    };
    let mut sweep = tokio::time::interval(SWEEP_PROCESSES);
    // The BPF side wakes us only once WAKEUP_BYTES are pending; this bounds the latency of the
    // records below that.
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    let mut refresh_metrics = tokio::time::interval(self_metrics::REFRESH);
    let mut collect_call_metrics = tokio::time::interval_at(
        tokio::time::Instant::now() + metrics_interval.min(Duration::from_secs(86_400 * 365)),
        metrics_interval.min(Duration::from_secs(86_400 * 365)),
    );
    let mut stopping = false;
    // Records were left for the next turn: it comes at once, the other work taking its turn.
    let mut behind = false;
    while !stopping {
        // Every turn, at least each DRAIN_INTERVAL: what the liveness check watches.
        health.drain.beat();
        tokio::select! {
            _ = signals.next() => stopping = true,
            ready = records.readable_mut() => {
                let mut guard = ready.context("waiting on the ring buffer")?;
                guard.clear_ready();
                behind = pipeline.drain(guard.get_inner_mut());
            }
            _ = std::future::ready(()), if behind => behind = pipeline.drain(records.get_mut()),
            _ = drain.tick() => behind = pipeline.drain(records.get_mut()),
            Some(found) = next_found(&mut thread_contexts) => probes.follow_thread_context(found),
            _ = report.tick() => {
                if let Some(counts) = pipeline.counts(&probes) {
                    losses.report_growth(counts);
                }
            }
            _ = refresh_metrics.tick(), if metrics.is_some() => {
                if let (Some(metrics), Some(counts)) = (&metrics, pipeline.counts(&probes)) {
                    metrics.totals.update(counts);
                }
            }
            _ = collect_call_metrics.tick(), if metrics_export.is_some() => {
                if let Some(export) = metrics_export.as_mut() {
                    if export.ready() {
                        if let Some(request) = pipeline.call_metrics_request(&mut probes, false) {
                            export.send(request);
                        }
                    }
                }
            }
            _ = sweep.tick() => {
                // Read on a resolver thread; the answer comes back through the drain.
                pipeline.resolver.submit(Job::Sweep(pipeline.processes.to_sweep()));
                sweep_inflight(&mut probes);
            }
        }
    }

    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    info!(
        "stopping: detaching probes and flushing spans (within {}; a second signal stops at once)",
        humantime::format_duration(config.shutdown_timeout)
    );
    probes.detach();
    pipeline.drain_all(records.get_mut());
    pipeline.release_all_waiting().await;
    // Threads that died with their exit missed: counted, not left as a leak.
    sweep_inflight(&mut probes);
    let mut counts = vec![
        ("undecodable_records", pipeline.undecodable),
        ("process_metadata_unavailable", pipeline.metadata_unavailable),
        ("process_contexts_refused", pipeline.processes.contexts_refused()),
        ("context_processes_refused", pipeline.context_processes_refused.load(Ordering::Relaxed)),
    ];
    match probes.counters() {
        Ok(counters) => counts.extend(counters),
        Err(e) => warn!("reading the BPF counters: {e:#}"),
    }
    // A collector that accepts and never answers must not keep us past the deadline, nor past
    // an operator's second signal; what was not sent by then is counted as failed.
    let mut at_once = false;
    let flushed = tokio::select! {
        flushed = tokio::time::timeout_at(deadline, pipeline.exporter.flush(deadline)) => {
            flushed.unwrap_or_else(|_| {
                warn!("stopping: OTEL_SENDMMSG_SHUTDOWN_TIMEOUT passed before every span was sent");
                Ok(())
            })
        }
        _ = signals.next() => {
            warn!("stopping at once (second signal): spans not yet sent count as export_failed");
            at_once = true;
            Ok(())
        }
    };
    counts.extend(export_counters(&pipeline.exporter.final_stats()));
    // After a second signal the call metrics' last counts are not waited for (that signal was
    // taken above: none would come to cut the wait short).
    if let Some(export) = metrics_export.as_mut().filter(|_| !at_once) {
        // The last counts of every call, the in-flight request first, within the deadline.
        let last = async {
            export.finish().await;
            if let Some(request) = pipeline.call_metrics_request(&mut probes, true) {
                export.send(request);
                export.finish().await;
            }
        };
        tokio::select! {
            done = tokio::time::timeout_at(deadline, last) => {
                if done.is_err() {
                    warn!("stopping: the call metrics' last counts were not sent in time");
                }
            }
            _ = signals.next() => warn!("stopping at once (second signal): the call metrics' last counts not sent"),
        }
        counts.extend([("call_metrics_exported", export.exported), ("call_metrics_failed", export.failed)]);
    }
    let summary: Vec<String> = counts.iter().map(|(name, n)| format!("{name}={n}")).collect();
    info!("stopped: {} spans; {}", pipeline.spans, summary.join(" "));
    if let Some(metrics) = metrics {
        // The final counts, as the summary gives them, within what is left of the deadline.
        metrics.totals.update(counts.into_iter().chain([("spans", pipeline.spans)]));
        tokio::select! {
            done = tokio::time::timeout_at(deadline, metrics.shutdown()) => {
                if done.is_err() {
                    warn!("stopping: the sidecar's own final metrics were not sent in time");
                }
            }
            _ = signals.next() => warn!("stopping at once (second signal): final metrics not sent"),
        }
    }
    flushed
}

/// The sidecar's own metrics, if configured. Tracing goes on without them if their exporter
/// cannot be built: they describe the spans, they are not worth losing the spans for.
fn start_self_metrics(config: &Config) -> Option<SelfMetrics> {
    match &config.metrics {
        MetricsOutput::Off => None,
        MetricsOutput::Otlp { otlp, interval, temporality } => SelfMetrics::start(
            otlp,
            *interval,
            *temporality,
            base_resource(&config.resource),
            &config.resource.service_name,
        )
        .inspect_err(|e| warn!("the sidecar's own metrics are off: {e:#}"))
        .ok(),
    }
}

/// The exporter's counts as the summary names them; with no loss, `exported` is every span.
fn export_counters(stats: &ExportStats) -> [(&'static str, u64); 3] {
    [
        ("exported", stats.exported),
        ("export_queue_full", stats.dropped_queue_full),
        ("export_failed", stats.failed),
    ]
}

/// The loss counters as last logged, so only growth is reported.
#[derive(Default)]
struct LossLog {
    last: Vec<(&'static str, u64)>,
}

impl LossLog {
    /// Warns about every counter of a real loss that grew since the last report.
    fn report_growth(&mut self, now: Vec<(&'static str, u64)>) {
        let grown: Vec<String> = now
            .iter()
            .filter(|(name, _)| LOSSES.contains(name))
            .filter(|(name, n)| *n > self.last.iter().find(|(l, _)| l == name).map_or(0, |(_, v)| *v))
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        if !grown.is_empty() {
            warn!("losses so far (see README, What can go wrong): {}", grown.join(" "));
        }
        self.last = now;
    }
}

/// The counters that mean a call's span was lost or damaged (the others are informational).
/// `kernel_missed` and `kretprobe_missed` name a cause, not more calls: a skipped entry is also
/// an `exit_without_entry`, a skipped exit (or a missed return) an `exit_missed`.
pub const LOSSES: &[&str] = &[
    "ring_buffer_full",
    "inflight_full",
    "exit_missed",
    "exit_without_entry",
    "kernel_missed",
    "kretprobe_missed",
    "undecodable_records",
    "export_queue_full",
    "export_failed",
];

/// Removes the in-flight entries of threads that are gone (see [`Probes::sweep_inflight`]).
fn sweep_inflight(probes: &mut Probes) {
    match probes.sweep_inflight(Path::new("/proc")) {
        Ok(0) => {}
        Ok(n) => debug!("in-flight calls: {n} of threads that are gone removed"),
        Err(e) => warn!("sweeping the in-flight calls: {e:#}"),
    }
}

fn describe(output: &Output) -> String {
    match output {
        Output::Console => "stdout".to_owned(),
        Output::Otlp(otlp) => format!("OTLP {} at {}", otlp.protocol.name(), otlp.endpoint),
        Output::Discard => "nowhere (OTEL_TRACES_EXPORTER=none)".to_owned(),
    }
}
