//! Pod namespace, pod name and container name from the node's own log
//! directories, which the kubelet keeps with no API server involved:
//!
//! - `<pod_logs_dir>/<namespace>_<pod>_<uid>/<container>/<restart>.log`
//!   (kubelet pkg/kubelet/kuberuntime/kuberuntime_sandbox.go and
//!   `BuildPodLogsDirectory`): made before the pod's first container
//!   starts, so a pod's cgroup never comes before its directory;
//! - `<pod_logs_dir>/../containers/<pod>_<namespace>_<container>-<id>.log`
//!   (`BuildContainerLogsDirectory` links): the only node-local place that
//!   ties a container id to its name. When the links are not there, a pod
//!   with exactly one container directory still names its container.
//!
//! Namespace and pod names are DNS labels and subdomains and container
//! names DNS labels: none holds `_`, so the separators are unambiguous.
//! Directories are read when a pod UID is not known yet, never per record.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::vocab::workload::is_pod_uid;

/// The most pod directories read in one scan (kubelet's default limit is
/// 110 pods a node; this leaves room for terminated pods' logs).
pub const MAX_PODS: usize = 16_384;
/// The most container directories or links read for one pod or container.
const MAX_ENTRIES: usize = 65_536;

/// A pod from its log directory's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub uid: Arc<str>,
}

/// `<namespace>_<name>_<uid>`.
pub fn parse_pod_dir(name: &str) -> Option<Pod> {
    let mut parts = name.split('_');
    let (Some(namespace), Some(pod), Some(uid), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if namespace.is_empty() || pod.is_empty() || !is_pod_uid(uid) {
        return None;
    }
    Some(Pod {
        namespace: Arc::from(namespace),
        name: Arc::from(pod),
        uid: Arc::from(uid),
    })
}

/// The container name in a kubelet link name
/// `<pod>_<namespace>_<container>-<id>.log`, when it is this pod's and
/// this container id's.
pub fn parse_container_link(link: &str, pod: &Pod, container_id: &str) -> Option<Arc<str>> {
    let rest = link
        .strip_suffix(".log")?
        .strip_suffix(container_id)?
        .strip_suffix('-')?;
    let mut parts = rest.split('_');
    let (Some(p), Some(ns), Some(container), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (p == &*pod.name && ns == &*pod.namespace && !container.is_empty())
        .then(|| Arc::from(container))
}

/// The pod log directory, indexed by pod UID.
#[derive(Debug)]
pub struct PodLogs {
    dir: PathBuf,
    pods: HashMap<Arc<str>, Pod>,
}

impl PodLogs {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            pods: HashMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod with this UID; the directory is read again when it is not
    /// known (a pod made since the last read).
    pub fn pod(&mut self, uid: &str) -> Option<Pod> {
        if let Some(p) = self.pods.get(uid) {
            return Some(p.clone());
        }
        self.scan();
        self.pods.get(uid).cloned()
    }

    /// Reads the directory again: pods gone since the last read leave.
    fn scan(&mut self) {
        self.pods.clear();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten().take(MAX_PODS) {
            if let Some(p) = entry.file_name().to_str().and_then(parse_pod_dir) {
                self.pods.insert(p.uid.clone(), p);
            }
        }
    }

    /// The name of the container `container_id` of `pod`: from the
    /// kubelet's links, else the pod's only container directory.
    pub fn container(&self, pod: &Pod, container_id: &str) -> Option<Arc<str>> {
        if let Some(links) = self.dir.parent().map(|p| p.join("containers"))
            && let Ok(entries) = fs::read_dir(links)
        {
            let found = entries.flatten().take(MAX_ENTRIES).find_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| parse_container_link(n, pod, container_id))
            });
            if found.is_some() {
                return found;
            }
        }
        let dir = self
            .dir
            .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid));
        let mut names = fs::read_dir(dir)
            .ok()?
            .flatten()
            .take(MAX_ENTRIES)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(Arc::<str>::from));
        match (names.next(), names.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pod_directory_names() {
        let p = parse_pod_dir(&format!("shop_cart-7d9f_{UID}")).unwrap();
        assert_eq!(
            (&*p.namespace, &*p.name, &*p.uid),
            ("shop", "cart-7d9f", UID)
        );
        for bad in [
            String::new(),
            "shop".into(),
            format!("shop_cart_{UID}_x"),
            format!("_cart_{UID}"),
            format!("shop__{UID}"),
            "shop_cart_not-a-uid".into(),
            format!("shop_cart_{UID}\u{e9}"),
            "___".into(),
        ] {
            assert_eq!(parse_pod_dir(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn container_link_names() {
        let pod = parse_pod_dir(&format!("shop_cart-7d9f_{UID}")).unwrap();
        let link = format!("cart-7d9f_shop_app-{ID}.log");
        assert_eq!(
            parse_container_link(&link, &pod, ID).as_deref(),
            Some("app")
        );
        for bad in [
            format!("other_shop_app-{ID}.log"),
            format!("cart-7d9f_kube-system_app-{ID}.log"),
            format!("cart-7d9f_shop_app-{ID}"),
            format!("cart-7d9f_shop_-{ID}.log"),
            format!("cart-7d9f_shop_app_x-{ID}.log"),
            format!("cart-7d9f_shop_app{ID}.log"),
            ".log".into(),
            String::new(),
        ] {
            assert_eq!(parse_container_link(&bad, &pod, ID), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_the_directories_when_a_pod_is_new() {
        let root = tempfile::tempdir().unwrap();
        let pods_dir = root.path().join("pods");
        fs::create_dir_all(&pods_dir).unwrap();
        let mut logs = PodLogs::new(&pods_dir);
        assert_eq!(logs.pod(UID), None);
        // Made after the first read: found on first sight.
        let one = pods_dir.join(format!("shop_cart-7d9f_{UID}"));
        fs::create_dir_all(one.join("app")).unwrap();
        fs::write(one.join("app/0.log"), "").unwrap();
        let pod = logs.pod(UID).unwrap();
        assert_eq!(&*pod.name, "cart-7d9f");
        // One container directory names the container.
        assert_eq!(logs.container(&pod, ID).as_deref(), Some("app"));
        // Two: ambiguous without the links...
        fs::create_dir_all(one.join("sidecar")).unwrap();
        assert_eq!(logs.container(&pod, ID), None);
        // ...which name it.
        let links = root.path().join("containers");
        fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(
            one.join("sidecar/0.log"),
            links.join(format!("cart-7d9f_shop_sidecar-{ID}.log")),
        )
        .unwrap();
        assert_eq!(logs.container(&pod, ID).as_deref(), Some("sidecar"));
        // A pod whose directory is gone leaves at the next read.
        fs::remove_dir_all(&one).unwrap();
        assert_eq!(logs.pod("00000000-0000-0000-0000-000000000000"), None);
        assert_eq!(logs.pod(UID), None);
    }
}
