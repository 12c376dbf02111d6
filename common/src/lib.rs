//! The wire contract between edgewatch's BPF programs and user space: the
//! Rust mirror of `common/include/edgewatch/events.h`.
//!
//! The C header is the source; these types follow it and
//! `exporter-ebpf/tests/layout.rs` fails when the two drift (every record,
//! field, offset, size and constant is compared with what clang produced).
//! Every record derives [`bytemuck::Pod`], which refuses implicit padding at
//! compile time, so holes must be explicit `_pad` fields on both sides.

#![no_std]

use bytemuck::{Pod, Zeroable};

/// One field of a record: name, offset, size.
pub type FieldLayout = (&'static str, usize, usize);

/// Declares a wire record and its [`Record`] impl: C name, and a table of
/// fields with their offsets computed by the compiler.
macro_rules! wire_record {
    (
        $(#[$meta:meta])*
        $c_name:literal => pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl Record for $name {
            const C_NAME: &'static str = $c_name;
            const FIELDS: &'static [FieldLayout] = &[
                $( (stringify!($field), core::mem::offset_of!($name, $field), core::mem::size_of::<$ty>()), )*
            ];
        }
    };
}

/// A record type with its C name and field table (for the layout test).
pub trait Record: Pod {
    const C_NAME: &'static str;
    const FIELDS: &'static [FieldLayout];
}

/// A record written into the ring buffer: the `KIND_*` its header carries.
/// This pairing of kind and struct is the wire contract user space
/// dispatches on.
pub trait RingRecord: Record {
    const KIND: u16;
}

impl RingRecord for ConnectCall {
    const KIND: u16 = KIND_CONNECT_CALL;
}

impl RingRecord for TcpConnect {
    const KIND: u16 = KIND_TCP_CONNECT;
}

impl RingRecord for Retransmit {
    const KIND: u16 = KIND_RETRANSMIT;
}

impl RingRecord for MapOp {
    const KIND: u16 = KIND_MAP_OP;
}

impl RingRecord for BpfChange {
    const KIND: u16 = KIND_BPF_CHANGE;
}

pub const KIND_CONNECT_CALL: u16 = 1;
pub const KIND_TCP_CONNECT: u16 = 2;
pub const KIND_RETRANSMIT: u16 = 3;
pub const KIND_MAP_OP: u16 = 4;
pub const KIND_BPF_CHANGE: u16 = 5;

pub const PROBE_CONNECT: u32 = 0;
pub const PROBE_RETRANSMIT: u32 = 1;
pub const PROBE_MAP: u32 = 2;
/// Size of the per-CPU `ew_lost` array.
pub const PROBE_COUNT: u32 = 8;

pub const COMM_LEN: usize = 16;

/// `MapEntries::flags`: `entries` is exact.
pub const ENTRIES_KNOWN: u32 = 1;

/// `MapOp::hashed`: `key_hash` is set.
pub const MAP_KEY_HASHED: u16 = 1;
/// `MapOp::hashed`: `value_hash` is set.
pub const MAP_VALUE_HASHED: u16 = 2;
/// Bytes of a key or value hashed, at most.
pub const MAP_HASH_MAX: u32 = 256;

/// `Retransmit::flags`: a SYN-ACK retransmit (tcp_retransmit_synack).
pub const RTX_SYNACK: u8 = 1;
/// `Retransmit::flags`: the tracepoint carried `err` (kernel 6.13+).
pub const RTX_HAS_ERR: u8 = 2;

pub const XDP_MAX_IFACES: u32 = 64;
pub const XDP_ACTIONS: u32 = 5;
pub const XDP_PROTOS: u32 = 5;
pub const XDP_PROTO_TCP: u32 = 0;
pub const XDP_PROTO_UDP: u32 = 1;
pub const XDP_PROTO_ICMP: u32 = 2;
pub const XDP_PROTO_ICMPV6: u32 = 3;
pub const XDP_PROTO_OTHER: u32 = 4;

/// Every `EW_*` constant of the header, for the layout test.
pub const DEFINES: &[(&str, u64)] = &[
    ("EW_KIND_CONNECT_CALL", KIND_CONNECT_CALL as u64),
    ("EW_KIND_TCP_CONNECT", KIND_TCP_CONNECT as u64),
    ("EW_KIND_RETRANSMIT", KIND_RETRANSMIT as u64),
    ("EW_KIND_MAP_OP", KIND_MAP_OP as u64),
    ("EW_KIND_BPF_CHANGE", KIND_BPF_CHANGE as u64),
    ("EW_PROBE_CONNECT", PROBE_CONNECT as u64),
    ("EW_PROBE_RETRANSMIT", PROBE_RETRANSMIT as u64),
    ("EW_PROBE_MAP", PROBE_MAP as u64),
    ("EW_PROBE_COUNT", PROBE_COUNT as u64),
    ("EW_COMM_LEN", COMM_LEN as u64),
    ("EW_RTX_SYNACK", RTX_SYNACK as u64),
    ("EW_RTX_HAS_ERR", RTX_HAS_ERR as u64),
    ("EW_ENTRIES_KNOWN", ENTRIES_KNOWN as u64),
    ("EW_MAP_KEY_HASHED", MAP_KEY_HASHED as u64),
    ("EW_MAP_VALUE_HASHED", MAP_VALUE_HASHED as u64),
    ("EW_MAP_HASH_MAX", MAP_HASH_MAX as u64),
    ("EW_XDP_MAX_IFACES", XDP_MAX_IFACES as u64),
    ("EW_XDP_ACTIONS", XDP_ACTIONS as u64),
    ("EW_XDP_PROTOS", XDP_PROTOS as u64),
    ("EW_XDP_PROTO_TCP", XDP_PROTO_TCP as u64),
    ("EW_XDP_PROTO_UDP", XDP_PROTO_UDP as u64),
    ("EW_XDP_PROTO_ICMP", XDP_PROTO_ICMP as u64),
    ("EW_XDP_PROTO_ICMPV6", XDP_PROTO_ICMPV6 as u64),
    ("EW_XDP_PROTO_OTHER", XDP_PROTO_OTHER as u64),
    // scripts/new-probe adds a new probe's constants above this line.
];

wire_record! {
    /// Common prefix of every record.
    "ew_hdr" => pub struct Header {
        /// `KIND_*`.
        pub kind: u16,
        /// Size of the whole record.
        pub size: u16,
        pub cpu: u32,
        /// `bpf_ktime_get_ns()`, CLOCK_MONOTONIC.
        pub ts_ns: u64,
    }
}

wire_record! {
    /// One finished connect() syscall.
    "ew_connect_call" => pub struct ConnectCall {
        pub hdr: Header,
        pub tgid: u32,
        pub pid: u32,
        /// 0 or -errno.
        pub ret: i32,
        pub family: u16,
        pub _pad: u16,
        pub comm: [u8; COMM_LEN],
    }
}

wire_record! {
    /// One TCP active open leaving SYN_SENT.
    "ew_tcp_connect" => pub struct TcpConnect {
        pub hdr: Header,
        pub duration_ns: u64,
        pub tgid: u32,
        /// `sk->sk_err` at the transition (positive errno); 0 when established.
        pub sk_err: i32,
        pub family: u16,
        /// Host byte order.
        pub dport: u16,
        /// TCP state entered: 1 (ESTABLISHED) or 7 (CLOSE).
        pub newstate: u16,
        pub _pad: u16,
        /// IPv4 addresses use the first 4 bytes.
        pub daddr: [u8; 16],
        pub comm: [u8; COMM_LEN],
    }
}

wire_record! {
    /// One tcp:tcp_retransmit_skb or tcp:tcp_retransmit_synack event.
    "ew_retransmit" => pub struct Retransmit {
        pub hdr: Header,
        /// Tracepoint `err` (0 without `RTX_HAS_ERR`).
        pub err: i32,
        /// `tcp_skb_pcount(skb)` at the tracepoint; 1 for a SYN-ACK.
        pub segs: u16,
        pub family: u16,
        /// Host byte order.
        pub sport: u16,
        /// Host byte order.
        pub dport: u16,
        /// TCP state of the socket.
        pub state: u8,
        /// `RTX_*`.
        pub flags: u8,
        pub _pad: u16,
        /// Remote address; IPv4 in the first 4 bytes.
        pub daddr: [u8; 16],
    }
}

wire_record! {
    /// One map update or delete (single element or batch).
    "ew_map_op" => pub struct MapOp {
        pub hdr: Header,
        pub duration_ns: u64,
        /// 0 when the fd did not resolve to a map.
        pub map_id: u32,
        pub map_type: u32,
        pub tgid: u32,
        /// Syscall return: 0 or -errno.
        pub ret: i32,
        /// Batch: `attr.batch.count` after the call; 1 otherwise.
        pub count: u32,
        /// Batch: `attr.batch.count` before the call; 1 otherwise.
        pub requested: u32,
        pub cmd: u16,
        /// `MAP_KEY_HASHED` | `MAP_VALUE_HASHED`: which hashes are set.
        pub hashed: u16,
        pub _pad2: u32,
        pub map_name: [u8; 16],
        pub comm: [u8; COMM_LEN],
        /// FNV-1a 64 of the key's first `MAP_HASH_MAX` bytes.
        pub key_hash: u64,
        /// Likewise of the value written (updates).
        pub value_hash: u64,
    }
}

wire_record! {
    /// A successful bpf() call that may change which programs use which
    /// maps (program load, attach/detach, link create/update/detach, map
    /// binding).
    "ew_bpf_change" => pub struct BpfChange {
        pub hdr: Header,
        pub tgid: u32,
        /// The bpf() command.
        pub cmd: u16,
        pub _pad: u16,
    }
}

wire_record! {
    /// One map of the inventory iterator's output.
    "ew_map_entries" => pub struct MapEntries {
        pub map_id: u32,
        /// `ENTRIES_KNOWN` when `entries` is exact.
        pub flags: u32,
        pub entries: u64,
    }
}

wire_record! {
    /// One (interface, action, protocol) cell of the XDP per-CPU counters.
    "ew_xdp_counter" => pub struct XdpCounter {
        pub packets: u64,
        pub bytes: u64,
    }
}

wire_record! {
    /// IPv4 blocklist key (LPM trie).
    "ew_lpm_v4" => pub struct LpmV4 {
        pub prefixlen: u32,
        pub addr: [u8; 4],
    }
}

wire_record! {
    /// IPv6 blocklist key (LPM trie).
    "ew_lpm_v6" => pub struct LpmV6 {
        pub prefixlen: u32,
        pub addr: [u8; 16],
    }
}

/// Every record type, as (C name, size, fields), for the layout test.
pub const RECORDS: &[(&str, usize, &[FieldLayout])] = &[
    record_entry::<Header>(),
    record_entry::<ConnectCall>(),
    record_entry::<TcpConnect>(),
    record_entry::<Retransmit>(),
    record_entry::<MapOp>(),
    record_entry::<BpfChange>(),
    record_entry::<MapEntries>(),
    record_entry::<XdpCounter>(),
    record_entry::<LpmV4>(),
    record_entry::<LpmV6>(),
    // scripts/new-probe adds a new probe's record above this line.
];

const fn record_entry<R: Record>() -> (&'static str, usize, &'static [FieldLayout]) {
    (R::C_NAME, core::mem::size_of::<R>(), R::FIELDS)
}

/// The process name in a record: bytes up to the first NUL.
pub fn comm_str(comm: &[u8; COMM_LEN]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    &comm[..end]
}

// scripts/new-probe appends a new probe's record below this line.
