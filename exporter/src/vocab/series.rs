//! Counter families whose series count grows with what the node does
//! (connect calls and handshakes, retransmits and segments, map updates and
//! deletes), laid out for /metrics.
//!
//! prometheus-client's `Family` keeps its series in a hash map, each counter
//! in an allocation of its own: an encode of 10,000 series walks them in
//! hash order and waits on memory twice per series, once for the counter
//! and once for the label text (a third of the time /metrics spent under
//! wrk; BENCHMARKS.md). [`Counters`] keeps the series in creation order,
//! their rendered label texts one after another in one string, and their
//! counters side by side in blocks of [`CELLS`], so an encode reads three
//! arrays front to back. A series is never removed (the series cap bounds
//! how many there are).
//!
//! The text encoders get each label set whole ([`labels::text_encoding`]),
//! any other encoder (the protobuf one that OTLP's model reads) label by
//! label. Every sample line a text encode of this family writes is a counter
//! sample with an integer value, a label set that is not empty and no
//! exemplar, which the classic text format writes the same: those lines are
//! written under [`labels::plain_samples`], so the classic writer
//! (export/text.rs) copies them as they come instead of checking them line
//! by line.

use std::{
    fmt::Debug,
    hash::Hash,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use indexmap::IndexSet;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

use super::labels;

/// Counters per block: a block is one allocation of 512 bytes.
pub const CELLS: usize = 64;

#[derive(Debug)]
struct Block([AtomicU64; CELLS]);

impl Block {
    fn new() -> Arc<Self> {
        Arc::new(Self(std::array::from_fn(|_| AtomicU64::new(0))))
    }
}

/// One series' counter: its cell in its family's blocks. Counts like
/// prometheus-client's `Counter`, for one writer at a time: the consumer
/// task, whose aggregators hold the handles and count one record after
/// another (nothing else counts into these families). An increment is a
/// load and a store, not a locked read-modify-write (one per record, ~5 ns
/// of the consumer's ~50 ns); readers (the encoders) load whole values.
#[derive(Clone, Debug)]
pub struct SeriesCounter {
    block: Arc<Block>,
    cell: usize,
}

impl SeriesCounter {
    /// Adds one; returns the value before.
    #[inline]
    pub fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    /// Adds `v`; returns the value before.
    #[inline]
    pub fn inc_by(&self, v: u64) -> u64 {
        let cell = &self.block.0[self.cell];
        let before = cell.load(Ordering::Relaxed);
        cell.store(before.wrapping_add(v), Ordering::Relaxed);
        before
    }

    pub fn get(&self) -> u64 {
        self.block.0[self.cell].load(Ordering::Relaxed)
    }
}

/// A counter family keyed by label sets of type `L`, registered like
/// prometheus-client's `Family<L, Counter>` and encoded the same, byte for
/// byte but for the order of its series (creation order here, hash order
/// there).
pub struct Counters<L> {
    inner: Arc<RwLock<Arena<L>>>,
}

struct Arena<L> {
    /// Label sets in creation order; a series' index is its cell's.
    sets: IndexSet<L>,
    /// Series `i`'s rendered labels are `text[ends[i - 1]..ends[i]]`
    /// (`text[..ends[0]]` for the first); empty for an empty set.
    text: String,
    ends: Vec<usize>,
    blocks: Vec<Arc<Block>>,
}

impl<L> Arena<L> {
    fn text(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    fn value(&self, i: usize) -> u64 {
        self.blocks[i / CELLS].0[i % CELLS].load(Ordering::Relaxed)
    }

    fn handle(&self, i: usize) -> SeriesCounter {
        SeriesCounter {
            block: self.blocks[i / CELLS].clone(),
            cell: i % CELLS,
        }
    }
}

impl<L> Clone for Counters<L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<L> Default for Counters<L> {
    fn default() -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arena {
                sets: IndexSet::new(),
                text: String::new(),
                ends: Vec::new(),
                blocks: Vec::new(),
            })),
        }
    }
}

impl<L> Debug for Counters<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let arena = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Counters")
            .field("series", &arena.sets.len())
            .finish()
    }
}

