//! Keeps thread contexts from outliving their threads. The kernel gives a dead thread's tid to a
//! later thread, and `TRACES_CTX` is keyed by pid and tid: an entry left behind would make the
//! newcomer's calls children of a span it never had. The BPF side drops an entry when its
//! thread exits or execs; entries of threads that died before that was attached (a pinned map
//! outlives the sidecar) are swept once here. The cleanup programs are in the hook catalogue
//! ([`super::hooks::CONTEXT_CLEANUP`]).

use std::path::Path;

use aya::{maps::HashMap, Ebpf};
use otel_sendmmsg_common::TraceContext;
use tracing::{debug, info};

/// The initial pid namespace's inode number (`PROC_PID_INIT_INO`, include/linux/proc_ns.h):
/// only there do `/proc`'s pids match the kernel-wide ones the map is keyed by.
const INIT_PID_NS: &str = "pid:[4026531836]";

/// Removes the entries of threads that are already gone, from a map that existed before us.
pub fn sweep(ebpf: &mut Ebpf) -> Result<(), String> {
    let removed = sweep_dead_threads(ebpf)?;
    if removed > 0 {
        info!("removed {removed} trace contexts of threads that exited before the sidecar started");
    }
    Ok(())
}

fn sweep_dead_threads(ebpf: &mut Ebpf) -> Result<usize, String> {
    let in_init_ns = std::fs::read_link("/proc/self/ns/pid").is_ok_and(|ns| ns == Path::new(INIT_PID_NS));
    if !in_init_ns {
        debug!("not in the initial pid namespace: /proc cannot tell which threads still exist");
        return Ok(0);
    }
    let map = ebpf.map_mut("TRACES_CTX").ok_or("map TRACES_CTX missing")?;
    let mut map = HashMap::<_, u64, TraceContext>::try_from(map).map_err(|e| e.to_string())?;
    // Collected first: deleting while iterating restarts the kernel's walk.
    let dead: Vec<u64> = map.keys().filter_map(Result::ok).filter(|&key| !thread_exists(key)).collect();
    Ok(dead.iter().filter(|key| map.remove(key).is_ok()).count())
}

fn thread_exists(pid_tgid: u64) -> bool {
    let (tgid, tid) = (pid_tgid >> 32, pid_tgid & 0xffff_ffff);
    Path::new(&format!("/proc/{tgid}/task/{tid}")).exists()
}
