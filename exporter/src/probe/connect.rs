//! connect probe: `syscalls:sys_enter_connect`/`sys_exit_connect` for every
//! connect() and `sock:inet_sock_set_state` for every TCP handshake leaving
//! SYN_SENT (kernel 4.16+). BPF side: exporter-ebpf/src/connect.bpf.c.
//!
//! Tracepoints only: they are stable ABI, cost nothing to other syscalls, and
//! inet_sock_set_state is the one hook that sees a non-blocking connect end.

use aya::Ebpf;
use edgewatch_common::{KIND_CONNECT_CALL, KIND_TCP_CONNECT, PROBE_CONNECT};
use prometheus_client::registry::Registry;

use super::{AttachMode, Probe, ProbeError, attach_tracepoint};
use crate::{
    aggregate::{connect::ConnectAggregator, map::Clock},
    config::Settings,
    decode::{self, DecodeError},
    telemetry::Telemetry,
};

pub struct ConnectProbe {
    agg: ConnectAggregator,
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

    fn attach(&mut self, bpf: &mut Ebpf) -> Result<AttachMode, ProbeError> {
        attach_tracepoint(bpf, "ew_connect_enter", "syscalls", "sys_enter_connect")?;
        attach_tracepoint(bpf, "ew_connect_exit", "syscalls", "sys_exit_connect")?;
        attach_tracepoint(bpf, "ew_sock_state", "sock", "inet_sock_set_state")?;
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
