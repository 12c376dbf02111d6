//! Cost per retransmit event in the probe, from the kernel's per-program
//! run-time statistics (BPF_ENABLE_STATS, held only for this run), side by
//! side with an empty program attached to the same tracepoint during the
//! same transfer (same events, nothing done).
//!
//! sudo cargo bench -p edgewatch --bench retransmit [-- --fallback]
//!
//! Two network namespaces, a veth pair with TSO/GSO off, 3% of the data
//! segments dropped by nftables at the receiver, 32 MiB sent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
};

use aya::{Ebpf, programs::TracePoint};
use common::{Edgewatch, Netns, test_subnet, veth_pair};

/// (run time, run count) of loaded programs named `name` (the kernel keeps
/// the first 15 bytes of a name).
fn stats(name: &str) -> (u64, u64) {
    let name = &name[..name.len().min(15)];
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn main() {
    if !common::privileged() {
        return;
    }
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let a = Netns::new("brta");
    let b = Netns::new("brtb");
    let net = test_subnet(7);
    let (a_ip, b_ip) = (format!("{net}.1"), format!("{net}.2"));
    veth_pair(&a, "ewbr0", &a_ip, &b, "ewbr1", &b_ip);
    for (ns, dev) in [(&a, "ewbr0"), (&b, "ewbr1")] {
        ns.exec(&[
            "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
        ]);
    }
    b.exec(&["nft", "add", "table", "inet", "ewloss"]);
    b.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "ewloss",
        "in",
        "{ type filter hook input priority 0; }",
    ]);
    b.exec(&[
        "nft", "add", "rule", "inet", "ewloss", "in", "tcp", "dport", "5001", "numgen", "random",
        "mod", "100", "<", "3", "drop",
    ]);

    let mut baseline = Ebpf::load(edgewatch_ebpf::baseline()).expect("baseline object");
    let empty: &mut TracePoint = baseline
        .program_mut("ew_empty_rtx")
        .unwrap()
        .try_into()
        .unwrap();
    empty.load().unwrap();
    empty.attach("tcp", "tcp_retransmit_skb").unwrap();
    // --fallback measures the classic tracepoint path instead of tp_btf.
    let fallback = std::env::args().any(|a| a == "--fallback");
    let mut args = vec!["--probes", "retransmit"];
    if fallback {
        args.push("--attach.disable=tp_btf");
    }
    let _ew = Edgewatch::start(&args);

    let (p0, e0) = (stats("ew_retransmit_skb"), stats("ew_empty_rtx"));
    const BYTES: usize = 32 << 20;
    let listener = b.enter({
        let b_ip = b_ip.clone();
        move || TcpListener::bind((b_ip.as_str(), 5001)).unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        while total < BYTES {
            total += s.read(&mut buf).unwrap();
        }
    });
    a.enter(move || {
        let mut s = TcpStream::connect((b_ip.as_str(), 5001)).unwrap();
        let chunk = vec![0u8; BYTES];
        s.write_all(&chunk).unwrap();
    });
    server.join().unwrap();
    let (p1, e1) = (stats("ew_retransmit_skb"), stats("ew_empty_rtx"));

    let (pt, pn) = (p1.0 - p0.0, p1.1 - p0.1);
    let (et, en) = (e1.0 - e0.0, e1.1 - e0.1);
    let per = |t: u64, n: u64| {
        if n == 0 {
            f64::NAN
        } else {
            t as f64 / n as f64
        }
    };
    println!(
        "edgewatch path: {}",
        if fallback { "tracepoint" } else { "tp_btf" }
    );
    println!("program              runs   run_time_ns   ns_per_event");
    println!(
        "ew_retransmit_skb  {pn:>6}  {pt:>12}  {:>13.0}",
        per(pt, pn)
    );
    println!(
        "ew_empty_rtx       {en:>6}  {et:>12}  {:>13.0}",
        per(et, en)
    );
    println!(
        "edgewatch probe / empty program: {:.2}x ({:.0} ns added per event)",
        per(pt, pn) / per(et, en),
        per(pt, pn) - per(et, en)
    );
}
