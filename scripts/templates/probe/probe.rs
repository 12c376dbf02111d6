//! @NAME@ probe: every `@CATEGORY@:@EVENT@` event, counted by process name
//! (with `--metrics.labels=comm`; host-wide otherwise). BPF side:
//! exporter-ebpf/src/probes/@NAME@.bpf.c.
//!
//! Worst-case series: 1 without opt-in labels; with `comm`, at most
//! `metrics.series_limit` plus one overflow series.

use edgewatch_common::{@CAMEL@, PROBE_@UPPER@};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{
    AttachMode, Handler, Hook, Link, ProbeDef,
    fixture::{bytes, hdr, name},
};
use crate::{
    aggregate::{Context, OnRecord, Reconfigure},
    vocab::{
        kernel::name_label,
        labels::{Foldable, OptInLabels, OptLabels, SeriesCap},
    },
};

pub const PROBE: ProbeDef<@CAMEL@Aggregator> = ProbeDef {
    name: "@NAME@",
    about: "every @CATEGORY@:@EVENT@ event, by process",
    id: PROBE_@UPPER@,
    records: &[Handler::of::<@CAMEL@>()],
    chain: &[Link {
        mode: AttachMode::Tracepoint,
        hooks: &[Hook::Tracepoint {
            program: "ew_@NAME@_tp",
            category: "@CATEGORY@",
            name: "@EVENT@",
        }],
        task_btf: false,
    }],
    aggregator: @CAMEL@Aggregator::register,
    collector: None,
    fixtures,
};

fn fixtures() -> Vec<Vec<u8>> {
    vec![bytes(&record("template"))]
}

fn record(comm: &str) -> @CAMEL@ {
    @CAMEL@ {
        hdr: hdr::<@CAMEL@>(),
        tgid: 1,
        _pad: 0,
        comm: name(comm),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    #[prometheus(flatten)]
    pub opt: OptLabels,
}

impl Foldable for Labels {
    fn folded(&self) -> Self {
        Self {
            opt: self.opt.folded(),
        }
    }
}

pub struct @CAMEL@Aggregator {
    ctx: Context,
    events: Family<Labels, Counter>,
    cap: SeriesCap<Labels>,
}

impl @CAMEL@Aggregator {
    pub fn register(registry: &mut Registry, ctx: &Context) -> Self {
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "edgewatch_@NAME@_events",
            "@CATEGORY@:@EVENT@ events, by process",
            events.clone(),
        );
        Self {
            cap: ctx.cap("edgewatch_@NAME@_events_total"),
            ctx: ctx.clone(),
            events,
        }
    }
}

impl Reconfigure for @CAMEL@Aggregator {
    fn reconfigure(&mut self, labels: OptInLabels, series_limit: usize) {
        self.ctx.labels = labels;
        self.ctx.series_limit = series_limit;
        self.cap.set_limit(series_limit);
    }
}

impl OnRecord<@CAMEL@> for @CAMEL@Aggregator {
    fn on(&mut self, r: &@CAMEL@) {
        let labels = self.cap.admit(Labels {
            opt: OptLabels {
                comm: self.ctx.labels.comm.then(|| name_label(&r.comm)),
                ..OptLabels::default()
            },
        });
        self.events.get_or_create(&labels).inc();
    }
}
