//! Nothing left behind: edgewatch killed with SIGKILL at five moments
//! (during start-up, idle, under load, during a scrape, during a blocklist
//! reload) leaves no program, map, link, XDP attachment or pinned file.
//!
//! Other engineers load BPF programs on this kernel at the same time
//! (some of them other edgewatches), so nothing here assumes a quiet host:
//! - the objects our edgewatch held just before the kill (its
//!   /proc/PID/fdinfo: prog_id, map_id, link_id) must all be gone;
//! - no object created since our edgewatch started and named like one of
//!   edgewatch's may exist without a process holding it (an orphan), which
//!   also covers objects created in the instant between that snapshot and
//!   the kill during start-up;
//! - the XDP interface lives in our own network namespace;
//! - /sys/fs/bpf gets no new entry.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::common::{Edgewatch, Netns, poll, privileged, serial};

/// Map ids every program uses.
fn prog_maps() -> HashMap<u32, Vec<u32>> {
    let out = crate::common::run(&["bpftool", "-j", "prog", "show"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let ids = o["map_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m.as_u64())
                        .map(|m| m as u32)
                        .collect()
                })
                .unwrap_or_default();
            (o["id"].as_u64().unwrap() as u32, ids)
        })
        .collect()
}

/// id -> name of every BPF object of a kind ("prog" or "map").
fn objects(kind: &str) -> HashMap<u32, String> {
    let out = crate::common::run(&["bpftool", "-j", kind, "show"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["id"].as_u64().unwrap() as u32,
                o["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Every link id, with its program id.
fn links() -> HashMap<u32, u32> {
    let out = crate::common::run(&["bpftool", "-j", "link", "show"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["id"].as_u64().unwrap() as u32,
                o["prog_id"].as_u64().unwrap_or(0) as u32,
            )
        })
        .collect()
}

#[derive(Debug, Default, Clone)]
struct Held {
    progs: HashSet<u32>,
    maps: HashSet<u32>,
    links: HashSet<u32>,
}

/// The BPF objects a process holds through its file descriptors.
fn held_by(pid: &str, into: &mut Held) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        if let Some(id) = get("link_id:") {
            into.links.insert(id);
        } else if let Some(id) = get("map_id:") {
            into.maps.insert(id);
        } else if let Some(id) = get("prog_id:") {
            into.progs.insert(id);
        }
    }
}

/// Every object some process on the host holds.
fn held_by_anyone() -> Held {
    let mut h = Held::default();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.chars().all(|c| c.is_ascii_digit()) {
            held_by(&name, &mut h);
        }
    }
    h
}

