//! The binary's command line and configuration errors (no privileges needed).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly at the first broken expectation"
)]

mod common;

use std::{io::Write, process::Command};

fn edgewatch(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(common::binary()).args(args).output().unwrap();
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
