//! What we ship for Prometheus and systemd must be valid as shipped.

use std::{collections::BTreeSet, process::Command};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::common::{binary, documented_capabilities, promtool, python, repo};

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

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(repo(path)).unwrap()).unwrap()
}

/// `promtool test rules`: every alert fires on series that should fire it
/// and stays quiet on series beside them that should not (alert_rule_test
/// compares the whole list of firing alerts, so a quiet series that fired
/// fails), for every file in deploy/prometheus/tests/. Checked here too:
/// every alert in rules.yml has a case where it fires and a case where it
/// must not.
#[test]
fn every_alert_has_rule_unit_tests_and_they_pass() {
    let mut files: Vec<String> = std::fs::read_dir(repo("deploy/prometheus/tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule unit tests");
    for f in &files {
        promtool(&["test", "rules", f]);
    }

    let rules = yaml("deploy/prometheus/rules.yml");
    let alerts: BTreeSet<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect();
    assert!(!alerts.is_empty());
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    let cases: Vec<Value> = files
        .iter()
        .flat_map(|f| {
            let v: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            v["tests"].as_sequence().cloned().unwrap_or_default()
        })
        .collect();
    for t in &cases {
        for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap().to_string();
            let exp = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if exp > 0 {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let untested: Vec<_> = alerts.difference(&fires).collect();
    assert!(
        untested.is_empty(),
        "alerts never shown firing: {untested:?}"
    );
    let unchecked: Vec<_> = alerts.difference(&quiet).collect();
    assert!(
        unchecked.is_empty(),
        "alerts never shown quiet: {unchecked:?}"
    );
}

/// The Kubernetes manifests against the API schemas, offline and strict:
/// built-in kinds with kubernetes-validate's schemas (Kubernetes 1.29 and
/// 1.37), the PodMonitor with prometheus-operator's CRD schema (see
/// tests/repo/validate_manifests.py).
#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let mut files: Vec<_> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let out = Command::new(python())
        .arg(repo("tests/repo/validate_manifests.py"))
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    // Every document was checked: four kinds in the DaemonSet's file.
    for kind in ["Namespace", "ConfigMap", "DaemonSet", "PodMonitor"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok ") && l.contains(&format!(": {kind} "))),
            "{kind} was not validated: {text}"
        );
    }
}

/// `systemd-analyze verify` on the unit, in a temporary root holding the
/// binary at the path ExecStart names and the distribution's units (the
/// unit pulls in multi-user.target, network-online.target, ...).
#[test]
fn systemd_unit_verifies_with_the_binary_installed() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/edgewatch.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .and_then(|l| l.split_whitespace().next())
        .expect("ExecStart=");
    assert!(exec.starts_with('/'), "{exec}");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let bin = r.join(exec.trim_start_matches('/'));
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    if std::fs::hard_link(binary(), &bin).is_err() {
        std::fs::copy(binary(), &bin).unwrap();
    }
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    std::fs::write(r.join("etc/systemd/system/edgewatch.service"), &unit).unwrap();
    let units = r.join("usr/lib/systemd");
    std::fs::create_dir_all(&units).unwrap();
    let cp = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&units)
        .status()
        .unwrap();
    assert!(
        cp.success(),
        "copying /usr/lib/systemd/system (is systemd installed?)"
    );

    let verify = |root: &std::path::Path| {
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg("edgewatch.service")
            .output()
            .expect("systemd-analyze not found: install the Debian package systemd")
    };
    let out = verify(r);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns: {stderr}"
    );

    // And it does look for the binary: without it, verify fails.
    std::fs::remove_file(&bin).unwrap();
    let out = verify(r);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(exec),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SYS_RESOURCE question, settled one way: the DaemonSet doesn't ask
/// for it (tests/e2e/image.rs shows every probe attaching without it).
#[test]
fn daemonset_capabilities_are_the_documented_list() {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/daemonset.yaml")).unwrap();
    let ds = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .unwrap();
    let caps = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"];
    let add: Vec<&str> = caps["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(add, ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"]);
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    for cap in &add {
        assert!(
            readme.contains(&format!("CAP_{cap}")),
            "README lacks CAP_{cap}"
        );
    }
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