fn pinned() -> HashSet<String> {
    fn walk(dir: &std::path::Path, out: &mut HashSet<String>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                out.insert(e.path().display().to_string());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = HashSet::new();
    walk(std::path::Path::new("/sys/fs/bpf"), &mut out);
    out
}

/// The host's state before a run: highest ids, pinned files.
struct Before {
    max_prog: u32,
    max_map: u32,
    max_link: u32,
    pinned: HashSet<String>,
}

impl Before {
    fn take() -> Self {
        Self {
            max_prog: objects("prog").keys().copied().max().unwrap_or(0),
            max_map: objects("map").keys().copied().max().unwrap_or(0),
            max_link: links().keys().copied().max().unwrap_or(0),
            pinned: pinned(),
        }
    }
}

/// Names of edgewatch's own programs and maps (learned from a live one).
#[derive(Default, Clone)]
struct Names {
    progs: HashSet<String>,
    maps: HashSet<String>,
}

/// Asserts that nothing of the killed edgewatch remains, polling while the
/// kernel frees what the process held (frees are deferred).
fn assert_nothing_left(moment: &str, ns: &Netns, before: &Before, held: &Held, names: &Names) {
    let mut last = String::new();
    let clean = poll(Duration::from_secs(10), || {
        let progs = objects("prog");
        let maps = objects("map");
        let all_links = links();
        let anyone = held_by_anyone();
        let mut problems = Vec::new();
        // What edgewatch held that someone else still holds (a program it
        // opened by id to read its maps, say) is not edgewatch's to free.
        for id in &held.progs {
            if progs.contains_key(id) && !anyone.progs.contains(id) {
                problems.push(format!("prog {id} ({}) still loaded", progs[id]));
            }
        }
        for id in &held.maps {
            if maps.contains_key(id) && !anyone.maps.contains(id) {
                problems.push(format!("map {id} ({}) still exists", maps[id]));
            }
        }
        for id in &held.links {
            if all_links.contains_key(id) {
                problems.push(format!("link {id} still exists"));
            }
        }
        for (id, name) in &progs {
            if *id > before.max_prog && names.progs.contains(name) && !anyone.progs.contains(id) {
                problems.push(format!("orphan prog {id} ({name})"));
            }
        }
        // A map only a live program uses (no fd) belongs to that program.
        let used: HashSet<u32> = prog_maps()
            .into_iter()
            .filter(|(p, _)| anyone.progs.contains(p))
            .flat_map(|(_, m)| m)
            .collect();
        for (id, name) in &maps {
            if *id > before.max_map
                && names.maps.contains(name)
                && !anyone.maps.contains(id)
                && !used.contains(id)
            {
                problems.push(format!("orphan map {id} ({name})"));
            }
        }
        for (id, prog) in &all_links {
            if *id > before.max_link
                && !anyone.links.contains(id)
                && progs.get(prog).is_some_and(|n| names.progs.contains(n))
                && !anyone.progs.contains(prog)
            {
                problems.push(format!("orphan link {id} (prog {prog})"));
            }
        }
        let link = ns.exec(&["ip", "-d", "link", "show", "dev", "ewk0"]);
        let link = String::from_utf8_lossy(&link.stdout).to_string();
        if link.contains("xdp") {
            problems.push(format!("XDP still attached: {link}"));
        }
        let new_pins: Vec<String> = pinned().difference(&before.pinned).cloned().collect();
        let ours: Vec<&String> = new_pins
            .iter()
            .filter(|p| p.contains("ew_") || p.contains("edgewatch"))
            .collect();
        if !ours.is_empty() {
            problems.push(format!("pinned: {ours:?}"));
        }
        last = problems.join("; ");
        problems.is_empty().then_some(())
    });
    assert!(clean.is_some(), "SIGKILL {moment}: left behind: {last}");
    eprintln!("SIGKILL {moment}: nothing left behind");
}

fn setup_ns() -> Netns {
    let ns = Netns::new("kill");
    ns.exec(&[
        "ip", "link", "add", "ewk0", "type", "veth", "peer", "name", "ewk1",
    ]);
    ns.exec(&["ip", "link", "set", "ewk0", "up"]);
    ns.exec(&["ip", "link", "set", "ewk1", "up"]);
    ns
}

fn blocklist(n: u32, salt: u8) -> String {
    (0..n)
        .map(|i| format!("10.{salt}.{}.{}/32\n", (i >> 8) & 255, i & 255))
        .collect()
}

/// A child killed and reaped on drop, so a failing test leaves no
/// edgewatch running.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kill9(ew: &mut Edgewatch) {
    assert_eq!(
        ew.signal_and_wait(libc::SIGKILL),
        None,
        "killed by a signal"
    );
}

