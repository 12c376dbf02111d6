//! The ring buffer past what syscalls can produce: the benchmark emitter
//! (exporter-ebpf/src/bench.bpf.c) writes map-operation records into a
//! running edgewatch's own ring, with edgewatch's submit policy, through
//! BPF_PROG_TEST_RUN with repeat, from both CPUs (one pinned thread each),
//! for `--seconds` per step at increasing target rates, then unpaced.
//!
//! Every step checks delivered + lost = generated exactly (delivered: the
//! consumer's count for the step's map name; lost: ew_lost[PROBE_BENCH])
//! and reports edgewatch's whole-process CPU time (user + system) per
//! delivered record. The figure is the highest rate with nothing lost, for
//! the default ring (8 MiB, wake-up past 256 KiB, 100 ms backstop).
//!
//! With `--before`, an older binary runs beside it, and each step runs
//! against both, one after the other (the idle one only waits).
//!
//! sudo cargo bench -p edgewatch --bench ringbuf -- [--seconds 10]
//!     [--rates 1,2,3,4,5,6,8] (millions of records per second)
//!     [--before /path/to/old/edgewatch] [--labels comm] (opt-in labels)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use common::{
    Edgewatch,
    bench::{cpu_ns, machine, report_interference},
    emitter::{Emitter, pin_to_cpu},
};

/// Runs both emitters for `secs` at `rate` records/s in total (None:
/// unpaced); returns (generated, elapsed seconds).
fn step(pid: u32, name: &str, rate: Option<f64>, secs: f64) -> (u64, f64) {
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2usize)
        .map(|cpu| {
            let name = name.to_string();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                pin_to_cpu(cpu);
                let e = Emitter::attach_to(pid, &name);
                // Small batches keep the pacing smooth; unpaced, larger ones.
                let batch: u32 = if rate.is_some() { 1_000 } else { 20_000 };
                let per_thread = rate.map(|r| r / 2.0);
                barrier.wait();
                let start = Instant::now();
                let mut generated = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    e.run(batch);
                    generated += u64::from(batch);
                    if let Some(r) = per_thread {
                        let due = Duration::from_secs_f64(generated as f64 / r);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                (generated, start.elapsed().as_secs_f64())
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0.0), |a, (g, s)| (a.0 + g, f64::max(a.1, s)))
}

fn main() {
    if !common::privileged() {
        return;
    }
    let secs: f64 = common::bench_arg("--seconds", 10.0);
    let rates: String = common::bench_arg("--rates", "1,2,3,4,5,6,8".to_string());
    let rates: Vec<f64> = rates.split(',').filter_map(|r| r.parse().ok()).collect();
    println!("machine: {}", machine());
    report_interference("ringbuf");

    let before: Option<String> =
        Some(common::bench_arg("--before", String::new())).filter(|s| !s.is_empty());
    // Opt-in labels for every binary (`--labels comm`: the process name).
    let labels: String = common::bench_arg("--labels", String::new());
    let mut args = vec!["--probes".to_string(), "map".to_string()];
    if !labels.is_empty() {
        println!("opt-in labels: {labels}");
        args.push(format!("--metrics.labels={labels}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut runs = Vec::new();
    if let Some(b) = &before {
        runs.push(("before", Edgewatch::start_binary(b, &args)));
    }
    runs.push(("edgewatch", Edgewatch::start(&args)));
    let probes: Vec<Emitter> = runs
        .iter()
        .map(|(_, ew)| Emitter::attach_to(ew.pid(), "ewrbprobe"))
        .collect();
    println!(
        "\n| binary | target (M/s) | achieved (M/s) | generated | delivered | lost | CPU per record (ns) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut best: Option<f64> = None;
    let steps: Vec<Option<f64>> = rates.iter().map(|r| Some(r * 1e6)).chain([None]).collect();
    for (i, rate) in steps.into_iter().enumerate() {
        for ((label, ew), probe) in runs.iter().zip(&probes) {
            let pid = ew.pid();
            let name = format!("ewrb{i}");
            let lost0 = probe.lost();
            let cpu0 = cpu_ns(pid);
            let (generated, elapsed) = step(pid, &name, rate, secs);
            let delivered = ew.scrape().count(
                "edgewatch_bpf_map_updates_total",
                &[("map_name", name.as_str()), ("result", "ok")],
            ); // the scrape drains the ring first
            let cpu = cpu_ns(pid) - cpu0;
            let lost = probe.lost() - lost0;
            assert_eq!(
                delivered + lost,
                generated,
                "{label}: delivered {delivered} + lost {lost} != generated {generated}"
            );
            let achieved = generated as f64 / elapsed / 1e6;
            let target = rate.map_or("unpaced".to_string(), |r| format!("{:.0}", r / 1e6));
            println!(
                "| {label} | {target} | {achieved:.2} | {generated} | {delivered} | {lost} | {:.0} |",
                cpu as f64 / delivered.max(1) as f64
            );
            if lost == 0 && *label == "edgewatch" {
                best = Some(best.map_or(achieved, |b: f64| b.max(achieved)));
            }
        }
    }
    report_interference("ringbuf");
    match best {
        Some(b) => println!("\nhighest rate with nothing lost: {b:.2} M records/s"),
        None => println!("\nevery step lost records"),
    }
}
