//! Time: kernel timestamps (CLOCK_MONOTONIC nanoseconds, what
//! `bpf_ktime_get_ns()` returns) to Unix time, and nanoseconds to seconds,
//! the base unit of every duration edgewatch exports.

use std::time::{SystemTime, UNIX_EPOCH};

/// Maps CLOCK_MONOTONIC nanoseconds to Unix time, and says what time it is
/// on that clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix time minus monotonic time, in nanoseconds.
    offset_ns: i128,
    /// Monotonic time standing still (fixtures), or None for the real clock.
    frozen_ns: Option<u64>,
}

impl Clock {
    /// The offset as of now.
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
        Self {
            offset_ns: unix_nanos() as i128 - mono,
            frozen_ns: None,
        }
    }

    /// A fixed offset, for fixtures; monotonic time stands still at 0.
    pub const fn fixed(offset_ns: i128) -> Self {
        Self {
            offset_ns,
            frozen_ns: Some(0),
        }
    }

    /// CLOCK_MONOTONIC now, in nanoseconds: the clock kernel timestamps
    /// (`bpf_ktime_get_ns()`) are on.
    pub fn monotonic_ns(&self) -> u64 {
        if let Some(t) = self.frozen_ns {
            return t;
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
    }

    pub fn unix_seconds(&self, mono_ns: u64) -> f64 {
        (i128::from(mono_ns) + self.offset_ns) as f64 / 1e9
    }

    pub fn unix_nanos(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Nanoseconds to seconds.
pub fn ns_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_converts_monotonic_to_unix() {
        let c = Clock::fixed(1_000_000_000_000_000_000);
        assert_eq!(c.unix_seconds(500_000_000), 1_000_000_000.5);
        assert_eq!(c.unix_nanos(5), 1_000_000_000_000_000_005);
        assert_eq!(Clock::fixed(-10).unix_nanos(5), 0);
        assert_eq!(c.monotonic_ns(), 0);
        let (a, b) = (Clock::now().monotonic_ns(), Clock::now().monotonic_ns());
        assert!(a > 0 && b >= a);
    }
}
