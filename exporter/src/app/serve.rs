//! The two things the binary does with an agent: check it (`--config.check`:
//! attach, report, detach) or run it (pipeline, scrape endpoint, OTLP push,
//! signals).

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::sync::watch;

use super::Agent;
use prometheus_client::registry::Registry;

use crate::{
    caps,
    config::Settings,
    export,
    pipeline::{FlushHandle, Pipeline},
    scrape,
    telemetry::Telemetry,
    vocab::spans::SpanSink,
    web,
};

/// `--config.check`: prints the effective OTLP settings (secrets
/// redacted), attaches everything, prints one line per probe and for the
/// inventory and XDP, detaches. Exit 1 if anything failed.
pub fn check(settings: &Settings) -> Result<ExitCode> {
    match &settings.otlp {
        Some(otlp) => println!("{otlp}"),
        None => println!("otlp: off"),
    }
    let agent = Agent::start(settings)?;
    for a in &agent.attached {
        match &a.result {
            Ok(mode) => println!("{}: attached ({})", a.probe.name(), mode.as_str()),
            Err(e) => println!("{}: FAILED: {e}", a.probe.name()),
        }
    }
    match &agent.iterator {
        Some(Ok(())) => {
            println!("map inventory: iterator loaded");
            match &agent.elem_count {
                Some(Ok(None)) => {
                    println!("map inventory: hash maps counted by bpf_map_sum_elem_count")
                }
                Some(Ok(Some(b))) => println!(
                    "map inventory: hash maps counted by the element iterator (budget {b} slots per scrape)"
                ),
                Some(Err(e)) => {
                    println!("map inventory: element iterator FAILED (no hash-map entries): {e}")
                }
                None => {}
            }
        }
        Some(Err(e)) => println!("map inventory: iterator FAILED (no entries/pressure): {e}"),
        None => {}
    }
    let xdp_failed = match &agent.datapath {
        Some(Ok(dp)) => {
            for (name, mode) in &dp.attached {
                println!("xdp: attached to {name} ({mode})");
            }
            false
        }
        Some(Err(e)) => {
            println!("xdp: FAILED: {e}");
            true
        }
        None => false,
    };
    let failed = agent.failed() + usize::from(xdp_failed);
    drop(agent); // detaches everything
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The async runtime's worker threads; /metrics encodes on as many at
/// once.
const WORKERS: usize = 2;

/// Re-reads the configuration (file and flags) at SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Settings, String> + Send>;

/// Runs the exporter until SIGINT or SIGTERM; SIGHUP re-reads the
/// configuration through `reload`.
pub fn run(settings: Settings, reload: Reload) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(settings, reload))
}

