/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * map probe: every BPF_MAP_UPDATE_ELEM, _DELETE_ELEM, _UPDATE_BATCH and
 * _DELETE_BATCH from every process, with the map it targets, the result and
 * the duration; plus the map inventory iterator.
 *
 * Three attach modes, tried in this order by user space, all feeding the
 * same enter/exit logic:
 *   1. fentry/fexit on __sys_bpf (5.5+, needs BPF trampolines): one program
 *      pair on the bpf() syscall's own function, no tracepoint overhead;
 *   2. kprobe/kretprobe on __sys_bpf (needs CONFIG_KPROBES);
 *   3. syscalls:sys_enter_bpf / sys_exit_bpf (always there), which cost
 *      other syscalls nothing.
 * The first three use the fast path (5.11+): the call in flight lives in
 * task storage and the fd is resolved with BTF-typed loads from
 * bpf_get_current_task_btf(); a fourth, the same tracepoints with a hash
 * and CO-RE reads, is the fallback for older kernels.
 * The map is resolved at entry from the fd through the task's file table
 * (current->files->fdt->fd[fd]), checked to be a BPF map file (its f_op is
 * bpf_map_fops, learned from a file whose dentry is named "bpf-map",
 * fs/anon_inodes.c), so a wrong fd resolves to nothing rather than to
 * garbage.
 *
 * Inventory: iter/bpf_map (5.9+) visits every map on the host once per
 * scrape and writes (id, entries) where the count is exact and cheap:
 * hash-table types through the kfunc bpf_map_sum_elem_count (6.6+, the
 * per-CPU element counter htab maintains), LPM tries through n_entries.
 * Cost grows with the number of maps, not with their entries.
 *
 * Included by edgewatch.bpf.c.
 */

#define EW_BPF_MAP_UPDATE_ELEM 2
#define EW_BPF_MAP_DELETE_ELEM 3
#define EW_BPF_MAP_UPDATE_BATCH 26
#define EW_BPF_MAP_DELETE_BATCH 27

#define EW_MAP_TYPE_HASH 1
#define EW_MAP_TYPE_PERCPU_HASH 5
#define EW_MAP_TYPE_LRU_HASH 9
#define EW_MAP_TYPE_LRU_PERCPU_HASH 10
#define EW_MAP_TYPE_LPM_TRIE 11

/* A call between entry and exit, by thread. */
struct ew_map_call {
	__u64 start_ns; /* 0: no call in flight */
	__u64 uattr;
	__u32 map_id;
	__u32 requested;
	__u16 map_type;
	__u16 cmd;
	__u32 _pad;
	char map_name[16];
};

/* In-flight calls of the fast path (5.11+): task-local storage, found from
 * the task in a few loads, with nothing to delete at exit (the entry is
 * marked idle and freed with the task). A failed get (no memory, or a
 * nested storage operation on this CPU) counts in ew_lost. */
#ifndef EW_COMPAT
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ew_map_call);
} ew_map_task SEC(".maps");
#else
/* The compat object (kernels without task storage, which cannot create the
 * map above): a stand-in of the same name, so the object loads; the fast
 * programs fail verification there and the probe falls back to the hash. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, int);
	__type(value, struct ew_map_call);
} ew_map_task SEC(".maps");
#endif

/* In-flight calls of the fallback path (kernels before 5.11, without task
 * storage and bpf_get_current_task_btf), by thread. A plain hash, not an
 * LRU, for the reason given in connect.bpf.c: a full map fails the insert,
 * which is counted in ew_lost, instead of evicting a call in flight
 * silently. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ew_map_call);
} ew_map_calls SEC(".maps");

/* The kernel's bpf_map_fops, learned from the first file that passed the
 * dentry-name check below: every BPF map file has it as f_op
 * (kernel/bpf/syscall.c, bpf_map_new_fd) and no other file does, so a
 * file whose f_op equals it is a map without reading its name. */
__u64 ew_map_fops;

