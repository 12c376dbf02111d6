//! OTLP push, over gRPC or HTTP/protobuf, with TLS, headers, gzip and
//! retries. Every interval edgewatch drains the ring buffer, reads the same
//! typed snapshot a scrape would (model.rs), converts it (convert.rs) and
//! pushes it to the metrics target; queued spans go to the traces target
//! in batches. Both signals push concurrently, each with its own
//! [`Transport`], and retry retryable failures with backoff until the next
//! interval is due (retry.rs).
//!
//! Failures are counted in `edgewatch_export_errors_total{exporter="otlp",
//! signal,reason}` once a push has failed for good, and each retry in
//! `edgewatch_export_retries_total`. Nothing accumulates while a collector
//! is down: metrics are cumulative, so a missed push loses nothing, and
//! spans wait in the sink's bounded queue. On shutdown one last push runs,
//! bounded by the request timeout.
//!
//! Crates: opentelemetry-proto for the messages and the generated gRPC
//! clients, tonic for the gRPC channel, hyper-util for HTTP, hyper-rustls
//! and rustls for TLS (tls.rs), flate2 for gzip bodies, tonic-types for
//! gRPC's RetryInfo. Not opentelemetry-otlp: its exporters read the
//! OTEL_* headers themselves and let them override the ones given in code,
//! retry internally without telling how often or why, and report failures
//! as strings, so neither "flags win over the environment" nor the
//! counters above could hold through it.

pub mod convert;
pub mod retry;
pub mod settings;
pub mod tls;
pub mod transport;

/// Every `reason` of `edgewatch_export_errors_total{exporter="otlp"}`.
pub const ERROR_REASONS: &[&str] = &[
    "connect",
    "tls",
    "timeout",
    "unavailable",
    "throttled",
    "rejected",
    "encode",
];

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use self::{
    convert::{IdGen, to_request, to_trace_request},
    retry::{Backoff, Ended, Failure, with_retries},
    settings::OtlpSettings,
    transport::{Partial, Payload, Transport, TransportError},
};
use super::model;
use crate::{
    pipeline::FlushHandle,
    telemetry::{
        Telemetry,
        events::{ExportFailed, ExportPartial, ExportRetried},
    },
    vocab::{clock::unix_nanos, spans::SpanSink},
};

/// Spans per trace push: about 300 bytes each encoded, well under a
/// collector's default 4 MiB gRPC message limit.
pub const SPAN_BATCH: usize = 2048;

/// One signal's transport and its state across pushes.
struct Push {
    transport: Transport,
    /// The target's URL as it may be logged.
    endpoint: String,
    backoff_seed: u64,
    /// The server asked us to wait until then (Retry-After, RetryInfo).
    hold_until: Option<Instant>,
}

impl Push {
    fn new(transport: Transport) -> Self {
        Self {
            endpoint: settings::redact_url(&transport.target().uri.to_string()),
            transport,
            backoff_seed: unix_nanos(),
            hold_until: None,
        }
    }

    fn signal(&self) -> &'static str {
        self.transport.target().signal.as_str()
    }

    /// Pushes one payload with retries until `deadline`; true if sent.
    async fn push(&mut self, payload: Payload, deadline: Instant, telemetry: &Telemetry) -> bool {
        if self.hold_until.is_some_and(|t| Instant::now() < t) {
            tracing::debug!(
                signal = self.signal(),
                "holding off: the collector asked to wait"
            );
            return false;
        }
        self.hold_until = None;
        let signal = self.signal();
        let endpoint = self.endpoint.clone();
        let fail = |failure: &Failure| {
            telemetry.emit(ExportFailed {
                exporter: "otlp",
                signal,
                reason: failure.reason,
                error: failure,
                endpoint: &endpoint,
            })
        };
        let body = match self.transport.encode(&payload) {
            Ok(body) => body,
            Err(failure) => {
                fail(&failure);
                return false;
            }
        };
        self.backoff_seed = self.backoff_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut backoff = Backoff::new(self.backoff_seed);
        let partial = std::sync::Mutex::new(Partial::default());
        let (transport, payload, body, answer) = (&self.transport, &payload, &body, &partial);
        let ended = with_retries(
            deadline,
            &mut backoff,
            || async move {
                let p = transport.send(payload, body.as_ref()).await?;
                *answer.lock().unwrap_or_else(|e| e.into_inner()) = p;
                Ok(())
            },
            |failure, delay| {
                telemetry.emit(ExportRetried {
                    exporter: "otlp",
                    signal,
                    reason: failure.reason,
                    error: failure,
                    delay,
                })
            },
        )
        .await;
        match ended {
            Ended::Sent => {
                let partial = partial.into_inner().unwrap_or_else(|e| e.into_inner());
                if partial.rejected > 0 || !partial.message.is_empty() {
                    telemetry.emit(ExportPartial {
                        signal,
                        rejected: partial.rejected,
                        message: &partial.message,
                    });
                }
                true
            }
            Ended::Failed {
                failure,
                hold_until,
            } => {
                self.hold_until = hold_until;
                fail(&failure);
                false
            }
        }
    }
}

