//! The ring-buffer pipeline: one tokio task drains the shared BPF ring
//! buffer, dispatches each record by kind to the probe that owns it, and
//! counts events and decode errors per probe.
//!
//! The kernel side submits with BPF_RB_NO_WAKEUP until enough data is
//! pending (see edgewatch.bpf.h), so the task also drains on a timer and on
//! request: a scrape asks for a drain first, so what a scrape shows includes
//! every record the kernel had committed when the scrape arrived.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot, watch},
};

use crate::{
    decode,
    probe::Probe,
    telemetry::{ProbeLabel, Telemetry},
};

/// Logs at most once per period, saying how many were suppressed.
#[derive(Debug, Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    const PERIOD: Duration = Duration::from_secs(10);

    /// Returns how many were suppressed since the last log when it is
    /// time to log again.
    fn ready(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < Self::PERIOD => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Routes records to probes. Pure: no kernel, no runtime.
pub struct Dispatcher {
    probes: Vec<Box<dyn Probe>>,
    by_kind: HashMap<u16, usize>,
    telemetry: Telemetry,
    log_limit: LogLimiter,
}

impl Dispatcher {
    pub fn new(probes: Vec<Box<dyn Probe>>, telemetry: Telemetry) -> Self {
        let mut by_kind = HashMap::new();
        for (i, p) in probes.iter().enumerate() {
            for &k in p.kinds() {
                by_kind.insert(k, i);
            }
        }
        Self {
            probes,
            by_kind,
            telemetry,
            log_limit: LogLimiter::default(),
        }
    }

    /// Decodes and aggregates one record; failures are counted, never fatal.
    pub fn dispatch(&mut self, bytes: &[u8]) {
        let kind = match decode::header(bytes) {
            Ok(h) => h.kind,
            Err(e) => {
                self.count_error("unknown", &e);
                return;
            }
        };
        let Some(&i) = self.by_kind.get(&kind) else {
            self.count_error("unknown", &decode::DecodeError::UnknownKind { kind });
            return;
        };
        let probe = &mut self.probes[i];
        let name = probe.name();
        match probe.handle(kind, bytes) {
            Ok(()) => {
                self.telemetry
                    .events
                    .get_or_create(&ProbeLabel { probe: name })
                    .inc();
            }
            Err(e) => self.count_error(name, &e),
        }
    }

    fn count_error(&mut self, probe: &'static str, error: &decode::DecodeError) {
        self.telemetry
            .decode_errors
            .get_or_create(&ProbeLabel { probe })
            .inc();
        if let Some(suppressed) = self.log_limit.ready(Instant::now()) {
            tracing::warn!(
                probe,
                %error,
                suppressed,
                "undecodable ring-buffer record (counted in edgewatch_decode_errors_total)"
            );
        }
    }
}

/// Asks the pipeline to drain, and waits until it has.
#[derive(Clone, Debug)]
pub struct FlushHandle(mpsc::Sender<oneshot::Sender<()>>);

impl FlushHandle {
    /// Returns false if the pipeline did not answer within `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let wait = async {
            self.0.send(tx).await.ok()?;
            rx.await.ok()
        };
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Some(())))
    }
}

pub struct Pipeline {
    ring: AsyncFd<RingBuf<MapData>>,
    dispatcher: Dispatcher,
    interval: Duration,
    flush_rx: mpsc::Receiver<oneshot::Sender<()>>,
}

impl Pipeline {
    pub fn new(
        ring: RingBuf<MapData>,
        dispatcher: Dispatcher,
        interval: Duration,
    ) -> std::io::Result<(Self, FlushHandle)> {
        // SAFETY: the ring buffer's fd is owned by the RingBuf, which the
        // AsyncFd owns: it stays open until the AsyncFd is dropped.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        let (tx, flush_rx) = mpsc::channel(64);
        Ok((
            Self {
                ring,
                dispatcher,
                interval,
                flush_rx,
            },
            FlushHandle(tx),
        ))
    }

