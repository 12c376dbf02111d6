//! The Prometheus text format 0.0.4 for /metrics clients that do not ask
//! for OpenMetrics, written from prometheus-client's own
//! OpenMetrics encoding as it is written ([`Classic`]).
//!
//! prometheus-client writes OpenMetrics straight from the families; its
//! typed model (model.rs, which OTLP reads) builds an owned `Metric` with
//! label strings for every series first, which made the classic text three
//! times as slow as OpenMetrics with 10,000 series (BENCHMARKS.md). The two
//! text formats differ only in the places this pass rewrites, all fixed by
//! prometheus-client's encoder:
//! - a family's `# HELP` and `# TYPE` name carries the sample suffix the
//!   classic format puts there (`_total` for counters, `_info` for info
//!   metrics, which become gauges); `unknown` is `untyped`; help text is
//!   escaped;
//! - `# UNIT` and `# EOF` lines go; so does an empty label set (`{}`) and
//!   anything after a sample's value (exemplars, which edgewatch never sets);
//! - a value that is not an integer is written as [`model::write_value`]
//!   writes it (`7`, not `7.0`; `+Inf`, not `inf`).
//!
//! Sample names, label sets (escaping included) and integer values are
//! copied as they are. The output is the same, byte for byte, as the typed
//! model's writer ([`model::write_prometheus_text`]) for every value a
//! double holds exactly (tests below, and the golden expositions); a
//! counter past 2^53 keeps its exact integer here.

use super::model;
use crate::vocab::labels;

/// Output that prometheus-client's encoder does not produce; the scrape
/// answers 500 and logs it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unexpected OpenMetrics line {line:?}")]
pub struct Unexpected {
    pub line: String,
}

fn unexpected(line: &str) -> Unexpected {
    Unexpected {
        line: line.chars().take(120).collect(),
    }
}

/// How much OpenMetrics [`Classic`] holds before it passes the whole lines
/// in it: small enough to stay in the core's cache between being written
/// and being read.
const CHUNK: usize = 32 * 1024;

/// A writer that takes OpenMetrics as prometheus-client's encoder writes
/// it and appends the classic text to `out`, [`CHUNK`] by chunk: the
/// exposition is never held twice, nor read back from memory after the
/// whole of it was written (with 10,000 series a pass over a finished
/// 900 KB body took 0.7 ms of a 1.8 ms encode, more under load). Most
/// sample lines are the same in both formats: runs of them are copied
/// whole, and lines written under `labels::plain_samples` (the counter
/// families of vocab::series) go straight to `out` without being checked.
pub struct Classic<'a> {
    out: &'a mut String,
    /// OpenMetrics written and not yet passed.
    chunk: String,
    /// The HELP line waiting for its TYPE line (`name text`;
    /// prometheus-client writes them in that order, with nothing between).
    help: Option<String>,
    /// The first unexpected line; the writer refuses everything after it.
    error: Option<Unexpected>,
}

impl<'a> Classic<'a> {
    pub fn new(out: &'a mut String) -> Self {
        Self {
            out,
            chunk: String::with_capacity(CHUNK + CHUNK / 4),
            help: None,
            error: None,
        }
    }

