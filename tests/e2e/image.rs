//! End to end, as root: the container image, built from the repository by
//! scripts/image, runs the way deploy/kubernetes/daemonset.yaml runs it.
//!
//! Everything the container gets is read from the DaemonSet, not repeated
//! here: its capabilities (drop, add), host network, read-only root
//! filesystem, the ConfigMap and hostPath mounts, and its arguments. podman
//! runs it with runc, vfs storage in a temporary root, `--ulimit host` and
//! a containers.conf with `default_ulimits = []` (see KERNEL-NOTES; crun
//! refuses this machine's hybrid cgroups). The only addition is a loopback
//! listen address on a free port, so the test never takes the node's port.
//!
//! Checked: every probe the ConfigMap enables attaches with exactly those
//! capabilities (the process's effective set is compared with the YAML);
//! the container counts a known workload exactly; the image holds the
//! binary and its libraries and nothing else; and the binary in the image
//! comes from the same commit as the one the tests use
//! (`edgewatch_build_info{revision}`, the image's revision label, and
//! `git rev-parse HEAD`).

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::common::{
    Metrics, Netns, binary,
    bpf::{BPF_ANY, HASH, create, update},
    http_get, poll, privileged, repo, serial,
};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The documents of a multi-document YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Capability names in bit order (include/uapi/linux/capability.h, 6.18).
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability names set in a /proc/PID/status mask.
fn decode_caps(mask: u64) -> BTreeSet<String> {
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

fn proc_caps(pid: u32, field: &str) -> BTreeSet<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:\t")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    decode_caps(u64::from_str_radix(hex.trim(), 16).unwrap())
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// podman on a private storage root, runc, vfs.
struct Podman {
    root: std::path::PathBuf,
    conf: std::path::PathBuf,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(self.root.join("run"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"]);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        check(
            self.cmd().args(args).output().expect(
                "podman not found: install the Debian packages podman and runc (scripts/quickstart install)",
            ),
            &format!("podman {args:?}"),
        )
    }
}

/// A started container, removed on drop (even when the test fails).
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .cmd()
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
    }
}

fn revision_of_test_binary() -> String {
    let out = check(
        Command::new(binary()).arg("--version").output().unwrap(),
        "edgewatch --version",
    );
    // "edgewatch 0.1.0 (revision <commit>)"
    out.trim()
        .rsplit_once("(revision ")
        .and_then(|(_, r)| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version output {out:?}"))
        .to_string()
}

fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo(""))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The files in the image's only layer, from its docker-archive, unpacked
/// under `into`.
fn image_files(archive: &Path, into: &Path) -> BTreeSet<String> {
    let manifest = check(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("manifest.json")
            .output()
            .unwrap(),
        "tar manifest.json",
    );
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    let layer = layers[0].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar = |args: &[&std::ffi::OsStr], what: &str| {
        check(Command::new("tar").args(args).output().unwrap(), what)
    };
    tar(
        &[
            "-xf".as_ref(),
            archive.as_os_str(),
            "-C".as_ref(),
            dir.path().as_os_str(),
            layer.as_ref(),
        ],
        "tar layer",
    );
    let layer = dir.path().join(layer);
    let list = tar(&["-tf".as_ref(), layer.as_os_str()], "tar -t layer");
    tar(
        &[
            "-xf".as_ref(),
            layer.as_os_str(),
            "-C".as_ref(),
            into.as_os_str(),
        ],
        "tar -x layer",
    );
    list.lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| format!("/{}", l.trim_start_matches("./")))
        .collect()
}

