//! Probes, the unit of extension. A probe is one [`ProbeDef`] in [`ALL`]:
//! its name, the ring-buffer records it owns (each paired with the
//! aggregator method that takes it), its attach chain as data, its
//! aggregator, an optional scrape-time collector, and fixture records for
//! the golden exposition. Everything else derives from that list: the
//! names `--probes` accepts and its help, config validation, the
//! dispatcher's kind table, the lost and missed collectors, the golden
//! test. Adding a probe is one C file, one module here, one entry in
//! [`ALL`] (README, "Adding a probe").

pub mod attach;
pub mod connect;
pub mod map;
pub mod retransmit;

use edgewatch_common::RingRecord;
use prometheus_client::{collector::Collector, registry::Registry};

pub use self::attach::{AttachMode, Disable, Hook, Link, ProbeError, attach_chain, error_chain};
use crate::{
    aggregate::{self, OnRecord, Reconfigure},
    scrape::Sources,
    telemetry::Telemetry,
    vocab::labels::OptInLabels,
};

/// Every probe edgewatch has, in attach and exposition order.
pub static ALL: &[&dyn Probe] = &[
    &connect::PROBE,
    &retransmit::PROBE,
    &map::PROBE,
    // scripts/new-probe adds a new probe above this line.
];

/// The probe named `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Probe> {
    ALL.iter().copied().find(|p| p.name() == name)
}

/// One record kind a probe owns: the wire struct (kind, C name, size) and
/// the aggregator method that takes it.
pub struct Handler<A> {
    pub kind: u16,
    /// The record's C struct (common/include/edgewatch/events.h).
    pub record: &'static str,
    pub size: usize,
    call: fn(&mut A, &[u8]) -> bool,
}

impl<A> Handler<A> {
    /// The handler of record type `R`, which the aggregator takes through
    /// its `OnRecord<R>` impl.
    pub const fn of<R: RingRecord>() -> Self
    where
        A: OnRecord<R>,
    {
        Self {
            kind: R::KIND,
            record: R::C_NAME,
            size: size_of::<R>(),
            call: decode_into::<A, R>,
        }
    }
}

/// Decodes a record of exactly `size_of::<R>()` bytes (any alignment) and
/// hands it to the aggregator; false for any other length.
fn decode_into<A: OnRecord<R>, R: RingRecord>(agg: &mut A, bytes: &[u8]) -> bool {
    match bytemuck::try_pod_read_unaligned::<R>(bytes) {
        Ok(record) => {
            agg.on(&record);
            true
        }
        Err(_) => false,
    }
}

/// Builds a probe's scrape-time collector from its source.
pub type CollectorFn = fn(&mut dyn Sources, &Telemetry) -> Box<dyn Collector>;

/// A probe's definition. `A` is its aggregator.
pub struct ProbeDef<A: 'static> {
    /// The name `--probes` knows it by.
    pub name: &'static str,
    /// One line for `--help` and the docs.
    pub about: &'static str,
    /// Index into the kernel's per-CPU lost-record array (`EW_PROBE_*`).
    pub id: u32,
    /// The ring-buffer records it owns.
    pub records: &'static [Handler<A>],
    /// Attach modes, cheapest first; the last one is the fallback.
    pub chain: &'static [Link],
    /// Registers the probe's metrics and returns its aggregator.
    pub aggregator: fn(&mut Registry, &aggregate::Context) -> A,
    /// A collector of kernel state read at scrape time, if it has one.
    pub collector: Option<CollectorFn>,
    /// Records for the golden exposition (tests/golden/).
    pub fixtures: fn() -> Vec<Vec<u8>>,
}

/// A record kind as the dispatcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpec {
    pub kind: u16,
    pub record: &'static str,
    pub size: usize,
}

/// Where a probe's records go: the aggregator behind its handlers.
pub trait Sink: Send {
    /// Hands `bytes` to the handler at `slot` (an index into the probe's
    /// records); false when the bytes are not that record.
    fn consume(&mut self, slot: usize, bytes: &[u8]) -> bool;
    /// Takes new opt-in labels and series cap (a config reload); what was
    /// counted stays.
    fn reconfigure(&mut self, labels: OptInLabels, series_limit: usize);
}

struct Bound<A: 'static> {
    agg: A,
    handlers: &'static [Handler<A>],
}

