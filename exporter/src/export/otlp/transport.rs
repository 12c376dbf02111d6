//! The two OTLP transports behind one call, [`Transport::send`]:
//! - gRPC: opentelemetry-proto's generated tonic clients
//!   (`MetricsServiceClient`, `TraceServiceClient`) on a tonic channel;
//! - HTTP/protobuf: a POST of the encoded message through hyper-util's
//!   client (HTTP/1.1).
//!
//! Both connect through hyper-rustls' connector (TLS for https, plain TCP
//! for http), wrapped so that a failed connection says whether TCP, TLS or
//! the connect timeout failed. Every failure is classified once, here,
//! into a bounded reason and whether the OTLP spec calls it retryable:
//!
//! | reason | gRPC | HTTP | retried |
//! |---|---|---|---|
//! | connect | connection refused, reset, DNS | same | yes |
//! | timeout | no answer within the timeout | same | yes |
//! | tls | handshake or certificate failure | same | no |
//! | unavailable | UNAVAILABLE, CANCELLED, ABORTED, OUT_OF_RANGE, DATA_LOSS | 502, 503, 504 | yes |
//! | throttled | RESOURCE_EXHAUSTED | 429 | yes |
//! | rejected | any other status | any other non-2xx | no |

use std::{
    error::Error as StdError,
    future::Future,
    io::Write as _,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use axum::{
    body::Bytes,
    http::{HeaderMap, Request, Uri, header},
};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_client::MetricsServiceClient,
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_client::TraceServiceClient,
    },
};
use prost::Message;
use tonic::{
    Code, Status,
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

use super::{
    retry::{Failure, parse_retry_after},
    settings::{Protocol, Signal, Target, redact_url},
    tls::{self, TlsError},
};

const USER_AGENT: &str = concat!("edgewatch/", env!("CARGO_PKG_VERSION"));

/// A message to push.
#[derive(Debug, Clone)]
pub enum Payload {
    Metrics(ExportMetricsServiceRequest),
    Traces(ExportTraceServiceRequest),
}

/// What a successful push's response said about rejected items.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Partial {
    pub rejected: i64,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("otlp {signal} endpoint: {error}")]
    Tls {
        signal: &'static str,
        error: TlsError,
    },
    #[error("otlp {signal} endpoint {uri}: {error}")]
    Endpoint {
        signal: &'static str,
        uri: String,
        error: String,
    },
}

/// What the last failed connection attempt was: 0 none, else a reason.
const KINDS: [&str; 4] = ["", "connect", "tls", "timeout"];

/// hyper-rustls' connector with a connect timeout, recording why the last
/// connection failed (tonic turns every connect error into UNAVAILABLE and
/// keeps only its text; the kind survives here).
#[derive(Clone)]
struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
    last_failure: Arc<AtomicU8>,
}

fn has_tls_error(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        next = e.source();
    }
    false
}

impl tower_service::Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connect = self.inner.call(uri);
        let (timeout, last) = (self.timeout, self.last_failure.clone());
        Box::pin(async move {
            let (kind, error): (u8, Self::Error) =
                match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(io)) => return Ok(io),
                    Ok(Err(e)) if has_tls_error(e.as_ref()) => (2, e),
                    Ok(Err(e)) => (1, e),
                    Err(_) => (3, format!("connecting took longer than {timeout:?}").into()),
                };
            last.store(kind, Ordering::Relaxed);
            Err(error)
        })
    }
}

enum Inner {
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
    },
    Http {
        client: Box<Client<Connector, Full<Bytes>>>,
        headers: HeaderMap,
    },
}

/// One signal's connection to its collector.
pub struct Transport {
    target: Target,
    client: Inner,
    last_failure: Arc<AtomicU8>,
}

