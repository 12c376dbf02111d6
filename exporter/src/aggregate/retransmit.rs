//! TCP retransmit events into metrics, counted the way the kernel counts
//! TcpRetransSegs (net/ipv4/tcp_output.c, 6.18):
//!
//! - a `tcp_retransmit_skb` event whose `err` is one of the early exits of
//!   `__tcp_retransmit_skb()` (EBUSY, EINVAL, ENOMEM, EHOSTUNREACH, EAGAIN)
//!   returned before the counter moved: it is not a retransmission, and is
//!   counted in `edgewatch_tcp_retransmits_skipped_total{reason}` instead;
//! - any other event added `tcp_skb_pcount(skb)` segments (a transmit
//!   failure after the counter still counted, so err != 0 there counts too);
//! - a `tcp_retransmit_synack` event added exactly one.
//!
//! Where this can differ from the kernel: a transmit that fails *after* the
//! counter with ENOMEM or EHOSTUNREACH (a route vanishing between
//! rebuild_header and ip_queue_xmit) looks like an early exit and is not
//! counted; the kernel counted it. On kernels before 6.12 (no `err`), the
//! tracepoint fires only when the transmit succeeded, so a failed transmit
//! that the kernel counted is missed.
//!
//! Worst-case series without opt-in labels: retransmits 2 families x 14
//! states = 28, segments 2, skipped 6. With `peer` (address and port), each
//! family is capped at `metrics.series_limit` label sets plus overflow.

use std::sync::Arc;

use edgewatch_common::{RTX_HAS_ERR, RTX_SYNACK, Retransmit};
use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{
    family_label,
    labels::{Foldable, MetricLabel, SeriesCap, encode_label, encode_opt, fold, peer_port},
};
use crate::aggregate::labels::label_set;
use crate::{config::OptInLabels, errno};

/// Errors with which `__tcp_retransmit_skb()` returns before it adds to
/// TcpRetransSegs.
pub const EARLY_EXITS: &[i32] = &[
    libc::EBUSY,
    libc::EINVAL,
    libc::ENOMEM,
    libc::EHOSTUNREACH,
    libc::EAGAIN,
];

/// TCP state names (include/net/tcp_states.h), lower case.
pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        12 => "new_syn_recv",
        13 => "bound_inactive",
        _ => "other",
    }
}

/// How many segments the kernel added to TcpRetransSegs for this event, or
/// the errno of the early exit that kept it from counting.
pub fn counted_segments(r: &Retransmit) -> Result<u64, i32> {
    if r.flags & RTX_SYNACK != 0 {
        return Ok(1);
    }
    if r.flags & RTX_HAS_ERR != 0 && EARLY_EXITS.contains(&r.err.saturating_neg()) {
        return Err(r.err.saturating_neg());
    }
    Ok(u64::from(r.segs))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RetransmitLabels {
    pub family: &'static str,
    pub state: &'static str,
    pub peer: Option<Arc<str>>,
    pub port: Option<Arc<str>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SegmentLabels {
    pub family: &'static str,
    pub peer: Option<Arc<str>>,
    pub port: Option<Arc<str>>,
}

label_set! {
    pub struct ReasonLabel {
        pub reason: &'static str,
    }
}

impl Foldable for RetransmitLabels {
    fn folded(&self) -> Self {
        Self {
            peer: fold(&self.peer),
            port: fold(&self.port),
            ..self.clone()
        }
    }
}

impl Foldable for SegmentLabels {
    fn folded(&self) -> Self {
        Self {
            peer: fold(&self.peer),
            port: fold(&self.port),
            ..self.clone()
        }
    }
}

impl EncodeLabelSet for RetransmitLabels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_label(enc, "family", self.family)?;
        encode_label(enc, "state", self.state)?;
        encode_opt(enc, "peer", self.peer.as_deref())?;
        encode_opt(enc, "port", self.port.as_deref())
    }
}

impl EncodeLabelSet for SegmentLabels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_label(enc, "family", self.family)?;
        encode_opt(enc, "peer", self.peer.as_deref())?;
        encode_opt(enc, "port", self.port.as_deref())
    }
}

