//! The ring-buffer pipeline: one tokio task drains the shared BPF ring
//! buffer and dispatches each record, by the kind in its header, to the
//! aggregator of the probe that owns it, through one table lookup; events
//! and decode errors are counted per probe.
//!
//! The kernel side submits with BPF_RB_NO_WAKEUP until enough data is
//! pending (see edgewatch.bpf.h), so the task also drains on a timer and on
//! request: a scrape asks for a drain first, so what a scrape shows includes
//! every record the kernel had committed when the scrape arrived.

use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    time::Duration,
};

use aya::maps::MapData;
use edgewatch_common::Header;
use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot, watch},
};

use crate::{
    probe::{Probe, Sink},
    telemetry::{ProbeLabel, Telemetry, events::DecodeFailed},
    vocab::labels::OptInLabels,
};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {min}-byte header")]
    Truncated { len: usize, min: usize },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("record kind {kind}: {got} bytes (header says {declared}), expected {expected}")]
    Size {
        kind: u16,
        expected: usize,
        got: usize,
        declared: u16,
    },
}

/// The probe label of records no probe owns.
const UNKNOWN: &str = "unknown";

/// Where records of one kind go.
struct Route {
    probe: &'static str,
    /// Index into `Dispatcher::sinks`.
    sink: usize,
    /// Index into the probe's records.
    slot: usize,
    size: usize,
    events: Counter,
}

/// Routes records to aggregators. Pure: no kernel, no runtime.
pub struct Dispatcher {
    sinks: Vec<Box<dyn Sink>>,
    /// Indexed by record kind.
    routes: Vec<Option<Route>>,
    telemetry: Telemetry,
}

impl Dispatcher {
    /// A dispatcher for these probes and their aggregators.
    pub fn new(probes: Vec<(&'static dyn Probe, Box<dyn Sink>)>, telemetry: Telemetry) -> Self {
        let mut routes: Vec<Option<Route>> = Vec::new();
        // Failures are exported from zero, so rate() and alerts work before
        // the first one.
        telemetry
            .decode_errors
            .get_or_create_owned(&ProbeLabel { probe: UNKNOWN });
        let mut sinks = Vec::with_capacity(probes.len());
        for (i, (probe, sink)) in probes.into_iter().enumerate() {
            telemetry.decode_errors.get_or_create_owned(&ProbeLabel {
                probe: probe.name(),
            });
            let events = telemetry
                .events
                .get_or_create(&ProbeLabel {
                    probe: probe.name(),
                })
                .clone();
            for (slot, r) in probe.records().into_iter().enumerate() {
                let k = usize::from(r.kind);
                if routes.len() <= k {
                    routes.resize_with(k + 1, || None);
                }
                routes[k] = Some(Route {
                    probe: probe.name(),
                    sink: i,
                    slot,
                    size: r.size,
                    events: events.clone(),
                });
            }
            sinks.push(sink);
        }
        Self {
            sinks,
            routes,
            telemetry,
        }
    }

    /// Decodes and aggregates one record; failures are counted, never fatal.
    pub fn dispatch(&mut self, bytes: &[u8]) {
        if bytes.len() < size_of::<Header>() {
            let error = DecodeError::Truncated {
                len: bytes.len(),
                min: size_of::<Header>(),
            };
            return self.failed(UNKNOWN, &error);
        }
        // The header's first two fields: kind and size, both u16.
        let kind = u16::from_ne_bytes([bytes[0], bytes[1]]);
        let declared = u16::from_ne_bytes([bytes[2], bytes[3]]);
        let Some(route) = self.routes.get(usize::from(kind)).and_then(Option::as_ref) else {
            return self.failed(UNKNOWN, &DecodeError::UnknownKind { kind });
        };
        let (probe, ok) = if bytes.len() == route.size && usize::from(declared) == route.size {
            let ok = self.sinks[route.sink].consume(route.slot, bytes);
            if ok {
                route.events.inc();
            }
            (route.probe, ok)
        } else {
            (route.probe, false)
        };
        if !ok {
            let error = DecodeError::Size {
                kind,
                expected: route.size,
                got: bytes.len(),
                declared,
            };
            self.failed(probe, &error);
        }
    }

    /// Hands every aggregator new opt-in labels and a new series cap.
    pub fn reconfigure(&mut self, labels: OptInLabels, series_limit: usize) {
        for sink in &mut self.sinks {
            sink.reconfigure(labels, series_limit);
        }
    }

    fn failed(&self, probe: &'static str, error: &DecodeError) {
        self.telemetry.emit(DecodeFailed { probe, error });
    }
}

/// Asks the pipeline to drain, and waits until it has.
#[derive(Clone, Debug)]
pub struct FlushHandle {
    flush: mpsc::Sender<oneshot::Sender<()>>,
    reconfigure: mpsc::Sender<(OptInLabels, usize)>,
}

impl FlushHandle {
    /// Returns false if the pipeline did not answer within `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let wait = async {
            self.flush.send(tx).await.ok()?;
            rx.await.ok()
        };
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Some(())))
    }

    /// Hands every aggregator new opt-in labels and a new series cap (a
    /// config reload); records already read are aggregated first.
    pub async fn reconfigure(&self, labels: OptInLabels, series_limit: usize) -> bool {
        self.reconfigure.send((labels, series_limit)).await.is_ok()
    }
}

