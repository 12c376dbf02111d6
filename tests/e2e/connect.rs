//! End to end, as root, against the real binary and this kernel: exact
//! connect() and handshake counts for a known workload in a network
//! namespace the test creates, checked against the kernel's TcpActiveOpens.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::Arc,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use crate::common::{
    Edgewatch, Netns,
    bpf::held_prog_id,
    kernel::{kernel, links_to_test},
    poll, privileged, serial, set_thread_comm,
};
use socket2::{Domain, Socket, Type};

const N_BLOCKING: u64 = 25;
const M_NONBLOCKING: u64 = 15;
const K_REFUSED: u64 = 10;
const V6_BLOCKING: u64 = 5;
const UNIX_CONNECTS: u64 = 3;

/// Waits until a non-blocking connect finishes; returns SO_ERROR.
fn wait_connected(sock: &Socket) -> i32 {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(rc, 1, "non-blocking connect did not finish");
    sock.take_error()
        .unwrap()
        .and_then(|e| e.raw_os_error())
        .unwrap_or(0)
}

/// The workload, on a thread inside the namespace named `comm`.
fn workload(comm: &str) {
    set_thread_comm(comm);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    listener.set_nonblocking(true).unwrap();
    let acceptor = thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });

    for _ in 0..N_BLOCKING {
        TcpStream::connect(addr).expect("blocking connect");
    }
    for _ in 0..M_NONBLOCKING {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let err = s
            .connect(&addr.into())
            .expect_err("non-blocking connect returns EINPROGRESS");
        assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS), "{err}");
        assert_eq!(wait_connected(&s), 0);
    }
    // Port 1 in a fresh namespace: nothing listens, the kernel answers RST.
    let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    for _ in 0..K_REFUSED {
        let err = TcpStream::connect(closed).expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    }
    stop.store(true, Ordering::Relaxed);
    acceptor.join().unwrap();

    // IPv6 over ::1 (the listener's backlog holds them; nobody accepts).
    let l6 = TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).unwrap();
    for _ in 0..V6_BLOCKING {
        TcpStream::connect(l6.local_addr().unwrap()).expect("ipv6 connect");
    }
    // AF_UNIX: counted as calls, never as TCP handshakes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let _ul = std::os::unix::net::UnixListener::bind(&path).unwrap();
    for _ in 0..UNIX_CONNECTS {
        std::os::unix::net::UnixStream::connect(&path).expect("unix connect");
    }
}

/// The handshake hook on every link of its chain this kernel takes
/// (tp_btf, then the classic tracepoint): the default lands on the first
/// one, `--attach.disable` on the next, and each counts exactly.
#[test]
fn exact_connect_counts_agree_with_the_kernel_on_every_link() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let chain = kernel().connect_chain();
    for (i, (link, args)) in links_to_test("connect", &chain).into_iter().enumerate() {
        eprintln!("connect: link {} with {args:?}", link.mode);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The exit-only program on task_btf links, the pair on the others.
        let (held, not) = if link.task_btf {
            ("ew_connect_ret", "ew_connect_enter")
        } else {
            ("ew_connect_enter", "ew_connect_ret")
        };
        exact_counts(&args, link.mode, &format!("conn{i}"), held, not);
    }
}

