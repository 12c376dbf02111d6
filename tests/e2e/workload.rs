//! End to end, as root: workload labels from real cgroups. The test makes
//! cgroup v2 directories with the layouts of a Kubernetes node (systemd
//! and cgroupfs drivers), Docker and systemd under the real cgroup2 mount,
//! inside one directory of its own (`ewtest-<pid>`, removed afterwards),
//! and a `/var/log/pods`-style tree in a temporary directory. It moves one
//! worker process into each cgroup, and each makes an exact number of
//! refused connects (in a network namespace of the test's) and map
//! updates. Every workload's labels and counts must be exact, with no
//! series of the test's cgroups beyond those.
//!
//! Spans carry the same workload, with OpenTelemetry's k8s and container
//! attribute names. Another test drives the resolver on the same mount: a removed cgroup
//! leaves the cache, and one made again at the same path has a new id
//! (kernfs never reuses one) that resolves to the same workload.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::{fd::RawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    time::Duration,
};

use edgewatch::{
    telemetry::Telemetry,
    workload::{Workloads, hierarchy::Hierarchy, pods::PodLogs},
};

use opentelemetry_proto::tonic::{
    common::v1::{KeyValue, any_value},
    trace::v1::Span,
};

use crate::{
    common::{
        Edgewatch, Metrics, Netns,
        bpf::{HASH, create, put32, put64},
        poll, privileged, serial,
    },
    otlp::receiver::{Certs, Received, Receiver},
};

/// The test's own sub-tree of the cgroup2 hierarchy; every directory in
/// it is removed on drop (deepest first), after its workers are gone.
struct CgroupTree {
    mount: PathBuf,
    /// `ewtest-<pid>`, relative to the mount.
    top: PathBuf,
}

impl CgroupTree {
    fn new(tag: &str) -> Self {
        let h = Hierarchy::find().expect("a cgroup2 mount");
        assert_eq!(
            fs::metadata(&h.mount).unwrap().ino(),
            1,
            "{} is the hierarchy's root",
            h.mount.display()
        );
        let top = PathBuf::from(format!("ewtest-{tag}-{}", std::process::id()));
        let t = Self {
            mount: h.mount,
            top,
        };
        t.remove();
        fs::create_dir(t.mount.join(&t.top)).unwrap();
        t
    }

    /// Makes `rel` (below the test's directory); returns its cgroup path
    /// and id.
    fn mkdir(&self, rel: &str) -> (String, u64) {
        let dir = self.mount.join(&self.top).join(rel);
        fs::create_dir_all(&dir).unwrap();
        let path = format!("/{}/{rel}", self.top.display());
        (path, fs::metadata(&dir).unwrap().ino())
    }

    fn dir(&self, rel: &str) -> PathBuf {
        self.mount.join(&self.top).join(rel)
    }

    fn rmdir(&self, rel: &str) {
        fs::remove_dir(self.dir(rel)).unwrap();
    }

    fn remove(&self) {
        fn dirs(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = fs::read_dir(p) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs(&e.path(), out);
                    }
                }
            }
            out.push(p.to_path_buf());
        }
        let mut all = Vec::new();
        dirs(&self.mount.join(&self.top), &mut all);
        for d in all {
            let _ = fs::remove_dir(d);
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A forked child parked on a pipe until it is told to work: then it makes
/// `connects` connects to 127.0.0.1:1 (refused) and `updates` updates of
/// map `map_fd`, and exits 0 if every call went as expected.
struct Worker {
    pid: libc::pid_t,
    go: RawFd,
}

impl Worker {
    /// Forks on a thread inside `ns`. The child only makes system calls
    /// (no allocation: the parent is multi-threaded).
    fn spawn(ns: &Netns, connects: u32, updates: u32, map_fd: RawFd) -> Self {
        ns.enter(move || {
            let mut pipe = [0 as RawFd; 2];
            // SAFETY: a valid two-int array.
            assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 1u16.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            };
            let key = [0u8; 4];
            let value = [1u8; 4];
            let mut attr = [0u8; 128];
            put32(&mut attr, 0, map_fd as u32);
            put64(&mut attr, 8, key.as_ptr() as u64);
            put64(&mut attr, 16, value.as_ptr() as u64);
            // SAFETY: fork; the child below makes only system calls on
            // memory prepared before the fork, then _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                // SAFETY: async-signal-safe calls only.
                unsafe {
                    libc::close(pipe[1]);
                    let mut b = 0u8;
                    if libc::read(pipe[0], (&raw mut b).cast(), 1) != 1 {
                        libc::_exit(2);
                    }
                    let mut bad = 0;
                    for _ in 0..connects {
                        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                        let rc = libc::connect(
                            s,
                            (&raw const addr).cast(),
                            size_of::<libc::sockaddr_in>() as u32,
                        );
                        if rc != -1 || *libc::__errno_location() != libc::ECONNREFUSED {
                            bad += 1;
                        }
                        libc::close(s);
                    }
                    for _ in 0..updates {
                        if libc::syscall(libc::SYS_bpf, 2, attr.as_mut_ptr(), attr.len()) != 0 {
                            bad += 1;
                        }
                    }
                    libc::_exit(if bad == 0 { 0 } else { 3 });
                }
            }
            // SAFETY: closing the read end we do not use.
            unsafe { libc::close(pipe[0]) };
            Self { pid, go: pipe[1] }
        })
    }

    /// Moves the worker into the cgroup directory `dir`, lets it work, and
    /// waits for it.
    fn run_in(self, dir: &Path) {
        fs::write(dir.join("cgroup.procs"), self.pid.to_string()).unwrap();
        let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", self.pid)).unwrap();
        let dir_text = dir.to_string_lossy();
        assert!(
            cgroup
                .lines()
                .any(|l| l.strip_prefix("0::").is_some_and(|p| dir_text.ends_with(p))),
            "worker {} is not in {dir_text}: {cgroup}",
            self.pid
        );
        let mut status = 0;
        // SAFETY: one byte to our pipe; then waitpid on our own child.
        unsafe {
            assert_eq!(libc::write(self.go, [1u8].as_ptr().cast(), 1), 1);
            libc::close(self.go);
            assert_eq!(libc::waitpid(self.pid, &mut status, 0), self.pid);
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "worker {} failed: status {status:#x}",
            self.pid
        );
    }
}

