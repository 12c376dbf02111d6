//! The kernel's names for what records carry as numbers: map and program
//! types, TCP states, address families, and process names. Label values
//! are these names, lower case.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

/// The kernel's name of a map type (enum bpf_map_type, include/uapi/linux/bpf.h),
/// lower case, without its `BPF_MAP_TYPE_` prefix.
pub fn map_type_name(t: u32) -> &'static str {
    const NAMES: &[&str] = &[
        "unspec",
        "hash",
        "array",
        "prog_array",
        "perf_event_array",
        "percpu_hash",
        "percpu_array",
        "stack_trace",
        "cgroup_array",
        "lru_hash",
        "lru_percpu_hash",
        "lpm_trie",
        "array_of_maps",
        "hash_of_maps",
        "devmap",
        "sockmap",
        "cpumap",
        "xskmap",
        "sockhash",
        "cgroup_storage",
        "reuseport_sockarray",
        "percpu_cgroup_storage",
        "queue",
        "stack",
        "sk_storage",
        "devmap_hash",
        "struct_ops",
        "ringbuf",
        "inode_storage",
        "task_storage",
        "bloom_filter",
        "user_ringbuf",
        "cgrp_storage",
        "arena",
        "insn_array",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

/// The kernel's name of a program type (enum bpf_prog_type), likewise.
pub fn prog_type_name(t: u32) -> &'static str {
    const NAMES: &[&str] = &[
        "unspec",
        "socket_filter",
        "kprobe",
        "sched_cls",
        "sched_act",
        "tracepoint",
        "xdp",
        "perf_event",
        "cgroup_skb",
        "cgroup_sock",
        "lwt_in",
        "lwt_out",
        "lwt_xmit",
        "sock_ops",
        "sk_skb",
        "cgroup_device",
        "sk_msg",
        "raw_tracepoint",
        "cgroup_sock_addr",
        "lwt_seg6local",
        "lirc_mode2",
        "sk_reuseport",
        "flow_dissector",
        "cgroup_sysctl",
        "raw_tracepoint_writable",
        "cgroup_sockopt",
        "tracing",
        "struct_ops",
        "ext",
        "lsm",
        "sk_lookup",
        "syscall",
        "netfilter",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

/// TCP state names (include/net/tcp_states.h), lower case.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        12 => "new_syn_recv",
        13 => "bound_inactive",
        _ => "other",
    }
}

/// Address family label values.
pub fn family_name(family: u16) -> &'static str {
    match i32::from(family) {
        libc::AF_INET => "ipv4",
        libc::AF_INET6 => "ipv6",
        libc::AF_UNIX => "unix",
        _ => "other",
    }
}

/// An address as records carry it (IPv4 in the first 4 bytes), if the
/// family is an IP one.
pub fn ip_addr(family: u16, addr: &[u8; 16]) -> Option<IpAddr> {
    match i32::from(family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*addr))),
        _ => None,
    }
}

/// A fixed-size, NUL-padded kernel name (task comm, map name) as a label
/// value (lossy UTF-8, shared).
pub fn name_label(name: &[u8; edgewatch_common::COMM_LEN]) -> Arc<str> {
    Arc::from(String::from_utf8_lossy(edgewatch_common::comm_str(name)).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert_eq!(map_type_name(1), "hash");
        assert_eq!(map_type_name(6), "percpu_array");
        assert_eq!(map_type_name(9), "lru_hash");
        assert_eq!(map_type_name(11), "lpm_trie");
        assert_eq!(map_type_name(27), "ringbuf");
        assert_eq!(map_type_name(999), "unknown");
        assert_eq!(prog_type_name(6), "xdp");
        assert_eq!(prog_type_name(26), "tracing");
    }

    #[test]
    fn state_names() {
        assert_eq!(tcp_state_name(1), "established");
        assert_eq!(tcp_state_name(2), "syn_sent");
        assert_eq!(tcp_state_name(3), "syn_recv");
        assert_eq!(tcp_state_name(12), "new_syn_recv");
        assert_eq!(tcp_state_name(0), "other");
        assert_eq!(tcp_state_name(200), "other");
    }

    #[test]
    fn addresses() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(ip_addr(2, &a).unwrap().to_string(), "10.0.0.1");
        assert_eq!(
            ip_addr(10, &Ipv6Addr::LOCALHOST.octets())
                .unwrap()
                .to_string(),
            "::1"
        );
        assert_eq!(ip_addr(1, &a), None);
        assert_eq!(family_name(1), "unix");
        assert_eq!(family_name(99), "other");
    }
}
