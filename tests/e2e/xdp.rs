//! End to end, as root: the XDP datapath's exact per-protocol packet and
//! byte counts in driver and skb modes, checked against the interface's own
//! counters; the blocklist and its SIGHUP reloads; and nothing left attached
//! after SIGKILL.
//!
//! Two network namespaces joined by a veth pair; edgewatch runs inside the
//! receiving one (`ip netns exec`) so the XDP interface is local to it.
//! IPv6 is disabled and ARP entries are static, so the only frames on the
//! link are the test's own.

use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use crate::common::{Edgewatch, Metrics, Netns, poll, privileged, run, serial, test_subnet};

const PORT: u16 = 7777;
const UDP_SIZES: [usize; 6] = [1, 100, 200, 500, 1000, 1400];
const PINGS: u64 = 4;
const PING_PAYLOAD: usize = 56;
/// Ethernet + IPv4 + UDP/ICMP headers.
const L2_L3_L4: usize = 14 + 20 + 8;

struct Link {
    a: Netns,
    b: Netns,
    a_ip: String,
    b_ip: String,
}

fn setup(tag: &str, salt: u8) -> Link {
    let a = Netns::new(&format!("x{tag}a"));
    let b = Netns::new(&format!("x{tag}b"));
    let net = test_subnet(salt);
    let (a_ip, b_ip) = (format!("{net}.1"), format!("{net}.2"));
    run(&[
        "ip", "link", "add", "ewx0", "netns", &a.name, "type", "veth", "peer", "name", "ewx1",
        "netns", &b.name,
    ]);
    for (ns, dev, ip) in [(&a, "ewx0", &a_ip), (&b, "ewx1", &b_ip)] {
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
        ]);
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", dev]);
    }
    let mac = |ns: &Netns, dev: &str| {
        let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (a_mac, b_mac) = (mac(&a, "ewx0"), mac(&b, "ewx1"));
    a.exec(&[
        "ip",
        "neigh",
        "add",
        &b_ip,
        "lladdr",
        &b_mac,
        "dev",
        "ewx0",
        "nud",
        "permanent",
    ]);
    b.exec(&[
        "ip",
        "neigh",
        "add",
        &a_ip,
        "lladdr",
        &a_mac,
        "dev",
        "ewx1",
        "nud",
        "permanent",
    ]);
    a.exec(&["ip", "link", "set", "ewx0", "up"]);
    b.exec(&["ip", "link", "set", "ewx1", "up"]);
    Link { a, b, a_ip, b_ip }
}

impl Link {
    /// (rx_packets, rx_bytes) of the receiving interface.
    fn rx(&self) -> (u64, u64) {
        let read = |f: &str| {
            let out = self
                .b
                .exec(&["cat", &format!("/sys/class/net/ewx1/statistics/{f}")]);
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        (read("rx_packets"), read("rx_bytes"))
    }

    fn receiver(&self) -> UdpSocket {
        let b_ip = self.b_ip.clone();
        let s = self
            .b
            .enter(move || UdpSocket::bind((b_ip.as_str(), PORT)).unwrap());
        s.set_nonblocking(true).unwrap();
        s
    }

    /// Sends one datagram of each size in `sizes`; returns the frame bytes.
    fn send_udp(&self, sizes: &[usize]) -> u64 {
        let b_ip = self.b_ip.clone();
        let sizes = sizes.to_vec();
        self.a.enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut bytes = 0;
            for n in sizes {
                assert_eq!(
                    s.send_to(&vec![0x42u8; n], (b_ip.as_str(), PORT)).unwrap(),
                    n
                );
                bytes += (L2_L3_L4 + n) as u64;
            }
            bytes
        })
    }

    fn ping(&self) {
        self.a.exec(&[
            "ping",
            "-q",
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            "-s",
            &PING_PAYLOAD.to_string(),
            &self.b_ip,
        ]);
    }

    fn tcp_exchange(&self) {
        let b_ip = self.b_ip.clone();
        let listener = self
            .b
            .enter(move || TcpListener::bind((b_ip.as_str(), PORT)).unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"world").unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
        });
        let b_ip = self.b_ip.clone();
        self.a.enter(move || {
            let mut s = TcpStream::connect((b_ip.as_str(), PORT)).unwrap();
            s.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"world");
        });
        server.join().unwrap();
    }
}

