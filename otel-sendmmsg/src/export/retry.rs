//! When a failed OTLP export is tried again: the policy of the SDK's OTLP exporter (3 retries,
//! exponential backoff from 100 ms to 1.6 s with up to 100 ms of jitter, a throttling delay the
//! collector asks for honoured up to 30 s, everything within one exporter timeout), and its
//! classification of gRPC codes and HTTP statuses, which follows the OTLP specification. The
//! sidecar sends its own pre-encoded requests ([`super::otlp`]), so it keeps the retries the
//! SDK's exporter gave it here.

use std::{
    future::Future,
    time::{Duration, Instant, SystemTime},
};

/// How many times and how soon to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub max_jitter_ms: u64,
}

/// The SDK's OTLP exporter's (`RetryPolicy::recommended`).
pub const SDK_POLICY: Policy = Policy {
    max_retries: 3,
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_millis(1600),
    max_jitter_ms: 100,
};
/// The longest throttling delay honoured.
const MAX_THROTTLE: Duration = Duration::from_secs(30);
/// The longest delay read from a collector's answer, before the cap above.
const MAX_ASKED: Duration = Duration::from_secs(600);

/// What a failed attempt allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Final,
    Retry,
    /// Retry after the delay the collector asked for (`Retry-After`, gRPC `RetryInfo`).
    Throttled(Duration),
}

/// A gRPC status code's verdict, with the delay of its `RetryInfo` if it carried one.
pub fn grpc(code: tonic::Code, retry_delay: Option<Duration>) -> Verdict {
    use tonic::Code;
    match code {
        // Retryable only when the collector says when.
        Code::ResourceExhausted => {
            retry_delay.map_or(Verdict::Final, |d| Verdict::Throttled(d.min(MAX_ASKED)))
        }
        Code::Unavailable => match retry_delay.filter(|d| !d.is_zero()) {
            Some(delay) => Verdict::Throttled(delay.min(MAX_ASKED)),
            None => Verdict::Retry,
        },
        Code::Cancelled | Code::DeadlineExceeded | Code::Aborted | Code::OutOfRange | Code::DataLoss => {
            Verdict::Retry
        }
        _ => Verdict::Final,
    }
}

/// An HTTP status's verdict (0: no answer at all, a network error), with its `Retry-After`.
pub fn http(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        429 | 503 => retry_after.and_then(parse_retry_after).map_or(Verdict::Retry, Verdict::Throttled),
        0 | 502 | 504 => Verdict::Retry,
        _ => Verdict::Final,
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            httpdate::parse_http_date(value).ok()?.duration_since(SystemTime::now()).unwrap_or_default()
        }
    };
    Some(delay.min(MAX_ASKED))
}

/// Up to `max_ms`, from the clock's nanoseconds (spreads the retries of exporters that failed
/// together; no randomness is needed beyond that).
fn jitter(max_ms: u64) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    Duration::from_millis(u64::from(nanos) % (max_ms + 1))
}

/// Runs `attempt` until it succeeds, its error is final, the retries are used up, or the next
/// try could not start within `deadline` of the first; returns the last error then.
pub async fn with_backoff<T, E, F, Fut>(
    policy: Policy,
    deadline: Duration,
    verdict: impl Fn(&E) -> Verdict,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut delay = policy.initial_delay;
    let mut cap = policy.max_delay;
    let mut retries = 0;
    loop {
        let error = match attempt().await {
            Ok(done) => return Ok(done),
            Err(error) => error,
        };
        if retries >= policy.max_retries || start.elapsed() >= deadline {
            return Err(error);
        }
        match verdict(&error) {
            Verdict::Final => return Err(error),
            Verdict::Retry => {}
            Verdict::Throttled(asked) => {
                let asked = asked.min(MAX_THROTTLE);
                // A collector asking for longer than the usual cap may have it, within the
                // throttle cap; a later answer may lengthen the delay, never shorten it.
                if asked > cap {
                    cap = MAX_THROTTLE;
                }
                delay = delay.max(asked);
            }
        }
        let sleep = (delay + jitter(policy.max_jitter_ms)).min(cap);
        if sleep >= deadline.saturating_sub(start.elapsed()) {
            return Err(error);
        }
        retries += 1;
        tokio::time::sleep(sleep).await;
        delay = delay.saturating_mul(2).min(cap);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

    use super::*;

    /// The SDK's policy scaled down to milliseconds.
    const FAST: Policy = Policy {
        max_retries: 3,
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        max_jitter_ms: 1,
    };

    #[test]
    fn codes_and_statuses_are_classified_as_the_specification_says() {
        assert_eq!(grpc(tonic::Code::Unavailable, None), Verdict::Retry);
        assert_eq!(grpc(tonic::Code::ResourceExhausted, None), Verdict::Final);
        assert_eq!(
            grpc(tonic::Code::ResourceExhausted, Some(Duration::from_secs(2))),
            Verdict::Throttled(Duration::from_secs(2))
        );
        assert_eq!(grpc(tonic::Code::InvalidArgument, None), Verdict::Final);
        assert_eq!(grpc(tonic::Code::DeadlineExceeded, None), Verdict::Retry);
        assert_eq!(http(0, None), Verdict::Retry);
        assert_eq!(http(503, Some("7")), Verdict::Throttled(Duration::from_secs(7)));
        assert_eq!(http(429, Some("nonsense")), Verdict::Retry);
        assert_eq!(http(429, Some("99999")), Verdict::Throttled(MAX_ASKED));
        assert_eq!(http(400, None), Verdict::Final);
        assert_eq!(http(429, Some("Wed, 21 Oct 2015 07:28:00 GMT")), Verdict::Throttled(Duration::ZERO));
    }

    #[tokio::test]
    async fn retries_three_times_then_gives_the_last_error() {
        let tries = AtomicU32::new(0);
        let result: Result<(), u32> = with_backoff(
            FAST,
            Duration::from_secs(10),
            |_| Verdict::Retry,
            || async { Err(tries.fetch_add(1, Relaxed)) },
        )
        .await;
        assert_eq!(result, Err(3));
    }

    #[tokio::test]
    async fn a_final_error_or_the_deadline_ends_it_at_once() {
        let tries = AtomicU32::new(0);
        let result: Result<(), ()> = with_backoff(
            FAST,
            Duration::from_secs(10),
            |_| Verdict::Final,
            || async {
                tries.fetch_add(1, Relaxed);
                Err(())
            },
        )
        .await;
        assert_eq!((result, tries.load(Relaxed)), (Err(()), 1));
        // Asked to wait longer than the time left: no point sleeping.
        let result: Result<(), ()> = with_backoff(
            FAST,
            Duration::from_millis(50),
            |_| Verdict::Throttled(Duration::from_secs(1)),
            || async {
                tries.fetch_add(1, Relaxed);
                Err(())
            },
        )
        .await;
        assert_eq!((result, tries.load(Relaxed)), (Err(()), 2));
    }

    #[tokio::test]
    async fn success_after_a_retry_is_success() {
        let tries = AtomicU32::new(0);
        let result = with_backoff(
            FAST,
            Duration::from_secs(10),
            |_| Verdict::Retry,
            || async {
                if tries.fetch_add(1, Relaxed) == 0 {
                    Err(())
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(result, Ok(7));
    }
}
