//! ns per packet of the edgewatch XDP program through BPF_PROG_TEST_RUN
//! with repeat, side by side with an empty XDP_PASS program in the same run
//! (exporter-ebpf/src/baseline.bpf.c), in alternating rounds.
//!
//! sudo cargo bench -p edgewatch --bench xdp [-- --repeat N --rounds R]
//!
//! The frame is a 64-byte Ethernet/IPv4/UDP packet; the edgewatch program
//! counts it (its slot is set for the loopback ifindex test_run uses) and
//! looks its source up in an IPv4 blocklist of 1,000 prefixes that do not
//! match: the full per-packet path of a passed packet.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{TestRun, TestRunOptions, Xdp},
};
use common::frames::{ether, ipv4};

fn ns_per_run(prog: &Xdp, frame: &[u8], repeat: u32) -> u128 {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.repeat = repeat;
    let r = prog.test_run(opts).expect("test_run");
    assert_eq!(r.return_value, 2, "XDP_PASS");
    // The kernel reports the mean duration of one run.
    r.duration.as_nanos()
}

fn main() {
    if !common::privileged() {
        return;
    }
    let repeat = common::bench_arg("--repeat", 5_000_000);
    let rounds = common::bench_arg("--rounds", 5);

    let mut ew = Ebpf::load(edgewatch_ebpf::xdp()).unwrap();
    let mut slots: HashMap<MapData, u32, u32> =
        HashMap::try_from(ew.take_map("ew_xdp_ifslot").unwrap()).unwrap();
    slots.insert(1, 0, 0).unwrap();
    let mut v4: LpmTrie<MapData, [u8; 4], u8> =
        LpmTrie::try_from(ew.take_map("ew_block_v4").unwrap()).unwrap();
    for i in 0..1000u32 {
        v4.insert(
            &Key::new(24, [192, 0, (i / 256) as u8, (i % 256) as u8]),
            1,
            0,
        )
        .unwrap();
    }
    let prog: &mut Xdp = ew.program_mut("ew_xdp").unwrap().try_into().unwrap();
    prog.load().unwrap();

    let mut base = Ebpf::load(edgewatch_ebpf::baseline()).unwrap();
    let empty: &mut Xdp = base
        .program_mut("ew_empty_xdp")
        .unwrap()
        .try_into()
        .unwrap();
    empty.load().unwrap();

    let mut frame = ether(&[], 0x0800, &ipv4([10, 99, 0, 1], 17, 8 + 22));
    frame.resize(64, 0);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    println!("repeat {repeat} per cell, 64-byte frame");
    println!("round  empty_ns  edgewatch_ns  ratio");
    for r in 0..rounds {
        let e = ns_per_run(empty, &frame, repeat);
        let w = ns_per_run(prog, &frame, repeat);
        println!("{r:>5}  {e:>8}  {w:>12}  {:.2}", w as f64 / e as f64);
        a.push(e);
        b.push(w);
    }
    a.sort_unstable();
    b.sort_unstable();
    let (e, w) = (a[a.len() / 2], b[b.len() / 2]);
    println!(
        "median: empty {e} ns, edgewatch {w} ns per packet ({:.2}x, +{} ns)",
        w as f64 / e as f64,
        w - e
    );
}
