//! Record -> the call's finished spans, complete in one place: ids, parent, name, kind, times,
//! status, attributes ([`attributes`]), message events or child spans, instrumentation scope;
//! and the resource they go under ([`resource`]), its process's. [`write`] hands the spans to a
//! [`SpanSink`] as it makes them: the OTLP exporter's writes their bytes straight away
//! (`export::otlp_encode`), [`build`]'s makes the SDK's `SpanData` (the console). No tracer, no
//! provider: every span is already finished, and its resource is its process's. Pure, so the
//! whole mapping is unit-tested without a kernel or a collector.

pub mod attributes;
pub mod resource;

use std::time::{Duration, SystemTime};

use opentelemetry::{
    trace::{Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};
use otel_sendmmsg_common::MessageResult;

use crate::{clock::WallClock, config::MessageView, records::Call};
use attributes::{Attributes, MAX_CALL_ATTRIBUTES, MAX_MESSAGE_ATTRIBUTES};

pub const SPAN_NAME: &str = "sendmmsg";
pub const MESSAGE_EVENT: &str = "message";

pub const MESSAGE_SPAN_NAME: &str = "sendmmsg.message";

/// Every span is sampled: which calls are traced was decided in the kernel. None carries a
/// trace state.
pub const TRACE_FLAGS: TraceFlags = TraceFlags::SAMPLED;

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

/// The span a call's span is the child of: a span of the traced application, in its trace.
pub type Parent = (TraceId, SpanId);

/// The parent a call's span names. Today it is the application span the calling thread had
/// published in the shared trace-context map, which the record carries. Another source (a trace
/// id and parent span id the application passes explicitly) would be chosen here, before this
/// one or instead of it.
pub fn parent_of(call: &Call) -> Option<Parent> {
    call.parent.map(|p| (TraceId::from_bytes(p.trace_id), SpanId::from_bytes(p.span_id)))
}

/// The instrumentation scope of every span: this sidecar, at this version. (Built from static
/// strings: making and cloning it allocates nothing.)
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(env!("CARGO_PKG_NAME")).with_version(env!("CARGO_PKG_VERSION")).build()
}

/// What comes before a span's attributes: who it is, whose child, what, and when.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanHead {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `SpanId::INVALID` for a root span.
    pub parent_span_id: SpanId,
    pub parent_is_remote: bool,
    pub name: &'static str,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// Where a call's spans go as [`write`] makes them: one whole span after another, the parts
/// of each in OTLP's order (its head, its attributes, its events, its status), so a writer of
/// OTLP bytes needs no span in between. Attributes written between `begin_event` and
/// `end_event` are the event's, the others the span's.
pub trait SpanSink: Attributes {
    fn begin(&mut self, head: &SpanHead);
    fn begin_event(&mut self, name: &'static str, at: SystemTime);
    fn end_event(&mut self);
    fn end(&mut self, status: Status);
}

/// What a call's spans were, for what comes after them (the call metrics' exemplars): its own
/// span's trace and id, when it ended, and how many spans the call made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub end: SystemTime,
    pub spans: usize,
}