fn xdp(m: &Metrics, what: &str, action: &str, proto: &str) -> u64 {
    m.count(
        &format!("edgewatch_xdp_{what}_total"),
        &[("interface", "ewx1"), ("action", action), ("proto", proto)],
    )
}

fn total(m: &Metrics, what: &str) -> u64 {
    m.count(
        &format!("edgewatch_xdp_{what}_total"),
        &[("interface", "ewx1")],
    )
}

fn drain(s: &UdpSocket) -> u64 {
    let mut n = 0;
    let mut buf = [0u8; 2048];
    loop {
        match s.recv(&mut buf) {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn reload(ew: &Edgewatch, result: &str, want: u64) -> Metrics {
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(ew.pid() as i32, libc::SIGHUP) };
    poll(Duration::from_secs(10), || {
        let m = ew.scrape();
        (m.count(
            "edgewatch_xdp_blocklist_reloads_total",
            &[("result", result)],
        ) == want)
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("no {result} reload #{want}"))
}

fn scenario(mode: &str, salt: u8) {
    let link = setup(&mode[..1], salt);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocklist");
    std::fs::write(&list, "# nothing blocked yet\n").unwrap();
    let mut ew = Edgewatch::start_in(
        &link.b,
        &[
            // The map probe shows the blocklist's own map writes.
            "--probes=map",
            "--xdp.interface",
            "ewx1",
            "--xdp.mode",
            mode,
            "--xdp.blocklist-file",
            list.to_str().unwrap(),
        ],
    );
    let m0 = ew.scrape();
    assert_eq!(
        m0.count(
            "edgewatch_xdp_attached",
            &[("interface", "ewx1"), ("mode", mode)]
        ),
        1
    );
    assert_eq!(total(&m0, "packets"), 0, "{}", m0.text);
    let rx0 = link.rx();
    let receiver = link.receiver();

    // Exact counts per protocol, against the interface's own counters.
    let udp_bytes = link.send_udp(&UDP_SIZES);
    link.ping();
    link.tcp_exchange();
    let n = UDP_SIZES.len() as u64;
    // The scrape and the interface counters are read together; a frame
    // landing between the two reads (the TCP close's last ACK) fails the
    // condition and the pair is read again.
    let (m, rx) = poll(Duration::from_secs(10), || {
        let m = ew.scrape();
        let rx = link.rx();
        (xdp(&m, "packets", "pass", "udp") == n && total(&m, "packets") == rx.0 - rx0.0)
            .then_some((m, rx))
    })
    .unwrap_or_else(|| (ew.scrape(), link.rx()));
    assert_eq!(xdp(&m, "packets", "pass", "udp"), n, "{mode}\n{}", m.text);
    assert_eq!(xdp(&m, "bytes", "pass", "udp"), udp_bytes);
    assert_eq!(xdp(&m, "packets", "pass", "icmp"), PINGS);
    assert_eq!(
        xdp(&m, "bytes", "pass", "icmp"),
        PINGS * (L2_L3_L4 + PING_PAYLOAD) as u64
    );
    let tcp = xdp(&m, "packets", "pass", "tcp");
    assert!(tcp >= 4, "a TCP exchange is at least 4 packets, saw {tcp}");
    assert_eq!(
        xdp(&m, "packets", "pass", "other"),
        0,
        "only the test's own frames\n{}",
        m.text
    );
    assert_eq!(xdp(&m, "packets", "pass", "icmpv6"), 0);
    assert_eq!(
        total(&m, "packets"),
        rx.0 - rx0.0,
        "{mode}: XDP packets vs rx_packets"
    );
    // XDP sees whole frames. veth's own rx_bytes includes the Ethernet
    // header in skb mode but not in driver mode, where it counts the skb
    // after eth_type_trans() pulled the header (drivers/net/veth.c,
    // veth_xdp_rcv_skb).
    let eth_not_counted = if mode == "driver" {
        14 * (rx.0 - rx0.0)
    } else {
        0
    };
    assert_eq!(
        total(&m, "bytes"),
        rx.1 - rx0.1 + eth_not_counted,
        "{mode}: XDP bytes vs rx_bytes"
    );
    assert_eq!(drain(&receiver), n);
    crate::common::promtool_check(&m.text);

    // Block the sender's address: exactly its packets count as drop, and
    // the receiver sees none of them.
    std::fs::write(&list, format!("{}/32\n", link.a_ip)).unwrap();
    let m = reload(&ew, "ok", 1);
    assert_eq!(
        m.count("edgewatch_xdp_blocklist_entries", &[("family", "ipv4")]),
        1
    );
    const BLOCKED: [usize; 3] = [10, 20, 30];
    let blocked_bytes = link.send_udp(&BLOCKED);
    let m = poll(Duration::from_secs(10), || {
        let m = ew.scrape();
        (xdp(&m, "packets", "drop", "udp") >= BLOCKED.len() as u64).then_some(m)
    })
    .expect("blocked packets counted");
    assert_eq!(xdp(&m, "packets", "drop", "udp"), BLOCKED.len() as u64);
    assert_eq!(xdp(&m, "bytes", "drop", "udp"), blocked_bytes);
    assert_eq!(
        xdp(&m, "packets", "pass", "udp"),
        n,
        "counters did not reset"
    );
    assert_eq!(drain(&receiver), 0, "a blocked packet reached the receiver");

    // A malformed file is rejected whole; the running list stays.
    std::fs::write(&list, "192.0.2.0/24\nnot-a-prefix\n").unwrap();
    let m = reload(&ew, "error", 1);
    assert_eq!(
        m.count("edgewatch_xdp_blocklist_entries", &[("family", "ipv4")]),
        1
    );
    link.send_udp(&[40]);
    let m = poll(Duration::from_secs(10), || {
        let m = ew.scrape();
        (xdp(&m, "packets", "drop", "udp") == 4).then_some(m)
    })
    .expect("still blocked after a rejected reload");
    assert_eq!(xdp(&m, "packets", "pass", "udp"), n);

    // A changed list takes effect; nothing resets.
    std::fs::write(&list, "192.0.2.0/24\n2001:db8::/32\n").unwrap();
    let m = reload(&ew, "ok", 2);
    assert_eq!(
        m.count("edgewatch_xdp_blocklist_entries", &[("family", "ipv4")]),
        1
    );
    assert_eq!(
        m.count("edgewatch_xdp_blocklist_entries", &[("family", "ipv6")]),
        1
    );
    link.send_udp(&[50, 60]);
    let m = poll(Duration::from_secs(10), || {
        let m = ew.scrape();
        (xdp(&m, "packets", "pass", "udp") == n + 2).then_some(m)
    })
    .expect("unblocked packets pass");
    assert_eq!(xdp(&m, "packets", "drop", "udp"), 4);
    assert_eq!(drain(&receiver), 2);

    // Only the differences were written, and they show in the map probe's
    // metrics like any other writer's: one insert, then one delete and one
    // insert per family changed; the rejected file wrote nothing.
    let map_op = |metric: &str, map: &str| m.count(metric, &[("map_name", map), ("result", "ok")]);
    assert_eq!(
        map_op("edgewatch_bpf_map_updates_total", "ew_block_v4"),
        2,
        "{}",
        m.text
    );
    assert_eq!(map_op("edgewatch_bpf_map_deletes_total", "ew_block_v4"), 1);
    assert_eq!(map_op("edgewatch_bpf_map_updates_total", "ew_block_v6"), 1);

    // SIGKILL: the BPF link dies with the process; nothing stays attached.
    ew.signal_and_wait(libc::SIGKILL);
    let detached = poll(Duration::from_secs(5), || {
        let out = link.b.exec(&["ip", "link", "show", "dev", "ewx1"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (!text.contains("xdp")).then_some(())
    });
    let out = link.b.exec(&["ip", "link", "show", "dev", "ewx1"]);
    assert!(
        detached.is_some(),
        "XDP still attached after SIGKILL:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn driver_mode() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    scenario("driver", 3);
}

#[test]
fn skb_mode() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    scenario("skb", 4);
}

#[test]
fn unknown_interface_is_a_clear_error() {
    let out = std::process::Command::new(crate::common::binary())
        .args(["--xdp.interface", "ew-nosuch0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no network interface named \"ew-nosuch0\""),
        "{stderr}"
    );
}

/// The real program through BPF_PROG_TEST_RUN (which runs it as if received
/// on the namespace's loopback): VLAN tags, IPv6, ICMPv6, truncated frames
/// and the IPv6 blocklist, each counted under the right action and protocol.
#[test]
fn parses_vlan_ipv6_and_truncated_frames() {
    use crate::common::frames::{ether, ipv4, ipv6};
    use aya::{
        Ebpf,
        maps::{HashMap, MapData, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
        programs::{ProgramError, TestRun, TestRunOptions, Xdp},
    };

    if !privileged() {
        return;
    }
    let _serial = serial();
    let mut bpf = Ebpf::load(edgewatch_ebpf::xdp()).unwrap();
    let mut slots: HashMap<MapData, u32, u32> =
        HashMap::try_from(bpf.take_map("ew_xdp_ifslot").unwrap()).unwrap();
    slots.insert(1, 0, 0).unwrap(); // test_run frames arrive on loopback (ifindex 1)
    let mut v6: LpmTrie<MapData, [u8; 16], u8> =
        LpmTrie::try_from(bpf.take_map("ew_block_v6").unwrap()).unwrap();
    let mut blocked = [0u8; 16];
    blocked[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    v6.insert(&Key::new(32, blocked), 1, 0).unwrap();
    let stats: PerCpuArray<MapData, [u64; 2]> =
        PerCpuArray::try_from(bpf.take_map("ew_xdp_stats").unwrap()).unwrap();
    let prog: &mut Xdp = bpf.program_mut("ew_xdp").unwrap().try_into().unwrap();
    prog.load().unwrap();

    let run = |frame: &[u8]| -> Result<u32, ProgramError> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        prog.test_run(opts).map(|r| r.return_value)
    };
    let mut src6 = [0u8; 16];
    src6[0] = 0xfd;
    let udp_v4_vlan = ether(&[100], 0x0800, &ipv4([10, 99, 0, 1], 17, 30));
    let tcp_v4_qinq = ether(&[10, 20], 0x0800, &ipv4([10, 99, 0, 1], 6, 40));
    let icmp6 = ether(&[], 0x86dd, &ipv6(src6, 58, 16));
    let blocked6 = ether(&[], 0x86dd, &ipv6(blocked, 17, 16));
    let truncated = ether(&[], 0x0800, &[0x45, 0, 0]);
    let arp = ether(&[], 0x0806, &[0u8; 28]);
    let (xdp_pass, xdp_drop) = (2, 1);
    assert_eq!(run(&udp_v4_vlan).unwrap(), xdp_pass);
    assert_eq!(run(&tcp_v4_qinq).unwrap(), xdp_pass);
    assert_eq!(run(&icmp6).unwrap(), xdp_pass);
    assert_eq!(run(&blocked6).unwrap(), xdp_drop);
    assert_eq!(run(&truncated).unwrap(), xdp_pass);
    assert_eq!(run(&arp).unwrap(), xdp_pass);

    let cell = |action: u32, proto: u32| {
        let v = stats.get(&((action * 5) + proto), 0).unwrap();
        v.iter().fold((0u64, 0u64), |a, c| (a.0 + c[0], a.1 + c[1]))
    };
    let (tcp, udp, icmpv6, other) = (0, 1, 3, 4);
    assert_eq!(cell(xdp_pass, udp), (1, udp_v4_vlan.len() as u64));
    assert_eq!(cell(xdp_pass, tcp), (1, tcp_v4_qinq.len() as u64));
    assert_eq!(cell(xdp_pass, icmpv6), (1, icmp6.len() as u64));
    assert_eq!(cell(xdp_drop, udp), (1, blocked6.len() as u64));
    assert_eq!(
        cell(xdp_pass, other),
        (2, (truncated.len() + arp.len()) as u64)
    );
}
