//! BPF map updates and deletes into metrics, per element.
//!
//! A single-element call is one element. A batch call counts every element
//! the kernel processed (the count it writes back to `attr.batch.count`)
//! as `ok`, and, when it failed, the element it stopped at under the
//! error (kernel/bpf/syscall.c generic_map_update_batch and
//! generic_map_delete_batch stop at the first failing element). A batch that
//! failed before processing anything (the count is not written back) counts
//! one element under the error.
//!
//! Worst-case series: maps x (9 results) for updates and deletes, capped at
//! `metrics.series_limit` label sets per family (past it, map_id, map_name,
//! comm and the workload labels read `_overflow`); the duration histogram has one series per
//! map type (about 35); the last-update gauge one per map, same cap.
//!
//! Every call on a resolved map also goes to the hot-update doctor
//! (aggregate/doctor.rs): was the map used by any program, who writes it.

use std::sync::Arc;

use edgewatch_common::{BpfChange, COMM_LEN, MAP_KEY_HASHED, MAP_VALUE_HASHED, MapOp};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{
    Context, OnRecord, Reconfigure,
    cache::{Capped, HandleCache},
    doctor::Doctor,
};
use crate::vocab::{
    clock::ns_to_seconds,
    errno,
    kernel::{map_type_name, name_label},
    labels::{Foldable, OVERFLOW, OptInLabels, OptLabels, Rendered, SeriesCap, series},
    series::{Counters, SeriesCounter, SeriesHistogram},
    spans::{SpanData, SpanRecord},
};

/// Map-operation results with a label of their own.
pub const RESULTS: &[&str] = &[
    "eexist", "enoent", "e2big", "ebusy", "enomem", "einval", "eperm", "efault",
];

pub const DURATION_BUCKETS: &[f64] = &[
    250e-9, 500e-9, 1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 10e-3,
];

const UPDATE_ELEM: u16 = 2;
const UPDATE_BATCH: u16 = 26;
const DELETE_BATCH: u16 = 27;

/// The elements of one operation record: how many the kernel processed
/// (`ok`), and the errno of the element it stopped at, if it failed.
pub fn split(op: &MapOp) -> (u64, Option<i32>) {
    let batch = op.cmd == UPDATE_BATCH || op.cmd == DELETE_BATCH;
    if op.ret >= 0 {
        return (if batch { u64::from(op.count) } else { 1 }, None);
    }
    // The kernel writes the processed count back only once it has started;
    // an untouched count means nothing was processed.
    let processed = if batch && op.count != op.requested {
        u64::from(op.count)
    } else {
        0
    };
    (processed, Some(op.ret))
}

/// (result label, elements) for one operation record.
pub fn elements(op: &MapOp) -> Vec<(&'static str, u64)> {
    let (ok, failed) = split(op);
    let mut out = Vec::with_capacity(2);
    if ok > 0 || failed.is_none() {
        out.push(("ok", ok));
    }
    if let Some(ret) = failed {
        out.push((errno::result_label(ret, RESULTS), 1));
    }
    out
}

/// Labels of the update and delete counters (opt-in: `comm` and the
/// workload labels). The map's id and name are high-cardinality too: past
/// the cap they fold with the opt-in labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub map_id: Arc<str>,
    pub map_name: Arc<str>,
    pub map_type: &'static str,
    pub result: &'static str,
    #[prometheus(flatten)]
    pub opt: OptLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub map_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map_id: Arc<str>,
    pub map_name: Arc<str>,
}

impl Foldable for OpLabels {
    fn folded(&self) -> Self {
        Self {
            map_id: Arc::from(OVERFLOW),
            map_name: Arc::from(OVERFLOW),
            opt: self.opt.folded(),
            ..self.clone()
        }
    }
}

impl Foldable for MapLabels {
    fn folded(&self) -> Self {
        Self {
            map_id: Arc::from(OVERFLOW),
            map_name: Arc::from(OVERFLOW),
        }
    }
}

type HistogramFamily<L> = Family<L, SeriesHistogram, fn() -> SeriesHistogram>;

