//! End to end, as root: exact per-map, per-result counts for map updates
//! and deletes made through the raw bpf() syscall, the inventory's entries
//! and pressure against the live element counts, the attach chain's mode,
//! and program run counts.

use std::time::Duration;

use crate::common::{
    Edgewatch, Metrics,
    bpf::{
        ARRAY, BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, HASH, LPM_TRIE, LRU_HASH, PERCPU_HASH,
        create, delete, load_prog, possible_cpus, test_run, update, update_batch,
    },
    kernel::{kernel, links_to_test},
    poll, privileged, serial,
};

fn key(i: u32) -> [u8; 4] {
    i.to_ne_bytes()
}

fn lpm_key(i: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&16u32.to_ne_bytes());
    k[4..].copy_from_slice(&[10, i as u8, 0, 0]);
    k
}

/// Counter of `metric` for the map named `name` and `result`.
fn ops(m: &Metrics, metric: &str, name: &str, result: &str) -> u64 {
    m.count(metric, &[("map_name", name), ("result", result)])
}

fn gauge(m: &Metrics, metric: &str, name: &str) -> Option<f64> {
    m.samples
        .iter()
        .find(|(n, l, _)| n == metric && l.get("map_name").map(String::as_str) == Some(name))
        .map(|(_, _, v)| *v)
}

const N: u32 = 12; // successful single updates per map
const E: u32 = 3; // BPF_NOEXIST inserts on existing keys
const D: u32 = 4; // deletes of missing keys
const F: u32 = 5; // inserts into a full hash
const B: u32 = 7; // one batch of new keys into the hash
const FULL_MAX: u32 = 4;

/// The map probe on every link of its chain this kernel takes (fentry,
/// kprobe, syscall tracepoints): the default lands on the first one,
/// `--attach.disable` on each next one, and every link gives the same exact
/// counts. The inventory's entries and pressure are checked on each run.
#[test]
fn exact_map_update_counts_entries_and_program_runs() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let chain = kernel().map_chain();
    let links = links_to_test("map", &chain);
    for (i, (link, extra)) in links.iter().enumerate() {
        eprintln!("map: link {} with {extra:?}", link.mode);
        let mut args = vec!["--probes".to_string(), "map".to_string()];
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ew = Edgewatch::start(&args);
        exact_counts(&ew, i, link.mode);
        if i == 0 {
            program_runs(&ew);
        }
    }
}

