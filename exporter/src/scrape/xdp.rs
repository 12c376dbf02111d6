//! The XDP datapath's metrics: per-CPU packet and byte counters per
//! (interface, action, protocol), read from `ew_xdp_stats` and summed over
//! CPUs at scrape time, never copied on a timer; and the attached and
//! blocklist gauges that datapath.rs keeps.
//!
//! Worst-case series: 2 x 5 actions x 5 protocols per interface (emitted
//! even at zero, so rates start from the attachment), 1 attached gauge per
//! interface, 2 blocklist gauges.

use std::sync::Mutex;

use aya::maps::{MapData, PerCpuArray};
use edgewatch_common::{XDP_ACTIONS, XDP_PROTOS};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::telemetry::{CollectorLabel, Telemetry, events::CollectorFailed};

/// This collector's `edgewatch_scrape_errors_total` label.
const COLLECTOR: &str = "xdp";

pub const ACTIONS: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];
pub const PROTOS: [&str; 5] = ["tcp", "udp", "icmp", "icmpv6", "other"];

/// The datapath's own metric families.
#[derive(Clone, Debug, Default)]
pub struct XdpMetrics {
    pub attached: Family<IfaceMode, Gauge>,
    pub entries: Family<FamilyLabel, Gauge>,
    pub reloads: Family<ResultLabel, Counter>,
}

impl XdpMetrics {
    /// Exports the blocklist reload results from zero (when a blocklist is
    /// configured).
    pub fn blocklist_configured(&self) {
        for result in ["ok", "error"] {
            self.reloads.get_or_create_owned(&ResultLabel { result });
        }
    }

    /// Registers the families (the handles may have moved already).
    pub fn register(&self, registry: &mut Registry) {
        let m = self;
        registry.register(
            "edgewatch_xdp_attached",
            "1 for each interface the XDP program is attached to, with its mode",
            m.attached.clone(),
        );
        registry.register(
            "edgewatch_xdp_blocklist_entries",
            "Source prefixes in the XDP blocklist, by address family",
            m.entries.clone(),
        );
        registry.register(
            "edgewatch_xdp_blocklist_reloads",
            "Blocklist reloads (SIGHUP), by result; a rejected file leaves the running list in place",
            m.reloads.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IfaceMode {
    pub interface: String,
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    interface: String,
    action: &'static str,
    proto: &'static str,
}

/// Per-CPU counter cells (packets, bytes), summed over CPUs.
pub trait CounterSource: Send + Sync + 'static {
    fn read(&self, index: u32) -> Result<(u64, u64), aya::maps::MapError>;
}

impl CounterSource for Mutex<PerCpuArray<MapData, [u64; 2]>> {
    fn read(&self, index: u32) -> Result<(u64, u64), aya::maps::MapError> {
        let map = self.lock().unwrap_or_else(|e| e.into_inner());
        let values = map.get(&index, 0)?;
        Ok(values
            .iter()
            .fold((0, 0), |acc, v| (acc.0 + v[0], acc.1 + v[1])))
    }
}

/// The counter index of (slot, action, proto), as xdp.bpf.c computes it.
pub fn cell(slot: u32, action: u32, proto: u32) -> u32 {
    (slot * XDP_ACTIONS + action) * XDP_PROTOS + proto
}

/// `edgewatch_xdp_packets_total` and `edgewatch_xdp_bytes_total`, read from
/// the per-CPU array and summed at scrape time.
pub struct XdpCollector {
    source: Box<dyn CounterSource>,
    /// (slot, interface name)
    interfaces: Vec<(u32, String)>,
    telemetry: Telemetry,
}

impl std::fmt::Debug for XdpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpCollector")
            .field("interfaces", &self.interfaces)
            .finish_non_exhaustive()
    }
}

impl XdpCollector {
    pub fn new(
        source: Box<dyn CounterSource>,
        interfaces: Vec<(u32, String)>,
        telemetry: Telemetry,
    ) -> Self {
        telemetry
            .scrape_errors
            .get_or_create_owned(&CollectorLabel {
                collector: COLLECTOR,
            });
        Self {
            source,
            interfaces,
            telemetry,
        }
    }
}

impl Collector for XdpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut cells = Vec::new();
        for (slot, iface) in &self.interfaces {
            for (a, action) in ACTIONS.iter().enumerate() {
                for (p, proto) in PROTOS.iter().enumerate() {
                    match self.source.read(cell(*slot, a as u32, p as u32)) {
                        Ok(v) => cells.push((iface.as_str(), *action, *proto, v)),
                        Err(e) => self.telemetry.emit(CollectorFailed {
                            collector: COLLECTOR,
                            error: &e,
                        }),
                    }
                }
            }
        }
        let mut f = encoder.encode_descriptor(
            "edgewatch_xdp_packets",
            "Packets seen by the XDP program, by interface, action and L4 protocol.",
            None,
            MetricType::Counter,
        )?;
        for (interface, action, proto, (packets, _)) in &cells {
            let l = CounterLabels {
                interface: interface.to_string(),
                action,
                proto,
            };
            ConstCounter::new(*packets).encode(f.encode_family(&l)?)?;
        }
        let mut f = encoder.encode_descriptor(
            "edgewatch_xdp_bytes",
            "Frame bytes seen by the XDP program (as XDP sees them), by interface, action and L4 protocol.",
            None,
            MetricType::Counter,
        )?;
        for (interface, action, proto, (_, bytes)) in &cells {
            let l = CounterLabels {
                interface: interface.to_string(),
                action,
                proto,
            };
            ConstCounter::new(*bytes).encode(f.encode_family(&l)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_match_the_bpf_layout() {
        assert_eq!(cell(0, 0, 0), 0);
        assert_eq!(cell(0, 2, 1), 11);
        assert_eq!(cell(1, 0, 0), 25);
        assert_eq!(cell(63, 4, 4), 64 * 25 - 1);
    }
}