impl<L> Counters<L>
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    /// The counter of `labels`, created (its label text rendered) if it is
    /// new: the consumer's slow path; a series already there is found under
    /// the read lock.
    pub fn series(&self, labels: L) -> SeriesCounter {
        {
            let arena = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = arena.sets.get_index_of(&labels) {
                return arena.handle(i);
            }
        }
        let text = labels::render(&labels);
        let mut arena = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let (i, new) = arena.sets.insert_full(labels);
        if new {
            if let Some(text) = text {
                arena.text.push_str(&text);
            }
            let end = arena.text.len();
            arena.ends.push(end);
            if i % CELLS == 0 {
                arena.blocks.push(Block::new());
            }
        }
        arena.handle(i)
    }

    /// The number of series.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .sets
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A rendered label set, written whole as one label key (see
/// [`labels::Rendered`]).
struct Whole<'a>(&'a str);

impl EncodeLabelSet for Whole<'_> {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        let mut label = enc.encode_label();
        label.encode_label_key()?.write_str(self.0)
    }
}

impl<L> TypedMetric for Counters<L> {
    const TYPE: MetricType = MetricType::Counter;
}

impl<L> EncodeMetric for Counters<L>
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let arena = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        if !labels::text_encoding_on() {
            for (i, set) in arena.sets.iter().enumerate() {
                encoder
                    .encode_family(set)?
                    .encode_counter::<NoLabelSet, _, u64>(&arena.value(i), None)?;
            }
            return Ok(());
        }
        for i in 0..arena.sets.len() {
            let text = arena.text(i);
            let value = arena.value(i);
            if text.is_empty() {
                // `{}` or no braces at all: the classic writer checks it.
                encoder
                    .encode_family(&arena.sets[i])?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            } else {
                labels::plain_samples(|| {
                    encoder
                        .encode_family(&Whole(text))?
                        .encode_counter::<NoLabelSet, _, u64>(&value, None)
                })?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }

    fn is_empty(&self) -> bool {
        Counters::is_empty(self)
    }
}

/// A histogram with prometheus-client's classic buckets and exposition,
/// for one writer at a time like [`SeriesCounter`] (the consumer task):
/// an observation is a few loads and stores instead of prometheus-client's
/// mutex (two locked instructions per record, ~10 ns of the consumer's
/// ~50 ns). The count is the sum of the buckets when encoded, so `_count`
/// and the `+Inf` bucket always agree; `_sum` is stored after the bucket,
/// so an encode that runs while a record is counted may show that one
/// observation in the buckets and not yet in the sum.
#[derive(Clone, Debug)]
pub struct SeriesHistogram {
    inner: Arc<HistogramCells>,
}

#[derive(Debug)]
struct HistogramCells {
    /// Finite upper bounds, ascending; the last bucket is `+Inf`.
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative), `bounds.len() + 1`.
    buckets: Box<[AtomicU64]>,
    /// The sum's bits.
    sum: AtomicU64,
}

impl SeriesHistogram {
    /// Buckets with these upper bounds (ascending; infinite ones are
    /// dropped, as prometheus-client drops them) and `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            inner: Arc::new(HistogramCells {
                bounds,
                buckets,
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Counts `v` in the first bucket whose upper bound is at least `v`
    /// (`+Inf` for NaN), as prometheus-client does.
    #[inline]
    pub fn observe(&self, v: f64) {
        let h = &*self.inner;
        let i = if v.is_nan() {
            h.bounds.len()
        } else {
            h.bounds
                .iter()
                .position(|b| *b >= v)
                .unwrap_or(h.bounds.len())
        };
        let bucket = &h.buckets[i];
        bucket.store(bucket.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let sum = f64::from_bits(h.sum.load(Ordering::Relaxed)) + v;
        h.sum.store(sum.to_bits(), Ordering::Relaxed);
    }

    /// (sum, count, buckets as (upper bound, observations)).
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let h = &*self.inner;
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        (
            f64::from_bits(h.sum.load(Ordering::Relaxed)),
            count,
            buckets,
        )
    }
}

