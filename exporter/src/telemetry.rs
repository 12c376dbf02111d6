//! edgewatch's own metrics, in the same namespace: build info, which probes
//! are attached and how, ring-buffer throughput, drops and decode errors.

use std::sync::Mutex;

use aya::maps::{MapData, PerCpuArray};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge,
        info::Info,
    },
    registry::Registry,
};

use crate::aggregate::labels::MetricLabel;
use crate::aggregate::labels::label_set;

label_set! {
    pub struct ProbeLabel {
        pub probe: &'static str,
    }
}

label_set! {
    pub struct ProbeModeLabels {
        pub probe: &'static str,
        pub mode: &'static str,
    }
}

label_set! {
    pub struct CollectorLabel {
        pub collector: &'static str,
    }
}

/// Handles to the self-metrics, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    pub probe_attached: Family<ProbeModeLabels, Gauge>,
    pub events: Family<ProbeLabel, Counter>,
    pub decode_errors: Family<ProbeLabel, Counter>,
    pub series_dropped: Family<MetricLabel, Counter>,
    pub scrape_errors: Family<CollectorLabel, Counter>,
    pub spans_dropped: Counter,
    /// Off unless OTLP traces are on (see main.rs).
    pub spans: crate::aggregate::spans::SpanSink,
}

impl Telemetry {
    pub fn register(registry: &mut Registry) -> Self {
        let t = Self::default();
        registry.register(
            "edgewatch_build",
            "edgewatch build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
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
            "Spans dropped because the OTLP export queue was full",
            t.spans_dropped.clone(),
        );
        registry.register(
            "edgewatch_scrape_errors",
            "Errors reading kernel state at scrape time, by collector",
            t.scrape_errors.clone(),
        );
        t
    }
}

/// Where lost-record counts come from: the kernel's per-CPU `ew_lost`
/// array in production, fixed numbers in golden tests.
pub trait LostSource: Send + Sync + 'static {
    /// Records probe `id` could not reserve, summed over CPUs.
    fn lost(&self, id: u32) -> Result<u64, aya::maps::MapError>;
}

impl LostSource for Mutex<PerCpuArray<MapData, u64>> {
    fn lost(&self, id: u32) -> Result<u64, aya::maps::MapError> {
        let map = self.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(&id, 0)?.iter().sum())
    }
}

/// `edgewatch_ringbuf_lost_events_total`, read from the kernel's per-CPU
/// `ew_lost` array and summed at scrape time: a record the kernel could not
/// reserve never reaches user space, so only the kernel can count it.
pub struct LostCollector {
    source: Box<dyn LostSource>,
    probes: Vec<(u32, &'static str)>,
    errors: Family<CollectorLabel, Counter>,
}

impl std::fmt::Debug for LostCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LostCollector")
            .field("probes", &self.probes)
            .finish_non_exhaustive()
    }
}

impl LostCollector {
    pub fn new(
        source: Box<dyn LostSource>,
        probes: Vec<(u32, &'static str)>,
        errors: Family<CollectorLabel, Counter>,
    ) -> Self {
        Self {
            source,
            probes,
            errors,
        }
    }

    fn read(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::with_capacity(self.probes.len());
        for &(id, probe) in &self.probes {
            match self.source.lost(id) {
                Ok(n) => out.push((probe, n)),
                Err(e) => {
                    self.errors
                        .get_or_create(&CollectorLabel {
                            collector: "ringbuf_lost",
                        })
                        .inc();
                    tracing::debug!(probe, error = %e, "reading ew_lost failed");
                }
            }
        }
        out
    }
}

impl Collector for LostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "edgewatch_ringbuf_lost_events",
            "Events the kernel could not record (ring buffer full, or its in-flight call table full), by probe.",
            None,
            MetricType::Counter,
        )?;
        for (probe, n) in self.read() {
            ConstCounter::new(n).encode(family.encode_family(&ProbeLabel { probe })?)?;
        }
        Ok(())
    }
}
