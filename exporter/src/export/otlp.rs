//! OTLP/HTTP metrics push (protobuf, `POST <endpoint>/v1/metrics`): every
//! interval, the same exposition a scrape would return (ring buffer drained
//! first, collectors read) is converted to OTLP and sent to a collector.
//! Counters become cumulative monotonic sums, gauges gauges, histograms
//! explicit-bucket histograms. A collector that is down or answers an error
//! is counted in `edgewatch_export_errors_total{exporter="otlp",reason}` and
//! the next interval tries again; nothing blocks the scrape path.
//!
//! The protobuf types come from opentelemetry-proto (the OpenTelemetry
//! project's generated messages); the HTTP client is hyper's, already in
//! the tree through axum.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

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
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use prost::Message;
use tokio::sync::watch;

use super::openmetrics::{Kind, MetricFamily, parse};
use crate::aggregate::labels::label_set;
use crate::{
    aggregate::spans::{SpanRecord, SpanSink},
    pipeline::FlushHandle,
};

label_set! {
    pub struct ExportErrorLabels {
        pub exporter: &'static str,
        pub reason: &'static str,
    }
}

/// Registers `edgewatch_export_errors_total`.
pub fn register_errors(registry: &mut Registry) -> Family<ExportErrorLabels, Counter> {
    let f = Family::<ExportErrorLabels, Counter>::default();
    registry.register(
        "edgewatch_export_errors",
        "Failed pushes to an exporter's destination, by exporter and reason",
        f.clone(),
    );
    f
}

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn number(value: &str) -> Option<number_data_point::Value> {
    if let Ok(i) = value.parse::<i64>() {
        return Some(number_data_point::Value::AsInt(i));
    }
    let f = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(number_data_point::Value::AsDouble(f))
}

fn points(f: &MetricFamily, start: u64, now: u64) -> Vec<NumberDataPoint> {
    f.samples
        .iter()
        .filter(|s| !s.name.ends_with("_created"))
        .map(|s| NumberDataPoint {
            attributes: s.labels.iter().map(|(k, v)| attr(k, v)).collect(),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: number(&s.value),
            ..Default::default()
        })
        .collect()
}

/// One histogram series being assembled: its labels without `le`, the
/// point, and its cumulative (bound, count) buckets.
type HistogramGroup = (Vec<(String, String)>, HistogramDataPoint, Vec<(f64, u64)>);

fn histogram_points(f: &MetricFamily, start: u64, now: u64) -> Vec<HistogramDataPoint> {
    // Group by label set without `le`, in first-seen order.
    let mut groups: Vec<HistogramGroup> = Vec::new();
    for s in &f.samples {
        let labels: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        let i = match groups.iter().position(|g| g.0 == labels) {
            Some(i) => i,
            None => {
                groups.push((
                    labels.clone(),
                    HistogramDataPoint {
                        attributes: labels.iter().map(|(k, v)| attr(k, v)).collect(),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        ..Default::default()
                    },
                    Vec::new(),
                ));
                groups.len() - 1
            }
        };
        let g = &mut groups[i];
        if s.name.ends_with("_sum") {
            g.1.sum = s.value.parse().ok();
        } else if s.name.ends_with("_count") {
            g.1.count = s.value.parse().unwrap_or(0);
        } else if s.name.ends_with("_bucket") {
            let le = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v.as_str());
            let bound = match le {
                Some("+Inf") => f64::INFINITY,
                Some(v) => v.parse().unwrap_or(f64::INFINITY),
                None => continue,
            };
            g.2.push((bound, s.value.parse().unwrap_or(0)));
        }
    }
    groups
        .into_iter()
        .map(|(_, mut p, mut buckets)| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            // OpenMetrics buckets are cumulative; OTLP's are per bucket.
            let mut prev = 0;
            for (bound, cumulative) in buckets {
                if bound.is_finite() {
                    p.explicit_bounds.push(bound);
                }
                p.bucket_counts.push(cumulative.saturating_sub(prev));
                prev = cumulative;
            }
            p
        })
        .collect()
}

