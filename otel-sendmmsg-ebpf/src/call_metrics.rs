//! Every traced call counted at exit in its series (process, outcome, socket kind), spans or
//! not: the duration histogram and message and byte counts of
//! [`otel_sendmmsg_common::call_metrics`], which user space reads and exports.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, PerCpuHashMap},
};
use otel_sendmmsg_common::{
    call_metrics::{
        bucket_of, fill_series, message_outcomes, metric_flags, MetricSettings, PairedCall, SeriesKey,
        SeriesValue, MAX_BOUNDS,
    },
    Counter,
};

use crate::pairing::count;

/// Set by user space at load; `flags` 0 turns the metrics off.
#[unsafe(no_mangle)]
static METRIC_SETTINGS: MetricSettings = MetricSettings { flags: 0, bounds: 0 };

/// The series, per CPU. User space sizes it (`OTEL_SENDMMSG_MAX_METRIC_SERIES`) and removes
/// the series of processes gone once their last counts are exported.
#[map]
static CALL_METRICS: PerCpuHashMap<SeriesKey, SeriesValue> = PerCpuHashMap::with_max_entries(512, 0);

/// The duration histogram's upper bounds, ns, which user space writes after load. A map, not
/// a global: the compiler would fold reads of a zeroed global array.
#[map]
static DURATION_BOUNDS: Array<[u64; MAX_BOUNDS]> = Array::with_max_entries(1, 0);

/// A new series' first value: all zeros (the kernel's, never written).
#[map]
static NEW_SERIES: Array<SeriesValue> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn settings() -> MetricSettings {
    // SAFETY: a global the loader overwrites; volatile keeps the compiler from folding it.
    unsafe { core::ptr::read_volatile(&METRIC_SETTINGS) }
}

/// Counts the finished call `rec` (its end, return and socket filled in).
#[inline(always)]
pub fn count_call(rec: &impl PairedCall, settings: &MetricSettings) {
    let mut key = core::mem::MaybeUninit::<SeriesKey>::uninit();
    // SAFETY: `fill_series` writes every byte of the key before it is read. Used in place, not
    // moved out: a copy lets the compiler fold the stores it knows are zero into a `memset` call.
    let key = unsafe {
        fill_series(rec, settings.flags & metric_flags::BY_PEER != 0, key.as_mut_ptr());
        &*key.as_ptr()
    };
    let value = match CALL_METRICS.get_ptr_mut(key) {
        Some(value) => value,
        None => {
            let Some(zero) = NEW_SERIES.get(0) else {
                return;
            };
            // Another CPU may have made the series meanwhile (EEXIST): it is there all the same.
            let _ = CALL_METRICS.insert(key, zero, u64::from(BPF_NOEXIST));
            match CALL_METRICS.get_ptr_mut(key) {
                Some(value) => value,
                None => {
                    count(Counter::MetricSeriesFull);
                    return;
                }
            }
        }
    };
    // SAFETY: this CPU's value of the series; programs of these hooks do not nest on a CPU.
    let value = unsafe { &mut *value };
    let duration = rec.end_ns().wrapping_sub(rec.start_ns());
    if value.calls == 0 || duration < value.min_ns {
        value.min_ns = duration;
    }
    if duration > value.max_ns {
        value.max_ns = duration;
    }
    value.calls += 1;
    value.sum_ns += duration;
    let (sent, failed, unsent) = message_outcomes(rec);
    value.sent += sent;
    value.failed += failed;
    value.unsent += unsent;
    value.bytes += rec.bytes();
    if let Some(bounds) = DURATION_BOUNDS.get(0) {
        let bucket = bucket_of(duration, bounds, settings.bounds);
        if let Some(n) = value.buckets.get_mut(bucket) {
            *n += 1;
        }
    }
}
