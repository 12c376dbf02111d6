//! The `otlp` section, resolved against the OpenTelemetry environment.
//!
//! Each setting comes from the first source that gives it: a flag, the
//! config file, `OTEL_EXPORTER_OTLP_<SIGNAL>_<X>`, `OTEL_EXPORTER_OTLP_<X>`,
//! the default. Endpoints follow the OTel spec: a base endpoint
//! (`otlp.endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`) gets `/v1/metrics` or
//! `/v1/traces` appended for OTLP/HTTP and is used as is for gRPC; a
//! signal's own endpoint (`otlp.metrics_endpoint`,
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, ...) is always used as is.
//! Empty variables count as unset, as the spec says.
//!
//! Metrics are pushed when an endpoint resolves for them; spans when
//! `otlp.traces` is on, a traces endpoint is given, or
//! `OTEL_TRACES_EXPORTER=otlp`. `OTEL_{METRICS,TRACES}_EXPORTER=none`
//! turns off a signal that only the environment turned on.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use axum::http::{HeaderName, HeaderValue, Uri, header};
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use crate::{
    export::otlp::{
        settings::{Header, OtlpSettings, Protocol, Signal, Target, Tls, redact_url},
        tls,
    },
    vocab::spans::SpanLimits,
};

pub const DEFAULT_INTERVAL_MS: u64 = 15_000;
/// The OTel spec's default.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct OtlpConfig {
    /// Base endpoint of a collector: `http://host:4318` (OTLP/HTTP: the
    /// signal's path is appended) or `http://host:4317` (gRPC).
    pub endpoint: Option<String>,
    /// The metrics endpoint, used as is; overrides `endpoint`.
    pub metrics_endpoint: Option<String>,
    /// The traces endpoint, used as is; overrides `endpoint` and turns
    /// span export on.
    pub traces_endpoint: Option<String>,
    /// grpc or http/protobuf [default: http/protobuf].
    pub protocol: Option<String>,
    /// Headers sent with every request (e.g. authorization).
    pub headers: BTreeMap<String, String>,
    /// gzip or none [default: none].
    pub compression: Option<String>,
    /// Bounds each request [default: 10000].
    pub timeout_ms: Option<u64>,
    /// Push period [default: 15000].
    pub interval_ms: Option<u64>,
    pub tls: OtlpTlsConfig,
    /// Also push spans (TCP handshakes, map update/delete calls).
    pub traces: bool,
    /// Spans waiting between pushes; past it they are dropped and counted.
    pub max_queued_spans: usize,
    /// Fraction of handshakes and map calls that get a span, 0 to 1.
    pub traces_sample_ratio: f64,
    /// Spans per second at most (a token bucket); 0: no limit.
    pub traces_max_per_second: u32,
    /// Put a hash of the key (and of the value, for updates) on every
    /// map-call span: one key's history across writers. Needs `traces`.
    pub map_key_hashes: bool,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        let spans = SpanLimits::default();
        Self {
            endpoint: None,
            metrics_endpoint: None,
            traces_endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            compression: None,
            timeout_ms: None,
            interval_ms: None,
            tls: OtlpTlsConfig::default(),
            traces: false,
            max_queued_spans: spans.max_queued,
            traces_sample_ratio: spans.sample_ratio,
            traces_max_per_second: spans.max_per_second,
            map_key_hashes: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct OtlpTlsConfig {
    /// PEM CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mTLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Do not verify the collector's certificate.
    pub insecure_skip_verify: bool,
}

/// Reads an environment variable; `None` for unset and empty.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's environment, empty values as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parses `k=v,k2=v2` (the OTel format of `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES`: keys and values percent-encoded, blanks
/// around items trimmed). The error names the item but never its value.
pub fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, item) in s.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("item {} is not key=value", i + 1));
        };
        let decode = |x: &str| {
            percent_decode_str(x.trim())
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| format!("item {}: percent-encoding is not UTF-8", i + 1))
        };
        let k = decode(k)?;
        if k.is_empty() {
            return Err(format!("item {} has an empty key", i + 1));
        }
        out.push((k, decode(v)?));
    }
    Ok(out)
}

