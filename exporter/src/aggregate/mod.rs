//! Aggregation: decoded records in, metric updates (and spans) out. Pure
//! and synchronous (no aya, no tokio), so it is unit-tested on plain data.
//! One aggregator per probe; it implements [`OnRecord`] for each record
//! kind its probe owns (see `probe::Handler`).

pub mod cache;
pub mod cgroup;
pub mod connect;
pub mod doctor;
pub mod map;
pub mod retransmit;

use std::sync::Arc;

use prometheus_client::metrics::{counter::Counter, family::Family};

use self::cgroup::CgroupId;
use crate::{
    vocab::{
        clock::Clock,
        kernel::ip_addr,
        labels::{Foldable, MetricLabel, OptInLabels, OptLabels, SeriesCap},
        refs::References,
        spans::SpanSink,
        workload::Workload,
    },
    workload::Workloads,
};

/// Takes one decoded record of type `R`.
pub trait OnRecord<R> {
    fn on(&mut self, record: &R);
}

/// Takes new opt-in labels and a new series cap at a config reload. What
/// was counted stays; label sets already admitted keep their series.
pub trait Reconfigure {
    fn reconfigure(&mut self, labels: OptInLabels, series_limit: usize);
}

/// What every aggregator is built with.
#[derive(Clone, Debug)]
pub struct Context {
    /// Which opt-in labels are on.
    pub labels: OptInLabels,
    /// Series cap per metric family for label sets with opt-in labels.
    pub series_limit: usize,
    /// `edgewatch_series_dropped_total`, moved by every series cap.
    pub series_dropped: Family<MetricLabel, Counter>,
    /// Kernel timestamps to Unix time.
    pub clock: Clock,
    /// Where spans go (off unless OTLP traces are on).
    pub spans: SpanSink,
    /// Which loaded programs use which maps (the map probe's doctor).
    pub refs: References,
    /// cgroup ids to workloads (off unless a workload label or spans need
    /// it).
    pub workloads: Workloads,
}

impl Context {
    /// How many raw keys a handle table keeps: every admitted label set
    /// and its overflow twins, with room to spare.
    pub fn handle_limit(&self) -> usize {
        self.series_limit.saturating_mul(4).clamp(1024, 1 << 20)
    }

    /// A series cap for `metric` with the configured limit.
    pub fn cap<L: Foldable>(&self, metric: &'static str) -> SeriesCap<L> {
        SeriesCap::new(metric, self.series_limit, &self.series_dropped)
    }

    /// The workload part of a record's handle-table key: its cgroup id
    /// when a workload label is on, else 0 (one key for every cgroup).
    #[inline]
    pub fn workload_key(&self, record: &impl CgroupId) -> u64 {
        if self.labels.workload() {
            record.cgroup_id()
        } else {
            0
        }
    }

    /// `opt` with the workload labels of cgroup `key` (from
    /// [`Context::workload_key`]); resolves only here, on a table miss.
    pub fn with_workload(&self, opt: OptLabels, key: u64) -> OptLabels {
        if !self.labels.workload() {
            return opt;
        }
        let w = self.workloads.resolve(key);
        opt.with_workload(&self.labels, w.as_deref())
    }

    /// The acting task's workload for a span, when spans carry workloads.
    pub fn span_workload(&self, record: &impl CgroupId) -> Option<Arc<Workload>> {
        self.workloads.resolve(record.cgroup_id())
    }
}

/// The opt-in `peer` and `port` label values of a connection, when on.
pub fn peer_port(
    on: bool,
    family: u16,
    daddr: &[u8; 16],
    dport: u16,
) -> (Option<Arc<str>>, Option<Arc<str>>) {
    if !on {
        return (None, None);
    }
    let peer = ip_addr(family, daddr).map(|a| Arc::from(a.to_string()));
    (peer, Some(Arc::from(dport.to_string())))
}
