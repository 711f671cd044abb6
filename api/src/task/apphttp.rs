//! `AppHttpHealthy`: every agent sends HTTP requests to one URL at a fixed rate and judges the
//! answers.
//!
//! kdoctor's fields, with its defects fixed: a header value may contain `:` (kdoctor cuts it
//! off), `http2` and `enableLatencyMetric` keep their defaults when omitted. Outside Kubernetes
//! the body and TLS material cannot come from a ConfigMap or a Secret, so meshdoctor adds
//! `body` (inline) and `tlsCaFile` / `tlsCertFile` / `tlsKeyFile` (absolute paths, read by each
//! agent) beside kdoctor's `bodyConfigmapName/Namespace` and `tlsSecretName/Namespace`.

use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

use super::{
    Invalid, Kind, MAX_APP_HTTP_QPS, Metadata, SchedulePlan, TaskSpec, agent_spec_warning,
    default_duration, default_mean_delay, default_qps, default_success_rate, default_timeout,
    validate_common, validate_expect, validate_file, validate_label, validate_pair,
};
use crate::{HttpHeader, HttpMethod, TaskKind};

/// An AppHttpHealthy task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppHttpHealthy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: AppHttpHealthySpec,
}

/// `spec` of an AppHttpHealthy task.
///
/// With the `crd` feature it also derives `AppHttpHealthyResource`, the Kubernetes custom
/// resource (`apphttphealthies.meshdoctor.io`); see [`super::NetReachSpec`] for why a task file
/// and a custom resource have separate roots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(kube::CustomResource, schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    kube(
        group = "meshdoctor.io",
        version = "v1beta1",
        kind = "AppHttpHealthy",
        root = "AppHttpHealthyResource",
        plural = "apphttphealthies",
        shortname = "ahh",
        category = "meshdoctor",
        status = "crate::status::TaskStatus",
        doc = "An AppHttpHealthy task: every agent sends HTTP requests to one URL at a fixed rate.",
    )
)]
#[cfg_attr(
    feature = "crd",
    schemars(
        description = crate::crd_schema::SPEC_DESCRIPTION,
        transform = crate::crd_schema::plain_docs
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppHttpHealthySpec {
    /// kdoctor's per-task agent workload: accepted, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "crd",
        schemars(schema_with = "crate::crd_schema::preserved_object")
    )]
    pub agent_spec: Option<serde_yaml::Value>,
    #[serde(default)]
    pub schedule: SchedulePlan,
    #[serde(default)]
    pub request: NetHttpRequest,
    #[serde(default)]
    pub expect: HttpSuccessCondition,
    pub target: AppHttpHealthyTarget,
}

/// kdoctor's `NetHttpRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetHttpRequest {
    /// Requests per second per agent.
    #[serde(default = "default_qps")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1, max = MAX_APP_HTTP_QPS)))]
    pub qps: u32,
    #[serde(default = "default_duration")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1, max = super::MAX_DURATION_IN_SECOND)))]
    pub duration_in_second: u32,
    #[serde(default = "default_timeout", rename = "perRequestTimeoutInMS")]
    #[cfg_attr(
        feature = "crd",
        schemars(range(min = 1, max = super::MAX_PER_REQUEST_TIMEOUT_IN_MS))
    )]
    pub per_request_timeout_in_ms: u32,
}

impl Default for NetHttpRequest {
    fn default() -> Self {
        Self {
            qps: default_qps(),
            duration_in_second: default_duration(),
            per_request_timeout_in_ms: default_timeout(),
        }
    }
}

/// kdoctor's `expect` with `statusCode`, which only AppHttpHealthy uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSuccessCondition {
    #[serde(default = "default_success_rate")]
    #[cfg_attr(feature = "crd", schemars(range(min = 0, max = 1)))]
    pub success_rate: f64,
    #[serde(default = "default_mean_delay")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1)))]
    pub mean_access_delay_in_ms: u64,
    /// A response with another status counts as a failure. Without it any 2xx or 3xx response
    /// succeeds (kdoctor counts any response, even a 500; its docs claim a default of 200 that
    /// its code does not have).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "crd", schemars(range(min = 100, max = 599)))]
    pub status_code: Option<u16>,
}

