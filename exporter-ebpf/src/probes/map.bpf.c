/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * map probe: every BPF_MAP_UPDATE_ELEM, _DELETE_ELEM, _UPDATE_BATCH and
 * _DELETE_BATCH from every process, with the map it targets, the result and
 * the duration; every successful program load, attach/detach, link change
 * and map binding (ew_bpf_change, so user space re-reads which programs use
 * which maps); plus the map inventory iterator.
 *
 * Three attach modes, tried in this order by user space, all feeding the
 * same enter/exit logic:
 *   1. fentry/fexit on __sys_bpf (5.5+, needs BPF trampolines): one program
 *      pair on the bpf() syscall's own function, no tracepoint overhead;
 *   2. kprobe/kretprobe on __sys_bpf (needs CONFIG_KPROBES);
 *   3. syscalls:sys_enter_bpf / sys_exit_bpf (always there), which cost
 *      other syscalls nothing.
 * The map is resolved at entry from the fd through the task's file table
 * (current->files->fdt->fd[fd]), checked to be a BPF map file by its dentry
 * name ("bpf-map", fs/anon_inodes.c), so a wrong fd resolves to nothing
 * rather than to garbage.
 *
 * Inventory: iter/bpf_map (5.9+) visits every map on the host once per
 * scrape and writes (id, entries) where the count is exact and cheap:
 * hash-table types through the kfunc bpf_map_sum_elem_count (6.6+, the
 * per-CPU element counter htab maintains), LPM tries through n_entries.
 * Cost grows with the number of maps, not with their entries.
 *
 * Before 6.6 (no kfunc), hash-table types are counted by iter/bpf_map_elem
 * (5.9+), one link per map, under a per-scrape budget user space enforces
 * (exporter/src/scrape/elemcount.rs): the kernel walks the map's buckets and calls
 * ew_map_elem_count once per element, which only counts; the final call
 * (key == NULL) writes the count.
 *
 * Compiled with every other probe file of src/probes/ into one object (build.rs).
 */

#define EW_BPF_MAP_UPDATE_ELEM 2
#define EW_BPF_MAP_DELETE_ELEM 3
#define EW_BPF_MAP_UPDATE_BATCH 26
#define EW_BPF_MAP_DELETE_BATCH 27

/* Calls that may change which programs use which maps (ew_bpf_change). */
#define EW_BPF_PROG_LOAD 5
#define EW_BPF_PROG_ATTACH 8
#define EW_BPF_PROG_DETACH 9
#define EW_BPF_RAW_TRACEPOINT_OPEN 17
#define EW_BPF_LINK_CREATE 28
#define EW_BPF_LINK_UPDATE 29
#define EW_BPF_LINK_DETACH 34
#define EW_BPF_PROG_BIND_MAP 35

#define EW_MAP_TYPE_HASH 1
#define EW_MAP_TYPE_PERCPU_HASH 5
#define EW_MAP_TYPE_LRU_HASH 9
#define EW_MAP_TYPE_LRU_PERCPU_HASH 10
#define EW_MAP_TYPE_LPM_TRIE 11

/* A call between entry and exit, by thread. */
struct ew_map_call {
	__u64 start_ns;
	__u64 uattr;
	__u32 map_id;
	__u32 map_type;
	__u32 requested;
	__u16 cmd;
	__u16 hashed;
	char map_name[16];
	__u64 key_hash;
	__u64 value_hash;
};

/* Set by the loader (--otlp.map-key-hashes): hash each single-element
 * call's key and value into the record. Off, the verifier drops the
 * hashing code (read-only data is known at load time). */
volatile const __u32 ew_map_hashes = 0;

