//! `edgewatch_ringbuf_lost_events_total`, read from the kernel's per-CPU
//! `ew_lost` array and summed at scrape time: a record the kernel could not
//! reserve never reaches user space, so only the kernel can count it.

use std::sync::Mutex;

use aya::maps::{MapData, PerCpuArray};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

use crate::telemetry::{CollectorLabel, ProbeLabel, Telemetry, events::CollectorFailed};

/// This collector's `edgewatch_scrape_errors_total` label.
const COLLECTOR: &str = "ringbuf_lost";

/// Where lost-record counts come from.
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

pub struct LostCollector {
    source: Box<dyn LostSource>,
    /// (probe id, probe name)
    probes: Vec<(u32, &'static str)>,
    telemetry: Telemetry,
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
        telemetry: Telemetry,
    ) -> Self {
        telemetry
            .scrape_errors
            .get_or_create_owned(&CollectorLabel {
                collector: COLLECTOR,
            });
        Self {
            source,
            probes,
            telemetry,
        }
    }
}

impl Collector for LostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut counts = Vec::with_capacity(self.probes.len());
        for &(id, probe) in &self.probes {
            match self.source.lost(id) {
                Ok(n) => counts.push((probe, n)),
                Err(e) => self.telemetry.emit(CollectorFailed {
                    collector: COLLECTOR,
                    error: &e,
                }),
            }
        }
        let mut family = encoder.encode_descriptor(
            "edgewatch_ringbuf_lost_events",
            "Events the kernel could not record (ring buffer full, or its in-flight call table full), by probe.",
            None,
            MetricType::Counter,
        )?;
        for (probe, n) in counts {
            ConstCounter::new(n).encode(family.encode_family(&ProbeLabel { probe })?)?;
        }
        Ok(())
    }
}
