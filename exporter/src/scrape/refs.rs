//! Which loaded programs use which maps, read from the kernel for the map
//! probe's hot-update doctor (vocab::refs holds and re-reads it).
//!
//! Every program's `map_ids` (bpf_prog_info, BPF_OBJ_GET_INFO_BY_FD with a
//! map-id buffer, kernel 4.15+) and every map's name and type, enumerated
//! with GET_NEXT_ID / GET_FD_BY_ID like the inventory: three bpf() calls
//! per program and per map. aya 0.14's `ProgramInfo::map_ids` re-opens the
//! program by id for a second info call; reading the ids with the first
//! fd's info call spares that and cannot see a different program.
//!
//! Maps reached through a map-in-map (array_of_maps, hash_of_maps) are in
//! no program's `map_ids`: the inner maps of every used map-in-map are
//! looked up (a user-space lookup of a map-in-map returns the inner map's
//! id) and count as used by the programs that use the outer one. At most
//! [`MAX_INNER_LOOKUPS`] elements are read per snapshot; past that the
//! walk stops, is reported as a scrape error, and the inner maps not
//! reached count as unused.
//!
//! Needs CAP_SYS_ADMIN (GET_NEXT_ID, GET_FD_BY_ID), like the inventory.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
};

use crate::vocab::refs::{MapUse, RefSnapshot, RefSource};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// open_flags of BPF_MAP_GET_FD_BY_ID: read access is all we need.
const BPF_F_RDONLY: u32 = 1 << 3;

const ARRAY_OF_MAPS: u32 = 12;
const HASH_OF_MAPS: u32 = 13;

/// Elements of map-in-maps read per snapshot, at most.
pub const MAX_INNER_LOOKUPS: usize = 16384;

/// The map ids a program's info call fills in one go; a program using
/// more is asked again with a buffer of its size.
const MAP_IDS_FIRST: usize = 64;

