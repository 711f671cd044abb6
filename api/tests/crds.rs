//! The task CRDs generated from the api types (`crd` feature): the YAML committed under
//! `deploy/crds/` is current, the schemas are structural, and every CEL rule
//! (`x-kubernetes-validations`) compiles, stays within a cost estimate and agrees with the Rust
//! validation of the same spec, both ways.
//!
//! The rules run client-side in kube's `cel` feature (the kube-cel crate: Kubernetes' CEL
//! libraries, the schema's defaults applied first as the apiserver does). It evaluates only
//! the CEL rules, not the OpenAPI keywords (`required`, `minimum`, `enum`, `pattern`): those
//! come from schemars attributes and are pinned by the committed YAML.

#![cfg(feature = "crd")]

use std::{collections::BTreeSet, path::Path};

use kube::{
    CustomResourceExt,
    core::cel::{ErrorKind, ScopeContext, Validator, analyze_rule, compile_schema},
};
use meshdoctor_api::task::{
    AppHttpHealthyResource, NetDnsResource, NetReachResource, Task, crd_files,
};
use serde_json::{Value, json};

const KINDS: [&str; 3] = ["NetReach", "AppHttpHealthy", "NetDns"];

/// The openAPIV3Schema of a kind's CRD.
fn schema(kind: &str) -> Value {
    let crd = match kind {
        "NetReach" => NetReachResource::crd(),
        "AppHttpHealthy" => AppHttpHealthyResource::crd(),
        "NetDns" => NetDnsResource::crd(),
        other => panic!("no CRD for {other}"),
    };
    let version = &crd.spec.versions[0];
    let props = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(props.expect("a generated schema")).unwrap()
}

/// Every schema node below `node` (itself included), with its path.
fn nodes<'a>(path: String, node: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), node));
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            nodes(format!("{path}.{name}"), child, out);
        }
    }
    if let Some(items) = node.get("items") {
        nodes(format!("{path}[]"), items, out);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        nodes(format!("{path}{{}}"), values, out);
    }
}

fn all_nodes(schema: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    nodes(String::new(), schema, &mut out);
    out
}

#[test]
fn committed_crds_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (file, want) in crd_files().unwrap() {
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            have == want,
            "deploy/crds/{file} differs from the api task types: run `cargo xtask crds` and \
             commit the result"
        );
    }
}

/// What Kubernetes requires of a CRD schema ("structural") and what kube's rewrite of the
/// schemars output must have left out.
#[test]
fn schemas_are_structural() {
    for kind in KINDS {
        let schema = schema(kind);
        for (path, node) in all_nodes(&schema) {
            let at = format!("{kind} schema at {path:?}");
            let obj = node
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object"));
            for key in [
                "$ref",
                "$schema",
                "$defs",
                "definitions",
                "allOf",
                "anyOf",
                "oneOf",
                "not",
            ] {
                assert!(!obj.contains_key(key), "{at}: has {key}");
            }
            assert!(
                obj.contains_key("type")
                    || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)),
                "{at}: no type"
            );
            assert!(
                !(obj.contains_key("properties") && obj.contains_key("additionalProperties")),
                "{at}: properties next to additionalProperties"
            );
            assert_ne!(obj.get("uniqueItems"), Some(&json!(true)), "{at}");
            if obj.get("x-kubernetes-list-type") == Some(&json!("map")) {
                let required = &node["items"]["required"];
                for key in obj["x-kubernetes-list-map-keys"].as_array().unwrap() {
                    let listed = required.as_array().is_some_and(|r| r.contains(key));
                    assert!(listed, "{at}: map key {key} must be required");
                }
            }
        }
        let spec = &schema["properties"]["spec"]["properties"];
        assert_eq!(
            spec["agentSpec"]["x-kubernetes-preserve-unknown-fields"],
            json!(true),
            "{kind}: agentSpec is kept as written"
        );
    }
}

