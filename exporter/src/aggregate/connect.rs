//! connect() calls and TCP active opens into metrics.
//!
//! Worst-case series without opt-in labels: calls 4 families x 13 results =
//! 52; connects and duration 2 x 6 outcomes = 12 each. With `comm` and/or
//! `peer`, each family is capped at `metrics.series_limit` label sets plus
//! one overflow series per base label combination.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use edgewatch_common::{ConnectCall, TcpConnect};
use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::{
    comm_label, family_label,
    labels::{Foldable, MetricLabel, SeriesCap, encode_label, encode_opt, fold, peer_port},
    ns_to_seconds,
};
use super::{
    map::Clock,
    spans::{SpanRecord, SpanSink},
};
use crate::{config::OptInLabels, errno};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CallLabels {
    pub family: &'static str,
    pub result: &'static str,
    pub comm: Option<Arc<str>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TcpLabels {
    pub family: &'static str,
    pub outcome: &'static str,
    pub comm: Option<Arc<str>>,
    pub peer: Option<Arc<str>>,
    pub port: Option<Arc<str>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct DurationLabels {
    pub family: &'static str,
    pub outcome: &'static str,
    pub comm: Option<Arc<str>>,
}

impl Foldable for CallLabels {
    fn folded(&self) -> Self {
        Self {
            comm: fold(&self.comm),
            ..self.clone()
        }
    }
}

impl Foldable for TcpLabels {
    fn folded(&self) -> Self {
        Self {
            comm: fold(&self.comm),
            peer: fold(&self.peer),
            port: fold(&self.port),
            ..self.clone()
        }
    }
}

impl Foldable for DurationLabels {
    fn folded(&self) -> Self {
        Self {
            comm: fold(&self.comm),
            ..self.clone()
        }
    }
}

impl EncodeLabelSet for CallLabels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_label(enc, "family", self.family)?;
        encode_label(enc, "result", self.result)?;
        encode_opt(enc, "comm", self.comm.as_deref())
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_label(enc, "family", self.family)?;
        encode_label(enc, "outcome", self.outcome)?;
        encode_opt(enc, "comm", self.comm.as_deref())?;
        encode_opt(enc, "peer", self.peer.as_deref())?;
        encode_opt(enc, "port", self.port.as_deref())
    }
}

impl EncodeLabelSet for DurationLabels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_label(enc, "family", self.family)?;
        encode_label(enc, "outcome", self.outcome)?;
        encode_opt(enc, "comm", self.comm.as_deref())
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

/// The destination address of a record as text.
pub fn peer(family: u16, daddr: &[u8; 16]) -> Option<IpAddr> {
    match i32::from(family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            daddr[0], daddr[1], daddr[2], daddr[3],
        ))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*daddr))),
        _ => None,
    }
}

pub struct ConnectAggregator {
    labels: OptInLabels,
    clock: Clock,
    spans: SpanSink,
    calls: Family<CallLabels, Counter>,
    connects: Family<TcpLabels, Counter>,
    duration: HistogramFamily<DurationLabels>,
    calls_cap: SeriesCap<CallLabels>,
    connects_cap: SeriesCap<TcpLabels>,
    duration_cap: SeriesCap<DurationLabels>,
}

impl ConnectAggregator {
    /// Registers the connect metrics and returns their aggregator.
    pub fn register(
        registry: &mut Registry,
        labels: OptInLabels,
        series_limit: usize,
        dropped: &Family<MetricLabel, Counter>,
        clock: Clock,
        spans: SpanSink,
    ) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let connects = Family::<TcpLabels, Counter>::default();
        let duration: HistogramFamily<DurationLabels> =
            Family::new_with_constructor(duration_histogram);
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
            labels,
            clock,
            spans,
            calls_cap: SeriesCap::new(
                "edgewatch_connect_calls_total",
                series_limit,
                dropped.clone(),
            ),
            connects_cap: SeriesCap::new(
                "edgewatch_tcp_connects_total",
                series_limit,
                dropped.clone(),
            ),
            duration_cap: SeriesCap::new(
                "edgewatch_tcp_connect_duration_seconds",
                series_limit,
                dropped.clone(),
            ),
            calls,
            connects,
            duration,
        }
    }

    pub fn on_call(&mut self, c: &ConnectCall) {
        let labels = CallLabels {
            family: family_label(c.family),
            result: errno::result_label(c.ret, CALL_RESULTS),
            comm: self.labels.comm.then(|| comm_label(&c.comm)),
        };
        let labels = self.calls_cap.admit(labels);
        self.calls.get_or_create(&labels).inc();
    }

    pub fn on_tcp_connect(&mut self, t: &TcpConnect) {
        let family = family_label(t.family);
        let outcome = outcome(t.newstate, t.sk_err);
        let comm = self.labels.comm.then(|| comm_label(&t.comm));
        let (peer, port) = peer_port(self.labels.peer, t.family, &t.daddr, t.dport);
        let labels = TcpLabels {
            family,
            outcome,
            comm: comm.clone(),
            peer,
            port,
        };
        let labels = self.connects_cap.admit(labels);
        self.connects.get_or_create(&labels).inc();

        let dl = self.duration_cap.admit(DurationLabels {
            family,
            outcome,
            comm,
        });
        self.duration
            .get_or_create(&dl)
            .observe(ns_to_seconds(t.duration_ns));

        if self.spans.is_on() {
            let end = self.clock.unix_nanos(t.hdr.ts_ns);
            let mut attributes = vec![
                ("network.type", family.to_string()),
                ("network.transport", "tcp".to_string()),
                ("network.peer.port", t.dport.to_string()),
                ("process.pid", t.tgid.to_string()),
                ("process.command", comm_label(&t.comm).to_string()),
                ("edgewatch.outcome", outcome.to_string()),
            ];
            if let Some(p) = self::peer(t.family, &t.daddr) {
                attributes.push(("network.peer.address", p.to_string()));
            }
            self.spans.push(SpanRecord {
                name: "tcp.connect",
                start_unix_ns: end.saturating_sub(t.duration_ns),
                end_unix_ns: end,
                attributes,
                error: (outcome != "established").then(|| outcome.to_string()),
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

    #[test]
    fn peers() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(peer(2, &a).unwrap().to_string(), "10.0.0.1");
        assert_eq!(
            peer(10, &Ipv6Addr::LOCALHOST.octets()).unwrap().to_string(),
            "::1"
        );
        assert_eq!(peer(1, &a), None);
    }
}