/// Drives the known workload on fresh maps (their names carry `run`) and
/// asserts every count, the inventory and the attach mode.
fn exact_counts(ew: &Edgewatch, run: usize, mode: &str) {
    let tag = std::process::id() % 100_000;
    let name = |kind: &str| format!("ew{kind}{run}{tag}");
    let cpus = possible_cpus();

    let hash = create(HASH, &name("h"), 4, 4, 64, 0);
    let lru = create(LRU_HASH, &name("l"), 4, 4, 64, 0);
    let arr = create(ARRAY, &name("a"), 4, 4, 32, 0);
    let pcpu = create(PERCPU_HASH, &name("p"), 4, 8, 64, 0);
    let lpm = create(LPM_TRIE, &name("t"), 8, 4, 64, BPF_F_NO_PREALLOC);
    let full = create(HASH, &name("f"), 4, 4, FULL_MAX, 0);

    let v4 = [1u8; 4];
    let vpcpu = vec![1u8; 8 * cpus];
    for m in [&hash, &lru, &arr] {
        assert_eq!(m.value_size, 4);
        for i in 0..N {
            assert_eq!(update(m, &key(i), &v4, BPF_ANY), 0, "{}", m.name);
        }
        for i in 0..E {
            assert_eq!(
                update(m, &key(i), &v4, BPF_NOEXIST),
                -i64::from(libc::EEXIST)
            );
        }
    }
    for i in 0..N {
        assert_eq!(update(&pcpu, &key(i), &vpcpu, BPF_ANY), 0);
        assert_eq!(update(&lpm, &lpm_key(i), &v4, BPF_ANY), 0);
    }
    for i in 0..E {
        assert_eq!(
            update(&pcpu, &key(i), &vpcpu, BPF_NOEXIST),
            -i64::from(libc::EEXIST)
        );
        assert_eq!(
            update(&lpm, &lpm_key(i), &v4, BPF_NOEXIST),
            -i64::from(libc::EEXIST)
        );
    }
    for i in 0..D {
        let missing = 1000 + i;
        for m in [&hash, &lru, &pcpu] {
            assert_eq!(delete(m, &key(missing)), -i64::from(libc::ENOENT));
        }
        assert_eq!(delete(&lpm, &lpm_key(200 + i)), -i64::from(libc::ENOENT));
        // Array elements cannot be deleted.
        assert_eq!(delete(&arr, &key(i)), -i64::from(libc::EINVAL));
    }
    for i in 0..FULL_MAX {
        assert_eq!(update(&full, &key(i), &v4, BPF_ANY), 0);
    }
    for i in 0..F {
        assert_eq!(
            update(&full, &key(100 + i), &v4, BPF_ANY),
            -i64::from(libc::E2BIG)
        );
    }
    let keys: Vec<u8> = (0..B).flat_map(|i| key(500 + i)).collect();
    let values = vec![2u8; 4 * B as usize];
    assert_eq!(update_batch(&hash, &keys, &values, B), (0, B));

    let want = |m: &Metrics| {
        ops(m, "edgewatch_bpf_map_updates_total", &hash.name, "ok") == u64::from(N + B)
    };
    let m = poll(Duration::from_secs(10), || Some(ew.scrape()).filter(want))
        .unwrap_or_else(|| ew.scrape());

    let upd = "edgewatch_bpf_map_updates_total";
    let del = "edgewatch_bpf_map_deletes_total";
    for (map, ok) in [(&hash, N + B), (&lru, N), (&arr, N), (&pcpu, N), (&lpm, N)] {
        assert_eq!(
            ops(&m, upd, &map.name, "ok"),
            u64::from(ok),
            "{} ok\n{}",
            map.name,
            m.text
        );
        assert_eq!(
            ops(&m, upd, &map.name, "eexist"),
            u64::from(E),
            "{} eexist",
            map.name
        );
    }
    for map in [&hash, &lru, &pcpu, &lpm] {
        assert_eq!(
            ops(&m, del, &map.name, "enoent"),
            u64::from(D),
            "{} enoent",
            map.name
        );
    }
    assert_eq!(ops(&m, del, &arr.name, "einval"), u64::from(D));
    assert_eq!(ops(&m, upd, &full.name, "ok"), u64::from(FULL_MAX));
    assert_eq!(ops(&m, upd, &full.name, "e2big"), u64::from(F));
    // Types are the kernel's names.
    for (map, t) in [
        (&hash, "hash"),
        (&lru, "lru_hash"),
        (&arr, "array"),
        (&pcpu, "percpu_hash"),
        (&lpm, "lpm_trie"),
    ] {
        assert!(
            m.has(upd, &[("map_name", &map.name), ("map_type", t)]),
            "{} is not {t}",
            map.name
        );
    }

    // Inventory: live element counts and pressure.
    let entries = "edgewatch_bpf_map_entries";
    for (map, live, max) in [
        (&hash, N + B, 64),
        (&lru, N, 64),
        (&pcpu, N, 64),
        (&lpm, N, 64),
        (&full, FULL_MAX, FULL_MAX),
    ] {
        assert_eq!(
            gauge(&m, entries, &map.name),
            Some(f64::from(live)),
            "{} entries\n{}",
            map.name,
            m.text
        );
        assert_eq!(
            gauge(&m, "edgewatch_bpf_map_max_entries", &map.name),
            Some(f64::from(max))
        );
        assert_eq!(
            gauge(&m, "edgewatch_bpf_map_pressure", &map.name),
            Some(f64::from(live) / f64::from(max)),
            "{} pressure",
            map.name
        );
    }
    // Arrays are always full by construction: no entries series.
    assert_eq!(gauge(&m, entries, &arr.name), None);
    assert!(m.has(
        "edgewatch_bpf_map_info",
        &[
            ("map_name", &arr.name),
            ("map_type", "array"),
            ("key_size", "4")
        ]
    ));

    // The attach chain lands where this kernel says it must.
    assert_eq!(
        m.count(
            "edgewatch_probe_attached",
            &[("probe", "map"), ("mode", mode)]
        ),
        1,
        "{}",
        m.text
    );
    assert_eq!(
        m.count("edgewatch_ringbuf_lost_events_total", &[("probe", "map")]),
        0
    );
    crate::common::promtool_check(&m.text);
}

/// A program the test loaded: exact run counts while edgewatch holds stats.
fn program_runs(ew: &Edgewatch) {
    let tag = std::process::id() % 100_000;
    let prog = load_prog(&format!("ewtprog{tag}"));
    let prog_name = format!("ewtprog{tag}");
    let m = ew.scrape();
    let runs = |m: &Metrics| {
        m.count(
            "edgewatch_bpf_prog_runs_total",
            &[("prog_name", &prog_name)],
        )
    };
    assert_eq!(runs(&m), 0);
    test_run(prog, 1000);
    assert_eq!(runs(&ew.scrape()), 1000);
    test_run(prog, 500);
    let m = ew.scrape();
    assert_eq!(runs(&m), 1500);
    assert!(
        m.sum(
            "edgewatch_bpf_prog_run_seconds_total",
            &[("prog_name", &prog_name)]
        ) > 0.0
    );
    // SAFETY: closing the fd we own.
    unsafe { libc::close(prog) };
    crate::common::promtool_check(&m.text);
}

