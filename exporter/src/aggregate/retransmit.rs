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
//! states = 28, segments 2, skipped 6. With `peer` (address and port) or a
//! workload label, each family is capped at `metrics.series_limit` label
//! sets plus overflow. A retransmit the kernel made in softirq (a timer,
//! an incoming ACK) has no acting task: its `cgroup` reads `_kernel` and
//! its other workload labels are absent.

use edgewatch_common::{RTX_HAS_ERR, RTX_SYNACK, Retransmit};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{
    Context, OnRecord, Reconfigure,
    cache::{Capped, HandleCache},
    peer_port,
};
use crate::vocab::{
    errno,
    kernel::{family_name, tcp_state_name},
    labels::{Foldable, OptInLabels, OptLabels, SeriesCap},
    series::{Counters, SeriesCounter},
};

/// Errors with which `__tcp_retransmit_skb()` returns before it adds to
/// TcpRetransSegs.
pub const EARLY_EXITS: &[i32] = &[
    libc::EBUSY,
    libc::EINVAL,
    libc::ENOMEM,
    libc::EHOSTUNREACH,
    libc::EAGAIN,
];

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

/// Labels of `edgewatch_tcp_retransmits_total` (opt-in: `peer`, `port`,
/// the workload labels).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetransmitLabels {
    pub family: &'static str,
    pub state: &'static str,
    #[prometheus(flatten)]
    pub opt: OptLabels,
}

/// Labels of `edgewatch_tcp_retransmitted_segments_total` (opt-in: `peer`,
/// `port`, the workload labels).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SegmentLabels {
    pub family: &'static str,
    #[prometheus(flatten)]
    pub opt: OptLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl Foldable for RetransmitLabels {
    fn folded(&self) -> Self {
        Self {
            opt: self.opt.folded(),
            ..self.clone()
        }
    }
}

impl Foldable for SegmentLabels {
    fn folded(&self) -> Self {
        Self {
            opt: self.opt.folded(),
            ..self.clone()
        }
    }
}

/// A retransmit's raw label key: the opt-in part is zero when off.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct RtxKey {
    family: u16,
    state: u8,
    dport: u16,
    daddr: [u8; 16],
    cgroup: u64,
}

struct RtxHandles {
    retransmits: Capped<SeriesCounter>,
    segments: Capped<SeriesCounter>,
}

pub struct RetransmitAggregator {
    ctx: Context,
    retransmits: Counters<RetransmitLabels>,
    segments: Counters<SegmentLabels>,
    skipped: Family<ReasonLabel, Counter>,
    retransmits_cap: SeriesCap<RetransmitLabels>,
    segments_cap: SeriesCap<SegmentLabels>,
    handles: HandleCache<RtxKey, RtxHandles>,
}

impl RetransmitAggregator {
    /// Registers the retransmit metrics and returns their aggregator.
    pub fn register(registry: &mut Registry, ctx: &Context) -> Self {
        let retransmits = Counters::<RetransmitLabels>::default();
        let segments = Counters::<SegmentLabels>::default();
        let skipped = Family::<ReasonLabel, Counter>::default();
        // Every reason is known: exported from zero.
        for e in EARLY_EXITS {
            let reason = errno::name(*e).unwrap_or("other");
            skipped.get_or_create_owned(&ReasonLabel { reason });
        }
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
            retransmits_cap: ctx.cap("edgewatch_tcp_retransmits_total"),
            segments_cap: ctx.cap("edgewatch_tcp_retransmitted_segments_total"),
            handles: HandleCache::new(ctx.handle_limit()),
            ctx: ctx.clone(),
            retransmits,
            segments,
            skipped,
        }
    }

    fn handles(&mut self, r: &Retransmit, cgroup: u64) -> RtxHandles {
        let family = family_name(r.family);
        let (peer, port) = peer_port(self.ctx.labels.peer, r.family, &r.daddr, r.dport);
        let opt = self.ctx.with_workload(
            OptLabels {
                peer,
                port,
                ..OptLabels::default()
            },
            cgroup,
        );
        let (l, dropped) = self.retransmits_cap.admit_once(RetransmitLabels {
            family,
            state: tcp_state_name(r.state),
            opt: opt.clone(),
        });
        let retransmits = Capped {
            handle: self.retransmits.series(l),
            dropped,
        };
        let (l, dropped) = self.segments_cap.admit_once(SegmentLabels { family, opt });
        let segments = Capped {
            handle: self.segments.series(l),
            dropped,
        };
        RtxHandles {
            retransmits,
            segments,
        }
    }
}

impl OnRecord<Retransmit> for RetransmitAggregator {
    #[inline]
    fn on(&mut self, r: &Retransmit) {
        let segs = match counted_segments(r) {
            Ok(n) => n,
            Err(errno) => {
                // Rare: an abandoned attempt.
                let reason = errno::name(errno).unwrap_or("other");
                self.skipped.get_or_create(&ReasonLabel { reason }).inc();
                return;
            }
        };
        let peer = self.ctx.labels.peer;
        let key = RtxKey {
            family: r.family,
            state: r.state,
            dport: if peer { r.dport } else { 0 },
            daddr: if peer { r.daddr } else { [0; 16] },
            cgroup: self.ctx.workload_key(r),
        };
        let count = |h: &RtxHandles| {
            h.retransmits.handle.inc();
            h.retransmits.note_fold();
            h.segments.handle.inc_by(segs);
            h.segments.note_fold();
        };
        if let Some(h) = self.handles.peek(&key) {
            count(h);
        } else {
            let h = self.handles(r, key.cgroup);
            count(&h);
            self.handles.insert(key, h);
        }
    }
}

impl Reconfigure for RetransmitAggregator {
    fn reconfigure(&mut self, labels: OptInLabels, series_limit: usize) {
        self.ctx.labels = labels;
        self.ctx.series_limit = series_limit;
        self.retransmits_cap.set_limit(series_limit);
        self.segments_cap.set_limit(series_limit);
        self.handles.clear();
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
}
