//! The command line: flags over the config file, validated as a whole,
//! then check or run; or, with a subcommand, a measurement of this kernel
//! (`edgewatch bench maps`). The probe list in `--help` comes from
//! `probe::ALL`.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, FromArgMatches, Parser, error::ErrorKind};

use crate::{
    app, bench,
    config::{
        ALL_PROBES, Config, ConfigErrors, Settings, otlp::parse_key_values, probe_names, split_list,
    },
    vocab::{bounded, build_info::BuildInfo},
};

/// Usage and configuration errors.
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "edgewatch",
    version = BuildInfo::VERSION_LINE,
    about = "eBPF observability exporter for Prometheus and OpenTelemetry",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Without a subcommand, edgewatch runs the exporter.
    #[command(subcommand)]
    command: Option<Command>,
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
    /// TLS, basic auth and headers, in the Prometheus exporter-toolkit
    /// web-config format; re-read when it changes [default: none].
    #[arg(long = "web.config.file", value_name = "PATH")]
    web_config_file: Option<PathBuf>,
    /// Open HTTP connections at most; at the cap the oldest idle one is
    /// closed [default: 64].
    #[arg(
        long = "web.max-connections",
        value_name = "N",
        allow_negative_numbers = true
    )]
    web_max_connections: Option<usize>,
    /// Path of the metrics endpoint [default: /metrics].
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    telemetry_path: Option<String>,
    /// Comma list of probes to enable (the help lists them).
    #[arg(long = "probes", value_name = "LIST")]
    probes: Option<String>,
    /// Comma list of opt-in labels: comm, peer, cgroup, unit,
    /// container_id, pod, namespace, container [default: none].
    #[arg(long = "metrics.labels", value_name = "LIST")]
    labels: Option<String>,
    /// Series cap per metric family for opt-in labels [default: 2000].
    #[arg(
        long = "metrics.series-limit",
        value_name = "N",
        allow_negative_numbers = true
    )]
    series_limit: Option<usize>,
    /// Log level: error, warn, info, debug, trace [default: info].
    #[arg(long = "log.level", value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long = "log.format", value_name = "FORMAT")]
    log_format: Option<String>,
    /// Ring buffer size in bytes, a power of two [default: 8388608].
    #[arg(
        long = "ringbuf.size-bytes",
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    ringbuf_size: Option<u64>,
    /// Pending bytes past which the kernel wakes the consumer; 0 wakes it for every record [default: 262144].
    #[arg(
        long = "ringbuf.wakeup-bytes",
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    wakeup_bytes: Option<u64>,
    /// Backstop drain period in milliseconds while records flow; it doubles
    /// while the ring stays empty, up to 64 times (10 s at most) [default: 100].
    #[arg(
        long = "ringbuf.flush-interval-ms",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    flush_interval_ms: Option<u64>,
    /// Hold BPF_ENABLE_STATS so every program's runs and run time are
    /// counted (true or false); it costs every BPF program on the host
    /// while held [default: false].
    #[arg(long = "bpf.enable-stats", value_name = "BOOL")]
    enable_stats: Option<bool>,
    /// With stats on: hold them only this long out of every
    /// --bpf.stats-interval-ms; 0 holds them all the time [default: 0].
    #[arg(
        long = "bpf.stats-window-ms",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    stats_window_ms: Option<u64>,
    /// Period of the stats window [default: 10000].
    #[arg(
        long = "bpf.stats-interval-ms",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    stats_interval_ms: Option<u64>,
    /// Before kernel 6.6, hash-map slots (max_entries) walked per scrape to
    /// count elements; maps past it are reported as not exact [default: 1048576].
    #[arg(long = "bpf.map-count-budget", value_name = "SLOTS")]
    map_count_budget: Option<u64>,
    /// Attach the XDP datapath to this interface (repeatable) [default: none].
    #[arg(long = "xdp.interface", value_name = "IFACE")]
    xdp_interfaces: Vec<String>,
    /// XDP attach mode: auto (driver, else skb), driver or skb [default: auto].
    #[arg(long = "xdp.mode", value_name = "MODE")]
    xdp_mode: Option<String>,
    /// XDP source-prefix blocklist file (one CIDR a line; SIGHUP reloads it).
    #[arg(long = "xdp.blocklist-file", value_name = "PATH")]
    xdp_blocklist: Option<PathBuf>,
    /// Push metrics over OTLP to this collector: a base URL
    /// (http://127.0.0.1:4318 for http/protobuf, http://127.0.0.1:4317 for
    /// grpc; https for TLS) [default: off, or OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long = "otlp.endpoint", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf [default: http/protobuf].
    #[arg(long = "otlp.protocol", value_name = "PROTOCOL")]
    otlp_protocol: Option<String>,
    /// The metrics endpoint, used as is (overrides --otlp.endpoint).
    #[arg(long = "otlp.metrics-endpoint", value_name = "URL")]
    otlp_metrics_endpoint: Option<String>,
    /// The traces endpoint, used as is (overrides --otlp.endpoint; turns
    /// span export on).
    #[arg(long = "otlp.traces-endpoint", value_name = "URL")]
    otlp_traces_endpoint: Option<String>,
    /// Headers for every OTLP request: k=v,k2=v2 (values percent-encoded,
    /// as in OTEL_EXPORTER_OTLP_HEADERS).
    #[arg(long = "otlp.headers", value_name = "LIST")]
    otlp_headers: Option<String>,
    /// OTLP compression: gzip or none [default: none].
    #[arg(long = "otlp.compression", value_name = "ALGO")]
    otlp_compression: Option<String>,
    /// Timeout of each OTLP request in milliseconds [default: 10000].
    #[arg(long = "otlp.timeout-ms", value_name = "MS")]
    otlp_timeout_ms: Option<u64>,
    /// OTLP push period in milliseconds [default: 15000].
    #[arg(
        long = "otlp.interval-ms",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    otlp_interval_ms: Option<u64>,
    /// PEM CA certificates to trust for an https endpoint (instead of the
    /// system's).
    #[arg(long = "otlp.tls.ca-file", value_name = "PATH")]
    otlp_ca_file: Option<PathBuf>,
    /// PEM client certificate for mTLS (with --otlp.tls.key-file).
    #[arg(long = "otlp.tls.cert-file", value_name = "PATH")]
    otlp_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long = "otlp.tls.key-file", value_name = "PATH")]
    otlp_key_file: Option<PathBuf>,
    /// Do not verify the collector's certificate.
    #[arg(long = "otlp.tls.insecure-skip-verify")]
    otlp_insecure_skip_verify: bool,
    /// Also push spans (TCP handshakes, map update/delete calls) over OTLP.
    #[arg(long = "otlp.traces")]
    otlp_traces: bool,
    /// Capabilities kept once everything is attached: auto (what scrapes
    /// need: cap_sys_admin with the map probe, else none), all, none, or a
    /// comma list [default: auto].
    #[arg(long = "capabilities.keep", value_name = "LIST")]
    capabilities_keep: Option<String>,
    /// Fraction of handshakes and map calls that get a span, 0 to 1
    /// [default: 1].
    #[arg(long = "otlp.traces-sample-ratio", value_name = "RATIO")]
    otlp_sample_ratio: Option<f64>,
    /// At most this many spans per second (token bucket); 0: no limit
    /// [default: 0].
    #[arg(long = "otlp.traces-max-per-second", value_name = "N")]
    otlp_max_per_second: Option<u32>,
    /// Spans waiting to be sent at most [default: 10000].
    #[arg(long = "otlp.max-queued-spans", value_name = "N")]
    otlp_max_queued_spans: Option<usize>,
    /// Put a hash of each map call's key (and value) on its span
    /// (needs --otlp.traces).
    #[arg(long = "otlp.map-key-hashes")]
    otlp_map_key_hashes: bool,
    /// Comma list of attach modes not to try: tp_btf, fentry, kprobe, task_btf
    /// (probes fall back down their chain, tracepoints last).
    #[arg(long = "attach.disable", value_name = "LIST")]
    attach_disable: Option<String>,
    /// The kubelet's pod log directory, where the pod and namespace
    /// labels come from [default: /var/log/pods].
    #[arg(long = "workload.pod-logs-dir", value_name = "PATH")]
    pod_logs_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Measure this kernel (nothing is attached, nothing is served).
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Lookup and update cost of each BPF map type on this kernel, through
    /// BPF_PROG_TEST_RUN, ordered by cost next to the order the seeds
    /// claim. Needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or root).
    Maps(MapsArgs),
}

