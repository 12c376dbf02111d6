//! The one typed metrics model both exports read: a snapshot of the
//! registry (aggregators' families and every scrape-time collector) as
//! Prometheus' own protobuf data model (`io.prometheus.client`, encoded by
//! prometheus-client). OTLP is built from it in otlp.rs. The classic text
//! writer here is the reference that /metrics' one-pass text (text.rs) is
//! held to, byte for byte, by its tests and the golden expositions; /metrics
//! does not use it, as the model costs an owned `Metric` per series.
//!
//! In this model family names carry their `_total` and `_info` suffixes,
//! histogram buckets are cumulative, and every value is a double. The text
//! writer prints an integral value without a fraction (`7`, not `7.0`), as
//! Prometheus' own clients do, and any other through dtoa, as
//! prometheus-client's text encoder does (`0.25`, `1e-5`).

use std::fmt::Write;

use prometheus_client::{
    encoding::prometheus_protobuf::prometheus_data_model::{LabelPair, MetricFamily, MetricType},
    registry::Registry,
};

pub use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as data;

/// Reads every family and collector of `registry` once.
pub fn snapshot(registry: &Registry) -> Result<Vec<MetricFamily>, std::fmt::Error> {
    prometheus_client::encoding::prometheus_protobuf::encode(registry)
}

/// The family's type; untyped for values this build does not know.
pub fn family_type(f: &MetricFamily) -> MetricType {
    MetricType::try_from(f.r#type).unwrap_or(MetricType::Untyped)
}

/// `v` as an integer if it is one that a double holds exactly.
pub fn as_integer(v: f64) -> Option<i64> {
    const EXACT: f64 = (1u64 << 53) as f64;
    (v.fract() == 0.0 && v.abs() <= EXACT).then_some(v as i64)
}

/// Writes a sample value the way the text format spells it.
pub fn write_value(v: f64, out: &mut String) {
    if let Some(i) = as_integer(v) {
        out.push_str(itoa::Buffer::new().format(i));
    } else if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        out.push_str(dtoa::Buffer::new().format(v));
    }
}

