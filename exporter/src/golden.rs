//! Golden exposition: fixed records -> dispatcher -> aggregators -> encode,
//! compared byte for byte with files under tests/golden/, which
//! `promtool check metrics` must accept. `UPDATE_GOLDEN=1 cargo test`
//! rewrites the files after an intended change.

use std::{path::PathBuf, process::Command};

use edgewatch_common::{
    ConnectCall, Header, KIND_CONNECT_CALL, KIND_MAP_OP, KIND_RETRANSMIT, KIND_TCP_CONNECT, MapOp,
    RTX_HAS_ERR, RTX_SYNACK, Retransmit, TcpConnect,
};
use prometheus_client::registry::Registry;

use crate::{
    aggregate::map::Clock,
    config::Config,
    export::prometheus::to_prometheus_text,
    inventory::{InventoryCollector, InventorySource, MapRow, ProgRow},
    pipeline::Dispatcher,
    probe,
    telemetry::{LostCollector, LostSource, ProbeModeLabels, Telemetry},
};

/// Skipped runs: a fixed number per probe, told apart by the name of the
/// probe's first program.
struct FixedMisses;

impl crate::telemetry::MissSource for FixedMisses {
    fn missed(&self, programs: &[&'static str]) -> u64 {
        match programs.first().copied().unwrap_or("") {
            p if p.starts_with("ew_connect") => 4,
            p if p.starts_with("ew_map") => 6,
            p if p.starts_with("ew_retransmit") => 4,
            _ => 0,
        }
    }
}

/// XDP counter cells: packets = index + 1, bytes = 100 x packets.
struct FixedCounters;

impl crate::xdp::CounterSource for FixedCounters {
    fn read(&self, index: u32) -> Result<(u64, u64), aya::maps::MapError> {
        let p = u64::from(index) + 1;
        Ok((p, 100 * p))
    }
}

/// A fixed host: three maps, two programs.
struct FixedInventory;

impl InventorySource for FixedInventory {
    fn maps(&self, _errors: &mut Vec<&'static str>) -> Vec<MapRow> {
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
        ]
    }

    fn programs(&self, _errors: &mut Vec<&'static str>) -> Vec<ProgRow> {
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

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(name)
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
pub fn check_golden(name: &str, actual: &str) {
    let actual = normalize(actual);
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("mkdir");
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
    promtool_check(&path);
}

/// Runs `promtool check metrics` on a Prometheus text file. promtool is
/// part of the test toolchain (scripts/quickstart installs it).
pub fn promtool_check(path: &std::path::Path) {
    let text = std::fs::read(path).expect("read");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool not found: install the Debian package prometheus (scripts/quickstart does)",
        );
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&text)
            .expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lost counts as the kernel would report them: probe id * 10.
struct FixedLost;

impl LostSource for FixedLost {
    fn lost(&self, id: u32) -> Result<u64, aya::maps::MapError> {
        Ok(u64::from(id) * 10)
    }
}

fn hdr(kind: u16, size: usize) -> Header {
    Header {
        kind,
        size: size as u16,
        cpu: 0,
        ts_ns: 1,
    }
}

fn comm(s: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..s.len()].copy_from_slice(s.as_bytes());
    c
}

fn call(ret: i32, family: u16, name: &str) -> Vec<u8> {
    let c = ConnectCall {
        hdr: hdr(KIND_CONNECT_CALL, size_of::<ConnectCall>()),
        cgroup_id: 0,
        tgid: 42,
        pid: 42,
        ret,
        family,
        _pad: 0,
        comm: comm(name),
    };
    bytemuck::bytes_of(&c).to_vec()
}

fn tcp(newstate: u16, sk_err: i32, duration_ns: u64, name: &str) -> Vec<u8> {
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let t = TcpConnect {
        hdr: hdr(KIND_TCP_CONNECT, size_of::<TcpConnect>()),
        duration_ns,
        cgroup_id: 0,
        tgid: 42,
        sk_err,
        family: libc::AF_INET as u16,
        dport: 8080,
        newstate,
        _pad: 0,
        daddr,
        comm: comm(name),
    };
    bytemuck::bytes_of(&t).to_vec()
}

fn rtx(flags: u8, err: i32, segs: u16, state: u8, last_octet: u8) -> Vec<u8> {
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&[192, 0, 2, last_octet]);
    let r = Retransmit {
        hdr: hdr(KIND_RETRANSMIT, size_of::<Retransmit>()),
        cgroup_id: 0,
        err,
        segs,
        family: libc::AF_INET as u16,
        sport: 40000,
        dport: 443,
        state,
        flags,
        _pad: 0,
        daddr,
    };
    bytemuck::bytes_of(&r).to_vec()
}

