//! edgewatch's BPF objects, compiled by the build script and embedded: our
//! probes are fixed, so nothing is looked up on disk at run time. Every
//! `src/probes/*.bpf.c` goes into the one tracing object; every other
//! `src/*.bpf.c` is an object of its own.

/// `include_bytes!` only guarantees byte alignment; the ELF parser reads
/// 8-byte fields in place, so the objects are wrapped in an aligned struct.
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static EDGEWATCH: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/edgewatch.bpf.o"
)));

/// The tracing object: every probe, the shared ring buffer `ew_events` and
/// the lost-record array `ew_lost`.
pub fn edgewatch() -> &'static [u8] {
    &EDGEWATCH.0
}

static XDP: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/xdp.bpf.o")));

/// The XDP datapath object: per-CPU counters and the prefix blocklist.
pub fn xdp() -> &'static [u8] {
    &XDP.0
}

static BASELINE: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/baseline.bpf.o")));

/// Empty programs on the same hooks, the baseline for benchmarks.
pub fn baseline() -> &'static [u8] {
    &BASELINE.0
}

static MAPBENCH: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/mapbench.bpf.o")));

/// `edgewatch bench maps`: lookup and update loops on one map of each type,
/// run through BPF_PROG_TEST_RUN.
pub fn mapbench() -> &'static [u8] {
    &MAPBENCH.0
}

/// Record layouts of `common/include/edgewatch/events.h` as clang lays them
/// out for BPF: lines of `record field offset` and `record =size N`.
pub const C_LAYOUT: &str = include_str!(concat!(env!("OUT_DIR"), "/layout.txt"));

/// The `EW_*` macros of the same header, as `NAME VALUE` lines.
pub const C_DEFINES: &str = include_str!(concat!(env!("OUT_DIR"), "/defines.txt"));
