//! Records built field by field, with the version and size header the BPF side writes, so every
//! input gets past the header checks: the record is encoded as the ring buffer carries it (the
//! header and `min(vlen, 64)` detail slots) and decoded; the decoder must refuse exactly the
//! records that break the invariants `DecodeError` names, and what it accepts must say what the
//! record's fields document (otel-sendmmsg-common); then the call goes through the span mapping
//! and the console line (`map_call`), on an arbitrary clock. Identity records are built the same
//! way (`IdentityInput`): the decoder must refuse exactly those whose lengths leave their fields,
//! and return exactly the environment bytes read for the others (`map_identity`).
//!
//! Families, protocols and socket types are drawn mostly from the values the decoder and the
//! mapping tell apart, so those branches are reached at once; the rest are raw numbers.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use otel_sendmmsg::{
    clock::WallClock,
    records::{decode, Call, DecodeError, Decoder, Dest, MessageTotals, Record, Socket},
};
use otel_sendmmsg_common::{
    identity_flags, IdentityRecord, ENV_PAGE, ENV_WINDOW, IDENTITY_NAME_LEN, IDENTITY_RECORD_VERSION,
};
use otel_sendmmsg_common::{
    name_status, record_flags, CallRecord, Destination, MessageResult, SocketInfo, TraceContext,
    MAX_MESSAGE_DETAIL, MAX_VLEN, RECORD_VERSION,
};
use otel_sendmmsg_fuzz::{map_call, map_identity};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Family {
    Unspec,
    Unix,
    Inet,
    Inet6,
    Other(u16),
}