pub struct RetransmitAggregator {
    labels: OptInLabels,
    retransmits: Family<RetransmitLabels, Counter>,
    segments: Family<SegmentLabels, Counter>,
    skipped: Family<ReasonLabel, Counter>,
    retransmits_cap: SeriesCap<RetransmitLabels>,
    segments_cap: SeriesCap<SegmentLabels>,
}

impl RetransmitAggregator {
    pub fn register(
        registry: &mut Registry,
        labels: OptInLabels,
        series_limit: usize,
        dropped: &Family<MetricLabel, Counter>,
    ) -> Self {
        let retransmits = Family::<RetransmitLabels, Counter>::default();
        let segments = Family::<SegmentLabels, Counter>::default();
        let skipped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "edgewatch_tcp_retransmits",
            "TCP retransmissions (one per retransmitted skb or SYN-ACK), by socket state",
            retransmits.clone(),
        );
        registry.register(
            "edgewatch_tcp_retransmitted_segments",
            "TCP segments retransmitted, counted as the kernel counts TcpRetransSegs",
            segments.clone(),
        );
        registry.register(
            "edgewatch_tcp_retransmits_skipped",
            "Retransmit attempts the kernel abandoned before sending (not in TcpRetransSegs), by errno",
            skipped.clone(),
        );
        Self {
            labels,
            retransmits_cap: SeriesCap::new(
                "edgewatch_tcp_retransmits_total",
                series_limit,
                dropped.clone(),
            ),
            segments_cap: SeriesCap::new(
                "edgewatch_tcp_retransmitted_segments_total",
                series_limit,
                dropped.clone(),
            ),
            retransmits,
            segments,
            skipped,
        }
    }

    pub fn on_retransmit(&mut self, r: &Retransmit) {
        let segs = match counted_segments(r) {
            Ok(n) => n,
            Err(errno) => {
                let reason = errno::name(errno).unwrap_or("other");
                self.skipped.get_or_create(&ReasonLabel { reason }).inc();
                return;
            }
        };
        let family = family_label(r.family);
        let (peer, port) = peer_port(self.labels.peer, r.family, &r.daddr, r.dport);
        let l = RetransmitLabels {
            family,
            state: state_name(r.state),
            peer: peer.clone(),
            port: port.clone(),
        };
        let l = self.retransmits_cap.admit(l);
        self.retransmits.get_or_create(&l).inc();
        let s = self
            .segments_cap
            .admit(SegmentLabels { family, peer, port });
        self.segments.get_or_create(&s).inc_by(segs);
    }
}

#[cfg(test)]
mod tests {
    use bytemuck::Zeroable;

    use super::*;

    fn rtx(flags: u8, err: i32, segs: u16) -> Retransmit {
        let mut r = Retransmit::zeroed();
        r.flags = flags;
        r.err = err;
        r.segs = segs;
        r
    }

    #[test]
    fn counts_like_the_kernel() {
        // 6.12+ layout: success counts pcount segments.
        assert_eq!(counted_segments(&rtx(RTX_HAS_ERR, 0, 7)), Ok(7));
        // Early exits never reached the counter.
        for e in EARLY_EXITS {
            assert_eq!(counted_segments(&rtx(RTX_HAS_ERR, -e, 3)), Err(*e));
        }
        // A transmit failure after the counter still counted.
        assert_eq!(
            counted_segments(&rtx(RTX_HAS_ERR, -libc::ENOBUFS, 2)),
            Ok(2)
        );
        assert_eq!(counted_segments(&rtx(RTX_HAS_ERR, -libc::EPERM, 1)), Ok(1));
        // Pre-6.12 layout: fired only after success, err absent.
        assert_eq!(counted_segments(&rtx(0, 0, 4)), Ok(4));
        // SYN-ACK: exactly one.
        assert_eq!(counted_segments(&rtx(RTX_SYNACK, 0, 1)), Ok(1));
    }

    #[test]
    fn state_names() {
        assert_eq!(state_name(1), "established");
        assert_eq!(state_name(2), "syn_sent");
        assert_eq!(state_name(3), "syn_recv");
        assert_eq!(state_name(12), "new_syn_recv");
        assert_eq!(state_name(0), "other");
        assert_eq!(state_name(200), "other");
    }
}
