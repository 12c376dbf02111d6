//! The hot-update doctor end to end, as root: writes to a map that no
//! loaded program uses are counted exactly, the map replaced by a newer
//! one of the same name is named as a stale twin, distinct writer
//! processes are counted and carried on the spans with hashes of what
//! they wrote; `edgewatch bench maps` runs on this kernel.
//!
//! The documented window (vocab/refs.rs): a change (load, unload) is seen
//! from the write processed after it, and an unload (no bpf() call) only at
//! the next re-read, within a second. The tests wait each change out: they
//! let edgewatch process the writes made before a change (scrape until
//! they are counted) before making it, and after an unload they poll until
//! edgewatch's `edgewatch_bpf_map_programs` shows it before writing again.

use std::{
    collections::HashSet,
    ffi::CString,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    process::Command,
    sync::mpsc,
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{KeyValue, any_value},
};
use prost::Message;

use crate::common::{
    Edgewatch, Metrics, binary,
    bpf::{BPF_ANY, HASH, Map, close, create, load_prog_using, map_id, update},
    poll, privileged, serial, set_thread_comm,
};

fn key(i: u32) -> [u8; 4] {
    i.to_ne_bytes()
}

/// Writes `n` updates (keys 0..n) to `m`, each of which must succeed.
fn write(m: &Map, n: u32) {
    for i in 0..n {
        assert_eq!(update(m, &key(i), &[7u8; 4], BPF_ANY), 0, "{}", m.name);
    }
}

fn by_id(id: &str) -> [(&'static str, &str); 1] {
    [("map_id", id)]
}

const UPDATES: &str = "edgewatch_bpf_map_updates_total";
const UNREFERENCED: &str = "edgewatch_bpf_map_unreferenced_writes_total";
const PROGRAMS: &str = "edgewatch_bpf_map_programs";

/// Scrapes until `want` holds (the writes made so far are processed).
fn scrape_until(ew: &Edgewatch, what: &str, want: impl Fn(&Metrics) -> bool) -> Metrics {
    poll(Duration::from_secs(10), || Some(ew.scrape()).filter(&want)).unwrap_or_else(|| {
        let m = ew.scrape();
        panic!("timed out waiting for {what}:\n{}", m.text)
    })
}

/// Map A, used by program P1; a newer A2 with the same name, used by P2;
/// P1 dropped. Exact counts of referenced and unreferenced writes before
/// any program, while P1 lives, and after it is gone; A is then A2's stale
/// twin.
#[test]
fn writes_to_a_map_no_program_uses_and_its_stale_twin() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let ew = Edgewatch::start(&["--probes", "map"]);
    let tag = std::process::id() % 100_000;
    let comm = format!("ewdoc{tag}");
    set_thread_comm(&comm);
    let name = format!("ewtwin{tag}");

    let a = create(HASH, &name, 4, 4, 64, 0);
    let a_id = map_id(a.fd).to_string();
    const U0: u32 = 3; // before any program uses A
    const R1: u32 = 5; // while P1 uses A
    const R2: u32 = 4; // to A2, used by P2
    const U1: u32 = 6; // to A after P1 is gone
    const R3: u32 = 2; // to A2 after P1 is gone

    write(&a, U0);
    let updates = |m: &Metrics, id: &str| m.count(UPDATES, &[("map_id", id), ("result", "ok")]);
    scrape_until(&ew, "the writes before any program", |m| {
        updates(m, &a_id) == u64::from(U0)
    });

    // A program that uses A: seen from the next write on (its BPF_PROG_LOAD
    // goes through bpf(), and edgewatch re-reads before judging later writes).
    let p1 = load_prog_using(&format!("ewdocp1{tag}"), a.fd);
    write(&a, R1);
    let m = scrape_until(&ew, "the writes while P1 lives", |m| {
        updates(m, &a_id) == u64::from(U0 + R1)
    });
    assert_eq!(
        m.count(UNREFERENCED, &by_id(&a_id)),
        u64::from(U0),
        "{}",
        m.text
    );
    assert!(
        m.has(
            UNREFERENCED,
            &[
                ("map_id", &a_id),
                ("map_name", &name),
                ("map_type", "hash"),
                ("comm", &comm)
            ]
        ),
        "{}",
        m.text
    );
    assert_eq!(m.count(PROGRAMS, &by_id(&a_id)), 1);

    // The reload: a newer map with the same name and a program on it.
    let a2 = create(HASH, &name, 4, 4, 64, 0);
    let a2_id = map_id(a2.fd).to_string();
    let p2 = load_prog_using(&format!("ewdocp2{tag}"), a2.fd);
    write(&a2, R2);
    scrape_until(&ew, "the writes to A2", |m| {
        updates(m, &a2_id) == u64::from(R2)
    });

    // The old program goes away; no bpf() call says so. Wait until
    // edgewatch has re-read (at most a second), then write again.
    close(p1);
    let m = scrape_until(&ew, "P1's unload to be seen", |m| {
        m.has(PROGRAMS, &[("map_id", &a_id)]) && m.count(PROGRAMS, &by_id(&a_id)) == 0
    });
    assert_eq!(m.count(PROGRAMS, &by_id(&a2_id)), 1);
    assert_eq!(
        m.count(
            "edgewatch_bpf_map_stale_twin",
            &[
                ("map_id", &a_id),
                ("map_name", &name),
                ("successor_id", &a2_id)
            ]
        ),
        1,
        "{}",
        m.text
    );
    let twins = m
        .samples
        .iter()
        .filter(|(n, l, _)| n == "edgewatch_bpf_map_stale_twin" && l.get("map_name") == Some(&name))
        .count();
    assert_eq!(twins, 1, "only A is A2's stale twin");

    write(&a, U1);
    write(&a2, R3);
    let m = scrape_until(&ew, "the writes after the unload", |m| {
        updates(m, &a_id) == u64::from(U0 + R1 + U1) && updates(m, &a2_id) == u64::from(R2 + R3)
    });
    assert_eq!(
        m.count(UNREFERENCED, &by_id(&a_id)),
        u64::from(U0 + U1),
        "{}",
        m.text
    );
    assert_eq!(m.count(UNREFERENCED, &by_id(&a2_id)), 0);
    assert!(!m.has(UNREFERENCED, &by_id(&a2_id)));
    close(p2);
    crate::common::promtool_check(&m.text);
}

