//! A reader for the OpenMetrics text edgewatch itself encodes, so the OTLP
//! exporter pushes exactly what a scrape shows, collectors included,
//! without a second metrics model.

/// A metric family's type, as `# TYPE` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Info,
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's own name (`x_total`, `x_bucket`, ...).
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// The value as written (integers stay integers).
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    pub name: String,
    pub kind: Kind,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// Parses `name{a="b",c="d"} value`.
fn parse_sample(line: &str) -> Option<Sample> {
    let (series, rest) = match line.find('{') {
        Some(open) => {
            let mut labels = Vec::new();
            let bytes = line.as_bytes();
            let mut i = open + 1;
            loop {
                if bytes.get(i) == Some(&b'}') {
                    i += 1;
                    break;
                }
                let eq = line[i..].find("=\"")? + i;
                let key = line[i..eq].trim_start_matches(',').to_string();
                let mut value = String::new();
                let mut j = eq + 2;
                loop {
                    match *bytes.get(j)? {
                        b'\\' => {
                            match *bytes.get(j + 1)? {
                                b'n' => value.push('\n'),
                                c => value.push(c as char),
                            }
                            j += 2;
                        }
                        b'"' => break,
                        _ => {
                            let ch = line[j..].chars().next()?;
                            value.push(ch);
                            j += ch.len_utf8();
                        }
                    }
                }
                labels.push((key, value));
                i = j + 1;
                if bytes.get(i) == Some(&b',') {
                    i += 1;
                }
            }
            ((line[..open].to_string(), labels), &line[i..])
        }
        None => {
            let (n, r) = line.split_once(' ')?;
            ((n.to_string(), Vec::new()), r)
        }
    };
    let value = rest.trim().split(' ').next()?.to_string();
    Some(Sample {
        name: series.0,
        labels: series.1,
        value,
    })
}

/// Parses an OpenMetrics exposition into families, in order.
pub fn parse(text: &str) -> Vec<MetricFamily> {
    let mut out: Vec<MetricFamily> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push(MetricFamily {
                name: name.to_string(),
                kind: Kind::Unknown,
                help: help.to_string(),
                samples: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = match ty {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                "info" => Kind::Info,
                _ => Kind::Unknown,
            };
            match out.last_mut() {
                Some(f) if f.name == name => f.kind = kind,
                _ => out.push(MetricFamily {
                    name: name.to_string(),
                    kind,
                    help: String::new(),
                    samples: Vec::new(),
                }),
            }
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else if let (Some(sample), Some(f)) = (parse_sample(line), out.last_mut()) {
            f.samples.push(sample);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_families_and_samples() {
        let text = "# HELP a_x Things.\n# TYPE a_x counter\na_x_total{k=\"v\",q=\"a\\\"b,c\"} 3\n\
                    # HELP g Level.\n# TYPE g gauge\ng 0.5\n# EOF\n";
        let f = parse(text);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].kind, Kind::Counter);
        assert_eq!(f[0].help, "Things.");
        assert_eq!(
            f[0].samples[0].labels,
            vec![("k".into(), "v".into()), ("q".into(), "a\"b,c".into())]
        );
        assert_eq!(f[0].samples[0].value, "3");
        assert_eq!(f[1].samples[0].name, "g");
        assert_eq!(f[1].samples[0].value, "0.5");
    }
}
