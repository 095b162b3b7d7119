//! The settings of the call metrics (`sendmmsg.duration`, `sendmmsg.messages`,
//! `sendmmsg.bytes`): how many series the kernel holds, the histogram's shape, and whether
//! series are told apart by peer.

use std::time::Duration;

use otel_sendmmsg_common::call_metrics::MAX_BOUNDS;

use super::{
    values::{bounded_int, invalid, list, parse_bool},
    ConfigError,
};

/// Series the kernel holds (a process, an outcome, a socket kind: most processes have one or
/// two). Each is `64 + 8 x 161` bytes per CPU, preallocated: 512 take 0.7 MiB per CPU.
pub const DEFAULT_MAX_METRIC_SERIES: u32 = 512;
const MAX_METRIC_SERIES_LIMIT: u64 = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallMetricsSettings {
    /// `OTEL_SENDMMSG_CALL_METRICS`: counted and exported only when asked for (and metrics go
    /// to a collector).
    pub on: bool,
    pub max_series: u32,
    pub histogram: Histogram,
    /// Series by peer address and port (`network.peer.*`): one per destination, opt-in.
    pub by_peer: bool,
}

impl Default for CallMetricsSettings {
    fn default() -> Self {
        CallMetricsSettings {
            on: false,
            max_series: DEFAULT_MAX_METRIC_SERIES,
            histogram: Histogram::Exponential,
            by_peer: false,
        }
    }
}

/// The shape of `sendmmsg.duration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Histogram {
    /// An exponential histogram (base-2, scale 2 or coarser).
    Exponential,
    /// Explicit buckets with these upper bounds, increasing.
    Explicit(Vec<Duration>),
}

/// Reads `OTEL_SENDMMSG_MAX_METRIC_SERIES`, `_DURATION_BUCKETS` and `_METRICS_BY_PEER`.
pub(super) fn parse(
    on: &Option<String>,
    max_series: &Option<String>,
    buckets: &Option<String>,
    by_peer: &Option<String>,
) -> Result<CallMetricsSettings, ConfigError> {
    let max_series = bounded_int("OTEL_SENDMMSG_MAX_METRIC_SERIES", max_series, MAX_METRIC_SERIES_LIMIT)?
        .unwrap_or(DEFAULT_MAX_METRIC_SERIES);
    let histogram = match buckets.as_deref().filter(|v| !v.trim().is_empty()) {
        None => Histogram::Exponential,
        Some(v) => {
            let accepts = || {
                invalid(
                    "OTEL_SENDMMSG_DURATION_BUCKETS",
                    v,
                    format!(
                        "up to {MAX_BOUNDS} increasing durations above 0, comma-separated (10us,100us,1ms)"
                    ),
                )
            };
            let bounds = list(buckets)
                .map(|b| humantime::parse_duration(b).ok().filter(|d| !d.is_zero()))
                .collect::<Option<Vec<Duration>>>()
                .ok_or_else(accepts)?;
            if bounds.len() > MAX_BOUNDS || bounds.windows(2).any(|w| w[0] >= w[1]) {
                return Err(accepts());
            }
            Histogram::Explicit(bounds)
        }
    };
    let by_peer = match by_peer {
        None => false,
        Some(v) => {
            parse_bool(v).ok_or_else(|| invalid("OTEL_SENDMMSG_METRICS_BY_PEER", v, "true or false"))?
        }
    };
    let on = match on {
        None => false,
        Some(v) => parse_bool(v).ok_or_else(|| invalid("OTEL_SENDMMSG_CALL_METRICS", v, "true or false"))?,
    };
    Ok(CallMetricsSettings { on, max_series, histogram, by_peer })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(buckets: &str) -> Result<Histogram, ConfigError> {
        parse(&None, &None, &Some(buckets.into()), &None).map(|s| s.histogram)
    }

    #[test]
    fn buckets_are_increasing_durations() {
        assert_eq!(of(""), Ok(Histogram::Exponential));
        assert_eq!(
            of("10us, 1ms,2s"),
            Ok(Histogram::Explicit(vec![
                Duration::from_micros(10),
                Duration::from_millis(1),
                Duration::from_secs(2)
            ]))
        );
        // An empty item is skipped, as in every list setting.
        assert_eq!(of("1ms,"), Ok(Histogram::Explicit(vec![Duration::from_millis(1)])));
        for bad in ["1ms,1ms", "2ms,1ms", "0s", "fast"] {
            let err = of(bad).expect_err(bad);
            assert_eq!(err.variable, "OTEL_SENDMMSG_DURATION_BUCKETS");
        }
        let too_many = (1..=MAX_BOUNDS as u64 + 1).map(|i| format!("{i}us")).collect::<Vec<_>>().join(",");
        assert!(of(&too_many).is_err());
    }

    #[test]
    fn series_are_bounded_and_peers_opt_in() {
        let s = parse(&None, &Some("64".into()), &None, &Some("true".into())).unwrap();
        assert_eq!((s.max_series, s.by_peer), (64, true));
        assert!(parse(&None, &Some("0".into()), &None, &None).is_err());
        assert!(parse(&None, &None, &None, &Some("yes please".into())).is_err());
        assert_eq!(parse(&None, &None, &None, &None).unwrap(), CallMetricsSettings::default());
    }
}