/// Field names and defaults as the task files spell them.
#[test]
fn fields_are_camel_case_with_the_serde_defaults() {
    let reach = schema("NetReach");
    let spec = &reach["properties"]["spec"]["properties"];
    assert_eq!(
        spec["request"]["properties"]["perRequestTimeoutInMS"]["default"],
        500
    );
    assert_eq!(
        spec["request"]["properties"]["protocol"]["enum"],
        json!(["icmp", "udp", "tcp", "http"])
    );
    assert_eq!(spec["request"]["properties"]["qps"]["maximum"], 1000.0);
    assert_eq!(spec["target"]["properties"]["clusterIP"]["type"], "boolean");
    assert_eq!(spec["target"]["default"]["ipv4"], true);
    assert_eq!(
        spec["schedule"]["default"],
        json!({"schedule": "0 1", "roundNumber": 1})
    );
    assert_eq!(spec["expect"]["properties"]["successRate"]["maximum"], 1.0);
    let dns = schema("NetDns");
    let spec = &dns["properties"]["spec"];
    assert_eq!(
        spec["properties"]["request"]["properties"]["protocol"]["enum"],
        json!(["udp", "tcp", "tcp-tls"])
    );
    assert!(spec["properties"]["target"].get("default").is_none());
    assert!(
        spec["required"]
            .as_array()
            .unwrap()
            .contains(&json!("target"))
    );
    let target = &spec["properties"]["target"]["properties"]["targetDns"]["properties"];
    assert_eq!(target["testIPv4"]["default"], true);
    let http = schema("AppHttpHealthy");
    let target = &http["properties"]["spec"]["properties"]["target"]["properties"];
    assert_eq!(target["method"]["enum"].as_array().unwrap().len(), 8);
    assert_eq!(target["header"]["items"]["type"], "string");
    assert_eq!(
        http["properties"]["status"]["properties"]["conditions"]["x-kubernetes-list-type"],
        "map"
    );
}

/// Every rule compiles, uses only what a CRD rule may (`self`, `oldSelf`), and stays under
/// kube-cel's estimate of the apiserver's cost budget (a heuristic: the apiserver computes the
/// real cost when the CRD is applied).
#[test]
fn every_rule_compiles_within_budget() {
    let mut rules = 0;
    for kind in KINDS {
        let schema = schema(kind);
        for (path, node) in all_nodes(&schema) {
            let Some(list) = node
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
            else {
                continue;
            };
            let compiled = compile_schema(node);
            assert!(
                compiled.compilation_errors().is_empty(),
                "{kind} at {path:?}: {:?}",
                compiled.compilation_errors()
            );
            for rule in list {
                let rule = rule["rule"].as_str().unwrap();
                let warnings = analyze_rule(rule, &compiled, ScopeContext::CrdValidation);
                assert!(warnings.is_empty(), "{kind} at {path:?}: {warnings:?}");
                rules += 1;
            }
        }
    }
    assert!(rules >= 3 * 2, "rules found: {rules}");
}

/// The messages of the CEL rules a spec of `kind` fails, as the apiserver would report them
/// (after defaulting); every failure must be a rule evaluating to false, not a rule kube-cel
/// could not evaluate.
fn cel(kind: &str, spec: &Value, failed_rules: &mut BTreeSet<String>) -> Vec<String> {
    let object = json!({
        "apiVersion": "meshdoctor.io/v1beta1",
        "kind": kind,
        "metadata": {"name": "t"},
        "spec": spec,
    });
    match Validator::new().validate(&schema(kind), &object, None) {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| {
                assert_eq!(e.kind, ErrorKind::ValidationFailure, "{kind} {spec}: {e}");
                failed_rules.insert(e.rule.clone());
                e.to_string()
            })
            .collect(),
    }
}

