//! Pairs a `sendmmsg` call's entry, per-message results and exit by thread, whatever hooks
//! report them, and hands one record per call to user space.
//!
//! Everything here is `#[inline(always)]`: each hook becomes one self-contained program (aya
//! rejects the BTF of BPF-to-BPF calls that bpf-linker emits for shared functions).
//!
//! Each thread's call lives in the store of calls in flight ([`inflight`]: the thread's
//! task-local storage, or a hash map keyed by thread id on kernels without it) between entry and
//! exit, as a [`CallRecord`] (or a [`CountedCall`], a few fields instead of a whole record, when
//! the call metrics alone count it). Only the thread that owns a call ever touches it (a thread
//! runs on one CPU at a time), so no atomics are needed. Every call whose record cannot be made
//! is counted once, where it is lost: refused at entry (`inflight_full`), its exit missed
//! (`exit_missed`, when the thread's next call finds it still in flight, or the thread exits
//! with it), begun before the entry hook was attached (`exit_without_entry`).

use core::ptr::write_volatile;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_current_comm},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use otel_sendmmsg_common::{
    call_metrics::{metric_flags, CountedCall},
    filter, record_flags, CallRecord, Counter, MessageResult, TraceContext, MAX_MESSAGE_DETAIL, MAX_VLEN,
    RECORD_VERSION,
};

use crate::{
    call_metrics, context, filters, identity,
    inflight::{self, InFlight},
    msgname,
    socket::{self, MessageSocket},
    task,
    thread_context::{self, Published},
};

/// `PID_MAX_LIMIT` on 64-bit kernels: no thread id reaches it, whatever `pid_max` becomes.
const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// Why a thread has no call in flight, one byte per thread id, eight to a
/// value (4 MiB): so an exit that finds no entry knows whether its call was left out on
/// purpose ([`untraced::FILTERED`]), refused and already counted ([`untraced::REFUSED`]), or
/// never seen at all (0: it began before the entry hook was attached). Threads on other CPUs
/// write other bytes of a value with single-byte stores: no update is lost.
#[map]
static UNTRACED: Array<[u8; 8]> = Array::with_max_entries(PID_MAX_LIMIT / 8, 0);

mod untraced {
    /// An entry filter or the sampler left the call out.
    pub const FILTERED: u8 = 1;
    /// The store of calls in flight refused it; counted as `inflight_full` at entry.
    pub const REFUSED: u8 = 2;
}

/// Finished calls for user space. User space resizes it at load time.
#[map]
pub(crate) static RECORDS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Losses and anomalies, indexed by `Counter`; user space sums the CPUs.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// The sidecar's own process id, set at load time, so the sidecar never traces itself...
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;

/// Pending bytes in `RECORDS` above which a record wakes the reader; below, records are
/// submitted silently and the reader drains them on its timer. A wake-up per record costs
/// ~1 us of the sender's time; batching them is ~20x cheaper. Set by user space at load.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// 1: no per-message hook is attached; the exit hook reads each sent message's `msg_len` from
/// the caller's `msgvec` instead (sizes only, the cheapest detail). Set by user space at load.
#[unsafe(no_mangle)]
static SIZES_AT_EXIT: u32 = 0;

/// ...except the one thread whose id user space puts here while it proves the hooks work with
/// a self-test `sendmmsg` (0: none).
#[map]
static SELF_TEST_TID: Array<u32> = Array::with_max_entries(1, 0);

/// The arguments of a `sendmmsg` call as its entry hook saw them.
pub struct CallArgs {
    pub sockfd: i32,
    pub msgvec: u64,
    pub vlen: u32,
    pub flags: u32,
}

/// The thread's byte of `UNTRACED`.
#[inline(always)]
fn untraced_slot(tid: u32) -> Option<*mut u8> {
    let word = UNTRACED.get_ptr_mut(tid / 8)?;
    // SAFETY: `tid % 8` is inside the 8-byte value.
    Some(unsafe { word.cast::<u8>().add((tid % 8) as usize) })
}

