//! A call's spans -> the protobuf bytes of an OTLP `ExportTraceServiceRequest`, written in
//! one pass as the span module makes them ([`crate::span::write`]), without `SpanData` or the
//! generated `opentelemetry-proto` types in between.
//!
//! Why not the SDK's own way: its exporter copies every span into the generated types (a
//! `String` per attribute key and string value, a `Vec` per id) and prost then computes each
//! nested message's length again at every level above it. Measured (benches/userspace.rs,
//! callgrind), writing the bytes here from the SDK's `SpanData` took user space from 42,454 to
//! 18,320 instructions per span (vlen 1, detail events); writing them as the record is mapped,
//! without the `SpanData` (its build and drop were a third of what was left), and each
//! attribute's constant key inlined where it is written, from 12,934 to 6,757.
//!
//! One pass over the spans: an attribute's length is known from its key and value, so it is
//! written first; a span's or an event's is not known until it is written, so its length gets
//! the room it usually needs and is written after it (moving the message in the rare case the
//! room was wrong); the request's outer lengths go in room left before the spans, and the
//! request starts where they end (a `Bytes` slice, nothing copied). The bytes are the ones prost
//! writes for the same request: the tests compare them with the SDK's encoding of the same
//! spans as `SpanData`, byte for byte.
//!
//! Spans are encoded as they are queued ([`Encoder::call`]), so the queue holds their bytes; a
//! request ([`request`]) puts a batch's bytes under one resource (the batcher sends each
//! process's spans apart), under the one instrumentation scope all of the sidecar's spans have.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::{
    trace::{SpanId, SpanKind, Status},
    Array, InstrumentationScope, Value,
};
use opentelemetry_sdk::{trace::IdGenerator, Resource};
use prost::bytes::Bytes;

use crate::{
    clock::WallClock,
    records::Call,
    span::{self, attributes::Attributes, SpanHead, SpanOptions, SpanSink, Written, TRACE_FLAGS},
};

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A field's tag: every field written here but one is numbered below 16, a one-byte tag.
const fn tag(field: u8, wire_type: u8) -> u8 {
    field << 3 | wire_type
}

/// `Span.flags`, field 16, fixed32: a two-byte tag.
const SPAN_FLAGS_TAG: [u8; 2] = [16 << 3 | FIXED32 | 0x80, 1];

/// `SpanFlags` of `trace.proto`: whether the parent is remote is known, and its answer.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// A process's resource as its `Resource` message, encoded once for all of its requests.
#[derive(Clone, Debug, Default)]
pub struct EncodedResource {
    /// The `Resource` message's fields (its attributes).
    message: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub fn new(resource: &Resource) -> EncodedResource {
        let mut message = Vec::new();
        // In the resource's own order, as the SDK's exporter takes them.
        for (key, value) in resource.iter() {
            put_key_value(&mut message, tag(1, LEN), key.as_str(), value);
        }
        EncodedResource { message, schema_url: resource.schema_url().unwrap_or_default().to_owned() }
    }
}

/// A resource as its `Resource` message's bytes and its schema URL: what every OTLP request
/// under it carries (the call metrics' too).
pub fn resource_message(resource: &Resource) -> (Vec<u8>, String) {
    let encoded = EncodedResource::new(resource);
    (encoded.message, encoded.schema_url)
}

/// Spans of the sidecar's instrumentation scope, encoded as they go in their `ScopeSpans` (each the
/// field `spans`, tag and length first), waiting to be put in a request. What the export queue
/// holds: a third of the memory the SDK's `SpanData` of the same spans takes.
#[derive(Debug)]
pub struct EncodedSpans {
    bytes: Vec<u8>,
    count: usize,
}

