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
/// prometheus-client's `Counter`.
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
        self.block.0[self.cell].fetch_add(v, Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use prometheus_client::{
        metrics::{counter::Counter, family::Family},
        registry::Registry,
    };

    use super::*;
    use crate::vocab::labels::OptLabels;

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
        let text = |r: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, r).unwrap();
            text
        };
        let sorted = |text: String| {
            let mut lines: Vec<_> = text.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        let whole = labels::text_encoding(|| text(&a));
        assert_eq!(sorted(whole.clone()), sorted(text(&b)));
        assert_eq!(text(&a), whole);
        let samples: Vec<_> = whole.lines().filter(|l| !l.starts_with('#')).collect();
        for (i, line) in samples.iter().enumerate() {
            assert!(line.ends_with(&format!(" {}", i + 1)), "{line}");
        }
        let protobuf = |r: &Registry| {
            let families = prometheus_client::encoding::prometheus_protobuf::encode(r).unwrap();
            let mut metrics: Vec<_> = families
                .iter()
                .flat_map(|f| f.metric.iter().map(|m| format!("{:?} {m:?}", f.name)))
                .collect();
            metrics.sort();
            metrics
        };
        assert_eq!(protobuf(&a), protobuf(&b));
        // A family with no series writes nothing, as prometheus-client's.
        let mut empty = Registry::default();
        empty.register("y", "Y", Counters::<S>::default());
        empty.register("z", "Z", Family::<S, Counter>::default());
        assert_eq!(labels::text_encoding(|| text(&empty)), "# EOF\n");
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
