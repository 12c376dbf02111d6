/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * edgewatch's XDP datapath (kernel 5.9+ for attachment through a BPF link):
 * counts packets and bytes per (interface, action, L4 protocol) in a
 * per-CPU array (no atomics, no shared cache lines) and drops packets whose
 * source address matches the IPv4/IPv6 prefix blocklists (LPM tries,
 * behind an exact bitmap pre-filter: most packets never reach a trie).
 *
 * One program serves every interface it is attached to; ew_xdp_ifslot maps
 * an ifindex to its slot in the counters. User space sums the per-CPU
 * values at scrape time. Parses Ethernet, up to two VLAN tags (802.1Q,
 * 802.1ad), IPv4 and IPv6 (the first next header; extension headers count
 * as "other").
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "edgewatch/events.h"

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#define EW_ETH_P_8021Q 0x8100
#define EW_ETH_P_8021AD 0x88A8

struct vlan_hdr {
	__be16 h_vlan_TCI;
	__be16 h_vlan_encapsulated_proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EW_XDP_MAX_IFACES * EW_XDP_ACTIONS * EW_XDP_PROTOS);
	__type(key, __u32);
	__type(value, struct ew_xdp_counter);
} ew_xdp_stats SEC(".maps");

/* ifindex -> slot; read-mostly, so a plain hash (SEEDS: plain beats
 * per-CPU for read-mostly data). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EW_XDP_MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} ew_xdp_ifslot SEC(".maps");

/* The same, as an array indexed by ifindex % EW_XDP_IFCACHE that the
 * verifier inlines (no hashing): an entry holds (ifindex, slot) and counts
 * only when its ifindex is the packet's; the hash answers the rest. */
struct ew_ifcache {
	__u32 ifindex;
	__u32 slot;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EW_XDP_IFCACHE);
	__type(key, __u32);
	__type(value, struct ew_ifcache);
} ew_xdp_ifcache SEC(".maps");

/*
 * Blocklist pre-filter in front of the LPM tries: 2 bits per source block
 * (IPv4 /24, IPv6 /16), 32 blocks a word. Bit 0 (EW_GATE_ALL): a blocklist
 * prefix covers the whole block, so every address in it is blocked. Bit 1
 * (EW_GATE_SOME): a longer prefix lies inside the block, so the trie
 * decides. Neither: nothing in the block is blocked. User space writes the
 * words from the same prefix set it writes into the tries (xdpgate.rs), so
 * the gate is exact: it never drops what the tries would pass, nor passes
 * what they would drop. One 8-byte word per update, so a packet sees a
 * block's two bits from the same version of the list.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EW_GATE_V4_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} ew_gate_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EW_GATE_V6_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} ew_gate_v6 SEC(".maps");

/* How the blocklist is consulted (EW_BLOCKLIST_*), set by the loader:
 * edgewatch sets OFF without a blocklist (nothing can be blocked: a reload
 * re-reads the same file) and GATE with one, since it writes the gate.
 * The default, TRIE, asks the tries for every packet, as a loader that
 * fills only the tries needs. */
volatile const __u32 ew_blocklist_mode = EW_BLOCKLIST_TRIE;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ew_lpm_v4);
	__type(value, __u8);
} ew_block_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ew_lpm_v6);
	__type(value, __u8);
} ew_block_v6 SEC(".maps");

/* The gate's 2 bits for `block` (EW_GATE_*), or EW_GATE_SOME (ask the
 * trie) if the word cannot be read. */
static __always_inline __u32 ew_gate(void *gate, __u32 block)
{
	__u32 word = block / EW_GATE_BLOCKS_PER_WORD;
	__u64 *w = bpf_map_lookup_elem(gate, &word);

	if (!w)
		return EW_GATE_SOME;
	return (*w >> ((block % EW_GATE_BLOCKS_PER_WORD) * 2)) & 3;
}

static __always_inline __u32 ew_slot(__u32 ifindex)
{
	__u32 key = ifindex % EW_XDP_IFCACHE;
	struct ew_ifcache *c = bpf_map_lookup_elem(&ew_xdp_ifcache, &key);
	__u32 *slot;

	if (c && c->ifindex == ifindex)
		return c->slot;
	slot = bpf_map_lookup_elem(&ew_xdp_ifslot, &ifindex);
	return slot ? *slot : EW_XDP_MAX_IFACES;
}

