//! The typed snapshot (model.rs) and the queued spans, converted to OTLP
//! messages (opentelemetry-proto's generated types).
//!
//! Metrics: counters become cumulative monotonic sums named without their
//! `_total` (which a collector's Prometheus exporter appends again),
//! gauges gauges, histograms explicit-bucket histograms; labels become
//! attributes; no unit is set, so no exporter appends a unit suffix. The
//! names therefore map back to exactly the /metrics names (tested in
//! tests/golden.rs with the collector's own normalisation rules).
//!
//! Spans: built here, in the exporter's task, from the raw fields the
//! aggregators queued, with attribute names from the OpenTelemetry
//! semantic conventions where one exists (network.*, server.*, process.*,
//! error.type) and `edgewatch.*` otherwise.

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
    },
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};

use crate::{
    export::model::{
        self, as_integer,
        data::{LabelPair, MetricFamily, MetricType},
    },
    vocab::{
        clock::unix_nanos,
        kernel::{family_name, ip_addr, name_label},
        spans::{SpanData, SpanRecord},
    },
};

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn attrs(labels: &[LabelPair]) -> Vec<KeyValue> {
    labels.iter().map(|l| attr(&l.name, &l.value)).collect()
}

/// Integral values go as integers, others as doubles.
fn number(v: f64) -> number_data_point::Value {
    match as_integer(v) {
        Some(i) => number_data_point::Value::AsInt(i),
        None => number_data_point::Value::AsDouble(v),
    }
}

fn point(labels: &[LabelPair], v: f64, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number(v)),
        ..Default::default()
    }
}

