//! Sends the call metrics' requests, one at a time, off the run loop. A request still under
//! way when the next is ready makes that one wait for the next interval: cumulative points
//! lose nothing by it (the next carries the totals); delta points of a request that fails are
//! lost, as with the SDK's exporter, and logged.

use std::sync::Arc;

use anyhow::Result;
use prost::bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::{
    config::Otlp,
    export::{
        batcher::Sender as _,
        otlp::{OtlpExporter, Signal},
    },
};

pub struct MetricsExport {
    exporter: Arc<OtlpExporter>,
    sending: Option<JoinHandle<bool>>,
    /// Requests the collector accepted, and those it did not.
    pub exported: u64,
    pub failed: u64,
}

impl MetricsExport {
    /// Must run inside the tokio runtime.
    pub fn new(otlp: &Otlp) -> Result<MetricsExport> {
        Ok(MetricsExport {
            exporter: Arc::new(OtlpExporter::new(otlp, Signal::Metrics)?),
            sending: None,
            exported: 0,
            failed: 0,
        })
    }

    /// Whether a request can go now (the last one is done).
    pub fn ready(&mut self) -> bool {
        match &self.sending {
            Some(sending) if !sending.is_finished() => false,
            Some(_) => {
                // Finished: its verdict is taken at once, without waiting.
                let sending = self.sending.take().expect("checked above");
                self.count(futures_now(sending));
                true
            }
            None => true,
        }
    }

    /// Sends `request` in the background; call only when [`MetricsExport::ready`].
    pub fn send(&mut self, request: Vec<u8>) {
        let exporter = self.exporter.clone();
        self.sending = Some(tokio::spawn(async move {
            match exporter.send(Bytes::from(request)).await {
                Ok(()) => true,
                Err(e) => {
                    warn!("exporting the call metrics: {e}");
                    false
                }
            }
        }));
    }

    /// Waits for the request under way, if any.
    pub async fn finish(&mut self) {
        if let Some(sending) = self.sending.take() {
            let sent = sending.await.unwrap_or(false);
            self.count(Some(sent));
        }
    }

    fn count(&mut self, sent: Option<bool>) {
        match sent {
            Some(true) => self.exported += 1,
            Some(false) | None => self.failed += 1,
        }
    }
}

/// The result of a task known to be finished.
fn futures_now(task: JoinHandle<bool>) -> Option<bool> {
    use std::{
        future::Future as _,
        task::{Context, Poll},
    };
    let mut task = std::pin::pin!(task);
    match task.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(result) => Some(result.unwrap_or(false)),
        Poll::Pending => None,
    }
}