/// The settings a running agent cannot change: their new values take
/// effect at the next start. Each as (config key, changed).
fn restart_only(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let traces = |s: &Settings| s.otlp.as_ref().is_some_and(|o| o.traces.is_some());
    let spans = |s: &Settings| s.otlp.as_ref().map(|o| o.spans);
    [
        ("web.listen_address", old.listen != new.listen),
        (
            "web.telemetry_path",
            old.telemetry_path != new.telemetry_path,
        ),
        (
            "web.config_file",
            old.web_config_file != new.web_config_file,
        ),
        (
            "web.max_connections",
            old.web_max_connections != new.web_max_connections,
        ),
        (
            "capabilities.keep",
            old.capabilities_keep != new.capabilities_keep,
        ),
        ("probes", old.probes != new.probes),
        ("attach.disable", old.disabled_modes != new.disabled_modes),
        ("ringbuf.size_bytes", old.ringbuf_size != new.ringbuf_size),
        ("ringbuf.wakeup_bytes", old.wakeup_bytes != new.wakeup_bytes),
        (
            "ringbuf.flush_interval_ms",
            old.flush_interval != new.flush_interval,
        ),
        ("bpf.enable_stats", old.bpf_stats != new.bpf_stats),
        ("xdp.interfaces", old.xdp_interfaces != new.xdp_interfaces),
        ("xdp.mode", old.xdp_mode != new.xdp_mode),
        (
            "log",
            old.log_level != new.log_level || old.log_json != new.log_json,
        ),
        ("otlp traces on or off", traces(old) != traces(new)),
        (
            "otlp span sampling, rate and queue",
            traces(old) && traces(new) && spans(old) != spans(new),
        ),
        (
            "workload.pod_logs_dir",
            old.pod_logs_dir != new.pod_logs_dir,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// A running OTLP push and what stops it.
struct Otlp {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    /// How long its last push may take.
    bound: Duration,
}

impl Otlp {
    fn start(
        settings: &Settings,
        registry: &Arc<Registry>,
        flush: &FlushHandle,
        shared: &Shared,
    ) -> Result<Option<Self>> {
        let Some(o) = &settings.otlp else {
            return Ok(None);
        };
        let exporter = export::otlp::Exporter::new(
            o,
            shared.spans.clone(),
            registry.clone(),
            flush.clone(),
            shared.telemetry.clone(),
        )?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(exporter.run(stop_rx));
        // The last push is bounded by the request timeout; this bounds it
        // again should anything hang.
        let bound = o
            .metrics
            .iter()
            .chain(&o.traces)
            .map(|t| t.timeout)
            .max()
            .unwrap_or_default()
            + Duration::from_secs(1);
        Ok(Some(Self { task, stop, bound }))
    }

    /// Stops it after one last push, within its bound.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(self.bound, self.task).await.is_err() {
            abort.abort();
            tracing::warn!("the OTLP exporter did not stop in time");
        }
    }
}

/// What the reload path shares with the running tasks.
struct Shared {
    telemetry: Telemetry,
    spans: SpanSink,
    /// Whether workload resolution was started (its metrics exist).
    workloads: bool,
}

async fn serve(settings: Settings, reload: Reload) -> Result<ExitCode> {
    // Before anything is logged as ready: a SIGTERM sent as soon as
    // "listening" shows must find the handler (the default action would
    // kill the process without its last push).
    let mut signals = Signals::install()?;
    // Bind first: an address in use fails before anything is attached.
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let mut agent = Agent::start(&settings)?;
    if agent.failed() == agent.attached.len() && !agent.attached.is_empty() {
        anyhow::bail!("no probe could be attached (see the errors above)");
    }
    let mut datapath = match agent.datapath.take() {
        Some(Ok(dp)) => Some(dp),
        Some(Err(e)) => return Err(e.into()),
        None => None,
    };
    let Agent {
        wiring, ring, bpf, ..
    } = agent;
    let (pipeline, flush) = Pipeline::new(ring, wiring.dispatcher, settings.flush_interval)
        .context("registering the ring buffer with tokio")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // The consumer stops first, after a last drain: what the last OTLP
    // push reads (metrics and queued spans) is then one consistent cut.
    let (consumer_stop, consumer_stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(pipeline.run(consumer_stop_rx));
    let mut registry = wiring.registry;
    // Program statistics, off unless asked (they cost every BPF program on
    // the host while held): see scrape/bpfstats.rs.
    let stats = scrape::bpfstats::spawn(
        settings.bpf_stats,
        scrape::bpfstats::KernelStats,
        &mut registry,
        stop_rx.clone(),
    );
    let web = Arc::new(
        web::Web::new(
            settings.web_config_file.as_deref(),
            web::Limits {
                max_connections: settings.web_max_connections,
                ..web::Limits::default()
            },
            &mut registry,
        )
        .map_err(|e| anyhow::anyhow!("web configuration: {e}"))?,
    );
    let registry = Arc::new(registry);
    let shared = Shared {
        telemetry: wiring.telemetry,
        spans: wiring.spans,
        workloads: wiring.workloads.is_on(),
    };
    let mut otlp = Otlp::start(&settings, &registry, &flush, &shared)?;
    let app = export::prometheus::router(export::prometheus::AppState {
        registry: registry.clone(),
        flush: Some(flush.clone()),
        telemetry_path: settings.telemetry_path.clone(),
        scrapes: Arc::new(export::prometheus::Scrapes::new(WORKERS)),
    });
    let address = listener
        .local_addr()
        .context("reading the listen address")?;
    // Loading freed the kernel's parsed BTF and the object's sections
    // (before the line that says start-up is over).
    crate::system::release_free_heap();
    tracing::info!(%address, path = %settings.telemetry_path, "listening");
    // Everything is attached and bound: keep only what scrapes need.
    caps::drop_after_attach(
        &settings.capabilities_keep,
        settings.probes.contains(&"map"),
        matches!(
            settings.bpf_stats,
            scrape::bpfstats::StatsMode::Window { .. }
        ),
    )
    .map_err(|e| anyhow::anyhow!("dropping capabilities: {e}"))?;

    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(web::serve(listener, app, web, async move {
        let _ = server_stop.changed().await;
    }));

    let mut running = settings;
    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => {
                let new = match reload() {
                    Ok(new) => new,
                    Err(error) => {
                        shared.telemetry.config_reload("error");
                        tracing::error!(%error, "SIGHUP: configuration rejected; the running one stays");
                        // The running blocklist file is re-read all the same
                        // (and rejected on its own if it is what is wrong).
                        if let Some(dp) = datapath.as_mut() {
                            dp.blocklist.reload();
                        }
                        continue;
                    }
                };
                let restart = restart_only(&running, &new);
                if !restart.is_empty() {
                    tracing::warn!(
                        settings = %restart.join(", "),
                        "SIGHUP: these settings changed and take effect at the next start"
                    );
                }
                let mut labels = new.labels;
                if labels.workload() && !shared.workloads {
                    // Resolution and its self-metrics are set up at start.
                    tracing::warn!(
                        "SIGHUP: the workload labels (cgroup, unit, container_id, pod, namespace, container) take effect at the next start"
                    );
                    labels = labels.without_workload();
                }
                if labels != running.labels || new.series_limit != running.series_limit {
                    flush.reconfigure(labels, new.series_limit).await;
                    running.labels = labels;
                    running.series_limit = new.series_limit;
                }
                // Endpoints, protocol, TLS, headers, interval: a new push
                // task (the span sink stays, so its limits need a restart).
                if running.otlp != new.otlp && !restart.iter().any(|k| k.starts_with("otlp")) {
                    let mut next = running.clone();
                    next.otlp = new.otlp.clone();
                    match Otlp::start(&next, &registry, &flush, &shared) {
                        Ok(started) => {
                            if let Some(o) = otlp.take() {
                                o.stop().await;
                            }
                            otlp = started;
                            running.otlp = next.otlp;
                        }
                        Err(error) => tracing::error!(
                            error = %error,
                            "SIGHUP: the new OTLP settings could not start; the running push stays"
                        ),
                    }
                }
                if let Some(dp) = datapath.as_mut() {
                    running.xdp_blocklist = new.xdp_blocklist.clone();
                    dp.blocklist
                        .set_path(new.xdp_blocklist.as_ref().map(|(p, _)| p.clone()));
                    dp.blocklist.reload();
                }
                shared.telemetry.config_reload("ok");
                tracing::info!("SIGHUP: configuration reloaded");
            }
        }
    }
    tracing::info!("shutting down");
    drop(datapath);
    let _ = consumer_stop.send(true);
    let _ = consumer.await;
    if let Some(o) = otlp {
        o.stop().await;
    }
    let _ = stop_tx.send(true);
    let _ = stats.await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
    }
    drop(bpf); // detaches every program
    Ok(ExitCode::SUCCESS)
}

enum Signal {
    Stop,
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// SIGINT and SIGTERM stop; SIGHUP reloads.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
