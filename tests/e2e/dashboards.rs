//! End to end, as root: the dashboard and the alerts as a user meets them.
//! A real Prometheus (Debian's) scrapes edgewatch every second and
//! evaluates deploy/prometheus/rules.yml every second, while a load
//! exercises every probe and the XDP datapath with a blocklist. Then:
//!
//! - every query of dashboards/edgewatch.json, with its variables
//!   substituted as Grafana does, returns at least one series;
//! - every alert the load should fire is pending or firing;
//! - `promtool check metrics` accepts a live scrape.
//!
//! Everything happens in two network namespaces of the test's own joined by
//! a veth pair (`a` the clients, `b` the servers, edgewatch and
//! Prometheus), and on the host's BPF objects the test creates:
//! - connects a -> b, established ones and refused ones (a closed port);
//! - bulk transfers a -> b through an nftables rule in b dropping 3% of
//!   the data, so TCP retransmits;
//! - map updates on maps of the test's own: one kept busy, one full so
//!   further inserts fail with E2BIG;
//! - UDP from a's two addresses through the XDP program on b's interface,
//!   one of them blocklisted; later, a malformed blocklist and a SIGHUP.
//!
//! Two edgewatch instances, as two nodes: the main one with every probe,
//! XDP, the blocklist and OTLP pushes to a port where nothing listens; and
//! a degraded one whose TCP tracepoints are hidden (retransmit can't
//! attach) and whose ring buffer is 4 KiB (it loses events). The alert
//! EdgewatchProbeRunsSkipped is not expected: the kernel skips a probe run
//! only when a timer or softirq happens to land on a CPU inside another
//! program or a map syscall, which no load here can make happen on cue.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{
    Edgewatch, Metrics, Netns,
    bpf::{BPF_ANY, HASH, Map, close, create, load_prog_using, update},
    http_get, poll, privileged, repo, serial, test_subnet,
};

const BULK_PORT: u16 = 5001;
const ECHO_PORT: u16 = 5002;
const CLOSED_PORT: u16 = 5003;
const UDP_PORT: u16 = 7777;
const PROM_PORT: u16 = 9090;
/// Where the main edgewatch pushes OTLP: nothing listens there.
const OTLP_PORT: u16 = 4318;
const LOAD_ROUNDS: u32 = 15;

/// Prometheus inside namespace `b`, killed on drop.
struct Prometheus {
    child: Child,
    ns: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(ns: &Netns, dir: &Path, targets: &[SocketAddr]) -> Self {
        let cfg = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &cfg,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n  - job_name: edgewatch\n    static_configs:\n      - targets: [{}]\n",
                repo("deploy/prometheus/rules.yml").display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "prometheus"])
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROM_PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus not found: install the Debian package prometheus");
        Self {
            child,
            ns: ns.name.clone(),
        }
    }

    /// GET an API path from inside the namespace; the parsed JSON, or None
    /// while Prometheus is not answering yet.
    fn api(&self, path: &str) -> Option<serde_json::Value> {
        let path = path.to_string();
        let ns = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            crate::common::enter_netns(&ns);
            let addr: SocketAddr = format!("127.0.0.1:{PROM_PORT}").parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
            let mut resp = String::new();
            s.read_to_string(&mut resp).ok()?;
            let (_, body) = resp.split_once("\r\n\r\n")?;
            serde_json::from_str(body).ok()
        })
        .join()
        .unwrap()
    }

    /// The series an instant query returns (an error answer panics).
    fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let v = self
            .api(&format!("/api/v1/query?query={enc}"))
            .unwrap_or_else(|| panic!("no answer to {q}"));
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().unwrap().clone()
    }
}

/// Grafana's substitutions: `$instance` (a multi-value variable used in a
/// regex matcher: Grafana escapes regex metacharacters) and
/// `$__rate_interval`, which is max(4 x scrape interval, interval + scrape
/// interval): 1m with the data source's default scrape interval (15s).
fn substitute(expr: &str, instance: &str) -> String {
    let escaped = instance.replace('.', "\\\\.");
    expr.replace("$instance", &escaped)
        .replace("$__rate_interval", "1m")
}

/// Every (panel title, query) of the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("dashboards/edgewatch.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in v["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// Accepts connections on `port` in `ns` forever, reading each to its end
/// and answering one byte.
fn serve(ns: &Netns, ip: &str, port: u16) {
    let ip = ip.to_string();
    let listener = ns.enter(move || TcpListener::bind((ip.as_str(), port)).unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                let _ = s.write_all(b"k");
            });
        }
    });
}

struct Load {
    a: Netns,
    b: Netns,
    a_ip: String,
    blocked_ip: String,
    b_ip: String,
    busy: Map,
    full: Map,
}

