//! The label vocabulary every metric shares: which opt-in labels are on,
//! the opt-in labels themselves (left out, not emitted empty, when off),
//! and the per-metric series cap that folds label sets past it into one
//! overflow series.
//!
//! Label sets without opt-in labels derive prometheus-client's
//! `EncodeLabelSet`; the ones with opt-in labels flatten [`OptLabels`] into
//! the derive (`#[prometheus(flatten)]`), which is the one hand-written
//! encoder: the derive would encode a `None` as an empty value. Families
//! whose series count grows with what the node does render each label set
//! once, when its series is created, and /metrics copies that text whole:
//! the counter families in [`super::series::Counters`], the histogram and
//! gauge ones keyed by [`Rendered`] label sets.

use std::{cell::Cell, collections::HashSet, fmt::Debug, hash::Hash, sync::Arc, thread::LocalKey};

use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
    },
    registry::Registry,
};

use super::workload::Workload;

/// Label value that replaces every opt-in label of a folded series.
pub const OVERFLOW: &str = "_overflow";

/// Which opt-in labels are on (`metrics.labels`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptInLabels {
    /// The process name (`comm`).
    pub comm: bool,
    /// The destination address and port (`peer`, `port`).
    pub peer: bool,
    /// The acting task's cgroup v2 path (`cgroup`).
    pub cgroup: bool,
    /// Its systemd unit (`unit`).
    pub unit: bool,
    /// Its container's id (`container_id`).
    pub container_id: bool,
    /// Its Kubernetes pod: name and UID (`pod`, `pod_uid`).
    pub pod: bool,
    /// Its pod's namespace (`namespace`).
    pub namespace: bool,
    /// Its container's name in the pod (`container`).
    pub container: bool,
}

impl OptInLabels {
    /// Every name `metrics.labels` accepts.
    pub const NAMES: &'static [&'static str] = &[
        "comm",
        "peer",
        "cgroup",
        "unit",
        "container_id",
        "pod",
        "namespace",
        "container",
    ];

    /// Turns on the label `name`; false if there is no such label.
    pub fn enable(&mut self, name: &str) -> bool {
        match name {
            "comm" => self.comm = true,
            "peer" => self.peer = true,
            "cgroup" => self.cgroup = true,
            "unit" => self.unit = true,
            "container_id" => self.container_id = true,
            "pod" => self.pod = true,
            "namespace" => self.namespace = true,
            "container" => self.container = true,
            _ => return false,
        }
        true
    }

    /// Whether any label needs the acting task's workload (its cgroup).
    pub fn workload(&self) -> bool {
        self.cgroup
            || self.unit
            || self.container_id
            || self.pod
            || self.namespace
            || self.container
    }

    /// These labels with every workload label off.
    pub fn without_workload(self) -> Self {
        Self {
            comm: self.comm,
            peer: self.peer,
            ..Self::default()
        }
    }
}

/// The opt-in labels of one series, encoded in this order and only when
/// present: `comm`, `peer`, `port`, `cgroup`, `unit`, `container_id`,
/// `namespace`, `pod`, `pod_uid`, `container`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct OptLabels {
    pub comm: Option<Arc<str>>,
    pub peer: Option<Arc<str>>,
    pub port: Option<Arc<str>>,
    pub cgroup: Option<Arc<str>>,
    pub unit: Option<Arc<str>>,
    pub container_id: Option<Arc<str>>,
    pub namespace: Option<Arc<str>>,
    pub pod: Option<Arc<str>>,
    pub pod_uid: Option<Arc<str>>,
    pub container: Option<Arc<str>>,
}

impl OptLabels {
    /// Every present label replaced by [`OVERFLOW`].
    pub fn folded(&self) -> Self {
        let fold = |v: &Option<Arc<str>>| v.as_ref().map(|_| Arc::from(OVERFLOW));
        Self {
            comm: fold(&self.comm),
            peer: fold(&self.peer),
            port: fold(&self.port),
            cgroup: fold(&self.cgroup),
            unit: fold(&self.unit),
            container_id: fold(&self.container_id),
            namespace: fold(&self.namespace),
            pod: fold(&self.pod),
            pod_uid: fold(&self.pod_uid),
            container: fold(&self.container),
        }
    }