static __always_inline int ew_count(struct xdp_md *ctx, int action, __u32 proto)
{
	__u32 slot = ew_slot(ctx->ingress_ifindex);
	struct ew_xdp_counter *c;
	__u32 idx;

	if (slot < EW_XDP_MAX_IFACES) {
		idx = (slot * EW_XDP_ACTIONS + (__u32)action) * EW_XDP_PROTOS + proto;
		c = bpf_map_lookup_elem(&ew_xdp_stats, &idx);
		if (c) {
			c->packets += 1;
			c->bytes += ctx->data_end - ctx->data;
		}
	}
	return action;
}

static __always_inline __u32 ew_l4(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return EW_XDP_PROTO_TCP;
	case IPPROTO_UDP:
		return EW_XDP_PROTO_UDP;
	case IPPROTO_ICMP:
		return EW_XDP_PROTO_ICMP;
	case IPPROTO_ICMPV6:
		return EW_XDP_PROTO_ICMPV6;
	}
	return EW_XDP_PROTO_OTHER;
}

SEC("xdp")
int ew_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *cursor;
	__u16 h_proto;
	int i;

	if ((void *)(eth + 1) > data_end)
		return ew_count(ctx, XDP_PASS, EW_XDP_PROTO_OTHER);
	h_proto = eth->h_proto;
	cursor = eth + 1;

#pragma unroll
	for (i = 0; i < 2; i++) {
		struct vlan_hdr *vh = cursor;

		if (h_proto != bpf_htons(EW_ETH_P_8021Q) && h_proto != bpf_htons(EW_ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return ew_count(ctx, XDP_PASS, EW_XDP_PROTO_OTHER);
		h_proto = vh->h_vlan_encapsulated_proto;
		cursor = vh + 1;
	}

	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = cursor;
		struct ew_lpm_v4 key = {};

		if ((void *)(iph + 1) > data_end)
			return ew_count(ctx, XDP_PASS, EW_XDP_PROTO_OTHER);
		if (ew_blocklist_mode != EW_BLOCKLIST_OFF) {
			__u32 gate = EW_GATE_SOME;

			if (ew_blocklist_mode == EW_BLOCKLIST_GATE)
				gate = ew_gate(&ew_gate_v4, bpf_ntohl(iph->saddr) >> 8);
			if (gate & EW_GATE_ALL)
				return ew_count(ctx, XDP_DROP, ew_l4(iph->protocol));
			if (gate & EW_GATE_SOME) {
				key.prefixlen = 32;
				__builtin_memcpy(key.addr, &iph->saddr, 4);
				if (bpf_map_lookup_elem(&ew_block_v4, &key))
					return ew_count(ctx, XDP_DROP, ew_l4(iph->protocol));
			}
		}
		return ew_count(ctx, XDP_PASS, ew_l4(iph->protocol));
	}
	if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cursor;
		struct ew_lpm_v6 key = {};

		if ((void *)(ip6 + 1) > data_end)
			return ew_count(ctx, XDP_PASS, EW_XDP_PROTO_OTHER);
		if (ew_blocklist_mode != EW_BLOCKLIST_OFF) {
			__u32 gate = EW_GATE_SOME;

			if (ew_blocklist_mode == EW_BLOCKLIST_GATE)
				gate = ew_gate(&ew_gate_v6, bpf_ntohs(ip6->saddr.in6_u.u6_addr16[0]));
			if (gate & EW_GATE_ALL)
				return ew_count(ctx, XDP_DROP, ew_l4(ip6->nexthdr));
			if (gate & EW_GATE_SOME) {
				key.prefixlen = 128;
				__builtin_memcpy(key.addr, &ip6->saddr, 16);
				if (bpf_map_lookup_elem(&ew_block_v6, &key))
					return ew_count(ctx, XDP_DROP, ew_l4(ip6->nexthdr));
			}
		}
		return ew_count(ctx, XDP_PASS, ew_l4(ip6->nexthdr));
	}
	return ew_count(ctx, XDP_PASS, EW_XDP_PROTO_OTHER);
}

char LICENSE[] SEC("license") = "GPL";
