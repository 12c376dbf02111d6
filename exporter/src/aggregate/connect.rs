//! connect() calls and TCP active opens into metrics and spans.
//!
//! Worst-case series without opt-in labels: calls 4 families x 13 results =
//! 52; connects and duration 2 x 6 outcomes = 12 each. With `comm`, `peer`
//! or a workload label (`cgroup`, `unit`, `container_id`, `pod`,
//! `namespace`, `container`), each family is capped at
//! `metrics.series_limit` label sets plus one overflow series per base
//! label combination.

use edgewatch_common::{COMM_LEN, ConnectCall, TcpConnect};
use prometheus_client::{encoding::EncodeLabelSet, metrics::family::Family, registry::Registry};

use super::{
    Context, OnRecord, Reconfigure,
    cache::{Capped, HandleCache},
    peer_port,
};
use crate::vocab::{
    clock::ns_to_seconds,
    errno,
    kernel::{family_name, name_label},
    labels::{Foldable, OptInLabels, OptLabels, Rendered, SeriesCap, series},
    series::{Counters, SeriesCounter, SeriesHistogram},
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

/// Labels of `edgewatch_connect_calls_total` (opt-in: `comm` and the
/// workload labels).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub family: &'static str,
    pub result: &'static str,
    #[prometheus(flatten)]
    pub opt: OptLabels,
}

/// Labels of `edgewatch_tcp_connects_total` (opt-in: `comm`, `peer`,
/// `port`, the workload labels) and of the duration histogram (opt-in:
/// `comm`, the workload labels).
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

type HistogramFamily<L> = Family<L, SeriesHistogram, fn() -> SeriesHistogram>;

fn duration_histogram() -> SeriesHistogram {
    SeriesHistogram::new(DURATION_BUCKETS.iter().copied())
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

/// A connect() call's raw label key: the opt-in part is zero when off.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct CallKey {
    family: u16,
    ret: i32,
    comm: [u8; COMM_LEN],
    cgroup: u64,
}

/// A handshake's raw label key.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct TcpKey {
    family: u16,
    newstate: u16,
    sk_err: i32,
    dport: u16,
    comm: [u8; COMM_LEN],
    daddr: [u8; 16],
    cgroup: u64,
}

struct TcpHandles {
    connects: Capped<SeriesCounter>,
    duration: Capped<SeriesHistogram>,
}

pub struct ConnectAggregator {
    ctx: Context,
    calls: Counters<CallLabels>,
    connects: Counters<TcpLabels>,
    duration: HistogramFamily<Rendered<TcpLabels>>,
    calls_cap: SeriesCap<CallLabels>,
    connects_cap: SeriesCap<TcpLabels>,
    duration_cap: SeriesCap<TcpLabels>,
    call_handles: HandleCache<CallKey, Capped<SeriesCounter>>,
    tcp_handles: HandleCache<TcpKey, TcpHandles>,
}

impl ConnectAggregator {
    /// Registers the connect metrics and returns their aggregator.
    pub fn register(registry: &mut Registry, ctx: &Context) -> Self {
        let calls = Counters::<CallLabels>::default();
        let connects = Counters::<TcpLabels>::default();
        let duration: HistogramFamily<Rendered<TcpLabels>> =
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
            calls_cap: ctx.cap("edgewatch_connect_calls_total"),
            connects_cap: ctx.cap("edgewatch_tcp_connects_total"),
            duration_cap: ctx.cap("edgewatch_tcp_connect_duration_seconds"),
            call_handles: HandleCache::new(ctx.handle_limit()),
            tcp_handles: HandleCache::new(ctx.handle_limit()),
            ctx: ctx.clone(),
            calls,
            connects,
            duration,
        }
    }

    fn call_handles(&mut self, c: &ConnectCall, cgroup: u64) -> Capped<SeriesCounter> {
        let opt = OptLabels {
            comm: self.ctx.labels.comm.then(|| name_label(&c.comm)),
            ..OptLabels::default()
        };
        let labels = CallLabels {
            family: family_name(c.family),
            result: errno::result_label(c.ret, CALL_RESULTS),
            opt: self.ctx.with_workload(opt, cgroup),
        };
        let (labels, dropped) = self.calls_cap.admit_once(labels);
        Capped {
            handle: self.calls.series(labels),
            dropped,
        }
    }

    fn tcp_handles(&mut self, t: &TcpConnect, cgroup: u64) -> TcpHandles {
        let family = family_name(t.family);
        let outcome = outcome(t.newstate, t.sk_err);
        let comm = self.ctx.labels.comm.then(|| name_label(&t.comm));
        let (peer, port) = peer_port(self.ctx.labels.peer, t.family, &t.daddr, t.dport);
        let workload = self.ctx.with_workload(OptLabels::default(), cgroup);
        let (labels, dropped) = self.connects_cap.admit_once(TcpLabels {
            family,
            outcome,
            opt: OptLabels {
                comm: comm.clone(),
                peer,
                port,
                ..workload.clone()
            },
        });
        let connects = Capped {
            handle: self.connects.series(labels),
            dropped,
        };
        let (labels, dropped) = self.duration_cap.admit_once(TcpLabels {
            family,
            outcome,
            opt: OptLabels { comm, ..workload },
        });
        let duration = Capped {
            handle: series(&self.duration, labels),
            dropped,
        };
        TcpHandles { connects, duration }
    }

    /// Queues a handshake span if the sampler admits it (decided before
    /// anything is built; attributes are built at export time).
    fn span(&self, t: &TcpConnect) {
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
                    outcome: outcome(t.newstate, t.sk_err),
                },
                workload: self.ctx.span_workload(t),
            });
        }
    }
}

