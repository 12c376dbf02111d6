//! Which workload acted: a record's cgroup v2 id resolved to its cgroup
//! path, its systemd unit, container and Kubernetes pod, once per cgroup,
//! and cached.
//!
//! The probes record `bpf_get_current_cgroup_id()` (0 in kernel context);
//! nothing is resolved in the kernel. Here an id not seen before is looked
//! up in an index of the hierarchy's directories by id (see
//! [`hierarchy`]); an id not in the index (a cgroup made since) walks the
//! hierarchy again, so a new cgroup is resolved on first sight. The path is
//! parsed by [`crate::vocab::workload::parse`], and pod and container names
//! come from the node's pod log directory ([`pods`]).
//!
//! Nothing here runs per record: the aggregators key their handle tables
//! by the raw cgroup id and ask only on a table miss, and spans ask the
//! cache (one hash lookup).
//!
//! The cache is bounded ([`CACHE_ENTRIES`]). Entries of removed cgroups
//! leave it at each sweep: at every scrape (the `edgewatch_workload_cache_entries`
//! collector), after every walk, and when it is full; past that it is
//! cleared. Ids are never reused (see [`hierarchy`]), so a cgroup removed
//! and made again at the same path has a new id, looked up afresh. An id
//! no cgroup has (removed before it was looked up, or outside edgewatch's
//! cgroup namespace) is counted in
//! `edgewatch_workload_lookups_total{result="not_found"}` and reads
//! `_unresolved`.
//!
//! Minimum kernel: 5.5 (64-bit kernfs ids as inode numbers); cgroup v2
//! mounted, alone or beside v1 (hybrid).

pub mod hierarchy;
pub mod pods;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        gauge::ConstGauge,
    },
    registry::Registry,
};

use self::{
    hierarchy::{Hierarchy, Walk},
    pods::PodLogs,
};
use crate::{
    telemetry::{ResultLabel, Telemetry, events::InternalEvent},
    vocab::workload::{self, Workload},
};

/// Cached cgroups at most.
pub const CACHE_ENTRIES: usize = 8192;

/// Default pod log directory (`workload.pod_logs_dir`).
pub const DEFAULT_POD_LOGS_DIR: &str = "/var/log/pods";

/// `edgewatch_workload_lookups_total` results.
pub const LOOKUP_RESULTS: &[&str] = &["resolved", "not_found", "error"];

