//! A real Prometheus (Debian's 2.42) scrapes a real edgewatch over
//! loopback: the target is up, the scrape has no errors, and edgewatch's
//! metrics are queryable with their labels. No glue in between.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::common::{Edgewatch, poll, privileged, serial};

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn query(port: u16, q: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("prometheus");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let q: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    write!(
        s,
        "GET /api/v1/query?query={q} HTTP/1.0\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[test]
fn prometheus_scrapes_edgewatch() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let ew = Edgewatch::start(&["--probes", "connect"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 3s, scrape_timeout: 3s}}\nscrape_configs:\n  - job_name: edgewatch\n    static_configs:\n      - targets: ['{}']\n",
            ew.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus not found: install the Debian package prometheus");
    let _prom = Prometheus(child);

    // Until a scrape succeeds: one can time out (up 0) where the machine
    // is slow, e.g. the kernel-matrix VMs under emulation; the next one
    // must then succeed.
    let mut last = String::new();
    let up = poll(Duration::from_secs(60), || {
        let _ = TcpStream::connect(("127.0.0.1", port)).ok()?;
        last = query(port, "up{job=\"edgewatch\"}");
        last.contains("\"1\"]").then_some(())
    });
    assert!(up.is_some(), "edgewatch target never up: {last}");

    let info = query(
        port,
        &format!(
            "edgewatch_probe_attached{{probe=\"connect\",mode=\"{}\"}}",
            crate::common::kernel::kernel().connect_mode()
        ),
    );
    assert!(info.contains("\"1\"]"), "{info}");
    // Counters arrive with their _total names and histograms whole.
    let r = query(
        port,
        "count({__name__=~\"edgewatch_ringbuf_lost_events_total|edgewatch_build_info\"})",
    );
    assert!(r.contains("\"2\"]"), "{r}");
    let r = query(
        port,
        "scrape_samples_post_metric_relabeling{job=\"edgewatch\"} > 0",
    );
    assert!(r.contains("\"value\":["), "{r}");
}
