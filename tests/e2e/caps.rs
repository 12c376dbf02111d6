//! Least privilege, proven: edgewatch started under `setpriv` with only
//! the documented capability set (README, "Privileges") attaches every
//! probe and XDP, serves, and after the drop every one of its threads
//! holds only what scrape-time reads need (/proc/PID/task/*/status).

use crate::common::{Edgewatch, Netns, poll, privileged, serial};

const CAP_SYS_ADMIN: u64 = 1 << 21;

/// The documented start-up set, as setpriv's bounding-set argument.
fn documented_bounding_set() -> String {
    let caps = crate::common::documented_capabilities();
    let mut arg = String::from("-all");
    for c in &caps {
        arg.push_str(&format!(
            ",+{}",
            c.trim_start_matches("CAP_").to_ascii_lowercase()
        ));
    }
    arg
}

/// (CapInh, CapPrm, CapEff, CapAmb) of every thread of `pid`.
fn thread_caps(pid: u32) -> Vec<(String, [u64; 4])> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        let get = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        let name = status.lines().next().unwrap().to_string();
        out.push((
            name,
            [
                get("CapInh:"),
                get("CapPrm:"),
                get("CapEff:"),
                get("CapAmb:"),
            ],
        ));
    }
    out
}

/// A namespace with the veth pair `start_confined` attaches XDP to.
fn with_veth(name: &str) -> Netns {
    let ns = Netns::new(name);
    ns.exec(&[
        "ip", "link", "add", "ewcap0", "type", "veth", "peer", "name", "ewcap1",
    ]);
    ns.exec(&["ip", "link", "set", "ewcap0", "up"]);
    ns.exec(&["ip", "link", "set", "ewcap1", "up"]);
    ns
}

/// Starts edgewatch in `ns` under setpriv with only the documented set.
fn start_confined(ns: &Netns, extra: &[&str]) -> Edgewatch {
    let bounding = documented_bounding_set();
    let wrapper = [
        "ip",
        "netns",
        "exec",
        &ns.name,
        "setpriv",
        "--bounding-set",
        &bounding,
        "--inh-caps",
        "-all",
    ];
    let mut args = vec!["--xdp.interface", "ewcap0"];
    args.extend_from_slice(extra);
    let mut ew = Edgewatch::start_after(&wrapper, "true", &args);
    ew.netns = Some(ns.name.clone());
    ew
}

#[test]
fn documented_capabilities_suffice_and_only_the_scrape_set_stays() {
    if !privileged() {
        return;
    }
    let _g = serial();
    let ns = with_veth("caps");

    // Program statistics are off by default; asked for, BPF_ENABLE_STATS
    // is taken at start-up with the documented set and held after the drop.
    let ew = start_confined(&ns, &["--bpf.enable-stats", "true"]);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/comm", ew.pid()))
            .unwrap()
            .trim(),
        "edgewatch"
    );
    let m = ew.scrape();
    for probe in ["connect", "retransmit", "map"] {
        assert!(
            m.samples
                .iter()
                .any(|(n, l, v)| n == "edgewatch_probe_attached"
                    && l.get("probe").map(String::as_str) == Some(probe)
                    && *v == 1.0),
            "{probe} attached with the documented set:\n{}",
            m.text
        );
    }
    assert_eq!(
        m.count("edgewatch_xdp_attached", &[("interface", "ewcap0")]),
        1
    );
    // Scrape-time reads after the drop: the inventory (GET_NEXT_ID and
    // GET_FD_BY_ID: CAP_SYS_ADMIN) sees edgewatch's own maps, the iterator
    // still counts entries, and BPF_ENABLE_STATS (taken at start-up) still
    // counts program runs (edgewatch's own map reads run its map probe).
    assert!(
        m.has("edgewatch_bpf_map_info", &[("map_name", "ew_events")]),
        "{}",
        m.text
    );
    assert!(m.has("edgewatch_bpf_map_entries", &[]), "{}", m.text);
    assert!(
        m.sum("edgewatch_bpf_prog_runs_total", &[]) > 0.0,
        "{}",
        m.text
    );
    let log = ew.log.lock().unwrap().join("\n");
    assert!(
        log.contains("kept=cap_sys_admin dropped=cap_net_admin,cap_perfmon,cap_bpf"),
        "the drop names exactly the documented set:\n{log}"
    );
    assert!(
        !log.contains("WARN"),
        "no warning with the documented set:\n{log}"
    );
    let threads = thread_caps(ew.pid());
    assert!(threads.len() >= 3, "main and tokio workers: {threads:?}");
    for (name, [inh, prm, eff, amb]) in &threads {
        assert_eq!(
            (*inh, *prm, *eff, *amb),
            (0, CAP_SYS_ADMIN, CAP_SYS_ADMIN, 0),
            "{name}"
        );
    }
    // Still serving after the drop, with the pipeline running.
    let again = ew.scrape();
    assert!(again.has("edgewatch_build_info", &[]));
    drop(ew);

    // --capabilities.keep none: nothing stays, and it still serves.
    let ew = start_confined(&ns, &["--capabilities.keep", "none"]);
    assert!(ew.scrape().has("edgewatch_build_info", &[]));
    for (name, caps) in thread_caps(ew.pid()) {
        assert_eq!(caps, [0, 0, 0, 0], "{name}");
    }
}

