//! What a call and each of its messages say as attributes: the mapping of a record's fields to
//! OpenTelemetry's keys (README, "The span"), and the call's status, which follows from the same
//! errors as `error.type`.

use std::net::{IpAddr, SocketAddr};

use opentelemetry::{trace::Status, KeyValue, Value};
use otel_sendmmsg_common::MessageResult;

use super::SpanOptions;
use crate::{
    names::{errno_name, msg_flag_names},
    records::{Call, Dest, Socket},
};

/// The most attributes a call's span can have: its arguments and result (9), `error.type` and
/// the unreadable destination's index, `network.*` (6), the process and thread (3).
const MAX_CALL_ATTRIBUTES: usize = 24;
/// A message's: index, bytes or `error.type`, offset, and its destination (2).
const MAX_MESSAGE_ATTRIBUTES: usize = 5;

/// The call's attributes, and its status: ERROR when the call failed or, as far as the hooks in
/// use can tell, one of its messages did.
pub(super) fn of_call(call: &Call, options: SpanOptions) -> (Vec<KeyValue>, Status) {
    // Sizes read at exit know nothing of failed messages: no counters but the bytes, and those
    // only when every sent message was read (64 at most).
    let totals = (options.per_message && !call.sizes_only).then_some(&call.messages);

    // Sized for the most a call can have, so building it never reallocates (a profile of the
    // sidecar at 300k calls/s showed ~25% of its time in realloc, free and the copies).
    let mut attributes = Vec::with_capacity(MAX_CALL_ATTRIBUTES);
    attributes.extend([
        KeyValue::new("sendmmsg.sockfd", i64::from(call.sockfd)),
        KeyValue::new("sendmmsg.vlen", i64::from(call.vlen)),
        KeyValue::new("sendmmsg.flags", i64::from(call.flags)),
    ]);
    if options.msgvec_address {
        attributes.push(KeyValue::new("sendmmsg.msgvec", formatted(format_args!("{:#x}", call.msgvec))));
    }
    if call.flags != 0 {
        attributes.push(KeyValue::new("sendmmsg.flags.names", msg_flag_names(call.flags)));
    }
    if call.ret >= 0 {
        attributes.push(KeyValue::new("sendmmsg.sent", call.ret));
    }
    if let Some(totals) = totals {
        attributes.extend([
            KeyValue::new("sendmmsg.bytes", totals.bytes as i64),
            KeyValue::new("sendmmsg.messages.attempted", i64::from(totals.seen)),
            KeyValue::new("sendmmsg.messages.failed", i64::from(totals.failed)),
        ]);
    } else if call.sizes_only && call.ret == i64::from(call.messages.seen) {
        attributes.push(KeyValue::new("sendmmsg.bytes", call.messages.bytes as i64));
    }

    // The call's own error wins: it is what the caller saw. Otherwise the first failed message,
    // whose error the kernel does not return when earlier messages went out.
    let status = if call.ret < 0 {
        let name = errno_name(call.ret);
        attributes.push(KeyValue::new("error.type", name.clone()));
        Status::error(format!("sendmmsg failed: {name}"))
    } else if let Some((index, errno)) = totals.and_then(|t| t.first_error) {
        let name = errno_name(errno.into());
        attributes.push(KeyValue::new("error.type", name.clone()));
        Status::error(format!("message {index} of {} failed: {name}", call.vlen))
    } else {
        Status::Unset
    };

    push_network_attributes(call, &mut attributes);
    if let Some(index) = call.destinations.iter().position(|d| *d == Dest::Unreadable) {
        // The kernel fails that message with EFAULT before sending it, and reports no error
        // for it when earlier messages went out: this is the only trace of it.
        attributes.push(KeyValue::new("sendmmsg.msg_name.unreadable_index", index as i64));
    }
    attributes.extend([
        KeyValue::new("process.pid", i64::from(call.pid)),
        KeyValue::new("thread.id", i64::from(call.tid)),
        KeyValue::new("thread.name", call.comm.clone()),
    ]);
    (attributes, status)
}

/// The attributes of message `index` of `call`, sent `offset_ns` after the call's start.
pub(super) fn of_message(
    call: &Call,
    index: usize,
    message: &MessageResult,
    offset_ns: u64,
) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(MAX_MESSAGE_ATTRIBUTES);
    attrs.push(KeyValue::new("sendmmsg.message.index", index as i64));
    if message.ret >= 0 {
        attrs.push(KeyValue::new("sendmmsg.message.bytes", i64::from(message.ret)));
    } else {
        attrs.push(KeyValue::new("error.type", errno_name(message.ret.into())));
    }
    attrs.push(KeyValue::new("sendmmsg.message.offset_ns", offset_ns as i64));
    if let Some(Dest::Addr(to)) = call.destinations.get(index) {
        attrs.extend(peer(to));
    }
    attrs
}

