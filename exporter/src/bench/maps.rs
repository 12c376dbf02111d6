//! `edgewatch bench maps`: the cost of a lookup and of an update in each
//! map type, measured on the running kernel, next to the order the seeds
//! claim ("Map types and their cost": lookups, fastest first, array >
//! percpu array > hash > percpu hash > LRU hash > LPM trie).
//!
//! The programs are in exporter-ebpf/src/mapbench.bpf.c: each runs 64
//! operations on one map per run (XDP, through BPF_PROG_TEST_RUN, which
//! repeats a program and reports its mean time per run); the same loop
//! without map calls is the baseline, subtracted. Per type and operation
//! the figure is the median over rounds of (program - baseline) / 64.
//! Every lookup must find its key (the programs return their hit count),
//! so an LRU that evicted or a map the loader failed to fill shows up as
//! an error, not as a fast lookup.
//!
//! Needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (XDP programs), or
//! CAP_SYS_ADMIN; it checks them first and says which are missing.

use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, PerCpuValues, lpm_trie::Key},
    programs::{TestRun, TestRunOptions, Xdp},
};
use serde::Serialize;

use super::{CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, Cap, effective_caps, missing};

/// Map operations per program run (EW_BENCH_OPS in the C file; the
/// baseline returns it, which the run checks).
pub const OPS: u32 = 64;
/// /24 prefixes in the two LPM tries.
pub const LPM_SMALL: u32 = 1_000;
pub const LPM_LARGE: u32 = 100_000;

/// What the programs need: maps, XDP programs, test runs.
pub const NEEDED: &[Cap] = &[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN];

/// The order SEEDS.md claims for lookups, fastest first.
pub const SEEDS_ORDER: &[&str] = &[
    "array",
    "percpu_array",
    "hash",
    "percpu_hash",
    "lru_hash",
    "lpm_trie",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub format: Format,
    /// Rounds; each figure is the median over them.
    pub rounds: u32,
    /// Program runs per round (BPF_PROG_TEST_RUN repeat).
    pub runs: u32,
    /// Keys in the array and hash maps.
    pub entries: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            format: Format::Text,
            rounds: 5,
            runs: 5_000,
            entries: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "bench maps needs {} (or CAP_SYS_ADMIN) to create maps and load and test-run XDP programs, and this process lacks {}: run it as root, or give the binary those capabilities (sudo setcap cap_bpf,cap_perfmon,cap_net_admin+ep /path/to/edgewatch)",
        names(NEEDED), names(.0)
    )]
    Privileges(Vec<Cap>),
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Check(String),
    #[error("{0} must be at least 1")]
    Usage(&'static str),
}

fn names(caps: &[Cap]) -> String {
    caps.iter().map(|c| c.1).collect::<Vec<_>>().join(", ")
}

/// Wraps an aya error; EPERM anywhere in its chain means missing
/// privileges (the check up front can be fooled, e.g. by an LSM).
fn bpf_error<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> BenchError {
    move |e| {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && io.raw_os_error() == Some(libc::EPERM)
            {
                return BenchError::Privileges(NEEDED.to_vec());
            }
            cur = err.source();
        }
        BenchError::Bpf {
            what: what.into(),
            source: Box::new(e),
        }
    }
}

/// How the keys of a map are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// u32 keys 0..entries.
    Plain,
    /// `n` /24 prefixes.
    Lpm(u32),
}

/// One map type under test.
#[derive(Debug, Clone, Copy)]
struct Kind {
    /// As printed: the kernel's type name and what sets it apart.
    label: &'static str,
    /// The kernel's type name.
    map_type: &'static str,
    map: &'static str,
    lookup: &'static str,
    update: &'static str,
    keys: Keys,
}

const KINDS: &[Kind] = &[
    Kind {
        label: "array",
        map_type: "array",
        map: "ew_b_array",
        lookup: "ew_lk_array",
        update: "ew_up_array",
        keys: Keys::Plain,
    },
    Kind {
        label: "percpu_array",
        map_type: "percpu_array",
        map: "ew_b_pcpu_array",
        lookup: "ew_lk_pcpu_array",
        update: "ew_up_pcpu_array",
        keys: Keys::Plain,
    },
    Kind {
        label: "hash",
        map_type: "hash",
        map: "ew_b_hash",
        lookup: "ew_lk_hash",
        update: "ew_up_hash",
        keys: Keys::Plain,
    },
    Kind {
        label: "percpu_hash",
        map_type: "percpu_hash",
        map: "ew_b_pcpu_hash",
        lookup: "ew_lk_pcpu_hash",
        update: "ew_up_pcpu_hash",
        keys: Keys::Plain,
    },
    Kind {
        label: "lru_hash",
        map_type: "lru_hash",
        map: "ew_b_lru",
        lookup: "ew_lk_lru",
        update: "ew_up_lru",
        keys: Keys::Plain,
    },
    Kind {
        label: "lru_hash BPF_F_NO_COMMON_LRU",
        map_type: "lru_hash",
        map: "ew_b_lru_nc",
        lookup: "ew_lk_lru_nc",
        update: "ew_up_lru_nc",
        keys: Keys::Plain,
    },
    Kind {
        label: "lpm_trie 1k prefixes",
        map_type: "lpm_trie",
        map: "ew_b_lpm_1k",
        lookup: "ew_lk_lpm_1k",
        update: "ew_up_lpm_1k",
        keys: Keys::Lpm(LPM_SMALL),
    },
    Kind {
        label: "lpm_trie 100k prefixes",
        map_type: "lpm_trie",
        map: "ew_b_lpm_100k",
        lookup: "ew_lk_lpm_100k",
        update: "ew_up_lpm_100k",
        keys: Keys::Lpm(LPM_LARGE),
    },
];

