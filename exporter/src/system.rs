//! Host prerequisites: tracefs (tracepoint ids are read from it), bpffs
//! (for pinning; optional), and the memlock limit on kernels before 5.11;
//! and giving freed heap back to the kernel.

use std::{ffi::CString, io, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}): run as root, or mount it with 'mount -t tracefs tracefs /sys/kernel/tracing'"
    )]
    Tracefs(io::Error),
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const BPFFS: &str = "/sys/fs/bpf";

fn mount(fstype: &str, target: &str) -> io::Result<()> {
    let src = CString::new(fstype).map_err(io::Error::other)?;
    let tgt = CString::new(target).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call;
    // data is NULL, which mount(2) accepts.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_fs(path: &str, magic: i64) -> bool {
    let Ok(p) = CString::new(path) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path pointer and out-pointer.
    let rc = unsafe { libc::statfs(p.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == magic
}

const TRACEFS_MAGIC: i64 = 0x7472_6163;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure tracefs is reachable where aya looks for it, mounting it if
/// needed.
pub fn ensure_tracefs() -> Result<(), SystemError> {
    if is_fs(TRACEFS, TRACEFS_MAGIC) || Path::new(DEBUGFS_TRACING).join("events").exists() {
        return Ok(());
    }
    match mount("tracefs", TRACEFS) {
        Ok(()) => {
            tracing::info!(path = TRACEFS, "mounted tracefs");
            Ok(())
        }
        Err(e) => Err(SystemError::Tracefs(e)),
    }
}

/// Mounts bpffs at /sys/fs/bpf if it is not there. edgewatch pins nothing
/// today, so a failure is only logged.
pub fn ensure_bpffs() {
    if is_fs(BPFFS, BPF_FS_MAGIC) {
        return;
    }
    match mount("bpf", BPFFS) {
        Ok(()) => tracing::info!(path = BPFFS, "mounted bpffs"),
        Err(e) => tracing::debug!(
            error = %e,
            "bpffs is not mounted at /sys/fs/bpf and mounting it failed; not needed unless pinning ('mount -t bpf bpf /sys/fs/bpf')"
        ),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the
/// memory cgroup. Raising the limit needs CAP_SYS_RESOURCE, which may be
/// missing: that is not an error.
pub fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; fine on kernels 5.11+ (memory cgroup accounting)"
        );
    }
}

/// Gives the heap that glibc keeps after freeing back to the kernel (a
/// no-op with other C libraries). Freed memory stays in malloc's arenas:
/// start-up frees about 20 MB (the kernel's BTF parsed to load the
/// programs, the object file's sections), which stayed in RSS for the
/// process's life; six bursts of 2,000 half-open connections without a cap
/// left RSS at 122 MB, 40 MB after a trim. Retention, not leaks.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only walks glibc's own heap metadata.
        unsafe { libc::malloc_trim(0) };
    }
}