fn duration_histogram() -> SeriesHistogram {
    SeriesHistogram::new(DURATION_BUCKETS.iter().copied())
}

/// One result of one kind of call on one map, by its raw fields.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct OpKey {
    map_id: u32,
    map_type: u32,
    update: bool,
    /// 0 for the processed elements, the syscall's -errno for a failure.
    ret: i32,
    map_name: [u8; 16],
    comm: [u8; COMM_LEN],
    cgroup: u64,
}

/// A map's last-update gauge, by its raw fields.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct MapKey {
    map_id: u32,
    map_name: [u8; 16],
}

type TimeGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Map types with a duration histogram handle kept in an array.
const TYPE_SLOTS: usize = 64;

pub struct MapAggregator {
    ctx: Context,
    updates: Counters<OpLabels>,
    deletes: Counters<OpLabels>,
    duration: HistogramFamily<TypeLabel>,
    last_update: Family<Rendered<MapLabels>, TimeGauge>,
    updates_cap: SeriesCap<OpLabels>,
    deletes_cap: SeriesCap<OpLabels>,
    last_cap: SeriesCap<MapLabels>,
    op_handles: HandleCache<OpKey, Capped<SeriesCounter>>,
    last_handles: HandleCache<MapKey, Capped<TimeGauge>>,
    /// Duration histograms by map type (`TYPE_SLOTS` for unknown).
    durations: Vec<Option<SeriesHistogram>>,
    doctor: Doctor,
}

impl MapAggregator {
    /// Registers the map-operation metrics and returns their aggregator.
    pub fn register(registry: &mut Registry, ctx: &Context) -> Self {
        let updates = Counters::<OpLabels>::default();
        let deletes = Counters::<OpLabels>::default();
        let duration: HistogramFamily<TypeLabel> = Family::new_with_constructor(duration_histogram);
        let last_update = Family::<Rendered<MapLabels>, TimeGauge>::default();
        registry.register(
            "edgewatch_bpf_map_updates",
            "Elements written to BPF maps by BPF_MAP_UPDATE_ELEM and BPF_MAP_UPDATE_BATCH from any process, by result",
            updates.clone(),
        );
        registry.register(
            "edgewatch_bpf_map_deletes",
            "Elements deleted from BPF maps by BPF_MAP_DELETE_ELEM and BPF_MAP_DELETE_BATCH from any process, by result",
            deletes.clone(),
        );
        registry.register(
            "edgewatch_bpf_map_update_duration_seconds",
            "Duration of map update system calls (one observation per call), by map type",
            duration.clone(),
        );
        registry.register(
            "edgewatch_bpf_map_last_update_timestamp_seconds",
            "Unix time of the last successful update of each map",
            last_update.clone(),
        );
        let doctor = Doctor::register(registry, ctx);
        Self {
            doctor,
            updates_cap: ctx.cap("edgewatch_bpf_map_updates_total"),
            deletes_cap: ctx.cap("edgewatch_bpf_map_deletes_total"),
            last_cap: ctx.cap("edgewatch_bpf_map_last_update_timestamp_seconds"),
            op_handles: HandleCache::new(ctx.handle_limit()),
            last_handles: HandleCache::new(ctx.handle_limit()),
            durations: vec![None; TYPE_SLOTS + 1],
            ctx: ctx.clone(),
            updates,
            deletes,
            duration,
            last_update,
        }
    }