static __always_inline int ew_is_map_cmd(int cmd)
{
	return cmd == EW_BPF_MAP_UPDATE_ELEM || cmd == EW_BPF_MAP_DELETE_ELEM ||
	       cmd == EW_BPF_MAP_UPDATE_BATCH || cmd == EW_BPF_MAP_DELETE_BATCH;
}

static __always_inline int ew_is_batch(int cmd)
{
	return cmd == EW_BPF_MAP_UPDATE_BATCH || cmd == EW_BPF_MAP_DELETE_BATCH;
}

/* True when `file` (a kernel address) is a BPF map file: its dentry is
 * named "bpf-map" (fs/anon_inodes.c), so a wrong fd resolves to nothing
 * rather than to garbage. */
static __always_inline int ew_file_is_map(struct file *file)
{
	const unsigned char *dname;
	char name[8] = {};

	dname = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	bpf_probe_read_kernel(name, sizeof(name), dname);
	return name[0] == 'b' && name[1] == 'p' && name[2] == 'f' && name[3] == '-' &&
	       name[4] == 'm' && name[5] == 'a' && name[6] == 'p' && name[7] == 0;
}

/* Fills the map fields of `call` from a struct bpf_map (a kernel address):
 * one read of the span from map_type to the end of name where the running
 * kernel's layout allows it (it does on every kernel since 4.15), one read
 * per field otherwise. */
#define EW_MAP_SPAN 192
static __always_inline void ew_read_map(struct bpf_map *map, struct ew_map_call *call)
{
	__u32 lo = bpf_core_field_offset(struct bpf_map, map_type);
	__u32 id = bpf_core_field_offset(struct bpf_map, id);
	__u32 nm = bpf_core_field_offset(struct bpf_map, name);
	__u8 span[EW_MAP_SPAN];

	if (lo < id && id < nm && nm + 16 - lo <= EW_MAP_SPAN) {
		if (bpf_probe_read_kernel(span, nm + 16 - lo, (void *)map + lo))
			return;
		call->map_type = *(__u32 *)&span[0];
		call->map_id = *(__u32 *)&span[id - lo];
		__builtin_memcpy(call->map_name, &span[nm - lo], 16);
		return;
	}
	call->map_id = BPF_CORE_READ(map, id);
	call->map_type = BPF_CORE_READ(map, map_type);
	BPF_CORE_READ_STR_INTO(&call->map_name, map, name);
}

/* Resolves `fd` of the current task to its map into `call`. Fast path:
 * BTF-typed direct loads from bpf_get_current_task_btf() down to the fd
 * table, then one read for the file pointer, one for (f_op, private_data)
 * and one for the map's fields. */
static __always_inline void ew_fd_to_map_btf(__u32 fd, struct ew_map_call *call)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	struct file **fds;
	struct file *file = NULL;
	__u32 fop = bpf_core_field_offset(struct file, f_op);
	__u32 priv = bpf_core_field_offset(struct file, private_data);
	__u64 head[4] = {};
	__u64 f_op, map;

	if (fd >= fdt->max_fds)
		return;
	fds = fdt->fd;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return;
	if (fop < priv && priv - fop <= 24) {
		if (bpf_probe_read_kernel(head, priv - fop + 8, (void *)file + fop))
			return;
		f_op = head[0];
		map = head[((priv - fop) / 8) & 3];
	} else {
		f_op = (__u64)BPF_CORE_READ(file, f_op);
		map = (__u64)BPF_CORE_READ(file, private_data);
	}
	if (!f_op || !map)
		return;
	if (f_op != ew_map_fops) {
		if (!ew_file_is_map(file))
			return;
		ew_map_fops = f_op;
	}
	ew_read_map((struct bpf_map *)map, call);
}

/* The same through CO-RE reads from bpf_get_current_task() (the fallback
 * for kernels without bpf_get_current_task_btf). */
static __always_inline void ew_fd_to_map_core(__u32 fd, struct ew_map_call *call)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	struct bpf_map *map;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file || !ew_file_is_map(file))
		return;
	map = BPF_CORE_READ(file, private_data);
	if (map)
		ew_read_map(map, call);
}

