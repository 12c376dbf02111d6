//! edgewatch's own metrics, in the same namespace: build info, which probes
//! are attached and how, ring-buffer throughput, drops and decode errors.

use std::sync::Mutex;

use aya::maps::{MapData, PerCpuArray};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::aggregate::labels::MetricLabel;
use crate::aggregate::labels::label_set;

label_set! {
    pub struct ProbeLabel {
        pub probe: &'static str,
    }
}

label_set! {
    pub struct ProbeModeLabels {
        pub probe: &'static str,
        pub mode: &'static str,
    }
}

label_set! {
    pub struct CollectorLabel {
        pub collector: &'static str,
    }
}

/// Handles to the self-metrics, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    pub probe_attached: Family<ProbeModeLabels, Gauge>,
    pub events: Family<ProbeLabel, Counter>,
    pub decode_errors: Family<ProbeLabel, Counter>,
    pub series_dropped: Family<MetricLabel, Counter>,
    pub scrape_errors: Family<CollectorLabel, Counter>,
    pub spans_dropped: Counter,
    /// Off unless OTLP traces are on (see main.rs).
    pub spans: crate::aggregate::spans::SpanSink,
}

impl Telemetry {
    pub fn register(registry: &mut Registry) -> Self {
        Self::register_with_build(registry, &crate::build_info::BuildInfo::CURRENT)
    }

    /// Like [`Telemetry::register`] with the build info given (golden tests
    /// pass a fixed one so the files don't change with every commit).
    pub fn register_with_build(
        registry: &mut Registry,
        build: &crate::build_info::BuildInfo,
    ) -> Self {
        let t = Self::default();
        build.register(registry);
        registry.register(
            "edgewatch_probe_attached",
            "1 for each attached probe with the attach mode used; 0 with mode none for a probe that failed to attach",
            t.probe_attached.clone(),
        );
        registry.register(
            "edgewatch_ringbuf_events",
            "Records read from the ring buffer and decoded, by probe",
            t.events.clone(),
        );
        registry.register(
            "edgewatch_decode_errors",
            "Ring-buffer records that could not be decoded (truncated, wrong size, unknown kind), by probe",
            t.decode_errors.clone(),
        );
        registry.register(
            "edgewatch_series_dropped",
            "Events whose opt-in labels were folded into the overflow series because the metric reached its series cap",
            t.series_dropped.clone(),
        );
        registry.register(
            "edgewatch_spans_dropped",
            "Spans dropped because the OTLP export queue was full",
            t.spans_dropped.clone(),
        );
        registry.register(
            "edgewatch_scrape_errors",
            "Errors reading kernel state at scrape time, by collector",
            t.scrape_errors.clone(),
        );
        t
    }
}

/// Where lost-record counts come from: the kernel's per-CPU `ew_lost`
/// array in production, fixed numbers in golden tests.
pub trait LostSource: Send + Sync + 'static {
    /// Records probe `id` could not reserve, summed over CPUs.
    fn lost(&self, id: u32) -> Result<u64, aya::maps::MapError>;
}

impl LostSource for Mutex<PerCpuArray<MapData, u64>> {
    fn lost(&self, id: u32) -> Result<u64, aya::maps::MapError> {
        let map = self.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(&id, 0)?.iter().sum())
    }
}

/// `edgewatch_ringbuf_lost_events_total`, read from the kernel's per-CPU
/// `ew_lost` array and summed at scrape time: a record the kernel could not
/// reserve never reaches user space, so only the kernel can count it.
pub struct LostCollector {
    source: Box<dyn LostSource>,
    probes: Vec<(u32, &'static str)>,
    errors: Family<CollectorLabel, Counter>,
}

impl std::fmt::Debug for LostCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LostCollector")
            .field("probes", &self.probes)
            .finish_non_exhaustive()
    }
}

impl LostCollector {
    pub fn new(
        source: Box<dyn LostSource>,
        probes: Vec<(u32, &'static str)>,
        errors: Family<CollectorLabel, Counter>,
    ) -> Self {
        Self {
            source,
            probes,
            errors,
        }
    }

    fn read(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::with_capacity(self.probes.len());
        for &(id, probe) in &self.probes {
            match self.source.lost(id) {
                Ok(n) => out.push((probe, n)),
                Err(e) => {
                    self.errors
                        .get_or_create(&CollectorLabel {
                            collector: "ringbuf_lost",
                        })
                        .inc();
                    tracing::debug!(probe, error = %e, "reading ew_lost failed");
                }
            }
        }
        out
    }
}

impl Collector for LostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "edgewatch_ringbuf_lost_events",
            "Events the kernel could not record (ring buffer full, or its in-flight call table full), by probe.",
            None,
            MetricType::Counter,
        )?;
        for (probe, n) in self.read() {
            ConstCounter::new(n).encode(family.encode_family(&ProbeLabel { probe })?)?;
        }
        Ok(())
    }
}

