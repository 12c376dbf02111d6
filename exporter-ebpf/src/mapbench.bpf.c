/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * `edgewatch bench maps`: the cost of a lookup and of an update in each map
 * type, on the running kernel. Not loaded by the exporter.
 *
 * Each program does EW_BENCH_OPS operations on one map per run, with keys
 * drawn from a linear congruential sequence over the keys the loader put
 * in the map (seeded once per run), and returns how many succeeded: found
 * for lookups, 0 returned for updates. The loader checks that every lookup
 * hit. ew_bench_base runs the same loop without the map call; its time is
 * subtracted. XDP programs, because BPF_PROG_TEST_RUN repeats them and
 * reports the mean time per run (kernel 4.12+).
 *
 * Updates rewrite existing keys (BPF_ANY), which is what a data plane
 * updating its counters or a control plane refreshing entries does.
 * Map sizes and key counts are set by the loader.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Map operations per program run. */
#define EW_BENCH_OPS 64

/* Keys 0..n-1 in the array and hash maps; /24 prefixes in the LPM tries. */
volatile const __u32 ew_bench_entries = 1;
volatile const __u32 ew_bench_lpm_small = 1;
volatile const __u32 ew_bench_lpm_large = 1;

/* IPv4 LPM key: prefix i is 10.0.0.0 + i * 256, /24. */
struct ew_bench_lpm_key {
	__u32 prefixlen;
	__u32 addr; /* network byte order */
};

#define EW_BENCH_PLAIN(name, map_type, flags)  \
	struct {                               \
		__uint(type, map_type);        \
		__uint(max_entries, 1);        \
		__uint(map_flags, flags);      \
		__type(key, __u32);            \
		__type(value, __u64);          \
	} name SEC(".maps")

EW_BENCH_PLAIN(ew_b_array, BPF_MAP_TYPE_ARRAY, 0);
EW_BENCH_PLAIN(ew_b_pcpu_array, BPF_MAP_TYPE_PERCPU_ARRAY, 0);
EW_BENCH_PLAIN(ew_b_hash, BPF_MAP_TYPE_HASH, 0);
EW_BENCH_PLAIN(ew_b_pcpu_hash, BPF_MAP_TYPE_PERCPU_HASH, 0);
EW_BENCH_PLAIN(ew_b_lru, BPF_MAP_TYPE_LRU_HASH, 0);
EW_BENCH_PLAIN(ew_b_lru_nc, BPF_MAP_TYPE_LRU_HASH, BPF_F_NO_COMMON_LRU);

#define EW_BENCH_LPM(name)                                   \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);         \
		__uint(max_entries, 1);                      \
		__uint(map_flags, BPF_F_NO_PREALLOC);        \
		__type(key, struct ew_bench_lpm_key);        \
		__type(value, __u64);                        \
	} name SEC(".maps")

EW_BENCH_LPM(ew_b_lpm_1k);
EW_BENCH_LPM(ew_b_lpm_100k);

/* The same loop in every program; loops stay loops (not unrolled) so that
 * the baseline's loop costs what the others' do. */
#define EW_BENCH_LOOP(n_expr, ...)                                     \
	__u32 x = bpf_get_prandom_u32(), n = (n_expr), hits = 0;       \
	_Pragma("clang loop unroll(disable)")                          \
	for (int i = 0; i < EW_BENCH_OPS; i++) {                       \
		x = x * 1664525u + 1013904223u;                        \
		__u32 k = x % n;                                       \
		__VA_ARGS__                                            \
	}                                                              \
	return hits;

SEC("xdp")
int ew_bench_base(struct xdp_md *ctx)
{
	EW_BENCH_LOOP(ew_bench_entries, {
		volatile __u32 sink = k;
		(void)sink;
		hits++;
	})
}

#define EW_BENCH_PLAIN_PROGS(suffix, map)                                         \
	SEC("xdp")                                                                \
	int ew_lk_##suffix(struct xdp_md *ctx)                                    \
	{                                                                         \
		EW_BENCH_LOOP(ew_bench_entries, {                                 \
			if (bpf_map_lookup_elem(&map, &k))                        \
				hits++;                                           \
		})                                                                \
	}                                                                         \
	SEC("xdp")                                                                \
	int ew_up_##suffix(struct xdp_md *ctx)                                    \
	{                                                                         \
		EW_BENCH_LOOP(ew_bench_entries, {                                 \
			__u64 v = x;                                              \
			if (bpf_map_update_elem(&map, &k, &v, BPF_ANY) == 0)      \
				hits++;                                           \
		})                                                                \
	}

EW_BENCH_PLAIN_PROGS(array, ew_b_array)
EW_BENCH_PLAIN_PROGS(pcpu_array, ew_b_pcpu_array)
EW_BENCH_PLAIN_PROGS(hash, ew_b_hash)
EW_BENCH_PLAIN_PROGS(pcpu_hash, ew_b_pcpu_hash)
EW_BENCH_PLAIN_PROGS(lru, ew_b_lru)
EW_BENCH_PLAIN_PROGS(lru_nc, ew_b_lru_nc)

/* Lookups ask for an address inside prefix k; updates rewrite prefix k. */
#define EW_BENCH_LPM_PROGS(suffix, map, count)                                    \
	SEC("xdp")                                                                \
	int ew_lk_##suffix(struct xdp_md *ctx)                                    \
	{                                                                         \
		EW_BENCH_LOOP(count, {                                            \
			struct ew_bench_lpm_key key = {                           \
				.prefixlen = 32,                                  \
				.addr = __builtin_bswap32(0x0a000000u + (k << 8) + 1), \
			};                                                        \
			if (bpf_map_lookup_elem(&map, &key))                      \
				hits++;                                           \
		})                                                                \
	}                                                                         \
	SEC("xdp")                                                                \
	int ew_up_##suffix(struct xdp_md *ctx)                                    \
	{                                                                         \
		EW_BENCH_LOOP(count, {                                            \
			struct ew_bench_lpm_key key = {                           \
				.prefixlen = 24,                                  \
				.addr = __builtin_bswap32(0x0a000000u + (k << 8)), \
			};                                                        \
			__u64 v = x;                                              \
			if (bpf_map_update_elem(&map, &key, &v, BPF_ANY) == 0)    \
				hits++;                                           \
		})                                                                \
	}

EW_BENCH_LPM_PROGS(lpm_1k, ew_b_lpm_1k, ew_bench_lpm_small)
EW_BENCH_LPM_PROGS(lpm_100k, ew_b_lpm_100k, ew_bench_lpm_large)

char LICENSE[] SEC("license") = "GPL";
