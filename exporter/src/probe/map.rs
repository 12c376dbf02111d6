//! map probe: every BPF map update and delete (single and batch) from every
//! process on the host, and the inventory of every map and program read at
//! scrape time. BPF side: exporter-ebpf/src/probes/map.bpf.c; aggregation:
//! aggregate/map.rs; inventory: scrape/inventory.rs; the hot-update
//! doctor (writes no program can read, writers, stale twins):
//! aggregate/doctor.rs, over the program-to-map snapshot of vocab/refs.rs
//! read by scrape/refs.rs.
//!
//! Attach chain, cheapest first, chosen at start-up:
//! 1. fentry/fexit on `__sys_bpf` (5.5+, BPF trampolines);
//! 2. kprobe/kretprobe on `__sys_bpf` (CONFIG_KPROBES);
//! 3. `syscalls:sys_enter_bpf`/`sys_exit_bpf` (always there).

use edgewatch_common::{BpfChange, MapOp, PROBE_MAP};
use prometheus_client::collector::Collector;

use super::{
    AttachMode, Handler, Hook, Link, ProbeDef,
    fixture::{bytes, hdr, name},
};
use crate::{
    aggregate::map::MapAggregator,
    scrape::{Sources, inventory::InventoryCollector},
    telemetry::Telemetry,
};

const TARGET: &str = "__sys_bpf";

pub const PROBE: ProbeDef<MapAggregator> = ProbeDef {
    name: "map",
    about: "every BPF map update and delete, every map's fullness, every program's cost",
    id: PROBE_MAP,
    records: &[Handler::of::<MapOp>(), Handler::of::<BpfChange>()],
    chain: &[
        Link {
            mode: AttachMode::Fentry,
            hooks: &[
                Hook::Fentry {
                    program: "ew_map_fentry",
                    function: TARGET,
                },
                Hook::Fexit {
                    program: "ew_map_fexit",
                    function: TARGET,
                },
            ],
        },
        Link {
            mode: AttachMode::Kprobe,
            hooks: &[
                Hook::Kprobe {
                    program: "ew_map_kprobe",
                    function: TARGET,
                },
                Hook::Kprobe {
                    program: "ew_map_kretprobe",
                    function: TARGET,
                },
            ],
        },
        Link {
            mode: AttachMode::Tracepoint,
            hooks: &[
                Hook::Tracepoint {
                    program: "ew_map_tp_enter",
                    category: "syscalls",
                    name: "sys_enter_bpf",
                },
                Hook::Tracepoint {
                    program: "ew_map_tp_exit",
                    category: "syscalls",
                    name: "sys_exit_bpf",
                },
            ],
        },
    ],
    aggregator: MapAggregator::register,
    collector: Some(inventory),
    fixtures,
};

fn inventory(sources: &mut dyn Sources, telemetry: &Telemetry) -> Box<dyn Collector> {
    Box::new(InventoryCollector::new(
        sources.inventory(),
        telemetry.clone(),
    ))
}

fn op(cmd: u16, ret: i32, requested: u32, count: u32, id: u32, ty: u32, map: &str) -> Vec<u8> {
    bytes(&MapOp {
        hdr: hdr::<MapOp>(),
        duration_ns: 1500,
        map_id: id,
        map_type: ty,
        tgid: 7,
        ret,
        count,
        requested,
        cmd,
        hashed: 0,
        _pad2: 0,
        map_name: name(map),
        comm: name("cilium-agent"),
        key_hash: 0,
        value_hash: 0,
    })
}

fn fixtures() -> Vec<Vec<u8>> {
    vec![
        // Some process loaded a program: which programs use which maps is re-read.
        bytes(&BpfChange {
            hdr: hdr::<BpfChange>(),
            tgid: 7,
            cmd: 5,
            _pad: 0,
        }),
        op(2, 0, 1, 1, 10, 9, "conntrack"),
        op(2, -libc::EEXIST, 1, 1, 10, 9, "conntrack"),
        op(2, -libc::E2BIG, 1, 1, 10, 9, "conntrack"),
        op(26, -libc::E2BIG, 8, 5, 12, 11, "routes"),
        op(3, -libc::ENOENT, 1, 1, 12, 11, "routes"),
        op(27, 0, 4, 4, 12, 11, "routes"),
    ]
}
