//! Every traced call's duration and message outcomes, counted in the kernel by series (process
//! and outcome), whether or not the call becomes a span. User space reads the per-CPU values,
//! sums them and exports them as OTLP metrics.
//!
//! The duration histogram's buckets are a sorted table of upper bounds in nanoseconds that user
//! space writes at load: an explicit histogram's own bounds, or the bounds of an exponential
//! histogram at [`EXPONENTIAL_SCALE`]. The kernel only finds how many bounds lie below a
//! duration, so one program serves both.

use crate::{CallRecord, Destination, SocketInfo, MAX_VLEN};

/// Bounds of the duration table. An exponential histogram at scale 2 (buckets 19% wide) from
/// [`LOWEST_EXPONENTIAL_INDEX`] covers 2^-24 s (60 ns) to 2^16 s (18 h) with this many.
pub const MAX_BOUNDS: usize = 160;
/// One bucket per bound and one above the last.
pub const BUCKETS: usize = MAX_BOUNDS + 1;
/// The scale of the exponential histogram the kernel counts into: the base is 2^(2^-scale).
pub const EXPONENTIAL_SCALE: i32 = 2;
/// The exponential index of the table's first bucket above its first bound: bound `i` is
/// `2^((LOWEST_EXPONENTIAL_INDEX + i) / 4)` seconds.
pub const LOWEST_EXPONENTIAL_INDEX: i32 = -24 * (1 << EXPONENTIAL_SCALE);

/// Settings of the call metrics, set by user space at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricSettings {
    /// Bits of [`metric_flags`].
    pub flags: u32,
    /// How many entries of the bounds table are used (at most [`MAX_BOUNDS`]).
    pub bounds: u32,
}

pub mod metric_flags {
    /// Count every call into the series map.
    pub const ON: u32 = 1;
    /// No call becomes a span: the exit hook submits no record (metrics only).
    pub const SPANS_OFF: u32 = 2;
    /// Series are also told apart by the call's peer address (cardinality: opt-in).
    pub const BY_PEER: u32 = 4;
}

impl MetricSettings {
    /// Whether a traced call is kept between entry and exit as a [`CountedCall`], not a
    /// [`CallRecord`]: when the metrics count it and no call becomes a span, unless the series
    /// need its first destination (by peer), which only the record's detail holds.
    #[inline(always)]
    pub fn counts_only(&self) -> bool {
        self.flags & (metric_flags::ON | metric_flags::SPANS_OFF | metric_flags::BY_PEER)
            == metric_flags::ON | metric_flags::SPANS_OFF
    }
}

/// A call between its entry and exit as the kernel keeps it: a span's [`CallRecord`], or a
/// [`CountedCall`] that only the call metrics count. What the series rule ([`fill_series`]),
/// the message outcomes and the sweep of calls whose exit never came read of either.
pub trait PairedCall {
    fn pid(&self) -> u32;
    fn process_start_ns(&self) -> u64;
    fn start_ns(&self) -> u64;
    /// 0 until its exit ran.
    fn end_ns(&self) -> u64;
    /// The syscall's return: messages sent, or a negative errno.
    fn ret(&self) -> i64;
    fn vlen(&self) -> u32;
    fn messages_failed(&self) -> u32;
    /// The first failed message's negative errno, 0 when none failed.
    fn first_error(&self) -> i32;
    fn bytes(&self) -> u64;
    /// Read at exit; family 0 when unknown.
    fn socket(&self) -> &SocketInfo;
    /// The first message's destination as the entry hook read it, when it did.
    fn first_destination(&self) -> Option<&Destination>;
}

/// The accessors of the fields both kinds of call have, under the same names.
macro_rules! paired_call_fields {
    () => {
        #[inline(always)]
        fn pid(&self) -> u32 {
            self.pid
        }
        #[inline(always)]
        fn process_start_ns(&self) -> u64 {
            self.process_start_ns
        }
        #[inline(always)]
        fn start_ns(&self) -> u64 {
            self.start_ns
        }
        #[inline(always)]
        fn end_ns(&self) -> u64 {
            self.end_ns
        }
        #[inline(always)]
        fn ret(&self) -> i64 {
            self.ret
        }
        #[inline(always)]
        fn vlen(&self) -> u32 {
            self.vlen
        }
        #[inline(always)]
        fn messages_failed(&self) -> u32 {
            self.messages_failed
        }
        #[inline(always)]
        fn first_error(&self) -> i32 {
            self.first_error
        }
        #[inline(always)]
        fn bytes(&self) -> u64 {
            self.bytes
        }
        #[inline(always)]
        fn socket(&self) -> &SocketInfo {
            &self.socket
        }
    };
}

impl PairedCall for CallRecord {
    paired_call_fields!();

    #[inline(always)]
    fn first_destination(&self) -> Option<&Destination> {
        (self.vlen > 0).then_some(&self.detail[0].dest)
    }
}

