//! edgewatch's own metrics, in the same namespace: build info, which probes
//! are attached and how, ring-buffer throughput, decode, scrape and export
//! failures, folded series and dropped spans. Failures are reported through
//! one pattern, [`events::InternalEvent`]: each counts and logs at a bounded
//! rate.

pub mod events;

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::vocab::{build_info::BuildInfo, labels::MetricLabel};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabel {
    pub probe: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeModeLabels {
    pub probe: &'static str,
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabel {
    pub collector: &'static str,
}

/// Labels of `edgewatch_export_errors_total` and
/// `edgewatch_export_retries_total`. `signal` (metrics, traces) was added
/// with OTLP traces' own pushes; queries that sum by exporter or reason
/// are unaffected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportErrorLabels {
    pub exporter: &'static str,
    pub signal: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Handles to the self-metrics, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    pub probe_attached: Family<ProbeModeLabels, Gauge>,
    pub events: Family<ProbeLabel, Counter>,
    pub decode_errors: Family<ProbeLabel, Counter>,
    pub series_dropped: Family<MetricLabel, Counter>,
    pub scrape_errors: Family<CollectorLabel, Counter>,
    pub export_errors: Family<ExportErrorLabels, Counter>,
    pub export_retries: Family<ExportErrorLabels, Counter>,
    /// By reason: sampled, rate_limited, queue_full.
    pub spans_dropped: Family<ReasonLabel, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
    /// cgroup id lookups by result (registered by `crate::workload` when
    /// workload resolution is on).
    pub workload_lookups: Family<ResultLabel, Counter>,
    /// Shared by every internal event: how often each may log.
    pub(crate) log_limit: Arc<events::RateLimit>,
}

impl Telemetry {
    /// Registers the core self-metrics (everything but the export errors)
    /// with this binary's build info.
    pub fn register(registry: &mut Registry) -> Self {
        Self::register_with_build(registry, &BuildInfo::CURRENT)
    }

    /// Like [`Telemetry::register`] with the build info given (the golden
    /// test passes a fixed one, so its files don't change with every commit).
    pub fn register_with_build(registry: &mut Registry, build: &BuildInfo) -> Self {
        let t = Self::default();
        build.register(registry);
        registry.register(
            "edgewatch_probe_attached",
            "1 for each attached probe with the attach mode used; 0 with mode none for a probe that failed to attach",
            t.probe_attached.clone(),
        );
        registry.register(
            "edgewatch_ringbuf_events",
            "Records read from the ring buffer and decoded, by probe",
            t.events.clone(),
        );
        registry.register(
            "edgewatch_decode_errors",
            "Ring-buffer records that could not be decoded (truncated, wrong size, unknown kind), by probe",
            t.decode_errors.clone(),
        );
        registry.register(
            "edgewatch_series_dropped",
            "Events whose opt-in labels were folded into the overflow series because the metric reached its series cap",
            t.series_dropped.clone(),
        );
        registry.register(
            "edgewatch_spans_dropped",
            "Spans not exported, by reason: sampled (out by otlp.traces_sample_ratio), rate_limited (past otlp.traces_max_per_second), queue_full (otlp.max_queued_spans waiting)",
            t.spans_dropped.clone(),
        );
        for reason in ["sampled", "rate_limited", "queue_full"] {
            let _ = t.spans_dropped.get_or_create(&ReasonLabel { reason });
        }
        registry.register(
            "edgewatch_scrape_errors",
            "Errors reading kernel state at scrape time, by collector",
            t.scrape_errors.clone(),
        );
        for result in ["ok", "error"] {
            t.config_reloads
                .get_or_create_owned(&ResultLabel { result });
        }
        registry.register(
            "edgewatch_config_reloads",
            "Configuration reloads (SIGHUP), by result; a rejected configuration leaves the running one in place",
            t.config_reloads.clone(),
        );
        t
    }

    /// Counts one configuration reload.
    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Registers `edgewatch_export_errors_total` and
    /// `edgewatch_export_retries_total`.
    pub fn register_export_errors(&self, registry: &mut Registry) {
        registry.register(
            "edgewatch_export_errors",
            "Pushes that failed for good (after their retries), by exporter, signal and the last attempt's reason",
            self.export_errors.clone(),
        );
        registry.register(
            "edgewatch_export_retries",
            "Push attempts retried after a retryable failure, by exporter, signal and reason",
            self.export_retries.clone(),
        );
    }

    /// The counters a span sink moves when it drops a span.
    pub fn span_drop_counters(&self) -> crate::vocab::spans::DropCounters {
        let c = |reason| {
            self.spans_dropped
                .get_or_create(&ReasonLabel { reason })
                .clone()
        };
        crate::vocab::spans::DropCounters {
            sampled: c("sampled"),
            rate_limited: c("rate_limited"),
            queue_full: c("queue_full"),
        }
    }

    /// Counts and logs (at a bounded rate) one internal event.
    pub fn emit<E: events::InternalEvent>(&self, event: E) {
        event.count(self);
        if let Some(suppressed) = self.log_limit.ready(E::NAME, E::LOG_PERIOD) {
            event.log(suppressed);
        }
    }
}
