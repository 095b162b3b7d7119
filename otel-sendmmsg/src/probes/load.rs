//! Loading the BPF object: what the kernel must offer first.

use std::path::Path;

use anyhow::{bail, Result};
use tracing::{debug, info};

use super::kernel::TRACEFS;

/// Tracepoints and kprobes are found through tracefs, which is not mounted on every boot.
pub fn ensure_tracefs() -> Result<()> {
    match std::fs::read_dir(Path::new(TRACEFS).join("events")) {
        Ok(_) => return Ok(()),
        // Mounted, but closed to us: mounting again would not help.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "tracefs at {TRACEFS} refuses access ({e}): a security module (lockdown, SELinux, \
             AppArmor) denies it; allow the sidecar to read tracefs"
        ),
        Err(_) => {}
    }
    info!("tracefs is not mounted; mounting it at {TRACEFS}");
    let status = std::process::Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed; mount it with \
             `mount -t tracefs nodev {TRACEFS}` (as root), or bind-mount it into the container"
        ),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid resource id and pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; loading may fail on kernels before 5.11");
    }
}
