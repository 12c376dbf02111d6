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

    // A deep accept queue: an overflow drops the SYN and costs the client a
    // one-second retransmit, which would swamp the figure.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .expect("bind");
    sock.listen(4096).expect("listen");
    let listener: TcpListener = sock.into();
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    measure(addr, n / 10); // warm-up

    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let (mut none, mut btf, mut tp, mut btf_prog, mut tp_prog) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!("round  none_ns  tp_btf_ns  tracepoint_ns  tp_btf_bpf_ns  tracepoint_bpf_ns");
    for r in 0..rounds {
        let last = r == rounds - 1;
        let b = measure(addr, n);
        let (w1, p1) = attached(&binary, &[], addr, n, last);
        let (w2, p2) = attached(&binary, &["--attach.disable=tp_btf"], addr, n, last);
        println!("{r:>5}  {b:>7.0}  {w1:>9.0}  {w2:>13.0}  {p1:>13.0}  {p2:>17.0}");
        none.push(b);
        btf.push(w1);
        tp.push(w2);
        btf_prog.push(p1);
        tp_prog.push(p2);
    }
    let (b, w1, w2) = (median(&mut none), median(&mut btf), median(&mut tp));
    let (p1, p2) = (median(&mut btf_prog), median(&mut tp_prog));
    println!(
        "median per connect+close: none {b:.0} ns; tp_btf {w1:.0} ns (+{:.0}, {:.3}x); \
         tracepoint {w2:.0} ns (+{:.0}, {:.3}x); probe programs tp_btf {p1:.0} ns, tracepoint {p2:.0} ns",
        w1 - b,
        w1 / b,
        w2 - b,
        w2 / b
    );
}

/// Runs edgewatch (`--probes connect` plus `extra`), measures, stops it.
/// Returns (ns per connect, probe programs' ns per connect).
fn attached(
    binary: &str,
    extra: &[&str],
    addr: std::net::SocketAddr,
    n: usize,
    breakdown: bool,
) -> (f64, f64) {
    let mut child = Command::new(binary)
        .args(["--probes", "connect", "--web.listen-address", "127.0.0.1:0"])
        .args(extra)
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
    if breakdown {
        for (name, (t1, c1)) in per_program() {
            let (t0, c0) = before_each.get(&name).copied().unwrap_or((0, 0));
            if c1 > c0 {
                println!(
                    "  {extra:?} {name}: {:.0} ns per run, {:.2} runs per connect",
                    (t1 - t0) as f64 / (c1 - c0) as f64,
                    (c1 - c0) as f64 / n as f64
                );
            }
        }
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("wait");
    (w, (after.0 - before.0) as f64 / n as f64)
}
