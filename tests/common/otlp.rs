//! What an OpenTelemetry collector's Prometheus exporter makes of an OTLP
//! metrics push, following its documented translation (collector-contrib
//! `exporter/prometheusexporter` with its default `add_metric_suffixes:
//! true`, names built by prometheus/otlptranslator's `normalizeName`, as
//! in the OTel spec's "OTLP Metric points to Prometheus"):
//! - the name is split into tokens at every character that is not a
//!   letter or digit, and at underscores, then joined with `_`;
//! - the unit's suffix is appended unless the name already has it (none
//!   here: edgewatch sets no unit);
//! - monotonic cumulative sums (counters) drop every `total` token and get
//!   `_total` appended;
//! - gauges with unit `1` get `_ratio` (none here);
//! - a name starting with a digit gets a `_` prefix;
//! - histograms become `_bucket{le}` (cumulative), `_sum` and `_count`;
//! - attributes become labels (invalid characters to `_`); the exporter
//!   adds `job` and `instance` from the resource, which this leaves out.
//!
//! Samples are compared as (name, labels, value) with `le` rewritten to a
//! canonical float spelling on both sides (Prometheus writes `1`, the
//! Rust client `1.0`: the same bound).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{KeyValue, any_value},
    metrics::v1::{AggregationTemporality, metric, number_data_point},
};

pub type Sample = (String, BTreeMap<String, String>, f64);

/// The collector's Prometheus name for an OTLP metric.
pub fn collector_name(name: &str, unit: &str, counter: bool, gauge: bool) -> String {
    let mut tokens: Vec<&str> = name
        .split(|c: char| !c.is_ascii_alphanumeric() || c == '_')
        .filter(|t| !t.is_empty())
        .collect();
    let unit_suffix = match unit {
        "" | "1" => None,
        "s" => Some("seconds"),
        "By" => Some("bytes"),
        other => Some(other),
    };
    if let Some(u) = unit_suffix
        && !tokens.contains(&u)
    {
        tokens.push(u);
    }
    if counter {
        tokens.retain(|t| *t != "total");
        tokens.push("total");
    }
    if unit == "1" && gauge {
        tokens.retain(|t| *t != "ratio");
        tokens.push("ratio");
    }
    let out = tokens.join("_");
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{out}")
    } else {
        out
    }
}

fn label_name(key: &str) -> String {
    let mut s: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s = format!("key_{s}");
    }
    s
}

fn labels(attrs: &[KeyValue]) -> BTreeMap<String, String> {
    attrs
        .iter()
        .map(|a| {
            let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => panic!("attribute {}: unexpected value {other:?}", a.key),
            };
            (label_name(&a.key), v)
        })
        .collect()
}

fn number(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => panic!("a data point without a value"),
    }
}

/// A canonical spelling of a bound.
pub fn canonical_le(le: &str) -> String {
    match le {
        "+Inf" => "+Inf".into(),
        other => format!("{:?}", other.parse::<f64>().expect("le is a number")),
    }
}

/// Every sample the collector's Prometheus exporter would expose for `req`
/// (without `job` and `instance`).
pub fn prometheus_samples(req: &ExportMetricsServiceRequest) -> Vec<Sample> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                match m.data.as_ref().expect("metric data") {
                    metric::Data::Sum(s) => {
                        assert_eq!(
                            s.aggregation_temporality,
                            AggregationTemporality::Cumulative as i32
                        );
                        let name = collector_name(&m.name, &m.unit, s.is_monotonic, false);
                        for p in &s.data_points {
                            out.push((name.clone(), labels(&p.attributes), number(&p.value)));
                        }
                    }
                    metric::Data::Gauge(g) => {
                        let name = collector_name(&m.name, &m.unit, false, true);
                        for p in &g.data_points {
                            out.push((name.clone(), labels(&p.attributes), number(&p.value)));
                        }
                    }
                    metric::Data::Histogram(h) => {
                        assert_eq!(
                            h.aggregation_temporality,
                            AggregationTemporality::Cumulative as i32
                        );
                        let name = collector_name(&m.name, &m.unit, false, false);
                        for p in &h.data_points {
                            let l = labels(&p.attributes);
                            out.push((format!("{name}_count"), l.clone(), p.count as f64));
                            out.push((format!("{name}_sum"), l.clone(), p.sum.unwrap_or(0.0)));
                            let mut cumulative = 0;
                            for (i, n) in p.bucket_counts.iter().enumerate() {
                                cumulative += n;
                                let le = match p.explicit_bounds.get(i) {
                                    Some(b) => format!("{b:?}"),
                                    None => "+Inf".into(),
                                };
                                let mut l = l.clone();
                                l.insert("le".into(), le);
                                out.push((format!("{name}_bucket"), l, cumulative as f64));
                            }
                        }
                    }
                    other => panic!("{}: unexpected data {other:?}", m.name),
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// Scraped samples in the same form: `le` canonical, sorted.
pub fn scraped_samples(
    samples: &[(String, std::collections::HashMap<String, String>, f64)],
) -> Vec<Sample> {
    let mut out: Vec<Sample> = samples
        .iter()
        .map(|(n, l, v)| {
            let l = l
                .iter()
                .map(|(k, v)| {
                    let v = if k == "le" {
                        canonical_le(v)
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect();
            (n.clone(), l, *v)
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}
