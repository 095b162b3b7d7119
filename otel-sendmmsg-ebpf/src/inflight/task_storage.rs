//! Each thread's call in flight in the thread's own task-local storage (Linux 5.12+, where
//! tracing programs may use it): looked up, never inserted or deleted per call, and freed by
//! the kernel with the thread. The hash map this replaces cost a quarter of a call's time in
//! the kernel at one message per call (its insert at entry and delete at exit; BENCHMARKS.md).
//!
//! A thread's value is made at its first traced call and reused by every later one: a call is
//! in flight from entry, which writes its start, until exit, which writes its end. The value is
//! the call's state itself: nothing is copied. `hash_map.rs` is the other store, with the
//! same [`InFlight`].

use core::ptr;

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
    macros::{btf_map, map},
    maps::PerCpuArray,
};
use otel_sendmmsg_common::{
    call_metrics::{CountedCall, PairedCall},
    CallRecord, Counter,
};

use crate::pairing::count;

/// A task storage map, as the loader reads its definition from BTF: each field's type says one
/// thing (the map type and flags as array lengths, key and value as pointed-to types). aya-ebpf
/// 0.2.1 has the other local storages (inode, socket, cgroup) but not this one.
#[repr(C)]
pub struct TaskStorage<V> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    key: *const i32,
    value: *const V,
}

// SAFETY: never read or written from BPF code; only its address is passed to the helpers, and
// the kernel keeps each task's value apart.
unsafe impl<V> Sync for TaskStorage<V> {}

impl<V> TaskStorage<V> {
    const fn new() -> Self {
        TaskStorage { r#type: ptr::null(), map_flags: ptr::null(), key: ptr::null(), value: ptr::null() }
    }

    /// The current thread's value; made (zeroed) first when `create` and there is none. None
    /// when there is none, or no memory to make it.
    #[inline(always)]
    fn current(&self, create: bool) -> Option<*mut V> {
        let flags = if create { u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE) } else { 0 };
        // SAFETY: the current task pointer is valid for the program's run; the map is ours.
        let value = unsafe {
            bpf_task_storage_get(
                ptr::from_ref(self).cast_mut().cast(),
                bpf_get_current_task_btf(),
                ptr::null_mut(),
                flags,
            )
        };
        (!value.is_null()).then_some(value.cast())
    }
}

/// Each thread's call with a span (or counted by peer): a [`CallRecord`].
#[btf_map]
static CALLS: TaskStorage<CallRecord> = TaskStorage::new();

/// Each thread's call that only the call metrics count.
#[btf_map]
static COUNTED_CALLS: TaskStorage<CountedCall> = TaskStorage::new();

/// Calls begun minus calls ended, per CPU (a call may end on another CPU than it began on; the
/// sum is what is in flight). User space cannot list task storage: this is how it counts.
#[map]
static INFLIGHT_CALLS: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for a program that keeps no record of its own ([`scratch_record`]).
#[map]
static SCRATCH: PerCpuArray<CallRecord> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn add_inflight(n: i64) {
    if let Some(sum) = INFLIGHT_CALLS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot (see `pairing::count` on preemption).
        unsafe { *sum += n };
    }
}

include!("in_flight.rs");

/// The same for both kinds of call, which name these fields alike.
macro_rules! in_flight {
    ($type:ty, $map:ident) => {
        impl InFlight for $type {
            #[inline(always)]
            fn slot(_tid: u32) -> Option<*mut Self> {
                let call = $map.current(true)?;
                // SAFETY: the current thread's own value; only its programs touch it.
                let state = unsafe { &mut *call };
                if state.start_ns != 0 && state.end_ns == 0 {
                    count(Counter::ExitMissed);
                    add_inflight(-1);
                    state.start_ns = 0;
                }
                Some(call)
            }
            #[inline(always)]
            fn begin(_tid: u32, _call: *mut Self) -> bool {
                add_inflight(1);
                true
            }
            #[inline(always)]
            fn current(_tid: u32) -> Option<*mut Self> {
                let call = $map.current(false)?;
                // SAFETY: as in `slot`.
                let state = unsafe { &*call };
                (state.start_ns != 0 && state.end_ns == 0).then_some(call)
            }
            #[inline(always)]
            fn end(_tid: u32) {
                add_inflight(-1);
            }
        }
    };
}

in_flight!(CallRecord, CALLS);
in_flight!(CountedCall, COUNTED_CALLS);

/// A record's worth of per-CPU scratch space, for a program that keeps no record of its own.
#[inline(always)]
pub fn scratch_record() -> Option<*mut CallRecord> {
    SCRATCH.get_ptr_mut(0)
}

/// The current thread is exiting: a call it still has in flight will never see its exit
/// (counted; its value goes with the thread).
#[inline(always)]
pub fn thread_exit() {
    if CallRecord::current(0).is_some() || CountedCall::current(0).is_some() {
        count(Counter::ExitMissed);
        add_inflight(-1);
    }
}
