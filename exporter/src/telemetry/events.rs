//! Internal events: everything worth telling an operator about edgewatch
//! itself is a type here with one [`InternalEvent`] impl that says which
//! counter it moves and what it logs. [`Telemetry::emit`] counts every
//! event and logs at most once per period per event type, saying how many
//! it suppressed in between (the pattern of vector's `internal_events`).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{CollectorLabel, ExportErrorLabels, ProbeLabel, Telemetry};

/// Something that happened to edgewatch itself: counted always, logged at a
/// bounded rate.
pub trait InternalEvent {
    /// The rate limit's key: one log per period per event type.
    const NAME: &'static str;
    /// How often this event type may log.
    const LOG_PERIOD: Duration = Duration::from_secs(10);
    /// Moves the event's counter.
    fn count(&self, t: &Telemetry);
    /// Logs the event; `suppressed` events of this type were not logged
    /// since the last one that was.
    fn log(&self, suppressed: u64);
}

/// When each event type last logged, and how many it has suppressed since.
#[derive(Debug, Default)]
pub struct RateLimit {
    state: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RateLimit {
    /// Returns how many were suppressed since the last log when `name` may
    /// log again at `now`.
    pub fn ready_at(&self, name: &'static str, period: Duration, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.get_mut(name) {
            Some((last, suppressed)) if now.duration_since(*last) < period => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                state.insert(name, (now, 0));
                Some(0)
            }
        }
    }

    pub fn ready(&self, name: &'static str, period: Duration) -> Option<u64> {
        self.ready_at(name, period, Instant::now())
    }
}

/// A ring-buffer record that could not be decoded.
pub struct DecodeFailed<'a> {
    /// The probe that owns the record's kind, or `unknown`.
    pub probe: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for DecodeFailed<'_> {
    const NAME: &'static str = "decode_failed";

    fn count(&self, t: &Telemetry) {
        t.decode_errors
            .get_or_create(&ProbeLabel { probe: self.probe })
            .inc();
    }

    fn log(&self, suppressed: u64) {
        tracing::warn!(
            probe = self.probe,
            error = %self.error,
            suppressed,
            "undecodable ring-buffer record (counted in edgewatch_decode_errors_total)"
        );
    }
}

/// Kernel state that could not be read at scrape time.
pub struct CollectorFailed<'a> {
    pub collector: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for CollectorFailed<'_> {
    const NAME: &'static str = "collector_failed";

    fn count(&self, t: &Telemetry) {
        t.scrape_errors
            .get_or_create(&CollectorLabel {
                collector: self.collector,
            })
            .inc();
    }

    fn log(&self, suppressed: u64) {
        tracing::warn!(
            collector = self.collector,
            error = %self.error,
            suppressed,
            "reading kernel state at scrape time failed (counted in edgewatch_scrape_errors_total)"
        );
    }
}

/// A push to an exporter's destination that failed for good (after its
/// retries).
pub struct ExportFailed<'a> {
    pub exporter: &'static str,
    /// metrics or traces.
    pub signal: &'static str,
    /// A bounded reason label (OTLP: connect, tls, timeout, unavailable,
    /// throttled, rejected, encode).
    pub reason: &'static str,
    pub error: &'a dyn std::fmt::Display,
    /// Where it was going, for the log (credentials already redacted).
    pub endpoint: &'a dyn std::fmt::Display,
}

impl InternalEvent for ExportFailed<'_> {
    const NAME: &'static str = "export_failed";
    const LOG_PERIOD: Duration = Duration::from_secs(60);

    fn count(&self, t: &Telemetry) {
        t.export_errors
            .get_or_create(&ExportErrorLabels {
                exporter: self.exporter,
                signal: self.signal,
                reason: self.reason,
            })
            .inc();
    }

    fn log(&self, suppressed: u64) {
        tracing::warn!(
            exporter = self.exporter,
            signal = self.signal,
            reason = self.reason,
            error = %self.error,
            endpoint = %self.endpoint,
            suppressed,
            "push failed (counted in edgewatch_export_errors_total; trying again next interval)"
        );
    }
}

/// A push attempt that failed in a way worth retrying, and will be.
pub struct ExportRetried<'a> {
    pub exporter: &'static str,
    pub signal: &'static str,
    pub reason: &'static str,
    pub error: &'a dyn std::fmt::Display,
    /// How long until the next attempt.
    pub delay: Duration,
}

impl InternalEvent for ExportRetried<'_> {
    const NAME: &'static str = "export_retried";
    const LOG_PERIOD: Duration = Duration::from_secs(60);

    fn count(&self, t: &Telemetry) {
        t.export_retries
            .get_or_create(&ExportErrorLabels {
                exporter: self.exporter,
                signal: self.signal,
                reason: self.reason,
            })
            .inc();
    }

    fn log(&self, suppressed: u64) {
        tracing::info!(
            exporter = self.exporter,
            signal = self.signal,
            reason = self.reason,
            error = %self.error,
            delay = ?self.delay,
            suppressed,
            "push attempt failed, retrying (counted in edgewatch_export_retries_total)"
        );
    }
}

/// A push the collector accepted only in part (OTLP partial success).
pub struct ExportPartial<'a> {
    pub signal: &'static str,
    /// Points or spans the collector rejected.
    pub rejected: i64,
    pub message: &'a str,
}

impl InternalEvent for ExportPartial<'_> {
    const NAME: &'static str = "export_partial";
    const LOG_PERIOD: Duration = Duration::from_secs(60);

    /// Not counted: the push succeeded; the collector's own metrics count
    /// what it refused.
    fn count(&self, _: &Telemetry) {}

    fn log(&self, suppressed: u64) {
        tracing::warn!(
            exporter = "otlp",
            signal = self.signal,
            rejected = self.rejected,
            message = self.message,
            suppressed,
            "the collector accepted a push only in part"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_period_per_event_type() {
        let l = RateLimit::default();
        let p = Duration::from_secs(10);
        let t0 = Instant::now();
        assert_eq!(l.ready_at("a", p, t0), Some(0));
        assert_eq!(l.ready_at("a", p, t0 + Duration::from_secs(1)), None);
        assert_eq!(l.ready_at("b", p, t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(l.ready_at("a", p, t0 + Duration::from_secs(2)), None);
        assert_eq!(l.ready_at("a", p, t0 + Duration::from_secs(11)), Some(2));
    }

    #[test]
    fn every_event_is_counted_even_when_not_logged() {
        let t = Telemetry::default();
        for _ in 0..3 {
            t.emit(DecodeFailed {
                probe: "connect",
                error: &"bad",
            });
            t.emit(CollectorFailed {
                collector: "xdp",
                error: &"gone",
            });
            t.emit(ExportFailed {
                exporter: "otlp",
                signal: "metrics",
                reason: "connect",
                error: &"refused",
                endpoint: &"http://127.0.0.1:1",
            });
        }
        let decode = t
            .decode_errors
            .get_or_create(&ProbeLabel { probe: "connect" });
        assert_eq!(decode.get(), 3);
        let scrape = t
            .scrape_errors
            .get_or_create(&CollectorLabel { collector: "xdp" });
        assert_eq!(scrape.get(), 3);
        let export = t.export_errors.get_or_create(&ExportErrorLabels {
            exporter: "otlp",
            signal: "metrics",
            reason: "connect",
        });
        assert_eq!(export.get(), 3);
    }
}
