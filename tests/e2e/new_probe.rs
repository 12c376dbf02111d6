//! The README's "Adding a probe" walkthrough stays true: a copy of this
//! repository gets a new probe from `scripts/new-probe` (on
//! `syscalls:sys_enter_getppid`), builds, attaches it, and counts an exact
//! number of getppid() calls from a thread with a name of its own.
//!
//! The copy builds in target/new-probe/, seeded once from target/debug so
//! that only the workspace's own crates compile.

use std::{path::Path, process::Command, time::Duration};

use crate::common::{Edgewatch, poll, privileged, repo, run, serial, set_thread_comm};

const CALLS: u64 = 37;

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_probe_from_the_template_builds_attaches_and_counts() {
    if !privileged() {
        return;
    }
    let root = repo(".");
    let work = root.join("target/new-probe");
    let tree = work.join("tree");
    let target = work.join("target");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree).unwrap();
    sh(
        &root,
        &format!(
            "tar --exclude=./target --exclude=./.git -cf - . | tar -C {} -xf -",
            tree.display()
        ),
    );
    if !target.join("debug").exists() && root.join("target/debug").exists() {
        std::fs::create_dir_all(&target).unwrap();
        run(&[
            "cp",
            "-a",
            root.join("target/debug").to_str().unwrap(),
            target.to_str().unwrap(),
        ]);
    }
    sh(
        &tree,
        "./scripts/new-probe getppid syscalls:sys_enter_getppid",
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--offline", "-p", "edgewatch"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&tree)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the new probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let _serial = serial();
    let binary = target.join("debug/edgewatch");
    let ew = Edgewatch::start_binary(
        binary.to_str().unwrap(),
        &["--probes", "getppid", "--metrics.labels=comm"],
    );
    std::thread::spawn(|| {
        set_thread_comm("ew-newprobe");
        for _ in 0..CALLS {
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() };
        }
    })
    .join()
    .unwrap();
    let m = poll(Duration::from_secs(10), || {
        let m = ew.scrape();
        (m.count("edgewatch_getppid_events_total", &[("comm", "ew-newprobe")]) >= CALLS)
            .then_some(m)
    })
    .expect("the new probe's metric");
    assert!(m.has(
        "edgewatch_probe_attached",
        &[("probe", "getppid"), ("mode", "tracepoint")]
    ));
    assert_eq!(
        m.count("edgewatch_getppid_events_total", &[("comm", "ew-newprobe")]),
        CALLS
    );
}
