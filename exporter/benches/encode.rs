//! One encode of /metrics with many series, in each exposition format, side
//! by side in one run: the connect probe's families with the `peer` label
//! after refused connects to `--peers` distinct addresses (10,000 by
//! default), fed through the same dispatcher the binary runs. Needs no
//! kernel.
//!
//! `cargo bench -p edgewatch --bench encode -- [--peers 10000] [--rounds 30]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{hint::black_box, time::Instant};

use edgewatch::{
    export::{
        model,
        prometheus::{Format, encode},
    },
    telemetry::Telemetry,
    vocab::{labels::OptInLabels, spans::SpanSink},
};
use edgewatch_common::{KIND_TCP_CONNECT, TcpConnect};
use prometheus_client::registry::Registry;

fn registry(peers: u32) -> Registry {
    let mut registry = Registry::default();
    let telemetry = Telemetry::register(&mut registry);
    let mut labels = OptInLabels::default();
    labels.enable("peer");
    let mut d = common::bench::connect_dispatcher(
        &mut registry,
        telemetry,
        labels,
        2 * peers as usize,
        SpanSink::default(),
    );
    for i in 0..peers {
        let mut t: TcpConnect = bytemuck::Zeroable::zeroed();
        t.hdr.kind = KIND_TCP_CONNECT;
        t.hdr.size = size_of::<TcpConnect>() as u16;
        t.family = libc::AF_INET as u16;
        t.newstate = 7; // refused: SYN_SENT -> CLOSE
        t.dport = 1;
        t.daddr[..4].copy_from_slice(&[127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        d.dispatch(bytemuck::bytes_of(&t));
    }
    registry
}

/// Median milliseconds of `rounds` runs of `encode`, which gets the last
/// body's size (a capacity guess, as /metrics makes it) and returns its
/// body; and the body's size.
fn time<B: AsRef<[u8]>>(rounds: usize, mut encode: impl FnMut(usize) -> B) -> (f64, usize) {
    let mut ms = Vec::with_capacity(rounds);
    let mut len = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let body = encode(len + len / 8);
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        len = black_box(body).as_ref().len();
    }
    (common::bench::median(&ms), len)
}

fn main() {
    let peers: u32 = common::bench_arg("--peers", 10_000);
    let rounds: usize = common::bench_arg("--rounds", 30);
    let registry = registry(peers);
    println!("one encode of /metrics, {peers} peers, median of {rounds}:\n");
    println!("| format | ms | bytes |");
    println!("|---|---|---|");
    for format in Format::ALL {
        let (ms, len) = time(rounds, |capacity| {
            encode(&registry, format, capacity).expect("encode")
        });
        println!("| {} | {ms:.2} | {len} |", format.name());
    }
    // The classic text written from the typed model (the OTLP export's
    // snapshot), as /metrics wrote it before the one-pass rewrite.
    let (ms, len) = time(rounds, |capacity| {
        let mut body = String::with_capacity(capacity);
        model::write_prometheus_text(&model::snapshot(&registry).expect("snapshot"), &mut body);
        body
    });
    println!("| text 0.0.4 from the typed model | {ms:.2} | {len} |");
}
