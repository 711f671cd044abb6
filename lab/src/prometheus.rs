//! A real Prometheus scraping the lab, so that tests can prove the dashboards and alerts of
//! `deploy/monitoring` against the metrics the controller and the agents really serve, rather
//! than against a hand-written idea of them.
//!
//! It runs inside the controller's namespace (the only one that reaches the controller on
//! `[::1]` and every agent on its `eth0` address), listens on [`PROMETHEUS_ADDR`] there and
//! nowhere else, keeps its TSDB in the lab directory (fresh at every start), and scrapes and
//! evaluates its rules every second, so a test sees a round's effect within seconds.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use meshdoctor_api::Family;
use serde_json::{Value, json};

use crate::{
    Lab, LabError, LabServer, http, in_netns,
    lab::excerpt,
    plan::{AGENT_PORT, CONTROLLER_NS, CONTROLLER_PORT, ETH0, node_addr, node_name},
};

/// Where the lab's Prometheus listens, inside [`CONTROLLER_NS`] (Prometheus's usual port;
/// the agents' 9090 is in the nodes' namespaces).
pub const PROMETHEUS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(Ipv6Addr::LOCALHOST), 9090);
/// The scrape job of the controller, as deploy/monitoring's ServiceMonitor names it.
pub const CONTROLLER_JOB: &str = "meshdoctor-controller";
/// The scrape job of the agents, as deploy/monitoring's PodMonitor names it.
pub const AGENT_JOB: &str = "meshdoctor-agent";
/// Scrape and rule evaluation interval: short, so tests wait seconds, not minutes.
const INTERVAL: &str = "1s";
/// How long Prometheus may take to start listening (it replays nothing: the TSDB is new).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

/// One series of an instant query's result: its labels and value. A scalar result is one
/// sample without labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// An alert as `/api/v1/alerts` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// `alertname` and the labels of the series that raised it, plus the rule's own labels.
    pub labels: BTreeMap<String, String>,
    /// `pending` (its `for` is not over yet) or `firing`.
    pub state: String,
}

/// A Prometheus running in the lab; dropping it stops it (the TSDB stays in the lab directory
/// until the next start).
pub struct Prometheus {
    server: LabServer,
    /// The lab's `logs/` directory, named in timeouts.
    logs: PathBuf,
    /// Targets it scrapes: the controller and every agent.
    targets: usize,
}