/// Converts one family; None for a family with nothing to send. Counters
/// are named without their `_total` suffix, which a collector's Prometheus
/// exporter puts back.
fn convert(f: &MetricFamily, start: u64, now: u64) -> Option<Metric> {
    if f.metric.is_empty() {
        return None;
    }
    let cumulative = AggregationTemporality::Cumulative as i32;
    let (name, data) = match model::family_type(f) {
        MetricType::Counter => (
            f.name.strip_suffix("_total").unwrap_or(&f.name).to_string(),
            metric::Data::Sum(Sum {
                data_points: f
                    .metric
                    .iter()
                    .filter_map(|m| Some(point(&m.label, m.counter.as_ref()?.value, start, now)))
                    .collect(),
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
        ),
        MetricType::Histogram => (
            f.name.clone(),
            metric::Data::Histogram(Histogram {
                data_points: f
                    .metric
                    .iter()
                    .filter_map(|m| {
                        let h = m.histogram.as_ref()?;
                        // Cumulative buckets to OTLP's per-bucket counts.
                        let mut prev = 0;
                        let mut bucket_counts: Vec<u64> = h
                            .bucket
                            .iter()
                            .map(|b| {
                                let n = b.cumulative_count.saturating_sub(prev);
                                prev = b.cumulative_count;
                                n
                            })
                            .collect();
                        if h.bucket.last().is_none_or(|b| b.upper_bound.is_finite()) {
                            bucket_counts.push(h.sample_count.saturating_sub(prev));
                        }
                        Some(HistogramDataPoint {
                            attributes: attrs(&m.label),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: h.sample_count,
                            sum: Some(h.sample_sum),
                            bucket_counts,
                            explicit_bounds: h
                                .bucket
                                .iter()
                                .map(|b| b.upper_bound)
                                .filter(|b| b.is_finite())
                                .collect(),
                            ..Default::default()
                        })
                    })
                    .collect(),
                aggregation_temporality: cumulative,
            }),
        ),
        _ => (
            f.name.clone(),
            metric::Data::Gauge(Gauge {
                data_points: f
                    .metric
                    .iter()
                    .filter_map(|m| {
                        let v = m
                            .gauge
                            .as_ref()
                            .map(|g| g.value)
                            .or(m.untyped.as_ref().map(|u| u.value))?;
                        Some(point(&m.label, v, start, now))
                    })
                    .collect(),
            }),
        ),
    };
    Some(Metric {
        name,
        description: f.help.clone(),
        data: Some(data),
        ..Default::default()
    })
}

/// Converts a snapshot to an OTLP export request.
pub fn to_request(
    families: &[MetricFamily],
    start: u64,
    now: u64,
    resource: &Resource,
) -> ExportMetricsServiceRequest {
    let metrics = families
        .iter()
        .filter_map(|f| convert(f, start, now))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The resource every push carries: `attributes` (service.name first,
/// then OTEL_RESOURCE_ATTRIBUTES'), `service.version` and `host.name`
/// unless given.
pub fn resource(attributes: &[(String, String)], host: &str) -> Resource {
    let mut out: Vec<KeyValue> = attributes.iter().map(|(k, v)| attr(k, v)).collect();
    for (k, v) in [
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("host.name", host),
    ] {
        if !attributes.iter().any(|(key, _)| key == k) {
            out.push(attr(k, v));
        }
    }
    Resource {
        attributes: out,
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "edgewatch".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// A small non-cryptographic generator for trace and span ids.
pub struct IdGen(fastrand::Rng);

impl IdGen {
    pub fn seeded() -> Self {
        Self(fastrand::Rng::with_seed(
            unix_nanos() ^ (u64::from(std::process::id()) << 32),
        ))
    }

    /// A non-zero id (zero means "invalid" in OTLP).
    fn next(&mut self) -> u64 {
        self.0.u64(1..)
    }
}

/// The name, kind, attributes and error (if any) of a span.
fn describe(data: &SpanData) -> (&'static str, SpanKind, Vec<KeyValue>, Option<&'static str>) {
    match *data {
        SpanData::TcpConnect {
            family,
            daddr,
            dport,
            tgid,
            comm,
            outcome,
        } => {
            let mut a = vec![
                attr("network.transport", "tcp"),
                attr("network.type", family_name(family)),
            ];
            if let Some(peer) = ip_addr(family, &daddr) {
                let peer = peer.to_string();
                a.push(attr("network.peer.address", &peer));
                a.push(attr("server.address", &peer));
            }
            a.extend([
                int_attr("network.peer.port", i64::from(dport)),
                int_attr("server.port", i64::from(dport)),
                int_attr("process.pid", i64::from(tgid)),
                attr("process.command", &name_label(&comm)),
                attr("edgewatch.tcp.outcome", outcome),
            ]);
            let error = (outcome != "established").then_some(outcome);
            if let Some(e) = error {
                a.push(attr("error.type", e));
            }
            ("tcp.connect", SpanKind::Client, a, error)
        }
        SpanData::MapCall {
            update,
            map_id,
            map_name,
            map_type,
            elements,
            tgid,
            comm,
            error,
            key_hash,
            value_hash,
        } => {
            let mut a = vec![
                int_attr("edgewatch.bpf.map.id", i64::from(map_id)),
                attr("edgewatch.bpf.map.name", &name_label(&map_name)),
                attr("edgewatch.bpf.map.type", map_type),
                int_attr(
                    "edgewatch.bpf.map.elements",
                    i64::try_from(elements).unwrap_or(i64::MAX),
                ),
                int_attr("process.pid", i64::from(tgid)),
                attr("process.command", &name_label(&comm)),
            ];
            // The change log: one key's history across writers.
            if let Some(h) = key_hash {
                a.push(attr("edgewatch.bpf.map.key_hash", &format!("{h:016x}")));
            }
            if let Some(h) = value_hash {
                a.push(attr("edgewatch.bpf.map.value_hash", &format!("{h:016x}")));
            }
            if let Some(e) = error {
                a.push(attr("error.type", e));
            }
            let name = if update {
                "bpf.map.update"
            } else {
                "bpf.map.delete"
            };
            (name, SpanKind::Internal, a, error)
        }
    }
}

/// Converts spans to an OTLP trace export request: each span is the root
/// of its own trace (the kernel event has no parent we could know).
pub fn to_trace_request(
    spans: &[SpanRecord],
    ids: &mut IdGen,
    resource: &Resource,
) -> ExportTraceServiceRequest {
    let spans = spans
        .iter()
        .map(|s| {
            let (name, kind, mut attributes, error) = describe(&s.data);
            // The acting task's workload (k8s.*, container.*, cgroup, unit).
            if let Some(w) = &s.workload {
                attributes.extend(w.span_attributes().iter().map(|(k, v)| attr(k, v)));
            }
            let mut trace_id = ids.next().to_be_bytes().to_vec();
            trace_id.extend(ids.next().to_be_bytes());
            Span {
                trace_id,
                span_id: ids.next().to_be_bytes().to_vec(),
                name: name.to_string(),
                kind: kind as i32,
                start_time_unix_nano: s.start_unix_ns,
                end_time_unix_nano: s.end_unix_ns,
                attributes,
                status: Some(match error {
                    Some(message) => Status {
                        message: message.to_string(),
                        code: StatusCode::Error as i32,
                    },
                    None => Status {
                        message: String::new(),
                        code: StatusCode::Unset as i32,
                    },
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{
        counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info,
    };

    use prometheus_client::registry::Registry;
    use prost::Message;

    use super::*;

    #[test]
    fn converts_counters_gauges_and_histograms() {
        let mut r = Registry::default();
        let c = Family::<Vec<(String, String)>, Counter>::default();
        c.get_or_create(&vec![("r".into(), "ok".into())]).inc_by(5);
        r.register("c", "Calls", c);
        let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        g.set(0.25);
        r.register("g", "Level", g);
        let h = Family::<Vec<(String, String)>, Histogram, fn() -> Histogram>::new_with_constructor(
            || Histogram::new([0.1, 1.0]),
        );
        {
            let p = h.get_or_create(&vec![("f".into(), "a".into())]);
            for v in [0.05, 0.5, 0.7, 5.0] {
                p.observe(v);
            }
        }
        r.register("h", "Durations", h);
        r.register("b", "Build", Info::new(vec![("version", "1")]));
        r.register(
            "empty",
            "Nothing yet",
            Family::<Vec<(String, String)>, Counter>::default(),
        );

        let req = to_request(&model::snapshot(&r).unwrap(), 1, 2, &resource(&[], "host"));
        let m = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(m.len(), 4, "the empty family is left out");
        let Some(metric::Data::Sum(s)) = &m[0].data else {
            panic!("sum")
        };
        assert!(s.is_monotonic);
        assert_eq!(m[0].name, "c");
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsInt(5))
        );
        assert_eq!(s.data_points[0].attributes[0].key, "r");
        assert_eq!(s.data_points[0].start_time_unix_nano, 1);
        let Some(metric::Data::Gauge(g)) = &m[1].data else {
            panic!("gauge")
        };
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsDouble(0.25))
        );
        let Some(metric::Data::Histogram(h)) = &m[2].data else {
            panic!("histogram")
        };
        let p = &h.data_points[0];
        assert_eq!((p.count, p.sum), (4, Some(6.25)));
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 1]);
        assert_eq!(p.attributes.len(), 1);
        assert_eq!(m[3].name, "b_info");
        let Some(metric::Data::Gauge(b)) = &m[3].data else {
            panic!("info as a gauge")
        };
        assert_eq!(
            b.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        assert_eq!(b.data_points[0].attributes[0].key, "version");
        // Round trip through the wire format.
        let bytes = req.encode_to_vec();
        assert_eq!(
            ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap(),
            req
        );
    }

    #[test]
    fn spans_carry_semantic_convention_attributes() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let spans = [
            SpanRecord {
                start_unix_ns: 10,
                end_unix_ns: 25,
                data: SpanData::TcpConnect {
                    family: libc::AF_INET as u16,
                    daddr,
                    dport: 443,
                    tgid: 42,
                    comm,
                    outcome: "refused",
                },
                workload: Some(std::sync::Arc::new(crate::vocab::workload::parse(
                    "/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
                ))),
            },
            SpanRecord {
                start_unix_ns: 30,
                end_unix_ns: 31,
                data: SpanData::MapCall {
                    update: false,
                    map_id: 7,
                    map_name: comm,
                    map_type: "hash",
                    elements: 3,
                    tgid: 42,
                    comm,
                    error: None,
                    key_hash: Some(0xaf63_bd4c_8601_b7df),
                    value_hash: None,
                },
                workload: None,
            },
        ];
        let req = to_trace_request(&spans, &mut IdGen::seeded(), &resource(&[], "h"));
        let s = &req.resource_spans[0].scope_spans[0].spans;
        let get = |i: usize, k: &str| {
            s[i].attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone()?.value)
        };
        let text = |v: &str| Some(any_value::Value::StringValue(v.into()));
        let int = |v: i64| Some(any_value::Value::IntValue(v));
        assert_eq!(
            (s[0].name.as_str(), s[0].kind),
            ("tcp.connect", SpanKind::Client as i32)
        );
        assert_eq!(
            (s[0].start_time_unix_nano, s[0].end_time_unix_nano),
            (10, 25)
        );
        assert_eq!(get(0, "network.peer.address"), text("10.0.0.1"));
        assert_eq!(get(0, "server.address"), text("10.0.0.1"));
        assert_eq!(get(0, "network.peer.port"), int(443));
        assert_eq!(get(0, "server.port"), int(443));
        assert_eq!(get(0, "network.type"), text("ipv4"));
        assert_eq!(get(0, "network.transport"), text("tcp"));
        assert_eq!(get(0, "process.pid"), int(42));
        assert_eq!(get(0, "process.command"), text("curl"));
        assert_eq!(get(0, "error.type"), text("refused"));
        // The workload, when resolution is on.
        assert_eq!(
            get(0, "container.id"),
            text("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_eq!(get(0, "container.runtime.name"), text("docker"));
        assert_eq!(get(1, "container.id"), None);
        assert_eq!(s[0].status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert_eq!(
            (s[1].name.as_str(), s[1].kind),
            ("bpf.map.delete", SpanKind::Internal as i32)
        );
        assert_eq!(get(1, "edgewatch.bpf.map.id"), int(7));
        assert_eq!(get(1, "edgewatch.bpf.map.elements"), int(3));
        assert_eq!(get(1, "error.type"), None);
        assert_eq!(s[1].status.as_ref().unwrap().code, StatusCode::Unset as i32);
        assert_ne!(s[0].trace_id, s[1].trace_id);
        assert_eq!((s[0].trace_id.len(), s[0].span_id.len()), (16, 8));
    }
}
