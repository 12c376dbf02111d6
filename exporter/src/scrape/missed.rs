//! `edgewatch_probe_missed_events_total{probe}`: runs the kernel skipped
//! for each probe's programs, read at scrape time from each program's
//! `recursion_misses` (bpf_prog_info, kernel 5.12+).

use std::sync::Mutex;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

use crate::telemetry::ProbeLabel;

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

/// Where skipped-run counts come from.
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

pub struct MissesCollector {
    source: Box<dyn MissSource>,
    /// (probe name, its programs)
    probes: Vec<(&'static str, Vec<&'static str>)>,
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
        probes: Vec<(&'static str, Vec<&'static str>)>,
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