#[test]
fn sigkill_at_five_moments_leaves_nothing_behind() {
    if !privileged() {
        return;
    }
    let _g = serial();
    let ns = setup_ns();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocklist");
    std::fs::write(&list, blocklist(20_000, 1)).unwrap();
    let args = [
        "--xdp.interface",
        "ewk0",
        "--xdp.blocklist-file",
        list.to_str().unwrap(),
    ];

    // Learn edgewatch's object names from a live one, then moment 2: idle.
    let before = Before::take();
    let mut ew = Edgewatch::start_in(&ns, &args);
    ew.scrape();
    thread::sleep(Duration::from_millis(300));
    let mut held = Held::default();
    held_by(&ew.pid().to_string(), &mut held);
    let progs = objects("prog");
    let maps = objects("map");
    let names = Names {
        progs: held
            .progs
            .iter()
            .filter_map(|i| progs.get(i).cloned())
            .collect(),
        maps: held
            .maps
            .iter()
            .filter_map(|i| maps.get(i).cloned())
            .collect(),
    };
    assert!(names.progs.contains("ew_xdp"), "{:?}", names.progs);
    assert!(held.links.len() >= 3, "{held:?}");
    kill9(&mut ew);
    assert_nothing_left("while idle", &ns, &before, &held, &names);

    // Moment 1: during start-up, at three depths of the load.
    let total = held.progs.len() + held.maps.len() + held.links.len();
    for depth in [1, total / 3, total * 2 / 3] {
        let before = Before::take();
        let mut child = Reaped(
            Command::new("ip")
                .args(["netns", "exec", &ns.name, crate::common::binary()])
                .args(["--web.listen-address", "127.0.0.1:0"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut held;
        loop {
            held = Held::default();
            held_by(&pid, &mut held);
            if held.progs.len() + held.maps.len() + held.links.len() >= depth {
                break;
            }
            assert!(Instant::now() < deadline, "edgewatch never loaded anything");
            thread::sleep(Duration::from_micros(200));
        }
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGKILL) };
        child.0.wait().unwrap();
        assert_nothing_left(
            &format!("during start-up ({depth} objects in)"),
            &ns,
            &before,
            &held,
            &names,
        );
    }

    // Moment 3: under load (refused connects in the namespace, map updates).
    let before = Before::take();
    let mut ew = Edgewatch::start_in(&ns, &args);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let load = ns.spawn(move || {
        let m = crate::common::bpf::create(crate::common::bpf::HASH, "ew_kill_load", 4, 8, 1024, 0);
        let mut i = 0u32;
        while !s2.load(Ordering::Relaxed) {
            let _ = TcpStream::connect_timeout(
                &"127.0.0.1:9".parse().unwrap(),
                Duration::from_millis(50),
            );
            crate::common::bpf::update(
                &m,
                &(i % 1024).to_ne_bytes(),
                &[0; 8],
                crate::common::bpf::BPF_ANY,
            );
            i += 1;
        }
        i
    });
    thread::sleep(Duration::from_millis(500));
    let mut held = Held::default();
    held_by(&ew.pid().to_string(), &mut held);
    kill9(&mut ew);
    stop.store(true, Ordering::Relaxed);
    let ops = load.join().unwrap();
    assert!(ops > 100, "load ran: {ops}");
    assert_nothing_left("under load", &ns, &before, &held, &names);

    // Moment 4: during a scrape (request sent, response not yet read).
    let before = Before::take();
    let mut ew = Edgewatch::start_in(&ns, &args);
    let mut held = Held::default();
    held_by(&ew.pid().to_string(), &mut held);
    let addr = ew.addr;
    let scraping = ns.spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s
    });
    let _conn = scraping.join().unwrap();
    kill9(&mut ew);
    assert_nothing_left("during a scrape", &ns, &before, &held, &names);

    // Moment 5: during a blocklist reload (20,000 prefixes swapped for
    // 20,000 others: 40,000 map writes).
    let before = Before::take();
    std::fs::write(&list, blocklist(20_000, 1)).unwrap();
    let mut ew = Edgewatch::start_in(&ns, &args);
    let mut held = Held::default();
    held_by(&ew.pid().to_string(), &mut held);
    // The SIGHUP handler is installed just after the listen line.
    ew.scrape();
    thread::sleep(Duration::from_millis(300));
    std::fs::write(&list, blocklist(20_000, 2)).unwrap();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(ew.pid() as i32, libc::SIGHUP) };
    thread::sleep(Duration::from_millis(5));
    kill9(&mut ew);
    let log = ew.log.lock().unwrap().join("\n");
    assert!(
        !log.contains("blocklist reloaded"),
        "killed before the reload finished:\n{log}"
    );
    assert_nothing_left("during a blocklist reload", &ns, &before, &held, &names);
}
