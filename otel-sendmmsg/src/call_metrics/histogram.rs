//! The duration histogram's two shapes: the table of bounds the kernel counts against, and the
//! OTLP data point made from the kernel's buckets. Exponential (the default): the kernel counts
//! at [`EXPONENTIAL_SCALE`] and a point is scaled down until its buckets fit
//! [`MAX_EXPONENTIAL_BUCKETS`], as the SDK's aggregation does. Explicit: the user's bounds.

use std::time::Duration;

use otel_sendmmsg_common::call_metrics::{BUCKETS, EXPONENTIAL_SCALE, LOWEST_EXPONENTIAL_INDEX, MAX_BOUNDS};

use crate::config::Histogram;

/// The SDK's default `MaxSize` of an exponential histogram's positive buckets.
pub const MAX_EXPONENTIAL_BUCKETS: usize = 160;

/// The upper bounds the kernel counts against, ns, in order.
pub fn bounds_ns(histogram: &Histogram) -> Vec<u64> {
    match histogram {
        // Bucket i of the table ends at 2^((LOWEST + i + 1) / 2^scale) s; its bound below is
        // bound i. Rounded down: a whole number of ns is above a bound exactly when it is above
        // the bound's whole part.
        Histogram::Exponential => (0..MAX_BOUNDS as i32)
            .map(|i| {
                let exponent = f64::from(LOWEST_EXPONENTIAL_INDEX + i) / f64::from(1 << EXPONENTIAL_SCALE);
                (1e9 * exponent.exp2()).floor() as u64
            })
            .collect(),
        Histogram::Explicit(bounds) => bounds.iter().map(|b| b.as_nanos() as u64).collect(),
    }
}

/// An exponential histogram's positive buckets: its scale, the index of its first bucket and
/// the counts from there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exponential {
    pub scale: i32,
    pub offset: i32,
    pub counts: Vec<u64>,
}

/// The kernel's buckets as an exponential histogram. Bucket 0 (at most the first bound, 60 ns:
/// no real call) is taken as the one below the table; the last (above 2^16 s) as the table's
/// last: the point's `max` still says the truth.
pub fn exponential(kernel: &[u64; BUCKETS]) -> Exponential {
    let index_of = |bucket: usize| LOWEST_EXPONENTIAL_INDEX - 1 + bucket.min(MAX_BOUNDS) as i32;
    let used: Vec<(i32, u64)> =
        kernel.iter().enumerate().filter(|(_, n)| **n > 0).map(|(b, n)| (index_of(b), *n)).collect();
    let (Some(first), Some(last)) = (used.first(), used.last()) else {
        return Exponential { scale: EXPONENTIAL_SCALE, offset: 0, counts: Vec::new() };
    };
    // Halving the scale merges bucket pairs: index i becomes i >> 1 (rounding towards -inf).
    let mut shift = 0;
    while ((last.0 >> shift) - (first.0 >> shift)) as usize >= MAX_EXPONENTIAL_BUCKETS {
        shift += 1;
    }
    let offset = first.0 >> shift;
    let mut counts = vec![0; ((last.0 >> shift) - offset) as usize + 1];
    for (index, n) in used {
        counts[((index >> shift) - offset) as usize] += n;
    }
    Exponential { scale: EXPONENTIAL_SCALE - shift, offset, counts }
}

/// An explicit histogram's counts: one per bound and one above the last.
pub fn explicit(kernel: &[u64; BUCKETS], bounds: &[Duration]) -> Vec<u64> {
    let mut counts = kernel[..=bounds.len().min(MAX_BOUNDS)].to_vec();
    // Nothing lands past the user's last bound's bucket; kept whole should it ever.
    let beyond: u64 = kernel[bounds.len().min(MAX_BOUNDS) + 1..].iter().sum();
    if let Some(last) = counts.last_mut() {
        *last += beyond;
    }
    counts
}

#[cfg(test)]
mod tests {
    use otel_sendmmsg_common::call_metrics::bucket_of;

    use super::*;

    fn kernel_table() -> [u64; MAX_BOUNDS] {
        bounds_ns(&Histogram::Exponential).try_into().expect("MAX_BOUNDS bounds")
    }

    /// The bucket the OpenTelemetry data model gives `seconds` at `scale`: the index `i` with
    /// base^i < value <= base^(i+1).
    fn model_index(seconds: f64, scale: i32) -> i32 {
        ((seconds.log2() * f64::from(1 << scale)).ceil() as i32) - 1
    }

    #[test]
    fn the_kernels_bucket_is_the_data_models_bucket() {
        let table = kernel_table();
        for ns in [
            61u64,
            100,
            1_000,
            1_500,
            4_096,
            10_000,
            123_456,
            1_000_000,
            999_999_999,
            1_000_000_000,
            7_000_000_000_000,
        ] {
            let mut kernel = [0u64; BUCKETS];
            kernel[bucket_of(ns, &table, MAX_BOUNDS as u32)] = 1;
            let point = exponential(&kernel);
            assert_eq!(point.scale, EXPONENTIAL_SCALE);
            assert_eq!(point.offset, model_index(ns as f64 / 1e9, EXPONENTIAL_SCALE), "{ns} ns");
            assert_eq!(point.counts, vec![1]);
        }
    }

    #[test]
    fn a_point_too_wide_for_its_buckets_is_scaled_down_as_the_sdk_does() {
        let table = kernel_table();
        let mut kernel = [0u64; BUCKETS];
        // 100 ns and 1000 s: 33 octaves, 134 buckets at scale 2, fits.
        for ns in [100u64, 1_000_000_000_000] {
            kernel[bucket_of(ns, &table, MAX_BOUNDS as u32)] += 1;
        }
        let point = exponential(&kernel);
        assert_eq!((point.scale, point.counts.len()), (EXPONENTIAL_SCALE, 134));
        assert_eq!(point.offset, model_index(100e-9, EXPONENTIAL_SCALE));
        // The whole table (161 buckets, with the one below its first bound) does not.
        for ns in [10u64, 65_000_000_000_000] {
            kernel[bucket_of(ns, &table, MAX_BOUNDS as u32)] += 1;
        }
        let point = exponential(&kernel);
        assert_eq!(point.scale, EXPONENTIAL_SCALE - 1);
        assert!(point.counts.len() <= MAX_EXPONENTIAL_BUCKETS);
        assert_eq!(point.counts.iter().sum::<u64>(), 4);
        assert_eq!(point.offset, (LOWEST_EXPONENTIAL_INDEX - 1) >> 1);
        // 100 ns's bucket at the coarser scale holds it.
        let at = (model_index(100e-9, EXPONENTIAL_SCALE - 1) - point.offset) as usize;
        assert_eq!(point.counts[at], 1);
    }

    #[test]
    fn explicit_counts_are_the_kernels_for_the_users_bounds() {
        let bounds = [Duration::from_micros(10), Duration::from_micros(100)];
        let table: Vec<u64> = bounds_ns(&Histogram::Explicit(bounds.to_vec()));
        assert_eq!(table, vec![10_000, 100_000]);
        let mut padded = [0u64; MAX_BOUNDS];
        padded[..2].copy_from_slice(&table);
        let mut kernel = [0u64; BUCKETS];
        for ns in [5_000u64, 10_000, 10_001, 500_000] {
            kernel[bucket_of(ns, &padded, 2)] += 1;
        }
        assert_eq!(explicit(&kernel, &bounds), vec![2, 1, 1]);
    }
}
