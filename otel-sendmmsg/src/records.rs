//! Ring buffer -> typed records: decodes the bytes the BPF side submits into [`Call`]s, checking
//! everything a newer or corrupt BPF object could get wrong before trusting it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use otel_sendmmsg_common::{
    identity_flags, name_status, record_flags, CallRecord, Destination, IdentityRecord, MessageResult,
    SocketInfo, TraceContext, DETAIL_OFFSET, ENV_PAGE, ENV_WINDOW, IDENTITY_NAME_LEN,
    IDENTITY_RECORD_VERSION, MAX_VLEN, RECORD_VERSION,
};

/// One ring-buffer item: a call, or the identity of a process, sent before its first call's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Call(Call),
    Identity(Identity),
}

/// Who a process was at its first traced call (or its first after an `exec`), as the kernel
/// read it then. Everything in it is the process's to shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    /// When the process started, ns after boot, as in [`Call::process_start_ns`].
    pub process_start_ns: u64,
    /// The process's name (its thread group leader's), as `/proc/PID/stat` shows it.
    pub comm: String,
    /// The executable's file name, when it could be read.
    pub executable: Option<String>,
    /// Its cgroup v2 directory's name and its parent's, when they could be read.
    pub cgroup: Option<String>,
    pub cgroup_parent: Option<String>,
    pub cgroup_id: u64,
    /// The environment block, or as much of its start as was read.
    pub environ: Vec<u8>,
    /// `environ` is the whole block (nothing past the window, no page unreadable).
    pub environ_complete: bool,
    /// Bits of `identity_flags` as the kernel set them.
    pub flags: u32,
}

impl Identity {
    /// Something the kernel could not read: the environment past its window or a page of it,
    /// the executable, or the cgroup.
    pub fn incomplete(&self) -> bool {
        !self.environ_complete
            || self.flags & (identity_flags::EXE_UNREADABLE | identity_flags::CGROUP_UNREADABLE) != 0
    }
}

/// One `sendmmsg` call, as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub pid: u32,
    /// When that process started, ns after boot; 0 when the kernel did not say.
    pub process_start_ns: u64,
    pub tid: u32,
    /// The thread's name at entry.
    pub comm: String,
    /// Entry and exit, `CLOCK_MONOTONIC` ns.
    pub start_ns: u64,
    pub end_ns: u64,
    pub sockfd: i32,
    pub msgvec: u64,
    pub vlen: u32,
    pub flags: u32,
    /// Messages sent, or the call's negative errno.
    pub ret: i64,
    pub messages: MessageTotals,
    /// Per-message results of the first messages (see `MAX_MESSAGE_DETAIL`).
    pub detail: Vec<MessageResult>,
    /// The explicit destination of each of the first `min(vlen, MAX_MESSAGE_DETAIL)` messages.
    pub destinations: Vec<Dest>,
    /// The socket the call sent on, when the kernel's BTF let the BPF side read it.
    pub socket: Option<Socket>,
    /// The calling thread's active application span at entry, when it published one.
    pub parent: Option<TraceContext>,
    /// `detail` holds sent sizes read from `msg_len` at exit (no per-message hook ran): no
    /// errors or times, and at most the first 64 of the messages sent.
    pub sizes_only: bool,
}

/// A message's `msg_name`, as the caller gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// No `msg_name`: the connected peer.
    Peer,
    Addr(SocketAddr),
    /// The pointer could not be read.
    Unreadable,
    /// An address family other than IPv4/IPv6.
    OtherFamily(u16),
    /// `msg_namelen` negative or shorter than its family's address: the kernel refused the
    /// message (EINVAL), so it names no destination.
    BadLength,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub family: u16,
    pub protocol: u16,
    pub sock_type: u16,
    /// Bound address, for IPv4/IPv6 sockets with a local port.
    pub local: Option<SocketAddr>,
    /// Connected peer, for IPv4/IPv6 sockets with a peer port.
    pub peer: Option<SocketAddr>,
}

