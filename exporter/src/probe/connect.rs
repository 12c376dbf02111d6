//! connect probe: `syscalls:sys_enter_connect`/`sys_exit_connect` for every
//! connect() and `sock:inet_sock_set_state` for every TCP handshake leaving
//! SYN_SENT (kernel 4.16+). BPF side: exporter-ebpf/src/connect.bpf.c.
//!
//! The syscall hooks are per-syscall tracepoints (they cost other syscalls
//! nothing): `sys_exit_connect` alone on 5.15+, which reads the address
//! from the caller's saved registers, else `sys_enter_connect` too. The handshake hook is `tp_btf/inet_sock_set_state` where the
//! kernel has BTF-enabled raw tracepoints (5.5+), which skips building the
//! classic tracepoint's record on every socket state change on the host;
//! otherwise the classic `sock:inet_sock_set_state`. The attach mode
//! reported is the handshake hook's.

use aya::Ebpf;
use edgewatch_common::{KIND_CONNECT_CALL, KIND_TCP_CONNECT, PROBE_CONNECT};
use prometheus_client::registry::Registry;

use super::{AttachMode, Probe, ProbeError, attach_tp_btf, attach_tracepoint, error_chain};
use crate::{
    aggregate::{connect::ConnectAggregator, map::Clock},
    config::Settings,
    decode::{self, DecodeError},
    telemetry::Telemetry,
};

pub struct ConnectProbe {
    agg: ConnectAggregator,
    try_tp_btf: bool,
    try_task_btf: bool,
}

impl ConnectProbe {
    pub fn new(
        registry: &mut Registry,
        settings: &Settings,
        telemetry: &Telemetry,
        clock: Clock,
    ) -> Self {
        Self {
            agg: ConnectAggregator::register(
                registry,
                settings.labels,
                settings.series_limit,
                &telemetry.series_dropped,
                clock,
                telemetry.spans.clone(),
            ),
            try_tp_btf: settings.mode_allowed("tp_btf"),
            try_task_btf: settings.mode_allowed("task_btf"),
        }
    }
}

impl Probe for ConnectProbe {
    fn name(&self) -> &'static str {
        "connect"
    }

    fn id(&self) -> u32 {
        PROBE_CONNECT
    }

    fn kinds(&self) -> &'static [u16] {
        &[KIND_CONNECT_CALL, KIND_TCP_CONNECT]
    }

    fn programs(&self) -> &'static [&'static str] {
        &[
            "ew_connect_ret",
            "ew_connect_enter",
            "ew_connect_exit",
            "ew_sock_state_btf",
            "ew_sock_state_tp",
        ]
    }

    fn attach(&mut self, bpf: &mut Ebpf) -> Result<AttachMode, ProbeError> {
        // connect() from its exit alone where the kernel has bpf_task_pt_regs
        // (5.15+); else the entry/exit pair with a hash between them.
        let exit_only = if self.try_task_btf {
            attach_tracepoint(bpf, "ew_connect_ret", "syscalls", "sys_exit_connect")
        } else {
            Err(ProbeError::MissingProgram(
                "ew_connect_ret (task_btf disabled by attach.disable)",
            ))
        };
        if let Err(e) = exit_only {
            tracing::info!(
                probe = "connect",
                reason = %error_chain(&e),
                "exit-only connect() program unavailable (kernel before 5.15?); using the entry/exit pair"
            );
            attach_tracepoint(bpf, "ew_connect_enter", "syscalls", "sys_enter_connect")?;
            attach_tracepoint(bpf, "ew_connect_exit", "syscalls", "sys_exit_connect")?;
        }
        if self.try_tp_btf {
            match attach_tp_btf(bpf, "ew_sock_state_btf", "inet_sock_set_state") {
                Ok(()) => return Ok(AttachMode::TpBtf),
                Err(e) => tracing::info!(
                    probe = "connect",
                    reason = %error_chain(&e),
                    "tp_btf/inet_sock_set_state unavailable; using the classic tracepoint"
                ),
            }
        }
        attach_tracepoint(bpf, "ew_sock_state_tp", "sock", "inet_sock_set_state")?;
        Ok(AttachMode::Tracepoint)
    }

    fn handle(&mut self, kind: u16, bytes: &[u8]) -> Result<(), DecodeError> {
        match kind {
            KIND_CONNECT_CALL => self.agg.on_call(&decode::record(bytes)?),
            KIND_TCP_CONNECT => self.agg.on_tcp_connect(&decode::record(bytes)?),
            kind => return Err(DecodeError::UnknownKind { kind }),
        }
        Ok(())
    }
}
