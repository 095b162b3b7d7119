//! Each thread's call in flight in a hash map keyed by thread id: the store of kernels whose
//! tracing programs have no task-local storage (before 5.12), or when
//! `OTEL_SENDMMSG_CALL_STORE=hash-map` asks for it. `task_storage.rs` is the other store;
//! both offer [`InFlight`], so `pairing` reads the same over either.
//!
//! A call is put together in a per-CPU scratch slot, then copied into the map at entry, and
//! removed at exit. A plain hash map, not an LRU one: an LRU map makes room by evicting another
//! thread's call in progress, silently (its exit then looks like a call begun before attach),
//! and not always the oldest; a full plain map refuses the new call, which is counted exactly
//! where it happens. An entry whose exit never came is found again by the thread's next call,
//! or removed by user space once its thread is gone. User space sizes the maps at load time
//! (`OTEL_SENDMMSG_MAX_INFLIGHT`).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use otel_sendmmsg_common::{
    call_metrics::{CountedCall, PairedCall},
    CallRecord, Counter,
};

use crate::pairing::count;

/// Calls in flight, by thread id.
#[map]
static INFLIGHT: HashMap<u32, CallRecord> = HashMap::with_max_entries(4096, 0);

/// Calls in flight that only the call metrics count ([`CountedCall`]: metrics only), by thread
/// id, as `INFLIGHT` holds the others; a thread's call is in one of the two. User space sizes it
/// as `INFLIGHT` when it is used, else to one entry.
#[map]
static COUNTED_INFLIGHT: HashMap<u32, CountedCall> = HashMap::with_max_entries(4096, 0);

/// Where a new call's record is put together: it is too large for the 512-byte BPF stack.
/// Also the scratch space of [`scratch_record`].
#[map]
static SCRATCH: PerCpuArray<CallRecord> = PerCpuArray::with_max_entries(1, 0);

/// Where a counted call's state is put together, as [`SCRATCH`] for a record.
#[map]
static COUNTED_SCRATCH: PerCpuArray<CountedCall> = PerCpuArray::with_max_entries(1, 0);

/// `EEXIST`, as the map helpers return it (negated).
const EEXIST: i64 = 17;

include!("in_flight.rs");

/// The same for both kinds of call, each with its map and scratch slot.
macro_rules! in_flight {
    ($type:ty, $map:ident, $scratch:ident) => {
        impl InFlight for $type {
            #[inline(always)]
            fn slot(_tid: u32) -> Option<*mut Self> {
                $scratch.get_ptr_mut(0)
            }
            #[inline(always)]
            fn begin(tid: u32, call: *mut Self) -> bool {
                // SAFETY: this CPU's scratch slot, from `slot`.
                insert(&$map, tid, unsafe { &*call })
            }
            #[inline(always)]
            fn current(tid: u32) -> Option<*mut Self> {
                $map.get_ptr_mut(tid)
            }
            #[inline(always)]
            fn end(tid: u32) {
                // Should the delete fail, the entry has an end: the thread's next call will
                // not take it for a missed exit, and user space removes it.
                let _ = $map.remove(tid);
            }
        }
    };
}

in_flight!(CallRecord, INFLIGHT, SCRATCH);
in_flight!(CountedCall, COUNTED_INFLIGHT, COUNTED_SCRATCH);

/// A record's worth of per-CPU scratch space, for a program that keeps no record of its own.
#[inline(always)]
pub fn scratch_record() -> Option<*mut CallRecord> {
    SCRATCH.get_ptr_mut(0)
}

/// What a dying thread leaves in flight: nothing to do here, user space sweeps the entries of
/// threads that are gone ([`INFLIGHT`]'s doc).
#[inline(always)]
pub fn thread_exit() {}

/// Puts the thread's new call into `map`. An entry already there is a call whose exit was
/// missed (a kretprobe out of instances, a program the kernel skipped), unless its exit ran and
/// only the delete failed (then it has an end): counted, and replaced. False when the map
/// refuses the call.
#[inline(always)]
fn insert<V: PairedCall>(map: &HashMap<u32, V>, tid: u32, call: &V) -> bool {
    match map.insert(tid, call, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(e) if i64::from(e) == -EEXIST => {
            // SAFETY: the entry is this thread's (only its own programs touch it).
            if let Some(old) = map.get_ptr(tid) {
                if unsafe { (*old).end_ns() } == 0 {
                    count(Counter::ExitMissed);
                }
            }
            // Replacing an existing key needs no free slot, so this fails only if user space
            // removed the entry meanwhile and the map filled up.
            map.insert(tid, call, u64::from(BPF_ANY)).is_ok()
        }
        // Full (E2BIG), or the map's bucket lock unavailable: either way this call is lost.
        Err(_) => false,
    }
}