/// FNV-1a 64 over `bytes`: the hash edgewatch puts on map-call spans.
fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Forks a process named `comm` that writes `value` under key 1 of `m`
/// `n` times, then exits. The child only makes system calls (no
/// allocation after fork in a threaded process).
fn writer(m: &Map, comm: &str, value: [u8; 8], n: u32) -> libc::pid_t {
    let name = CString::new(comm).unwrap();
    let k = key(1);
    // SAFETY: fork; the child runs only async-signal-safe system calls
    // (prctl, bpf, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string; _exit never returns.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
            for _ in 0..n {
                if update(m, &k, &value, BPF_ANY) != 0 {
                    libc::_exit(1);
                }
            }
            libc::_exit(0);
        }
    }
    pid
}

fn wait(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "writer {pid} failed: {status:#x}"
    );
}

/// Two processes write the same key of one map: the writers gauge says 2,
/// and every update's span carries its writer and the hashes of the key
/// (the same for both) and of the value (each writer's own).
#[test]
fn two_writer_processes_are_counted_and_on_the_spans() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let (port, rx) = collector();
    let ew = Edgewatch::start(&[
        "--probes",
        "map",
        "--otlp.endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--otlp.interval-ms",
        "200",
        "--otlp.traces",
        "--otlp.map-key-hashes",
    ]);
    let tag = std::process::id() % 100_000;
    let name = format!("ewwrit{tag}");
    let m = create(HASH, &name, 4, 8, 16, 0);
    let id = map_id(m.fd).to_string();
    let (comm1, comm2) = (format!("ewwa{tag}"), format!("ewwb{tag}"));
    let (v1, v2) = ([1u8; 8], [2u8; 8]);
    const N1: u32 = 3;
    const N2: u32 = 5;
    let pid1 = writer(&m, &comm1, v1, N1);
    wait(pid1);
    let pid2 = writer(&m, &comm2, v2, N2);
    wait(pid2);

    let metrics = scrape_until(&ew, "both writers' updates", |x| {
        x.count(UPDATES, &[("map_id", &id), ("result", "ok")]) == u64::from(N1 + N2)
    });
    assert_eq!(
        metrics.count(
            "edgewatch_bpf_map_writers",
            &[("map_id", &id), ("map_name", &name)]
        ),
        2,
        "{}",
        metrics.text
    );

    let mut spans = Vec::new();
    poll(Duration::from_secs(20), || {
        while let Ok((path, body)) = rx.try_recv() {
            if path != "/v1/traces" {
                continue;
            }
            let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans.into_iter().filter(|s| {
                        attr_str(&s.attributes, "edgewatch.bpf.map.id").as_deref()
                            == Some(id.as_str())
                    }));
                }
            }
        }
        (spans.len() >= (N1 + N2) as usize).then_some(())
    })
    .expect("a span for every update");
    assert_eq!(spans.len(), (N1 + N2) as usize);
    let pids: HashSet<String> = spans
        .iter()
        .filter_map(|s| attr_str(&s.attributes, "process.pid"))
        .collect();
    assert_eq!(pids, HashSet::from([pid1.to_string(), pid2.to_string()]));
    let key_hash = fnv1a64(&key(1));
    for (pid, comm, value, n) in [(pid1, &comm1, v1, N1), (pid2, &comm2, v2, N2)] {
        let mine: Vec<_> = spans
            .iter()
            .filter(|s| attr_str(&s.attributes, "process.pid") == Some(pid.to_string()))
            .collect();
        assert_eq!(mine.len(), n as usize);
        for s in mine {
            assert_eq!(s.name, "bpf.map.update");
            let a = &s.attributes;
            assert_eq!(
                attr_str(a, "process.command").as_deref(),
                Some(comm.as_str())
            );
            assert_eq!(
                attr_str(a, "edgewatch.bpf.map.key_hash").as_deref(),
                Some(key_hash.as_str())
            );
            assert_eq!(
                attr_str(a, "edgewatch.bpf.map.value_hash").as_deref(),
                Some(fnv1a64(&value).as_str())
            );
        }
    }
}

