/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * connect probe.
 *
 * - syscalls:sys_exit_connect: every connect() with the address family the
 *   caller passed and the syscall's result. Per-syscall tracepoints cost
 *   other syscalls nothing, unlike raw_syscalls or tp_btf/sys_enter. On
 *   5.15+ (bpf_task_pt_regs) the exit program alone does it: the caller's
 *   registers still hold the syscall's arguments at exit, so the address
 *   is read there and no entry program or in-flight table is needed. Older
 *   kernels use sys_enter_connect too, with a hash between the two.
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
	__u64 cgroup_id;
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

/* connect() from its exit alone (5.15+): the arguments are read from the
 * caller's saved registers (the syscall ABI's second argument is the
 * address). A bad pointer leaves family 0 (AF_UNSPEC): connect() then
 * fails with EFAULT and the call is still counted, as family "other". */
SEC("tracepoint/syscalls/sys_exit_connect")
int ew_connect_ret(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	struct sockaddr *addr = (struct sockaddr *)PT_REGS_PARM2_SYSCALL(regs);
	__u64 id = bpf_get_current_pid_tgid();
	struct ew_connect_call *e;
	__u16 family = 0;

	e = ew_reserve(EW_PROBE_CONNECT, EW_KIND_CONNECT_CALL, sizeof(*e));
	if (!e)
		return 0;
	bpf_probe_read_user(&family, sizeof(family), &addr->sa_family);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->tgid = id >> 32;
	e->pid = (__u32)id;
	e->ret = (__s32)ctx->ret;
	e->family = family;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	ew_submit(e);
	return 0;
}

/* The fallback pair for kernels before 5.15. */
SEC("tracepoint/syscalls/sys_enter_connect")
int ew_connect_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sockaddr *addr = (struct sockaddr *)ctx->args[1];
	__u16 family = 0;
	__u32 val;

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
		e->cgroup_id = bpf_get_current_cgroup_id();
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

/* A socket enters SYN_SENT (tcp_v4_connect/tcp_v6_connect, process
 * context): remember who and when. */
static __always_inline void ew_syn_sent_enter(__u64 sk)
{
	struct ew_syn_sent v;

	v.start_ns = bpf_ktime_get_ns();
	v.cgroup_id = bpf_get_current_cgroup_id();
	v.tgid = bpf_get_current_pid_tgid() >> 32;
	v._pad = 0;
	bpf_get_current_comm(v.comm, sizeof(v.comm));
	if (bpf_map_update_elem(&ew_syn_sent, &sk, &v, BPF_ANY))
		ew_count_lost(EW_PROBE_CONNECT);
}

/*
 * tp_btf/inet_sock_set_state (5.5+, BTF-enabled raw tracepoint), tried
 * first: the program gets (sk, oldstate, newstate) directly, and the kernel
 * skips building the classic tracepoint's record (addresses, ports) for
 * every state change on the host. Of the ~6 state changes of a connection
 * (client and server side), only the two SYN_SENT transitions do work; the
 * others leave on the first comparison. The socket is read with BTF-typed
 * direct loads.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ew_sock_state_btf, struct sock *sk, int oldstate, int newstate)
{
	struct ew_syn_sent *st;
	struct ew_tcp_connect *e;
	__u64 key = (__u64)sk;
	__u16 family;

	if (newstate == TCP_SYN_SENT) {
		if (sk->sk_protocol == IPPROTO_TCP)
			ew_syn_sent_enter(key);
		return 0;
	}
	if (oldstate != TCP_SYN_SENT)
		return 0;
	st = bpf_map_lookup_elem(&ew_syn_sent, &key);
	if (!st)
		return 0; /* SYN sent before we attached, or not TCP */
	e = ew_reserve(EW_PROBE_CONNECT, EW_KIND_TCP_CONNECT, sizeof(*e));
	if (e) {
		family = sk->__sk_common.skc_family;
		e->duration_ns = e->hdr.ts_ns - st->start_ns;
		e->cgroup_id = st->cgroup_id;
		e->tgid = st->tgid;
		e->sk_err = newstate == TCP_ESTABLISHED ? 0 : sk->sk_err;
		e->family = family;
		e->dport = __builtin_bswap16(sk->__sk_common.skc_dport);
		e->newstate = (__u16)newstate;
		e->_pad = 0;
		if (family == AF_INET6) {
			const __u64 *a = (const __u64 *)&sk->__sk_common.skc_v6_daddr;

			*(__u64 *)&e->daddr[0] = a[0];
			*(__u64 *)&e->daddr[8] = a[1];
		} else {
			*(__u32 *)&e->daddr[0] = sk->__sk_common.skc_daddr;
			*(__u32 *)&e->daddr[4] = 0;
			*(__u64 *)&e->daddr[8] = 0;
		}
		__builtin_memcpy(e->comm, st->comm, sizeof(e->comm));
		ew_submit(e);
	}
	bpf_map_delete_elem(&ew_syn_sent, &key);
	return 0;
}

/* sock:inet_sock_set_state, the classic tracepoint: the fallback, which
 * finds the peer in the record the kernel built for it. */
SEC("tracepoint/sock/inet_sock_set_state")
int ew_sock_state_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct ew_syn_sent *st;
	struct ew_tcp_connect *e;
	__u64 sk = (__u64)ctx->skaddr;
	int newstate = ctx->newstate;

	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_SYN_SENT) {
		ew_syn_sent_enter(sk);
		return 0;
	}
	if (ctx->oldstate != TCP_SYN_SENT)
		return 0;
	st = bpf_map_lookup_elem(&ew_syn_sent, &sk);
	if (!st)
		return 0; /* SYN sent before we attached */
	e = ew_reserve(EW_PROBE_CONNECT, EW_KIND_TCP_CONNECT, sizeof(*e));
	if (e) {
		e->duration_ns = e->hdr.ts_ns - st->start_ns;
		e->cgroup_id = st->cgroup_id;
		e->tgid = st->tgid;
		e->sk_err = newstate == TCP_ESTABLISHED ? 0 : BPF_CORE_READ((struct sock *)sk, sk_err);
		e->family = ctx->family;
		e->dport = ctx->dport;
		e->newstate = (__u16)newstate;
		e->_pad = 0;
		if (ctx->family == AF_INET6) {
			bpf_probe_read_kernel(e->daddr, 16, ctx->daddr_v6);
		} else {
			__builtin_memset(e->daddr, 0, sizeof(e->daddr));
			bpf_probe_read_kernel(e->daddr, 4, ctx->daddr);
		}
		__builtin_memcpy(e->comm, st->comm, sizeof(e->comm));
		ew_submit(e);
	}
	bpf_map_delete_elem(&ew_syn_sent, &sk);
	return 0;
}