/// At full speed (one thread issuing map updates back to back, several
/// hundred thousand per second here), the default ring buffer loses
/// nothing and every update is counted exactly.
#[test]
fn a_burst_of_updates_is_counted_exactly_without_loss() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let ew = Edgewatch::start(&["--probes", "map"]);
    let name = format!("ewburst{}", std::process::id() % 100_000);
    let map = create(HASH, &name, 4, 4, 16, 0);
    let lost = |m: &Metrics| m.count("edgewatch_ringbuf_lost_events_total", &[("probe", "map")]);
    let lost0 = lost(&ew.scrape());
    const BURST: u32 = 200_000;
    let v = [1u8; 4];
    let start = std::time::Instant::now();
    for i in 0..BURST {
        assert_eq!(update(&map, &key(i % 16), &v, BPF_ANY), 0);
    }
    let rate = f64::from(BURST) / start.elapsed().as_secs_f64();
    let m = ew.scrape();
    eprintln!("{BURST} updates at {rate:.0}/s");
    assert_eq!(
        ops(&m, "edgewatch_bpf_map_updates_total", &name, "ok"),
        u64::from(BURST)
    );
    assert_eq!(lost(&m), lost0, "events lost at {rate:.0} updates/s");
}

/// Entries of hash maps against `--bpf.map-count-budget`. Where the kernel
/// has `bpf_map_sum_elem_count` (6.6+) the budget plays no part: every
/// hash map is exact. Before 6.6 the inventory walks hash maps smallest
/// first within the budget: a map that fits is exact, a map larger than
/// the whole budget reads `edgewatch_bpf_map_entries_exact 0` and has no
/// entries or pressure (edgewatch's own hash maps have 16384 slots or more,
/// so they come after the test's).
#[test]
fn map_count_budget_reports_maps_past_it_as_not_exact() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    const BUDGET: u32 = 5000;
    let ew = Edgewatch::start(&[
        "--probes",
        "map",
        &format!("--bpf.map-count-budget={BUDGET}"),
    ]);
    let tag = std::process::id() % 100_000;
    let small = create(HASH, &format!("ewbs{tag}"), 4, 4, 4, 0);
    let mid = create(HASH, &format!("ewbm{tag}"), 4, 4, 4096, 0);
    let over = create(PERCPU_HASH, &format!("ewbo{tag}"), 4, 8, BUDGET + 1, 0);
    let v4 = [3u8; 4];
    let v8 = vec![3u8; 8 * possible_cpus()];
    for i in 0..3 {
        assert_eq!(update(&small, &key(i), &v4, BPF_ANY), 0);
    }
    for i in 0..3000 {
        assert_eq!(update(&mid, &key(i), &v4, BPF_ANY), 0);
    }
    for i in 0..10 {
        assert_eq!(update(&over, &key(i), &v8, BPF_ANY), 0);
    }
    let m = ew.scrape();
    let exact = |name: &str| gauge(&m, "edgewatch_bpf_map_entries_exact", name);
    for (map, live, max) in [(&small, 3, 4), (&mid, 3000, 4096)] {
        assert_eq!(exact(&map.name), Some(1.0), "{}\n{}", map.name, m.text);
        assert_eq!(
            gauge(&m, "edgewatch_bpf_map_entries", &map.name),
            Some(f64::from(live))
        );
        assert_eq!(
            gauge(&m, "edgewatch_bpf_map_pressure", &map.name),
            Some(f64::from(live) / f64::from(max))
        );
    }
    if kernel().sum_elem_count {
        assert_eq!(exact(&over.name), Some(1.0), "{}", m.text);
        assert_eq!(
            gauge(&m, "edgewatch_bpf_map_entries", &over.name),
            Some(10.0)
        );
    } else {
        assert_eq!(exact(&over.name), Some(0.0), "{}", m.text);
        assert_eq!(gauge(&m, "edgewatch_bpf_map_entries", &over.name), None);
        assert_eq!(gauge(&m, "edgewatch_bpf_map_pressure", &over.name), None);
    }
    assert_eq!(
        m.count(
            "edgewatch_scrape_errors_total",
            &[("collector", "bpf_map_elem_count")]
        ),
        0
    );
}