impl TypedMetric for SeriesHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SeriesHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        metrics::{counter::Counter, family::Family},
        registry::Registry,
    };

    use super::*;
    use crate::vocab::{
        labels::OptLabels,
        testing::{protobuf, sorted, text},
    };

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct S {
        family: &'static str,
        #[prometheus(flatten)]
        opt: OptLabels,
    }

    fn set(i: usize) -> S {
        S {
            family: ["ipv4", "ipv6", ""][i % 3],
            opt: OptLabels {
                comm: (i.is_multiple_of(2) || i.is_multiple_of(5))
                    .then(|| format!("we\\ird \"c{i}\"\n#{{}}").into()),
                peer: (!i.is_multiple_of(5))
                    .then(|| format!("10.0.{}.{}", i / 256, i % 256).into()),
                pod: i.is_multiple_of(7).then(|| "ünï, = \"}".into()),
                ..OptLabels::default()
            },
        }
    }

    /// Three blocks of series, each counted `i + 1` times through handles
    /// found again: the same samples as prometheus-client's own family, in
    /// its text encoding (rendered sets whole, and label by label) and in
    /// its protobuf encoding (what OTLP's model reads); in creation order.
    #[test]
    fn encodes_as_prometheus_clients_family() {
        let ours = Counters::<S>::default();
        let theirs = Family::<S, Counter>::default();
        let n = 2 * CELLS + 5;
        for i in 0..n {
            let h = ours.series(set(i));
            h.inc();
            theirs.get_or_create(&set(i)).inc_by(i as u64 + 1);
            ours.series(set(i)).inc_by(i as u64);
            assert_eq!(h.get(), i as u64 + 1);
        }
        assert_eq!(ours.len(), n);
        let mut a = Registry::default();
        a.register("x", "X", ours.clone());
        let mut b = Registry::default();
        b.register("x", "X", theirs);
        let whole = labels::text_encoding(|| text(&a));
        assert_eq!(sorted(&whole), sorted(&text(&b)));
        assert_eq!(text(&a), whole);
        let samples: Vec<_> = whole.lines().filter(|l| !l.starts_with('#')).collect();
        for (i, line) in samples.iter().enumerate() {
            assert!(line.ends_with(&format!(" {}", i + 1)), "{line}");
        }
        assert_eq!(protobuf(&a), protobuf(&b));
        // A family with no series writes nothing, as prometheus-client's.
        let mut empty = Registry::default();
        empty.register("y", "Y", Counters::<S>::default());
        empty.register("z", "Z", Family::<S, Counter>::default());
        assert_eq!(labels::text_encoding(|| text(&empty)), "# EOF\n");
    }

    /// The same observations (on bounds, between, past the last, below
    /// the first, infinite, NaN) as prometheus-client's own histogram: the
    /// same text and protobuf encodings, in a family and alone.
    #[test]
    fn histogram_encodes_as_prometheus_clients() {
        use prometheus_client::metrics::histogram::Histogram;
        let bounds = [0.001, 0.01, 0.5, 1.0, f64::INFINITY];
        let values = [
            0.0005,
            0.001,
            0.002,
            0.5,
            0.75,
            1.0,
            7.0,
            -3.0,
            f64::INFINITY,
            1e-9,
        ];
        let ours =
            Family::<S, SeriesHistogram, fn() -> SeriesHistogram>::new_with_constructor(|| {
                SeriesHistogram::new([0.001, 0.01, 0.5, 1.0, f64::INFINITY])
            });
        let theirs = Family::<S, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.01, 0.5, 1.0, f64::INFINITY])
        });
        let alone = SeriesHistogram::new(bounds);
        let alone_theirs = Histogram::new(bounds);
        for (i, v) in values.iter().enumerate() {
            ours.get_or_create(&set(i % 3)).observe(*v);
            theirs.get_or_create(&set(i % 3)).observe(*v);
            alone.observe(*v);
            alone_theirs.observe(*v);
        }
        let nan = SeriesHistogram::new(bounds);
        nan.observe(f64::NAN);
        let nan_theirs = Histogram::new(bounds);
        nan_theirs.observe(f64::NAN);
        let mut a = Registry::default();
        a.register("d", "D", ours);
        a.register("one", "One", alone);
        a.register("nan", "NaN", nan);
        let mut b = Registry::default();
        b.register("d", "D", theirs);
        b.register("one", "One", alone_theirs);
        b.register("nan", "NaN", nan_theirs);
        let lines = sorted(&text(&a));
        assert_eq!(lines, sorted(&text(&b)));
        assert!(
            lines.contains(&"one_bucket{le=\"0.001\"} 4".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"one_count 10".to_string()), "{lines:?}");
        assert!(
            lines.contains(&"nan_bucket{le=\"+Inf\"} 1".to_string()),
            "{lines:?}"
        );
        assert_eq!(protobuf(&a), protobuf(&b));
    }

    #[test]
    fn handles_of_one_series_share_a_cell() {
        let c = Counters::<S>::default();
        let a = c.series(set(1));
        let b = c.series(set(2));
        let a2 = c.series(set(1));
        assert_eq!(a.inc_by(5), 0);
        assert_eq!(a2.inc(), 5);
        assert_eq!((a.get(), b.get()), (6, 0));
        assert_eq!(c.len(), 2);
    }
}