/// The spans of one call, into `out`: the call's own first, then one child span per message
/// with detail, in the order the kernel sent them ([`MessageView::Spans`]); `clock` places the
/// kernel's monotonic times on the wall clock, `ids` makes the spans' ids (and the trace's).
///
/// With a parent ([`parent_of`]), the call's span joins the parent's trace as a child of a
/// remote span (one another process exported); without one it starts a trace of its own.
/// Children are in the call's trace, children of the call's span.
pub fn write(
    call: &Call,
    clock: &WallClock,
    options: SpanOptions,
    ids: &impl IdGenerator,
    out: &mut impl SpanSink,
) -> Written {
    let start = clock.to_wall(call.start_ns);
    let end = clock.to_wall(call.end_ns);
    let detail = if options.per_message || call.sizes_only { call.detail.as_slice() } else { &[] };
    let duration_ns = call.end_ns.saturating_sub(call.start_ns);
    // Sizes read at exit have no time of their own: they are known at the call's end.
    let offset_of = |message: &MessageResult| {
        if call.sizes_only {
            duration_ns
        } else {
            message.offset_ns
        }
    };

    let parent = parent_of(call);
    let trace_id = parent.map_or_else(|| ids.new_trace_id(), |(trace_id, _)| trace_id);
    let call_id = ids.new_span_id();
    out.begin(&SpanHead {
        trace_id,
        span_id: call_id,
        parent_span_id: parent.map_or(SpanId::INVALID, |(_, span_id)| span_id),
        parent_is_remote: parent.is_some(),
        name: SPAN_NAME,
        kind: SpanKind::Internal,
        start,
        end,
    });
    let status = attributes::of_call(call, options, out);
    if options.view == MessageView::Events {
        for (index, message) in detail.iter().enumerate() {
            let offset_ns = offset_of(message);
            out.begin_event(MESSAGE_EVENT, start + Duration::from_nanos(offset_ns));
            attributes::of_message(call, index, message, offset_ns, out);
            out.end_event();
        }
    }
    out.end(status);

    let children = if options.view == MessageView::Spans { detail } else { &[] };
    // Each from the previous message's end (or the call's start) to the moment its send
    // returned: together they tile the call.
    let mut previous_end = start;
    for (index, message) in children.iter().enumerate() {
        let offset_ns = offset_of(message);
        let at = start + Duration::from_nanos(offset_ns);
        out.begin(&SpanHead {
            trace_id,
            span_id: ids.new_span_id(),
            parent_span_id: call_id,
            parent_is_remote: false,
            name: MESSAGE_SPAN_NAME,
            kind: SpanKind::Internal,
            start: previous_end,
            end: at,
        });
        let status = attributes::of_message(call, index, message, offset_ns, out);
        out.end(status);
        previous_end = at;
    }
    Written { trace_id, span_id: call_id, end, spans: 1 + children.len() }
}

/// The spans of one call as the SDK's `SpanData` ([`write`]), with random ids.
pub fn build(call: &Call, clock: &WallClock, options: SpanOptions) -> Vec<SpanData> {
    finished(call, clock, options, &RandomIdGenerator::default()).0
}

/// The spans of one call as the SDK's `SpanData`, with the ids `ids` makes, and what [`write`]
/// says of them.
pub fn finished(
    call: &Call,
    clock: &WallClock,
    options: SpanOptions,
    ids: &impl IdGenerator,
) -> (Vec<SpanData>, Written) {
    let mut finished = Finished::default();
    let written = write(call, clock, options, ids, &mut finished);
    (finished.spans, written)
}

/// A [`SpanSink`] making `SpanData`.
#[derive(Default)]
struct Finished {
    spans: Vec<SpanData>,
    event: Option<Event>,
    /// Attributes written outside any span: not a sequence [`write`] makes, kept out of all.
    stray: Vec<KeyValue>,
}

impl Finished {
    fn attributes(&mut self) -> &mut Vec<KeyValue> {
        match (&mut self.event, self.spans.last_mut()) {
            (Some(event), _) => &mut event.attributes,
            (None, Some(span)) => &mut span.attributes,
            (None, None) => &mut self.stray,
        }
    }
}

impl Attributes for Finished {
    fn int(&mut self, key: &'static str, value: i64) {
        self.attributes().int(key, value);
    }

    fn text(&mut self, key: &'static str, value: &str) {
        self.attributes().text(key, value);
    }
}

impl SpanSink for Finished {
    fn begin(&mut self, head: &SpanHead) {
        // Sized for the most a span can have, so adding them never reallocates.
        let room = if head.name == SPAN_NAME { MAX_CALL_ATTRIBUTES } else { MAX_MESSAGE_ATTRIBUTES };
        self.spans.push(SpanData {
            span_context: SpanContext::new(
                head.trace_id,
                head.span_id,
                TRACE_FLAGS,
                false,
                TraceState::default(),
            ),
            parent_span_id: head.parent_span_id,
            parent_span_is_remote: head.parent_is_remote,
            span_kind: head.kind.clone(),
            name: head.name.into(),
            start_time: head.start,
            end_time: head.end,
            attributes: Vec::with_capacity(room),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope(),
        });
    }

