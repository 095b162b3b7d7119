//! The resource a process's own OpenTelemetry SDK publishes for outside readers: its OTEP 4719
//! "process context" (oteps/profiles/4719-process-ctx.md).
//!
//! The SDK maps a small region named `OTEL_CTX` (`/proc/PID/maps` shows `/memfd:OTEL_CTX`,
//! possibly ` (deleted)`, `[anon_shmem:OTEL_CTX]` or `[anon:OTEL_CTX]`) that starts with a
//! 32-byte header, in the process's byte order:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | signature `OTEL_CTX`, no NUL |
//! | 8 | 4 | version, 2 |
//! | 12 | 4 | payload size |
//! | 16 | 8 | `monotonic_published_at_ns` (`CLOCK_BOOTTIME`); 0 while the SDK updates |
//! | 24 | 8 | payload address, in the process's address space |
//!
//! The payload is a protobuf `opentelemetry.proto.processcontext.v1development.ProcessContext`
//! `{Resource resource = 1; repeated KeyValue attributes = 2}` (the newest OTEP text, and what
//! the OpenTelemetry eBPF profiler decodes). Only `resource` is the process's resource; the extra
//! `attributes` are for readers like the profiler (`threadlocal.*`) and are not kept. An older
//! draft published a bare `Resource`; it is not accepted: both messages start with a
//! length-delimited field 1, so telling them apart would be guessing at hostile bytes.
//!
//! Everything here is the process's to shape, so: `/proc/PID/maps` is read up to
//! [`proc_maps::MAPS_BYTES`] and by fields; the memory is read with `process_vm_readv`, which
//! fails on an unmapped address instead of faulting; the payload must lie inside readable
//! mappings of the process and be at most [`MAX_PAYLOAD`] bytes; a context that is torn (its
//! timestamp 0 or changed across the copy, [`ATTEMPTS`] times in a row), malformed or over the
//! bounds of [`crate::resource_attributes`] is refused whole. Like every `/proc` read of the
//! resolver, this runs on a resolver thread (a mapping of a file the process serves itself could
//! make the copy wait).

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    sync::atomic::{fence, Ordering},
};

use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, KeyValue as ProtoKeyValue},
    resource::v1::Resource,
};
use prost::Message as _;

use super::read;
use crate::{
    probes::thread_context::proc_maps::MAPS_BYTES,
    resource_attributes::{MAX_ATTRIBUTES, MAX_KEY_BYTES, MAX_VALUE_BYTES},
};

/// The header's first 8 bytes.
pub const SIGNATURE: &[u8; 8] = b"OTEL_CTX";
/// The one format version the OTEP defines (1 was for development).
pub const VERSION: u32 = 2;
pub const HEADER_BYTES: usize = 32;
/// Where `monotonic_published_at_ns` lies in the header.
pub const PUBLISHED_AT_OFFSET: u64 = 16;
/// The largest payload read (the profiler's bound too); the OTEP expects a few KiB.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Reads of a context caught mid-update before it is refused as torn.
pub const ATTEMPTS: usize = 3;
/// How long to wait before reading a context caught mid-update again: an update is a few stores.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(2);
/// Mappings named `OTEL_CTX` tried at most. The OTEP allows one; a process that shows more
/// gets its first few looked at.
const MAX_CANDIDATES: usize = 4;
/// The most elements of one array attribute kept.
pub const MAX_ARRAY_ELEMENTS: usize = 64;

/// The names a context mapping has in `/proc/PID/maps`, depending on which of `memfd_create`
/// and `prctl(PR_SET_VMA_ANON_NAME)` worked for the publisher; the OTEP says "starting with".
const MAPPING_NAMES: [&[u8]; 3] = [b"/memfd:OTEL_CTX", b"[anon_shmem:OTEL_CTX]", b"[anon:OTEL_CTX]"];

/// Where a process's context is and which publication was read: when a later read of the
/// timestamp gives another value (or fails), the process has published again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The header's address in the process.
    pub header: u64,
    pub published_at_ns: u64,
}

/// A process's context, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessContext {
    pub stamp: Stamp,
    /// `service.name` of the resource, when it is a non-empty string.
    pub service_name: Option<String>,
    /// The rest of the resource, in order, each key once (the last of a repeated key wins).
    pub attributes: Vec<KeyValue>,
}

