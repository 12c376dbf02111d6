//! The scrape endpoint: `GET <telemetry path>` in OpenMetrics or the
//! Prometheus text format (0.0.4) by content negotiation, `GET /healthz`, and
//! a landing page.
//!
//! OpenMetrics comes from prometheus-client's own encoder; the classic
//! format, for clients that do not ask for OpenMetrics (curl, older
//! Prometheus, many agents), is written from it as it is encoded (text.rs).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;

use super::text;
use crate::{pipeline::FlushHandle, vocab::labels};

pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the pipeline to drain before encoding anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an encode waits, before it drains the ring buffer, for other
/// scrapes arriving at about the same time, so that they share it, when the
/// last encode was shared and took at least [`GATHER_WORTH`] (see
/// [`Scrapes`]).
pub const GATHER: Duration = Duration::from_millis(1);

/// The shortest encode worth waiting [`GATHER`] to share: the timer's wait
/// takes up to twice its length, and a cheaper encode is better done again.
pub const GATHER_WORTH: Duration = Duration::from_millis(2);

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    /// None in tests without a ring buffer.
    pub flush: Option<FlushHandle>,
    pub telemetry_path: String,
    /// Concurrent scrapes share encodes (see [`Scrapes`]).
    pub scrapes: Arc<Scrapes>,
}

/// Scrapes in flight share encodes, a given number at a time (edgewatch
/// gives one per async worker). A scrape waits for a turn, then takes the body of the
/// latest encode if it *started after the scrape arrived* (its drain of
/// the ring buffer came later than the request, so it holds every record
/// read before the request), or encodes itself. So concurrent scrapes cost
/// fewer encodes than scrapes, at most that many encodes' memory is live,
/// and no scrape sees older numbers than if it had encoded alone. With one
/// turn, a scrape arriving during an encode waited for it to finish and
/// then encoded again, leaving the other CPU to wrk and idleness; with two,
/// under wrk with 10,000 series, OpenMetrics went from about 500 to 1,000
/// scrapes/s (BENCHMARKS.md). When the last encode was shared (scrapes come
/// in crowds: a load test, several scrapers at once) and took 2 ms or more,
/// an encode first waits [`GATHER`] (1 ms) for scrapes that arrive with
/// it, which share it instead of each waiting for the next one; a lone
/// scrape never waits, nor one of a small exposition. The encode itself
/// runs on the async worker that holds the turn.
#[derive(Debug)]
pub struct Scrapes {
    /// Encodes started so far; an encode's generation is this after it.
    started: AtomicU64,
    /// A turn to encode.
    turns: tokio::sync::Semaphore,
    /// The latest encode that finished.
    last: std::sync::Mutex<Option<Encoded>>,
}

/// One encode at a time.
impl Default for Scrapes {
    fn default() -> Self {
        Self::new(1)
    }
}

#[derive(Debug)]
struct Encoded {
    generation: u64,
    format: Format,
    body: Result<Bytes, ()>,
    /// Scrapes other than its own that it served.
    shared: u64,
    /// How long the drain and the encode took.
    took: Duration,
}

