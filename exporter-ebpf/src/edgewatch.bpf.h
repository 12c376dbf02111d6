/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Shared by every probe in src/probes/ (one object, see build.rs): the ring buffer, the
 * per-CPU lost-record counters and the submit policy.
 */
#ifndef EDGEWATCH_BPF_H
#define EDGEWATCH_BPF_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "vmlinux.h"
#include "edgewatch/events.h"

/* Not in the UAPI headers (include/linux/socket.h, include/net/tcp_states.h). */
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

/*
 * Submit policy, set by the loader before load (EbpfLoader::set_global).
 * A record is submitted with BPF_RB_NO_WAKEUP unless the unread data in the
 * ring has reached ew_wakeup_bytes: the wake-up (irq_work) costs ~2.5 us per
 * record on this machine class, more than everything else the probe does.
 * The consumer also drains on a timer and before each scrape, so nothing
 * waits for long. 0 means wake the consumer for every record.
 */
volatile const __u64 ew_wakeup_bytes = 256 * 1024;

/* The ring buffer every tracing probe writes into. The loader sizes it
 * (--ringbuf.size-bytes); this is only the default. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} ew_events SEC(".maps");

/* Records that could not be reserved (ring full), per probe id and CPU.
 * Only the kernel can see these drops, so only the kernel can count them. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EW_PROBE_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} ew_lost SEC(".maps");

static __always_inline void ew_count_lost(__u32 probe)
{
	__u64 *n = bpf_map_lookup_elem(&ew_lost, &probe);

	/* Atomic although per-CPU: a tracing program can be preempted by
	 * another one on the same CPU on PREEMPT kernels. Uncontended, so cheap. */
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* Reserve a record of `size` bytes for `probe`, counting a failure. */
static __always_inline void *ew_reserve(__u32 probe, __u16 kind, __u16 size)
{
	struct ew_hdr *h = bpf_ringbuf_reserve(&ew_events, size, 0);

	if (!h) {
		ew_count_lost(probe);
		return NULL;
	}
	h->kind = kind;
	h->size = size;
	h->cpu = bpf_get_smp_processor_id();
	h->ts_ns = bpf_ktime_get_ns();
	return h;
}

static __always_inline void ew_submit(void *rec)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(&ew_events, BPF_RB_AVAIL_DATA) >= ew_wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(rec, flags);
}

#endif /* EDGEWATCH_BPF_H */