impl Prometheus {
    /// Starts Prometheus in the controller's namespace, scraping the controller (job
    /// [`CONTROLLER_JOB`], `[::1]:7070`) and every agent (job [`AGENT_JOB`], its `eth0` IPv4
    /// address on `AGENT_PORT`, labelled `node`) and evaluating `rule_files`, each every second.
    /// Its configuration and a new TSDB go to `<lab dir>/prometheus/`; its log is
    /// `logs/prometheus.log`. Returns once it answers HTTP; an invalid configuration or rule
    /// file makes it exit, which is then the error, with its log's last lines.
    pub fn start(lab: &Lab, rule_files: &[PathBuf]) -> Result<Self, LabError> {
        let dir = lab.dir().join("prometheus");
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LabError::io(&dir)(e));
            }
            _ => {}
        }
        let data = dir.join("data");
        fs::create_dir_all(&data).map_err(LabError::io(&data))?;
        let config_file = dir.join("prometheus.yml");
        let text = config(
            lab.nodes(),
            &lab.reader_token_path(),
            &lab.ca_path(),
            rule_files,
        );
        fs::write(&config_file, text).map_err(LabError::io(&config_file))?;
        let args = [
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={PROMETHEUS_ADDR}"),
            "--log.level=warn".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server =
            lab.spawn_server("prometheus", CONTROLLER_NS, Path::new("prometheus"), &args)?;
        server.wait_listening(PROMETHEUS_ADDR, START_TIMEOUT)?;
        Ok(Self {
            server,
            logs: lab.dir().join("logs"),
            targets: lab.nodes() + 1,
        })
    }

    /// Evaluates `expr` now (`/api/v1/query`). A vector gives one [`Sample`] per series, a
    /// scalar one sample without labels, a range vector the latest value of each series.
    /// Prometheus's refusal (a parse error, a timeout) is a [`LabError::Prometheus`] with its
    /// message.
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>, LabError> {
        let what = format!("query {expr}");
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)), &what)?;
        parse_query_data(&data).map_err(|reason| prometheus_error(&what, reason))
    }

    /// The alerts its rules hold now, pending and firing (`/api/v1/alerts`).
    pub fn alerts(&self) -> Result<Vec<Alert>, LabError> {
        let what = "list the alerts";
        let data = self.api("/api/v1/alerts", what)?;
        parse_alerts(&data).map_err(|reason| prometheus_error(what, reason))
    }

    /// The firing alerts only.
    pub fn firing(&self) -> Result<Vec<Alert>, LabError> {
        let mut alerts = self.alerts()?;
        alerts.retain(|a| a.state == "firing");
        Ok(alerts)
    }

    /// Waits until every target (the controller and each agent) has been scraped successfully,
    /// so that queries see all of them; on timeout the error names the targets still down
    /// with their last scrape error.
    pub fn wait_targets_up(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let what = "list the targets";
            let last = match self.api("/api/v1/targets?state=active", what) {
                Ok(data) => match targets_down(&data, self.targets) {
                    Ok(down) if down.is_empty() => return Ok(()),
                    Ok(down) => down.join("; "),
                    Err(reason) => return Err(prometheus_error(what, reason)),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(self.timeout("every target up", timeout, last));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until every rule of the rule files has been evaluated at least once, and fails
    /// when a rule's evaluation errs (`/api/v1/rules`: health `err`, with its error) or when
    /// no rule is loaded at all.
    pub fn wait_rules_evaluated(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        let what = "list the rules";
        loop {
            let data = self.api("/api/v1/rules", what)?;
            let health = rules_health(&data).map_err(|reason| prometheus_error(what, reason))?;
            if health.rules == 0 {
                return Err(prometheus_error(what, "no rule is loaded".into()));
            }
            if !health.failed.is_empty() {
                return Err(prometheus_error(
                    what,
                    format!("rules failed: {}", health.failed.join("; ")),
                ));
            }
            if health.unevaluated.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last = format!("not evaluated yet: {}", health.unevaluated.join(", "));
                return Err(self.timeout("the first evaluation of every rule", timeout, last));
            }
            thread::sleep(POLL);
        }
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.server.log_path()
    }

    /// Stops it (what dropping it does).
    pub fn stop(mut self) {
        self.server.stop();
    }

    /// GET on its API, answered `{"status": "success", "data": ...}`: returns `data`.
    fn api(&self, path: &str, what: &str) -> Result<Value, LabError> {
        if !self.server.is_running() {
            return Err(prometheus_error(
                what,
                format!("it is not running; see {}", self.log_path().display()),
            ));
        }
        let response = in_netns(CONTROLLER_NS, || {
            http::get(PROMETHEUS_ADDR, path, None, None)
        })?
        .map_err(|reason| prometheus_error(what, reason))?;
        api_data(response.status, &response.body).map_err(|reason| prometheus_error(what, reason))
    }

    fn timeout(&self, what: &str, timeout: Duration, last: String) -> LabError {
        LabError::Timeout {
            what: format!("Prometheus: {what}"),
            timeout,
            last,
            logs: self.logs.clone(),
        }
    }
}

/// The Prometheus rules file inside a PrometheusRule manifest (the first document of kind
/// PrometheusRule in `manifest`): its `spec`, which has `groups` like a rules file.
///
/// `zero_holds` sets every rule's `for` to 0s, so that an alert fires at the first evaluation
/// that finds its condition: a lab run lasts seconds, not the minutes real holds ask for
/// (promtool's unit tests are the place to test those).
pub fn alert_rules(manifest: &str, zero_holds: bool) -> Result<String, LabError> {
    use serde::Deserialize as _;
    let bad = |reason: String| LabError::BadRules(reason);
    let mut spec = None;
    for doc in serde_yaml::Deserializer::from_str(manifest) {
        let doc = serde_yaml::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if doc["kind"] == "PrometheusRule" {
            spec = Some(doc["spec"].clone());
            break;
        }
    }
    let mut spec = spec.ok_or_else(|| bad("no document of kind PrometheusRule".into()))?;
    let groups = spec["groups"]
        .as_sequence_mut()
        .ok_or_else(|| bad("spec has no groups list".into()))?;
    if zero_holds {
        for group in groups {
            for rule in group["rules"].as_sequence_mut().into_iter().flatten() {
                if let Some(rule) = rule.as_mapping_mut()
                    && rule.contains_key("for")
                {
                    rule.insert("for".into(), "0s".into());
                }
            }
        }
    }
    serde_yaml::to_string(&spec).map_err(|e| bad(e.to_string()))
}

fn prometheus_error(what: &str, reason: String) -> LabError {
    LabError::Prometheus {
        what: what.into(),
        reason,
    }
}

/// The configuration, as JSON (which YAML reads as is): 1 s scrapes and evaluations, the
/// controller and the `nodes` agents, the rule files.
///
/// The controller is scraped over TLS (trusting the lab CA) with the reader token, which its
/// `/metrics` asks for with `--metrics-need-reader` (open by default).
fn config(nodes: usize, token_file: &Path, ca_file: &Path, rule_files: &[PathBuf]) -> String {
    let agents: Vec<Value> = (1..=nodes)
        .map(|i| {
            let addr = SocketAddr::new(node_addr(i, &ETH0, Family::Ipv4), AGENT_PORT);
            json!({"targets": [addr.to_string()], "labels": {"node": node_name(i)}})
        })
        .collect();
    let controller = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), CONTROLLER_PORT);
    let config = json!({
        "global": {
            "scrape_interval": INTERVAL,
            "scrape_timeout": INTERVAL,
            "evaluation_interval": INTERVAL,
        },
        "rule_files": rule_files,
        "scrape_configs": [
            {
                "job_name": CONTROLLER_JOB,
                "static_configs": [{"targets": [controller.to_string()]}],
                "authorization": {"credentials_file": token_file},
                "scheme": "https",
                "tls_config": {"ca_file": ca_file},
                // As deploy/monitoring's ServiceMonitor: the controller's per-agent `node`
                // label is the series' own.
                "honor_labels": true,
            },
            {"job_name": AGENT_JOB, "static_configs": agents},
        ],
    });
    // Pretty, for whoever reads prometheus/prometheus.yml in the lab directory.
    format!("{config:#}\n")
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query parameter.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The `data` of an API answer; an error answer gives its `errorType` and `error`.
fn api_data(status: u16, body: &str) -> Result<Value, String> {
    let answer: Value = serde_json::from_str(body)
        .map_err(|e| format!("HTTP {status}, not JSON ({e}): {}", excerpt(body)))?;
    if answer["status"] == "success" {
        return Ok(answer["data"].clone());
    }
    Err(format!(
        "HTTP {status}: {}: {}",
        answer["errorType"].as_str().unwrap_or("error"),
        answer["error"].as_str().unwrap_or(body)
    ))
}

