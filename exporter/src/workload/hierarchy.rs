//! The cgroup v2 hierarchy as a directory tree: where it is mounted, and
//! which directory has which cgroup id.
//!
//! The id `bpf_get_current_cgroup_id()` returns is `cgroup_id(cgrp)`, the
//! id of the cgroup's kernfs node (include/linux/cgroup.h), and on 64-bit
//! kernels a kernfs node's inode number is that same id (`kernfs_ino()`,
//! include/linux/kernfs.h, since 5.5). `fs/kernfs/dir.c kernfs_new_node()`
//! makes ids from a cyclic IDR plus a generation in the high 32 bits, so
//! an id is never reused while the system runs: a removed and re-created
//! directory has a new one. The root cgroup's id is 1.
//!
//! kernfs fills `d_ino` and `d_type` in its readdir (`kernfs_fop_readdir()`
//! emits `kernfs_ino()`), so the walk reads directories only, without a
//! `stat` per entry.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
};

use crate::vocab::bounded;

/// The root cgroup's id (its kernfs node is the first of the hierarchy).
pub const ROOT_ID: u64 = 1;

/// The largest hierarchy walked: past it the walk stops and says so. A busy
/// Kubernetes node has a few thousand cgroups.
pub const MAX_CGROUPS: usize = 65_536;

/// Where the cgroup2 file system is mounted, and which cgroup is at the
/// mount point (`/` unless a sub-tree is mounted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// The mounted cgroup's path in the hierarchy (mountinfo's root field).
    pub root: String,
}

/// Why no hierarchy was found.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("reading /proc/self/mountinfo: {0}")]
    Read(#[from] bounded::ReadError),
    #[error("no cgroup2 file system is mounted (mount -t cgroup2 none /sys/fs/cgroup)")]
    NotMounted,
}

/// The result of one walk.
#[derive(Debug, Default)]
pub struct Walk {
    /// Every cgroup's id and its path relative to the mount point (the
    /// mount point itself is the empty path).
    pub cgroups: HashMap<u64, PathBuf>,
    /// The walk stopped at [`MAX_CGROUPS`].
    pub truncated: bool,
    /// The first directory that could not be read, if any (not counting
    /// directories removed during the walk).
    pub error: Option<(PathBuf, io::Error)>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = octal
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Hierarchy {
    /// A hierarchy at `mount` whose mount point holds the cgroup `root`.
    pub fn at(mount: impl Into<PathBuf>, root: &str) -> Self {
        Self {
            mount: mount.into(),
            root: root.to_string(),
        }
    }

    /// The cgroup2 mount in `/proc/self/mountinfo`. A mount that shows the
    /// hierarchy's real root (its directory has the root cgroup's id, 1)
    /// comes first: in a container with its own cgroup namespace,
    /// `/sys/fs/cgroup` shows only the container's sub-tree, while a bind
    /// mount of the host's `/sys/fs/cgroup` (e.g. at `/host/sys/fs/cgroup`)
    /// shows every cgroup, under a mountinfo root of `/..` components.
    pub fn find() -> Result<Self, MountError> {
        let text = bounded::read_to_string(Path::new("/proc/self/mountinfo"), 16 << 20)?;
        let mounts = Self::mounts(&text);
        if let Some(m) = mounts
            .iter()
            .find(|m| fs::metadata(&m.mount).is_ok_and(|md| md.ino() == ROOT_ID))
        {
            return Ok(Self::at(m.mount.clone(), "/"));
        }
        mounts.into_iter().next().ok_or(MountError::NotMounted)
    }

    /// The cgroup2 mount among mountinfo lines (proc(5)), without looking
    /// at the file system: see [`Hierarchy::mounts`].
    pub fn from_mountinfo(text: &str) -> Option<Self> {
        Self::mounts(text).into_iter().next()
    }

    /// Every cgroup2 mount among mountinfo lines: `/sys/fs/cgroup` first,
    /// then `/sys/fs/cgroup/unified` (hybrid hosts), then the others in
    /// their order.
    pub fn mounts(text: &str) -> Vec<Self> {
        let mut found: Vec<Self> = Vec::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            if right.split(' ').next() != Some("cgroup2") {
                continue;
            }
            let fields: Vec<&str> = left.split(' ').collect();
            let (Some(root), Some(mount)) = (fields.get(3), fields.get(4)) else {
                continue;
            };
            found.push(Self::at(unescape(mount), &unescape(root)));
        }
        let rank = |h: &Self| match h.mount.to_str() {
            Some("/sys/fs/cgroup") => 0,
            Some("/sys/fs/cgroup/unified") => 1,
            _ => 2,
        };
        found.sort_by_key(rank);
        found
    }

