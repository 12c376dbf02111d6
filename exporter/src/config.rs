//! Configuration: a strict YAML file, overridden by command-line flags, then
//! validated as a whole so that every problem is reported at once with its
//! path.
//!
//! Unknown keys are collected with `serde_ignored` rather than refused by
//! `serde(deny_unknown_fields)`: the latter stops at the first unknown key,
//! the former lists all of them with their full paths in one pass.

use std::{
    collections::BTreeSet,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

pub mod otlp;

pub use otlp::{OtlpConfig, OtlpTlsConfig};

use crate::{
    datapath::{self, ModeChoice},
    export::otlp::settings::OtlpSettings,
    probe::{self, Disable},
    vocab::labels::OptInLabels,
};

/// Default listen port: outside the 9100-9999 range Prometheus allocates to
/// exporters (fully taken), and not used by any well-known exporter.
pub const DEFAULT_PORT: u16 = 10120;

/// The `probes` entry that enables every probe.
pub const ALL_PROBES: &str = "all";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    pub web: WebConfig,
    /// Probes to enable (`all`: every one).
    pub probes: Vec<String>,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub ringbuf: RingbufConfig,
    pub bpf: BpfConfig,
    pub xdp: XdpConfig,
    pub otlp: OtlpConfig,
    pub attach: AttachConfig,
    pub capabilities: CapabilitiesConfig,
    pub workload: WorkloadConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct WorkloadConfig {
    /// The kubelet's pod log directory: pod namespaces and names (and
    /// container names) for the workload labels.
    pub pod_logs_dir: PathBuf,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            pod_logs_dir: crate::workload::DEFAULT_POD_LOGS_DIR.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct CapabilitiesConfig {
    /// Capabilities kept once everything is attached: auto (what
    /// scrape-time reads need), all, none, or a comma list.
    pub keep: String,
}

impl Default for CapabilitiesConfig {
    fn default() -> Self {
        Self {
            keep: "auto".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct AttachConfig {
    /// Attach modes not to try (tp_btf, fentry, kprobe, task_btf): a probe
    /// then falls back to the next hook in its chain, tracepoints last.
    /// task_btf: the programs that need bpf_get_current_task_btf, task
    /// storage or bpf_task_pt_regs (5.11+/5.15+), i.e. the paths older
    /// kernels take.
    pub disable: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct XdpConfig {
    /// Interfaces to attach the XDP datapath to; none by default.
    pub interfaces: Vec<String>,
    /// auto (driver, else skb), driver or skb.
    pub mode: String,
    /// Source-prefix blocklist, one CIDR a line; SIGHUP reloads it.
    pub blocklist_file: Option<PathBuf>,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: "auto".into(),
            blocklist_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct BpfConfig {
    /// Hold BPF_ENABLE_STATS so the kernel counts every program's runs and
    /// run time (edgewatch_bpf_prog_*); see scrape/bpfstats.rs.
    pub enable_stats: bool,
    /// With enable_stats: hold it only this long out of every
    /// stats_interval_ms (0: all the time).
    pub stats_window_ms: u64,
    pub stats_interval_ms: u64,
    /// Before kernel 6.6 (no `bpf_map_sum_elem_count`), hash maps are
    /// counted by walking them: at most this many slots (the sum of the
    /// walked maps' max_entries) per scrape, smallest maps first. Maps past
    /// it read `edgewatch_bpf_map_entries_exact 0` that scrape, with no
    /// entries or pressure. 0 walks nothing. Unused on 6.6+.
    pub map_count_budget: u64,
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            enable_stats: false,
            stats_window_ms: 0,
            stats_interval_ms: 10_000,
            map_count_budget: crate::scrape::elemcount::DEFAULT_BUDGET,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct WebConfig {
    pub listen_address: String,
    pub telemetry_path: String,
    /// TLS, basic auth and headers in the exporter-toolkit web-config
    /// format; re-read when it changes.
    pub config_file: Option<PathBuf>,
    /// Open HTTP connections at most (see web/server.rs).
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct MetricsConfig {
    /// Opt-in high-cardinality labels: comm, peer, and the workload labels
    /// cgroup, unit, container_id, pod, namespace, container.
    pub labels: Vec<String>,
    /// Series cap per metric family once opt-in labels are on.
    pub series_limit: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct RingbufConfig {
    /// Ring size: a power of two, at least one page.
    pub size_bytes: u64,
    /// Unread bytes past which the kernel wakes the consumer (0: every record).
    pub wakeup_bytes: u64,
    /// Backstop drain period when no wake-up comes, in milliseconds.
    pub flush_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            web: WebConfig::default(),
            probes: vec![ALL_PROBES.to_string()],
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            ringbuf: RingbufConfig::default(),
            bpf: BpfConfig::default(),
            xdp: XdpConfig::default(),
            otlp: OtlpConfig::default(),
            attach: AttachConfig::default(),
            capabilities: CapabilitiesConfig::default(),
            workload: WorkloadConfig::default(),
        }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen_address: format!("0.0.0.0:{DEFAULT_PORT}"),
            telemetry_path: "/metrics".into(),
            config_file: None,
            max_connections: crate::web::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            labels: Vec::new(),
            series_limit: 2000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Default for RingbufConfig {
    fn default() -> Self {
        Self {
            size_bytes: 8 << 20,
            wakeup_bytes: 256 << 10,
            flush_interval_ms: 100,
        }
    }
}

/// Largest `metrics.series_limit`: 100,000 label sets per family is far
/// past any useful dashboard and keeps the worst case in the hundreds of
/// megabytes; "no cap" is not offered.
pub const MAX_SERIES_LIMIT: usize = 100_000;

/// Problems listed in one error line; the rest are counted.
const MAX_ERRORS_SHOWN: usize = 20;

/// Every problem found in a configuration, each as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

/// One line however hostile the input: each problem cut to
/// `bounded::MAX_MESSAGE_CHARS` with control characters escaped, at most
/// `MAX_ERRORS_SHOWN` of them, then how many more there are.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self
            .0
            .iter()
            .take(MAX_ERRORS_SHOWN)
            .map(|e| crate::vocab::bounded::one_line(e, crate::vocab::bounded::MAX_MESSAGE_CHARS))
            .collect();
        write!(f, "{}", shown.join("; "))?;
        if self.0.len() > MAX_ERRORS_SHOWN {
            write!(f, "; and {} more problems", self.0.len() - MAX_ERRORS_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and parses a YAML file; see [`Config::parse`].
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text =
            crate::vocab::bounded::read_to_string(path, crate::vocab::bounded::MAX_CONFIG_BYTES)
                .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        Self::parse(&text).map_err(|e| {
            ConfigErrors(
                e.0.into_iter()
                    .map(|m| format!("{}: {m}", path.display()))
                    .collect(),
            )
        })
    }

    /// Parses YAML text strictly: every unknown key and the first type error
    /// are reported, each with its path. Does not validate values.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        crate::vocab::bounded::parse_yaml(text).map_err(ConfigErrors)
    }

    /// Checks every value and returns all problems at once; the `otlp`
    /// section is resolved against the process's OTEL_* environment.
    pub fn validate(&self) -> Result<Settings, ConfigErrors> {
        self.validate_with_env(&otlp::process_env)
    }

    /// [`Config::validate`] with another environment.
    pub fn validate_with_env(&self, env: otlp::Env) -> Result<Settings, ConfigErrors> {
        let mut errors = Vec::new();

        let listen = match self.web.listen_address.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "web.listen_address: {:?} is not an address:port (e.g. 0.0.0.0:{DEFAULT_PORT}, [::1]:{DEFAULT_PORT})",
                    self.web.listen_address
                ));
                None
            }
        };
        let path = &self.web.telemetry_path;
        if !path.starts_with('/') || path == "/" || path == "/healthz" {
            errors.push(format!(
                "web.telemetry_path: {path:?} must start with '/' and not be '/' or '/healthz'"
            ));
        } else if let Some(c) = path
            .chars()
            .find(|c| !c.is_ascii_graphic() || "?#%{}*".contains(*c))
        {
            // A query or fragment never matches a route, a space or a
            // control character cannot be in a request line, and {} and *
            // are route patterns: every request would 404.
            errors.push(format!(
                "web.telemetry_path: {path:?} has {c:?}; a path is letters, digits and /-._~!$&'()+,;=:@ only"
            ));
        }
        if !(1..=10_000).contains(&self.web.max_connections) {
            errors.push(format!(
                "web.max_connections: {} must be from 1 to 10000",
                self.web.max_connections
            ));
        }
        if let Some(p) = &self.web.config_file
            && let Err(e) = crate::web::load(p)
        {
            errors.push(format!("web.config_file: {e}"));
        }

        let mut probes: Vec<&'static str> = Vec::new();
        for (i, p) in self.probes.iter().enumerate() {
            if p == ALL_PROBES {
                for def in probe::ALL {
                    if !probes.contains(&def.name()) {
                        probes.push(def.name());
                    }
                }
                continue;
            }
            match probe::by_name(p) {
                Some(def) if !probes.contains(&def.name()) => probes.push(def.name()),
                Some(_) => errors.push(format!("probes[{i}]: {p:?} is listed twice")),
                None => errors.push(format!(
                    "probes[{i}]: unknown probe {p:?} (known: {}, or {ALL_PROBES})",
                    probe_names().join(", ")
                )),
            }
        }
        if self.probes.is_empty() {
            errors.push(format!(
                "probes: no probe enabled (known: {}, or {ALL_PROBES} for every one)",
                probe_names().join(", ")
            ));
        }

        let mut labels = OptInLabels::default();
        for (i, l) in self.metrics.labels.iter().enumerate() {
            if !labels.enable(l) {
                errors.push(format!(
                    "metrics.labels[{i}]: unknown label {l:?} (known: {})",
                    OptInLabels::NAMES.join(", ")
                ));
            }
        }
        if !(1..=MAX_SERIES_LIMIT).contains(&self.metrics.series_limit) {
            errors.push(format!(
                "metrics.series_limit: {} must be from 1 to {MAX_SERIES_LIMIT}",
                self.metrics.series_limit
            ));
        }

        let level = match self.log.level.to_ascii_lowercase().as_str() {
            l @ ("error" | "warn" | "info" | "debug" | "trace") => l.to_string(),
            other => {
                errors.push(format!(
                    "log.level: unknown level {other:?} (known: error, warn, info, debug, trace)"
                ));
                String::new()
            }
        };
        let json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                errors.push(format!(
                    "log.format: unknown format {other:?} (known: text, json)"
                ));
                false
            }
        };

        let size = self.ringbuf.size_bytes;
        if !size.is_power_of_two() || !(4096..=(1 << 30)).contains(&size) {
            errors.push(format!(
                "ringbuf.size_bytes: {size} must be a power of two from 4096 to 1073741824"
            ));
        }
        if self.ringbuf.wakeup_bytes > size {
            errors.push(format!(
                "ringbuf.wakeup_bytes: {} must not exceed ringbuf.size_bytes ({size})",
                self.ringbuf.wakeup_bytes
            ));
        }
        if !(1..=60_000).contains(&self.ringbuf.flush_interval_ms) {
            errors.push(format!(
                "ringbuf.flush_interval_ms: {} must be from 1 to 60000",
                self.ringbuf.flush_interval_ms
            ));
        }

        let xdp_mode = ModeChoice::parse(&self.xdp.mode).unwrap_or_else(|| {
            errors.push(format!(
                "xdp.mode: unknown mode {:?} (known: auto, driver, skb)",
                self.xdp.mode
            ));
            ModeChoice::Auto
        });
        let mut xdp_interfaces = Vec::new();
        for (i, name) in self.xdp.interfaces.iter().enumerate() {
            if xdp_interfaces.iter().any(|(n, _)| n == name) {
                errors.push(format!("xdp.interfaces[{i}]: {name:?} is listed twice"));
                continue;
            }
            match interface_index(name) {
                Some(idx) => xdp_interfaces.push((name.clone(), idx)),
                None => errors.push(format!(
                    "xdp.interfaces[{i}]: no network interface named {name:?} here (see 'ip link')"
                )),
            }
        }
        let xdp_blocklist = match &self.xdp.blocklist_file {
            Some(path) => {
                if self.xdp.interfaces.is_empty() {
                    errors.push(
                        "xdp.blocklist_file: needs at least one interface in xdp.interfaces".into(),
                    );
                }
                match datapath::read_blocklist(path).and_then(|list| {
                    datapath::check_capacity(&path.display().to_string(), &list).map(|()| list)
                }) {
                    Ok(list) => Some((path.clone(), list)),
                    Err(e) => {
                        errors.push(format!("xdp.blocklist_file: {e}"));
                        None
                    }
                }
            }
            None => None,
        };

        let otlp = self.otlp.resolve(env, &mut errors);
        let traces_on = otlp.as_ref().is_some_and(|o| o.traces.is_some());
        if self.otlp.map_key_hashes && !traces_on {
            errors
                .push("otlp.map_key_hashes: needs otlp.traces (the hashes go on the spans)".into());
        }
        let mut disabled_modes = Vec::new();
        for (i, m) in self.attach.disable.iter().enumerate() {
            match Disable::parse(m) {
                Some(d) => disabled_modes.push(d),
                None => errors.push(format!(
                    "attach.disable[{i}]: unknown mode {m:?} (known: {})",
                    Disable::names().join(", ")
                )),
            }
        }
        if !self.workload.pod_logs_dir.is_absolute() {
            errors.push(format!(
                "workload.pod_logs_dir: {:?} must be an absolute path (the kubelet's is /var/log/pods)",
                self.workload.pod_logs_dir
            ));
        }

        let capabilities_keep =
            crate::caps::parse_keep(&self.capabilities.keep).unwrap_or_else(|e| {
                errors.push(format!("capabilities.keep: {e}"));
                crate::caps::Keep::Auto
            });

        let bpf_stats = crate::scrape::bpfstats::StatsMode::new(
            self.bpf.enable_stats,
            self.bpf.stats_window_ms,
            self.bpf.stats_interval_ms,
        )
        .unwrap_or_else(|e| {
            errors.push(e);
            crate::scrape::bpfstats::StatsMode::Off
        });

        match listen {
            Some(listen) if errors.is_empty() => Ok(Settings {
                capabilities_keep,
                listen,
                telemetry_path: path.clone(),
                web_config_file: self.web.config_file.clone(),
                web_max_connections: self.web.max_connections,
                probes,
                labels,
                series_limit: self.metrics.series_limit,
                log_level: level,
                log_json: json,
                ringbuf_size: size as u32,
                wakeup_bytes: self.ringbuf.wakeup_bytes,
                flush_interval: Duration::from_millis(self.ringbuf.flush_interval_ms),
                bpf_stats,
                map_count_budget: self.bpf.map_count_budget,
                xdp_interfaces,
                xdp_mode,
                xdp_blocklist,
                otlp,
                disabled_modes,
                map_key_hashes: self.otlp.map_key_hashes,
                pod_logs_dir: self.workload.pod_logs_dir.clone(),
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

/// Every probe's name, in attach order.
pub fn probe_names() -> Vec<&'static str> {
    probe::ALL.iter().map(|p| p.name()).collect()
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub telemetry_path: String,
    pub web_config_file: Option<PathBuf>,
    pub web_max_connections: usize,
    /// What to keep after attaching (see caps.rs).
    pub capabilities_keep: crate::caps::Keep,
    pub probes: Vec<&'static str>,
    pub labels: OptInLabels,
    pub series_limit: usize,
    pub log_level: String,
    pub log_json: bool,
    pub ringbuf_size: u32,
    pub wakeup_bytes: u64,
    pub flush_interval: Duration,
    pub bpf_stats: crate::scrape::bpfstats::StatsMode,
    /// Slots walked per scrape to count hash maps before 6.6.
    pub map_count_budget: u64,
    /// (name, ifindex)
    pub xdp_interfaces: Vec<(String, u32)>,
    pub xdp_mode: ModeChoice,
    pub xdp_blocklist: Option<(PathBuf, BTreeSet<IpNet>)>,
    /// OTLP push, when on (flags, file and OTEL_* environment resolved).
    pub otlp: Option<OtlpSettings>,
    /// Attach modes the operator turned off.
    pub disabled_modes: Vec<Disable>,
    /// Hash map keys and values into the map-call spans.
    pub map_key_hashes: bool,
    /// The kubelet's pod log directory (`workload.pod_logs_dir`).
    pub pod_logs_dir: PathBuf,
}

/// The ifindex of a network interface in this network namespace.
pub fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

impl Settings {
    /// The enabled probes, in attach order.
    pub fn enabled_probes(&self) -> impl Iterator<Item = &'static dyn probe::Probe> + '_ {
        self.probes.iter().filter_map(|name| probe::by_name(name))
    }
}

/// Splits a comma list flag value; empty items are dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn full_file_parses() {
        let cfg = Config::parse(
            "web:\n  listen_address: 127.0.0.1:9999\n  telemetry_path: /m\nprobes: [connect]\n\
             metrics:\n  labels: [comm, peer]\n  series_limit: 10\nlog:\n  level: debug\n  format: json\n\
             ringbuf:\n  size_bytes: 65536\n  wakeup_bytes: 0\n  flush_interval_ms: 5\n",
        )
        .unwrap();
        let s = cfg.validate().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(s.telemetry_path, "/m");
        assert_eq!(
            s.labels,
            OptInLabels {
                comm: true,
                peer: true,
                ..OptInLabels::default()
            }
        );
        assert_eq!(s.series_limit, 10);
        assert!(s.log_json);
        assert_eq!(s.ringbuf_size, 65536);
        assert_eq!(s.flush_interval, Duration::from_millis(5));
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path() {
        let err = Config::parse("web:\n  listen_adress: x\nmetrics:\n  lables: [comm]\nbogus: 1\n")
            .unwrap_err();
        assert_eq!(
            err.0,
            vec![
                "web.listen_adress: unknown key",
                "metrics.lables: unknown key",
                "bogus: unknown key"
            ]
        );
    }

    #[test]
    fn type_errors_carry_the_path() {
        let err = Config::parse("metrics:\n  series_limit: lots\n").unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(
            err.0[0].starts_with("metrics.series_limit: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let mut cfg = Config::default();
        cfg.web.listen_address = "nowhere".into();
        cfg.probes = vec!["connect".into(), "telepathy".into(), "connect".into()];
        cfg.metrics.labels = vec!["pid".into()];
        cfg.metrics.series_limit = 0;
        cfg.log.level = "loud".into();
        cfg.log.format = "xml".into();
        cfg.ringbuf.size_bytes = 1000;
        cfg.ringbuf.flush_interval_ms = 0;
        cfg.xdp.interfaces = vec!["lo".into(), "ew-no-such-if0".into()];
        cfg.xdp.mode = "turbo".into();
        cfg.xdp.blocklist_file = Some("/nonexistent/blocklist".into());
        cfg.attach.disable = vec!["uprobe".into()];
        let err = cfg.validate().unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            vec![
                "web.listen_address",
                "probes[1]",
                "probes[2]",
                "metrics.labels[0]",
                "metrics.series_limit",
                "log.level",
                "log.format",
                "ringbuf.size_bytes",
                "ringbuf.wakeup_bytes",
                "ringbuf.flush_interval_ms",
                "xdp.mode",
                "xdp.interfaces[1]",
                "xdp.blocklist_file",
                "attach.disable[0]"
            ]
        );
    }

    #[test]
    fn hostile_values_are_refused() {
        let mut cfg = Config::default();
        cfg.metrics.series_limit = usize::MAX;
        cfg.web.telemetry_path = "/m?x=1".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("metrics.series_limit: 18446744073709551615 must be from 1 to 100000"),
            "{err}"
        );
        assert!(
            err.contains("web.telemetry_path: \"/m?x=1\" has '?'"),
            "{err}"
        );
        let mut cfg = Config::default();
        cfg.otlp.endpoint = Some("http://h:4318/#f".into());
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("query or fragment")
        );
        cfg.otlp.endpoint = Some("http://h:4318/base/".into());
        let s = cfg.validate().unwrap();
        let metrics = s.otlp.and_then(|o| o.metrics).expect("metrics push on");
        assert_eq!(metrics.uri.to_string(), "http://h:4318/base/v1/metrics");
    }

    #[test]
    fn error_lines_are_bounded() {
        let errs = ConfigErrors(
            (0..1000)
                .map(|i| format!("k{i}: {}", "x".repeat(10_000)))
                .collect(),
        );
        let line = errs.to_string();
        assert!(!line.contains('\n'));
        assert!(line.len() < 20 * 300, "{}", line.len());
        assert!(line.ends_with("; and 980 more problems"), "{line:.100}");
        let nested = format!("web: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let t = std::time::Instant::now();
        assert_eq!(
            Config::parse(&nested).unwrap_err().0,
            vec!["collections nested more than 64 deep"]
        );
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn map_key_hashes_need_traces() {
        let mut cfg = Config::default();
        cfg.otlp.map_key_hashes = true;
        let err = cfg.validate().unwrap_err();
        assert_eq!(
            err.0,
            vec!["otlp.map_key_hashes: needs otlp.traces (the hashes go on the spans)"]
        );
        cfg.otlp.endpoint = Some("http://127.0.0.1:4318".into());
        cfg.otlp.traces = true;
        assert!(cfg.validate().unwrap().map_key_hashes);
    }

    #[test]
    fn split_list_trims_and_drops_empties() {
        assert_eq!(split_list(" comm, ,peer,"), vec!["comm", "peer"]);
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn example_config_is_the_default() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edgewatch.yml");
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg, Config::default());
        cfg.validate().unwrap();
    }
}