/// Converts an exposition to an OTLP export request.
pub fn to_request(
    families: &[MetricFamily],
    start: u64,
    now: u64,
    host: &str,
) -> ExportMetricsServiceRequest {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let metrics = families
        .iter()
        .filter(|f| !f.samples.is_empty())
        .map(|f| {
            let (name, data) = match f.kind {
                Kind::Counter => (
                    f.name.clone(),
                    metric::Data::Sum(Sum {
                        data_points: points(f, start, now),
                        aggregation_temporality: cumulative,
                        is_monotonic: true,
                    }),
                ),
                Kind::Histogram => (
                    f.name.clone(),
                    metric::Data::Histogram(Histogram {
                        data_points: histogram_points(f, start, now),
                        aggregation_temporality: cumulative,
                    }),
                ),
                Kind::Info => (
                    format!("{}_info", f.name),
                    metric::Data::Gauge(Gauge {
                        data_points: points(f, start, now),
                    }),
                ),
                Kind::Gauge | Kind::Unknown => (
                    f.name.clone(),
                    metric::Data::Gauge(Gauge {
                        data_points: points(f, start, now),
                    }),
                ),
            };
            Metric {
                name,
                description: f.help.clone(),
                data: Some(data),
                ..Default::default()
            }
        })
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
                attributes: s.attributes.iter().map(|(k, v)| attr(k, v)).collect(),
                status: Some(match s.error {
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

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
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
    errors: Family<ExportErrorLabels, Counter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let start = unix_nanos();
    let host = hostname();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_log: Option<std::time::Instant> = None;
    let mut ids = IdGen::seeded();
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let _ = flush.flush(settings.timeout).await;
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            errors
                .get_or_create(&ExportErrorLabels {
                    exporter: "otlp",
                    reason: "encode",
                })
                .inc();
            continue;
        }
        let body = to_request(&parse(&text), start, unix_nanos(), &host).encode_to_vec();
        let mut result = post(&client, &settings.uri, body, settings.timeout).await;
        if let Some((uri, sink)) = &settings.traces {
            let spans = sink.drain();
            if !spans.is_empty() && result.is_ok() {
                let body = to_trace_request(spans, &mut ids, &host).encode_to_vec();
                result = post(&client, uri, body, settings.timeout).await;
            }
        }
        if let Err((reason, error)) = result {
            errors
                .get_or_create(&ExportErrorLabels {
                    exporter: "otlp",
                    reason,
                })
                .inc();
            let now = std::time::Instant::now();
            if last_log.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60)) {
                last_log = Some(now);
                tracing::warn!(%error, endpoint = %crate::redact::url(&settings.uri.to_string()), "OTLP push failed (counted in edgewatch_export_errors_total; retrying every interval)");
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_counters_gauges_and_histograms() {
        let text = "# HELP c Calls.\n# TYPE c counter\nc_total{r=\"ok\"} 5\n\
            # HELP g Level.\n# TYPE g gauge\ng 0.25\n\
            # HELP h Durations.\n# TYPE h histogram\n\
            h_sum{f=\"a\"} 1.5\nh_count{f=\"a\"} 4\n\
            h_bucket{le=\"0.1\",f=\"a\"} 1\nh_bucket{le=\"1.0\",f=\"a\"} 3\nh_bucket{le=\"+Inf\",f=\"a\"} 4\n\
            # HELP b Build.\n# TYPE b info\nb_info{version=\"1\"} 1\n# EOF\n";
        let req = to_request(&parse(text), 1, 2, "host");
        let m = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(m.len(), 4);
        let Some(metric::Data::Sum(s)) = &m[0].data else {
            panic!("sum")
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsInt(5))
        );
        assert_eq!(s.data_points[0].attributes[0].key, "r");
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
        assert_eq!((p.count, p.sum), (4, Some(1.5)));
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 1]);
        assert_eq!(p.attributes.len(), 1);
        assert_eq!(m[3].name, "b_info");
        // Round trip through the wire format.
        let bytes = req.encode_to_vec();
        assert_eq!(
            ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap(),
            req
        );
    }
}
