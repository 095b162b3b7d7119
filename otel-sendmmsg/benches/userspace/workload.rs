//! The calls the user-space benches feed the sidecar: the benchmark workload's (`sendmmsg-workload
//! loop`), as the tracepoint family's BPF side records them.

use std::sync::Arc;

use otel_sendmmsg::process::ProcessInfo;
use otel_sendmmsg_common::{
    name_status, CallRecord, Destination, MessageResult, SocketInfo, TraceContext, MAX_MESSAGE_DETAIL,
    RECORD_VERSION,
};

/// A record as the tracepoint family's BPF side writes it for the benchmark's workload: a call
/// of `vlen` 64-byte messages, all sent, on a connected loopback UDP socket, no `msg_name`.
pub fn record(vlen: u32) -> CallRecord {
    let loopback = |port: u16| {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        (addr, port)
    };
    let (local_addr, local_port) = loopback(40_123);
    let (peer_addr, peer_port) = loopback(40_124);
    let mut rec = CallRecord {
        version: RECORD_VERSION,
        size: size_of::<CallRecord>() as u32,
        pid: 31_378,
        tid: 31_378,
        start_ns: 5_000_000_000,
        end_ns: 5_000_000_000 + 1_500 + 600 * u64::from(vlen),
        msgvec: 0x563d_65f7_fae0,
        ret: i64::from(vlen),
        sockfd: 4,
        vlen,
        flags: 0,
        messages: vlen,
        messages_failed: 0,
        first_error: 0,
        first_error_index: 0,
        flags_out: 0,
        bytes: 64 * u64::from(vlen),
        sk: 0,
        process_start_ns: 1_000_000_000,
        comm: *b"otelbench-load\0\0",
        socket: SocketInfo {
            family: libc::AF_INET as u16,
            protocol: libc::IPPROTO_UDP as u16,
            sock_type: libc::SOCK_DGRAM as u16,
            local_port,
            peer_port_be: peer_port.to_be(),
            _pad: [0; 3],
            local_addr,
            peer_addr,
        },
        parent: TraceContext::default(),
        detail: [MessageResult::default(); MAX_MESSAGE_DETAIL],
    };
    for (i, slot) in rec.detail.iter_mut().take(vlen as usize).enumerate() {
        slot.ret = 64;
        slot.offset_ns = 1_000 + 600 * i as u64;
        slot.dest = Destination { status: name_status::NONE, ..Destination::default() };
    }
    rec
}

/// The process the calls come from, as the process cache knows it.
pub fn process() -> Arc<ProcessInfo> {
    Arc::new(ProcessInfo {
        pid: 31_378,
        executable_name: Some("otelbench-load".into()),
        service_name: "otelbench-load".into(),
        container_id: None,
        attributes: Vec::new(),
    })
}
