/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The kernel types edgewatch's programs read, declared with only the fields
 * they use and marked preserve_access_index: every access is a CO-RE field
 * relocation resolved by the loader (aya) against the running kernel's BTF
 * (/sys/kernel/btf/vmlinux). Field order and offsets here do not matter.
 *
 * Why not a full `bpftool btf dump ... format c` vmlinux.h: it is ~135k lines
 * tied to the kernel of whoever generated it, and it would make the build
 * depend on the build host's BTF. This subset builds anywhere clang and the
 * libbpf-dev headers do.
 */
#ifndef EDGEWATCH_VMLINUX_H
#define EDGEWATCH_VMLINUX_H

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct trace_entry {
	unsigned short type;
	unsigned char flags;
	unsigned char preempt_count;
	int pid;
};

/* include/trace/events/syscalls.h: syscalls:sys_enter_* / sys_exit_* */
struct trace_event_raw_sys_enter {
	struct trace_entry ent;
	long id;
	unsigned long args[6];
};

struct trace_event_raw_sys_exit {
	struct trace_entry ent;
	long id;
	long ret;
};

/* include/trace/events/sock.h: sock:inet_sock_set_state */
struct trace_event_raw_inet_sock_set_state {
	struct trace_entry ent;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

/* include/trace/events/tcp.h (6.13+; not in 6.12): tcp:tcp_retransmit_skb */
struct trace_event_raw_tcp_retransmit_skb {
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
	int err;
};

/* tcp:tcp_retransmit_synack */
struct trace_event_raw_tcp_retransmit_synack {
	struct trace_entry ent;
	const void *skaddr;
	const void *req;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

struct sk_buff {
	char cb[48];
};

/* include/net/tcp.h: TCP's view of skb->cb */
struct tcp_skb_cb {
	__u32 seq;
	__u32 end_seq;
	union {
		__u32 tcp_tw_isn;
		struct {
			__u16 tcp_gso_segs;
			__u16 tcp_gso_size;
		};
	};
};

/* The in6_addr's bytes; a struct so CO-RE matches it with the kernel's
 * struct in6_addr (composite to composite). */
struct ew_in6 {
	__u8 b[16];
};

struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct ew_in6 skc_v6_daddr;
};

struct request_sock {
	struct sock_common __req_common;
};

struct sock {
	struct sock_common __sk_common;
	int sk_err;
	__u16 sk_protocol;
};

/* File table walk: current->files->fdt->fd[fd]->private_data */
struct qstr {
	const unsigned char *name;
};

struct dentry {
	struct qstr d_name;
};

struct path {
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct task_struct {
	struct files_struct *files;
};

struct bpf_map {
	enum bpf_map_type map_type; /* an enum in the kernel: CO-RE wants the same kind */
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	__u32 id;
	char name[16];
};

/* kernel/bpf/lpm_trie.c */
struct lpm_trie {
	struct bpf_map map;
	__u64 n_entries;
};

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
};

struct bpf_iter__bpf_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
};

/* iter/bpf_map_elem (5.9+): one call per element of the map the link was
 * created for, then one with key == NULL. */
struct bpf_iter__bpf_map_elem {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	void *key;
	void *value;
};

struct sockaddr {
	unsigned short sa_family;
};

#pragma clang attribute pop

/* kprobe context: the architecture's register frame, as the UAPI header
 * spells it (bpf_tracing.h's PT_REGS_* use those names here). */
#include <asm/ptrace.h>

#endif /* EDGEWATCH_VMLINUX_H */