/// One workload of the test: its cgroup (relative to the test's directory,
/// and its path), what its worker does, and its labels besides `cgroup`.
struct Expected {
    rel: String,
    path: String,
    connects: u32,
    updates: u32,
    labels: Vec<(&'static str, String)>,
}

/// Every series of `metric` whose cgroup is below `top`: labels -> value.
fn series(m: &Metrics, metric: &str, top: &str) -> BTreeMap<Vec<(String, String)>, u64> {
    m.samples
        .iter()
        .filter(|(n, l, _)| n == metric && l.get("cgroup").is_some_and(|c| c.starts_with(top)))
        .map(|(_, l, v)| {
            let mut labels: Vec<(String, String)> =
                l.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            labels.sort();
            (labels, *v as u64)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn workload_labels_and_exact_counts_per_cgroup() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let pid = std::process::id();
    let tree = CgroupTree::new("wl");
    let top = format!("/{}/", tree.top.display());
    let logs = tempfile::tempdir().unwrap();
    let ns = Netns::new("wl");

    // Ids and UIDs of this run.
    let hex = |n: u32| format!("{:08x}", pid ^ n).repeat(8);
    let (id_a, id_b, id_c) = (hex(0xa), hex(0xb), hex(0xc));
    let uid_a = format!("{pid:08x}-0000-4000-8000-00000000000a");
    let uid_b = format!("{pid:08x}-0000-4000-8000-00000000000b");

    // The node's log directories: pod A has one container, pod B two, and
    // the kubelet's link names B's container by id.
    let pods = logs.path().join("pods");
    let dir_a = pods.join(format!("ewns_ewpod-a_{uid_a}"));
    let dir_b = pods.join(format!("ewns_ewpod-b_{uid_b}"));
    for d in [dir_a.join("app"), dir_b.join("web"), dir_b.join("sidecar")] {
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("0.log"), "").unwrap();
    }
    fs::create_dir_all(logs.path().join("containers")).unwrap();
    std::os::unix::fs::symlink(
        dir_b.join("web/0.log"),
        logs.path()
            .join(format!("containers/ewpod-b_ewns_web-{id_b}.log")),
    )
    .unwrap();

    let ew = Edgewatch::start(&[
        "--probes",
        "connect,map",
        "--metrics.labels",
        "cgroup,unit,container_id,pod,namespace,container",
        "--workload.pod-logs-dir",
        pods.to_str().unwrap(),
    ]);

    // Each cgroup is made after edgewatch started: resolved on first sight.
    let rel_a = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id_a}.scope",
        uid_a.replace('-', "_")
    );
    let rel_b = format!("kubepods/besteffort/pod{uid_b}/{id_b}");
    let rel_c = format!("system.slice/docker-{id_c}.scope");
    let rel_d = "system.slice/ewtest.service".to_string();
    let (path_a, _) = tree.mkdir(&rel_a);
    let (path_b, _) = tree.mkdir(&rel_b);
    let (path_c, _) = tree.mkdir(&rel_c);
    let (path_d, id_d) = tree.mkdir(&rel_d);

