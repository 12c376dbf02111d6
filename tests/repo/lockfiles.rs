//! The fuzz workspace keeps a lock file of its own, which takes the
//! exporter's dependencies: a dependency added to the exporter alone leaves
//! it stale, and the fuzz build (`scripts/fuzz`, `--locked`) then refuses to
//! start, late in the full test run. Checked here, early (cargo fetches
//! the fuzz workspace's crates if they are not here yet, as the fuzz build
//! would).

use std::process::Command;

use crate::common::repo;

#[test]
fn the_fuzz_lock_file_is_up_to_date() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--format-version", "1"])
        .arg("--manifest-path")
        .arg(repo("fuzz/Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "fuzz/Cargo.lock is stale (update it with `cargo tree` in fuzz/): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