/// The two exposition formats /metrics serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Text,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::OpenMetrics, Format::Text];

    pub fn name(self) -> &'static str {
        match self {
            Format::OpenMetrics => "OpenMetrics",
            Format::Text => "text 0.0.4",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_TYPE,
            Format::Text => TEXT_TYPE,
        }
    }

    /// What the request's Accept header asks for.
    pub fn negotiate(headers: &HeaderMap) -> Format {
        if wants_openmetrics(headers) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

impl Scrapes {
    /// Scrapes sharing encodes, `turns` of them at a time.
    pub fn new(turns: usize) -> Self {
        Self {
            started: AtomicU64::new(0),
            turns: tokio::sync::Semaphore::new(turns.max(1)),
            last: std::sync::Mutex::new(None),
        }
    }

    async fn get(
        &self,
        registry: &Arc<Registry>,
        flush: Option<&FlushHandle>,
        format: Format,
    ) -> Result<Bytes, ()> {
        let arrived = self.started.load(Ordering::Acquire);
        let Ok(_turn) = self.turns.acquire().await else {
            return Err(());
        };
        let (gather, capacity) = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            match last.as_mut() {
                // An encode that began after this scrape arrived.
                Some(e) if e.generation > arrived && e.format == format => {
                    e.shared += 1;
                    return e.body.clone();
                }
                Some(e) => (
                    e.shared > 0 && e.took >= GATHER_WORTH,
                    // The size of the last body: one allocation instead of
                    // a doubling series of copies while the text grows.
                    e.body.as_ref().map_or(0, |b| b.len() + b.len() / 8),
                ),
                None => (false, 0),
            }
        };
        if gather {
            // Scrapes arriving during the wait see this encode begin after
            // them.
            tokio::time::sleep(GATHER).await;
        }
        let generation = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let start = std::time::Instant::now();
        if let Some(flush) = flush
            && !flush.flush(FLUSH_TIMEOUT).await
        {
            tracing::warn!("ring-buffer drain before scrape timed out; serving what is aggregated");
        }
        // Encoded on this worker thread, not the blocking pool: pool
        // threads each keep a malloc arena of their own (RSS rose from 85
        // to 112 MiB under wrk that way).
        let body = encode(registry, format, capacity)
            .map_err(|e| tracing::error!(error = %e, "encoding metrics failed"));
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref().is_none_or(|e| e.generation < generation) {
            *last = Some(Encoded {
                generation,
                format,
                body: body.clone(),
                shared: 0,
                took: start.elapsed(),
            });
        }
        body
    }
}

/// Why an encode failed: a collector's error, or OpenMetrics the classic
/// pass does not expect.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("a collector failed to encode")]
    Fmt(#[from] std::fmt::Error),
    #[error(transparent)]
    Text(#[from] text::Unexpected),
}

/// The exposition of `registry` in `format`; `capacity` is a guess of its
/// size (the last body's).
pub fn encode(registry: &Registry, format: Format, capacity: usize) -> Result<Bytes, EncodeError> {
    let mut body = String::with_capacity(capacity);
    // Series created by the aggregates go in with their label text whole.
    match format {
        Format::OpenMetrics => {
            labels::text_encoding(|| {
                prometheus_client::encoding::text::encode(&mut body, registry)
            })?;
        }
        Format::Text => {
            let mut classic = text::Classic::new(&mut body);
            let written = labels::text_encoding(|| {
                prometheus_client::encoding::text::encode(&mut classic, registry)
            });
            // An unexpected line stops the encode: it is the error then.
            classic.finish()?;
            written?;
        }
    }
    Ok(Bytes::from(body))
}

pub fn router(state: AppState) -> Router {
    let path = state.telemetry_path.clone();
    Router::new()
        .route(&path, get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(landing))
        .with_state(state)
}

async fn landing(State(state): State<AppState>) -> impl IntoResponse {
    let path = &state.telemetry_path;
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<html><head><title>edgewatch</title></head><body><h1>edgewatch</h1>\
             <p><a href=\"{path}\">Metrics</a> · <a href=\"/healthz\">Health</a></p></body></html>\n"
        ),
    )
}

