//! What the hot-update doctor costs, each figure beside its baseline in
//! one run:
//!
//! 1. Per map record in the consumer: map-update records through the
//!    dispatcher and the map aggregator, judged against a snapshot of
//!    1,000 maps all used by programs (the normal case) and all unused
//!    (every write counted as unreferenced), against the same records with
//!    no snapshot (nothing judged), the writer log alone, and decoding the
//!    header alone; interleaved rounds, medians. Needs no kernel.
//! 2. One snapshot of which programs use which maps (read at most once a
//!    second, and after each program load), with 1,000 extra maps and 100
//!    programs using 10 of them each on the host, against what the
//!    inventory already reads at every scrape (every map's and program's
//!    info). Needs root; skipped with a note otherwise.
//!
//! `cargo bench -p edgewatch --bench doctor [-- --rounds R]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{hint::black_box, sync::Arc, time::Instant};

use edgewatch::{
    aggregate::{self, doctor::WriteLog},
    pipeline::Dispatcher,
    probe::{self, Probe},
    scrape::refs::KernelRefs,
    telemetry::Telemetry,
    vocab::{
        clock::Clock,
        labels::OptInLabels,
        refs::{MapUse, RefSnapshot, RefSource, References},
        spans::SpanSink,
    },
};
use edgewatch_common::{Header, KIND_MAP_OP, MapOp};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

const MAPS: u32 = 1000;

/// 8,192 single updates over 1,000 maps from 16 writers.
fn records() -> Vec<Vec<u8>> {
    (0..8192u32)
        .map(|i| {
            let mut op: MapOp = bytemuck::Zeroable::zeroed();
            op.hdr.kind = KIND_MAP_OP;
            op.hdr.size = size_of::<MapOp>() as u16;
            op.hdr.ts_ns = 1;
            op.cmd = 2;
            op.count = 1;
            op.requested = 1;
            op.map_id = 1 + i % MAPS;
            op.map_type = 1;
            op.tgid = 100 + i % 16;
            let name = format!("m{}", op.map_id);
            op.map_name[..name.len()].copy_from_slice(name.as_bytes());
            op.comm[..5].copy_from_slice(b"agent");
            bytemuck::bytes_of(&op).to_vec()
        })
        .collect()
}

/// 1,000 maps, used by one program each or by none.
struct Fixed(u32);

impl RefSource for Fixed {
    fn read(&self, _: &mut Vec<String>) -> Result<RefSnapshot, String> {
        Ok(RefSnapshot {
            maps: (1..=MAPS)
                .map(|id| {
                    let m = MapUse {
                        name: Arc::from(format!("m{id}")),
                        map_type: 1,
                        programs: self.0,
                    };
                    (id, m)
                })
                .collect(),
        })
    }
}

fn dispatch_ns(refs: References, recs: &[Vec<u8>], rounds: usize) -> f64 {
    let mut registry = Registry::default();
    let telemetry = Telemetry::register(&mut registry);
    let ctx = aggregate::Context {
        labels: OptInLabels::default(),
        series_limit: 2000,
        series_dropped: telemetry.series_dropped.clone(),
        clock: Clock::fixed(0),
        spans: SpanSink::default(),
        refs,
        workloads: Default::default(),
    };
    let map: &'static dyn Probe = &probe::map::PROBE;
    let mut d = Dispatcher::new(vec![(map, map.build(&mut registry, &ctx))], telemetry);
    let start = Instant::now();
    for _ in 0..rounds {
        for r in recs {
            d.dispatch(r);
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * recs.len()) as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn decode_ns(recs: &[Vec<u8>], rounds: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        for r in recs {
            black_box(bytemuck::try_pod_read_unaligned::<Header>(&black_box(r)[..16]).ok());
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * recs.len()) as f64
}

fn write_log_ns(recs: &[Vec<u8>], rounds: usize) -> f64 {
    let ops: Vec<MapOp> = recs
        .iter()
        .map(|r| bytemuck::pod_read_unaligned(r))
        .collect();
    let names: Vec<Arc<str>> = ops
        .iter()
        .map(|o| Arc::from(format!("m{}", o.map_id)))
        .collect();
    let mut log = WriteLog::new(2000, 1024, Family::default());
    let start = Instant::now();
    for _ in 0..rounds {
        for (o, n) in ops.iter().zip(&names) {
            log.note(o.map_id, || n.clone(), o.tgid, o.hdr.ts_ns);
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * ops.len()) as f64
}

/// 1,000 maps and 100 programs using 10 of them each, held until dropped.
fn populate() -> (Vec<common::bpf::Map>, Vec<i32>) {
    let maps: Vec<_> = (0..1000)
        .map(|i| common::bpf::create(common::bpf::HASH, &format!("ewdb{i}"), 4, 4, 1, 0))
        .collect();
    let progs = (0..100)
        .map(|p| {
            let mut insns = Vec::new();
            for m in &maps[p * 10..p * 10 + 10] {
                insns.push(0x18 | (0x11 << 8) | (u64::from(m.fd as u32) << 32));
                insns.push(0);
            }
            insns.extend([0x0000_0002_0000_00b7, 0x95]);
            common::bpf::load_xdp(&format!("ewdbp{p}"), &insns)
        })
        .collect();
    (maps, progs)
}

fn main() {
    let recs = records();
    let rounds = 50;
    let samples = common::bench_arg("--rounds", 7);
    let judged =
        |programs| References::new(Box::new(Fixed(programs)), Clock::fixed(0), Box::new(|_| {}));
    let mut v: [Vec<f64>; 5] = Default::default();
    for _ in 0..samples {
        v[0].push(decode_ns(&recs, rounds));
        v[1].push(write_log_ns(&recs, rounds));
        v[2].push(dispatch_ns(References::default(), &recs, rounds));
        v[3].push(dispatch_ns(judged(1), &recs, rounds));
        v[4].push(dispatch_ns(judged(0), &recs, rounds));
    }
    let [decode, log, off, used, unused] = v.map(|mut s| median(&mut s));
    println!(
        "ns per map record ({} records x {rounds}, median of {samples} interleaved rounds):",
        recs.len()
    );
    println!("  header decode only (baseline): {decode:.1}");
    println!("  writer log alone (WriteLog::note): {log:.1}");
    println!("  dispatch + aggregate, no snapshot (nothing judged): {off:.1}");
    println!(
        "  dispatch + aggregate, judged, every map used: {used:.1} ({:+.1})",
        used - off
    );
    println!(
        "  dispatch + aggregate, judged, no map used (every write counted): {unused:.1} ({:+.1})",
        unused - off
    );

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("snapshot cost: skipped (needs root)");
        return;
    }
    let (_maps, progs) = populate();
    const READS: u32 = 200;
    let mut errors = Vec::new();
    let maps = KernelRefs.read(&mut errors).unwrap().maps.len();
    let programs = aya::programs::loaded_programs().count();
    let t = Instant::now();
    for _ in 0..READS {
        black_box(KernelRefs.read(&mut errors).unwrap());
    }
    let snapshot = t.elapsed() / READS;
    let t = Instant::now();
    for _ in 0..READS {
        black_box(aya::maps::loaded_maps().filter_map(Result::ok).count());
        black_box(
            aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .count(),
        );
    }
    let inventory = t.elapsed() / READS;
    println!(
        "{maps} maps, {programs} programs on this host: one snapshot {snapshot:?}; the inventory's map and program reads (every scrape, baseline) {inventory:?}"
    );
    for p in progs {
        common::bpf::close(p);
    }
}