impl Default for HttpSuccessCondition {
    fn default() -> Self {
        Self {
            success_rate: default_success_rate(),
            mean_access_delay_in_ms: default_mean_delay(),
            status_code: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "has(self.bodyConfigmapName) == has(self.bodyConfigmapNamespace)",
            "message": "bodyConfigmapName and bodyConfigmapNamespace go together",
        },
        {
            "rule": "!has(self.body) || !has(self.bodyConfigmapName)",
            "message": "set either body (inline) or bodyConfigmapName/bodyConfigmapNamespace, \
                        not both",
        },
        {
            "rule": "has(self.tlsSecretName) == has(self.tlsSecretNamespace)",
            "message": "tlsSecretName and tlsSecretNamespace go together",
        },
        {
            "rule": "has(self.tlsCertFile) == has(self.tlsKeyFile)",
            "message": "tlsCertFile and tlsKeyFile go together",
        },
        {
            "rule": "!has(self.tlsSecretName) || !(has(self.tlsCaFile) || has(self.tlsCertFile))",
            "message": "set either tlsSecretName/tlsSecretNamespace or the tlsCaFile/tlsCertFile/\
                        tlsKeyFile files, not both",
        },
    ]))
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppHttpHealthyTarget {
    /// The URL. `http://` is added when it has no scheme; only `http` and `https` are allowed;
    /// an IPv6 literal must be in brackets (`http://[fd00::1]:8080/`).
    pub host: String,
    pub method: HttpMethod,
    #[serde(default)]
    pub http2: bool,
    /// `"Key: Value"` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "crd", schemars(schema_with = "crate::crd_schema::headers"))]
    pub header: Vec<HttpHeader>,
    /// meshdoctor's extension: the request body, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// kdoctor: the body is this ConfigMap's `data`, marshalled to JSON (Kubernetes backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_configmap_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_configmap_namespace: Option<String>,
    /// kdoctor: a `kubernetes.io/tls` Secret with `ca.crt` (the CA the server must chain to),
    /// `tls.crt` + `tls.key` (client certificate). Kubernetes backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_namespace: Option<String>,
    /// meshdoctor's extension, the Secret's keys as PEM files the controller reads when it
    /// plans a round and ships to the agents in the plan: the CA bundle the
    /// server must chain to (`ca.crt`). Without a CA the server is verified against the
    /// built-in webpki roots; kdoctor does not verify it at all then, which hides the very TLS
    /// failures a probe should find.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    /// The client certificate chain (`tls.crt`), with `tlsKeyFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    /// The client private key (`tls.key`), with `tlsCertFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
    /// kdoctor: keep every latency sample for percentiles. meshdoctor always measures latency
    /// (exact histogram), so this changes nothing.
    #[serde(default)]
    pub enable_latency_metric: bool,
}

impl AppHttpHealthyTarget {
    fn uses_tls_material(&self) -> bool {
        self.tls_secret_name.is_some() || self.tls_ca_file.is_some() || self.tls_cert_file.is_some()
    }
}

/// Adds `http://` when `host` has no scheme, as kdoctor's webhook does.
fn with_scheme(host: &str) -> String {
    let host = host.trim();
    if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    }
}

