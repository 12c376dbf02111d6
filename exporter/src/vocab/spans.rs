//! Spans: one per TCP handshake and per map update or delete call, handed
//! from the aggregators to the OTLP exporter through a bounded queue.
//!
//! The consumer's hot path pays for a span only once it is wanted. Each
//! handshake or map call asks [`SpanSink::admit`] first, which decides, in
//! this order and before anything is built:
//! 1. sampling (`otlp.traces_sample_ratio`): one step of a counter-based
//!    generator and a compare, nothing at all at ratio 1 or 0;
//! 2. the rate limit (`otlp.traces_max_per_second`): a token bucket fed by
//!    the record's own kernel timestamp, so it reads no clock;
//! 3. room in the queue: one relaxed atomic load.
//!
//! A refusal is counted in `edgewatch_spans_dropped_total{reason}`
//! (`sampled`, `rate_limited`, `queue_full`) and costs nothing more. An
//! admitted span is queued as the record's raw fields ([`SpanData`]): the
//! attribute strings are built by the exporter's task, off the consumer.
//! So every handshake or call is exactly one of: queued, or dropped for one
//! reason; and every queued span is sent or still waiting. A queued span
//! also keeps the acting task's workload, resolved from the workload cache
//! when the span is made (a cgroup may be gone by export time).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use prometheus_client::metrics::counter::Counter;

use super::workload::Workload;

/// What a span is about: the record's fields, as the kernel gave them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpanData {
    /// A TCP handshake that left SYN_SENT.
    TcpConnect {
        family: u16,
        daddr: [u8; 16],
        dport: u16,
        tgid: u32,
        comm: [u8; 16],
        /// established, refused, timeout, reset, unreachable, other.
        outcome: &'static str,
    },
    /// One map update or delete call (a batch is one call).
    MapCall {
        update: bool,
        map_id: u32,
        map_name: [u8; 16],
        map_type: &'static str,
        /// Elements the call touched (batches count each).
        elements: u64,
        tgid: u32,
        comm: [u8; 16],
        /// The errno name when the call failed.
        error: Option<&'static str>,
        /// FNV-1a 64 of the key the writer passed (otlp.map_key_hashes).
        key_hash: Option<u64>,
        /// FNV-1a 64 of the value, for updates.
        value_hash: Option<u64>,
    },
}

/// A finished span, in Unix nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub data: SpanData,
    /// The acting task's workload, when workload resolution is on.
    pub workload: Option<Arc<Workload>>,
}

/// The three ways a span can be dropped, each a counter of
/// `edgewatch_spans_dropped_total{reason}`.
#[derive(Debug, Clone, Default)]
pub struct DropCounters {
    pub sampled: Counter,
    pub rate_limited: Counter,
    pub queue_full: Counter,
}

/// How many spans to keep, and how fast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanLimits {
    /// Fraction of handshakes and map calls that get a span, 0 to 1.
    pub sample_ratio: f64,
    /// Spans per second past sampling; 0 for no limit.
    pub max_per_second: u32,
    /// Spans waiting to be sent; past it, new spans are dropped.
    pub max_queued: usize,
}

impl Default for SpanLimits {
    fn default() -> Self {
        Self {
            sample_ratio: 1.0,
            max_per_second: 0,
            max_queued: 10_000,
        }
    }
}

/// A token bucket in nano-tokens, refilled from event timestamps.
#[derive(Debug)]
struct Bucket {
    /// Tokens per second; the bucket holds at most one second's worth.
    rate: u64,
    nano_tokens: u64,
    last_ns: u64,
}

const NANO: u64 = 1_000_000_000;

impl Bucket {
    fn new(rate: u32) -> Self {
        Self {
            rate: u64::from(rate),
            nano_tokens: u64::from(rate) * NANO,
            last_ns: 0,
        }
    }