fn ip(family: u16, addr: &[u8; 16]) -> Option<IpAddr> {
    match i32::from(family) {
        libc::AF_INET => Some(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into()),
        libc::AF_INET6 => Some(Ipv6Addr::from(*addr).into()),
        _ => None,
    }
}

fn socket(info: &SocketInfo) -> Option<Socket> {
    if info.family == 0 {
        return None;
    }
    let addr = |addr: &[u8; 16], port: u16| {
        ip(info.family, addr).filter(|_| port != 0).map(|ip| SocketAddr::new(ip, port))
    };
    Some(Socket {
        family: info.family,
        protocol: info.protocol,
        sock_type: info.sock_type,
        local: addr(&info.local_addr, info.local_port),
        peer: addr(&info.peer_addr, u16::from_be(info.peer_port_be)),
    })
}

fn dest(d: &Destination) -> Dest {
    match d.status {
        name_status::NONE => Dest::Peer,
        name_status::READ => match ip(d.family, &d.addr) {
            Some(ip) => Dest::Addr(SocketAddr::new(ip, u16::from_be(d.port_be))),
            None => Dest::OtherFamily(d.family),
        },
        name_status::OTHER_FAMILY => Dest::OtherFamily(d.family),
        name_status::BAD_LENGTH => Dest::BadLength,
        _ => Dest::Unreadable,
    }
}

/// Counters over every message the per-message hook saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageTotals {
    pub seen: u32,
    pub failed: u32,
    pub bytes: u64,
    /// The first failed message: (index, negative errno).
    pub first_error: Option<(u32, i32)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes, expected {expected}")]
    SizeMismatch { got: usize, expected: usize },
    #[error("record layout version {got}, this sidecar reads version {expected}")]
    Version { got: u32, expected: u32 },
    #[error("record claims {0} messages, more than the kernel's limit of {MAX_VLEN}")]
    TooManyMessages(u32),
    #[error("record claims {failed} failed messages out of {seen}")]
    FailedExceedsSeen { failed: u32, seen: u32 },
    #[error("record ends at {end_ns} ns, before it starts at {start_ns} ns")]
    EndsBeforeStart { start_ns: u64, end_ns: u64 },
    #[error("identity record claims {what} = {value}, beyond its bounds")]
    IdentityOutOfBounds { what: &'static str, value: u64 },
}

/// Decodes one ring-buffer item (a one-off [`Decoder`]).
pub fn decode(bytes: &[u8]) -> Result<Call, DecodeError> {
    Decoder::default().decode(bytes)
}

/// Decodes ring-buffer items into a record-sized buffer it keeps: a record arrives with only the
/// detail slots its call can have used (often a few hundred of the layout's 2.7 KiB), and
/// zeroing and moving a whole `CallRecord` per item was a fifth of the sidecar's time.
///
/// A decoded call's buffers (thread name, detail, destinations) can be handed back
/// ([`Decoder::recycle`]) for the next call to fill: three allocations and frees per call were
/// a tenth of user space's instructions per span once the spans were written without `SpanData`.
pub struct Decoder {
    scratch: Box<CallRecord>,
    spare: Spare,
}

/// Buffers of a call done with, kept for the next.
#[derive(Default)]
struct Spare {
    comm: String,
    detail: Vec<MessageResult>,
    destinations: Vec<Dest>,
}

impl Default for Decoder {
    fn default() -> Self {
        // SAFETY: CallRecord is plain integers, so all-zero bytes are a valid value.
        Decoder { scratch: unsafe { Box::<CallRecord>::new_zeroed().assume_init() }, spare: Spare::default() }
    }
}

impl Decoder {
    /// Takes back `call`'s buffers for the next call decoded.
    pub fn recycle(&mut self, call: Call) {
        self.spare = Spare { comm: call.comm, detail: call.detail, destinations: call.destinations };
    }

    /// The call metrics' series of the call decoded last, by the kernel's own rule
    /// (`series_of`, from the record as the kernel wrote it).
    pub fn series_of_last_call(&self, by_peer: bool) -> otel_sendmmsg_common::call_metrics::SeriesKey {
        otel_sendmmsg_common::call_metrics::series_of(&*self.scratch, by_peer)
    }