    fn type_label(op: &MapOp) -> &'static str {
        if op.map_id == 0 {
            "unknown"
        } else {
            map_type_name(u32::from(op.map_type))
        }
    }

    fn op_handle(&mut self, key: &OpKey, op: &MapOp) -> Capped<SeriesCounter> {
        let result = if key.ret >= 0 {
            "ok"
        } else {
            errno::result_label(key.ret, RESULTS)
        };
        let labels = OpLabels {
            map_id: Arc::from(op.map_id.to_string()),
            map_name: name_label(&op.map_name),
            map_type: Self::type_label(op),
            result,
            opt: self.ctx.with_workload(
                OptLabels {
                    comm: self.ctx.labels.comm.then(|| name_label(&op.comm)),
                    ..OptLabels::default()
                },
                key.cgroup,
            ),
        };
        let (family, cap) = if key.update {
            (&self.updates, &mut self.updates_cap)
        } else {
            (&self.deletes, &mut self.deletes_cap)
        };
        let (labels, dropped) = cap.admit_once(labels);
        Capped {
            handle: family.series(labels),
            dropped,
        }
    }

    /// Adds `n` elements under result `ret` (0 for ok).
    #[inline]
    fn count(&mut self, op: &MapOp, update: bool, ret: i32, n: u64) {
        let key = OpKey {
            map_id: op.map_id,
            map_type: u32::from(op.map_type),
            update,
            ret,
            map_name: op.map_name,
            comm: if self.ctx.labels.comm {
                op.comm
            } else {
                [0; COMM_LEN]
            },
            cgroup: self.ctx.workload_key(op),
        };
        if let Some(h) = self.op_handles.lookup(&key) {
            h.handle.inc_by(n);
            h.note_fold();
            return;
        }
        let h = self.op_handle(&key, op);
        h.handle.inc_by(n);
        h.note_fold();
        self.op_handles.insert(key, h);
    }

    fn duration(&mut self, op: &MapOp) -> &SeriesHistogram {
        let slot = if op.map_id == 0 {
            TYPE_SLOTS
        } else {
            (op.map_type as usize).min(TYPE_SLOTS - 1)
        };
        let family = &self.duration;
        let map_type = Self::type_label(op);
        self.durations[slot]
            .get_or_insert_with(|| family.get_or_create(&TypeLabel { map_type }).clone())
    }

    fn last_update(&mut self, op: &MapOp, unix_seconds: f64) {
        let key = MapKey {
            map_id: op.map_id,
            map_name: op.map_name,
        };
        if let Some(h) = self.last_handles.lookup(&key) {
            h.handle.set(unix_seconds);
            h.note_fold();
            return;
        }
        let (labels, dropped) = self.last_cap.admit_once(MapLabels {
            map_id: Arc::from(op.map_id.to_string()),
            map_name: name_label(&op.map_name),
        });
        let h = Capped {
            handle: series(&self.last_update, labels),
            dropped,
        };
        h.handle.set(unix_seconds);
        h.note_fold();
        self.last_handles.insert(key, h);
    }

    /// Queues a map-call span if the sampler admits it (decided before
    /// anything is built; attributes are built at export time).
    fn span(&self, op: &MapOp, update: bool) {
        if let Some(span) = self.ctx.spans.admit(op.hdr.ts_ns) {
            let end = self.ctx.clock.unix_nanos(op.hdr.ts_ns);
            let (ok, failed) = split(op);
            span.push(SpanRecord {
                start_unix_ns: end.saturating_sub(op.duration_ns),
                end_unix_ns: end,
                data: SpanData::MapCall {
                    update,
                    map_id: op.map_id,
                    map_name: op.map_name,
                    map_type: Self::type_label(op),
                    elements: ok + u64::from(failed.is_some()),
                    tgid: op.tgid,
                    comm: op.comm,
                    error: failed.map(|ret| errno::result_label(ret, RESULTS)),
                    key_hash: (op.hashed & MAP_KEY_HASHED != 0).then_some(op.key_hash),
                    value_hash: (op.hashed & MAP_VALUE_HASHED != 0).then_some(op.value_hash),
                },
                workload: self.ctx.span_workload(op),
            });
        }
    }
}

impl OnRecord<MapOp> for MapAggregator {
    #[inline]
    fn on(&mut self, op: &MapOp) {
        let update = op.cmd == UPDATE_ELEM || op.cmd == UPDATE_BATCH;
        let (ok, failed) = split(op);
        let any_ok = ok > 0 || failed.is_none();
        if any_ok {
            self.count(op, update, 0, ok);
        }
        if let Some(ret) = failed {
            self.count(op, update, ret, 1);
        }
        if op.map_id != 0 {
            self.doctor.on_write(op, ok, Self::type_label(op));
        }
        if update {
            self.duration(op).observe(ns_to_seconds(op.duration_ns));
            if any_ok && op.map_id != 0 {
                let now = self.ctx.clock.unix_seconds(op.hdr.ts_ns);
                self.last_update(op, now);
            }
        }
        if self.ctx.spans.is_on() {
            self.span(op, update);
        }
    }
}

