/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * edgewatch's tracing object: one compilation unit so that every probe shares
 * the one ring buffer (ew_events) and lost-record array (ew_lost) without
 * pinning. User space loads only the programs of the probes it enables; the
 * maps of the others cost a few pages.
 */
#include "edgewatch.bpf.h"

#include "connect.bpf.c"
#include "retransmit.bpf.c"
#include "map.bpf.c"

char LICENSE[] SEC("license") = "GPL";
