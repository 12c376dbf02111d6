//! edgewatch: eBPF observability exporter. CLI -> config -> validate -> run.

mod aggregate;
mod bpfobj;
mod bpfstats;
mod config;
mod decode;
mod errno;
mod export;
#[cfg(test)]
mod golden;
mod inventory;
mod pipeline;
mod probe;
mod system;
mod telemetry;
mod xdp;
mod xdpgate;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, RingBuf},
};
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::{
    config::{Config, ConfigErrors, Settings, split_list},
    pipeline::{Dispatcher, Pipeline},
    probe::Probe,
    telemetry::{LostCollector, ProbeModeLabels, Telemetry},
};

/// Usage and configuration errors.
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "edgewatch",
    version,
    about = "eBPF observability exporter for Prometheus and OpenTelemetry"
)]
struct Cli {
    /// YAML configuration file (strict: unknown keys are errors).
    #[arg(long = "config.file", value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// Validate the configuration, load and attach every enabled probe,
    /// print one line per probe with its attach mode, then exit.
    #[arg(long = "config.check")]
    config_check: bool,
    /// Address to serve metrics on [default: 0.0.0.0:10120].
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    listen_address: Option<String>,
    /// Path of the metrics endpoint [default: /metrics].
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    telemetry_path: Option<String>,
    /// Comma list of probes to enable [default: all: connect].
    #[arg(long = "probes", value_name = "LIST")]
    probes: Option<String>,
    /// Comma list of opt-in labels: comm, peer [default: none].
    #[arg(long = "metrics.labels", value_name = "LIST")]
    labels: Option<String>,
    /// Series cap per metric family for opt-in labels [default: 2000].
    #[arg(long = "metrics.series-limit", value_name = "N")]
    series_limit: Option<usize>,
    /// Log level: error, warn, info, debug, trace [default: info].
    #[arg(long = "log.level", value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long = "log.format", value_name = "FORMAT")]
    log_format: Option<String>,
    /// Ring buffer size in bytes, a power of two [default: 8388608].
    #[arg(long = "ringbuf.size-bytes", value_name = "BYTES")]
    ringbuf_size: Option<u64>,
    /// Pending bytes past which the kernel wakes the consumer; 0 wakes it for every record [default: 262144].
    #[arg(long = "ringbuf.wakeup-bytes", value_name = "BYTES")]
    wakeup_bytes: Option<u64>,
    /// Backstop drain period in milliseconds [default: 100].
    #[arg(long = "ringbuf.flush-interval-ms", value_name = "MS")]
    flush_interval_ms: Option<u64>,
    /// Hold BPF_ENABLE_STATS so every program's runs and run time are
    /// counted (true or false) [default: false].
    #[arg(long = "bpf.enable-stats", value_name = "BOOL")]
    enable_stats: Option<bool>,
    /// With stats on: hold them only this long out of every
    /// --bpf.stats-interval-ms; 0 holds them all the time [default: 0].
    #[arg(long = "bpf.stats-window-ms", value_name = "MS")]
    stats_window_ms: Option<u64>,
    /// Period of the stats window [default: 10000].
    #[arg(long = "bpf.stats-interval-ms", value_name = "MS")]
    stats_interval_ms: Option<u64>,
    /// Attach the XDP datapath to this interface (repeatable) [default: none].
    #[arg(long = "xdp.interface", value_name = "IFACE")]
    xdp_interfaces: Vec<String>,
    /// XDP attach mode: auto (driver, else skb), driver or skb [default: auto].
    #[arg(long = "xdp.mode", value_name = "MODE")]
    xdp_mode: Option<String>,
    /// XDP source-prefix blocklist file (one CIDR a line; SIGHUP reloads it).
    #[arg(long = "xdp.blocklist-file", value_name = "PATH")]
    xdp_blocklist: Option<PathBuf>,
    /// Push metrics over OTLP/HTTP to this collector endpoint
    /// (e.g. http://127.0.0.1:4318) [default: off].
    #[arg(long = "otlp.endpoint", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP push period in milliseconds [default: 15000].
    #[arg(long = "otlp.interval-ms", value_name = "MS")]
    otlp_interval_ms: Option<u64>,
    /// Also push spans (TCP handshakes, map update/delete calls) over OTLP.
    #[arg(long = "otlp.traces")]
    otlp_traces: bool,
    /// Comma list of attach modes not to try: tp_btf, fentry, kprobe, task_btf
    /// (probes fall back down their chain, tracepoints last).
    #[arg(long = "attach.disable", value_name = "LIST")]
    attach_disable: Option<String>,
}

