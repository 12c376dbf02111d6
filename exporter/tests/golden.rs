//! Golden exposition: every probe's fixture records through the binary's
//! own wiring (`app::build_registry`, the dispatcher, the aggregators, the
//! scrape-time collectors on fixed sources) and the classic text encoder,
//! compared byte for byte with the files under tests/golden/, which
//! `promtool check metrics` must accept. `UPDATE_GOLDEN=1 cargo test`
//! rewrites the files after an intended change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly at the first broken expectation"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use edgewatch::{
    app::{Attached, Fixed, build_registry},
    config::{Config, Settings},
    export::{
        model,
        otlp::convert,
        prometheus::{self, Format},
    },
    probe::{self, AttachMode},
    scrape::{
        Sources,
        inventory::{InventorySource, MapRow, ProgRow, ReadError},
        lost::LostSource,
        missed::MissSource,
        xdp::{CounterSource, FamilyLabel, IfaceMode, ResultLabel, XdpMetrics},
    },
    telemetry::ExportErrorLabels,
    vocab::{
        build_info::BuildInfo,
        clock::Clock,
        refs::{MapUse, RefSnapshot, RefSource},
    },
};
use prometheus_client::registry::Registry;

/// A fixed host: four maps, two programs; lost = probe id x 10; one
/// skipped run per program; XDP cell `i` saw i + 1 packets of 100 bytes.
/// Map 12 "routes" is used by no program and has a newer twin, map 13.
struct FixedHost;

struct FixedInventory;

impl InventorySource for FixedInventory {
    fn maps(&self, _errors: &mut Vec<ReadError>) -> Vec<MapRow> {
        let row = |id, name: &str, map_type, max_entries, entries| MapRow {
            id,
            name: name.to_string(),
            map_type,
            key_size: 4,
            value_size: 8,
            max_entries,
            flags: 0,
            entries,
        };
        vec![
            row(12, "routes", 11, 1024, Some(1000)),
            row(10, "conntrack", 9, 65536, Some(16384)),
            row(11, "counters", 6, 16, None),
            row(13, "routes", 11, 1024, Some(1000)),
            // A hash map past bpf.map_count_budget (before 6.6): not exact.
            row(14, "sessions", 1, 1 << 20, None),
        ]
    }

    fn programs(&self, _errors: &mut Vec<ReadError>) -> Vec<ProgRow> {
        vec![
            ProgRow {
                id: 40,
                name: "xdp_lb".into(),
                prog_type: 6,
                runs: 123456,
                run_seconds: 0.004,
            },
            ProgRow {
                id: 41,
                name: "trace_sys".into(),
                prog_type: 5,
                runs: 7,
                run_seconds: 0.000002,
            },
        ]
    }
}

struct FixedRefs;

impl RefSource for FixedRefs {
    fn read(&self, _errors: &mut Vec<String>) -> Result<RefSnapshot, String> {
        let map = |name: &str, map_type, programs| MapUse {
            name: name.into(),
            map_type,
            programs,
        };
        Ok(RefSnapshot {
            maps: [
                (10, map("conntrack", 9, 2)),
                (11, map("counters", 6, 1)),
                (12, map("routes", 11, 0)),
                (13, map("routes", 11, 1)),
            ]
            .into(),
        })
    }
}

struct FixedLost;

impl LostSource for FixedLost {
    fn lost(&self, id: u32) -> Result<u64, aya::maps::MapError> {
        Ok(u64::from(id) * 10)
    }
}

struct FixedMisses;

impl MissSource for FixedMisses {
    fn missed(&self, programs: &[&'static str]) -> u64 {
        programs.len() as u64
    }
}

struct FixedCounters;

impl CounterSource for FixedCounters {
    fn read(&self, index: u32) -> Result<(u64, u64), aya::maps::MapError> {
        let p = u64::from(index) + 1;
        Ok((p, 100 * p))
    }
}

impl Sources for FixedHost {
    fn lost(&mut self) -> Box<dyn LostSource> {
        Box::new(FixedLost)
    }

    fn missed(&mut self) -> Box<dyn MissSource> {
        Box::new(FixedMisses)
    }

    fn inventory(&mut self) -> Box<dyn InventorySource> {
        Box::new(FixedInventory)
    }

    fn xdp_counters(&mut self) -> Box<dyn CounterSource> {
        Box::new(FixedCounters)
    }

