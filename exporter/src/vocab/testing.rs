//! Test helpers: a registry's expositions in forms that compare across
//! families whose series come in different orders.

use prometheus_client::registry::Registry;

/// The registry's text (OpenMetrics) exposition.
pub fn text(r: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, r).unwrap();
    text
}

/// The lines of `text`, sorted.
pub fn sorted(text: &str) -> Vec<String> {
    let mut lines: Vec<_> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Every metric of the registry's protobuf encoding (what OTLP's model
/// reads), with its family's name, sorted.
pub fn protobuf(r: &Registry) -> Vec<String> {
    let families = prometheus_client::encoding::prometheus_protobuf::encode(r).unwrap();
    let mut metrics: Vec<_> = families
        .iter()
        .flat_map(|f| f.metric.iter().map(|m| format!("{:?} {m:?}", f.name)))
        .collect();
    metrics.sort();
    metrics
}
