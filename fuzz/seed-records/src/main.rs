//! `otel-sendmmsg-fuzz-seeds DIR`: writes one file per record into DIR, each the bytes the BPF
//! side submits for a call (the header and `min(vlen, 64)` detail slots), for calls like those
//! the end-to-end tests make, and for the identity of a process that declares its service.

use std::{error::Error, fs, path::PathBuf};

use otel_sendmmsg_common::{
    name_status, record_flags, CallRecord, Destination, IdentityRecord, MessageResult, SocketInfo,
    TraceContext, ENV_PAGE, IDENTITY_RECORD_VERSION, MAX_MESSAGE_DETAIL, RECORD_VERSION,
};

/// The identity record of a process in a Docker container that declares its service and
/// attributes, its environment block starting `skip` bytes into its first page.
fn identity(skip: usize) -> Vec<u8> {
    // SAFETY: plain integers: all-zero bytes are a valid value.
    let mut rec = unsafe { Box::<IdentityRecord>::new_zeroed().assume_init() };
    rec.version = IDENTITY_RECORD_VERSION;
    rec.size = size_of::<IdentityRecord>() as u32;
    rec.pid = 31378;
    rec.process_start_ns = 4_000_000_000;
    rec.comm[..15].copy_from_slice(b"sendmmsg-worklo");
    let environ = b"PATH=/usr/bin\0OTEL_SERVICE_NAME=checkout\0OTEL_RESOURCE_ATTRIBUTES=service.namespace=shop,deployment.environment.name=prod%20eu\0";
    rec.env[skip..skip + environ.len()].copy_from_slice(environ);
    rec.env_len = environ.len() as u64;
    rec.env_skip = skip as u32;
    rec.env_read = (skip + environ.len()).div_ceil(ENV_PAGE) as u32 * ENV_PAGE as u32;
    let exe = b"sendmmsg-workload";
    rec.exe[..exe.len()].copy_from_slice(exe);
    rec.exe_len = exe.len() as u32;
    let cgroup = b"docker-3f1c0a9e8b7d6c5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a19.scope";
    rec.cgroup[..cgroup.len()].copy_from_slice(cgroup);
    rec.cgroup_len = cgroup.len() as u32;
    // SAFETY: `#[repr(C)]` integers and arrays with every padding an explicit field.
    unsafe {
        std::slice::from_raw_parts((&*rec as *const IdentityRecord).cast::<u8>(), size_of::<IdentityRecord>())
    }
    .to_vec()
}

/// A call of `results` messages (bytes sent, or a negative errno), counted as the BPF side
/// counts them.
fn call(vlen: u32, results: &[i32]) -> CallRecord {
    let mut rec = CallRecord {
        version: RECORD_VERSION,
        size: size_of::<CallRecord>() as u32,
        pid: 31378,
        tid: 31378,
        start_ns: 5_000_000_000,
        end_ns: 5_000_008_000,
        msgvec: 0x563d_65f7_fae0,
        ret: 0,
        sockfd: 4,
        vlen,
        flags: 0,
        messages: 0,
        messages_failed: 0,
        first_error: 0,
        first_error_index: 0,
        flags_out: 0,
        bytes: 0,
        sk: 0,
        process_start_ns: 0,
        comm: *b"sendmmsg-worklo\0",
        socket: SocketInfo::default(),
        parent: TraceContext::default(),
        detail: [MessageResult::default(); MAX_MESSAGE_DETAIL],
    };
    for (i, &ret) in results.iter().enumerate() {
        if let Some(slot) = rec.detail.get_mut(i) {
            slot.ret = ret;
            slot.offset_ns = 2_000 * (i as u64 + 1);
        }
        rec.messages += 1;
        if ret >= 0 {
            rec.bytes += ret as u64;
        } else {
            if rec.messages_failed == 0 {
                rec.first_error = ret;
                rec.first_error_index = i as u32;
            }
            rec.messages_failed += 1;
        }
    }
    // The call returns the messages sent before the first failure (or its errno if none was).
    let sent = results.iter().take_while(|&&r| r >= 0).count() as i64;
    rec.ret = if sent == 0 && rec.messages_failed > 0 { rec.first_error.into() } else { sent };
    rec
}

