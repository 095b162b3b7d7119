//! The calling thread's active span as its SDK or tracer publishes it by the standard, OTEP 4947:
//! the TLS variable `otel_thread_ctx_v1` points to a Thread-Local Context Record. Read at entry,
//! in the calling thread itself, which is how the OTEP requires a reader to read it (the thread
//! cannot be changing its record meanwhile).
//!
//! User space works out, per process, where the variable is (`THREAD_CONTEXT_ACCESS`); here each
//! call follows that from the task's thread pointer: one kernel read and three to five user
//! reads, and a map miss for every process that publishes nothing. Every pointer is the
//! process's own and may point anywhere: a read that fails is a call without that parent,
//! counted; nothing past the record's fixed header is read.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_user},
    macros::map,
    maps::HashMap,
};
use otel_sendmmsg_common::{thread_context as record, Counter, ThreadContextAccess, TraceContext};

use crate::{
    pairing::count,
    socket::{offsets, read},
};

/// tgid -> how to reach its threads' `otel_thread_ctx_v1`. User space sizes it at load time
/// (`OTEL_SENDMMSG_MAX_CONTEXT_PROCESSES`), fills it as it finds processes that export the
/// symbol, and removes their entries when they exit; an exec removes it here at once.
#[map]
static THREAD_CONTEXT_ACCESS: HashMap<u32, ThreadContextAccess> = HashMap::with_max_entries(4096, 0);

/// glibc's `TLS_DTV_UNALLOCATED`: a module's block this thread has not allocated yet.
const DTV_UNALLOCATED: u64 = u64::MAX;
/// Where the DTV pointer lies from the thread pointer, glibc and musl alike (x86-64 `tcbhead_t`
/// and `struct pthread` both begin with `self`, then `dtv`).
const DTV_AT: u64 = 8;

/// What the current thread has published.
pub enum Published {
    /// No record, a null pointer, `valid` != 1, zero ids, or nothing could be read.
    Nothing,
    /// A valid record; `true` when its span is sampled. Its ids are in the destination.
    Span(bool),
}

/// Reads the current thread's record into `dst` when its process exports the symbol (`start`:
/// the process's start, `task::process_start_ns`, read once per call).
#[inline(always)]
pub fn read_current(tgid: u32, start: u64, dst: &mut TraceContext) -> Published {
    // SAFETY: a copy of the value is taken at once.
    let Some(access) = (unsafe { THREAD_CONTEXT_ACCESS.get(&tgid) }).copied() else {
        return Published::Nothing;
    };
    let off = offsets();
    if off.task_fsbase == 0 || access.ns_per_tick == 0 || access.start_ticks != start / access.ns_per_tick {
        return Published::Nothing;
    }
    // SAFETY: reading the current task pointer has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let Some(tp) = read::<u64>(task, off.task_fsbase) else {
        return Published::Nothing;
    };
    let record = match slot(tp, &access) {
        Slot::At(address) => user::<u64>(address),
        // The thread never touched the variable, so it never published anything.
        Slot::NoBlock => return Published::Nothing,
        Slot::Unreadable => None,
    };
    let Some(record) = record else {
        count(Counter::ThreadContextUnreadable);
        return Published::Nothing;
    };
    if record == 0 {
        return Published::Nothing;
    }
    let Some(header) = user::<[u8; record::HEADER_BYTES]>(record) else {
        count(Counter::ThreadContextUnreadable);
        return Published::Nothing;
    };
    if header[record::VALID_AT] != 1 {
        return Published::Nothing;
    }
    let attrs = u16::from_ne_bytes([header[record::ATTRS_SIZE_AT], header[record::ATTRS_SIZE_AT + 1]]);
    if attrs > record::MAX_ATTRS_BYTES {
        count(Counter::ThreadContextMalformed);
        return Published::Nothing;
    }
    // Byte by byte into the record: a slice copy would become a `memcpy` call the loader refuses.
    let mut any_trace = 0u8;
    let mut any_span = 0u8;
    for i in 0..16 {
        dst.trace_id[i] = header[i];
        any_trace |= header[i];
    }
    for i in 0..8 {
        dst.span_id[i] = header[16 + i];
        any_span |= header[16 + i];
    }
    // The OTEP's "none active" is zero ids, whatever `valid` says.
    if any_trace == 0 || any_span == 0 {
        return Published::Nothing;
    }
    Published::Span(header[record::FLAGS_AT] & record::FLAG_SAMPLED != 0)
}

enum Slot {
    At(u64),
    /// The thread has no block of the variable's module yet.
    NoBlock,
    Unreadable,
}

/// Where the thread's `otel_thread_ctx_v1` is: in static TLS, or in its module's block through
/// the thread's DTV.
#[inline(always)]
fn slot(tp: u64, access: &ThreadContextAccess) -> Slot {
    if access.module == 0 {
        return Slot::At(tp.wrapping_add(access.offset as u64));
    }
    let Some(dtv) = user::<u64>(tp.wrapping_add(DTV_AT)) else {
        return Slot::Unreadable;
    };
    let Some(len) = user::<u64>(dtv.wrapping_add(access.dtv_len_at as i64 as u64)) else {
        return Slot::Unreadable;
    };
    // A module loaded after the thread last grew its DTV.
    if access.module > len {
        return Slot::NoBlock;
    }
    let entry = dtv.wrapping_add(access.module.wrapping_mul(u64::from(access.dtv_stride)));
    match user::<u64>(entry) {
        None => Slot::Unreadable,
        Some(0 | DTV_UNALLOCATED) => Slot::NoBlock,
        Some(block) => Slot::At(block.wrapping_add(access.offset as u64)),
    }
}

/// A `T` at a user address of the current process; `None` when it is not mapped or not present
/// (the helper does not fault pages in).
#[inline(always)]
fn user<T>(address: u64) -> Option<T> {
    // SAFETY: the helper checks the address and fails cleanly.
    unsafe { bpf_probe_read_user(address as *const T) }.ok()
}

/// The process is another program now (an exec): where its variable was says nothing of the new
/// one, which user space looks at again when the new program first calls.
#[inline(always)]
pub fn forget(tgid: u32) {
    // A lookup takes no lock; most exec'ing processes never exported the symbol.
    // SAFETY: only the presence is used.
    if unsafe { THREAD_CONTEXT_ACCESS.get(&tgid) }.is_some() {
        let _ = THREAD_CONTEXT_ACCESS.remove(&tgid);
    }
}
