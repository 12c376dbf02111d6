//! The benchmark emitter (exporter-ebpf/src/bench.bpf.c) loaded beside a
//! running edgewatch: it writes map-operation records into that edgewatch's
//! own ring buffer, with edgewatch's submit policy, as fast as
//! BPF_PROG_TEST_RUN with repeat runs it. Records name the map `name`, so
//! the consumer counts them apart; losses count in
//! `ew_lost[PROBE_BENCH]`.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapInfo, PerCpuArray},
    programs::{SocketFilter, TestRun, TestRunOptions},
};
use edgewatch_common::PROBE_BENCH;

/// The maps of process `pid` named `name` (ids from its fds).
fn map_id_of(pid: u32, name: &str) -> u32 {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo");
    let mut ids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .find(|id| {
            MapInfo::from_id(*id)
                .ok()
                .is_some_and(|i| i.name_as_str() == Some(name))
        })
        .unwrap_or_else(|| panic!("process {pid} holds no map named {name}"))
}

pub struct Emitter {
    bpf: Ebpf,
    dir: PathBuf,
}

impl Emitter {
    /// Loads the emitter into the ring buffer of the edgewatch process
    /// `pid`; its records name the map `name` (at most 15 bytes).
    pub fn attach_to(pid: u32, name: &str) -> Self {
        assert!(name.len() < 16);
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/ew-emitter-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bpffs directory (is bpffs mounted?)");
        for map in ["ew_events", "ew_lost"] {
            MapData::from_id(map_id_of(pid, map))
                .expect("open the map by id")
                .pin(dir.join(map))
                .expect("pin");
        }
        let mut name16 = [0u8; 16];
        name16[..name.len()].copy_from_slice(name.as_bytes());
        let events = dir.join("ew_events");
        let lost = dir.join("ew_lost");
        let mut bpf = EbpfLoader::new()
            .map_pin_path("ew_events", &events)
            .map_pin_path("ew_lost", &lost)
            .override_global("ew_bench_name", &name16, true)
            .load(edgewatch_ebpf::bench())
            .expect("loading the emitter");
        let prog: &mut SocketFilter = bpf
            .program_mut("ew_bench_emit")
            .expect("program")
            .try_into()
            .expect("socket filter");
        prog.load().expect("load");
        // The loaded object holds the maps now; the pins are not needed.
        let _ = std::fs::remove_dir_all(&dir);
        Self { bpf, dir }
    }

    /// Emits `repeat` records on the calling thread's CPU (one
    /// BPF_PROG_TEST_RUN).
    pub fn run(&self, repeat: u32) {
        let prog: &SocketFilter = self
            .bpf
            .program("ew_bench_emit")
            .expect("program")
            .try_into()
            .expect("socket filter");
        let frame = [0u8; 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.repeat = repeat;
        let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.return_value, 0, "the emitter keeps no bytes");
    }

    /// Records the kernel could not reserve for the emitter, summed over CPUs.
    pub fn lost(&self) -> u64 {
        let map = self.bpf.map("ew_lost").expect("ew_lost");
        let lost: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).expect("percpu array");
        lost.get(&PROBE_BENCH, 0).expect("read").iter().sum()
    }
}

impl Drop for Emitter {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it, and
    // sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// The first two pages of the ring buffer of a process, mapped read-only:
/// the kernel's consumer and producer positions. Opening it makes bpf()
/// calls (which the map probe records); reading it makes none.
pub struct RingPositions {
    pages: [*mut libc::c_void; 2],
    page: usize,
}

impl RingPositions {
    pub fn open(pid: u32) -> Self {
        use std::os::fd::{AsFd, AsRawFd};
        let map =
            MapData::from_id(map_id_of(pid, "ew_events")).expect("open the ring buffer by id");
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let pages = [0, page].map(|offset| {
            // SAFETY: a fresh read-only shared mapping of one page of the
            // ring buffer's fd, unmapped on drop.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    map.fd().as_fd().as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            assert_ne!(p, libc::MAP_FAILED, "mmap of the ring buffer");
            p
        });
        Self { pages, page }
    }

    /// (consumer, producer) positions now.
    pub fn read(&self) -> (u64, u64) {
        // SAFETY: each page starts with the kernel's aligned position, and
        // stays mapped while self lives.
        let read = |p: *mut libc::c_void| unsafe { std::ptr::read_volatile(p.cast::<u64>()) };
        (read(self.pages[0]), read(self.pages[1]))
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        for p in self.pages {
            // SAFETY: mapped in open(), unmapped once.
            unsafe { libc::munmap(p, self.page) };
        }
    }
}