/// The OTLP exporter, its transports built.
pub struct Exporter {
    metrics: Option<Push>,
    traces: Option<Push>,
    spans: SpanSink,
    interval: Duration,
    /// Bounds the last push at shutdown.
    final_budget: Duration,
    resource: Resource,
    registry: Arc<Registry>,
    flush: FlushHandle,
    telemetry: Telemetry,
}

impl Exporter {
    /// Builds the transports (reading TLS files and system roots). Runs in
    /// the tokio runtime.
    pub fn new(
        settings: &OtlpSettings,
        spans: SpanSink,
        registry: Arc<Registry>,
        flush: FlushHandle,
        telemetry: Telemetry,
    ) -> Result<Self, TransportError> {
        let mut final_budget = Duration::ZERO;
        let mut build = |t: &Option<settings::Target>| -> Result<Option<Push>, TransportError> {
            let Some(t) = t else { return Ok(None) };
            final_budget = final_budget.max(t.timeout);
            if t.is_https() && t.tls.insecure_skip_verify {
                tracing::warn!(
                    signal = t.signal.as_str(),
                    "otlp.tls.insecure_skip_verify: the collector's certificate is not verified"
                );
            }
            tracing::info!(signal = t.signal.as_str(), target = %t, "pushing over OTLP");
            Ok(Some(Push::new(Transport::new(t)?)))
        };
        let metrics = build(&settings.metrics)?;
        let traces = build(&settings.traces)?;
        Ok(Self {
            metrics,
            traces,
            spans,
            interval: settings.interval,
            final_budget,
            resource: convert::resource(&settings.resource, &hostname()),
            registry,
            flush,
            telemetry,
        })
    }

    /// Pushes every interval until `shutdown`, then once more within the
    /// request timeout.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let start = unix_nanos();
        let budget = self.final_budget;
        let mut ids = IdGen::seeded();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break Instant::now() + budget,
            }
            // Retries stop when the next push is due. A shutdown during a
            // cycle lets it finish within the last push's budget: its
            // request may already be with the collector, and cutting it
            // would leave its spans queued for the last push to send again
            // (a duplicate the collector cannot tell apart).
            let deadline = Instant::now() + self.interval;
            let cycle = self.cycle(start, deadline, &mut ids);
            tokio::pin!(cycle);
            let stop = tokio::select! {
                () = &mut cycle => false,
                _ = shutdown.changed() => true,
            };
            if stop {
                let end = Instant::now() + budget;
                if tokio::time::timeout_at(end.into(), cycle).await.is_err() {
                    tracing::warn!(
                        ?budget,
                        "the OTLP push in flight at shutdown did not finish in time"
                    );
                    return;
                }
                break end;
            }
        };
        let last = self.cycle(start, end, &mut ids);
        if tokio::time::timeout_at(end.into(), last).await.is_err() {
            tracing::warn!(
                ?budget,
                "the last OTLP push at shutdown did not finish in time"
            );
        }
    }

    /// One push of each signal, concurrently, until `deadline`.
    async fn cycle(&mut self, start: u64, deadline: Instant, ids: &mut IdGen) {
        let Self {
            metrics,
            traces,
            spans,
            resource,
            registry,
            flush,
            telemetry,
            ..
        } = self;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let _ = flush.flush(remaining).await;
        let (resource, telemetry) = (&*resource, &*telemetry);
        let metrics = async {
            let Some(push) = metrics.as_mut() else {
                return;
            };
            match model::snapshot(registry) {
                Ok(families) => {
                    let req = to_request(&families, start, unix_nanos(), resource);
                    push.push(Payload::Metrics(req), deadline, telemetry).await;
                }
                Err(e) => telemetry.emit(ExportFailed {
                    exporter: "otlp",
                    signal: "metrics",
                    reason: "encode",
                    error: &e,
                    endpoint: &push.endpoint,
                }),
            }
        };
        let traces = async {
            let Some(push) = traces.as_mut() else {
                return;
            };
            // The spans queued now, in batches, until the next push is
            // due: later ones wait for the next interval, so a busy host
            // cannot hold up the metrics' next push.
            let mut batches = spans.len().div_ceil(SPAN_BATCH);
            while batches > 0 && Instant::now() < deadline {
                batches -= 1;
                let batch = spans.peek(SPAN_BATCH);
                if batch.is_empty() {
                    break;
                }
                let req = to_trace_request(&batch, ids, resource);
                if !push.push(Payload::Traces(req), deadline, telemetry).await {
                    break;
                }
                spans.commit(batch.len());
            }
        };
        tokio::join!(metrics, traces);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