/// The kernel's count of runs it skipped for a program (`recursion_misses`
/// of bpf_prog_info, BPF_OBJ_GET_INFO_BY_FD): a kprobe or classic
/// tracepoint program is not run while another such program, or a bpf()
/// map syscall, holds the CPU's `bpf_prog_active`. aya 0.14 does not expose
/// the field.
pub fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    prog_info(fd).map(|i| i.recursion_misses)
}

/// BPF_OBJ_GET_INFO_BY_FD for a program.
fn prog_info(
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<aya_obj::generated::bpf_prog_info> {
    use std::os::fd::AsRawFd;
    // SAFETY: bpf_prog_info is a plain C struct; all-zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(size_of_val(&info) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(std::ptr::from_mut(&mut info) as u64).to_ne_bytes());
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr points to a valid bpf_attr prefix for this command and
    // info to a writable bpf_prog_info of the size it declares.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info)
}

/// Where skipped-run counts come from: the kernel's per-program
/// `recursion_misses` in production, fixed numbers in golden tests.
pub trait MissSource: Send + Sync + 'static {
    /// Runs skipped, summed over the programs named.
    fn missed(&self, programs: &[&'static str]) -> u64;
}

impl MissSource for std::sync::Arc<Mutex<aya::Ebpf>> {
    fn missed(&self, programs: &[&'static str]) -> u64 {
        use std::os::fd::AsFd;
        let bpf = self.lock().unwrap_or_else(|e| e.into_inner());
        programs
            .iter()
            .filter_map(|name| bpf.program(name)?.fd().ok())
            .filter_map(|fd| recursion_misses(fd.as_fd()).ok())
            .sum()
    }
}

/// `edgewatch_probe_missed_events_total{probe}`: runs the kernel skipped
/// for each probe's programs, read at scrape time.
pub struct MissesCollector {
    source: Box<dyn MissSource>,
    probes: Vec<(&'static str, &'static [&'static str])>,
}

impl std::fmt::Debug for MissesCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MissesCollector")
            .field("probes", &self.probes)
            .finish_non_exhaustive()
    }
}

impl MissesCollector {
    pub fn new(
        source: Box<dyn MissSource>,
        probes: Vec<(&'static str, &'static [&'static str])>,
    ) -> Self {
        Self { source, probes }
    }
}

impl Collector for MissesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<(&'static str, u64)> = self
            .probes
            .iter()
            .map(|(probe, programs)| (*probe, self.source.missed(programs)))
            .collect();
        let mut family = encoder.encode_descriptor(
            "edgewatch_probe_missed_events",
            "Events the kernel did not run a probe's programs for (a kprobe or classic tracepoint program is skipped while another one, or a bpf() map syscall, holds the CPU), by probe.",
            None,
            MetricType::Counter,
        )?;
        for (probe, n) in counts {
            ConstCounter::new(n).encode(family.encode_family(&ProbeLabel { probe })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use aya::programs::{TestRun, TestRunOptions, Xdp};

    use super::*;

    /// The raw info call reads the kernel's own struct right: its run count
    /// agrees with a known number of runs. Needs root (loads a program).
    #[test]
    fn raw_prog_info_reads_the_kernels_counters() {
        if std::env::var_os("EDGEWATCH_SKIP_PRIVILEGED_TESTS").is_some_and(|v| v == "1") {
            return;
        }
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "run as root (or set EDGEWATCH_SKIP_PRIVILEGED_TESTS=1)"
        );
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
        let mut bpf = aya::Ebpf::load(edgewatch_ebpf::baseline()).unwrap();
        let prog: &mut Xdp = bpf.program_mut("ew_empty_xdp").unwrap().try_into().unwrap();
        prog.load().unwrap();
        let frame = [0u8; 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.repeat = 777;
        prog.test_run(opts).unwrap();
        let info = prog_info(prog.fd().unwrap().as_fd()).unwrap();
        assert_eq!(info.run_cnt, 777);
        assert_eq!(info.recursion_misses, 0);
    }
}
