//! The call metrics, from the kernel's series to OTLP: every traced call's duration
//! (`sendmmsg.duration`), messages (`sendmmsg.messages`) and bytes (`sendmmsg.bytes`), per
//! process under the process's own resource, with the calls' spans as exemplars.
//!
//! The kernel counts (`otel_sendmmsg_common::call_metrics`); each `OTEL_METRIC_EXPORT_INTERVAL`
//! the run loop reads the series ([`crate::probes::Probes::call_series`]) and hands them to
//! [`CallMetrics::collect`], which turns them into one request: cumulative points are the
//! kernel's totals, delta points the change since the last collection. A series whose process
//! is gone is exported once more and then removed from the kernel's map. A series whose
//! process is not known yet waits for it (as its spans do), its counts kept in the kernel.

pub mod encode;
pub mod export;
pub mod histogram;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use opentelemetry::trace::{SpanId, TraceId};
use otel_sendmmsg_common::call_metrics::{bucket_of, SeriesKey, SeriesValue, BUCKETS, MAX_BOUNDS};

use crate::config::{CallMetricsSettings, Temporality};

/// The SDK's default exemplar reservoir for an exponential histogram holds 20.
const EXEMPLARS_PER_SERIES: usize = 20;
/// Collections a series may go unchanged before it is removed, its process alive or not (its
/// next call starts it again, from zero, with a new start time).
const IDLE_COLLECTIONS: u32 = 10;

/// A span of the series: where a backend jumps from the histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exemplar {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub duration_ns: u64,
    pub time: SystemTime,
}

/// What one series says in one collection.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub key: SeriesKey,
    /// Cumulative: since the series began; delta: since the last collection.
    pub start: SystemTime,
    pub value: SeriesValue,
    pub exemplars: Vec<Exemplar>,
}

struct Series {
    /// When its counting began (cumulative points start here).
    start: SystemTime,
    /// The kernel's totals when it was last collected, and when that was (its next delta
    /// point starts there).
    seen: SeriesValue,
    seen_at: SystemTime,
    unchanged: u32,
}

pub struct CallMetrics {
    settings: CallMetricsSettings,
    temporality: Temporality,
    /// The kernel's table of bounds, to place an exemplar in its bucket.
    bounds: [u64; MAX_BOUNDS],
    bounds_used: u32,
    last_collection: SystemTime,
    series: HashMap<SeriesKey, Series>,
    /// Per series, the latest span of each duration bucket, since the last collection.
    exemplars: HashMap<SeriesKey, Vec<(usize, Exemplar)>>,
    /// How long a process not known yet may hold its series back, and since when each one
    /// (pid, start) has.
    identity_wait: Duration,
    unknown_since: HashMap<(u32, u64), SystemTime>,
}

