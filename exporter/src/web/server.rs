//! The HTTP(S) server for the scrape endpoint: one function, [`serve`],
//! over a bound listener, with every wait bounded.
//!
//! | bound | value | what it stops |
//! |---|---|---|
//! | header read | 10 s ([`Limits::header_read_timeout`]) | a client that sends half a request (or nothing) and waits; also closes keep-alive connections idle that long |
//! | TLS handshake | 10 s | the same before TLS is up; plain HTTP on a TLS port gets a 400 at once |
//! | request line and headers | 16 KiB ([`Limits::max_header_bytes`]) | a 1 MB request line: 431, then closed |
//! | request | 30 s | a handler that never answers (it has none: scrapes wait 2 s for the ring buffer at most) |
//! | request body | not read | no handler reads a body; hyper closes the read side when a handler answers without reading it, so a trickled body holds nothing |
//! | stalled write | 30 s | a client that stops reading the response |
//! | open connections | 64 ([`Limits::max_connections`], `--web.max-connections`) | memory: at the cap, the oldest connection without a request in flight is closed to make room (counted); when every one is busy, the new one is closed |
//! | shutdown | 1 s ([`Limits::shutdown_grace`]) | after SIGTERM, connections without a request in flight close at once; in-flight requests get 1 s to finish, then every connection is dropped |
//!
//! Memory: each connection holds at most its 16 KiB header buffer, hyper's
//! write buffer, a task, and with TLS rustls's record buffers (~34 KiB);
//! 64 of them stay under 8 MiB. glibc keeps freed heap in its arenas, so
//! RSS after a burst would stay at its peak: that was the "never given
//! back" growth (retention, not a leak: `malloc_trim` returned it). The
//! connection cap bounds the peak, and once a burst of 32 or more
//! connections is over the server hands the free heap back with
//! `malloc_trim` (BENCHMARKS.md: "HTTP connection bursts").

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::{AbortHandle, JoinSet},
    time::Sleep,
};

use super::{auth::Authenticator, reload::WebConfig};

/// Every bound the server enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub request_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
    /// hyper's read buffer cap: the request line and headers must fit.
    pub max_header_bytes: usize,
}

/// Default for `--web.max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
            max_header_bytes: 16 << 10,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Default)]
struct WebMetrics {
    open: Gauge,
    refused_connections: Family<ReasonLabel, Counter>,
    refused_requests: Family<ReasonLabel, Counter>,
}

/// The web configuration, authentication state, limits and metrics the
/// server shares between connections.
#[derive(Debug)]
pub struct Web {
    config: WebConfig,
    auth: Authenticator,
    limits: Limits,
    metrics: WebMetrics,
    limiter: Mutex<Option<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    every: Duration,
    burst: u32,
    tokens: f64,
    at: Instant,
}

impl Web {
    /// Loads the web configuration file (None: plain HTTP, no auth) and
    /// registers the server's metrics. The error is one line.
    pub fn new(
        file: Option<&std::path::Path>,
        limits: Limits,
        registry: &mut Registry,
    ) -> Result<Self, String> {
        let config = WebConfig::new(file, registry)?;
        let metrics = WebMetrics::default();
        registry.register(
            "edgewatch_web_open_connections",
            "HTTP connections open now",
            metrics.open.clone(),
        );
        registry.register(
            "edgewatch_web_refused_connections",
            "HTTP connections closed by edgewatch before a request was served, by reason (evicted: an idle one closed to make room at --web.max-connections; limit: every connection was busy; tls_handshake: failed or timed out; plain_http: HTTP sent to the TLS port)",
            metrics.refused_connections.clone(),
        );
        registry.register(
            "edgewatch_web_refused_requests",
            "HTTP requests refused, by reason (unauthorized, rate_limited, timeout)",
            metrics.refused_requests.clone(),
        );
        Ok(Self {
            config,
            auth: Authenticator::default(),
            limits,
            metrics,
            limiter: Mutex::new(None),
        })
    }

