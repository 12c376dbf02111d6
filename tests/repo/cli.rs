//! The binary's command line and configuration errors (no privileges needed).

use std::{io::Write, process::Command};

fn edgewatch(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(crate::common::binary())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn bad_config_file_exits_2_naming_every_bad_path() {
    let f = config_file(
        "web:\n  listen_adress: 1.2.3.4:1\nmetrics:\n  series_limit: 0\nprobes: [connect, warp]\n",
    );
    let (code, _, stderr) = edgewatch(&[
        "--config.check",
        "--config.file",
        f.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("web.listen_adress: unknown key"),
        "{stderr}"
    );
}

#[test]
fn bad_values_are_all_reported() {
    let f = config_file("metrics:\n  series_limit: 0\nprobes: [connect, warp]\n");
    let (code, _, stderr) = edgewatch(&["--config.file", f.path().to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("metrics.series_limit: 0 must be from 1 to 100000"),
        "{stderr}"
    );
    assert!(
        stderr.contains("probes[1]: unknown probe \"warp\""),
        "{stderr}"
    );
}

#[test]
fn bad_flags_exit_2() {
    let (code, _, stderr) = edgewatch(&["--web.listen-address", "nowhere"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("web.listen_address"), "{stderr}");
    let (code, _, _) = edgewatch(&["--no-such-flag"]);
    assert_eq!(code, Some(2));
    let (code, _, stderr) = edgewatch(&["--metrics.labels", "comm,pid"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("metrics.labels[1]: unknown label \"pid\""),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_exits_2() {
    let (code, _, stderr) = edgewatch(&["--config.file", "/nonexistent/edgewatch.yml"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("/nonexistent/edgewatch.yml"), "{stderr}");
}

#[test]
fn help_lists_the_flags() {
    let (code, stdout, _) = edgewatch(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--config.file",
        "--web.listen-address",
        "--probes",
        "--metrics.labels",
        "--log.format",
    ] {
        assert!(stdout.contains(flag), "{flag} missing from --help");
    }
}

/// Each bad input exits 2 with exactly one line naming what is wrong.
#[test]
fn bad_inputs_get_one_line_and_exit_2() {
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (
            &["--metrics.series-limit", "-1"],
            None,
            "--metrics.series-limit",
        ),
        (&["--no-such-flag"], None, "--no-such-flag"),
        (&["--probes", ""], None, "probes: no probe enabled"),
        (
            &["--probes", "connect,warp"],
            None,
            "unknown probe \"warp\"",
        ),
        (&["--config.check"], Some("loud"), "RUST_LOG: \"loud\""),
        (
            &["--ringbuf.size-bytes", "-4096"],
            None,
            "--ringbuf.size-bytes",
        ),
    ];
    for (args, rust_log, expect) in cases {
        let mut cmd = Command::new(crate::common::binary());
        cmd.args(*args);
        match rust_log {
            Some(v) => cmd.env("RUST_LOG", v),
            None => cmd.env_remove("RUST_LOG"),
        };
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("edgewatch: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn help_names_every_probe_and_the_default() {
    let (code, stdout, _) = edgewatch(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("connect, retransmit, map, or all [default: all]"),
        "{stdout}"
    );
}

/// A blocklist larger than the datapath's tries is refused at validation,
/// before anything is attached, once.
#[test]
fn an_oversized_blocklist_is_refused_before_attaching() {
    use std::fmt::Write as _;
    let mut text = String::new();
    for i in 0..=262_144u32 {
        let _ = writeln!(text, "10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
    }
    let f = config_file(&text);
    let (code, _, stderr) = edgewatch(&[
        "--config.check",
        "--xdp.interface",
        "lo",
        "--xdp.blocklist-file",
        f.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("262145 IPv4 prefixes, more than the 262144"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("262145").count(), 1, "said once: {stderr}");
}

/// Bad OTLP settings stop start-up with one line naming the setting, exit
/// 2, before anything is loaded: by flag, and by OTEL_* variable.
/// Flags, environment, and what stderr must say.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_otlp_settings_exit_2_with_one_line() {
    let cases: &[Case] = &[
        (
            &[
                "--otlp.endpoint",
                "http://127.0.0.1:4318",
                "--otlp.protocol",
                "http/json",
            ],
            &[],
            "otlp.protocol: unknown protocol \"http/json\" (known: grpc, http/protobuf)",
        ),
        (
            &[
                "--otlp.endpoint",
                "http://127.0.0.1:4318",
                "--otlp.headers",
                "authorization",
            ],
            &[],
            "--otlp.headers: item 1 is not key=value",
        ),
        (
            &[
                "--otlp.endpoint",
                "http://127.0.0.1:4318",
                "--otlp.headers",
                "bad name=x",
            ],
            &[],
            "otlp.headers: \"bad name\" is not a valid header name",
        ),
        (
            &[
                "--otlp.endpoint",
                "https://127.0.0.1:4318",
                "--otlp.tls.ca-file",
                "/nonexistent/ca.pem",
            ],
            &[],
            "otlp.tls.ca_file: /nonexistent/ca.pem: No such file or directory",
        ),
        (
            &["--otlp.endpoint", "ftp://user:secret@127.0.0.1:4318"],
            &[],
            "otlp.endpoint: \"ftp://<redacted>@127.0.0.1:4318\": unsupported scheme \"ftp\"",
        ),
        (
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol \"udp\"",
        ),
        (
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ],
            "OTEL_EXPORTER_OTLP_CERTIFICATE: /nonexistent/ca.pem: No such file or directory",
        ),
    ];
    for (args, env, expected) in cases {
        let out = Command::new(crate::common::binary())
            .args(*args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("secret"), "{stderr}");
    }
}

/// `edgewatch bench maps` without its privileges says which it lacks, in
/// one line, and exits 1: no root-only surprise. As root, the binary runs
/// as nobody (a copy: the build tree may not be open to nobody).
#[test]
fn bench_maps_names_the_privileges_it_lacks() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("edgewatch");
    std::fs::copy(crate::common::binary(), &copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.path(), copy.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let copy = copy.to_str().unwrap();
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", copy]);
        c
    } else {
        Command::new(copy)
    };
    let out = cmd.args(["bench", "maps"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    for needed in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "setcap"] {
        assert!(stderr.contains(needed), "{needed}: {stderr}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn bench_maps_has_help_and_rejects_exporter_flags() {
    let (code, stdout, _) = edgewatch(&["bench", "maps", "--help"]);
    assert_eq!(code, Some(0));
    for flag in ["--format", "--rounds", "--runs", "--entries"] {
        assert!(stdout.contains(flag), "{flag} missing: {stdout}");
    }
    let (code, _, stderr) = edgewatch(&["--probes", "map", "bench", "maps"]);
    assert_eq!(code, Some(2), "{stderr}");
}
