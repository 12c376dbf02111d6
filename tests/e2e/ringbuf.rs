//! End to end, as root: the ring buffer at full speed.
//!
//! - Two processes issue 1,000,000 map updates each, back to back, both
//!   cores busy: every update is counted exactly and nothing is lost.
//! - A tiny ring driven past its capacity by the benchmark emitter
//!   (exporter-ebpf/src/bench.bpf.c, edgewatch's own submit policy, one
//!   BPF_PROG_TEST_RUN with repeat): delivered + lost = generated, exactly.

use std::{process::Command, time::Duration};

use crate::common::{
    Edgewatch, Metrics,
    bpf::{BPF_ANY, HASH, create, update},
    emitter::{Emitter, RingPositions},
    poll, privileged, serial,
};

const WRITER_VAR: &str = "EW_TEST_MAP_WRITER";
const UPDATES: u32 = 1_000_000;

fn updates_ok(m: &Metrics, name: &str) -> u64 {
    m.count(
        "edgewatch_bpf_map_updates_total",
        &[("map_name", name), ("result", "ok")],
    )
}

fn lost(m: &Metrics) -> u64 {
    m.count("edgewatch_ringbuf_lost_events_total", &[("probe", "map")])
}

/// The child's side: creates its map and updates it UPDATES times.
fn writer(name: &str) {
    let map = create(HASH, name, 4, 4, 16, 0);
    let v = [1u8; 4];
    let start = std::time::Instant::now();
    for i in 0..UPDATES {
        assert_eq!(update(&map, &(i % 16).to_ne_bytes(), &v, BPF_ANY), 0);
    }
    eprintln!(
        "{name}: {UPDATES} updates at {:.0}/s",
        f64::from(UPDATES) / start.elapsed().as_secs_f64()
    );
}

#[test]
fn two_processes_of_a_million_updates_each_are_exact_without_loss() {
    if let Ok(name) = std::env::var(WRITER_VAR) {
        writer(&name);
        return;
    }
    if !privileged() {
        return;
    }
    let _serial = serial();
    let ew = Edgewatch::start(&["--probes", "map"]);
    let lost0 = lost(&ew.scrape());
    let tag = std::process::id() % 100_000;
    let names = [format!("ew2pa{tag}"), format!("ew2pb{tag}")];
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            Command::new(&exe)
                .args([
                    "ringbuf::two_processes_of_a_million_updates_each_are_exact_without_loss",
                    "--exact",
                    "--nocapture",
                ])
                .env(WRITER_VAR, name)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a writer failed");
    }
    let want = |m: &Metrics| names.iter().all(|n| updates_ok(m, n) == u64::from(UPDATES));
    let m = poll(Duration::from_secs(60), || Some(ew.scrape()).filter(want))
        .unwrap_or_else(|| ew.scrape());
    let lost = lost(&m) - lost0;
    for n in &names {
        assert_eq!(
            updates_ok(&m, n),
            u64::from(UPDATES),
            "{n} ({lost} records lost meanwhile)"
        );
    }
    assert_eq!(lost, 0, "records lost");
}

#[test]
fn a_tiny_ring_past_capacity_delivers_plus_loses_exactly_what_was_generated() {
    if std::env::var_os(WRITER_VAR).is_some() {
        return;
    }
    if !privileged() {
        return;
    }
    let _serial = serial();
    let ew = Edgewatch::start(&[
        "--probes",
        "map",
        "--ringbuf.size-bytes=16384",
        "--ringbuf.wakeup-bytes=8192",
    ]);
    let name = format!("ewtiny{}", std::process::id() % 100_000);
    let emitter = Emitter::attach_to(ew.pid(), &name);
    assert_eq!(emitter.lost(), 0);
    let ring = RingPositions::open(ew.pid());
    const GENERATED: u64 = 100_000;
    // One run of 100,000 back to back: a 16 KiB ring holds ~150 records.
    emitter.run(GENERATED as u32);
    let lost = emitter.lost();
    let (_, before_scrape) = ring.read();
    let m = ew.scrape(); // drains the ring first
    let delivered = updates_ok(&m, &name);
    eprintln!("generated {GENERATED}, delivered {delivered}, lost {lost}");
    assert!(lost > 0, "a 16 KiB ring cannot hold {GENERATED} records");
    assert!(delivered > 0);
    assert_eq!(delivered + lost, GENERATED);
    // The reader gave the kernel back all it read when its drain ended
    // (mid-drain it does so every so many bytes, not every record): at
    // least every record committed before the scrape (the scrape's own
    // bpf() calls may add records after its drain).
    let (consumer, _) = ring.read();
    assert!(
        before_scrape > 16384 - 256,
        "the ring filled: {before_scrape}"
    );
    assert!(consumer >= before_scrape, "{consumer} < {before_scrape}");
}