mod reader;

/// The ring buffer map, for readiness: its records are read through
/// [`reader::Reader`]'s mapping. (aya's `RingBuf` would map the ring too,
/// and the kernel maps a ring buffer's pages all at once: the 2 x 8 MiB of
/// a second mapping showed in RSS.)
struct RingFd(MapData);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd().as_fd().as_raw_fd()
    }
}

pub struct Pipeline {
    ring: AsyncFd<RingFd>,
    reader: reader::Reader,
    dispatcher: Dispatcher,
    interval: Duration,
    flush_rx: mpsc::Receiver<oneshot::Sender<()>>,
    reconfigure_rx: mpsc::Receiver<(OptInLabels, usize)>,
}

impl Pipeline {
    /// `ring`: the ring buffer map; its size is the kernel's (max_entries).
    pub fn new(
        ring: MapData,
        dispatcher: Dispatcher,
        interval: Duration,
    ) -> std::io::Result<(Self, FlushHandle)> {
        let size = ring.info().map_err(std::io::Error::other)?.max_entries();
        let reader = reader::Reader::new(ring.fd().as_fd(), size as usize)?;
        // SAFETY: the ring buffer's fd is owned by the MapData, which the
        // AsyncFd owns: it stays open until the AsyncFd is dropped.
        let ring = unsafe { AsyncFd::register(RingFd(ring)) }.map_err(|e| e.into_parts().1)?;
        let (tx, flush_rx) = mpsc::channel(64);
        let (reconfigure, reconfigure_rx) = mpsc::channel(4);
        Ok((
            Self {
                ring,
                reader,
                dispatcher,
                interval,
                flush_rx,
                reconfigure_rx,
            },
            FlushHandle {
                flush: tx,
                reconfigure,
            },
        ))
    }

    fn drain(&mut self) -> usize {
        let Self {
            reader, dispatcher, ..
        } = self;
        reader.drain(|record| dispatcher.dispatch(record))
    }

    /// Runs until `shutdown` turns true, then drains one last time.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backstop = Backstop::new(self.interval);
        let timer = tokio::time::sleep(backstop.wait());
        tokio::pin!(timer);
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    match ready {
                        Ok(mut guard) => guard.clear_ready(),
                        Err(e) => {
                            tracing::error!(error = %e, "polling the ring buffer failed; draining on the timer only");
                            tokio::time::sleep(self.interval).await;
                        }
                    }
                    let n = self.drain();
                    // Records flow again: back to the base period.
                    if backstop.drained(n) {
                        timer.as_mut().reset(tokio::time::Instant::now() + backstop.wait());
                    }
                }
                () = &mut timer => {
                    let n = self.drain();
                    backstop.drained(n);
                    timer.as_mut().reset(tokio::time::Instant::now() + backstop.wait());
                }
                Some(ack) = self.flush_rx.recv() => {
                    self.drain();
                    let _ = ack.send(());
                    // Answer every request queued meanwhile with the same drain.
                    while let Ok(ack) = self.flush_rx.try_recv() {
                        let _ = ack.send(());
                    }
                }
                Some((labels, limit)) = self.reconfigure_rx.recv() => {
                    self.drain();
                    self.dispatcher.reconfigure(labels, limit);
                }
                _ = shutdown.changed() => {
                    self.drain();
                    return;
                }
            }
        }
    }
}

/// The backstop drain's period. Records under `ringbuf.wakeup_bytes` wake
/// no one, so a timer drains them: every `flush_interval` while records
/// flow. While drains find the ring empty the period doubles, up to
/// [`Backstop::MAX_FACTOR`] times the base (at most [`Backstop::MAX`]), so
/// an idle edgewatch wakes a few times a minute instead of ten times a
/// second. Nothing reads stale numbers meanwhile: a scrape and an OTLP
/// push drain first, and records carry their own kernel timestamps.
#[derive(Debug, Clone, Copy)]
struct Backstop {
    base: Duration,
    cap: Duration,
    wait: Duration,
}

impl Backstop {
    const MAX_FACTOR: u32 = 64;
    const MAX: Duration = Duration::from_secs(10);

    fn new(base: Duration) -> Self {
        let cap = (base * Self::MAX_FACTOR).min(Self::MAX).max(base);
        Self {
            base,
            cap,
            wait: base,
        }
    }

    fn wait(&self) -> Duration {
        self.wait
    }