/// Why a context found in a process is not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no OTEL_CTX signature")]
    Signature,
    #[error("format version {0}, not {VERSION}")]
    Version(u32),
    #[error("payload of {0} bytes (at most {MAX_PAYLOAD})")]
    PayloadSize(u32),
    #[error("payload outside the process's readable mappings")]
    PayloadOutside,
    #[error("the process's memory could not be read")]
    Unreadable,
    #[error("still being updated after {ATTEMPTS} reads")]
    Torn,
    #[error("payload is not a ProcessContext: {0}")]
    Malformed(String),
    #[error("over the bounds of a resource (attributes, key or value length)")]
    TooLarge,
}

/// A context found and refused, with the publication it was (when its timestamp could be read),
/// so that a later publication is read again (see [`still_published`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedAt {
    pub why: Refused,
    pub stamp: Option<Stamp>,
}

/// The context process `pid` publishes, read through `/proc` (`root`): `Ok(None)` when it
/// publishes none (or its maps cannot be read), `Err` when what it publishes is refused.
pub fn read(root: &Path, pid: u32) -> Result<Option<ProcessContext>, RefusedAt> {
    let Ok(maps) = read::open(&root.join(pid.to_string()), "maps") else {
        return Ok(None);
    };
    let maps = scan_maps(maps);
    let mut refused = None;
    for header in maps.candidates.iter().copied() {
        match read_at(&ProcessMemory(pid), header, &maps.readable) {
            Ok(context) => return Ok(Some(context)),
            Err(why) => refused = refused.or(Some(why)),
        }
    }
    refused.map_or(Ok(None), Err)
}

/// The reading protocol of the OTEP for a header at `header`: timestamp, then the header and
/// payload, then the timestamp again; a timestamp of 0 or one that changed means the copy may
/// mix two publications, and it is tried again, [`ATTEMPTS`] times in all.
pub fn read_at(
    memory: &impl Memory,
    header: u64,
    readable: &[(u64, u64)],
) -> Result<ProcessContext, RefusedAt> {
    let mut seen = None;
    let refused = |why, seen: Option<u64>| RefusedAt {
        why,
        stamp: seen.map(|published_at_ns| Stamp { header, published_at_ns }),
    };
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(RETRY_AFTER);
        }
        let before = published_at(memory, header).map_err(|why| refused(why, seen))?;
        seen = Some(before);
        if before == 0 {
            continue;
        }
        fence(Ordering::SeqCst);
        let mut bytes = [0u8; HEADER_BYTES];
        if !memory.read(header, &mut bytes) {
            return Err(refused(Refused::Unreadable, seen));
        }
        let parsed = parse_header(&bytes);
        let payload = parsed.and_then(|(size, address)| {
            if !inside(readable, address, size) {
                return Err(Refused::PayloadOutside);
            }
            let mut payload = vec![0u8; size as usize];
            memory.read(address, &mut payload).then_some(payload).ok_or(Refused::Unreadable)
        });
        fence(Ordering::SeqCst);
        let after = published_at(memory, header).map_err(|why| refused(why, seen))?;
        seen = Some(after);
        if after != before {
            continue;
        }
        // Consistent: any fault is the publisher's, not a race's.
        let decoded =
            payload.and_then(|payload| decode_payload(&payload)).map_err(|why| refused(why, seen))?;
        let stamp = Stamp { header, published_at_ns: before };
        return Ok(ProcessContext {
            stamp,
            service_name: decoded.service_name,
            attributes: decoded.attributes,
        });
    }
    Err(refused(Refused::Torn, seen))
}

/// Whether the context read as `stamp` is still the one published: `false` when the process
/// published again, unmapped it, or is gone. One 8-byte read.
pub fn still_published(pid: u32, stamp: Stamp) -> bool {
    published_at(&ProcessMemory(pid), stamp.header) == Ok(stamp.published_at_ns)
}

