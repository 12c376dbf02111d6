/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The wire contract between edgewatch's BPF programs and its user-space
 * consumer: every record written into the shared ring buffer starts with
 * `struct ew_hdr` and has a fixed size per kind.
 *
 * Rules (checked by exporter-ebpf/tests/layout.rs against common/src/lib.rs):
 * - fixed-width integer types only: no bool, no enum, no pointer, no long;
 * - every hole is an explicit `_pad` field, so the Rust mirror derives
 *   bytemuck::Pod (which refuses implicit padding);
 * - every ring-buffer record's size is a multiple of 8 (records are 8-byte
 *   aligned in the ring anyway; this keeps the tail padding explicit too).
 *   Map keys and values (XDP counters, LPM keys) follow the kernel's layout.
 */
#ifndef EDGEWATCH_EVENTS_H
#define EDGEWATCH_EVENTS_H

/* Record kinds (ew_hdr.kind). 0 is never valid. */
#define EW_KIND_CONNECT_CALL 1
#define EW_KIND_TCP_CONNECT 2
#define EW_KIND_RETRANSMIT 3
#define EW_KIND_MAP_OP 4
#define EW_KIND_BPF_CHANGE 5

/* Probe ids: index into the per-CPU `ew_lost` array counting records the
 * kernel could not reserve. */
#define EW_PROBE_CONNECT 0
#define EW_PROBE_RETRANSMIT 1
#define EW_PROBE_MAP 2
#define EW_PROBE_COUNT 8

#define EW_COMM_LEN 16

/* Common prefix of every record. */
struct ew_hdr {
	__u16 kind;  /* EW_KIND_* */
	__u16 size;  /* sizeof the whole record */
	__u32 cpu;   /* CPU the program ran on */
	__u64 ts_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
};

/* One finished connect() syscall (syscalls:sys_exit_connect). */
struct ew_connect_call {
	struct ew_hdr hdr;
	__u32 tgid;
	__u32 pid;
	__s32 ret;     /* 0 or -errno */
	__u16 family;  /* sa_family of the address passed to connect() */
	__u16 _pad;
	char comm[EW_COMM_LEN];
};

/* One TCP active open leaving SYN_SENT (sock:inet_sock_set_state). */
struct ew_tcp_connect {
	struct ew_hdr hdr;
	__u64 duration_ns; /* SYN_SENT entry to this transition */
	__u32 tgid;        /* process that entered SYN_SENT */
	__s32 sk_err;      /* sk->sk_err at the transition; 0 when established */
	__u16 family;      /* AF_INET or AF_INET6 */
	__u16 dport;       /* host byte order */
	__u16 newstate;    /* TCP_ESTABLISHED (1) or TCP_CLOSE (7) */
	__u16 _pad;
	__u8 daddr[16];    /* IPv4 in the first 4 bytes */
	char comm[EW_COMM_LEN];
};

/* ew_retransmit.flags */
#define EW_RTX_SYNACK 1  /* tcp:tcp_retransmit_synack (always counted, 1 segment) */
#define EW_RTX_HAS_ERR 2 /* the tracepoint carries err (6.13+): it also fires
                          * on early exits that never reach the counter */

/* One tcp:tcp_retransmit_skb or tcp:tcp_retransmit_synack event. */
struct ew_retransmit {
	struct ew_hdr hdr;
	__s32 err;      /* tracepoint err (0 without EW_RTX_HAS_ERR) */
	__u16 segs;     /* tcp_skb_pcount(skb) at the tracepoint; 1 for SYN-ACK */
	__u16 family;
	__u16 sport;    /* host byte order */
	__u16 dport;    /* host byte order */
	__u8 state;     /* TCP state of the socket; TCP_SYN_RECV for SYN-ACK */
	__u8 flags;     /* EW_RTX_* */
	__u16 _pad;
	__u8 daddr[16]; /* remote address; IPv4 in the first 4 bytes */
};

/* ew_map_op.hashed: only single-element calls, and only when the loader
 * set ew_map_hashes (--otlp.map-key-hashes). */
#define EW_MAP_KEY_HASHED 1
#define EW_MAP_VALUE_HASHED 2
#define EW_MAP_HASH_MAX 256

/* One map update or delete (single element or batch) from any process. */
struct ew_map_op {
	struct ew_hdr hdr;
	__u64 duration_ns; /* syscall entry to exit */
	__u32 map_id;      /* 0 when the fd did not resolve to a map */
	__u32 map_type;    /* enum bpf_map_type */
	__u32 tgid;
	__s32 ret;         /* syscall return: 0 or -errno */
	__u32 count;       /* batch: attr.batch.count after the call; 1 otherwise */
	__u32 requested;   /* batch: attr.batch.count before the call; 1 otherwise */
	__u16 cmd;         /* BPF_MAP_UPDATE_ELEM, _DELETE_ELEM, _UPDATE_BATCH, _DELETE_BATCH */
	__u16 hashed;      /* EW_MAP_*_HASHED: which of the hashes below are set */
	__u32 _pad2;
	char map_name[16];
	char comm[EW_COMM_LEN];
	__u64 key_hash;    /* FNV-1a 64 of the key (first EW_MAP_HASH_MAX bytes) */
	__u64 value_hash;  /* likewise of the value written (updates) */
};

/* A bpf() call that may change which programs use which maps, and that
 * succeeded: BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH,
 * BPF_RAW_TRACEPOINT_OPEN, BPF_LINK_CREATE, BPF_LINK_UPDATE,
 * BPF_LINK_DETACH, BPF_PROG_BIND_MAP. User space re-reads every program's
 * map ids before it judges the map writes that follow. */
struct ew_bpf_change {
	struct ew_hdr hdr;
	__u32 tgid;
	__u16 cmd;
	__u16 _pad;
};

/* One map of the inventory iterator (iter/bpf_map), written with
 * bpf_seq_write; read by user space at scrape time. */
#define EW_ENTRIES_KNOWN 1

struct ew_map_entries {
	__u32 map_id;
	__u32 flags;   /* EW_ENTRIES_KNOWN when `entries` is exact */
	__u64 entries;
};

/* XDP datapath counters (not streamed: read from the per-CPU array at
 * scrape time). Index = (slot * EW_XDP_ACTIONS + action) * EW_XDP_PROTOS + proto,
 * slot from ew_xdp_ifslot[ifindex]. */
#define EW_XDP_MAX_IFACES 64
#define EW_XDP_ACTIONS 5 /* XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT */
#define EW_XDP_PROTOS 5
#define EW_XDP_PROTO_TCP 0
#define EW_XDP_PROTO_UDP 1
#define EW_XDP_PROTO_ICMP 2
#define EW_XDP_PROTO_ICMPV6 3
#define EW_XDP_PROTO_OTHER 4

struct ew_xdp_counter {
	__u64 packets;
	__u64 bytes;
};

/* Blocklist keys (LPM tries). */
struct ew_lpm_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct ew_lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* scripts/new-probe appends a new probe's record above this line. */

#endif /* EDGEWATCH_EVENTS_H */
