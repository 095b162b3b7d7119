//! Health for orchestrators (`OTEL_SENDMMSG_HEALTH_ENDPOINT`): an HTTP listener with
//! `GET /readyz`, 200 once the probes are attached and spans flow, and `GET /livez`, 200 while
//! the pipeline turns. Turning is two heartbeats: the loop that drains the ring buffer (every
//! 20 ms at least) and the export task (at each tick of its schedule, which comes round unless
//! an export holds the task longer than its timeout allows). If either stands still longer than
//! `OTEL_SENDMMSG_HEALTH_STALL_AFTER`, liveness fails and says which: a restart is the cure for a
//! pipeline that stopped turning, whatever stopped it.
//!
//! The listener is open to whoever can reach the port: it reads at most one small request per
//! connection, with a deadline, and answers only these two paths.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{debug, info};

/// One part of the pipeline saying it still turns.
#[derive(Debug)]
pub struct Beat {
    since: Instant,
    /// Milliseconds after `since` of the latest beat.
    at: AtomicU64,
}

impl Default for Beat {
    fn default() -> Self {
        Beat { since: Instant::now(), at: AtomicU64::new(0) }
    }
}

impl Beat {
    pub fn beat(&self) {
        self.at.store(self.since.elapsed().as_millis() as u64, Relaxed);
    }

    fn age(&self) -> Duration {
        self.since.elapsed().saturating_sub(Duration::from_millis(self.at.load(Relaxed)))
    }
}

/// What the health endpoints report, shared with the parts that beat.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    pub drain: Arc<Beat>,
    /// The export task's, when there is one (OTLP): the console writes inline.
    pub export: Option<Arc<Beat>>,
}

impl Health {
    pub fn new(export_task: bool) -> Health {
        Health {
            ready: AtomicBool::new(false),
            drain: Arc::default(),
            export: export_task.then(Arc::default),
        }
    }

    /// The probes are attached and the pipeline runs.
    pub fn set_ready(&self) {
        self.drain.beat();
        if let Some(export) = &self.export {
            export.beat();
        }
        self.ready.store(true, Relaxed);
    }

    /// Alive unless a part that beats stood still longer than `stall_after` (before readiness
    /// nothing beats yet: start-up is the readiness probe's to judge).
    fn live(&self, stall_after: Duration) -> Result<(), String> {
        if !self.ready.load(Relaxed) {
            return Ok(());
        }
        let export = self.export.iter().map(|beat| ("the export task", beat));
        for (part, beat) in [("the ring buffer's drain", &self.drain)].into_iter().chain(export) {
            let age = beat.age();
            if age > stall_after {
                return Err(format!("{part} has not turned for {}", humantime::format_duration(round(age))));
            }
        }
        Ok(())
    }

    fn answer(&self, method: &Method, path: &str, stall_after: Duration) -> (StatusCode, String) {
        if method != Method::GET && method != Method::HEAD {
            return (StatusCode::METHOD_NOT_ALLOWED, "GET /livez or /readyz\n".into());
        }
        match path {
            "/livez" => match self.live(stall_after) {
                Ok(()) => (StatusCode::OK, "ok\n".into()),
                Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            },
            "/readyz" => match self.ready.load(Relaxed) {
                true => (StatusCode::OK, "ok\n".into()),
                false => {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting: the probes are not attached yet\n".into())
                }
            },
            _ => (StatusCode::NOT_FOUND, "GET /livez or /readyz\n".into()),
        }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A request must arrive whole within this, or the connection is closed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Health checks are tiny GETs; anything larger is refused.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Binds `address` now (a port in use is a start-up error) and serves on the current runtime.
pub async fn serve(address: SocketAddr, health: Arc<Health>, stall_after: Duration) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await.with_context(|| {
        format!("listening for health checks on {address} (OTEL_SENDMMSG_HEALTH_ENDPOINT)")
    })?;
    info!("health checks: GET http://{address}/livez and /readyz");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!("health check connection: {e}");
                    // Out of descriptors, say: the next accept may work, and a tight loop won't.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let health = health.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (status, body) = health.answer(request.method(), request.uri().path(), stall_after);
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .max_buf_size(MAX_HEADER_BYTES)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(REQUEST_DEADLINE, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!("health check from {peer}: {e}"),
                    Err(_) => debug!("health check from {peer}: no request within {REQUEST_DEADLINE:?}"),
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_attached_and_live_while_both_parts_beat() {
        let health = Health::new(true);
        let stall = Duration::from_millis(50);
        assert_eq!(health.answer(&Method::GET, "/readyz", stall).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(health.answer(&Method::GET, "/livez", stall).0, StatusCode::OK, "starting is alive");
        health.set_ready();
        assert_eq!(health.answer(&Method::GET, "/readyz", stall).0, StatusCode::OK);
        assert_eq!(health.answer(&Method::GET, "/livez", stall).0, StatusCode::OK);
        std::thread::sleep(Duration::from_millis(80));
        health.drain.beat();
        let (status, body) = health.answer(&Method::GET, "/livez", stall);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("the export task has not turned for "), "{body}");
        health.export.as_ref().unwrap().beat();
        assert_eq!(health.answer(&Method::GET, "/livez", stall).0, StatusCode::OK);
        // Without an export task (console output), only the drain counts.
        let console = Health::new(false);
        console.set_ready();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(console.answer(&Method::GET, "/livez", stall).0, StatusCode::SERVICE_UNAVAILABLE);
        console.drain.beat();
        assert_eq!(console.answer(&Method::GET, "/livez", stall).0, StatusCode::OK);
        assert_eq!(health.answer(&Method::GET, "/metrics", stall).0, StatusCode::NOT_FOUND);
        assert_eq!(health.answer(&Method::POST, "/livez", stall).0, StatusCode::METHOD_NOT_ALLOWED);
    }
}