/// A cgroup id that did not resolve, or a walk of the hierarchy that
/// could not read all of it (`id` 0).
pub struct LookupFailed<'a> {
    pub id: u64,
    /// not_found or error.
    pub reason: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for LookupFailed<'_> {
    const NAME: &'static str = "workload_lookup_failed";

    fn count(&self, t: &Telemetry) {
        t.workload_lookups
            .get_or_create(&ResultLabel {
                result: self.reason,
            })
            .inc();
    }

    fn log(&self, suppressed: u64) {
        tracing::warn!(
            cgroup_id = self.id,
            reason = self.reason,
            error = %self.error,
            suppressed,
            "workload lookup failed (counted in edgewatch_workload_lookups_total); an id that does not resolve reads cgroup=\"_unresolved\""
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Cache entries dropped so far, by reason.
#[derive(Debug, Default, Clone, Copy)]
struct Evictions {
    /// The cgroup was gone.
    removed: u64,
    /// The cache was cleared at its bound.
    full: u64,
}

/// One cached cgroup: its workload and, when it resolved, the directory
/// a sweep checks.
#[derive(Debug)]
struct Entry {
    workload: Arc<Workload>,
    path: Option<PathBuf>,
}

/// The resolver behind [`Workloads`].
#[derive(Debug)]
struct Resolver {
    /// None when no cgroup2 file system is mounted: every lookup fails.
    hierarchy: Option<Hierarchy>,
    pods: PodLogs,
    cache: HashMap<u64, Entry>,
    /// Every cgroup's directory at the last walk, by id.
    index: HashMap<u64, PathBuf>,
    limit: usize,
    kernel: Arc<Workload>,
    unresolved: Arc<Workload>,
    telemetry: Telemetry,
    evictions: Evictions,
    walks: Counter,
}

impl Resolver {
    fn resolve(&mut self, id: u64) -> Arc<Workload> {
        if id == 0 {
            return self.kernel.clone();
        }
        if let Some(e) = self.cache.get(&id) {
            return e.workload.clone();
        }
        let Some(h) = &self.hierarchy else {
            self.telemetry.emit(LookupFailed {
                id,
                reason: "error",
                error: &"no cgroup2 file system is mounted",
            });
            let unresolved = self.unresolved.clone();
            return self.insert(id, unresolved, None);
        };
        // The index may be older than a removal: check the directory.
        let indexed = self
            .index
            .get(&id)
            .filter(|rel| h.id_of(rel) == Some(id))
            .cloned();
        let found = match indexed {
            Some(rel) => Some(rel),
            None => {
                self.walk();
                self.index.get(&id).cloned()
            }
        };
        match found {
            Some(rel) => {
                let w = Arc::new(self.workload_of(&rel));
                self.telemetry
                    .workload_lookups
                    .get_or_create(&ResultLabel { result: "resolved" })
                    .inc();
                self.insert(id, w, Some(rel))
            }
            None => {
                let mount = self
                    .hierarchy
                    .as_ref()
                    .map(|h| h.mount.display().to_string())
                    .unwrap_or_default();
                self.telemetry.emit(LookupFailed {
                    id,
                    reason: "not_found",
                    error: &format_args!(
                        "no cgroup under {mount} has this id (removed before it was looked up, or outside edgewatch's cgroup namespace)"
                    ),
                });
                let unresolved = self.unresolved.clone();
                self.insert(id, unresolved, None)
            }
        }
    }

    /// The workload at `rel`: its parsed path, with names from the pod log
    /// directory.
    fn workload_of(&mut self, rel: &Path) -> Workload {
        let path = match &self.hierarchy {
            Some(h) => h.cgroup_path(rel),
            None => return Workload::unresolved(),
        };
        let mut w = workload::parse(&path);
        if let Some(uid) = w.pod_uid.clone()
            && let Some(pod) = self.pods.pod(&uid)
        {
            w.container = w
                .container_id
                .as_deref()
                .and_then(|id| self.pods.container(&pod, id));
            w.namespace = Some(pod.namespace);
            w.pod = Some(pod.name);
        }
        w
    }

    /// Indexes the hierarchy again, and drops the cache's removed cgroups.
    fn walk(&mut self) {
        let Some(h) = &self.hierarchy else { return };
        let Walk {
            cgroups,
            truncated,
            error,
        } = h.walk();
        self.walks.inc();
        if let Some((dir, e)) = &error {
            self.telemetry.emit(LookupFailed {
                id: 0,
                reason: "error",
                error: &format_args!("reading {}: {e}", h.mount.join(dir).display()),
            });
        }
        if truncated {
            self.telemetry.emit(LookupFailed {
                id: 0,
                reason: "error",
                error: &format_args!(
                    "the hierarchy has more than {} cgroups: only that many were indexed",
                    hierarchy::MAX_CGROUPS
                ),
            });
        }
        self.index = cgroups;
        if !truncated && error.is_none() {
            let index = &self.index;
            let before = self.cache.len();
            self.cache
                .retain(|id, e| e.path.is_none() || index.contains_key(id));
            self.evictions.removed += (before - self.cache.len()) as u64;
        }
    }

    /// Drops every entry whose cgroup is gone: its directory no longer
    /// exists or has another id. Unresolved ids leave too (they are looked
    /// up again if seen again).
    fn sweep(&mut self) {
        let Some(h) = &self.hierarchy else {
            return;
        };
        let before = self.cache.len();
        self.cache.retain(|id, e| match &e.path {
            Some(rel) => h.id_of(rel) == Some(*id),
            None => false,
        });
        self.evictions.removed += (before - self.cache.len()) as u64;
    }

    fn insert(&mut self, id: u64, w: Arc<Workload>, path: Option<PathBuf>) -> Arc<Workload> {
        if self.cache.len() >= self.limit {
            self.sweep();
        }
        if self.cache.len() >= self.limit {
            self.evictions.full += self.cache.len() as u64;
            self.cache.clear();
        }
        self.cache.insert(
            id,
            Entry {
                workload: w.clone(),
                path,
            },
        );
        w
    }
}

/// The shared workload resolver; off (resolving nothing) unless a workload
/// label or span export needs it. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Workloads {
    inner: Option<Arc<Mutex<Resolver>>>,
}

impl Workloads {
    /// Resolves nothing: every lookup is None.
    pub fn off() -> Self {
        Self::default()
    }

    /// A resolver on the cgroup2 mount of `/proc/self/mountinfo` and the
    /// pod log directory `pod_logs_dir`, with its metrics registered.
    pub fn start(pod_logs_dir: &Path, registry: &mut Registry, telemetry: &Telemetry) -> Self {
        let hierarchy = match Hierarchy::find() {
            Ok(h) => {
                tracing::info!(mount = %h.mount.display(), root = %h.root, pod_logs_dir = %pod_logs_dir.display(), "workload labels: resolving cgroup ids on the cgroup2 hierarchy");
                Some(h)
            }
            Err(e) => {
                tracing::warn!(error = %e, "workload labels: no cgroup2 hierarchy, every workload reads _unresolved");
                None
            }
        };
        Self::with(hierarchy, PodLogs::new(pod_logs_dir), registry, telemetry)
    }

    /// A resolver on `hierarchy` (tests point it at their own tree).
    pub fn with(
        hierarchy: Option<Hierarchy>,
        pods: PodLogs,
        registry: &mut Registry,
        telemetry: &Telemetry,
    ) -> Self {
        for result in LOOKUP_RESULTS {
            telemetry
                .workload_lookups
                .get_or_create_owned(&ResultLabel { result });
        }
        registry.register(
            "edgewatch_workload_lookups",
            "cgroup ids looked up (each once while cached), by result: resolved, not_found (no cgroup has the id), error (the hierarchy could not be read)",
            telemetry.workload_lookups.clone(),
        );
        let walks = Counter::default();
        registry.register(
            "edgewatch_workload_hierarchy_walks",
            "Walks of the cgroup hierarchy (one per cgroup id not found in the index of the last walk)",
            walks.clone(),
        );
        let me = Self {
            inner: Some(Arc::new(Mutex::new(Resolver {
                hierarchy,
                pods,
                cache: HashMap::new(),
                index: HashMap::new(),
                limit: CACHE_ENTRIES,
                kernel: Arc::new(Workload::kernel()),
                unresolved: Arc::new(Workload::unresolved()),
                telemetry: telemetry.clone(),
                evictions: Evictions::default(),
                walks,
            }))),
        };
        registry.register_collector(Box::new(CacheCollector {
            workloads: me.clone(),
        }));
        me
    }

    fn lock(&self) -> Option<MutexGuard<'_, Resolver>> {
        self.inner
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// The workload of cgroup `id` (0: kernel context); None when off.
    pub fn resolve(&self, id: u64) -> Option<Arc<Workload>> {
        self.lock().map(|mut r| r.resolve(id))
    }

    /// The cached workload of `id`, without looking it up.
    pub fn cached(&self, id: u64) -> Option<Arc<Workload>> {
        self.lock()
            .and_then(|r| r.cache.get(&id).map(|e| e.workload.clone()))
    }

    /// Drops the cache's removed cgroups; returns how many stay.
    pub fn sweep(&self) -> usize {
        self.sweep_counted().0
    }

    /// Sweeps; returns the entries that stay and the evictions so far.
    fn sweep_counted(&self) -> (usize, Evictions) {
        self.lock().map_or((0, Evictions::default()), |mut r| {
            r.sweep();
            (r.cache.len(), r.evictions)
        })
    }

    /// Bounds the cache at `n` entries (tests).
    pub fn set_limit(&self, n: usize) {
        if let Some(mut r) = self.lock() {
            r.limit = n.max(1);
        }
    }
}

/// The cache's size and evictions, after a sweep: what a scrape shows is
/// the cache without the cgroups removed since the last one.
#[derive(Debug)]
struct CacheCollector {
    workloads: Workloads,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (entries, evictions) = self.workloads.sweep_counted();
        let metric = encoder.encode_descriptor(
            "edgewatch_workload_cache_entries",
            "cgroups in the workload cache (removed ones are dropped before each scrape)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(entries as i64).encode(metric)?;
        let mut family = encoder.encode_descriptor(
            "edgewatch_workload_cache_evictions",
            "Cached cgroups dropped, by reason: removed (the cgroup is gone), full (the cache was cleared at its bound)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [("removed", evictions.removed), ("full", evictions.full)] {
            ConstCounter::new(n).encode(family.encode_family(&ReasonLabel { reason })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt};

    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";
    const UID_: &str = "1f2e3d4c_5b6a_4798_8a7b_6c5d4e3f2a1b";

    struct Tree {
        dir: tempfile::TempDir,
        workloads: Workloads,
        telemetry: Telemetry,
        registry: Registry,
    }

    impl Tree {
        /// A hierarchy under `cg/` and pod logs under `log/pods`.
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("cg")).unwrap();
            let mut registry = Registry::default();
            let telemetry = Telemetry::default();
            let workloads = Workloads::with(
                Some(Hierarchy::at(dir.path().join("cg"), "/")),
                PodLogs::new(dir.path().join("log/pods")),
                &mut registry,
                &telemetry,
            );
            Self {
                dir,
                workloads,
                telemetry,
                registry,
            }
        }

        fn mkdir(&self, rel: &str) -> u64 {
            let p = self.dir.path().join("cg").join(rel);
            fs::create_dir_all(&p).unwrap();
            fs::metadata(p).unwrap().ino()
        }

        fn rmdir(&self, rel: &str) {
            fs::remove_dir(self.dir.path().join("cg").join(rel)).unwrap();
        }

        fn lookups(&self, result: &'static str) -> u64 {
            self.telemetry
                .workload_lookups
                .get_or_create(&ResultLabel { result })
                .get()
        }

        fn walks(&self) -> u64 {
            self.workloads.lock().unwrap().walks.get()
        }

        fn text(&self) -> String {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
            text
        }
    }

    #[test]
    fn resolves_each_cgroup_once_and_new_ones_on_first_sight() {
        let t = Tree::new();
        let svc = t.mkdir("system.slice/ewtest.service");
        let docker = t.mkdir(&format!("system.slice/docker-{ID}.scope"));
        let w = t.workloads.resolve(svc).unwrap();
        assert_eq!(&*w.cgroup, "/system.slice/ewtest.service");
        assert_eq!(w.unit.as_deref(), Some("ewtest.service"));
        // The first walk indexed every cgroup: the second id needs none.
        let d = t.workloads.resolve(docker).unwrap();
        assert_eq!(d.container_id.as_deref(), Some(ID));
        assert_eq!(d.runtime, Some("docker"));
        assert_eq!(t.walks(), 1);
        for _ in 0..100 {
            assert!(Arc::ptr_eq(&t.workloads.resolve(svc).unwrap(), &w));
        }
        assert_eq!(t.lookups("resolved"), 2);
        // Made after the walk: one more walk, on first sight.
        let late = t.mkdir("system.slice/late.service");
        let l = t.workloads.resolve(late).unwrap();
        assert_eq!(&*l.cgroup, "/system.slice/late.service");
        assert_eq!(t.walks(), 2);
        // Kernel context: no lookup at all.
        assert_eq!(&*t.workloads.resolve(0).unwrap().cgroup, workload::KERNEL);
        assert_eq!(t.lookups("resolved"), 3);
        assert_eq!(t.lookups("not_found"), 0);
        // Off: nothing.
        assert_eq!(Workloads::off().resolve(svc), None);
    }

    #[test]
    fn removed_cgroups_leave_and_a_recreated_path_has_a_new_id() {
        let t = Tree::new();
        let keep = t.mkdir("system.slice/keep.service");
        let old = t.mkdir("system.slice/ewtest.service");
        t.workloads.resolve(keep).unwrap();
        assert_eq!(
            &*t.workloads.resolve(old).unwrap().cgroup,
            "/system.slice/ewtest.service"
        );
        // kernfs never reuses an id; ext4 may give a removed directory's
        // inode number to the next one, so the new directory is made first
        // and moved in after (tests/e2e/workload.rs does it on the real
        // cgroup2 file system).
        let new = t.mkdir("system.slice/ewtest.service.new");
        t.rmdir("system.slice/ewtest.service");
        assert_eq!(t.workloads.sweep(), 1);
        assert_eq!(t.workloads.cached(old), None);
        assert!(t.workloads.cached(keep).is_some());
        fs::rename(
            t.dir.path().join("cg/system.slice/ewtest.service.new"),
            t.dir.path().join("cg/system.slice/ewtest.service"),
        )
        .unwrap();
        assert_ne!(new, old);
        let w = t.workloads.resolve(new).unwrap();
        assert_eq!(&*w.cgroup, "/system.slice/ewtest.service");
        assert!(
            t.text()
                .contains("edgewatch_workload_cache_evictions_total{reason=\"removed\"} 1\n")
        );
        // A walk drops removed cgroups too (made first: ext4 would give
        // the removed directory's inode number to the next one).
        let other = t.mkdir("other.slice");
        t.rmdir("system.slice/ewtest.service");
        t.workloads.resolve(other).unwrap();
        assert_eq!(t.workloads.cached(new), None);
        // The index of the last walk is checked before it is trusted.
        let idx = t.mkdir("x.slice");
        let idx2 = t.mkdir("y.slice");
        t.workloads.resolve(idx).unwrap();
        t.rmdir("y.slice");
        assert_eq!(
            &*t.workloads.resolve(idx2).unwrap().cgroup,
            workload::UNRESOLVED
        );
        assert_eq!(t.lookups("not_found"), 1);
        // The scrape sweeps, then reports what stays.
        assert!(
            t.text().contains("edgewatch_workload_cache_entries 3\n"),
            "{}",
            t.text()
        );
    }

    #[test]
    fn unknown_ids_are_counted_and_read_unresolved() {
        let t = Tree::new();
        t.mkdir("a.slice");
        let w = t.workloads.resolve(u64::MAX).unwrap();
        assert_eq!(&*w.cgroup, workload::UNRESOLVED);
        // Asked again while cached: no second walk, no second count.
        t.workloads.resolve(u64::MAX).unwrap();
        assert_eq!((t.lookups("not_found"), t.walks()), (1, 1));
        // No hierarchy at all: an error, every time it is asked.
        let mut registry = Registry::default();
        let telemetry = Telemetry::default();
        let none = Workloads::with(
            None,
            PodLogs::new("/nonexistent"),
            &mut registry,
            &telemetry,
        );
        assert_eq!(&*none.resolve(7).unwrap().cgroup, workload::UNRESOLVED);
        assert_eq!(
            telemetry
                .workload_lookups
                .get_or_create(&ResultLabel { result: "error" })
                .get(),
            1
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let t = Tree::new();
        t.workloads.set_limit(4);
        let ids: Vec<u64> = (0..10).map(|i| t.mkdir(&format!("s{i}.service"))).collect();
        for (i, id) in ids.iter().enumerate() {
            let w = t.workloads.resolve(*id).unwrap();
            assert_eq!(w.unit.as_deref(), Some(format!("s{i}.service").as_str()));
        }
        assert!(t.workloads.sweep() <= 4);
        assert!(
            t.text()
                .contains("edgewatch_workload_cache_evictions_total{reason=\"full\"} 8\n"),
            "{}",
            t.text()
        );
        assert_eq!(t.walks(), 1);
    }

    #[test]
    fn pods_are_named_from_the_log_directory() {
        let t = Tree::new();
        let pod = t
            .dir
            .path()
            .join(format!("log/pods/shop_cart-7d9f_{UID}/app"));
        fs::create_dir_all(&pod).unwrap();
        let id = t.mkdir(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        ));
        let w = t.workloads.resolve(id).unwrap();
        assert_eq!(w.namespace.as_deref(), Some("shop"));
        assert_eq!(w.pod.as_deref(), Some("cart-7d9f"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.container.as_deref(), Some("app"));
        assert_eq!(w.qos, Some("burstable"));
        // A pod without a log directory keeps its UID, without names.
        let other = "00000000-1111-2222-3333-444444444444";
        let id2 = t.mkdir(&format!("kubepods/besteffort/pod{other}/{ID}"));
        let w2 = t.workloads.resolve(id2).unwrap();
        assert_eq!(w2.pod_uid.as_deref(), Some(other));
        assert_eq!((w2.namespace.as_deref(), w2.pod.as_deref()), (None, None));
    }
}
