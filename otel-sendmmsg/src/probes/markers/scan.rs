//! The thread that runs [`Discovery`]: everything it reads belongs to other processes, and
//! reading a new executable's symbols takes up to a few hundred milliseconds (the first scan of
//! a busy host, seconds), so none of it may hold up the ring buffer's reader.

use std::{
    path::Path,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::debug;

use super::{Discovery, Found};
use crate::memory::release_freed_memory;

/// How often new processes are looked at for the context marker: a process started from a file
/// already found is covered at once; a new file within this long.
const RESCAN_PROCESSES: Duration = Duration::from_secs(1);

/// Looks for binaries that export the context marker every [`RESCAN_PROCESSES`], on a thread
/// of its own. Nothing there blocks for good: files are opened `O_PATH` and read only once
/// proved regular (see [`super::mapped_file`]). What it finds comes back through the channel,
/// at most `max_files` open descriptors at a time (the scan hands over no more files than the
/// cap); the thread ends once the receiver is dropped.
pub fn spawn(max_files: usize, refused: Arc<AtomicU64>) -> Result<mpsc::UnboundedReceiver<Found>> {
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
