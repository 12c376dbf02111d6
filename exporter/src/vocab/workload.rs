//! What a cgroup v2 path says about the workload that runs in it: the
//! systemd unit, the container (Docker, Podman, containerd, CRI-O) and the
//! Kubernetes pod (UID and QoS class), for the systemd and cgroupfs cgroup
//! drivers. Pure string work on the path, so it is tested on a table of real
//! paths; the resolver that finds the path of a cgroup id, and the pod names
//! from the node's log directory, live in `crate::workload`.
//!
//! The layouts recognised (kubelet pkg/kubelet/cm/cgroup_manager_linux.go
//! for the pod slices; each runtime's cgroup naming for the container):
//!
//! | driver | pod | container |
//! |---|---|---|
//! | systemd | `kubepods[-<qos>]-pod<uid with _>.slice` | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |
//! | cgroupfs | `kubepods[/<qos>]/pod<uid>` | `<id>`, `crio-<id>` |
//! | outside Kubernetes | | `docker-<id>.scope`, `docker/<id>`, `libpod-<id>.scope`, `libpod-<id>` |
//!
//! `<id>` is 64 lower-case hex digits; anything else is not a container id
//! (the runtimes' conmon and shim scopes, `crio-conmon-<id>.scope` and
//! `libpod-conmon-<id>.scope`, are units, not containers). A Guaranteed
//! pod's slice sits directly under `kubepods` (no QoS level). The innermost
//! `.service` or `.scope` component is the unit. What none of this
//! matches is still the raw path.

use std::sync::Arc;

/// `cgroup` label value of records made in kernel context (a retransmit
/// from a timer or softirq: no task acted).
pub const KERNEL: &str = "_kernel";
/// `cgroup` label value of an id no cgroup had when it was looked up (it
/// was removed first, or it is outside edgewatch's cgroup namespace).
pub const UNRESOLVED: &str = "_unresolved";

/// One cgroup's workload. Fields that the path (or the pod log directory)
/// does not give are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Workload {
    /// The cgroup v2 path from the hierarchy's root (`/system.slice/sshd.service`,
    /// as in /proc/PID/cgroup), or [`KERNEL`] or [`UNRESOLVED`].
    pub cgroup: Arc<str>,
    /// The innermost systemd unit: a `.service` or `.scope`.
    pub unit: Option<Arc<str>>,
    /// The full 64-hex-digit container id.
    pub container_id: Option<Arc<str>>,
    /// The runtime the path names: containerd, cri-o, docker or podman
    /// (None with the cgroupfs driver's bare ids, which every runtime uses).
    pub runtime: Option<&'static str>,
    pub pod_uid: Option<Arc<str>>,
    /// guaranteed, burstable or besteffort.
    pub qos: Option<&'static str>,
    /// From the pod log directory: namespace, pod and container names.
    pub namespace: Option<Arc<str>>,
    pub pod: Option<Arc<str>>,
    pub container: Option<Arc<str>>,
}

impl Workload {
    /// Records made in kernel context.
    pub fn kernel() -> Self {
        Self {
            cgroup: Arc::from(KERNEL),
            ..Self::default()
        }
    }

    /// An id no cgroup had.
    pub fn unresolved() -> Self {
        Self {
            cgroup: Arc::from(UNRESOLVED),
            ..Self::default()
        }
    }

    /// Whether this is a real cgroup (not kernel context, not unresolved).
    pub fn is_cgroup(&self) -> bool {
        self.cgroup.starts_with('/')
    }

    /// Span attributes, OpenTelemetry semantic-convention names where one
    /// exists (k8s.*, container.*, process.linux.cgroup in the
    /// /proc/PID/cgroup form); the systemd unit and the QoS class have none
    /// and are `edgewatch.*`. Built at export time.
    pub fn span_attributes(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.is_cgroup() {
            return out;
        }
        out.push(("process.linux.cgroup", format!("0::{}", self.cgroup)));
        let fields: [(&'static str, Option<&str>); 8] = [
            ("edgewatch.systemd.unit", self.unit.as_deref()),
            ("container.id", self.container_id.as_deref()),
            ("container.runtime.name", self.runtime),
            ("k8s.pod.uid", self.pod_uid.as_deref()),
            ("edgewatch.k8s.pod.qos_class", self.qos),
            ("k8s.namespace.name", self.namespace.as_deref()),
            ("k8s.pod.name", self.pod.as_deref()),
            ("k8s.container.name", self.container.as_deref()),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                out.push((key, v.to_string()));
            }
        }
        out
    }
}

