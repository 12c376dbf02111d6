/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * @NAME@ probe: one record per @CATEGORY@:@EVENT@ event, with the process
 * that caused it.
 *
 * Compiled with every other probe file of src/probes/ into one object (build.rs).
 */

SEC("tracepoint/@CATEGORY@/@EVENT@")
int ew_@NAME@_tp(void *ctx)
{
	struct ew_@NAME@ *e = ew_reserve(EW_PROBE_@UPPER@, EW_KIND_@UPPER@, sizeof(*e));

	if (!e)
		return 0;
	e->tgid = bpf_get_current_pid_tgid() >> 32;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	ew_submit(e);
	return 0;
}