const BASELINE: &str = "ew_bench_base";

/// One row of the result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    /// 1 = cheapest lookup.
    pub rank: usize,
    pub map: &'static str,
    pub map_type: &'static str,
    pub entries: u32,
    pub lookup_ns: f64,
    pub update_ns: f64,
    /// The rank SEEDS.md gives the type's lookups (1 = fastest).
    pub seeds_rank: usize,
}

/// A claim of the seeds, checked against the measurements.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Claim {
    pub claim: String,
    pub holds: bool,
    /// The two figures compared: the one claimed lower first.
    pub ns: [f64; 2],
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub kernel: String,
    pub possible_cpus: usize,
    pub ops_per_run: u32,
    pub runs: u32,
    pub rounds: u32,
    /// Baseline loop, ns per operation (not subtracted yet: for reference).
    pub baseline_ns_per_op: f64,
    pub rows: Vec<Row>,
    pub seeds_order: Vec<&'static str>,
    pub measured_order: Vec<&'static str>,
    pub claims: Vec<Claim>,
}

/// Runs the benchmark and prints it to stdout.
pub fn run(opts: Options) -> Result<(), BenchError> {
    let report = measure(opts)?;
    match opts.format {
        Format::Text => print!("{}", text(&report)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(bpf_error("encoding JSON"))?
        ),
    }
    Ok(())
}

/// Loads the maps and programs, fills the maps, and measures.
pub fn measure(opts: Options) -> Result<Report, BenchError> {
    for (v, name) in [
        (opts.rounds, "--rounds"),
        (opts.runs, "--runs"),
        (opts.entries, "--entries"),
    ] {
        if v == 0 {
            return Err(BenchError::Usage(name));
        }
    }
    if let Some(eff) = effective_caps() {
        let lacking = missing(eff, NEEDED);
        if !lacking.is_empty() {
            return Err(BenchError::Privileges(lacking));
        }
    }
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| BenchError::Bpf {
        what: format!("reading {path}"),
        source: Box::new(e),
    })?;
    let n = opts.entries;
    // LRU maps get room to hold every key without evicting: a common LRU
    // tops its per-CPU free lists up by evicting when fewer than 128 nodes
    // are free; a per-CPU LRU gives each CPU max_entries / CPUs nodes.
    let lru = n.saturating_mul(2).saturating_add(256 * cpus as u32);
    let lru_nc = n.saturating_mul(cpus as u32);
    let mut bpf = EbpfLoader::new()
        .map_max_entries("ew_b_array", n)
        .map_max_entries("ew_b_pcpu_array", n)
        .map_max_entries("ew_b_hash", n)
        .map_max_entries("ew_b_pcpu_hash", n)
        .map_max_entries("ew_b_lru", lru)
        .map_max_entries("ew_b_lru_nc", lru_nc)
        .map_max_entries("ew_b_lpm_1k", LPM_SMALL)
        .map_max_entries("ew_b_lpm_100k", LPM_LARGE)
        .override_global("ew_bench_entries", &n, true)
        .override_global("ew_bench_lpm_small", &LPM_SMALL, true)
        .override_global("ew_bench_lpm_large", &LPM_LARGE, true)
        .load(edgewatch_ebpf::mapbench())
        .map_err(bpf_error("loading the benchmark maps"))?;
    fill(&mut bpf, n, cpus)?;
    for name in std::iter::once(BASELINE).chain(KINDS.iter().flat_map(|k| [k.lookup, k.update])) {
        program(&mut bpf, name)?
            .load()
            .map_err(bpf_error(format!("loading program {name}")))?;
    }

    // Lookups first: the update programs make the LRUs evict.
    let mut base = Vec::new();
    let mut lookups = vec![Vec::new(); KINDS.len()];
    let mut updates = vec![Vec::new(); KINDS.len()];
    for _ in 0..opts.rounds {
        base.push(time(&mut bpf, BASELINE, opts.runs, Some(OPS))?);
        for (i, k) in KINDS.iter().enumerate() {
            lookups[i].push(time(&mut bpf, k.lookup, opts.runs, Some(OPS))?);
        }
    }
    for _ in 0..opts.rounds {
        base.push(time(&mut bpf, BASELINE, opts.runs, Some(OPS))?);
        for (i, k) in KINDS.iter().enumerate() {
            updates[i].push(time(&mut bpf, k.update, opts.runs, Some(OPS))?);
        }
    }
    let base = median(&mut base);
    let per_op = |samples: &mut Vec<f64>| ((median(samples) - base) / f64::from(OPS)).max(0.0);
    let mut rows: Vec<Row> = KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| Row {
            rank: 0,
            map: k.label,
            map_type: k.map_type,
            entries: match k.keys {
                Keys::Plain => n,
                Keys::Lpm(p) => p,
            },
            lookup_ns: per_op(&mut lookups[i]),
            update_ns: per_op(&mut updates[i]),
            seeds_rank: seeds_rank(k.map_type),
        })
        .collect();
    rows.sort_by(|a, b| a.lookup_ns.total_cmp(&b.lookup_ns));
    for (i, r) in rows.iter_mut().enumerate() {
        r.rank = i + 1;
    }
    Ok(Report {
        kernel: kernel_release(),
        possible_cpus: cpus,
        ops_per_run: OPS,
        runs: opts.runs,
        rounds: opts.rounds,
        baseline_ns_per_op: base / f64::from(OPS),
        measured_order: rows.iter().map(|r| r.map).collect(),
        claims: claims(&rows),
        rows,
        seeds_order: SEEDS_ORDER.to_vec(),
    })
}