fn exact_counts(extra: &[&str], mode: &str, tag: &str, held: &str, not: &str) {
    let ns = Netns::new(tag);
    let mut args = vec!["--probes", "connect", "--metrics.labels=comm"];
    args.extend_from_slice(extra);
    let ew = Edgewatch::start(&args);
    assert!(
        held_prog_id(ew.pid(), held).is_some(),
        "{extra:?}: {held} not loaded"
    );
    assert!(
        held_prog_id(ew.pid(), not).is_none(),
        "{extra:?}: {not} loaded"
    );
    let comm = format!("ew{tag}{}", std::process::id() % 100_000);

    let opens_before = ns.snmp("Tcp", "ActiveOpens");
    let c = comm.clone();
    ns.enter(move || workload(&c));
    let opens = ns.snmp("Tcp", "ActiveOpens") - opens_before;

    let want_calls = N_BLOCKING + M_NONBLOCKING + K_REFUSED + V6_BLOCKING + UNIX_CONNECTS;
    let want_tcp = N_BLOCKING + M_NONBLOCKING + K_REFUSED + V6_BLOCKING;
    let m = poll(Duration::from_secs(10), || {
        let m = ew.scrape();
        let calls = m.count("edgewatch_connect_calls_total", &[("comm", &comm)]);
        let conns = m.count("edgewatch_tcp_connects_total", &[("comm", &comm)]);
        (calls >= want_calls && conns >= want_tcp).then_some(m)
    })
    .unwrap_or_else(|| ew.scrape());

    let calls = |result: &str| {
        m.count(
            "edgewatch_connect_calls_total",
            &[("family", "ipv4"), ("result", result), ("comm", &comm)],
        )
    };
    let conns = |outcome: &str| {
        m.count(
            "edgewatch_tcp_connects_total",
            &[("family", "ipv4"), ("outcome", outcome), ("comm", &comm)],
        )
    };
    assert_eq!(calls("ok"), N_BLOCKING, "{}", m.text);
    assert_eq!(calls("einprogress"), M_NONBLOCKING);
    assert_eq!(calls("econnrefused"), K_REFUSED);
    assert_eq!(
        m.count("edgewatch_connect_calls_total", &[("comm", &comm)]),
        want_calls
    );

    assert_eq!(conns("established"), N_BLOCKING + M_NONBLOCKING);
    assert_eq!(conns("refused"), K_REFUSED);
    assert_eq!(
        m.count(
            "edgewatch_tcp_connects_total",
            &[
                ("family", "ipv6"),
                ("outcome", "established"),
                ("comm", &comm)
            ]
        ),
        V6_BLOCKING
    );
    let attempts = m.count("edgewatch_tcp_connects_total", &[("comm", &comm)]);
    assert_eq!(attempts, want_tcp);
    assert_eq!(
        m.count(
            "edgewatch_tcp_connect_duration_seconds_count",
            &[
                ("family", "ipv4"),
                ("outcome", "established"),
                ("comm", &comm)
            ]
        ),
        N_BLOCKING + M_NONBLOCKING
    );
    assert_eq!(
        m.count(
            "edgewatch_tcp_connect_duration_seconds_bucket",
            &[
                ("family", "ipv4"),
                ("outcome", "established"),
                ("comm", &comm),
                ("le", "+Inf")
            ]
        ),
        N_BLOCKING + M_NONBLOCKING
    );

    // The kernel's own count of active opens in the namespace.
    assert_eq!(opens, attempts, "TcpActiveOpens delta vs edgewatch");

    assert_eq!(
        m.count(
            "edgewatch_probe_attached",
            &[("probe", "connect"), ("mode", mode)]
        ),
        1
    );
    assert_eq!(
        m.count(
            "edgewatch_ringbuf_lost_events_total",
            &[("probe", "connect")]
        ),
        0
    );
    assert_eq!(m.count("edgewatch_decode_errors_total", &[]), 0);
    crate::common::promtool_check(&m.text);
}

#[test]
fn peer_labels_and_series_cap() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("peer");
    // A cap of 2 label sets: three distinct closed ports fold the third.
    let ew = Edgewatch::start(&[
        "--probes",
        "connect",
        "--metrics.labels=comm,peer",
        "--metrics.series-limit=2",
    ]);
    let comm = format!("ewpeer{}", std::process::id() % 100_000);
    let c = comm.clone();
    ns.enter(move || {
        set_thread_comm(&c);
        for port in [1u16, 2, 3] {
            let err = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect_err("refused");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        }
    });
    let m = poll(Duration::from_secs(10), || {
        let m = ew.scrape();
        (m.count(
            "edgewatch_tcp_connects_total",
            &[("outcome", "refused"), ("comm", &comm)],
        ) >= 2)
            .then_some(m)
    })
    .expect("refused connects counted");
    let series = |port: &str| {
        m.count(
            "edgewatch_tcp_connects_total",
            &[
                ("outcome", "refused"),
                ("comm", &comm),
                ("peer", "127.0.0.1"),
                ("port", port),
            ],
        )
    };
    assert_eq!(series("1"), 1, "{}", m.text);
    assert_eq!(series("2"), 1);
    assert_eq!(series("3"), 0);
    assert_eq!(
        m.count(
            "edgewatch_tcp_connects_total",
            &[
                ("outcome", "refused"),
                ("comm", "_overflow"),
                ("peer", "_overflow"),
                ("port", "_overflow")
            ]
        ),
        1
    );
    assert!(
        m.count(
            "edgewatch_series_dropped_total",
            &[("metric", "edgewatch_tcp_connects_total")]
        ) >= 1
    );
}

