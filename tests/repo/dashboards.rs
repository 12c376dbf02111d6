//! The Grafana dashboard and the Prometheus rules query only metrics that
//! edgewatch exports: every `edgewatch_*` name they use must appear in a
//! golden exposition under tests/golden/ (which promtool has checked).

use std::collections::BTreeSet;

use crate::common::{Metrics, python, repo};

/// Every `edgewatch_[a-z0-9_]+` token in `text`, minus recording-rule names
/// (`edgewatch:...`) and a histogram's `_bucket/_sum/_count` suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("edgewatch_") {
        let start = i + pos;
        let prev_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if prev_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(repo("tests/golden")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        names.extend(Metrics::parse(&text).samples.into_iter().map(|(n, _, _)| n));
    }
    names
}

fn check(file: &str) {
    let text = std::fs::read_to_string(repo(file)).unwrap();
    let exported = exported();
    let used = metric_names(&text);
    assert!(!used.is_empty(), "{file} queries no edgewatch metric");
    let unknown: Vec<_> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "{file} queries metrics edgewatch does not export: {unknown:?}"
    );
}

#[test]
fn dashboard_is_valid_json_and_queries_exported_metrics() {
    let text = std::fs::read_to_string(repo("dashboards/edgewatch.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert_eq!(v["uid"], "edgewatch-overview");
    let panels = v["panels"].as_array().unwrap();
    let ids: BTreeSet<_> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    check("dashboards/edgewatch.json");
}

#[test]
fn rules_query_exported_metrics() {
    check("deploy/prometheus/rules.yml");
}

/// The committed JSON is what dashboards/generate.py (Grafana's SDK) writes.
#[test]
fn dashboard_json_is_generated() {
    let out = std::process::Command::new(python())
        .arg(repo("dashboards/generate.py"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every panel says what it shows, in which unit, and from which level a
/// value is a problem.
#[test]
fn every_panel_has_a_description_a_unit_and_thresholds() {
    let text = std::fs::read_to_string(repo("dashboards/edgewatch.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels: Vec<_> = v["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    assert!(!panels.is_empty());
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            p["description"].as_str().is_some_and(|d| d.len() > 20),
            "{title}: no description"
        );
        let defaults = &p["fieldConfig"]["defaults"];
        assert!(
            defaults["unit"].as_str().is_some_and(|u| !u.is_empty()),
            "{title}: no unit"
        );
        let steps = defaults["thresholds"]["steps"].as_array();
        assert!(
            steps.is_some_and(|s| !s.is_empty() && s[0]["value"].is_null()),
            "{title}: no thresholds (the first step is the base, value null)"
        );
        assert!(
            !p["targets"].as_array().unwrap().is_empty(),
            "{title}: no query"
        );
    }
}