impl OnRecord<ConnectCall> for ConnectAggregator {
    #[inline]
    fn on(&mut self, c: &ConnectCall) {
        let key = CallKey {
            family: c.family,
            ret: c.ret,
            comm: if self.ctx.labels.comm {
                c.comm
            } else {
                [0; COMM_LEN]
            },
            cgroup: self.ctx.workload_key(c),
        };
        if let Some(h) = self.call_handles.lookup(&key) {
            h.handle.inc();
            h.note_fold();
            return;
        }
        let h = self.call_handles(c, key.cgroup);
        h.handle.inc();
        h.note_fold();
        self.call_handles.insert(key, h);
    }
}

impl OnRecord<TcpConnect> for ConnectAggregator {
    #[inline]
    fn on(&mut self, t: &TcpConnect) {
        let peer = self.ctx.labels.peer;
        let key = TcpKey {
            family: t.family,
            newstate: t.newstate,
            // Only the outcome matters once established.
            sk_err: if t.newstate == TCP_ESTABLISHED {
                0
            } else {
                t.sk_err
            },
            dport: if peer { t.dport } else { 0 },
            comm: if self.ctx.labels.comm {
                t.comm
            } else {
                [0; COMM_LEN]
            },
            daddr: if peer { t.daddr } else { [0; 16] },
            cgroup: self.ctx.workload_key(t),
        };
        let seconds = ns_to_seconds(t.duration_ns);
        if let Some(h) = self.tcp_handles.peek(&key) {
            h.connects.handle.inc();
            h.connects.note_fold();
            h.duration.handle.observe(seconds);
            h.duration.note_fold();
        } else {
            let h = self.tcp_handles(t, key.cgroup);
            h.connects.handle.inc();
            h.connects.note_fold();
            h.duration.handle.observe(seconds);
            h.duration.note_fold();
            self.tcp_handles.insert(key, h);
        }
        if self.ctx.spans.is_on() {
            self.span(t);
        }
    }
}

impl Reconfigure for ConnectAggregator {
    fn reconfigure(&mut self, labels: OptInLabels, series_limit: usize) {
        self.ctx.labels = labels;
        self.ctx.series_limit = series_limit;
        self.calls_cap.set_limit(series_limit);
        self.connects_cap.set_limit(series_limit);
        self.duration_cap.set_limit(series_limit);
        self.call_handles.clear();
        self.tcp_handles.clear();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::family::Family;

    use super::*;
    use crate::vocab::{clock::Clock, spans::SpanSink};

    fn exposition(small_tables: bool, records: &[(ConnectCall, TcpConnect)]) -> Vec<String> {
        let mut registry = Registry::default();
        let dropped = Family::default();
        registry.register("dropped", "Dropped", dropped.clone());
        let ctx = Context {
            labels: OptInLabels {
                comm: true,
                peer: true,
                ..OptInLabels::default()
            },
            series_limit: 5,
            series_dropped: dropped,
            clock: Clock::fixed(0),
            spans: SpanSink::default(),
            workloads: crate::workload::Workloads::off(),
            refs: Default::default(),
        };
        let mut agg = ConnectAggregator::register(&mut registry, &ctx);
        if small_tables {
            // Tables far smaller than the key space: constant clearing.
            agg.call_handles = HandleCache::new(3);
            agg.tcp_handles = HandleCache::new(3);
        }
        for (c, t) in records {
            agg.on(c);
            agg.on(t);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines.sort();
        lines
    }

    /// The handle tables never change what is counted: a sequence of
    /// records with folds past the series cap gives the same exposition
    /// through tables that keep every key and through tables that are
    /// cleared all the time.
    #[test]
    fn handle_tables_count_exactly_what_the_slow_path_counts() {
        let mut x: u32 = 0x2545_f491;
        let mut rnd = |n: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n
        };
        let comms = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let records: Vec<(ConnectCall, TcpConnect)> = (0..5000)
            .map(|_| {
                let mut c: ConnectCall = bytemuck::Zeroable::zeroed();
                c.family = [2u16, 10, 1, 99][rnd(4) as usize];
                c.ret =
                    [0, -libc::EINPROGRESS, -libc::ECONNREFUSED, -libc::ENOSPC][rnd(4) as usize];
                let name = comms[rnd(8) as usize].as_bytes();
                c.comm[..name.len()].copy_from_slice(name);
                let mut t: TcpConnect = bytemuck::Zeroable::zeroed();
                t.family = 2;
                t.newstate = [1, 7][rnd(2) as usize];
                t.sk_err = [0, libc::ECONNREFUSED, libc::ETIMEDOUT][rnd(3) as usize];
                t.dport = 80 + rnd(3) as u16;
                t.daddr[..4].copy_from_slice(&[10, 0, 0, rnd(4) as u8]);
                t.duration_ns = u64::from(rnd(2_000_000));
                t.comm = c.comm;
                (c, t)
            })
            .collect();
        let big = exposition(false, &records);
        assert_eq!(big, exposition(true, &records));
        assert!(
            big.iter().any(|l| l.contains("_overflow")),
            "the cap folded"
        );
    }

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
