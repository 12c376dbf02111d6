//! connect() calls and TCP active opens into metrics and spans.
//!
//! Worst-case series without opt-in labels: calls 4 families x 13 results =
//! 52; connects and duration 2 x 6 outcomes = 12 each. With `comm` and/or
//! `peer`, each family is capped at `metrics.series_limit` label sets plus
//! one overflow series per base label combination.

use edgewatch_common::{ConnectCall, TcpConnect};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::{Context, OnRecord, peer_port};
use crate::vocab::{
    clock::ns_to_seconds,
    errno,
    kernel::{family_name, name_label},
    labels::{Foldable, OptLabels, SeriesCap},
    spans::{SpanData, SpanRecord},
};

/// connect() results with a label of their own; any other errno is `other`.
pub const CALL_RESULTS: &[&str] = &[
    "einprogress",
    "econnrefused",
    "etimedout",
    "enetunreach",
    "ehostunreach",
    "eaddrnotavail",
    "eacces",
    "eperm",
    "eagain",
    "ealready",
    "eisconn",
    "eintr",
];

/// Handshake duration buckets, 10 us to 10 s (1-2.5-5 steps).
pub const DURATION_BUCKETS: &[f64] = &[
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const TCP_ESTABLISHED: u16 = 1;

/// Labels of `edgewatch_connect_calls_total` (opt-in: `comm`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub family: &'static str,
    pub result: &'static str,
    #[prometheus(flatten)]
    pub opt: OptLabels,
}

/// Labels of `edgewatch_tcp_connects_total` (opt-in: `comm`, `peer`,
/// `port`) and of the duration histogram (opt-in: `comm`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub family: &'static str,
    pub outcome: &'static str,
    #[prometheus(flatten)]
    pub opt: OptLabels,
}

impl Foldable for CallLabels {
    fn folded(&self) -> Self {
        Self {
            opt: self.opt.folded(),
            ..self.clone()
        }
    }
}

impl Foldable for TcpLabels {
    fn folded(&self) -> Self {
        Self {
            opt: self.opt.folded(),
            ..self.clone()
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

/// The outcome of a handshake that left SYN_SENT.
pub fn outcome(newstate: u16, sk_err: i32) -> &'static str {
    if newstate == TCP_ESTABLISHED {
        return "established";
    }
    match sk_err {
        libc::ECONNREFUSED => "refused",
        libc::ETIMEDOUT => "timeout",
        libc::ECONNRESET => "reset",
        libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN => "unreachable",
        _ => "other",
    }
}

pub struct ConnectAggregator {
    ctx: Context,
    calls: Family<CallLabels, Counter>,
    connects: Family<TcpLabels, Counter>,
    duration: HistogramFamily<TcpLabels>,
    calls_cap: SeriesCap<CallLabels>,
    connects_cap: SeriesCap<TcpLabels>,
    duration_cap: SeriesCap<TcpLabels>,
}

impl ConnectAggregator {
    /// Registers the connect metrics and returns their aggregator.
    pub fn register(registry: &mut Registry, ctx: &Context) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let connects = Family::<TcpLabels, Counter>::default();
        let duration: HistogramFamily<TcpLabels> = Family::new_with_constructor(duration_histogram);
        registry.register(
            "edgewatch_connect_calls",
            "connect() system calls by address family and result (ok or errno name)",
            calls.clone(),
        );
        registry.register(
            "edgewatch_tcp_connects",
            "TCP active opens that left SYN_SENT, by outcome",
            connects.clone(),
        );
        registry.register(
            "edgewatch_tcp_connect_duration_seconds",
            "Time from SYN_SENT to ESTABLISHED or CLOSE, by outcome",
            duration.clone(),
        );
        Self {
            calls_cap: ctx.cap("edgewatch_connect_calls_total"),
            connects_cap: ctx.cap("edgewatch_tcp_connects_total"),
            duration_cap: ctx.cap("edgewatch_tcp_connect_duration_seconds"),
            ctx: ctx.clone(),
            calls,
            connects,
            duration,
        }
    }
}

impl OnRecord<ConnectCall> for ConnectAggregator {
    fn on(&mut self, c: &ConnectCall) {
        let labels = CallLabels {
            family: family_name(c.family),
            result: errno::result_label(c.ret, CALL_RESULTS),
            opt: OptLabels {
                comm: self.ctx.labels.comm.then(|| name_label(&c.comm)),
                ..OptLabels::default()
            },
        };
        let labels = self.calls_cap.admit(labels);
        self.calls.get_or_create(&labels).inc();
    }
}

impl OnRecord<TcpConnect> for ConnectAggregator {
    fn on(&mut self, t: &TcpConnect) {
        let family = family_name(t.family);
        let outcome = outcome(t.newstate, t.sk_err);
        let comm = self.ctx.labels.comm.then(|| name_label(&t.comm));
        let (peer, port) = peer_port(self.ctx.labels.peer, t.family, &t.daddr, t.dport);
        let labels = TcpLabels {
            family,
            outcome,
            opt: OptLabels {
                comm: comm.clone(),
                peer,
                port,
            },
        };
        let labels = self.connects_cap.admit(labels);
        self.connects.get_or_create(&labels).inc();

        let dl = self.duration_cap.admit(TcpLabels {
            family,
            outcome,
            opt: OptLabels {
                comm,
                ..OptLabels::default()
            },
        });
        self.duration
            .get_or_create(&dl)
            .observe(ns_to_seconds(t.duration_ns));

        if let Some(span) = self.ctx.spans.admit(t.hdr.ts_ns) {
            let end = self.ctx.clock.unix_nanos(t.hdr.ts_ns);
            span.push(SpanRecord {
                start_unix_ns: end.saturating_sub(t.duration_ns),
                end_unix_ns: end,
                data: SpanData::TcpConnect {
                    family: t.family,
                    daddr: t.daddr,
                    dport: t.dport,
                    tgid: t.tgid,
                    comm: t.comm,
                    outcome,
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(outcome(1, 0), "established");
        assert_eq!(outcome(7, libc::ECONNREFUSED), "refused");
        assert_eq!(outcome(7, libc::ETIMEDOUT), "timeout");
        assert_eq!(outcome(7, libc::ECONNRESET), "reset");
        assert_eq!(outcome(7, libc::EHOSTUNREACH), "unreachable");
        assert_eq!(outcome(7, libc::ENETUNREACH), "unreachable");
        assert_eq!(outcome(7, 0), "other");
    }
}