impl Family {
    fn raw(self) -> u16 {
        match self {
            Family::Unspec => 0,
            Family::Unix => libc::AF_UNIX as u16,
            Family::Inet => libc::AF_INET as u16,
            Family::Inet6 => libc::AF_INET6 as u16,
            Family::Other(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Protocol {
    Udp,
    UdpLite,
    Tcp,
    Mptcp,
    Sctp,
    Icmp,
    Icmpv6,
    Raw,
    Other(u16),
}

impl Protocol {
    fn raw(self) -> u16 {
        let p = match self {
            Protocol::Udp => libc::IPPROTO_UDP,
            Protocol::UdpLite => libc::IPPROTO_UDPLITE,
            Protocol::Tcp => libc::IPPROTO_TCP,
            Protocol::Mptcp => libc::IPPROTO_MPTCP,
            Protocol::Sctp => libc::IPPROTO_SCTP,
            Protocol::Icmp => libc::IPPROTO_ICMP,
            Protocol::Icmpv6 => libc::IPPROTO_ICMPV6,
            Protocol::Raw => libc::IPPROTO_RAW,
            Protocol::Other(n) => return n,
        };
        p as u16
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SockType {
    Dgram,
    Stream,
    Other(u16),
}

impl SockType {
    fn raw(self) -> u16 {
        match self {
            SockType::Dgram => libc::SOCK_DGRAM as u16,
            SockType::Stream => libc::SOCK_STREAM as u16,
            SockType::Other(n) => n,
        }
    }
}

/// `SocketInfo`, padding included: the decoder must ignore it.
#[derive(Arbitrary, Debug)]
struct ArbSocket {
    family: Family,
    protocol: Protocol,
    sock_type: SockType,
    local_port: u16,
    peer_port_be: u16,
    pad: [u16; 3],
    local_addr: [u8; 16],
    peer_addr: [u8; 16],
}

/// `MessageResult` and its `Destination`, padding included.
#[derive(Arbitrary, Debug)]
struct ArbMessage {
    ret: i32,
    pad: u32,
    offset_ns: u64,
    /// `name_status::*` are 0 to 4; anything else must read as unreadable.
    status: u8,
    dest_pad: u8,
    family: Family,
    port_be: u16,
    dest_pad2: u16,
    addr: [u8; 16],
}

/// Every field of `CallRecord` but `version` and `size`, which are set as the BPF side sets them.
#[derive(Arbitrary, Debug)]
struct Input {
    /// Make the counters and times consistent (what a correct BPF object writes), so that most
    /// inputs decode and reach the mapping; otherwise they are used as drawn.
    consistent: bool,
    pid: u32,
    tid: u32,
    start_ns: u64,
    end_ns: u64,
    msgvec: u64,
    ret: i64,
    sockfd: i32,
    vlen: u32,
    flags: u32,
    messages: u32,
    messages_failed: u32,
    first_error: i32,
    first_error_index: u32,
    flags_out: u32,
    bytes: u64,
    sk: u64,
    process_start_ns: u64,
    comm: [u8; 16],
    socket: ArbSocket,
    parent_trace_id: [u8; 16],
    parent_span_id: [u8; 8],
    /// The first slots; the rest stay zero (the ring buffer carries `min(vlen, 64)` of them).
    detail: Vec<ArbMessage>,
    /// The clock for the mapping, as `WallClock::now()` would sample it.
    wall_ns: u64,
    monotonic_ns: u64,
}

fn record(input: &Input) -> CallRecord {
    let mut detail = [MessageResult::default(); MAX_MESSAGE_DETAIL];
    for (slot, m) in detail.iter_mut().zip(&input.detail) {
        *slot = MessageResult {
            ret: m.ret,
            _pad: m.pad,
            offset_ns: m.offset_ns,
            dest: Destination {
                status: m.status,
                _pad: m.dest_pad,
                family: m.family.raw(),
                port_be: m.port_be,
                _pad2: m.dest_pad2,
                addr: m.addr,
            },
        };
    }
    let s = &input.socket;
    let mut rec = CallRecord {
        version: RECORD_VERSION,
        size: size_of::<CallRecord>() as u32,
        pid: input.pid,
        tid: input.tid,
        start_ns: input.start_ns,
        end_ns: input.end_ns,
        msgvec: input.msgvec,
        ret: input.ret,
        sockfd: input.sockfd,
        vlen: input.vlen,
        flags: input.flags,
        messages: input.messages,
        messages_failed: input.messages_failed,
        first_error: input.first_error,
        first_error_index: input.first_error_index,
        flags_out: input.flags_out,
        bytes: input.bytes,
        sk: input.sk,
        process_start_ns: input.process_start_ns,
        comm: input.comm,
        socket: SocketInfo {
            family: s.family.raw(),
            protocol: s.protocol.raw(),
            sock_type: s.sock_type.raw(),
            local_port: s.local_port,
            peer_port_be: s.peer_port_be,
            _pad: s.pad,
            local_addr: s.local_addr,
            peer_addr: s.peer_addr,
        },
        parent: TraceContext { trace_id: input.parent_trace_id, span_id: input.parent_span_id },
        detail,
    };
    if input.consistent {
        rec.messages %= MAX_VLEN + 1;
        rec.messages_failed %= rec.messages + 1;
        if rec.end_ns < rec.start_ns {
            std::mem::swap(&mut rec.start_ns, &mut rec.end_ns);
        }
    }
    rec
}

/// What the decoder must refuse, in the order it checks (the header is right by construction).
fn expected_error(rec: &CallRecord) -> Option<DecodeError> {
    if rec.messages > MAX_VLEN {
        Some(DecodeError::TooManyMessages(rec.messages))
    } else if rec.messages_failed > rec.messages {
        Some(DecodeError::FailedExceedsSeen { failed: rec.messages_failed, seen: rec.messages })
    } else if rec.end_ns < rec.start_ns {
        Some(DecodeError::EndsBeforeStart { start_ns: rec.start_ns, end_ns: rec.end_ns })
    } else {
        None
    }
}

fn is_inet(family: u16) -> bool {
    matches!(i32::from(family), libc::AF_INET | libc::AF_INET6)
}

/// `ip` is the address in `addr` (IPv4 in its first 4 bytes) for `family`.
fn check_ip(family: u16, addr: &[u8; 16], ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            assert_eq!(i32::from(family), libc::AF_INET);
            assert_eq!(ip.octets(), addr[..4]);
        }
        IpAddr::V6(ip) => {
            assert_eq!(i32::from(family), libc::AF_INET6);
            assert_eq!(&ip.octets(), addr);
        }
    }
}

/// A message's destination, as `name_status` documents it: the connected peer when there was
/// no `msg_name`; an address (port in network byte order) when one of IPv4/IPv6 was read; only
/// the family when another was read; a bad length as such; unreadable for any other status.
fn check_dest(d: &Destination, got: Dest) {
    match got {
        Dest::Peer => assert_eq!(d.status, name_status::NONE),
        Dest::Addr(addr) => {
            assert!(d.status == name_status::READ && is_inet(d.family), "{d:?}");
            assert_eq!(addr.port(), u16::from_be(d.port_be));
            check_ip(d.family, &d.addr, addr.ip());
        }
        Dest::OtherFamily(family) => {
            assert_eq!(family, d.family);
            let read_other = d.status == name_status::READ && !is_inet(d.family);
            assert!(d.status == name_status::OTHER_FAMILY || read_other, "{d:?}");
        }
        Dest::BadLength => assert_eq!(d.status, name_status::BAD_LENGTH),
        Dest::Unreadable => assert!(
            ![name_status::NONE, name_status::READ, name_status::OTHER_FAMILY, name_status::BAD_LENGTH]
                .contains(&d.status),
            "{d:?}"
        ),
    }
}

/// One end of a socket: an address only for IPv4/IPv6, and only with a port (0: unbound, or
/// not connected).
fn check_end(family: u16, addr: &[u8; 16], port: u16, got: Option<SocketAddr>) {
    match got {
        None => assert!(!is_inet(family) || port == 0),
        Some(end) => {
            assert!(is_inet(family) && port != 0);
            assert_eq!(end.port(), port);
            check_ip(family, addr, end.ip());
        }
    }
}

/// The socket, as `SocketInfo` documents it: unknown when its family is 0.
fn check_socket(s: &SocketInfo, got: Option<Socket>) {
    let Some(got) = got else {
        assert_eq!(s.family, 0);
        return;
    };
    assert_eq!((got.family, got.protocol, got.sock_type), (s.family, s.protocol, s.sock_type));
    assert_ne!(s.family, 0);
    check_end(s.family, &s.local_addr, s.local_port, got.local);
    check_end(s.family, &s.peer_addr, u16::from_be(s.peer_port_be), got.peer);
}

fn check_decoded(rec: &CallRecord, call: &Call) {
    // `comm` is NUL-padded, and may fill all 16 bytes.
    let comm_len = rec.comm.iter().position(|&b| b == 0).unwrap_or(rec.comm.len());
    assert_eq!(call.comm, String::from_utf8_lossy(&rec.comm[..comm_len]));
    assert_eq!(
        (call.pid, call.tid, call.start_ns, call.end_ns, call.sockfd, call.msgvec),
        (rec.pid, rec.tid, rec.start_ns, rec.end_ns, rec.sockfd, rec.msgvec)
    );
    assert_eq!((call.vlen, call.flags, call.ret), (rec.vlen, rec.flags, rec.ret));
    assert_eq!(call.process_start_ns, rec.process_start_ns);
    assert_eq!(
        call.messages,
        MessageTotals {
            seen: rec.messages,
            failed: rec.messages_failed,
            bytes: rec.bytes,
            first_error: (rec.messages_failed > 0).then_some((rec.first_error_index, rec.first_error)),
        }
    );
    // Results for the first min(messages, 64) messages; slots the ring buffer did not carry
    // (beyond min(vlen, 64)) read as zero, never as what the sender's memory held.
    let carried = (rec.vlen as usize).min(MAX_MESSAGE_DETAIL);
    let results = (rec.messages as usize).min(MAX_MESSAGE_DETAIL);
    let expected: Vec<MessageResult> =
        (0..results).map(|i| if i < carried { rec.detail[i] } else { MessageResult::default() }).collect();
    assert_eq!(call.detail, expected);
    // A destination for each of the first min(vlen, 64) messages.
    assert_eq!(call.destinations.len(), carried);
    for (slot, &dest) in rec.detail.iter().zip(&call.destinations) {
        check_dest(&slot.dest, dest);
    }
    check_socket(&rec.socket, call.socket);
    assert_eq!(call.parent, (rec.flags_out & record_flags::PARENT != 0).then_some(rec.parent));
    assert_eq!(call.sizes_only, rec.flags_out & record_flags::SIZES_FROM_MSG_LEN != 0);
}

/// Every field of `IdentityRecord` but `version` and `size`: lengths mostly within their
/// fields (so most inputs decode), sometimes as drawn.
#[derive(Arbitrary, Debug)]
struct IdentityInput {
    in_bounds: bool,
    pid: u32,
    flags: u32,
    process_start_ns: u64,
    cgroup_id: u64,
    env_len: u64,
    env_skip: u32,
    env_read: u32,
    lens: [u32; 3],
    comm: [u8; 16],
    names: [Vec<u8>; 3],
    environ: Vec<u8>,
}

fn identity_record(input: &IdentityInput) -> Box<IdentityRecord> {
    // SAFETY: plain integers: all-zero bytes are a valid value.
    let mut rec = unsafe { Box::<IdentityRecord>::new_zeroed().assume_init() };
    rec.version = IDENTITY_RECORD_VERSION;
    rec.size = size_of::<IdentityRecord>() as u32;
    rec.pid = input.pid;
    rec.flags = input.flags;
    rec.process_start_ns = input.process_start_ns;
    rec.cgroup_id = input.cgroup_id;
    rec.comm = input.comm;
    let (mut skip, mut read, mut lens) = (input.env_skip, input.env_read, input.lens);
    let mut env_len = input.env_len;
    if input.in_bounds {
        skip %= ENV_PAGE as u32;
        read = (read % (ENV_WINDOW / ENV_PAGE + 1) as u32) * ENV_PAGE as u32;
        lens = lens.map(|l| l % IDENTITY_NAME_LEN as u32);
        env_len = env_len.min(input.environ.len() as u64);
    }
    rec.env_skip = skip;
    rec.env_read = read;
    rec.env_len = env_len;
    let n = input.environ.len().min(ENV_WINDOW);
    rec.env[..n].copy_from_slice(&input.environ[..n]);
    let fields = [&mut rec.exe, &mut rec.cgroup, &mut rec.cgroup_parent];
    for (field, name) in fields.into_iter().zip(&input.names) {
        let n = name.len().min(IDENTITY_NAME_LEN);
        field[..n].copy_from_slice(&name[..n]);
    }
    (rec.exe_len, rec.cgroup_len, rec.cgroup_parent_len) = (lens[0], lens[1], lens[2]);
    rec
}

/// What the decoder must make of an identity record with a right header.
fn check_identity(rec: &IdentityRecord, decoded: Result<Record, DecodeError>) {
    let in_bounds = [rec.exe_len, rec.cgroup_len, rec.cgroup_parent_len]
        .iter()
        .all(|&l| (l as usize) < IDENTITY_NAME_LEN)
        && (rec.env_skip as usize) < ENV_PAGE
        && rec.env_read as usize <= ENV_WINDOW
        && rec.env_read as usize % ENV_PAGE == 0;
    if !in_bounds {
        assert!(matches!(decoded, Err(DecodeError::IdentityOutOfBounds { .. })), "{decoded:?}");
        return;
    }
    let Ok(Record::Identity(identity)) = decoded else {
        panic!("an in-bounds identity decodes: {decoded:?}")
    };
    assert_eq!(
        (identity.pid, identity.process_start_ns, identity.cgroup_id),
        (rec.pid, rec.process_start_ns, rec.cgroup_id)
    );
    // Exactly the block's bytes within what was read.
    let (skip, read) = (rec.env_skip as usize, rec.env_read as usize);
    let end = (skip as u64).saturating_add(rec.env_len).min(read as u64) as usize;
    let expected = if skip < end { &rec.env[skip..end] } else { &[][..] };
    assert_eq!(identity.environ, expected);
    let cut = rec.flags & (identity_flags::ENV_CUT | identity_flags::ENV_UNREADABLE) != 0;
    assert_eq!(identity.environ_complete, !cut && (skip as u64).saturating_add(rec.env_len) <= read as u64);
    map_identity(&identity);
}

#[derive(Arbitrary, Debug)]
enum Item {
    Call(Input),
    Identity(IdentityInput),
}

fuzz_target!(|item: Item| {
    let input = match item {
        Item::Call(input) => input,
        Item::Identity(input) => {
            let rec = identity_record(&input);
            // SAFETY: `#[repr(C)]` integers and arrays with every padding an explicit field.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&*rec as *const IdentityRecord).cast::<u8>(),
                    size_of::<IdentityRecord>(),
                )
            }
            .to_vec();
            check_identity(&rec, Decoder::default().decode_record(&bytes));
            return;
        }
    };
    let rec = record(&input);
    // In a buffer of exactly its length, so AddressSanitizer sees any read past it.
    let decoded = decode(&rec.wire_bytes().to_vec());
    match expected_error(&rec) {
        Some(error) => assert_eq!(decoded, Err(error)),
        None => {
            let call = decoded.expect("a consistent record with a valid header decodes");
            check_decoded(&rec, &call);
            map_call(&call, &WallClock::from_readings(input.wall_ns.into(), input.monotonic_ns.into()));
        }
    }
});
