//! Helpers shared by the benchmarks (exporter/benches, scripts/bench):
//! medians, a bpftrace that is really attached before it is measured, the
//! BPF programs a process holds and their kernel statistics, a process's
//! CPU time, what else is attached to the host's hooks, and the connect
//! probe's dispatcher for the benchmarks that need no kernel.

#![allow(dead_code, reason = "each benchmark uses a different part")]

use edgewatch::{
    aggregate,
    pipeline::Dispatcher,
    probe::{self, Probe},
    telemetry::Telemetry,
    vocab::{clock::Clock, labels::OptInLabels, spans::SpanSink},
};
use prometheus_client::registry::Registry;
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `bpftool perf show` lines (every tracepoint/raw tracepoint/kprobe
/// attachment on the host, with its owner's pid).
pub fn perf_show() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["perf", "show"])
        .output()
        .expect("bpftool (Debian package bpftool)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Attachments on the host not owned by one of `ours` (pids): what else
/// would be measured along with us. Printed by every benchmark before it
/// measures, so interference is on the record.
pub fn foreign_attachments(ours: &[u32]) -> Vec<String> {
    perf_show()
        .into_iter()
        .filter(|l| {
            let pid = l
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            !pid.is_some_and(|p| ours.contains(&p))
        })
        .collect()
}

/// Prints the attachments of other processes, if any.
pub fn report_interference(label: &str) {
    let me = std::process::id();
    let foreign = foreign_attachments(&[me]);
    if foreign.is_empty() {
        println!("[{label}] no other tracepoint/kprobe attachments on the host");
    } else {
        println!(
            "[{label}] WARNING: {} attachment(s) of other processes on the host (they add to every cell):",
            foreign.len()
        );
        for l in foreign {
            println!("[{label}]   {l}");
        }
    }
}

/// A bpftrace process, killed on drop.
pub struct Bpftrace(Child);

impl Bpftrace {
    /// Starts `script` and returns once `bpftool perf show` lists `probes`
    /// attachments for its pid (bpftrace prints "Attaching" before it is).
    pub fn start(script: &str, probes: usize) -> Self {
        let mut child = Command::new("bpftrace")
            .args(["-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bpftrace (Debian package bpftrace)");
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || for _ in BufReader::new(out).lines() {});
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[bpftrace] {l}");
            }
        });
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = perf_show()
                .iter()
                .filter(|l| l.starts_with(&format!("pid {pid} ")))
                .count();
            if n >= probes {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("bpftrace exited ({status}) before attaching");
            }
            assert!(
                Instant::now() < deadline,
                "bpftrace did not attach {probes} probes"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Bpftrace {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SIGINT lets bpftrace detach and print its maps; then make sure.
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ids of the BPF programs process `pid` holds an fd for.
pub fn prog_ids_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            for l in text.lines() {
                if let Some(v) = l.strip_prefix("prog_id:")
                    && let Ok(id) = v.trim().parse()
                {
                    ids.push(id);
                }
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// (name, run_time_ns, run_cnt) of the programs with these ids.
pub fn prog_stats(ids: &[u32]) -> BTreeMap<u32, (String, u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()))
        .map(|p| {
            (
                p.id(),
                (
                    p.name_as_str().unwrap_or("").to_string(),
                    p.run_time().as_nanos() as u64,
                    p.run_count(),
                ),
            )
        })
        .collect()
}

/// Runs the kernel counted (while BPF_ENABLE_STATS was held) of the
/// programs process `pid` holds whose names start with `prefix`.
pub fn runs_of(pid: u32, prefix: &str) -> u64 {
    prog_stats(&prog_ids_of(pid))
        .values()
        .filter(|(name, _, _)| name.starts_with(prefix))
        .map(|(_, _, runs)| runs)
        .sum()
}

/// Per program: (name, ns per run, runs) between two snapshots.
pub fn prog_delta(
    before: &BTreeMap<u32, (String, u64, u64)>,
    after: &BTreeMap<u32, (String, u64, u64)>,
) -> Vec<(String, f64, u64)> {
    after
        .iter()
        .filter_map(|(id, (name, t1, c1))| {
            let (_, t0, c0) = before.get(id)?;
            let runs = c1 - c0;
            (runs > 0).then(|| (name.clone(), (t1 - t0) as f64 / runs as f64, runs))
        })
        .collect()
}

/// user + system CPU time of a process (all its threads), in nanoseconds.
pub fn cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f[11].parse().expect("utime");
    let stime: u64 = f[12].parse().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    (utime + stime) * 1_000_000_000 / hz
}

/// Context switches (voluntary + involuntary) of every thread of `pid`:
/// each is a wake-up of that thread or a preemption.
pub fn context_switches(pid: u32) -> u64 {
    let mut n = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
                for l in s.lines() {
                    if let Some(v) = l
                        .strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                    {
                        n += v.trim().parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
    }
    n
}

/// VmRSS of a process in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// This machine, for the record: kernel, CPU model and count, memory.
pub fn machine() -> String {
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    format!(
        "kernel {uname}, {cpus} vCPU ({model}), {} GiB",
        (mem + (1 << 19)) >> 20
    )
}

/// The connect probe's dispatcher over `registry`, wired as the binary
/// wires it (no workload resolution), for benchmarks that feed it records
/// without a kernel.
pub fn connect_dispatcher(
    registry: &mut Registry,
    telemetry: Telemetry,
    labels: OptInLabels,
    series_limit: usize,
    spans: SpanSink,
) -> Dispatcher {
    let ctx = aggregate::Context {
        labels,
        series_limit,
        series_dropped: telemetry.series_dropped.clone(),
        clock: Clock::now(),
        spans,
        refs: Default::default(),
        workloads: edgewatch::workload::Workloads::off(),
    };
    let connect: &'static dyn Probe = &probe::connect::PROBE;
    Dispatcher::new(vec![(connect, connect.build(registry, &ctx))], telemetry)
}