    /// These labels with the workload labels that `on` turns on, from
    /// `workload` (None: the record carries no workload). A label the
    /// workload has no value for is left out, as Prometheus reads an empty
    /// one; `cgroup` always has one ([`super::workload::KERNEL`] for kernel
    /// context, [`super::workload::UNRESOLVED`] for a cgroup gone before it was
    /// looked up).
    pub fn with_workload(mut self, on: &OptInLabels, workload: Option<&Workload>) -> Self {
        let Some(w) = workload else { return self };
        let pick = |on: bool, v: &Option<Arc<str>>| if on { v.clone() } else { None };
        self.cgroup = on.cgroup.then(|| w.cgroup.clone());
        self.unit = pick(on.unit, &w.unit);
        self.container_id = pick(on.container_id, &w.container_id);
        self.namespace = pick(on.namespace, &w.namespace);
        self.pod = pick(on.pod, &w.pod);
        self.pod_uid = pick(on.pod, &w.pod_uid);
        self.container = pick(on.container, &w.container);
        self
    }
}

impl EncodeLabelSet for OptLabels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (key, value) in [
            ("comm", &self.comm),
            ("peer", &self.peer),
            ("port", &self.port),
            ("cgroup", &self.cgroup),
            ("unit", &self.unit),
            ("container_id", &self.container_id),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("pod_uid", &self.pod_uid),
            ("container", &self.container),
        ] {
            if let Some(v) = value {
                (key, v.as_ref()).encode(enc.encode_label())?;
            }
        }
        Ok(())
    }
}

/// A series' label set with its text rendered once, when the series is
/// created, so that /metrics writes it with one copy instead of label by
/// label through prometheus-client's encoder (with 10,000 series that was
/// over half of an OpenMetrics encode: BENCHMARKS.md). Hash and equality
/// are the labels' own. The text is prometheus-client's own rendering of
/// the labels (a one-series exposition, cut), so its order and escaping are
/// the encoder's.
///
/// prometheus-client's text encoder writes a label key as it is given and
/// writes nothing more unless the key's value is started, so the whole
/// rendered set goes in as one key. That holds for its text encoder only:
/// any other encoder (the protobuf one the OTLP model reads) gets the labels
/// one by one, and [`text_encoding`] marks the text encodes. The golden
/// expositions hold both paths to the same bytes.
#[derive(Clone, Debug)]
pub struct Rendered<L> {
    labels: L,
    /// `a="x",b="y"`; None in a lookup probe, or for an empty set.
    text: Option<Arc<str>>,
}

impl<L: Hash> Hash for Rendered<L> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.labels.hash(state);
    }
}

impl<L: PartialEq> PartialEq for Rendered<L> {
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels
    }
}

impl<L: Eq> Eq for Rendered<L> {}

impl<L> Rendered<L>
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    pub fn new(labels: L) -> Self {
        let text = render(&labels);
        Self { labels, text }
    }

    pub fn labels(&self) -> &L {
        &self.labels
    }
}

impl<L: EncodeLabelSet> EncodeLabelSet for Rendered<L> {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.text {
            Some(text) if TEXT_ENCODING.get() => {
                use std::fmt::Write;
                let mut label = enc.encode_label();
                label.encode_label_key()?.write_str(text)
            }
            _ => self.labels.encode(enc),
        }
    }
}

thread_local! {
    /// Set while a prometheus-client text encode runs on this thread.
    static TEXT_ENCODING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `encode`, a prometheus-client text (OpenMetrics) encode on this
/// thread, with [`Rendered`] label sets written whole.
pub fn text_encoding<R>(encode: impl FnOnce() -> R) -> R {
    with_flag(&TEXT_ENCODING, encode)
}

/// Runs `f` with `flag` set, and restores it after, also on unwind.
fn with_flag<R>(flag: &'static LocalKey<Cell<bool>>, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.set(self.1);
        }
    }
    let _restore = Restore(flag, flag.replace(true));
    f()
}

/// Whether a prometheus-client text encode runs on this thread
/// ([`text_encoding`]).
pub fn text_encoding_on() -> bool {
    TEXT_ENCODING.get()
}

thread_local! {
    /// Set while every line written is a counter sample line the classic
    /// text format writes the same ([`plain_samples`]).
    static PLAIN_SAMPLES: Cell<bool> = const { Cell::new(false) };
}

/// Runs `write`, which writes counter sample lines only, each with an
/// integer value, a label set that is not empty and no exemplar: lines the
/// Prometheus text format 0.0.4 writes as OpenMetrics does, which the
/// classic writer (export/text.rs) then copies as they come.
pub fn plain_samples<R>(write: impl FnOnce() -> R) -> R {
    with_flag(&PLAIN_SAMPLES, write)
}