impl CallMetrics {
    /// Counting began at `started` (when the probes were attached). A process not known yet
    /// holds its series back for `identity_wait` at most.
    pub fn new(
        settings: CallMetricsSettings,
        temporality: Temporality,
        started: SystemTime,
        identity_wait: Duration,
    ) -> CallMetrics {
        let table = histogram::bounds_ns(&settings.histogram);
        let mut bounds = [u64::MAX; MAX_BOUNDS];
        bounds[..table.len()].copy_from_slice(&table);
        CallMetrics {
            bounds_used: table.len() as u32,
            bounds,
            settings,
            temporality,
            last_collection: started,
            series: HashMap::new(),
            exemplars: HashMap::new(),
            identity_wait,
            unknown_since: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &CallMetricsSettings {
        &self.settings
    }

    pub fn temporality(&self) -> Temporality {
        self.temporality
    }

    /// The table the kernel counts durations against.
    pub fn bounds(&self) -> &[u64; MAX_BOUNDS] {
        &self.bounds
    }

    pub fn bounds_used(&self) -> u32 {
        self.bounds_used
    }

    /// A span exported for a call of series `key`: kept, the latest of its bucket, until the
    /// next collection.
    pub fn exemplar(&mut self, key: SeriesKey, exemplar: Exemplar) {
        // Bounded like the kernel's map: spans of series it could not count add nothing.
        if !self.exemplars.contains_key(&key) && self.exemplars.len() >= self.settings.max_series as usize {
            return;
        }
        let bucket = bucket_of(exemplar.duration_ns, &self.bounds, self.bounds_used);
        let kept = self.exemplars.entry(key).or_default();
        if let Some(slot) = kept.iter_mut().find(|(b, _)| *b == bucket) {
            slot.1 = exemplar;
            return;
        }
        if kept.len() >= EXEMPLARS_PER_SERIES {
            // Full: the newest replaces the oldest.
            kept.remove(0);
        }
        kept.push((bucket, exemplar));
    }

    /// The points of this collection, from the kernel's totals `now_in_kernel` at `now`, and
    /// the series to remove from the kernel: those of processes `gone` says are gone, and
    /// those idle for long, each after this last export. The series of processes `unknown`
    /// says are not known yet (their resource would name the pid alone) make no point until
    /// they are, or until they waited `identity_wait`: their counts are in the next one.
    pub fn collect(
        &mut self,
        now_in_kernel: Vec<(SeriesKey, SeriesValue)>,
        now: SystemTime,
        gone: impl Fn(&SeriesKey) -> bool,
        unknown: impl Fn(&SeriesKey) -> bool,
    ) -> (Vec<Point>, Vec<SeriesKey>) {
        let mut points = Vec::with_capacity(now_in_kernel.len());
        // Per process: its series, and whether each may go. A process's series go together:
        // their sent messages are one point when they differ only by the call's error.type
        // (`encode`), and a cumulative point that lost one series' count would go down.
        let mut processes: BTreeMap<(u32, u64), Vec<(SeriesKey, bool)>> = BTreeMap::new();
        let since = self.last_collection;
        for (key, total) in now_in_kernel {
            let series = self.series.entry(key).or_insert_with(|| Series {
                // Its first call came after the last collection.
                start: since,
                seen: SeriesValue::default(),
                seen_at: since,
                unchanged: 0,
            });
            if unknown(&key) {
                let waiting_since = *self.unknown_since.entry((key.pid, key.process_start_ns)).or_insert(now);
                if now.duration_since(waiting_since).unwrap_or_default() < self.identity_wait {
                    continue;
                }
            }
            let changed = total.calls != series.seen.calls;
            series.unchanged = if changed { 0 } else { series.unchanged + 1 };
            let exemplars: Vec<Exemplar> =
                self.exemplars.remove(&key).unwrap_or_default().into_iter().map(|(_, e)| e).collect();
            let point = match self.temporality {
                Temporality::Cumulative => Some(Point { key, start: series.start, value: total, exemplars }),
                // Nothing new, nothing to say.
                Temporality::Delta if !changed => None,
                Temporality::Delta => Some(Point {
                    key,
                    start: series.seen_at,
                    value: difference(&total, &series.seen),
                    exemplars,
                }),
            };
            points.extend(point);
            series.seen = total;
            series.seen_at = now;
            let done = series.unchanged > 0 && (gone(&key) || series.unchanged >= IDLE_COLLECTIONS);
            processes.entry((key.pid, key.process_start_ns)).or_default().push((key, done));
        }
        self.unknown_since.retain(|process, _| !processes.contains_key(process));
        let retire: Vec<SeriesKey> = processes
            .into_values()
            .filter(|series| series.iter().all(|(_, done)| *done))
            .flatten()
            .map(|(key, _)| key)
            .collect();
        for key in &retire {
            self.series.remove(key);
        }
        // Exemplars of series the kernel did not show: kept for the next collection only.
        self.exemplars.retain(|key, _| self.series.contains_key(key));
        self.last_collection = now;
        (points, retire)
    }
}

/// What `now` counted beyond `before` (the same series, later). `min` and `max` of an
/// interval are not known from totals: the interval's are the totals' when they moved, else
/// absent (`u64::MAX` and 0).
fn difference(now: &SeriesValue, before: &SeriesValue) -> SeriesValue {
    let mut buckets = [0u64; BUCKETS];
    for (i, n) in buckets.iter_mut().enumerate() {
        *n = now.buckets[i].saturating_sub(before.buckets[i]);
    }
    SeriesValue {
        calls: now.calls.saturating_sub(before.calls),
        sum_ns: now.sum_ns.saturating_sub(before.sum_ns),
        min_ns: if now.min_ns < before.min_ns { now.min_ns } else { u64::MAX },
        max_ns: if now.max_ns > before.max_ns { now.max_ns } else { 0 },
        sent: now.sent.saturating_sub(before.sent),
        failed: now.failed.saturating_sub(before.failed),
        unsent: now.unsent.saturating_sub(before.unsent),
        bytes: now.bytes.saturating_sub(before.bytes),
        buckets,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Histogram;

    fn value(calls: u64, duration_ns: u64, bounds: &[u64; MAX_BOUNDS], used: u32) -> SeriesValue {
        let mut v = SeriesValue::default();
        for _ in 0..calls {
            v.calls += 1;
            v.sum_ns += duration_ns;
            v.min_ns = v.min_ns.min(duration_ns);
            v.max_ns = v.max_ns.max(duration_ns);
            v.sent += 2;
            v.buckets[bucket_of(duration_ns, bounds, used)] += 1;
        }
        v
    }

    fn metrics(temporality: Temporality) -> CallMetrics {
        CallMetrics::new(
            CallMetricsSettings::default(),
            temporality,
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(1),
        )
    }

    #[test]
    fn cumulative_points_are_the_totals_from_the_series_start_and_delta_ones_the_change() {
        let key = SeriesKey { pid: 7, ..SeriesKey::default() };
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        for temporality in [Temporality::Cumulative, Temporality::Delta] {
            let mut m = metrics(temporality);
            let (b, u) = (*m.bounds(), m.bounds_used());
            let (first, _) = m.collect(vec![(key, value(3, 5_000, &b, u))], t(10), |_| false, |_| false);
            let mut later = value(3, 5_000, &b, u);
            later.add(&value(2, 9_000_000, &b, u));
            let (second, _) = m.collect(vec![(key, later)], t(20), |_| false, |_| false);
            assert_eq!((first[0].start, first[0].value.calls), (t(0), 3));
            match temporality {
                Temporality::Cumulative => {
                    assert_eq!((second[0].start, second[0].value.calls, second[0].value.sent), (t(0), 5, 10));
                    assert_eq!((second[0].value.min_ns, second[0].value.max_ns), (5_000, 9_000_000));
                }
                Temporality::Delta => {
                    assert_eq!((second[0].start, second[0].value.calls, second[0].value.sent), (t(10), 2, 4));
                    assert_eq!(second[0].value.sum_ns, 18_000_000);
                    assert_eq!(second[0].value.buckets.iter().sum::<u64>(), 2);
                    assert_eq!(second[0].value.max_ns, 9_000_000);
                }
            }
            // Unchanged: a delta says nothing; a cumulative point repeats the totals.
            let (third, _) = m.collect(vec![(key, later)], t(30), |_| false, |_| false);
            assert_eq!(third.len(), usize::from(temporality == Temporality::Cumulative));
        }
    }

    #[test]
    fn a_process_not_known_yet_holds_its_series_back_until_it_is_or_its_wait_ends() {
        let key = SeriesKey { pid: 3, process_start_ns: 1, ..SeriesKey::default() };
        let other = SeriesKey { pid: 4, ..key };
        let t = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        for temporality in [Temporality::Cumulative, Temporality::Delta] {
            let mut m = metrics(temporality);
            let (b, u) = (*m.bounds(), m.bounds_used());
            let first = value(2, 5_000, &b, u);
            let (points, retire) = m.collect(vec![(key, first)], t(300), |_| true, |_| true);
            assert!(points.is_empty() && retire.is_empty(), "{points:?} {retire:?}");
            // Known at the next collection: every call counted meanwhile, from its series' start.
            let mut later = first;
            later.add(&value(1, 7_000, &b, u));
            let (points, _) = m.collect(vec![(key, later)], t(600), |_| false, |_| false);
            assert_eq!(
                (points.len(), points[0].start, points[0].value.calls),
                (1, t(0), 3),
                "{temporality:?}"
            );
            // Never known: it waits one second at most, then goes all the same.
            let unknown = |k: &SeriesKey| k.pid == other.pid;
            for (at, made) in [(900, 0), (1800, 0), (1900, 1)] {
                let (points, _) = m.collect(vec![(key, later), (other, first)], t(at), |_| false, unknown);
                let of_other: Vec<&Point> = points.iter().filter(|p| p.key == other).collect();
                assert_eq!(of_other.len(), made, "at {at} ms: {points:?}");
                if let Some(point) = of_other.first() {
                    assert_eq!((point.start, point.value.calls), (t(600), 2), "{temporality:?}");
                }
            }
        }
    }

    #[test]
    fn a_series_of_a_process_gone_is_exported_once_more_then_removed() {
        let key = SeriesKey { pid: 9, ..SeriesKey::default() };
        let mut m = metrics(Temporality::Cumulative);
        let (b, u) = (*m.bounds(), m.bounds_used());
        let v = value(1, 1_000, &b, u);
        // Gone, but it moved since the last collection: its last counts go out first.
        let (points, retire) = m.collect(vec![(key, v)], SystemTime::now(), |_| true, |_| false);
        assert_eq!((points.len(), retire.len()), (1, 0));
        let (points, retire) = m.collect(vec![(key, v)], SystemTime::now(), |_| true, |_| false);
        assert_eq!((points.len(), retire), (1, vec![key]));
    }

    #[test]
    fn a_process_series_go_together_when_the_last_may_go() {
        let good = SeriesKey { pid: 4, process_start_ns: 1, ..SeriesKey::default() };
        let failed = SeriesKey { error: -90, ..good };
        let other = SeriesKey { pid: 5, ..good };
        let mut m = metrics(Temporality::Cumulative);
        let (b, u) = (*m.bounds(), m.bounds_used());
        let v = value(1, 1_000, &b, u);
        let mut more = v;
        more.add(&v);
        // The good calls' series is seen first; the failed call's comes a collection later.
        m.collect(vec![(good, v), (other, v)], SystemTime::now(), |_| true, |_| false);
        let (_, retire) =
            m.collect(vec![(good, v), (failed, v), (other, v)], SystemTime::now(), |_| true, |_| false);
        // Another process's series goes; this one's unchanged series waits for its sibling.
        assert_eq!(retire, vec![other]);
        let (points, retire) =
            m.collect(vec![(good, v), (failed, v)], SystemTime::now(), |_| true, |_| false);
        assert_eq!(points.len(), 2);
        assert_eq!(retire, vec![good, failed]);
        // A sibling that still moves keeps them all.
        let mut m = metrics(Temporality::Cumulative);
        m.collect(vec![(good, v), (failed, v)], SystemTime::now(), |_| true, |_| false);
        let (_, retire) = m.collect(vec![(good, v), (failed, more)], SystemTime::now(), |_| true, |_| false);
        assert!(retire.is_empty(), "{retire:?}");
    }

    #[test]
    fn exemplars_keep_the_latest_span_of_each_bucket_until_collected() {
        let key = SeriesKey { pid: 1, ..SeriesKey::default() };
        let mut m = CallMetrics::new(
            CallMetricsSettings {
                histogram: Histogram::Explicit(vec![Duration::from_micros(10)]),
                ..CallMetricsSettings::default()
            },
            Temporality::Cumulative,
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(1),
        );
        let span = |id: u64, duration_ns| Exemplar {
            trace_id: TraceId::from(1u128),
            span_id: SpanId::from(id),
            duration_ns,
            time: SystemTime::UNIX_EPOCH,
        };
        m.exemplar(key, span(1, 5_000));
        m.exemplar(key, span(2, 6_000));
        m.exemplar(key, span(3, 50_000));
        let (b, u) = (*m.bounds(), m.bounds_used());
        let (points, _) =
            m.collect(vec![(key, value(3, 5_000, &b, u))], SystemTime::now(), |_| false, |_| false);
        let ids: Vec<SpanId> = points[0].exemplars.iter().map(|e| e.span_id).collect();
        assert_eq!(ids, vec![SpanId::from(2u64), SpanId::from(3u64)]);
        let (points, _) =
            m.collect(vec![(key, value(3, 5_000, &b, u))], SystemTime::now(), |_| false, |_| false);
        assert!(points[0].exemplars.is_empty());
    }
}
