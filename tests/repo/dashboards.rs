//! The Grafana dashboard and the Prometheus rules query only metrics that
//! edgewatch exports: every `edgewatch_*` name they use must appear in a
//! golden exposition under tests/golden/ (which promtool has checked).

use std::collections::BTreeSet;

use crate::common::{Metrics, repo};

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
