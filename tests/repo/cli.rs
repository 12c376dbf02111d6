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
        stderr.contains("metrics.series_limit: must be at least 1"),
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