    /// The cgroup path (as in /proc/PID/cgroup) of a directory `rel` below
    /// the mount point.
    pub fn cgroup_path(&self, rel: &Path) -> String {
        let rel = rel.to_string_lossy();
        let root = self.root.trim_end_matches('/');
        if rel.is_empty() {
            if root.is_empty() {
                "/".to_string()
            } else {
                root.to_string()
            }
        } else {
            format!("{root}/{rel}")
        }
    }

    /// The id of the cgroup at `rel`, if it exists.
    pub fn id_of(&self, rel: &Path) -> Option<u64> {
        fs::metadata(self.mount.join(rel)).ok().map(|m| m.ino())
    }

    /// Every cgroup below the mount point, by id.
    pub fn walk(&self) -> Walk {
        let mut walk = Walk::default();
        match self.id_of(Path::new("")) {
            Some(id) => {
                walk.cgroups.insert(id, PathBuf::new());
            }
            None => {
                walk.error = Some((
                    self.mount.clone(),
                    fs::metadata(&self.mount)
                        .err()
                        .unwrap_or_else(|| io::Error::other("not readable")),
                ));
                return walk;
            }
        }
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let entries = match fs::read_dir(self.mount.join(&rel)) {
                Ok(e) => e,
                // Removed since its parent was read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    walk.error.get_or_insert((rel, e));
                    continue;
                }
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if walk.cgroups.len() >= MAX_CGROUPS {
                    walk.truncated = true;
                    return walk;
                }
                let child = rel.join(entry.file_name());
                walk.cgroups.insert(entry.ino(), child.clone());
                stack.push(child);
            }
        }
        walk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            Hierarchy::from_mountinfo(hybrid),
            Some(Hierarchy::at("/sys/fs/cgroup/unified", "/"))
        );
        let unified = "\
99 1 0:50 /x /host\\040cg rw shared:1 - cgroup2 cgroup2 rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(
            Hierarchy::from_mountinfo(unified),
            Some(Hierarchy::at("/sys/fs/cgroup", "/"))
        );
        let other = "99 1 0:50 /kubepods.slice /host\\040cg rw shared:1 - cgroup2 none rw\n";
        let h = Hierarchy::from_mountinfo(other).unwrap();
        assert_eq!(h, Hierarchy::at("/host cg", "/kubepods.slice"));
        assert_eq!(h.cgroup_path(Path::new("a/b")), "/kubepods.slice/a/b");
        assert_eq!(h.cgroup_path(Path::new("")), "/kubepods.slice");
        assert_eq!(Hierarchy::at("/m", "/").cgroup_path(Path::new("")), "/");
        assert_eq!(Hierarchy::at("/m", "/").cgroup_path(Path::new("a")), "/a");
        for bad in [
            "",
            "garbage",
            " - cgroup2",
            "1 2 - cgroup2 x",
            "\\",
            "a - \\0",
        ] {
            assert_eq!(Hierarchy::from_mountinfo(bad), None, "{bad:?}");
        }
        assert_eq!(unescape("a\\040b\\134\\9\\"), "a b\\\\9\\");
    }

    #[test]
    fn walks_directories_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let h = Hierarchy::at(dir.path(), "/");
        fs::create_dir_all(dir.path().join("system.slice/a.service")).unwrap();
        fs::create_dir_all(dir.path().join("user.slice")).unwrap();
        fs::write(dir.path().join("system.slice/cgroup.procs"), "").unwrap();
        let walk = h.walk();
        assert!(!walk.truncated && walk.error.is_none());
        let mut paths: Vec<String> = walk.cgroups.values().map(|p| h.cgroup_path(p)).collect();
        paths.sort();
        assert_eq!(
            paths,
            vec![
                "/",
                "/system.slice",
                "/system.slice/a.service",
                "/user.slice"
            ]
        );
        for (id, rel) in &walk.cgroups {
            assert_eq!(h.id_of(rel), Some(*id));
        }
        let gone = Hierarchy::at(dir.path().join("nope"), "/").walk();
        assert!(gone.cgroups.is_empty() && gone.error.is_some());
    }
}
