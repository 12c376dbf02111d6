//! OTLP push end to end: a collector stand-in (a plain HTTP server in this
//! test that decodes the OTLP protobuf) receives exactly the numbers a
//! scrape shows for a known workload; with the collector down, edgewatch
//! counts its failed pushes and keeps serving.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::mpsc,
    time::Duration,
};

use crate::common::{Edgewatch, Netns, poll, privileged, serial, set_thread_comm};
use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{KeyValue, any_value},
    metrics::v1::{metric, number_data_point},
    trace::v1::status::StatusCode,
};
use prost::Message;

/// Accepts OTLP/HTTP posts and forwards each decoded request.
pub(crate) fn collector() -> (u16, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0;
                    let mut content_type = String::new();
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap();
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.trim().parse().unwrap(),
                            "content-type" => content_type = v.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).unwrap();
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    assert_eq!(content_type, "application/x-protobuf");
                    let _ = tx.send((path, body));
                    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (port, rx)
}

/// The integer value of sum `name`'s data point whose attributes include
/// all of `attrs`.
fn sum_value(req: &ExportMetricsServiceRequest, name: &str, attrs: &[(&str, &str)]) -> Option<i64> {
    let metrics = &req.resource_metrics.first()?.scope_metrics.first()?.metrics;
    let m = metrics.iter().find(|m| m.name == name)?;
    let Some(metric::Data::Sum(sum)) = &m.data else {
        return None;
    };
    assert!(sum.is_monotonic, "{name} is a counter");
    sum.data_points
        .iter()
        .find(|p| {
            attrs.iter().all(|(k, v)| {
                p.attributes.iter().any(|a| {
                    a.key == *k
                        && matches!(&a.value.as_ref().and_then(|v| v.value.clone()),
                            Some(any_value::Value::StringValue(s)) if s == v)
                })
            })
        })
        .and_then(|p| match p.value {
            Some(number_data_point::Value::AsInt(i)) => Some(i),
            _ => None,
        })
}

#[test]
fn pushes_exactly_what_a_scrape_shows() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let (port, rx) = collector();
    let ew = Edgewatch::start(&[
        "--probes",
        "connect",
        "--metrics.labels=comm",
        "--otlp.endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--otlp.interval-ms",
        "200",
    ]);
    let ns = Netns::new("otlp");
    let comm = format!("ewotlp{}", std::process::id() % 100_000);
    const K: i64 = 7;
    let c = comm.clone();
    ns.enter(move || {
        set_thread_comm(&c);
        for _ in 0..K {
            let e = TcpStream::connect((Ipv4Addr::LOCALHOST, 1)).expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        }
    });
    let attrs = [
        ("comm", comm.as_str()),
        ("result", "econnrefused"),
        ("family", "ipv4"),
    ];
    let req = poll(Duration::from_secs(20), || {
        while let Ok((path, body)) = rx.try_recv() {
            assert_eq!(path, "/v1/metrics");
            let req = ExportMetricsServiceRequest::decode(body.as_slice()).unwrap();
            if sum_value(&req, "edgewatch_connect_calls", &attrs) == Some(K) {
                return Some(req);
            }
        }
        None
    })
    .expect("an OTLP push with the workload's counts");
    let resource = req.resource_metrics[0].resource.as_ref().unwrap();
    assert!(resource.attributes.iter().any(|a| a.key == "service.name"));
    let scraped = ew.scrape();
    assert_eq!(
        scraped.count(
            "edgewatch_connect_calls_total",
            &[
                ("comm", &comm),
                ("result", "econnrefused"),
                ("family", "ipv4")
            ]
        ),
        K as u64
    );
    assert_eq!(
        sum_value(
            &req,
            "edgewatch_tcp_connects",
            &[("comm", &comm), ("outcome", "refused")]
        ),
        Some(K)
    );
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    let h = metrics
        .iter()
        .find(|m| m.name == "edgewatch_tcp_connect_duration_seconds")
        .unwrap();
    let Some(metric::Data::Histogram(h)) = &h.data else {
        panic!("histogram")
    };
    assert!(h.data_points.iter().any(|p| p.count == K as u64
        && p.bucket_counts.iter().sum::<u64>() == K as u64
        && p.explicit_bounds.len() + 1 == p.bucket_counts.len()));
    assert_eq!(scraped.count("edgewatch_export_errors_total", &[]), 0);
}

#[test]
fn a_collector_that_is_down_is_counted_not_fatal() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ew = Edgewatch::start(&[
        "--probes",
        "connect",
        "--otlp.endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--otlp.interval-ms",
        "100",
    ]);
    let m = poll(Duration::from_secs(10), || {
        let m = ew.scrape();
        (m.count(
            "edgewatch_export_errors_total",
            &[("exporter", "otlp"), ("reason", "connect")],
        ) >= 3)
            .then_some(m)
    })
    .expect("failed pushes counted");
    assert_eq!(
        m.count("edgewatch_probe_attached", &[("probe", "connect")]),
        1
    );
    let log = ew.log.lock().unwrap().join("\n");
    assert_eq!(
        log.matches("push failed (counted in edgewatch_export_errors_total")
            .count(),
        1,
        "logged once per minute, not per push"
    );
}

pub(crate) fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value.as_ref()?.value {
            Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
}

/// One span per TCP handshake, with the process, peer and outcome; failed
/// handshakes carry an error status.
#[test]
fn pushes_a_span_per_handshake() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let (port, rx) = collector();
    let _ew = Edgewatch::start(&[
        "--probes",
        "connect",
        "--otlp.endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--otlp.interval-ms",
        "200",
        "--otlp.traces",
    ]);
    let ns = Netns::new("otlpspan");
    let comm = format!("ewspan{}", std::process::id() % 100_000);
    const OK: usize = 4;
    const REFUSED: usize = 3;
    let c = comm.clone();
    ns.enter(move || {
        set_thread_comm(&c);
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        for _ in 0..OK {
            TcpStream::connect(l.local_addr().unwrap()).unwrap();
        }
        for _ in 0..REFUSED {
            let e = TcpStream::connect((Ipv4Addr::LOCALHOST, 1)).expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        }
    });
    let mut ours = Vec::new();
    poll(Duration::from_secs(20), || {
        while let Ok((path, body)) = rx.try_recv() {
            if path != "/v1/traces" {
                continue;
            }
            let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    ours.extend(ss.spans.into_iter().filter(|s| {
                        attr_str(&s.attributes, "process.command") == Some(comm.as_str())
                    }));
                }
            }
        }
        (ours.len() >= OK + REFUSED).then_some(())
    })
    .expect("spans for every handshake");
    assert_eq!(ours.len(), OK + REFUSED);
    let errors = ours
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.code == StatusCode::Error as i32)
        })
        .count();
    assert_eq!(errors, REFUSED);
    for s in &ours {
        assert_eq!(s.name, "tcp.connect");
        assert_eq!(s.trace_id.len(), 16);
        assert_eq!(s.span_id.len(), 8);
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        assert_eq!(
            attr_str(&s.attributes, "network.peer.address"),
            Some("127.0.0.1")
        );
    }
    let ids: std::collections::HashSet<_> = ours.iter().map(|s| s.span_id.clone()).collect();
    assert_eq!(ids.len(), ours.len(), "span ids are unique");
}