impl EncodedSpans {
    /// How many spans.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The first `at` spans (all when there are fewer); `self` keeps the rest.
    pub fn split_to(&mut self, at: usize) -> EncodedSpans {
        if at >= self.count {
            let bytes = std::mem::take(&mut self.bytes);
            return EncodedSpans { bytes, count: std::mem::take(&mut self.count) };
        }
        // Each span is a tag, its length and its bytes: step over `at` of them.
        let mut end = 0;
        for _ in 0..at {
            let (len, len_bytes) = read_varint(self.bytes.get(end + 1..).unwrap_or_default());
            end = (end + 1 + len_bytes).saturating_add(len as usize).min(self.bytes.len());
        }
        let first = self.bytes.drain(..end).collect();
        self.count -= at;
        EncodedSpans { bytes: first, count: at }
    }
}

/// A varint at the start of `bytes`, and how many bytes it took (0 and 0 for none).
fn read_varint(bytes: &[u8]) -> (u64, usize) {
    let mut value = 0;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    (value, bytes.len().min(10))
}

/// Encodes calls' spans for the queue, in a buffer it keeps: each call is written there and
/// copied out at its exact length (a buffer sized by guess was reallocated to fit, once per
/// call, or kept its room to spare for as long as it waited).
#[derive(Debug, Default)]
pub struct Encoder {
    scratch: Vec<u8>,
}

impl Encoder {
    /// One call's spans ([`span::write`]), encoded.
    pub fn call(
        &mut self,
        call: &Call,
        clock: &WallClock,
        options: SpanOptions,
        ids: &impl IdGenerator,
    ) -> (EncodedSpans, Written) {
        self.scratch.clear();
        let written = span::write(call, clock, options, ids, &mut SpanWriter::new(&mut self.scratch));
        let encoded = EncodedSpans { bytes: self.scratch.as_slice().to_vec(), count: written.spans };
        (encoded, written)
    }
}

/// A [`SpanSink`] writing each span as field 2 of its `ScopeSpans`, its fields in the order of
/// their numbers, as prost writes them.
struct SpanWriter<'a> {
    out: &'a mut Vec<u8>,
    span: Option<Open>,
    event: Option<Open>,
    parent_is_remote: bool,
}

impl<'a> SpanWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> SpanWriter<'a> {
        SpanWriter { out, span: None, event: None, parent_is_remote: false }
    }

    /// An attribute is field 3 of an event, field 9 of a span.
    fn attribute_tag(&self) -> u8 {
        if self.event.is_some() {
            tag(3, LEN)
        } else {
            tag(9, LEN)
        }
    }
}

impl Attributes for SpanWriter<'_> {
    #[inline(always)]
    fn int(&mut self, key: &'static str, value: i64) {
        let tag_ = self.attribute_tag();
        let value_len = 1 + varint_len(value as u64);
        put_key_prefix(self.out, tag_, key, value_len);
        self.out.push(tag(3, VARINT));
        put_varint(self.out, value as u64);
    }

    #[inline(always)]
    fn text(&mut self, key: &'static str, value: &str) {
        let tag_ = self.attribute_tag();
        put_key_prefix(self.out, tag_, key, field_len(value.len()));
        put_prefix(self.out, tag(1, LEN), value.len());
        self.out.extend_from_slice(value.as_bytes());
    }
}

impl SpanSink for SpanWriter<'_> {
    fn begin(&mut self, head: &SpanHead) {
        // A call's span takes a few hundred bytes, with 64 message events a few thousand.
        self.span = Some(open(self.out, tag(2, LEN), 2));
        self.parent_is_remote = head.parent_is_remote;
        let out = &mut *self.out;
        put_bytes_field(out, tag(1, LEN), &head.trace_id.to_bytes());
        put_bytes_field(out, tag(2, LEN), &head.span_id.to_bytes());
        // Field 3, the trace state: the sidecar's spans have none.
        if head.parent_span_id != SpanId::INVALID {
            put_bytes_field(out, tag(4, LEN), &head.parent_span_id.to_bytes());
        }
        put_string_field(out, tag(5, LEN), head.name);
        put_varint_field(out, tag(6, VARINT), kind(&head.kind));
        put_fixed64_field(out, tag(7, FIXED64), nanos(head.start));
        put_fixed64_field(out, tag(8, FIXED64), nanos(head.end));
    }

    fn begin_event(&mut self, name: &'static str, at: SystemTime) {
        // A message event with its attributes takes under 128 bytes.
        self.event = Some(open(self.out, tag(11, LEN), 1));
        put_fixed64_field(self.out, tag(1, FIXED64), nanos(at));
        put_string_field(self.out, tag(2, LEN), name);
    }

    fn end_event(&mut self) {
        if let Some(event) = self.event.take() {
            close(self.out, event);
        }
    }

    fn end(&mut self, status: Status) {
        let Some(span) = self.span.take() else { return };
        let out = &mut *self.out;
        // The status is always there, even empty.
        let message = status_message(&status);
        let code = status_code(&status);
        let code_len = if code == 0 { 0 } else { 2 };
        put_prefix(out, tag(15, LEN), string_field_len(message) + code_len);
        put_string_field(out, tag(2, LEN), message);
        put_varint_field(out, tag(3, VARINT), code);
        // Never 0: whether the parent is remote is always known.
        out.extend_from_slice(&SPAN_FLAGS_TAG);
        out.extend_from_slice(&flags(TRACE_FLAGS.to_u8(), self.parent_is_remote).to_le_bytes());
        close(out, span);
    }
}