fn published_at(memory: &impl Memory, header: u64) -> Result<u64, Refused> {
    let mut bytes = [0u8; 8];
    let at = header.checked_add(PUBLISHED_AT_OFFSET).ok_or(Refused::Unreadable)?;
    memory.read(at, &mut bytes).then(|| u64::from_ne_bytes(bytes)).ok_or(Refused::Unreadable)
}

/// The header's checks: signature, version, payload size; gives the payload's size and address.
pub fn parse_header(bytes: &[u8; HEADER_BYTES]) -> Result<(u32, u64), Refused> {
    let word = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if &bytes[..8] != SIGNATURE {
        return Err(Refused::Signature);
    }
    if word(8) != VERSION {
        return Err(Refused::Version(word(8)));
    }
    let size = word(12);
    if size == 0 || size > MAX_PAYLOAD {
        return Err(Refused::PayloadSize(size));
    }
    Ok((size, u64::from_ne_bytes(bytes[24..32].try_into().expect("8 bytes"))))
}

/// Whether `[address, address + size)` lies inside `readable` (sorted, as the kernel lists
/// mappings), adjacent mappings counting as one.
fn inside(readable: &[(u64, u64)], address: u64, size: u32) -> bool {
    let Some(end) = address.checked_add(u64::from(size)) else { return false };
    let mut covered = address;
    for &(start, stop) in readable {
        if start <= covered && covered < stop {
            covered = stop;
            if covered >= end {
                return true;
            }
        }
    }
    false
}

/// Another process's memory, or a test's.
pub trait Memory {
    /// Fills `into` from `address`, whole; `false` when it could not.
    fn read(&self, address: u64, into: &mut [u8]) -> bool;
}

/// A process's memory through `process_vm_readv`: no open file, no ptrace stop, and an address
/// the process does not map is an error, not a fault.
pub struct ProcessMemory(pub u32);

impl Memory for ProcessMemory {
    fn read(&self, address: u64, into: &mut [u8]) -> bool {
        let Ok(pid) = libc::pid_t::try_from(self.0) else { return false };
        let local = libc::iovec { iov_base: into.as_mut_ptr().cast(), iov_len: into.len() };
        let remote = libc::iovec { iov_base: address as usize as *mut libc::c_void, iov_len: into.len() };
        // SAFETY: `local` is `into`, writable for its length; the remote range is only read by
        // the kernel, which checks it against the other process's mappings.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        usize::try_from(n).ok() == Some(into.len())
    }
}

/// What `/proc/PID/maps` says of a context: the mappings named `OTEL_CTX` (their start, where
/// the header is) and every readable range.
#[derive(Debug, Default, PartialEq)]
pub struct Maps {
    pub candidates: Vec<u64>,
    pub readable: Vec<(u64, u64)>,
}

/// Reads `/proc/PID/maps` text from `maps`, at most [`MAPS_BYTES`], line by line and by fields
/// (`start-end perms offset dev inode   name`); lines without the kernel's shape are skipped.
pub fn scan_maps(maps: impl Read) -> Maps {
    let mut found = Maps::default();
    let mut lines = BufReader::new(maps.take(MAPS_BYTES));
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Some((start, end, perms, name)) = parse_maps_line(line.strip_suffix(b"\n").unwrap_or(&line))
        else {
            continue;
        };
        if perms[0] != b'r' {
            continue;
        }
        found.readable.push((start, end));
        let named = MAPPING_NAMES.iter().any(|n| name.starts_with(n));
        if named
            && perms[2] != b'x'
            && end - start >= HEADER_BYTES as u64
            && found.candidates.len() < MAX_CANDIDATES
        {
            found.candidates.push(start);
        }
    }
    found
}

/// One maps line: its range, permissions and name (empty for anonymous memory).
fn parse_maps_line(line: &[u8]) -> Option<(u64, u64, &[u8], &[u8])> {
    let mut fields = line.splitn(6, |&b| b == b' ');
    let (range, perms, _offset, _dev, _inode) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let name = fields.next().unwrap_or_default().trim_ascii_start();
    let dash = range.iter().position(|&b| b == b'-')?;
    let hex = |s: &[u8]| {
        (!s.is_empty() && s.len() <= 16).then_some(())?;
        u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
    };
    let (start, end) = (hex(&range[..dash])?, hex(&range[dash + 1..])?);
    (start < end && perms.len() == 4).then_some((start, end, perms, name))
}

