//! Every bad input tried on edgewatch (flags, config keys and values,
//! files, web configuration, URLs): each exits 2 with one clear line on
//! stderr and no panic. README.md's "Bad input" table is rendered from
//! these runs and must match them (`EDGEWATCH_BLESS=1` rewrites it).
//!
//! None of these reach BPF: every one is refused while the configuration
//! is validated, so this runs without privileges.

use std::{path::Path, process::Command};

/// One bad input: the arguments (`$DIR` is the test's file directory) and
/// a piece of the one line it must get.
struct Case {
    args: &'static [&'static str],
    expect: &'static str,
}

const fn case(args: &'static [&'static str], expect: &'static str) -> Case {
    Case { args, expect }
}

const CASES: &[Case] = &[
    // Flags and their values.
    case(&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
    case(
        &["--web.listen-address", "nowhere"],
        "web.listen_address: \"nowhere\" is not an address:port",
    ),
    case(
        &["--web.listen-address", "1.2.3.4:99999"],
        "web.listen_address",
    ),
    case(
        &["--web.telemetry-path", "metrics"],
        "web.telemetry_path: \"metrics\" must start with '/'",
    ),
    case(&["--web.telemetry-path", "/"], "web.telemetry_path"),
    case(&["--web.telemetry-path", "/healthz"], "web.telemetry_path"),
    case(
        &["--web.telemetry-path", "/m?x=1"],
        "web.telemetry_path: \"/m?x=1\" has '?'",
    ),
    case(&["--web.telemetry-path", "/m x"], "has ' '"),
    case(&["--web.telemetry-path", "/m#f"], "has '#'"),
    case(&["--web.telemetry-path", "/m/{x}"], "has '{'"),
    case(
        &["--web.max-connections", "0"],
        "web.max_connections: 0 must be from 1 to 10000",
    ),
    case(&["--probes", "warp"], "probes[0]: unknown probe \"warp\""),
    case(&["--probes", ""], "probes: no probe enabled"),
    case(
        &["--metrics.series-limit", "-1"],
        "invalid value '-1' for '--metrics.series-limit <N>'",
    ),
    case(
        &["--probes", "connect,connect"],
        "probes[1]: \"connect\" is listed twice",
    ),
    case(
        &["--metrics.labels", "pid"],
        "metrics.labels[0]: unknown label \"pid\"",
    ),
    case(
        &["--metrics.series-limit", "0"],
        "metrics.series_limit: 0 must be from 1 to 100000",
    ),
    case(
        &["--metrics.series-limit", "18446744073709551615"],
        "must be from 1 to 100000",
    ),
    case(&["--metrics.series-limit", "lots"], "invalid value 'lots'"),
    case(
        &["--workload.pod-logs-dir", "var/log/pods"],
        "workload.pod_logs_dir: \"var/log/pods\" must be an absolute path",
    ),
    case(
        &["--log.level", "loud"],
        "log.level: unknown level \"loud\"",
    ),
    case(
        &["--log.format", "xml"],
        "log.format: unknown format \"xml\"",
    ),
    case(
        &["--ringbuf.size-bytes", "1000"],
        "ringbuf.size_bytes: 1000 must be a power of two",
    ),
    case(
        &["--ringbuf.size-bytes", "4294967296"],
        "ringbuf.size_bytes: 4294967296",
    ),
    case(
        &["--ringbuf.wakeup-bytes", "99999999"],
        "ringbuf.wakeup_bytes: 99999999 must not exceed",
    ),
    case(
        &["--ringbuf.flush-interval-ms", "0"],
        "ringbuf.flush_interval_ms: 0 must be from 1",
    ),
    case(&["--bpf.enable-stats", "maybe"], "invalid value 'maybe'"),
    case(
        &[
            "--bpf.enable-stats=true",
            "--bpf.stats-window-ms=10000",
            "--bpf.stats-interval-ms=10000",
        ],
        "bpf.stats_window_ms: 10000 must be shorter than bpf.stats_interval_ms (10000)",
    ),
    case(
        &[
            "--bpf.enable-stats=true",
            "--bpf.stats-window-ms=10",
            "--bpf.stats-interval-ms=0",
        ],
        "bpf.stats_interval_ms: 0 must be from",
    ),
    case(
        &["--bpf.stats-window-ms", "-1"],
        "invalid value '-1' for '--bpf.stats-window-ms <MS>'",
    ),
    case(
        &["--xdp.interface", "ew-no-such-if0"],
        "no network interface named \"ew-no-such-if0\"",
    ),
    case(&["--xdp.mode", "turbo"], "xdp.mode: unknown mode \"turbo\""),
    case(
        &["--xdp.blocklist-file", "$DIR/blocklist.bad"],
        "xdp.blocklist_file: needs at least one interface",
    ),
    case(
        &[
            "--xdp.interface",
            "lo",
            "--xdp.blocklist-file",
            "/nonexistent/list",
        ],
        "/nonexistent/list: No such file",
    ),
    case(
        &["--xdp.interface", "lo", "--xdp.blocklist-file", "/dev/zero"],
        "larger than 33554432 bytes",
    ),
    case(
        &[
            "--xdp.interface",
            "lo",
            "--xdp.blocklist-file",
            "$DIR/blocklist.bad",
        ],
        "blocklist.bad:2: \"10.0.0.300\" is not an address",
    ),
    case(
        &["--otlp.endpoint", "ftp://h:1"],
        "otlp.endpoint: \"ftp://h:1\": unsupported scheme \"ftp\"",
    ),
    case(
        &[
            "--otlp.endpoint",
            "http://h:4318",
            "--otlp.protocol",
            "grpcx",
        ],
        "otlp.protocol: unknown protocol \"grpcx\"",
    ),
    case(
        &[
            "--otlp.endpoint",
            "https://h:4318",
            "--otlp.tls.ca-file",
            "/nonexistent/ca.pem",
        ],
        "otlp.tls.ca_file: /nonexistent/ca.pem: No such file",
    ),
    case(
        &["--otlp.endpoint", "http://h:4318/?x=1#f"],
        "has a query or fragment",
    ),
    case(
        &[
            "--otlp.endpoint",
            "http://h:4318",
            "--otlp.headers",
            "novalue",
        ],
        "--otlp.headers: item 1 is not key=value",
    ),
    case(
        &["--otlp.interval-ms", "5"],
        "otlp.interval_ms: \"5\" must be",
    ),
    case(&["--otlp.traces"], "otlp.traces: needs an endpoint"),
    case(
        &["--attach.disable", "uprobe"],
        "attach.disable[0]: unknown mode \"uprobe\"",
    ),
    case(
        &["--capabilities.keep", "cap_telepathy"],
        "capabilities.keep: unknown capability \"cap_telepathy\"",
    ),
    // Configuration files.
    case(
        &["--config.file", "/nonexistent/edgewatch.yml"],
        "/nonexistent/edgewatch.yml: No such file",
    ),
    case(
        &["--config.file", "/dev/zero"],
        "/dev/zero: larger than 1048576 bytes",
    ),
    case(
        &["--config.file", "$DIR/unknown-key.yml"],
        "metrics.lables: unknown key",
    ),
    case(
        &["--config.file", "$DIR/type-error.yml"],
        "metrics.series_limit: invalid type",
    ),
    case(
        &["--config.file", "$DIR/syntax.yml"],
        "did not find expected",
    ),
    case(
        &["--config.file", "$DIR/deep.yml"],
        "collections nested more than 64 deep",
    ),
    case(
        &["--config.file", "$DIR/many-unknown.yml"],
        "and 59980 more problems",
    ),
    case(
        &["--config.file", "$DIR/newline-key.yml"],
        "a\\nb: unknown key",
    ),
    case(&["--config.file", "$DIR/binary.yml"], "not UTF-8 text"),
    case(
        &["--config.file", "$DIR/otlp-timeout.yml"],
        "otlp.timeout_ms: \"0\" must be a number of milliseconds",
    ),
    case(
        &["--config.file", "$DIR/spans.yml"],
        "otlp.max_queued_spans: must be at least 1",
    ),
    case(
        &["--config.file", "$DIR/long-value.yml"],
        "more characters)",
    ),
    // Web configuration files (--web.config.file).
    case(
        &["--web.config.file", "/nonexistent/web.yml"],
        "web.config_file: /nonexistent/web.yml: No such file",
    ),
    case(
        &["--web.config.file", "/dev/zero"],
        "larger than 1048576 bytes",
    ),
    case(
        &["--web.config.file", "$DIR/web-unknown.yml"],
        "tls_server_config.certfile: unknown key",
    ),
    case(
        &["--web.config.file", "$DIR/web-hash.yml"],
        "basic_auth_users.alice: not a bcrypt hash",
    ),
    case(
        &["--web.config.file", "$DIR/web-nocert.yml"],
        "tls_server_config.cert_file: $DIR/missing.crt: No such file",
    ),
    case(
        &["--web.config.file", "$DIR/web-notpem.yml"],
        "tls_server_config.cert: no PEM certificate",
    ),
    case(
        &["--web.config.file", "$DIR/web-nokey.yml"],
        "missing one of key or key_file",
    ),
    case(
        &["--web.config.file", "$DIR/web-auth.yml"],
        "client_auth_type: unknown type \"Sometimes\"",
    ),
    case(
        &["--web.config.file", "$DIR/web-header.yml"],
        "HTTP header \"Server\" can not be configured",
    ),
    case(
        &["--web.config.file", "$DIR/web-version.yml"],
        "min_version: unknown TLS version \"TLS14\"",
    ),
    case(
        &["--web.config.file", "$DIR/web-cipher.yml"],
        "TLS_RSA_WITH_AES_128_CBC_SHA is not supported by rustls",
    ),
    case(
        &["--web.config.file", "$DIR/web-ca.yml"],
        "client CA's have been configured without a client_auth_type",
    ),
    case(
        &["--web.config.file", "$DIR/web-sans.yml"],
        "client_allowed_sans: not supported",
    ),
    case(
        &["--web.config.file", "$DIR/web-deep.yml"],
        "collections nested more than 64 deep",
    ),
];

fn files(dir: &Path) {
    let w = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    w("blocklist.bad", "10.0.0.0/8\n10.0.0.300\n");
    w("unknown-key.yml", "metrics:\n  lables: [comm]\n");
    w("type-error.yml", "metrics:\n  series_limit: lots\n");
    w("syntax.yml", "log: {level: info\n");
    w(
        "deep.yml",
        &format!("web: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
    );
    w(
        "many-unknown.yml",
        &(0..60_000)
            .map(|i| format!("k{i}: 1\n"))
            .collect::<String>(),
    );
    w("newline-key.yml", "\"a\\nb\": 1\n");
    std::fs::write(dir.join("binary.yml"), [0xff, 0xfe, 0x00, 0x01]).unwrap();
    w(
        "otlp-timeout.yml",
        "otlp:\n  endpoint: http://h:4318\n  timeout_ms: 0\n",
    );
    w("spans.yml", "otlp:\n  max_queued_spans: 0\n");
    w(
        "long-value.yml",
        &format!("log:\n  level: {}\n", "x".repeat(100_000)),
    );
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    w("web-unknown.yml", "tls_server_config:\n  certfile: x\n");
    w("web-hash.yml", "basic_auth_users:\n  alice: hunter2\n");
    w(
        "web-nocert.yml",
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
    );
    w(
        "web-notpem.yml",
        "tls_server_config:\n  cert_file: web-notpem.yml\n  key_file: web-notpem.yml\n",
    );
    w(
        "web-nokey.yml",
        "tls_server_config:\n  cert_file: server.crt\n",
    );
    w(
        "web-auth.yml",
        &format!("{tls}  client_auth_type: Sometimes\n"),
    );
    w(
        "web-header.yml",
        "http_server_config:\n  headers:\n    Server: edgewatch\n",
    );
    w("web-version.yml", &format!("{tls}  min_version: TLS14\n"));
    w(
        "web-cipher.yml",
        &format!("{tls}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"),
    );
    w("web-ca.yml", &format!("{tls}  client_ca_file: ca.crt\n"));
    w(
        "web-sans.yml",
        &format!(
            "{tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [a]\n"
        ),
    );
    w(
        "web-deep.yml",
        &format!("basic_auth_users: {}\n", "{".repeat(1000)),
    );
}

/// The README's rendering of one case's output line.
fn shown(line: &str) -> String {
    let line = line.replace('|', "\\|");
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line
    }
}

/// How long a bad input may take to be refused.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `cmd` to completion, or kills it past `limit` (None): a case that
/// starts edgewatch for real must fail the test, not hang it.
fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Option<std::process::Output> {
    use std::{io::Read, process::Stdio};
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    status.map(|status| std::process::Output {
        status,
        stdout,
        stderr,
    })
}

#[test]
fn every_bad_input_exits_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let d = dir.path().to_str().unwrap();
    let mut table = String::from("| input | edgewatch says (exit status 2) |\n|---|---|\n");
    let mut failures = Vec::new();
    for c in CASES {
        let args: Vec<String> = c.args.iter().map(|a| a.replace("$DIR", d)).collect();
        let mut cmd = Command::new(crate::common::binary());
        cmd.args(&args).env_remove("RUST_LOG");
        let Some(out) = output_within(&mut cmd, LIMIT) else {
            failures.push(format!(
                "{}: still running after {LIMIT:?} (killed): a bad input must exit at once",
                c.args.join(" ")
            ));
            continue;
        };
        let stderr = String::from_utf8_lossy(&out.stderr).replace(d, "$DIR");
        let lines: Vec<&str> = stderr.lines().collect();
        let shown_args = c.args.join(" ");
        if out.status.code() != Some(2)
            || lines.len() != 1
            || !lines[0].starts_with("edgewatch: ")
            || !lines[0].contains(c.expect)
            || stderr.contains("panicked")
            || lines[0].len() > 8192
            || stderr.contains("pw@")
        {
            failures.push(format!(
                "{shown_args}: exit {:?}, {} lines: {}",
                out.status.code(),
                lines.len(),
                &stderr.chars().take(500).collect::<String>()
            ));
            continue;
        }
        table.push_str(&format!(
            "| `{}` | {} |\n",
            shown(&shown_args),
            shown(lines[0])
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(CASES.len() >= 40);

    let readme_path = crate::common::repo("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (start, end) = ("<!-- bad-inputs: start -->\n", "<!-- bad-inputs: end -->");
    let s = readme
        .find(start)
        .expect("README.md has the bad-inputs markers")
        + start.len();
    let e = readme[s..].find(end).expect("end marker") + s;
    if readme[s..e] != table {
        if std::env::var_os("EDGEWATCH_BLESS").is_some() {
            std::fs::write(
                &readme_path,
                format!("{}{table}{}", &readme[..s], &readme[e..]),
            )
            .unwrap();
        } else {
            panic!(
                "README.md's bad-input table is out of date (EDGEWATCH_BLESS=1 rewrites it); it should read:\n{table}"
            );
        }
    }
}
