//! Publishes the calling thread's active span for out-of-process readers such as the
//! otel-sendmmsg sidecar, which makes the thread's `sendmmsg` spans children of it, and the
//! OpenTelemetry eBPF profiler: an OTEP 4947 thread context
//! (oteps/profiles/4947-thread-ctx.md in opentelemetry-specification).
//!
//! Each thread has one Thread-Local Context Record (trace id, span id, W3C trace flags, no
//! attributes); the ELF TLS variable `otel_thread_ctx_v1` points to it while a span is published
//! and is NULL otherwise. Unsampled spans are published too, with the sampled flag clear: the
//! reader decides what to do with them. Publishing costs a call and a few thread-local stores.
//!
//! ```no_run
//! // Whatever the span API: publish for a scope, and the previous context comes back after.
//! let _published = otel_sendmmsg_context::publish([0x4b; 16], [0xf9; 8], true);
//! // ... sendmmsg calls here are children of that span ...
//! ```
//! With the `opentelemetry` feature, [`publish_current`] publishes the current span of the
//! OpenTelemetry context.
//!
//! # Linking: `otel_thread_ctx_v1` must be in `.dynsym`
//!
//! Readers find the TLS variable by name in the dynamic symbol table of the executable or
//! shared object that defines it; the OTEP requires it there even in executables, which export
//! nothing by default, and a reader that cannot find it sees no context at all.
//! - A Rust application (which gets the library as an rlib): a build script for the binary
//!   with
//!   ```text
//!   println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=otel_thread_ctx_v1");
//!   ```
//!   The library cannot add it itself: a dependency's build script cannot pass link arguments
//!   to its dependents' binaries.
//! - A C application linking `libotel_sendmmsg_context.a`: the link flag
//!   `-Wl,--export-dynamic-symbol=otel_thread_ctx_v1` (GNU ld 2.35+, lld, mold).
//! - Linking `libotel_sendmmsg_context.so`: nothing; the shared object exports it (when built
//!   with lld, rustc's default linker on x86_64 Linux; build.rs says why and warns otherwise).
//!
//! [`publish_resource`] publishes the application's resource (its `service.name` and other
//! attributes) as an OTEP 4719 process context, which the sidecar puts its spans under. The
//! process context also tells readers that this process publishes thread contexts, so the first
//! span published publishes one (without a resource) if the application has not yet.
//!
//! ```no_run
//! otel_sendmmsg_context::publish_resource("checkout", &[("service.version", "1.4.2")]).unwrap();
//! ```

use std::ffi::c_char;

pub mod process_context;
mod thread_context;

pub use process_context::{publish_resource, unpublish_resource, update_resource, PublishError};
use thread_context::Span;

/// C: publishes (or, when published already, updates) the process's resource as an OTEP 4719
/// process context: `service_name` and `count` attributes, `keys[i]` = `values[i]`, all
/// NUL-terminated UTF-8. Returns 0, `-EINVAL` for a NULL or non-UTF-8 string, `-E2BIG` for a
/// resource over 64 KiB encoded, or `-errno` of the system call that failed.
///
/// # Safety
/// `service_name` is a valid C string; `keys` and `values` point to `count` valid C strings each
/// (or may be NULL when `count` is 0).
#[no_mangle]
pub unsafe extern "C" fn otel_sendmmsg_publish_resource(
    service_name: *const c_char,
    keys: *const *const c_char,
    values: *const *const c_char,
    count: usize,
) -> i32 {
    // SAFETY: as the caller promises.
    let text = |p: *const c_char| {
        (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_str().ok()).flatten()
    };
    let Some(service_name) = text(service_name) else { return -libc::EINVAL };
    let mut attributes = Vec::with_capacity(count);
    for i in 0..count {
        if keys.is_null() || values.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: `i` < `count` entries of each array, as the caller promises.
        let (key, value) = unsafe { (text(*keys.add(i)), text(*values.add(i))) };
        let (Some(key), Some(value)) = (key, value) else { return -libc::EINVAL };
        attributes.push((key, value));
    }
    match publish_resource(service_name, &attributes) {
        Ok(()) => 0,
        Err(PublishError::TooLarge) => -libc::E2BIG,
        Err(PublishError::Os(errno)) => -errno,
    }
}

/// The W3C "sampled" trace flag: the span is exported, so readers may make it a parent.
pub const SAMPLED: u64 = 1;

/// C: publishes a span as the calling thread's context, or none. `trace_id_high`/`trace_id_low`
/// are the trace id's bytes 0-7 and 8-15 as big-endian integers, `span_id` the span id's bytes
/// as one, `flags` the W3C trace-flags byte (its low 8 bits; [`SAMPLED`] is bit 0). An unsampled
/// span is published with its flags; a zero trace id or span id publishes "no span".
#[no_mangle]
pub extern "C" fn otel_sendmmsg_set_context(trace_id_high: u64, trace_id_low: u64, span_id: u64, flags: u64) {
    let mut trace_id = [0; 16];
    trace_id[..8].copy_from_slice(&trace_id_high.to_be_bytes());
    trace_id[8..].copy_from_slice(&trace_id_low.to_be_bytes());
    thread_context::set(Span::new(trace_id, span_id.to_be_bytes(), flags as u8));
}