impl Cli {
    /// The file's configuration with every given flag applied on top.
    fn config(&self) -> Result<Config, ConfigErrors> {
        let mut cfg = match &self.config_file {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.listen_address {
            cfg.web.listen_address = v.clone();
        }
        if let Some(v) = &self.telemetry_path {
            cfg.web.telemetry_path = v.clone();
        }
        if let Some(v) = &self.probes {
            cfg.probes = split_list(v);
        }
        if let Some(v) = &self.labels {
            cfg.metrics.labels = split_list(v);
        }
        if let Some(v) = self.series_limit {
            cfg.metrics.series_limit = v;
        }
        if let Some(v) = &self.log_level {
            cfg.log.level = v.clone();
        }
        if let Some(v) = &self.log_format {
            cfg.log.format = v.clone();
        }
        if let Some(v) = self.ringbuf_size {
            cfg.ringbuf.size_bytes = v;
        }
        if let Some(v) = self.wakeup_bytes {
            cfg.ringbuf.wakeup_bytes = v;
        }
        if let Some(v) = self.flush_interval_ms {
            cfg.ringbuf.flush_interval_ms = v;
        }
        if let Some(v) = self.enable_stats {
            cfg.bpf.enable_stats = v;
        }
        if let Some(v) = self.stats_window_ms {
            cfg.bpf.stats_window_ms = v;
        }
        if let Some(v) = self.stats_interval_ms {
            cfg.bpf.stats_interval_ms = v;
        }
        if !self.xdp_interfaces.is_empty() {
            cfg.xdp.interfaces = self.xdp_interfaces.clone();
        }
        if let Some(v) = &self.xdp_mode {
            cfg.xdp.mode = v.clone();
        }
        if let Some(v) = &self.xdp_blocklist {
            cfg.xdp.blocklist_file = Some(v.clone());
        }
        if let Some(v) = &self.otlp_endpoint {
            cfg.otlp.endpoint = Some(v.clone());
        }
        if let Some(v) = self.otlp_interval_ms {
            cfg.otlp.interval_ms = v;
        }
        if self.otlp_traces {
            cfg.otlp.traces = true;
        }
        if let Some(v) = &self.attach_disable {
            cfg.attach.disable = split_list(v);
        }
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.config().and_then(|c| c.validate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("edgewatch: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(&settings);

    let result = if cli.config_check {
        check(&settings)
    } else {
        serve(settings)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgewatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if settings.log_json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Loads the tracing object with the configured ring size and submit policy.
fn load(settings: &Settings) -> Result<Ebpf> {
    system::raise_memlock();
    system::ensure_tracefs()?;
    system::ensure_bpffs();
    let btf = aya::Btf::from_sys_fs().ok();
    let kfunc = bpfobj::kernel_func_id(btf.as_ref(), bpfobj::SUM_ELEM_COUNT);
    if kfunc.is_none() {
        tracing::warn!(
            "this kernel has no {} (6.6+): hash-map entries and pressure are not exported",
            bpfobj::SUM_ELEM_COUNT
        );
    }
    let load = |object: &[u8]| {
        let (object, _) = bpfobj::patch_kfunc(object, kfunc);
        EbpfLoader::new()
            .map_max_entries("ew_events", settings.ringbuf_size)
            .override_global("ew_wakeup_bytes", &settings.wakeup_bytes, true)
            // ew_map_task is a task-storage map, which aya 0.14 has no type for.
            .allow_unsupported_maps()
            .load(&object)
    };
    load(edgewatch_ebpf::edgewatch())
        .or_else(|e| {
            // Kernels before 5.11 cannot create task storage.
            tracing::info!(error = %e, "loading the BPF object failed; trying its compat build");
            load(edgewatch_ebpf::edgewatch_compat())
        })
        .context("loading the BPF object")
}

/// Loads the map inventory's iterator when the map probe is enabled;
/// without it the inventory has no entries/pressure series.
fn load_inventory(settings: &Settings, bpf: &mut Ebpf) -> Option<Result<(), String>> {
    settings
        .probes
        .contains(&"map")
        .then(|| inventory::load_iterator(bpf).map_err(|e| format!("{e}")))
}

/// Attaches every probe, reporting each; returns how many failed.
fn attach_all(
    bpf: &mut Ebpf,
    probes: &mut [Box<dyn Probe>],
    telemetry: &Telemetry,
    report: &mut dyn FnMut(&str, Result<&str, String>),
) -> usize {
    let mut failed = 0;
    for p in probes.iter_mut() {
        match p.attach(bpf) {
            Ok(mode) => {
                telemetry
                    .probe_attached
                    .get_or_create(&ProbeModeLabels {
                        probe: p.name(),
                        mode: mode.as_str(),
                    })
                    .set(1);
                report(p.name(), Ok(mode.as_str()));
            }
            Err(e) => {
                failed += 1;
                telemetry
                    .probe_attached
                    .get_or_create(&ProbeModeLabels {
                        probe: p.name(),
                        mode: "none",
                    })
                    .set(0);
                report(p.name(), Err(probe::error_chain(&e)));
            }
        }
    }
    failed
}

fn check(settings: &Settings) -> Result<ExitCode> {
    let mut bpf = load(settings)?;
    let mut registry = Registry::default();
    let telemetry = Telemetry::register(&mut registry);
    let mut probes = probe::build(settings, &mut registry, &telemetry);
    let failed = attach_all(&mut bpf, &mut probes, &telemetry, &mut |name, r| match r {
        Ok(mode) => println!("{name}: attached ({mode})"),
        Err(e) => println!("{name}: FAILED: {e}"),
    });
    match load_inventory(settings, &mut bpf) {
        Some(Ok(())) => println!("map inventory: iterator loaded"),
        Some(Err(e)) => println!("map inventory: iterator FAILED (no entries/pressure): {e}"),
        None => {}
    }
    let xdp_failed = if settings.xdp_interfaces.is_empty() {
        false
    } else {
        match start_xdp(settings, &mut registry, &telemetry) {
            Ok(dp) => {
                for (name, mode) in &dp.attached {
                    println!("xdp: attached to {name} ({mode})");
                }
                drop(dp);
                false
            }
            Err(e) => {
                println!("xdp: FAILED: {e}");
                true
            }
        }
    };
    let failed = failed + usize::from(xdp_failed);
    drop(bpf); // detaches everything
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn start_xdp(
    settings: &Settings,
    registry: &mut Registry,
    telemetry: &Telemetry,
) -> Result<xdp::Datapath, xdp::XdpError> {
    xdp::start(
        &settings.xdp_interfaces,
        settings.xdp_mode,
        settings
            .xdp_blocklist
            .as_ref()
            .map(|(p, l)| (p.as_path(), l)),
        registry,
        &telemetry.scrape_errors,
    )
}

fn serve(settings: Settings) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> Result<ExitCode> {
    let mut bpf = load(&settings)?;
    let mut registry = Registry::default();
    let mut telemetry = Telemetry::register(&mut registry);
    if settings.otlp_traces.is_some() {
        telemetry.spans = aggregate::spans::SpanSink::enabled(
            settings.max_queued_spans,
            telemetry.spans_dropped.clone(),
        );
    }
    let mut probes = probe::build(&settings, &mut registry, &telemetry);
    let failed = attach_all(&mut bpf, &mut probes, &telemetry, &mut |name, r| match r {
        Ok(mode) => tracing::info!(probe = name, mode, "probe attached"),
        Err(error) => tracing::error!(probe = name, %error, "probe failed to attach"),
    });
    if failed == probes.len() && !probes.is_empty() {
        anyhow::bail!("no probe could be attached (see the errors above)");
    }

    let lost =
        PerCpuArray::<_, u64>::try_from(bpf.take_map("ew_lost").context("map ew_lost missing")?)
            .context("opening ew_lost")?;
    registry.register_collector(Box::new(LostCollector::new(
        Box::new(std::sync::Mutex::new(lost)),
        probes.iter().map(|p| (p.id(), p.name())).collect(),
        telemetry.scrape_errors.clone(),
    )));
    let ring = RingBuf::try_from(bpf.take_map("ew_events").context("map ew_events missing")?)
        .context("opening the ring buffer")?;

    let iterator = match load_inventory(&settings, &mut bpf) {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "map iterator failed to load: no entries/pressure series");
            false
        }
        None => false,
    };
    let program_lists: Vec<(&'static str, &'static [&'static str])> =
        probes.iter().map(|p| (p.name(), p.programs())).collect();
    let bpf = Arc::new(std::sync::Mutex::new(bpf));
    registry.register_collector(Box::new(telemetry::MissesCollector::new(
        Box::new(bpf.clone()),
        program_lists,
    )));
    if settings.probes.contains(&"map") {
        registry.register_collector(Box::new(inventory::InventoryCollector::new(
            Box::new(inventory::KernelInventory {
                bpf: bpf.clone(),
                iterator,
            }),
            telemetry.scrape_errors.clone(),
        )));
    }
    let (pipeline, flush) = Pipeline::new(
        ring,
        Dispatcher::new(probes, telemetry.clone()),
        settings.flush_interval,
    )
    .context("registering the ring buffer with tokio")?;

    let mut datapath = if settings.xdp_interfaces.is_empty() {
        None
    } else {
        Some(start_xdp(&settings, &mut registry, &telemetry)?)
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(pipeline.run(stop_rx.clone()));
    let stats = bpfstats::spawn(
        settings.bpf_stats,
        bpfstats::KernelStats,
        &mut registry,
        stop_rx.clone(),
    );

    let export_errors = export::otlp::register_errors(&mut registry);
    let registry = Arc::new(registry);
    let otlp = settings.otlp.clone().map(|uri| {
        tracing::info!(endpoint = %uri, interval = ?settings.otlp_interval, "pushing metrics over OTLP/HTTP");
        tokio::spawn(export::otlp::run(
            export::otlp::OtlpSettings {
                uri,
                traces: settings.otlp_traces.clone().map(|u| (u, telemetry.spans.clone())),
                interval: settings.otlp_interval,
                timeout: settings.otlp_timeout,
            },
            registry.clone(),
            flush.clone(),
            export_errors,
            stop_rx.clone(),
        ))
    });
    let app = export::prometheus::router(export::prometheus::AppState {
        registry,
        flush: Some(flush),
        telemetry_path: settings.telemetry_path.clone(),
    });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
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

    let mut signals = Signals::install()?;
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
    let _ = stop_tx.send(true);
    if let Some(otlp) = otlp {
        let _ = otlp.await;
    }
    let _ = consumer.await;
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn flags_override_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(
            f,
            "web:\n  listen_address: 127.0.0.1:1\nprobes: [warp]\nmetrics:\n  labels: [comm]\n  series_limit: 7\n"
        )
        .unwrap();
        let path = f.path().to_str().unwrap();
        let cli = Cli::try_parse_from([
            "edgewatch",
            "--config.file",
            path,
            "--web.listen-address",
            "127.0.0.1:2",
            "--probes",
            "connect",
        ])
        .unwrap();
        let s = cli.config().unwrap().validate().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:2");
        assert_eq!(s.probes, vec!["connect"]);
        // Not overridden: from the file.
        assert!(s.labels.comm);
        assert_eq!(s.series_limit, 7);
    }

    #[test]
    fn empty_flag_lists_mean_none() {
        let cli = Cli::try_parse_from(["edgewatch", "--metrics.labels="]).unwrap();
        let s = cli.config().unwrap().validate().unwrap();
        assert!(!s.labels.comm && !s.labels.peer);
    }
}