    /// Ends the text: what is left is passed, a last line without a line
    /// feed gets one; the first unexpected line, if any, is the error.
    pub fn finish(mut self) -> Result<(), Unexpected> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.pass(&chunk)
    }

    /// Appends the classic text of the lines of `om`.
    fn pass(&mut self, om: &str) -> Result<(), Unexpected> {
        let out = &mut *self.out;
        // om[copied..start] is a run of lines that need no change.
        let mut copied = 0;
        let mut start = 0;
        // The next `#` or backslash at or after `start` (comment lines,
        // exemplars, escapes), found once for every line before it.
        let mut special = 0;
        while start < om.len() {
            let (line, next) = match memchr::memchr(b'\n', &om.as_bytes()[start..]) {
                Some(i) => (&om[start..start + i], start + i + 1),
                // No line feed: rewritten below, which adds one.
                None => (&om[start..], om.len()),
            };
            if special < start {
                special = memchr::memchr2(b'#', b'\\', &om.as_bytes()[start..])
                    .map_or(usize::MAX, |i| start + i);
            }
            let Some(comment) = line.strip_prefix("# ") else {
                if next > start + line.len() && special >= next && plain(line) {
                    start = next;
                    continue;
                }
                let s = Sample::parse(line).ok_or_else(|| unexpected(line))?;
                if !(s.unchanged() && next > start + line.len()) {
                    out.push_str(&om[copied..start]);
                    s.write(out)?;
                    copied = next;
                }
                start = next;
                continue;
            };
            out.push_str(&om[copied..start]);
            copied = next;
            start = next;
            if let Some(rest) = comment.strip_prefix("HELP ") {
                self.help = Some(rest.to_string());
            } else if let Some(rest) = comment.strip_prefix("TYPE ") {
                let (name, ty) = rest.split_once(' ').ok_or_else(|| unexpected(line))?;
                let (suffix, ty) = match ty {
                    "counter" => ("_total", "counter"),
                    "info" => ("_info", "gauge"),
                    "gauge" => ("", "gauge"),
                    "histogram" => ("", "histogram"),
                    "unknown" => ("", "untyped"),
                    _ => return Err(unexpected(line)),
                };
                let help = self.help.take().unwrap_or_default();
                let text = match help.split_once(' ') {
                    Some((n, text)) if n == name => text,
                    _ => return Err(unexpected(line)),
                };
                out.push_str("# HELP ");
                out.push_str(name);
                out.push_str(suffix);
                out.push(' ');
                // Escaped as the model's writer escapes help
                // (prometheus-client writes it as given; a line feed would
                // have ended the line).
                model::escape(text, false, out);
                out.push_str("\n# TYPE ");
                out.push_str(name);
                out.push_str(suffix);
                out.push(' ');
                out.push_str(ty);
                out.push('\n');
            } else if !(comment.starts_with("UNIT ") || comment == "EOF") {
                return Err(unexpected(line));
            }
        }
        out.push_str(&om[copied..]);
        Ok(())
    }
}

impl std::fmt::Write for Classic<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.error.is_some() {
            return Err(std::fmt::Error);
        }
        // Lines the classic format writes as they are (vocab::series), after
        // whole lines: the lines before them are passed, these copied.
        if labels::plain_samples_on() && (self.chunk.is_empty() || self.chunk.ends_with('\n')) {
            if !self.chunk.is_empty() {
                self.pass_lines(self.chunk.len())?;
            }
            self.out.push_str(s);
            return Ok(());
        }
        self.chunk.push_str(s);
        if self.chunk.len() < CHUNK {
            return Ok(());
        }
        let Some(end) = memchr::memrchr(b'\n', self.chunk.as_bytes()) else {
            return Ok(());
        };
        self.pass_lines(end + 1)
    }
}

impl Classic<'_> {
    /// Passes the chunk's first `end` bytes (whole lines) and keeps the
    /// rest; the first unexpected line is kept for [`Classic::finish`].
    fn pass_lines(&mut self, end: usize) -> std::fmt::Result {
        let mut chunk = std::mem::take(&mut self.chunk);
        let passed = self.pass(&chunk[..end]);
        chunk.drain(..end);
        self.chunk = chunk;
        passed.map_err(|e| {
            self.error = Some(e);
            std::fmt::Error
        })
    }
}

/// Whether a sample line with no `#` (an exemplar starts with ` # `) and
/// no backslash (an escape) is the same in the classic format, told
/// without walking its label set quote by quote as [`Sample::parse`] does
/// (most lines are): an integer after the last space (prometheus-client
/// writes no timestamps), before it a bare name or a name and a label set
/// ending in `"}` with an even number of quotes. Any other line is parsed,
/// so a line the parser refuses is never copied.
fn plain(line: &str) -> bool {
    let b = line.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    let mut end = b.len() - digits;
    if digits == 0 {
        return false;
    }
    if end > 0 && b[end - 1] == b'-' {
        end -= 1;
    }
    let Some(head) = b[..end].strip_suffix(b" ") else {
        return false;
    };
    if let Some(set) = head.strip_suffix(b"\"}") {
        let Some(brace) = memchr::memchr(b'{', set) else {
            return false;
        };
        brace > 0
            && !set[..brace].contains(&b' ')
            && set.iter().filter(|&&c| c == b'"').count() % 2 == 1
    } else {
        !head.is_empty() && memchr::memchr2(b' ', b'{', head).is_none()
    }
}

