//! map probe: every BPF map update and delete (single and batch) from every
//! process on the host. BPF side: exporter-ebpf/src/map.bpf.c.
//!
//! Attach chain, cheapest first, chosen at start-up:
//! 1. fentry/fexit on `__sys_bpf` (5.5+, BPF trampolines);
//! 2. kprobe/kretprobe on `__sys_bpf` (CONFIG_KPROBES);
//! 3. `syscalls:sys_enter_bpf`/`sys_exit_bpf` (always there).
//!
//! Each keeps the call in flight in task storage and resolves the fd with
//! BTF-typed loads (5.11+); where the kernel refuses that, the tracepoints
//! again with a hash and CO-RE reads (`ew_maph_*`), reported as mode
//! `tracepoint` too.
//!
//! Each failure is recognised by what it is and logged with why: a kernel
//! that refuses trampolines fails the load with EPERM and an empty verifier
//! log; a kernel without kprobes has no kprobe PMU
//! (/sys/bus/event_source/devices/kprobe/type).

use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, KProbe, ProgramError, kprobe::KProbeError},
};
use edgewatch_common::{KIND_MAP_OP, PROBE_MAP};
use prometheus_client::registry::Registry;

use super::{AttachMode, Probe, ProbeError, attach_tracepoint};
use crate::{
    aggregate::map::{Clock, MapAggregator},
    config::Settings,
    decode::{self, DecodeError},
    telemetry::Telemetry,
};

const TARGET: &str = "__sys_bpf";

pub struct MapProbe {
    agg: MapAggregator,
    try_fentry: bool,
    try_kprobe: bool,
    try_task_btf: bool,
}

impl MapProbe {
    pub fn new(
        registry: &mut Registry,
        settings: &Settings,
        telemetry: &Telemetry,
        clock: Clock,
    ) -> Self {
        Self {
            agg: MapAggregator::register(
                registry,
                settings.labels,
                settings.series_limit,
                &telemetry.series_dropped,
                clock,
                telemetry.spans.clone(),
            ),
            try_fentry: settings.mode_allowed("fentry"),
            try_kprobe: settings.mode_allowed("kprobe"),
            try_task_btf: settings.mode_allowed("task_btf"),
        }
    }
}

/// Why a hook could not be used, in an operator's words.
pub fn explain(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log }
            if io_error.raw_os_error() == Some(libc::EPERM) && verifier_log.to_string().trim().is_empty() =>
        {
            "the kernel refuses BPF trampoline programs (load failed with EPERM and an empty verifier log)"
                .to_string()
        }
        ProgramError::KProbeError(KProbeError::FileError { filename, io_error })
            if io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            format!("kprobes are not available: {} does not exist (CONFIG_KPROBES off?)", filename.display())
        }
        e => super::error_chain(e),
    }
}

fn try_fentry(bpf: &mut Ebpf, btf: &Btf) -> Result<(), ProgramError> {
    let entry: &mut FEntry = bpf
        .program_mut("ew_map_fentry")
        .ok_or(ProgramError::NotLoaded)?
        .try_into()?;
    entry.load(TARGET, btf)?;
    entry.attach()?;
    let exit: &mut FExit = bpf
        .program_mut("ew_map_fexit")
        .ok_or(ProgramError::NotLoaded)?
        .try_into()?;
    if let Err(e) = exit
        .load(TARGET, btf)
        .and_then(|()| exit.attach().map(|_| ()))
    {
        let entry: &mut FEntry = bpf
            .program_mut("ew_map_fentry")
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        let _ = entry.unload();
        return Err(e);
    }
    Ok(())
}