/// A container id: exactly 64 lower-case hex digits.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A pod UID as it appears in cgroup and log directory names: a UUID, or
/// the 32-hex-digit hash of a static pod. Hex digits and dashes only.
pub fn is_pod_uid(s: &str) -> bool {
    (32..=36).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

fn qos_name(s: &str) -> Option<&'static str> {
    match s {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        _ => None,
    }
}

/// A container scope's runtime and id: `cri-containerd-<id>.scope` and so
/// on (the stem is the name without `.scope`).
fn scope_container(stem: &str) -> Option<(&'static str, &str)> {
    const PREFIXES: &[(&str, &str)] = &[
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ];
    PREFIXES.iter().find_map(|(prefix, runtime)| {
        stem.strip_prefix(prefix)
            .filter(|id| is_container_id(id))
            .map(|id| (*runtime, id))
    })
}

/// Parses a cgroup v2 path (relative to the hierarchy's root, with or
/// without its leading `/`) into a workload. Never fails: what it does not
/// recognise stays the raw path.
pub fn parse(path: &str) -> Workload {
    let cgroup = if path.starts_with('/') {
        Arc::from(path)
    } else {
        Arc::from(format!("/{path}"))
    };
    let mut w = Workload {
        cgroup,
        ..Workload::default()
    };
    let mut kubepods = false;
    let mut qos: Option<&'static str> = None;
    let mut parent = "";
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if let Some(stem) = c.strip_suffix(".slice") {
            // systemd encodes the slice's ancestry with dashes:
            // kubepods-burstable-pod<uid>.slice is in kubepods-burstable.slice.
            let mut parts = stem.split('-');
            if parts.any(|p| p == "kubepods") {
                kubepods = true;
                for p in parts {
                    if let Some(q) = qos_name(p) {
                        qos = Some(q);
                    } else if let Some(uid) = p.strip_prefix("pod") {
                        // The pod UID, with systemd's `_` for `-`.
                        let uid = uid.replace('_', "-");
                        if is_pod_uid(&uid) {
                            w.pod_uid = Some(Arc::from(uid));
                        }
                    }
                }
            }
        } else if c.ends_with(".service") {
            w.unit = Some(Arc::from(c));
        } else if let Some(stem) = c.strip_suffix(".scope") {
            w.unit = Some(Arc::from(c));
            if let Some((runtime, id)) = scope_container(stem) {
                w.container_id = Some(Arc::from(id));
                w.runtime = Some(runtime);
            }
        } else if c == "kubepods" {
            kubepods = true;
        } else if kubepods && parent == "kubepods" && qos_name(c).is_some() {
            qos = qos_name(c);
        } else if let Some(uid) = c.strip_prefix("pod").filter(|u| kubepods && is_pod_uid(u)) {
            w.pod_uid = Some(Arc::from(uid));
        } else if is_container_id(c) {
            w.container_id = Some(Arc::from(c));
            w.runtime = (parent == "docker").then_some("docker");
        } else if let Some((runtime, id)) = scope_container(c) {
            // The cgroupfs forms of CRI-O (crio-<id>) and Podman
            // (libpod_parent/libpod-<id>).
            w.container_id = Some(Arc::from(id));
            w.runtime = Some(runtime);
        }
        parent = c;
    }
    if w.pod_uid.is_some() {
        w.qos = Some(qos.unwrap_or("guaranteed"));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const UID: &str = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";
    const UID_: &str = "1f2e3d4c_5b6a_4798_8a7b_6c5d4e3f2a1b";

    /// (path, unit, container id, runtime, pod uid, qos)
    type Row = (
        String,
        Option<String>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );

    fn table() -> Vec<Row> {
        let s = |x: &str| Some(x.to_string());
        vec![
            // Kubernetes, systemd driver, containerd.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                s(&format!("cri-containerd-{ID}.scope")),
                Some(ID),
                Some("containerd"),
                Some(UID),
                Some("burstable"),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                s(&format!("cri-containerd-{ID}.scope")),
                Some(ID),
                Some("containerd"),
                Some(UID),
                Some("besteffort"),
            ),
            // Guaranteed: the pod slice directly under kubepods.slice.
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                s(&format!("cri-containerd-{ID}.scope")),
                Some(ID),
                Some("containerd"),
                Some(UID),
                Some("guaranteed"),
            ),
            // CRI-O, systemd driver, and its conmon scope (not a container).
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
                ),
                s(&format!("crio-{ID}.scope")),
                Some(ID),
                Some("cri-o"),
                Some(UID),
                Some("burstable"),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
                ),
                s(&format!("crio-conmon-{ID}.scope")),
                None,
                None,
                Some(UID),
                Some("burstable"),
            ),
            // cri-dockerd, systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
                ),
                s(&format!("docker-{ID}.scope")),
                Some(ID),
                Some("docker"),
                Some(UID),
                Some("besteffort"),
            ),
            // cgroupfs driver (containerd, cri-dockerd, k3s): bare ids.
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                None,
                Some(ID),
                None,
                Some(UID),
                Some("burstable"),
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                None,
                Some(ID),
                None,
                Some(UID),
                Some("guaranteed"),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                None,
                Some(ID),
                Some("cri-o"),
                Some(UID),
                Some("besteffort"),
            ),
            // kind: kubelet's cgroup root under kubelet.slice; a static pod's
            // UID is a 32-digit hash.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod0a1b2c3d4e5f60718293a4b5c6d7e8f9.slice/cri-containerd-{ID}.scope"
                ),
                s(&format!("cri-containerd-{ID}.scope")),
                Some(ID),
                Some("containerd"),
                Some("0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                Some("besteffort"),
            ),
            // A pod-level cgroup with no container below it.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
                None,
                None,
                None,
                Some(UID),
                Some("burstable"),
            ),
            // Docker outside Kubernetes: systemd and cgroupfs drivers.
            (
                format!("/system.slice/docker-{ID}.scope"),
                s(&format!("docker-{ID}.scope")),
                Some(ID),
                Some("docker"),
                None,
                None,
            ),
            (format!("/docker/{ID}"), None, Some(ID), Some("docker"), None, None),
            // Docker in Docker: the innermost container is the process's.
            (
                format!("/docker/{ID}/docker/{ID2}"),
                None,
                Some(ID2),
                Some("docker"),
                None,
                None,
            ),
            // Podman: rootful (machine.slice), rootless (user slice), its
            // conmon, the cgroupfs manager, and a sub-cgroup of the container.
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                s(&format!("libpod-{ID}.scope")),
                Some(ID),
                Some("podman"),
                None,
                None,
            ),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                s(&format!("libpod-{ID}.scope")),
                Some(ID),
                Some("podman"),
                None,
                None,
            ),
            (
                format!("/machine.slice/libpod-conmon-{ID}.scope"),
                s(&format!("libpod-conmon-{ID}.scope")),
                None,
                None,
                None,
                None,
            ),
            (format!("/libpod_parent/libpod-{ID}"), None, Some(ID), Some("podman"), None, None),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                s(&format!("libpod-{ID}.scope")),
                Some(ID),
                Some("podman"),
                None,
                None,
            ),
            // systemd: services, scopes, user sessions and user units.
            (
                "/system.slice/ewtest.service".into(),
                s("ewtest.service"),
                None,
                None,
                None,
                None,
            ),
            (
                "/system.slice/system-getty.slice/getty@tty1.service".into(),
                s("getty@tty1.service"),
                None,
                None,
                None,
                None,
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                s("session-3.scope"),
                None,
                None,
                None,
                None,
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope".into(),
                s("app-gnome-firefox-4242.scope"),
                None,
                None,
                None,
                None,
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope".into(),
                s("init.scope"),
                None,
                None,
                None,
                None,
            ),
            // The root, plain directories, slices alone.
            ("/".into(), None, None, None, None, None),
            ("/system.slice".into(), None, None, None, None, None),
            ("/ewtest/plain".into(), None, None, None, None, None),
            // Malformed: short or upper-case ids, empty or bad UIDs, a pod
            // directory outside kubepods, stray separators, non-ASCII.
            ("/system.slice/docker-0123abc.scope".into(), s("docker-0123abc.scope"), None, None, None, None),
            (
                format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
                s(&format!("docker-{}.scope", ID.to_uppercase())),
                None,
                None,
                None,
                None,
            ),
            (format!("/docker/{}", &ID[1..]), None, None, None, None, None),
            (format!("/docker/{ID}0"), None, None, None, None, None),
            ("/kubepods.slice/kubepods-pod.slice".into(), None, None, None, None, None),
            ("/kubepods.slice/kubepods-burstable-podZZZZ.slice".into(), None, None, None, None, None),
            (format!("/pods/pod{UID}"), None, None, None, None, None),
            (format!("/kubepods/burstable/pod{UID}x"), None, None, None, None, None),
            (format!("//kubepods//pod{UID}//{ID}//"), None, Some(ID), None, Some(UID), Some("guaranteed")),
            ("".into(), None, None, None, None, None),
            ("////".into(), None, None, None, None, None),
            (".slice/.scope/.service".into(), s(".service"), None, None, None, None),
            ("/sys\u{e8}me.slice/\u{e9}t\u{e9}.service".into(), s("\u{e9}t\u{e9}.service"), None, None, None, None),
            ("/kubepods-pod\u{e9}.slice/docker-\u{e9}.scope".into(), s("docker-\u{e9}.scope"), None, None, None, None),
        ]
    }

    #[test]
    fn real_world_paths() {
        for (path, unit, id, runtime, uid, qos) in table() {
            let w = parse(&path);
            assert_eq!(w.unit.as_deref(), unit.as_deref(), "unit of {path}");
            assert_eq!(w.container_id.as_deref(), id, "container id of {path}");
            assert_eq!(w.runtime, runtime, "runtime of {path}");
            assert_eq!(w.pod_uid.as_deref(), uid, "pod uid of {path}");
            assert_eq!(w.qos, qos, "qos of {path}");
            assert!(w.is_cgroup(), "{path}");
            assert!(w.cgroup.starts_with('/') && w.cgroup.ends_with(path.trim_start_matches('/')));
            assert_eq!((w.namespace, w.pod, w.container), (None, None, None));
        }
    }

    /// Every prefix and every suffix of every table path (cut at any char
    /// boundary), and bytes of a pseudo-random generator: no panic.
    #[test]
    fn garbage_never_panics() {
        for (path, ..) in table() {
            for (i, _) in path.char_indices() {
                parse(&path[..i]);
                parse(&path[i..]);
            }
        }
        let mut x: u32 = 0x1234_5678;
        let alphabet = "/-_.kubepodsliceburstablescoperv0123456789abcdef\u{e9}";
        let chars: Vec<char> = alphabet.chars().collect();
        for _ in 0..20_000 {
            let s: String = (0..(x % 200))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    chars[x as usize % chars.len()]
                })
                .collect();
            parse(&s);
        }
    }

    #[test]
    fn span_attributes_use_semantic_convention_names() {
        let mut w = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        ));
        w.namespace = Some("shop".into());
        w.pod = Some("cart-7d9f".into());
        w.container = Some("cart".into());
        let attrs = w.span_attributes();
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("k8s.pod.uid"), Some(UID));
        assert_eq!(get("k8s.pod.name"), Some("cart-7d9f"));
        assert_eq!(get("k8s.namespace.name"), Some("shop"));
        assert_eq!(get("k8s.container.name"), Some("cart"));
        assert_eq!(get("container.id"), Some(ID));
        assert_eq!(get("container.runtime.name"), Some("containerd"));
        assert_eq!(get("edgewatch.k8s.pod.qos_class"), Some("burstable"));
        assert!(get("process.linux.cgroup").is_some_and(|c| c.starts_with("0::/kubepods.slice/")));
        assert!(Workload::kernel().span_attributes().is_empty());
        assert!(Workload::unresolved().span_attributes().is_empty());
        let unit = parse("/system.slice/ewtest.service").span_attributes();
        assert_eq!(
            unit,
            vec![
                (
                    "process.linux.cgroup",
                    "0::/system.slice/ewtest.service".to_string()
                ),
                ("edgewatch.systemd.unit", "ewtest.service".to_string()),
            ]
        );
    }
}