impl Transport {
    /// Builds the client; connects lazily, on the first push. Must run
    /// inside the tokio runtime (the gRPC channel spawns its worker).
    pub fn new(target: &Target) -> Result<Self, TransportError> {
        let signal = target.signal.as_str();
        let alpn_h2 = target.protocol == Protocol::Grpc;
        let tls_config = if target.is_https() {
            tls::client_config(&target.tls, Vec::new(), true)
        } else {
            // Never used for http:// URLs; no roots to load.
            tls::client_config(&super::settings::Tls::default(), Vec::new(), false)
        }
        .map_err(|error| TransportError::Tls { signal, error })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http();
        let inner = if alpn_h2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let last_failure = Arc::new(AtomicU8::new(0));
        let connector = Connector {
            inner,
            timeout: target.timeout,
            last_failure: last_failure.clone(),
        };
        let endpoint_error = |error: String| TransportError::Endpoint {
            signal,
            uri: redact_url(&target.uri.to_string()),
            error,
        };
        let client = match target.protocol {
            Protocol::Grpc => {
                let endpoint = Endpoint::from(target.uri.clone())
                    .user_agent(USER_AGENT)
                    .map_err(|e| endpoint_error(e.to_string()))?
                    .timeout(target.timeout);
                let mut metadata = MetadataMap::new();
                for h in &target.headers {
                    let key = MetadataKey::from_bytes(h.name.as_str().as_bytes())
                        .map_err(|e| endpoint_error(format!("header {}: {e}", h.name)))?;
                    let value = MetadataValue::try_from(h.value.as_bytes())
                        .map_err(|e| endpoint_error(format!("header {}: {e}", h.name)))?;
                    metadata.append(key, value);
                }
                Inner::Grpc {
                    channel: endpoint.connect_with_connector_lazy(connector),
                    metadata,
                }
            }
            Protocol::HttpProtobuf => {
                let mut headers = HeaderMap::new();
                for h in &target.headers {
                    headers.append(h.name.clone(), h.value.clone());
                }
                Inner::Http {
                    client: Box::new(Client::builder(TokioExecutor::new()).build(connector)),
                    headers,
                }
            }
        };
        Ok(Self {
            target: target.clone(),
            client,
            last_failure,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Encodes a payload for HTTP once (retries resend the same bytes).
    pub fn encode(&self, payload: &Payload) -> Result<Option<Bytes>, Failure> {
        if !matches!(self.client, Inner::Http { .. }) {
            return Ok(None);
        }
        let body = match payload {
            Payload::Metrics(m) => m.encode_to_vec(),
            Payload::Traces(t) => t.encode_to_vec(),
        };
        if !self.target.gzip {
            return Ok(Some(body.into()));
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        gz.write_all(&body)
            .and_then(|()| gz.finish())
            .map(|b| Some(b.into()))
            .map_err(|e| Failure::new("encode", false, format!("gzip: {e}")))
    }

    /// One attempt: sends `payload` (or its HTTP encoding `body`).
    pub async fn send(&self, payload: &Payload, body: Option<&Bytes>) -> Result<Partial, Failure> {
        self.last_failure.store(0, Ordering::Relaxed);
        let timeout = self.target.timeout;
        let result = match &self.client {
            Inner::Grpc { channel, metadata } => {
                let call = self.grpc(channel, metadata, payload);
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(partial)) => Ok(partial),
                    Ok(Err(status)) => Err(self.classify_status(&status)),
                    Err(_) => Err(Failure::new(
                        "timeout",
                        true,
                        format!("no answer within {timeout:?}"),
                    )),
                }
            }
            Inner::Http { client, headers } => {
                let Some(body) = body else {
                    return Err(Failure::new("encode", false, "no HTTP body"));
                };
                let call = self.http(client, headers, payload, body.clone());
                match tokio::time::timeout(timeout, call).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::new(
                        "timeout",
                        true,
                        format!("no answer within {timeout:?}"),
                    )),
                }
            }
        };
        result.map_err(|mut f| {
            f.message = format!(
                "{}: {}",
                redact_url(&self.target.uri.to_string()),
                f.message
            );
            f
        })
    }

