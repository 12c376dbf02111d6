//! What we ship for Prometheus and systemd must be valid as shipped.

use crate::common::{promtool, repo};

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