fn seeds_rank(map_type: &str) -> usize {
    SEEDS_ORDER
        .iter()
        .position(|t| *t == map_type)
        .map_or(0, |i| i + 1)
}

fn program<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, BenchError> {
    bpf.program_mut(name)
        .ok_or_else(|| BenchError::Check(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(bpf_error(format!("program {name}")))
}

/// Mean ns per run of `runs` runs; checks the return value when given.
fn time(bpf: &mut Ebpf, name: &str, runs: u32, want: Option<u32>) -> Result<f64, BenchError> {
    let frame = [0u8; 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.repeat = runs;
    let r = program(bpf, name)?
        .test_run(opts)
        .map_err(bpf_error(format!("BPF_PROG_TEST_RUN of {name}")))?;
    if let Some(want) = want
        && r.return_value != want
    {
        return Err(BenchError::Check(format!(
            "{name}: {} of {want} operations succeeded (a map lost keys?)",
            r.return_value
        )));
    }
    Ok(duration_ns(r.duration))
}

fn duration_ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Puts keys 0..n in the plain maps and the /24 prefixes in the tries.
fn fill(bpf: &mut Ebpf, n: u32, cpus: usize) -> Result<(), BenchError> {
    for k in KINDS {
        let what = || format!("filling {}", k.map);
        let map = bpf
            .map_mut(k.map)
            .ok_or_else(|| BenchError::Check(format!("map {} missing from the object", k.map)))?;
        let per_cpu = || PerCpuValues::try_from(vec![0u64; cpus]).map_err(bpf_error(what()));
        match (k.map_type, k.keys) {
            ("array", _) => {
                let mut a: Array<_, u64> = Array::try_from(map).map_err(bpf_error(what()))?;
                for i in 0..n {
                    a.set(i, u64::from(i), 0).map_err(bpf_error(what()))?;
                }
            }
            ("percpu_array", _) => {
                let mut a: PerCpuArray<_, u64> =
                    PerCpuArray::try_from(map).map_err(bpf_error(what()))?;
                for i in 0..n {
                    a.set(i, per_cpu()?, 0).map_err(bpf_error(what()))?;
                }
            }
            ("percpu_hash", _) => {
                let mut h: PerCpuHashMap<_, u32, u64> =
                    PerCpuHashMap::try_from(map).map_err(bpf_error(what()))?;
                for i in 0..n {
                    h.insert(i, per_cpu()?, 0).map_err(bpf_error(what()))?;
                }
            }
            (_, Keys::Lpm(count)) => {
                let mut t: LpmTrie<_, u32, u64> =
                    LpmTrie::try_from(map).map_err(bpf_error(what()))?;
                for i in 0..count {
                    let addr = (0x0a00_0000u32 + (i << 8)).to_be();
                    t.insert(&Key::new(24, addr), u64::from(i), 0)
                        .map_err(bpf_error(what()))?;
                }
            }
            _ => {
                // hash and both LRU hashes
                let mut h: HashMap<_, u32, u64> =
                    HashMap::try_from(map).map_err(bpf_error(what()))?;
                for i in 0..n {
                    h.insert(i, u64::from(i), 0).map_err(bpf_error(what()))?;
                }
            }
        }
    }
    Ok(())
}

/// The seeds' claims about lookup and update costs, each checked.
fn claims(rows: &[Row]) -> Vec<Claim> {
    let find = |label: &str| rows.iter().find(|r| r.map == label);
    let mut out = Vec::new();
    let mut cmp = |claim: String, a: Option<f64>, b: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            out.push(Claim {
                claim,
                holds: a < b,
                ns: [a, b],
            });
        }
    };
    let lookup = |l: &str| find(l).map(|r| r.lookup_ns);
    let update = |l: &str| find(l).map(|r| r.update_ns);
    let order = [
        "array",
        "percpu_array",
        "hash",
        "percpu_hash",
        "lru_hash",
        "lpm_trie 1k prefixes",
    ];
    for pair in order.windows(2) {
        cmp(
            format!("{} lookups are faster than {} lookups", pair[0], pair[1]),
            lookup(pair[0]),
            lookup(pair[1]),
        );
    }
    cmp(
        "BPF_F_NO_COMMON_LRU makes LRU hash updates faster".into(),
        update("lru_hash BPF_F_NO_COMMON_LRU"),
        update("lru_hash"),
    );
    for (pcpu, plain) in [("percpu_array", "array"), ("percpu_hash", "hash")] {
        cmp(
            format!(
                "{pcpu} updates are faster than {plain} updates (one CPU here: no shared cache line to fight over)"
            ),
            update(pcpu),
            update(plain),
        );
    }
    out
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The report as a table, ordered by lookup cost.
pub fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "BPF map lookup and update cost on this kernel ({}, {} possible CPUs)",
        r.kernel, r.possible_cpus
    );
    let _ = writeln!(
        s,
        "{} operations per program run, {} runs x {} rounds (median), minus the same loop without map calls ({:.1} ns per operation)",
        r.ops_per_run, r.runs, r.rounds, r.baseline_ns_per_op
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:>4}  {:<30} {:>8} {:>10} {:>10}  {:>10}",
        "rank", "map", "entries", "lookup ns", "update ns", "seeds rank"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:>4}  {:<30} {:>8} {:>10.1} {:>10.1}  {:>10}",
            row.rank, row.map, row.entries, row.lookup_ns, row.update_ns, row.seeds_rank
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "SEEDS.md, lookups fastest first: {}",
        r.seeds_order.join(" > ")
    );
    let _ = writeln!(
        s,
        "measured here:                   {}",
        r.measured_order.join(" > ")
    );
    let _ = writeln!(s);
    for c in &r.claims {
        let _ = writeln!(
            s,
            "{:<9} {} ({:.1} vs {:.1} ns)",
            if c.holds { "holds" } else { "not here" },
            c.claim,
            c.ns[0],
            c.ns[1]
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(map: &'static str, map_type: &'static str, lookup: f64, update: f64) -> Row {
        Row {
            rank: 0,
            map,
            map_type,
            entries: 10,
            lookup_ns: lookup,
            update_ns: update,
            seeds_rank: seeds_rank(map_type),
        }
    }

    #[test]
    fn claims_compare_the_seeds_order() {
        let rows = vec![
            row("array", "array", 1.0, 5.0),
            row("percpu_array", "percpu_array", 2.0, 4.0),
            row("hash", "hash", 3.0, 9.0),
            row("percpu_hash", "percpu_hash", 2.5, 10.0),
            row("lru_hash", "lru_hash", 4.0, 20.0),
            row("lru_hash BPF_F_NO_COMMON_LRU", "lru_hash", 4.0, 15.0),
            row("lpm_trie 1k prefixes", "lpm_trie", 30.0, 80.0),
        ];
        let c = claims(&rows);
        let holds: Vec<bool> = c.iter().map(|c| c.holds).collect();
        // array<pcpu_array, pcpu_array<hash, hash<pcpu_hash (no), pcpu_hash<lru,
        // lru<lpm, no-common-LRU updates, pcpu array updates, pcpu hash updates (no).
        assert_eq!(
            holds,
            vec![true, true, false, true, true, true, true, false]
        );
        assert_eq!(c[2].ns, [3.0, 2.5]);
        assert_eq!(seeds_rank("lpm_trie"), 6);
        assert_eq!(seeds_rank("lru_hash"), 5);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn every_kind_names_its_programs_and_seeds_rank() {
        assert_eq!(KINDS.len(), 8);
        for k in KINDS {
            assert!(seeds_rank(k.map_type) > 0, "{}", k.label);
            assert!(k.lookup.starts_with("ew_lk_") && k.update.starts_with("ew_up_"));
        }
    }
}
