//! edgewatch at rest and under scrape load.
//!
//! 1. Idle: edgewatch with its default configuration, left alone for
//!    `--idle-seconds` (60): whole-process CPU time (user + system) as a
//!    share of one core, and wake-ups per second (context switches of all
//!    its threads), with the ring-buffer records that arrived meanwhile
//!    (other processes on a shared host make some). With `--before`, an
//!    older binary the same way, in the same run.
//! 2. Scrape: `wrk` on loopback against /metrics with the connect probe's
//!    peer label on and 10,000 distinct peers (refused connects to
//!    127.x.y.z inside a network namespace), against the same edgewatch
//!    before those series exist; p50/p99 latency and RSS, in the classic
//!    text format (wrk sends no Accept header) and in OpenMetrics (what
//!    Prometheus asks for). With `--before`, the older binary under the
//!    same load, in the same run.
//!
//! sudo cargo bench -p edgewatch --bench idle -- [--idle-seconds 60]
//!     [--wrk-seconds 10] [--peers 10000] [--before /path/to/old/edgewatch]

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{process::Command, time::Duration};

use common::{
    Edgewatch, Netns,
    bench::{context_switches, cpu_ns, machine, report_interference, rss_bytes},
};

fn events(ew: &Edgewatch) -> u64 {
    ew.scrape().count("edgewatch_ringbuf_events_total", &[])
}

/// (CPU share of one core in %, wake-ups per second, records) over `secs`.
fn idle(ew: &Edgewatch, secs: u64) -> (f64, f64, u64) {
    std::thread::sleep(Duration::from_secs(2)); // start-up done
    let e0 = events(ew);
    let (c0, w0) = (cpu_ns(ew.pid()), context_switches(ew.pid()));
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, w1) = (cpu_ns(ew.pid()), context_switches(ew.pid()));
    let e1 = events(ew);
    (
        (c1 - c0) as f64 / (secs as f64 * 1e9) * 100.0,
        (w1 - w0) as f64 / secs as f64,
        e1 - e0,
    )
}

const OPENMETRICS: &str =
    "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

/// wrk's (p50, p99) in milliseconds and requests/s, with `headers`.
fn wrk(url: &str, secs: u64, headers: &[&str]) -> (f64, f64, f64) {
    let mut args = vec![
        "-t1".to_string(),
        "-c4".into(),
        format!("-d{secs}s"),
        "--latency".into(),
    ];
    for h in headers {
        args.extend(["-H".to_string(), h.to_string()]);
    }
    let out = Command::new("wrk")
        .args(&args)
        .arg(url)
        .output()
        .expect("wrk (Debian package wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |v: &str| -> f64 {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1e3,
            "ms" => n,
            "s" => n * 1e3,
            _ => f64::NAN,
        }
    };
    let pct = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .map(|v| ms(v.trim()))
            .unwrap_or(f64::NAN)
    };
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    (pct("50%"), pct("99%"), rps)
}

fn main() {
    if !common::privileged() {
        return;
    }
    let idle_secs: u64 = common::bench_arg("--idle-seconds", 60);
    let wrk_secs: u64 = common::bench_arg("--wrk-seconds", 10);
    let peers: u32 = common::bench_arg("--peers", 10_000);
    let before: Option<String> =
        Some(common::bench_arg("--before", String::new())).filter(|s| !s.is_empty());
    println!("machine: {}", machine());
    report_interference("idle");

    println!("\n## idle, default configuration, {idle_secs} s\n");
    println!("| binary | CPU (% of one core) | wake-ups/s | records meanwhile |");
    println!("|---|---|---|---|");
    if let Some(b) = &before {
        let ew = Edgewatch::start_binary(b, &[]);
        let (cpu, wakeups, n) = idle(&ew, idle_secs);
        println!("| before | {cpu:.3} | {wakeups:.1} | {n} |");
    }
    {
        let ew = Edgewatch::start(&[]);
        let (cpu, wakeups, n) = idle(&ew, idle_secs);
        println!("| edgewatch | {cpu:.3} | {wakeups:.1} | {n} |");
    }

    println!("\n## /metrics under wrk (1 thread, 4 connections, {wrk_secs} s)\n");
    println!("| binary | exposition | samples | p50 (ms) | p99 (ms) | requests/s | RSS (MiB) |");
    println!("|---|---|---|---|---|---|---|");
    if let Some(b) = &before {
        scrape_load(Some(b), "before", peers, wrk_secs);
    }
    scrape_load(None, "edgewatch", peers, wrk_secs);
    report_interference("idle");
}

/// /metrics under wrk for `binary` (None: this build): before the peer
/// series exist, then with `peers` of them, in both formats.
fn scrape_load(binary: Option<&str>, label: &str, peers: u32, wrk_secs: u64) {
    let limit = (2 * peers).to_string();
    let args = [
        "--probes",
        "connect",
        "--metrics.labels=peer",
        "--metrics.series-limit",
        &limit,
    ];
    let ew = match binary {
        Some(b) => Edgewatch::start_binary(b, &args),
        None => Edgewatch::start(&args),
    };
    let url = format!("http://{}/metrics", ew.addr);
    let series = |ew: &Edgewatch| {
        ew.get("/metrics")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count()
    };
    let row = |what: &str, headers: &[&str]| {
        let samples = series(&ew);
        let (p50, p99, rps) = wrk(&url, wrk_secs, headers);
        let rss = rss_bytes(ew.pid()) as f64 / 1048576.0;
        println!("| {label} | {what} | {samples} | {p50:.2} | {p99:.2} | {rps:.0} | {rss:.1} |");
    };
    row("text, no peer series", &[]);
    let ns = Netns::new("idle");
    ns.enter(move || {
        for i in 0..peers {
            let ip = std::net::Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
            let _ = std::net::TcpStream::connect((ip, 1));
        }
    });
    row(&format!("text, {peers} peers"), &[]);
    row(&format!("OpenMetrics, {peers} peers"), &[OPENMETRICS]);
}
