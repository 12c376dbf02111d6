//! Validated OTLP settings, one [`Target`] per signal: what `config`
//! resolves from flags, the config file and the `OTEL_*` environment, and
//! what the exporter runs with. Secrets never reach a log: header values
//! print as `<redacted>`, and URLs are stored without their userinfo (which
//! becomes a basic-auth header) and printed through [`redact_url`].

use std::{fmt, path::PathBuf, time::Duration};

use axum::http::{HeaderName, HeaderValue, Uri};

use crate::vocab::spans::SpanLimits;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (the collector's port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
}

impl Protocol {
    pub const NAMES: &[&str] = &["grpc", "http/protobuf"];

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// What is pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Traces,
}

impl Signal {
    /// The label value and the name in `OTEL_EXPORTER_OTLP_<SIGNAL>_*`
    /// (upper-cased).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Traces => "traces",
        }
    }

    /// The path OTLP/HTTP appends to a base endpoint.
    pub fn http_path(self) -> &'static str {
        match self {
            Self::Metrics => "v1/metrics",
            Self::Traces => "v1/traces",
        }
    }
}

/// A header sent with every request; its value never prints.
#[derive(Clone, PartialEq)]
pub struct Header {
    pub name: HeaderName,
    pub value: HeaderValue,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=<redacted>", self.name)
    }
}

/// TLS for https endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tls {
    /// PEM CA certificates that replace the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for mTLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (for tests and emergencies).
    pub insecure_skip_verify: bool,
}

/// Where and how one signal is pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub signal: Signal,
    pub protocol: Protocol,
    /// gRPC: the collector's address (`http://host:4317`); HTTP: the full
    /// URL requests are posted to. Without userinfo.
    pub uri: Uri,
    /// Sent on every request, in order.
    pub headers: Vec<Header>,
    pub gzip: bool,
    /// Bounds each request.
    pub timeout: Duration,
    /// Used when `uri` is https.
    pub tls: Tls,
}

impl Target {
    pub fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }
}

/// The validated `otlp` settings: on when at least one signal has a target.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    pub metrics: Option<Target>,
    pub traces: Option<Target>,
    /// Push period.
    pub interval: Duration,
    /// Span sampling, rate limit and queue bound.
    pub spans: SpanLimits,
    /// Resource attributes besides `service.version` and `host.name`
    /// (`service.name` first).
    pub resource: Vec<(String, String)>,
}

/// A URL as it may be logged: the userinfo (`user:password@`) replaced by
/// `<redacted>@`. Works on any string, URL or not.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}<redacted>@{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_string(),
    }
}

impl fmt::Display for Target {
    /// One line, secrets redacted: what `--config.check` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} compression={} timeout={}ms",
            self.protocol.as_str(),
            redact_url(&self.uri.to_string()),
            if self.gzip { "gzip" } else { "none" },
            self.timeout.as_millis()
        )?;
        let headers: Vec<String> = self.headers.iter().map(|h| format!("{h:?}")).collect();
        write!(f, " headers=[{}]", headers.join(","))?;
        if self.is_https() {
            let t = &self.tls;
            let path = |p: &Option<PathBuf>| match p {
                Some(p) => p.display().to_string(),
                None => "-".into(),
            };
            write!(
                f,
                " tls(ca_file={}, cert_file={}, key_file={}, insecure_skip_verify={})",
                t.ca_file
                    .as_ref()
                    .map_or("system roots".into(), |p| p.display().to_string()),
                path(&t.cert_file),
                path(&t.key_file),
                t.insecure_skip_verify
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for OtlpSettings {
    /// The effective OTLP settings, one line each, secrets redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (signal, target) in [("metrics", &self.metrics), ("traces", &self.traces)] {
            match target {
                Some(t) => writeln!(f, "otlp {signal}: {t}")?,
                None => writeln!(f, "otlp {signal}: off")?,
            }
        }
        writeln!(f, "otlp interval: {}ms", self.interval.as_millis())?;
        if self.traces.is_some() {
            let s = &self.spans;
            writeln!(
                f,
                "otlp spans: sample_ratio={} max_per_second={} max_queued={}",
                s.sample_ratio,
                if s.max_per_second == 0 {
                    "unlimited".to_string()
                } else {
                    s.max_per_second.to_string()
                },
                s.max_queued
            )?;
        }
        let resource: Vec<String> = self
            .resource
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "otlp resource: {}", resource.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact_url("https://user:secret@collector:4318/v1/metrics"),
            "https://<redacted>@collector:4318/v1/metrics"
        );
        assert_eq!(
            redact_url("http://collector:4318/a@b"),
            "http://collector:4318/a@b"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn display_redacts_header_values() {
        let t = Target {
            signal: Signal::Metrics,
            protocol: Protocol::Grpc,
            uri: "https://collector:4317".parse().unwrap(),
            headers: vec![Header {
                name: HeaderName::from_static("authorization"),
                value: HeaderValue::from_static("Bearer hunter2"),
            }],
            gzip: true,
            timeout: Duration::from_secs(10),
            tls: Tls::default(),
        };
        let shown = format!("{t} {t:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("authorization=<redacted>"), "{shown}");
        assert!(shown.starts_with("grpc https://collector:4317/ compression=gzip timeout=10000ms"));
    }
}
