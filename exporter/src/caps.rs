//! Least privilege: after every probe, the XDP datapath and the listener
//! are set up, drop the capabilities that scrape-time work does not need,
//! as cloudflare/ebpf_exporter's `--capabilities.keep` does.
//!
//! What start-up needs (kernel 6.18, measured by starting edgewatch under
//! `setpriv --bounding-set` with each set; `kernel/bpf/syscall.c`):
//!
//! | capability | needed at start-up for |
//! |---|---|
//! | CAP_BPF | BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_BTF_LOAD |
//! | CAP_PERFMON | loading and attaching tracing programs: tracepoint (perf_event_open), tp_btf, raw_tp, fentry, kprobe, the `iter/bpf_map` iterator |
//! | CAP_NET_ADMIN | the XDP program and its link, only with `--xdp.interface` (the kernel's `bpf_net_capable()` also accepts CAP_SYS_ADMIN) |
//! | CAP_SYS_ADMIN | BPF_ENABLE_STATS; BPF_MAP/PROG_GET_NEXT_ID and GET_FD_BY_ID of other processes' objects (the map probe's inventory); mounting tracefs and bpffs when they are missing |
//!
//! What scrape-time work keeps ([`scrape_needs`]):
//!
//! | scrape-time read | capability |
//! |---|---|
//! | map/program inventory (GET_NEXT_ID, GET_FD_BY_ID, every scrape) | CAP_SYS_ADMIN, when the map probe is on |
//! | map entries through the iterator (BPF_ITER_CREATE + read on a loaded iterator) | none |
//! | ring buffer drain, lost/missed counters, XDP counters, blocklist reload (our own fds) | none |
//! | the BPF_ENABLE_STATS fd (`bpf.enable_stats`, taken at start-up and held) | none |
//! | BPF_ENABLE_STATS taken again at every window (`bpf.stats_window_ms`) | CAP_SYS_ADMIN |
//!
//! Capabilities are per thread on Linux, and tokio's threads exist before
//! the drop, so [`drop_after_attach`] applies the new sets on every thread
//! of the process (through a real-time signal whose handler calls capset,
//! as glibc does for setuid and libcap's psx for Go), then checks each
//! thread in /proc/self/task.

use std::{
    sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use caps::{CapSet, Capability};

/// The start-up set the README documents (its capability table).
pub const DOCUMENTED: u64 = (1 << 12) | (1 << 21) | (1 << 38) | (1 << 39);

/// `--capabilities.keep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// What scrape-time work needs ([`scrape_needs`]): the default.
    Auto,
    /// Drop nothing.
    All,
    /// Exactly these (a capability bitmask; 0: `none`).
    List(u64),
}

/// Parses `auto`, `all`, `none` or a comma list of names (`cap_sys_admin`,
/// `CAP_SYS_ADMIN` or `sys_admin`).
pub fn parse_keep(s: &str) -> Result<Keep, String> {
    match s.trim() {
        "auto" => return Ok(Keep::Auto),
        "all" => return Ok(Keep::All),
        "none" | "" => return Ok(Keep::List(0)),
        _ => {}
    }
    let mut set = 0u64;
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        match full.parse::<Capability>() {
            Ok(c) => set |= c.bitmask(),
            Err(_) => {
                return Err(format!(
                    "unknown capability {name:?} (e.g. cap_sys_admin; or auto, all, none)"
                ));
            }
        }
    }
    Ok(Keep::List(set))
}

/// The capabilities scrape-time reads need (see the module table), as a
/// bitmask: CAP_SYS_ADMIN for the map probe's inventory, and for program
/// statistics in window mode (BPF_ENABLE_STATS is taken again at every
/// window).
pub fn scrape_needs(map_probe: bool, stats_windows: bool) -> u64 {
    if map_probe || stats_windows {
        Capability::CAP_SYS_ADMIN.bitmask()
    } else {
        0
    }
}

/// What the drop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Permitted before and after, as bitmasks.
    pub before: u64,
    pub after: u64,
    /// Threads the new sets were applied to.
    pub threads: usize,
}

/// `cap_bpf,cap_sys_admin` for a bitmask, or `none`.
pub fn names(mask: u64) -> String {
    let mut v: Vec<(u8, String)> = caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .map(|c| (c.index(), c.to_string().to_ascii_lowercase()))
        .collect();
    if v.is_empty() {
        return "none".into();
    }
    v.sort();
    v.into_iter().map(|(_, n)| n).collect::<Vec<_>>().join(",")
}

/// Drops every capability not in `keep` (resolved against the map probe
/// being on) from the effective, permitted, inheritable and ambient sets
/// of every thread, and logs what it kept. With `Keep::All` nothing is
/// dropped, and running as full root is warned about once.
pub fn drop_after_attach(
    keep: &Keep,
    map_probe: bool,
    stats_windows: bool,
) -> Result<Outcome, String> {
    let permitted: u64 = caps::read(None, CapSet::Permitted)
        .map_err(|e| format!("reading capabilities: {e}"))?
        .into_iter()
        .fold(0, |m, c| m | c.bitmask());
    let target: u64 = match keep {
        Keep::All => {
            // SAFETY: geteuid has no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            let extra = permitted & !DOCUMENTED;
            if root && extra != 0 {
                tracing::warn!(
                    extra = extra.count_ones(),
                    "running as full root and keeping every capability (--capabilities.keep=all), including ones edgewatch never needs: start it with only cap_bpf, cap_perfmon, cap_net_admin and cap_sys_admin (README, Privileges)"
                );
            }
            return Ok(Outcome {
                before: permitted,
                after: permitted,
                threads: 0,
            });
        }
        Keep::Auto => scrape_needs(map_probe, stats_windows),
        Keep::List(l) => *l,
    };
    let after = permitted & target;
    let missing = target & !permitted;
    let threads = apply_to_all_threads(after)?;
    tracing::info!(
        kept = %names(after),
        dropped = %names(permitted & !after),
        threads,
        "dropped capabilities not needed after attaching"
    );
    if missing != 0 {
        tracing::warn!(
            missing = %names(missing),
            "--capabilities.keep names capabilities edgewatch was not started with"
        );
    }
    Ok(Outcome {
        before: permitted,
        after,
        threads,
    })
}

