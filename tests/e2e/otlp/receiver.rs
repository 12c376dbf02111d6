//! A collector stand-in built from the official opentelemetry-proto
//! definitions: one TLS listener on loopback that serves OTLP/gRPC (the
//! generated tonic `MetricsServiceServer` and `TraceServiceServer`) and
//! OTLP/HTTP (`POST /v1/metrics`, `/v1/traces`, protobuf, gzip or not) on
//! the same port, HTTP/2 or HTTP/1.1 as the client speaks. It requires a
//! header (`x-ew-token`), optionally a client certificate, records every
//! request it accepted, can answer the next requests with a retryable
//! error (503 with Retry-After, or UNAVAILABLE with RetryInfo), and can be
//! stopped and started again on the same port to play a collector that
//! is down. Certificates come from the openssl command line, made fresh
//! for each test.

use std::{
    convert::Infallible,
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};
use tonic::{Code, codec::CompressionEncoding};
use tower::ServiceExt as _;

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
pub struct Certs {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl not found: install the Debian package openssl (scripts/quickstart does)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=edgewatch test CA",
        ];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(d, &ca);
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
            let mut req = vec!["req", "-subj"];
            let subj = format!("/CN=edgewatch test {name}");
            req.push(&subj);
            req.extend(ec);
            let (key, csr, pem, extf) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            req.extend(["-keyout", &key, "-out", &csr]);
            openssl(d, &req);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-extfile",
                    &extf,
                    "-out",
                    &pem,
                ],
            );
        }
        Self {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            _dir: dir,
        }
    }
}

/// One accepted request.
#[derive(Debug, Clone)]
pub enum Received {
    Metrics {
        at: Instant,
        grpc: bool,
        gzip: bool,
        req: ExportMetricsServiceRequest,
    },
    Traces {
        grpc: bool,
        gzip: bool,
        req: ExportTraceServiceRequest,
    },
}

#[derive(Default)]
struct State {
    token: String,
    log: Mutex<Vec<Received>>,
    /// Requests to answer with a retryable error.
    fail_next: AtomicUsize,
    /// When each of those was answered.
    failed_at: Mutex<Vec<Instant>>,
    unauthorized: AtomicUsize,
    /// Milliseconds to hold each trace response after the request is
    /// logged: the collector has the spans, the client does not know yet.
    trace_delay_ms: AtomicU64,
}

/// Seconds the retryable errors ask the client to wait.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Clone)]
struct Sink(Arc<State>);