/// The request carrying `spans` under `resource`: the bytes an OTLP/HTTP body or a gRPC
/// message holds (uncompressed), every length known before the first byte is written. The
/// spans all have the sidecar's scope ([`span::scope`]): one `ScopeSpans`, as the SDK's
/// exporter groups them.
pub fn request(resource: &EncodedResource, spans: &[EncodedSpans]) -> Bytes {
    let scope = span::scope();
    let scope_schema_url = scope.schema_url().unwrap_or_default();
    let mut scope_message = Vec::new();
    put_scope(&mut scope_message, &scope);
    let spans_len: usize = spans.iter().map(|s| s.bytes.len()).sum();
    let scope_spans_len = field_len(scope_message.len()) + spans_len + string_field_len(scope_schema_url);
    // No spans: the resource alone, as the SDK sends it.
    let scope_spans_field = if spans.is_empty() { 0 } else { field_len(scope_spans_len) };
    let resource_spans_len =
        field_len(resource.message.len()) + scope_spans_field + string_field_len(&resource.schema_url);
    let mut out = Vec::with_capacity(field_len(resource_spans_len));
    put_prefix(&mut out, tag(1, LEN), resource_spans_len);
    put_resource(&mut out, resource);
    if !spans.is_empty() {
        put_prefix(&mut out, tag(2, LEN), scope_spans_len);
        put_prefix(&mut out, tag(1, LEN), scope_message.len());
        out.extend_from_slice(&scope_message);
        for run in spans {
            out.extend_from_slice(&run.bytes);
        }
        put_string_field(&mut out, tag(3, LEN), scope_schema_url);
    }
    put_string_field(&mut out, tag(3, LEN), &resource.schema_url);
    Bytes::from(out)
}

/// The resource as field 1 of its `ResourceSpans`: always there, even empty.
fn put_resource(out: &mut Vec<u8>, resource: &EncodedResource) {
    put_prefix(out, tag(1, LEN), resource.message.len());
    out.extend_from_slice(&resource.message);
}

