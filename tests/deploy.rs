//! What we ship for Prometheus and systemd must be valid as shipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly at the first broken expectation"
)]

mod common;

use common::{documented_capabilities, promtool, repo};

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

/// The systemd unit and the DaemonSet grant exactly the capabilities the
/// README's table documents: one list, kept in one place.
#[test]
fn unit_and_daemonset_grant_the_documented_capabilities() {
    let mut documented = documented_capabilities();
    documented.sort();
    assert_eq!(
        documented,
        ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_ADMIN"],
        "README table"
    );
    let unit = std::fs::read_to_string(repo("deploy/systemd/edgewatch.service")).unwrap();
    for key in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing from the unit"));
        let mut caps: Vec<String> = line.split_whitespace().map(String::from).collect();
        caps.sort();
        assert_eq!(caps, documented, "systemd {key}");
    }
    let ds = std::fs::read_to_string(repo("deploy/kubernetes/daemonset.yaml")).unwrap();
    let add = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: ["))
        .expect("DaemonSet capabilities add list");
    let mut caps: Vec<String> = add
        .trim_end_matches(']')
        .split(',')
        .map(|c| format!("CAP_{}", c.trim()))
        .collect();
    caps.sort();
    assert_eq!(caps, documented, "DaemonSet capabilities.add");
}