#[inline(always)]
fn set_untraced(tid: u32, why: u8) {
    if let Some(slot) = untraced_slot(tid) {
        // SAFETY: a byte of a map value; volatile: one byte store, never widened.
        unsafe { core::ptr::write_volatile(slot, why) };
    }
}

/// Reads the thread's reason and clears it.
#[inline(always)]
fn take_untraced(tid: u32) -> u8 {
    let Some(slot) = untraced_slot(tid) else {
        return 0;
    };
    // SAFETY: as in `set_untraced`.
    let why = unsafe { core::ptr::read_volatile(slot) };
    if why != 0 {
        unsafe { core::ptr::write_volatile(slot, 0) };
    }
    why
}

/// The call could not be given an entry: counted here, and marked so its exit is not counted
/// again.
#[inline(always)]
fn refuse(tid: u32) {
    count(Counter::InflightFull);
    set_untraced(tid, untraced::REFUSED);
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(n) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's slot. Tracepoint, kprobe and raw tracepoint programs run with
        // preemption off, so nothing else touches it between the load and the store. (fentry
        // and fexit ones run with only migration off: on a fully preemptible kernel an increment
        // could be lost there; the BPF target's `core` has no atomic add to use instead.)
        unsafe { *n += 1 };
    }
}

/// Splits `bpf_get_current_pid_tgid` into (tgid, tid).
#[inline(always)]
fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

#[inline(always)]
fn is_self(tgid: u32) -> bool {
    // SAFETY: a global the loader overwrites; volatile keeps the compiler from folding it.
    tgid == unsafe { core::ptr::read_volatile(&SELF_TGID) }
}

/// The calling thread's parent span, as the sampler sees it.
enum Parent {
    /// A span, with its sampled flag.
    Span(bool),
    None,
}

/// Fills `dst` with the calling thread's active span. Precedence as OTEP 4947 says: a valid
/// record its SDK published is authoritative (with its sampled flag); the shared map (OBI's, no
/// flags: an entry there is a span someone traces) only stands in when there is none.
#[inline(always)]
fn parent(tgid: u32, start: u64, dst: &mut TraceContext) -> Parent {
    match thread_context::read_current(tgid, start, dst) {
        Published::Span(sampled) => Parent::Span(sampled),
        Published::Nothing if context::copy_current(dst) => Parent::Span(true),
        Published::Nothing => Parent::None,
    }
}

/// Adds a message's result to its call's totals. `$call` is a `&mut CallRecord` or a
/// `&mut CountedCall`, which name these fields alike. Evaluates to the message's index, or None
/// when it cannot be the call's (counted as a stray message).
macro_rules! add_message {
    ($call:expr, $socket:expr, $ret:expr) => {{
        let call = $call;
        let (socket, ret): (u64, i64) = ($socket, $ret);
        let index = call.messages;
        let limit = if call.vlen < MAX_VLEN { call.vlen } else { MAX_VLEN };
        if index >= limit || (index > 0 && call.sk != socket) {
            count(Counter::StrayMessages);
            None
        } else {
            if index == 0 {
                call.sk = socket;
            }
            call.messages = index + 1;
            if ret >= 0 {
                call.bytes += ret as u64;
            } else {
                if call.messages_failed == 0 {
                    call.first_error = ret as i32;
                    call.first_error_index = index;
                }
                call.messages_failed += 1;
            }
            Some(index)
        }
    }};
}

/// Makes the call put together in `call` (from [`InFlight::slot`]) the thread's call in flight,
/// or counts it as refused.
#[inline(always)]
fn begin<V: InFlight>(tid: u32, call: *mut V) {
    if V::begin(tid, call) {
        // A mark left by an earlier call whose exit was missed: not this call's.
        let _ = take_untraced(tid);
    } else {
        refuse(tid);
    }
}

