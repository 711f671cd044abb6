//! deploy/monitoring proven against the real thing: promtool checks and unit-tests the alert
//! rules, and a real Prometheus (meshdoctor_lab::Prometheus, in the lab's controller namespace)
//! scrapes a lab run and evaluates every dashboard panel's expression, every dashboard variable
//! and every rule.
//!
//! - A faulty run (node-2's net1 dropping ~30% of the IPv4 echo packets it receives, in its
//!   stack): every panel, variable and recording rule returns data, every alert expression
//!   evaluates and each series selector in it matches series, the faulty interface tops every
//!   "loss" panel, and MeshdoctorInterfaceLoss fires for it and for nothing else; at the end an
//!   agent is killed and MeshdoctorAgentDown must name its node.
//! - A healthy run (a fresh lab and a fresh TSDB): every expression still evaluates, and no
//!   alert fires.
//!
//! Both runs also run an AppHttpHealthy task against an nginx in the lab, so the application
//! panels have series.
//!
//! Prometheus and promtool come from `cargo xtask setup` (Debian's `prometheus`). Without them
//! a test is skipped with a message, unless it runs under `cargo xtask test` or in CI, where a
//! missing tool fails it. The lab runs need root, like every lab test.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use meshdoctor_e2e::{can_run, find_program, start_nginx, tools_present, workspace_root};
use meshdoctor_lab::{Lab, LabConfig, LabServer, MeshTask, Prometheus, Sample, alert_rules};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// deploy/monitoring, relative to the workspace root.
const MONITORING: &str = "deploy/monitoring";
/// The name rules-test.yaml's `rule_files` gives the rules (the PrometheusRule's spec).
const RULES_FILE: &str = "meshdoctor-rules.yaml";
/// The injected fault: node-2's net1 drops 30% of the IPv4 echo packets it receives, in its
/// own stack (netfilter input), so the kernel's drop reason (NETFILTER_DROP) reaches the
/// drop-reason metrics as well as the loss and localization ones.
const FAULT: &str = "node-2:net1:ingress:ipv4:30:stack";
const FAULTY_NODE: &str = "node-2";
const FAULTY_INTERFACE: &str = "net1";
/// The faulty interface's network and family, for the loss panels that carry them.
const FAULTY_NETWORK: &str = "net1";
const FAULTY_FAMILY: &str = "ipv4";
/// The agent the faulty run kills at its end, and the alert that must then name its node.
const KILLED_NODE: &str = "node-4";
const DOWN_ALERT: &str = "MeshdoctorAgentDown";
/// The application task, so that the application panels have series: every agent loads a page
/// from nginx at [`WEB_ADDR`] (the controller namespace's eth0).
const APP_TASK: &str = "web";
const WEB_ADDR: &str = "192.0.2.254:8080";
/// The alert that must name the faulty interface, and nothing else.
const INTERFACE_ALERT: &str = "MeshdoctorInterfaceLoss";
/// The lab's nodes are in two zones (node-1 and node-2 in zone-1), so the series carry zones;
/// its fault is one interface's, so no loss follows the zones and the domain-pair series
/// (`meshdoctor_zone_loss_ratio`, absent unless a round finds such loss) stays absent. The
/// controller's localization tests and `cargo xtask bench scale` (zone faults) produce it.
const ZONES: usize = 2;
const ABSENT_WITHOUT_ZONE_LOSS: &str = "meshdoctor_zone_loss_ratio";
/// The mesh task: a round every 4 s, 50 probes/s for 2 s per pair-path, interface and family
/// (as the localization suite, which finds a 30% fault in a round), [`ROUNDS`] rounds.
const TASK: &str = "mesh";
const QPS: u32 = 50;
const SECS: u32 = 2;
const ROUNDS: u32 = 3;
/// Dashboard variables and what they stand for here: every task, network and family, and
/// Grafana's intervals at a 1 h range.
const VARIABLES: [(&str, &str); 6] = [
    ("task", ".*"),
    ("network", ".*"),
    ("family", ".*"),
    ("__rate_interval", "5m"),
    ("__range", "1h"),
    ("__interval", "15s"),
];
/// Bounds of the waits: every one has a timeout.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
const TARGETS_TIMEOUT: Duration = Duration::from_secs(20);
const RULES_TIMEOUT: Duration = Duration::from_secs(20);
const ALERT_TIMEOUT: Duration = Duration::from_secs(20);
/// After the last round: a few scrapes and rule evaluations (both every second).
const SETTLE: Duration = Duration::from_secs(4);