fn nanos(time: SystemTime) -> u64 {
    // As the SDK's exporter converts times: before the epoch is 0.
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn status_code(status: &Status) -> u64 {
    match status {
        Status::Unset => 0,
        Status::Ok => 1,
        Status::Error { .. } => 2,
    }
}

fn status_message(status: &Status) -> &str {
    match status {
        Status::Error { description } => description,
        _ => "",
    }
}

fn flags(trace_flags: u8, remote: bool) -> u32 {
    u32::from(trace_flags) | CONTEXT_HAS_IS_REMOTE | if remote { CONTEXT_IS_REMOTE } else { 0 }
}

// --- lengths -------------------------------------------------------------------------------

#[inline]
fn varint_len(value: u64) -> usize {
    // 7 bits per byte, at least one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// A length-delimited field of `len` bytes with a one-byte tag: tag, length, bytes.
#[inline]
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// A string field, left out when empty (proto3).
#[inline]
fn string_field_len(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        field_len(value.len())
    }
}

/// An `AnyValue` message's length.
fn any_value_len(value: &Value) -> usize {
    // A oneof member is written even when it holds its type's default.
    match value {
        Value::Bool(_) => 2,
        Value::I64(v) => 1 + varint_len(*v as u64),
        Value::F64(_) => 9,
        Value::String(s) => field_len(s.as_str().len()),
        Value::Array(array) => field_len(array_value_len(array)),
        // A kind of value newer than this encoder: an empty `AnyValue`, not a panic.
        _ => 0,
    }
}

/// An `ArrayValue` message's length: each element an `AnyValue` of field 1.
fn array_value_len(array: &Array) -> usize {
    match array {
        Array::Bool(values) => values.len() * field_len(2),
        Array::I64(values) => values.iter().map(|v| field_len(1 + varint_len(*v as u64))).sum(),
        Array::F64(values) => values.len() * field_len(9),
        Array::String(values) => values.iter().map(|v| field_len(field_len(v.as_str().len()))).sum(),
        _ => 0,
    }
}

// --- writing -------------------------------------------------------------------------------

#[inline]
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The tag and length of a length-delimited field whose `len` bytes follow.
#[inline]
fn put_prefix(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    put_varint(out, len as u64);
}

/// A length-delimited field being written, whose length goes in `room` bytes at `at` once it
/// is known ([`close`]).
struct Open {
    at: usize,
    room: usize,
}

fn open(out: &mut Vec<u8>, tag: u8, room: usize) -> Open {
    out.push(tag);
    let at = out.len();
    out.resize(at + room, 0);
    Open { at, room }
}

/// Writes the length of the field `open` started, now that its bytes are all written; moves
/// them when their length needs more or less room than was left.
fn close(out: &mut Vec<u8>, Open { at, room }: Open) {
    let body = at + room;
    let len = out.len() - body;
    let need = varint_len(len as u64);
    if need != room {
        if need > room {
            out.resize(out.len() + need - room, 0);
        }
        out.copy_within(body..body + len, at + need);
        out.truncate(at + need + len);
    }
    let mut value = len as u64;
    for byte in &mut out[at..at + need] {
        *byte = value as u8 & 0x7f | if value >= 0x80 { 0x80 } else { 0 };
        value >>= 7;
    }
}

#[inline]
fn put_bytes_field(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    if !value.is_empty() {
        put_prefix(out, tag, value.len());
        out.extend_from_slice(value);
    }
}

#[inline]
fn put_string_field(out: &mut Vec<u8>, tag: u8, value: &str) {
    put_bytes_field(out, tag, value.as_bytes());
}

#[inline]
fn put_varint_field(out: &mut Vec<u8>, tag: u8, value: u64) {
    if value != 0 {
        out.push(tag);
        put_varint(out, value);
    }
}

#[inline]
fn put_fixed64_field(out: &mut Vec<u8>, tag: u8, value: u64) {
    if value != 0 {
        out.push(tag);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// An `AnyValue`'s fields.
fn put_any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(v) => out.extend_from_slice(&[tag(2, VARINT), u8::from(*v)]),
        Value::I64(v) => {
            out.push(tag(3, VARINT));
            put_varint(out, *v as u64);
        }
        Value::F64(v) => {
            out.push(tag(4, FIXED64));
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        Value::String(s) => {
            put_prefix(out, tag(1, LEN), s.as_str().len());
            out.extend_from_slice(s.as_str().as_bytes());
        }
        Value::Array(array) => {
            put_prefix(out, tag(5, LEN), array_value_len(array));
            put_array_value(out, array);
        }
        _ => {}
    }
}

/// An `ArrayValue`'s fields: each element an `AnyValue` of field 1.
fn put_array_value(out: &mut Vec<u8>, array: &Array) {
    let element = tag(1, LEN);
    match array {
        Array::Bool(values) => {
            for v in values {
                out.extend_from_slice(&[element, 2, tag(2, VARINT), u8::from(*v)]);
            }
        }
        Array::I64(values) => {
            for v in values {
                put_prefix(out, element, 1 + varint_len(*v as u64));
                out.push(tag(3, VARINT));
                put_varint(out, *v as u64);
            }
        }
        Array::F64(values) => {
            for v in values {
                out.extend_from_slice(&[element, 9, tag(4, FIXED64)]);
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        Array::String(values) => {
            for v in values {
                put_prefix(out, element, field_len(v.as_str().len()));
                put_prefix(out, tag(1, LEN), v.as_str().len());
                out.extend_from_slice(v.as_str().as_bytes());
            }
        }
        _ => {}
    }
}

/// A `KeyValue` as the field of `tag`: its key, and its value, always present.
fn put_key_value(out: &mut Vec<u8>, tag_: u8, key: &str, value: &Value) {
    put_key_prefix(out, tag_, key, any_value_len(value));
    put_any_value(out, value);
}

/// A `KeyValue` as the field of `tag` up to its value's fields, which take `value_len` bytes.
/// Inlined into each of the sidecar's attributes, whose key is a constant: its length is known
/// and its copy needs no call to `memcpy`.
#[inline(always)]
fn put_key_prefix(out: &mut Vec<u8>, tag_: u8, key: &str, value_len: usize) {
    let len = string_field_len(key) + field_len(value_len);
    if len >= 0x80 {
        return put_long_key_prefix(out, tag_, key, value_len);
    }
    // Every length under 128, a byte each: nearly every attribute (the per-byte writes of the
    // general way below were a third of user space's instructions per span).
    out.reserve(len + 2);
    out.extend_from_slice(&[tag_, len as u8]);
    if !key.is_empty() {
        out.extend_from_slice(&[tag(1, LEN), key.len() as u8]);
        out.extend_from_slice(key.as_bytes());
    }
    out.extend_from_slice(&[tag(2, LEN), value_len as u8]);
}

/// [`put_key_prefix`] for any lengths.
#[cold]
fn put_long_key_prefix(out: &mut Vec<u8>, tag_: u8, key: &str, value_len: usize) {
    put_prefix(out, tag_, string_field_len(key) + field_len(value_len));
    put_string_field(out, tag(1, LEN), key);
    put_prefix(out, tag(2, LEN), value_len);
}

/// An `InstrumentationScope`'s fields.
fn put_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    put_string_field(out, tag(1, LEN), scope.name());
    put_string_field(out, tag(2, LEN), scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        put_key_value(out, tag(3, LEN), kv.key.as_str(), &kv.value);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU64, Ordering::Relaxed},
        time::Duration,
    };

    use opentelemetry::{trace::TraceId, KeyValue, StringValue};
    use opentelemetry_proto::{
        tonic::collector::trace::v1::ExportTraceServiceRequest,
        transform::{
            common::tonic::ResourceAttributesWithSchema, trace::tonic::group_spans_by_resource_and_scope,
        },
    };
    use opentelemetry_sdk::trace::SpanData;
    use otel_sendmmsg_common::TraceContext;
    use prost::Message as _;

    use super::*;
    use crate::{
        config::MessageView,
        process::ProcessInfo,
        records::{decode, tests::bytes_of, tests::record, Dest, Socket},
        span::{finished, resource::resource_for},
    };

    /// Ids counted up from 1: the same for the SDK's spans and ours.
    #[derive(Debug, Default)]
    struct Counted(AtomicU64);

    impl IdGenerator for Counted {
        fn new_trace_id(&self) -> TraceId {
            TraceId::from(u128::from(self.0.fetch_add(1, Relaxed) + 1) << 64 | 0xabc)
        }

        fn new_span_id(&self) -> SpanId {
            SpanId::from(self.0.fetch_add(1, Relaxed) + 1)
        }
    }

    /// Calls with the options their spans are made with.
    type Calls = Vec<(Call, SpanOptions)>;

    /// What the SDK's OTLP exporter sends for the same calls' spans as `SpanData`, and those
    /// spans.
    fn sdks(resource: &Resource, calls: &Calls) -> (Vec<u8>, Vec<SpanData>) {
        let ids = Counted::default();
        let spans: Vec<SpanData> =
            calls.iter().flat_map(|(call, options)| finished(call, &clock(), *options, &ids).0).collect();
        let resource = ResourceAttributesWithSchema::from(resource);
        let resource_spans = group_spans_by_resource_and_scope(spans.clone(), &resource);
        (ExportTraceServiceRequest { resource_spans }.encode_to_vec(), spans)
    }

    /// The calls encoded a call at a time, as the batcher queues them.
    fn encoded(calls: &Calls) -> Vec<EncodedSpans> {
        let ids = Counted::default();
        let mut encoder = Encoder::default();
        calls.iter().map(|(call, options)| encoder.call(call, &clock(), *options, &ids).0).collect()
    }

    fn ours(resource: &Resource, calls: &Calls) -> Vec<u8> {
        request(&EncodedResource::new(resource), &encoded(calls)).to_vec()
    }

    fn clock() -> WallClock {
        WallClock::from_readings(1_700_000_000_000_000_000, 0)
    }

    fn process_resource() -> Resource {
        let process = ProcessInfo {
            pid: 4242,
            executable_name: Some("dns-server".into()),
            service_name: "dns".into(),
            container_id: Some("ab".repeat(32)),
            attributes: vec![KeyValue::new("service.version", "2.1"), KeyValue::new("deployment.tier", 3)],
        };
        resource_for(
            &[KeyValue::new("host.name", "node-1"), KeyValue::new("telemetry.sdk.language", "rust")],
            &process,
        )
    }

    /// Every shape the span module makes: events, child spans or neither; failed calls and
    /// messages; with and without a parent, a socket, destinations, per-message hooks.
    fn calls() -> Calls {
        let mut calls = Vec::new();
        let udp4 = Socket {
            family: libc::AF_INET as u16,
            protocol: libc::IPPROTO_UDP as u16,
            sock_type: libc::SOCK_DGRAM as u16,
            local: Some("127.0.0.1:5000".parse().unwrap()),
            peer: Some("10.1.2.3:53".parse().unwrap()),
        };
        for results in [&[100][..], &[100, -libc::EMSGSIZE, 7], &[]] {
            let mut rec = record(results);
            if results.is_empty() {
                rec.ret = -i64::from(libc::EBADF);
            }
            let call = decode(&bytes_of(&rec)).unwrap();
            for view in [MessageView::Events, MessageView::Spans, MessageView::None] {
                let options = SpanOptions { per_message: true, view, msgvec_address: true };
                calls.push((call.clone(), options));
            }
        }
        let events = SpanOptions { per_message: true, view: MessageView::Events, msgvec_address: false };
        let mut connected = decode(&bytes_of(&record(&[10, 20]))).unwrap();
        connected.socket = Some(udp4);
        connected.parent = Some(TraceContext { trace_id: [0x2a; 16], span_id: [0x2b; 8] });
        calls.push((connected.clone(), events));
        calls.push((connected.clone(), SpanOptions { view: MessageView::Spans, ..events }));
        let mut spread = connected.clone();
        spread.socket = Some(Socket { family: libc::AF_INET6 as u16, local: None, peer: None, ..udp4 });
        spread.destinations =
            vec![Dest::Addr("[fe80::1]:853".parse().unwrap()), Dest::Addr("10.0.0.1:53".parse().unwrap())];
        calls.push((spread, events));
        let mut sizes = connected.clone();
        sizes.sizes_only = true;
        calls.push((sizes, SpanOptions { per_message: false, ..events }));
        calls.push((connected, SpanOptions { per_message: false, ..events }));
        calls
    }

    #[test]
    fn the_sidecars_spans_encode_as_the_sdk_encodes_them() {
        let resource = process_resource();
        let calls = calls();
        let (sdk, spans) = sdks(&resource, &calls);
        assert_eq!(spans.len(), 20);
        assert_eq!(ours(&resource, &calls), sdk);
        assert_eq!(ours(&resource, &calls[..1].to_vec()), sdks(&resource, &calls[..1].to_vec()).0);
    }

    #[test]
    fn a_span_longer_or_shorter_than_its_room_encodes_as_the_sdk_encodes_it() {
        let resource = process_resource();
        let mut long = calls()[0].clone();
        // Over 16 KiB: its length takes more room than a span's usually does.
        long.0.comm = "x".repeat(20_000);
        let mut short = calls()[2].clone();
        short.0.comm.clear();
        let calls = vec![long, short];
        assert_eq!(ours(&resource, &calls), sdks(&resource, &calls).0);
    }

    #[test]
    fn every_kind_of_resource_value_encodes_as_the_sdk_encodes_it() {
        let values = vec![
            KeyValue::new("bool", true),
            KeyValue::new("false", false),
            KeyValue::new("zero", 0),
            KeyValue::new("negative", -5),
            KeyValue::new("big", i64::MAX),
            KeyValue::new("float", 1.5),
            KeyValue::new("empty", ""),
            KeyValue::new("", "empty key"),
            KeyValue::new("long", "x".repeat(300)),
            KeyValue::new("bools", Value::Array(vec![true, false].into())),
            KeyValue::new("ints", Value::Array(vec![0_i64, -1, 300].into())),
            KeyValue::new("floats", Value::Array(vec![0.0, 2.5].into())),
            KeyValue::new(
                "strings",
                Value::Array(vec![StringValue::from("a"), StringValue::from("")].into()),
            ),
        ];
        let calls = calls();
        for resource in [
            Resource::builder_empty()
                .with_schema_url(values, "https://opentelemetry.io/schemas/1.2.0")
                .build(),
            Resource::builder_empty().build(),
        ] {
            assert_eq!(ours(&resource, &calls), sdks(&resource, &calls).0);
        }
    }

    #[test]
    fn no_spans_is_the_resource_alone_as_for_the_sdk() {
        // One resource: another with the same attributes may list them in another order.
        let resource = process_resource();
        assert_eq!(ours(&resource, &Vec::new()), sdks(&resource, &Vec::new()).0);
    }

    #[test]
    fn a_calls_spans_split_anywhere_make_the_same_request() {
        let resource = process_resource();
        let mut call = decode(&bytes_of(&record(&[1, 2, 3, 4, 5]))).unwrap();
        call.parent = Some(TraceContext { trace_id: [1; 16], span_id: [2; 8] });
        let options = SpanOptions { per_message: true, view: MessageView::Spans, msgvec_address: false };
        let whole = encoded(&vec![(call.clone(), options)]);
        let spans = whole[0].count();
        assert_eq!(spans, 6);
        let expected = request(&EncodedResource::new(&resource), &whole);
        for at in [0, 1, 2, spans - 1, spans, spans + 5] {
            let mut rest = encoded(&vec![(call.clone(), options)]).pop().unwrap();
            let first = rest.split_to(at);
            assert_eq!(first.count() + rest.count(), spans);
            assert_eq!(first.count(), at.min(spans));
            let parts: Vec<EncodedSpans> = [first, rest].into_iter().filter(|p| p.count() > 0).collect();
            assert_eq!(request(&EncodedResource::new(&resource), &parts), expected, "split at {at}");
        }
    }

    #[test]
    fn the_written_ids_and_end_are_the_call_spans() {
        let call = decode(&bytes_of(&record(&[1, 2]))).unwrap();
        let options = SpanOptions { per_message: true, view: MessageView::Spans, msgvec_address: false };
        let (encoded, written) = Encoder::default().call(&call, &clock(), options, &Counted::default());
        let (spans, _) = finished(&call, &clock(), options, &Counted::default());
        assert_eq!((encoded.count(), written.spans), (3, 3));
        assert_eq!(written.trace_id, spans[0].span_context.trace_id());
        assert_eq!(written.span_id, spans[0].span_context.span_id());
        assert_eq!(written.end, spans[0].end_time);
        assert_eq!(written.end, clock().to_wall(call.end_ns));
        assert!(spans[0].end_time > spans[0].start_time + Duration::from_nanos(1));
    }

    #[test]
    fn varint_lengths_match_what_is_written() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            assert_eq!(read_varint(&out), (value, out.len()));
        }
    }
}
