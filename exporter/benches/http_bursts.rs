//! RSS of edgewatch through bursts of half-open HTTP connections: six
//! rounds of N connections (half send nothing, half send half a request),
//! held 1 s, then closed. Side by side in the same run: the default
//! connection cap (64) and an effectively uncapped server
//! (`--web.max-connections 10000`, what axum::serve did before the cap).
//!
//! sudo cargo bench -p edgewatch --bench http_bursts [-- --connections N --rounds R]
//!
//! Prints RSS at start, at each round's peak and after it, and 12 s after
//! the last round (past the server's 10 s burst check, when it hands free
//! heap back with malloc_trim).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{io::Write, net::TcpStream, thread, time::Duration};

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn run(cap: &str, connections: usize, rounds: usize) -> Vec<String> {
    let ew = common::Edgewatch::start(&["--probes", "connect", "--web.max-connections", cap]);
    ew.scrape();
    let mut cells = vec![format!("{:.1}", rss_mib(ew.pid()))];
    for _ in 0..rounds {
        let mut held = Vec::with_capacity(connections);
        for i in 0..connections {
            let mut s = TcpStream::connect(ew.addr).unwrap();
            if i % 2 == 1 {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            }
            held.push(s);
        }
        thread::sleep(Duration::from_secs(1));
        let peak = rss_mib(ew.pid());
        drop(held);
        thread::sleep(Duration::from_secs(1));
        cells.push(format!("{peak:.1} / {:.1}", rss_mib(ew.pid())));
    }
    thread::sleep(Duration::from_secs(12));
    cells.push(format!("{:.1}", rss_mib(ew.pid())));
    assert!(ew.scrape().has("edgewatch_build_info", &[]));
    cells
}

fn main() {
    if !common::privileged() {
        return;
    }
    let connections = common::bench_arg("--connections", 2000usize);
    let rounds = common::bench_arg("--rounds", 6usize);
    let lim = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: setrlimit reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let mut header = String::from("| server | start (MiB) |");
    for r in 0..rounds {
        header.push_str(&format!(" round {r} peak / after |"));
    }
    header.push_str(" 12 s later |");
    println!("{connections} connections per round\n\n{header}");
    println!("|{}", "---|".repeat(rounds + 3));
    for (name, cap) in [("cap 64 (default)", "64"), ("uncapped (10000)", "10000")] {
        println!("| {name} | {} |", run(cap, connections, rounds).join(" | "));
    }
}
