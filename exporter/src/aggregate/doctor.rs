//! The hot-update doctor: map writes that cannot take effect. For every
//! map update and delete, whether any loaded program uses the map at that
//! moment (judged by the snapshot in vocab::refs, which says when it is
//! re-read and how late an unload can be seen); how many distinct
//! processes write each map over a sliding window; and stale twins,
//! written maps that no program uses while a newer map of the same name
//! is used: the reload bug, where a data plane was reloaded with new maps
//! and a control plane still writes the old ones.
//!
//! - `edgewatch_bpf_map_unreferenced_writes_total{map_id,map_name,map_type,comm}`:
//!   elements written (updated or deleted, result ok) to maps that no
//!   loaded program used at that moment. struct_ops maps are left out (a
//!   struct_ops map holds programs rather than being used by them).
//! - `edgewatch_bpf_map_programs{map_id,map_name}`: programs that use each
//!   map on the host, read at scrape time.
//! - `edgewatch_bpf_map_writers{map_id,map_name}`: distinct writer
//!   processes (tgids) of each map over the last [`WINDOW_NS`], counting
//!   every update and delete call whatever its result.
//! - `edgewatch_bpf_map_stale_twin{map_id,map_name,successor_id}` 1: maps
//!   written within the window, used by no program, with a newer used map
//!   of the same name (`successor_id`).
//!
//! Worst-case series: unreferenced writes capped at `metrics.series_limit`
//! label sets (past it, map_id, map_name and comm read `_overflow`);
//! programs, 1 per map on the host; writers and stale twins, 1 per map
//! written within the window, with at most `metrics.series_limit` maps
//! and [`MAX_WRITERS_PER_MAP`] writers per map tracked (past them, new
//! ones are counted in `edgewatch_series_dropped_total{metric}`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use edgewatch_common::MapOp;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::Counter, family::Family, gauge::ConstGauge},
    registry::Registry,
};

use super::{Context, map::MapLabels};
use crate::vocab::{
    clock::Clock,
    kernel::name_label,
    labels::{Foldable, MetricLabel, OVERFLOW, SeriesCap},
    refs::References,
};

/// The writers' sliding window, and how long a map counts as written.
pub const WINDOW_NS: u64 = 300 * 1_000_000_000;
/// Distinct writers tracked per map, at most.
pub const MAX_WRITERS_PER_MAP: usize = 1024;
/// enum bpf_map_type BPF_MAP_TYPE_STRUCT_OPS.
const STRUCT_OPS: u32 = 26;

pub const WRITERS: &str = "edgewatch_bpf_map_writers";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnreferencedLabels {
    pub map_id: Arc<str>,
    pub map_name: Arc<str>,
    pub map_type: &'static str,
    pub comm: Arc<str>,
}

