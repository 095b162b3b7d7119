//! Where the thread -> active span map lives: the ecosystem's pinned
//! `/sys/fs/bpf/otel/traces_ctx_v1` (OpenTelemetry eBPF Instrumentation's; the eBPF profiler
//! reads it), opened when it is there with the expected shape, created and pinned when it is
//! not. Anything else leaves the sidecar with a private map: spans still flow, correlation with
//! other tools does not.
//!
//! Whoever can write that map chooses the parents of other users' spans, and whoever can replace
//! it can hide every parent. So the directory and the pin must belong to this sidecar's user or
//! to root (OBI's are root's, 0700 and 0600), the directory must not be writable and the pin not
//! be readable or writable by group or others, and neither may be a symlink;
//! the map must be an LRU hash of the agreed shape without flags that change what we read or
//! write. Each check is made on what is then used (see [`pin_dir`](super::pin_dir)), and the
//! map the loader ended up with is compared, by id, with the one checked.

use std::path::{Path, PathBuf};

use aya::maps::{MapInfo, MapType};
use otel_sendmmsg_common::TraceContext;
use tracing::{debug, info, warn};

use super::pin_dir::{Pin, PinDir, BPF_FS_MAGIC};

pub const PIN_PATH: &str = "/sys/fs/bpf/otel/traces_ctx_v1";
const BPF_FS: &str = "/sys/fs/bpf";
const DIR_NAME: &str = "otel";
const PIN_NAME: &str = "traces_ctx_v1";

/// Map flags that change nothing of what we read or write: per-CPU LRU lists, a NUMA node.
const HARMLESS_FLAGS: u32 = BPF_F_NO_COMMON_LRU | BPF_F_NUMA_NODE;
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
const BPF_F_NUMA_NODE: u32 = 1 << 2;

/// Where the BPF side's `TRACES_CTX` map comes from.
#[derive(Debug)]
pub enum SharedMap {
    /// Open the map already pinned (checked), or create and pin one in the checked directory.
    Pinned { dir: PinDir, existing: Option<(Pin, u32)> },
    /// A map of the sidecar's own; the reason was logged once.
    Private,
}

/// Decides, and prepares the pin directory when pinning. A refusal is logged here, in one line.
pub fn prepare() -> SharedMap {
    match try_prepare() {
        Ok(shared) => shared,
        Err(why) => {
            refuse(&why);
            SharedMap::Private
        }
    }
}

/// The one line that says the shared map is not used, and what that costs.
pub fn refuse(why: &str) {
    warn!(
        "not using {PIN_PATH}: {why}; using a private trace-context map (spans still flow; \
         parents published by OBI or for the eBPF profiler are not seen)"
    );
}

fn try_prepare() -> Result<SharedMap, String> {
    ensure_bpffs()?;
    let dir = PinDir::open_or_create(Path::new(BPF_FS), DIR_NAME)?;
    let existing = match dir.pin(PIN_NAME)? {
        None => None,
        Some(pin) => {
            let info = MapInfo::from_pin(pin.path()).map_err(|e| format!("cannot open it ({e})"))?;
            check_shape(&info)?;
            Some((pin, info.id()))
        }
    };
    Ok(SharedMap::Pinned { dir, existing })
}

impl SharedMap {
    /// The path to give the loader for `TRACES_CTX`: one that reaches the checked pin or
    /// directory itself, not whatever the names under `/sys/fs/bpf` mean by then.
    pub fn loader_path(&self) -> Option<PathBuf> {
        match self {
            SharedMap::Pinned { existing: Some((pin, _)), .. } => Some(pin.path()),
            SharedMap::Pinned { dir, existing: None } => Some(dir.path_of(PIN_NAME)),
            SharedMap::Private => None,
        }
    }

