//! OTLP/HTTP push (protobuf, `POST <endpoint>/v1/metrics`): every
//! interval, the same metrics a scrape would return (ring buffer drained
//! first, collectors read), read as one typed snapshot (model.rs) and
//! converted to OTLP. Counters become cumulative monotonic sums, gauges
//! gauges, histograms explicit-bucket histograms. A collector that is down
//! or answers an error is counted in
//! `edgewatch_export_errors_total{exporter="otlp",reason}` and the next
//! interval tries again; nothing blocks the scrape path.
//!
//! The protobuf types come from opentelemetry-proto (the OpenTelemetry
//! project's generated messages); the HTTP client is hyper's, already in
//! the tree through axum.

use std::{sync::Arc, time::Duration};

use axum::http::{Request, Uri, header};
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
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
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::watch;

use super::model::{
    self, as_integer,
    data::{LabelPair, MetricFamily, MetricType},
};
use crate::{
    aggregate,
    pipeline::FlushHandle,
    telemetry::{Telemetry, events::ExportFailed},
    vocab::{
        clock::unix_nanos,
        redact,
        spans::{SpanRecord, SpanSink},
    },
};

/// Every `reason` of `edgewatch_export_errors_total{exporter="otlp"}`.
pub const ERROR_REASONS: &[&str] = &["connect", "timeout", "http_status", "encode"];

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
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
    host: &str,
) -> ExportMetricsServiceRequest {
    let metrics = families
        .iter()
        .filter_map(|f| convert(f, start, now))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(host)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn resource(host: &str) -> Resource {
    Resource {
        attributes: vec![
            attr("service.name", "edgewatch"),
            attr("service.version", env!("CARGO_PKG_VERSION")),
            attr("host.name", host),
        ],
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
pub struct IdGen(u64);

impl IdGen {
    pub fn seeded() -> Self {
        Self(unix_nanos() ^ (u64::from(std::process::id()) << 32) | 1)
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Converts spans to an OTLP trace export request: each span is the root
/// of its own trace (the kernel event has no parent we could know).
pub fn to_trace_request(
    spans: Vec<SpanRecord>,
    ids: &mut IdGen,
    host: &str,
) -> ExportTraceServiceRequest {
    let spans = spans
        .into_iter()
        .map(|s| {
            let (mut attributes, error) = aggregate::span_attributes(&s.source);
            // The acting task's workload (k8s.*, container.*, cgroup, unit).
            if let Some(w) = &s.workload {
                attributes.extend(w.span_attributes());
            }
            let mut trace_id = ids.next().to_be_bytes().to_vec();
            trace_id.extend(ids.next().to_be_bytes());
            Span {
                trace_id,
                span_id: ids.next().to_be_bytes().to_vec(),
                name: s.name.to_string(),
                kind: if s.name == "tcp.connect" {
                    SpanKind::Client
                } else {
                    SpanKind::Internal
                } as i32,
                start_time_unix_nano: s.start_unix_ns,
                end_time_unix_nano: s.end_unix_ns,
                attributes: attributes.iter().map(|(k, v)| attr(k, v)).collect(),
                status: Some(match error {
                    Some(message) => Status {
                        message,
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
            resource: Some(resource(host)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub struct OtlpSettings {
    /// `<endpoint>/v1/metrics`
    pub uri: Uri,
    /// `<endpoint>/v1/traces` and the spans to send there.
    pub traces: Option<(Uri, SpanSink)>,
    pub interval: Duration,
    pub timeout: Duration,
}

type HttpClient =
    Client<hyper_util::client::legacy::connect::HttpConnector, Full<axum::body::Bytes>>;

/// POSTs one protobuf body; the error is (reason label, message).
async fn post(
    client: &HttpClient,
    uri: &Uri,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), (&'static str, String)> {
    let req = Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(axum::body::Bytes::from(body)))
        .map_err(|e| ("encode", format!("{e}")))?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err((
            "http_status",
            format!("collector answered {}", resp.status()),
        )),
        Ok(Err(e)) => Err(("connect", format!("{e}"))),
        Err(_) => Err(("timeout", format!("no answer within {timeout:?}"))),
    }
}

/// Pushes every interval until `shutdown`, and once more at shutdown.
pub async fn run(
    settings: OtlpSettings,
    registry: Arc<Registry>,
    flush: FlushHandle,
    telemetry: Telemetry,
    mut shutdown: watch::Receiver<bool>,
) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let start = unix_nanos();
    let host = hostname();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ids = IdGen::seeded();
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let _ = flush.flush(settings.timeout).await;
        let families = match model::snapshot(&registry) {
            Ok(families) => families,
            Err(e) => {
                telemetry.emit(ExportFailed {
                    exporter: "otlp",
                    reason: "encode",
                    error: &e,
                    endpoint: &settings.uri,
                });
                if stopping {
                    return;
                }
                continue;
            }
        };
        let body = to_request(&families, start, unix_nanos(), &host).encode_to_vec();
        let mut result = post(&client, &settings.uri, body, settings.timeout).await;
        if let Some((uri, sink)) = &settings.traces {
            let spans = sink.drain();
            if !spans.is_empty() && result.is_ok() {
                let body = to_trace_request(spans, &mut ids, &host).encode_to_vec();
                result = post(&client, uri, body, settings.timeout).await;
            }
        }
        if let Err((reason, error)) = result {
            telemetry.emit(ExportFailed {
                exporter: "otlp",
                reason,
                error: &error,
                endpoint: &redact::url(&settings.uri.to_string()),
            });
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{
        counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info,
    };

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

        let req = to_request(&model::snapshot(&r).unwrap(), 1, 2, "host");
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
}
