//! retransmit probe: `tcp_retransmit_skb` and `tcp_retransmit_synack`
//! (kernel 4.16+), counted the way the kernel counts TcpRetransSegs (see
//! aggregate/retransmit.rs). BPF side: exporter-ebpf/src/probes/retransmit.bpf.c,
//! which handles both the 6.12+ context (with `err`) and the older one in a
//! single object through CO-RE. BTF-enabled raw tracepoints (tp_btf) are
//! tried first (6.12+ for the `err` argument), the classic tracepoints are
//! the fallback.

use edgewatch_common::{PROBE_RETRANSMIT, RTX_HAS_ERR, RTX_SYNACK, Retransmit};

use super::{
    AttachMode, Handler, Hook, Link, ProbeDef,
    fixture::{bytes, hdr, ipv4},
};
use crate::aggregate::retransmit::RetransmitAggregator;

pub const PROBE: ProbeDef<RetransmitAggregator> = ProbeDef {
    name: "retransmit",
    about: "every TCP retransmission, counted as the kernel counts TcpRetransSegs",
    id: PROBE_RETRANSMIT,
    records: &[Handler::of::<Retransmit>()],
    chain: &[
        Link {
            mode: AttachMode::TpBtf,
            hooks: &[
                Hook::TpBtf {
                    program: "ew_retransmit_skb_btf",
                    event: "tcp_retransmit_skb",
                },
                Hook::TpBtf {
                    program: "ew_retransmit_synack_btf",
                    event: "tcp_retransmit_synack",
                },
            ],
            task_btf: false,
        },
        Link {
            mode: AttachMode::Tracepoint,
            hooks: &[
                Hook::Tracepoint {
                    program: "ew_retransmit_skb",
                    category: "tcp",
                    name: "tcp_retransmit_skb",
                },
                Hook::Tracepoint {
                    program: "ew_retransmit_synack",
                    category: "tcp",
                    name: "tcp_retransmit_synack",
                },
            ],
            task_btf: false,
        },
    ],
    aggregator: RetransmitAggregator::register,
    collector: None,
    fixtures,
};

fn rtx(flags: u8, err: i32, segs: u16, state: u8, last_octet: u8) -> Vec<u8> {
    bytes(&Retransmit {
        hdr: hdr::<Retransmit>(),
        cgroup_id: 0,
        err,
        segs,
        family: libc::AF_INET as u16,
        sport: 40000,
        dport: 443,
        state,
        flags,
        _pad: 0,
        daddr: ipv4([192, 0, 2, last_octet]),
    })
}

fn fixtures() -> Vec<Vec<u8>> {
    vec![
        rtx(RTX_HAS_ERR, 0, 4, 1, 10),
        rtx(RTX_HAS_ERR, 0, 1, 1, 10),
        rtx(RTX_HAS_ERR, -libc::EBUSY, 3, 1, 10),
        rtx(RTX_HAS_ERR, 0, 1, 2, 11),
        rtx(RTX_SYNACK, 0, 1, 3, 12),
        rtx(0, 0, 2, 1, 13),
    ]
}