// The sets the signal handler installs, and how many threads did.
static WANT_LO: AtomicU32 = AtomicU32::new(0);
static WANT_HI: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicI64 = AtomicI64::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// capset(2) and PR_CAP_AMBIENT_CLEAR_ALL on the calling thread: raw
/// syscalls only, so it is async-signal-safe. Returns 0 or -errno.
fn set_this_thread(lo: u32, hi: u32) -> i64 {
    // SAFETY: prctl with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return -i64::from(errno());
    }
    let hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads the header and two data structs we own.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) };
    if r != 0 {
        return -i64::from(errno());
    }
    0
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

extern "C" fn on_signal(_: libc::c_int) {
    let saved = errno();
    let r = set_this_thread(
        WANT_LO.load(Ordering::SeqCst),
        WANT_HI.load(Ordering::SeqCst),
    );
    if r != 0 {
        FAILED.store(r, Ordering::SeqCst);
    }
    DONE.fetch_add(1, Ordering::SeqCst);
    // SAFETY: restoring errno for the interrupted code.
    unsafe { *libc::__errno_location() = saved };
}

fn thread_ids() -> Result<Vec<i32>, String> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))? {
        let e = e.map_err(|e| format!("/proc/self/task: {e}"))?;
        if let Some(id) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The effective and permitted sets of one thread, from /proc.
fn thread_sets(tid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((get("CapEff:")?, get("CapPrm:")?))
}

/// Sets effective = permitted = `want`, inheritable and ambient empty, on
/// every thread; returns how many threads there were.
fn apply_to_all_threads(want: u64) -> Result<usize, String> {
    WANT_LO.store(want as u32, Ordering::SeqCst);
    WANT_HI.store((want >> 32) as u32, Ordering::SeqCst);
    FAILED.store(0, Ordering::SeqCst);
    let sig = libc::SIGRTMIN() + 6;
    // SAFETY: installing a handler that only makes raw syscalls and
    // touches atomics; the previous action is restored below.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
    new.sa_flags = libc::SA_RESTART;
    // SAFETY: valid sigaction structs.
    if unsafe { libc::sigaction(sig, &new, &mut old) } != 0 {
        return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
    }
    let result = (|| {
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        let r = set_this_thread(want as u32, (want >> 32) as u32);
        if r != 0 {
            return Err(format!(
                "capset: {}",
                std::io::Error::from_raw_os_error(-r as i32)
            ));
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // Threads started meanwhile inherit the new sets from their
            // creator once it has them; check every thread until all do.
            let pending: Vec<i32> = thread_ids()?
                .into_iter()
                .filter(|t| *t != me && thread_sets(*t).is_some_and(|s| s != (want, want)))
                .collect();
            if pending.is_empty() {
                return Ok(thread_ids()?.len());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "threads {pending:?} still hold capabilities after 5 s"
                ));
            }
            let before = DONE.load(Ordering::SeqCst);
            for t in &pending {
                // SAFETY: tgkill to a thread of our own process.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, *t, sig) };
            }
            let wait = Instant::now() + Duration::from_millis(500);
            while DONE.load(Ordering::SeqCst) < before + pending.len() && Instant::now() < wait {
                std::thread::sleep(Duration::from_millis(1));
            }
            let failed = FAILED.load(Ordering::SeqCst);
            if failed != 0 {
                return Err(format!(
                    "capset on a thread: {}",
                    std::io::Error::from_raw_os_error(-failed as i32)
                ));
            }
        }
    })();
    // SAFETY: restoring the previous action.
    unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_values() {
        assert_eq!(parse_keep("auto"), Ok(Keep::Auto));
        assert_eq!(parse_keep("all"), Ok(Keep::All));
        assert_eq!(parse_keep("none"), Ok(Keep::List(0)));
        let k = parse_keep("cap_sys_admin, NET_ADMIN,CAP_BPF").unwrap();
        assert_eq!(k, Keep::List((1 << 21) | (1 << 12) | (1 << 39)));
        assert_eq!(
            names((1 << 21) | (1 << 12) | (1 << 39)),
            "cap_net_admin,cap_sys_admin,cap_bpf"
        );
        assert_eq!(names(0), "none");
        assert!(
            parse_keep("cap_telepathy")
                .unwrap_err()
                .contains("cap_telepathy")
        );
    }

    #[test]
    fn documented_set() {
        assert_eq!(
            names(DOCUMENTED),
            "cap_net_admin,cap_sys_admin,cap_perfmon,cap_bpf"
        );
    }

    #[test]
    fn scrape_needs_follow_the_map_probe() {
        assert_eq!(scrape_needs(true, false), 1 << 21);
        assert_eq!(scrape_needs(false, false), 0);
        assert_eq!(scrape_needs(false, true), 1 << 21);
    }
}
