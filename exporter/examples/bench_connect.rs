//! Added cost per blocking loopback connect() with edgewatch's connect
//! probe attached, against none attached, side by side in one run.
//!
//! cargo build --release -p edgewatch --examples
//! sudo ./target/release/examples/bench_connect [--connects N] [--rounds R] [--binary PATH]
//!
//! Each round measures N connect()+close() pairs without edgewatch, then
//! starts edgewatch (connect probe only), waits until it listens, measures
//! again and stops it. Closing with SO_LINGER 0 (RST) keeps TIME_WAIT from
//! exhausting ephemeral ports. Reports each round and the median.
//!
//! Wall-clock ratios are noisy on a shared 2-vCPU VM, so the run also holds
//! BPF_ENABLE_STATS (fd-scoped) and reports the probe programs' own run
//! time per connect from the kernel's per-program counters.

#![expect(
    clippy::expect_used,
    reason = "a benchmark tool: any failure aborts the run with its cause"
)]

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn measure(addr: std::net::SocketAddr, n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let s = TcpStream::connect(addr).expect("connect");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// (run_time_ns, run_count) per program, for loaded programs whose name
/// starts with one of edgewatch's connect-probe names.
fn per_program() -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for p in aya::programs::loaded_programs().flatten() {
        let name = p.name_as_str().unwrap_or("").to_string();
        if ["ew_connect_", "ew_sock_state"]
            .iter()
            .any(|n| name.starts_with(n))
        {
            let e = m.entry(name).or_insert((0, 0));
            e.0 += p.run_time().as_nanos() as u64;
            e.1 += p.run_count();
        }
    }
    m
}

/// (run_time_ns, run_count) summed over the connect probe's programs.
fn probe_stats() -> (u64, u64) {
    per_program()
        .values()
        .fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n: usize = arg("--connects", "20000").parse().expect("--connects N");
    let rounds: usize = arg("--rounds", "5").parse().expect("--rounds R");
    let binary = arg("--binary", "target/release/edgewatch");

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    measure(addr, n / 10); // warm-up

    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let (mut base, mut with, mut prog) = (Vec::new(), Vec::new(), Vec::new());
    println!(
        "round  none_ns  edgewatch_ns  added_ns  ratio  bpf_ns_per_connect  bpf_runs_per_connect"
    );
    for r in 0..rounds {
        let b = measure(addr, n);
        let mut child = Command::new(&binary)
            .args(["--probes", "connect", "--web.listen-address", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start edgewatch");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening") => break,
                Some(_) => {}
                None => panic!("edgewatch exited before listening"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let before_each = per_program();
        let before = probe_stats();
        let w = measure(addr, n);
        let after = probe_stats();
        if r == rounds - 1 {
            for (name, (t1, c1)) in per_program() {
                let (t0, c0) = before_each.get(&name).copied().unwrap_or((0, 0));
                println!(
                    "  {name}: {:.0} ns per run, {:.2} runs per connect",
                    (t1 - t0) as f64 / (c1 - c0).max(1) as f64,
                    (c1 - c0) as f64 / n as f64
                );
            }
        }
        let bpf_ns = (after.0 - before.0) as f64 / n as f64;
        let runs = (after.1 - before.1) as f64 / n as f64;
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait");
        println!(
            "{r:>5}  {b:>7.0}  {w:>12.0}  {:>8.0}  {:.3}  {bpf_ns:>18.0}  {runs:>20.2}",
            w - b,
            w / b
        );
        base.push(b);
        with.push(w);
        prog.push(bpf_ns);
    }
    let (b, w, p) = (median(&mut base), median(&mut with), median(&mut prog));
    println!(
        "median: none {b:.0} ns, edgewatch {w:.0} ns per connect+close; added {:.0} ns ({:.3}x); \
         probe programs {p:.0} ns per connect",
        w - b,
        w / b
    );
}