/// A sample line's parts.
struct Sample<'a> {
    name: &'a str,
    /// `{...}`, or empty.
    labels: &'a str,
    value: &'a str,
    /// An exemplar after the value.
    exemplar: Option<&'a str>,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let name_end = memchr::memchr2(b'{', b' ', line.as_bytes())?;
        let (name, rest) = line.split_at(name_end);
        if name.is_empty() {
            return None;
        }
        let (labels, rest) = if rest.starts_with('{') {
            rest.split_at(label_set_end(rest)?)
        } else {
            ("", rest)
        };
        let rest = rest.strip_prefix(' ')?;
        let (value, exemplar) = match rest.split_once(' ') {
            Some((value, exemplar)) => (value, Some(exemplar)),
            None => (rest, None),
        };
        if value.is_empty() {
            return None;
        }
        Some(Self {
            name,
            labels,
            value,
            exemplar,
        })
    }

    fn integer(&self) -> bool {
        let digits = self.value.strip_prefix('-').unwrap_or(self.value);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    }

    /// The same line in the classic format.
    fn unchanged(&self) -> bool {
        self.labels != "{}" && self.exemplar.is_none() && self.integer()
    }

    fn write(&self, out: &mut String) -> Result<(), Unexpected> {
        out.push_str(self.name);
        if self.labels != "{}" {
            out.push_str(self.labels);
        }
        out.push(' ');
        if self.integer() {
            out.push_str(self.value);
        } else {
            let v = self.value.parse().map_err(|_| unexpected(self.value))?;
            model::write_value(v, out);
        }
        out.push('\n');
        Ok(())
    }
}

