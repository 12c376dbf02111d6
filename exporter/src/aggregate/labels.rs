//! Label-set plumbing shared by every probe: optional labels that are left
//! out (not emitted empty) when off, and the per-metric series cap that
//! folds label sets past it into one overflow series.

use std::{collections::HashSet, hash::Hash};

use prometheus_client::{
    encoding::LabelSetEncoder,
    metrics::{counter::Counter, family::Family},
};

/// Label value that replaces every opt-in label of a folded series.
pub const OVERFLOW: &str = "_overflow";

/// Declares a label-set struct whose fields are all required string-like
/// values (`&'static str`, `String`, `Arc<str>`), encoded in field order
/// under the field names.
macro_rules! label_set {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Hash, PartialEq, Eq)]
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty),+
        }

        impl prometheus_client::encoding::EncodeLabelSet for $name {
            fn encode(
                &self,
                enc: &mut prometheus_client::encoding::LabelSetEncoder,
            ) -> Result<(), std::fmt::Error> {
                $(
                    $crate::aggregate::labels::encode_label(
                        enc,
                        stringify!($field),
                        AsRef::<str>::as_ref(&self.$field),
                    )?;
                )+
                Ok(())
            }
        }
    };
}
pub(crate) use label_set;

/// Encodes `key="value"` into a label set.
pub fn encode_label(
    enc: &mut LabelSetEncoder,
    key: &str,
    value: &str,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeLabel;
    (key, value).encode(enc.encode_label())
}

/// Encodes `key="value"` only when the optional label is present.
pub fn encode_opt(
    enc: &mut LabelSetEncoder,
    key: &str,
    value: Option<&str>,
) -> Result<(), std::fmt::Error> {
    match value {
        Some(v) => encode_label(enc, key, v),
        None => Ok(()),
    }
}

/// An opt-in label's folded value: `_overflow` where the label is present.
pub fn fold(v: &Option<std::sync::Arc<str>>) -> Option<std::sync::Arc<str>> {
    v.as_ref().map(|_| std::sync::Arc::from(OVERFLOW))
}

/// The opt-in `peer` and `port` label values of a connection, when on.
pub fn peer_port(
    on: bool,
    family: u16,
    daddr: &[u8; 16],
    dport: u16,
) -> (Option<std::sync::Arc<str>>, Option<std::sync::Arc<str>>) {
    if !on {
        return (None, None);
    }
    let peer = super::connect::peer(family, daddr).map(|a| std::sync::Arc::from(a.to_string()));
    (peer, Some(std::sync::Arc::from(dport.to_string())))
}

label_set! {
    /// Labels of `edgewatch_series_dropped_total`.
    pub struct MetricLabel {
        pub metric: &'static str,
    }
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
    pub fn new(metric: &'static str, limit: usize, dropped: Family<MetricLabel, Counter>) -> Self {
        Self {
            metric,
            limit,
            seen: HashSet::new(),
            dropped,
        }
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
    use super::*;

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
        let mut cap = SeriesCap::new("m", 2, dropped.clone());
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
}