    let map_name = format!("ewwl{}", pid % 100_000);
    let map = create(HASH, &map_name, 4, 4, 8, 0);
    let workloads: Vec<Expected> = vec![
        Expected {
            rel: rel_a.clone(),
            path: path_a.clone(),
            connects: 3,
            updates: 5,
            labels: vec![
                ("unit", format!("cri-containerd-{id_a}.scope")),
                ("container_id", id_a.clone()),
                ("namespace", "ewns".into()),
                ("pod", "ewpod-a".into()),
                ("pod_uid", uid_a.clone()),
                ("container", "app".into()),
            ],
        },
        Expected {
            rel: rel_b.clone(),
            path: path_b.clone(),
            connects: 4,
            updates: 6,
            labels: vec![
                ("container_id", id_b.clone()),
                ("namespace", "ewns".into()),
                ("pod", "ewpod-b".into()),
                ("pod_uid", uid_b.clone()),
                ("container", "web".into()),
            ],
        },
        Expected {
            rel: rel_c.clone(),
            path: path_c.clone(),
            connects: 5,
            updates: 7,
            labels: vec![
                ("unit", format!("docker-{id_c}.scope")),
                ("container_id", id_c.clone()),
            ],
        },
        Expected {
            rel: rel_d.clone(),
            path: path_d.clone(),
            connects: 6,
            updates: 8,
            labels: vec![("unit", "ewtest.service".into())],
        },
    ];
    for w in &workloads {
        Worker::spawn(&ns, w.connects, w.updates, map.fd).run_in(&tree.dir(&w.rel));
    }

    // What each metric must hold for the test's cgroups, and nothing else.
    let expected = |extra: u32| {
        let mut calls = BTreeMap::new();
        let mut handshakes = BTreeMap::new();
        let mut updates_ = BTreeMap::new();
        for w in &workloads {
            let (connects, updates) = if w.path == path_d {
                (w.connects + extra, w.updates + extra)
            } else {
                (w.connects, w.updates)
            };
            let mut base: Vec<(&str, &str)> =
                w.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            base.push(("cgroup", w.path.as_str()));
            let with = |more: &[(&str, &str)]| {
                let mut all = base.clone();
                all.extend_from_slice(more);
                labels(&all)
            };
            calls.insert(
                with(&[("family", "ipv4"), ("result", "econnrefused")]),
                u64::from(connects),
            );
            handshakes.insert(
                with(&[("family", "ipv4"), ("outcome", "refused")]),
                u64::from(connects),
            );
            updates_.insert(
                with(&[
                    ("map_id", ""),
                    ("map_name", &map_name),
                    ("map_type", "hash"),
                    ("result", "ok"),
                ]),
                u64::from(updates),
            );
        }
        (calls, handshakes, updates_)
    };
    // map_id is the kernel's: compared apart.
    let without_map_id =
        |s: BTreeMap<Vec<(String, String)>, u64>| -> BTreeMap<Vec<(String, String)>, u64> {
            s.into_iter()
                .map(|(mut l, v)| {
                    for (k, val) in &mut l {
                        if k == "map_id" {
                            val.clear();
                        }
                    }
                    (l, v)
                })
                .collect()
        };
    let check = |extra: u32| {
        let (calls, handshakes, updates) = expected(extra);
        let want_total: u64 = updates.values().sum();
        let m = poll(Duration::from_secs(10), || {
            let m = ew.scrape();
            let got: u64 = series(&m, "edgewatch_bpf_map_updates_total", &top)
                .values()
                .sum();
            (got == want_total).then_some(m)
        })
        .unwrap_or_else(|| ew.scrape());
        assert_eq!(
            series(&m, "edgewatch_connect_calls_total", &top),
            calls,
            "{}",
            m.text
        );
        assert_eq!(
            series(&m, "edgewatch_tcp_connects_total", &top),
            handshakes,
            "{}",
            m.text
        );
        assert_eq!(
            without_map_id(series(&m, "edgewatch_bpf_map_updates_total", &top)),
            updates,
            "{}",
            m.text
        );
        m
    };
    let m = check(0);
    crate::common::promtool_check(&m.text);

    // The service's cgroup removed and made again at the same path: a new
    // id, resolved to the same workload, counted in the same series.
    tree.rmdir(&rel_d);
    let removed = |m: &Metrics| {
        m.count(
            "edgewatch_workload_cache_evictions_total",
            &[("reason", "removed")],
        )
    };
    assert!(removed(&ew.scrape()) >= 1, "the scrape's sweep dropped it");
    let (again, id_again) = tree.mkdir(&rel_d);
    assert_eq!(again, path_d);
    assert_ne!(id_again, id_d, "kernfs reused a cgroup id");
    Worker::spawn(&ns, 2, 2, map.fd).run_in(&tree.dir(&rel_d));
    check(2);
}

