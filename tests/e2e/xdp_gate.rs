//! End to end, as root: the XDP blocklist's pre-filter is exact. edgewatch
//! runs in a network namespace with its datapath on that namespace's
//! loopback and a blocklist file of mixed prefix lengths (IPv4 and IPv6,
//! shorter and longer than the pre-filter's blocks); the test runs frames
//! from addresses at and around every prefix's edges, and random ones,
//! through the very program edgewatch attached (BPF_PROG_TEST_RUN on its
//! id), and compares each verdict with the prefix set's: no false drop, no
//! missed drop. Then a SIGHUP reload with a changed file, and the same
//! again. The drop counter must equal the drops the test caused.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use crate::common::{
    Edgewatch, Netns,
    bpf::{prog_fd_by_id, prog_id_of, test_run_frame},
    frames::{ether, ipv4, ipv6},
    poll, privileged, serial,
};
use ipnet::IpNet;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn list_v1() -> Vec<IpNet> {
    let mut v: Vec<String> = (0..600u32)
        .map(|i| format!("198.18.{}.{}/32", i % 256, i / 256 * 64))
        .collect();
    v.extend((0..256u32).map(|i| format!("198.19.{i}.0/24")));
    v.extend((0..144u32).map(|i| format!("198.20.{i}.0/24")));
    v.extend(
        [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.0.2.0/24",
            "192.0.2.128/25",
            "203.0.113.7/32",
            "203.0.113.64/26",
            "100.64.0.0/10",
            "2001:db8::/32",
            "2001:db8:ffff::/48",
            "fd00::1/128",
            "2000::/4",
        ]
        .map(String::from),
    );
    v.iter().map(|s| s.parse().unwrap()).collect()
}

/// v1 without the /8, the IPv6 /4 and the odd 198.19.x.0/24s, plus a /16
/// and a /31.
fn list_v2() -> Vec<IpNet> {
    let mut v: Vec<IpNet> = list_v1()
        .into_iter()
        .filter(|n| {
            let s = n.to_string();
            let odd_24 = s.starts_with("198.19.")
                && s.split('.').nth(2).unwrap().parse::<u32>().unwrap() % 2 == 1;
            s != "10.0.0.0/8" && s != "2000::/4" && !odd_24
        })
        .collect();
    v.push("10.20.0.0/16".parse().unwrap());
    v.push("203.0.113.200/31".parse().unwrap());
    v
}

fn write_list(path: &std::path::Path, nets: &[IpNet]) {
    let mut f = std::fs::File::create(path).unwrap();
    for n in nets {
        writeln!(f, "{n}").unwrap();
    }
}

/// Addresses at and around the edges of every prefix, plus random ones.
fn probes(nets: &[IpNet]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for n in nets {
        for a in [n.network(), n.broadcast()] {
            match a {
                IpAddr::V4(x) => {
                    let x = u32::from(x);
                    for d in [0u32, 1, 255, 256] {
                        out.push(IpAddr::V4(x.wrapping_add(d).into()));
                        out.push(IpAddr::V4(x.wrapping_sub(d).into()));
                    }
                }
                IpAddr::V6(x) => {
                    let x = u128::from(x);
                    for d in [0u128, 1, 1 << 64, 1 << 112] {
                        out.push(IpAddr::V6(x.wrapping_add(d).into()));
                        out.push(IpAddr::V6(x.wrapping_sub(d).into()));
                    }
                }
            }
        }
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(IpAddr::V4(Ipv4Addr::from(x as u32)));
        out.push(IpAddr::V6(Ipv6Addr::from(
            u128::from(x) << 64 | u128::from(x.rotate_left(29)),
        )));
    }
    out.sort();
    out.dedup();
    out
}

fn frame(src: IpAddr) -> Vec<u8> {
    match src {
        IpAddr::V4(a) => ether(&[], 0x0800, &ipv4(a.octets(), 17, 30)),
        IpAddr::V6(a) => ether(&[], 0x86dd, &ipv6(a.octets(), 17, 16)),
    }
}

/// Runs every probe through the program and checks it against `nets`;
/// returns how many it dropped.
fn check(ns: &Netns, prog_id: u32, nets: &[IpNet]) -> u64 {
    let nets = nets.to_vec();
    ns.enter(move || {
        let fd = prog_fd_by_id(prog_id);
        let mut drops = 0;
        let all = probes(&nets);
        for a in &all {
            let want = if nets.iter().any(|n| n.contains(a)) {
                XDP_DROP
            } else {
                XDP_PASS
            };
            let (got, _) = test_run_frame(fd.0, &frame(*a), 1);
            assert_eq!(got, want, "{a}: got {got}, want {want}");
            drops += u64::from(got == XDP_DROP);
        }
        eprintln!("{} addresses, {drops} dropped", all.len());
        assert!(drops > 0 && drops < all.len() as u64);
        drops
    })
}

#[test]
fn the_pre_filter_drops_exactly_what_the_blocklist_holds() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("gate");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocklist.txt");
    write_list(&path, &list_v1());
    let ew = Edgewatch::start_in(
        &ns,
        &[
            "--probes",
            "connect",
            "--xdp.interface",
            "lo",
            "--xdp.mode",
            "skb",
            "--xdp.blocklist-file",
            path.to_str().unwrap(),
        ],
    );
    let prog = prog_id_of(ew.pid(), "ew_xdp");
    let drops = |ew: &Edgewatch| {
        ew.scrape()
            .count("edgewatch_xdp_packets_total", &[("action", "drop")])
    };
    let d1 = check(&ns, prog, &list_v1());
    assert_eq!(drops(&ew), d1, "drop counter");

    write_list(&path, &list_v2());
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(ew.pid() as i32, libc::SIGHUP) };
    let reloaded = |ew: &Edgewatch| {
        ew.scrape()
            .count("edgewatch_xdp_blocklist_reloads_total", &[("result", "ok")])
            == 1
    };
    assert!(
        poll(Duration::from_secs(10), || reloaded(&ew).then_some(())).is_some(),
        "no reload"
    );
    let d2 = check(&ns, prog, &list_v2());
    assert_eq!(drops(&ew), d1 + d2, "drop counter after the reload");
}
