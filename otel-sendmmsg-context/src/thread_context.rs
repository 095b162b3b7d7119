//! The calling thread's OTEP 4947 thread context (oteps/profiles/4947-thread-ctx.md), seen from
//! Rust: thread_context.c owns the TLS symbol `otel_thread_ctx_v1` and the record it points to,
//! because stable Rust can neither define an exported TLS symbol nor pick the TLSDESC dialect.
//! This module only calls it, and reads back what an external reader would read.

use crate::process_context;

/// `threadlocal.schema_version` in the process context: the record layout and TLS discovery of
/// OTEP 4947, under the name the OTEP gives its experimental version.
pub(crate) const SCHEMA_VERSION: &str = "tlsdesc_v1_dev";

/// `threadlocal.attribute_key_map` in the process context: attribute names by record key index.
/// Empty: the records carry no attributes (`attrs-data-size` 0).
pub(crate) const ATTRIBUTE_KEYS: &[&str] = &[];

/// A span as the record holds it: ids in W3C byte order, the W3C trace-flags byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub trace_flags: u8,
}

impl Span {
    /// `None` for ids a record must not carry: the OTEP wants both set or neither, and W3C
    /// calls an all-zero trace or span id invalid.
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], trace_flags: u8) -> Option<Span> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(Span { trace_id, span_id, trace_flags })
    }
}

/// The record's fixed 28-byte part, as thread_context.c lays it out (its static asserts check
/// the same offsets).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub valid: u8,
    pub trace_flags: u8,
    pub attrs_data_size: u16,
}

const _: () = assert!(std::mem::size_of::<Record>() == 28 && std::mem::align_of::<Record>() == 2);

extern "C" {
    fn otel_sendmmsg_thread_ctx_store(trace_id: *const u8, span_id: *const u8, trace_flags: u8);
    fn otel_sendmmsg_thread_ctx_clear();
    fn otel_sendmmsg_thread_ctx_slot() -> *const *const Record;
}

/// Publishes `span` as this thread's context, or none.
pub(crate) fn set(span: Option<Span>) {
    match span {
        Some(span) => {
            // Readers look for the thread context only once the process context names its schema.
            process_context::ensure_thread_context_announced();
            // SAFETY: both pointers are to arrays of the sizes the C side copies.
            unsafe {
                otel_sendmmsg_thread_ctx_store(
                    span.trace_id.as_ptr(),
                    span.span_id.as_ptr(),
                    span.trace_flags,
                )
            }
        }
        // SAFETY: no arguments; touches only this thread's TLS.
        None => unsafe { otel_sendmmsg_thread_ctx_clear() },
    }
}

/// This thread's record, read the way a reader reads it: the `otel_thread_ctx_v1` slot, then
/// the 28 bytes it points to; `None` when the slot is NULL.
pub(crate) fn record() -> Option<Record> {
    // SAFETY: the slot is this thread's TLS variable; a non-NULL value points to this thread's
    // record (thread_context.c sets nothing else), which lives as long as the thread. Only this
    // thread writes either, so nothing changes them during the read.
    unsafe {
        let published = *otel_sendmmsg_thread_ctx_slot();
        (!published.is_null()).then(|| published.read())
    }
}

/// The span this thread publishes now.
pub(crate) fn current() -> Option<Span> {
    let record = record().filter(|r| r.valid == 1)?;
    Span::new(record.trace_id, record.span_id, record.trace_flags)
}

/// The record's bytes as a reader copies them (slot, then 28 bytes at the pointer).
#[cfg(test)]
pub(crate) fn published_bytes() -> Option<[u8; 28]> {
    // SAFETY: as in `record`; a Record is 28 plain bytes.
    unsafe {
        let published = *otel_sendmmsg_thread_ctx_slot();
        (!published.is_null()).then(|| published.cast::<[u8; 28]>().read())
    }
}

/// The address the slot holds: this thread's record while a span is published, else 0.
#[cfg(test)]
pub(crate) fn record_address() -> usize {
    // SAFETY: as in `record`.
    unsafe { *otel_sendmmsg_thread_ctx_slot() as usize }
}
