//! Publishes the calling thread's active span to the otel-sendmmsg sidecar, so the `sendmmsg`
//! spans of this thread become children of it in the application's own trace.
//!
//! The hand-off is a no-op function, [`otel_sendmmsg_set_context`], whose arguments a uprobe of
//! the sidecar reads and writes into the shared thread -> span map
//! (`/sys/fs/bpf/otel/traces_ctx_v1`, the one OpenTelemetry eBPF Instrumentation and the eBPF
//! profiler use). Without a sidecar, publishing costs one function call.
//!
//! ```no_run
//! // Whatever the span API: publish for a scope, and the previous context comes back after.
//! let _published = otel_sendmmsg_context::publish([0x4b; 16], [0xf9; 8], true);
//! // ... sendmmsg calls here are children of that span ...
//! ```
//! With the `opentelemetry` feature, [`publish_current`] publishes the current span of the
//! OpenTelemetry context.
//!
//! [`publish_resource`] publishes the application's resource (its `service.name` and other
//! attributes) as an OTEP 4719 process context, which the sidecar puts its spans under.
//!
//! ```no_run
//! otel_sendmmsg_context::publish_resource("checkout", &[("service.version", "1.4.2")]).unwrap();
//! ```

use std::{cell::Cell, ffi::c_char};

pub mod process_context;
pub use process_context::{publish_resource, unpublish_resource, update_resource, PublishError};

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

/// The W3C "sampled" trace flag; only sampled spans become parents (others are not exported).
pub const SAMPLED: u64 = 1;

/// The marker the sidecar attaches to. Never inlined and never optimised away: its arguments,
/// in registers, are what the uprobe reads.
///
/// `trace_id_high`/`trace_id_low` are the trace id's bytes 0-7 and 8-15 as big-endian integers,
/// `span_id` the span id's bytes as one; all zero, or `flags` without [`SAMPLED`], means no span.
#[no_mangle]
#[inline(never)]
pub extern "C" fn otel_sendmmsg_set_context(trace_id_high: u64, trace_id_low: u64, span_id: u64, flags: u64) {
    // Opaque to the optimiser, so neither this body nor the calls to it can be removed.
    std::hint::black_box((trace_id_high, trace_id_low, span_id, flags));
}

/// What this thread published last: (trace id high, low, span id, flags).
type Published = (u64, u64, u64, u64);

thread_local! {
    static CURRENT: Cell<Published> = const { Cell::new((0, 0, 0, 0)) };
}

fn set(published: Published) -> Published {
    let (high, low, span, flags) = published;
    otel_sendmmsg_set_context(high, low, span, flags);
    CURRENT.with(|c| c.replace(published))
}

/// Publishes a span for this thread until the guard drops, which publishes the previous one
/// again (so nested scopes work).
#[must_use = "the context is published only while the guard lives"]
pub fn publish(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> ContextGuard {
    let high = u64::from_be_bytes(trace_id[..8].try_into().expect("8 bytes"));
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
    let flags = if sampled { SAMPLED } else { 0 };
    ContextGuard {
        previous: set((high, low, u64::from_be_bytes(span_id), flags)),
        _not_send: Default::default(),
    }
}

/// Publishes "no span" for this thread until the guard drops.
#[must_use = "the context is cleared only while the guard lives"]
pub fn clear() -> ContextGuard {
    ContextGuard { previous: set((0, 0, 0, 0)), _not_send: Default::default() }
}

/// Restores the previously published context when dropped. Not `Send`: the context belongs to
/// the thread that published it.
pub struct ContextGuard {
    previous: Published,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        set(self.previous);
    }
}

/// Publishes the current OpenTelemetry span (of `Context::current()`) for this thread until the
/// guard drops; an invalid or unsampled span publishes "no span".
#[cfg(feature = "opentelemetry")]
#[must_use = "the context is published only while the guard lives"]
pub fn publish_current() -> ContextGuard {
    use opentelemetry::trace::TraceContextExt;
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        publish(sc.trace_id().to_bytes(), sc.span_id().to_bytes(), sc.is_sampled())
    } else {
        clear()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> Published {
        CURRENT.with(Cell::get)
    }

    #[test]
    fn ids_go_out_big_endian_and_scopes_nest() {
        let trace =
            [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
        let outer = publish(trace, [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7], true);
        assert_eq!(current(), (0x4bf92f3577b34da6, 0xa3ce929d0e0e4736, 0x00f067aa0ba902b7, SAMPLED));
        {
            let _inner = clear();
            assert_eq!(current(), (0, 0, 0, 0));
        }
        assert_eq!(current().2, 0x00f067aa0ba902b7, "the outer span is back");
        drop(outer);
        assert_eq!(current(), (0, 0, 0, 0));
    }

    #[test]
    fn each_thread_has_its_own_context() {
        let _here = publish([1; 16], [2; 8], true);
        std::thread::spawn(|| assert_eq!(current(), (0, 0, 0, 0))).join().unwrap();
        assert_eq!(current().2, u64::from_be_bytes([2; 8]));
    }

    #[test]
    fn an_unsampled_span_is_published_without_the_flag() {
        let _g = publish([1; 16], [2; 8], false);
        assert_eq!(current().3, 0);
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn without_an_active_span_the_current_context_is_no_span() {
        let _g = publish_current();
        assert_eq!(current(), (0, 0, 0, 0));
    }
}