/// `network.*` attributes: the transport and addresses of the socket, and as peer either the
/// connected one or the one explicit destination every message shares.
fn push_network_attributes(call: &Call, attrs: &mut Vec<KeyValue>) {
    if let Some(socket) = &call.socket {
        attrs.push(KeyValue::new("network.transport", transport(socket)));
        if let Some(network_type) = network_type(socket.family) {
            attrs.push(KeyValue::new("network.type", network_type));
        }
        if let Some(local) = socket.local {
            attrs.push(KeyValue::new("network.local.address", ip_text(local.ip())));
            attrs.push(KeyValue::new("network.local.port", i64::from(local.port())));
        }
    }
    let connected = call.socket.and_then(|s| s.peer);
    let shared = match call.destinations.split_first() {
        Some((Dest::Addr(first), rest)) if rest.iter().all(|d| *d == Dest::Addr(*first)) => Some(*first),
        _ => None,
    };
    if let Some(to) = connected.or(shared) {
        attrs.extend(peer(&to));
    }
}

/// OpenTelemetry's `network.type`, for the families that have one.
pub(crate) fn network_type(family: u16) -> Option<&'static str> {
    match i32::from(family) {
        libc::AF_INET => Some("ipv4"),
        libc::AF_INET6 => Some("ipv6"),
        _ => None,
    }
}

pub(crate) fn peer(to: &SocketAddr) -> [KeyValue; 2] {
    [
        KeyValue::new("network.peer.address", ip_text(to.ip())),
        KeyValue::new("network.peer.port", i64::from(to.port())),
    ]
}

/// An address as `Display` shows it. IPv4, every span's usual two, is written digit by digit:
/// through `Display` the two were a sixth of the sidecar's instructions per span
/// (benches/userspace.rs under callgrind).
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return formatted(format_args!("{ip}"));
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    // Digits and dots: always UTF-8.
    std::str::from_utf8(&text[..len]).unwrap_or_default().to_owned()
}

/// `args` written into a string of exactly their length: an attribute's value becomes a
/// `Box<str>`, which reallocates a `String` with room to spare (`to_string` and `format!` also
/// grow theirs as they write). Formatted on the stack first; longer text is grown as it comes.
fn formatted(args: std::fmt::Arguments<'_>) -> String {
    struct Stack {
        bytes: [u8; 48],
        len: usize,
    }
    impl std::fmt::Write for Stack {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.len + s.len();
            self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut stack = Stack { bytes: [0; 48], len: 0 };
    match std::fmt::write(&mut stack, args) {
        // Whole `str`s were written: still UTF-8.
        Ok(()) => std::str::from_utf8(&stack.bytes[..stack.len]).unwrap_or_default().to_owned(),
        Err(_) => args.to_string(),
    }
}

fn transport(socket: &Socket) -> Value {
    transport_name(socket.family, socket.sock_type, socket.protocol)
}

/// OpenTelemetry's `network.transport` names, from a socket's family, type and protocol.
pub(crate) fn transport_name(family: u16, sock_type: u16, protocol: u16) -> Value {
    if i32::from(family) == libc::AF_UNIX {
        return "unix".into();
    }
    match i32::from(protocol) {
        libc::IPPROTO_UDP | libc::IPPROTO_UDPLITE => "udp".into(),
        libc::IPPROTO_TCP | libc::IPPROTO_MPTCP => "tcp".into(),
        libc::IPPROTO_SCTP => "sctp".into(),
        libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => "icmp".into(),
        libc::IPPROTO_RAW => "raw".into(),
        p => match i32::from(sock_type) {
            libc::SOCK_DGRAM => "udp".into(),
            libc::SOCK_STREAM => "tcp".into(),
            _ => format!("protocol {p}").into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_sockets_are_unix_and_other_protocols_keep_their_number() {
        let unix = Socket {
            family: libc::AF_UNIX as u16,
            protocol: 0,
            sock_type: libc::SOCK_DGRAM as u16,
            local: None,
            peer: None,
        };
        assert_eq!(transport(&unix).as_str(), "unix");
        let odd =
            Socket { family: libc::AF_INET as u16, protocol: 253, sock_type: libc::SOCK_RAW as u16, ..unix };
        assert_eq!(transport(&odd).as_str(), "protocol 253");
    }

    #[test]
    fn addresses_read_as_display_shows_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "1.22.133.9",
            "100.64.0.99",
            "::1",
            "fe80::1:2",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        let long = format!("{:>60}", "x");
        assert_eq!(formatted(format_args!("{:>60}", "x")), long);
        assert_eq!(formatted(format_args!("{:#x}", 0x7ffd_1234_5678_u64)), "0x7ffd12345678");
    }
}