#[test]
fn config_check_reports_attach_modes() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let out = std::process::Command::new(crate::common::binary())
        .args(["--config.check", "--probes", "connect"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = kernel().connect_mode();
    assert!(
        stdout.contains(&format!("connect: attached ({mode})")),
        "{stdout}"
    );
}

#[test]
fn sigterm_detaches_and_exits_zero() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let mut ew = Edgewatch::start(&["--probes", "connect"]);
    // The programs edgewatch holds open (its fds' prog_id), not other
    // engineers' programs on the same kernel.
    let id_before: Vec<u64> = crate::common::bench::prog_ids_of(ew.pid())
        .into_iter()
        .map(u64::from)
        .collect();
    assert!(!id_before.is_empty(), "no program loaded by edgewatch");
    assert_eq!(ew.signal_and_wait(libc::SIGTERM), Some(0));
    // The kernel frees a program after an RCU grace period once its last
    // fd and link are gone: allow it a moment.
    let still = || {
        let loaded = all_prog_ids();
        let ids: Vec<u64> = id_before
            .iter()
            .copied()
            .filter(|id| loaded.contains(id))
            .collect();
        ids
    };
    let remaining = poll(Duration::from_secs(10), || {
        Some(still()).filter(Vec::is_empty)
    })
    .unwrap_or_else(still);
    assert!(
        remaining.is_empty(),
        "programs still loaded after exit: {remaining:?}"
    );
}

/// Every BPF program on the host.
fn progs() -> Vec<u64> {
    let out = crate::common::run(&["bpftool", "-j", "prog", "show"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

fn all_prog_ids() -> Vec<u64> {
    progs()
}

/// A ring too small for the workload: the kernel counts every record it
/// could not reserve, and what was counted plus what was lost covers
/// everything the workload caused. Nothing disappears silently.
#[test]
fn a_full_ring_buffer_counts_its_losses() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("lost");
    // 4 KiB ring, a wake-up only when it is full, no timer drain before
    // the scrape: the ring fills after a few dozen records.
    let ew = Edgewatch::start(&[
        "--probes",
        "connect",
        "--metrics.labels=comm",
        "--ringbuf.size-bytes=4096",
        "--ringbuf.wakeup-bytes=4096",
        "--ringbuf.flush-interval-ms=60000",
    ]);
    let before = ew.scrape();
    let lost_before = before.count(
        "edgewatch_ringbuf_lost_events_total",
        &[("probe", "connect")],
    );
    let events_before = before.count("edgewatch_ringbuf_events_total", &[("probe", "connect")]);
    let comm = format!("ewlost{}", std::process::id() % 100_000);
    const REFUSED: u64 = 200;
    let c = comm.clone();
    ns.enter(move || {
        set_thread_comm(&c);
        for _ in 0..REFUSED {
            let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, 1)).expect_err("refused");
        }
    });
    let m = ew.scrape();
    let lost = m.count(
        "edgewatch_ringbuf_lost_events_total",
        &[("probe", "connect")],
    ) - lost_before;
    let events = m.count("edgewatch_ringbuf_events_total", &[("probe", "connect")]) - events_before;
    let ours = m.count("edgewatch_connect_calls_total", &[("comm", &comm)])
        + m.count("edgewatch_tcp_connects_total", &[("comm", &comm)]);
    // Each refused connect makes two records: the call and the handshake.
    assert!(lost > 0, "a 4 KiB ring cannot hold {} records", 2 * REFUSED);
    assert!(ours < 2 * REFUSED, "{ours}");
    assert!(
        events + lost >= 2 * REFUSED,
        "events {events} + lost {lost} < {}",
        2 * REFUSED
    );
}