/* Where the bytes to hash are copied. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[EW_MAP_HASH_MAX]);
} ew_map_hash_buf SEC(".maps");

/* A plain hash, not an LRU, for the reason given in connect.bpf.c: a full
 * map fails the insert, which is counted in ew_lost, instead of evicting a
 * call in flight silently. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ew_map_call);
} ew_map_calls SEC(".maps");

static __always_inline int ew_is_map_cmd(int cmd)
{
	return cmd == EW_BPF_MAP_UPDATE_ELEM || cmd == EW_BPF_MAP_DELETE_ELEM ||
	       cmd == EW_BPF_MAP_UPDATE_BATCH || cmd == EW_BPF_MAP_DELETE_BATCH;
}

static __always_inline int ew_is_change_cmd(int cmd)
{
	return cmd == EW_BPF_PROG_LOAD || cmd == EW_BPF_PROG_ATTACH || cmd == EW_BPF_PROG_DETACH ||
	       cmd == EW_BPF_RAW_TRACEPOINT_OPEN || cmd == EW_BPF_LINK_CREATE ||
	       cmd == EW_BPF_LINK_UPDATE || cmd == EW_BPF_LINK_DETACH || cmd == EW_BPF_PROG_BIND_MAP;
}

static __always_inline int ew_is_batch(int cmd)
{
	return cmd == EW_BPF_MAP_UPDATE_BATCH || cmd == EW_BPF_MAP_DELETE_BATCH;
}

/* The struct bpf_map behind `fd` in the current task, or NULL. */
static __always_inline struct bpf_map *ew_fd_to_map(__u32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	const unsigned char *dname;
	char name[8] = {};

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return NULL;
	dname = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	bpf_probe_read_kernel(name, sizeof(name), dname);
	if (name[0] != 'b' || name[1] != 'p' || name[2] != 'f' || name[3] != '-' ||
	    name[4] != 'm' || name[5] != 'a' || name[6] != 'p' || name[7] != 0)
		return NULL;
	return BPF_CORE_READ(file, private_data);
}

/* FNV-1a 64 of the first min(size, EW_MAP_HASH_MAX) bytes at user address
 * `ptr` (the writer's key or value, as the kernel is about to copy it);
 * false when they cannot be read. */
static __always_inline int ew_fnv1a(__u64 ptr, __u32 size, __u64 *out)
{
	__u32 zero = 0;
	__u8 *buf = bpf_map_lookup_elem(&ew_map_hash_buf, &zero);
	__u64 h = 0xcbf29ce484222325ULL;

	if (!buf || !ptr)
		return 0;
	if (size > EW_MAP_HASH_MAX)
		size = EW_MAP_HASH_MAX;
	if (bpf_probe_read_user(buf, size, (void *)ptr))
		return 0;
	for (__u32 i = 0; i < EW_MAP_HASH_MAX; i++) {
		if (i >= size)
			break;
		h ^= buf[i];
		h *= 0x100000001b3ULL;
	}
	*out = h;
	return 1;
}

/* Entry of a bpf() call: `uattr` is the user's union bpf_attr. */
static __always_inline void ew_map_enter(int cmd, __u64 uattr)
{
	struct ew_map_call call = {};
	struct bpf_map *map;
	__u64 id;
	__u32 fd = 0;

	if (ew_is_change_cmd(cmd)) {
		/* Only its result matters (ew_map_exit). */
		id = bpf_get_current_pid_tgid();
		call.cmd = (__u16)cmd;
		if (bpf_map_update_elem(&ew_map_calls, &id, &call, BPF_ANY))
			ew_count_lost(EW_PROBE_MAP);
		return;
	}
	if (!ew_is_map_cmd(cmd))
		return;
	id = bpf_get_current_pid_tgid();
	call.start_ns = bpf_ktime_get_ns();
	call.uattr = uattr;
	call.cmd = (__u16)cmd;
	call.requested = 1;
	if (ew_is_batch(cmd)) {
		bpf_probe_read_user(&fd, sizeof(fd),
				    (void *)(uattr + __builtin_offsetof(union bpf_attr, batch.map_fd)));
		bpf_probe_read_user(&call.requested, sizeof(call.requested),
				    (void *)(uattr + __builtin_offsetof(union bpf_attr, batch.count)));
	} else {
		bpf_probe_read_user(&fd, sizeof(fd),
				    (void *)(uattr + __builtin_offsetof(union bpf_attr, map_fd)));
	}
	map = ew_fd_to_map(fd);
	if (map) {
		call.map_id = BPF_CORE_READ(map, id);
		call.map_type = BPF_CORE_READ(map, map_type);
		BPF_CORE_READ_STR_INTO(&call.map_name, map, name);
	}
	if (ew_map_hashes && map && !ew_is_batch(cmd)) {
		__u64 ptr = 0;

		bpf_probe_read_user(&ptr, sizeof(ptr),
				    (void *)(uattr + __builtin_offsetof(union bpf_attr, key)));
		if (ew_fnv1a(ptr, BPF_CORE_READ(map, key_size), &call.key_hash))
			call.hashed |= EW_MAP_KEY_HASHED;
		if (cmd == EW_BPF_MAP_UPDATE_ELEM) {
			ptr = 0;
			bpf_probe_read_user(&ptr, sizeof(ptr),
					    (void *)(uattr + __builtin_offsetof(union bpf_attr, value)));
			if (ew_fnv1a(ptr, BPF_CORE_READ(map, value_size), &call.value_hash))
				call.hashed |= EW_MAP_VALUE_HASHED;
		}
	}
	if (bpf_map_update_elem(&ew_map_calls, &id, &call, BPF_ANY))
		ew_count_lost(EW_PROBE_MAP);
}