impl Load {
    /// One round: connects (10 established, 2 refused), a 1 MiB transfer
    /// through the lossy rule, UDP from both of a's addresses, map updates
    /// (a burst on the busy map, three E2BIG inserts into the full one).
    fn round(&self, burst: u32) {
        let (b_ip, a_ip, blocked) = (
            self.b_ip.clone(),
            self.a_ip.clone(),
            self.blocked_ip.clone(),
        );
        self.a.enter(move || {
            for _ in 0..10 {
                let mut s = TcpStream::connect((b_ip.as_str(), ECHO_PORT)).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut k = [0u8; 1];
                s.read_exact(&mut k).unwrap();
            }
            for _ in 0..2 {
                let e = TcpStream::connect((b_ip.as_str(), CLOSED_PORT)).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            let mut s = TcpStream::connect((b_ip.as_str(), BULK_PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(&vec![0x5a; 1 << 20]).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut k = [0u8; 1];
            s.read_exact(&mut k).unwrap();
            for src in [&a_ip, &blocked] {
                let u = UdpSocket::bind((src.as_str(), 0)).unwrap();
                for _ in 0..5 {
                    u.send_to(&[0x42; 100], (b_ip.as_str(), UDP_PORT)).unwrap();
                }
            }
        });
        for i in 0..burst {
            assert_eq!(
                update(&self.busy, &(i % 64).to_ne_bytes(), &[0u8; 8], BPF_ANY),
                0
            );
        }
        for i in 0..3u32 {
            let r = update(&self.full, &(1000 + i).to_ne_bytes(), &[0u8; 8], BPF_ANY);
            assert_eq!(r, -i64::from(libc::E2BIG), "insert into the full map");
        }
    }
}

/// (alert name, labels it must carry) the load should make pending or firing.
fn expected_alerts(
    main: &str,
    degraded: &str,
    full_map: &str,
) -> Vec<(&'static str, Vec<(String, String)>)> {
    let l = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    vec![
        (
            "EdgewatchProbeNotAttached",
            l(&[("instance", degraded), ("probe", "retransmit")]),
        ),
        (
            "EdgewatchLosingEvents",
            l(&[("instance", degraded), ("probe", "map")]),
        ),
        ("EdgewatchTcpConnectFailures", l(&[("instance", main)])),
        (
            "EdgewatchBpfMapNearlyFull",
            l(&[("instance", main), ("map_name", full_map)]),
        ),
        (
            "EdgewatchBpfMapUpdatesFailing",
            l(&[
                ("instance", main),
                ("map_name", full_map),
                ("result", "e2big"),
            ]),
        ),
        (
            "EdgewatchXdpBlocklistReloadRejected",
            l(&[("instance", main), ("result", "error")]),
        ),
        (
            "EdgewatchOtlpPushFailing",
            l(&[("instance", main), ("reason", "connect")]),
        ),
    ]
}

#[test]
fn dashboards_and_alerts_have_data_under_load() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let lap = |what: &str| eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());

    let a = Netns::new("dba");
    let b = Netns::new("dbb");
    let net = test_subnet(7);
    let (a_ip, blocked_ip, b_ip) = (format!("{net}.1"), format!("{net}.3"), format!("{net}.2"));
    crate::common::veth_pair(&a, "ewd0", &a_ip, &b, "ewd1", &b_ip);
    a.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{blocked_ip}/24"),
        "dev",
        "ewd0",
    ]);
    b.exec(&["nft", "add", "table", "inet", "ewloss"]);
    b.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "ewloss",
        "in",
        "{ type filter hook input priority 0; }",
    ]);
    b.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "ewloss",
        "in",
        "tcp",
        "dport",
        &BULK_PORT.to_string(),
        "numgen",
        "random",
        "mod",
        "100",
        "<",
        "3",
        "drop",
    ]);
    serve(&b, &b_ip, BULK_PORT);
    serve(&b, &b_ip, ECHO_PORT);

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocklist");
    std::fs::write(&list, format!("{blocked_ip}/32\n2001:db8::/32\n")).unwrap();
    let otlp = format!("http://127.0.0.1:{OTLP_PORT}");
    let main = Edgewatch::start_in(
        &b,
        &[
            "--probes",
            "connect,retransmit,map",
            "--xdp.interface",
            "ewd1",
            "--xdp.blocklist-file",
            list.to_str().unwrap(),
            "--otlp.endpoint",
            &otlp,
            "--otlp.interval-ms",
            "1000",
        ],
    );
    let degraded = Edgewatch::start_after(
        &[
            "ip",
            "netns",
            "exec",
            &b.name,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "--",
        ],
        "(mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing) \
         && mount -t tmpfs none /sys/kernel/tracing/events/tcp",
        &[
            "--probes",
            "connect,retransmit,map",
            "--attach.disable=tp_btf",
            // A 4 KiB ring drained once a second: bursts overflow it.
            "--ringbuf.size-bytes",
            "4096",
            "--ringbuf.wakeup-bytes",
            "4096",
            "--ringbuf.flush-interval-ms",
            "1000",
        ],
    );
    let (main_i, degraded_i) = (main.addr.to_string(), degraded.addr.to_string());
    lap(&format!("edgewatch main {main_i}, degraded {degraded_i}"));

    let prom = Prometheus::start(&b, dir.path(), &[main.addr, degraded.addr]);
    let up = poll(Duration::from_secs(60), || {
        let v = prom.api("/api/v1/query?query=up")?;
        let up = v["data"]["result"]
            .as_array()?
            .iter()
            .filter(|r| r["value"][1] == "1")
            .count();
        (up == 2).then_some(())
    });
    assert!(up.is_some(), "Prometheus never had both targets up");
    lap("Prometheus scrapes both");

    let pid = std::process::id() % 100_000;
    let (busy_name, full_name) = (format!("ewdbusy{pid}"), format!("ewdfull{pid}"));
    let busy = create(HASH, &busy_name, 4, 8, 64, 0);
    let full = create(HASH, &full_name, 4, 8, 16, 0);
    for i in 0..16u32 {
        assert_eq!(update(&full, &i.to_ne_bytes(), &[0u8; 8], BPF_ANY), 0);
    }
    // The hot-update doctor's stale twin: a program on map `old`, a newer
    // map of the same name used by a second program, the first program
    // gone, and `old` still written.
    let twin_name = format!("ewdtwin{pid}");
    let old = create(HASH, &twin_name, 4, 8, 16, 0);
    let first = load_prog_using(&format!("ewdp1{pid}"), old.fd);
    let new = create(HASH, &twin_name, 4, 8, 16, 0);
    let second = load_prog_using(&format!("ewdp2{pid}"), new.fd);
    assert!(first >= 0 && second >= 0, "loading the twin's programs");
    close(first);
    for i in 0..3u32 {
        assert_eq!(update(&old, &i.to_ne_bytes(), &[0u8; 8], BPF_ANY), 0);
    }
    let load = Load {
        a,
        b,
        a_ip,
        blocked_ip,
        b_ip,
        busy,
        full,
    };
    for _ in 0..LOAD_ROUNDS {
        let t = Instant::now();
        load.round(5000);
        if let Some(rest) = Duration::from_secs(1).checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    lap(&format!("{LOAD_ROUNDS} rounds of load"));

    // Every dashboard query, as Grafana would send it for the main node.
    let queries = dashboard_queries();
    let mut empty: Vec<(String, String)> = queries
        .iter()
        .map(|(t, e)| (t.clone(), substitute(e, &main_i)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !empty.is_empty() && Instant::now() < deadline {
        empty.retain(|(_, q)| prom.query(q).is_empty());
        if !empty.is_empty() {
            load.round(100);
        }
    }
    lap(&format!(
        "{} of {} dashboard queries returned series",
        queries.len() - empty.len(),
        queries.len()
    ));

    // A malformed blocklist, rejected on SIGHUP: the running list stays.
    std::fs::write(&list, "not-a-prefix\n").unwrap();
    // SAFETY: kill(2) on our child (ip netns exec execs edgewatch).
    unsafe { libc::kill(main.pid() as i32, libc::SIGHUP) };
    let rejected = poll(Duration::from_secs(10), || {
        (main.scrape().count(
            "edgewatch_xdp_blocklist_reloads_total",
            &[("result", "error")],
        ) == 1)
            .then_some(())
    });
    assert!(
        rejected.is_some(),
        "the malformed blocklist was not rejected"
    );

    // Every alert the load should fire: pending or firing.
    let expected = expected_alerts(&main_i, &degraded_i, &full_name);
    let mut missing: Vec<_> = expected.iter().map(|(n, _)| *n).collect();
    let mut seen = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !missing.is_empty() && Instant::now() < deadline {
        load.round(100);
        std::thread::sleep(Duration::from_millis(500));
        let Some(v) = prom.api("/api/v1/alerts") else {
            continue;
        };
        seen = v["data"]["alerts"].clone();
        let alerts = seen.as_array().cloned().unwrap_or_default();
        missing.retain(|name| {
            let (_, labels) = expected.iter().find(|(n, _)| n == name).unwrap();
            !alerts.iter().any(|al| {
                al["labels"]["alertname"] == *name
                    && (al["state"] == "pending" || al["state"] == "firing")
                    && labels.iter().all(|(k, v)| al["labels"][k] == *v.as_str())
            })
        });
    }
    lap(&format!(
        "{} of {} expected alerts pending or firing",
        expected.len() - missing.len(),
        expected.len()
    ));

    // The live scrapes pass promtool's lint.
    let m = main.scrape();
    crate::common::promtool_check(&m.text);
    let d = load.b.enter({
        let addr = degraded.addr;
        move || Metrics::parse(&http_get(addr, "/metrics"))
    });
    crate::common::promtool_check(&d.text);
    assert!(
        d.has(
            "edgewatch_probe_attached",
            &[("probe", "retransmit"), ("mode", "none")]
        ),
        "the degraded instance's retransmit probe attached after all:\n{}",
        d.text
    );
    drop(prom);
    drop(main);
    drop(degraded);
    lap("done");

    let mut problems = Vec::new();
    for (title, q) in &empty {
        problems.push(format!("dashboard panel {title:?}: no series for {q}"));
    }
    for name in &missing {
        problems.push(format!("alert {name} is neither pending nor firing"));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\nalerts seen: {seen:#}",
        problems.len(),
        problems.join("\n")
    );
}