/// The samples of a query's `data`: `{"resultType": ..., "result": ...}`.
fn parse_query_data(data: &Value) -> Result<Vec<Sample>, String> {
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("vector") => series(result)?
            .iter()
            .map(|s| {
                Ok(Sample {
                    labels: labels(&s["metric"])?,
                    value: sample_value(&s["value"])?,
                })
            })
            .collect(),
        Some("matrix") => series(result)?
            .iter()
            .map(|s| {
                let last = s["values"].as_array().and_then(|v| v.last());
                Ok(Sample {
                    labels: labels(&s["metric"])?,
                    value: sample_value(last.ok_or("a range series without values")?)?,
                })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: sample_value(result)?,
        }]),
        other => Err(format!("unexpected result type {other:?}")),
    }
}

fn series(result: &Value) -> Result<&Vec<Value>, String> {
    result
        .as_array()
        .ok_or_else(|| format!("result is not a list: {}", excerpt(&result.to_string())))
}

/// A label set: a JSON object of strings.
fn labels(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let object = v
        .as_object()
        .ok_or_else(|| format!("labels are not an object: {v}"))?;
    object
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.into())),
            None => Err(format!("label {k} is not a string: {v}")),
        })
        .collect()
}

/// `[timestamp, "value"]`; Prometheus writes values as strings (`"0.3"`, `"NaN"`, `"+Inf"`).
fn sample_value(v: &Value) -> Result<f64, String> {
    let text = v[1]
        .as_str()
        .ok_or_else(|| format!("not a [time, value] pair: {v}"))?;
    text.parse()
        .map_err(|_| format!("value {text:?} is not a number"))
}