/// A call that only the call metrics count ([`MetricSettings::counts_only`]), between its entry
/// and exit: what its series and counts need, 136 bytes where a [`CallRecord`] is 2.7 KiB to
/// copy into the in-flight map and out again. Fields as the record's of the same name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountedCall {
    pub pid: u32,
    pub sockfd: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub process_start_ns: u64,
    pub msgvec: u64,
    pub ret: i64,
    pub vlen: u32,
    pub messages: u32,
    pub messages_failed: u32,
    pub first_error: i32,
    pub first_error_index: u32,
    pub _pad: u32,
    pub bytes: u64,
    /// Kernel-side only, as the record's.
    pub sk: u64,
    pub socket: SocketInfo,
}

impl PairedCall for CountedCall {
    paired_call_fields!();

    /// None: a counted call's series is never by peer ([`MetricSettings::counts_only`]).
    #[inline(always)]
    fn first_destination(&self) -> Option<&Destination> {
        None
    }
}

/// One series: a process (told from a later one with its pid by its start), the call's outcome
/// and its socket's kind, and with [`metric_flags::BY_PEER`] its peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub pid: u32,
    /// 0 when the call and every message it sent succeeded; else the negative errno of the call
    /// (when it failed) or of its first failed message.
    pub error: i32,
    /// As in [`CallRecord::process_start_ns`].
    pub process_start_ns: u64,
    /// The socket's family, type and protocol as [`SocketInfo`] has them (0: unknown).
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    /// The peer's port, network order, and address, with [`metric_flags::BY_PEER`] only: the
    /// socket's peer when it is connected, else the first message's destination.
    pub peer_port_be: u16,
    pub peer_addr: [u8; 16],
}

/// What a series counted, on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesValue {
    pub calls: u64,
    /// Sum, least and most of the calls' durations, ns (`min_ns` is `u64::MAX` before a call).
    pub sum_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    /// Messages sent (the call's return), failed (the per-message hook saw their error) and
    /// never tried (`vlen` as the kernel clamps it, less the other two).
    pub sent: u64,
    pub failed: u64,
    pub unsent: u64,
    /// Bytes the sent messages carried, as the per-message hook (or `msg_len`) says.
    pub bytes: u64,
    /// Calls by duration: bucket `i` counts those above bound `i - 1` and at most bound `i`.
    pub buckets: [u64; BUCKETS],
}

impl Default for SeriesValue {
    fn default() -> SeriesValue {
        SeriesValue {
            calls: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            sent: 0,
            failed: 0,
            unsent: 0,
            bytes: 0,
            buckets: [0; BUCKETS],
        }
    }
}

impl SeriesValue {
    /// Adds another CPU's (or interval's) counts.
    pub fn add(&mut self, other: &SeriesValue) {
        if other.calls == 0 {
            // A CPU the series never ran on: its zeroes are no duration.
            return;
        }
        self.calls += other.calls;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.sent += other.sent;
        self.failed += other.failed;
        self.unsent += other.unsent;
        self.bytes += other.bytes;
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine += *theirs;
        }
    }
}

/// The series a finished call counts in: one rule for the kernel, which counts it, and user
/// space, which hangs the call's span on it as an exemplar.
pub fn series_of(rec: &impl PairedCall, by_peer: bool) -> SeriesKey {
    let mut key = SeriesKey::default();
    // SAFETY: a valid key to write.
    unsafe { fill_series(rec, by_peer, &mut key) };
    key
}

/// [`series_of`], written into `key` field by field: every byte of it (the BPF side's key is
/// on the stack, which the verifier wants written before a map reads it), and with volatile
/// stores, which the compiler cannot merge into the `memset`/`memcpy` calls the BPF loader
/// refuses.
///
/// # Safety
/// `key` must be valid for writes of a `SeriesKey` (it may be uninitialized).
#[inline(always)]
pub unsafe fn fill_series(rec: &impl PairedCall, by_peer: bool, key: *mut SeriesKey) {
    let error = if rec.ret() < 0 { rec.ret() as i32 } else { rec.first_error() };
    let socket: &SocketInfo = rec.socket();
    let known = socket.family != 0;
    let (family, sock_type, protocol) =
        if known { (socket.family, socket.sock_type, socket.protocol) } else { (0, 0, 0) };
    let (port_be, addr) = if !by_peer || !known {
        (0, [0, 0])
    } else if socket.peer_port_be != 0 {
        (socket.peer_port_be, address(socket.family, &socket.peer_addr))
    } else {
        match rec.first_destination() {
            Some(dest) if dest.status == crate::name_status::READ => {
                (dest.port_be, address(dest.family, &dest.addr))
            }
            _ => (0, [0, 0]),
        }
    };
    use core::ptr::{addr_of_mut, write_volatile};
    // SAFETY: stores to the fields of a key the caller vouches for; `peer_addr` is 8-aligned
    // (offset 24 of an 8-aligned struct) and 16 bytes long.
    unsafe {
        write_volatile(addr_of_mut!((*key).pid), rec.pid());
        write_volatile(addr_of_mut!((*key).error), error);
        write_volatile(addr_of_mut!((*key).process_start_ns), rec.process_start_ns());
        write_volatile(addr_of_mut!((*key).family), family);
        write_volatile(addr_of_mut!((*key).sock_type), sock_type);
        write_volatile(addr_of_mut!((*key).protocol), protocol);
        write_volatile(addr_of_mut!((*key).peer_port_be), port_be);
        let halves = addr_of_mut!((*key).peer_addr).cast::<u64>();
        write_volatile(halves, addr[0]);
        write_volatile(halves.add(1), addr[1]);
    }
}

