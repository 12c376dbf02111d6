//! Start-up on a machine without tracefs: edgewatch mounts it when it can,
//! and otherwise stops with one line naming the fix. Runs in a private mount
//! namespace (unshare -m) so the host's mounts are never touched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly at the first broken expectation"
)]

mod common;

use std::process::Command;

use common::{Edgewatch, binary, privileged, serial};

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
    let mode = common::kernel::kernel().connect_mode();
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