/// Whether the lines written now are [`plain_samples`].
pub fn plain_samples_on() -> bool {
    PLAIN_SAMPLES.get()
}

/// `labels` as prometheus-client's text encoder writes them between the
/// braces; None for an empty set.
pub(super) fn render<L>(labels: &L) -> Option<Arc<str>>
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    family.get_or_create_owned(labels);
    let mut registry = Registry::default();
    registry.register("r", "", family);
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &registry).ok()?;
    let line = text.lines().find(|l| !l.starts_with('#'))?;
    let (set, _value) = line.strip_prefix("r_total{")?.rsplit_once("} ")?;
    (!set.is_empty()).then(|| Arc::from(set))
}

/// The series of `labels` in `family`, created with its text rendered if it
/// is new (the consumer's slow path: a series already there is found
/// without rendering).
pub fn series<L, M, C>(family: &Family<Rendered<L>, M, C>, labels: L) -> M
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
    M: Clone,
    C: MetricConstructor<M>,
{
    let probe = Rendered { labels, text: None };
    if let Some(m) = family.get(&probe) {
        return m.clone();
    }
    family.get_or_create_owned(&Rendered::new(probe.labels))
}

/// Labels of `edgewatch_series_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabel {
    pub metric: &'static str,
}

/// A label set whose opt-in labels can be folded into the overflow series.
pub trait Foldable: Clone + Eq + Hash {
    /// This label set with every opt-in label replaced by [`OVERFLOW`].
    fn folded(&self) -> Self;
}

/// Caps the number of distinct label sets of one metric family.
///
/// Past `limit` distinct sets, a new set is folded into its overflow series
/// and the event is counted in `edgewatch_series_dropped_total{metric}`.
/// Memory is bounded by `limit` label sets.
#[derive(Debug)]
pub struct SeriesCap<L> {
    metric: &'static str,
    limit: usize,
    seen: HashSet<L>,
    dropped: Family<MetricLabel, Counter>,
}

impl<L: Foldable> SeriesCap<L> {
    /// A cap for `metric`; its `edgewatch_series_dropped_total` series is
    /// exported from zero.
    pub fn new(metric: &'static str, limit: usize, dropped: &Family<MetricLabel, Counter>) -> Self {
        dropped.get_or_create_owned(&MetricLabel { metric });
        Self {
            metric,
            limit,
            seen: HashSet::new(),
            dropped: dropped.clone(),
        }
    }

    /// Changes the cap (a config reload): label sets already admitted stay.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Like [`SeriesCap::admit`], but leaves counting the fold to the
    /// caller: returns the label set to record under and, when it was
    /// folded, the counter each such event moves.
    pub fn admit_once(&mut self, labels: L) -> (L, Option<Counter>) {
        if self.seen.contains(&labels) {
            return (labels, None);
        }
        let folded = labels.folded();
        if folded == labels {
            return (labels, None);
        }
        if self.seen.len() < self.limit {
            self.seen.insert(labels.clone());
            return (labels, None);
        }
        let dropped = self
            .dropped
            .get_or_create(&MetricLabel {
                metric: self.metric,
            })
            .clone();
        (folded, Some(dropped))
    }

