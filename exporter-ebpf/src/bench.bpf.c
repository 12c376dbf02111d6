/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Benchmark-only emitter, never loaded by edgewatch: a socket filter that
 * BPF_PROG_TEST_RUN runs `repeat` times, each run writing one map-operation
 * record into edgewatch's own ring buffer with edgewatch's own submit
 * policy (edgewatch.bpf.h: ew_reserve, ew_submit, ew_count_lost). The
 * loader reuses edgewatch's `ew_events` and `ew_lost` maps (by pinning
 * them), so the records reach the running consumer like any probe's, and
 * losses count in ew_lost[EW_PROBE_BENCH].
 *
 * Each record is an update of map id `ew_bench_map_id` named
 * `ew_bench_name`, so the consumer counts them apart from real updates:
 * generated = runs, delivered = the consumer's count for that name,
 * lost = ew_lost[EW_PROBE_BENCH]; delivered + lost = generated.
 *
 * A socket filter rather than an XDP program: a BPF_PROG_TEST_RUN of XDP
 * with repeat > 1 swaps the program into the XDP dispatcher and back
 * (net/bpf/test_run.c, bpf_prog_change_xdp()), which waits for an RCU
 * grace period, tens of milliseconds here, on every call; an skb test
 * run has no such step, so the emitter's rate is the programs' own.
 */
#include "edgewatch.bpf.h"

volatile const __u32 ew_bench_map_id = 0;
volatile const char ew_bench_name[16] __attribute__((aligned(8))) = "ewbench";

SEC("socket")
int ew_bench_emit(struct __sk_buff *skb)
{
	struct ew_map_op *e = ew_reserve(EW_PROBE_BENCH, EW_KIND_MAP_OP, sizeof(*e));

	if (!e)
		return 0;
	e->duration_ns = 1000;
	e->cgroup_id = 0;
	e->map_id = ew_bench_map_id;
	e->tgid = 0;
	e->ret = 0;
	e->count = 1;
	e->requested = 1;
	e->map_type = 1; /* hash */
	e->cmd = 2;      /* BPF_MAP_UPDATE_ELEM */
	/* Volatile reads: the loader's value, not the compile-time default. */
	*(__u64 *)&e->map_name[0] = ((const volatile __u64 *)ew_bench_name)[0];
	*(__u64 *)&e->map_name[8] = ((const volatile __u64 *)ew_bench_name)[1];
	__builtin_memcpy(e->comm, "ew-bench\0\0\0\0\0\0\0", 16);
	ew_submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