#[derive(Debug, clap::Args)]
struct MapsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    format: FormatArg,
    /// Rounds; each figure is the median over them.
    #[arg(long, value_name = "N", default_value_t = bench::maps::Options::default().rounds,
          value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Program runs per round (BPF_PROG_TEST_RUN repeat).
    #[arg(long, value_name = "N", default_value_t = bench::maps::Options::default().runs,
          value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Keys in the array and hash maps (the LPM tries hold 1,000 and 100,000 prefixes).
    #[arg(long, value_name = "N", default_value_t = bench::maps::Options::default().entries,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    entries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    /// A table.
    Text,
    /// One JSON document.
    Json,
}

impl MapsArgs {
    fn options(&self) -> bench::maps::Options {
        bench::maps::Options {
            format: match self.format {
                FormatArg::Text => bench::maps::Format::Text,
                FormatArg::Json => bench::maps::Format::Json,
            },
            rounds: self.rounds,
            runs: self.runs,
            entries: self.entries,
        }
    }
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
        if let Some(v) = &self.web_config_file {
            cfg.web.config_file = Some(v.clone());
        }
        if let Some(v) = self.web_max_connections {
            cfg.web.max_connections = v;
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
        if let Some(v) = self.map_count_budget {
            cfg.bpf.map_count_budget = v;
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
        let o = &mut cfg.otlp;
        if let Some(v) = &self.otlp_protocol {
            o.protocol = Some(v.clone());
        }
        if let Some(v) = &self.otlp_metrics_endpoint {
            o.metrics_endpoint = Some(v.clone());
        }
        if let Some(v) = &self.otlp_traces_endpoint {
            o.traces_endpoint = Some(v.clone());
        }
        if let Some(v) = &self.otlp_headers {
            let pairs = parse_key_values(v)
                .map_err(|e| ConfigErrors(vec![format!("--otlp.headers: {e}")]))?;
            o.headers = pairs.into_iter().collect();
        }
        if let Some(v) = &self.otlp_compression {
            o.compression = Some(v.clone());
        }
        if let Some(v) = self.otlp_timeout_ms {
            o.timeout_ms = Some(v);
        }
        if let Some(v) = self.otlp_interval_ms {
            o.interval_ms = Some(v);
        }
        if let Some(v) = &self.otlp_ca_file {
            o.tls.ca_file = Some(v.clone());
        }
        if let Some(v) = &self.otlp_cert_file {
            o.tls.cert_file = Some(v.clone());
        }
        if let Some(v) = &self.otlp_key_file {
            o.tls.key_file = Some(v.clone());
        }
        if self.otlp_insecure_skip_verify {
            o.tls.insecure_skip_verify = true;
        }
        if self.otlp_traces {
            o.traces = true;
        }
        if let Some(v) = self.otlp_sample_ratio {
            o.traces_sample_ratio = v;
        }
        if let Some(v) = self.otlp_max_per_second {
            o.traces_max_per_second = v;
        }
        if let Some(v) = self.otlp_max_queued_spans {
            o.max_queued_spans = v;
        }
        if let Some(v) = &self.capabilities_keep {
            cfg.capabilities.keep = v.clone();
        }
        if self.otlp_map_key_hashes {
            cfg.otlp.map_key_hashes = true;
        }
        if let Some(v) = &self.attach_disable {
            cfg.attach.disable = split_list(v);
        }
        if let Some(v) = &self.pod_logs_dir {
            cfg.workload.pod_logs_dir = v.clone();
        }
        Ok(cfg)
    }
}

/// Parses the command line, with `--probes`' help naming every probe.
fn parse() -> Result<Cli, String> {
    let names = probe_names().join(", ");
    let command = Cli::command().mut_arg("probes", |a| {
        a.help(format!(
            "Comma list of probes to enable: {names}, or {ALL_PROBES} [default: {ALL_PROBES}]"
        ))
    });
    let parsed = command
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    match parsed {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
            _ => Err(usage_line(&e)),
        },
    }
}

