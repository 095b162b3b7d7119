//! Wires the data path together and runs it until the shutdown future resolves.

use std::{
    future::Future,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::{
    clock::WallClock,
    config::{Config, MetricsOutput, Output},
    export::{ExportStats, Exporter},
    probes::{
        choose::choose,
        kernel::Kernel,
        markers::{printable, Discovery, Found},
        Probes,
    },
    process::{self, ProcessCache},
    records::Decoder,
    self_metrics::{self, SelfMetrics},
    spans::{span_for, MessageDetail, SpanOptions},
};

/// How often new processes are looked at for the context marker: a process started from a file
/// already found is covered at once; a new file within this long.
const RESCAN_PROCESSES: Duration = Duration::from_secs(1);
/// The longest a record waits in the ring buffer when too few are pending to wake us.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// How often cached process metadata is checked against `/proc`: a reused pid is noticed within
/// this long, and an exited process is forgotten one to two of these after it exits.
const SWEEP_PROCESSES: Duration = Duration::from_secs(10);

/// Records -> spans -> exporter, with the totals for the closing summary.
struct Pipeline {
    exporter: Exporter,
    processes: ProcessCache,
    options: SpanOptions,
    clock: WallClock,
    decoder: Decoder,
    /// Spans handed to the exporter: calls' spans and their message child spans.
    spans: u64,
    undecodable: u64,
    /// Files exporting the context marker left unattached at the cap; the scan thread counts.
    context_files_refused: Arc<AtomicU64>,
}

impl Pipeline {
    fn handle(&mut self, item: &[u8]) {
        match self.decoder.decode(item) {
            Ok(call) => {
                let process = self.processes.get(call.pid, &call.comm);
                let span = span_for(&call, &self.clock, self.options);
                self.spans += 1 + span.children.len() as u64;
                self.exporter.export(span, process);
            }
            Err(e) => {
                self.undecodable += 1;
                if self.undecodable.is_power_of_two() {
                    warn!("dropped an undecodable record ({e}); {} so far", self.undecodable);
                }
            }
        }
    }

    /// Every count so far: the BPF side's (`probes`), then the span total, undecodable records
    /// and what the exporter made of the spans. None when the BPF counters cannot be read.
    fn counts(&self, probes: &Probes) -> Option<Vec<(&'static str, u64)>> {
        let mut counts = probes.counters().ok()?;
        counts.extend([
            ("spans", self.spans),
            ("undecodable_records", self.undecodable),
            ("context_files_refused", self.context_files_refused.load(Ordering::Relaxed)),
        ]);
        counts.extend(export_counters(&self.exporter.stats()));
        Some(counts)
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        // NTP may step the wall clock: re-read the offset once per wake-up.
        self.clock = WallClock::now();
        while let Some(item) = ring.next() {
            self.handle(&item);
        }
    }
}

/// Traces until `shutdown` resolves, then detaches, drains what the kernel already reported,
/// and flushes the exporter.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let kernel = Kernel::inspect();
    let mut probes = Probes::load(&config, &kernel)?;
    // Read before attaching, so nothing is reported to a ring buffer nobody watches.
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, until it is dropped,
    // which only happens with the AsyncFd that owns it.
    let mut records = unsafe { AsyncFd::register_with_interest(probes.take_records()?, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the ring buffer: {e}"))?;
    let mut pipeline = Pipeline {
        exporter: Exporter::new(&config.output)?,
        processes: ProcessCache::new("/proc", process::DEFAULT_CAPACITY),
        // Until a per-message hook has proved itself, calls carry no trustworthy message detail.
        options: SpanOptions { per_message: false, detail: config.message_detail },
        clock: WallClock::now(),
        decoder: Decoder::default(),
        spans: 0,
        undecodable: 0,
        context_files_refused: Arc::default(),
    };
    let metrics = start_self_metrics(&config.metrics);
    let want_message_hook = config.message_detail != MessageDetail::Sizes;
    let choice = choose(&mut probes, &kernel, config.attach, want_message_hook, &mut records, &mut |item| {
        pipeline.handle(item)
    })
    .await?;
    pipeline.options.per_message = choice.message.is_some();
    // The kernel's BTF, parsed twice to load and place the hooks, is tens of MiB no longer
    // needed; hand it, and the allocator's freed pages, back.
    drop(kernel);
    release_freed_memory();
    // Polled once before we say we are ready: the signal handlers it installs are then in place,
    // so a SIGTERM right after start-up stops us cleanly instead of killing us unflushed.
    tokio::pin!(shutdown);
    let mut stopping = std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
    info!(
        "ready: tracing sendmmsg through {}; spans go to {}{}",
        probes.attached().join(", "),
        describe(&config.output),
        match &config.metrics {
            MetricsOutput::Otlp { protocol, endpoint } if metrics.is_some() => {
                format!("; the sidecar's own metrics to OTLP {} at {endpoint}", protocol.name())
            }
            _ => String::new(),
        }
    );

    let mut losses = LossLog::default();
    let mut report = tokio::time::interval(config.loss_report_interval);
    let mut markers =
        spawn_marker_scan(config.max_context_files as usize, pipeline.context_files_refused.clone())?;
    let mut sweep = tokio::time::interval(SWEEP_PROCESSES);
    // The BPF side wakes us only once WAKEUP_BYTES are pending; this bounds the latency of the
    // records below that.
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    let mut refresh_metrics = tokio::time::interval(self_metrics::REFRESH);
    while !stopping {
        tokio::select! {
            _ = &mut shutdown => stopping = true,
            ready = records.readable_mut() => {
                let mut guard = ready.context("waiting on the ring buffer")?;
                pipeline.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain.tick() => pipeline.drain(records.get_mut()),
            Some(found) = markers.recv() => on_marker(&mut probes, found),
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
            _ = sweep.tick() => {
                let forgotten = pipeline.processes.sweep();
                debug!("process metadata: {forgotten} forgotten, {} kept", pipeline.processes.len());
            }
        }
    }

    info!("stopping: detaching probes and flushing spans");
    probes.detach();
    pipeline.drain(records.get_mut());
    let mut counts = vec![
        ("undecodable_records", pipeline.undecodable),
        ("context_files_refused", pipeline.context_files_refused.load(Ordering::Relaxed)),
    ];
    match probes.counters() {
        Ok(counters) => counts.extend(counters),
        Err(e) => warn!("reading the BPF counters: {e:#}"),
    }
    let flushed = pipeline.exporter.shutdown().await;
    if let Ok(stats) = &flushed {
        counts.extend(export_counters(stats));
    }
    let summary: Vec<String> = counts.iter().map(|(name, n)| format!("{name}={n}")).collect();
    info!("stopped: {} spans; {}", pipeline.spans, summary.join(" "));
    if let Some(metrics) = metrics {
        // The final counts, as the summary gives them.
        metrics.totals.update(counts.into_iter().chain([("spans", pipeline.spans)]));
        metrics.shutdown().await;
    }
    flushed.map(drop)
}

/// The sidecar's own metrics, if configured. Tracing goes on without them if their exporter
/// cannot be built: they describe the spans, they are not worth losing the spans for.
fn start_self_metrics(output: &MetricsOutput) -> Option<SelfMetrics> {
    match output {
        MetricsOutput::Off => None,
        MetricsOutput::Otlp { protocol, .. } => SelfMetrics::start(*protocol)
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
pub const LOSSES: &[&str] = &[
    "ring_buffer_full",
    "inflight_insert_failed",
    "exit_without_entry",
    "undecodable_records",
    "export_queue_full",
    "export_failed",
];

/// Returns the allocator's free pages to the system (glibc keeps them otherwise).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no preconditions; it only releases memory malloc no longer uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Looks for binaries that export the context marker every [`RESCAN_PROCESSES`], on a thread
/// of its own: reading a new executable's symbols takes up to a few hundred milliseconds (the
/// first scan of a busy host, seconds), and everything it reads belongs to other processes, so
/// none of it may hold up the ring buffer's reader. Nothing there blocks for good: files are
/// opened `O_PATH` and read only once proved regular (see `probes::mapped_file`). What it finds
/// comes back through the channel, at most `max_files` open descriptors at a time (the scan
/// hands over no more files than the cap); the thread ends once the receiver is dropped.
fn spawn_marker_scan(max_files: usize, refused: Arc<AtomicU64>) -> Result<mpsc::UnboundedReceiver<Found>> {
    let (found, receiver) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("marker-scan".into())
        .spawn(move || {
            let mut discovery = Discovery::new(Path::new("/proc"), max_files, refused);
            while !found.is_closed() {
                let started = std::time::Instant::now();
                for item in discovery.scan() {
                    if found.send(item).is_err() {
                        return;
                    }
                }
                let files_read = discovery.take_files_read();
                if files_read > 0 {
                    debug!(
                        "context marker: looked into {files_read} new files in {:?}; {} attached",
                        started.elapsed(),
                        discovery.attached()
                    );
                    release_freed_memory();
                }
                std::thread::sleep(RESCAN_PROCESSES);
            }
        })
        .context("starting the context-marker scan")?;
    Ok(receiver)
}

/// Attaches the context-marker uprobe to a file the scan found, then closes the file; or
/// releases the uprobe of a file no process maps any more.
fn on_marker(probes: &mut Probes, found: Found) {
    match found {
        Found::Attach(marker) => match probes.attach_marker(&marker) {
            Ok(()) => info!("context marker: attached to {}", printable(&marker.name)),
            Err(e) => warn!("context marker: not attached to {}: {e}", printable(&marker.name)),
        },
        Found::Release { id, name } => {
            if probes.release_marker(id) {
                info!(
                    "context marker: released {} (no process maps it any more; {} files attached)",
                    printable(&name),
                    probes.markers_attached()
                );
            }
        }
    }
}

fn describe(output: &Output) -> String {
    match output {
        Output::Console => "stdout".to_owned(),
        Output::Otlp { protocol, endpoint } => format!("OTLP {} at {endpoint}", protocol.name()),
        Output::Discard => "nowhere (OTEL_TRACES_EXPORTER=none)".to_owned(),
    }
}
