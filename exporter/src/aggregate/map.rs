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
//! `metrics.series_limit` label sets per family (past it, map_id, map_name
//! and comm read `_overflow`); the duration histogram has one series per
//! map type (about 35); the last-update gauge one per map, same cap.
//!
//! Every call on a resolved map also goes to the hot-update doctor
//! (aggregate/doctor.rs): was the map used by any program, who writes it.

use std::sync::Arc;

use edgewatch_common::{BpfChange, MAP_KEY_HASHED, MAP_VALUE_HASHED, MapOp};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::{Context, OnRecord, doctor::Doctor};
use crate::vocab::{
    clock::ns_to_seconds,
    errno,
    kernel::{map_type_name, name_label},
    labels::{Foldable, OVERFLOW, OptLabels, SeriesCap},
    spans::SpanRecord,
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

/// (result label, elements) for one operation record.
pub fn elements(op: &MapOp) -> Vec<(&'static str, u64)> {
    let batch = op.cmd == UPDATE_BATCH || op.cmd == DELETE_BATCH;
    if op.ret >= 0 {
        return vec![("ok", if batch { u64::from(op.count) } else { 1 })];
    }
    let failed = errno::result_label(op.ret, RESULTS);
    // The kernel writes the processed count back only once it has started;
    // an untouched count means nothing was processed.
    let processed = if batch && op.count != op.requested {
        u64::from(op.count)
    } else {
        0
    };
    let mut out = Vec::with_capacity(2);
    if processed > 0 {
        out.push(("ok", processed));
    }
    out.push((failed, 1));
    out
}

/// Labels of the update and delete counters (opt-in: `comm`). The map's id
/// and name are high-cardinality too: past the cap they fold with `comm`.
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

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

pub struct MapAggregator {
    ctx: Context,
    updates: Family<OpLabels, Counter>,
    deletes: Family<OpLabels, Counter>,
    duration: HistogramFamily<TypeLabel>,
    last_update: Family<MapLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    updates_cap: SeriesCap<OpLabels>,
    deletes_cap: SeriesCap<OpLabels>,
    last_cap: SeriesCap<MapLabels>,
    doctor: Doctor,
}

impl MapAggregator {
    /// Registers the map-operation metrics and returns their aggregator.
    pub fn register(registry: &mut Registry, ctx: &Context) -> Self {
        let updates = Family::<OpLabels, Counter>::default();
        let deletes = Family::<OpLabels, Counter>::default();
        let duration: HistogramFamily<TypeLabel> = Family::new_with_constructor(duration_histogram);
        let last_update = Family::<MapLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
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
            ctx: ctx.clone(),
            updates,
            deletes,
            duration,
            last_update,
        }
    }
}

impl OnRecord<MapOp> for MapAggregator {
    fn on(&mut self, op: &MapOp) {
        let map_id: Arc<str> = Arc::from(op.map_id.to_string());
        let map_name = name_label(&op.map_name);
        let map_type = if op.map_id == 0 {
            "unknown"
        } else {
            map_type_name(op.map_type)
        };
        let comm = self.ctx.labels.comm.then(|| name_label(&op.comm));
        let is_update = op.cmd == UPDATE_ELEM || op.cmd == UPDATE_BATCH;
        let mut any_ok = false;
        let elements = elements(op);
        if op.map_id != 0 {
            let ok = elements
                .iter()
                .filter(|(r, _)| *r == "ok")
                .map(|(_, n)| n)
                .sum();
            let labels = MapLabels {
                map_id: map_id.clone(),
                map_name: map_name.clone(),
            };
            self.doctor.on_write(op, ok, &labels, map_type);
        }
        if self.ctx.spans.is_on() {
            let end = self.ctx.clock.unix_nanos(op.hdr.ts_ns);
            let failed = elements
                .iter()
                .find(|(r, _)| *r != "ok")
                .map(|(r, _)| r.to_string());
            let total: u64 = elements.iter().map(|(_, n)| n).sum();
            let mut attributes = vec![
                ("bpf.map.id", op.map_id.to_string()),
                ("bpf.map.name", map_name.to_string()),
                ("bpf.map.type", map_type.to_string()),
                ("bpf.map.elements", total.to_string()),
                ("process.pid", op.tgid.to_string()),
                ("process.command", name_label(&op.comm).to_string()),
            ];
            // The change log (otlp.map_key_hashes): FNV-1a 64 of the key and
            // value the writer passed, so one key can be followed across writers.
            if op.hashed & MAP_KEY_HASHED != 0 {
                attributes.push(("bpf.map.key_hash", format!("{:016x}", op.key_hash)));
            }
            if op.hashed & MAP_VALUE_HASHED != 0 {
                attributes.push(("bpf.map.value_hash", format!("{:016x}", op.value_hash)));
            }
            self.ctx.spans.push(SpanRecord {
                name: if is_update {
                    "bpf.map.update"
                } else {
                    "bpf.map.delete"
                },
                start_unix_ns: end.saturating_sub(op.duration_ns),
                end_unix_ns: end,
                attributes,
                error: failed,
            });
        }
        for (result, n) in elements {
            any_ok |= result == "ok";
            let l = OpLabels {
                map_id: map_id.clone(),
                map_name: map_name.clone(),
                map_type,
                result,
                opt: OptLabels {
                    comm: comm.clone(),
                    ..OptLabels::default()
                },
            };
            if is_update {
                let l = self.updates_cap.admit(l);
                self.updates.get_or_create(&l).inc_by(n);
            } else {
                let l = self.deletes_cap.admit(l);
                self.deletes.get_or_create(&l).inc_by(n);
            }
        }
        if is_update {
            self.duration
                .get_or_create(&TypeLabel { map_type })
                .observe(ns_to_seconds(op.duration_ns));
            if any_ok && op.map_id != 0 {
                let l = self.last_cap.admit(MapLabels { map_id, map_name });
                self.last_update
                    .get_or_create(&l)
                    .set(self.ctx.clock.unix_seconds(op.hdr.ts_ns));
            }
        }
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
        use prometheus_client::metrics::counter::Counter;

        use crate::vocab::{clock::Clock, labels::OptInLabels, spans::SpanSink};

        let spans = SpanSink::enabled(10, Counter::default());
        let ctx = Context {
            labels: OptInLabels::default(),
            series_limit: 10,
            series_dropped: Family::default(),
            clock: Clock::fixed(0),
            spans: spans.clone(),
            refs: Default::default(),
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
        let got: Vec<(Option<String>, Option<String>)> = spans
            .drain()
            .iter()
            .map(|s| {
                let get = |k| {
                    s.attributes
                        .iter()
                        .find(|(n, _)| *n == k)
                        .map(|(_, v)| v.clone())
                };
                (get("bpf.map.key_hash"), get("bpf.map.value_hash"))
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Some("af63bd4c8601b7df".into()),
                    Some("0000000000000001".into())
                ),
                (Some("0000000000000002".into()), None),
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