#[test]
fn image_runs_as_the_daemonset_runs_it() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let docs = documents(&repo("deploy/kubernetes/daemonset.yaml"));
    let ds = kind(&docs, "DaemonSet");
    let config_map = kind(&docs, "ConfigMap");
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];

    // Build the image from the repository, into a private storage root.
    let store = tempfile::tempdir().unwrap();
    let root = store.path().join("storage");
    let archive = store.path().join("edgewatch.tar");
    let out = check(
        Command::new(repo("scripts/image"))
            // cargo test exports the build script's EDGEWATCH_REVISION to
            // tests; passed on, the nested build would see an override and
            // rebuild.
            .env_remove("EDGEWATCH_REVISION")
            .arg("--root")
            .arg(&root)
            .arg("--archive")
            .arg(&archive)
            .output()
            .unwrap(),
        "scripts/image",
    );
    let image = out.lines().last().unwrap().to_string();
    eprintln!("built {image} in {:?}", started.elapsed());
    assert_eq!(
        image.strip_prefix("localhost/"),
        c["image"].as_str(),
        "scripts/image builds the image the DaemonSet names"
    );

    // Nothing but the binary and the libraries ldd lists for it (ldd of
    // the image's own binary, resolved on this host as scripts/image does).
    let unpacked = store.path().join("layer");
    std::fs::create_dir(&unpacked).unwrap();
    let files = image_files(&archive, &unpacked);
    let ldd = check(
        Command::new("ldd")
            .arg(unpacked.join("usr/bin/edgewatch"))
            .output()
            .unwrap(),
        "ldd",
    );
    let mut expected: BTreeSet<String> = ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(String::from)
        .collect();
    expected.insert("/usr/bin/edgewatch".into());
    assert_eq!(files, expected, "the image's files");

    let conf = store.path().join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    let podman = Podman { root, conf };

    // The DaemonSet's pod, as podman flags.
    let mut args: Vec<String> = vec!["run".into(), "-d".into()];
    let name = format!("edgewatch-image-test-{}", std::process::id());
    args.extend(["--name".into(), name.clone()]);
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    args.extend(["--network".into(), "host".into()]);
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        args.push("--read-only".into());
    }
    let dropped = strings(&sc["capabilities"]["drop"]);
    let add = strings(&sc["capabilities"]["add"]);
    assert_eq!(
        dropped,
        ["ALL"],
        "the DaemonSet drops every capability first"
    );
    args.extend(["--cap-drop".into(), "ALL".into()]);
    args.extend(["--cap-add".into(), add.join(",")]);
    args.extend(["--ulimit".into(), "host".into()]);
    let config_dirs = tempfile::tempdir().unwrap();
    for vm in c["volumeMounts"].as_sequence().unwrap() {
        let vname = vm["name"].as_str().unwrap();
        let target = vm["mountPath"].as_str().unwrap();
        let volume = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(vname))
            .unwrap_or_else(|| panic!("no volume {vname}"));
        let source = if let Some(path) = volume["hostPath"]["path"].as_str() {
            path.to_string()
        } else if let Some(cm) = volume["configMap"]["name"].as_str() {
            assert_eq!(config_map["metadata"]["name"].as_str(), Some(cm));
            let dir = config_dirs.path().join(vname);
            std::fs::create_dir(&dir).unwrap();
            for (file, content) in config_map["data"].as_mapping().unwrap() {
                std::fs::write(dir.join(file.as_str().unwrap()), content.as_str().unwrap())
                    .unwrap();
            }
            dir.display().to_string()
        } else {
            panic!("volume {vname}: only hostPath and configMap are mapped here");
        };
        // ConfigMap volumes are read-only in Kubernetes.
        let ro = if volume["configMap"].is_mapping() {
            ":ro"
        } else {
            ""
        };
        args.extend(["-v".into(), format!("{source}:{target}{ro}")]);
    }
    args.push(image.clone());
    args.extend(strings(&c["args"]));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    args.extend(["--web.listen-address".into(), addr.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    eprintln!("podman {}", args.join(" "));
    podman.run(&args);
    let container = Container {
        podman: &podman,
        name: name.clone(),
    };

    let logs = || podman.run(&["logs", &container.name]);
    let up = poll(Duration::from_secs(60), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    });
    assert!(up.is_some(), "the container never listened:\n{}", logs());
    eprintln!("container listening after {:?}", started.elapsed());

    // Readiness, as the kubelet asks for it.
    let ready = c["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    assert_eq!(http_get(addr, ready).trim(), "ok");

    // Exactly the DaemonSet's capabilities in the bounding set; effective,
    // only what scrapes need once everything is attached (caps.rs: the map
    // inventory's BPF_*_GET_NEXT_ID wants CAP_SYS_ADMIN).
    let pid: u32 = podman
        .run(&["inspect", "--format", "{{.State.Pid}}", &container.name])
        .trim()
        .parse()
        .unwrap();
    let want: BTreeSet<String> = add.iter().cloned().collect();
    let kept: BTreeSet<String> = ["SYS_ADMIN".to_string()].into();
    assert!(kept.is_subset(&want), "{want:?}");
    let eff = poll(Duration::from_secs(10), || {
        Some(proc_caps(pid, "CapEff")).filter(|e| *e == kept)
    });
    assert_eq!(
        eff.unwrap_or_else(|| proc_caps(pid, "CapEff")),
        kept,
        "effective capabilities after attaching"
    );
    assert_eq!(proc_caps(pid, "CapBnd"), want, "bounding set");

    // Every probe the ConfigMap enables attached with those capabilities.
    let cfg: Value =
        serde_yaml_ng::from_str(config_map["data"]["edgewatch.yml"].as_str().unwrap()).unwrap();
    let m = Metrics::parse(&http_get(addr, "/metrics"));
    let mut probes = strings(&cfg["probes"]);
    if probes == ["all"] {
        probes = edgewatch::probe::ALL
            .iter()
            .map(|p| p.name().to_string())
            .collect();
    }
    for probe in probes {
        let attached: Vec<_> = m
            .samples
            .iter()
            .filter(|(n, l, _)| n == "edgewatch_probe_attached" && l.get("probe") == Some(&probe))
            .collect();
        assert_eq!(attached.len(), 1, "{probe}: {attached:?}\n{}", logs());
        assert_eq!(attached[0].2, 1.0, "{probe} did not attach:\n{}", logs());
        assert_ne!(attached[0].1["mode"], "none");
    }
    assert!(m.has("edgewatch_bpf_map_info", &[]), "map inventory empty");
    assert!(
        m.has("edgewatch_bpf_prog_runs_total", &[]),
        "no program statistics"
    );
    assert_eq!(
        m.sum("edgewatch_scrape_errors_total", &[]),
        0.0,
        "{}",
        m.text
    );

    // A known workload, counted exactly: updates to a map of our own
    // (map ids and names are per map, so nothing else on the host adds to
    // it) and refused connects in a namespace of our own (host-wide
    // counters, so at least that many).
    let map_name = format!("ewimg{}", std::process::id() % 100_000);
    let refused_before = m.count("edgewatch_tcp_connects_total", &[("outcome", "refused")]);
    let map = create(HASH, &map_name, 4, 8, 16, 0);
    const UPDATES: u64 = 25;
    for i in 0..UPDATES {
        assert_eq!(
            update(&map, &(i as u32 % 8).to_ne_bytes(), &[0u8; 8], BPF_ANY),
            0
        );
    }
    const REFUSED: u64 = 3;
    let ns = Netns::new("img");
    ns.enter(|| {
        for _ in 0..REFUSED {
            let e = TcpStream::connect("127.0.0.1:1").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        }
    });
    let m = poll(Duration::from_secs(10), || {
        let m = Metrics::parse(&http_get(addr, "/metrics"));
        (m.count(
            "edgewatch_bpf_map_updates_total",
            &[("map_name", &map_name), ("result", "ok")],
        ) >= UPDATES)
            .then_some(m)
    })
    .unwrap_or_else(|| Metrics::parse(&http_get(addr, "/metrics")));
    assert_eq!(
        m.count(
            "edgewatch_bpf_map_updates_total",
            &[("map_name", &map_name), ("result", "ok")],
        ),
        UPDATES,
        "{}",
        m.text
    );
    assert!(
        m.count("edgewatch_tcp_connects_total", &[("outcome", "refused")]) - refused_before
            >= REFUSED,
        "{}",
        m.text
    );
    crate::common::promtool_check(&m.text);

    // The same commit: the image's binary, its label, the tests' binary, and
    // the checkout.
    let info: Vec<_> = m
        .samples
        .iter()
        .filter(|(n, _, _)| n == "edgewatch_build_info")
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    let in_image = info[0].1["revision"].clone();
    let tests = revision_of_test_binary();
    eprintln!("revision: image {in_image}, tests' binary {tests}");
    assert_eq!(in_image, tests, "the image and the tests' binary differ");
    assert_eq!(info[0].1["version"], env!("CARGO_PKG_VERSION"));
    let label = podman.run(&[
        "image",
        "inspect",
        "--format",
        "{{index .Labels \"org.opencontainers.image.revision\"}}",
        &image,
    ]);
    assert_eq!(label.trim(), in_image, "the image's revision label");
    if let Some(head) = git_head() {
        assert_eq!(in_image, head, "a git checkout: the revision is HEAD");
    }
    drop(container);
    eprintln!("done in {:?}", started.elapsed());
}