#[test]
fn removed_cgroups_leave_the_cache_and_new_ids_resolve() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let tree = CgroupTree::new("cache");
    let mut registry = prometheus_client::registry::Registry::default();
    let telemetry = Telemetry::default();
    let workloads = Workloads::with(
        Some(Hierarchy::find().unwrap()),
        PodLogs::new("/nonexistent"),
        &mut registry,
        &telemetry,
    );
    let mut ids = HashMap::new();
    for rel in ["system.slice/ewtest.service", "system.slice/keep.service"] {
        let (path, id) = tree.mkdir(rel);
        let w = workloads.resolve(id).unwrap();
        assert_eq!(&*w.cgroup, path);
        ids.insert(rel, id);
    }
    let old = ids["system.slice/ewtest.service"];
    tree.rmdir("system.slice/ewtest.service");
    workloads.sweep();
    assert_eq!(
        workloads.cached(old),
        None,
        "a removed cgroup leaves the cache"
    );
    assert!(workloads.cached(ids["system.slice/keep.service"]).is_some());
    let (path, new) = tree.mkdir("system.slice/ewtest.service");
    assert_ne!(new, old, "kernfs reused a cgroup id");
    let w = workloads.resolve(new).unwrap();
    assert_eq!(&*w.cgroup, path);
    assert_eq!(w.unit.as_deref(), Some("ewtest.service"));
    // The old id, if a late record still carried it, no longer resolves.
    assert_eq!(
        &*workloads.resolve(old).unwrap().cgroup,
        edgewatch::vocab::workload::UNRESOLVED
    );
}

/// A string attribute of a span.
fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attrs
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// Spans of a pod container's handshakes carry its workload under the
/// semantic-convention names.
#[test]
fn spans_carry_the_workload() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let pid = std::process::id();
    let tree = CgroupTree::new("span");
    let logs = tempfile::tempdir().unwrap();
    let ns = Netns::new("wlspan");
    let id = format!("{:08x}", pid ^ 0x5).repeat(8);
    let uid = format!("{pid:08x}-0000-4000-8000-000000000005");
    fs::create_dir_all(logs.path().join(format!("pods/ewns_ewpod-s_{uid}/app"))).unwrap();
    const TOKEN: &str = "ew-workload-e2e";
    let certs = Certs::generate();
    let rx = Receiver::start(&certs, TOKEN, false);
    let mut ew = Edgewatch::start(&[
        "--probes",
        "connect",
        "--otlp.endpoint",
        &rx.url(),
        "--otlp.headers",
        &format!("x-ew-token={TOKEN}"),
        "--otlp.tls.ca-file",
        certs.ca.to_str().unwrap(),
        "--otlp.interval-ms",
        "300",
        "--otlp.traces",
        "--workload.pod-logs-dir",
        logs.path().join("pods").to_str().unwrap(),
    ]);
    let rel = format!(
        "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    );
    let (path, _) = tree.mkdir(&rel);
    const CONNECTS: usize = 2;
    Worker::spawn(&ns, CONNECTS as u32, 0, -1).run_in(&tree.dir(&rel));
    // SIGTERM makes the last push after the consumer stopped: every span
    // of the worker's handshakes has been sent.
    assert_eq!(ew.signal_and_wait(libc::SIGTERM), Some(0));
    let cgroup = format!("0::{path}");
    let ours: Vec<Span> = rx
        .received()
        .into_iter()
        .filter_map(|r| match r {
            Received::Traces { req, .. } => Some(req),
            _ => None,
        })
        .flat_map(|req| req.resource_spans)
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .filter(|s| attr_str(&s.attributes, "process.linux.cgroup") == Some(cgroup.as_str()))
        .collect();
    assert_eq!(
        ours.len(),
        CONNECTS,
        "a span per handshake of the pod's worker"
    );
    for s in &ours {
        let a = |k| attr_str(&s.attributes, k);
        assert_eq!(s.name, "tcp.connect");
        assert_eq!(a("container.id"), Some(id.as_str()));
        assert_eq!(a("container.runtime.name"), Some("containerd"));
        assert_eq!(a("k8s.pod.uid"), Some(uid.as_str()));
        assert_eq!(a("k8s.pod.name"), Some("ewpod-s"));
        assert_eq!(a("k8s.namespace.name"), Some("ewns"));
        assert_eq!(a("k8s.container.name"), Some("app"));
        assert_eq!(a("edgewatch.k8s.pod.qos_class"), Some("guaranteed"));
        let unit = format!("cri-containerd-{id}.scope");
        assert_eq!(a("edgewatch.systemd.unit"), Some(unit.as_str()));
    }
}