/// The address bytes that mean something for `family`, as two halves in memory order, the
/// rest zero: an IPv4 address fills only the first 4 bytes of its field, and the others are
/// not cleared.
#[inline(always)]
fn address(family: u16, addr: &[u8; 16]) -> [u64; 2] {
    let ptr = addr.as_ptr();
    // SAFETY: reads within the 16 bytes of `addr`.
    unsafe {
        match family {
            // Zero-extended, a little-endian u32's bytes stay first.
            AF_INET => [u64::from(core::ptr::read_unaligned(ptr.cast::<u32>())), 0],
            AF_INET6 => [
                core::ptr::read_unaligned(ptr.cast::<u64>()),
                core::ptr::read_unaligned(ptr.add(8).cast::<u64>()),
            ],
            _ => [0, 0],
        }
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The messages of a finished call: (sent, failed, never tried).
#[inline(always)]
pub fn message_outcomes(rec: &impl PairedCall) -> (u64, u64, u64) {
    let asked = if rec.vlen() < MAX_VLEN { rec.vlen() } else { MAX_VLEN } as u64;
    let sent = if rec.ret() > 0 { rec.ret() as u64 } else { 0 };
    let failed = rec.messages_failed() as u64;
    (sent, failed, asked.saturating_sub(sent + failed))
}

/// The bucket of `duration_ns` in a sorted table of bounds: how many bounds lie below it. A
/// bounded binary search, which the verifier can follow.
#[inline(always)]
pub fn bucket_of(duration_ns: u64, bounds: &[u64; MAX_BOUNDS], used: u32) -> usize {
    let mut low = 0usize;
    let mut high = if (used as usize) < MAX_BOUNDS { used as usize } else { MAX_BOUNDS };
    // 2^8 > MAX_BOUNDS: eight halvings always end the search.
    let mut step = 0;
    while step < 8 {
        if low < high {
            let middle = (low + high) / 2;
            let bound = if middle < MAX_BOUNDS { bounds[middle] } else { u64::MAX };
            if bound < duration_ns {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        step += 1;
    }
    low
}

const _: () = assert!(core::mem::size_of::<SeriesKey>() == 40);
const _: () = assert!(core::mem::size_of::<SeriesValue>() == 64 + 8 * BUCKETS);
const _: () = assert!(core::mem::size_of::<MetricSettings>() == 8);
const _: () = assert!(core::mem::size_of::<CountedCall>() == 136);
const _: () = assert!(core::mem::offset_of!(CountedCall, socket) % 8 == 0);
const _: () = assert!(1 << 8 > MAX_BOUNDS);
const _: () = assert!(cfg!(target_endian = "little"), "address() lays an IPv4 address out little-endian");

#[cfg(test)]
mod tests {
    use super::*;

    fn table(bounds: &[u64]) -> [u64; MAX_BOUNDS] {
        let mut table = [0; MAX_BOUNDS];
        table[..bounds.len()].copy_from_slice(bounds);
        table
    }

    #[test]
    fn a_duration_lands_above_the_bounds_below_it_and_at_most_its_own() {
        let bounds = table(&[10, 20, 30]);
        let expect = [(0, 0), (10, 0), (11, 1), (20, 1), (21, 2), (30, 2), (31, 3), (u64::MAX, 3)];
        for (duration, bucket) in expect {
            assert_eq!(bucket_of(duration, &bounds, 3), bucket, "{duration} ns");
        }
    }

    #[test]
    fn the_search_finds_every_bucket_of_a_full_table() {
        let all: Vec<u64> = (1..=MAX_BOUNDS as u64).map(|i| i * 100).collect();
        let bounds = table(&all);
        for (i, bound) in all.iter().enumerate() {
            assert_eq!(bucket_of(*bound, &bounds, MAX_BOUNDS as u32), i);
            assert_eq!(bucket_of(bound + 1, &bounds, MAX_BOUNDS as u32), i + 1);
        }
        // A table's unused tail is never searched.
        assert_eq!(bucket_of(50, &table(&[10]), 1), 1);
    }
}