fn parse_alerts(data: &Value) -> Result<Vec<Alert>, String> {
    let alerts = data["alerts"].as_array().ok_or("no alerts list")?;
    alerts
        .iter()
        .map(|a| {
            Ok(Alert {
                labels: labels(&a["labels"])?,
                state: a["state"]
                    .as_str()
                    .ok_or("an alert without a state")?
                    .into(),
            })
        })
        .collect()
}

/// The targets of `/api/v1/targets` not up yet, each as "job url: health (last error)", and
/// one entry for each of the `expected` targets not listed at all.
fn targets_down(data: &Value, expected: usize) -> Result<Vec<String>, String> {
    let active = data["activeTargets"]
        .as_array()
        .ok_or("no activeTargets list")?;
    let mut down: Vec<String> = active
        .iter()
        .filter(|t| t["health"] != "up")
        .map(|t| {
            format!(
                "{} {}: {} ({})",
                t["scrapePool"].as_str().unwrap_or("?"),
                t["scrapeUrl"].as_str().unwrap_or("?"),
                t["health"].as_str().unwrap_or("?"),
                t["lastError"].as_str().unwrap_or_default()
            )
        })
        .collect();
    if active.len() < expected {
        down.push(format!("{} of {expected} targets listed", active.len()));
    }
    Ok(down)
}

/// What `/api/v1/rules` says of the rules.
#[derive(Debug, Default, PartialEq)]
struct RulesHealth {
    rules: usize,
    /// "group/rule: error" of each rule whose last evaluation failed.
    failed: Vec<String>,
    /// "group/rule" of each rule not evaluated yet.
    unevaluated: Vec<String>,
}

