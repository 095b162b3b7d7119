//! Record -> span: what one `sendmmsg` call looks like in OpenTelemetry. Pure, so the whole
//! attribute mapping is unit-tested without a kernel or a collector.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    trace::{Event, Status},
    KeyValue, Value,
};
use otel_sendmmsg_common::TraceContext;

use crate::{
    clock::WallClock,
    config::MessageView,
    names::{errno_name, msg_flag_names},
    records::{Call, Dest, Socket},
};

pub const SPAN_NAME: &str = "sendmmsg";
pub const MESSAGE_EVENT: &str = "message";

pub const MESSAGE_SPAN_NAME: &str = "sendmmsg.message";

/// A finished `sendmmsg` span, ready for any exporter.
#[derive(Clone, Debug, PartialEq)]
pub struct SyscallSpan {
    /// The calling process, whose resource the span belongs to.
    pub pid: u32,
    /// The application span active on the calling thread: this span's parent, and its trace.
    pub parent: Option<TraceContext>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// One per message with detail, in the order the kernel sent them ([`MessageView::Events`]).
    pub events: Vec<Event>,
    /// One child span per message with detail, in order ([`MessageView::Spans`]).
    pub children: Vec<MessageSpan>,
    pub status: Status,
}

/// One message as a child span of its call: from the previous message's end (or the call's
/// start) to the moment its send returned.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageSpan {
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
}

/// What the hooks in use can tell about a call, and how to show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanOptions {
    /// A per-message hook proved itself at start-up: message counters and events are true.
    /// Without one they would all read 0, so they are left out.
    pub per_message: bool,
    pub view: MessageView,
    /// Show `sendmmsg.msgvec`: a pointer into the caller's memory, which tells whoever reads
    /// the traces where its heap or stack lies (ASLR); off unless asked for.
    pub msgvec_address: bool,
}

/// Builds the span of one call; `clock` places the kernel's monotonic times on the wall clock.
/// The most attributes a call's span can have: its arguments and result (9), `error.type` and
/// the unreadable destination's index, `network.*` (6), the process and thread (3).
const MAX_CALL_ATTRIBUTES: usize = 24;
/// A message's: index, bytes or `error.type`, offset, and its destination (2).
const MAX_MESSAGE_ATTRIBUTES: usize = 5;

pub fn span_for(call: &Call, clock: &WallClock, options: SpanOptions) -> SyscallSpan {
    let start = clock.to_wall(call.start_ns);
    let end = clock.to_wall(call.end_ns);
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
        attributes.push(KeyValue::new("sendmmsg.msgvec", formatted(format_args!("{:#x}", call.msgvec), 18)));
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

    let detail = if options.per_message || call.sizes_only { call.detail.as_slice() } else { &[] };
    let duration_ns = call.end_ns.saturating_sub(call.start_ns);
    let messages = detail.iter().enumerate().map(|(index, message)| {
        let mut attrs = Vec::with_capacity(MAX_MESSAGE_ATTRIBUTES);
        attrs.push(KeyValue::new("sendmmsg.message.index", index as i64));
        if message.ret >= 0 {
            attrs.push(KeyValue::new("sendmmsg.message.bytes", i64::from(message.ret)));
        } else {
            attrs.push(KeyValue::new("error.type", errno_name(message.ret.into())));
        }
        // Sizes read at exit have no time of their own: they are known at the call's end.
        let offset_ns = if call.sizes_only { duration_ns } else { message.offset_ns };
        attrs.push(KeyValue::new("sendmmsg.message.offset_ns", offset_ns as i64));
        if let Some(Dest::Addr(to)) = call.destinations.get(index) {
            attrs.extend(peer(to));
        }
        (start + Duration::from_nanos(offset_ns), message.ret, attrs)
    });
    let (mut events, mut children) = (Vec::new(), Vec::new());
    match options.view {
        MessageView::Events => {
            events = messages.map(|(at, _, attrs)| Event::new(MESSAGE_EVENT, at, attrs, 0)).collect();
        }
        MessageView::Spans => {
            let mut previous_end = start;
            for (at, ret, attributes) in messages {
                let status = if ret < 0 { Status::error(errno_name(ret.into())) } else { Status::Unset };
                children.push(MessageSpan { start: previous_end, end: at, attributes, status });
                previous_end = at;
            }
        }
        MessageView::None => {}
    }

    SyscallSpan { pid: call.pid, parent: call.parent, start, end, attributes, events, children, status }
}