fn ipv4_socket(local_port: u16, peer: Option<([u8; 4], u16)>) -> SocketInfo {
    let mut s = SocketInfo {
        family: libc::AF_INET as u16,
        protocol: libc::IPPROTO_UDP as u16,
        sock_type: libc::SOCK_DGRAM as u16,
        local_port,
        ..Default::default()
    };
    s.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    if let Some((addr, port)) = peer {
        s.peer_addr[..4].copy_from_slice(&addr);
        s.peer_port_be = port.to_be();
    }
    s
}

fn to(addr: std::net::SocketAddr) -> Destination {
    let mut d = Destination { status: name_status::READ, port_be: addr.port().to_be(), ..Default::default() };
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            d.family = libc::AF_INET as u16;
            d.addr[..4].copy_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            d.family = libc::AF_INET6 as u16;
            d.addr = ip.octets();
        }
    }
    d
}

fn seeds() -> Vec<(&'static str, CallRecord)> {
    let mut out = Vec::new();

    // README's example: connected UDP over IPv4, message 3 of 4 refused (EMSGSIZE).
    let mut rec = call(4, &[15, 15, -libc::EMSGSIZE]);
    rec.socket = ipv4_socket(44448, Some(([127, 0, 0, 1], 47225)));
    out.push(("udp4-refused-mid-batch", rec));

    // Unconnected UDP over IPv6, every message to the same explicit destination, inside an
    // application's span, MSG_DONTWAIT.
    let mut rec = call(8, &[100; 8]);
    rec.flags = libc::MSG_DONTWAIT as u32;
    rec.socket = SocketInfo {
        family: libc::AF_INET6 as u16,
        protocol: libc::IPPROTO_UDP as u16,
        sock_type: libc::SOCK_DGRAM as u16,
        local_port: 5353,
        local_addr: std::net::Ipv6Addr::LOCALHOST.octets(),
        ..Default::default()
    };
    for slot in &mut rec.detail[..8] {
        slot.dest = to("[::1]:853".parse().unwrap());
    }
    rec.flags_out = record_flags::PARENT;
    rec.parent = TraceContext { trace_id: [0x4b; 16], span_id: [0xf0; 8] };
    out.push(("udp6-explicit-destination-with-parent", rec));

    // Explicit destinations that differ, one unreadable msg_name, one of another family.
    let mut rec = call(4, &[20, 20, -libc::EFAULT]);
    rec.socket = ipv4_socket(40000, None);
    rec.detail[0].dest = to("10.0.0.1:53".parse().unwrap());
    rec.detail[1].dest = to("10.0.0.2:53".parse().unwrap());
    rec.detail[2].dest = Destination { status: name_status::UNREADABLE, ..Default::default() };
    rec.detail[3].dest =
        Destination { status: name_status::OTHER_FAMILY, family: libc::AF_UNIX as u16, ..Default::default() };
    out.push(("udp4-mixed-destinations", rec));

    // A bad fd: the call fails before any message; no socket context.
    let mut rec = call(2, &[]);
    rec.sockfd = 999;
    rec.ret = -(libc::EBADF as i64);
    out.push(("ebadf", rec));

    // A unix datagram pair, sizes read from msg_len at exit (no per-message hook).
    let mut rec = call(3, &[7, 7, 7]);
    rec.flags_out = record_flags::SIZES_FROM_MSG_LEN;
    rec.socket =
        SocketInfo { family: libc::AF_UNIX as u16, sock_type: libc::SOCK_DGRAM as u16, ..Default::default() };
    out.push(("unix-sizes-only", rec));

    // More messages than detail slots: a full-length record.
    let mut rec = call(100, &[64; 100]);
    rec.flags = (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32;
    rec.socket = ipv4_socket(44448, Some(([10, 1, 2, 3], 443)));
    out.push(("udp4-100-messages", rec));

    // vlen 0: the header alone.
    out.push(("vlen-0", call(0, &[])));
    out
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir: PathBuf = std::env::args_os().nth(1).ok_or("usage: otel-sendmmsg-fuzz-seeds DIR")?.into();
    fs::create_dir_all(&dir)?;
    for (name, rec) in seeds() {
        fs::write(dir.join(format!("seed-{name}")), rec.wire_bytes())?;
    }
    fs::write(dir.join("seed-identity"), identity(0))?;
    fs::write(dir.join("seed-identity-mid-page"), identity(4000))?;
    Ok(())
}
