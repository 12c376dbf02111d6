//! Start-up and wiring, the top of the library: one path from validated
//! settings to an attached agent ([`Agent::start`]), shared by
//! `--config.check` and by the running exporter, and the one
//! [`build_registry`] that both the binary and the golden test use, so the
//! golden exposition tests the real wiring.

pub mod serve;

use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
};
use prometheus_client::registry::Registry;

use crate::{
    aggregate, bpfobj,
    config::Settings,
    datapath::{self, Datapath, XdpError},
    export,
    pipeline::Dispatcher,
    probe::{AttachMode, Probe, attach_chain, error_chain},
    scrape::{
        Sources,
        kernel::KernelSources,
        lost::LostCollector,
        missed::MissesCollector,
        xdp::{XdpCollector, XdpMetrics},
    },
    system,
    telemetry::{ExportErrorLabels, ProbeModeLabels, Telemetry, events::CollectorFailed},
    vocab::{build_info::BuildInfo, clock::Clock, refs::References, spans::SpanSink},
    workload::Workloads,
};

/// How one probe's attach chain ended.
pub struct Attached {
    pub probe: &'static dyn Probe,
    /// The mode used, or why no mode worked.
    pub result: Result<AttachMode, String>,
}

/// What a wiring takes from outside: the clock that turns kernel time into
/// Unix time, and the build info. Fixtures pass fixed ones.
pub struct Fixed {
    pub clock: Clock,
    pub build: BuildInfo,
}

impl Fixed {
    /// This process's: the clock now, this binary's build.
    pub fn current() -> Self {
        Self {
            clock: Clock::now(),
            build: BuildInfo::CURRENT,
        }
    }
}

/// Everything the registry feeds, wired.
pub struct Wiring {
    pub registry: Registry,
    pub telemetry: Telemetry,
    pub dispatcher: Dispatcher,
    /// Spans from the aggregators to the OTLP exporter (off unless OTLP
    /// traces are on).
    pub spans: SpanSink,
    /// cgroup ids to workloads (off unless a workload label or OTLP traces
    /// are on).
    pub workloads: Workloads,
}

/// Registers every metric family and collector of an agent with these
/// settings, in exposition order: self-metrics, each enabled probe's
/// metrics, each probe's scrape-time collector, export errors, the XDP
/// datapath's (when `xdp` is given), skipped runs, lost records.
pub fn build_registry(
    settings: &Settings,
    attached: &[Attached],
    sources: &mut dyn Sources,
    xdp: Option<&XdpMetrics>,
    fixed: &Fixed,
) -> Wiring {
    let mut registry = Registry::default();
    let telemetry = Telemetry::register_with_build(&mut registry, &fixed.build);
    let clock = fixed.clock;
    let spans = match &settings.otlp {
        Some(o) if o.traces.is_some() => SpanSink::enabled(
            o.spans,
            telemetry.span_drop_counters(),
            crate::vocab::clock::unix_nanos(),
        ),
        _ => SpanSink::default(),
    };
    // Workload resolution (and its self-metrics) only when a label or the
    // spans use it.
    let workloads = if settings.labels.workload() || spans.is_on() {
        Workloads::start(&settings.pod_logs_dir, &mut registry, &telemetry)
    } else {
        Workloads::off()
    };
    let ctx = aggregate::Context {
        labels: settings.labels,
        series_limit: settings.series_limit,
        series_dropped: telemetry.series_dropped.clone(),
        clock,
        spans: spans.clone(),
        workloads: workloads.clone(),
        refs: references(sources, clock, &telemetry),
    };
    let probes: Vec<&'static dyn Probe> = settings.enabled_probes().collect();
    let sinks: Vec<_> = probes
        .iter()
        .map(|&p| (p, p.build(&mut registry, &ctx)))
        .collect();
    for p in &probes {
        if let Some(c) = p.collector(sources, &telemetry) {
            registry.register_collector(c);
        }
    }
    telemetry.register_export_errors(&mut registry);
    if let Some(otlp) = &settings.otlp {
        let signals: &[&'static str] = if otlp.traces.is_some() {
            &["metrics", "traces"]
        } else {
            &["metrics"]
        };
        for &signal in signals {
            for reason in export::otlp::ERROR_REASONS {
                telemetry
                    .export_errors
                    .get_or_create_owned(&ExportErrorLabels {
                        exporter: "otlp",
                        signal,
                        reason,
                    });
            }
        }
    }
    if let Some(metrics) = xdp {
        if settings.xdp_blocklist.is_some() {
            metrics.blocklist_configured();
        }
        metrics.register(&mut registry);
        registry.register_collector(Box::new(XdpCollector::new(
            sources.xdp_counters(),
            settings
                .xdp_interfaces
                .iter()
                .enumerate()
                .map(|(slot, (name, _))| (slot as u32, name.clone()))
                .collect(),
            telemetry.clone(),
        )));
    }
    for a in attached {
        let (mode, value) = match &a.result {
            Ok(mode) => (mode.as_str(), 1),
            Err(_) => ("none", 0),
        };
        telemetry
            .probe_attached
            .get_or_create(&ProbeModeLabels {
                probe: a.probe.name(),
                mode,
            })
            .set(value);
    }
    registry.register_collector(Box::new(MissesCollector::new(
        sources.missed(),
        probes.iter().map(|p| (p.name(), p.programs())).collect(),
    )));
    registry.register_collector(Box::new(LostCollector::new(
        sources.lost(),
        probes.iter().map(|p| (p.id(), p.name())).collect(),
        telemetry.clone(),
    )));
    let dispatcher = Dispatcher::new(sinks, telemetry.clone());
    Wiring {
        registry,
        telemetry,
        dispatcher,
        spans,
        workloads,
    }
}