fn try_kprobe(bpf: &mut Ebpf) -> Result<(), ProgramError> {
    let entry: &mut KProbe = bpf
        .program_mut("ew_map_kprobe")
        .ok_or(ProgramError::NotLoaded)?
        .try_into()?;
    entry.load()?;
    if let Err(e) = entry.attach(TARGET, 0) {
        let _ = entry.unload();
        return Err(e);
    }
    let exit: &mut KProbe = bpf
        .program_mut("ew_map_kretprobe")
        .ok_or(ProgramError::NotLoaded)?
        .try_into()?;
    let result = exit
        .load()
        .and_then(|()| exit.attach(TARGET, 0).map(|_| ()));
    if let Err(e) = result {
        let _ = exit.unload();
        let entry: &mut KProbe = bpf
            .program_mut("ew_map_kprobe")
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        let _ = entry.unload();
        return Err(e);
    }
    Ok(())
}

impl Probe for MapProbe {
    fn name(&self) -> &'static str {
        "map"
    }

    fn id(&self) -> u32 {
        PROBE_MAP
    }

    fn kinds(&self) -> &'static [u16] {
        &[KIND_MAP_OP]
    }

    fn programs(&self) -> &'static [&'static str] {
        &[
            "ew_map_fentry",
            "ew_map_fexit",
            "ew_map_kprobe",
            "ew_map_kretprobe",
            "ew_map_tp_enter",
            "ew_map_tp_exit",
            "ew_maph_enter",
            "ew_maph_exit",
        ]
    }

    fn attach(&mut self, bpf: &mut Ebpf) -> Result<AttachMode, ProbeError> {
        if !self.try_task_btf {
            // The fentry and kprobe programs use task storage too.
            tracing::info!(
                probe = "map",
                "task_btf disabled by attach.disable: hash fallback on the tracepoints"
            );
            attach_tracepoint(bpf, "ew_maph_enter", "syscalls", "sys_enter_bpf")?;
            attach_tracepoint(bpf, "ew_maph_exit", "syscalls", "sys_exit_bpf")?;
            return Ok(AttachMode::Tracepoint);
        }
        if !self.try_fentry {
            tracing::info!(probe = "map", "fentry disabled by attach.disable");
        } else {
            match Btf::from_sys_fs() {
                Ok(btf) => match try_fentry(bpf, &btf) {
                    Ok(()) => return Ok(AttachMode::Fentry),
                    Err(e) => tracing::info!(
                        probe = "map",
                        reason = %explain(&e),
                        "fentry/fexit on {TARGET} unavailable; trying kprobes"
                    ),
                },
                Err(e) => tracing::info!(
                    probe = "map",
                    reason = %e,
                    "no kernel BTF for fentry; trying kprobes"
                ),
            }
        }
        if !self.try_kprobe {
            tracing::info!(probe = "map", "kprobe disabled by attach.disable");
        } else {
            match try_kprobe(bpf) {
                Ok(()) => return Ok(AttachMode::Kprobe),
                Err(e) => tracing::info!(
                    probe = "map",
                    reason = %explain(&e),
                    "kprobe on {TARGET} unavailable; using syscall tracepoints"
                ),
            }
        }
        let fast = attach_tracepoint(bpf, "ew_map_tp_enter", "syscalls", "sys_enter_bpf")
            .and_then(|()| attach_tracepoint(bpf, "ew_map_tp_exit", "syscalls", "sys_exit_bpf"));
        if let Err(e) = fast {
            tracing::info!(
                probe = "map",
                reason = %super::error_chain(&e),
                "task-storage tracepoint programs unavailable (kernel before 5.11?); using the hash fallback"
            );
            super::detach(bpf, &["ew_map_tp_enter", "ew_map_tp_exit"]);
            attach_tracepoint(bpf, "ew_maph_enter", "syscalls", "sys_enter_bpf")?;
            attach_tracepoint(bpf, "ew_maph_exit", "syscalls", "sys_exit_bpf")?;
        }
        Ok(AttachMode::Tracepoint)
    }

    fn handle(&mut self, kind: u16, bytes: &[u8]) -> Result<(), DecodeError> {
        match kind {
            KIND_MAP_OP => self.agg.on_op(&decode::record(bytes)?),
            kind => return Err(DecodeError::UnknownKind { kind }),
        }
        Ok(())
    }
}