/// `program`'s path (on PATH or in an sbin directory, where Debian puts nginx). Without it the
/// test is skipped with a message, unless it runs under `cargo xtask test` (which runs setup
/// and sets MESHDOCTOR_BIN_DIR) or in CI, where setup has installed it and its absence fails
/// the test.
fn tool(test: &str, program: &str) -> Option<PathBuf> {
    let found = find_program(program);
    let missing = if found.is_none() { program } else { "" };
    found.filter(|_| tools_present(test, missing))
}

/// The rules file inside prometheusrule.yaml (the PrometheusRule's `spec`); `zero_holds`:
/// every `for` set to 0s.
fn rules_text(zero_holds: bool) -> String {
    let path = workspace_root()
        .join(MONITORING)
        .join("prometheusrule.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    alert_rules(&text, zero_holds).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rules file, parsed.
fn rules() -> Yaml {
    serde_yaml::from_str(&rules_text(false)).expect("the rules file is YAML")
}

/// Writes `rules` (a rules file's text) as `dir/meshdoctor-rules.yaml` and returns its path.
fn write_rules(dir: &Path, rules: &str) -> PathBuf {
    let path = dir.join(RULES_FILE);
    fs::write(&path, rules).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// Runs `program args` in `dir`; a failure panics with its output.
fn run_in(dir: &Path, program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{} {}` in {} failed ({}):\n{text}",
        program.display(),
        args.join(" "),
        dir.display(),
        out.status
    );
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let test = "alert_rules_pass_promtool_check_and_unit_tests";
    let Some(promtool) = tool(test, "promtool") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("meshdoctor-monitoring-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    write_rules(&dir, &rules_text(false));
    let tests = workspace_root().join(MONITORING).join("rules-test.yaml");
    fs::copy(&tests, dir.join("rules-test.yaml"))
        .unwrap_or_else(|e| panic!("{}: {e}", tests.display()));
    eprint!(
        "{}",
        run_in(&dir, &promtool, &["check", "rules", RULES_FILE])
    );
    eprint!(
        "{}",
        run_in(&dir, &promtool, &["test", "rules", "rules-test.yaml"])
    );
    let _ = fs::remove_dir_all(&dir);
}

/// What an expression belongs to, which decides what its answer must be.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// A dashboard panel's query; `loss` when the panel's title says "loss".
    Panel { loss: bool },
    /// A dashboard variable's query (`label_values` as the series it reads).
    Variable,
    /// A recording rule.
    Record,
    /// An alerting rule.
    Alert,
}

/// One expression to evaluate, its variables substituted.
#[derive(Debug, Clone)]
struct Expr {
    /// Where it comes from, for the failure messages: file, panel and query, or rule.
    place: String,
    kind: Kind,
    expr: String,
}

/// Every expression of deploy/monitoring: each dashboard's panel queries (rows included) and
/// query variables, and each rule.
fn expressions(rules: &Yaml) -> Vec<Expr> {
    let mut exprs = Vec::new();
    let dir = workspace_root().join(MONITORING).join("dashboards");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dashboards entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    for file in files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let dashboard: Json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut panels = Vec::new();
        collect_panels(&dashboard, &mut panels);
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            let loss = title.to_lowercase().contains("loss");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                    continue;
                };
                let place = format!(
                    "{name} panel {title:?} query {}",
                    target["refId"].as_str().unwrap_or("?")
                );
                exprs.push(substituted(place, Kind::Panel { loss }, expr));
            }
        }
        for var in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if var["type"] != "query" {
                continue;
            }
            let query = var["query"]["query"].as_str().or(var["query"].as_str());
            let var_name = var["name"].as_str().unwrap_or("?");
            let place = format!("{name} variable ${var_name}");
            let expr = query.and_then(label_values_expr).unwrap_or_else(|| {
                panic!("{place}: query {:?} is not label_values(...)", var["query"])
            });
            exprs.push(substituted(place, Kind::Variable, &expr));
        }
    }
    for group in rules["groups"].as_sequence().expect("rules: groups").iter() {
        let group_name = group["name"].as_str().unwrap_or("?");
        for rule in group["rules"]
            .as_sequence()
            .expect("rules: a group's rules")
        {
            let expr = rule["expr"].as_str().expect("a rule's expr").to_string();
            let (kind, name) = match (rule["alert"].as_str(), rule["record"].as_str()) {
                (Some(alert), _) => (Kind::Alert, alert),
                (None, Some(record)) => (Kind::Record, record),
                (None, None) => panic!("rule group {group_name}: a rule neither alert nor record"),
            };
            let place = format!("rule {name} (group {group_name})");
            exprs.push(Expr { place, kind, expr });
        }
    }
    exprs
}

/// The panels of a dashboard, those in rows (collapsed rows nest them) included.
fn collect_panels<'a>(node: &'a Json, out: &mut Vec<&'a Json>) {
    for key in ["panels", "rows"] {
        for panel in node[key].as_array().into_iter().flatten() {
            if panel["targets"].is_array() {
                out.push(panel);
            }
            collect_panels(panel, out);
        }
    }
}

/// Grafana's `label_values(SELECTOR, LABEL)` (or `label_values(LABEL)`) as the PromQL that
/// reads the same series: `group by (LABEL) (SELECTOR)`.
fn label_values_expr(query: &str) -> Option<String> {
    let args = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    Some(match args.rsplit_once(',') {
        Some((selector, label)) => format!("group by ({}) ({selector})", label.trim()),
        None => format!("group by ({0}) ({{{0}!=\"\"}})", args.trim()),
    })
}

/// `expr` with the dashboard variables replaced ([`VARIABLES`]); an unknown variable fails the
/// test, naming `place`.
fn substituted(place: String, kind: Kind, expr: &str) -> Expr {
    match substitute(expr) {
        Ok(expr) => Expr { place, kind, expr },
        Err(var) => panic!("{place}: unknown variable ${var} in `{expr}`"),
    }
}

/// Replaces `$name` and `${name}` (`${name:format}` too) by [`VARIABLES`]; a `$` not followed
/// by a name (a regex anchor) stays. Err: the first unknown variable's name.
fn substitute(expr: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or_else(|| after.to_string())?;
                let name = braced[..end].split(':').next().unwrap_or_default();
                (name, end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        if name.is_empty() {
            out.push('$');
        } else {
            let value = VARIABLES.iter().find(|(n, _)| *n == name).ok_or(name)?;
            out.push_str(value.1);
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// PromQL words that are not metric names: aggregations (which may precede their `by` clause
/// rather than a parenthesis), binary operators and modifiers, and the number literals.
const KEYWORDS: &str = "sum min max avg group stddev stdvar count count_values bottomk topk \
                        quantile and or unless bool offset inf nan";
/// Keywords followed by a parenthesized label list.
const LABEL_LISTS: &str = "by without on ignoring group_left group_right";

fn is_one_of(words: &str, word: &str) -> bool {
    words
        .split_whitespace()
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// The series selectors of a PromQL expression (`name{matchers}`, without their range), so an
/// empty answer can say which selector matches nothing. A lexer, not a parser: strings, ranges,
/// numbers, function calls and label lists are skipped.
fn selectors(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    let skip_string = |mut i: usize| {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    let skip_to = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            i = if matches!(chars[i], '"' | '\'' | '`') {
                skip_string(i)
            } else {
                i + 1
            };
        }
        i + 1
    };
    let next_non_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(i);
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '{' {
            let end = skip_to(i, '}').min(chars.len());
            found.push(chars[i..end].iter().collect());
            i = end;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = next_non_space(i);
            if is_one_of(LABEL_LISTS, &word) && chars.get(next) == Some(&'(') {
                i = skip_to(next, ')');
            } else if chars.get(next) == Some(&'(')
                || is_one_of(KEYWORDS, &word)
                || is_one_of(LABEL_LISTS, &word)
            {
                // A function call (its arguments are read on), or a keyword.
            } else if chars.get(next) == Some(&'{') {
                let end = skip_to(next, '}').min(chars.len());
                found.push(format!(
                    "{word}{}",
                    chars[next..end].iter().collect::<String>()
                ));
                i = end;
            } else {
                found.push(word);
            }
        } else {
            i += 1;
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The selectors of `expr` that match no series now (but for [`ABSENT_WITHOUT_ZONE_LOSS`]).
fn empty_selectors(prom: &Prometheus, expr: &str) -> Vec<String> {
    selectors(expr)
        .into_iter()
        .filter(|s| !s.starts_with(ABSENT_WITHOUT_ZONE_LOSS))
        .filter(|s| prom.query(s).is_ok_and(|r| r.is_empty()))
        .collect()
}

/// Evaluates every expression; returns the answers and, as problems, every evaluation error.
fn evaluate(prom: &Prometheus, exprs: &[Expr], problems: &mut Vec<String>) -> Vec<Vec<Sample>> {
    exprs
        .iter()
        .map(|e| match prom.query(&e.expr) {
            Ok(samples) => samples,
            Err(err) => {
                problems.push(format!("{}: `{}` failed: {err}", e.place, e.expr));
                Vec::new()
            }
        })
        .collect()
}

/// A lab run scraped by Prometheus. Fields drop in order: Prometheus and nginx before the lab.
struct Run {
    prom: Prometheus,
    _nginx: LabServer,
    lab: Lab,
}

/// A 4-node lab (pair metrics on) running the mesh task with `faults` and the application
/// task against an nginx in the lab, and a fresh Prometheus scraping it with the hold-free
/// rules; returned after the tasks' last rounds and a few scrapes and evaluations.
fn lab_with_prometheus(faults: &[&str], nginx: &Path) -> Run {
    let mut cfg = LabConfig::new(4);
    cfg.zones = ZONES;
    cfg.controller_args = vec!["--pair-metrics".into()];
    let task = MeshTask {
        schedule: "@every 4s",
        rounds: ROUNDS.into(),
        ..MeshTask::new(TASK, QPS, SECS)
    };
    cfg.tasks = vec![("mesh.yaml".into(), task.yaml())];
    cfg.faults = faults
        .iter()
        .map(|f| f.parse().expect("fault spec"))
        .collect();
    let lab = Lab::up(cfg).expect("lab up");
    // Every `for` hold 0s, so an alert fires at the first evaluation that finds its condition:
    // the run lasts seconds. The holds are covered by promtool's unit tests (rules-test.yaml,
    // alert_rules_pass_promtool_check_and_unit_tests).
    let rules = write_rules(lab.dir(), &rules_text(true));
    let prom = Prometheus::start(&lab, &[rules]).expect("Prometheus start");
    let nginx = start_web(&lab, nginx);
    lab.add_task("web.yaml", &app_task_yaml())
        .expect("add the application task");
    prom.wait_targets_up(TARGETS_TIMEOUT)
        .expect("scrape targets up");
    for round in 1..=ROUNDS {
        let report = lab
            .wait_round(TASK, round, ROUND_TIMEOUT)
            .expect("round report");
        eprintln!(
            "{TASK} round {round}: {:?}, {} findings",
            report.status,
            report.findings.len()
        );
    }
    let app = lab
        .wait_round(APP_TASK, 1, ROUND_TIMEOUT)
        .expect("application round report");
    eprintln!(
        "{APP_TASK} round 1: {:?} {:?}",
        app.status, app.failure_reasons
    );
    thread::sleep(SETTLE);
    prom.wait_rules_evaluated(RULES_TIMEOUT)
        .expect("rules evaluated without error");
    Run {
        prom,
        _nginx: nginx,
        lab,
    }
}

/// nginx in the controller's namespace answering 200 on [`WEB_ADDR`], its files in
/// `<lab dir>/nginx`.
fn start_web(lab: &Lab, nginx: &Path) -> LabServer {
    let dir = lab.dir().join("nginx");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let server =
        format!("  server {{ listen {WEB_ADDR}; location / {{ return 200 \"ok\\n\"; }} }}\n");
    let mut server = start_nginx(lab, nginx, "nginx", &dir, &server);
    let addr = WEB_ADDR.parse().expect("WEB_ADDR");
    server
        .wait_listening(addr, Duration::from_secs(10))
        .expect("nginx listening");
    server
}

/// One AppHttpHealthy round: every agent GETs nginx 10 times a second for 2 s.
fn app_task_yaml() -> String {
    format!(
        "apiVersion: meshdoctor.io/v1beta1
kind: AppHttpHealthy
metadata:
  name: {APP_TASK}
spec:
  schedule:
    schedule: \"0 1\"
    roundNumber: 1
  request:
    qps: 10
    durationInSecond: 2
    perRequestTimeoutInMS: 1000
  expect:
    successRate: 1
    statusCode: 200
  target:
    host: http://{WEB_ADDR}/
    method: GET
"
    )
}

/// What is wrong with the top series of a loss panel, if anything: it must be the faulty
/// node's (as `node`, or as one end of a pair), and its interface, network and family, where
/// it has those labels, the faulty interface's.
fn top_series_problem(top: &Sample) -> Option<String> {
    let node_ok = match top.label("node") {
        Some(node) => node == FAULTY_NODE,
        None if top.label("src_node").is_some() || top.label("dst_node").is_some() => {
            top.label("src_node") == Some(FAULTY_NODE) || top.label("dst_node") == Some(FAULTY_NODE)
        }
        None => return Some("its top series has no node (nor src_node/dst_node) label".into()),
    };
    let wanted = [
        ("interface", FAULTY_INTERFACE),
        ("network", FAULTY_NETWORK),
        ("family", FAULTY_FAMILY),
    ];
    let labels_ok = wanted
        .iter()
        .all(|(name, value)| top.label(name).is_none_or(|v| v == *value));
    (!(node_ok && labels_ok)).then(|| {
        format!(
            "its top series is {:?} = {}, not {FAULTY_NODE}'s {FAULTY_INTERFACE} ({FAULTY_FAMILY})",
            top.labels, top.value
        )
    })
}

/// The firing alerts once `alert` is among them, or when [`ALERT_TIMEOUT`] has passed.
fn wait_firing(prom: &Prometheus, alert: &str) -> Vec<Sample> {
    let deadline = Instant::now() + ALERT_TIMEOUT;
    loop {
        let alerts = firing(prom);
        if alerts.iter().any(|a| a.label("alertname") == Some(alert)) || Instant::now() >= deadline
        {
            return alerts;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The firing alerts, from `ALERTS{alertstate="firing"}`.
fn firing(prom: &Prometheus) -> Vec<Sample> {
    prom.query(r#"ALERTS{alertstate="firing"}"#)
        .expect("query ALERTS")
}

fn describe(alerts: &[Sample]) -> String {
    alerts.iter().fold(String::new(), |mut s, a| {
        let _ = write!(s, "\n  {:?}", a.labels);
        s
    })
}

/// deploy/monitoring's expressions and a lab run with `faults`; `None` when the test is
/// skipped (not root, or a tool missing outside CI and `cargo xtask test`).
fn run_or_skip(test: &str, faults: &[&str]) -> Option<(Vec<Expr>, Run)> {
    let (Some(_), Some(nginx)) = (tool(test, "prometheus"), tool(test, "nginx")) else {
        return None;
    };
    if !can_run(test) {
        return None;
    }
    let exprs = expressions(&rules());
    Some((exprs, lab_with_prometheus(faults, &nginx)))
}

/// Fails listing every problem found, after saying how long the test took.
fn assert_no_problems(prom: &Prometheus, problems: &[String], started: Instant) {
    eprintln!("{:.1} s", started.elapsed().as_secs_f64());
    assert!(
        problems.is_empty(),
        "{} problems (Prometheus log: {}):\n  {}",
        problems.len(),
        prom.log_path().display(),
        problems.join("\n  ")
    );
}

#[test]
fn faulty_interface_tops_the_loss_panels_and_fires_its_alert() {
    let started = Instant::now();
    let test = "faulty_interface_tops_the_loss_panels_and_fires_its_alert";
    let Some((exprs, run)) = run_or_skip(test, &[FAULT]) else {
        return;
    };
    let mut run = run;
    let prom = &run.prom;
    // The alert first: waiting for it gives every rule a few more evaluations.
    let alerts = wait_firing(prom, INTERFACE_ALERT);
    eprintln!("firing alerts:{}", describe(&alerts));

    let mut problems = Vec::new();
    let answers = evaluate(prom, &exprs, &mut problems);
    for (e, samples) in exprs.iter().zip(&answers) {
        if e.kind == Kind::Alert {
            // An alert's expression is empty unless it fires; what must hold is that each of
            // its series selectors reads series the lab really exports.
            let empty = empty_selectors(prom, &e.expr);
            if !empty.is_empty() {
                problems.push(format!(
                    "{}: selectors matching no series: {empty:?} in `{}`",
                    e.place, e.expr
                ));
            }
            continue;
        }
        if samples.is_empty() {
            problems.push(format!(
                "{}: no data from `{}` (selectors matching no series: {:?})",
                e.place,
                e.expr,
                empty_selectors(prom, &e.expr)
            ));
            continue;
        }
        if e.kind == (Kind::Panel { loss: true }) {
            let top = samples
                .iter()
                .filter(|s| !s.value.is_nan())
                .max_by(|a, b| a.value.total_cmp(&b.value));
            match top.map(top_series_problem) {
                None => problems.push(format!("{}: only NaN from `{}`", e.place, e.expr)),
                Some(Some(problem)) => {
                    problems.push(format!("{}: {problem}; `{}`", e.place, e.expr))
                }
                Some(None) => {}
            }
        }
    }
    let interface_alerts: Vec<&Sample> = alerts
        .iter()
        .filter(|a| a.label("alertname") == Some(INTERFACE_ALERT))
        .collect();
    if interface_alerts.is_empty() {
        problems.push(format!("{INTERFACE_ALERT} is not firing for {FAULT}"));
    }
    for a in interface_alerts {
        // node-2 is in the first of the two zones: the agent's --zone reached the finding.
        if a.label("node") != Some(FAULTY_NODE)
            || a.label("interface") != Some(FAULTY_INTERFACE)
            || a.label("zone") != Some("zone-1")
        {
            problems.push(format!(
                "{INTERFACE_ALERT} fires for {:?}, which is not faulty",
                a.labels
            ));
        }
    }
    let drops = run
        .lab
        .fault_drops(&FAULT.parse().expect("fault spec"))
        .unwrap_or_default();
    eprintln!("the fault dropped {drops} packets");

    // An agent that dies: its target goes down and MeshdoctorAgentDown names its node.
    run.lab.kill(KILLED_NODE).expect("kill an agent");
    let down: Vec<Sample> = wait_firing(prom, DOWN_ALERT)
        .into_iter()
        .filter(|a| a.label("alertname") == Some(DOWN_ALERT))
        .collect();
    if down.is_empty() || down.iter().any(|a| a.label("node") != Some(KILLED_NODE)) {
        problems.push(format!(
            "{KILLED_NODE}'s agent is killed; {DOWN_ALERT} fires for:{}",
            describe(&down)
        ));
    }
    assert_no_problems(prom, &problems, started);
}

#[test]
fn healthy_lab_evaluates_every_expression_and_fires_no_alert() {
    let started = Instant::now();
    let test = "healthy_lab_evaluates_every_expression_and_fires_no_alert";
    let Some((exprs, run)) = run_or_skip(test, &[]) else {
        return;
    };
    let prom = &run.prom;
    let mut problems = Vec::new();
    let answers = evaluate(prom, &exprs, &mut problems);
    let mut summary: BTreeMap<bool, Vec<&str>> = BTreeMap::new();
    for (e, samples) in exprs.iter().zip(&answers) {
        summary
            .entry(!samples.is_empty())
            .or_default()
            .push(&e.place);
    }
    for (data, places) in summary.iter().rev() {
        let what = if *data { "data" } else { "no data" };
        eprintln!("{what} ({}):\n  {}", places.len(), places.join("\n  "));
    }
    // Every process scraped says which build it runs: this one.
    let builds = prom.query("meshdoctor_build_info").unwrap_or_default();
    let components: BTreeSet<&str> = builds
        .iter()
        .filter(|s| s.label("commit") == Some(meshdoctor_ops::COMMIT))
        .filter_map(|s| s.label("component"))
        .collect();
    if components != BTreeSet::from(["agent", "controller"]) {
        problems.push(format!(
            "meshdoctor_build_info of commit {} names components {components:?}, not the \
             agent and the controller",
            meshdoctor_ops::COMMIT
        ));
    }
    let alerts = firing(prom);
    if !alerts.is_empty() {
        problems.push(format!(
            "alerts fire on a healthy lab:{}",
            describe(&alerts)
        ));
    }
    assert_no_problems(prom, &problems, started);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_variables_are_substituted() {
        assert_eq!(
            substitute(
                r#"sum by (node) (rate(x{task=~"$task",family=~"${family}"}[$__rate_interval]))"#
            )
            .unwrap(),
            r#"sum by (node) (rate(x{task=~".*",family=~".*"}[5m]))"#
        );
        assert_eq!(
            substitute(r#"increase(y{job=~"a$"}[$__range]) / ${network:regex}"#).unwrap(),
            r#"increase(y{job=~"a$"}[1h]) / .*"#
        );
        assert_eq!(substitute("z[$__range_s]").unwrap_err(), "__range_s");
    }

    #[test]
    fn selectors_are_found_and_the_rest_skipped() {
        let expr = r#"max by (node, interface) (rate(meshdoctor_probes_lost_total{task=~".*", role="source"}[5m]))
            / on (node) group_left sum without (x) (rate(meshdoctor_probes_sent_total[5m]) offset 1m) > 0.05
            and up{job=~"(.*/)?meshdoctor-agent"} == 0 or vector(1) * 1e3 + histogram_quantile(0.9, b_bucket)"#;
        assert_eq!(
            selectors(expr),
            [
                "b_bucket",
                r#"meshdoctor_probes_lost_total{task=~".*", role="source"}"#,
                "meshdoctor_probes_sent_total",
                r#"up{job=~"(.*/)?meshdoctor-agent"}"#,
            ]
        );
        assert_eq!(selectors(r#"{__name__=~"a|b"}"#), [r#"{__name__=~"a|b"}"#]);
    }

    #[test]
    fn label_values_become_a_grouping() {
        assert_eq!(
            label_values_expr("label_values(meshdoctor_rounds_total{x=\"y\"}, task)").unwrap(),
            "group by (task) (meshdoctor_rounds_total{x=\"y\"})"
        );
        assert_eq!(
            label_values_expr("label_values(family)").unwrap(),
            "group by (family) ({family!=\"\"})"
        );
        assert_eq!(label_values_expr("query_result(up)"), None);
    }

    #[test]
    fn the_top_loss_series_must_be_the_faulty_interface() {
        let sample = |labels: &[(&str, &str)]| Sample {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: 0.3,
        };
        assert_eq!(
            top_series_problem(&sample(&[("node", "node-2"), ("interface", "net1")])),
            None
        );
        assert_eq!(
            top_series_problem(&sample(&[("src_node", "node-1"), ("dst_node", "node-2")])),
            None
        );
        assert!(
            top_series_problem(&sample(&[("node", "node-2"), ("interface", "eth0")])).is_some()
        );
        assert!(top_series_problem(&sample(&[("node", "node-2"), ("family", "ipv6")])).is_some());
        assert!(top_series_problem(&sample(&[("interface", "net1")])).is_some());
    }
}