/// Entry of a call that only the call metrics count: its few fields, a [`CountedCall`].
#[inline(always)]
fn begin_counted(tgid: u32, tid: u32, process_start: u64, args: &CallArgs) {
    let Some(slot) = CountedCall::slot(tid) else {
        refuse(tid);
        return;
    };
    // SAFETY: the thread's slot, valid for the whole program run (see `InFlight::slot`).
    let call = unsafe { &mut *slot };
    call.pid = tgid;
    call.sockfd = args.sockfd;
    call.start_ns = unsafe { bpf_ktime_get_ns() };
    call.process_start_ns = process_start;
    call.msgvec = args.msgvec;
    call.vlen = args.vlen;
    // Volatile, as in `on_entry`; the socket is written at exit.
    // SAFETY: plain stores into fields of this CPU's scratch state.
    unsafe {
        write_volatile(&mut call.end_ns, 0);
        write_volatile(&mut call.ret, 0);
        write_volatile(&mut call.messages, 0);
        write_volatile(&mut call.messages_failed, 0);
        write_volatile(&mut call.first_error, 0);
        write_volatile(&mut call.first_error_index, 0);
        write_volatile(&mut call.bytes, 0);
        write_volatile(&mut call.sk, 0);
    }
    begin(tid, slot);
}

/// With no per-message hook attached, the sizes of the `ret` messages sent, from their
/// `msg_len`: how many were read and their sum, each also in `detail`.
#[inline(always)]
fn sizes_at_exit(
    msgvec: u64,
    ret: i64,
    detail: &mut [MessageResult; MAX_MESSAGE_DETAIL],
) -> Option<(u32, u64)> {
    // SAFETY: a global the loader overwrites; volatile keeps the compiler from folding it.
    if unsafe { core::ptr::read_volatile(&SIZES_AT_EXIT) } == 0 || ret <= 0 {
        return None;
    }
    Some(msgname::read_sent_lengths(msgvec, ret as u32, detail))
}