#[test]
fn full_root_keeping_everything_is_warned_about_once() {
    if !privileged() {
        return;
    }
    let _g = serial();
    let ew = Edgewatch::start(&["--probes", "connect", "--capabilities.keep", "all"]);
    crate::common::poll(std::time::Duration::from_secs(10), || {
        let log = ew.log.lock().unwrap();
        log.iter()
            .any(|l| l.contains("running as full root"))
            .then_some(())
    })
    .expect("a warning when full root keeps everything");
    for _ in 0..3 {
        ew.scrape();
    }
    let log = ew.log.lock().unwrap().clone();
    let warns = log
        .iter()
        .filter(|l| l.contains("running as full root"))
        .count();
    assert_eq!(warns, 1, "once: {log:?}");
    let (_, [_, prm, _, _]) = thread_caps(ew.pid())[0].clone();
    assert!(
        prm & CAP_SYS_ADMIN != 0 && prm.count_ones() >= 40,
        "kept everything: {prm:x}"
    );
}

/// Program statistics without the map probe: nothing else keeps
/// CAP_SYS_ADMIN after the drop. `bpf.enable_stats` alone takes
/// BPF_ENABLE_STATS before the drop and holds it (no capability stays);
/// window mode takes it again at every window, so CAP_SYS_ADMIN stays.
/// Either way no attempt fails and the kernel counts this edgewatch's
/// program runs. (Before the fix, the held fd was taken by a task that
/// raced the drop, and window mode failed at every window after it.)
#[test]
fn program_statistics_survive_the_drop_without_the_map_probe() {
    if !privileged() {
        return;
    }
    let _g = serial();
    let ns = with_veth("capstats");
    let window = [
        "--bpf.stats-window-ms",
        "200",
        "--bpf.stats-interval-ms",
        "1000",
    ];
    for (extra, kept) in [(&[][..], 0), (&window[..], CAP_SYS_ADMIN)] {
        let mut args = vec!["--probes", "connect", "--bpf.enable-stats", "true"];
        args.extend_from_slice(extra);
        let ew = start_confined(&ns, &args);
        // Past several windows; every scrape is a connect() the connect
        // probe's programs run for.
        std::thread::sleep(std::time::Duration::from_millis(2_500));
        let m = poll(std::time::Duration::from_secs(10), || {
            let m = ew.scrape();
            (crate::common::bench::runs_of(ew.pid(), "ew_connect") > 0).then_some(m)
        })
        .unwrap_or_else(|| panic!("{args:?}: the kernel counted no run"));
        assert!(m.has("edgewatch_bpf_stats_errors_total", &[]), "{}", m.text);
        assert_eq!(
            m.count("edgewatch_bpf_stats_errors_total", &[]),
            0,
            "{args:?}:\n{}",
            m.text
        );
        assert!(
            m.sum("edgewatch_bpf_stats_held_seconds_total", &[]) > 0.1,
            "{args:?}:\n{}",
            m.text
        );
        let log = ew.log.lock().unwrap().join("\n");
        assert!(!log.contains("BPF_ENABLE_STATS failed"), "{args:?}:\n{log}");
        // After a scrape, so after the drop.
        for (name, caps) in thread_caps(ew.pid()) {
            assert_eq!(caps, [0, kept, kept, 0], "{args:?}: {name}");
        }
    }
}
