//! Shared harness for edgewatch's end-to-end tests: root check, network
//! namespaces with cleanup guards, the real edgewatch binary, scraping and
//! exposition parsing, kernel counters.
//!
//! Privileged tests need root. Not root is a failure, not a skip, unless a
//! person sets EDGEWATCH_SKIP_PRIVILEGED_TESTS=1.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

pub mod bench;
pub mod bpf;
pub mod emitter;
pub mod frames;
pub mod kernel;
pub mod otlp;

pub const SKIP_VAR: &str = "EDGEWATCH_SKIP_PRIVILEGED_TESTS";

/// One privileged test at a time in a test binary.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when the test may run. Panics when not root, unless the opt-out
/// variable is set, in which case it says why it skips.
pub fn privileged() -> bool {
    if std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: {SKIP_VAR}=1 is set");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads BPF programs and creates network namespaces: run it as root, \
         or set {SKIP_VAR}=1 to skip it deliberately"
    );
    true
}

pub fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop (even when the test fails).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("ew-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; panics on failure.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run(&full)
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets it
    /// creates live in the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Like [`Netns::enter`] without waiting: the thread runs on.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            enter_netns(&path);
            f()
        })
    }

    /// A counter of /proc/net/snmp (e.g. "Tcp", "ActiveOpens") in this namespace.
    pub fn snmp(&self, group: &str, field: &str) -> u64 {
        let (group, field) = (group.to_string(), field.to_string());
        self.enter(move || snmp_counter(&group, &field))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Joins two namespaces with a veth pair `a_if` (in `a`, address `a_ip`)
/// and `b_if` (in `b`, address `b_ip`), both /24, up.
pub fn veth_pair(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    run(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    a.exec(&["ip", "addr", "add", &format!("{a_ip}/24"), "dev", a_if]);
    b.exec(&["ip", "addr", "add", &format!("{b_ip}/24"), "dev", b_if]);
    a.exec(&["ip", "link", "set", a_if, "up"]);
    b.exec(&["ip", "link", "set", b_if, "up"]);
}

/// A private /24 for this test process, used only inside its namespaces:
/// 10.x.y.0 with x.y taken from the pid, so parallel runs don't collide.
pub fn test_subnet(salt: u8) -> String {
    let pid = std::process::id();
    format!(
        "10.{}.{}",
        100 + (pid % 100) as u8 + salt,
        (pid / 100 % 250) as u8
    )
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: valid fd; setns only affects the calling thread for CLONE_NEWNET.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Sets the calling thread's name (the `comm` BPF programs see).
pub fn set_thread_comm(name: &str) {
    assert!(name.len() < 16, "comm is at most 15 bytes");
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    assert_eq!(rc, 0);
}

/// Reads `group: field` from the calling thread's /proc/net/snmp.
pub fn snmp_counter(group: &str, field: &str) -> u64 {
    // Tcp, Ip, ... live in snmp; TcpExt and IpExt in netstat.
    let file = if group.ends_with("Ext") {
        "netstat"
    } else {
        "snmp"
    };
    let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap();
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let values: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == field)
        .unwrap_or_else(|| panic!("no {group}:{field}"));
    values[i].parse().unwrap()
}

/// A running edgewatch, killed on drop.
pub struct Edgewatch {
    child: Child,
    pub addr: SocketAddr,
    /// Network namespace edgewatch runs in, if not the host's.
    pub netns: Option<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_edgewatch")
}

impl Edgewatch {
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(None, args)
    }

    /// Runs another edgewatch binary (a build of a modified copy, or an
    /// older build for a before/after benchmark).
    pub fn start_binary(binary: &str, args: &[&str]) -> Self {
        Self::spawn_cmd(None, vec![binary.to_string()], args)
    }

    /// Runs edgewatch with these environment variables set.
    pub fn start_env(env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::spawn_env(None, vec![binary().to_string()], env, args)
    }

    /// [`Edgewatch::start_binary`] inside `ns`.
    pub fn start_binary_in(ns: &Netns, binary: &str, args: &[&str]) -> Self {
        let prefix = ["ip", "netns", "exec", &ns.name, binary].map(String::from);
        Self::spawn_cmd(Some(ns.name.clone()), prefix.to_vec(), args)
    }

    /// Runs edgewatch inside `ns` (`ip netns exec`), e.g. to attach XDP to
    /// an interface local to it.
    pub fn start_in(ns: &Netns, args: &[&str]) -> Self {
        Self::spawn(Some(ns.name.clone()), args)
    }

    /// Runs edgewatch through a shell snippet that prepares its environment
    /// first (e.g. in a private mount namespace): `setup` runs, then
    /// edgewatch is exec'd with `args`.
    pub fn start_after(wrapper: &[&str], setup: &str, args: &[&str]) -> Self {
        let mut full: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        full.extend(
            [
                "sh",
                "-c",
                &format!("{setup} && exec \"$0\" \"$@\""),
                binary(),
            ]
            .map(String::from),
        );
        Self::spawn_cmd(None, full, args)
    }

    fn spawn(netns: Option<String>, args: &[&str]) -> Self {
        let prefix = match &netns {
            Some(ns) => vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                ns.clone(),
                binary().into(),
            ],
            None => vec![binary().to_string()],
        };
        Self::spawn_cmd(netns, prefix, args)
    }

    fn spawn_cmd(netns: Option<String>, prefix: Vec<String>, args: &[&str]) -> Self {
        Self::spawn_env(netns, prefix, &[], args)
    }

    fn spawn_env(
        netns: Option<String>,
        prefix: Vec<String>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let mut cmd = Command::new(&prefix[0]);
        // The test's own OTEL_* variables would configure OTLP push.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        cmd.args(&prefix[1..]);
        cmd.args(["--web.listen-address", "127.0.0.1:0", "--log.level", "info"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning edgewatch");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("address=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                eprintln!("[edgewatch] {line}");
                log2.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "edgewatch did not start listening (exit {status:?}):\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Self {
            child,
            addr,
            netns,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET a path, returning the body.
    pub fn get(&self, path: &str) -> String {
        let addr = self.addr;
        let path = path.to_string();
        let fetch = move || http_get(addr, &path);
        match &self.netns {
            Some(ns) => {
                let p = format!("/run/netns/{ns}");
                thread::spawn(move || {
                    enter_netns(&p);
                    fetch()
                })
                .join()
                .unwrap()
            }
            None => fetch(),
        }
    }

    pub fn scrape(&self) -> Metrics {
        Metrics::parse(&self.get("/metrics"))
    }

    /// Sends a signal and waits for exit; returns the exit code.
    pub fn signal_and_wait(&mut self, sig: i32) -> Option<i32> {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "edgewatch did not exit after signal {sig}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Edgewatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to edgewatch");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// A parsed Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (metric name, labels, value)
    pub samples: Vec<(String, HashMap<String, String>, f64)>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, HashMap::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Self {
            samples,
            text: text.to_string(),
        }
    }

    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Like [`Metrics::sum`], as an integer (counters).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.sum(name, labels) as u64
    }

    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// A benchmark's `--name N` argument, or `default`.
pub fn bench_arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A path in the repository.
pub fn repo(path: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Runs promtool with `args`; panics with its complaints.
pub fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).output().expect(
        "promtool not found: install the Debian package prometheus (scripts/quickstart does)",
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool check metrics` on an exposition; panics with its complaints.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool not found: install the Debian package prometheus (scripts/quickstart does)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python of `.venv`, where `scripts/quickstart install` puts the
/// Python tools the tests use (scripts/python-requirements.txt).
pub fn python() -> std::path::PathBuf {
    let py = repo(".venv/bin/python3");
    assert!(
        py.exists(),
        "{} not found: run scripts/quickstart install (it installs scripts/python-requirements.txt into .venv)",
        py.display()
    );
    py
}

/// The capability set edgewatch is documented to start with: the
/// `CAP_*` rows of README.md's capability table (between the
/// `capabilities: start/end` markers). The systemd unit, the DaemonSet
/// and the least-privilege test all take it from there.
pub fn documented_capabilities() -> Vec<String> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let start = readme
        .find("<!-- capabilities: start -->")
        .expect("README.md has the capability table markers");
    let end = readme[start..]
        .find("<!-- capabilities: end -->")
        .expect("end marker")
        + start;
    readme[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `CAP_"))
        .map(|rest| format!("CAP_{}", rest.split('`').next().unwrap()))
        .collect()
}