/// Entry of a call: remember its arguments and start time for this thread.
#[inline(always)]
pub fn on_entry(args: CallArgs) {
    let (tgid, tid) = current_ids();
    if is_self(tgid) {
        // Only the self-test thread, and past the filters: it proves the hooks, not the filters.
        if SELF_TEST_TID.get(0).copied() != Some(tid) {
            return;
        }
    }
    let own = is_self(tgid);
    // Once per call, for the thread context's and the identity's checks and for the record.
    let start = task::process_start_ns();
    let metrics = call_metrics::settings();
    let counted = metrics.flags & metric_flags::ON != 0;
    let flags = filters::settings().flags;
    if !own && flags & filter::PROCESS != 0 && !filters::process_traced(tgid, flags) {
        set_untraced(tid, untraced::FILTERED);
        return;
    }
    if !own && metrics.counts_only() {
        // Metrics only: no span, so no parent to look for and no sampler to ask. The identity
        // first, so user space knows the process before its first counts.
        identity::capture_once(tgid, start);
        begin_counted(tgid, tid, start, &args);
        return;
    }
    let Some(slot) = CallRecord::slot(tid) else {
        refuse(tid);
        return;
    };
    // SAFETY: the thread's slot, valid for the whole program run (see `InFlight::slot`).
    let rec = unsafe { &mut *slot };
    // A call the sampler leaves out is still paired when the metrics count it: it becomes no
    // span (`NO_SPAN`), only counts.
    let mut no_span = false;
    let has_parent = if own {
        false
    } else {
        // The sampler (OTEL_TRACES_SAMPLER), here so that a call left out costs no record.
        let has_parent = if metrics.flags & metric_flags::SPANS_OFF != 0 {
            // Metrics only: no span, so no parent to look for and no sampler to ask.
            no_span = true;
            false
        } else {
            match parent(tgid, start, &mut rec.parent) {
                Parent::Span(sampled) => {
                    if !filters::sampled_with_parent(flags, sampled, &rec.parent.trace_id) {
                        // Left out by the parent's own flag (a trace-id ratio is the sampler's draw).
                        if flags & filter::TRACE_ID_RATIO == 0 {
                            count(Counter::ParentNotSampled);
                        }
                        if !counted {
                            set_untraced(tid, untraced::FILTERED);
                            return;
                        }
                        no_span = true;
                    }
                    true
                }
                Parent::None => {
                    if !filters::sampled_as_root(flags) {
                        if !counted {
                            set_untraced(tid, untraced::FILTERED);
                            return;
                        }
                        no_span = true;
                    }
                    false
                }
            }
        };
        // Before the call's own record, so user space knows the process before its first span
        // (or its first counts).
        identity::capture_once(tgid, start);
        has_parent
    };
    rec.version = RECORD_VERSION;
    rec.size = core::mem::size_of::<CallRecord>() as u32;
    rec.pid = tgid;
    rec.tid = tid;
    rec.start_ns = unsafe { bpf_ktime_get_ns() };
    rec.end_ns = 0;
    rec.process_start_ns = start;
    rec.msgvec = args.msgvec;
    rec.ret = 0;
    rec.sockfd = args.sockfd;
    rec.vlen = args.vlen;
    rec.flags = args.flags;
    // Volatile, so LLVM cannot merge this run of zero stores into a `memset` call, which would
    // be a BPF-to-BPF call that aya refuses to load (see the module's doc).
    // SAFETY: plain stores into fields of the thread's slot.
    unsafe {
        write_volatile(&mut rec.messages, 0);
        write_volatile(&mut rec.messages_failed, 0);
        write_volatile(&mut rec.first_error, 0);
        write_volatile(&mut rec.first_error_index, 0);
        write_volatile(&mut rec.flags_out, 0);
        write_volatile(&mut rec.bytes, 0);
        write_volatile(&mut rec.sk, 0);
    }
    // Straight into the record: a stack copy would cost a `memset` and a `memcpy`. On failure
    // the helper zeroes the buffer, which reads as an empty name.
    // SAFETY: `comm` is 16 writable bytes, TASK_COMM_LEN.
    unsafe { bpf_get_current_comm(rec.comm.as_mut_ptr().cast(), rec.comm.len() as u32) };
    if has_parent && !no_span {
        rec.flags_out = record_flags::PARENT;
    }
    if no_span {
        rec.flags_out = record_flags::NO_SPAN;
    }
    // The rest of `detail` is filled by the per-message hook; slots past what the counters say
    // are never read. A call that is no span needs its first destination only for a series by
    // peer.
    if !no_span || metrics.flags & metric_flags::BY_PEER != 0 {
        msgname::read_destinations(args.msgvec, args.vlen, &mut rec.detail);
    }
    begin(tid, slot);
}

/// One message of the thread's call finished sending: `ret` is bytes sent or a negative errno.
/// `socket` names the socket the same way for every message of a call (0 when the hook cannot
/// see it), so sends the call did not make are not mistaken for its messages; `kind` says what
/// it points to, which the call keeps with it (hooks mix: the exit cannot know which message
/// hook ran), so the exit can read the socket from there.
#[inline(always)]
pub fn on_message(socket: u64, kind: MessageSocket, ret: i64) {
    let socket = kind.tag(socket);
    let (_, tid) = current_ids();
    if call_metrics::settings().counts_only() {
        if let Some(call) = CountedCall::current(tid) {
            // SAFETY: only this thread touches its own call (see the module's doc).
            let _ = add_message!(unsafe { &mut *call }, socket, ret);
            return;
        }
    }
    let Some(rec) = CallRecord::current(tid) else {
        return; // not inside a traced sendmmsg
    };
    // SAFETY: only this thread touches its own call (see the module's doc).
    let rec = unsafe { &mut *rec };
    let Some(index) = add_message!(&mut *rec, socket, ret) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = rec.detail.get_mut(index as usize) {
        // Field by field: the entry hook already wrote this slot's destination.
        slot.ret = ret as i32;
        slot.offset_ns = now.wrapping_sub(rec.start_ns);
    }
}

