//! What a call and each of its messages say as attributes: the mapping of a record's fields to
//! OpenTelemetry's keys (README, "The span"), and the call's status, which follows from the same
//! errors as `error.type`. Written into an [`Attributes`], so this stays the only mapping
//! whether the attributes become the SDK's `KeyValue`s or OTLP's bytes.

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
};

use opentelemetry::{trace::Status, KeyValue};
use otel_sendmmsg_common::MessageResult;

use super::SpanOptions;
use crate::{
    names::{errno_name, MsgFlagNames},
    records::{Call, Dest, Socket},
};

/// The most attributes a call's span can have: its arguments and result (9), `error.type` and
/// the unreadable destination's index, `network.*` (6), the process and thread (3).
pub(super) const MAX_CALL_ATTRIBUTES: usize = 24;
/// A message's: index, bytes or `error.type`, offset, and its destination (2).
pub(super) const MAX_MESSAGE_ATTRIBUTES: usize = 5;

/// Where attributes go as they are made. Every key is a constant: a writer of bytes can copy
/// it as it is; every value an integer or text, borrowed for the length of the call.
pub trait Attributes {
    fn int(&mut self, key: &'static str, value: i64);
    fn text(&mut self, key: &'static str, value: &str);
}

impl Attributes for Vec<KeyValue> {
    fn int(&mut self, key: &'static str, value: i64) {
        self.push(KeyValue::new(key, value));
    }

    fn text(&mut self, key: &'static str, value: &str) {
        self.push(KeyValue::new(key, value.to_owned()));
    }
}

/// The call's attributes, and its status: ERROR when the call failed or, as far as the hooks in
/// use can tell, one of its messages did.
pub(super) fn of_call(call: &Call, options: SpanOptions, out: &mut impl Attributes) -> Status {
    // Sizes read at exit know nothing of failed messages: no counters but the bytes, and those
    // only when every sent message was read (64 at most).
    let totals = (options.per_message && !call.sizes_only).then_some(&call.messages);

    out.int("sendmmsg.sockfd", i64::from(call.sockfd));
    out.int("sendmmsg.vlen", i64::from(call.vlen));
    out.int("sendmmsg.flags", i64::from(call.flags));
    if options.msgvec_address {
        with_formatted(format_args!("{:#x}", call.msgvec), |text| out.text("sendmmsg.msgvec", text));
    }
    if call.flags != 0 {
        with_formatted(format_args!("{}", MsgFlagNames(call.flags)), |text| {
            out.text("sendmmsg.flags.names", text)
        });
    }
    if call.ret >= 0 {
        out.int("sendmmsg.sent", call.ret);
    }
    if let Some(totals) = totals {
        out.int("sendmmsg.bytes", totals.bytes as i64);
        out.int("sendmmsg.messages.attempted", i64::from(totals.seen));
        out.int("sendmmsg.messages.failed", i64::from(totals.failed));
    } else if call.sizes_only && call.ret == i64::from(call.messages.seen) {
        out.int("sendmmsg.bytes", call.messages.bytes as i64);
    }

    // The call's own error wins: it is what the caller saw. Otherwise the first failed message,
    // whose error the kernel does not return when earlier messages went out.
    let status = if call.ret < 0 {
        let name = errno_name(call.ret);
        out.text("error.type", &name);
        Status::error(format!("sendmmsg failed: {name}"))
    } else if let Some((index, errno)) = totals.and_then(|t| t.first_error) {
        let name = errno_name(errno.into());
        out.text("error.type", &name);
        Status::error(format!("message {index} of {} failed: {name}", call.vlen))
    } else {
        Status::Unset
    };

    put_network_attributes(call, out);
    if let Some(index) = call.destinations.iter().position(|d| *d == Dest::Unreadable) {
        // The kernel fails that message with EFAULT before sending it, and reports no error
        // for it when earlier messages went out: this is the only trace of it.
        out.int("sendmmsg.msg_name.unreadable_index", index as i64);
    }
    out.int("process.pid", i64::from(call.pid));
    out.int("thread.id", i64::from(call.tid));
    out.text("thread.name", &call.comm);
    status
}

/// The attributes of message `index` of `call`, sent `offset_ns` after the call's start, and
/// its status as a span of its own.
pub(super) fn of_message(
    call: &Call,
    index: usize,
    message: &MessageResult,
    offset_ns: u64,
    out: &mut impl Attributes,
) -> Status {
    out.int("sendmmsg.message.index", index as i64);
    let status = if message.ret >= 0 {
        out.int("sendmmsg.message.bytes", i64::from(message.ret));
        Status::Unset
    } else {
        let name = errno_name(message.ret.into());
        out.text("error.type", &name);
        Status::error(name)
    };
    out.int("sendmmsg.message.offset_ns", offset_ns as i64);
    if let Some(Dest::Addr(to)) = call.destinations.get(index) {
        peer(to, out);
    }
    status
}

/// `network.*` attributes: the transport and addresses of the socket, and as peer either the
/// connected one or the one explicit destination every message shares.
fn put_network_attributes(call: &Call, out: &mut impl Attributes) {
    if let Some(socket) = &call.socket {
        out.text("network.transport", &transport(socket));
        if let Some(network_type) = network_type(socket.family) {
            out.text("network.type", network_type);
        }
        if let Some(local) = socket.local {
            ip_text(local.ip(), |text| out.text("network.local.address", text));
            out.int("network.local.port", i64::from(local.port()));
        }
    }
    let connected = call.socket.and_then(|s| s.peer);
    let shared = match call.destinations.split_first() {
        Some((Dest::Addr(first), rest)) if rest.iter().all(|d| *d == Dest::Addr(*first)) => Some(*first),
        _ => None,
    };
    if let Some(to) = connected.or(shared) {
        peer(&to, out);
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

pub(crate) fn peer(to: &SocketAddr, out: &mut impl Attributes) {
    ip_text(to.ip(), |text| out.text("network.peer.address", text));
    out.int("network.peer.port", i64::from(to.port()));
}

/// An address as `Display` shows it, handed to `use_text`. IPv4, every span's usual two, is
/// written digit by digit: through `Display` the two were a sixth of the sidecar's
/// instructions per span (benches/userspace.rs under callgrind).
fn ip_text(ip: IpAddr, use_text: impl FnOnce(&str)) {
    let IpAddr::V4(v4) = ip else {
        return with_formatted(format_args!("{ip}"), use_text);
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
    use_text(std::str::from_utf8(&text[..len]).unwrap_or_default());
}

/// `args` formatted on the stack and handed to `use_text`, without allocating; longer text
/// than the stack's room (many flags' names at once, rarely) goes through a `String`.
fn with_formatted(args: std::fmt::Arguments<'_>, use_text: impl FnOnce(&str)) {
    struct Stack {
        bytes: [u8; 64],
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
    let mut stack = Stack { bytes: [0; 64], len: 0 };
    match std::fmt::write(&mut stack, args) {
        // Whole `str`s were written: still UTF-8.
        Ok(()) => use_text(std::str::from_utf8(&stack.bytes[..stack.len]).unwrap_or_default()),
        Err(_) => use_text(&args.to_string()),
    }
}

fn transport(socket: &Socket) -> Cow<'static, str> {
    transport_name(socket.family, socket.sock_type, socket.protocol)
}

/// OpenTelemetry's `network.transport` names, from a socket's family, type and protocol.
pub(crate) fn transport_name(family: u16, sock_type: u16, protocol: u16) -> Cow<'static, str> {
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
        assert_eq!(transport(&unix), "unix");
        let odd =
            Socket { family: libc::AF_INET as u16, protocol: 253, sock_type: libc::SOCK_RAW as u16, ..unix };
        assert_eq!(transport(&odd), "protocol 253");
    }

    fn text_of(write: impl FnOnce(&mut dyn FnMut(&str))) -> String {
        let mut got = String::new();
        write(&mut |text| got = text.to_owned());
        got
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
            assert_eq!(text_of(|f| ip_text(ip, f)), ip.to_string());
        }
        let long = format!("{:>60}", "x");
        assert_eq!(text_of(|f| with_formatted(format_args!("{:>60}", "x"), f)), long);
        assert_eq!(
            text_of(|f| with_formatted(format_args!("{:#x}", 0x7ffd_1234_5678_u64), f)),
            "0x7ffd12345678"
        );
    }
}
