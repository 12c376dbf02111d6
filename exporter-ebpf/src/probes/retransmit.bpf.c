/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * retransmit probe: tcp:tcp_retransmit_skb (4.16+) and
 * tcp:tcp_retransmit_synack (4.16+), one record per event.
 *
 * Where TcpRetransSegs moves (net/ipv4/tcp_output.c, 6.18):
 * - __tcp_retransmit_skb() adds tcp_skb_pcount(skb) after trimming,
 *   fragmenting and re-segmenting the skb, before transmitting it. Since
 *   6.13 the tracepoint fires at the function's end with `err`, also on the
 *   early exits that return before the counter (-EBUSY still in host queue,
 *   -EINVAL, -ENOMEM, -EHOSTUNREACH from rebuild_header, -EAGAIN zero
 *   window). A transmit failure after the counter also shows as err != 0.
 *   User space decides from err (see aggregate/retransmit.rs); here we only
 *   report what the tracepoint saw.
 * - tcp_rtx_synack() adds 1 and fires tcp_retransmit_synack only when the
 *   SYN-ACK went out.
 *
 * The skb's pcount is read at the tracepoint, i.e. after the kernel's own
 * re-segmentation, which is the value it added to the counter.
 *
 * Kernels before 6.13 (Debian's 6.12.117 included) use trace_event_raw_tcp_event_sk_skb (no err) and fire
 * only after a successful transmit: the ___old flavour handles that layout
 * in the same object (bpf_core_type_exists picks the branch at load time).
 *
 * tp_btf versions of both hooks are tried first (BTF-enabled raw
 * tracepoints, 5.5+): they read the socket and skb directly and spare the
 * kernel building the classic record. tp_btf/tcp_retransmit_skb takes the
 * third argument (err) only where the tracepoint has it (6.13+); on older
 * kernels the verifier refuses that load and user space falls back to the
 * classic tracepoints, which handle both layouts.
 *
 * Compiled with every other probe file of src/probes/ into one object (build.rs).
 */

struct trace_event_raw_tcp_event_sk_skb___old {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
	int state;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
} __attribute__((preserve_access_index));

static __always_inline __u16 ew_skb_pcount(const void *skbaddr)
{
	struct sk_buff *skb = (struct sk_buff *)skbaddr;
	struct tcp_skb_cb *cb = (struct tcp_skb_cb *)&skb->cb[0];

	return BPF_CORE_READ(cb, tcp_gso_segs);
}

static __always_inline void ew_rtx_addr(struct ew_retransmit *e, __u16 family,
					const __u8 *v4, const __u8 *v6)
{
	if (family == AF_INET6) {
		bpf_probe_read_kernel(e->daddr, 16, v6);
	} else {
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		bpf_probe_read_kernel(e->daddr, 4, v4);
	}
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int ew_retransmit_skb(void *ctx)
{
	struct ew_retransmit *e;

	e = ew_reserve(EW_PROBE_RETRANSMIT, EW_KIND_RETRANSMIT, sizeof(*e));
	if (!e)
		return 0;
	e->_pad = 0;
	if (bpf_core_type_exists(struct trace_event_raw_tcp_retransmit_skb)) {
		struct trace_event_raw_tcp_retransmit_skb *c = ctx;

		e->err = c->err;
		e->flags = EW_RTX_HAS_ERR;
		e->segs = ew_skb_pcount(c->skbaddr);
		e->family = c->family;
		e->sport = c->sport;
		e->dport = c->dport;
		e->state = (__u8)c->state;
		ew_rtx_addr(e, c->family, c->daddr, c->daddr_v6);
	} else {
		struct trace_event_raw_tcp_event_sk_skb___old *c = ctx;

		e->err = 0;
		e->flags = 0;
		e->segs = ew_skb_pcount(c->skbaddr);
		e->family = c->family;
		e->sport = c->sport;
		e->dport = c->dport;
		e->state = (__u8)c->state;
		ew_rtx_addr(e, c->family, c->daddr, c->daddr_v6);
	}
	ew_submit(e);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_synack")
int ew_retransmit_synack(struct trace_event_raw_tcp_retransmit_synack *ctx)
{
	struct ew_retransmit *e;

	e = ew_reserve(EW_PROBE_RETRANSMIT, EW_KIND_RETRANSMIT, sizeof(*e));
	if (!e)
		return 0;
	e->err = 0;
	e->segs = 1;
	e->family = ctx->family;
	e->sport = ctx->sport;
	e->dport = ctx->dport;
	e->state = TCP_SYN_RECV;
	e->flags = EW_RTX_SYNACK;
	e->_pad = 0;
	ew_rtx_addr(e, ctx->family, ctx->daddr, ctx->daddr_v6);
	ew_submit(e);
	return 0;
}

/* Fills the peer fields of `e` from a socket or request socket's common part. */
static __always_inline void ew_rtx_from_common(struct ew_retransmit *e, struct sock_common *c)
{
	__u16 family = BPF_CORE_READ(c, skc_family);

	e->family = family;
	e->sport = BPF_CORE_READ(c, skc_num);
	e->dport = __builtin_bswap16(BPF_CORE_READ(c, skc_dport));
	ew_rtx_addr(e, family, (const __u8 *)__builtin_preserve_access_index(&c->skc_daddr),
		    (const __u8 *)__builtin_preserve_access_index(&c->skc_v6_daddr));
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(ew_retransmit_skb_btf, struct sock *sk, struct sk_buff *skb, int err)
{
	struct ew_retransmit *e;

	e = ew_reserve(EW_PROBE_RETRANSMIT, EW_KIND_RETRANSMIT, sizeof(*e));
	if (!e)
		return 0;
	e->_pad = 0;
	e->err = err;
	e->flags = EW_RTX_HAS_ERR;
	e->segs = ew_skb_pcount(skb);
	e->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	ew_rtx_from_common(e, __builtin_preserve_access_index(&sk->__sk_common));
	ew_submit(e);
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(ew_retransmit_synack_btf, struct sock *sk, struct request_sock *req)
{
	struct ew_retransmit *e;

	e = ew_reserve(EW_PROBE_RETRANSMIT, EW_KIND_RETRANSMIT, sizeof(*e));
	if (!e)
		return 0;
	e->_pad = 0;
	e->err = 0;
	e->segs = 1;
	e->state = TCP_SYN_RECV;
	e->flags = EW_RTX_SYNACK;
	ew_rtx_from_common(e, __builtin_preserve_access_index(&req->__req_common));
	ew_submit(e);
	return 0;
}
