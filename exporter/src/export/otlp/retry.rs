//! Retries: exponential backoff with jitter for the failures the OTLP spec
//! calls retryable, within a deadline (the push interval), honouring the
//! server's own delay (HTTP `Retry-After`, gRPC `RetryInfo`).

use std::{
    future::Future,
    time::{Duration, Instant, SystemTime},
};

/// Why one attempt failed, as the exporter counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The `reason` label: connect, tls, timeout, unavailable, throttled,
    /// rejected, encode.
    pub reason: &'static str,
    /// Whether trying again may help.
    pub retryable: bool,
    /// How long the server asked us to wait.
    pub retry_after: Option<Duration>,
    /// For the log (no secrets: no headers, redacted URLs).
    pub message: String,
}

impl Failure {
    pub fn new(reason: &'static str, retryable: bool, message: impl Into<String>) -> Self {
        Self {
            reason,
            retryable,
            retry_after: None,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Delays of 100 ms, 200 ms, 400 ms ... up to 5 s, each drawn uniformly
/// from its upper half ("equal jitter": never less than half, so retries
/// back off, never in lockstep with other agents).
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub const INITIAL: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new(seed: u64) -> Self {
        Self {
            initial: Self::INITIAL,
            max: Self::MAX,
            attempt: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The next delay; at least the server's `hint`.
    pub fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        let base = self
            .initial
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        let half = base / 2;
        let jitter = Duration::from_nanos(self.rng.u64(0..=half.as_nanos() as u64));
        (half + jitter).max(hint.unwrap_or_default())
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// How a push with retries ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Sent,
    /// The last failure; and, when the server asked for a wait that runs
    /// past the deadline, when to try again at the earliest.
    Failed {
        failure: Failure,
        hold_until: Option<Instant>,
    },
}

/// Runs `attempt` until it succeeds, fails for good, or the next try would
/// start past `deadline`. `retried` is told of each retry and its delay
/// before the wait.
pub async fn with_retries<F, Fut>(
    deadline: Instant,
    backoff: &mut Backoff,
    mut attempt: F,
    mut retried: impl FnMut(&Failure, Duration),
) -> Ended
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    loop {
        let failure = match attempt().await {
            Ok(()) => return Ended::Sent,
            Err(f) => f,
        };
        if !failure.retryable {
            return Ended::Failed {
                failure,
                hold_until: None,
            };
        }
        let delay = backoff.next_delay(failure.retry_after);
        let now = Instant::now();
        if now + delay >= deadline {
            let hold_until = failure.retry_after.map(|d| now + d);
            return Ended::Failed {
                failure,
                hold_until,
            };
        }
        retried(&failure, delay);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(7);
        let mut base = Backoff::INITIAL;
        for _ in 0..12 {
            let d = b.next_delay(None);
            assert!(d >= base / 2 && d <= base, "{d:?} for base {base:?}");
            base = (base * 2).min(Backoff::MAX);
        }
        // The server's delay wins when longer.
        assert_eq!(
            Backoff::new(1).next_delay(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        // 2015-10-21 07:28:00 GMT is 1445412480; ten seconds later:
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn retries_retryable_failures_until_success() {
        let calls = Cell::new(0);
        let mut retries = Vec::new();
        let ended = block_on(with_retries(
            Instant::now() + Duration::from_secs(60),
            &mut Backoff::new(3),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 3 {
                        Err(Failure::new("unavailable", true, "503"))
                    } else {
                        Ok(())
                    }
                }
            },
            |f, _| retries.push(f.reason),
        ));
        assert_eq!(ended, Ended::Sent);
        assert_eq!((calls.get(), retries), (3, vec!["unavailable"; 2]));
    }

    #[test]
    fn no_retry_for_rejections_nor_past_the_deadline() {
        let calls = Cell::new(0);
        let ended = block_on(with_retries(
            Instant::now() + Duration::from_secs(60),
            &mut Backoff::new(3),
            || {
                calls.set(calls.get() + 1);
                async { Err(Failure::new("rejected", false, "400")) }
            },
            |_, _| panic!("not retryable"),
        ));
        assert!(matches!(
            ended,
            Ended::Failed {
                hold_until: None,
                ..
            }
        ));
        assert_eq!(calls.get(), 1);

        // The server asks for 30 s, the deadline is in 1 s: give up now and
        // hold off until then.
        let start = Instant::now();
        let ended = block_on(with_retries(
            start + Duration::from_secs(1),
            &mut Backoff::new(3),
            || async {
                let mut f = Failure::new("throttled", true, "429");
                f.retry_after = Some(Duration::from_secs(30));
                Err(f)
            },
            |_, _| panic!("the wait runs past the deadline"),
        ));
        let Ended::Failed {
            failure,
            hold_until: Some(until),
        } = ended
        else {
            panic!("{ended:?}")
        };
        assert_eq!(failure.reason, "throttled");
        assert!(until >= start + Duration::from_secs(30));
    }
}
