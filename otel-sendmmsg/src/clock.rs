//! Maps the kernel's `CLOCK_MONOTONIC` timestamps (`bpf_ktime_get_ns`) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The offset between the wall clock and the monotonic clock at one moment. Re-read it now and
/// then ([`WallClock::now`]) so NTP steps of the wall clock reach the spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// Wall-clock ns since the epoch at monotonic 0.
    boot_wall_ns: i128,
}

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out-pointer; these clocks cannot fail on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl WallClock {
    /// Samples the two clocks, taking the monotonic reading on both sides of the wall one so
    /// the offset is off by at most half the (tiny) gap.
    pub fn now() -> Self {
        let before = read(libc::CLOCK_MONOTONIC);
        let wall = read(libc::CLOCK_REALTIME);
        let after = read(libc::CLOCK_MONOTONIC);
        Self::from_readings(wall, before + (after - before) / 2)
    }

    pub fn from_readings(wall_ns: i128, monotonic_ns: i128) -> Self {
        Self { boot_wall_ns: wall_ns - monotonic_ns }
    }

    /// The wall-clock time of a monotonic timestamp (clamped to the epoch).
    pub fn to_wall(&self, monotonic_ns: u64) -> SystemTime {
        let ns = (self.boot_wall_ns + monotonic_ns as i128).max(0);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_monotonic_to_wall_by_a_fixed_offset() {
        let clock = WallClock::from_readings(1_700_000_000_000_000_000, 5_000);
        assert_eq!(clock.to_wall(5_000), UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000));
        assert_eq!(clock.to_wall(6_500), UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_001_500));
    }

    #[test]
    fn a_kernel_timestamp_taken_now_maps_to_now() {
        let clock = WallClock::now();
        let mono = read(libc::CLOCK_MONOTONIC) as u64;
        let mapped = clock.to_wall(mono);
        let wall = SystemTime::now();
        let diff = wall.duration_since(mapped).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(50), "mapped {mapped:?}, wall {wall:?}");
    }
}
