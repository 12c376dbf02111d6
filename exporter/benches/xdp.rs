//! ns per packet of edgewatch's XDP program through BPF_PROG_TEST_RUN
//! (64-byte frame, repeat), side by side in one run with an empty XDP_PASS
//! program, in alternating rounds; and the tax of BPF_ENABLE_STATS on both.
//!
//! sudo cargo bench -p edgewatch --bench xdp -- [--repeat N] [--rounds R]
//!     [--before /path/to/old/edgewatch]
//!
//! The program measured is the one edgewatch attaches: edgewatch runs in a
//! network namespace with its datapath on that namespace's loopback (the
//! device test_run delivers on, so every run is counted) and a blocklist of
//! 1,000 prefixes (990 IPv4 /24 and 10 /32); the benchmark runs its frames
//! through that program by id. Cases: a source the list does not match; a
//! source inside one of the /24s (decided by the pre-filter); a source
//! equal to one of the /32s (the pre-filter sends it to the trie). With
//! `--before`, an older edgewatch binary in the same rounds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::Write;

use common::{
    Edgewatch, Netns,
    bench::{machine, median, report_interference},
    bpf::{load_prog, prog_fd_by_id, prog_id_of, test_run_frame},
    frames::{ether, ipv4},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn frame(src: [u8; 4]) -> Vec<u8> {
    let mut f = ether(&[], 0x0800, &ipv4(src, 17, 8 + 22));
    f.resize(64, 0);
    f
}

fn blocklist() -> String {
    let mut s = String::new();
    for i in 0..990u32 {
        s.push_str(&format!("100.{}.{}.0/24\n", 64 + i / 256, i % 256));
    }
    for i in 0..10u32 {
        s.push_str(&format!("203.0.113.{}/32\n", 10 + i));
    }
    s
}

/// Starts `binary` (None: this build) in `ns` with the datapath on lo.
fn start(ns: &Netns, binary: Option<&str>, list: &str) -> (Edgewatch, u32) {
    let args = [
        "--probes",
        "connect",
        "--xdp.interface",
        "lo",
        "--xdp.mode",
        "skb",
        "--xdp.blocklist-file",
        list,
    ];
    let ew = match binary {
        None => Edgewatch::start_in(ns, &args),
        Some(b) => Edgewatch::start_binary_in(ns, b, &args),
    };
    // `ip netns exec` execs the binary: the pid is edgewatch's.
    let id = prog_id_of(ew.pid(), "ew_xdp");
    (ew, id)
}

fn main() {
    if !common::privileged() {
        return;
    }
    let repeat: u32 = common::bench_arg("--repeat", 5_000_000);
    let rounds: usize = common::bench_arg("--rounds", 7);
    let before: Option<String> =
        Some(common::bench_arg("--before", String::new())).filter(|s| !s.is_empty());
    println!("machine: {}", machine());
    report_interference("xdp");

    let ns = Netns::new("xdpb");
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocklist.txt");
    std::fs::File::create(&list)
        .unwrap()
        .write_all(blocklist().as_bytes())
        .unwrap();
    let list = list.to_str().unwrap().to_string();
    let (_ew, ew_id) = start(&ns, None, &list);
    // One XDP program per device: the older binary gets a namespace of its
    // own. test_run delivers on the loopback of the caller's namespace,
    // ifindex 1 in every namespace, which both have a counter slot for.
    let ns_old = Netns::new("xdpo");
    let old = before.as_deref().map(|b| start(&ns_old, Some(b), &list));

    let cases: [(&str, [u8; 4], u32); 3] = [
        ("no match", [10, 99, 0, 1], XDP_PASS),
        ("match, /24", [100, 65, 7, 9], XDP_DROP),
        ("match, /32", [203, 0, 113, 15], XDP_DROP),
    ];
    let old_id = old.as_ref().map(|(_, id)| *id);
    let results = ns.enter(move || {
        let empty = load_prog("ewbenchpass");
        let ew = prog_fd_by_id(ew_id);
        let old = old_id.map(prog_fd_by_id);
        // (label, fd, frame, expected)
        let mut cells: Vec<(String, i32, Vec<u8>, u32)> = Vec::new();
        cells.push((
            "empty XDP_PASS".into(),
            empty,
            frame([10, 99, 0, 1]),
            XDP_PASS,
        ));
        for (label, src, want) in cases {
            cells.push((format!("edgewatch, {label}"), ew.0, frame(src), want));
            if let Some(o) = &old {
                cells.push((format!("before, {label}"), o.0, frame(src), want));
            }
        }
        let mut ns_per: Vec<Vec<f64>> = vec![Vec::new(); cells.len()];
        let mut with_stats: Vec<Vec<f64>> = vec![Vec::new(); 2];
        for _ in 0..rounds {
            for (i, (label, fd, f, want)) in cells.iter().enumerate() {
                let (ret, ns) = test_run_frame(*fd, f, repeat);
                assert_eq!(ret, *want, "{label}");
                ns_per[i].push(f64::from(ns));
            }
            // The stats tax: the empty program and edgewatch's no-match
            // path with BPF_ENABLE_STATS held.
            let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
            for (j, i) in [0usize, 1].into_iter().enumerate() {
                let (_, fd, f, _) = &cells[i];
                let (_, ns) = test_run_frame(*fd, f, repeat);
                with_stats[j].push(f64::from(ns));
            }
        }
        // SAFETY: closing the fd load_prog returned.
        unsafe { libc::close(empty) };
        (
            cells.into_iter().map(|c| c.0).collect::<Vec<_>>(),
            ns_per,
            with_stats,
        )
    });
    report_interference("xdp");
    let (labels, ns_per, with_stats) = results;
    let base = median(&ns_per[0]);
    println!("\nrepeat {repeat} per cell, 64-byte frame, {rounds} rounds (medians)\n");
    println!("| program, case | ns per packet | vs empty XDP_PASS |");
    println!("|---|---|---|");
    for (label, v) in labels.iter().zip(&ns_per) {
        let m = median(v);
        println!("| {label} | {m:.0} | {:.2}x |", m / base);
    }
    let (e_on, w_on) = (median(&with_stats[0]), median(&with_stats[1]));
    let w_off = median(&ns_per[1]);
    println!("\n| BPF_ENABLE_STATS | empty XDP_PASS (ns) | edgewatch, no match (ns) |");
    println!("|---|---|---|");
    println!("| off | {base:.0} | {w_off:.0} |");
    println!(
        "| on | {e_on:.0} (+{:.0}) | {w_on:.0} (+{:.0}) |",
        e_on - base,
        w_on - w_off
    );
}
