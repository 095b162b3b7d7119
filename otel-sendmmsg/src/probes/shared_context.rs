//! Where the thread -> active span map lives: the ecosystem's pinned
//! `/sys/fs/bpf/otel/traces_ctx_v1` (OpenTelemetry eBPF Instrumentation's; the eBPF profiler
//! reads it), opened when it is there with the expected shape, created and pinned when it is
//! not. Anything else leaves the sidecar with a private map: spans still flow, correlation with
//! other tools does not.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use otel_sendmmsg_common::TraceContext;
use tracing::{info, warn};

pub const PIN_PATH: &str = "/sys/fs/bpf/otel/traces_ctx_v1";
const BPF_FS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the BPF side's `TRACES_CTX` map comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum SharedMap {
    /// Open the map pinned here, or create and pin it.
    Pinned(PathBuf),
    /// A map of the sidecar's own; the reason is logged once.
    Private,
}

/// Decides, and prepares the pin directory when pinning.
pub fn prepare() -> SharedMap {
    if let Err(why) = ensure_bpffs() {
        warn!("{why}: trace context is not shared with other eBPF tools (OBI, the profiler)");
        return SharedMap::Private;
    }
    let path = Path::new(PIN_PATH);
    if path.exists() {
        return match MapInfo::from_pin(path) {
            Ok(info) => match check_shape(info.key_size(), info.value_size()) {
                Ok(()) => {
                    info!("sharing trace context through the pinned map {PIN_PATH}");
                    SharedMap::Pinned(path.to_owned())
                }
                Err(why) => {
                    warn!("not using {PIN_PATH}: {why}; using a private map");
                    SharedMap::Private
                }
            },
            Err(e) => {
                warn!("cannot open {PIN_PATH} ({e}); using a private map");
                SharedMap::Private
            }
        };
    }
    match std::fs::create_dir_all(path.parent().expect("a file path")) {
        Ok(()) => {
            info!("creating and pinning the trace-context map {PIN_PATH}");
            SharedMap::Pinned(path.to_owned())
        }
        Err(e) => {
            warn!(
                "cannot create {} ({e}); using a private trace-context map",
                path.parent().unwrap().display()
            );
            SharedMap::Private
        }
    }
}

/// The shape OBI and the profiler agree on: `u64 pid_tgid` -> `{u8 trace_id[16]; u8 span_id[8]}`.
fn check_shape(key_size: u32, value_size: u32) -> Result<(), String> {
    let want = (size_of::<u64>() as u32, size_of::<TraceContext>() as u32);
    if (key_size, value_size) == want {
        Ok(())
    } else {
        Err(format!("its key/value sizes are {key_size}/{value_size} bytes, expected {}/{}", want.0, want.1))
    }
}

/// bpffs at /sys/fs/bpf, mounting it if nothing is mounted there.
fn ensure_bpffs() -> Result<(), String> {
    if is_bpffs() {
        return Ok(());
    }
    let mounted = std::process::Command::new("mount").args(["-t", "bpf", "bpf", BPF_FS]).status();
    if matches!(mounted, Ok(s) if s.success()) && is_bpffs() {
        info!("mounted bpffs at {BPF_FS}");
        Ok(())
    } else {
        Err(format!(
            "no bpffs at {BPF_FS} and mounting it failed (mount -t bpf bpf {BPF_FS}, or bind-mount it)"
        ))
    }
}

fn is_bpffs() -> bool {
    let path = std::ffi::CString::new(BPF_FS).expect("no NUL");
    // SAFETY: a valid path and an out-pointer to a zeroed statfs.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agreed_shape_is_shared() {
        assert_eq!(check_shape(8, 24), Ok(()));
        assert!(check_shape(4, 24).unwrap_err().contains("4/24 bytes, expected 8/24"));
        assert!(check_shape(8, 32).is_err());
    }
}