    /// Takes a token at monotonic time `now_ns`, if there is one. Events
    /// from different CPUs may come slightly out of order: time never runs
    /// backwards for the bucket.
    fn take(&mut self, now_ns: u64) -> bool {
        let cap = self.rate * NANO;
        if now_ns > self.last_ns {
            let refill = (now_ns - self.last_ns).saturating_mul(self.rate);
            self.nano_tokens = self.nano_tokens.saturating_add(refill).min(cap);
            self.last_ns = now_ns;
        }
        if self.nano_tokens >= NANO {
            self.nano_tokens -= NANO;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<SpanRecord>>,
    /// The queue's length, readable without the lock.
    queued: AtomicUsize,
    capacity: usize,
    /// Admit when the next random u64 is below this; `None`: always.
    threshold: Option<u64>,
    rng: AtomicU64,
    bucket: Option<Mutex<Bucket>>,
    dropped: DropCounters,
}

/// Where aggregators put spans; off unless OTLP traces are on. Cheap to
/// clone: every clone feeds the same queue.
#[derive(Debug, Clone, Default)]
pub struct SpanSink {
    shared: Option<Arc<Shared>>,
}

/// Permission to queue one span, from [`SpanSink::admit`].
#[must_use = "an admitted span is pushed, or the decision was wasted"]
pub struct Admitted<'a>(&'a Shared);

impl Admitted<'_> {
    /// Queues the span (dropped and counted if the queue filled up since
    /// the span was admitted).
    pub fn push(self, span: SpanRecord) {
        let s = self.0;
        let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= s.capacity {
            s.dropped.queue_full.inc();
            return;
        }
        q.push_back(span);
        s.queued.store(q.len(), Ordering::Relaxed);
    }
}

