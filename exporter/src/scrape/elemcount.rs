//! Exact element counts of hash-table maps on kernels without the kfunc
//! `bpf_map_sum_elem_count` (before 6.6, e.g. Debian 12's 6.1), where the
//! map iterator (`iter/bpf_map`) cannot count them.
//!
//! Each map is walked once by a `iter/bpf_map_elem` link (5.9+) created for
//! it: the kernel visits every bucket and element and edgewatch's program
//! (`ew_map_elem_count` in exporter-ebpf/src/map.bpf.c) counts them and
//! writes only the final count, so nothing but 8 bytes crosses to user space per map. Before 6.6 a
//! preallocated hash map keeps no element counter at all, so a walk is the
//! cheapest exact method the kernel offers.
//!
//! The walk costs about one step per hash bucket plus one per element, and
//! htab allocates max_entries rounded up to a power of two buckets, so the
//! cost of a map is bounded by its max_entries whatever its fill. Each scrape
//! has a budget of such slots (`bpf.map_count_budget`): maps are counted
//! smallest first while their max_entries fit in it; the others get no
//! count that scrape and the inventory reports them as not exact
//! (`edgewatch_bpf_map_entries_exact 0`) rather than a guess.
//!
//! aya 0.14 cannot pass a map to an iterator link, so the link is created
//! with raw bpf(2) commands (BPF_MAP_GET_FD_BY_ID, BPF_LINK_CREATE with
//! `iter_info.map.map_fd`, BPF_ITER_CREATE).

