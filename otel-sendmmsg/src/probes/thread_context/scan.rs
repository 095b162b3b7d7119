//! The thread that runs [`Discovery`]: everything it reads belongs to other processes, and
//! reading a new executable's symbols takes up to a few hundred milliseconds (the first scan of
//! a busy host, seconds), so none of it may hold up the ring buffer's reader.

use std::{
    path::Path,
    sync::{atomic::AtomicU64, mpsc as std_mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::debug;

use super::{Discovery, Found};
use crate::memory::release_freed_memory;

/// How often new processes are looked at: a process that starts publishing is read within
/// this long (or at its first call, whichever comes first).
pub const RESCAN_PROCESSES: Duration = Duration::from_secs(1);

/// The scan thread's two ends: what it finds, and where to name a process to look at again.
pub struct Scan {
    pub found: mpsc::UnboundedReceiver<Found>,
    pub again: std_mpsc::Sender<u32>,
}

/// Looks for processes that define `otel_thread_ctx_v1` every [`RESCAN_PROCESSES`], and at
/// once for a process named through [`Scan::again`] (its program's first call), on a thread of
/// its own. Nothing there blocks for good (see [`super::Discovery::scan`]). The thread ends once
/// the receiver is dropped.
pub fn spawn(max_processes: usize, refused: Arc<AtomicU64>) -> Result<Scan> {
    let (found, receiver) = mpsc::unbounded_channel();
    let (again, named) = std_mpsc::channel::<u32>();
    std::thread::Builder::new()
        .name("context-scan".into())
        .spawn(move || {
            let mut discovery = Discovery::new(Path::new("/proc"), max_processes, refused);
            let mut next = Instant::now();
            while !found.is_closed() {
                let mut pids = Vec::new();
                match named.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(pid) => pids.push(pid),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
                pids.extend(named.try_iter());
                if pids.is_empty() {
                    next = Instant::now() + RESCAN_PROCESSES;
                }
                let started = Instant::now();
                for item in discovery.scan(&pids) {
                    if found.send(item).is_err() {
                        return;
                    }
                }
                let files_read = discovery.take_files_read();
                if files_read > 0 {
                    debug!(
                        "thread context: looked into {files_read} new files in {:?}; {} processes read",
                        started.elapsed(),
                        discovery.reached()
                    );
                    release_freed_memory();
                }
            }
        })
        .context("starting the thread-context scan")?;
    Ok(Scan { found: receiver, again })
}