/// splitmix64's output function over a Weyl sequence: one atomic add and a
/// few multiplies per draw, statistically good enough for sampling.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SpanSink {
    pub fn enabled(limits: SpanLimits, dropped: DropCounters, seed: u64) -> Self {
        let ratio = limits.sample_ratio.clamp(0.0, 1.0);
        let threshold = if ratio >= 1.0 {
            None
        } else {
            // 2^64 * ratio, exact enough: the bias is below 2^-52.
            Some((ratio * 18_446_744_073_709_551_616.0) as u64)
        };
        Self {
            shared: Some(Arc::new(Shared {
                queue: Mutex::new(VecDeque::new()),
                queued: AtomicUsize::new(0),
                capacity: limits.max_queued.max(1),
                threshold,
                rng: AtomicU64::new(seed),
                bucket: (limits.max_per_second > 0)
                    .then(|| Mutex::new(Bucket::new(limits.max_per_second))),
                dropped,
            })),
        }
    }

    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// Decides whether the event at monotonic time `ts_ns` (the record's
    /// kernel timestamp) gets a span: None when spans are off, or when it
    /// is sampled out, rate limited or finds the queue full (each counted).
    #[inline]
    pub fn admit(&self, ts_ns: u64) -> Option<Admitted<'_>> {
        let s = self.shared.as_deref()?;
        if let Some(threshold) = s.threshold {
            let draw = mix(s.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
            if draw >= threshold {
                s.dropped.sampled.inc();
                return None;
            }
        }
        if let Some(bucket) = &s.bucket
            && !bucket.lock().unwrap_or_else(|e| e.into_inner()).take(ts_ns)
        {
            s.dropped.rate_limited.inc();
            return None;
        }
        if s.queued.load(Ordering::Relaxed) >= s.capacity {
            s.dropped.queue_full.inc();
            return None;
        }
        Some(Admitted(s))
    }

    /// Copies up to `max` spans from the front of the queue, leaving them
    /// queued: they wait there until [`SpanSink::commit`] says they were
    /// sent, so a collector that is down holds at most the queue's bound.
    pub fn peek(&self, max: usize) -> Vec<SpanRecord> {
        match &self.shared {
            Some(s) => {
                let q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.iter().take(max).cloned().collect()
            }
            None => Vec::new(),
        }
    }

    /// Removes the first `n` spans: the ones a successful push carried
    /// (only the exporter removes from the front; aggregators push at the
    /// back).
    pub fn commit(&self, n: usize) {
        if let Some(s) = &self.shared {
            let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
            let n = n.min(q.len());
            q.drain(..n);
            s.queued.store(q.len(), Ordering::Relaxed);
        }
    }

    /// Spans waiting to be sent.
    pub fn len(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.queued.load(Ordering::Relaxed))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u64) -> SpanRecord {
        SpanRecord {
            start_unix_ns: n,
            end_unix_ns: n,
            data: SpanData::MapCall {
                update: true,
                map_id: 1,
                map_name: [0; 16],
                map_type: "hash",
                elements: 1,
                tgid: 1,
                comm: [0; 16],
                error: None,
                key_hash: None,
                value_hash: None,
            },
            workload: None,
        }
    }

    fn limits(sample_ratio: f64, max_per_second: u32, max_queued: usize) -> SpanLimits {
        SpanLimits {
            sample_ratio,
            max_per_second,
            max_queued,
        }
    }

    fn offer(sink: &SpanSink, i: u64, ts: u64) {
        if let Some(a) = sink.admit(ts) {
            a.push(span(i));
        }
    }

    #[test]
    fn bounded_and_counted() {
        let d = DropCounters::default();
        let sink = SpanSink::enabled(limits(1.0, 0, 2), d.clone(), 1);
        for i in 0..5 {
            offer(&sink, i, i);
        }
        assert_eq!(d.queue_full.get(), 3);
        assert_eq!(sink.peek(10), vec![span(0), span(1)]);
        // Peeked spans stay until committed.
        assert_eq!(sink.len(), 2);
        sink.commit(1);
        assert_eq!(sink.peek(10), vec![span(1)]);
        sink.commit(5);
        assert!(sink.is_empty());
        offer(&sink, 7, 7);
        assert_eq!(sink.peek(10), vec![span(7)]);
        let off = SpanSink::default();
        assert!(off.admit(0).is_none());
        assert!(!off.is_on() && off.peek(1).is_empty());
    }

    #[test]
    fn sampling_keeps_the_ratio_and_counts_the_rest() {
        const N: u64 = 100_000;
        for ratio in [0.0, 0.1, 0.5, 0.9, 1.0] {
            let d = DropCounters::default();
            let sink = SpanSink::enabled(limits(ratio, 0, N as usize), d.clone(), 42);
            for i in 0..N {
                offer(&sink, i, i);
            }
            let kept = sink.len() as u64;
            assert_eq!(kept + d.sampled.get(), N, "every event counted once");
            // Binomial: within 5 standard deviations of N * ratio.
            let sigma = (N as f64 * ratio * (1.0 - ratio)).sqrt();
            let want = N as f64 * ratio;
            assert!(
                (kept as f64 - want).abs() <= 5.0 * sigma + 1e-9,
                "ratio {ratio}: kept {kept}, expected {want} ± {}",
                5.0 * sigma
            );
        }
    }

    #[test]
    fn the_rate_limit_follows_kernel_time() {
        let d = DropCounters::default();
        let sink = SpanSink::enabled(limits(1.0, 10, 1000), d.clone(), 1);
        // 100 events in the first 10 ms: the one-second burst of 10 passes.
        for i in 0..100 {
            offer(&sink, i, 1_000_000_000 + i * 100_000);
        }
        assert_eq!((sink.len(), d.rate_limited.get()), (10, 90));
        // Half a second later: 5 more tokens.
        for i in 0..20 {
            offer(&sink, i, 1_510_000_000 + i);
        }
        assert_eq!((sink.len(), d.rate_limited.get()), (15, 105));
        // An event from another CPU slightly in the past refills nothing.
        offer(&sink, 0, 1_500_000_000);
        assert_eq!(d.rate_limited.get(), 106);
        assert_eq!(d.sampled.get() + d.queue_full.get(), 0);
    }
}