    /// Checks the map the loader used (`loaded`): the agreed shape, the very map checked
    /// before loading or, when we created it, our pin, made 0600.
    pub fn confirm(&self, loaded: &MapInfo) -> Result<(), String> {
        let SharedMap::Pinned { dir, existing } = self else {
            return Ok(());
        };
        check_shape(loaded)?;
        let shown = format!("the pin {PIN_PATH}");
        let mut pin = dir.pin(PIN_NAME)?.ok_or_else(|| format!("{shown} is gone after loading"))?;
        if let Some((_, checked_id)) = existing {
            if loaded.id() != *checked_id {
                return Err(format!(
                    "the loader got map id {}, not the checked map {checked_id}",
                    loaded.id()
                ));
            }
        } else {
            pin.restrict(PIN_PATH)?;
        }
        let pinned = MapInfo::from_pin(pin.path()).map_err(|e| format!("cannot open {shown} ({e})"))?;
        if pinned.id() != loaded.id() {
            return Err(format!("{shown} holds map id {}, not the loaded map {}", pinned.id(), loaded.id()));
        }
        let whose = match (existing, pin.stat.st_uid) {
            (None, _) => "created it".to_owned(),
            (Some(_), 0) => "root's".to_owned(),
            (Some(_), uid) => format!("uid {uid}'s"),
        };
        info!(
            "sharing trace context through the pinned map {PIN_PATH} ({whose}, mode {:04o}, map id {})",
            pin.stat.st_mode & 0o7777,
            loaded.id()
        );
        Ok(())
    }
}

/// What the kernel says of the `TRACES_CTX` map the loader used.
pub fn loaded_info(ebpf: &aya::Ebpf) -> Result<MapInfo, String> {
    match ebpf.map("TRACES_CTX") {
        Some(aya::maps::Map::LruHashMap(data)) => data.info().map_err(|e| format!("cannot inspect it ({e})")),
        _ => Err("map TRACES_CTX missing from the BPF object".into()),
    }
}

/// The shape OBI and the profiler agree on: an LRU hash, `u64 pid_tgid` ->
/// `{u8 trace_id[16]; u8 span_id[8]}`. Flags such as `BPF_F_RDONLY_PROG` would silently
/// stop our programs from writing or reading it.
fn check_shape(info: &MapInfo) -> Result<(), String> {
    match info.map_type() {
        Ok(MapType::LruHash) => {}
        Ok(other) => return Err(format!("its map is a {other:?}, not an LruHash")),
        Err(e) => return Err(format!("its map is of a type this sidecar does not know ({e})")),
    }
    check_sizes_and_flags(info.key_size(), info.value_size(), info.map_flags())
}

fn check_sizes_and_flags(key_size: u32, value_size: u32, flags: u32) -> Result<(), String> {
    let want = (size_of::<u64>() as u32, size_of::<TraceContext>() as u32);
    if (key_size, value_size) != want {
        return Err(format!(
            "its key/value sizes are {key_size}/{value_size} bytes, expected {}/{}",
            want.0, want.1
        ));
    }
    if flags & !HARMLESS_FLAGS != 0 {
        return Err(format!(
            "its map flags are {flags:#x}; only BPF_F_NO_COMMON_LRU and BPF_F_NUMA_NODE are accepted"
        ));
    }
    Ok(())
}

/// bpffs at /sys/fs/bpf, mounting it if nothing is mounted there: mode 0700, where a default
/// mount would let every user create entries (mode 1777).
fn ensure_bpffs() -> Result<(), String> {
    if is_bpffs() {
        return Ok(());
    }
    let mounted =
        std::process::Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "bpf", BPF_FS]).status();
    if matches!(mounted, Ok(s) if s.success()) && is_bpffs() {
        info!(
            "mounted bpffs at {BPF_FS} with mode 0700 (a default mount is 1777: anyone could create entries)"
        );
        Ok(())
    } else {
        debug!("mount -t bpf at {BPF_FS} failed: {mounted:?}");
        Err(format!(
            "no bpffs at {BPF_FS} and mounting it failed (mount -t bpf -o mode=0700 bpf {BPF_FS}, or bind-mount it)"
        ))
    }
}

fn is_bpffs() -> bool {
    nix::sys::statfs::statfs(BPF_FS)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FsType(BPF_FS_MAGIC as _))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agreed_shape_is_shared() {
        assert_eq!(check_sizes_and_flags(8, 24, 0), Ok(()));
        assert_eq!(check_sizes_and_flags(8, 24, BPF_F_NO_COMMON_LRU), Ok(()));
        assert!(check_sizes_and_flags(4, 24, 0).unwrap_err().contains("4/24 bytes, expected 8/24"));
        assert!(check_sizes_and_flags(8, 32, 0).is_err());
        // BPF_F_RDONLY_PROG: our programs could no longer write it.
        assert!(check_sizes_and_flags(8, 24, 1 << 7).unwrap_err().contains("flags are 0x80"));
    }
}
