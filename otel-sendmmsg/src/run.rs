//! Wires the data path together and runs it until the shutdown future resolves.

use std::future::Future;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};
use tracing::{info, warn};

use crate::{
    clock::WallClock,
    config::{Config, Output},
    export::Exporter,
    probes::Probes,
    records::decode,
    spans::span_for,
};

/// What went through the pipeline, for the closing summary.
#[derive(Debug, Default)]
struct Totals {
    spans: u64,
    undecodable: u64,
}

/// Traces until `shutdown` resolves, then detaches, drains what the kernel already reported,
/// and flushes the exporter.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut exporter = Exporter::new(&config.output)?;
    let mut probes = Probes::load(&config)?;
    // Read before attaching, so nothing is reported to a ring buffer nobody watches.
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, until it is dropped,
    // which only happens with the AsyncFd that owns it.
    let mut records = unsafe { AsyncFd::register_with_interest(probes.take_records()?, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the ring buffer: {e}"))?;
    let hooks = probes.attach()?;
    info!("ready: tracing sendmmsg through {}; spans go to {}", hooks.join(", "), describe(&config.output));

    let mut totals = Totals::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ready = records.readable_mut() => {
                let mut guard = ready.context("waiting on the ring buffer")?;
                drain(guard.get_inner_mut(), &mut exporter, &mut totals);
                guard.clear_ready();
            }
        }
    }

    info!("stopping: detaching probes and flushing spans");
    probes.detach();
    drain(records.get_mut(), &mut exporter, &mut totals);
    let flushed = exporter.shutdown();
    report(&probes, &totals);
    flushed
}

fn drain(ring: &mut RingBuf<MapData>, exporter: &mut Exporter, totals: &mut Totals) {
    let clock = WallClock::now();
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(call) => {
                exporter.export(span_for(&call, &clock));
                totals.spans += 1;
            }
            Err(e) => {
                totals.undecodable += 1;
                if totals.undecodable.is_power_of_two() {
                    warn!("dropped an undecodable record ({e}); {} so far", totals.undecodable);
                }
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

fn report(probes: &Probes, totals: &Totals) {
    let mut losses = vec![format!("undecodable_records={}", totals.undecodable)];
    match probes.counters() {
        Ok(counters) => losses.extend(counters.iter().map(|(c, n)| format!("{}={n}", c.name()))),
        Err(e) => warn!("reading the BPF counters: {e:#}"),
    }
    info!("stopped: {} spans; {}", totals.spans, losses.join(" "));
}
