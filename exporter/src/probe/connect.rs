//! connect probe: `syscalls:sys_enter_connect`/`sys_exit_connect` for every
//! connect() and `inet_sock_set_state` for every TCP handshake leaving
//! SYN_SENT (kernel 4.16+). BPF side: exporter-ebpf/src/probes/connect.bpf.c;
//! aggregation: aggregate/connect.rs.
//!
//! The syscall hooks are per-syscall tracepoints (they cost other syscalls
//! nothing): `sys_exit_connect` alone on 5.15+, which reads the address
//! from the caller's saved registers (`bpf_task_pt_regs`), else
//! `sys_enter_connect` too, with a hash between them. The handshake hook is `tp_btf/inet_sock_set_state` where the
//! kernel has BTF-enabled raw tracepoints (5.5+), which skips building the
//! classic tracepoint's record on every socket state change on the host;
//! otherwise the classic `sock:inet_sock_set_state`. The attach mode
//! reported is the handshake hook's.

use edgewatch_common::{ConnectCall, PROBE_CONNECT, TcpConnect};

use super::{
    AttachMode, Handler, Hook, Link, ProbeDef,
    fixture::{bytes, hdr, ipv4, name},
};
use crate::aggregate::connect::ConnectAggregator;

const ENTER: Hook = Hook::Tracepoint {
    program: "ew_connect_enter",
    category: "syscalls",
    name: "sys_enter_connect",
};
const EXIT: Hook = Hook::Tracepoint {
    program: "ew_connect_exit",
    category: "syscalls",
    name: "sys_exit_connect",
};
/// The exit alone (5.15+).
const RET: Hook = Hook::Tracepoint {
    program: "ew_connect_ret",
    category: "syscalls",
    name: "sys_exit_connect",
};
const STATE_BTF: Hook = Hook::TpBtf {
    program: "ew_sock_state_btf",
    event: "inet_sock_set_state",
};
const STATE_TP: Hook = Hook::Tracepoint {
    program: "ew_sock_state_tp",
    category: "sock",
    name: "inet_sock_set_state",
};

pub const PROBE: ProbeDef<ConnectAggregator> = ProbeDef {
    name: "connect",
    about: "every connect() and TCP handshake: results, outcomes, durations",
    id: PROBE_CONNECT,
    records: &[Handler::of::<ConnectCall>(), Handler::of::<TcpConnect>()],
    chain: &[
        Link {
            mode: AttachMode::TpBtf,
            hooks: &[RET, STATE_BTF],
            task_btf: true,
        },
        Link {
            mode: AttachMode::TpBtf,
            hooks: &[ENTER, EXIT, STATE_BTF],
            task_btf: false,
        },
        Link {
            mode: AttachMode::Tracepoint,
            hooks: &[RET, STATE_TP],
            task_btf: true,
        },
        Link {
            mode: AttachMode::Tracepoint,
            hooks: &[ENTER, EXIT, STATE_TP],
            task_btf: false,
        },
    ],
    aggregator: ConnectAggregator::register,
    collector: None,
    fixtures,
};

fn call(ret: i32, family: u16, comm: &str) -> Vec<u8> {
    bytes(&ConnectCall {
        hdr: hdr::<ConnectCall>(),
        cgroup_id: 0,
        tgid: 42,
        pid: 42,
        ret,
        family,
        _pad: 0,
        comm: name(comm),
    })
}

fn handshake(newstate: u16, sk_err: i32, duration_ns: u64, comm: &str) -> Vec<u8> {
    bytes(&TcpConnect {
        hdr: hdr::<TcpConnect>(),
        duration_ns,
        cgroup_id: 0,
        tgid: 42,
        sk_err,
        family: libc::AF_INET as u16,
        dport: 8080,
        newstate,
        _pad: 0,
        daddr: ipv4([127, 0, 0, 1]),
        comm: name(comm),
    })
}

fn fixtures() -> Vec<Vec<u8>> {
    let inet = libc::AF_INET as u16;
    vec![
        call(0, inet, "curl"),
        call(0, inet, "curl"),
        call(-libc::EINPROGRESS, inet, "nginx"),
        call(-libc::ECONNREFUSED, inet, "curl"),
        call(-libc::ENOENT, libc::AF_UNIX as u16, "systemd"),
        handshake(1, 0, 40_000, "curl"),
        handshake(1, 0, 3_000_000, "nginx"),
        handshake(7, libc::ECONNREFUSED, 20_000, "curl"),
        handshake(7, libc::ETIMEDOUT, 7_000_000_000, "curl"),
    ]
}
