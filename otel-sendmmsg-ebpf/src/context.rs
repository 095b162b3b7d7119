//! The calling thread's active application span as OpenTelemetry eBPF Instrumentation shares it,
//! the fallback when the thread published no OTEP 4947 record (`thread_context`).
//!
//! The map is the ecosystem's: OBI pins it as `/sys/fs/bpf/otel/traces_ctx_v1` and the eBPF
//! profiler reads it; user space opens it there, or creates and pins it.
//!
//! An entry outlives its thread unless someone removes it, and the kernel hands a dead thread's
//! tid to the next thread it creates: that thread (of the same process, or of another process
//! once the pid is reused) would inherit a parent span it never had. `context_thread_exit` and
//! `context_exec` drop a thread's entry when it stops being that thread.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use otel_sendmmsg_common::TraceContext;

/// Keyed by `bpf_get_current_pid_tgid()`: one entry per thread.
#[map]
static TRACES_CTX: LruHashMap<u64, TraceContext> = LruHashMap::with_max_entries(65536, 0);

/// Copies the current thread's published span into `dst`; false when it has none.
#[inline(always)]
pub fn copy_current(dst: &mut TraceContext) -> bool {
    let Some(src) = TRACES_CTX.get_ptr(bpf_get_current_pid_tgid()) else {
        return false;
    };
    // Word by word: a struct assignment here becomes a `memmove` call (LLVM cannot rule out
    // that map value and record overlap), which the loader refuses.
    let (src, dst) = (src.cast::<u64>(), (dst as *mut TraceContext).cast::<u64>());
    for i in 0..3 {
        // SAFETY: both are 24-byte, 8-aligned TraceContexts (the map value and a record field).
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    true
}

// sched/sched_process_exec: `pid_t old_pid` at 16 (after `__data_loc char[] filename` at 8 and
// `pid_t pid` at 12), from the event's format file.
const EXEC_OLD_PID: usize = 16;

/// `sched:sched_process_exit`, fired by `do_exit()` in the exiting task itself, once for every
/// thread, before its tid is freed for reuse: its context ends with it, and so does a call it
/// still had in flight, whose exit will never come ([`crate::inflight::thread_exit`]).
#[tracepoint]
pub fn context_thread_exit(_ctx: TracePointContext) -> u32 {
    remove_if_present(bpf_get_current_pid_tgid());
    crate::inflight::thread_exit();
    0
}

/// Most exiting threads never published anything: a lookup takes no lock, a delete locks the
/// key's bucket. Measured here (bpf_stats, 50k thread exits): 349 ns a run deleting blindly,
/// 282 ns looking up first.
#[inline(always)]
fn remove_if_present(key: u64) {
    if TRACES_CTX.get_ptr(key).is_some() {
        let _ = TRACES_CTX.remove(&key);
    }
}

/// `sched:sched_process_exec`, in the thread that exec'd, after it became the thread-group
/// leader: the new program has no span yet. A non-leader that execs takes the leader's tid and
/// its own (`old_pid`) is freed without an exit of its own, so that key goes too. The other
/// threads, and the old leader, went through `context_thread_exit`.
#[tracepoint]
pub fn context_exec(ctx: TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    remove_if_present(key);
    // SAFETY: offset from the event's format file (see above).
    if let Ok(old_tid) = unsafe { ctx.read_at::<u32>(EXEC_OLD_PID) } {
        let old_key = (key & !0xffff_ffff) | u64::from(old_tid);
        if old_key != key {
            remove_if_present(old_key);
        }
    }
    0
}
