//! What edgewatch adds to a map update and to a connect(), on the wall
//! clock, side by side in one run with:
//! - nothing attached;
//! - the floor: empty programs on the same hooks (enter and exit of bpf()
//!   and connect(), tp_btf/inet_sock_set_state;
//!   exporter-ebpf/src/baseline.bpf.c);
//! - a bpftrace script that only counts by comm on the same hooks;
//! - edgewatch (`--probes connect,map`, default settings), and, with
//!   `--before PATH`, an older edgewatch binary in the same rounds.
//!
//! Loops (one thread): BPF_MAP_UPDATE_ELEM of one key of an array map;
//! a refused loopback connect() (socket, connect, close) in a network
//! namespace of its own. Cells of a round run back to back, rounds
//! alternate, medians are reported. Then, with BPF_ENABLE_STATS held for
//! that part only, each edgewatch program's own run time.
//!
//! sudo cargo bench -p edgewatch --bench hooks -- [--rounds 7] [--updates N]
//!     [--connects N] [--before /path/to/old/edgewatch]

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use aya::programs::{BtfTracePoint, TracePoint};
use common::{
    Edgewatch, Netns,
    bench::{Bpftrace, median, prog_delta, prog_ids_of, prog_stats, report_interference},
    bpf::{ARRAY, BPF_ANY, create, update},
};

/// The count-by-comm script on the same five hooks. Debian 12's bpftrace
/// (0.17) has no raw-tracepoint probes, so its socket hook is the classic
/// tracepoint (the kernel builds its record first), not tp_btf.
const BPFTRACE: &str = "tracepoint:syscalls:sys_enter_bpf { @a[comm] = count(); } \
    tracepoint:syscalls:sys_exit_bpf { @b[comm] = count(); } \
    tracepoint:syscalls:sys_enter_connect { @c[comm] = count(); } \
    tracepoint:syscalls:sys_exit_connect { @d[comm] = count(); } \
    tracepoint:sock:inet_sock_set_state { @e[comm] = count(); }";

