//! retransmit probe: `tcp:tcp_retransmit_skb` and `tcp:tcp_retransmit_synack`
//! (kernel 4.16+), counted the way the kernel counts TcpRetransSegs (see
//! aggregate/retransmit.rs). BPF side: exporter-ebpf/src/retransmit.bpf.c,
//! which handles both the 6.12+ context (with `err`) and the older one in a
//! single object through CO-RE. BTF-enabled raw tracepoints (tp_btf) are
//! tried first (6.12+ for the `err` argument), the classic tracepoints are
//! the fallback.

use aya::Ebpf;
use edgewatch_common::{KIND_RETRANSMIT, PROBE_RETRANSMIT};
use prometheus_client::registry::Registry;

use super::{AttachMode, Probe, ProbeError, attach_tp_btf, attach_tracepoint, error_chain};
use crate::{
    aggregate::retransmit::RetransmitAggregator,
    config::Settings,
    decode::{self, DecodeError},
    telemetry::Telemetry,
};

pub struct RetransmitProbe {
    agg: RetransmitAggregator,
    try_tp_btf: bool,
}

impl RetransmitProbe {
    pub fn new(registry: &mut Registry, settings: &Settings, telemetry: &Telemetry) -> Self {
        Self {
            agg: RetransmitAggregator::register(
                registry,
                settings.labels,
                settings.series_limit,
                &telemetry.series_dropped,
            ),
            try_tp_btf: settings.mode_allowed("tp_btf"),
        }
    }
}

impl Probe for RetransmitProbe {
    fn name(&self) -> &'static str {
        "retransmit"
    }

    fn id(&self) -> u32 {
        PROBE_RETRANSMIT
    }

    fn kinds(&self) -> &'static [u16] {
        &[KIND_RETRANSMIT]
    }

    fn programs(&self) -> &'static [&'static str] {
        &[
            "ew_retransmit_skb_btf",
            "ew_retransmit_synack_btf",
            "ew_retransmit_skb",
            "ew_retransmit_synack",
        ]
    }

    fn attach(&mut self, bpf: &mut Ebpf) -> Result<AttachMode, ProbeError> {
        if self.try_tp_btf {
            let skb = attach_tp_btf(bpf, "ew_retransmit_skb_btf", "tcp_retransmit_skb");
            let synack = skb.and_then(|()| {
                attach_tp_btf(bpf, "ew_retransmit_synack_btf", "tcp_retransmit_synack")
            });
            match synack {
                Ok(()) => return Ok(AttachMode::TpBtf),
                Err(e) => {
                    // Both hooks use one mode: undo a half attachment.
                    for p in ["ew_retransmit_skb_btf", "ew_retransmit_synack_btf"] {
                        let prog = bpf.program_mut(p).and_then(|prog| {
                            <&mut aya::programs::BtfTracePoint>::try_from(prog).ok()
                        });
                        if let Some(prog) = prog {
                            let _ = prog.unload();
                        }
                    }
                    tracing::info!(
                        probe = "retransmit",
                        reason = %error_chain(&e),
                        "tp_btf retransmit hooks unavailable; using the classic tracepoints"
                    );
                }
            }
        }
        attach_tracepoint(bpf, "ew_retransmit_skb", "tcp", "tcp_retransmit_skb")?;
        attach_tracepoint(bpf, "ew_retransmit_synack", "tcp", "tcp_retransmit_synack")?;
        Ok(AttachMode::Tracepoint)
    }

    fn handle(&mut self, kind: u16, bytes: &[u8]) -> Result<(), DecodeError> {
        match kind {
            KIND_RETRANSMIT => self.agg.on_retransmit(&decode::record(bytes)?),
            kind => return Err(DecodeError::UnknownKind { kind }),
        }
        Ok(())
    }
}