    /// After a drain of `n` records: the next wait. True when it went back
    /// to the base period (the pending timer should be moved closer).
    fn drained(&mut self, n: usize) -> bool {
        if n > 0 {
            let was = self.wait;
            self.wait = self.base;
            was != self.base
        } else {
            self.wait = (self.wait * 2).min(self.cap);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use edgewatch_common::{ConnectCall, KIND_CONNECT_CALL};
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{
        aggregate,
        probe::connect,
        vocab::{clock::Clock, labels::OptInLabels, spans::SpanSink},
    };

    fn dispatcher() -> (Dispatcher, Telemetry) {
        let mut registry = Registry::default();
        let telemetry = Telemetry::register(&mut registry);
        let ctx = aggregate::Context {
            labels: OptInLabels::default(),
            series_limit: 10,
            series_dropped: telemetry.series_dropped.clone(),
            clock: Clock::fixed(0),
            spans: SpanSink::default(),
            refs: Default::default(),
            workloads: Default::default(),
        };
        let probe: &'static dyn Probe = &connect::PROBE;
        let sink = probe.build(&mut registry, &ctx);
        (
            Dispatcher::new(vec![(probe, sink)], telemetry.clone()),
            telemetry,
        )
    }

    #[test]
    fn the_backstop_backs_off_while_idle_and_returns_when_records_flow() {
        let base = Duration::from_millis(100);
        let mut b = Backstop::new(base);
        assert_eq!(b.wait(), base);
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert!(!b.drained(0));
            waits.push(b.wait().as_millis());
        }
        // Doubles up to 64 x 100 ms.
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 6400, 6400, 6400]);
        assert!(b.drained(3), "records: back to the base period");
        assert_eq!(b.wait(), base);
        assert!(!b.drained(5), "already at the base period");
        // Never past 10 s.
        let mut half = Backstop::new(Duration::from_millis(500));
        for _ in 0..10 {
            half.drained(0);
        }
        assert_eq!(half.wait(), Duration::from_secs(10));
        // A long base period is its own cap.
        let mut long = Backstop::new(Duration::from_secs(30));
        long.drained(0);
        assert_eq!(long.wait(), Duration::from_secs(30));
    }

    #[test]
    fn counts_events_and_errors_per_probe() {
        let (mut d, t) = dispatcher();
        let mut c: ConnectCall = bytemuck::Zeroable::zeroed();
        c.hdr.kind = KIND_CONNECT_CALL;
        c.hdr.size = size_of::<ConnectCall>() as u16;
        let good = bytemuck::bytes_of(&c).to_vec();
        d.dispatch(&good);
        d.dispatch(&good);
        d.dispatch(&good[..20]); // truncated connect record
        let mut lying = good.clone();
        lying[2] = 99; // right length, wrong declared size
        d.dispatch(&lying);
        let mut long = good.clone();
        long.extend([0; 8]);
        d.dispatch(&long);
        d.dispatch(&[1, 2]); // shorter than a header
        let mut unknown = good.clone();
        unknown[0] = 0xee;
        d.dispatch(&unknown);
        let get = |f: &prometheus_client::metrics::family::Family<ProbeLabel, Counter>, p| {
            f.get_or_create(&ProbeLabel { probe: p }).get()
        };
        assert_eq!(get(&t.events, "connect"), 2);
        assert_eq!(get(&t.decode_errors, "connect"), 3);
        assert_eq!(get(&t.decode_errors, "unknown"), 2);
    }

    #[test]
    fn decodes_unaligned_records() {
        let (mut d, t) = dispatcher();
        let mut c: ConnectCall = bytemuck::Zeroable::zeroed();
        c.hdr.kind = KIND_CONNECT_CALL;
        c.hdr.size = size_of::<ConnectCall>() as u16;
        let mut buf = vec![0u8];
        buf.extend(bytemuck::bytes_of(&c));
        d.dispatch(&buf[1..]);
        assert_eq!(
            t.events
                .get_or_create(&ProbeLabel { probe: "connect" })
                .get(),
            1
        );
    }

    #[test]
    fn garbage_of_every_length_never_panics() {
        let (mut d, t) = dispatcher();
        let mut x: u32 = 0x9e37_79b9;
        let mut n = 0;
        for len in 0..200 {
            for first in [1u8, 2, 3, 4, 0xff] {
                let mut garbage: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                if let Some(b) = garbage.first_mut() {
                    *b = first;
                }
                d.dispatch(&garbage);
                n += 1;
            }
        }
        let errors: u64 = ["connect", "unknown"]
            .iter()
            .map(|p| {
                t.decode_errors
                    .get_or_create(&ProbeLabel { probe: p })
                    .get()
            })
            .sum();
        let events = t
            .events
            .get_or_create(&ProbeLabel { probe: "connect" })
            .get();
        assert_eq!(errors + events, n);
    }
}
