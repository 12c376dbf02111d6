//! What we ship for Prometheus and systemd must be valid as shipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly at the first broken expectation"
)]

use std::{path::PathBuf, process::Command};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).output().expect(
        "promtool not found: install the Debian package prometheus (scripts/quickstart does)",
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_config_and_rules_are_valid() {
    let cfg = repo("deploy/prometheus/prometheus.yml");
    let rules = repo("deploy/prometheus/rules.yml");
    promtool(&["check", "config", cfg.to_str().unwrap()]);
    promtool(&["check", "rules", rules.to_str().unwrap()]);
}

#[test]
fn systemd_unit_is_not_full_root() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/edgewatch.service")).unwrap();
    assert!(unit.contains("CapabilityBoundingSet=CAP_BPF"));
    assert!(unit.contains("NoNewPrivileges=yes"));
    let ds = std::fs::read_to_string(repo("deploy/kubernetes/daemonset.yaml")).unwrap();
    assert!(ds.contains("privileged: false"));
    assert!(ds.contains("drop: [ALL]"));
}