/// `opentelemetry.proto.processcontext.v1development.ProcessContext` (not in
/// opentelemetry-proto 0.33): the OTEP's message, around the OTLP `Resource` and `KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProcessContextMessage {
    #[prost(message, optional, tag = "1")]
    resource: Option<Resource>,
    /// For readers other than us (`threadlocal.*`): decoded, as prost must, and not kept.
    #[prost(message, repeated, tag = "2")]
    attributes: Vec<ProtoKeyValue>,
}

/// A payload's resource.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    pub service_name: Option<String>,
    pub attributes: Vec<KeyValue>,
}

/// The resource in a `ProcessContext` payload. Strings, booleans, integers and doubles keep their
/// type; arrays of one of those types become arrays; byte strings, key-value lists, mixed or
/// nested arrays, dictionary references (`*_strindex`) and empty values are skipped. More than
/// [`MAX_ATTRIBUTES`] attributes, a key over [`MAX_KEY_BYTES`], a string over [`MAX_VALUE_BYTES`]
/// (an array: all its strings together) or an array over [`MAX_ARRAY_ELEMENTS`] refuses the
/// whole context, as an over-long `OTEL_RESOURCE_ATTRIBUTES` is refused.
pub fn decode_payload(payload: &[u8]) -> Result<Decoded, Refused> {
    if payload.len() > MAX_PAYLOAD as usize {
        return Err(Refused::PayloadSize(u32::try_from(payload.len()).unwrap_or(u32::MAX)));
    }
    // prost bounds nesting (100 messages deep) and checks UTF-8; the payload's size bounds the
    // rest (a 64 KiB payload decodes to a few MiB at most, freed at once).
    let message = ProcessContextMessage::decode(payload).map_err(|e| Refused::Malformed(e.to_string()))?;
    let attributes = message.resource.map(|r| r.attributes).unwrap_or_default();
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(Refused::TooLarge);
    }
    let mut decoded = Decoded::default();
    for ProtoKeyValue { key, value, .. } in attributes {
        if key.len() > MAX_KEY_BYTES {
            return Err(Refused::TooLarge);
        }
        let Some(value) = value.and_then(|v| v.value).map(convert).transpose()?.flatten() else {
            continue;
        };
        if key.is_empty() {
            continue;
        }
        if key == "service.name" {
            if let Value::String(name) = &value {
                let name = name.as_str().trim();
                decoded.service_name = (!name.is_empty()).then(|| name.to_owned());
            }
            continue;
        }
        decoded.attributes.retain(|kv| kv.key.as_str() != key);
        decoded.attributes.push(KeyValue::new(key, value));
    }
    Ok(decoded)
}

/// One value; `Ok(None)` for a kind not kept.
fn convert(value: any_value::Value) -> Result<Option<Value>, Refused> {
    use any_value::Value as V;
    let string = |s: String| (s.len() <= MAX_VALUE_BYTES).then_some(s).ok_or(Refused::TooLarge);
    Ok(Some(match value {
        V::StringValue(s) => Value::String(string(s)?.into()),
        V::BoolValue(b) => Value::Bool(b),
        V::IntValue(i) => Value::I64(i),
        V::DoubleValue(d) => Value::F64(d),
        V::ArrayValue(array) => return convert_array(array.values),
        V::KvlistValue(_) | V::BytesValue(_) | V::StringValueStrindex(_) => return Ok(None),
    }))
}