    /// Decodes one ring-buffer item of either kind: the first `u32` tells them apart.
    pub fn decode_record(&mut self, bytes: &[u8]) -> Result<Record, DecodeError> {
        match bytes.get(..4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes"))) {
            Some(IDENTITY_RECORD_VERSION) => decode_identity(bytes).map(Record::Identity),
            _ => self.decode(bytes).map(Record::Call),
        }
    }

    /// Decodes one ring-buffer item that must be a call record.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Call, DecodeError> {
        // The header's first two u32 are the layout version and size, whatever the layout.
        if bytes.len() >= 4 {
            let version = u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"));
            if version != RECORD_VERSION {
                return Err(DecodeError::Version { got: version, expected: RECORD_VERSION });
            }
        }
        if bytes.len() < DETAIL_OFFSET || bytes.len() > size_of::<CallRecord>() {
            return Err(DecodeError::SizeMismatch { got: bytes.len(), expected: DETAIL_OFFSET });
        }
        let rec = &mut *self.scratch;
        // SAFETY: CallRecord is plain integers, so any byte pattern copied over its first
        // `bytes.len()` (<= its size) bytes leaves a valid value.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (rec as *mut CallRecord).cast::<u8>(), bytes.len());
        }
        // Slots past those sent hold an earlier record's; a message count beyond them (a
        // corrupt record) reads zeroes, as if the slots had been sent empty.
        let sent_slots = (bytes.len() - DETAIL_OFFSET) / size_of::<MessageResult>();
        let read_slots = rec.detail_len().max(rec.destinations_len());
        for slot in rec.detail.iter_mut().take(read_slots).skip(sent_slots) {
            *slot = MessageResult::default();
        }
        check_and_convert(rec, bytes.len(), &mut self.spare)
    }
}

/// Decodes an identity record, read field by field from the item (33 KiB: never copied whole).
pub fn decode_identity(bytes: &[u8]) -> Result<Identity, DecodeError> {
    use core::mem::offset_of;
    let layout = size_of::<IdentityRecord>();
    if bytes.len() != layout {
        return Err(DecodeError::SizeMismatch { got: bytes.len(), expected: layout });
    }
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let size = u32_at(offset_of!(IdentityRecord, size)) as usize;
    if size != layout {
        return Err(DecodeError::SizeMismatch { got: size, expected: layout });
    }
    let out_of_bounds = |what, value: u64| DecodeError::IdentityOutOfBounds { what, value };
    // A name: its bytes up to the claimed length (refused past the field) and any NUL.
    let name = |field: usize, len_field: usize, what| -> Result<Option<String>, DecodeError> {
        let len = u32_at(len_field) as usize;
        if len >= IDENTITY_NAME_LEN {
            return Err(out_of_bounds(what, len as u64));
        }
        let raw = &bytes[field..field + len];
        let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
        Ok((!raw.is_empty()).then(|| String::from_utf8_lossy(raw).into_owned()))
    };
    let executable = name(offset_of!(IdentityRecord, exe), offset_of!(IdentityRecord, exe_len), "exe_len")?;
    let cgroup =
        name(offset_of!(IdentityRecord, cgroup), offset_of!(IdentityRecord, cgroup_len), "cgroup_len")?;
    let cgroup_parent = name(
        offset_of!(IdentityRecord, cgroup_parent),
        offset_of!(IdentityRecord, cgroup_parent_len),
        "cgroup_parent_len",
    )?;
    let skip = u32_at(offset_of!(IdentityRecord, env_skip)) as usize;
    let read = u32_at(offset_of!(IdentityRecord, env_read)) as usize;
    let claimed = u64_at(offset_of!(IdentityRecord, env_len));
    if skip >= ENV_PAGE {
        return Err(out_of_bounds("env_skip", skip as u64));
    }
    if read > ENV_WINDOW || !read.is_multiple_of(ENV_PAGE) {
        return Err(out_of_bounds("env_read", read as u64));
    }
    // The block within what was read; the claimed length is the process's to make up.
    let end = (skip as u64).saturating_add(claimed);
    let available = read.min(usize::try_from(end).unwrap_or(usize::MAX));
    let env = offset_of!(IdentityRecord, env);
    let environ = bytes[env + skip.min(available)..env + available].to_vec();
    let flags = u32_at(offset_of!(IdentityRecord, flags));
    let comm = &bytes[offset_of!(IdentityRecord, comm)..offset_of!(IdentityRecord, comm) + 16];
    let comm = comm.split(|&b| b == 0).next().unwrap_or_default();
    Ok(Identity {
        pid: u32_at(offset_of!(IdentityRecord, pid)),
        process_start_ns: u64_at(offset_of!(IdentityRecord, process_start_ns)),
        comm: String::from_utf8_lossy(comm).into_owned(),
        executable,
        cgroup,
        cgroup_parent,
        cgroup_id: u64_at(offset_of!(IdentityRecord, cgroup_id)),
        environ,
        environ_complete: end <= read as u64
            && flags & (identity_flags::ENV_CUT | identity_flags::ENV_UNREADABLE) == 0,
        flags,
    })
}