/// Which programs use which maps, read from `sources` when first asked;
/// failed reads are counted as scrape errors of `bpf_map_references`.
fn references(sources: &mut dyn Sources, clock: Clock, telemetry: &Telemetry) -> References {
    let telemetry = telemetry.clone();
    References::new(
        sources.references(),
        clock,
        Box::new(move |error: &str| {
            telemetry.emit(CollectorFailed {
                collector: "bpf_map_references",
                error: &error,
            })
        }),
    )
}

/// An agent with every enabled probe attached (or honestly not), the XDP
/// datapath up when configured, and its registry wired.
pub struct Agent {
    pub attached: Vec<Attached>,
    pub wiring: Wiring,
    /// The ring buffer every probe writes into.
    pub ring: MapData,
    /// The XDP datapath, when interfaces are configured.
    pub datapath: Option<Result<Datapath, XdpError>>,
    /// Whether the map inventory's iterator loaded (map probe only).
    pub iterator: Option<Result<(), String>>,
    /// How hash maps are counted (map probe only): by the kfunc (None) or
    /// by the element iterator within a budget.
    pub elem_count: Option<Result<Option<u64>, String>>,
    /// The tracing object; dropping it detaches every probe.
    pub bpf: Arc<Mutex<Ebpf>>,
}

impl Agent {
    /// Loads the tracing object, attaches every enabled probe down its
    /// chain, brings up the XDP datapath, and wires the registry.
    pub fn start(settings: &Settings) -> Result<Self> {
        let mut bpf = load(settings)?;
        let attached: Vec<Attached> = settings
            .enabled_probes()
            .map(|probe| Attached {
                probe,
                result: attach_chain(
                    &mut bpf,
                    probe.name(),
                    probe.chain(),
                    &settings.disabled_modes,
                )
                .map_err(|e| error_chain(&e)),
            })
            .collect();
        for a in &attached {
            match &a.result {
                Ok(mode) => tracing::info!(
                    probe = a.probe.name(),
                    mode = mode.as_str(),
                    "probe attached"
                ),
                Err(error) => {
                    tracing::error!(probe = a.probe.name(), %error, "probe failed to attach")
                }
            }
        }
        let lost = PerCpuArray::<_, u64>::try_from(
            bpf.take_map("ew_lost").context("map ew_lost missing")?,
        )
        .context("opening ew_lost")?;
        // The map itself: the pipeline maps the ring (aya's RingBuf would
        // map it a second time).
        let ring = match bpf.take_map("ew_events").context("map ew_events missing")? {
            aya::maps::Map::RingBuf(ring) => ring,
            _ => anyhow::bail!("map ew_events is not a ring buffer"),
        };

        let xdp_metrics = XdpMetrics::default();
        let mut datapath = (!settings.xdp_interfaces.is_empty()).then(|| {
            datapath::start(
                &settings.xdp_interfaces,
                settings.xdp_mode,
                settings
                    .xdp_blocklist
                    .as_ref()
                    .map(|(p, l)| (p.as_path(), l)),
                &xdp_metrics,
            )
        });
        let xdp_up = matches!(datapath, Some(Ok(_)));
        let bpf = Arc::new(Mutex::new(bpf));
        let mut sources = KernelSources {
            bpf: bpf.clone(),
            lost: Some(lost),
            xdp_stats: datapath
                .as_mut()
                .and_then(|d| d.as_mut().ok())
                .and_then(|d| d.stats.take()),
            iterator: None,
            map_count_budget: settings.map_count_budget,
            elem_count: None,
        };
        let wiring = build_registry(
            settings,
            &attached,
            &mut sources,
            xdp_up.then_some(&xdp_metrics),
            &Fixed::current(),
        );
        Ok(Self {
            attached,
            wiring,
            ring,
            datapath,
            iterator: sources.iterator,
            elem_count: sources.elem_count,
            bpf,
        })
    }

    /// How many enabled probes failed to attach.
    pub fn failed(&self) -> usize {
        self.attached.iter().filter(|a| a.result.is_err()).count()
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
        tracing::info!(
            budget = settings.map_count_budget,
            "this kernel has no {} (6.6+): hash maps are counted by walking them, within bpf.map_count_budget slots per scrape",
            bpfobj::SUM_ELEM_COUNT
        );
    }
    let load = |object: &[u8]| {
        let (object, _) = bpfobj::patch_kfunc(object, kfunc);
        EbpfLoader::new()
            .map_max_entries("ew_events", settings.ringbuf_size)
            .override_global("ew_wakeup_bytes", &settings.wakeup_bytes, true)
            .override_global("ew_map_hashes", &u32::from(settings.map_key_hashes), true)
            // ew_map_task is a task-storage map, which aya 0.14 has no type for.
            .allow_unsupported_maps()
            .load(&object)
    };
    load(edgewatch_ebpf::edgewatch())
        .or_else(|e| {
            // Kernels before 5.11 cannot create task storage: the compat
            // build has a hash of the same name there, and the map probe
            // falls back to its hash path (probe/map.rs).
            tracing::info!(error = %e, "loading the BPF object failed; trying its compat build");
            load(edgewatch_ebpf::edgewatch_compat())
        })
        .context("loading the BPF object")
}