    /// The label set to record under: `labels` itself while under the cap
    /// or already admitted, its folded form past the cap.
    pub fn admit(&mut self, labels: L) -> L {
        if self.seen.contains(&labels) {
            return labels;
        }
        let folded = labels.folded();
        if folded == labels {
            // No opt-in label: bounded by construction, never folded.
            return labels;
        }
        if self.seen.len() < self.limit {
            self.seen.insert(labels.clone());
            return labels;
        }
        self.dropped
            .get_or_create(&MetricLabel {
                metric: self.metric,
            })
            .inc();
        folded
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::Histogram;

    use super::*;
    use crate::vocab::testing::{protobuf, sorted, text};

    #[derive(Clone, Debug, Hash, PartialEq, Eq)]
    struct L(&'static str, Option<String>);

    impl Foldable for L {
        fn folded(&self) -> Self {
            L(self.0, self.1.as_ref().map(|_| OVERFLOW.to_string()))
        }
    }

    #[test]
    fn folds_past_the_cap_and_counts() {
        let dropped = Family::<MetricLabel, Counter>::default();
        let mut cap = SeriesCap::new("m", 2, &dropped);
        let l = |s: &str| L("x", Some(s.to_string()));
        assert_eq!(cap.admit(l("a")), l("a"));
        assert_eq!(cap.admit(l("b")), l("b"));
        assert_eq!(cap.admit(l("c")), l(OVERFLOW));
        assert_eq!(cap.admit(l("a")), l("a"));
        assert_eq!(cap.admit(l("d")), l(OVERFLOW));
        // Sets without opt-in labels are never capped.
        assert_eq!(cap.admit(L("y", None)), L("y", None));
        assert_eq!(dropped.get_or_create(&MetricLabel { metric: "m" }).get(), 2);
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct S {
        family: &'static str,
        #[prometheus(flatten)]
        opt: OptLabels,
    }

    /// Label sets with every character the escapes care about, an empty
    /// opt-in part and an empty set: the rendered text gives the bytes the
    /// encoder writes label by label, in counters and histograms, and the
    /// protobuf encoder (OTLP's model) still gets the labels one by one.
    #[test]
    fn rendered_label_sets_encode_as_the_labels_do() {
        let sets = [
            S {
                family: "ipv4",
                opt: OptLabels {
                    comm: Some("we\\ird \"c\"\n#{}".into()),
                    peer: Some("10.0.0.1".into()),
                    port: Some("80".into()),
                    ..OptLabels::default()
                },
            },
            S {
                family: "ipv6",
                opt: OptLabels::default(),
            },
            S {
                family: "",
                opt: OptLabels {
                    pod: Some("ünï, = \"}".into()),
                    ..OptLabels::default()
                },
            },
        ];
        let plain = Family::<S, Counter>::default();
        let rendered = Family::<Rendered<S>, Counter>::default();
        let plain_h = Family::<S, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 2.0])
        });
        let rendered_h =
            Family::<Rendered<S>, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new([1.0, 2.0])
            });
        for (i, set) in sets.iter().enumerate() {
            plain.get_or_create(set).inc_by(i as u64 + 1);
            series(&rendered, set.clone()).inc_by(i as u64 + 1);
            plain_h.get_or_create(set).observe(1.5);
            series(&rendered_h, set.clone()).observe(1.5);
            // Found again, not created twice.
            series(&rendered, set.clone()).inc();
            plain.get_or_create(set).inc();
        }
        let mut plain_r = Registry::default();
        plain_r.register("x", "X", plain);
        plain_r.register("h", "H", plain_h);
        let mut rendered_r = Registry::default();
        rendered_r.register("x", "X", rendered);
        rendered_r.register("h", "H", rendered_h);
        let (plain, rendered) = (plain_r, rendered_r);
        // Lines sorted: each family iterates its own hash map's order.
        let encode = |r: &Registry| sorted(&text(r)).join("\n");
        let whole = text_encoding(|| encode(&rendered));
        assert_eq!(whole, encode(&plain));
        assert!(
            whole.contains("x_total{family=\"ipv4\",comm=\"we\\\\ird \\\"c\\\"\\n#{}\",peer=\"10.0.0.1\",port=\"80\"} 2"),
            "{whole}"
        );
        // Outside text_encoding, label by label (the flag is restored).
        assert!(!TEXT_ENCODING.get());
        assert_eq!(encode(&rendered), whole);
        // The protobuf encoder (what OTLP's model reads) gets the labels.
        assert_eq!(protobuf(&rendered), protobuf(&plain));
    }

    #[test]
    fn text_encoding_restores_the_flag_after_a_panic() {
        let r = std::panic::catch_unwind(|| text_encoding(|| panic!("inside")));
        assert!(r.is_err());
        assert!(!TEXT_ENCODING.get());
        text_encoding(|| text_encoding(|| assert!(TEXT_ENCODING.get())));
        assert!(!TEXT_ENCODING.get());
    }

    #[test]
    fn opt_labels_leave_absent_labels_out() {
        let family = Family::<S, Counter>::default();
        family
            .get_or_create(&S {
                family: "ipv4",
                opt: OptLabels {
                    peer: Some("10.0.0.1".into()),
                    ..OptLabels::default()
                },
            })
            .inc();
        family
            .get_or_create(&S {
                family: "ipv6",
                opt: OptLabels::default(),
            })
            .inc();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("x", "X", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("x_total{family=\"ipv4\",peer=\"10.0.0.1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("x_total{family=\"ipv6\"} 1\n"), "{text}");
    }
}
