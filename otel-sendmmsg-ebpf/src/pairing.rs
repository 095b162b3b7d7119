//! Pairs a `sendmmsg` call's entry, per-message results and exit by thread, whatever hooks
//! report them, and hands one record per call to user space.
//!
//! Everything here is `#[inline(always)]`: each hook becomes one self-contained program (aya
//! rejects the BTF of BPF-to-BPF calls that bpf-linker emits for shared functions).
//!
//! Each thread's call lives in `INFLIGHT` between entry and exit. Only the thread that owns an
//! entry ever touches it (a thread runs on one CPU at a time), so no atomics are needed.

use core::ptr::write_volatile;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_current_comm},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use otel_sendmmsg_common::{filter, record_flags, CallRecord, Counter, MAX_VLEN, RECORD_VERSION};

use crate::{context, filters, msgname, socket};

/// Calls in flight, by thread id. LRU, so an entry whose exit never comes (the sidecar attached
/// mid-call) is evicted instead of leaking. User space resizes it at load time.
#[map]
static INFLIGHT: LruHashMap<u32, CallRecord> = LruHashMap::with_max_entries(4096, 0);

/// Finished calls for user space. User space resizes it at load time.
#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Where a new call's record is put together: it is too large for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<CallRecord> = PerCpuArray::with_max_entries(1, 0);

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

#[inline(always)]
fn count(counter: Counter) {
    if let Some(n) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; BPF programs are not preempted on their CPU.
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

/// Entry of a call: remember its arguments and start time for this thread.
#[inline(always)]
pub fn on_entry(args: CallArgs) {
    let (tgid, tid) = current_ids();
    if is_self(tgid) {
        // Only the self-test thread, and past the filters: it proves the hooks, not the filters.
        if SELF_TEST_TID.get(0).copied() != Some(tid) {
            return;
        }
    } else {
        let flags = filters::settings().flags;
        if flags & filter::AT_ENTRY != 0 && !filters::traced_at_entry(tgid, flags) {
            return;
        }
    }
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, valid for the whole program run.
    let rec = unsafe { &mut *rec };
    rec.version = RECORD_VERSION;
    rec.size = core::mem::size_of::<CallRecord>() as u32;
    rec.pid = tgid;
    rec.tid = tid;
    rec.start_ns = unsafe { bpf_ktime_get_ns() };
    rec.end_ns = 0;
    rec.msgvec = args.msgvec;
    rec.ret = 0;
    rec.sockfd = args.sockfd;
    rec.vlen = args.vlen;
    rec.flags = args.flags;
    // Volatile, so LLVM cannot merge this run of zero stores into a `memset` call, which would
    // be a BPF-to-BPF call that aya refuses to load (see the module's doc).
    // SAFETY: plain stores into fields of this CPU's scratch record.
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
    if context::copy_current(&mut rec.parent) {
        rec.flags_out = record_flags::PARENT;
    }
    // The rest of `detail` is filled by the per-message hook; slots past what the counters say
    // are never read.
    msgname::read_destinations(args.msgvec, args.vlen, &mut rec.detail);
    if INFLIGHT.insert(tid, &*rec, 0).is_err() {
        count(Counter::InflightInsertFailed);
    }
}

/// One message of the thread's call finished sending: `ret` is bytes sent or a negative errno.
/// `socket` names the socket the same way for every message of a call (0 when the hook cannot
/// see it), so sends the call did not make are not mistaken for its messages.
#[inline(always)]
pub fn on_message(socket: u64, ret: i64) {
    let (_, tid) = current_ids();
    let Some(rec) = INFLIGHT.get_ptr_mut(tid) else {
        return; // not inside a traced sendmmsg
    };
    // SAFETY: only this thread touches its own entry (see the module's doc).
    let rec = unsafe { &mut *rec };
    let index = rec.messages;
    let limit = if rec.vlen < MAX_VLEN { rec.vlen } else { MAX_VLEN };
    if index >= limit || (index > 0 && rec.sk != socket) {
        count(Counter::StrayMessages);
        return;
    }
    if index == 0 {
        rec.sk = socket;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = rec.detail.get_mut(index as usize) {
        // Field by field: the entry hook already wrote this slot's destination.
        slot.ret = ret as i32;
        slot.offset_ns = now.wrapping_sub(rec.start_ns);
    }
    rec.messages = index + 1;
    if ret >= 0 {
        rec.bytes += ret as u64;
    } else {
        if rec.messages_failed == 0 {
            rec.first_error = ret as i32;
            rec.first_error_index = index;
        }
        rec.messages_failed += 1;
    }
}

/// Exit of the thread's call: complete its record and hand it to user space.
#[inline(always)]
pub fn on_exit(ret: i64) {
    let (tgid, tid) = current_ids();
    let settings = filters::settings();
    let Some(rec) = INFLIGHT.get_ptr_mut(tid) else {
        // With entry filters on, every untraced call ends here: not an anomaly.
        if !is_self(tgid) && settings.flags & filter::AT_ENTRY == 0 {
            count(Counter::ExitWithoutEntry);
        }
        return;
    };
    // SAFETY: only this thread touches its own entry.
    let rec = unsafe { &mut *rec };
    rec.end_ns = unsafe { bpf_ktime_get_ns() };
    rec.ret = ret;
    // A kernel address: it never leaves the kernel.
    rec.sk = 0;
    // SAFETY: a global the loader overwrites; volatile keeps the compiler from folding it.
    if unsafe { core::ptr::read_volatile(&SIZES_AT_EXIT) } != 0 && ret > 0 {
        let (read, bytes) = msgname::read_sent_lengths(rec.msgvec, ret as u32, &mut rec.detail);
        rec.messages = read;
        rec.bytes = bytes;
        rec.flags_out |= record_flags::SIZES_FROM_MSG_LEN;
    }
    if !is_self(tgid) && !filters::kept_at_exit(rec, &settings) {
        count(Counter::FilteredAtExit);
    } else {
        let _ = socket::read_socket(rec.sockfd, &mut rec.socket);
        // One copy, map value -> ring buffer. The self-test waits on its records: they always
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
        // SAFETY: `len` <= size_of::<CallRecord>(): the bytes are all inside the map value.
        let wire = unsafe { core::slice::from_raw_parts((rec as *const CallRecord).cast::<u8>(), len) };
        if RECORDS.output::<[u8]>(wire, flags).is_err() {
            count(Counter::RingBufferFull);
        }
    }
    let _ = INFLIGHT.remove(tid);
}