    fn begin_event(&mut self, name: &'static str, at: SystemTime) {
        self.event = Some(Event::new(name, at, Vec::with_capacity(MAX_MESSAGE_ATTRIBUTES), 0));
    }

    fn end_event(&mut self) {
        if let (Some(event), Some(span)) = (self.event.take(), self.spans.last_mut()) {
            span.events.events.push(event);
        }
    }

    fn end(&mut self, status: Status) {
        if let Some(span) = self.spans.last_mut() {
            span.status = status;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use opentelemetry::{KeyValue, Value};
    use otel_sendmmsg_common::{MessageResult, TraceContext};

    use super::*;
    use crate::records::{
        decode,
        tests::{bytes_of, record},
        Dest, Socket,
    };

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
    }

    const PER_MESSAGE: SpanOptions =
        SpanOptions { per_message: true, view: MessageView::Events, msgvec_address: true };

    /// The call's own span, without its children.
    fn call_span(call: &Call, clock: &WallClock, options: SpanOptions) -> SpanData {
        build(call, clock, options).swap_remove(0)
    }

    fn clock() -> WallClock {
        WallClock::from_readings(1_700_000_000_000_000_000, 0)
    }

    #[test]
    fn the_callers_msgvec_pointer_is_shown_only_when_asked_for() {
        let call = decode(&bytes_of(&record(&[100]))).unwrap();
        let hidden = call_span(&call, &clock(), SpanOptions { msgvec_address: false, ..PER_MESSAGE });
        assert_eq!(attr(&hidden, "sendmmsg.msgvec"), None);
        assert_eq!(
            attr(&call_span(&call, &clock(), PER_MESSAGE), "sendmmsg.msgvec"),
            Some(&Value::from("0x7ffd12345678"))
        );
    }

    #[test]
    fn a_successful_call_maps_every_argument_and_result() {
        let call = decode(&bytes_of(&record(&[100, 200]))).unwrap();
        let span = call_span(&call, &clock(), PER_MESSAGE);
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
        assert_eq!(span.end_time.duration_since(span.start_time).unwrap(), Duration::from_nanos(250_000));
    }

    #[test]
    fn a_failed_message_makes_the_span_an_error_and_its_event_says_why() {
        let call = decode(&bytes_of(&record(&[100, -libc::EMSGSIZE]))).unwrap();
        let span = call_span(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "sendmmsg.sent"), Some(&Value::I64(1)));
        assert_eq!(attr(&span, "sendmmsg.messages.failed"), Some(&Value::I64(1)));
        assert_eq!(attr(&span, "error.type"), Some(&Value::from("EMSGSIZE")));
        assert_eq!(span.status, Status::error("message 1 of 2 failed: EMSGSIZE"));
        assert_eq!(span.events.len(), 2);
        let failed = &span.events[1];
        assert_eq!(failed.name, MESSAGE_EVENT);
        assert!(failed.attributes.contains(&KeyValue::new("error.type", "EMSGSIZE")));
        assert!(failed.attributes.contains(&KeyValue::new("sendmmsg.message.index", 1)));
        assert_eq!(failed.timestamp, span.start_time + Duration::from_nanos(2_000));
        assert!(span.events[0].attributes.contains(&KeyValue::new("sendmmsg.message.bytes", 100)));
    }