fn check_and_convert(rec: &CallRecord, len: usize, spare: &mut Spare) -> Result<Call, DecodeError> {
    let layout = size_of::<CallRecord>();
    if rec.size as usize != layout {
        return Err(DecodeError::SizeMismatch { got: rec.size as usize, expected: layout });
    }
    if len != rec.wire_len() {
        return Err(DecodeError::SizeMismatch { got: len, expected: rec.wire_len() });
    }
    if rec.messages > MAX_VLEN {
        return Err(DecodeError::TooManyMessages(rec.messages));
    }
    if rec.messages_failed > rec.messages {
        return Err(DecodeError::FailedExceedsSeen { failed: rec.messages_failed, seen: rec.messages });
    }
    if rec.end_ns < rec.start_ns {
        return Err(DecodeError::EndsBeforeStart { start_ns: rec.start_ns, end_ns: rec.end_ns });
    }
    let comm_len = rec.comm.iter().position(|&b| b == 0).unwrap_or(rec.comm.len());
    let Spare { mut comm, mut detail, mut destinations } = std::mem::take(spare);
    comm.clear();
    comm.push_str(&String::from_utf8_lossy(&rec.comm[..comm_len]));
    detail.clear();
    detail.extend_from_slice(&rec.detail[..rec.detail_len()]);
    destinations.clear();
    destinations.extend(rec.detail[..rec.destinations_len()].iter().map(|m| dest(&m.dest)));
    Ok(Call {
        pid: rec.pid,
        process_start_ns: rec.process_start_ns,
        tid: rec.tid,
        comm,
        start_ns: rec.start_ns,
        end_ns: rec.end_ns,
        sockfd: rec.sockfd,
        msgvec: rec.msgvec,
        vlen: rec.vlen,
        flags: rec.flags,
        ret: rec.ret,
        messages: MessageTotals {
            seen: rec.messages,
            failed: rec.messages_failed,
            bytes: rec.bytes,
            first_error: (rec.messages_failed > 0).then_some((rec.first_error_index, rec.first_error)),
        },
        detail,
        destinations,
        socket: socket(&rec.socket),
        parent: (rec.flags_out & record_flags::PARENT != 0).then_some(rec.parent),
        sizes_only: rec.flags_out & record_flags::SIZES_FROM_MSG_LEN != 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use otel_sendmmsg_common::MAX_MESSAGE_DETAIL;

    use super::*;

    /// A record as the BPF side would write it for a call of `results` messages.
    pub(crate) fn record(results: &[i32]) -> CallRecord {
        let mut detail = [MessageResult::default(); MAX_MESSAGE_DETAIL];
        let mut rec = CallRecord {
            version: RECORD_VERSION,
            size: size_of::<CallRecord>() as u32,
            pid: 4242,
            tid: 4243,
            start_ns: 1_000_000,
            end_ns: 1_250_000,
            msgvec: 0x7ffd_1234_5678,
            ret: 0,
            sockfd: 7,
            vlen: results.len() as u32,
            flags: libc::MSG_DONTWAIT as u32,
            messages: results.len() as u32,
            messages_failed: 0,
            first_error: 0,
            first_error_index: 0,
            flags_out: 0,
            bytes: 0,
            sk: 0,
            process_start_ns: 0,
            comm: *b"publisher\0\0\0\0\0\0\0",
            socket: SocketInfo::default(),
            parent: TraceContext::default(),
            detail: [MessageResult::default(); MAX_MESSAGE_DETAIL],
        };
        for (i, &ret) in results.iter().enumerate() {
            if let Some(slot) = detail.get_mut(i) {
                *slot = MessageResult { ret, offset_ns: 1_000 * (i as u64 + 1), ..Default::default() };
            }
            if ret >= 0 {
                rec.bytes += ret as u64;
                rec.ret += 1;
            } else {
                if rec.messages_failed == 0 {
                    rec.first_error = ret;
                    rec.first_error_index = i as u32;
                }
                rec.messages_failed += 1;
            }
        }
        rec.detail = detail;
        rec
    }

    /// The record as the BPF side sends it: header and used slots only.
    pub(crate) fn bytes_of(rec: &CallRecord) -> Vec<u8> {
        rec.wire_bytes().to_vec()
    }

    #[test]
    fn round_trips_a_partly_failed_call() {
        let rec = record(&[100, 200, -libc::EMSGSIZE]);
        let call = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(call.pid, 4242);
        assert_eq!(call.tid, 4243);
        assert_eq!(call.comm, "publisher");
        assert_eq!(call.ret, 2);
        assert_eq!(call.sockfd, 7);
        assert_eq!(call.msgvec, 0x7ffd_1234_5678);
        assert_eq!(
            call.messages,
            MessageTotals { seen: 3, failed: 1, bytes: 300, first_error: Some((2, -libc::EMSGSIZE)) }
        );
        assert_eq!(call.detail.len(), 3);
        assert_eq!(call.detail[2].ret, -libc::EMSGSIZE);
        assert_eq!(call.detail[0].offset_ns, 1_000);
    }

    #[test]
    fn detail_stops_at_its_capacity_while_counters_go_on() {
        let results: Vec<i32> = (0..100).map(|_| 10).collect();
        let call = decode(&bytes_of(&record(&results))).unwrap();
        assert_eq!(call.messages.seen, 100);
        assert_eq!(call.messages.bytes, 1000);
        assert_eq!(call.detail.len(), MAX_MESSAGE_DETAIL);
    }

    #[test]
    fn socket_context_decodes_addresses_in_the_right_byte_order() {
        let mut rec = record(&[10]);
        rec.socket = SocketInfo {
            family: libc::AF_INET as u16,
            protocol: libc::IPPROTO_UDP as u16,
            sock_type: libc::SOCK_DGRAM as u16,
            local_port: 5353,
            peer_port_be: 53u16.to_be(),
            local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            peer_addr: [10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        let socket = decode(&bytes_of(&rec)).unwrap().socket.unwrap();
        assert_eq!(socket.local, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(socket.peer, Some("10.0.0.5:53".parse().unwrap()));
        rec.socket.peer_port_be = 0;
        assert_eq!(decode(&bytes_of(&rec)).unwrap().socket.unwrap().peer, None, "unconnected");
        rec.socket.family = 0;
        assert_eq!(decode(&bytes_of(&rec)).unwrap().socket, None, "unknown");
    }

    #[test]
    fn destinations_cover_vlen_not_just_the_messages_sent() {
        let mut rec = record(&[10]);
        rec.vlen = 4;
        rec.detail[0].dest = Destination {
            status: name_status::READ,
            family: libc::AF_INET6 as u16,
            port_be: 443u16.to_be(),
            addr: Ipv6Addr::LOCALHOST.octets(),
            ..Default::default()
        };
        rec.detail[1].dest = Destination { status: name_status::UNREADABLE, ..Default::default() };
        rec.detail[2].dest =
            Destination { status: name_status::OTHER_FAMILY, family: 1, ..Default::default() };
        rec.detail[3].dest =
            Destination { status: name_status::BAD_LENGTH, family: 2, port_be: 53, ..Default::default() };
        let call = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(
            call.destinations,
            vec![
                Dest::Addr("[::1]:443".parse().unwrap()),
                Dest::Unreadable,
                Dest::OtherFamily(1),
                Dest::BadLength
            ]
        );
        assert_eq!(call.detail.len(), 1);
    }

    #[test]
    fn a_parent_is_read_only_when_flagged() {
        let mut rec = record(&[1]);
        rec.parent = TraceContext { trace_id: [7; 16], span_id: [9; 8] };
        assert_eq!(decode(&bytes_of(&rec)).unwrap().parent, None);
        rec.flags_out = record_flags::PARENT;
        assert_eq!(decode(&bytes_of(&rec)).unwrap().parent, Some(rec.parent));
    }

    #[test]
    fn a_comm_without_nul_uses_all_sixteen_bytes() {
        let mut rec = record(&[]);
        rec.comm = *b"0123456789abcdef";
        assert_eq!(decode(&bytes_of(&rec)).unwrap().comm, "0123456789abcdef");
    }

    #[test]
    fn rejects_a_short_or_long_buffer() {
        let bytes = bytes_of(&record(&[1]));
        let expected = bytes.len();
        assert_eq!(
            decode(&bytes[..expected - 1]),
            Err(DecodeError::SizeMismatch { got: expected - 1, expected })
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::SizeMismatch { got: expected + 1, expected }));
        assert_eq!(decode(&[]), Err(DecodeError::SizeMismatch { got: 0, expected: DETAIL_OFFSET }));
    }

    #[test]
    fn a_record_carries_only_the_slots_its_call_can_use() {
        let rec = record(&[1, 2, 3]);
        assert_eq!(bytes_of(&rec).len(), DETAIL_OFFSET + 3 * size_of::<MessageResult>());
        let mut big = record(&[1]);
        big.vlen = 1000;
        assert_eq!(big.wire_len(), size_of::<CallRecord>(), "64 slots at most");
    }

    #[test]
    fn rejects_another_layout_version_before_its_size() {
        let mut rec = record(&[1]);
        rec.version = RECORD_VERSION + 1;
        let bytes = bytes_of(&rec);
        assert_eq!(
            decode(&bytes[..8]),
            Err(DecodeError::Version { got: RECORD_VERSION + 1, expected: RECORD_VERSION })
        );
    }

    #[test]
    fn rejects_inconsistent_counters_and_times() {
        let mut rec = record(&[1]);
        rec.size += 8;
        assert!(matches!(decode(&bytes_of(&rec)), Err(DecodeError::SizeMismatch { .. })));
        let mut rec = record(&[1]);
        rec.messages = MAX_VLEN + 1;
        assert_eq!(decode(&bytes_of(&rec)), Err(DecodeError::TooManyMessages(MAX_VLEN + 1)));
        let mut rec = record(&[1]);
        rec.messages_failed = 2;
        assert_eq!(decode(&bytes_of(&rec)), Err(DecodeError::FailedExceedsSeen { failed: 2, seen: 1 }));
        let mut rec = record(&[1]);
        rec.end_ns = rec.start_ns - 1;
        assert!(matches!(decode(&bytes_of(&rec)), Err(DecodeError::EndsBeforeStart { .. })));
    }

    /// An identity record as the BPF side writes it: `environ` from the start of a page at
    /// `skip`, read in whole pages.
    pub(crate) fn identity_record(pid: u32, environ: &[u8], skip: usize) -> Box<IdentityRecord> {
        // SAFETY: plain integers: all-zero bytes are a valid value.
        let mut rec = unsafe { Box::<IdentityRecord>::new_zeroed().assume_init() };
        rec.version = IDENTITY_RECORD_VERSION;
        rec.size = size_of::<IdentityRecord>() as u32;
        rec.pid = pid;
        rec.process_start_ns = 5_000_000_000;
        rec.cgroup_id = 77;
        rec.comm[..8].copy_from_slice(b"launcher");
        let name = |field: &mut [u8; IDENTITY_NAME_LEN], value: &[u8]| {
            field[..value.len()].copy_from_slice(value);
            value.len() as u32
        };
        rec.exe_len = name(&mut rec.exe, b"checkout-server");
        rec.cgroup_len = name(&mut rec.cgroup, b"docker-0123.scope");
        rec.cgroup_parent_len = name(&mut rec.cgroup_parent, b"system.slice");
        let end = (skip + environ.len()).min(ENV_WINDOW);
        rec.env[skip..end].copy_from_slice(&environ[..end - skip]);
        rec.env_len = environ.len() as u64;
        rec.env_skip = skip as u32;
        rec.env_read = end.div_ceil(ENV_PAGE) as u32 * ENV_PAGE as u32;
        if skip + environ.len() > ENV_WINDOW {
            rec.flags |= identity_flags::ENV_CUT;
        }
        rec
    }

    pub(crate) fn identity_bytes(rec: &IdentityRecord) -> Vec<u8> {
        // SAFETY: `#[repr(C)]` integers and arrays with every padding an explicit field.
        unsafe {
            std::slice::from_raw_parts(
                (rec as *const IdentityRecord).cast::<u8>(),
                size_of::<IdentityRecord>(),
            )
        }
        .to_vec()
    }

    fn decode_any(bytes: &[u8]) -> Result<Record, DecodeError> {
        Decoder::default().decode_record(bytes)
    }

    #[test]
    fn an_identity_record_decodes_with_its_environment_and_names() {
        let environ = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0";
        let rec = identity_record(4242, environ, 3000);
        let Ok(Record::Identity(identity)) = decode_any(&identity_bytes(&rec)) else { panic!("an identity") };
        assert_eq!(identity.pid, 4242);
        assert_eq!(identity.process_start_ns, 5_000_000_000);
        assert_eq!(identity.comm, "launcher");
        assert_eq!(identity.executable.as_deref(), Some("checkout-server"));
        assert_eq!(identity.cgroup.as_deref(), Some("docker-0123.scope"));
        assert_eq!(identity.cgroup_parent.as_deref(), Some("system.slice"));
        assert_eq!(identity.cgroup_id, 77);
        assert_eq!(identity.environ, environ);
        assert!(identity.environ_complete && !identity.incomplete());
        // Call records still decode through the same entry point, as before.
        let call = record(&[10]);
        assert_eq!(decode_any(&bytes_of(&call)), Ok(Record::Call(decode(&bytes_of(&call)).unwrap())));
    }

    #[test]
    fn an_identity_record_of_another_length_is_refused() {
        let bytes = identity_bytes(&identity_record(1, b"A=1\0", 0));
        let expected = size_of::<IdentityRecord>();
        for len in [expected - 1, 8, 4] {
            assert_eq!(
                decode_any(&bytes[..len]),
                Err(DecodeError::SizeMismatch { got: len, expected }),
                "truncated to {len}"
            );
        }
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 8]);
        assert_eq!(decode_any(&long), Err(DecodeError::SizeMismatch { got: expected + 8, expected }));
        let mut rec = identity_record(1, b"A=1\0", 0);
        rec.size -= 8;
        assert_eq!(
            decode_any(&identity_bytes(&rec)),
            Err(DecodeError::SizeMismatch { got: expected - 8, expected })
        );
    }

    #[test]
    fn garbled_identity_lengths_are_refused_not_trusted() {
        type Garble = (&'static str, fn(&mut IdentityRecord));
        let garble: [Garble; 6] = [
            ("exe_len", |r| r.exe_len = IDENTITY_NAME_LEN as u32),
            ("cgroup_len", |r| r.cgroup_len = u32::MAX),
            ("cgroup_parent_len", |r| r.cgroup_parent_len = 1000),
            ("env_skip", |r| r.env_skip = ENV_PAGE as u32),
            ("env_read", |r| r.env_read = (ENV_WINDOW + ENV_PAGE) as u32),
            ("env_read", |r| r.env_read = 100),
        ];
        for (what, garble) in garble {
            let mut rec = identity_record(1, b"A=1\0", 10);
            garble(&mut rec);
            assert!(
                matches!(decode_any(&identity_bytes(&rec)), Err(DecodeError::IdentityOutOfBounds { what: w, .. }) if w == what),
                "{what}"
            );
        }
    }

    #[test]
    fn an_environment_is_only_what_was_read_whatever_its_length_claims() {
        // A claimed length far beyond the window (prctl(PR_SET_MM) lets a process claim any).
        let mut rec = identity_record(1, b"OTEL_SERVICE_NAME=x\0", 100);
        rec.env_len = u64::MAX;
        let Ok(Record::Identity(identity)) = decode_any(&identity_bytes(&rec)) else { panic!() };
        assert_eq!(identity.environ.len(), ENV_PAGE - 100, "up to the end of the page read");
        assert!(!identity.environ_complete && identity.incomplete());
        // A block cut by the window: what fits, marked incomplete.
        let big = vec![b'x'; ENV_WINDOW];
        let Ok(Record::Identity(cut)) = decode_any(&identity_bytes(&identity_record(1, &big, 500))) else {
            panic!()
        };
        assert_eq!(cut.environ.len(), ENV_WINDOW - 500);
        assert!(!cut.environ_complete);
        // A page that could not be read: only the pages before it.
        let mut rec = identity_record(1, &vec![b'y'; 3 * ENV_PAGE], 0);
        rec.env_read = ENV_PAGE as u32;
        rec.flags |= identity_flags::ENV_UNREADABLE;
        let Ok(Record::Identity(partial)) = decode_any(&identity_bytes(&rec)) else { panic!() };
        assert_eq!(partial.environ.len(), ENV_PAGE);
        assert!(partial.incomplete());
        // Nothing read at all (no mm), and unreadable names.
        let mut rec = identity_record(1, b"", 0);
        rec.env_read = 0;
        rec.exe_len = 0;
        rec.flags = identity_flags::EXE_UNREADABLE;
        let Ok(Record::Identity(bare)) = decode_any(&identity_bytes(&rec)) else { panic!() };
        assert_eq!((bare.environ.len(), bare.executable.as_deref()), (0, None));
        assert!(bare.incomplete());
    }

    #[test]
    fn names_stop_at_a_nul_and_bad_utf8_is_replaced() {
        let mut rec = identity_record(1, b"", 0);
        rec.exe[..6].copy_from_slice(b"ab\0cde");
        rec.exe_len = 6;
        rec.cgroup[..3].copy_from_slice(&[0xff, b'z', 0xfe]);
        rec.cgroup_len = 3;
        rec.comm = [b'c'; 16];
        let Ok(Record::Identity(identity)) = decode_any(&identity_bytes(&rec)) else { panic!() };
        assert_eq!(identity.executable.as_deref(), Some("ab"));
        assert_eq!(identity.cgroup.as_deref(), Some("\u{fffd}z\u{fffd}"));
        assert_eq!(identity.comm, "c".repeat(16));
    }

    #[test]
    fn a_reused_decoder_reads_each_record_as_a_fresh_one_would() {
        let mut decoder = Decoder::default();
        let long = record(&[100, 200, 300, 400, 500, 600, 700, 800]);
        let short = record(&[7, -libc::EMSGSIZE]);
        // A corrupt count beyond the slots sent must not read the long record's leftovers.
        let mut overcounted = record(&[9]);
        overcounted.messages = 5;
        let mut named = short;
        named.comm = *b"a-longer-name\0\0\0";
        for rec in [long, short, long, overcounted, named, short] {
            assert_eq!(decoder.decode(&bytes_of(&rec)), decode(&bytes_of(&rec)));
            // With the buffers of the call before handed back, too.
            let call = decoder.decode(&bytes_of(&rec)).unwrap();
            assert_eq!(call, decode(&bytes_of(&rec)).unwrap());
            decoder.recycle(call);
        }
        assert_eq!(decoder.decode(&bytes_of(&overcounted)).unwrap().detail[1], MessageResult::default());
    }
}
