//! Records shared by the BPF programs (which write them) and the sidecar (which reads them).
//!
//! Everything here is `#[repr(C)]` with explicit padding, so both sides agree on the layout
//! byte for byte; the sizes are checked at compile time below.
#![cfg_attr(target_arch = "bpf", no_std)]

/// Bumped whenever [`CallRecord`]'s layout changes, so a sidecar never misreads records from a
/// BPF object of another layout.
pub const RECORD_VERSION: u32 = 1;

/// How many messages of one call get their own result and time in a record.
///
/// Batched senders commonly use 32 to 64 messages per call (QUIC stacks and DNS servers batch up
/// to 64), so 64 covers a whole typical batch; beyond it, the counters still cover every message.
/// 64 slots keep a record at about 1.1 KiB, so a 4 MiB ring buffer holds ~3,600 calls.
pub const MAX_MESSAGE_DETAIL: usize = 64;

/// The kernel clamps `vlen` to `UIO_MAXIOV` (1024), so no call has more messages than this.
pub const MAX_VLEN: u32 = 1024;

/// The result of one message of a call, as the per-message hook saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageResult {
    /// Bytes sent (>= 0) or a negative errno.
    pub ret: i32,
    pub _pad: u32,
    /// When the message's send returned, in ns since the call's entry.
    pub offset_ns: u64,
}

/// One `sendmmsg` call, from entry to exit.
///
/// The BPF side keeps one of these per thread while the call is in flight and submits it to the
/// ring buffer at exit. Invariant: `version` and `size` stay the first two fields, whatever else
/// changes: the decoder checks them before it trusts anything else.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallRecord {
    /// [`RECORD_VERSION`] of the BPF object that wrote this record.
    pub version: u32,
    /// `size_of::<CallRecord>()` as the BPF object saw it.
    pub size: u32,
    /// Thread group id (the process id user space sees).
    pub pid: u32,
    /// Kernel task id (the thread id user space sees).
    pub tid: u32,
    /// Entry and exit times, `CLOCK_MONOTONIC` ns (`bpf_ktime_get_ns`).
    pub start_ns: u64,
    pub end_ns: u64,
    /// The caller's `msgvec` pointer, as passed.
    pub msgvec: u64,
    /// The syscall's return value: messages sent, or a negative errno.
    pub ret: i64,
    pub sockfd: i32,
    /// `vlen` as passed (before the kernel clamps it to [`MAX_VLEN`]).
    pub vlen: u32,
    pub flags: u32,
    /// Messages the per-message hook saw (at most [`MAX_VLEN`]).
    pub messages: u32,
    /// Messages among them whose send failed.
    pub messages_failed: u32,
    /// The first failed message's negative errno (0 when none failed) and its index.
    pub first_error: i32,
    pub first_error_index: u32,
    pub _pad: u32,
    /// Bytes sent by all successful messages.
    pub bytes: u64,
    /// Kernel socket address of the first message, to tell the call's messages from stray sends
    /// on the same thread. Kernel-side only: the exit hook zeroes it before submitting.
    pub sk: u64,
    /// The thread's `comm` at entry, NUL-padded.
    pub comm: [u8; 16],
    /// Results of the first `min(messages, MAX_MESSAGE_DETAIL)` messages; the rest is garbage.
    pub detail: [MessageResult; MAX_MESSAGE_DETAIL],
}

impl CallRecord {
    /// How many entries of [`CallRecord::detail`] are valid.
    pub fn detail_len(&self) -> usize {
        let n = self.messages as usize;
        if n < MAX_MESSAGE_DETAIL {
            n
        } else {
            MAX_MESSAGE_DETAIL
        }
    }
}

/// Indexes of the BPF side's loss and anomaly counters (a per-CPU array of `u64`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A finished call found the ring buffer full; its record was dropped.
    RingBufferFull = 0,
    /// The in-flight map refused a new call (its record will be missing).
    InflightInsertFailed = 1,
    /// A per-message hit on a thread with a call in flight that was not one of the call's
    /// messages (beyond `vlen`, or another socket); it was ignored.
    StrayMessages = 2,
    /// An exit with no entry in flight (the sidecar attached mid-call, or the LRU map evicted it).
    ExitWithoutEntry = 3,
}

impl Counter {
    pub const ALL: [Counter; 4] = [
        Counter::RingBufferFull,
        Counter::InflightInsertFailed,
        Counter::StrayMessages,
        Counter::ExitWithoutEntry,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub fn name(self) -> &'static str {
        match self {
            Counter::RingBufferFull => "ring_buffer_full",
            Counter::InflightInsertFailed => "inflight_insert_failed",
            Counter::StrayMessages => "stray_messages",
            Counter::ExitWithoutEntry => "exit_without_entry",
        }
    }
}

// The layout is part of the kernel/user contract: catch accidental changes at compile time.
const _: () = assert!(core::mem::size_of::<MessageResult>() == 16);
const _: () = assert!(core::mem::size_of::<CallRecord>() == 112 + 16 * MAX_MESSAGE_DETAIL);
const _: () = assert!(core::mem::align_of::<CallRecord>() == 8);
const _: () = assert!(core::mem::offset_of!(CallRecord, detail) == 112);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data: `#[repr(C)]`, only integers and arrays of integers, no padding
    // that is not an explicit field.
    unsafe impl aya::Pod for super::CallRecord {}
    unsafe impl aya::Pod for super::MessageResult {}
}
