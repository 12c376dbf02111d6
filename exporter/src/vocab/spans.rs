//! Spans: one per TCP handshake and per map update or delete call, handed
//! from the aggregators to the OTLP exporter through a bounded queue. When
//! the queue is full a span is dropped and counted in
//! `edgewatch_spans_dropped_total`; nothing waits.
//!
//! A queued span keeps the raw record it came from: its attributes (strings)
//! are built when it is exported, not on the consumer's hot path. It also
//! keeps the acting task's workload, resolved from the cache when the span
//! is made (a cgroup may be gone by export time).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use edgewatch_common::{MapOp, TcpConnect};
use prometheus_client::metrics::counter::Counter;

use super::workload::Workload;

/// The record a span describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanSource {
    /// A TCP handshake leaving SYN_SENT.
    Handshake(TcpConnect),
    /// A map update or delete call.
    MapCall(MapOp),
}

/// A finished span, in Unix nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub name: &'static str,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub source: SpanSource,
    /// The acting task's workload, when workload resolution is on.
    pub workload: Option<Arc<Workload>>,
}

#[derive(Debug)]
struct Queue {
    spans: VecDeque<SpanRecord>,
    capacity: usize,
}

/// Where aggregators put spans; off unless OTLP traces are on.
#[derive(Debug, Clone, Default)]
pub struct SpanSink {
    queue: Option<Arc<Mutex<Queue>>>,
    dropped: Counter,
}

impl SpanSink {
    pub fn enabled(capacity: usize, dropped: Counter) -> Self {
        Self {
            queue: Some(Arc::new(Mutex::new(Queue {
                spans: VecDeque::new(),
                capacity,
            }))),
            dropped,
        }
    }

    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    pub fn push(&self, span: SpanRecord) {
        let Some(q) = &self.queue else { return };
        let mut q = q.lock().unwrap_or_else(|e| e.into_inner());
        if q.spans.len() >= q.capacity {
            self.dropped.inc();
            return;
        }
        q.spans.push_back(span);
    }

    /// Everything queued so far.
    pub fn drain(&self) -> Vec<SpanRecord> {
        match &self.queue {
            Some(q) => q
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .spans
                .drain(..)
                .collect(),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u64) -> SpanRecord {
        SpanRecord {
            name: "x",
            start_unix_ns: n,
            end_unix_ns: n,
            source: SpanSource::MapCall(bytemuck::Zeroable::zeroed()),
            workload: None,
        }
    }

    #[test]
    fn bounded_and_counted() {
        let dropped = Counter::default();
        let sink = SpanSink::enabled(2, dropped.clone());
        for i in 0..5 {
            sink.push(span(i));
        }
        assert_eq!(dropped.get(), 3);
        assert_eq!(sink.drain(), vec![span(0), span(1)]);
        assert!(sink.drain().is_empty());
        let off = SpanSink::default();
        off.push(span(9));
        assert!(!off.is_on() && off.drain().is_empty());
    }
}