/* The call's fd and requested count from the user's union bpf_attr. */
static __always_inline __u32 ew_map_args(int cmd, __u64 uattr, struct ew_map_call *call)
{
	__u32 fd = 0;

	call->uattr = uattr;
	call->cmd = (__u16)cmd;
	call->requested = 1;
	call->map_id = 0;
	call->map_type = 0;
	__builtin_memset(call->map_name, 0, sizeof(call->map_name));
	if (ew_is_batch(cmd)) {
		bpf_probe_read_user(&fd, sizeof(fd),
				    (void *)(uattr + __builtin_offsetof(union bpf_attr, batch.map_fd)));
		bpf_probe_read_user(&call->requested, sizeof(call->requested),
				    (void *)(uattr + __builtin_offsetof(union bpf_attr, batch.count)));
	} else {
		bpf_probe_read_user(&fd, sizeof(fd),
				    (void *)(uattr + __builtin_offsetof(union bpf_attr, map_fd)));
	}
	return fd;
}

/* Writes the record for a finished call. */
static __always_inline void ew_map_emit(struct ew_map_call *call, long ret)
{
	struct ew_map_op *e = ew_reserve(EW_PROBE_MAP, EW_KIND_MAP_OP, sizeof(*e));

	if (!e)
		return;
	e->duration_ns = e->hdr.ts_ns - call->start_ns;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->map_id = call->map_id;
	e->tgid = bpf_get_current_pid_tgid() >> 32;
	e->ret = (__s32)ret;
	e->requested = call->requested;
	e->count = 1;
	if (ew_is_batch(call->cmd))
		bpf_probe_read_user(&e->count, sizeof(e->count),
				    (void *)(call->uattr + __builtin_offsetof(union bpf_attr, batch.count)));
	e->map_type = call->map_type;
	e->cmd = call->cmd;
	__builtin_memcpy(e->map_name, call->map_name, sizeof(e->map_name));
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	ew_submit(e);
}

/* Entry of a bpf() call (`uattr` is the user's union bpf_attr), fast path. */
static __always_inline void ew_map_enter(int cmd, __u64 uattr)
{
	struct ew_map_call *call;
	__u32 fd;

	if (!ew_is_map_cmd(cmd))
		return;
	call = bpf_task_storage_get(&ew_map_task, bpf_get_current_task_btf(), 0,
				    BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!call) {
		ew_count_lost(EW_PROBE_MAP);
		return;
	}
	fd = ew_map_args(cmd, uattr, call);
	ew_fd_to_map_btf(fd, call);
	call->start_ns = bpf_ktime_get_ns();
}

/* Exit of the same call: emit the record. */
static __always_inline void ew_map_exit(long ret)
{
	struct ew_map_call *call = bpf_task_storage_get(&ew_map_task, bpf_get_current_task_btf(), 0, 0);

	if (!call || !call->start_ns)
		return; /* not a map call, or it entered before we attached */
	ew_map_emit(call, ret);
	call->start_ns = 0;
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

/* 4. The same tracepoints for kernels before 5.11: CO-RE reads and a hash. */
SEC("tracepoint/syscalls/sys_enter_bpf")
int ew_maph_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct ew_map_call call = {};
	int cmd = (int)ctx->args[0];
	__u64 id;
	__u32 fd;

	if (!ew_is_map_cmd(cmd))
		return 0;
	id = bpf_get_current_pid_tgid();
	fd = ew_map_args(cmd, ctx->args[1], &call);
	ew_fd_to_map_core(fd, &call);
	call.start_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&ew_map_calls, &id, &call, BPF_ANY))
		ew_count_lost(EW_PROBE_MAP);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_bpf")
int ew_maph_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ew_map_call *call = bpf_map_lookup_elem(&ew_map_calls, &id);

	if (!call)
		return 0;
	ew_map_emit(call, ctx->ret);
	bpf_map_delete_elem(&ew_map_calls, &id);
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