/// `edgewatch bench maps` runs here and prints every map type, in text and
/// JSON; the shape is checked, not the timings.
#[test]
fn bench_maps_prints_every_type() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let types = [
        "array",
        "percpu_array",
        "hash",
        "percpu_hash",
        "lru_hash",
        "lru_hash BPF_F_NO_COMMON_LRU",
        "lpm_trie 1k prefixes",
        "lpm_trie 100k prefixes",
    ];
    let run = |format: &str| {
        let out = Command::new(binary())
            .args(["bench", "maps", "--rounds", "1", "--runs", "50"])
            .args(["--entries", "1000", "--format", format])
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };

    let text = run("text");
    // The table: a header line starting with "rank", then one row a type.
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("rank"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), types.len(), "{text}");
    let mut seen = Vec::new();
    let mut last = f64::MIN;
    for (i, row) in rows.iter().enumerate() {
        // rank, map (may contain spaces), entries, lookup, update, seeds rank
        let cells: Vec<&str> = row.split_whitespace().collect();
        let n = cells.len();
        assert_eq!(cells[0], (i + 1).to_string(), "{row}");
        let map = cells[1..n - 4].join(" ");
        let lookup: f64 = cells[n - 3].parse().unwrap();
        let update: f64 = cells[n - 2].parse().unwrap();
        let seeds: usize = cells[n - 1].parse().unwrap();
        assert!(lookup >= 0.0 && update >= 0.0, "{row}");
        assert!(lookup >= last, "ordered by lookup cost: {text}");
        last = lookup;
        let want = match map.split(' ').next().unwrap() {
            "array" => 1,
            "percpu_array" => 2,
            "hash" => 3,
            "percpu_hash" => 4,
            "lru_hash" => 5,
            "lpm_trie" => 6,
            other => panic!("unknown type {other}"),
        };
        assert_eq!(seeds, want, "{row}");
        seen.push(map);
    }
    let mut want: Vec<String> = types.iter().map(|s| s.to_string()).collect();
    want.sort();
    seen.sort();
    assert_eq!(seen, want);
    assert!(
        text.contains(
            "SEEDS.md, lookups fastest first: array > percpu_array > hash > percpu_hash > lru_hash > lpm_trie"
        ),
        "{text}"
    );
    assert!(text.contains("measured here:"), "{text}");

    let json: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), types.len());
    let names: HashSet<&str> = rows.iter().map(|r| r["map"].as_str().unwrap()).collect();
    assert_eq!(names, types.iter().copied().collect());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["rank"], i + 1);
        assert!(r["lookup_ns"].as_f64().unwrap() >= 0.0);
        assert!(r["update_ns"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(
        json["measured_order"].as_array().unwrap().len(),
        types.len()
    );
    assert_eq!(json["claims"].as_array().unwrap().len(), 8);
    assert_eq!(json["ops_per_run"], 64);
}

/// Accepts OTLP/HTTP posts and forwards each decoded request.
fn collector() -> (u16, mpsc::Receiver<(String, Vec<u8>)>) {
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

/// A span attribute as text, whether the exporter sent it as a string or
/// an integer.
fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value.as_ref()?.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            Some(any_value::Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
}