/// Exit of the thread's call: complete its record and hand it to user space.
#[inline(always)]
pub fn on_exit(ret: i64) {
    let (tgid, tid) = current_ids();
    let metrics = call_metrics::settings();
    if metrics.counts_only() {
        if let Some(call) = CountedCall::current(tid) {
            // SAFETY: only this thread touches its own call.
            let call = unsafe { &mut *call };
            call.end_ns = unsafe { bpf_ktime_get_ns() };
            call.ret = ret;
            // The record's detail slots as scratch space: only the sum is kept.
            if let Some(scratch) = inflight::scratch_record() {
                // SAFETY: this CPU's scratch record, unused by this program otherwise.
                if let Some((read, bytes)) =
                    sizes_at_exit(call.msgvec, ret, unsafe { &mut (*scratch).detail })
                {
                    call.messages = read;
                    call.bytes = bytes;
                }
            }
            // Its kind only: a counted call's series is not by peer (`counts_only`).
            let _ = socket::read_socket(call.sockfd, call.sk, &mut call.socket, false);
            call_metrics::count_call(&*call, &metrics);
            CountedCall::end(tid);
            return;
        }
    }
    let settings = filters::settings();
    let Some(rec) = CallRecord::current(tid) else {
        // Left out at entry on purpose, or refused and counted then: only a call the entry hook
        // never saw (begun before it was attached) is counted here, if it is of a process the
        // filters trace (the sampler cannot be asked after the fact: such a call counts).
        if take_untraced(tid) == 0
            && !is_self(tgid)
            && (settings.flags & filter::PROCESS == 0 || filters::process_traced(tgid, settings.flags))
        {
            count(Counter::ExitWithoutEntry);
        }
        return;
    };
    // SAFETY: only this thread touches its own call.
    let rec = unsafe { &mut *rec };
    rec.end_ns = unsafe { bpf_ktime_get_ns() };
    rec.ret = ret;
    // A kernel address: it never leaves the kernel.
    let sk = rec.sk;
    rec.sk = 0;
    if let Some((read, bytes)) = sizes_at_exit(rec.msgvec, ret, &mut rec.detail) {
        rec.messages = read;
        rec.bytes = bytes;
        rec.flags_out |= record_flags::SIZES_FROM_MSG_LEN;
    }
    let counted = metrics.flags & metric_flags::ON != 0 && !is_self(tgid);
    let span = rec.flags_out & record_flags::NO_SPAN == 0;
    let kept = span && (is_self(tgid) || filters::kept_at_exit(rec, &settings));
    if counted || kept {
        let addresses = kept || metrics.flags & metric_flags::BY_PEER != 0;
        let _ = socket::read_socket(rec.sockfd, sk, &mut rec.socket, addresses);
    }
    // Every call, whatever becomes of its span.
    if counted {
        call_metrics::count_call(rec, &metrics);
    }
    if span && !kept {
        count(Counter::FilteredAtExit);
    } else if kept {
        // One copy, the thread's call -> ring buffer. The self-test waits on its records: they always
        // wake the reader.
        // SAFETY: a global the loader overwrites; volatile keeps the compiler from folding it.
        let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
        let flags = if is_self(tgid) || RECORDS.query(BPF_RB_AVAIL_DATA.into()) >= threshold {
            u64::from(BPF_RB_FORCE_WAKEUP)
        } else {
            u64::from(BPF_RB_NO_WAKEUP)
        };
        // Only the slots the call can have used; the verifier sees the length bounded by the
        // record's size.
        let len = rec.wire_len();
        // SAFETY: `len` <= size_of::<CallRecord>(): the bytes are all inside the call's value.
        let wire = unsafe { core::slice::from_raw_parts((rec as *const CallRecord).cast::<u8>(), len) };
        if RECORDS.output::<[u8]>(wire, flags).is_err() {
            count(Counter::RingBufferFull);
        }
    }
    CallRecord::end(tid);
}