/// Checks the URL of `spec.target.host` (already given a scheme).
fn validate_url(url: &str) -> Result<(), Invalid> {
    let field = "spec.target.host";
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    // Without the user info, which may hold a ':'.
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let bare_v6 = !authority.contains('[')
        && (authority.parse::<Ipv6Addr>().is_ok() || authority.matches(':').count() > 1);
    if bare_v6 {
        return Err(Invalid::new(
            field,
            format!(
                "invalid URL {url:?}: an IPv6 address must be in brackets, e.g. \
                 http://[fd00::1]:8080/"
            ),
        ));
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| Invalid::new(field, format!("invalid URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Invalid::new(
            field,
            format!(
                "invalid URL {url:?}: the scheme must be http or https, got {:?}",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Invalid::new(field, format!("invalid URL {url:?}: no host")));
    }
    Ok(())
}

impl Kind for AppHttpHealthy {
    const KIND: TaskKind = TaskKind::AppHttpHealthy;
    const MAX_QPS: u32 = MAX_APP_HTTP_QPS;

    fn normalize(&mut self) {
        let t = &mut self.spec.target;
        t.host = with_scheme(&t.host);
    }

    fn validate(&self) -> Result<(), Invalid> {
        validate_common(self)?;
        let sp = &self.spec;
        validate_expect(sp.expect.success_rate, sp.expect.mean_access_delay_in_ms)?;
        if let Some(code) = sp.expect.status_code
            && !(100..=599).contains(&code)
        {
            return Err(Invalid::new(
                "spec.expect.statusCode",
                format!("must be an HTTP status 100..=599, got {code}"),
            ));
        }
        let t = &sp.target;
        validate_url(&t.host)?;
        let f = |name: &str| format!("spec.target.{name}");
        validate_pair(
            (&f("bodyConfigmapName"), t.body_configmap_name.as_ref()),
            (
                &f("bodyConfigmapNamespace"),
                t.body_configmap_namespace.as_ref(),
            ),
        )?;
        if let (Some(name), Some(ns)) = (&t.body_configmap_name, &t.body_configmap_namespace) {
            validate_label(&f("bodyConfigmapNamespace"), ns)?;
            if name.is_empty() {
                return Err(Invalid::new(f("bodyConfigmapName"), "must not be empty"));
            }
            if t.body.is_some() {
                return Err(Invalid::new(
                    f("body"),
                    "set either body (inline) or bodyConfigmapName/bodyConfigmapNamespace, \
                     not both",
                ));
            }
        }
        validate_pair(
            (&f("tlsSecretName"), t.tls_secret_name.as_ref()),
            (&f("tlsSecretNamespace"), t.tls_secret_namespace.as_ref()),
        )?;
        if let Some(ns) = &t.tls_secret_namespace {
            validate_label(&f("tlsSecretNamespace"), ns)?;
        }
        validate_pair(
            (&f("tlsCertFile"), t.tls_cert_file.as_ref()),
            (&f("tlsKeyFile"), t.tls_key_file.as_ref()),
        )?;
        validate_file(&f("tlsCaFile"), t.tls_ca_file.as_ref())?;
        validate_file(&f("tlsCertFile"), t.tls_cert_file.as_ref())?;
        validate_file(&f("tlsKeyFile"), t.tls_key_file.as_ref())?;
        if t.tls_secret_name.is_some() && (t.tls_ca_file.is_some() || t.tls_cert_file.is_some()) {
            return Err(Invalid::new(
                f("tlsSecretName"),
                "set either tlsSecretName/tlsSecretNamespace or the tlsCaFile/tlsCertFile/\
                 tlsKeyFile files, not both",
            ));
        }
        Ok(())
    }
}

impl AppHttpHealthy {
    super::parsers!();
}

impl TaskSpec for AppHttpHealthy {
    super::common_accessors!();

    fn warnings(&self) -> Vec<String> {
        let t = &self.spec.target;
        let mut w = Vec::new();
        if self.spec.agent_spec.is_some() {
            w.push(agent_spec_warning());
        }
        if t.body_configmap_name.is_some() {
            w.push(
                "spec.target.bodyConfigmapName: ConfigMaps are read by the Kubernetes backend \
                 only; elsewhere use body"
                    .into(),
            );
        }
        if t.tls_secret_name.is_some() {
            w.push(
                "spec.target.tlsSecretName: Secrets are read by the Kubernetes backend only; \
                 elsewhere use tlsCaFile, tlsCertFile and tlsKeyFile"
                    .into(),
            );
        }
        if t.uses_tls_material() && t.host.starts_with("http://") {
            w.push(format!(
                "spec.target.host: {:?} is plain http, so the TLS settings are not used",
                t.host
            ));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::tests::assert_err;

    const GOOD: &str = "
apiVersion: meshdoctor.io/v1beta1
kind: AppHttpHealthy
metadata:
  name: web
spec:
  schedule:
    schedule: '*/5 * * * *'
    roundNumber: -1
  request:
    qps: 200
    durationInSecond: 10
  expect:
    successRate: 0.999
    meanAccessDelayInMs: 200
    statusCode: 200
  target:
    host: https://web.example:8443/healthz?full=1
    method: POST
    http2: true
    header:
      - 'Content-Type: application/json'
      - 'Authorization: Basic dXNlcjpwYXNz:x'
    body: '{\"ping\": true}'
    tlsCaFile: /etc/meshdoctor/ca.pem
";

    #[test]
    fn parses_with_defaults() {
        let t = AppHttpHealthy::from_yaml("f", GOOD).unwrap();
        let tg = &t.spec.target;
        assert_eq!(tg.method, HttpMethod::Post);
        assert!(tg.http2 && !tg.enable_latency_metric);
        assert_eq!(tg.header[1].name, "Authorization");
        assert_eq!(tg.header[1].value, "Basic dXNlcjpwYXNz:x");
        assert_eq!(t.spec.request.per_request_timeout_in_ms, 500);
        assert_eq!(t.spec.expect.status_code, Some(200));
        assert!(t.warnings().is_empty());
        let yaml = serde_yaml::to_string(&t).unwrap();
        assert!(
            yaml.contains("- 'Authorization: Basic dXNlcjpwYXNz:x'"),
            "{yaml}"
        );
        assert_eq!(AppHttpHealthy::from_yaml("f", &yaml).unwrap(), t);

        let minimal = "apiVersion: kdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {name: w}\n\
                       spec: {target: {host: '10.0.0.1:8080/x', method: GET}}\n";
        let t = AppHttpHealthy::from_yaml("f", minimal).unwrap();
        assert_eq!(t.spec.target.host, "http://10.0.0.1:8080/x");
        assert!(!t.spec.target.http2);
        assert_eq!(t.spec.expect, HttpSuccessCondition::default());
        assert_eq!(t.spec.schedule.schedule, "0 1");
        let v6 = minimal.replace("'10.0.0.1:8080/x'", "'[fd00::1]:80'");
        assert_eq!(
            AppHttpHealthy::from_yaml("f", &v6)
                .unwrap()
                .spec
                .target
                .host,
            "http://[fd00::1]:80"
        );
    }

    #[test]
    fn kubernetes_sources_are_accepted_with_warnings() {
        let k8s = GOOD
            .replace(
                "body: '{\"ping\": true}'",
                "bodyConfigmapName: ping\n    bodyConfigmapNamespace: default",
            )
            .replace(
                "tlsCaFile: /etc/meshdoctor/ca.pem",
                "tlsSecretName: web-tls\n    tlsSecretNamespace: web",
            )
            .replace("https://", "http://");
        let t = AppHttpHealthy::from_yaml("f", &k8s).unwrap();
        let w = t.warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("spec.target.bodyConfigmapName: "), "{w:?}");
        assert!(w[1].starts_with("spec.target.tlsSecretName: "), "{w:?}");
        assert!(w[2].contains("is plain http"), "{w:?}");
    }

    #[test]
    fn bad_input_names_the_field() {
        let g = GOOD;
        for (from, to, field, says) in [
            (
                "https://web.example:8443/healthz?full=1",
                "ftp://web.example/",
                "spec.target.host",
                "the scheme must be http or https",
            ),
            (
                "https://web.example:8443/healthz?full=1",
                "http://web.example:99999/",
                "spec.target.host",
                "invalid URL \"http://web.example:99999/\": invalid port number",
            ),
            (
                "https://web.example:8443/healthz?full=1",
                "fd00::1",
                "spec.target.host",
                "an IPv6 address must be in brackets",
            ),
            (
                "https://web.example:8443/healthz?full=1",
                "http://fd00::1:80/",
                "spec.target.host",
                "in brackets",
            ),
            (
                "https://web.example:8443/healthz?full=1",
                "http://",
                "spec.target.host",
                "invalid URL",
            ),
            (
                "https://web.example:8443/healthz?full=1",
                "http://u:p@[fd00::1]:80/",
                "spec",
                "ok",
            ),
            (
                "https://web.example:8443/healthz?full=1",
                "http://u:p@web:80/",
                "spec",
                "ok",
            ),
            (
                "https://web.example:8443/healthz?full=1",
                "'http://exa mple/'",
                "spec.target.host",
                "invalid URL",
            ),
            (
                "method: POST",
                "method: FETCH",
                "spec.target.method",
                "unknown variant `FETCH`, expected one of `GET`, `POST`",
            ),
            (
                "method: POST",
                "method: get",
                "spec.target.method",
                "unknown variant `get`",
            ),
            (
                "'Content-Type: application/json'",
                "'Content-Type application/json'",
                "spec.target.header[0]",
                "expected \"Key: Value\", got \"Content-Type application/json\" (no ':')",
            ),
            (
                "'Content-Type: application/json'",
                "': json'",
                "spec.target.header[0]",
                "is not an HTTP token",
            ),
            (
                "'Content-Type: application/json'",
                "\"X-A: b\\r\\nX-Evil: 1\"",
                "spec.target.header[0]",
                "control character",
            ),
            (
                "statusCode: 200",
                "statusCode: 600",
                "spec.expect.statusCode",
                "100..=599, got 600",
            ),
            (
                "statusCode: 200",
                "statusCode: 99",
                "spec.expect.statusCode",
                "got 99",
            ),
            (
                "qps: 200",
                "qps: 50001",
                "spec.request.qps",
                "must be 1..=50000 (AppHttpHealthy requests",
            ),
            (
                "durationInSecond: 10",
                "durationInSecond: 0",
                "spec.request.durationInSecond",
                "must be 1..=3600, got 0",
            ),
            (
                "durationInSecond: 10",
                "durationInSecond: 301",
                "spec.request.durationInSecond",
                "301s is longer than the 5m0s between the closest rounds",
            ),
            (
                "durationInSecond: 10",
                "durationInSecond: 10\n    perRequestTimeoutInMS: 0",
                "spec.request.perRequestTimeoutInMS",
                "must be 1..=60000",
            ),
            (
                "roundNumber: -1",
                "roundNumber: -1\n    roundTimeoutMinute: 0",
                "spec.schedule.roundTimeoutMinute",
                "at least 1",
            ),
            (
                "'*/5 * * * *'",
                "'*/5 * * *'",
                "spec.schedule.schedule",
                "expected \"M N\"",
            ),
            (
                "'*/5 * * * *'",
                "'0 5'\n    roundTimeoutMinute: 10",
                "spec.schedule.roundTimeoutMinute",
                "longer than the 5 minutes",
            ),
            (
                "'*/5 * * * *'",
                "'@every 0s'",
                "spec.schedule.schedule",
                "must be above zero",
            ),
            (
                "'*/5 * * * *'",
                "'@every 5s'",
                "spec.request.durationInSecond",
                "10s is longer than the 5s between @every rounds",
            ),
            (
                "    tlsCaFile: /etc/meshdoctor/ca.pem",
                "    tlsCaFile: ca.pem",
                "spec.target.tlsCaFile",
                "must be an absolute path",
            ),
            (
                "    tlsCaFile: /etc/meshdoctor/ca.pem",
                "    tlsCertFile: /c.pem",
                "spec.target.tlsKeyFile",
                "required with spec.target.tlsCertFile",
            ),
            (
                "    tlsCaFile: /etc/meshdoctor/ca.pem",
                "    tlsSecretNamespace: web",
                "spec.target.tlsSecretName",
                "required with spec.target.tlsSecretNamespace",
            ),
            (
                "    tlsCaFile: /etc/meshdoctor/ca.pem",
                "    tlsCaFile: /ca.pem\n    tlsSecretName: s\n    tlsSecretNamespace: web",
                "spec.target.tlsSecretName",
                "not both",
            ),
            (
                "    tlsCaFile: /etc/meshdoctor/ca.pem",
                "    bodyConfigmapName: b\n    bodyConfigmapNamespace: d",
                "spec.target.body",
                "not both",
            ),
            (
                "    tlsCaFile: /etc/meshdoctor/ca.pem",
                "    bodyConfigmapName: b",
                "spec.target.bodyConfigmapNamespace",
                "required with",
            ),
            (
                "    tlsCaFile: /etc/meshdoctor/ca.pem",
                "    tlsSecretName: s\n    tlsSecretNamespace: Web",
                "spec.target.tlsSecretNamespace",
                "not a Kubernetes name",
            ),
            (
                "    http2: true\n",
                "    http2: yes please\n",
                "spec.target.http2",
                "invalid type",
            ),
            ("    http2: true\n", "", "spec", "ok"),
        ] {
            let yaml = g.replace(from, to);
            assert_ne!(yaml, g, "{from}");
            if says == "ok" {
                assert!(AppHttpHealthy::from_yaml("f", &yaml).is_ok());
                continue;
            }
            assert_err(&yaml, field, says);
        }
        assert_err(
            &GOOD.replace("    method: POST\n", ""),
            "spec.target",
            "missing field `method`",
        );
        assert_err(
            "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {name: w}\n",
            "(document)",
            "missing field `spec`",
        );
    }
}