    #[test]
    fn a_failed_call_has_no_sent_count_and_reports_its_errno() {
        let mut rec = record(&[]);
        rec.ret = -(libc::EBADF as i64);
        rec.flags = 0;
        let span = call_span(&decode(&bytes_of(&rec)).unwrap(), &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "sendmmsg.sent"), None);
        assert_eq!(attr(&span, "sendmmsg.flags.names"), None);
        assert_eq!(attr(&span, "error.type"), Some(&Value::from("EBADF")));
        assert_eq!(span.status, Status::error("sendmmsg failed: EBADF"));
        assert!(span.events.is_empty());
    }

    #[test]
    fn without_a_per_message_hook_message_fields_are_left_out_not_zero() {
        let call = decode(&bytes_of(&record(&[100, -libc::EMSGSIZE]))).unwrap();
        let span = call_span(
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
        let spans = build(&call, &clock(), options);
        let span = &spans[0];
        assert!(span.events.is_empty());
        assert_eq!(spans.len(), 1 + 2);
        let (first, second) = (&spans[1], &spans[2]);
        assert_eq!(
            (first.start_time, first.end_time),
            (span.start_time, span.start_time + Duration::from_nanos(1_000))
        );
        assert_eq!(
            (second.start_time, second.end_time),
            (first.end_time, span.start_time + Duration::from_nanos(2_000))
        );
        assert_eq!(first.status, Status::Unset);
        assert_eq!(second.status, Status::error("EMSGSIZE"));
        assert!(second.attributes.contains(&KeyValue::new("error.type", "EMSGSIZE")));
        let none = build(
            &call,
            &clock(),
            SpanOptions { per_message: true, view: MessageView::None, msgvec_address: false },
        );
        assert!(none.len() == 1 && none[0].events.is_empty(), "neither child spans nor events");
        assert_eq!(attr(&none[0], "sendmmsg.messages.failed"), Some(&Value::I64(1)));
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
        let span = call_span(&call, &clock(), PER_MESSAGE);
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
        let span = call_span(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "network.peer.address"), None, "two destinations: none on the span");
        assert!(span.events[0].attributes.contains(&KeyValue::new("network.peer.address", "10.0.0.1")));
        assert!(span.events[1].attributes.contains(&KeyValue::new("network.peer.address", "::1")));
        assert!(span.events[1].attributes.contains(&KeyValue::new("network.peer.port", 853)));
        call.destinations = vec![Dest::Addr(a), Dest::Addr(a)];
        let span = call_span(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "network.peer.address"), Some(&Value::from("10.0.0.1")));
    }

    #[test]
    fn an_unreadable_msg_name_is_recorded_not_fatal() {
        let mut call = decode(&bytes_of(&record(&[10]))).unwrap();
        call.destinations = vec![Dest::Peer, Dest::Unreadable];
        let span = call_span(&call, &clock(), PER_MESSAGE);
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
        let span = call_span(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "network.peer.address"), None, "not every message went to it");
        assert_eq!(attr(&span, "sendmmsg.msg_name.unreadable_index"), None, "it was readable");
        assert!(!span.events[1].attributes.iter().any(|kv| kv.key.as_str().starts_with("network.peer")));
        call.destinations = vec![Dest::BadLength, Dest::BadLength];
        let span = call_span(&call, &clock(), PER_MESSAGE);
        assert_eq!(attr(&span, "network.peer.address"), None);
    }

    #[test]
    fn sizes_read_at_exit_give_bytes_and_events_but_no_failure_counts() {
        let mut call = decode(&bytes_of(&record(&[100, 200]))).unwrap();
        call.sizes_only = true;
        let options = SpanOptions { per_message: false, view: MessageView::Events, msgvec_address: false };
        let span = call_span(&call, &clock(), options);
        assert_eq!(attr(&span, "sendmmsg.bytes"), Some(&Value::I64(300)));
        assert_eq!(attr(&span, "sendmmsg.messages.attempted"), None);
        assert_eq!(attr(&span, "sendmmsg.messages.failed"), None);
        assert_eq!(span.events.len(), 2);
        assert_eq!(span.events[1].timestamp, span.end_time, "known at the call's end");
        call.ret = 100; // more sent than the 64 slots read: the sum would be short
        let span = call_span(&call, &clock(), options);
        assert_eq!(attr(&span, "sendmmsg.bytes"), None);
    }

    #[test]
    fn the_calls_own_error_wins_over_a_messages() {
        let mut rec = record(&[-libc::EAGAIN]);
        rec.ret = -(libc::EAGAIN as i64);
        rec.detail[0] = MessageResult { ret: -libc::EAGAIN, offset_ns: 10, ..Default::default() };
        let span = call_span(&decode(&bytes_of(&rec)).unwrap(), &clock(), PER_MESSAGE);
        assert_eq!(span.status, Status::error("sendmmsg failed: EAGAIN"));
        assert_eq!(span.attributes.iter().filter(|kv| kv.key.as_str() == "error.type").count(), 1);
    }

    #[test]
    fn a_call_without_a_parent_starts_its_own_trace() {
        let call = decode(&bytes_of(&record(&[100]))).unwrap();
        assert_eq!(call.parent, None);
        let spans = build(&call, &clock(), PER_MESSAGE);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert!(span.span_context.is_valid() && span.span_context.is_sampled());
        assert_eq!(span.parent_span_id, SpanId::INVALID);
        assert!(!span.parent_span_is_remote);
        assert_eq!((span.name.as_ref(), span.span_kind.clone()), (SPAN_NAME, SpanKind::Internal));
        assert_eq!(
            (span.start_time, span.end_time),
            (clock().to_wall(call.start_ns), clock().to_wall(call.end_ns))
        );
        assert_eq!(span.instrumentation_scope.name(), "otel-sendmmsg");
        assert_eq!(span.instrumentation_scope.version(), Some(env!("CARGO_PKG_VERSION")));
        let again = call_span(&call, &clock(), PER_MESSAGE);
        assert_ne!(again.span_context.trace_id(), span.span_context.trace_id(), "a trace each");
    }

    #[test]
    fn a_published_context_is_the_remote_parent() {
        let mut call = decode(&bytes_of(&record(&[100]))).unwrap();
        call.parent = Some(TraceContext { trace_id: [0xab; 16], span_id: [0xcd; 8] });
        let span = call_span(&call, &clock(), PER_MESSAGE);
        assert_eq!(span.span_context.trace_id(), TraceId::from_bytes([0xab; 16]));
        assert_eq!(span.parent_span_id, SpanId::from_bytes([0xcd; 8]));
        assert!(span.parent_span_is_remote);
    }

    #[test]
    fn each_message_is_a_child_span_of_the_call_in_its_trace() {
        let mut call = decode(&bytes_of(&record(&[100, 200, -libc::EMSGSIZE]))).unwrap();
        call.parent = Some(TraceContext { trace_id: [0x2a; 16], span_id: [0x2b; 8] });
        let options = SpanOptions { per_message: true, view: MessageView::Spans, msgvec_address: false };
        let spans = build(&call, &clock(), options);
        assert_eq!(spans.len(), 4);
        let call_context = &spans[0].span_context;
        let mut span_ids = std::collections::HashSet::new();
        for (i, child) in spans[1..].iter().enumerate() {
            assert_eq!(child.span_context.trace_id(), TraceId::from_bytes([0x2a; 16]), "child {i}");
            assert!(child.span_context.is_sampled(), "child {i}");
            assert_eq!(child.parent_span_id, call_context.span_id(), "child {i}");
            assert!(!child.parent_span_is_remote, "child {i}");
            assert_eq!(
                (child.name.as_ref(), child.span_kind.clone()),
                (MESSAGE_SPAN_NAME, SpanKind::Internal)
            );
            assert!(child.attributes.contains(&KeyValue::new("sendmmsg.message.index", i as i64)));
            let failed = if i == 2 { Status::error("EMSGSIZE") } else { Status::Unset };
            assert_eq!(child.status, failed, "child {i}");
            assert!(child.events.is_empty());
            assert_eq!(child.instrumentation_scope, spans[0].instrumentation_scope);
            span_ids.insert(child.span_context.span_id());
        }
        span_ids.insert(call_context.span_id());
        assert_eq!(span_ids.len(), 4, "every span its own id");
    }
}