    fn drain(&mut self) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            self.dispatcher.dispatch(&item);
            n += 1;
        }
        n
    }

    /// Runs until `shutdown` turns true, then drains one last time.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    self.drain();
                }
                _ = tick.tick() => { self.drain(); }
                Some(ack) = self.flush_rx.recv() => {
                    self.drain();
                    let _ = ack.send(());
                    // Answer every request queued meanwhile with the same drain.
                    while let Ok(ack) = self.flush_rx.try_recv() {
                        let _ = ack.send(());
                    }
                }
                _ = shutdown.changed() => {
                    self.drain();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use edgewatch_common::{ConnectCall, KIND_CONNECT_CALL};
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{config::Config, probe};

    fn dispatcher() -> (Dispatcher, Telemetry) {
        let mut registry = Registry::default();
        let telemetry = Telemetry::register(&mut registry);
        let settings = Config::default().validate().unwrap();
        let probes = probe::build(&settings, &mut registry, &telemetry);
        (Dispatcher::new(probes, telemetry.clone()), telemetry)
    }

    #[test]
    fn log_limiter_logs_once_per_period() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.ready(t0), Some(0));
        assert_eq!(l.ready(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.ready(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.ready(t0 + Duration::from_secs(11)), Some(2));
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
        d.dispatch(&[1, 2]); // shorter than a header
        let mut unknown = good.clone();
        unknown[0] = 0xee;
        d.dispatch(&unknown);
        let get = |f: &prometheus_client::metrics::family::Family<
            ProbeLabel,
            prometheus_client::metrics::counter::Counter,
        >,
                   p| { f.get_or_create(&ProbeLabel { probe: p }).get() };
        assert_eq!(get(&t.events, "connect"), 2);
        assert_eq!(get(&t.decode_errors, "connect"), 1);
        assert_eq!(get(&t.decode_errors, "unknown"), 2);
    }
}

/// The consumer's cost per record, side by side with its baseline (decoding
/// alone) in one run. A benchmark, not a test:
/// `cargo test --release -p edgewatch --bin edgewatch -- --ignored --nocapture dispatch_cost`
#[cfg(test)]
mod bench {
    use std::{hint::black_box, time::Instant};

    use edgewatch_common::{ConnectCall, KIND_CONNECT_CALL, KIND_TCP_CONNECT, TcpConnect};
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{aggregate::spans::SpanSink, config::Config, probe};

    fn records() -> Vec<Vec<u8>> {
        let comms = ["curl", "nginx", "envoy", "python3"];
        let mut out = Vec::new();
        for i in 0..4096u32 {
            let mut c: ConnectCall = bytemuck::Zeroable::zeroed();
            c.hdr.kind = KIND_CONNECT_CALL;
            c.hdr.size = size_of::<ConnectCall>() as u16;
            c.family = libc::AF_INET as u16;
            c.ret = if i % 3 == 0 { -libc::EINPROGRESS } else { 0 };
            let name = comms[i as usize % 4].as_bytes();
            c.comm[..name.len()].copy_from_slice(name);
            out.push(bytemuck::bytes_of(&c).to_vec());
            let mut t: TcpConnect = bytemuck::Zeroable::zeroed();
            t.hdr.kind = KIND_TCP_CONNECT;
            t.hdr.size = size_of::<TcpConnect>() as u16;
            t.family = libc::AF_INET as u16;
            t.newstate = 1;
            t.duration_ns = 40_000 + u64::from(i);
            t.dport = 443;
            t.daddr[..4].copy_from_slice(&[10, 0, (i / 256) as u8, i as u8]);
            t.comm = c.comm;
            out.push(bytemuck::bytes_of(&t).to_vec());
        }
        out
    }

    fn dispatch_ns(labels: &[&str], spans: bool, recs: &[Vec<u8>], rounds: usize) -> f64 {
        let mut cfg = Config {
            probes: vec!["connect".into()],
            ..Config::default()
        };
        cfg.metrics.labels = labels.iter().map(|s| s.to_string()).collect();
        let settings = cfg.validate().expect("config");
        let mut registry = Registry::default();
        let mut telemetry = Telemetry::register(&mut registry);
        if spans {
            telemetry.spans = SpanSink::enabled(usize::MAX, telemetry.spans_dropped.clone());
        }
        let sink = telemetry.spans.clone();
        let probes = probe::build(&settings, &mut registry, &telemetry);
        let mut d = Dispatcher::new(probes, telemetry);
        let start = Instant::now();
        for _ in 0..rounds {
            for r in recs {
                d.dispatch(r);
            }
            black_box(sink.drain());
        }
        start.elapsed().as_nanos() as f64 / (rounds * recs.len()) as f64
    }

    #[test]
    #[ignore = "benchmark"]
    fn dispatch_cost() {
        let recs = records();
        let rounds = 200;
        let start = Instant::now();
        for _ in 0..rounds {
            for r in &recs {
                black_box(decode::header(black_box(r)).ok());
            }
        }
        let decode = start.elapsed().as_nanos() as f64 / (rounds * recs.len()) as f64;
        let plain = dispatch_ns(&[], false, &recs, rounds);
        let comm = dispatch_ns(&["comm"], false, &recs, rounds);
        let both = dispatch_ns(&["comm", "peer"], false, &recs, rounds);
        let spans = dispatch_ns(&[], true, &recs, rounds);
        println!("ns per record ({} records x {rounds}):", recs.len());
        println!("  header decode only (baseline): {decode:.1}");
        println!(
            "  dispatch + aggregate, default labels: {plain:.1} ({:.1}x)",
            plain / decode
        );
        println!("  with comm: {comm:.1}; with comm,peer: {both:.1}; with spans: {spans:.1}");
        println!(
            "  records/s on one core, default labels: {:.1} million",
            1e3 / plain
        );
    }
}
