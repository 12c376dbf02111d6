//! Raw bpf(2) calls for tests and benchmarks: maps and programs made the
//! way any control plane makes them, without edgewatch's loader.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::os::fd::RawFd;

pub const BPF_MAP_CREATE: i64 = 0;
pub const BPF_MAP_UPDATE_ELEM: i64 = 2;
pub const BPF_MAP_DELETE_ELEM: i64 = 3;
pub const BPF_PROG_LOAD: i64 = 5;
pub const BPF_PROG_TEST_RUN: i64 = 10;
pub const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
pub const BPF_MAP_UPDATE_BATCH: i64 = 26;

pub const HASH: u32 = 1;
pub const ARRAY: u32 = 2;
pub const PERCPU_HASH: u32 = 5;
pub const LRU_HASH: u32 = 9;
pub const LPM_TRIE: u32 = 11;
pub const BPF_F_NO_PREALLOC: u32 = 1;
pub const BPF_ANY: u64 = 0;
pub const BPF_NOEXIST: u64 = 1;

/// bpf(2) with a 128-byte attr; returns the result or -errno.
pub fn bpf(cmd: i64, attr: &mut [u8; 128]) -> i64 {
    // SAFETY: attr is a valid, writable buffer of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        r
    }
}

pub fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

pub fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

pub struct Map {
    pub fd: RawFd,
    pub name: String,
    pub value_size: usize,
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: closing the fd we own.
        unsafe { libc::close(self.fd) };
    }
}

pub fn create(map_type: u32, name: &str, key: u32, value: u32, max: u32, flags: u32) -> Map {
    let mut a = [0u8; 128];
    put32(&mut a, 0, map_type);
    put32(&mut a, 4, key);
    put32(&mut a, 8, value);
    put32(&mut a, 12, max);
    put32(&mut a, 16, flags);
    a[28..28 + name.len()].copy_from_slice(name.as_bytes());
    let fd = bpf(BPF_MAP_CREATE, &mut a);
    assert!(fd > 0, "creating {name}: {fd}");
    Map {
        fd: fd as RawFd,
        name: name.to_string(),
        value_size: value as usize,
    }
}

pub fn update(m: &Map, key: &[u8], value: &[u8], flags: u64) -> i64 {
    let mut a = [0u8; 128];
    put32(&mut a, 0, m.fd as u32);
    put64(&mut a, 8, key.as_ptr() as u64);
    put64(&mut a, 16, value.as_ptr() as u64);
    put64(&mut a, 24, flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a)
}

pub fn delete(m: &Map, key: &[u8]) -> i64 {
    let mut a = [0u8; 128];
    put32(&mut a, 0, m.fd as u32);
    put64(&mut a, 8, key.as_ptr() as u64);
    bpf(BPF_MAP_DELETE_ELEM, &mut a)
}

pub fn update_batch(m: &Map, keys: &[u8], values: &[u8], count: u32) -> (i64, u32) {
    let mut a = [0u8; 128];
    put64(&mut a, 16, keys.as_ptr() as u64);
    put64(&mut a, 24, values.as_ptr() as u64);
    put32(&mut a, 32, count);
    put32(&mut a, 36, m.fd as u32);
    let r = bpf(BPF_MAP_UPDATE_BATCH, &mut a);
    (r, u32::from_ne_bytes(a[32..36].try_into().unwrap()))
}

pub fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// `r0 = XDP_PASS; exit`, loaded as an XDP program named `name`.
pub fn load_prog(name: &str) -> RawFd {
    load_xdp(name, &[0x0000_0002_0000_00b7, 0x0000_0000_0000_0095])
}

/// `r1 = map; r0 = XDP_PASS; exit`, loaded as an XDP program named `name`:
/// a program that uses `map` (the verifier puts it in the program's
/// `map_ids` although it does nothing with it).
pub fn load_prog_using(name: &str, map: RawFd) -> RawFd {
    // ld_imm64 r1, map fd: opcode 0x18, dst r1, src BPF_PSEUDO_MAP_FD (1).
    let ld = 0x18 | (0x11 << 8) | (u64::from(map as u32) << 32);
    load_xdp(name, &[ld, 0, 0x0000_0002_0000_00b7, 0x95])
}

/// Closes an fd the test owns (a program: the kernel unloads it when
/// nothing else holds it).
pub fn close(fd: RawFd) {
    // SAFETY: closing an fd the caller owns and does not use again.
    unsafe { libc::close(fd) };
}

/// The kernel's id of the map behind `fd` (BPF_OBJ_GET_INFO_BY_FD).
pub fn map_id(fd: RawFd) -> u32 {
    let mut info = [0u8; 88]; // struct bpf_map_info; id at offset 4
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd as u32);
    put32(&mut a, 4, info.len() as u32);
    put64(&mut a, 8, info.as_mut_ptr() as u64);
    assert_eq!(
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a),
        0,
        "map info of fd {fd}"
    );
    u32::from_ne_bytes(info[4..8].try_into().unwrap())
}

/// An XDP program of these instructions, named `name`.
pub fn load_xdp(name: &str, insns: &[u64]) -> RawFd {
    let license = b"GPL\0";
    let mut a = [0u8; 128];
    put32(&mut a, 0, 6); // BPF_PROG_TYPE_XDP
    put32(&mut a, 4, insns.len() as u32);
    put64(&mut a, 8, insns.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    a[48..48 + name.len()].copy_from_slice(name.as_bytes());
    let fd = bpf(BPF_PROG_LOAD, &mut a);
    assert!(fd > 0, "loading {name}: {fd}");
    fd as RawFd
}

pub fn test_run(fd: RawFd, repeat: u32) {
    let pkt = [0u8; 64];
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd as u32);
    put32(&mut a, 8, pkt.len() as u32);
    put64(&mut a, 16, pkt.as_ptr() as u64);
    put32(&mut a, 32, repeat);
    assert_eq!(bpf(BPF_PROG_TEST_RUN, &mut a), 0);
    assert_eq!(
        u32::from_ne_bytes(a[4..8].try_into().unwrap()),
        2,
        "XDP_PASS"
    );
}
