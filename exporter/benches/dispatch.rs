//! The consumer's cost per record, side by side with its baseline (reading
//! the header alone) in one run: records -> dispatcher -> aggregators, the
//! same wiring the binary runs. Needs no kernel.
//!
//! `cargo bench -p edgewatch --bench dispatch`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{hint::black_box, time::Instant};

use edgewatch::{
    telemetry::Telemetry,
    vocab::{
        labels::OptInLabels,
        spans::{SpanLimits, SpanSink},
    },
};
use edgewatch_common::{ConnectCall, Header, KIND_CONNECT_CALL, KIND_TCP_CONNECT, TcpConnect};
use prometheus_client::registry::Registry;

fn records() -> Vec<Vec<u8>> {
    let comms = ["curl", "nginx", "envoy", "python3"];
    let mut out = Vec::new();
    for i in 0..4096u32 {
        let mut c: ConnectCall = bytemuck::Zeroable::zeroed();
        c.hdr.kind = KIND_CONNECT_CALL;
        c.hdr.size = size_of::<ConnectCall>() as u16;
        c.family = libc::AF_INET as u16;
        c.ret = if i % 3 == 0 { -libc::EINPROGRESS } else { 0 };
        let name = comms[i as usize % 4].as_bytes();
        c.comm[..name.len()].copy_from_slice(name);
        out.push(bytemuck::bytes_of(&c).to_vec());
        let mut t: TcpConnect = bytemuck::Zeroable::zeroed();
        t.hdr.kind = KIND_TCP_CONNECT;
        t.hdr.size = size_of::<TcpConnect>() as u16;
        t.family = libc::AF_INET as u16;
        t.newstate = 1;
        t.duration_ns = 40_000 + u64::from(i);
        t.dport = 443;
        t.daddr[..4].copy_from_slice(&[10, 0, (i / 256) as u8, i as u8]);
        t.comm = c.comm;
        out.push(bytemuck::bytes_of(&t).to_vec());
    }
    out
}

/// `spans`: the sample ratio when spans are on.
fn dispatch_ns(labels: &[&str], spans: Option<f64>, recs: &[Vec<u8>], rounds: usize) -> f64 {
    let mut registry = Registry::default();
    let telemetry = Telemetry::register(&mut registry);
    let mut opt = OptInLabels::default();
    for l in labels {
        opt.enable(l);
    }
    let sink = match spans {
        Some(sample_ratio) => SpanSink::enabled(
            SpanLimits {
                sample_ratio,
                max_per_second: 0,
                max_queued: usize::MAX,
            },
            telemetry.span_drop_counters(),
            1,
        ),
        None => SpanSink::default(),
    };
    let mut d =
        common::bench::connect_dispatcher(&mut registry, telemetry, opt, 2000, sink.clone());
    let start = Instant::now();
    for _ in 0..rounds {
        for r in recs {
            d.dispatch(r);
        }
        black_box(sink.peek(usize::MAX));
        sink.commit(usize::MAX);
    }
    start.elapsed().as_nanos() as f64 / (rounds * recs.len()) as f64
}

fn main() {
    let recs = records();
    let rounds = 200;
    let start = Instant::now();
    for _ in 0..rounds {
        for r in &recs {
            black_box(bytemuck::try_pod_read_unaligned::<Header>(&black_box(r)[..16]).ok());
        }
    }
    let decode = start.elapsed().as_nanos() as f64 / (rounds * recs.len()) as f64;
    let plain = dispatch_ns(&[], None, &recs, rounds);
    let comm = dispatch_ns(&["comm"], None, &recs, rounds);
    let both = dispatch_ns(&["comm", "peer"], None, &recs, rounds);
    // Spans are queued as raw fields; their attributes are built by the
    // OTLP task, not here.
    let spans = dispatch_ns(&[], Some(1.0), &recs, rounds);
    let sampled_out = dispatch_ns(&[], Some(0.01), &recs, rounds);
    println!("ns per record ({} records x {rounds}):", recs.len());
    println!("  header decode only (baseline): {decode:.1}");
    println!(
        "  dispatch + aggregate, default labels: {plain:.1} ({:.1}x)",
        plain / decode
    );
    println!("  with comm: {comm:.1}; with comm,peer: {both:.1}");
    println!("  with spans at ratio 1: {spans:.1}; at ratio 0.01: {sampled_out:.1}");
    println!(
        "  records/s on one core, default labels: {:.1} million",
        1e3 / plain
    );
}
