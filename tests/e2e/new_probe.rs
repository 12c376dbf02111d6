//! The README's "Adding a probe" walkthrough stays true: a copy of this
//! repository gets a new probe from `scripts/new-probe` (on
//! `syscalls:sys_enter_getppid`), builds, attaches it, and counts an exact
//! number of getppid() calls from a thread with a name of its own.
//!
//! The copy builds in target/new-probe/, seeded from target/debug so that
//! only the workspace's own crates compile: the dependencies' libraries are
//! hard links (rustc replaces an output by renaming a new file over it and
//! never rewrites one in place, so the copy's build cannot alter
//! target/debug), their build-script outputs and fingerprints are copied,
//! and nothing else is (test executables and incremental state are most of
//! target/debug; a full copy filled CI's disk). The copy is removed when
//! the test ends.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

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

/// Removes the copy (tree and target) when the test ends, pass or fail.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The workspace's own crates (and their tests) are left out so they
/// build from the copy's sources.
fn ours(name: &str) -> bool {
    name.starts_with("edgewatch") || name.starts_with("libedgewatch")
}

fn seed(from: &Path, to: &Path) {
    let deps = to.join("deps");
    std::fs::create_dir_all(&deps).unwrap();
    let mut linked = 0;
    for entry in std::fs::read_dir(from.join("deps")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let library =
            name.starts_with("lib") && [".rlib", ".rmeta", ".so"].iter().any(|e| name.ends_with(e));
        if library && !ours(&name) {
            std::fs::hard_link(entry.path(), deps.join(&name)).unwrap();
            linked += 1;
        }
    }
    assert!(linked > 0, "no dependency libraries in {}", from.display());
    for dir in ["build", ".fingerprint"] {
        std::fs::create_dir_all(to.join(dir)).unwrap();
        let mut cp = vec!["cp".to_string(), "-a".to_string()];
        for entry in std::fs::read_dir(from.join(dir)).unwrap() {
            let entry = entry.unwrap();
            if !ours(&entry.file_name().to_string_lossy()) {
                cp.push(entry.path().to_string_lossy().into_owned());
            }
        }
        cp.push(to.join(dir).to_string_lossy().into_owned());
        run(&cp.iter().map(String::as_str).collect::<Vec<_>>());
    }
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
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&tree).unwrap();
    sh(
        &root,
        &format!(
            "tar --exclude=./target --exclude=./fuzz --exclude=./.git -cf - . | tar -C {} -xf -",
            tree.display()
        ),
    );
    let _cleanup = RemoveOnDrop(work.clone());
    seed(&root.join("target/debug"), &target.join("debug"));
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
