//! Start-up on a machine without tracefs: edgewatch mounts it when it can,
//! and otherwise stops with one line naming the fix. Runs in a private mount
//! namespace (unshare -m) so the host's mounts are never touched.

use std::{process::Command, time::Duration};

use crate::common::{Edgewatch, binary, poll, privileged, serial};

/// Runs `edgewatch --config.check` in a private mount namespace where
/// tracefs (and debugfs) are unmounted first; `prefix` wraps the binary.
fn check_without_tracefs(prefix: &str) -> (Option<i32>, String, String) {
    let script = format!(
        "umount /sys/kernel/debug 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; \
         if [ -e /sys/kernel/tracing/events ]; then echo 'tracefs still mounted' >&2; exit 99; fi; \
         exec {prefix} {} --config.check --probes connect",
        binary()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mounts_tracefs_when_missing() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let (code, stdout, stderr) = check_without_tracefs("");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("mounted tracefs"), "{stderr}");
    let mode = crate::common::kernel::kernel().connect_mode();
    assert!(
        stdout.contains(&format!("connect: attached ({mode})")),
        "{stdout}"
    );
}

#[test]
fn names_the_fix_when_tracefs_cannot_be_mounted() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    // Without CAP_SYS_ADMIN, mount(2) fails with EPERM.
    let (code, stdout, stderr) =
        check_without_tracefs("setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin");
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("edgewatch:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("mount -t tracefs tracefs /sys/kernel/tracing"),
        "{stderr}"
    );
}

/// A probe whose hook is missing degrades honestly: the others run, the
/// failed one reads `edgewatch_probe_attached{mode="none"} 0`, and the log
/// names the hook. The TCP tracepoints are hidden by a tmpfs in a private
/// mount namespace.
#[test]
fn a_probe_that_cannot_attach_is_visible_as_a_metric() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let ew = Edgewatch::start_after(
        &["unshare", "-m", "--propagation", "private", "--"],
        "(mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing) \
         && mount -t tmpfs none /sys/kernel/tracing/events/tcp",
        // Classic tracepoints only, so the hidden ones are the only way in.
        &["--probes", "connect,retransmit", "--attach.disable=tp_btf"],
    );
    let m = ew.scrape();
    assert_eq!(
        m.count(
            "edgewatch_probe_attached",
            &[("probe", "connect"), ("mode", "tracepoint")]
        ),
        1
    );
    assert!(
        m.has(
            "edgewatch_probe_attached",
            &[("probe", "retransmit"), ("mode", "none")]
        ),
        "{}",
        m.text
    );
    assert_eq!(
        m.count("edgewatch_probe_attached", &[("probe", "retransmit")]),
        0
    );
    let log = ew.log.lock().unwrap().join("\n");
    assert!(
        log.contains("probe failed to attach") && log.contains("tcp:tcp_retransmit_skb"),
        "{log}"
    );
}

/// Counters whose label values are known at start-up are exported from
/// zero, before the first event, so that rate() and alerts work from the
/// start (Prometheus' instrumentation guidance).
#[test]
fn known_series_are_exported_from_zero() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let ew = Edgewatch::start(&[
        "--otlp.endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--otlp.interval-ms",
        "3600000",
    ]);
    let m = ew.scrape();
    for probe in ["connect", "retransmit", "map", "unknown"] {
        assert!(
            m.has("edgewatch_decode_errors_total", &[("probe", probe)]),
            "decode errors of {probe}"
        );
    }
    for probe in ["connect", "retransmit", "map"] {
        assert!(m.has("edgewatch_ringbuf_lost_events_total", &[("probe", probe)]));
        assert!(m.has("edgewatch_probe_missed_events_total", &[("probe", probe)]));
    }
    for reason in ["ebusy", "einval", "enomem", "ehostunreach", "eagain"] {
        assert!(
            m.has(
                "edgewatch_tcp_retransmits_skipped_total",
                &[("reason", reason)]
            ),
            "skip reason {reason}"
        );
    }
    for reason in edgewatch::export::otlp::ERROR_REASONS {
        assert!(
            m.has(
                "edgewatch_export_errors_total",
                &[
                    ("exporter", "otlp"),
                    ("signal", "metrics"),
                    ("reason", reason)
                ]
            ),
            "export error reason {reason}"
        );
    }
    assert!(m.has(
        "edgewatch_scrape_errors_total",
        &[("collector", "ringbuf_lost")]
    ));
}

/// `n` connect() calls to a Unix socket that does not exist, from a thread
/// named `comm`.
fn unix_connects(comm: &'static str, n: usize) {
    std::thread::spawn(move || {
        crate::common::set_thread_comm(comm);
        for _ in 0..n {
            let _ = std::os::unix::net::UnixStream::connect("/nonexistent/ew-reload");
        }
    })
    .join()
    .unwrap();
}

/// SIGHUP re-reads the whole configuration: opt-in labels change without
/// a restart and without resetting a counter; an invalid file is rejected
/// whole and counted; a setting that needs a restart is named in the log.
#[test]
fn sighup_reloads_the_config_without_resetting_counters() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgewatch.yml");
    std::fs::write(&path, "probes: [connect]\n").unwrap();
    let ew = Edgewatch::start(&["--config.file", path.to_str().unwrap()]);
    let hup = || {
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(ew.pid() as i32, libc::SIGHUP) };
    };
    let calls = |m: &crate::common::Metrics, labels: &[(&str, &str)]| {
        let mut l = vec![("family", "unix")];
        l.extend_from_slice(labels);
        m.count("edgewatch_connect_calls_total", &l)
    };
    let base = calls(&ew.scrape(), &[]);
    unix_connects("ew-reload-a", 7);
    let m = ew.scrape();
    assert_eq!(calls(&m, &[]), base + 7);
    assert!(!m.text.contains("comm=\"ew-reload-a\""), "comm is off");

    std::fs::write(
        &path,
        "probes: [connect]\nmetrics:\n  labels: [comm]\nringbuf:\n  size_bytes: 16777216\n",
    )
    .unwrap();
    hup();
    poll(Duration::from_secs(10), || {
        (ew.scrape()
            .count("edgewatch_config_reloads_total", &[("result", "ok")])
            == 1)
            .then_some(())
    })
    .expect("reload counted");
    unix_connects("ew-reload-b", 5);
    let m = ew.scrape();
    assert_eq!(calls(&m, &[("comm", "ew-reload-b")]), 5);
    assert_eq!(calls(&m, &[]), base + 12, "nothing reset");
    let log = ew.log.lock().unwrap().join("\n");
    assert!(
        log.contains("ringbuf.size_bytes") && log.contains("take effect at the next start"),
        "{log}"
    );

    std::fs::write(&path, "probes: [connect]\nmetrics:\n  labels: [pid]\n").unwrap();
    hup();
    poll(Duration::from_secs(10), || {
        (ew.scrape()
            .count("edgewatch_config_reloads_total", &[("result", "error")])
            == 1)
            .then_some(())
    })
    .expect("rejected reload counted");
    unix_connects("ew-reload-c", 3);
    let m = ew.scrape();
    assert_eq!(
        calls(&m, &[("comm", "ew-reload-c")]),
        3,
        "the running config (comm on) stays"
    );
    assert_eq!(
        m.count("edgewatch_config_reloads_total", &[("result", "ok")]),
        1
    );
}