/// True if the Accept header asks for OpenMetrics with a non-zero quality.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let zero_q = parts
                .any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0));
            media.eq_ignore_ascii_case("application/openmetrics-text") && !zero_q
        })
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(&headers);
    match state
        .scrapes
        .get(&state.registry, state.flush.as_ref(), format)
        .await
    {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            )],
            body,
        )
            .into_response(),
        Err(()) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge, info::Info};
    use tower::ServiceExt;

    use super::*;

    fn registry() -> Registry {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(3);
        r.register("edgewatch_things", "Things seen", c);
        let g: Gauge = Gauge::default();
        g.set(7);
        r.register("edgewatch_level", "Current level", g);
        r.register(
            "edgewatch_build",
            "Build information",
            Info::new(vec![("version", "1.2.3")]),
        );
        r
    }

    fn app() -> Router {
        router(AppState {
            registry: Arc::new(registry()),
            flush: None,
            telemetry_path: "/metrics".into(),
            scrapes: Arc::default(),
        })
    }

    async fn get(uri: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        let mut req = axum::http::Request::get(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let resp = app()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn plain_text_by_default() {
        let (status, ct, body) = get("/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, TEXT_TYPE);
        assert_eq!(
            body,
            "# HELP edgewatch_things_total Things seen.\n\
             # TYPE edgewatch_things_total counter\n\
             edgewatch_things_total 3\n\
             # HELP edgewatch_level Current level.\n\
             # TYPE edgewatch_level gauge\n\
             edgewatch_level 7\n\
             # HELP edgewatch_build_info Build information.\n\
             # TYPE edgewatch_build_info gauge\n\
             edgewatch_build_info{version=\"1.2.3\"} 1\n"
        );
    }

    #[tokio::test]
    async fn openmetrics_when_asked() {
        let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (_, ct, body) = get("/metrics", Some(accept)).await;
        assert_eq!(ct, OPENMETRICS_TYPE);
        assert!(body.contains("# TYPE edgewatch_things counter\nedgewatch_things_total 3\n"));
        assert!(body.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn openmetrics_refused_with_q0_gets_text() {
        let (_, ct, _) = get(
            "/metrics",
            Some("application/openmetrics-text;q=0, text/plain"),
        )
        .await;
        assert_eq!(ct, TEXT_TYPE);
    }

    /// A collector whose first encode takes 300 ms, and the others the
    /// given time, and which reports how many encodes have started,
    /// counting them (the count shared with the test).
    #[derive(Debug)]
    struct SlowFirst(Arc<AtomicU64>, Duration);

    impl prometheus_client::collector::Collector for SlowFirst {
        fn encode(
            &self,
            mut encoder: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            use prometheus_client::encoding::EncodeMetric;
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(if n == 1 {
                Duration::from_millis(300)
            } else {
                self.1
            });
            let g = prometheus_client::metrics::gauge::ConstGauge::new(n as i64);
            g.encode(encoder.encode_descriptor(
                "encodes",
                "Encodes started",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_the_next_encode() {
        let encodes = Arc::new(AtomicU64::new(0));
        let mut r = Registry::default();
        r.register_collector(Box::new(SlowFirst(encodes.clone(), Duration::ZERO)));
        let app = router(AppState {
            registry: Arc::new(r),
            flush: None,
            telemetry_path: "/metrics".into(),
            scrapes: Arc::new(Scrapes::new(1)),
        });
        let fetch = |app: Router| async move {
            let resp = app
                .oneshot(
                    axum::http::Request::get("/metrics")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        };
        // The first scrape encodes alone (300 ms); seven arrive meanwhile.
        let first = tokio::spawn(fetch(app.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rest: Vec<_> = (0..7).map(|_| tokio::spawn(fetch(app.clone()))).collect();
        assert!(first.await.unwrap().contains("\nencodes 1\n"));
        // None of the seven takes the encode that began before it arrived:
        // they share one that began after.
        for r in rest {
            assert!(r.await.unwrap().contains("\nencodes 2\n"));
        }
        assert_eq!(encodes.load(Ordering::SeqCst), 2);
    }

    /// After a shared encode of [`GATHER_WORTH`] or more, scrapes that
    /// arrive together share one encode (the first waits [`GATHER`] for
    /// the others); after a lone one, or a quick one, they do not wait
    /// (each arrives after the encode before it began, so each encodes).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crowds_gather_after_a_shared_slow_encode() {
        crowds(GATHER_WORTH + Duration::from_millis(3), true).await;
        crowds(Duration::ZERO, false).await;
    }

    async fn crowds(each: Duration, gathers: bool) {
        let encodes = Arc::new(AtomicU64::new(0));
        let mut r = Registry::default();
        r.register_collector(Box::new(SlowFirst(encodes.clone(), each)));
        let state = AppState {
            registry: Arc::new(r),
            flush: None,
            telemetry_path: "/metrics".into(),
            scrapes: Arc::new(Scrapes::new(1)),
        };
        let text = |b: Result<Bytes, ()>| String::from_utf8(b.unwrap().to_vec()).unwrap();
        let spawn_get = || {
            let state = state.clone();
            tokio::spawn(
                async move { state.scrapes.get(&state.registry, None, Format::Text).await },
            )
        };
        // Encode 1 takes 300 ms; three scrapes arrive meanwhile and share
        // encode 2.
        let first = spawn_get();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rest: Vec<_> = (0..3).map(|_| spawn_get()).collect();
        assert!(text(first.await.unwrap()).contains("\nencodes 1\n"));
        for r in rest {
            assert!(text(r.await.unwrap()).contains("\nencodes 2\n"));
        }
        let get = || state.scrapes.get(&state.registry, None, Format::Text);
        if !gathers {
            // Encode 2 was shared but quick: the first of two does not
            // wait, so the second arrives after it began and encodes again.
            let (a, b) = tokio::join!(get(), get());
            assert!(text(a).contains("\nencodes 3\n"));
            assert!(text(b).contains("\nencodes 4\n"));
            return;
        }
        // Polled together in one task, all four arrive before the first one
        // goes on: after the shared encode it waits, so they share one.
        let (a, b, c, d) = tokio::join!(get(), get(), get(), get());
        for x in [a, b, c, d] {
            assert!(text(x).contains("\nencodes 3\n"));
        }
        // A lone scrape after it (it waits, and encodes alone).
        assert!(text(get().await).contains("\nencodes 4\n"));
        // After a lone encode the first one does not wait: it is done
        // before the second arrives, which encodes again.
        let (a, b) = tokio::join!(get(), get());
        assert!(text(a).contains("\nencodes 5\n"));
        assert!(text(b).contains("\nencodes 6\n"));
        assert_eq!(encodes.load(Ordering::SeqCst), 6);
    }

    /// Counts encodes, and the most that ran at once; each takes 200 ms.
    #[derive(Debug)]
    struct Overlap {
        encodes: AtomicU64,
        running: AtomicU64,
        most: AtomicU64,
    }

    #[derive(Debug)]
    struct Shared(Arc<Overlap>);

    impl prometheus_client::collector::Collector for Shared {
        fn encode(
            &self,
            mut encoder: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            use prometheus_client::encoding::EncodeMetric;
            let o = &self.0;
            let n = o.encodes.fetch_add(1, Ordering::SeqCst) + 1;
            let running = o.running.fetch_add(1, Ordering::SeqCst) + 1;
            o.most.fetch_max(running, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            o.running.fetch_sub(1, Ordering::SeqCst);
            prometheus_client::metrics::gauge::ConstGauge::new(n as i64).encode(
                encoder.encode_descriptor(
                    "encodes",
                    "Encodes started",
                    None,
                    prometheus_client::metrics::MetricType::Gauge,
                )?,
            )
        }
    }

    /// With two turns, a scrape arriving during an encode starts its own
    /// at once on the other worker instead of waiting; no more than two
    /// run at a time, and every scrape still gets an encode that began
    /// after it arrived. Scrapes 50 ms apart: A (0 ms) encodes 1, B (50)
    /// encodes 2 beside it; C and D (100) wait for turns: C takes A's and
    /// encodes 3, D takes B's and encodes 4 (2 had begun before it came).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_turns_encode_side_by_side() {
        let overlap = Arc::new(Overlap {
            encodes: AtomicU64::new(0),
            running: AtomicU64::new(0),
            most: AtomicU64::new(0),
        });
        let mut r = Registry::default();
        r.register_collector(Box::new(Shared(overlap.clone())));
        let state = AppState {
            registry: Arc::new(r),
            flush: None,
            telemetry_path: "/metrics".into(),
            scrapes: Arc::new(Scrapes::new(2)),
        };
        let spawn_get = || {
            let state = state.clone();
            tokio::spawn(async move {
                let b = state.scrapes.get(&state.registry, None, Format::Text).await;
                String::from_utf8(b.unwrap().to_vec()).unwrap()
            })
        };
        let a = spawn_get();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = spawn_get();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = spawn_get();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let d = spawn_get();
        for (scrape, n) in [(a, 1), (b, 2), (c, 3), (d, 4)] {
            let body = scrape.await.unwrap();
            assert!(body.contains(&format!("\nencodes {n}\n")), "{n}: {body}");
        }
        assert_eq!(overlap.encodes.load(Ordering::SeqCst), 4);
        assert_eq!(overlap.most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn healthz_and_landing() {
        assert_eq!(get("/healthz", None).await.2, "ok\n");
        assert!(get("/", None).await.2.contains("href=\"/metrics\""));
        assert_eq!(get("/nope", None).await.0, StatusCode::NOT_FOUND);
    }
}