/* A program load, attach or link change went through: tell user space. */
static __always_inline void ew_emit_change(__u16 cmd, __u32 tgid)
{
	struct ew_bpf_change *e = ew_reserve(EW_PROBE_MAP, EW_KIND_BPF_CHANGE, sizeof(*e));

	if (!e)
		return;
	e->tgid = tgid;
	e->cmd = cmd;
	e->_pad = 0;
	ew_submit(e);
}

/* Exit of the same call: emit the record. */
static __always_inline void ew_map_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ew_map_call *call = bpf_map_lookup_elem(&ew_map_calls, &id);
	struct ew_map_op *e;

	if (!call)
		return;
	if (ew_is_change_cmd(call->cmd)) {
		if (ret >= 0)
			ew_emit_change(call->cmd, id >> 32);
		bpf_map_delete_elem(&ew_map_calls, &id);
		return;
	}
	e = ew_reserve(EW_PROBE_MAP, EW_KIND_MAP_OP, sizeof(*e));
	if (e) {
		e->duration_ns = e->hdr.ts_ns - call->start_ns;
		e->map_id = call->map_id;
		e->map_type = call->map_type;
		e->tgid = id >> 32;
		e->ret = (__s32)ret;
		e->requested = call->requested;
		e->count = 1;
		if (ew_is_batch(call->cmd))
			bpf_probe_read_user(&e->count, sizeof(e->count),
					    (void *)(call->uattr +
						     __builtin_offsetof(union bpf_attr, batch.count)));
		e->cmd = call->cmd;
		e->hashed = call->hashed;
		e->_pad2 = 0;
		e->key_hash = call->key_hash;
		e->value_hash = call->value_hash;
		__builtin_memcpy(e->map_name, call->map_name, sizeof(e->map_name));
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		ew_submit(e);
	}
	bpf_map_delete_elem(&ew_map_calls, &id);
}

/* 3. Syscall tracepoints. */
SEC("tracepoint/syscalls/sys_enter_bpf")
int ew_map_tp_enter(struct trace_event_raw_sys_enter *ctx)
{
	ew_map_enter((int)ctx->args[0], ctx->args[1]);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_bpf")
int ew_map_tp_exit(struct trace_event_raw_sys_exit *ctx)
{
	ew_map_exit(ctx->ret);
	return 0;
}

/*
 * 1. fentry/fexit on int __sys_bpf(enum bpf_cmd cmd, bpfptr_t uattr,
 * unsigned int size). bpfptr_t is a 16-byte struct passed in two argument
 * slots: the pointer, then is_kernel. Calls from BPF syscall programs
 * (is_kernel) are not the user-space writers we observe.
 */
SEC("fentry/__sys_bpf")
int ew_map_fentry(__u64 *ctx)
{
	if (ctx[2] & 0xff)
		return 0;
	ew_map_enter((int)ctx[0], ctx[1]);
	return 0;
}

SEC("fexit/__sys_bpf")
int ew_map_fexit(__u64 *ctx)
{
	if (ctx[2] & 0xff)
		return 0;
	ew_map_exit((long)(int)ctx[4]);
	return 0;
}

/* 2. kprobe/kretprobe on __sys_bpf: the struct argument arrives in the
 * second and third argument registers. */
SEC("kprobe/__sys_bpf")
int ew_map_kprobe(struct pt_regs *ctx)
{
	if (PT_REGS_PARM3(ctx) & 0xff)
		return 0;
	ew_map_enter((int)PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx));
	return 0;
}

