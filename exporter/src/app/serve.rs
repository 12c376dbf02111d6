//! The two things the binary does with an agent: check it (`--config.check`:
//! attach, report, detach) or run it (pipeline, scrape endpoint, OTLP push,
//! signals).

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::sync::watch;

use super::Agent;
use crate::{config::Settings, export, pipeline::Pipeline};

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

/// Runs the exporter until SIGINT or SIGTERM.
pub fn run(settings: Settings) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> Result<ExitCode> {
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
        wiring,
        ring,
        bpf,
        _stats,
        ..
    } = agent;
    let (pipeline, flush) = Pipeline::new(ring, wiring.dispatcher, settings.flush_interval)
        .context("registering the ring buffer with tokio")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // The consumer stops first, after a last drain: what the last OTLP
    // push reads (metrics and queued spans) is then one consistent cut.
    let (consumer_stop, consumer_stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(pipeline.run(consumer_stop_rx));
    let registry = Arc::new(wiring.registry);
    let otlp = match &settings.otlp {
        Some(o) => {
            let exporter = export::otlp::Exporter::new(
                o,
                wiring.spans.clone(),
                registry.clone(),
                flush.clone(),
                wiring.telemetry.clone(),
            )?;
            Some(tokio::spawn(exporter.run(stop_rx.clone())))
        }
        None => None,
    };
    let app = export::prometheus::router(export::prometheus::AppState {
        registry,
        flush: Some(flush),
        telemetry_path: settings.telemetry_path.clone(),
    });
    let address = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%address, path = %settings.telemetry_path, "listening");

    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.changed().await;
            })
            .await
    });

    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => match datapath.as_mut().and_then(|d| d.blocklist.as_mut()) {
                Some(list) => list.reload(),
                None => tracing::info!("SIGHUP: no XDP blocklist configured, nothing to reload"),
            },
        }
    }
    tracing::info!("shutting down");
    drop(datapath);
    let _ = consumer_stop.send(true);
    let _ = consumer.await;
    let _ = stop_tx.send(true);
    if let Some(otlp) = otlp {
        // The last push is bounded by the request timeout; this bounds it
        // again should anything hang.
        let bound = settings.otlp.as_ref().map_or(Duration::ZERO, |o| {
            o.metrics
                .iter()
                .chain(&o.traces)
                .map(|t| t.timeout)
                .max()
                .unwrap_or_default()
        }) + Duration::from_secs(1);
        let abort = otlp.abort_handle();
        if tokio::time::timeout(bound, otlp).await.is_err() {
            abort.abort();
            tracing::warn!("the OTLP exporter did not stop in time");
        }
    }
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