/// A value and where it came from (a config path or a variable's name).
struct Sourced<T> {
    value: T,
    source: String,
}

struct Resolver<'a> {
    cfg: &'a OtlpConfig,
    env: Env<'a>,
    errors: Vec<String>,
}

impl Resolver<'_> {
    fn error(&mut self, e: String) {
        if !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }

    /// The config's value, else the signal's variable, else the general one.
    fn pick<T: Clone>(
        &self,
        cfg: (&str, Option<&T>),
        signal: Signal,
        var: &str,
        parse: impl Fn(String) -> T,
    ) -> Option<Sourced<T>> {
        if let (path, Some(v)) = cfg {
            return Some(Sourced {
                value: v.clone(),
                source: path.to_string(),
            });
        }
        let up = signal.as_str().to_ascii_uppercase();
        for name in [
            format!("OTEL_EXPORTER_OTLP_{up}_{var}"),
            format!("OTEL_EXPORTER_OTLP_{var}"),
        ] {
            if let Some(v) = (self.env)(&name) {
                return Some(Sourced {
                    value: parse(v),
                    source: name,
                });
            }
        }
        None
    }

    fn target(&mut self, signal: Signal) -> Option<Target> {
        let cfg = self.cfg;
        let protocol = match self.pick(
            ("otlp.protocol", cfg.protocol.as_ref()),
            signal,
            "PROTOCOL",
            |v| v,
        ) {
            None => Protocol::HttpProtobuf,
            Some(p) => Protocol::parse(&p.value).unwrap_or_else(|| {
                self.error(format!(
                    "{}: unknown protocol {:?} (known: {})",
                    p.source,
                    p.value,
                    Protocol::NAMES.join(", ")
                ));
                Protocol::HttpProtobuf
            }),
        };

        let up = signal.as_str().to_ascii_uppercase();
        let (own_path, own) = match signal {
            Signal::Metrics => ("otlp.metrics_endpoint", &cfg.metrics_endpoint),
            Signal::Traces => ("otlp.traces_endpoint", &cfg.traces_endpoint),
        };
        let own_var = format!("OTEL_EXPORTER_OTLP_{up}_ENDPOINT");
        let (source, url, append) = if let Some(e) = own {
            (own_path.to_string(), e.clone(), false)
        } else if let Some(e) = &cfg.endpoint {
            ("otlp.endpoint".to_string(), e.clone(), true)
        } else if let Some(e) = (self.env)(&own_var) {
            (own_var, e, false)
        } else if let Some(e) = (self.env)("OTEL_EXPORTER_OTLP_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), e, true)
        } else {
            return None;
        };
        let given = url.trim().to_string();
        let url = if append && protocol == Protocol::HttpProtobuf {
            format!("{}/{}", given.trim_end_matches('/'), signal.http_path())
        } else {
            given.clone()
        };
        let (uri, basic) = self.endpoint(&source, &given, &url, protocol)?;

        let mut headers = Vec::new();
        let given = if cfg.headers.is_empty() {
            self.pick(("", None), signal, "HEADERS", |v| v)
                .map(|s| (s.source.clone(), parse_key_values(&s.value)))
        } else {
            Some((
                "otlp.headers".to_string(),
                Ok(cfg
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()),
            ))
        };
        match given {
            Some((source, Err(e))) => self.error(format!("{source}: {e}")),
            Some((source, Ok(pairs))) => {
                for (k, v) in pairs {
                    let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes());
                    let value = HeaderValue::from_str(&v);
                    match (name, value) {
                        (Ok(name), Ok(mut value)) => {
                            value.set_sensitive(true);
                            headers.push(Header { name, value });
                        }
                        (Err(_), _) => {
                            self.error(format!("{source}: {k:?} is not a valid header name"))
                        }
                        (_, Err(_)) => self.error(format!(
                            "{source}: the value of header {k:?} is not a valid header value"
                        )),
                    }
                }
            }
            None => {}
        }
        if let Some(value) = basic
            && !headers.iter().any(|h| h.name == header::AUTHORIZATION)
        {
            headers.push(Header {
                name: header::AUTHORIZATION,
                value,
            });
        }

        let timeout_ms = match self.pick(
            (
                "otlp.timeout_ms",
                cfg.timeout_ms.as_ref().map(|t| t.to_string()).as_ref(),
            ),
            signal,
            "TIMEOUT",
            |v| v,
        ) {
            None => DEFAULT_TIMEOUT_MS,
            Some(t) => match t.value.trim().parse::<u64>() {
                Ok(ms) if (1..=600_000).contains(&ms) => ms,
                _ => {
                    self.error(format!(
                        "{}: {:?} must be a number of milliseconds from 1 to 600000",
                        t.source, t.value
                    ));
                    DEFAULT_TIMEOUT_MS
                }
            },
        };

        let gzip = match self.pick(
            ("otlp.compression", cfg.compression.as_ref()),
            signal,
            "COMPRESSION",
            |v| v,
        ) {
            None => false,
            Some(c) => match c.value.trim() {
                "gzip" => true,
                "none" => false,
                other => {
                    self.error(format!(
                        "{}: unknown compression {other:?} (known: gzip, none)",
                        c.source
                    ));
                    false
                }
            },
        };

        let path = |p: String| PathBuf::from(p);
        let ca = self.pick(
            ("otlp.tls.ca_file", cfg.tls.ca_file.as_ref()),
            signal,
            "CERTIFICATE",
            path,
        );
        let cert = self.pick(
            ("otlp.tls.cert_file", cfg.tls.cert_file.as_ref()),
            signal,
            "CLIENT_CERTIFICATE",
            path,
        );
        let key = self.pick(
            ("otlp.tls.key_file", cfg.tls.key_file.as_ref()),
            signal,
            "CLIENT_KEY",
            path,
        );
        let tls = Tls {
            ca_file: ca.as_ref().map(|s| s.value.clone()),
            cert_file: cert.as_ref().map(|s| s.value.clone()),
            key_file: key.as_ref().map(|s| s.value.clone()),
            insecure_skip_verify: cfg.tls.insecure_skip_verify,
        };
        if uri.scheme_str() == Some("https") {
            if let Some(ca) = &ca
                && let Err(e) = tls::check(&Tls {
                    ca_file: Some(ca.value.clone()),
                    ..Tls::default()
                })
            {
                self.error(format!("{}: {e}", ca.source));
            }
            let pair = match (&cert, &key) {
                (Some(c), Some(k)) => Some(format!("{} and {}", c.source, k.source)),
                (Some(c), None) | (None, Some(c)) => Some(c.source.clone()),
                (None, None) => None,
            };
            if let Some(source) = pair
                && let Err(e) = tls::check(&Tls {
                    cert_file: tls.cert_file.clone(),
                    key_file: tls.key_file.clone(),
                    ..Tls::default()
                })
            {
                self.error(format!("{source}: {e}"));
            }
        }

        Some(Target {
            signal,
            protocol,
            uri,
            headers,
            gzip,
            timeout: Duration::from_millis(timeout_ms),
            tls,
        })
    }

    /// Checks an endpoint URL; returns it without userinfo, and the
    /// userinfo as a basic-auth header value.
    fn endpoint(
        &mut self,
        source: &str,
        given: &str,
        url: &str,
        protocol: Protocol,
    ) -> Option<(Uri, Option<HeaderValue>)> {
        let shown = redact_url(given);
        let example = match protocol {
            Protocol::Grpc => "http://127.0.0.1:4317",
            Protocol::HttpProtobuf => "http://127.0.0.1:4318",
        };
        if given.contains(['?', '#']) {
            self.error(format!(
                "{source}: {shown:?} has a query or fragment; give the endpoint without one (e.g. {example})"
            ));
            return None;
        }
        let uri = match url.parse::<Uri>() {
            Ok(uri) => uri,
            Err(_) => {
                self.error(format!("{source}: {shown:?} is not a URL (e.g. {example})"));
                return None;
            }
        };
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => {}
            Some("http" | "https") => {
                self.error(format!("{source}: {shown:?} has no host (e.g. {example})"));
                return None;
            }
            Some(other) => {
                self.error(format!(
                    "{source}: {shown:?}: unsupported scheme {other:?} (http or https, e.g. {example})"
                ));
                return None;
            }
            None => {
                self.error(format!(
                    "{source}: {shown:?} has no scheme (http or https, e.g. {example})"
                ));
                return None;
            }
        }
        if protocol == Protocol::Grpc && !matches!(uri.path(), "" | "/") {
            self.error(format!(
                "{source}: {shown:?}: a gRPC endpoint is a scheme, host and port; the path is the service's"
            ));
            return None;
        }
        let authority = uri.authority()?.as_str().to_string();
        let Some((userinfo, host)) = authority.rsplit_once('@') else {
            return Some((uri, None));
        };
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            decode(user),
            decode(password)
        ));
        let mut basic = HeaderValue::from_str(&format!("Basic {credentials}")).ok();
        if let Some(b) = basic.as_mut() {
            b.set_sensitive(true);
        }
        let mut parts = uri.into_parts();
        parts.authority = host.parse().ok();
        match Uri::from_parts(parts) {
            Ok(uri) => Some((uri, basic)),
            Err(_) => {
                self.error(format!("{source}: {shown:?} is not a URL"));
                None
            }
        }
    }
}

