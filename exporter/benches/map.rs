//! Two figures for the map probe, each side by side with its baseline in
//! one run:
//!
//! 1. Added cost per BPF_MAP_UPDATE_ELEM syscall: nothing attached, then
//!    edgewatch (`--probes map`), then a count-only bpftrace one-liner on
//!    the same tracepoints, in rounds.
//! 2. Scrape cost of the map inventory with 1,000 maps on the host, empty
//!    and then holding 1,000 entries each (the cost must follow the number
//!    of maps, not of entries), against a scrape with no extra maps.
//!
//! sudo cargo bench -p edgewatch --bench map [-- --updates N --rounds R]
//!
//! With `--modes` instead: the probe's cost on each attach link the running
//! kernel takes (fentry, kprobe, tracepoint), as ratios; run in VMs by
//! `scripts/kernel-matrix --bench`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

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

struct Bpftrace(std::process::Child);

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The count-only bpftrace one-liner, started and attached.
fn bpftrace() -> Bpftrace {
    let mut child = Command::new("bpftrace")
        .args([
            "-e",
            "tracepoint:syscalls:sys_enter_bpf /args->cmd == 2/ { @[comm] = count(); } \
             tracepoint:syscalls:sys_exit_bpf { @x[comm] = count(); }",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bpftrace (Debian package bpftrace)");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("Attaching") => break,
            Some(_) => {}
            None => panic!("bpftrace exited"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Bpftrace(child)
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

/// (run time ns, runs) of edgewatch's map programs, whichever hook.
fn link_prog_stats() -> std::collections::HashMap<String, (u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            (name.starts_with("ew_map_")
                && !name.starts_with("ew_map_iter")
                && !name.starts_with("ew_map_elem"))
            .then(|| (name, (p.run_time().as_nanos() as u64, p.run_count())))
        })
        .collect()
}

/// `--modes`: the map probe's cost on each link of its attach chain this
/// kernel takes (fentry, kprobe, syscall tracepoints), as added ns per
/// update against no probe in the same round, and as ratios to the
/// tracepoint link. Meant for the kernel-matrix VMs, where emulation
/// inflates absolute times but not (much) their ratios.
fn modes(n: u64, rounds: usize) {
    let chain = common::kernel::kernel().map_chain();
    let links = common::kernel::links_to_test("map", &chain);
    let map = create(HASH, "ewbenchmode", 4, 4, 16, 0);
    measure(&map, n / 10);
    let release = &common::kernel::kernel().release;
    println!(
        "## map probe per attach link, kernel {release} ({n} updates per cell, {rounds} rounds)"
    );
    let mut added: Vec<Vec<f64>> = vec![Vec::new(); links.len()];
    let mut none_all = Vec::new();
    for r in 0..rounds {
        let none = measure(&map, n);
        none_all.push(none);
        let mut row = format!("round {r}: none {none:.0} ns");
        for (i, (link, extra)) in links.iter().enumerate() {
            let mut args = vec!["--probes", "map", "--bpf.enable-stats=false"];
            args.extend(extra.iter().map(String::as_str));
            let ew = Edgewatch::start(&args);
            let m = ew.scrape();
            assert_eq!(
                m.count(
                    "edgewatch_probe_attached",
                    &[("probe", "map"), ("mode", link.mode)]
                ),
                1,
                "{}",
                m.text
            );
            let with = measure(&map, n);
            drop(ew);
            added[i].push(with - none);
            row.push_str(&format!(", {} {with:.0} ns", link.mode));
        }
        println!("{row}");
    }
    let none = median(&mut none_all);
    let medians: Vec<f64> = added.iter_mut().map(|v| median(v)).collect();
    let tp = links
        .iter()
        .position(|(l, _)| l.mode == "tracepoint")
        .map(|i| medians[i])
        .unwrap_or(f64::NAN);
    println!("median: none {none:.0} ns per update");
    for ((link, _), m) in links.iter().zip(&medians) {
        println!(
            "  {:<10} +{m:.0} ns per update ({:.2}x none; {:.2}x the tracepoint link's added cost)",
            link.mode,
            (none + m) / none,
            m / tp
        );
    }
    println!("\n## the programs' own run time per link (BPF_ENABLE_STATS held for this part only)");
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let mut own = Vec::new();
    for (link, extra) in &links {
        let mut args = vec!["--probes", "map", "--bpf.enable-stats=false"];
        args.extend(extra.iter().map(String::as_str));
        let ew = Edgewatch::start(&args);
        let before = link_prog_stats();
        measure(&map, n);
        let after = link_prog_stats();
        drop(ew);
        let total: u64 = after
            .iter()
            .filter_map(|(k, v)| before.get(k).map(|b| v.0 - b.0))
            .sum();
        let per = total as f64 / n as f64;
        own.push(per);
        println!(
            "  {:<10} {per:.0} ns per update in the entry and exit programs",
            link.mode
        );
    }
    if let Some(tp_own) = links
        .iter()
        .position(|(l, _)| l.mode == "tracepoint")
        .map(|i| own[i])
    {
        for ((link, _), o) in links.iter().zip(&own) {
            println!(
                "  {:<10} {:.2}x the tracepoint programs' run time",
                link.mode,
                o / tp_own
            );
        }
    }
}

/// Before 6.6: the scrape cost of counting hash maps with the element
/// iterator, per slot (max_entries) walked: 32 hash maps of 16,384 slots
/// (524,288 slots), empty and then half full, scraped with
/// `--bpf.map-count-budget=0` (nothing walked) and with the default budget
/// (all walked).
fn count_cost() {
    if common::kernel::kernel().sum_elem_count {
        println!("\n## element counting: not used on this kernel (bpf_map_sum_elem_count)");
        return;
    }
    const MAPS: u32 = 32;
    const SLOTS: u32 = 16_384;
    let maps: Vec<_> = (0..MAPS)
        .map(|i| create(HASH, &format!("ewcc{i}"), 4, 4, SLOTS, 0))
        .collect();
    let walked = f64::from(MAPS * SLOTS);
    let cost = |label: &str| {
        let off = Edgewatch::start(&["--probes", "map", "--bpf.map-count-budget=0"]);
        let base = scrape_ms(&off, 10);
        drop(off);
        let on = Edgewatch::start(&["--probes", "map"]);
        let walk = scrape_ms(&on, 10);
        let m = on.scrape();
        drop(on);
        let exact = m.count("edgewatch_bpf_map_entries_exact", &[]);
        println!(
            "  {label}: scrape {base:.1} ms without walking, {walk:.1} ms walking {walked:.0} slots: {:.1} ns per slot ({exact} maps exact)",
            (walk - base) * 1e6 / walked
        );
    };
    println!("\n## element counting before 6.6 (median of 10 scrapes)");
    cost("empty");
    let v = [1u8; 4];
    for m in &maps {
        for k in 0..SLOTS / 2 {
            assert_eq!(update(m, &k.to_ne_bytes(), &v, BPF_ANY), 0);
        }
    }
    cost("half full");
}

fn main() {
    if !common::privileged() {
        return;
    }
    if std::env::args().any(|a| a == "--modes") {
        count_cost();
        modes(
            common::bench_arg("--updates", 20_000),
            common::bench_arg("--rounds", 5),
        );
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
        let ew = Edgewatch::start(&["--probes", "map", "--bpf.enable-stats=false"]);
        let with_ew = measure(&map, n);
        drop(ew);
        // Default configuration: BPF_ENABLE_STATS held, so every program
        // run on the host (edgewatch's two here) also reads the clock twice.
        let ew = Edgewatch::start(&["--probes", "map"]);
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
        let ew = Edgewatch::start(&["--probes", "map", "--bpf.enable-stats=false"]);
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