    fn references(&mut self) -> Box<dyn RefSource> {
        Box::new(FixedRefs)
    }
}

fn golden_path(name: &str) -> PathBuf {
    common::repo("tests/golden").join(name)
}

/// Sorts the sample lines inside each metric family: prometheus-client
/// emits a family's series in hash-map order, which varies run to run.
fn normalize(text: &str) -> String {
    let mut out = String::new();
    let mut samples: Vec<&str> = Vec::new();
    let flush = |out: &mut String, samples: &mut Vec<&str>| {
        samples.sort_unstable();
        for s in samples.drain(..) {
            out.push_str(s);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut out, &mut samples);
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    flush(&mut out, &mut samples);
    out
}

/// Compares `actual` with the golden file, or rewrites it when asked.
fn check_golden(name: &str, actual: &str) {
    let actual = normalize(actual);
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden");
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
    common::promtool_check(&expected);
}

/// The exposition of an agent with these settings after every probe's
/// fixture records (and one record too short for a header), with the XDP
/// datapath on eth0, a blocklist of 3 IPv4 and 1 IPv6 prefixes loaded once,
/// OTLP on with one failed push, and every probe attached through a
/// tracepoint.
/// Written as /metrics writes it for a client that does not ask for
/// OpenMetrics, and the same, byte for byte, as the typed snapshot's own
/// text writer.
fn exposition(settings: Settings) -> String {
    let registry = registry(settings);
    let body = prometheus::encode(&registry, Format::Text, 0).expect("encode");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let mut reference = String::new();
    model::write_prometheus_text(&model::snapshot(&registry).unwrap(), &mut reference);
    assert_eq!(
        text, reference,
        "/metrics text and the typed snapshot's text"
    );
    text
}

/// The typed snapshot behind [`exposition`].
fn families(settings: Settings) -> Vec<model::data::MetricFamily> {
    model::snapshot(&registry(settings)).unwrap()
}

/// The registry behind [`exposition`].
fn registry(mut settings: Settings) -> Registry {
    settings.xdp_interfaces = vec![("eth0".into(), 2)];
    settings.xdp_blocklist = Some(("/etc/edgewatch/blocklist".into(), Default::default()));
    let attached: Vec<Attached> = settings
        .enabled_probes()
        .map(|probe| Attached {
            probe,
            result: Ok(AttachMode::Tracepoint),
        })
        .collect();
    let xdp = XdpMetrics::default();
    xdp.attached
        .get_or_create(&IfaceMode {
            interface: "eth0".into(),
            mode: "driver",
        })
        .set(1);
    xdp.entries
        .get_or_create(&FamilyLabel { family: "ipv4" })
        .set(3);
    xdp.entries
        .get_or_create(&FamilyLabel { family: "ipv6" })
        .set(1);
    xdp.reloads
        .get_or_create(&ResultLabel { result: "ok" })
        .inc();
    let mut wiring = build_registry(
        &settings,
        &attached,
        &mut FixedHost,
        Some(&xdp),
        &Fixed {
            clock: Clock::fixed(1_795_000_000_000_000_000),
            // A fixed revision: the files must not change with every commit.
            build: BuildInfo {
                version: env!("CARGO_PKG_VERSION"),
                revision: "0000000000000000000000000000000000000000",
            },
        },
    );
    wiring
        .telemetry
        .export_errors
        .get_or_create(&ExportErrorLabels {
            exporter: "otlp",
            signal: "metrics",
            reason: "connect",
        })
        .inc();
    wiring
        .telemetry
        .export_retries
        .get_or_create(&ExportErrorLabels {
            exporter: "otlp",
            signal: "metrics",
            reason: "connect",
        })
        .inc_by(3);
    for p in settings.enabled_probes() {
        for record in p.fixtures() {
            wiring.dispatcher.dispatch(&record);
        }
    }
    wiring.dispatcher.dispatch(&[1, 2, 3]);
    wiring.registry
}

/// The default config with OTLP on (the exposition's export errors).
fn config() -> Config {
    let mut cfg = Config::default();
    cfg.otlp.endpoint = Some("http://127.0.0.1:4318".into());
    cfg
}

#[test]
fn default_labels() {
    let settings = config().validate().unwrap();
    assert_eq!(settings.probes.len(), probe::ALL.len());
    check_golden("exposition-default.prom", &exposition(settings));
}

#[test]
fn opt_in_labels_with_cap() {
    let mut cfg = config();
    cfg.metrics.labels = vec!["comm".into(), "peer".into()];
    cfg.metrics.series_limit = 3;
    check_golden(
        "exposition-labels.prom",
        &exposition(cfg.validate().unwrap()),
    );
}

/// The OTLP push of the same snapshot, put through a collector's
/// Prometheus exporter (its documented name and label translation, in
/// tests/common/otlp.rs), gives back exactly the /metrics exposition:
/// every name, label set and value, for every metric family edgewatch has.
#[test]
fn otlp_names_map_back_to_the_exposition() {
    let mut labels = Config::default();
    labels.metrics.labels = vec!["comm".into(), "peer".into()];
    labels.metrics.series_limit = 3;
    for cfg in [Config::default(), labels] {
        let families = families(cfg.validate().unwrap());
        let mut text = String::new();
        model::write_prometheus_text(&families, &mut text);
        let scraped = common::otlp::scraped_samples(&common::Metrics::parse(&text).samples);
        let req = convert::to_request(&families, 1, 2, &convert::resource(&[], "host"));
        let pushed = common::otlp::prometheus_samples(&req);
        assert!(scraped.len() > 100, "{} samples", scraped.len());
        let names = |s: &[common::otlp::Sample]| {
            s.iter()
                .map(|(n, _, _)| n.clone())
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(names(&pushed), names(&scraped), "name for name");
        assert_eq!(pushed, scraped, "sample for sample");
    }
}

/// The collector's naming rules as tests/common/otlp.rs applies them.
#[test]
fn the_collectors_naming_rules() {
    use common::otlp::collector_name;
    assert_eq!(
        collector_name("edgewatch_tcp_connects", "", true, false),
        "edgewatch_tcp_connects_total"
    );
    assert_eq!(collector_name("a_total_b", "", true, false), "a_b_total");
    assert_eq!(collector_name("x.y__z", "s", false, false), "x_y_z_seconds");
    assert_eq!(collector_name("p_seconds", "s", false, true), "p_seconds");
    assert_eq!(collector_name("p", "1", false, true), "p_ratio");
    assert_eq!(collector_name("9lives", "", false, true), "_9lives");
}