impl OtlpConfig {
    /// Resolves the section against `env`; `None` when OTLP is off. Every
    /// problem goes to `errors`, each naming its config path or variable.
    pub fn resolve(&self, env: Env, errors: &mut Vec<String>) -> Option<OtlpSettings> {
        let mut r = Resolver {
            cfg: self,
            env,
            errors: Vec::new(),
        };
        let is = |var: &str, want: &str| env(var).is_some_and(|v| v.trim() == want);
        let configured_metrics = self.endpoint.is_some() || self.metrics_endpoint.is_some();
        let metrics = match r.target(Signal::Metrics) {
            Some(_) if !configured_metrics && is("OTEL_METRICS_EXPORTER", "none") => None,
            t => t,
        };
        let configured_traces = self.traces || self.traces_endpoint.is_some();
        let traces_wanted = configured_traces
            || (!is("OTEL_TRACES_EXPORTER", "none")
                && (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
                    || is("OTEL_TRACES_EXPORTER", "otlp")));
        let traces = if traces_wanted {
            let t = r.target(Signal::Traces);
            if t.is_none() && r.errors.is_empty() {
                r.error(
                    "otlp.traces: needs an endpoint (otlp.endpoint, otlp.traces_endpoint or OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT)"
                        .into(),
                );
            }
            t
        } else {
            None
        };

        let interval_ms = match (self.interval_ms, env("OTEL_METRIC_EXPORT_INTERVAL")) {
            (Some(ms), _) => Some(("otlp.interval_ms", ms.to_string())),
            (None, Some(v)) => Some(("OTEL_METRIC_EXPORT_INTERVAL", v)),
            (None, None) => None,
        }
        .map_or(DEFAULT_INTERVAL_MS, |(source, v)| {
            match v.trim().parse::<u64>() {
                Ok(ms) if (100..=3_600_000).contains(&ms) => ms,
                _ => {
                    r.error(format!(
                        "{source}: {v:?} must be a number of milliseconds from 100 to 3600000"
                    ));
                    DEFAULT_INTERVAL_MS
                }
            }
        });
        let ratio = self.traces_sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            r.error(format!(
                "otlp.traces_sample_ratio: {ratio} must be from 0 to 1"
            ));
        }
        if self.max_queued_spans == 0 {
            r.error("otlp.max_queued_spans: must be at least 1".into());
        }