    fn refuse_conn(&self, reason: &'static str) {
        self.metrics
            .refused_connections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn refuse_req(&self, reason: &'static str) {
        self.metrics
            .refused_requests
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Token bucket of the configured rate limit; true if the request may go.
    fn allow(&self, rate: Option<(Duration, u32)>) -> bool {
        let Some((every, burst)) = rate else {
            return true;
        };
        let mut slot = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let b = match slot.as_mut() {
            Some(b) if b.every == every && b.burst == burst => b,
            _ => slot.insert(Bucket {
                every,
                burst,
                tokens: f64::from(burst),
                at: now,
            }),
        };
        let refill = now.duration_since(b.at).as_secs_f64() / every.as_secs_f64();
        b.tokens = (b.tokens + refill).min(f64::from(b.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Paths served without basic authentication: the liveness check says
/// "ok" and nothing else, and Kubernetes probes cannot send credentials.
const OPEN_PATHS: &[&str] = &["/healthz"];

/// Rate limit, basic authentication and the configured response headers,
/// in front of every route.
async fn guard(State(web): State<Arc<Web>>, req: Request, next: Next) -> Response {
    let cfg = web.config.current();
    let mut resp = if !web.allow(cfg.spec.rate_limit) {
        web.refuse_req("rate_limited");
        (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response()
    } else if cfg.spec.users.is_empty() || OPEN_PATHS.contains(&req.uri().path()) {
        next.run(req).await
    } else {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if web.auth.check(&cfg.spec.users, header).await {
            next.run(req).await
        } else {
            web.refuse_req("unauthorized");
            let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"edgewatch\""),
            );
            r
        }
    };
    for (k, v) in &cfg.spec.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// One open connection, as the accept loop sees it.
struct Slot {
    opened: Instant,
    /// A request is being served.
    busy: Arc<AtomicBool>,
    abort: AbortHandle,
}

/// Serves `app` on `listener` until `shutdown` resolves, then gives
/// in-flight requests [`Limits::shutdown_grace`] and drops every
/// connection. TLS and authentication follow `web`'s configuration, which
/// is re-read when its files change.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    web: Arc<Web>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(web.clone(), guard));
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots: Arc<Mutex<HashMap<u64, Slot>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut peak = 0usize;
    let mut trim = tokio::time::interval(TRIM_CHECK);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = trim.tick() => {
                let open = tasks.len();
                if peak >= TRIM_AFTER_PEAK && open <= 2 {
                    crate::system::release_free_heap();
                    peak = open;
                }
                continue;
            }
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !make_room(&slots, web.limits.max_connections, &web) {
            drop(stream);
            continue;
        }
        next_id += 1;
        let id = next_id;
        peak = peak.max(tasks.len() + 1);
        let busy = Arc::new(AtomicBool::new(false));
        let conn = connection(
            stream,
            app.clone(),
            web.clone(),
            busy.clone(),
            stop_rx.clone(),
        );
        // Dropped with the task, even one aborted before it first ran.
        web.metrics.open.inc();
        let close = Closer {
            slots: slots.clone(),
            id,
            web: web.clone(),
        };
        // The slot is inserted under the lock before the task can remove it.
        let mut map = slots.lock().unwrap_or_else(|e| e.into_inner());
        let abort = tasks.spawn(async move {
            let _close = close;
            conn.await;
        });
        map.insert(
            id,
            Slot {
                opened: Instant::now(),
                busy,
                abort,
            },
        );
    }
    drop(listener);
    // Connections without a request in flight (idle, or still sending
    // their headers) have nothing to finish: close them now. The others
    // get the grace period.
    for slot in slots.lock().unwrap_or_else(|e| e.into_inner()).values() {
        if !slot.busy.load(Ordering::Relaxed) {
            slot.abort.abort();
        }
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(web.limits.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            connections = tasks.len(),
            "closing HTTP connections still open after the shutdown grace period"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// How often the server looks whether a burst of connections is over.
const TRIM_CHECK: Duration = Duration::from_secs(10);
/// Connections open at once that count as a burst worth trimming after.
const TRIM_AFTER_PEAK: usize = 32;

/// Removes a connection's slot and its gauge count when its task ends,
/// aborted or not.
struct Closer {
    slots: Arc<Mutex<HashMap<u64, Slot>>>,
    id: u64,
    web: Arc<Web>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.web.metrics.open.dec();
    }
}

/// At the connection cap, closes the oldest connection that has no request
/// in flight. False when every connection is busy (the new one is refused).
fn make_room(slots: &Mutex<HashMap<u64, Slot>>, max: usize, web: &Web) -> bool {
    let mut map = slots.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() < max {
        return true;
    }
    let victim = map
        .iter()
        .filter(|(_, s)| !s.busy.load(Ordering::Relaxed))
        .min_by_key(|(_, s)| s.opened)
        .map(|(id, _)| *id);
    match victim {
        Some(id) => {
            if let Some(s) = map.remove(&id) {
                s.abort.abort();
            }
            web.refuse_conn("evicted");
            true
        }
        None => {
            web.refuse_conn("limit");
            false
        }
    }
}

const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

async fn connection(
    stream: TcpStream,
    app: Router,
    web: Arc<Web>,
    busy: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let limits = web.limits.clone();
    if !web.config.tls_on() {
        return http(stream, app, web, busy, stop).await;
    }
    // A TLS record starts with 0x16 (handshake); anything else is most
    // likely plain HTTP, which gets the same answer Go's server gives.
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.handshake_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            web.refuse_conn("plain_http");
            // Answer, then read what the client sent before closing: a
            // close with unread data is a reset, which would discard the
            // answer on the client's side.
            let mut stream = stream;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(PLAIN_HTTP_ON_TLS).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 4096];
                let mut left = 64usize << 10;
                while left > 0 {
                    match stream.read(&mut sink).await? {
                        0 => break,
                        n => left -= n.min(left),
                    }
                }
                Ok::<_, io::Error>(())
            })
            .await;
            return;
        }
        _ => {
            web.refuse_conn("tls_handshake");
            return;
        }
    }
    let Some(tls) = web.config.current().tls.clone() else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => http(s, app, web, busy, stop).await,
        Ok(Err(e)) => {
            web.refuse_conn("tls_handshake");
            tracing::debug!(error = %e, "TLS handshake failed");
        }
        Err(_) => web.refuse_conn("tls_handshake"),
    }
}

async fn http<I>(
    io: I,
    app: Router,
    web: Arc<Web>,
    busy: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = web.limits.clone();
    let inner = TowerToHyperService::new(app);
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let inner = inner.clone();
        let busy = busy.clone();
        let web = web.clone();
        let timeout = limits.request_timeout;
        async move {
            busy.store(true, Ordering::Relaxed);
            let r = tokio::time::timeout(
                timeout,
                hyper::service::Service::call(&inner, req.map(Body::new)),
            )
            .await;
            busy.store(false, Ordering::Relaxed);
            Ok::<_, Infallible>(match r {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => match e {},
                Err(_) => {
                    web.refuse_req("timeout");
                    (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
                }
            })
        }
    });
    let io = TokioIo::new(StallGuard::new(io, limits.write_timeout));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Fails a write that has made no progress for `timeout`: a client that
/// stops reading cannot hold a connection (and its buffers) forever.
struct StallGuard<I> {
    inner: I,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> StallGuard<I> {
    fn new(inner: I, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(v) => {
                self.stalled = None;
                Poll::Ready(v)
            }
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for StallGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StallGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