/// `v` escaped as the text format wants it: backslash and line feed, and
/// the double quote in label values (`quote`).
pub(super) fn escape(v: &str, quote: bool, out: &mut String) {
    // Most values need no escaping: one copy.
    if !v
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"'))
    {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' if quote => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_labels(out: &mut String, first: Option<(&str, &str)>, labels: &[LabelPair]) {
    if first.is_none() && labels.is_empty() {
        return;
    }
    out.push('{');
    let mut sep = "";
    for (name, value) in first
        .into_iter()
        .chain(labels.iter().map(|l| (l.name.as_str(), l.value.as_str())))
    {
        out.push_str(sep);
        out.push_str(name);
        out.push_str("=\"");
        escape(value, true, out);
        out.push('"');
        sep = ",";
    }
    out.push('}');
}

fn write_sample(out: &mut String, name: &str, labels: &[LabelPair], le: Option<&str>, v: f64) {
    out.push_str(name);
    write_labels(out, le.map(|le| ("le", le)), labels);
    out.push(' ');
    write_value(v, out);
    out.push('\n');
}

/// Writes the families in the Prometheus text format 0.0.4, histograms with
/// `_sum` and `_count` before their `_bucket{le}` samples, as
/// prometheus-client's own text encoder orders them.
pub fn write_prometheus_text(families: &[MetricFamily], out: &mut String) {
    for f in families {
        let ty = match family_type(f) {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            _ => "untyped",
        };
        let name = f.name.as_str();
        let _ = write!(out, "# HELP {name} ");
        escape(&f.help, false, out);
        let _ = writeln!(out, "\n# TYPE {name} {ty}");
        for m in &f.metric {
            if let Some(c) = &m.counter {
                write_sample(out, name, &m.label, None, c.value);
            }
            if let Some(g) = &m.gauge {
                write_sample(out, name, &m.label, None, g.value);
            }
            if let Some(u) = &m.untyped {
                write_sample(out, name, &m.label, None, u.value);
            }
            if let Some(h) = &m.histogram {
                let sum = format!("{name}_sum");
                let count = format!("{name}_count");
                let bucket = format!("{name}_bucket");
                write_sample(out, &sum, &m.label, None, h.sample_sum);
                write_sample(out, &count, &m.label, None, h.sample_count as f64);
                for b in &h.bucket {
                    // Bounds keep prometheus-client's spelling (`1.0`, `1e-5`).
                    let le = if b.upper_bound == f64::INFINITY {
                        "+Inf".to_string()
                    } else {
                        dtoa::Buffer::new().format(b.upper_bound).to_string()
                    };
                    write_sample(out, &bucket, &m.label, Some(&le), b.cumulative_count as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
        info::Info,
    };

    use super::*;

    fn registry() -> Registry {
        let mut r = Registry::default();
        let c = Family::<Vec<(String, String)>, Counter>::default();
        c.get_or_create(&vec![("k".into(), "v \"q\" \\ \n".into())])
            .inc_by(3);
        r.register("things", "Things seen", c);
        let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        g.set(0.25);
        r.register("level", "Level", g);
        let i: Gauge = Gauge::default();
        i.set(-7);
        r.register("depth", "Depth", i);
        r.register("build", "Build", Info::new(vec![("version", "1.2.3")]));
        let h = Family::<Vec<(String, String)>, Histogram, fn() -> Histogram>::new_with_constructor(
            || Histogram::new([1e-5, 0.5, 2.0]),
        );
        {
            let hh = h.get_or_create(&vec![("f".into(), "a".into())]);
            hh.observe(0.1);
            hh.observe(1.0);
            hh.observe(100.0);
        }
        r.register("dur_seconds", "Durations", h);
        r.register("secs", "Seconds", ConstCounter::new(0.004f64));
        r
    }

    #[test]
    fn writes_the_classic_text_format() {
        let mut text = String::new();
        write_prometheus_text(&snapshot(&registry()).unwrap(), &mut text);
        assert_eq!(
            text,
            "# HELP things_total Things seen.\n\
             # TYPE things_total counter\n\
             things_total{k=\"v \\\"q\\\" \\\\ \\n\"} 3\n\
             # HELP level Level.\n\
             # TYPE level gauge\n\
             level 0.25\n\
             # HELP depth Depth.\n\
             # TYPE depth gauge\n\
             depth -7\n\
             # HELP build_info Build.\n\
             # TYPE build_info gauge\n\
             build_info{version=\"1.2.3\"} 1\n\
             # HELP dur_seconds Durations.\n\
             # TYPE dur_seconds histogram\n\
             dur_seconds_sum{f=\"a\"} 101.1\n\
             dur_seconds_count{f=\"a\"} 3\n\
             dur_seconds_bucket{le=\"0.00001\",f=\"a\"} 0\n\
             dur_seconds_bucket{le=\"0.5\",f=\"a\"} 1\n\
             dur_seconds_bucket{le=\"2.0\",f=\"a\"} 2\n\
             dur_seconds_bucket{le=\"+Inf\",f=\"a\"} 3\n\
             # HELP secs_total Seconds.\n\
             # TYPE secs_total counter\n\
             secs_total 0.004\n"
        );
    }

    #[test]
    fn the_same_samples_as_prometheus_clients_own_text_encoder() {
        // Every sample line of the OpenMetrics encoding, in the classic
        // spelling (no `.0` on integral values), is in ours and vice versa.
        let r = registry();
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &r).unwrap();
        let mut text = String::new();
        write_prometheus_text(&snapshot(&r).unwrap(), &mut text);
        let samples = |t: &str| -> Vec<String> {
            let mut v: Vec<String> = t
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.strip_suffix(".0").unwrap_or(l).to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(samples(&text), samples(&om));
    }
}