impl Foldable for UnreferencedLabels {
    fn folded(&self) -> Self {
        Self {
            map_id: Arc::from(OVERFLOW),
            map_name: Arc::from(OVERFLOW),
            map_type: self.map_type,
            comm: Arc::from(OVERFLOW),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TwinLabels {
    map_id: String,
    map_name: Arc<str>,
    successor_id: String,
}

#[derive(Debug)]
struct Written {
    name: Arc<str>,
    /// tgid -> when it last wrote (CLOCK_MONOTONIC ns).
    writers: HashMap<u32, u64>,
}

/// Who wrote which map, and when, over the sliding window.
#[derive(Debug)]
pub struct WriteLog {
    maps: HashMap<u32, Written>,
    max_maps: usize,
    max_writers: usize,
    dropped: Family<MetricLabel, Counter>,
}

impl WriteLog {
    pub fn new(max_maps: usize, max_writers: usize, dropped: Family<MetricLabel, Counter>) -> Self {
        Self {
            maps: HashMap::new(),
            max_maps,
            max_writers,
            dropped,
        }
    }

    /// `tgid` wrote map `id` at `ts`.
    pub fn note(&mut self, id: u32, name: impl FnOnce() -> Arc<str>, tgid: u32, ts: u64) {
        if !self.maps.contains_key(&id) && self.maps.len() >= self.max_maps {
            self.expire(ts);
        }
        let full = self.maps.len() >= self.max_maps;
        let entry = match self.maps.get_mut(&id) {
            Some(w) => w,
            None if full => return self.drop_one(),
            None => self.maps.entry(id).or_insert_with(|| Written {
                name: name(),
                writers: HashMap::new(),
            }),
        };
        if let Some(last) = entry.writers.get_mut(&tgid) {
            *last = (*last).max(ts);
            return;
        }
        if entry.writers.len() >= self.max_writers {
            entry.writers.retain(|_, &mut last| !expired(last, ts));
            if entry.writers.len() >= self.max_writers {
                return self.drop_one();
            }
        }
        entry.writers.insert(tgid, ts);
    }

    fn drop_one(&self) {
        self.dropped
            .get_or_create(&MetricLabel { metric: WRITERS })
            .inc();
    }

    /// Forgets writes older than the window at `now`.
    pub fn expire(&mut self, now: u64) {
        self.maps.retain(|_, w| {
            w.writers.retain(|_, &mut last| !expired(last, now));
            !w.writers.is_empty()
        });
    }

    /// (map id, name, distinct writers) of every map written within the
    /// window, by id.
    pub fn live(&self) -> Vec<(u32, Arc<str>, usize)> {
        let mut out: Vec<_> = self
            .maps
            .iter()
            .map(|(&id, w)| (id, w.name.clone(), w.writers.len()))
            .collect();
        out.sort_by_key(|(id, _, _)| *id);
        out
    }
}

fn expired(last: u64, now: u64) -> bool {
    last.saturating_add(WINDOW_NS) < now
}

/// The doctor's part of the map aggregator.
pub struct Doctor {
    refs: References,
    log: Arc<Mutex<WriteLog>>,
    unreferenced: Family<UnreferencedLabels, Counter>,
    cap: SeriesCap<UnreferencedLabels>,
    own_tgid: u32,
}

impl Doctor {
    /// Registers the unreferenced-writes counter and the collector of the
    /// programs, writers and stale-twin gauges.
    pub fn register(registry: &mut Registry, ctx: &Context) -> Self {
        let unreferenced = Family::<UnreferencedLabels, Counter>::default();
        registry.register(
            "edgewatch_bpf_map_unreferenced_writes",
            "Elements written to (updated in or deleted from) BPF maps that no loaded program used at that moment: writes that cannot take effect, by writer",
            unreferenced.clone(),
        );
        let log = Arc::new(Mutex::new(WriteLog::new(
            ctx.series_limit,
            MAX_WRITERS_PER_MAP,
            ctx.series_dropped.clone(),
        )));
        registry.register_collector(Box::new(DoctorCollector {
            refs: ctx.refs.clone(),
            log: log.clone(),
            clock: ctx.clock,
        }));
        Self {
            refs: ctx.refs.clone(),
            log,
            unreferenced,
            cap: ctx.cap("edgewatch_bpf_map_unreferenced_writes_total"),
            own_tgid: std::process::id(),
        }
    }

    /// One update or delete call on a resolved map (`op.map_id != 0`),
    /// of which `ok` elements took effect.
    ///
    /// On the consumer's hot path: label strings are built only for a
    /// write that is counted as unreferenced.
    pub fn on_write(&mut self, op: &MapOp, ok: u64, map_type: &'static str) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).note(
            op.map_id,
            || name_label(&op.map_name),
            op.tgid,
            op.hdr.ts_ns,
        );
        if ok == 0 || u32::from(op.map_type) == STRUCT_OPS {
            return;
        }
        let Some(snapshot) = self.refs.judge_at(op.hdr.ts_ns) else {
            return; // no usable snapshot: judge nothing rather than guess
        };
        if snapshot.programs(op.map_id) > 0 {
            return;
        }
        let l = self.cap.admit(UnreferencedLabels {
            map_id: Arc::from(op.map_id.to_string()),
            map_name: name_label(&op.map_name),
            map_type,
            comm: name_label(&op.comm),
        });
        self.unreferenced.get_or_create(&l).inc_by(ok);
    }

    /// Some process loaded a program, bound one to a map, or changed a
    /// link: which programs use which maps may have changed; re-read before
    /// the next write is judged. edgewatch's own calls (the inventory's
    /// iterator link at every scrape) change nothing.
    pub fn on_change(&mut self, tgid: u32) {
        if tgid != self.own_tgid {
            self.refs.changed();
        }
    }
}

/// The gauges, read at scrape time.
#[derive(Debug)]
struct DoctorCollector {
    refs: References,
    log: Arc<Mutex<WriteLog>>,
    clock: Clock,
}

impl Collector for DoctorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.refs.current();
        let written = {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            log.expire(self.clock.monotonic_ns());
            log.live()
        };

        let mut f = encoder.encode_descriptor(
            "edgewatch_bpf_map_programs",
            "Loaded BPF programs that use each map (its id is in their map_ids, or it is an inner map of a map-in-map that is).",
            None,
            MetricType::Gauge,
        )?;
        if let Some(s) = &snapshot {
            let mut maps: Vec<_> = s.maps.iter().collect();
            maps.sort_by_key(|(id, _)| **id);
            for (id, m) in maps {
                let l = MapLabels {
                    map_id: Arc::from(id.to_string()),
                    map_name: m.name.clone(),
                };
                ConstGauge::new(i64::from(m.programs)).encode(f.encode_family(&l)?)?;
            }
        }

        let mut f = encoder.encode_descriptor(
            WRITERS,
            "Distinct processes that updated or deleted elements of each map in the last 5 minutes.",
            None,
            MetricType::Gauge,
        )?;
        for (id, name, n) in &written {
            let l = MapLabels {
                map_id: Arc::from(id.to_string()),
                map_name: name.clone(),
            };
            ConstGauge::new(*n as i64).encode(f.encode_family(&l)?)?;
        }

        let mut f = encoder.encode_descriptor(
            "edgewatch_bpf_map_stale_twin",
            "1 for each map written in the last 5 minutes that no program uses while a newer map of the same name (successor_id) is used: a writer still holds the map a reload replaced.",
            None,
            MetricType::Gauge,
        )?;
        if let Some(s) = &snapshot {
            for (id, name, _) in &written {
                if let Some(successor) = s.successor(*id) {
                    let l = TwinLabels {
                        map_id: id.to_string(),
                        map_name: name.clone(),
                        successor_id: successor.to_string(),
                    };
                    ConstGauge::new(1i64).encode(f.encode_family(&l)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytemuck::Zeroable;

    use super::*;
    use crate::vocab::{
        labels::OptInLabels,
        refs::{MapUse, RefSnapshot, RefSource},
        spans::SpanSink,
    };

    const S: u64 = 1_000_000_000;

    /// Map 1 is used by a program, map 2 by none; map 3 is struct_ops.
    struct Fixed(bool);

    impl RefSource for Fixed {
        fn read(&self, _: &mut Vec<String>) -> Result<RefSnapshot, String> {
            if !self.0 {
                return Err("unreadable".into());
            }
            let m = |programs, map_type| MapUse {
                name: Arc::from("m"),
                map_type,
                programs,
            };
            Ok(RefSnapshot {
                maps: [(1, m(1, 1)), (2, m(0, 1)), (3, m(0, STRUCT_OPS))].into(),
            })
        }
    }

    fn doctor(readable: bool) -> (Doctor, Registry) {
        let mut registry = Registry::default();
        let ctx = Context {
            labels: OptInLabels::default(),
            series_limit: 10,
            series_dropped: Family::default(),
            clock: Clock::fixed(0),
            spans: SpanSink::default(),
            refs: References::new(Box::new(Fixed(readable)), Clock::fixed(0), Box::new(|_| {})),
            workloads: Default::default(),
        };
        (Doctor::register(&mut registry, &ctx), registry)
    }

    fn write(d: &mut Doctor, map_id: u32, map_type: u16, ok: u64) {
        let mut op = MapOp::zeroed();
        op.map_id = map_id;
        op.map_type = map_type;
        op.tgid = 42;
        op.comm[..5].copy_from_slice(b"agent");
        op.map_name[0] = b'm';
        d.on_write(&op, ok, "hash");
    }

    fn unreferenced(d: &Doctor, map_id: u32) -> u64 {
        d.unreferenced
            .get_or_create(&UnreferencedLabels {
                map_id: Arc::from(map_id.to_string()),
                map_name: Arc::from("m"),
                map_type: "hash",
                comm: Arc::from("agent"),
            })
            .get()
    }

    #[test]
    fn counts_effective_writes_to_maps_no_program_uses() {
        let (mut d, _registry) = doctor(true);
        write(&mut d, 1, 1, 3); // used
        write(&mut d, 2, 1, 4); // unused
        write(&mut d, 2, 1, 0); // unused, but nothing took effect
        write(&mut d, 9, 1, 2); // created after the snapshot: unused
        write(&mut d, 3, STRUCT_OPS as u16, 1); // struct_ops: left out
        assert_eq!(unreferenced(&d, 1), 0);
        assert_eq!(unreferenced(&d, 2), 4);
        assert_eq!(unreferenced(&d, 9), 2);
        assert_eq!(unreferenced(&d, 3), 0);
        // Every call counts as a write for the writers gauge.
        let live = d.log.lock().unwrap().live();
        assert_eq!(
            live.iter().map(|(id, _, n)| (*id, *n)).collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (3, 1), (9, 1)]
        );
    }

    #[test]
    fn without_a_snapshot_nothing_is_judged() {
        let (mut d, _registry) = doctor(false);
        write(&mut d, 2, 1, 4);
        assert_eq!(unreferenced(&d, 2), 0);
    }

    fn log(max_maps: usize, max_writers: usize) -> (WriteLog, Family<MetricLabel, Counter>) {
        let dropped = Family::<MetricLabel, Counter>::default();
        (
            WriteLog::new(max_maps, max_writers, dropped.clone()),
            dropped,
        )
    }

    fn dropped(f: &Family<MetricLabel, Counter>) -> u64 {
        f.get_or_create(&MetricLabel { metric: WRITERS }).get()
    }

    #[test]
    fn counts_distinct_writers_over_the_window() {
        let (mut l, d) = log(10, 10);
        let a: Arc<str> = Arc::from("a");
        l.note(1, || a.clone(), 100, 10 * S);
        l.note(1, || a.clone(), 100, 20 * S);
        l.note(1, || a.clone(), 200, 30 * S);
        l.note(2, || a.clone(), 100, 30 * S);
        assert_eq!(l.live(), vec![(1, a.clone(), 2), (2, a.clone(), 1)]);
        // Writer 100 of map 1 last wrote at 20 s: gone 300 s later.
        l.expire(20 * S + WINDOW_NS + 1);
        assert_eq!(l.live(), vec![(1, a.clone(), 1), (2, a.clone(), 1)]);
        l.expire(30 * S + WINDOW_NS + 1);
        assert!(l.live().is_empty());
        assert_eq!(dropped(&d), 0);
    }

    #[test]
    fn bounded_in_maps_and_writers() {
        let (mut l, d) = log(2, 2);
        let a: Arc<str> = Arc::from("a");
        l.note(1, || a.clone(), 1, S);
        l.note(2, || a.clone(), 1, S);
        l.note(3, || a.clone(), 1, S); // a third map: not tracked
        l.note(1, || a.clone(), 2, S);
        l.note(1, || a.clone(), 3, S); // a third writer: not tracked
        assert_eq!(l.live(), vec![(1, a.clone(), 2), (2, a.clone(), 1)]);
        assert_eq!(dropped(&d), 2);
        // Room comes back once old writes expire.
        l.note(3, || a.clone(), 1, S + WINDOW_NS + 1);
        assert_eq!(l.live(), vec![(3, a.clone(), 1)]);
        assert_eq!(dropped(&d), 2);
    }
}