use std::{
    collections::HashMap,
    io::Read,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya::{Btf, Ebpf, programs::Iter};

pub const PROGRAM: &str = "ew_map_elem_count";

/// Default `bpf.map_count_budget`: slots (sum of max_entries) walked per
/// scrape. See BENCHMARKS.md for the cost per slot.
pub const DEFAULT_BUDGET: u64 = 1 << 20;

const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;
const BPF_F_RDONLY: u32 = 1 << 3;

const HASH: u32 = 1;
const PERCPU_HASH: u32 = 5;
const LRU_HASH: u32 = 9;
const LRU_PERCPU_HASH: u32 = 10;
const LPM_TRIE: u32 = 11;

/// Map types the element iterator counts (htab's seq ops).
pub fn countable(map_type: u32) -> bool {
    matches!(map_type, HASH | PERCPU_HASH | LRU_HASH | LRU_PERCPU_HASH)
}

/// Map types whose entries the inventory reports exactly when it can: the
/// hash tables and LPM tries. Arrays are full by construction; the other
/// types have no cheap exact count.
pub fn has_entries(map_type: u32) -> bool {
    countable(map_type) || map_type == LPM_TRIE
}

#[derive(Debug, thiserror::Error)]
pub enum ElemCountError {
    #[error("program {PROGRAM} is missing from the embedded object")]
    Missing,
    #[error("{0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("reading vmlinux BTF: {0}")]
    Btf(#[from] aya::BtfError),
}

/// Loads the element counter where the kernel needs it: Ok(Some(budget))
/// for [`count`], Ok(None) where `bpf_map_sum_elem_count` counts instead.
pub fn setup(bpf: &mut Ebpf, budget: u64) -> Result<Option<u64>, ElemCountError> {
    let btf = Btf::from_sys_fs()?;
    if crate::bpfobj::kernel_func_id(Some(&btf), crate::bpfobj::SUM_ELEM_COUNT).is_some() {
        return Ok(None);
    }
    load(bpf)?;
    Ok(Some(budget))
}

/// Loads the element iterator program.
pub fn load(bpf: &mut Ebpf) -> Result<(), ElemCountError> {
    let btf = Btf::from_sys_fs()?;
    let prog: &mut Iter = bpf
        .program_mut(PROGRAM)
        .ok_or(ElemCountError::Missing)?
        .try_into()?;
    prog.load("bpf_map_elem", &btf)?;
    Ok(())
}

/// A map that needs counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    pub max_entries: u32,
}

/// The maps one scrape counts within `budget` slots: smallest max_entries
/// first (ties by id), as long as the running sum fits. Every map left out
/// is larger than every map counted.
pub fn plan(candidates: &[Candidate], budget: u64) -> Vec<Candidate> {
    let mut sorted = candidates.to_vec();
    sorted.sort_by_key(|c| (c.max_entries, c.id));
    let mut spent = 0u64;
    sorted
        .into_iter()
        .take_while(|c| {
            spent += u64::from(c.max_entries);
            spent <= budget
        })
        .collect()
}

/// Counts the planned maps with the loaded program. Maps that vanished
/// meanwhile are left out silently; other failures are left out and
/// reported in `failed`.
pub fn count(
    bpf: &Ebpf,
    candidates: &[Candidate],
    budget: u64,
    failed: &mut usize,
) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Some(prog) = bpf.program(PROGRAM).and_then(|p| p.fd().ok()) else {
        *failed += 1;
        return out;
    };
    for c in plan(candidates, budget) {
        match count_map(prog.as_fd(), c) {
            Ok(n) => {
                out.insert(c.id, n);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                *failed += 1;
                tracing::debug!(map_id = c.id, error = %e, "counting a map's elements failed");
            }
        }
    }
    out
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a valid, writable bpf_attr prefix of the size we
    // pass, holding the fields `cmd` reads.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: these commands return a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Walks one map with the element iterator; returns its element count.
pub fn count_map(prog: BorrowedFd<'_>, map: Candidate) -> std::io::Result<u64> {
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&map.id.to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_F_RDONLY.to_ne_bytes());
    let map_fd = sys_bpf(BPF_MAP_GET_FD_BY_ID, &mut attr)?;

    // union bpf_iter_link_info: map.map_fd first, zero tail.
    let info = [map_fd.as_raw_fd() as u32, 0u32];
    let mut attr = [0u8; 32];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_TRACE_ITER.to_ne_bytes());
    attr[16..24].copy_from_slice(&(info.as_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(size_of_val(&info) as u32).to_ne_bytes());
    let link = sys_bpf(BPF_LINK_CREATE, &mut attr)?;

    let mut attr = [0u8; 8];
    attr[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    let iter = sys_bpf(BPF_ITER_CREATE, &mut attr)?;
    let mut file = std::fs::File::from(iter);
    read_count(&mut file, u64::from(map.max_entries))
}

/// Reads the iterator to its end: exactly one u64. A read that visited a
/// million elements without output fails with EAGAIN (MAX_ITER_OBJECTS in
/// kernel/bpf/bpf_iter.c) and resumes where it stopped on the next read.
fn read_count(file: &mut impl Read, max_entries: u64) -> std::io::Result<u64> {
    let mut buf = Vec::with_capacity(8);
    let mut chunk = [0u8; 64];
    let mut again = 0u64;
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EAGAIN)
                    && again <= max_entries / 1_000_000 + 1 =>
            {
                again += 1;
            }
            Err(e) => return Err(e),
        }
    }
    let bytes: [u8; 8] = buf.as_slice().try_into().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the element iterator wrote {} bytes, not 8", buf.len()),
        )
    })?;
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u32, max_entries: u32) -> Candidate {
        Candidate { id, max_entries }
    }

    fn ids(v: Vec<Candidate>) -> Vec<u32> {
        v.into_iter().map(|c| c.id).collect()
    }

    #[test]
    fn plans_smallest_first_within_the_budget() {
        let cands = [c(1, 1000), c(2, 10), c(3, 100), c(4, 10)];
        assert_eq!(ids(plan(&cands, 1110)), vec![2, 4, 3]);
        assert_eq!(ids(plan(&cands, 1120)), vec![2, 4, 3, 1]);
        assert_eq!(ids(plan(&cands, 0)), Vec::<u32>::new());
        assert_eq!(ids(plan(&cands, 19)), vec![2]);
        assert_eq!(ids(plan(&[], 5)), Vec::<u32>::new());
    }

    #[test]
    fn a_map_larger_than_the_whole_budget_is_never_counted() {
        assert_eq!(
            ids(plan(&[c(9, u32::MAX)], u64::from(u32::MAX) - 1)),
            Vec::<u32>::new()
        );
        assert_eq!(ids(plan(&[c(9, u32::MAX)], u64::from(u32::MAX))), vec![9]);
    }

    #[test]
    fn types() {
        for t in [HASH, PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH] {
            assert!(countable(t) && has_entries(t));
        }
        assert!(!countable(LPM_TRIE) && has_entries(LPM_TRIE));
        assert!(!has_entries(2)); // array
    }

    struct Script(Vec<std::io::Result<Vec<u8>>>);

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let b = self.0.remove(0)?;
            buf[..b.len()].copy_from_slice(&b);
            Ok(b.len())
        }
    }

    #[test]
    fn reads_one_count_through_eagain() {
        let eagain = || Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
        let mut s = Script(vec![eagain(), Ok(42u64.to_ne_bytes().to_vec())]);
        assert_eq!(read_count(&mut s, 2_000_000).unwrap(), 42);
        let mut s = Script(vec![Ok(vec![1, 2, 3])]);
        assert!(read_count(&mut s, 10).is_err());
        let mut s = Script(vec![eagain(), eagain(), eagain()]);
        assert!(read_count(&mut s, 10).is_err());
    }
}