/// A clap error as one line: its first line without the `error: ` prefix
/// (the usage and the hint to `--help` that follow are left out).
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!(
        "{} (see --help)",
        bounded::one_line(first, bounded::MAX_MESSAGE_CHARS)
    )
}

/// RUST_LOG, when set, must be a filter (`info`, `edgewatch=debug,warn`):
/// a typo like `loud` would otherwise turn every log off.
fn env_filter() -> Result<Option<tracing_subscriber::EnvFilter>, String> {
    let Ok(value) = std::env::var("RUST_LOG") else {
        return Ok(None);
    };
    const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "RUST_LOG: {directive:?} is not a level or target=level (levels: {})",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(&value)
        .map(Some)
        .map_err(|e| format!("RUST_LOG: {value:?}: {e}"))
}

/// An error and its causes on one line, each cause once.
fn one_line(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text.replace('\n', " ")
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("edgewatch: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(Command::Bench(Bench::Maps(args))) = &cli.command {
        return match bench::maps::run(args.options()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edgewatch: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match cli.config().and_then(|c| c.validate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("edgewatch: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let filter = match env_filter() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("edgewatch: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(&settings, filter);

    let result = if cli.config_check {
        app::serve::check(&settings)
    } else {
        let reload = Box::new(move || {
            cli.config()
                .and_then(|c| c.validate())
                .map_err(|e| e.to_string())
        });
        app::serve::run(settings, reload)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgewatch: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings, filter: Option<tracing_subscriber::EnvFilter>) {
    let filter = filter.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if settings.log_json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
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
    fn bench_maps_is_a_subcommand_and_flags_stay_as_they_were() {
        let cli = Cli::try_parse_from(["edgewatch", "bench", "maps", "--format", "json"]).unwrap();
        let Some(Command::Bench(Bench::Maps(a))) = &cli.command else {
            panic!("{cli:?}")
        };
        let o = a.options();
        assert_eq!(o.format, bench::maps::Format::Json);
        assert_eq!(o.rounds, bench::maps::Options::default().rounds);
        assert!(Cli::try_parse_from(["edgewatch", "bench", "maps", "--runs", "0"]).is_err());
        // Exporter flags belong to the exporter, not to a subcommand.
        assert!(Cli::try_parse_from(["edgewatch", "--probes", "map", "bench", "maps"]).is_err());
        let cli = Cli::try_parse_from(["edgewatch", "--probes", "map", "--config.check"]).unwrap();
        assert!(cli.command.is_none() && cli.config_check);
    }

    #[test]
    fn empty_flag_lists_mean_none() {
        let cli = Cli::try_parse_from(["edgewatch", "--metrics.labels="]).unwrap();
        let s = cli.config().unwrap().validate().unwrap();
        assert!(!s.labels.comm && !s.labels.peer);
    }
}