impl Reconfigure for MapAggregator {
    fn reconfigure(&mut self, labels: OptInLabels, series_limit: usize) {
        self.ctx.labels = labels;
        self.ctx.series_limit = series_limit;
        self.updates_cap.set_limit(series_limit);
        self.deletes_cap.set_limit(series_limit);
        self.last_cap.set_limit(series_limit);
        self.op_handles.clear();
        self.last_handles.clear();
    }
}

/// A program load, attach or link change: the doctor re-reads which
/// programs use which maps before it judges the next write.
impl OnRecord<BpfChange> for MapAggregator {
    fn on(&mut self, change: &BpfChange) {
        self.doctor.on_change(change.tgid);
    }
}

#[cfg(test)]
mod tests {
    use bytemuck::Zeroable;

    use super::*;

    fn op(cmd: u16, ret: i32, requested: u32, count: u32) -> MapOp {
        let mut o = MapOp::zeroed();
        o.cmd = cmd;
        o.ret = ret;
        o.requested = requested;
        o.count = count;
        o
    }

    #[test]
    fn spans_carry_the_hashes_the_kernel_set() {
        use crate::vocab::{
            clock::Clock,
            labels::OptInLabels,
            spans::{DropCounters, SpanData, SpanLimits, SpanSink},
        };

        let limits = SpanLimits {
            sample_ratio: 1.0,
            max_per_second: 0,
            max_queued: 10,
        };
        let spans = SpanSink::enabled(limits, DropCounters::default(), 1);
        let ctx = Context {
            labels: OptInLabels::default(),
            series_limit: 10,
            series_dropped: Family::default(),
            clock: Clock::fixed(0),
            spans: spans.clone(),
            refs: Default::default(),
            workloads: Default::default(),
        };
        let mut agg = MapAggregator::register(&mut Registry::default(), &ctx);
        let mut hashed = op(2, 0, 1, 1);
        hashed.map_id = 5;
        hashed.hashed = MAP_KEY_HASHED | MAP_VALUE_HASHED;
        hashed.key_hash = 0xaf63_bd4c_8601_b7df;
        hashed.value_hash = 1;
        agg.on(&hashed);
        let mut delete = op(3, 0, 1, 1);
        delete.hashed = MAP_KEY_HASHED;
        delete.key_hash = 2;
        agg.on(&delete);
        agg.on(&op(2, 0, 1, 1));
        let got: Vec<(Option<u64>, Option<u64>)> = spans
            .peek(10)
            .iter()
            .map(|s| match s.data {
                SpanData::MapCall {
                    key_hash,
                    value_hash,
                    ..
                } => (key_hash, value_hash),
                SpanData::TcpConnect { .. } => (None, None),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(0xaf63_bd4c_8601_b7df), Some(1)),
                (Some(2), None),
                (None, None),
            ]
        );
    }

    #[test]
    fn per_element_results() {
        assert_eq!(elements(&op(2, 0, 1, 1)), vec![("ok", 1)]);
        assert_eq!(elements(&op(2, -libc::EEXIST, 1, 1)), vec![("eexist", 1)]);
        assert_eq!(elements(&op(3, -libc::ENOENT, 1, 1)), vec![("enoent", 1)]);
        assert_eq!(elements(&op(2, -libc::ENOSPC, 1, 1)), vec![("other", 1)]);
        // Batches: processed elements are ok, the failing one carries the error.
        assert_eq!(elements(&op(26, 0, 8, 8)), vec![("ok", 8)]);
        assert_eq!(
            elements(&op(26, -libc::E2BIG, 8, 5)),
            vec![("ok", 5), ("e2big", 1)]
        );
        assert_eq!(elements(&op(27, -libc::ENOENT, 8, 0)), vec![("enoent", 1)]);
        // Failed before the kernel touched the count.
        assert_eq!(elements(&op(26, -libc::EINVAL, 8, 8)), vec![("einval", 1)]);
    }
}