        let mut resource = Vec::new();
        if let Some(attrs) = env("OTEL_RESOURCE_ATTRIBUTES") {
            match parse_key_values(&attrs) {
                Ok(pairs) => resource = pairs,
                Err(e) => r.error(format!("OTEL_RESOURCE_ATTRIBUTES: {e}")),
            }
        }
        let from_attrs = resource
            .iter()
            .position(|(k, _)| k == "service.name")
            .map(|i| resource.remove(i).1);
        let service = env("OTEL_SERVICE_NAME")
            .or(from_attrs)
            .unwrap_or_else(|| "edgewatch".into());
        resource.insert(0, ("service.name".into(), service));

        errors.extend(r.errors);
        if metrics.is_none() && traces.is_none() {
            return None;
        }
        Some(OtlpSettings {
            metrics,
            traces,
            interval: Duration::from_millis(interval_ms),
            spans: SpanLimits {
                sample_ratio: ratio,
                max_per_second: self.traces_max_per_second,
                max_queued: self.max_queued_spans,
            },
            resource,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(
        cfg: &OtlpConfig,
        vars: &[(&str, &str)],
    ) -> Result<Option<OtlpSettings>, Vec<String>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.get(k).cloned().filter(|v| !v.is_empty());
        let mut errors = Vec::new();
        let s = cfg.resolve(&env, &mut errors);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    fn cfg(endpoint: &str) -> OtlpConfig {
        OtlpConfig {
            endpoint: Some(endpoint.into()),
            ..OtlpConfig::default()
        }
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(resolve(&OtlpConfig::default(), &[]), Ok(None));
        let c = OtlpConfig {
            traces: true,
            ..OtlpConfig::default()
        };
        let e = resolve(&c, &[]).unwrap_err();
        assert!(e[0].starts_with("otlp.traces: needs an endpoint"), "{e:?}");
    }

    #[test]
    fn base_endpoints_get_the_signal_path_for_http_only() {
        let mut c = cfg("http://collector:4318/");
        c.traces = true;
        let s = resolve(&c, &[]).unwrap().unwrap();
        let m = s.metrics.unwrap();
        assert_eq!(m.uri.to_string(), "http://collector:4318/v1/metrics");
        assert_eq!(m.protocol, Protocol::HttpProtobuf);
        assert_eq!(m.timeout, Duration::from_secs(10));
        assert_eq!(
            s.traces.unwrap().uri.to_string(),
            "http://collector:4318/v1/traces"
        );
        c.protocol = Some("grpc".into());
        c.endpoint = Some("https://collector:4317".into());
        let s = resolve(&c, &[]).unwrap().unwrap();
        assert_eq!(
            s.metrics.unwrap().uri.to_string(),
            "https://collector:4317/"
        );
        // A signal's own endpoint is used as is.
        let mut c = cfg("http://collector:4318");
        c.traces_endpoint = Some("http://other:9999/custom".into());
        let s = resolve(&c, &[]).unwrap().unwrap();
        assert_eq!(
            s.traces.unwrap().uri.to_string(),
            "http://other:9999/custom"
        );
    }

    #[test]
    fn the_environment_alone_configures_everything() {
        let s = resolve(
            &OtlpConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "api-key=s%3Dcret, x-tenant = a ",
                ),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                    "authorization=Bearer%20t",
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_SERVICE_NAME", "edge-1"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=ignored,deployment.environment.name=prod",
                ),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ],
        )
        .unwrap()
        .unwrap();
        let m = s.metrics.unwrap();
        assert_eq!(m.uri.to_string(), "http://collector:4318/v1/metrics");
        assert_eq!(
            (m.protocol, m.gzip, m.timeout),
            (Protocol::HttpProtobuf, true, Duration::from_millis(2500))
        );
        let h: Vec<(String, String)> = m
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            h,
            vec![
                ("api-key".into(), "s=cret".into()),
                ("x-tenant".into(), "a".into())
            ]
        );
        let t = s.traces.unwrap();
        assert_eq!(
            (t.protocol, t.uri.to_string()),
            (Protocol::Grpc, "http://traces:4317/".into())
        );
        assert_eq!(t.headers.len(), 1);
        assert_eq!(t.headers[0].value.to_str().unwrap(), "Bearer t");
        assert_eq!(s.interval, Duration::from_secs(1));
        assert_eq!(
            s.resource,
            vec![
                ("service.name".into(), "edge-1".into()),
                ("deployment.environment.name".into(), "prod".into())
            ]
        );
    }

    #[test]
    fn flags_and_the_file_win_over_the_environment() {
        let mut c = cfg("http://mine:4318");
        c.protocol = Some("http/protobuf".into());
        c.timeout_ms = Some(700);
        c.compression = Some("none".into());
        c.headers
            .insert("authorization".into(), "Bearer mine".into());
        let s = resolve(
            &c,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://theirs:4317"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://theirs:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "authorization=theirs"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ],
        )
        .unwrap()
        .unwrap();
        let m = s.metrics.unwrap();
        assert_eq!(m.uri.to_string(), "http://mine:4318/v1/metrics");
        assert_eq!(
            (m.protocol, m.gzip, m.timeout),
            (Protocol::HttpProtobuf, false, Duration::from_millis(700))
        );
        assert_eq!(m.headers[0].value.to_str().unwrap(), "Bearer mine");
        assert!(
            s.traces.is_none(),
            "a base endpoint alone does not turn spans on"
        );
    }

    #[test]
    fn userinfo_becomes_basic_auth_and_never_shows() {
        let s = resolve(&cfg("https://ann:p%40ss@collector:4318"), &[])
            .unwrap()
            .unwrap();
        let m = s.metrics.unwrap();
        assert_eq!(m.uri.to_string(), "https://collector:4318/v1/metrics");
        assert_eq!(m.headers[0].name, header::AUTHORIZATION);
        // base64("ann:p@ss")
        assert_eq!(m.headers[0].value.to_str().unwrap(), "Basic YW5uOnBAc3M=");
        let e = resolve(&cfg("ftp://ann:secret@collector"), &[]).unwrap_err();
        assert!(!e[0].contains("secret"), "{e:?}");
    }

    #[test]
    fn bad_settings_are_each_named() {
        let mut c = cfg("unix:///run/collector.sock");
        c.protocol = Some("http/json".into());
        c.compression = Some("zstd".into());
        c.timeout_ms = Some(0);
        c.traces_sample_ratio = 1.5;
        c.headers.insert("bad header".into(), "x".into());
        c.tls.ca_file = Some("/nonexistent/ca.pem".into());
        let e = resolve(&c, &[]).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            vec!["otlp.protocol", "otlp.endpoint", "otlp.traces_sample_ratio"],
            "{e:?}"
        );
        let mut c = cfg("https://collector:4318");
        c.headers.insert("bad header".into(), "x".into());
        c.compression = Some("zstd".into());
        c.tls.ca_file = Some("/nonexistent/ca.pem".into());
        c.tls.cert_file = Some("/nonexistent/cert.pem".into());
        let e = resolve(&c, &[]).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            vec![
                "otlp.headers",
                "otlp.compression",
                "otlp.tls.ca_file",
                "otlp.tls.cert_file"
            ],
            "{e:?}"
        );
        let e = resolve(
            &OtlpConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec!["OTEL_EXPORTER_OTLP_HEADERS: item 1 is not key=value"]
        );
    }

    #[test]
    fn exporter_none_turns_off_what_only_the_environment_turned_on() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ];
        let s = resolve(&OtlpConfig::default(), &vars).unwrap().unwrap();
        assert!(s.metrics.is_none() && s.traces.is_some());
        let s = resolve(&cfg("http://c:4318"), &vars).unwrap().unwrap();
        assert!(s.metrics.is_some(), "the config's endpoint wins");
    }
}