/// The length of the label set at the start of `s` (`{...}`), skipping
/// quoted values, whose escapes (`\"`, `\\`) and text (`}`, `,`, spaces)
/// are not structure.
fn label_set_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    loop {
        i += memchr::memchr2(b'}', b'"', b.get(i..)?)?;
        if b[i] == b'}' {
            return Some(i + 1);
        }
        // A value: to the next quote that is not escaped.
        i += 1;
        loop {
            i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
            if b[i] == b'\\' {
                i += 2;
            } else {
                break;
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{
            counter::{ConstCounter, Counter},
            family::Family,
            gauge::Gauge,
            histogram::Histogram,
            info::Info,
        },
        registry::{Registry, Unit},
    };

    use super::*;

    /// The classic text of the OpenMetrics exposition `om`, written in one
    /// piece.
    fn from_openmetrics(om: &str, out: &mut String) -> Result<(), Unexpected> {
        let mut classic = Classic::new(out);
        // An unexpected line is kept for finish().
        let _ = std::fmt::Write::write_str(&mut classic, om);
        classic.finish()
    }

    fn openmetrics(r: &Registry) -> String {
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, r).unwrap();
        om
    }

    /// This pass and the typed model's writer, on one registry. The pass
    /// also gets the exposition as prometheus-client writes it (a few bytes
    /// at a time), and in pieces cut at every length from 1 to 7 bytes:
    /// the same text each time.
    fn both(r: &Registry) -> (String, String) {
        let mut text = String::new();
        from_openmetrics(&openmetrics(r), &mut text).unwrap();
        let mut streamed = String::new();
        let mut classic = Classic::new(&mut streamed);
        prometheus_client::encoding::text::encode(&mut classic, r).unwrap();
        classic.finish().unwrap();
        assert_eq!(streamed, text);
        // As /metrics encodes: rendered label sets whole, the counter
        // families' samples copied as they come.
        let mut real = String::new();
        let mut classic = Classic::new(&mut real);
        labels::text_encoding(|| prometheus_client::encoding::text::encode(&mut classic, r))
            .unwrap();
        classic.finish().unwrap();
        assert_eq!(real, text);
        let om = openmetrics(r);
        for piece in 1..8 {
            let mut pieces = String::new();
            let mut classic = Classic::new(&mut pieces);
            let mut rest = om.as_str();
            while !rest.is_empty() {
                let mut cut = piece.min(rest.len());
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                std::fmt::Write::write_str(&mut classic, &rest[..cut]).unwrap();
                rest = &rest[cut..];
            }
            classic.finish().unwrap();
            assert_eq!(pieces, text, "pieces of {piece}");
        }
        let mut reference = String::new();
        model::write_prometheus_text(&model::snapshot(r).unwrap(), &mut reference);
        (text, reference)
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Two {
        a: String,
        b: String,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct NoLabels {}

    #[test]
    fn every_kind_of_family() {
        let mut r = Registry::default();
        let c = Counter::<u64>::default();
        c.inc_by(7);
        r.register("plain", "A counter \\ with a backslash", c);
        let f = Family::<Two, Counter>::default();
        f.get_or_create(&Two {
            a: "x\"y".into(),
            b: "back\\slash\nnewline } , =\" # {".into(),
        })
        .inc();
        f.get_or_create(&Two {
            a: String::new(),
            b: "ünïcode".into(),
        })
        .inc_by(3);
        r.register("fam", "Family counter", f);
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(0.25);
        r.register("ratio", "Fractional gauge", g);
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(12.0);
        r.register("whole", "Integral f64 gauge", g);
        let g = Gauge::<i64>::default();
        g.set(-3);
        r.register_with_unit("temp", "Signed gauge with a unit", Unit::Celsius, g);
        let h = Histogram::new([0.00001, 0.5, 1.0, 2.5]);
        for v in [0.000003, 0.3, 0.7, 3.0, 1e9] {
            h.observe(v);
        }
        r.register_with_unit("lat", "Histogram", Unit::Seconds, h);
        let hf = Family::<Two, Histogram>::new_with_constructor(|| Histogram::new([1.0, 10.0]));
        hf.get_or_create(&Two {
            a: "p".into(),
            b: "q".into(),
        })
        .observe(4.0);
        r.register("hfam", "Histogram family", hf);
        r.register(
            "build",
            "Info",
            Info::new(vec![("version".to_string(), "1.2.3".to_string())]),
        );
        let empty = Family::<NoLabels, Counter>::default();
        empty.get_or_create(&NoLabels {}).inc();
        r.register("empty", "Empty label set", empty);
        r.register("f64c", "Float counter", ConstCounter::new(2.5f64));
        let sub = r.sub_registry_with_prefix("sub");
        sub.sub_registry_with_label(("const".into(), "c\"v".into()))
            .register("inner", "Const labels", Counter::<u64>::default());
        let (text, reference) = both(&r);
        assert_eq!(text, reference);
        // Spot checks of the rewrites.
        assert!(
            text.contains("# HELP plain_total A counter \\\\ with a backslash.\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE build_info gauge\nbuild_info{version=\"1.2.3\"} 1\n"));
        assert!(text.contains("whole 12\n"), "{text}");
        assert!(text.contains("empty_total 1\n"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }

    /// Lines the quick check must leave to the parser: an exemplar after
    /// an integer value (edgewatch sets none, but the pass drops them), and
    /// an empty label set.
    #[test]
    fn exemplars_and_empty_label_sets_are_rewritten() {
        let mut r = Registry::default();
        let c = prometheus_client::metrics::exemplar::CounterWithExemplar::<Two>::default();
        c.inc_by(
            5,
            Some(Two {
                a: "trace".into(),
                b: "7".into(),
            }),
            None,
        );
        r.register("ex", "With an exemplar", c);
        let empty = Family::<NoLabels, Counter>::default();
        empty.get_or_create(&NoLabels {}).inc_by(2);
        r.register("empty", "Empty label set", empty);
        let om = openmetrics(&r);
        assert!(om.contains("ex_total 5 # {a=\"trace\",b=\"7\"} 5"), "{om}");
        assert!(om.contains("empty_total{} 2\n"), "{om}");
        let mut text = String::new();
        from_openmetrics(&om, &mut text).unwrap();
        assert!(text.contains("\nex_total 5\n"), "{text}");
        assert!(text.contains("\nempty_total 2\n"), "{text}");
        assert!(!text.contains("trace") && !text.contains("{}"), "{text}");
    }

    /// Random label values (every character the escapes care about, and
    /// structure characters) and values (integral, fractional, tiny, huge,
    /// infinite, NaN), many registries: the same bytes as the model's
    /// writer every time.
    #[test]
    fn random_registries_match_the_model_writer() {
        const PIECES: &[&str] = &[
            "a", "Z", "0", " ", "\"", "\\", "\n", "}", "{", ",", "=", "#", "é", "🙂", "le",
        ];
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            1e-5,
            1.5e300,
            9007199254740992.0,
            123456.789,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::MIN_POSITIVE,
        ];
        for seed in 0..300 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let word = |rng: &mut fastrand::Rng| -> String {
                (0..rng.usize(0..6))
                    .map(|_| PIECES[rng.usize(..PIECES.len())])
                    .collect()
            };
            let mut r = Registry::default();
            let counters = Family::<Two, Counter>::default();
            let gauges = Family::<Two, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            let hists =
                Family::<Two, Histogram>::new_with_constructor(|| Histogram::new([0.1, 1.0, 1e3]));
            for _ in 0..rng.usize(0..20) {
                let labels = Two {
                    a: word(&mut rng),
                    b: word(&mut rng),
                };
                counters.get_or_create(&labels).inc_by(rng.u64(..1 << 40));
                gauges
                    .get_or_create(&labels)
                    .set(values[rng.usize(..values.len())] * rng.f64());
                gauges
                    .get_or_create(&Two {
                        a: labels.b.clone(),
                        b: labels.a.clone(),
                    })
                    .set(values[rng.usize(..values.len())]);
                hists.get_or_create(&labels).observe(rng.f64() * 2.0);
            }
            r.register("c", "counters", counters);
            r.register("g", "gauges", gauges);
            r.register("h", "histograms", hists);
            let (text, reference) = both(&r);
            assert_eq!(text, reference, "seed {seed}");
        }
    }

    /// Expositions of many chunks: HELP and TYPE lines, escaped label
    /// values and rewritten values fall on every side of a chunk's end.
    /// Labels `f-i` and a value of characters that escapes and structure
    /// care about.
    fn awkward(f: usize, i: usize, rng: &mut fastrand::Rng) -> Two {
        Two {
            a: format!("{f}-{i}"),
            b: ["x", "q\"uote", "back\\slash # {}", "line\nfeed", "ü"][rng.usize(..5)]
                .repeat(rng.usize(1..6)),
        }
    }

    #[test]
    fn expositions_larger_than_a_chunk() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut r = Registry::default();
        for f in 0..400 {
            let counters = Family::<Two, Counter>::default();
            let gauges = Family::<Two, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            for i in 0..rng.usize(0..12) {
                let labels = awkward(f, i, &mut rng);
                counters.get_or_create(&labels).inc_by(rng.u64(..1 << 40));
                gauges.get_or_create(&labels).set(rng.f64() * 1e3);
            }
            r.register(format!("c{f}"), format!("Counters {f} \\ help"), counters);
            r.register(format!("g{f}"), format!("Gauges {f}"), gauges);
        }
        let om = openmetrics(&r);
        assert!(om.len() > 4 * CHUNK, "{}", om.len());
        let (text, reference) = both(&r);
        assert_eq!(text, reference);
    }

    /// The counter families of vocab::series, whose samples the writer
    /// copies as they come, between families it checks line by line, over
    /// many chunks; one with an empty label set (`{}`, which goes).
    #[test]
    fn series_counters_between_other_families() {
        use crate::vocab::series::Counters;
        let mut rng = fastrand::Rng::with_seed(11);
        let mut r = Registry::default();
        for f in 0..40 {
            let counters = Counters::<Two>::default();
            let gauges = Family::<Two, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            for i in 0..rng.usize(0..200) {
                let labels = awkward(f, i, &mut rng);
                counters.series(labels.clone()).inc_by(rng.u64(..1 << 40));
                gauges.get_or_create(&labels).set(rng.f64() * 1e3);
            }
            r.register(format!("c{f}"), format!("Counters {f} \\ help"), counters);
            r.register(format!("g{f}"), format!("Gauges {f}"), gauges);
        }
        let empty = Counters::<NoLabels>::default();
        empty.series(NoLabels {}).inc_by(4);
        r.register("empty", "Empty label set", empty);
        let om = labels::text_encoding(|| openmetrics(&r));
        assert!(om.len() > 4 * CHUNK, "{}", om.len());
        assert!(om.contains("\nempty_total{} 4\n"), "{om}");
        let (text, reference) = both(&r);
        assert_eq!(text, reference);
        assert!(text.contains("\nempty_total 4\n"), "{text}");
    }

    #[test]
    fn unexpected_lines_are_errors_not_panics() {
        for om in [
            "# TYPE x counter\n",
            "# HELP x a\n# TYPE y counter\n",
            "# HELP x a\n# TYPE x stateset\n",
            "# COMMENT\n",
            "{a=\"b\"} 1\n",
            "x{a=\"b} 1\n",
            "x{a=\"b\\\"} 1\n",
            "x 1.2.3\n",
            "x\n",
            "x{a=\"b\"}\n",
        ] {
            let mut out = String::new();
            assert!(from_openmetrics(om, &mut out).is_err(), "{om:?}");
        }
    }
}
