/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * connect probe.
 *
 * - syscalls:sys_enter_connect / sys_exit_connect (kernel 4.7+ for BPF on
 *   tracepoints): every connect() with the address family the caller passed
 *   and the syscall's result. Per-syscall tracepoints cost other syscalls
 *   nothing, unlike raw_syscalls or tp_btf/sys_enter.
 * - sock:inet_sock_set_state (4.16+): every TCP active open leaving SYN_SENT,
 *   with its duration and outcome. This is what sees the end of non-blocking
 *   connects, where the syscall only says EINPROGRESS. The transition out of
 *   SYN_SENT runs in softirq context, so the process name is taken when the
 *   socket enters SYN_SENT (tcp_v4_connect/tcp_v6_connect, process context).
 *
 * The outcome on CLOSE comes from sk->sk_err, which every path out of
 * SYN_SENT sets before tcp_done() moves the socket to CLOSE: tcp_reset()
 * (ECONNREFUSED), tcp_write_err() (ETIMEDOUT or the soft error), tcp_v4_err /
 * tcp_v6_err (EHOSTUNREACH, ENETUNREACH, ...) (net/ipv4/tcp_input.c,
 * tcp_timer.c, tcp_ipv4.c, 6.18). An application closing a socket still in
 * SYN_SENT leaves sk_err at 0 and counts as outcome "other".
 *
 * Compiled with every other probe file of src/probes/ into one object (build.rs).
 */

/* connect() arguments between sys_enter and sys_exit, by thread. A plain
 * preallocated hash, not an LRU: an LRU evicts silently when full, while a
 * failed insert into a full hash is counted in ew_lost (and the LRU's list
 * upkeep is not cheaper). Entries are deleted at sys_exit, which runs even
 * for a thread killed inside connect(). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} ew_connect_args SEC(".maps");

struct ew_syn_sent {
	__u64 start_ns;
	__u32 tgid;
	__u32 _pad;
	char comm[EW_COMM_LEN];
};

/* Sockets in SYN_SENT, by socket address. Every socket leaves SYN_SENT
 * through tcp_set_state() (to ESTABLISHED or CLOSE, including the failure
 * paths of tcp_v4_connect/tcp_v6_connect), which deletes its entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ew_syn_sent);
} ew_syn_sent SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_connect")
int ew_connect_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sockaddr *addr = (struct sockaddr *)ctx->args[1];
	__u16 family = 0;
	__u32 val;

	/* A bad pointer leaves family 0 (AF_UNSPEC): connect() then fails with
	 * EFAULT and the call is still counted, as family "other". */
	bpf_probe_read_user(&family, sizeof(family), &addr->sa_family);
	val = family;
	if (bpf_map_update_elem(&ew_connect_args, &id, &val, BPF_ANY))
		ew_count_lost(EW_PROBE_CONNECT);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int ew_connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ew_connect_call *e;
	__u32 *family;

	family = bpf_map_lookup_elem(&ew_connect_args, &id);
	if (!family)
		return 0; /* entered before we attached */
	e = ew_reserve(EW_PROBE_CONNECT, EW_KIND_CONNECT_CALL, sizeof(*e));
	if (e) {
		e->tgid = id >> 32;
		e->pid = (__u32)id;
		e->ret = (__s32)ctx->ret;
		e->family = (__u16)*family;
		e->_pad = 0;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		ew_submit(e);
	}
	bpf_map_delete_elem(&ew_connect_args, &id);
	return 0;
}

/* Both hooks of a socket state change end here. `family`, `dport` (host
 * order) and the address pointers describe the peer. */
static __always_inline int ew_sock_state(__u64 sk, int oldstate, int newstate, __u16 family,
					 __u16 dport, const void *daddr4, const void *daddr6)
{
	struct ew_syn_sent *st;
	struct ew_tcp_connect *e;

	if (newstate == TCP_SYN_SENT) {
		struct ew_syn_sent v = {};

		v.start_ns = bpf_ktime_get_ns();
		v.tgid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(v.comm, sizeof(v.comm));
		if (bpf_map_update_elem(&ew_syn_sent, &sk, &v, BPF_ANY))
			ew_count_lost(EW_PROBE_CONNECT);
		return 0;
	}
	if (oldstate != TCP_SYN_SENT)
		return 0;

	st = bpf_map_lookup_elem(&ew_syn_sent, &sk);
	if (!st)
		return 0; /* SYN sent before we attached */

	e = ew_reserve(EW_PROBE_CONNECT, EW_KIND_TCP_CONNECT, sizeof(*e));
	if (e) {
		e->duration_ns = e->hdr.ts_ns - st->start_ns;
		e->tgid = st->tgid;
		e->sk_err = newstate == TCP_ESTABLISHED ? 0 : BPF_CORE_READ((struct sock *)sk, sk_err);
		e->family = family;
		e->dport = dport;
		e->newstate = (__u16)newstate;
		e->_pad = 0;
		if (family == AF_INET6) {
			bpf_probe_read_kernel(e->daddr, 16, daddr6);
		} else {
			__builtin_memset(e->daddr, 0, sizeof(e->daddr));
			bpf_probe_read_kernel(e->daddr, 4, daddr4);
		}
		__builtin_memcpy(e->comm, st->comm, sizeof(e->comm));
		ew_submit(e);
	}
	bpf_map_delete_elem(&ew_syn_sent, &sk);
	return 0;
}

/*
 * tp_btf/inet_sock_set_state (5.5+, BTF-enabled raw tracepoint), tried
 * first: the program gets (sk, oldstate, newstate) directly, and the kernel
 * skips building the classic tracepoint's record (addresses, ports) for
 * every state change on the host. Only the transitions out of SYN_SENT
 * read the socket.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ew_sock_state_btf, struct sock *sk, int oldstate, int newstate)
{
	__u16 dport;

	if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return ew_sock_state((__u64)sk, oldstate, newstate, BPF_CORE_READ(sk, __sk_common.skc_family),
			     dport, __builtin_preserve_access_index(&sk->__sk_common.skc_daddr),
			     __builtin_preserve_access_index(&sk->__sk_common.skc_v6_daddr));
}

/* sock:inet_sock_set_state, the classic tracepoint: the fallback. */
SEC("tracepoint/sock/inet_sock_set_state")
int ew_sock_state_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	return ew_sock_state((__u64)ctx->skaddr, ctx->oldstate, ctx->newstate, ctx->family,
			     ctx->dport, ctx->daddr, ctx->daddr_v6);
}