    async fn grpc(
        &self,
        channel: &Channel,
        metadata: &MetadataMap,
        payload: &Payload,
    ) -> Result<Partial, Status> {
        fn request<T>(msg: T, metadata: &MetadataMap, timeout: Duration) -> tonic::Request<T> {
            let mut r = tonic::Request::new(msg);
            *r.metadata_mut() = metadata.clone();
            r.set_timeout(timeout);
            r
        }
        let timeout = self.target.timeout;
        match payload {
            Payload::Metrics(m) => {
                let mut c = MetricsServiceClient::new(channel.clone());
                if self.target.gzip {
                    c = c.send_compressed(CompressionEncoding::Gzip);
                }
                let r = c
                    .export(request(m.clone(), metadata, timeout))
                    .await?
                    .into_inner();
                Ok(r.partial_success
                    .map_or_else(Partial::default, |p| Partial {
                        rejected: p.rejected_data_points,
                        message: p.error_message,
                    }))
            }
            Payload::Traces(t) => {
                let mut c = TraceServiceClient::new(channel.clone());
                if self.target.gzip {
                    c = c.send_compressed(CompressionEncoding::Gzip);
                }
                let r = c
                    .export(request(t.clone(), metadata, timeout))
                    .await?
                    .into_inner();
                Ok(r.partial_success
                    .map_or_else(Partial::default, |p| Partial {
                        rejected: p.rejected_spans,
                        message: p.error_message,
                    }))
            }
        }
    }

    fn classify_status(&self, status: &Status) -> Failure {
        let connect = KINDS[usize::from(self.last_failure.load(Ordering::Relaxed)).min(3)];
        let message = format!("gRPC {:?}: {}", status.code(), status.message());
        let (reason, retryable) = match status.code() {
            Code::Unavailable if !connect.is_empty() => (connect, connect != "tls"),
            Code::Unavailable
            | Code::Cancelled
            | Code::Aborted
            | Code::OutOfRange
            | Code::DataLoss => ("unavailable", true),
            Code::DeadlineExceeded => ("timeout", true),
            Code::ResourceExhausted => ("throttled", true),
            _ => ("rejected", false),
        };
        let mut f = Failure::new(reason, retryable, message);
        f.retry_after = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay);
        f
    }

    async fn http(
        &self,
        client: &Client<Connector, Full<Bytes>>,
        headers: &HeaderMap,
        payload: &Payload,
        body: Bytes,
    ) -> Result<Partial, Failure> {
        let mut req = Request::post(self.target.uri.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(header::USER_AGENT, USER_AGENT);
        if self.target.gzip {
            req = req.header(header::CONTENT_ENCODING, "gzip");
        }
        let mut req = req
            .body(Full::new(body))
            .map_err(|e| Failure::new("encode", false, e.to_string()))?;
        req.headers_mut().extend(headers.clone());
        let resp = client.request(req).await.map_err(|e| {
            let kind = KINDS[usize::from(self.last_failure.load(Ordering::Relaxed)).min(3)];
            let reason = if kind.is_empty() { "connect" } else { kind };
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            Failure::new(reason, reason != "tls", message)
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Read the (small) answer: it may carry a partial success, and a
        // drained body lets the connection be reused.
        let bytes = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            let partial = match payload {
                Payload::Metrics(_) => ExportMetricsServiceResponse::decode(bytes)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map(|p| (p.rejected_data_points, p.error_message)),
                Payload::Traces(_) => ExportTraceServiceResponse::decode(bytes)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map(|p| (p.rejected_spans, p.error_message)),
            };
            return Ok(
                partial.map_or_else(Partial::default, |(rejected, message)| Partial {
                    rejected,
                    message,
                }),
            );
        }
        let (reason, retryable) = match status.as_u16() {
            429 => ("throttled", true),
            502..=504 => ("unavailable", true),
            _ => ("rejected", false),
        };
        let mut f = Failure::new(reason, retryable, format!("collector answered {status}"));
        f.retry_after = retry_after;
        Err(f)
    }
}

/// The signal a payload belongs to.
pub fn signal_of(payload: &Payload) -> Signal {
    match payload {
        Payload::Metrics(_) => Signal::Metrics,
        Payload::Traces(_) => Signal::Traces,
    }
}
