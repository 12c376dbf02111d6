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
    vocab::{clock::Clock, labels::OptInLabels, spans::SpanSink},
};
use libfuzzer_sys::fuzz_target;
use prometheus_client::registry::Registry;

fn dispatcher() -> Dispatcher {
    let mut registry = Registry::default();
    let telemetry = Telemetry::register(&mut registry);
    let ctx = aggregate::Context {
        labels: OptInLabels {
            comm: true,
            peer: true,
        },
        series_limit: 64,
        series_dropped: telemetry.series_dropped.clone(),
        clock: Clock::fixed(0),
        spans: SpanSink::enabled(16, telemetry.spans_dropped.clone()),
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