/// bpf(2) on a 32-byte attr prefix (every command used here fits).
fn sys_bpf(cmd: libc::c_long, attr: &mut [u8; 32]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable bpf_attr prefix of the size we pass;
    // every pointer inside it was put there by the caller and points to a
    // live buffer of the size the command expects.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put32(a: &mut [u8; 32], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; 32], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// The next program or map id after `start`; None past the last.
fn next_id(cmd: libc::c_long, start: u32) -> io::Result<Option<u32>> {
    let mut a = [0u8; 32];
    put32(&mut a, 0, start);
    match sys_bpf(cmd, &mut a) {
        Ok(_) => Ok(Some(u32::from_ne_bytes([a[4], a[5], a[6], a[7]]))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn fd_by_id(cmd: libc::c_long, id: u32, open_flags: u32) -> io::Result<OwnedFd> {
    let mut a = [0u8; 32];
    put32(&mut a, 0, id);
    put32(&mut a, 8, open_flags);
    let fd = sys_bpf(cmd, &mut a)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_GET_INFO_BY_FD into `info`.
fn obj_info<T>(fd: &OwnedFd, info: &mut T) -> io::Result<()> {
    let mut a = [0u8; 32];
    put32(&mut a, 0, fd.as_raw_fd() as u32);
    put32(&mut a, 4, size_of::<T>() as u32);
    put64(&mut a, 8, std::ptr::from_mut(info) as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map(|_| ())
}

/// The ids of the maps a program uses (its `used_maps`, which includes
/// maps bound with BPF_PROG_BIND_MAP).
fn prog_map_ids(fd: &OwnedFd) -> io::Result<Vec<u32>> {
    let mut want = MAP_IDS_FIRST;
    loop {
        let mut ids = vec![0u32; want];
        // SAFETY: bpf_prog_info is a plain C struct; all-zero is valid.
        let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
        info.nr_map_ids = want as u32;
        info.map_ids = ids.as_mut_ptr() as u64;
        obj_info(fd, &mut info)?;
        // The kernel writes at most `want` ids and reports how many there are.
        let n = info.nr_map_ids as usize;
        if n <= want {
            ids.truncate(n);
            return Ok(ids);
        }
        want = n;
    }
}

/// The inner map ids held by a map-in-map, reading at most `budget`
/// elements; the bool says whether it read them all.
fn inner_map_ids(fd: &OwnedFd, key_size: u32, budget: &mut usize) -> (Vec<u32>, bool) {
    let mut out = Vec::new();
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut first = true;
    loop {
        let mut a = [0u8; 32];
        put32(&mut a, 0, fd.as_raw_fd() as u32);
        if !first {
            put64(&mut a, 8, key.as_ptr() as u64);
        }
        put64(&mut a, 16, next.as_mut_ptr() as u64);
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
            Ok(_) => {}
            // ENOENT: past the last key. Anything else: the map went away.
            Err(_) => return (out, true),
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        if *budget == 0 {
            return (out, false);
        }
        *budget -= 1;
        let mut value = 0u32;
        let mut a = [0u8; 32];
        put32(&mut a, 0, fd.as_raw_fd() as u32);
        put64(&mut a, 8, key.as_ptr() as u64);
        put64(&mut a, 16, std::ptr::from_mut(&mut value) as u64);
        // An empty array-of-maps slot is ENOENT: nothing there.
        if sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a).is_ok() {
            out.push(value);
        }
    }
}

/// The running kernel.
#[derive(Debug, Default)]
pub struct KernelRefs;

struct MapRow {
    use_: MapUse,
    key_size: u32,
}

impl RefSource for KernelRefs {
    fn read(&self, errors: &mut Vec<String>) -> Result<RefSnapshot, String> {
        let mut maps: HashMap<u32, MapRow> = HashMap::new();
        let mut id = 0;
        while let Some(next) =
            next_id(BPF_MAP_GET_NEXT_ID, id).map_err(|e| format!("BPF_MAP_GET_NEXT_ID: {e}"))?
        {
            id = next;
            // A map can go away between GET_NEXT_ID and GET_FD_BY_ID.
            let Ok(fd) = fd_by_id(BPF_MAP_GET_FD_BY_ID, id, BPF_F_RDONLY) else {
                continue;
            };
            // SAFETY: bpf_map_info is a plain C struct; all-zero is valid.
            let mut info: aya_obj::generated::bpf_map_info = unsafe { std::mem::zeroed() };
            if obj_info(&fd, &mut info).is_err() {
                continue;
            }
            let name: Vec<u8> = info
                .name
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            maps.insert(
                id,
                MapRow {
                    use_: MapUse {
                        name: Arc::from(String::from_utf8_lossy(&name).as_ref()),
                        map_type: info.type_,
                        programs: 0,
                    },
                    key_size: info.key_size,
                },
            );
        }

        // Map id -> the programs that use it directly.
        let mut users: HashMap<u32, HashSet<u32>> = HashMap::new();
        let mut id = 0;
        while let Some(next) =
            next_id(BPF_PROG_GET_NEXT_ID, id).map_err(|e| format!("BPF_PROG_GET_NEXT_ID: {e}"))?
        {
            id = next;
            let Ok(fd) = fd_by_id(BPF_PROG_GET_FD_BY_ID, id, 0) else {
                continue; // unloaded meanwhile
            };
            let Ok(ids) = prog_map_ids(&fd) else {
                continue;
            };
            for m in ids {
                users.entry(m).or_default().insert(id);
            }
        }

        // Inner maps of used map-in-maps: used by the outer map's programs.
        let mut budget = MAX_INNER_LOOKUPS;
        let outers: Vec<(u32, u32)> = maps
            .iter()
            .filter(|(id, m)| {
                matches!(m.use_.map_type, ARRAY_OF_MAPS | HASH_OF_MAPS) && users.contains_key(id)
            })
            .map(|(&id, m)| (id, m.key_size))
            .collect();
        let mut truncated = false;
        for (outer, key_size) in outers {
            let Ok(fd) = fd_by_id(BPF_MAP_GET_FD_BY_ID, outer, BPF_F_RDONLY) else {
                continue;
            };
            let (inner, complete) = inner_map_ids(&fd, key_size, &mut budget);
            truncated |= !complete;
            let progs = users.get(&outer).cloned().unwrap_or_default();
            for m in inner {
                users.entry(m).or_default().extend(progs.iter().copied());
            }
        }
        if truncated {
            errors.push(format!(
                "map-in-map walk stopped after {MAX_INNER_LOOKUPS} elements: inner maps not reached count as used by no program"
            ));
        }

        Ok(RefSnapshot {
            maps: maps
                .into_iter()
                .map(|(id, mut m)| {
                    m.use_.programs = users.get(&id).map_or(0, |p| p.len() as u32);
                    (id, m.use_)
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn bpf(cmd: libc::c_long, a: &mut [u8; 128]) -> libc::c_long {
        // SAFETY: a valid, writable bpf_attr of the size we pass.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, a.as_mut_ptr(), a.len()) }
    }

    fn put(a: &mut [u8; 128], off: usize, v: &[u8]) {
        a[off..off + v.len()].copy_from_slice(v);
    }

    /// BPF_MAP_CREATE; `inner` is the template of a map-in-map.
    fn create(map_type: u32, name: &str, inner: Option<&OwnedFd>) -> OwnedFd {
        let mut a = [0u8; 128];
        put(&mut a, 0, &map_type.to_ne_bytes());
        put(&mut a, 4, &4u32.to_ne_bytes());
        put(&mut a, 8, &4u32.to_ne_bytes());
        put(&mut a, 12, &4u32.to_ne_bytes());
        if let Some(i) = inner {
            put(&mut a, 20, &(i.as_raw_fd() as u32).to_ne_bytes());
        }
        put(&mut a, 28, name.as_bytes());
        let fd = bpf(0, &mut a);
        assert!(fd > 0, "creating {name}: {}", io::Error::last_os_error());
        // SAFETY: a new fd nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn id(fd: &OwnedFd) -> u32 {
        // SAFETY: bpf_map_info is a plain C struct; all-zero is valid.
        let mut info: aya_obj::generated::bpf_map_info = unsafe { std::mem::zeroed() };
        obj_info(fd, &mut info).unwrap();
        info.id
    }

    /// `r1 = map; r0 = XDP_PASS; exit`: an XDP program using `map`.
    fn prog_using(map: &OwnedFd) -> OwnedFd {
        let insns: [u64; 4] = [
            0x18 | (0x11 << 8) | (u64::from(map.as_raw_fd() as u32) << 32),
            0,
            0x0000_0002_0000_00b7,
            0x95,
        ];
        let license = b"GPL\0";
        let mut a = [0u8; 128];
        put(&mut a, 0, &6u32.to_ne_bytes());
        put(&mut a, 4, &4u32.to_ne_bytes());
        put(&mut a, 8, &(insns.as_ptr() as u64).to_ne_bytes());
        put(&mut a, 16, &(license.as_ptr() as u64).to_ne_bytes());
        let fd = bpf(5, &mut a);
        assert!(fd > 0, "loading: {}", io::Error::last_os_error());
        // SAFETY: a new fd nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    /// The kernel's own view: a program's map, the inner map of a
    /// map-in-map it uses, and maps nothing uses. Needs root.
    #[test]
    fn reads_programs_maps_and_inner_maps_from_the_kernel() {
        if std::env::var_os("EDGEWATCH_SKIP_PRIVILEGED_TESTS").is_some_and(|v| v == "1") {
            return;
        }
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "run as root (or set EDGEWATCH_SKIP_PRIVILEGED_TESTS=1)"
        );
        let inner = create(1, "ewrinner", None);
        let unused_inner = create(1, "ewrinner2", None);
        let outer = create(ARRAY_OF_MAPS, "ewrouter", Some(&inner));
        let lonely = create(1, "ewrlonely", None);
        // outer[1] = inner
        let key = 1u32;
        let value = inner.as_raw_fd() as u32;
        let mut a = [0u8; 128];
        put(&mut a, 0, &(outer.as_raw_fd() as u32).to_ne_bytes());
        put(&mut a, 8, &(std::ptr::from_ref(&key) as u64).to_ne_bytes());
        put(
            &mut a,
            16,
            &(std::ptr::from_ref(&value) as u64).to_ne_bytes(),
        );
        assert_eq!(bpf(2, &mut a), 0, "{}", io::Error::last_os_error());
        let p1 = prog_using(&outer);
        let p2 = prog_using(&outer);

        let mut errors = Vec::new();
        let s = KernelRefs.read(&mut errors).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.programs(id(&outer)), 2);
        assert_eq!(s.programs(id(&inner)), 2, "through the map-in-map");
        assert_eq!(s.programs(id(&unused_inner)), 0);
        assert_eq!(s.programs(id(&lonely)), 0);
        let m = &s.maps[&id(&lonely)];
        assert_eq!((m.name.as_ref(), m.map_type), ("ewrlonely", 1));

        drop(p2);
        let s = KernelRefs.read(&mut errors).unwrap();
        assert_eq!(s.programs(id(&outer)), 1);
        drop(p1);
        let s = KernelRefs.read(&mut errors).unwrap();
        assert_eq!(s.programs(id(&inner)), 0);
    }
}