/// `network.*` attributes: the transport and addresses of the socket, and as peer either the
/// connected one or the one explicit destination every message shares.
fn push_network_attributes(call: &Call, attrs: &mut Vec<KeyValue>) {
    if let Some(socket) = &call.socket {
        attrs.push(KeyValue::new("network.transport", transport(socket)));
        match i32::from(socket.family) {
            libc::AF_INET => attrs.push(KeyValue::new("network.type", "ipv4")),
            libc::AF_INET6 => attrs.push(KeyValue::new("network.type", "ipv6")),
            _ => {}
        }
        if let Some(local) = socket.local {
            attrs.push(KeyValue::new("network.local.address", formatted(format_args!("{}", local.ip()), 39)));
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

fn peer(to: &SocketAddr) -> [KeyValue; 2] {
    [
        KeyValue::new("network.peer.address", formatted(format_args!("{}", to.ip()), 39)),
        KeyValue::new("network.peer.port", i64::from(to.port())),
    ]
}

/// `args` written into a string sized for them at once (`to_string` and `format!` grow theirs
/// as they write, a reallocation or two per value on the per-record path).
fn formatted(args: std::fmt::Arguments<'_>, capacity: usize) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(capacity);
    let _ = text.write_fmt(args);
    text
}

/// OpenTelemetry's `network.transport` names, from the socket's family, type and protocol.
fn transport(socket: &Socket) -> Value {
    if i32::from(socket.family) == libc::AF_UNIX {
        return "unix".into();
    }
    match i32::from(socket.protocol) {
        libc::IPPROTO_UDP | libc::IPPROTO_UDPLITE => "udp".into(),
        libc::IPPROTO_TCP | libc::IPPROTO_MPTCP => "tcp".into(),
        libc::IPPROTO_SCTP => "sctp".into(),
        libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => "icmp".into(),
        libc::IPPROTO_RAW => "raw".into(),
        p => match i32::from(socket.sock_type) {
            libc::SOCK_DGRAM => "udp".into(),
            libc::SOCK_STREAM => "tcp".into(),
            _ => format!("protocol {p}").into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::Value;
    use otel_sendmmsg_common::MessageResult;

    use super::*;
    use crate::records::{
        decode,
        tests::{bytes_of, record},
    };

    fn attr<'a>(span: &'a SyscallSpan, key: &str) -> Option<&'a Value> {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
    }

    const PER_MESSAGE: SpanOptions =
        SpanOptions { per_message: true, view: MessageView::Events, msgvec_address: true };

    fn clock() -> WallClock {
        WallClock::from_readings(1_700_000_000_000_000_000, 0)
    }

    #[test]
    fn the_callers_msgvec_pointer_is_shown_only_when_asked_for() {
        let call = decode(&bytes_of(&record(&[100]))).unwrap();
        let hidden = span_for(&call, &clock(), SpanOptions { msgvec_address: false, ..PER_MESSAGE });
        assert_eq!(attr(&hidden, "sendmmsg.msgvec"), None);
        assert_eq!(
            attr(&span_for(&call, &clock(), PER_MESSAGE), "sendmmsg.msgvec"),
            Some(&Value::from("0x7ffd12345678"))
        );
    }

    #[test]
    fn a_successful_call_maps_every_argument_and_result() {
        let call = decode(&bytes_of(&record(&[100, 200]))).unwrap();
        let span = span_for(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "sendmmsg.sockfd"), Some(&Value::I64(7)));
        assert_eq!(attr(&span, "sendmmsg.vlen"), Some(&Value::I64(2)));
        assert_eq!(attr(&span, "sendmmsg.flags"), Some(&Value::I64(libc::MSG_DONTWAIT as i64)));
        assert_eq!(attr(&span, "sendmmsg.flags.names"), Some(&Value::from("MSG_DONTWAIT")));
        assert_eq!(attr(&span, "sendmmsg.msgvec"), Some(&Value::from("0x7ffd12345678")));
        assert_eq!(attr(&span, "sendmmsg.sent"), Some(&Value::I64(2)));
        assert_eq!(attr(&span, "sendmmsg.bytes"), Some(&Value::I64(300)));
        assert_eq!(attr(&span, "sendmmsg.messages.failed"), Some(&Value::I64(0)));
        assert_eq!(attr(&span, "process.pid"), Some(&Value::I64(4242)));
        assert_eq!(attr(&span, "thread.id"), Some(&Value::I64(4243)));
        assert_eq!(attr(&span, "thread.name"), Some(&Value::from("publisher")));
        assert_eq!(attr(&span, "error.type"), None);
        assert_eq!(span.status, Status::Unset);
        assert_eq!(span.end.duration_since(span.start).unwrap(), Duration::from_nanos(250_000));
    }

    #[test]
    fn a_failed_message_makes_the_span_an_error_and_its_event_says_why() {
        let call = decode(&bytes_of(&record(&[100, -libc::EMSGSIZE]))).unwrap();
        let span = span_for(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "sendmmsg.sent"), Some(&Value::I64(1)));
        assert_eq!(attr(&span, "sendmmsg.messages.failed"), Some(&Value::I64(1)));
        assert_eq!(attr(&span, "error.type"), Some(&Value::from("EMSGSIZE")));
        assert_eq!(span.status, Status::error("message 1 of 2 failed: EMSGSIZE"));
        assert_eq!(span.events.len(), 2);
        let failed = &span.events[1];
        assert_eq!(failed.name, MESSAGE_EVENT);
        assert!(failed.attributes.contains(&KeyValue::new("error.type", "EMSGSIZE")));
        assert!(failed.attributes.contains(&KeyValue::new("sendmmsg.message.index", 1)));
        assert_eq!(failed.timestamp, span.start + Duration::from_nanos(2_000));
        assert!(span.events[0].attributes.contains(&KeyValue::new("sendmmsg.message.bytes", 100)));
    }

    #[test]
    fn a_failed_call_has_no_sent_count_and_reports_its_errno() {
        let mut rec = record(&[]);
        rec.ret = -(libc::EBADF as i64);
        rec.flags = 0;
        let span = span_for(&decode(&bytes_of(&rec)).unwrap(), &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "sendmmsg.sent"), None);
        assert_eq!(attr(&span, "sendmmsg.flags.names"), None);
        assert_eq!(attr(&span, "error.type"), Some(&Value::from("EBADF")));
        assert_eq!(span.status, Status::error("sendmmsg failed: EBADF"));
        assert!(span.events.is_empty());
    }

    #[test]
    fn without_a_per_message_hook_message_fields_are_left_out_not_zero() {
        let call = decode(&bytes_of(&record(&[100, -libc::EMSGSIZE]))).unwrap();
        let span = span_for(
            &call,
            &clock(),
            SpanOptions { per_message: false, view: MessageView::Events, msgvec_address: false },
        );
        for key in ["sendmmsg.bytes", "sendmmsg.messages.attempted", "sendmmsg.messages.failed", "error.type"]
        {
            assert_eq!(attr(&span, key), None, "{key}");
        }
        assert_eq!(attr(&span, "sendmmsg.sent"), Some(&Value::I64(1)));
        assert!(span.events.is_empty());
        assert_eq!(span.status, Status::Unset);
    }

    #[test]
    fn message_detail_as_child_spans_tiles_the_call_in_order() {
        let call = decode(&bytes_of(&record(&[100, -libc::EMSGSIZE]))).unwrap();
        let options = SpanOptions { per_message: true, view: MessageView::Spans, msgvec_address: false };
        let span = span_for(&call, &clock(), options);
        assert!(span.events.is_empty());
        assert_eq!(span.children.len(), 2);
        let (first, second) = (&span.children[0], &span.children[1]);
        assert_eq!((first.start, first.end), (span.start, span.start + Duration::from_nanos(1_000)));
        assert_eq!((second.start, second.end), (first.end, span.start + Duration::from_nanos(2_000)));
        assert_eq!(first.status, Status::Unset);
        assert_eq!(second.status, Status::error("EMSGSIZE"));
        assert!(second.attributes.contains(&KeyValue::new("error.type", "EMSGSIZE")));
        let none = span_for(
            &call,
            &clock(),
            SpanOptions { per_message: true, view: MessageView::None, msgvec_address: false },
        );
        assert!(none.events.is_empty() && none.children.is_empty());
        assert_eq!(attr(&none, "sendmmsg.messages.failed"), Some(&Value::I64(1)));
    }

    fn udp4_socket(peer: Option<&str>) -> Socket {
        Socket {
            family: libc::AF_INET as u16,
            protocol: libc::IPPROTO_UDP as u16,
            sock_type: libc::SOCK_DGRAM as u16,
            local: Some("127.0.0.1:5000".parse().unwrap()),
            peer: peer.map(|p| p.parse().unwrap()),
        }
    }

    #[test]
    fn a_connected_socket_gives_transport_type_and_both_ends() {
        let mut call = decode(&bytes_of(&record(&[10]))).unwrap();
        call.socket = Some(udp4_socket(Some("127.0.0.1:53")));
        let span = span_for(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "network.transport"), Some(&Value::from("udp")));
        assert_eq!(attr(&span, "network.type"), Some(&Value::from("ipv4")));
        assert_eq!(attr(&span, "network.local.address"), Some(&Value::from("127.0.0.1")));
        assert_eq!(attr(&span, "network.local.port"), Some(&Value::I64(5000)));
        assert_eq!(attr(&span, "network.peer.address"), Some(&Value::from("127.0.0.1")));
        assert_eq!(attr(&span, "network.peer.port"), Some(&Value::I64(53)));
    }

    #[test]
    fn explicit_destinations_go_on_each_event_and_on_the_span_only_when_shared() {
        let mut call = decode(&bytes_of(&record(&[10, 20]))).unwrap();
        call.socket = Some(udp4_socket(None));
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:53".parse().unwrap(), "[::1]:853".parse().unwrap());
        call.destinations = vec![Dest::Addr(a), Dest::Addr(b)];
        let span = span_for(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "network.peer.address"), None, "two destinations: none on the span");
        assert!(span.events[0].attributes.contains(&KeyValue::new("network.peer.address", "10.0.0.1")));
        assert!(span.events[1].attributes.contains(&KeyValue::new("network.peer.address", "::1")));
        assert!(span.events[1].attributes.contains(&KeyValue::new("network.peer.port", 853)));
        call.destinations = vec![Dest::Addr(a), Dest::Addr(a)];
        let span = span_for(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "network.peer.address"), Some(&Value::from("10.0.0.1")));
    }

    #[test]
    fn an_unreadable_msg_name_is_recorded_not_fatal() {
        let mut call = decode(&bytes_of(&record(&[10]))).unwrap();
        call.destinations = vec![Dest::Peer, Dest::Unreadable];
        let span = span_for(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "sendmmsg.msg_name.unreadable_index"), Some(&Value::I64(1)));
        assert_eq!(span.events.len(), 1);
    }

    #[test]
    fn a_msg_name_shorter_than_its_address_names_no_destination() {
        let mut call = decode(&bytes_of(&record(&[10, 20]))).unwrap();
        call.socket = Some(udp4_socket(None));
        let a: SocketAddr = "10.0.0.1:53".parse().unwrap();
        // The kernel refused the second message for its length: it went nowhere.
        call.destinations = vec![Dest::Addr(a), Dest::BadLength];
        let span = span_for(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "network.peer.address"), None, "not every message went to it");
        assert_eq!(attr(&span, "sendmmsg.msg_name.unreadable_index"), None, "it was readable");
        assert!(!span.events[1].attributes.iter().any(|kv| kv.key.as_str().starts_with("network.peer")));
        call.destinations = vec![Dest::BadLength, Dest::BadLength];
        let span = span_for(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "network.peer.address"), None);
    }

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
    fn sizes_read_at_exit_give_bytes_and_events_but_no_failure_counts() {
        let mut call = decode(&bytes_of(&record(&[100, 200]))).unwrap();
        call.sizes_only = true;
        let options = SpanOptions { per_message: false, view: MessageView::Events, msgvec_address: false };
        let span = span_for(&call, &clock(), options);
        assert_eq!(attr(&span, "sendmmsg.bytes"), Some(&Value::I64(300)));
        assert_eq!(attr(&span, "sendmmsg.messages.attempted"), None);
        assert_eq!(attr(&span, "sendmmsg.messages.failed"), None);
        assert_eq!(span.events.len(), 2);
        assert_eq!(span.events[1].timestamp, span.end, "known at the call's end");
        call.ret = 100; // more sent than the 64 slots read: the sum would be short
        let span = span_for(&call, &clock(), options);
        assert_eq!(attr(&span, "sendmmsg.bytes"), None);
    }

    #[test]
    fn the_calls_own_error_wins_over_a_messages() {
        let mut rec = record(&[-libc::EAGAIN]);
        rec.ret = -(libc::EAGAIN as i64);
        rec.detail[0] = MessageResult { ret: -libc::EAGAIN, offset_ns: 10, ..Default::default() };
        let span = span_for(&decode(&bytes_of(&rec)).unwrap(), &clock(), PER_MESSAGE);
        assert_eq!(span.status, Status::error("sendmmsg failed: EAGAIN"));
        assert_eq!(span.attributes.iter().filter(|kv| kv.key.as_str() == "error.type").count(), 1);
    }
}