/// ns per update of one key of `map`.
fn map_loop(map: &common::bpf::Map, n: u64) -> f64 {
    let k = 3u32.to_ne_bytes();
    let v = [1u8; 4];
    let start = Instant::now();
    for _ in 0..n {
        assert_eq!(update(map, &k, &v, BPF_ANY), 0);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// ns per refused connect() to 127.0.0.1:1 inside `ns`.
fn connect_loop(ns: &Netns, n: u64) -> f64 {
    ns.enter(move || {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 1u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let start = Instant::now();
        for _ in 0..n {
            // SAFETY: plain socket calls on a socket we own and close.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                assert!(fd >= 0);
                let rc = libc::connect(
                    fd,
                    std::ptr::from_ref(&addr).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                );
                assert_eq!(rc, -1);
                libc::close(fd);
            }
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

/// The floor: empty programs attached to the same five hooks.
struct Floor(#[expect(dead_code, reason = "held for its links")] aya::Ebpf);

fn floor() -> Floor {
    let mut bpf = aya::Ebpf::load(edgewatch_ebpf::baseline()).unwrap();
    for (prog, cat, name) in [
        ("ew_empty_bpf_in", "syscalls", "sys_enter_bpf"),
        ("ew_empty_bpf_out", "syscalls", "sys_exit_bpf"),
        ("ew_empty_conn_in", "syscalls", "sys_enter_connect"),
        ("ew_empty_connect", "syscalls", "sys_exit_connect"),
    ] {
        let p: &mut TracePoint = bpf.program_mut(prog).unwrap().try_into().unwrap();
        p.load().unwrap();
        p.attach(cat, name).unwrap();
    }
    let btf = aya::Btf::from_sys_fs().unwrap();
    let p: &mut BtfTracePoint = bpf
        .program_mut("ew_empty_state")
        .unwrap()
        .try_into()
        .unwrap();
    p.load("inet_sock_set_state", &btf).unwrap();
    p.attach().unwrap();
    Floor(bpf)
}

#[derive(Default)]
struct Cells {
    names: Vec<&'static str>,
    map: Vec<Vec<f64>>,
    conn: Vec<Vec<f64>>,
}

impl Cells {
    fn push(&mut self, i: usize, name: &'static str, m: f64, c: f64) {
        if self.names.len() <= i {
            self.names.push(name);
            self.map.push(Vec::new());
            self.conn.push(Vec::new());
        }
        self.map[i].push(m);
        self.conn[i].push(c);
    }
}

fn main() {
    if !common::privileged() {
        return;
    }
    let rounds: usize = common::bench_arg("--rounds", 7);
    let updates: u64 = common::bench_arg("--updates", 200_000);
    let connects: u64 = common::bench_arg("--connects", 20_000);
    let before: Option<String> =
        Some(common::bench_arg("--before", String::new())).filter(|s| !s.is_empty());
    println!("machine: {}", common::bench::machine());
    report_interference("hooks");

    let map = create(ARRAY, "ewbenchhook", 4, 4, 8, 0);
    let ns = Netns::new("hooks");
    map_loop(&map, updates / 10);
    connect_loop(&ns, connects / 10);

    let ew_args = ["--probes", "connect,map"];
    let mut cells = Cells::default();
    for r in 0..rounds {
        let mut i = 0;
        let mut cell = |cells: &mut Cells, name: &'static str| {
            let m = map_loop(&map, updates);
            let c = connect_loop(&ns, connects);
            cells.push(i, name, m, c);
            i += 1;
        };
        cell(&mut cells, "none");
        {
            let _f = floor();
            cell(&mut cells, "floor");
        }
        {
            let _bt = Bpftrace::start(BPFTRACE, 5);
            cell(&mut cells, "bpftrace");
        }
        if let Some(b) = &before {
            let _ew = Edgewatch::start_binary(b, &ew_args);
            cell(&mut cells, "before");
        }
        {
            let _ew = Edgewatch::start(&ew_args);
            cell(&mut cells, "edgewatch");
        }
        let row: Vec<String> = (0..cells.names.len())
            .map(|j| format!("{:.0}/{:.0}", cells.map[j][r], cells.conn[j][r]))
            .collect();
        println!("round {r}: {} (map/connect ns)", row.join("  "));
    }
    report_interference("hooks");

    let med_m: Vec<f64> = cells.map.iter().map(|v| median(v)).collect();
    let med_c: Vec<f64> = cells.conn.iter().map(|v| median(v)).collect();
    println!("\n| loop (one thread) | nothing attached | {} |", {
        cells.names[1..]
            .iter()
            .map(|n| format!("{n} added"))
            .collect::<Vec<_>>()
            .join(" | ")
    });
    println!("|---|---|{}", "---|".repeat(cells.names.len() - 1));
    for (label, med) in [
        ("BPF_MAP_UPDATE_ELEM, array map", &med_m),
        ("refused loopback connect() in a netns", &med_c),
    ] {
        let added: Vec<String> = med[1..]
            .iter()
            .map(|v| format!("+{:.0} ns", v - med[0]))
            .collect();
        println!("| {label} | {:.0} ns | {} |", med[0], added.join(" | "));
    }
    let idx = |n: &str| cells.names.iter().position(|x| *x == n).unwrap();
    for (label, med) in [("map update", &med_m), ("connect", &med_c)] {
        let ew = med[idx("edgewatch")] - med[0];
        let bt = med[idx("bpftrace")] - med[0];
        let fl = med[idx("floor")] - med[0];
        print!(
            "{label}: edgewatch/bpftrace added = {:.2}x; edgewatch/floor added = {:.2}x",
            ew / bt,
            ew / fl
        );
        if before.is_some() {
            print!(
                "; before/bpftrace added = {:.2}x",
                (med[idx("before")] - med[0]) / bt
            );
        }
        println!();
    }

    println!("\n## per program (BPF_ENABLE_STATS held for this part only)\n");
    // Whose programs: edgewatch's (by the fds its process holds), the
    // floor's (this process's ew_empty_*), bpftrace's (its process's).
    let me = std::process::id();
    let mut subjects: Vec<&str> = vec!["floor", "bpftrace", "edgewatch"];
    if before.is_some() {
        subjects.push("before");
    }
    for label in subjects {
        let _floor;
        let _bt;
        let _ew;
        let ids = match label {
            "floor" => {
                _floor = floor();
                prog_ids_of(me)
            }
            "bpftrace" => {
                _bt = Bpftrace::start(BPFTRACE, 5);
                prog_ids_of(_bt.pid())
            }
            "edgewatch" => {
                _ew = Edgewatch::start(&ew_args);
                prog_ids_of(_ew.pid())
            }
            _ => {
                _ew = Edgewatch::start_binary(before.as_deref().unwrap(), &ew_args);
                prog_ids_of(_ew.pid())
            }
        };
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        let s0 = prog_stats(&ids);
        map_loop(&map, updates);
        let s1 = prog_stats(&ids);
        connect_loop(&ns, connects);
        let s2 = prog_stats(&ids);
        for (what, a, b, n) in [
            ("map update", &s0, &s1, updates),
            ("connect", &s1, &s2, connects),
        ] {
            // Programs that ran at least once per event (a stray run of
            // the other loop's programs, from other processes, is left out).
            let d: Vec<_> = prog_delta(a, b)
                .into_iter()
                .filter(|(_, _, runs)| *runs >= n)
                .collect();
            let total: f64 = d.iter().map(|(_, ns, runs)| ns * *runs as f64).sum();
            let parts: Vec<String> = d
                .iter()
                .map(|(name, ns, runs)| {
                    format!("{name} {ns:.0} ns x {:.2}", *runs as f64 / n as f64)
                })
                .collect();
            println!(
                "- {label}, {what}: {:.0} ns per event in programs ({})",
                total / n as f64,
                parts.join(", ")
            );
        }
    }
}
