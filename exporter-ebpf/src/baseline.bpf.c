/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Empty programs on the hooks edgewatch uses: the baseline its benchmarks
 * compare against (same hook, same events, nothing done). Not loaded by
 * edgewatch itself.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tracepoint/tcp/tcp_retransmit_skb")
int ew_empty_rtx(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int ew_empty_conn_in(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int ew_empty_connect(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_bpf")
int ew_empty_bpf_in(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_bpf")
int ew_empty_bpf_out(void *ctx)
{
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int ew_empty_state(void *ctx)
{
	return 0;
}

SEC("xdp")
int ew_empty_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