fn replace(span: Option<Span>) -> ContextGuard {
    let previous = thread_context::current();
    thread_context::set(span);
    ContextGuard { previous, _not_send: Default::default() }
}

/// Publishes a span for this thread until the guard drops, which publishes the previous one
/// again (so nested scopes work). Ids are in W3C byte order; an unsampled span is published
/// too, with the sampled flag clear. A zero trace id or span id publishes "no span".
#[must_use = "the context is published only while the guard lives"]
pub fn publish(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> ContextGuard {
    let flags = if sampled { SAMPLED as u8 } else { 0 };
    replace(Span::new(trace_id, span_id, flags))
}

/// Publishes "no span" for this thread until the guard drops.
#[must_use = "the context is cleared only while the guard lives"]
pub fn clear() -> ContextGuard {
    replace(None)
}

/// Restores the previously published context when dropped. Not `Send`: the context belongs to
/// the thread that published it.
pub struct ContextGuard {
    previous: Option<Span>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        thread_context::set(self.previous);
    }
}

/// Publishes the current OpenTelemetry span (of `Context::current()`) for this thread until the
/// guard drops, with all its trace flags; an invalid span publishes "no span".
#[cfg(feature = "opentelemetry")]
#[must_use = "the context is published only while the guard lives"]
pub fn publish_current() -> ContextGuard {
    use opentelemetry::trace::TraceContextExt;
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    let published = sc
        .is_valid()
        .then(|| Span::new(sc.trace_id().to_bytes(), sc.span_id().to_bytes(), sc.trace_flags().to_u8()));
    replace(published.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use thread_context::published_bytes;

    const TRACE: [u8; 16] =
        [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
    const SPAN: [u8; 8] = [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    /// The 28 bytes a reader expects for a span: ids, valid = 1, flags, no attributes.
    fn record(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> [u8; 28] {
        let mut bytes = [0; 28];
        bytes[..16].copy_from_slice(&trace_id);
        bytes[16..24].copy_from_slice(&span_id);
        bytes[24] = 1;
        bytes[25] = flags;
        bytes
    }

    #[test]
    fn a_published_span_is_the_record_a_reader_reads_and_scopes_nest() {
        assert_eq!(published_bytes(), None, "a thread starts with a NULL slot");
        let outer = publish(TRACE, SPAN, true);
        assert_eq!(published_bytes(), Some(record(TRACE, SPAN, 1)));
        {
            let _cleared = clear();
            assert_eq!(published_bytes(), None, "cleared: the slot is NULL");
            let _inner = publish([7; 16], [8; 8], true);
            assert_eq!(published_bytes(), Some(record([7; 16], [8; 8], 1)));
        }
        assert_eq!(published_bytes(), Some(record(TRACE, SPAN, 1)), "the outer span is back");
        drop(outer);
        assert_eq!(published_bytes(), None);
    }

    #[test]
    fn an_unsampled_span_is_published_with_its_flags() {
        let _g = publish(TRACE, SPAN, false);
        assert_eq!(published_bytes(), Some(record(TRACE, SPAN, 0)));
    }

    #[test]
    fn ids_with_a_zero_half_publish_no_span() {
        let _outer = publish(TRACE, SPAN, true);
        {
            let _g = publish([0; 16], SPAN, true);
            assert_eq!(published_bytes(), None);
        }
        let _g = publish(TRACE, [0; 8], true);
        assert_eq!(published_bytes(), None);
    }

    #[test]
    fn each_thread_has_its_own_record() {
        let _here = publish(TRACE, SPAN, true);
        let here = thread_context::record_address();
        let there = std::thread::spawn(|| {
            assert_eq!(published_bytes(), None, "nothing published on this thread yet");
            let _g = publish([1; 16], [2; 8], false);
            assert_eq!(published_bytes(), Some(record([1; 16], [2; 8], 0)));
            thread_context::record_address()
        })
        .join()
        .unwrap();
        assert_ne!(here, there);
        assert_eq!(published_bytes(), Some(record(TRACE, SPAN, 1)));
    }

    #[test]
    fn the_c_call_takes_big_endian_ids_and_the_flags_byte() {
        otel_sendmmsg_set_context(0x4bf92f3577b34da6, 0xa3ce929d0e0e4736, 0x00f067aa0ba902b7, 0x03);
        assert_eq!(published_bytes(), Some(record(TRACE, SPAN, 0x03)));
        otel_sendmmsg_set_context(0, 0, 0, SAMPLED);
        assert_eq!(published_bytes(), None);
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn without_an_active_span_the_current_context_is_no_span() {
        let _g = publish_current();
        assert_eq!(published_bytes(), None);
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn the_current_span_is_published_with_all_its_flags() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
        // Random trace id (0x02), not sampled: a reader must see both.
        let flags = TraceFlags::new(0x02);
        let sc = SpanContext::new(
            TraceId::from_bytes(TRACE),
            SpanId::from_bytes(SPAN),
            flags,
            true,
            TraceState::default(),
        );
        let _active = opentelemetry::Context::new().with_remote_span_context(sc).attach();
        let _g = publish_current();
        assert_eq!(published_bytes(), Some(record(TRACE, SPAN, 0x02)));
    }
}