/// The Rust validation of the same spec, as a task file.
fn rust(kind: &str, spec: &Value) -> Result<(), String> {
    let doc = json!({
        "apiVersion": "meshdoctor.io/v1beta1",
        "kind": kind,
        "metadata": {"name": "t"},
        "spec": spec,
    });
    // JSON is YAML.
    Task::from_yaml("t.yaml", &doc.to_string())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `base` with the `(path, value)` pairs set, `path` dot-separated below `spec`.
fn with(base: &Value, sets: &[(&str, Value)]) -> Value {
    let mut spec = base.clone();
    for (path, value) in sets {
        let mut at = &mut spec;
        for key in path.split('.') {
            at = &mut at[key];
        }
        *at = value.clone();
    }
    spec
}

/// Each rule both ways: a spec that breaks it fails the CEL rule with the expected message and
/// the Rust validation; a spec that keeps to it passes both.
#[test]
fn cel_rules_agree_with_the_rust_validation() {
    let reach = json!({});
    let http = json!({"target": {"host": "http://example.com", "method": "GET"}});
    let dns = json!({"target": {"targetUser": {"server": "192.0.2.53"}}});
    let schedule = |s: &str, timeout: Option<u64>| {
        let mut plan = json!({"schedule": s});
        if let Some(t) = timeout {
            plan["roundTimeoutMinute"] = t.into();
        }
        plan
    };
    // (kind, spec, the message of the failed rule; None: valid)
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        // Every kind's schedule: roundTimeoutMinute <= N of "M N".
        (
            "NetReach",
            with(&reach, &[("schedule", schedule("0 5", Some(6)))]),
            Some("at most N of an \"M N\" schedule"),
        ),
        (
            "AppHttpHealthy",
            with(&http, &[("schedule", schedule(" 1   5 ", Some(6)))]),
            Some("at most N of an \"M N\" schedule"),
        ),
        (
            "NetDns",
            with(&dns, &[("schedule", schedule("0 5", Some(5)))]),
            None,
        ),
        (
            "NetReach",
            with(&reach, &[("schedule", schedule("@every 10s", Some(30)))]),
            None,
        ),
        (
            "NetReach",
            with(&reach, &[("schedule", schedule("*/5 * * * *", Some(30)))]),
            None,
        ),
        (
            "NetReach",
            with(
                &reach,
                &[("schedule", json!({"schedule": "0 1", "roundNumber": 0}))],
            ),
            Some("must be -1 (forever) or at least 1"),
        ),
        (
            "NetReach",
            with(
                &reach,
                &[("schedule", json!({"schedule": "0 1", "roundNumber": -1}))],
            ),
            None,
        ),
        // NetReach: probes per path.
        (
            "NetReach",
            with(
                &reach,
                &[(
                    "request",
                    json!({"protocol": "tcp", "qps": 500, "durationInSecond": 9}),
                )],
            ),
            Some("4096 for tcp and http"),
        ),
        (
            "NetReach",
            with(
                &reach,
                &[(
                    "request",
                    json!({"protocol": "udp", "qps": 500, "durationInSecond": 9}),
                )],
            ),
            None,
        ),
        (
            "NetReach",
            with(
                &reach,
                &[
                    ("schedule", schedule("0 5", None)),
                    ("request", json!({"qps": 1000, "durationInSecond": 66})),
                ],
            ),
            Some("at most 65536"),
        ),
        (
            "NetReach",
            with(
                &reach,
                &[
                    ("schedule", schedule("0 5", None)),
                    ("request", json!({"qps": 1000, "durationInSecond": 65})),
                ],
            ),
            None,
        ),
        // NetReach: families, endpoint, multusInterface.
        (
            "NetReach",
            with(&reach, &[("target", json!({"ipv4": false}))]),
            Some("at least one of ipv4 and ipv6"),
        ),
        (
            "NetReach",
            with(&reach, &[("target", json!({"ipv4": false, "ipv6": true}))]),
            None,
        ),
        (
            "NetReach",
            with(&reach, &[("target", json!({"endpoint": false}))]),
            Some("endpoint: false needs addresses"),
        ),
        (
            "NetReach",
            with(
                &reach,
                &[("target", json!({"endpoint": false, "addresses": []}))],
            ),
            Some("endpoint: false needs addresses"),
        ),
        (
            "NetReach",
            with(
                &reach,
                &[(
                    "target",
                    json!({"endpoint": false, "addresses": ["192.0.2.10"]}),
                )],
            ),
            None,
        ),
        (
            "NetReach",
            with(
                &reach,
                &[("target", json!({"endpoint": false, "clusterIP": true}))],
            ),
            None,
        ),
        (
            "NetReach",
            with(
                &reach,
                &[(
                    "target",
                    json!({"multusInterface": false, "interfaces": ["net1"]}),
                )],
            ),
            Some("contradicts interfaces"),
        ),
        (
            "NetReach",
            with(
                &reach,
                &[(
                    "target",
                    json!({"multusInterface": false, "interfaces": ["eth0", "net1"]}),
                )],
            ),
            Some("contradicts interfaces"),
        ),
        (
            "NetReach",
            with(
                &reach,
                &[(
                    "target",
                    json!({"multusInterface": false, "interfaces": ["eth0"]}),
                )],
            ),
            None,
        ),
        (
            "NetReach",
            with(&reach, &[("target", json!({"multusInterface": false}))]),
            None,
        ),
        (
            "NetReach",
            with(
                &reach,
                &[(
                    "target",
                    json!({"multusInterface": true, "interfaces": ["net1"]}),
                )],
            ),
            None,
        ),
        // NetDns: one target, a Service named with its namespace, a family.
        (
            "NetDns",
            with(&dns, &[("target.targetDns", json!({}))]),
            Some("exactly one of targetUser"),
        ),
        (
            "NetDns",
            json!({"target": {}}),
            Some("exactly one of targetUser"),
        ),
        ("NetDns", json!({"target": {"targetDns": {}}}), None),
        (
            "NetDns",
            json!({"target": {"targetDns": {"serviceName": "kube-dns"}}}),
            Some("serviceName and serviceNamespace go together"),
        ),
        (
            "NetDns",
            json!({"target": {"targetDns": {"serviceNamespace": "kube-system"}}}),
            Some("serviceName and serviceNamespace go together"),
        ),
        (
            "NetDns",
            json!({"target": {"targetDns": {"serviceName": "kube-dns", "serviceNamespace": "kube-system"}}}),
            None,
        ),
        (
            "NetDns",
            json!({"target": {"targetDns": {"testIPv4": false}}}),
            Some("at least one of testIPv4 and testIPv6"),
        ),
        (
            "NetDns",
            json!({"target": {"targetDns": {"testIPv4": false, "testIPv6": true}}}),
            None,
        ),
        // AppHttpHealthy: fields that go together or exclude each other.
        (
            "AppHttpHealthy",
            with(&http, &[("target.bodyConfigmapName", json!("body"))]),
            Some("bodyConfigmapName and bodyConfigmapNamespace go together"),
        ),
        (
            "AppHttpHealthy",
            with(
                &http,
                &[
                    ("target.bodyConfigmapName", json!("body")),
                    ("target.bodyConfigmapNamespace", json!("web")),
                ],
            ),
            None,
        ),
        (
            "AppHttpHealthy",
            with(
                &http,
                &[
                    ("target.bodyConfigmapName", json!("body")),
                    ("target.bodyConfigmapNamespace", json!("web")),
                    ("target.body", json!("{}")),
                ],
            ),
            Some("either body (inline) or bodyConfigmapName"),
        ),
        (
            "AppHttpHealthy",
            with(&http, &[("target.tlsSecretNamespace", json!("web"))]),
            Some("tlsSecretName and tlsSecretNamespace go together"),
        ),
        (
            "AppHttpHealthy",
            with(&http, &[("target.tlsCertFile", json!("/etc/tls.crt"))]),
            Some("tlsCertFile and tlsKeyFile go together"),
        ),
        (
            "AppHttpHealthy",
            with(
                &http,
                &[
                    ("target.tlsCertFile", json!("/etc/tls.crt")),
                    ("target.tlsKeyFile", json!("/etc/tls.key")),
                ],
            ),
            None,
        ),
        (
            "AppHttpHealthy",
            with(
                &http,
                &[
                    ("target.tlsSecretName", json!("tls")),
                    ("target.tlsSecretNamespace", json!("web")),
                    ("target.tlsCaFile", json!("/etc/ca.pem")),
                ],
            ),
            Some("either tlsSecretName/tlsSecretNamespace or the tlsCaFile"),
        ),
        (
            "AppHttpHealthy",
            with(
                &http,
                &[
                    ("target.tlsSecretName", json!("tls")),
                    ("target.tlsSecretNamespace", json!("web")),
                ],
            ),
            None,
        ),
        (
            "AppHttpHealthy",
            with(&http, &[("target.tlsCaFile", json!("/etc/ca.pem"))]),
            None,
        ),
        // NetReach: pairPaths select mesh pair-paths, never a node to itself.
        (
            "NetReach",
            with(
                &reach,
                &[
                    ("pairPaths", json!([{"srcNode": "a", "dstNode": "b"}])),
                    (
                        "target",
                        json!({"endpoint": false, "addresses": ["192.0.2.1"]}),
                    ),
                ],
            ),
            Some("target.endpoint is false (no mesh)"),
        ),
        (
            "NetReach",
            with(
                &reach,
                &[(
                    "pairPaths",
                    json!([{"srcNode": "a", "dstNode": "b", "network": "sec", "family": "ipv4"}]),
                )],
            ),
            None,
        ),
        (
            "NetReach",
            with(
                &reach,
                &[("pairPaths", json!([{"srcNode": "a", "dstNode": "a"}]))],
            ),
            Some("an agent does not probe itself"),
        ),
        // NetReach: a mesh shape's peers, never with the full mesh.
        (
            "NetReach",
            with(
                &reach,
                &[("target.mesh", json!({"mode": "sampled", "peers": 4}))],
            ),
            None,
        ),
        (
            "NetReach",
            with(
                &reach,
                &[("target.mesh", json!({"mode": "full", "peers": 4}))],
            ),
            Some("a full mesh probes every peer"),
        ),
    ];
    let mut failed_rules = BTreeSet::new();
    for (kind, spec, want) in &cases {
        let got = cel(kind, spec, &mut failed_rules);
        let rust = rust(kind, spec);
        match want {
            Some(says) => {
                assert!(
                    got.len() == 1 && got[0].contains(says),
                    "{kind} {spec}: expected one CEL failure saying {says:?}, got {got:?}"
                );
                assert!(
                    rust.is_err(),
                    "{kind} {spec}: CEL rejects it but Rust accepts it"
                );
            }
            None => {
                assert!(got.is_empty(), "{kind} {spec}: CEL rejects it: {got:?}");
                assert_eq!(
                    rust,
                    Ok(()),
                    "{kind} {spec}: CEL accepts it but Rust does not"
                );
            }
        }
    }
    // Every rule of every CRD has a case that breaks it.
    let all_rules: BTreeSet<String> = KINDS
        .iter()
        .flat_map(|kind| {
            let schema = schema(kind);
            all_nodes(&schema)
                .into_iter()
                .filter_map(|(_, node)| node.get("x-kubernetes-validations").cloned())
                .flat_map(|list| list.as_array().cloned().unwrap_or_default())
                .filter_map(|rule| rule["rule"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    let untested: Vec<_> = all_rules.difference(&failed_rules).collect();
    assert!(untested.is_empty(), "rules no case breaks: {untested:?}");
}

/// A task the Rust validation accepts, as a custom resource, passes the CEL rules: kube's
/// typed `validate_cel` over the derived resource.
#[test]
fn parsed_tasks_pass_as_custom_resources() {
    let head = |kind: &str| {
        format!("apiVersion: kdoctor.io/v1beta1\nkind: {kind}\nmetadata: {{name: t}}\n")
    };
    let reach = Task::from_yaml(
        "t",
        &format!(
            "{}spec:\n  schedule: {{schedule: '0 5', roundTimeoutMinute: 5, roundNumber: -1}}\n  \
             request: {{protocol: http, qps: 100, durationInSecond: 40}}\n  \
             target: {{ipv6: true, multusInterface: false, addresses: ['192.0.2.1:80']}}\n",
            head("NetReach")
        ),
    )
    .unwrap();
    let Task::NetReach(reach) = reach else {
        unreachable!()
    };
    let resource = NetReachResource::new("t", reach.spec);
    kube::core::cel::validate_cel(&resource).unwrap();

    let Task::AppHttpHealthy(http) = Task::from_yaml(
        "t",
        &format!(
            "{}spec:\n  target: {{host: 'example.com', method: POST, header: ['A: b:c'], \
             tlsCertFile: /c.pem, tlsKeyFile: /k.pem}}\n",
            head("AppHttpHealthy")
        ),
    )
    .unwrap() else {
        unreachable!()
    };
    kube::core::cel::validate_cel(&AppHttpHealthyResource::new("t", http.spec)).unwrap();

    let Task::NetDns(dns) = Task::from_yaml(
        "t",
        &format!(
            "{}spec:\n  request: {{protocol: tcp-tls}}\n  target: {{targetUser: {{server: \
             'fd00::53', tlsServerName: dns.example}}}}\n",
            head("Netdns")
        ),
    )
    .unwrap() else {
        unreachable!()
    };
    kube::core::cel::validate_cel(&NetDnsResource::new("t", dns.spec)).unwrap();
}