/// An array of one scalar type; `Ok(None)` when empty, mixed, nested or with empty elements.
fn convert_array(values: Vec<AnyValue>) -> Result<Option<Value>, Refused> {
    use any_value::Value as V;
    if values.len() > MAX_ARRAY_ELEMENTS {
        return Err(Refused::TooLarge);
    }
    let values: Option<Vec<V>> = values.into_iter().map(|v| v.value).collect();
    let Some(values) = values.filter(|v| !v.is_empty()) else { return Ok(None) };
    macro_rules! all {
        ($variant:ident, $map:expr) => {
            values
                .iter()
                .map(|v| if let V::$variant(x) = v { Some($map(x)) } else { None })
                .collect::<Option<Vec<_>>>()
        };
    }
    let array = match &values[0] {
        V::StringValue(_) => {
            let strings = all!(StringValue, |s: &String| s.clone());
            if strings.as_ref().is_some_and(|s| s.iter().map(String::len).sum::<usize>() > MAX_VALUE_BYTES) {
                return Err(Refused::TooLarge);
            }
            strings.map(|s| Array::String(s.into_iter().map(StringValue::from).collect()))
        }
        V::BoolValue(_) => all!(BoolValue, |b: &bool| *b).map(Array::Bool),
        V::IntValue(_) => all!(IntValue, |i: &i64| *i).map(Array::I64),
        V::DoubleValue(_) => all!(DoubleValue, |d: &f64| *d).map(Array::F64),
        _ => None,
    };
    Ok(array.map(Value::Array))
}