fn map_op(cmd: u16, ret: i32, requested: u32, count: u32, id: u32, ty: u16, name: &str) -> Vec<u8> {
    let mut map_name = [0u8; 16];
    map_name[..name.len()].copy_from_slice(name.as_bytes());
    let o = MapOp {
        hdr: hdr(KIND_MAP_OP, size_of::<MapOp>()),
        duration_ns: 1500,
        cgroup_id: 0,
        map_id: id,
        tgid: 7,
        ret,
        count,
        requested,
        map_type: ty,
        cmd,
        map_name,
        comm: comm("cilium-agent"),
    };
    bytemuck::bytes_of(&o).to_vec()
}

fn exposition(cfg: Config) -> String {
    let settings = cfg.validate().expect("valid config");
    let mut registry = Registry::default();
    let telemetry = Telemetry::register(&mut registry);
    let probes = probe::build_with_clock(
        &settings,
        &mut registry,
        &telemetry,
        Clock::fixed(1_795_000_000_000_000_000),
    );
    registry.register_collector(Box::new(InventoryCollector::new(
        Box::new(FixedInventory),
        telemetry.scrape_errors.clone(),
    )));
    let export_errors = crate::export::otlp::register_errors(&mut registry);
    export_errors
        .get_or_create(&crate::export::otlp::ExportErrorLabels {
            exporter: "otlp",
            reason: "connect",
        })
        .inc();
    let xdp = crate::xdp::XdpMetrics::register(&mut registry);
    xdp.attached
        .get_or_create(&crate::xdp::IfaceMode {
            interface: "eth0".into(),
            mode: "driver",
        })
        .set(1);
    xdp.entries
        .get_or_create(&crate::xdp::FamilyLabel { family: "ipv4" })
        .set(3);
    xdp.entries
        .get_or_create(&crate::xdp::FamilyLabel { family: "ipv6" })
        .set(1);
    xdp.reloads
        .get_or_create(&crate::xdp::ResultLabel { result: "ok" })
        .inc();
    registry.register_collector(Box::new(crate::xdp::XdpCollector::new(
        Box::new(FixedCounters),
        vec![(0, "eth0".into())],
        telemetry.scrape_errors.clone(),
    )));
    for p in &probes {
        telemetry
            .probe_attached
            .get_or_create(&ProbeModeLabels {
                probe: p.name(),
                mode: "tracepoint",
            })
            .set(1);
    }
    registry.register_collector(Box::new(crate::telemetry::MissesCollector::new(
        Box::new(FixedMisses),
        probes.iter().map(|p| (p.name(), p.programs())).collect(),
    )));
    registry.register_collector(Box::new(LostCollector::new(
        Box::new(FixedLost),
        probes.iter().map(|p| (p.id(), p.name())).collect(),
        telemetry.scrape_errors.clone(),
    )));
    let mut d = Dispatcher::new(probes, telemetry);
    let inet = libc::AF_INET as u16;
    for r in [
        call(0, inet, "curl"),
        call(0, inet, "curl"),
        call(-libc::EINPROGRESS, inet, "nginx"),
        call(-libc::ECONNREFUSED, inet, "curl"),
        call(-libc::ENOENT, libc::AF_UNIX as u16, "systemd"),
        tcp(1, 0, 40_000, "curl"),
        tcp(1, 0, 3_000_000, "nginx"),
        tcp(7, libc::ECONNREFUSED, 20_000, "curl"),
        tcp(7, libc::ETIMEDOUT, 7_000_000_000, "curl"),
        rtx(RTX_HAS_ERR, 0, 4, 1, 10),
        rtx(RTX_HAS_ERR, 0, 1, 1, 10),
        rtx(RTX_HAS_ERR, -libc::EBUSY, 3, 1, 10),
        rtx(RTX_HAS_ERR, 0, 1, 2, 11),
        rtx(RTX_SYNACK, 0, 1, 3, 12),
        rtx(0, 0, 2, 1, 13),
        map_op(2, 0, 1, 1, 10, 9, "conntrack"),
        map_op(2, -libc::EEXIST, 1, 1, 10, 9, "conntrack"),
        map_op(2, -libc::E2BIG, 1, 1, 10, 9, "conntrack"),
        map_op(26, -libc::E2BIG, 8, 5, 12, 11, "routes"),
        map_op(3, -libc::ENOENT, 1, 1, 12, 11, "routes"),
        map_op(27, 0, 4, 4, 12, 11, "routes"),
        vec![1, 2, 3],
    ] {
        d.dispatch(&r);
    }
    let mut om = String::new();
    prometheus_client::encoding::text::encode(&mut om, &registry).expect("encode");
    to_prometheus_text(&om)
}

#[test]
fn default_labels() {
    check_golden("exposition-default.prom", &exposition(Config::default()));
}

#[test]
fn opt_in_labels_with_cap() {
    let mut cfg = Config::default();
    cfg.metrics.labels = vec!["comm".into(), "peer".into()];
    cfg.metrics.series_limit = 3;
    check_golden("exposition-labels.prom", &exposition(cfg));
}
