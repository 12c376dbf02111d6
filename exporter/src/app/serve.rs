//! The two things the binary does with an agent: check it (`--config.check`:
//! attach, report, detach) or run it (pipeline, scrape endpoint, OTLP push,
//! signals).

use std::{process::ExitCode, sync::Arc};

use anyhow::{Context as _, Result};
use tokio::sync::watch;

use super::Agent;
use prometheus_client::registry::Registry;

use crate::{
    caps,
    config::Settings,
    export::{self, otlp::OtlpSettings},
    pipeline::{FlushHandle, Pipeline},
    telemetry::Telemetry,
    vocab::{redact, spans::SpanSink},
    web,
};

/// `--config.check`: attaches everything, prints one line per probe and
/// for the inventory and XDP, detaches. Exit 1 if anything failed.
pub fn check(settings: &Settings) -> Result<ExitCode> {
    let agent = Agent::start(settings)?;
    for a in &agent.attached {
        match &a.result {
            Ok(mode) => println!("{}: attached ({})", a.probe.name(), mode.as_str()),
            Err(e) => println!("{}: FAILED: {e}", a.probe.name()),
        }
    }
    match &agent.iterator {
        Some(Ok(())) => println!("map inventory: iterator loaded"),
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

/// Re-reads the configuration (file and flags) at SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Settings, String> + Send>;

/// Runs the exporter until SIGINT or SIGTERM; SIGHUP re-reads the
/// configuration through `reload`.
pub fn run(settings: Settings, reload: Reload) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(settings, reload))
}

/// The settings a running agent cannot change: their new values take
/// effect at the next start. Each as (config key, changed).
fn restart_only(old: &Settings, new: &Settings) -> Vec<&'static str> {
    [
        ("web.listen_address", old.listen != new.listen),
        (
            "web.telemetry_path",
            old.telemetry_path != new.telemetry_path,
        ),
        ("probes", old.probes != new.probes),
        ("attach.disable", old.disabled_modes != new.disabled_modes),
        ("ringbuf.size_bytes", old.ringbuf_size != new.ringbuf_size),
        ("ringbuf.wakeup_bytes", old.wakeup_bytes != new.wakeup_bytes),
        (
            "ringbuf.flush_interval_ms",
            old.flush_interval != new.flush_interval,
        ),
        ("bpf.enable_stats", old.enable_stats != new.enable_stats),
        ("xdp.interfaces", old.xdp_interfaces != new.xdp_interfaces),
        ("xdp.mode", old.xdp_mode != new.xdp_mode),
        (
            "log",
            old.log_level != new.log_level || old.log_json != new.log_json,
        ),
        (
            "otlp.traces",
            old.otlp_traces.is_some() != new.otlp_traces.is_some(),
        ),
        (
            "otlp.max_queued_spans",
            old.max_queued_spans != new.max_queued_spans,
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
}

impl Otlp {
    fn start(
        settings: &Settings,
        registry: &Arc<Registry>,
        flush: &FlushHandle,
        wiring: &Shared,
    ) -> Option<Self> {
        let uri = settings.otlp.clone()?;
        tracing::info!(endpoint = %redact::url(&uri.to_string()), interval = ?settings.otlp_interval, "pushing metrics over OTLP/HTTP");
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(export::otlp::run(
            OtlpSettings {
                uri,
                traces: settings
                    .otlp_traces
                    .clone()
                    .map(|u| (u, wiring.spans.clone())),
                interval: settings.otlp_interval,
                timeout: settings.otlp_timeout,
            },
            registry.clone(),
            flush.clone(),
            wiring.telemetry.clone(),
            stop_rx,
        ));
        Some(Self { task, stop })
    }

    /// Stops it after one last push.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What the reload path shares with the running tasks.
struct Shared {
    telemetry: Telemetry,
    spans: SpanSink,
    /// Whether workload resolution was started (its metrics exist).
    workloads: bool,
}

fn otlp_changed(old: &Settings, new: &Settings) -> bool {
    old.otlp != new.otlp
        || old.otlp_traces != new.otlp_traces
        || old.otlp_interval != new.otlp_interval
        || old.otlp_timeout != new.otlp_timeout
}

async fn serve(settings: Settings, reload: Reload) -> Result<ExitCode> {
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
        wiring,
        ring,
        bpf,
        _stats,
        ..
    } = agent;
    let (pipeline, flush) = Pipeline::new(ring, wiring.dispatcher, settings.flush_interval)
        .context("registering the ring buffer with tokio")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(pipeline.run(stop_rx.clone()));
    let mut registry = wiring.registry;
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
    let mut otlp = Otlp::start(&settings, &registry, &flush, &shared);
    let app = export::prometheus::router(export::prometheus::AppState {
        registry: registry.clone(),
        flush: Some(flush.clone()),
        telemetry_path: settings.telemetry_path.clone(),
    });
    // Before the "listening" line: a signal sent as soon as it appears must
    // find its handler installed.
    let mut signals = Signals::install()?;
    let address = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%address, path = %settings.telemetry_path, "listening");
    // Everything is attached and bound: keep only what scrapes need.
    caps::drop_after_attach(
        &settings.capabilities_keep,
        settings.probes.contains(&"map"),
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
                if otlp_changed(&running, &new)
                    && running.otlp_traces.is_some() == new.otlp_traces.is_some()
                {
                    if let Some(o) = otlp.take() {
                        o.stop().await;
                    }
                    running.otlp = new.otlp.clone();
                    running.otlp_traces = new.otlp_traces.clone();
                    running.otlp_interval = new.otlp_interval;
                    running.otlp_timeout = new.otlp_timeout;
                    otlp = Otlp::start(&running, &registry, &flush, &shared);
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
    if let Some(o) = otlp {
        o.stop().await;
    }
    let _ = stop_tx.send(true);
    let _ = consumer.await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
    }
    drop(bpf); // detaches every program
    drop(_stats);
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