fn gzip_of<T>(r: &tonic::Request<T>) -> bool {
    r.metadata()
        .get("grpc-encoding")
        .is_some_and(|v| v == "gzip")
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let gzip = gzip_of(&r);
        self.0.log.lock().unwrap().push(Received::Metrics {
            at: Instant::now(),
            grpc: true,
            gzip,
            req: r.into_inner(),
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let gzip = gzip_of(&r);
        self.0.log.lock().unwrap().push(Received::Traces {
            grpc: true,
            gzip,
            req: r.into_inner(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

type Body = tonic::body::Body;

fn plain(status: u16, extra: Option<(&str, String)>, body: Vec<u8>) -> Response<Body> {
    let mut b = Response::builder().status(status);
    if let Some((k, v)) = extra {
        b = b.header(k, v);
    }
    b.body(Body::new(Full::new(axum::body::Bytes::from(body))))
        .unwrap()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let traces = req.uri().path().contains("trace");
    let resp = answer(state.clone(), req).await;
    let delay = state.trace_delay_ms.load(Ordering::Relaxed);
    if traces && delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    resp
}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let authorized = req
        .headers()
        .get("x-ew-token")
        .is_some_and(|v| v.as_bytes() == state.token.as_bytes());
    if !authorized {
        state.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Ok(if grpc {
            tonic::Status::unauthenticated("x-ew-token missing or wrong").into_http()
        } else {
            plain(401, None, Vec::new())
        });
    }
    let fail = state
        .fail_next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        state.failed_at.lock().unwrap().push(Instant::now());
        return Ok(if grpc {
            use tonic_types::{ErrorDetails, StatusExt};
            tonic::Status::with_error_details(
                Code::Unavailable,
                "try again later",
                ErrorDetails::with_retry_info(Some(Duration::from_secs(RETRY_AFTER_SECS))),
            )
            .into_http()
        } else {
            plain(
                503,
                Some(("retry-after", RETRY_AFTER_SECS.to_string())),
                Vec::new(),
            )
        });
    }
    let path = req.uri().path().to_string();
    if grpc {
        let sink = Sink(state.clone());
        let resp = if path.starts_with("/opentelemetry.proto.collector.metrics.v1.MetricsService/")
        {
            MetricsServiceServer::new(sink)
                .accept_compressed(CompressionEncoding::Gzip)
                .oneshot(req)
                .await
        } else if path.starts_with("/opentelemetry.proto.collector.trace.v1.TraceService/") {
            TraceServiceServer::new(sink)
                .accept_compressed(CompressionEncoding::Gzip)
                .oneshot(req)
                .await
        } else {
            return Ok(tonic::Status::unimplemented(path).into_http());
        };
        return Ok(resp.unwrap_or_else(|e| match e {}));
    }
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    assert_eq!(
        req.headers().get("content-type").unwrap(),
        "application/x-protobuf"
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        body.to_vec()
    };
    let at = Instant::now();
    let answer = match path.as_str() {
        "/v1/metrics" => {
            let req = ExportMetricsServiceRequest::decode(&body[..]).unwrap();
            state.log.lock().unwrap().push(Received::Metrics {
                at,
                grpc,
                gzip,
                req,
            });
            ExportMetricsServiceResponse::default().encode_to_vec()
        }
        "/v1/traces" => {
            let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
            state
                .log
                .lock()
                .unwrap()
                .push(Received::Traces { grpc, gzip, req });
            ExportTraceServiceResponse::default().encode_to_vec()
        }
        _ => return Ok(plain(404, None, Vec::new())),
    };
    Ok(plain(
        200,
        Some(("content-type", "application/x-protobuf".into())),
        answer,
    ))
}

fn tls_config(certs: &Certs, client_auth: bool) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.server_cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&certs.server_key).unwrap();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_auth {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&certs.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn serve(listener: tokio::net::TcpListener, tls: Arc<ServerConfig>, state: Arc<State>) {
    let acceptor = TlsAcceptor::from(tls);
    // Dropped with this task: a stopped receiver closes every connection.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    tls: Arc<ServerConfig>,
    server: Option<tokio::task::JoinHandle<()>>,
    rt: tokio::runtime::Runtime,
}

impl Receiver {
    /// Listens on 127.0.0.1 (any port) with TLS, requiring header
    /// `x-ew-token: token`, and a client certificate when `client_auth`.
    pub fn start(certs: &Certs, token: &str, client_auth: bool) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(State {
            token: token.to_string(),
            ..State::default()
        });
        let tls = tls_config(certs, client_auth);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt.spawn(serve(listener, tls.clone(), state.clone()));
        Self {
            addr,
            state,
            tls,
            server: Some(server),
            rt,
        }
    }

    /// `https://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Closes the listener and every connection: the collector is down.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = self.rt.block_on(s);
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "running");
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .unwrap();
        self.server = Some(
            self.rt
                .spawn(serve(listener, self.tls.clone(), self.state.clone())),
        );
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// Answers the next `n` authorized requests with a retryable error.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::Relaxed);
    }

    /// Holds every trace response `d` after logging its request.
    pub fn delay_trace_responses(&self, d: Duration) {
        self.state
            .trace_delay_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Trace export requests logged so far.
    pub fn trace_requests(&self) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| matches!(r, Received::Traces { .. }))
            .count()
    }

    pub fn failed_at(&self) -> Vec<Instant> {
        self.state.failed_at.lock().unwrap().clone()
    }

    pub fn unauthorized(&self) -> usize {
        self.state.unauthorized.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
