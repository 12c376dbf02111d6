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

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use edgewatch_common::MapOp;
use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::spans::{SpanRecord, SpanSink};
use super::{
    comm_label,
    labels::{Foldable, MetricLabel, OVERFLOW, SeriesCap, encode_label, encode_opt},
    ns_to_seconds,
};
use crate::aggregate::labels::label_set;
use crate::{config::OptInLabels, errno};

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

/// The kernel's name of a map type (enum bpf_map_type), lower case, without
/// its `BPF_MAP_TYPE_` prefix.
pub fn map_type_name(t: u32) -> &'static str {
    const NAMES: &[&str] = &[
        "unspec",
        "hash",
        "array",
        "prog_array",
        "perf_event_array",
        "percpu_hash",
        "percpu_array",
        "stack_trace",
        "cgroup_array",
        "lru_hash",
        "lru_percpu_hash",
        "lpm_trie",
        "array_of_maps",
        "hash_of_maps",
        "devmap",
        "sockmap",
        "cpumap",
        "xskmap",
        "sockhash",
        "cgroup_storage",
        "reuseport_sockarray",
        "percpu_cgroup_storage",
        "queue",
        "stack",
        "sk_storage",
        "devmap_hash",
        "struct_ops",
        "ringbuf",
        "inode_storage",
        "task_storage",
        "bloom_filter",
        "user_ringbuf",
        "cgrp_storage",
        "arena",
        "insn_array",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

/// The kernel's name of a program type (enum bpf_prog_type), likewise.
pub fn prog_type_name(t: u32) -> &'static str {
    const NAMES: &[&str] = &[
        "unspec",
        "socket_filter",
        "kprobe",
        "sched_cls",
        "sched_act",
        "tracepoint",
        "xdp",
        "perf_event",
        "cgroup_skb",
        "cgroup_sock",
        "lwt_in",
        "lwt_out",
        "lwt_xmit",
        "sock_ops",
        "sk_skb",
        "cgroup_device",
        "sk_msg",
        "raw_tracepoint",
        "cgroup_sock_addr",
        "lwt_seg6local",
        "lirc_mode2",
        "sk_reuseport",
        "flow_dissector",
        "cgroup_sysctl",
        "raw_tracepoint_writable",
        "cgroup_sockopt",
        "tracing",
        "struct_ops",
        "ext",
        "lsm",
        "sk_lookup",
        "syscall",
        "netfilter",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct OpLabels {
    pub map_id: Arc<str>,
    pub map_name: Arc<str>,
    pub map_type: &'static str,
    pub result: &'static str,
    pub comm: Option<Arc<str>>,
}

label_set! {
    pub struct TypeLabel {
        pub map_type: &'static str,
    }
}

label_set! {
    pub struct MapLabels {
        pub map_id: Arc<str>,
        pub map_name: Arc<str>,
    }
}

impl Foldable for OpLabels {
    fn folded(&self) -> Self {
        Self {
            map_id: Arc::from(OVERFLOW),
            map_name: Arc::from(OVERFLOW),
            comm: self.comm.as_ref().map(|_| Arc::from(OVERFLOW)),
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

impl EncodeLabelSet for OpLabels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_label(enc, "map_id", &self.map_id)?;
        encode_label(enc, "map_name", &self.map_name)?;
        encode_label(enc, "map_type", self.map_type)?;
        encode_label(enc, "result", self.result)?;
        encode_opt(enc, "comm", self.comm.as_deref())
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

/// Maps CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) to Unix seconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix time minus monotonic time, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self {
            offset_ns: unix - mono,
        }
    }

    #[cfg(test)]
    pub const fn fixed(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn unix_seconds(&self, mono_ns: u64) -> f64 {
        (i128::from(mono_ns) + self.offset_ns) as f64 / 1e9
    }

    pub fn unix_nanos(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.offset_ns).unwrap_or(0)
    }
}

pub struct MapAggregator {
    labels: OptInLabels,
    clock: Clock,
    spans: SpanSink,
    updates: Family<OpLabels, Counter>,
    deletes: Family<OpLabels, Counter>,
    duration: HistogramFamily<TypeLabel>,
    last_update: Family<MapLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    updates_cap: SeriesCap<OpLabels>,
    deletes_cap: SeriesCap<OpLabels>,
    last_cap: SeriesCap<MapLabels>,
}

impl MapAggregator {
    pub fn register(
        registry: &mut Registry,
        labels: OptInLabels,
        series_limit: usize,
        dropped: &Family<MetricLabel, Counter>,
        clock: Clock,
        spans: SpanSink,
    ) -> Self {
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
        Self {
            labels,
            clock,
            spans,
            updates_cap: SeriesCap::new(
                "edgewatch_bpf_map_updates_total",
                series_limit,
                dropped.clone(),
            ),
            deletes_cap: SeriesCap::new(
                "edgewatch_bpf_map_deletes_total",
                series_limit,
                dropped.clone(),
            ),
            last_cap: SeriesCap::new(
                "edgewatch_bpf_map_last_update_timestamp_seconds",
                series_limit,
                dropped.clone(),
            ),
            updates,
            deletes,
            duration,
            last_update,
        }
    }

    pub fn on_op(&mut self, op: &MapOp) {
        let map_id: Arc<str> = Arc::from(op.map_id.to_string());
        let map_name = comm_label(&op.map_name);
        let map_type = if op.map_id == 0 {
            "unknown"
        } else {
            map_type_name(u32::from(op.map_type))
        };
        let comm = self.labels.comm.then(|| comm_label(&op.comm));
        let is_update = op.cmd == UPDATE_ELEM || op.cmd == UPDATE_BATCH;
        let mut any_ok = false;
        let elements = elements(op);
        if self.spans.is_on() {
            let end = self.clock.unix_nanos(op.hdr.ts_ns);
            let failed = elements
                .iter()
                .find(|(r, _)| *r != "ok")
                .map(|(r, _)| r.to_string());
            let total: u64 = elements.iter().map(|(_, n)| n).sum();
            self.spans.push(SpanRecord {
                name: if is_update {
                    "bpf.map.update"
                } else {
                    "bpf.map.delete"
                },
                start_unix_ns: end.saturating_sub(op.duration_ns),
                end_unix_ns: end,
                attributes: vec![
                    ("bpf.map.id", op.map_id.to_string()),
                    ("bpf.map.name", map_name.to_string()),
                    ("bpf.map.type", map_type.to_string()),
                    ("bpf.map.elements", total.to_string()),
                    ("process.pid", op.tgid.to_string()),
                    ("process.command", comm_label(&op.comm).to_string()),
                ],
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
                comm: comm.clone(),
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
                    .set(self.clock.unix_seconds(op.hdr.ts_ns));
            }
        }
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

    #[test]
    fn type_names() {
        assert_eq!(map_type_name(1), "hash");
        assert_eq!(map_type_name(6), "percpu_array");
        assert_eq!(map_type_name(9), "lru_hash");
        assert_eq!(map_type_name(11), "lpm_trie");
        assert_eq!(map_type_name(27), "ringbuf");
        assert_eq!(map_type_name(999), "unknown");
        assert_eq!(prog_type_name(6), "xdp");
        assert_eq!(prog_type_name(26), "tracing");
    }

    #[test]
    fn clock_converts_monotonic_to_unix() {
        let c = Clock::fixed(1_000_000_000_000_000_000);
        assert_eq!(c.unix_seconds(500_000_000), 1_000_000_000.5);
    }
}