/// Lays a published context out in `page` (this process's memory) for tests elsewhere: the
/// header at its start, the payload after it; string attributes only.
#[cfg(test)]
pub(crate) fn lay_out_for_test(page: &mut [u8], published_at_ns: u64, attributes: &[(&str, &str)]) {
    let attributes = attributes
        .iter()
        .map(|(k, v)| ProtoKeyValue {
            key: (*k).into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue((*v).into())) }),
            ..Default::default()
        })
        .collect();
    let message = ProcessContextMessage {
        resource: Some(Resource { attributes, ..Default::default() }),
        attributes: vec![],
    };
    let bytes = message.encode_to_vec();
    page[64..64 + bytes.len()].copy_from_slice(&bytes);
    page[..8].copy_from_slice(SIGNATURE);
    page[8..12].copy_from_slice(&VERSION.to_ne_bytes());
    page[12..16].copy_from_slice(&(bytes.len() as u32).to_ne_bytes());
    page[16..24].copy_from_slice(&published_at_ns.to_ne_bytes());
    let payload = page.as_ptr() as u64 + 64;
    page[24..32].copy_from_slice(&payload.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> ProtoKeyValue {
        ProtoKeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn string(s: &str) -> any_value::Value {
        any_value::Value::StringValue(s.into())
    }

    fn payload(attributes: Vec<ProtoKeyValue>) -> Vec<u8> {
        ProcessContextMessage {
            resource: Some(Resource { attributes, ..Default::default() }),
            attributes: vec![kv("threadlocal.schema_version", string("tls_v1"))],
        }
        .encode_to_vec()
    }

    #[test]
    fn the_resource_keeps_its_types_and_the_extra_attributes_are_not_kept() {
        use any_value::Value as V;
        let decoded = decode_payload(&payload(vec![
            kv("service.name", string(" checkout ")),
            kv("service.instance.id", string("4f1c")),
            kv("process.runtime.is_jit", V::BoolValue(true)),
            kv("worker.count", V::IntValue(-3)),
            kv("load.factor", V::DoubleValue(0.5)),
            kv("zones", V::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(string("a")) }; 2] })),
            kv(
                "ports",
                V::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(V::IntValue(53)) }] }),
            ),
            kv(
                "mixed",
                V::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue { value: Some(string("a")) },
                        AnyValue { value: Some(V::IntValue(1)) },
                    ],
                }),
            ),
            kv("blob", V::BytesValue(vec![1, 2])),
            kv("nested", V::KvlistValue(KeyValueList { values: vec![kv("a", string("b"))] })),
            kv("empty", V::StringValue(String::new())),
            ProtoKeyValue { key: "unset".into(), value: None, ..Default::default() },
            kv("worker.count", V::IntValue(4)),
        ]))
        .unwrap();
        assert_eq!(decoded.service_name.as_deref(), Some("checkout"));
        assert_eq!(
            decoded.attributes,
            vec![
                KeyValue::new("service.instance.id", "4f1c"),
                KeyValue::new("process.runtime.is_jit", true),
                KeyValue::new("load.factor", 0.5),
                KeyValue::new("zones", Value::Array(Array::String(vec!["a".into(), "a".into()]))),
                KeyValue::new("ports", Value::Array(Array::I64(vec![53]))),
                KeyValue::new("empty", ""),
                KeyValue::new("worker.count", 4),
            ]
        );
        // No resource at all: nothing declared, nothing refused.
        assert_eq!(decode_payload(&ProcessContextMessage::default().encode_to_vec()), Ok(Decoded::default()));
    }

    #[test]
    fn hostile_payloads_are_refused_whole() {
        use any_value::Value as V;
        let too_many: Vec<ProtoKeyValue> =
            (0..=MAX_ATTRIBUTES).map(|i| kv(&format!("k{i}"), string("v"))).collect();
        assert_eq!(decode_payload(&payload(too_many)), Err(Refused::TooLarge));
        let long_value = kv("k", string(&"v".repeat(MAX_VALUE_BYTES + 1)));
        assert_eq!(decode_payload(&payload(vec![long_value])), Err(Refused::TooLarge));
        let long_key = kv(&"k".repeat(MAX_KEY_BYTES + 1), V::BoolValue(true));
        assert_eq!(decode_payload(&payload(vec![long_key])), Err(Refused::TooLarge));
        let long_array = vec![AnyValue { value: Some(V::IntValue(1)) }; MAX_ARRAY_ELEMENTS + 1];
        let long_array = kv("a", V::ArrayValue(ArrayValue { values: long_array }));
        assert_eq!(decode_payload(&payload(vec![long_array])), Err(Refused::TooLarge));
        let big_strings = vec![AnyValue { value: Some(string(&"x".repeat(600))) }; 2];
        let big_strings = kv("a", V::ArrayValue(ArrayValue { values: big_strings }));
        assert_eq!(decode_payload(&payload(vec![big_strings])), Err(Refused::TooLarge));
        // Truncated, garbage, a string that is not UTF-8, and deep nesting.
        let good = payload(vec![kv("service.name", string("s"))]);
        assert!(matches!(decode_payload(&good[..good.len() - 1]), Err(Refused::Malformed(_))));
        assert!(matches!(decode_payload(&[0xff; 16]), Err(Refused::Malformed(_))));
        let mut not_utf8 = payload(vec![kv("k", string("ab"))]);
        let at = not_utf8.windows(2).position(|w| w == b"ab").unwrap();
        not_utf8[at] = 0xff;
        assert!(matches!(decode_payload(&not_utf8), Err(Refused::Malformed(_))));
        let mut deep = AnyValue { value: Some(V::IntValue(1)) };
        for _ in 0..200 {
            deep = AnyValue { value: Some(V::ArrayValue(ArrayValue { values: vec![deep] })) };
        }
        let deep = payload(vec![ProtoKeyValue { key: "d".into(), value: Some(deep), ..Default::default() }]);
        assert!(matches!(decode_payload(&deep), Err(Refused::Malformed(_))));
        assert!(matches!(decode_payload(&vec![0; MAX_PAYLOAD as usize + 1]), Err(Refused::PayloadSize(_))));
    }

    fn header(version: u32, size: u32, published_at: u64, payload: u64) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&version.to_ne_bytes());
        h[12..16].copy_from_slice(&size.to_ne_bytes());
        h[16..24].copy_from_slice(&published_at.to_ne_bytes());
        h[24..].copy_from_slice(&payload.to_ne_bytes());
        h
    }

    #[test]
    fn the_header_is_checked_field_by_field() {
        assert_eq!(parse_header(&header(2, 10, 1, 0x1000)), Ok((10, 0x1000)));
        let mut wrong = header(2, 10, 1, 0x1000);
        wrong[7] = b'x';
        assert_eq!(parse_header(&wrong), Err(Refused::Signature));
        assert_eq!(parse_header(&header(1, 10, 1, 0x1000)), Err(Refused::Version(1)));
        assert_eq!(parse_header(&header(2, 0, 1, 0x1000)), Err(Refused::PayloadSize(0)));
        assert_eq!(
            parse_header(&header(2, MAX_PAYLOAD + 1, 1, 0)),
            Err(Refused::PayloadSize(MAX_PAYLOAD + 1))
        );
    }

    /// A process's memory as a test lays it out: byte ranges, and a hook that runs before each
    /// read (a publisher racing the reader).
    type Regions = Vec<(u64, Vec<u8>)>;
    type Publisher = Box<dyn FnMut(&mut Regions)>;

    struct FakeMemory {
        regions: RefCell<Regions>,
        on_read: RefCell<Publisher>,
    }

    impl FakeMemory {
        fn new(regions: Regions) -> FakeMemory {
            FakeMemory { regions: RefCell::new(regions), on_read: RefCell::new(Box::new(|_| {})) }
        }
    }

    impl Memory for FakeMemory {
        fn read(&self, address: u64, into: &mut [u8]) -> bool {
            (self.on_read.borrow_mut())(&mut self.regions.borrow_mut());
            let regions = self.regions.borrow();
            let found = regions.iter().find(|(start, bytes)| {
                *start <= address && address - start + into.len() as u64 <= bytes.len() as u64
            });
            let Some((start, bytes)) = found else { return false };
            let at = (address - start) as usize;
            into.copy_from_slice(&bytes[at..at + into.len()]);
            true
        }
    }

    const HEADER: u64 = 0x7000_0000;
    const PAYLOAD: u64 = 0x5000_0000;

    fn memory(published_at: u64, payload_bytes: &[u8]) -> FakeMemory {
        let size = payload_bytes.len() as u32;
        let mut page = header(2, size, published_at, PAYLOAD).to_vec();
        page.resize(4096, 0);
        FakeMemory::new(vec![(HEADER, page), (PAYLOAD, payload_bytes.to_vec())])
    }

    fn readable(payload_len: usize) -> Vec<(u64, u64)> {
        vec![(PAYLOAD, PAYLOAD + payload_len as u64), (HEADER, HEADER + 4096)]
    }

    #[test]
    fn a_consistent_context_is_read_with_its_stamp() {
        let bytes = payload(vec![kv("service.name", string("svc")), kv("service.version", string("1.2"))]);
        let context = read_at(&memory(77, &bytes), HEADER, &readable(bytes.len())).unwrap();
        assert_eq!(context.stamp, Stamp { header: HEADER, published_at_ns: 77 });
        assert_eq!(context.service_name.as_deref(), Some("svc"));
        assert_eq!(context.attributes, vec![KeyValue::new("service.version", "1.2")]);
        // The payload must lie in the process's readable mappings.
        let outside = read_at(&memory(77, &bytes), HEADER, &readable(bytes.len())[1..]).unwrap_err();
        assert_eq!(outside, RefusedAt { why: Refused::PayloadOutside, stamp: Some(context.stamp) });
        let unmapped = read_at(&memory(77, &bytes), HEADER + 8192, &readable(bytes.len())).unwrap_err();
        assert_eq!(unmapped, RefusedAt { why: Refused::Unreadable, stamp: None });
    }

    #[test]
    fn a_context_being_updated_is_read_again_then_refused_as_torn() {
        let bytes = payload(vec![kv("service.name", string("svc"))]);
        // Always mid-update.
        let updating = read_at(&memory(0, &bytes), HEADER, &readable(bytes.len())).unwrap_err();
        assert_eq!(
            updating,
            RefusedAt { why: Refused::Torn, stamp: Some(Stamp { header: HEADER, published_at_ns: 0 }) }
        );
        // Republished during every copy: the timestamp differs after it.
        let racing = memory(5, &bytes);
        let mut stamp = 5u64;
        *racing.on_read.borrow_mut() = Box::new(move |regions| {
            stamp += 1;
            regions[0].1[16..24].copy_from_slice(&stamp.to_ne_bytes());
        });
        assert_eq!(read_at(&racing, HEADER, &readable(bytes.len())).unwrap_err().why, Refused::Torn);
        // Republished once, during the first copy, which saw garbage: the second read is whole,
        // and the garbage of a torn copy is not held against the process.
        let once = memory(5, &bytes);
        let mut reads = 0;
        *once.on_read.borrow_mut() = Box::new(move |regions| {
            reads += 1;
            match reads {
                3 => regions[1].1.fill(0xff),
                4 => {
                    regions[1].1 = payload(vec![kv("service.name", string("new"))]);
                    regions[0].1[16..24].copy_from_slice(&6u64.to_ne_bytes());
                }
                _ => {}
            }
        });
        let new_len = payload(vec![kv("service.name", string("new"))]).len();
        assert_eq!(new_len, bytes.len());
        let context = read_at(&once, HEADER, &readable(new_len)).unwrap();
        assert_eq!((context.service_name.as_deref(), context.stamp.published_at_ns), (Some("new"), 6));
    }

    #[test]
    fn maps_are_read_by_fields_and_only_otel_ctx_mappings_are_candidates() {
        let maps = b"55d0c0000000-55d0c0001000 r--p 00000000 08:01 1234    /usr/bin/app\n\
7f0000000000-7f0000001000 rw-s 00000000 00:01 99      /memfd:OTEL_CTX (deleted)\n\
7f0000002000-7f0000003000 rw-p 00000000 00:00 0       [anon:OTEL_CTX]\n\
7f0000004000-7f0000005000 r-xp 00000000 00:00 0       [anon:OTEL_CTX]\n\
7f0000006000-7f0000007000 ---p 00000000 00:00 0       [anon_shmem:OTEL_CTX]\n\
7f0000008000-7f0000009000 rw-p 00000000 00:00 0       /tmp/OTEL_CTX\n\
7f000000a000-7f000000a010 rw-s 00000000 00:01 98      /memfd:OTEL_CTX\n\
garbage line\n\
7f000000c000-7f000000b000 rw-p 00000000 00:00 0       [anon:OTEL_CTX]\n\
7f000000d000-7f000000e000 rw-p 00000000 00:00 0";
        let found = scan_maps(&maps[..]);
        assert_eq!(found.candidates, vec![0x7f0000000000, 0x7f0000002000]);
        assert_eq!(found.readable.len(), 7);
        assert!(!inside(&found.readable, 0x7f0000000ff0, 0x1000));
        assert!(inside(&[(0, 0x1000), (0x1000, 0x2000)], 0xff0, 0x20), "adjacent mappings are one range");
        assert!(!inside(&[(0, 0x1000), (0x1001, 0x2000)], 0xff0, 0x20));
        assert!(!inside(&[(0, u64::MAX)], u64::MAX - 1, 4), "no wrap-around");
    }

    #[test]
    fn a_context_published_in_this_process_is_read_through_proc() {
        let me = std::process::id();
        let bytes =
            payload(vec![kv("service.name", string("self")), kv("service.instance.id", string("i-1"))]);
        // Published as the OTEP's first choice does it: a private mapping of a memfd named
        // OTEL_CTX, which maps shows as `/memfd:OTEL_CTX (deleted)` once the fd is closed.
        // SAFETY: plain syscalls on a memfd made here; the mapping is unmapped below.
        let page = unsafe {
            let fd = libc::memfd_create(c"OTEL_CTX".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, 4096), 0);
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd,
                0,
            );
            libc::close(fd);
            page
        };
        assert_ne!(page, libc::MAP_FAILED);
        // SAFETY: the page is ours, 4096 bytes; the payload fits after the header.
        let slice = unsafe { std::slice::from_raw_parts_mut(page.cast::<u8>(), 4096) };
        let payload_at = page as u64 + 64;
        slice[64..64 + bytes.len()].copy_from_slice(&bytes);
        slice[..HEADER_BYTES].copy_from_slice(&header(2, bytes.len() as u32, 42, payload_at));
        let read_back = read(Path::new("/proc"), me);
        let stamp = Stamp { header: page as u64, published_at_ns: 42 };
        let context = read_back.unwrap().expect("found in /proc/self/maps");
        assert_eq!(context.service_name.as_deref(), Some("self"));
        assert_eq!(context.attributes, vec![KeyValue::new("service.instance.id", "i-1")]);
        assert_eq!(context.stamp, stamp);
        assert!(still_published(me, stamp));
        slice[16..24].copy_from_slice(&43u64.to_ne_bytes());
        assert!(!still_published(me, stamp), "republished");
        // SAFETY: unmapping the page mapped above; nothing refers to it any more.
        unsafe { libc::munmap(page, 4096) };
        assert!(!still_published(me, stamp), "unmapped");
        assert_eq!(read(Path::new("/nonexistent"), me), Ok(None));
    }
}