SEC("kretprobe/__sys_bpf")
int ew_map_kretprobe(struct pt_regs *ctx)
{
	ew_map_exit((long)(int)PT_REGS_RC(ctx));
	return 0;
}

/* Inventory. */

/*
 * s64 bpf_map_sum_elem_count(const struct bpf_map *map), a kfunc (6.6+).
 * aya 0.14 has no kfunc (__ksym) support, so the call is emitted as a raw
 * instruction: BPF_CALL with src_reg BPF_PSEUDO_KFUNC_CALL (2) and a
 * placeholder imm (EW_KFUNC_PLACEHOLDER) that user space replaces with the
 * kfunc's BTF id in the running kernel's vmlinux BTF before loading, or
 * with `r0 = -1` (unknown) where the kernel lacks the kfunc.
 */
#define EW_KFUNC_PLACEHOLDER 0x7ffeab01

static __always_inline __s64 ew_map_sum_elem_count(struct bpf_map *map)
{
	register __u64 r1 asm("r1") = (__u64)map;
	register __s64 r0 asm("r0");

	asm volatile(".quad 0x7ffeab0100002085"
		     : "=r"(r0), "+r"(r1)
		     :
		     : "r2", "r3", "r4", "r5", "memory");
	return r0;
}

SEC("iter/bpf_map")
int ew_map_iter(struct bpf_iter__bpf_map *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct bpf_map *map = ctx->map;
	struct ew_map_entries out = {};
	__u32 type;

	if (!map)
		return 0;
	out.map_id = map->id;
	type = map->map_type;
	switch (type) {
	case EW_MAP_TYPE_HASH:
	case EW_MAP_TYPE_PERCPU_HASH:
	case EW_MAP_TYPE_LRU_HASH:
	case EW_MAP_TYPE_LRU_PERCPU_HASH:
	{
		__s64 n = ew_map_sum_elem_count(map);

		if (n >= 0) {
			out.entries = n;
			out.flags = EW_ENTRIES_KNOWN;
		}
		break;
	}
	case EW_MAP_TYPE_LPM_TRIE:
		out.entries = BPF_CORE_READ((struct lpm_trie *)map, n_entries);
		out.flags = EW_ENTRIES_KNOWN;
		break;
	}
	bpf_seq_write(seq, &out, sizeof(out));
	return 0;
}

/*
 * Element count of one map (the link's), for kernels without
 * bpf_map_sum_elem_count. Counted here per iterator session (meta's
 * session_id is unique per BPF_ITER_CREATE): meta->seq_num alone cannot
 * tell an empty map from a map of one element at the final call.
 * User space walks one map at a time (the inventory holds a lock), so one
 * pair of globals is enough. Writes one __u64 at the final call.
 */
static __u64 ew_elem_session;
static __u64 ew_elem_count;

SEC("iter/bpf_map_elem")
int ew_map_elem_count(struct bpf_iter__bpf_map_elem *ctx)
{
	struct bpf_iter_meta *meta = ctx->meta;
	__u64 session = meta->session_id;
	__u64 n;

	if (ew_elem_session != session) {
		ew_elem_session = session;
		ew_elem_count = 0;
	}
	if (ctx->key) {
		ew_elem_count++;
		return 0;
	}
	n = ew_elem_count;
	bpf_seq_write(meta->seq, &n, sizeof(n));
	return 0;
}