impl<A: Reconfigure + Send> Sink for Bound<A> {
    fn consume(&mut self, slot: usize, bytes: &[u8]) -> bool {
        match self.handlers.get(slot) {
            Some(h) => (h.call)(&mut self.agg, bytes),
            None => false,
        }
    }

    fn reconfigure(&mut self, labels: OptInLabels, series_limit: usize) {
        self.agg.reconfigure(labels, series_limit);
    }
}

/// A probe definition, whatever its aggregator type: what [`ALL`] holds.
pub trait Probe: Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    fn id(&self) -> u32;
    fn records(&self) -> Vec<RecordSpec>;
    fn chain(&self) -> &'static [Link];
    /// Registers the metrics; returns where the records go.
    fn build(&self, registry: &mut Registry, ctx: &aggregate::Context) -> Box<dyn Sink>;
    fn collector(
        &self,
        sources: &mut dyn Sources,
        telemetry: &Telemetry,
    ) -> Option<Box<dyn Collector>>;
    fn fixtures(&self) -> Vec<Vec<u8>>;

    /// Every program the chain may attach, in chain order, each once: the
    /// programs whose skipped runs the kernel counts for this probe.
    fn programs(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for hook in self.chain().iter().flat_map(|l| l.hooks) {
            if !out.contains(&hook.program()) {
                out.push(hook.program());
            }
        }
        out
    }
}

impl<A: Reconfigure + Send + 'static> Probe for ProbeDef<A> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn about(&self) -> &'static str {
        self.about
    }

    fn id(&self) -> u32 {
        self.id
    }

    fn records(&self) -> Vec<RecordSpec> {
        self.records
            .iter()
            .map(|h| RecordSpec {
                kind: h.kind,
                record: h.record,
                size: h.size,
            })
            .collect()
    }

    fn chain(&self) -> &'static [Link] {
        self.chain
    }

    fn build(&self, registry: &mut Registry, ctx: &aggregate::Context) -> Box<dyn Sink> {
        Box::new(Bound {
            agg: (self.aggregator)(registry, ctx),
            handlers: self.records,
        })
    }

    fn collector(
        &self,
        sources: &mut dyn Sources,
        telemetry: &Telemetry,
    ) -> Option<Box<dyn Collector>> {
        self.collector.map(|c| c(sources, telemetry))
    }

    fn fixtures(&self) -> Vec<Vec<u8>> {
        (self.fixtures)()
    }
}

/// Fixture helpers: records as the kernel would write them.
pub(crate) mod fixture {
    use edgewatch_common::{COMM_LEN, Header, RingRecord};

    /// A header for record type `R` at kernel time 1 ns.
    pub fn hdr<R: RingRecord>() -> Header {
        Header {
            kind: R::KIND,
            size: size_of::<R>() as u16,
            cpu: 0,
            ts_ns: 1,
        }
    }

    /// A NUL-padded kernel name.
    pub fn name(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        let n = s.len().min(COMM_LEN - 1);
        c[..n].copy_from_slice(&s.as_bytes()[..n]);
        c
    }

    /// An IPv4 address as records carry it.
    pub fn ipv4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    pub fn bytes<R: RingRecord>(r: &R) -> Vec<u8> {
        bytemuck::bytes_of(r).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_ids_and_kinds_are_unique() {
        let names: BTreeSet<_> = ALL.iter().map(|p| p.name()).collect();
        let ids: BTreeSet<_> = ALL.iter().map(|p| p.id()).collect();
        let kinds: Vec<u16> = ALL
            .iter()
            .flat_map(|p| p.records())
            .map(|r| r.kind)
            .collect();
        let unique_kinds: BTreeSet<_> = kinds.iter().collect();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(ids.len(), ALL.len());
        assert_eq!(unique_kinds.len(), kinds.len());
        assert!(ids.iter().all(|&id| id < edgewatch_common::PROBE_COUNT));
    }

    #[test]
    fn every_chain_ends_in_a_mode_that_cannot_be_disabled() {
        for p in ALL {
            let last = p.chain().last().expect("a chain");
            assert!(!last.mode.can_disable(), "{}", p.name());
        }
    }

    #[test]
    fn fixtures_are_records_the_probe_owns() {
        for p in ALL {
            let kinds: Vec<u16> = p.records().iter().map(|r| r.kind).collect();
            for f in p.fixtures() {
                let kind = u16::from_ne_bytes([f[0], f[1]]);
                assert!(kinds.contains(&kind), "{}: kind {kind}", p.name());
            }
        }
    }
}
