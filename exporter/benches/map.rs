//! Two figures for the map probe, each side by side with its baseline in
//! one run:
//!
//! 1. Added cost per BPF_MAP_UPDATE_ELEM syscall: nothing attached, then
//!    edgewatch (`--probes map`), then a count-only bpftrace one-liner on
//!    the same tracepoints, in rounds (exporter/benches/hooks.rs compares
//!    both probes with bpftrace and the floor on all five hooks).
//! 2. Scrape cost of the map inventory with 1,000 maps on the host, empty
//!    and then holding 1,000 entries each (the cost must follow the number
//!    of maps, not of entries), against a scrape with no extra maps.
//!
//! sudo cargo bench -p edgewatch --bench map [-- --updates N --rounds R]

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{
    Edgewatch,
    bpf::{BPF_ANY, HASH, create, update},
};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// ns per update of one key of `map`.
fn measure(map: &common::bpf::Map, n: u64) -> f64 {
    let k = 7u32.to_ne_bytes();
    let v = [1u8; 4];
    let start = Instant::now();
    for _ in 0..n {
        assert_eq!(update(map, &k, &v, BPF_ANY), 0);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// The count-only bpftrace one-liner, started and really attached (both
/// tracepoints listed by `bpftool perf show` for its pid).
fn bpftrace() -> common::bench::Bpftrace {
    common::bench::Bpftrace::start(
        "tracepoint:syscalls:sys_enter_bpf /args->cmd == 2/ { @[comm] = count(); } \
         tracepoint:syscalls:sys_exit_bpf { @x[comm] = count(); }",
        2,
    )
}

/// (run time ns, runs) of edgewatch's map tracepoint programs.
fn prog_stats() -> std::collections::HashMap<String, (u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with("ew_map_tp_")
                .then(|| (name, (p.run_time().as_nanos() as u64, p.run_count())))
        })
        .collect()
}

fn scrape_ms(ew: &Edgewatch, n: usize) -> f64 {
    let mut t = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let body = ew.get("/metrics");
        t.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(body.contains("edgewatch_bpf_map_info"));
    }
    median(&mut t)
}

fn main() {
    if !common::privileged() {
        return;
    }
    let n = common::bench_arg("--updates", 200_000);
    let rounds = common::bench_arg("--rounds", 5);
    let map = create(HASH, "ewbenchupd", 4, 4, 16, 0);
    measure(&map, n / 10);

    println!("## per BPF_MAP_UPDATE_ELEM ({n} updates per cell)");
    println!("round  none_ns  edgewatch_ns  edgewatch+stats_ns  bpftrace_ns");
    let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let none = measure(&map, n);
        let ew = Edgewatch::start(&["--probes", "map"]);
        let with_ew = measure(&map, n);
        drop(ew);
        // BPF_ENABLE_STATS held (off by default): every program run on the
        // host (edgewatch's two here) also reads the clock twice.
        let ew = Edgewatch::start(&["--probes", "map", "--bpf.enable-stats=true"]);
        let with_stats = measure(&map, n);
        drop(ew);
        let bt = bpftrace();
        let with_bt = measure(&map, n);
        drop(bt);
        println!("{r:>5}  {none:>7.0}  {with_ew:>12.0}  {with_stats:>18.0}  {with_bt:>11.0}");
        a.push(none);
        b.push(with_ew);
        c.push(with_bt);
        d.push(with_stats);
    }
    let (a, b, c, d) = (
        median(&mut a),
        median(&mut b),
        median(&mut c),
        median(&mut d),
    );
    println!(
        "median: none {a:.0} ns, edgewatch {b:.0} ns (+{:.0} ns, {:.2}x), edgewatch+stats {d:.0} ns (+{:.0} ns, {:.2}x), bpftrace {c:.0} ns (+{:.0} ns, {:.2}x)",
        b - a,
        b / a,
        d - a,
        d / a,
        c - a,
        c / a
    );

    println!("\n## the probe programs' own run time (BPF_ENABLE_STATS held for this part only)");
    {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        let ew = Edgewatch::start(&["--probes", "map"]);
        let before = prog_stats();
        measure(&map, n);
        let after = prog_stats();
        drop(ew);
        for (name, (t0, c0)) in &before {
            let (t1, c1) = after[name];
            println!(
                "{name}: {:.0} ns per run over {} runs",
                (t1 - t0) as f64 / (c1 - c0).max(1) as f64,
                c1 - c0
            );
        }
        let total: u64 = after.iter().map(|(k, v)| v.0 - before[k].0).sum();
        println!("together: {:.0} ns per update", total as f64 / n as f64);
    }

    println!("\n## inventory scrape (median of 30 scrapes)");
    let ew = Edgewatch::start(&["--probes", "map"]);
    let base = scrape_ms(&ew, 30);
    let maps: Vec<_> = (0..1000)
        .map(|i| create(HASH, &format!("ewb{i}"), 4, 4, 1024, 0))
        .collect();
    let empty = scrape_ms(&ew, 30);
    let v = [1u8; 4];
    for m in &maps {
        for k in 0..1000u32 {
            assert_eq!(update(m, &k.to_ne_bytes(), &v, BPF_ANY), 0);
        }
    }
    let full = scrape_ms(&ew, 30);
    // Empty them again: if the scrape got slower because of the entries,
    // it gets faster again; if it was drift, it does not.
    for m in &maps {
        for k in 0..1000u32 {
            assert_eq!(common::bpf::delete(m, &k.to_ne_bytes()), 0);
        }
    }
    let emptied = scrape_ms(&ew, 30);
    let body = ew.get("/metrics");
    let series = body
        .lines()
        .filter(|l| l.starts_with("edgewatch_bpf_map_entries{"))
        .count();
    println!("no extra maps: {base:.2} ms");
    println!("1,000 empty hash maps: {empty:.2} ms");
    println!("1,000 hash maps x 1,000 entries: {full:.2} ms ({series} entries series)");
    println!("the same maps emptied again: {emptied:.2} ms");
    println!(
        "per map: {:.1} us; full/empty: {:.2}x",
        (empty - base) * 1e3 / 1000.0,
        full / empty
    );
}
