//! Ring-buffer records through the dispatcher edgewatch runs, with every
//! probe's aggregator behind it: any bytes are aggregated or counted as a
//! decode error, never a panic.
#![no_main]

use std::cell::RefCell;

use edgewatch::{
    aggregate,
    pipeline::Dispatcher,
    probe,
    telemetry::Telemetry,
    vocab::{
        clock::Clock,
        labels::OptInLabels,
        spans::{SpanLimits, SpanSink},
    },
    workload::Workloads,
};
use libfuzzer_sys::fuzz_target;
use prometheus_client::registry::Registry;

fn dispatcher() -> Dispatcher {
    let mut registry = Registry::default();
    let telemetry = Telemetry::register(&mut registry);
    let ctx = aggregate::Context {
        // Every opt-in label; the workload resolver is off (it would walk
        // the host's cgroup hierarchy for each random id).
        labels: OptInLabels {
            comm: true,
            peer: true,
            cgroup: true,
            unit: true,
            container_id: true,
            pod: true,
            namespace: true,
            container: true,
        },
        series_limit: 64,
        series_dropped: telemetry.series_dropped.clone(),
        clock: Clock::fixed(0),
        spans: SpanSink::enabled(
            SpanLimits {
                sample_ratio: 1.0,
                max_per_second: 0,
                max_queued: 16,
            },
            telemetry.span_drop_counters(),
            1,
        ),
        refs: Default::default(),
        workloads: Workloads::off(),
    };
    let sinks = probe::ALL
        .iter()
        .map(|&p| (p, p.build(&mut registry, &ctx)))
        .collect();
    Dispatcher::new(sinks, telemetry)
}

thread_local! {
    static DISPATCHER: RefCell<Dispatcher> = RefCell::new(dispatcher());
}

fuzz_target!(|data: &[u8]| {
    DISPATCHER.with(|d| d.borrow_mut().dispatch(data));
});