fn rules_health(data: &Value) -> Result<RulesHealth, String> {
    let groups = data["groups"].as_array().ok_or("no groups list")?;
    let mut health = RulesHealth::default();
    for group in groups {
        let rules = group["rules"]
            .as_array()
            .ok_or("a group without a rules list")?;
        for rule in rules {
            health.rules += 1;
            let name = format!(
                "{}/{}",
                group["name"].as_str().unwrap_or("?"),
                rule["name"].as_str().unwrap_or("?")
            );
            match rule["health"].as_str() {
                Some("ok") => {}
                Some("err") => health.failed.push(format!(
                    "{name}: {}",
                    rule["lastError"].as_str().unwrap_or("no message")
                )),
                _ => health.unevaluated.push(name),
            }
        }
    }
    Ok(health)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_scrapes_the_controller_and_every_agent_with_node_labels() {
        let text = config(
            2,
            Path::new("/lab/token"),
            Path::new("/lab/ca.pem"),
            &["/lab/rules.yaml".into()],
        );
        let c: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(c["global"]["scrape_interval"], "1s");
        assert_eq!(c["global"]["evaluation_interval"], "1s");
        assert_eq!(c["rule_files"], json!(["/lab/rules.yaml"]));
        let jobs = &c["scrape_configs"];
        assert_eq!(jobs[0]["job_name"], "meshdoctor-controller");
        assert_eq!(
            jobs[0]["static_configs"][0]["targets"],
            json!(["[::1]:7070"])
        );
        assert_eq!(jobs[0]["authorization"]["credentials_file"], "/lab/token");
        assert_eq!(jobs[0]["scheme"], "https");
        assert_eq!(jobs[0]["tls_config"]["ca_file"], "/lab/ca.pem");
        assert_eq!(jobs[0]["honor_labels"], true);
        assert_eq!(jobs[1]["job_name"], "meshdoctor-agent");
        assert_eq!(
            jobs[1]["static_configs"][1],
            json!({"targets": ["192.0.2.2:9090"], "labels": {"node": "node-2"}})
        );
    }

    #[test]
    fn alert_rules_are_the_prometheusrule_spec_with_holds_optional() {
        let manifest = "# comment\nkind: ConfigMap\n---\napiVersion: monitoring.coreos.com/v1\n\
                        kind: PrometheusRule\nmetadata: {name: m}\nspec:\n  groups:\n  - name: g\n    \
                        rules:\n    - alert: A\n      expr: up == 0\n      for: 5m\n    \
                        - record: r\n      expr: sum(up)\n";
        let held: serde_yaml::Value =
            serde_yaml::from_str(&alert_rules(manifest, false).unwrap()).unwrap();
        assert_eq!(held["groups"][0]["rules"][0]["for"], "5m");
        assert!(held.get("metadata").is_none());
        let zero: serde_yaml::Value =
            serde_yaml::from_str(&alert_rules(manifest, true).unwrap()).unwrap();
        assert_eq!(zero["groups"][0]["rules"][0]["for"], "0s");
        assert!(zero["groups"][0]["rules"][1].get("for").is_none());
        assert!(alert_rules("kind: ConfigMap\n", true).is_err());
        assert!(alert_rules("kind: PrometheusRule\nspec: {}\n", true).is_err());
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            url_encode(r#"sum by (node) (rate(x{a=~"b.*"}[5m])) > 0.1"#),
            "sum%20by%20%28node%29%20%28rate%28x%7Ba%3D~%22b.%2A%22%7D%5B5m%5D%29%29%20%3E%200.1"
        );
    }

    #[test]
    fn query_results_of_every_type() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"node": "node-2"}, "value": [1.5, "0.3"]},
            {"metric": {}, "value": [1.5, "NaN"]},
            {"metric": {}, "value": [1.5, "+Inf"]},
        ]});
        let samples = parse_query_data(&vector).unwrap();
        assert_eq!(samples[0].label("node"), Some("node-2"));
        assert_eq!(samples[0].value, 0.3);
        assert!(samples[1].value.is_nan());
        assert_eq!(samples[2].value, f64::INFINITY);
        let scalar = json!({"resultType": "scalar", "result": [1.5, "2"]});
        assert_eq!(parse_query_data(&scalar).unwrap()[0].value, 2.0);
        let matrix = json!({"resultType": "matrix", "result": [
            {"metric": {"a": "b"}, "values": [[1, "1"], [2, "5"]]},
        ]});
        assert_eq!(parse_query_data(&matrix).unwrap()[0].value, 5.0);
        assert!(parse_query_data(&json!({"resultType": "string", "result": [1, "x"]})).is_err());
        let bad = json!({"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]});
        assert!(parse_query_data(&bad).is_err());
    }

    #[test]
    fn api_errors_carry_prometheus_message() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert_eq!(
            api_data(400, body).unwrap_err(),
            "HTTP 400: bad_data: parse error at char 3"
        );
        assert!(api_data(502, "<html>").unwrap_err().contains("not JSON"));
        assert_eq!(
            api_data(200, r#"{"status":"success","data":[]}"#).unwrap(),
            json!([])
        );
    }

    #[test]
    fn targets_and_rules_health() {
        let targets = json!({"activeTargets": [
            {"scrapePool": "meshdoctor-agent", "scrapeUrl": "http://192.0.2.1:9090/metrics",
             "health": "down", "lastError": "connection refused"},
            {"scrapePool": "meshdoctor-controller", "health": "up"},
        ]});
        assert_eq!(
            targets_down(&targets, 3).unwrap(),
            [
                "meshdoctor-agent http://192.0.2.1:9090/metrics: down (connection refused)",
                "2 of 3 targets listed"
            ]
        );
        let rules = json!({"groups": [{"name": "g", "rules": [
            {"name": "A", "health": "ok"},
            {"name": "B", "health": "err", "lastError": "many-to-many matching"},
            {"name": "C", "health": "unknown"},
        ]}]});
        assert_eq!(
            rules_health(&rules).unwrap(),
            RulesHealth {
                rules: 3,
                failed: vec!["g/B: many-to-many matching".into()],
                unevaluated: vec!["g/C".into()],
            }
        );
        let alerts = json!({"alerts": [{"labels": {"alertname": "X"}, "state": "firing"}]});
        assert_eq!(parse_alerts(&alerts).unwrap()[0].state, "firing");
    }
}
