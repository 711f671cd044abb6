//! deploy/, rendered and validated offline, without a cluster: `kubectl kustomize` renders the
//! base (`deploy/`), each overlay, the example tasks and the monitoring (`deploy/monitoring`);
//! kubernetes-validate checks every built-in object strictly against the Kubernetes 1.33
//! schemas (k8s-openapi is built for v1_33); the meshdoctor.io tasks are checked against the
//! openAPIV3Schema of the CRDs in the rendered base and parsed by meshdoctor's own task parser;
//! the rendered YAML is held to the documented security posture (deploy/README.md); and the
//! monitoring objects to the base they scrape and to the metrics deploy/monitoring/README.md
//! documents.
//!
//! The tools come from `cargo xtask setup` (kubernetes-validate in the project's virtualenv,
//! `$MESHDOCTOR_VENV` or /opt/meshdoctor/venv, and kubectl with kustomize v5); `cargo xtask
//! test` runs setup first. Without them a test is skipped with a message, unless it runs under
//! `cargo xtask test` or in CI, where a missing tool fails it.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use meshdoctor_api::{Task, TaskSpec as _};
use meshdoctor_e2e::{tools_present, workspace_root};
use serde_yaml::Value;

/// The Kubernetes version the manifests are validated for: the one k8s-openapi is built with.
const KUBERNETES_VERSION: &str = "1.33.0";

/// Every directory `kubectl kustomize` must render, and what it is.
const RENDERS: [(&str, &str); 6] = [
    ("deploy", "the base"),
    ("deploy/overlays/hostnetwork", "the hostNetwork overlay"),
    ("deploy/overlays/multus", "the multus overlay"),
    (
        "deploy/overlays/seccomp-localhost",
        "the overlay running the agent under the shipped seccomp profile",
    ),
    ("deploy/examples", "the example tasks"),
    (MONITORING, "the monitoring objects and dashboards"),
];

/// The renderings that are a complete install (the CRDs, the agents and the controller).
const INSTALLS: [&str; 4] = [
    "deploy",
    "deploy/overlays/hostnetwork",
    "deploy/overlays/multus",
    "deploy/overlays/seccomp-localhost",
];

/// The prometheus-operator objects and Grafana dashboards (deploy/monitoring/README.md).
const MONITORING: &str = "deploy/monitoring";

/// Kinds kubernetes-validate has no schema for, other than meshdoctor.io's (which are checked
/// against the CRDs), each with the reason it may pass without one. Any other unknown kind
/// fails the validation test.
const UNKNOWN_KINDS: [(&str, &str, &str); 4] = [
    (
        "k8s.cni.cncf.io/v1",
        "NetworkAttachmentDefinition",
        "multus's CRD, not part of Kubernetes; its spec.config is parsed and checked by \
         multus_overlay_attaches_net1_to_every_agent",
    ),
    (
        "monitoring.coreos.com/v1",
        "PodMonitor",
        "prometheus-operator's CRD, not part of Kubernetes; its selector and port are checked \
         against the agent DaemonSet by monitors_select_the_agent_pods_and_the_controller_service",
    ),
    (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        "prometheus-operator's CRD, not part of Kubernetes; its selector and port are checked \
         against the controller Service by \
         monitors_select_the_agent_pods_and_the_controller_service",
    ),
    (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        "prometheus-operator's CRD, not part of Kubernetes; its alerts are checked by \
         alerts_and_dashboards_use_only_documented_metrics (and unit-tested with promtool by \
         tests/monitoring.rs)",
    ),
];

/// The agent's capabilities, exactly (deploy/README.md says why each).
const AGENT_CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "NET_RAW", "PERFMON"];

/// Validates custom resources against their CRDs' openAPIV3Schema with python's jsonschema
/// (which comes with kubernetes-validate), as the API server would: `nullable` becomes a
/// `null` type, `x-kubernetes-*` keys are dropped, required fields with a default may be
/// omitted, `pattern`s (RE2, as Go reads them) have their POSIX classes (`[[:space:]]`) spelled
/// for python's `re`, which reads `[[:space:]]` as something else, and fields the schema does not declare are errors (kubectl's default
/// `--validate=strict` makes the API server refuse them; only `x-kubernetes-preserve-unknown-
/// fields` objects take any). apiVersion, kind and metadata are implicit at the root. CEL
/// rules (x-kubernetes-validations) are not evaluated here.
///
/// stdin: {"crds": [CRD...], "resources": [CR...]}; stdout: one JSON object per resource,
/// {"resource": "Kind/name", "errors": ["field.path: message", ...]}.
const CR_VALIDATOR: &str = r#"
import json, sys
import jsonschema

# RE2's POSIX classes, valid inside a bracket expression, as python's re spells them.
POSIX = {
    "[:alnum:]": "0-9A-Za-z", "[:alpha:]": "A-Za-z", "[:ascii:]": "\\x00-\\x7f",
    "[:blank:]": "\\t ", "[:cntrl:]": "\\x00-\\x1f\\x7f", "[:digit:]": "0-9",
    "[:graph:]": "!-~", "[:lower:]": "a-z", "[:print:]": " -~",
    "[:punct:]": "!-/:-@\\[-`{-~", "[:space:]": "\\t\\n\\v\\f\\r ",
    "[:upper:]": "A-Z", "[:word:]": "0-9A-Za-z_", "[:xdigit:]": "0-9A-Fa-f",
}

def python_regex(pattern):
    for posix, spelled in POSIX.items():
        pattern = pattern.replace(posix, spelled)
    if "[:" in pattern:
        sys.exit("unknown POSIX class in pattern %r" % pattern)
    return pattern

def convert(schema, root=False):
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: convert(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = convert(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(sub) for sub in value]
        elif key == "pattern":
            out[key] = python_regex(value)
        else:
            out[key] = value
    if root:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if schema.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = list(out["enum"]) + [None]
    if "required" in out:
        props = schema.get("properties", {})
        out["required"] = [r for r in out["required"] if "default" not in props.get(r, {})]
    if ("properties" in out and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out

def path_of(error):
    return ".".join(str(p) for p in error.absolute_path) or "(root)"

doc = json.load(sys.stdin)
crds = {}
for crd in doc["crds"]:
    spec = crd["spec"]
    for version in spec["versions"]:
        key = (spec["group"] + "/" + version["name"], spec["names"]["kind"])
        crds[key] = (crd, version)
for res in doc["resources"]:
    name = "%s/%s" % (res.get("kind"), (res.get("metadata") or {}).get("name"))
    errors = []
    found = crds.get((res.get("apiVersion"), res.get("kind")))
    if found is None:
        errors.append("apiVersion/kind: no CRD in the base defines %s %s"
                      % (res.get("apiVersion"), res.get("kind")))
    else:
        crd, version = found
        if not version.get("served", False):
            errors.append("apiVersion: %s is not served" % res["apiVersion"])
        namespaced = crd["spec"]["scope"] == "Namespaced"
        has_ns = "namespace" in (res.get("metadata") or {})
        if has_ns != namespaced:
            errors.append("metadata.namespace: %s for a %s resource"
                          % ("set" if has_ns else "missing", crd["spec"]["scope"]))
        schema = convert(version["schema"]["openAPIV3Schema"], root=True)
        validator = jsonschema.Draft4Validator(schema)
        for e in sorted(validator.iter_errors(res), key=lambda e: list(map(str, e.absolute_path))):
            errors.append("%s: %s" % (path_of(e), e.message))
    print(json.dumps({"resource": name, "errors": errors}))
"#;

// ---------------------------------------------------------------------------------------------
// Tools, rendering and documents

struct Tools {
    kubectl: PathBuf,
    validate: PathBuf,
    python: PathBuf,
}

fn runs(cmd: &Path, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The tools, or `None` (the test is skipped) when one is missing and setup was not run.
/// Under `cargo xtask test` (which runs setup and sets MESHDOCTOR_BIN_DIR) or in CI, a missing
/// tool fails the test instead.
fn tools(test: &str) -> Option<Tools> {
    let venv = meshdoctor_lab::venv_dir();
    let kubectl = meshdoctor_lab::kubectl();
    let validate = venv.join("bin/kubernetes-validate");
    let python = venv.join("bin/python");
    let mut missing = Vec::new();
    if !runs(&kubectl, &["version", "--client"]) {
        missing.push(format!("kubectl ({} does not run)", kubectl.display()));
    }
    if !runs(&validate, &["--version"]) {
        missing.push(format!("kubernetes-validate ({})", validate.display()));
    }
    if !runs(&python, &["-c", "import jsonschema"]) {
        missing.push(format!("python jsonschema ({})", python.display()));
    }
    tools_present(test, &missing.join(", ")).then_some(Tools {
        kubectl,
        validate,
        python,
    })
}

/// `kubectl kustomize DIR` (DIR relative to the workspace root).
fn render(tools: &Tools, dir: &str) -> String {
    let out = Command::new(&tools.kubectl)
        .arg("kustomize")
        .arg(workspace_root().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.kubectl.display()));
    assert!(
        out.status.success(),
        "`kubectl kustomize {dir}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{dir}: rendered non-UTF-8: {e}"))
}

/// One rendered object.
#[derive(Clone)]
struct Doc {
    /// The directory it was rendered from.
    source: String,
    value: Value,
}

impl Doc {
    fn str_at(&self, path: &[&str]) -> Option<&str> {
        get(&self.value, path)?.as_str()
    }
    fn api_version(&self) -> &str {
        self.str_at(&["apiVersion"]).unwrap_or_default()
    }
    fn kind(&self) -> &str {
        self.str_at(&["kind"]).unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.str_at(&["metadata", "name"]).unwrap_or_default()
    }
    fn namespace(&self) -> Option<&str> {
        self.str_at(&["metadata", "namespace"])
    }
    /// `Kind/name` (`Kind/namespace/name` when namespaced) and where it came from, for messages.
    fn id(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{}/{ns}/{} in {}", self.kind(), self.name(), self.source),
            None => format!("{}/{} in {}", self.kind(), self.name(), self.source),
        }
    }
}

fn parse_docs(source: &str, text: &str) -> Vec<Doc> {
    serde_yaml::Deserializer::from_str(text)
        .map(|de| {
            serde::Deserialize::deserialize(de)
                .unwrap_or_else(|e| panic!("{source}: rendered YAML does not parse: {e}"))
        })
        .filter(|v: &Value| !v.is_null())
        .map(|value| Doc {
            source: source.to_string(),
            value,
        })
        .collect()
}

fn rendered(tools: &Tools, dir: &str) -> Vec<Doc> {
    let docs = parse_docs(dir, &render(tools, dir));
    assert!(!docs.is_empty(), "{dir}: rendered nothing");
    docs
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

fn get_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(v, |v, key| {
        v.get_mut(*key)
            .unwrap_or_else(|| panic!("no {key:?} on the way to {}", path.join(".")))
    })
}

fn seq(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    seq(v)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected a string, got {s:?}"))
                .to_string()
        })
        .collect()
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == kind && d.name() == name)
        .collect();
    match found[..] {
        [d] => d,
        [] => panic!(
            "{}: expected one {kind} {name:?}, found none",
            docs.first().map_or("?", |d| d.source.as_str())
        ),
        _ => panic!("{}: {kind} {name:?} rendered twice", found[0].source),
    }
}

/// The pod template's spec of a workload.
fn pod_spec(d: &Doc) -> &Value {
    get(&d.value, &["spec", "template", "spec"])
        .unwrap_or_else(|| panic!("{}: no spec.template.spec", d.id()))
}

fn container<'a>(d: &'a Doc, name: &str) -> &'a Value {
    seq(pod_spec(d).get("containers"))
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{}: no container {name:?}", d.id()))
}

const WORKLOADS: [&str; 6] = [
    "DaemonSet",
    "Deployment",
    "StatefulSet",
    "ReplicaSet",
    "Job",
    "Pod",
];

/// Every container of every workload (init and ephemeral ones too), with its workload.
fn all_containers(docs: &[Doc]) -> Vec<(&Doc, &Value)> {
    let mut out = Vec::new();
    for d in docs.iter().filter(|d| WORKLOADS.contains(&d.kind())) {
        let spec = if d.kind() == "Pod" {
            get(&d.value, &["spec"]).expect("a Pod has a spec")
        } else {
            pod_spec(d)
        };
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            out.extend(seq(spec.get(list)).iter().map(|c| (d, c)));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Validators

/// What kubernetes-validate said about one rendering.
struct Validation {
    success: bool,
    /// Its output, one line per object: `INFO ... passed`, `WARN ... Couldn't find schema`,
    /// `ERROR ... did not validate ...: field.path: message`.
    lines: Vec<String>,
    stderr: String,
}

/// Runs kubernetes-validate --strict for [`KUBERNETES_VERSION`] over `text`, YAML documents.
/// It reads YAML 1.1 (an unquoted `yes` is a boolean), so it is given kustomize's output as
/// is, which quotes such strings, not a re-serialization.
fn run_kubernetes_validate(tools: &Tools, source: &str, text: &str) -> Validation {
    let file = std::env::temp_dir().join(format!(
        "meshdoctor-deploy-{}-{}.yaml",
        std::process::id(),
        source.replace(['/', ' '], "-")
    ));
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    let out = Command::new(&tools.validate)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.validate.display()));
    let _ = std::fs::remove_file(&file);
    Validation {
        success: out.status.success(),
        lines: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Checks one rendering with kubernetes-validate: nothing refused, every built-in object
/// validated against a schema, and only meshdoctor.io kinds and [`UNKNOWN_KINDS`] without one.
/// Returns how many objects it validated.
fn kubernetes_validate(tools: &Tools, source: &str, text: &str) -> usize {
    let docs = parse_docs(source, text);
    let v = run_kubernetes_validate(tools, source, text);
    let output = v.lines.join("\n");
    let refused: Vec<&str> = v
        .lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("INFO ") && !l.starts_with("WARN "))
        .collect();
    assert!(
        refused.is_empty() && v.success,
        "{source}: kubernetes-validate --strict for Kubernetes {KUBERNETES_VERSION} refused \
         it:\n{}\n{}",
        refused.join("\n"),
        v.stderr
    );
    for d in &docs {
        let custom = d.api_version().starts_with("meshdoctor.io/")
            || UNKNOWN_KINDS
                .iter()
                .any(|(v, k, _)| *v == d.api_version() && *k == d.kind());
        if custom {
            continue;
        }
        let passed = format!(
            "passed for resource {}/{} ",
            d.kind().to_lowercase(),
            d.name()
        );
        assert!(
            v.lines.iter().any(|l| l.contains(&passed)),
            "{}: kubernetes-validate did not validate it (no schema for {} {}?); output:\n{output}",
            d.id(),
            d.api_version(),
            d.kind()
        );
    }
    for l in v.lines.iter().filter(|l| l.starts_with("WARN ")) {
        let known = l.contains("with api version meshdoctor.io/")
            || UNKNOWN_KINDS
                .iter()
                .any(|(v, k, _)| l.contains(&format!("for kind {k} with api version {v} ")));
        assert!(
            known,
            "{source}: a kind without a schema that is neither meshdoctor.io's nor listed in \
             UNKNOWN_KINDS with a reason: {l}"
        );
    }
    v.lines.iter().filter(|l| l.starts_with("INFO ")).count()
}

/// Validates `resources` against the openAPIV3Schema of `crds` (see [`CR_VALIDATOR`]); returns
/// the errors of each resource by `Kind/name`.
fn validate_against_crds(
    tools: &Tools,
    crds: &[Doc],
    resources: &[Value],
) -> BTreeMap<String, Vec<String>> {
    let input = serde_json::json!({
        "crds": crds.iter().map(|d| &d.value).collect::<Vec<_>>(),
        "resources": resources,
    });
    let mut child = Command::new(&tools.python)
        .args(["-c", CR_VALIDATOR])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.python.display()));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.to_string().as_bytes())
        .expect("writing the validator's input");
    let out = child.wait_with_output().expect("the validator ran");
    assert!(
        out.status.success(),
        "the CRD schema validator failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: BTreeMap<String, Vec<String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("validator output {l:?}: {e}"));
            let errors = v["errors"]
                .as_array()
                .expect("errors is a list")
                .iter()
                .map(|e| e.as_str().expect("an error is a string").to_string())
                .collect();
            (
                v["resource"].as_str().expect("resource").to_string(),
                errors,
            )
        })
        .collect();
    assert_eq!(
        results.len(),
        resources.len(),
        "the validator answered for {} of {} resources: {results:?}",
        results.len(),
        resources.len()
    );
    results
}

fn crds(docs: &[Doc]) -> Vec<Doc> {
    docs.iter()
        .filter(|d| d.kind() == "CustomResourceDefinition")
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests: rendering and schema validation

#[test]
fn every_rendering_validates_strictly_for_kubernetes_1_33() {
    let Some(tools) = tools("every_rendering_validates_strictly_for_kubernetes_1_33") else {
        return;
    };
    for (dir, what) in RENDERS {
        let text = render(&tools, dir);
        let docs = parse_docs(dir, &text);
        assert!(!docs.is_empty(), "{dir}: rendered nothing");
        let validated = kubernetes_validate(&tools, dir, &text);
        eprintln!(
            "{dir} ({what}): {} objects, {validated} validated by kubernetes-validate, {} \
             custom",
            docs.len(),
            docs.len() - validated
        );
    }
}

#[test]
fn kubernetes_validate_strict_refuses_an_unknown_field_and_a_wrong_type() {
    let Some(tools) = tools("kubernetes_validate_strict_refuses_an_unknown_field_and_a_wrong_type")
    else {
        return;
    };
    let base = rendered(&tools, "deploy");
    let agent = find(&base, "DaemonSet", "meshdoctor-agent");
    for (field, value, expected) in [
        (
            "imagePullPolicyy",
            Value::from("Always"),
            "Additional properties are not allowed ('imagePullPolicyy' was unexpected)",
        ),
        (
            "stdin",
            Value::from("maybe"),
            "'maybe' is not of type 'boolean'",
        ),
    ] {
        let mut bad = agent.clone();
        get_mut(&mut bad.value, &["spec", "template", "spec", "containers"])
            .as_sequence_mut()
            .and_then(|c| c.first_mut())
            .and_then(Value::as_mapping_mut)
            .expect("a container")
            .insert(field.into(), value);
        let text = serde_yaml::to_string(&bad.value).expect("serializes");
        let v = run_kubernetes_validate(&tools, "negative", &text);
        assert!(
            !v.success,
            "kubernetes-validate accepted a container with {field}: {:?}",
            v.lines
        );
        let error = v
            .lines
            .iter()
            .find(|l| l.starts_with("ERROR "))
            .unwrap_or_else(|| panic!("no ERROR line for {field}: {:?}", v.lines));
        assert!(
            error.contains("resource daemonset/meshdoctor-agent")
                && error.contains("spec.template.spec.containers.0")
                && error.contains(expected),
            "kubernetes-validate's refusal of {field} should name daemonset/meshdoctor-agent, \
             spec.template.spec.containers.0 and say {expected:?}; it said: {error}"
        );
    }
}

#[test]
fn example_tasks_fit_the_generated_crds_and_meshdoctors_parser() {
    let Some(tools) = tools("example_tasks_fit_the_generated_crds_and_meshdoctors_parser") else {
        return;
    };
    let crds = crds(&rendered(&tools, "deploy"));
    let examples = rendered(&tools, "deploy/examples");
    let mut kinds = BTreeSet::new();
    for d in &examples {
        assert_eq!(
            d.api_version(),
            "meshdoctor.io/v1beta1",
            "{}: the examples are meshdoctor.io tasks",
            d.id()
        );
        kinds.insert(d.kind().to_string());
        // meshdoctor's own parser, as the standalone backend and the CLI read task files.
        let yaml = serde_yaml::to_string(&d.value).expect("serializes");
        let task = Task::from_yaml(&d.id(), &yaml)
            .unwrap_or_else(|e| panic!("meshdoctor refuses the example: {e}"));
        assert_eq!(task.kind().as_str(), d.kind(), "{}", d.id());
        eprintln!("{}: ok; warnings: {:?}", d.id(), task.warnings());
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["AppHttpHealthy".into(), "NetDns".into(), "NetReach".into()]),
        "deploy/examples: one example of each kind at least"
    );
    let values: Vec<Value> = examples.iter().map(|d| d.value.clone()).collect();
    let results = validate_against_crds(&tools, &crds, &values);
    let bad: Vec<String> = results
        .iter()
        .filter(|(_, errors)| !errors.is_empty())
        .map(|(r, errors)| format!("{r}: {}", errors.join("; ")))
        .collect();
    assert!(
        bad.is_empty(),
        "deploy/examples: tasks that do not fit the CRDs in deploy/crds:\n{}",
        bad.join("\n")
    );
}

#[test]
fn a_broken_task_is_refused_by_the_crd_schema_naming_the_field() {
    let Some(tools) = tools("a_broken_task_is_refused_by_the_crd_schema_naming_the_field") else {
        return;
    };
    let crds = crds(&rendered(&tools, "deploy"));
    let examples = rendered(&tools, "deploy/examples");
    let mesh = find(&examples, "NetReach", "mesh-icmp");
    let dns = find(&examples, "NetDns", "kube-dns");
    let broken = |doc: &Doc, name: &str, path: &[&str], value: Value| {
        let mut v = doc.value.clone();
        *get_mut(&mut v, &["metadata", "name"]) = Value::from(name);
        let (last, parent) = path.split_last().expect("a path");
        get_mut(&mut v, parent)
            .as_mapping_mut()
            .expect("a mapping")
            .insert(Value::from(*last), value);
        v
    };
    // (resource, the field the error must name, what it must say: one of)
    const NOT_ONE_OF: &[&str] = &[
        "is not one of",
        // An enum whose variants are documented may come out as oneOf of one-value enums.
        "is not valid under any of the given schemas",
    ];
    let cases: [(Value, &str, &[&str]); 5] = [
        (
            broken(mesh, "qps-fast", &["spec", "request", "qps"], "fast".into()),
            "spec.request.qps",
            &["'fast' is not of type 'integer'"],
        ),
        (
            broken(
                mesh,
                "sctp",
                &["spec", "request", "protocol"],
                "sctp".into(),
            ),
            "spec.request.protocol",
            NOT_ONE_OF,
        ),
        (
            broken(mesh, "ipv7", &["spec", "target", "ipv7"], true.into()),
            "spec.target",
            &["'ipv7' was unexpected"],
        ),
        (
            broken(
                dns,
                "dns-dot",
                &["spec", "request", "protocol"],
                "dot".into(),
            ),
            "spec.request.protocol",
            NOT_ONE_OF,
        ),
        (
            broken(
                mesh,
                "namespaced",
                &["metadata", "namespace"],
                "meshdoctor".into(),
            ),
            "metadata.namespace",
            &["set for a Cluster resource"],
        ),
    ];
    let values: Vec<Value> = cases.iter().map(|(v, _, _)| v.clone()).collect();
    let results = validate_against_crds(&tools, &crds, &values);
    for (v, field, says) in &cases {
        let name = format!(
            "{}/{}",
            v["kind"].as_str().unwrap_or_default(),
            v["metadata"]["name"].as_str().unwrap_or_default()
        );
        let errors = &results[&name];
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("{field}: ")) && says.iter().any(|s| e.contains(s))),
            "{name}: the CRD schema should refuse it with an error on {field} saying {says:?}; \
             errors: {errors:?}"
        );
    }
    // meshdoctor's own parser refuses the first two as well, naming the same field.
    for (v, field, _) in &cases[..2] {
        let yaml = serde_yaml::to_string(v).expect("serializes");
        let err = Task::from_yaml("broken.yaml", &yaml)
            .expect_err("meshdoctor's parser accepted a broken task")
            .to_string();
        assert!(
            err.starts_with(&format!("broken.yaml: {field}: ")),
            "meshdoctor's parser should name {field}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: the security posture and the wiring

#[test]
fn no_container_is_privileged_and_the_agent_has_exactly_its_capabilities() {
    let Some(tools) =
        tools("no_container_is_privileged_and_the_agent_has_exactly_its_capabilities")
    else {
        return;
    };
    for dir in INSTALLS {
        let docs = rendered(&tools, dir);
        let containers = all_containers(&docs);
        assert!(!containers.is_empty(), "{dir}: no containers rendered");
        for (d, c) in &containers {
            let name = c["name"].as_str().unwrap_or("?");
            // The image `cargo xtask image` builds, by the one name it has.
            assert_eq!(
                c["image"].as_str(),
                Some(meshdoctor_ops::image().as_str()),
                "{}: container {name} runs another image than cargo xtask image builds",
                d.id()
            );
            let sc = c.get("securityContext");
            let flag = |k: &str| sc.and_then(|s| s.get(k)).and_then(Value::as_bool);
            assert_ne!(
                flag("privileged"),
                Some(true),
                "{}: container {name} is privileged",
                d.id()
            );
            assert_eq!(
                flag("allowPrivilegeEscalation"),
                Some(false),
                "{}: container {name} must set allowPrivilegeEscalation: false",
                d.id()
            );
            assert_eq!(
                flag("readOnlyRootFilesystem"),
                Some(true),
                "{}: container {name} must set readOnlyRootFilesystem: true",
                d.id()
            );
            assert_eq!(
                strings(get(c, &["securityContext", "capabilities", "drop"])),
                ["ALL"],
                "{}: container {name} must drop ALL capabilities",
                d.id()
            );
            for host in ["hostPID", "hostIPC"] {
                assert_ne!(
                    pod_spec(d).get(host).and_then(Value::as_bool),
                    Some(true),
                    "{}: {host}",
                    d.id()
                );
            }
        }
        let agent = find(&docs, "DaemonSet", "meshdoctor-agent");
        let mut caps = strings(get(
            container(agent, "agent"),
            &["securityContext", "capabilities", "add"],
        ));
        caps.sort();
        assert_eq!(
            caps,
            AGENT_CAPABILITIES,
            "{}: the agent's added capabilities must be exactly the documented set",
            agent.id()
        );
        // The controller gets no capability at all, and runs as a non-root user.
        let controller = find(&docs, "Deployment", "meshdoctor-controller");
        let c = container(controller, "controller");
        assert!(
            get(c, &["securityContext", "capabilities", "add"]).is_none(),
            "{}: the controller adds capabilities",
            controller.id()
        );
        let pod_sc = pod_spec(controller).get("securityContext");
        assert_eq!(
            pod_sc
                .and_then(|s| s.get("runAsNonRoot"))
                .and_then(Value::as_bool),
            Some(true),
            "{}: runAsNonRoot",
            controller.id()
        );
        assert_eq!(
            pod_sc
                .and_then(|s| s.get("runAsUser"))
                .and_then(Value::as_u64),
            Some(65532),
            "{}: runAsUser",
            controller.id()
        );
        for d in [agent, controller] {
            // The container's profile wins over the pod's, as in Kubernetes.
            let profile = seq(pod_spec(d).get("containers"))
                .first()
                .and_then(|c| get(c, &["securityContext", "seccompProfile"]))
                .or_else(|| get(pod_spec(d), &["securityContext", "seccompProfile"]));
            let kind = profile.and_then(|p| p.get("type")).and_then(Value::as_str);
            let file = profile
                .and_then(|p| p.get("localhostProfile"))
                .and_then(Value::as_str);
            // RuntimeDefault, or the agent's shipped profile in the overlay that says so.
            let expected = if dir.ends_with("seccomp-localhost") && std::ptr::eq(d, agent) {
                (Some("Localhost"), Some("meshdoctor/agent.json"))
            } else {
                (Some("RuntimeDefault"), None)
            };
            assert_eq!((kind, file), expected, "{}: seccomp profile", d.id());
        }
        // The only host path is tracefs, mounted read-only.
        let host_paths: Vec<(&str, &str)> = seq(pod_spec(agent).get("volumes"))
            .iter()
            .filter_map(|v| {
                Some((
                    v["name"].as_str()?,
                    get(v, &["hostPath", "path"])?.as_str()?,
                ))
            })
            .collect();
        assert_eq!(
            host_paths,
            [("tracefs", "/sys/kernel/tracing")],
            "{}: host paths",
            agent.id()
        );
        let mount = seq(container(agent, "agent").get("volumeMounts"))
            .iter()
            .find(|m| m["name"].as_str() == Some("tracefs"))
            .unwrap_or_else(|| panic!("{}: tracefs is not mounted", agent.id()));
        assert_eq!(
            mount["readOnly"].as_bool(),
            Some(true),
            "{}: tracefs must be mounted read-only",
            agent.id()
        );
        // Every host path in any workload is the agent's tracefs.
        for d in docs.iter().filter(|d| WORKLOADS.contains(&d.kind())) {
            for v in seq(pod_spec(d).get("volumes")) {
                if let Some(p) = get(v, &["hostPath", "path"]) {
                    assert!(
                        d.name() == "meshdoctor-agent" && p.as_str() == Some("/sys/kernel/tracing"),
                        "{}: unexpected hostPath {p:?}",
                        d.id()
                    );
                }
            }
        }
    }
}

/// One RBAC permission, flattened: where it applies (a namespace, or "cluster"), API group,
/// resource, verb and resource name ("" when any).
type Grant = (String, String, String, String, String);

fn grant(scope: &str, group: &str, resource: &str, verb: &str, name: &str) -> Grant {
    (
        scope.into(),
        group.into(),
        resource.into(),
        verb.into(),
        name.into(),
    )
}

/// Everything the bindings in `docs` grant a subject: `ServiceAccount namespace/name`, or a
/// `User` (namespace "").
fn grants_of(docs: &[Doc], kind: &str, namespace: &str, name: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for b in docs
        .iter()
        .filter(|d| matches!(d.kind(), "RoleBinding" | "ClusterRoleBinding"))
    {
        let bound = seq(b.value.get("subjects")).iter().any(|s| {
            s["kind"].as_str() == Some(kind)
                && s["name"].as_str() == Some(name)
                && s["namespace"].as_str().unwrap_or_default() == namespace
        });
        if !bound {
            continue;
        }
        let role_kind = b.value["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = b.value["roleRef"]["name"].as_str().unwrap_or_default();
        let role = docs
            .iter()
            .find(|d| {
                d.kind() == role_kind
                    && d.name() == role_name
                    && (role_kind == "ClusterRole" || d.namespace() == b.namespace())
            })
            .unwrap_or_else(|| panic!("{}: binds {role_kind} {role_name}, not rendered", b.id()));
        // A RoleBinding grants in its own namespace, even a ClusterRole's rules.
        let scope = match b.kind() {
            "ClusterRoleBinding" => "cluster".to_string(),
            _ => b.namespace().expect("a RoleBinding has a namespace").into(),
        };
        for rule in seq(role.value.get("rules")) {
            let names = strings(rule.get("resourceNames"));
            let names = if names.is_empty() {
                vec![String::new()]
            } else {
                names
            };
            for group in strings(rule.get("apiGroups")) {
                for resource in strings(rule.get("resources")) {
                    for verb in strings(rule.get("verbs")) {
                        for n in &names {
                            out.insert(grant(&scope, &group, &resource, &verb, n));
                        }
                    }
                }
            }
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{}: nonResourceURLs",
                role.id()
            );
        }
    }
    out
}

fn expected_controller_grants() -> BTreeSet<Grant> {
    let mut g = BTreeSet::new();
    for resource in ["netreaches", "apphttphealthies", "netdnses"] {
        for verb in ["get", "list", "watch"] {
            g.insert(grant("cluster", "meshdoctor.io", resource, verb, ""));
        }
        for verb in ["get", "patch", "update"] {
            g.insert(grant(
                "cluster",
                "meshdoctor.io",
                &format!("{resource}/status"),
                verb,
                "",
            ));
        }
    }
    for verb in ["get", "list", "watch"] {
        // The agents' topology domains: their nodes' labels.
        g.insert(grant("cluster", "", "nodes", verb, ""));
        g.insert(grant("meshdoctor", "", "pods", verb, ""));
        g.insert(grant("meshdoctor", "", "services", verb, ""));
        g.insert(grant(
            "meshdoctor",
            "networking.k8s.io",
            "ingresses",
            verb,
            "",
        ));
    }
    g.insert(grant(
        "meshdoctor",
        "coordination.k8s.io",
        "leases",
        "create",
        "",
    ));
    // The leader's label on its own pod.
    g.insert(grant("meshdoctor", "", "pods", "patch", ""));
    for verb in ["get", "update"] {
        g.insert(grant(
            "meshdoctor",
            "coordination.k8s.io",
            "leases",
            verb,
            "meshdoctor-controller",
        ));
    }
    // Events about the agent pods (meshdoctor) and about the cluster-scoped tasks (default).
    for ns in ["meshdoctor", "default"] {
        for verb in ["create", "patch"] {
            g.insert(grant(ns, "events.k8s.io", "events", verb, ""));
        }
    }
    // The agents' identities: reviews of the tokens they present.
    g.insert(grant(
        "cluster",
        "authentication.k8s.io",
        "tokenreviews",
        "create",
        "",
    ));
    g
}

#[test]
fn rbac_is_least_privilege_and_the_agent_has_none() {
    let Some(tools) = tools("rbac_is_least_privilege_and_the_agent_has_none") else {
        return;
    };
    for dir in INSTALLS {
        let docs = rendered(&tools, dir);
        for role in docs
            .iter()
            .filter(|d| matches!(d.kind(), "Role" | "ClusterRole"))
        {
            assert!(
                role.value.get("aggregationRule").is_none(),
                "{}: aggregated roles hide what they grant",
                role.id()
            );
            for rule in seq(role.value.get("rules")) {
                for key in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    let values = strings(rule.get(key));
                    assert!(
                        !values.iter().any(|v| v.contains('*')),
                        "{}: wildcard in {key}: {values:?}",
                        role.id()
                    );
                }
                assert!(
                    !strings(rule.get("resources"))
                        .iter()
                        .any(|r| r == "secrets"),
                    "{}: grants access to secrets",
                    role.id()
                );
            }
        }
        // The agent: no binding names it, and no API token is mounted.
        for b in docs
            .iter()
            .filter(|d| matches!(d.kind(), "RoleBinding" | "ClusterRoleBinding"))
        {
            for s in seq(b.value.get("subjects")) {
                assert!(
                    !(s["kind"].as_str() == Some("ServiceAccount")
                        && s["name"].as_str() == Some("meshdoctor-agent")),
                    "{}: binds the agent's ServiceAccount; the agent needs no RBAC",
                    b.id()
                );
            }
        }
        let sa = find(&docs, "ServiceAccount", "meshdoctor-agent");
        assert_eq!(
            sa.value["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{}: automountServiceAccountToken",
            sa.id()
        );
        let agent = find(&docs, "DaemonSet", "meshdoctor-agent");
        assert_eq!(
            pod_spec(agent)["serviceAccountName"].as_str(),
            Some("meshdoctor-agent"),
            "{}",
            agent.id()
        );
        assert_eq!(
            pod_spec(agent)["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{}: the agent pod must not mount an API token",
            agent.id()
        );
        // The controller: exactly the documented permissions.
        let got = grants_of(
            &docs,
            "ServiceAccount",
            "meshdoctor",
            "meshdoctor-controller",
        );
        let want = expected_controller_grants();
        assert!(
            got == want,
            "{dir}: the controller's permissions differ from the documented set\n\
             granted but not documented: {:?}\ndocumented but not granted: {:?}",
            got.difference(&want).collect::<Vec<_>>(),
            want.difference(&got).collect::<Vec<_>>()
        );
        let controller = find(&docs, "Deployment", "meshdoctor-controller");
        assert_eq!(
            pod_spec(controller)["serviceAccountName"].as_str(),
            Some("meshdoctor-controller"),
            "{}",
            controller.id()
        );
        // The ClusterRole names the CRDs' own plurals, and the CRDs are cluster-scoped.
        let mut plurals = BTreeSet::new();
        for crd in docs
            .iter()
            .filter(|d| d.kind() == "CustomResourceDefinition")
        {
            assert_eq!(
                crd.str_at(&["spec", "group"]),
                Some("meshdoctor.io"),
                "{}",
                crd.id()
            );
            assert_eq!(
                crd.str_at(&["spec", "scope"]),
                Some("Cluster"),
                "{}: the tasks are cluster-scoped",
                crd.id()
            );
            plurals.insert(crd.str_at(&["spec", "names", "plural"]).unwrap_or_default());
        }
        assert_eq!(
            plurals,
            BTreeSet::from(["apphttphealthies", "netdnses", "netreaches"]),
            "{dir}: the CRDs' plurals (the ClusterRole names these)"
        );
    }
}

/// The bindings deploy/base/cli-rbac.yaml tells an admin to create for user alice.
fn cli_user_bindings() -> Vec<Doc> {
    let text = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-meshdoctor-cli}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: meshdoctor-cli}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-meshdoctor-cli, namespace: meshdoctor}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: meshdoctor-cli}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
";
    parse_docs("the documented CLI bindings", text)
}

#[test]
fn cli_users_may_do_exactly_what_the_cli_does() {
    let Some(tools) = tools("cli_users_may_do_exactly_what_the_cli_does") else {
        return;
    };
    let mut docs = rendered(&tools, "deploy");
    assert!(
        grants_of(&docs, "User", "", "alice").is_empty(),
        "nothing is bound to users by the manifests"
    );
    docs.extend(cli_user_bindings());
    // cli/src/client.rs: POST, GET (list by label) and DELETE of NetReach objects; GET through
    // the controller Service's proxy.
    let mut want: BTreeSet<Grant> = ["get", "list", "create", "delete"]
        .into_iter()
        .map(|verb| grant("cluster", "meshdoctor.io", "netreaches", verb, ""))
        .collect();
    for service in ["meshdoctor-controller", "https:meshdoctor-controller:https"] {
        want.insert(grant("meshdoctor", "", "services/proxy", "get", service));
    }
    assert_eq!(grants_of(&docs, "User", "", "alice"), want);
}

#[test]
fn agent_and_controller_are_wired_as_documented() {
    let Some(tools) = tools("agent_and_controller_are_wired_as_documented") else {
        return;
    };
    let docs = rendered(&tools, "deploy");
    assert!(
        !docs.iter().any(|d| d.kind() == "Secret"),
        "deploy: renders a Secret; the API's token and TLS Secrets are the user's (deploy/README.md)"
    );
    let ns = find(&docs, "Namespace", "meshdoctor");
    assert_eq!(
        ns.str_at(&["metadata", "labels", "pod-security.kubernetes.io/enforce"]),
        Some("privileged"),
        "{}: the agent's capabilities and hostPath are beyond the baseline level",
        ns.id()
    );
    for d in docs
        .iter()
        .filter(|d| !matches!(d.kind(), "Namespace" | "CustomResourceDefinition"))
        .filter(|d| !matches!(d.kind(), "ClusterRole" | "ClusterRoleBinding"))
    {
        let ns = d.namespace();
        let events_role = d.name() == "meshdoctor-controller-events";
        assert!(
            ns == Some("meshdoctor") || (events_role && ns == Some("default")),
            "{}: expected namespace meshdoctor",
            d.id()
        );
    }

    let agent = find(&docs, "DaemonSet", "meshdoctor-agent");
    let spec = pod_spec(agent);
    let c = container(agent, "agent");
    assert_eq!(
        strings(c.get("command")),
        ["meshdoctor-agent"],
        "{}",
        agent.id()
    );
    let args = strings(c.get("args"));
    let arg = |flag: &str| -> Option<String> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).cloned()
    };
    assert!(
        seq(spec.get("tolerations"))
            .iter()
            .any(|t| t["operator"].as_str() == Some("Exists") && t.get("key").is_none()),
        "{}: must tolerate every taint (operator Exists)",
        agent.id()
    );
    let env_field = |c: &Value, name: &str| -> Option<String> {
        seq(c.get("env"))
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .and_then(|e| get(e, &["valueFrom", "fieldRef", "fieldPath"]))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    assert_eq!(
        env_field(c, "NODE_NAME").as_deref(),
        Some("spec.nodeName"),
        "{}: NODE_NAME",
        agent.id()
    );
    let ports: BTreeSet<(String, u64, String)> = seq(c.get("ports"))
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["containerPort"].as_u64().unwrap_or_default(),
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([
            ("metrics".into(), 9090, "TCP".into()),
            ("probe-tcp".into(), 9091, "TCP".into()),
            ("probe-udp".into(), 9091, "UDP".into()),
        ]),
        "{}: ports",
        agent.id()
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            get(c, &[probe, "httpGet", "path"]).and_then(Value::as_str),
            Some("/healthz"),
            "{}: {probe}",
            agent.id()
        );
        assert_eq!(
            get(c, &[probe, "httpGet", "port"]).and_then(Value::as_str),
            Some("metrics"),
            "{}: {probe}",
            agent.id()
        );
    }
    assert!(
        get(c, &["resources", "requests"]).is_some() && get(c, &["resources", "limits"]).is_some(),
        "{}: resources requests and limits",
        agent.id()
    );

    // Each flag naming a file names one in a volume mounted from the right source: the
    // agent's identity a projected token for the controller's audience, its CA the Secret's
    // ca.crt alone; the controller's tokens and certificate their Secrets' keys.
    let controller = find(&docs, "Deployment", "meshdoctor-controller");
    let cc = container(controller, "controller");
    let controller_arg = |flag: &str| -> String {
        let args = strings(cc.get("args"));
        let i = args.iter().position(|a| a == flag);
        i.and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| panic!("{}: no {flag}", controller.id()))
    };
    let audience = controller_arg("--agent-token-audience");
    /// Where a file a flag names must come from.
    enum Source<'a> {
        /// A projected service-account token for this audience.
        Token(&'a str),
        /// This key of this Secret (the volume may hold the Secret's other keys).
        Key(&'a str, &'a str),
        /// This key of this Secret, and nothing else of it.
        Only(&'a str, &'a str),
    }
    for (d, c, flag, source) in [
        (agent, c, "--token-file", Source::Token(&audience)),
        (
            agent,
            c,
            "--controller-ca",
            Source::Only("meshdoctor-controller-tls", "ca.crt"),
        ),
        (
            controller,
            cc,
            "--admin-token-file",
            Source::Key("meshdoctor-api-tokens", "admin"),
        ),
        (
            controller,
            cc,
            "--reader-token-file",
            Source::Key("meshdoctor-api-tokens", "reader"),
        ),
        (
            controller,
            cc,
            "--api-tls-cert",
            Source::Key("meshdoctor-controller-tls", "tls.crt"),
        ),
        (
            controller,
            cc,
            "--api-tls-key",
            Source::Key("meshdoctor-controller-tls", "tls.key"),
        ),
    ] {
        let args = strings(c.get("args"));
        let file = args
            .iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("{}: no {flag}", d.id()));
        let (dir, name) = file.rsplit_once('/').unwrap();
        let mount = seq(c.get("volumeMounts"))
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(dir))
            .unwrap_or_else(|| panic!("{}: {flag} {file} is in no mounted volume", d.id()))
            .clone();
        let volume = seq(pod_spec(d).get("volumes"))
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{}: no volume {:?}", d.id(), mount["name"]))
            .clone();
        let what = format!("{}: {flag} {file}", d.id());
        match source {
            Source::Token(audience) => {
                let token = &volume["projected"]["sources"][0]["serviceAccountToken"];
                assert_eq!(
                    token["audience"].as_str(),
                    Some(audience),
                    "{what}: audience"
                );
                assert_eq!(token["path"].as_str(), Some(name), "{what}");
                assert!(
                    token["expirationSeconds"]
                        .as_u64()
                        .is_some_and(|s| s <= 3600),
                    "{what}: a token of an hour at most"
                );
            }
            Source::Key(secret, key) | Source::Only(secret, key) => {
                assert_eq!(
                    volume["secret"]["secretName"].as_str(),
                    Some(secret),
                    "{what}"
                );
                assert_eq!(name, key, "{what}: the key");
                let items = seq(volume["secret"].get("items"));
                if matches!(source, Source::Only(..)) {
                    assert_eq!(items.len(), 1, "{what}: only {key} of {secret}");
                    assert_eq!(items[0]["key"].as_str(), Some(key), "{what}");
                    assert_eq!(items[0]["path"].as_str(), Some(key), "{what}");
                }
            }
        }
    }
    assert_eq!(
        get(pod_spec(agent), &["automountServiceAccountToken"]).and_then(Value::as_bool),
        Some(false),
        "{}: no API token",
        agent.id()
    );

    // The agents find the controller through its Service.
    let svc = find(&docs, "Service", "meshdoctor-controller");
    let svc_port = seq(get(&svc.value, &["spec", "ports"]))
        .first()
        .and_then(|p| p["port"].as_u64())
        .unwrap_or_else(|| panic!("{}: no port", svc.id()));
    assert_eq!(
        arg("--controller"),
        Some(format!("https://meshdoctor-controller:{svc_port}")),
        "{}: --controller must name the controller's Service and port",
        agent.id()
    );
    // The controller pods' labels, and the one the leader adds to its own pod.
    let mut leader = get(
        &controller.value,
        &["spec", "template", "metadata", "labels"],
    )
    .cloned()
    .unwrap_or_default();
    leader[meshdoctor_api::routes::LEADER_LABEL] = Value::from("true");
    assert_eq!(
        get(&svc.value, &["spec", "selector"]),
        Some(&leader),
        "{}: selects the leader among the controller pods",
        svc.id()
    );

    // The controller: two replicas behind a leader Lease, ready only when leading.
    assert_eq!(
        get(&controller.value, &["spec", "replicas"]).and_then(Value::as_u64),
        Some(2),
        "{}",
        controller.id()
    );
    assert_eq!(
        get(
            &controller.value,
            &["spec", "strategy", "rollingUpdate", "maxUnavailable"]
        )
        .and_then(Value::as_u64),
        Some(0),
        "{}: a rolling update that keeps a replica while the next one starts",
        controller.id()
    );
    assert_eq!(
        strings(cc.get("command")),
        ["meshdoctor-controller"],
        "{}",
        controller.id()
    );
    assert_eq!(
        strings(cc.get("args")),
        [
            "--backend",
            "kubernetes",
            "--data-dir",
            "/var/lib/meshdoctor",
            "--listen",
            "[::]:7070",
            "--agent-token-audience",
            "meshdoctor",
            "--admin-token-file",
            "/etc/meshdoctor/api-tokens/admin",
            "--reader-token-file",
            "/etc/meshdoctor/api-tokens/reader",
            "--api-tls-cert",
            "/etc/meshdoctor/api-tls/tls.crt",
            "--api-tls-key",
            "/etc/meshdoctor/api-tls/tls.key"
        ],
        "{}: args",
        controller.id()
    );
    assert_eq!(
        env_field(cc, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace"),
        "{}",
        controller.id()
    );
    assert_eq!(
        env_field(cc, "POD_NAME").as_deref(),
        Some("metadata.name"),
        "{}",
        controller.id()
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(
            get(cc, &[probe, "httpGet", "path"]).and_then(Value::as_str),
            Some(path),
            "{}: {probe}",
            controller.id()
        );
    }
    let data = seq(cc.get("volumeMounts"))
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/var/lib/meshdoctor"))
        .unwrap_or_else(|| panic!("{}: nothing at /var/lib/meshdoctor", controller.id()));
    let data_vol = seq(pod_spec(controller).get("volumes"))
        .iter()
        .find(|v| v["name"] == data["name"])
        .expect("the data volume");
    assert!(
        data_vol.get("emptyDir").is_some(),
        "{}: the data volume is an emptyDir in the base",
        controller.id()
    );

    // The agent Service: NodePort, dual-stack when possible, both probe ports, the agents.
    let asvc = find(&docs, "Service", "meshdoctor-agent");
    assert_eq!(
        asvc.str_at(&["spec", "type"]),
        Some("NodePort"),
        "{}",
        asvc.id()
    );
    assert_eq!(
        asvc.str_at(&["spec", "ipFamilyPolicy"]),
        Some("PreferDualStack"),
        "{}",
        asvc.id()
    );
    assert_eq!(
        get(&asvc.value, &["spec", "selector"]),
        get(&agent.value, &["spec", "template", "metadata", "labels"]),
        "{}: selects the agent pods",
        asvc.id()
    );
    let svc_ports: BTreeSet<(String, u64, String, String)> =
        seq(get(&asvc.value, &["spec", "ports"]))
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().into(),
                    p["port"].as_u64().unwrap_or_default(),
                    p["protocol"].as_str().unwrap_or("TCP").into(),
                    p["targetPort"].as_str().unwrap_or_default().into(),
                )
            })
            .collect();
    assert_eq!(
        svc_ports,
        BTreeSet::from([
            ("probe-tcp".into(), 9091, "TCP".into(), "probe-tcp".into()),
            ("probe-udp".into(), 9091, "UDP".into(), "probe-udp".into()),
        ]),
        "{}: ports (each targets the agent's port of that name and protocol)",
        asvc.id()
    );
    let ing = find(&docs, "Ingress", "meshdoctor-agent");
    let paths = seq(ing.value["spec"]["rules"][0]["http"].get("paths"));
    assert_eq!(paths.len(), 1, "{}: one path", ing.id());
    assert_eq!(paths[0]["path"].as_str(), Some("/"), "{}", ing.id());
    assert_eq!(
        paths[0]["pathType"].as_str(),
        Some("Prefix"),
        "{}",
        ing.id()
    );
    assert_eq!(
        get(&paths[0], &["backend", "service", "name"]).and_then(Value::as_str),
        Some("meshdoctor-agent"),
        "{}",
        ing.id()
    );
    assert_eq!(
        get(&paths[0], &["backend", "service", "port", "name"]).and_then(Value::as_str),
        Some("probe-tcp"),
        "{}: the agents' HTTP responder",
        ing.id()
    );
}

#[test]
fn hostnetwork_overlay_moves_only_the_agents_to_the_node_network() {
    let Some(tools) = tools("hostnetwork_overlay_moves_only_the_agents_to_the_node_network") else {
        return;
    };
    let base = rendered(&tools, "deploy");
    let overlay = rendered(&tools, "deploy/overlays/hostnetwork");
    let agent = find(&overlay, "DaemonSet", "meshdoctor-agent");
    let spec = pod_spec(agent);
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true), "{}", agent.id());
    assert_eq!(
        spec["dnsPolicy"].as_str(),
        Some("ClusterFirstWithHostNet"),
        "{}: cluster DNS from the host network",
        agent.id()
    );
    let args = strings(container(agent, "agent").get("args"));
    assert!(
        args.windows(2).any(|w| w[0] == "--interface"),
        "{}: the node interfaces to mesh over must be named (--interface): {args:?}",
        agent.id()
    );
    let base_agent = find(&base, "DaemonSet", "meshdoctor-agent");
    assert!(
        pod_spec(base_agent).get("hostNetwork").is_none(),
        "{}: the base agent is in the pod network",
        base_agent.id()
    );
    // Nothing else changes.
    let others = |docs: &[Doc]| -> Vec<Value> {
        docs.iter()
            .filter(|d| d.kind() != "DaemonSet")
            .map(|d| d.value.clone())
            .collect()
    };
    assert!(
        others(&base) == others(&overlay),
        "deploy/overlays/hostnetwork: changes more than the agent DaemonSet"
    );
}

#[test]
fn multus_overlay_attaches_net1_to_every_agent() {
    let Some(tools) = tools("multus_overlay_attaches_net1_to_every_agent") else {
        return;
    };
    let overlay = rendered(&tools, "deploy/overlays/multus");
    let agent = find(&overlay, "DaemonSet", "meshdoctor-agent");
    let annotation = agent
        .str_at(&[
            "spec",
            "template",
            "metadata",
            "annotations",
            "k8s.v1.cni.cncf.io/networks",
        ])
        .unwrap_or_else(|| panic!("{}: no k8s.v1.cni.cncf.io/networks annotation", agent.id()));
    let networks: serde_json::Value = serde_json::from_str(annotation).unwrap_or_else(|e| {
        panic!(
            "{}: k8s.v1.cni.cncf.io/networks is not JSON ({e}): {annotation}",
            agent.id()
        )
    });
    let networks = networks.as_array().expect("a list of networks");
    assert_eq!(networks.len(), 1, "{}: {annotation}", agent.id());
    assert_eq!(
        networks[0]["interface"].as_str(),
        Some("net1"),
        "{}: attached as net1",
        agent.id()
    );
    let net_name = networks[0]["name"].as_str().expect("a network name");
    let nad = find(&overlay, "NetworkAttachmentDefinition", net_name);
    assert_eq!(
        nad.namespace(),
        agent.namespace(),
        "{}: must be in the agents' namespace (the annotation names no namespace)",
        nad.id()
    );
    let config_text = nad
        .str_at(&["spec", "config"])
        .unwrap_or_else(|| panic!("{}: no spec.config", nad.id()));
    let config: serde_json::Value = serde_json::from_str(config_text)
        .unwrap_or_else(|e| panic!("{}: spec.config is not JSON ({e})", nad.id()));
    assert_eq!(config["type"].as_str(), Some("macvlan"), "{}", nad.id());
    assert!(config["master"].as_str().is_some(), "{}: master", nad.id());
    assert_eq!(config["name"].as_str(), Some(net_name), "{}", nad.id());
    let ranges: Vec<&str> = config["ipam"]["ipRanges"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["range"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        ranges.iter().any(|r| r.contains('.')) && ranges.iter().any(|r| r.contains(':')),
        "{}: an IPv4 and an IPv6 range for a dual-stack mesh: {ranges:?}",
        nad.id()
    );
    // The example meshing eth0 and net1 names the interface the annotation creates.
    let examples = rendered(&tools, "deploy/examples");
    let task = find(&examples, "NetReach", "mesh-multus");
    assert_eq!(
        strings(get(&task.value, &["spec", "target", "interfaces"])),
        ["eth0", "net1"],
        "{}",
        task.id()
    );
}

#[test]
fn the_crds_kustomization_lists_every_generated_crd() {
    // No tools needed: deploy/crds/kustomization.yaml is kept by hand beside the files
    // `cargo xtask crds` writes, and a CRD missing from it would be missing from every install.
    let dir = workspace_root().join("deploy/crds");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml"))
        .unwrap_or_else(|e| panic!("deploy/crds/kustomization.yaml: {e}"));
    let kustomization: Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("deploy/crds/kustomization.yaml: {e}"));
    let listed: BTreeSet<String> = strings(kustomization.get("resources"))
        .into_iter()
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, files,
        "deploy/crds/kustomization.yaml must list exactly the CRD files in deploy/crds"
    );
    assert_eq!(
        files,
        BTreeSet::from([
            "apphttphealthy.yaml".into(),
            "netdns.yaml".into(),
            "netreach.yaml".into()
        ]),
        "deploy/crds: one CRD file per task kind"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: monitoring (deploy/monitoring)

/// Whether `selector` (a LabelSelector of matchLabels only) selects an object with `labels`.
fn selects(selector: &Value, labels: Option<&Value>, what: &str) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "{what}: matchExpressions are not checked here; use matchLabels"
    );
    let want = selector
        .get("matchLabels")
        .and_then(Value::as_mapping)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| panic!("{what}: selects by no label (it would select everything)"));
    want.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The `name`s of a list of ports.
fn port_names(ports: Option<&Value>) -> BTreeSet<String> {
    seq(ports)
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

/// Asserts that `monitor`'s selector selects the candidate named `wanted` and no other
/// (each candidate with the labels it is selected by).
fn assert_selects_only(monitor: &Doc, candidates: &[(&Doc, Option<&Value>)], wanted: &str) {
    let selector = get(&monitor.value, &["spec", "selector"])
        .unwrap_or_else(|| panic!("{}: no spec.selector", monitor.id()));
    for (d, labels) in candidates {
        let selected = selects(selector, *labels, &monitor.id());
        assert_eq!(
            selected,
            d.name() == wanted,
            "{}: must select {wanted} and nothing else; {} is {}",
            monitor.id(),
            d.id(),
            if selected { "selected" } else { "not selected" }
        );
    }
}

/// The scrape endpoints of `monitor` (its spec's `field`), each on one of `owner`'s `ports`,
/// at /metrics.
fn scrape_endpoints<'a>(
    monitor: &'a Doc,
    field: &str,
    owner: &Doc,
    ports: &BTreeSet<String>,
) -> &'a [Value] {
    let endpoints = seq(get(&monitor.value, &["spec", field]));
    assert!(!endpoints.is_empty(), "{}: no {field}", monitor.id());
    for e in endpoints {
        let port = e["port"].as_str().unwrap_or_default();
        assert!(
            ports.contains(port),
            "{}: port {port:?} is not a port name of {} ({ports:?})",
            monitor.id(),
            owner.id()
        );
        assert_eq!(e["path"].as_str(), Some("/metrics"), "{}", monitor.id());
    }
    endpoints
}

#[test]
fn monitors_select_the_agent_pods_and_the_controller_service() {
    let Some(tools) = tools("monitors_select_the_agent_pods_and_the_controller_service") else {
        return;
    };
    let base = rendered(&tools, "deploy");
    let monitoring = rendered(&tools, MONITORING);

    // The PodMonitor: the agent pods (and no other workload's), on a port the agent declares.
    let pm = find(&monitoring, "PodMonitor", "meshdoctor-agent");
    let agent = find(&base, "DaemonSet", "meshdoctor-agent");
    let workloads: Vec<(&Doc, Option<&Value>)> = base
        .iter()
        .filter(|d| WORKLOADS.contains(&d.kind()))
        .map(|d| {
            (
                d,
                get(&d.value, &["spec", "template", "metadata", "labels"]),
            )
        })
        .collect();
    assert_selects_only(pm, &workloads, agent.name());
    assert_eq!(
        pm.namespace(),
        agent.namespace(),
        "{}: a PodMonitor without a namespaceSelector selects in its own namespace",
        pm.id()
    );
    let agent_ports = port_names(container(agent, "agent").get("ports"));
    for e in scrape_endpoints(pm, "podMetricsEndpoints", agent, &agent_ports) {
        // Agent metrics carry no node label: the scrape adds it from the pod's node.
        let relabeled = |source: &str, target: &str| {
            seq(e.get("relabelings")).iter().any(|r| {
                strings(r.get("sourceLabels")) == [source]
                    && r["targetLabel"].as_str() == Some(target)
            })
        };
        for (source, target) in [
            ("__meta_kubernetes_pod_node_name", "node"),
            ("__meta_kubernetes_pod_name", "pod"),
        ] {
            assert!(
                relabeled(source, target),
                "{}: no relabeling of {source} into {target}",
                pm.id()
            );
        }
    }

    // The ServiceMonitor: the controller Service (not the agent's), on one of its ports.
    let sm = find(&monitoring, "ServiceMonitor", "meshdoctor-controller");
    let svc = find(&base, "Service", "meshdoctor-controller");
    let services: Vec<(&Doc, Option<&Value>)> = base
        .iter()
        .filter(|d| d.kind() == "Service")
        .map(|d| (d, get(&d.value, &["metadata", "labels"])))
        .collect();
    assert_selects_only(sm, &services, svc.name());
    assert_eq!(sm.namespace(), svc.namespace(), "{}", sm.id());
    let svc_ports = port_names(get(&svc.value, &["spec", "ports"]));
    scrape_endpoints(sm, "endpoints", svc, &svc_ports);
}

/// The panels of a dashboard, those inside rows included.
fn panels(list: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in list.as_array().map_or(&[][..], Vec::as_slice) {
        out.push(p);
        out.extend(panels(&p["panels"]));
    }
    out
}

/// The Grafana variables and macros a dashboard expression may use: the end-to-end test
/// evaluates every expression with these substituted.
const DASHBOARD_VARIABLES: [&str; 6] = [
    "$task",
    "$network",
    "$family",
    "$__rate_interval",
    "$__range",
    "$__interval",
];

/// Each dashboard of the rendered ConfigMaps, by `ConfigMap/key`, parsed.
fn dashboards(monitoring: &[Doc]) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for cm in monitoring.iter().filter(|d| d.kind() == "ConfigMap") {
        assert_eq!(
            cm.str_at(&["metadata", "labels", "grafana_dashboard"]),
            Some("1"),
            "{}: the Grafana sidecar loads ConfigMaps labelled grafana_dashboard: \"1\"",
            cm.id()
        );
        let data = get(&cm.value, &["data"])
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("{}: no data", cm.id()));
        for (key, text) in data {
            let key = key.as_str().unwrap_or_default();
            assert!(key.ends_with(".json"), "{}: key {key:?}", cm.id());
            let json = serde_json::from_str(text.as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{}: {key} is not JSON: {e}", cm.id()));
            out.push((format!("{}/{key}", cm.name()), json));
        }
    }
    out
}

#[test]
fn dashboards_are_sidecar_configmaps_of_well_formed_panels() {
    let Some(tools) = tools("dashboards_are_sidecar_configmaps_of_well_formed_panels") else {
        return;
    };
    let dashboards = dashboards(&rendered(&tools, MONITORING));
    assert!(
        !dashboards.is_empty(),
        "{MONITORING}: no dashboard ConfigMap"
    );
    let mut uids = BTreeSet::new();
    for (name, d) in &dashboards {
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(!uid.is_empty(), "{name}: no uid");
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} used twice");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}");
        let vars = d["templating"]["list"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let var = |n: &str| vars.iter().find(|v| v["name"].as_str() == Some(n));
        let ds = var("datasource").unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(
            (ds["type"].as_str(), ds["query"].as_str()),
            (Some("datasource"), Some("prometheus")),
            "{name}: the datasource variable picks a Prometheus data source"
        );
        // Every query (a variable's, a panel's, a target's) goes to the chosen data source; a
        // target without one uses its panel's.
        let chosen = |ds: &serde_json::Value| {
            ds["uid"].as_str() == Some("${datasource}") || ds == "${datasource}"
        };
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert!(
                chosen(&v["datasource"]),
                "{name}: variable {}: datasource {} is not ${{datasource}}",
                v["name"],
                v["datasource"]
            );
        }
        let mut ids = BTreeSet::new();
        let mut used = BTreeSet::new();
        for p in panels(&d["panels"]) {
            let title = p["title"].as_str().unwrap_or_default();
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: panel {title:?} has no id"));
            assert!(ids.insert(id), "{name}: panel id {id} used twice");
            let Some(targets) = p["targets"].as_array() else {
                continue;
            };
            assert!(!targets.is_empty(), "{name}: panel {title:?} has no target");
            assert!(
                chosen(&p["datasource"]),
                "{name}: panel {title:?}: datasource {} is not ${{datasource}}",
                p["datasource"]
            );
            for t in targets.iter().filter(|t| !t["datasource"].is_null()) {
                assert!(
                    chosen(&t["datasource"]),
                    "{name}: panel {title:?}: target {}: datasource {} is not ${{datasource}}",
                    t["refId"],
                    t["datasource"]
                );
            }
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(
                    !expr.trim().is_empty(),
                    "{name}: panel {title:?}: empty expr"
                );
                for (i, _) in expr.match_indices('$') {
                    let v = &expr[i..i + 1 + identifier_at(&expr[i + 1..]).len()];
                    assert!(
                        DASHBOARD_VARIABLES.contains(&v),
                        "{name}: panel {title:?}: {v:?} is not one of the variables and macros \
                         {DASHBOARD_VARIABLES:?}: {expr}"
                    );
                    used.insert(&v[1..]);
                }
            }
        }
        // Every variable an expression uses is a multi-value query variable whose "All" is
        // the regex .* (the expressions match it with =~).
        for v in used.iter().filter(|v| !v.starts_with("__")) {
            let var = var(v).unwrap_or_else(|| panic!("{name}: ${v} is used but not defined"));
            assert_eq!(var["type"].as_str(), Some("query"), "{name}: ${v}");
            assert!(
                var["multi"] == true && var["includeAll"] == true && var["allValue"] == ".*",
                "{name}: ${v} must be multi, include All and have allValue \".*\""
            );
        }
    }
}

/// A metric deploy/monitoring/README.md documents.
struct Documented {
    /// `counter`, `gauge` or `histogram`.
    kind: String,
    /// The values of the labels whose values it lists (`status (`succeed`, `fail`)`).
    values: BTreeMap<String, BTreeSet<String>>,
}

/// The metrics of deploy/monitoring/README.md's tables: the first three cells of each row
/// naming a `meshdoctor_*` metric.
fn documented_metrics() -> BTreeMap<String, Documented> {
    let path = workspace_root().join(MONITORING).join("README.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix("| `")?.split('|');
            let name = cells.next()?.trim().trim_end_matches('`');
            if !name.starts_with("meshdoctor_") {
                return None;
            }
            let kind = cells.next()?.trim().to_string();
            // `task, status (`succeed`, `fail`)`: each parenthesis lists the values of the
            // label named just before it.
            let parts: Vec<&str> = cells.next()?.split('(').collect();
            let values = parts
                .windows(2)
                .map(|w| {
                    let label = w[0].trim().rsplit([',', ' ']).next().unwrap_or_default();
                    let listed = w[1].split(')').next().unwrap_or_default().split(',');
                    let listed = listed.map(|v| v.trim().trim_matches('`').to_string());
                    (label.to_string(), listed.collect())
                })
                .collect();
            Some((name.to_string(), Documented { kind, values }))
        })
        .collect()
}

fn identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier `text` starts with (letters, digits and `_`).
fn identifier_at(text: &str) -> &str {
    &text[..text.find(|c| !identifier_char(c)).unwrap_or(text.len())]
}

/// The `meshdoctor_*` series names in `text`, each with what follows it.
fn meshdoctor_series(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.match_indices("meshdoctor_")
        .filter(|(i, _)| !text[..*i].ends_with(identifier_char))
        .map(|(i, _)| {
            let name = identifier_at(&text[i..]);
            (name, &text[i + name.len()..])
        })
}

/// The metric a series name belongs to: a histogram's `_bucket`, `_sum` and `_count` series
/// are the histogram's.
fn metric_of<'a>(series: &'a str, documented: &BTreeMap<String, Documented>) -> &'a str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| {
            let base = series.strip_suffix(suffix)?;
            documented
                .get(base)
                .is_some_and(|m| m.kind == "histogram")
                .then_some(base)
        })
        .unwrap_or(series)
}

/// The `label="value"` matchers of the `meshdoctor_*{...}` selectors in a PromQL expression,
/// as (metric, label, value).
fn equality_matchers<'a>(
    expr: &'a str,
    documented: &BTreeMap<String, Documented>,
) -> Vec<(&'a str, &'a str, &'a str)> {
    let mut out = Vec::new();
    for (series, rest) in meshdoctor_series(expr) {
        let Some(body) = rest.strip_prefix('{') else {
            continue;
        };
        for matcher in body[..body.find('}').unwrap_or(body.len())].split(',') {
            let Some((label, value)) = matcher.split_once('=') else {
                continue;
            };
            // Not `!=`, `=~` or `!~`.
            if let Some(value) = value.strip_prefix('"').filter(|_| !label.ends_with('!')) {
                let metric = metric_of(series, documented);
                out.push((metric, label.trim(), value.trim_end_matches('"')));
            }
        }
    }
    out
}

#[test]
fn alerts_and_dashboards_use_only_documented_metrics() {
    let Some(tools) = tools("alerts_and_dashboards_use_only_documented_metrics") else {
        return;
    };
    let documented = documented_metrics();
    assert!(
        documented.contains_key("meshdoctor_interface_loss_ratio")
            && documented["meshdoctor_rounds_total"]
                .values
                .contains_key("status"),
        "{MONITORING}/README.md: its metric tables did not parse"
    );
    let monitoring = rendered(&tools, MONITORING);
    let rule = find(&monitoring, "PrometheusRule", "meshdoctor");
    let spec = get(&rule.value, &["spec"]).expect("a PrometheusRule has a spec");
    let rules_test_path = workspace_root().join(MONITORING).join("rules-test.yaml");
    let rules_test = std::fs::read_to_string(&rules_test_path)
        .unwrap_or_else(|e| panic!("{}: {e}", rules_test_path.display()));
    let dashboards = dashboards(&monitoring);
    // Every metric named anywhere (expressions, descriptions, test series) is documented.
    let mut texts = vec![
        (rule.id(), serde_yaml::to_string(spec).expect("serializes")),
        ("rules-test.yaml".to_string(), rules_test.clone()),
    ];
    texts.extend(
        dashboards
            .iter()
            .map(|(name, d)| (name.clone(), d.to_string())),
    );
    for (source, text) in &texts {
        let unknown: BTreeSet<&str> = meshdoctor_series(text)
            .map(|(series, _)| metric_of(series, &documented))
            .filter(|m| !documented.contains_key(*m))
            .collect();
        assert!(
            unknown.is_empty(),
            "{source}: metrics not in {MONITORING}/README.md's tables: {unknown:?}"
        );
    }
    // A label value an expression selects is one the tables list for that label.
    let mut exprs: Vec<(String, &str)> = seq(spec.get("groups"))
        .iter()
        .flat_map(|g| seq(g.get("rules")))
        .filter_map(|r| Some((rule.id(), r["expr"].as_str()?)))
        .collect();
    for (name, d) in &dashboards {
        for p in panels(&d["panels"]) {
            let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
            exprs.extend(
                targets
                    .iter()
                    .filter_map(|t| Some((name.clone(), t["expr"].as_str()?))),
            );
        }
    }
    for (source, expr) in &exprs {
        for (metric, label, value) in equality_matchers(expr, &documented) {
            if let Some(listed) = documented.get(metric).and_then(|m| m.values.get(label)) {
                assert!(
                    listed.contains(value),
                    "{source}: {metric}{{{label}=\"{value}\"}}: {MONITORING}/README.md lists \
                     {listed:?} for {label}: {expr}"
                );
            }
        }
    }

    // Every alert: a hold, a severity, a summary and a description; each one unit-tested.
    let mut alerts = BTreeSet::new();
    for group in seq(spec.get("groups")) {
        for r in seq(group.get("rules")) {
            let Some(alert) = r["alert"].as_str() else {
                continue;
            };
            alerts.insert(alert.to_string());
            assert!(
                r["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{}: {alert}: no expr",
                rule.id()
            );
            assert!(
                r["for"].as_str().is_some_and(|f| !f.is_empty()),
                "{}: {alert}: no `for` (an alert without a hold fires on one bad sample)",
                rule.id()
            );
            assert!(
                matches!(
                    get(r, &["labels", "severity"]).and_then(Value::as_str),
                    Some("info" | "warning" | "critical")
                ),
                "{}: {alert}: severity label info, warning or critical",
                rule.id()
            );
            for a in ["summary", "description"] {
                assert!(
                    get(r, &["annotations", a])
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.trim().is_empty()),
                    "{}: {alert}: no {a} annotation",
                    rule.id()
                );
            }
        }
    }
    for required in [
        "MeshdoctorInterfaceLoss",
        "MeshdoctorRoundFailed",
        "MeshdoctorAgentNotReporting",
        "MeshdoctorAgentDown",
        "MeshdoctorRingBufferDrops",
        "MeshdoctorNoEbpf",
    ] {
        assert!(
            alerts.contains(required),
            "{}: no alert {required}",
            rule.id()
        );
    }
    let tests: Value = serde_yaml::from_str(&rules_test)
        .unwrap_or_else(|e| panic!("{}: {e}", rules_test_path.display()));
    assert_eq!(
        strings(tests.get("rule_files")),
        ["meshdoctor-rules.yaml"],
        "rules-test.yaml: the rule file is the PrometheusRule's spec, written as \
         meshdoctor-rules.yaml next to it"
    );
    let tested: BTreeSet<String> = seq(tests.get("tests"))
        .iter()
        .flat_map(|t| seq(t.get("alert_rule_test")))
        .filter_map(|t| t["alertname"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        tested,
        alerts,
        "rules-test.yaml must unit-test exactly the alerts of {}",
        rule.id()
    );
}

/// The agent's shipped seccomp profile is containers-common's default (the RuntimeDefault of
/// CRI-O and podman, installed here with podman) plus exactly two rules: bpf() with CAP_BPF and
/// perf_event_open() with CAP_PERFMON, taken out of the rule refusing them without
/// CAP_SYS_ADMIN. tests/containers.rs runs the agent under it.
#[test]
fn the_shipped_seccomp_profile_is_the_runtime_default_plus_bpf_and_perfmon() {
    let test = "the_shipped_seccomp_profile_is_the_runtime_default_plus_bpf_and_perfmon";
    let read = |path: &Path| -> serde_json::Value {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let shipped = read(&workspace_root().join("deploy/seccomp/meshdoctor/agent.json"));
    let rules = shipped["syscalls"].as_array().expect("syscalls");
    let allows = |name: &str, cap: &str| {
        rules.iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r["names"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n == name))
                && r["includes"]["caps"] == serde_json::json!([cap])
        })
    };
    assert!(
        allows("bpf", "CAP_BPF"),
        "bpf() is not allowed with CAP_BPF"
    );
    assert!(
        allows("perf_event_open", "CAP_PERFMON"),
        "perf_event_open() is not allowed with CAP_PERFMON"
    );
    for r in rules.iter().filter(|r| r["action"] != "SCMP_ACT_ALLOW") {
        let names = r["names"].as_array().cloned().unwrap_or_default();
        assert!(
            !names.iter().any(|n| n == "bpf" || n == "perf_event_open"),
            "a rule still refuses bpf or perf_event_open: {r}"
        );
    }
    let default = Path::new("/usr/share/containers/seccomp.json");
    if !tools_present(
        test,
        if default.is_file() {
            ""
        } else {
            "podman's default seccomp profile"
        },
    ) {
        return;
    }
    let default = read(default);
    // Taking our two syscalls out of both and dropping our two rules leaves the same profile.
    let strip = |profile: &serde_json::Value, ours: bool| -> serde_json::Value {
        let mut p = profile.clone();
        let rules: Vec<serde_json::Value> = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                !(ours
                    && r["comment"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("meshdoctor-agent:")))
            })
            .map(|r| {
                let mut r = r.clone();
                if let Some(names) = r["names"].as_array_mut() {
                    names.retain(|n| n != "bpf" && n != "perf_event_open");
                }
                r
            })
            .collect();
        p["syscalls"] = serde_json::Value::Array(rules);
        p
    };
    assert!(
        strip(&shipped, true) == strip(&default, false),
        "deploy/seccomp/meshdoctor/agent.json differs from {} in more than its bpf and \
         perf_event_open rules",
        "/usr/share/containers/seccomp.json"
    );
}

// ---------------------------------------------------------------------------------------------
// The Helm chart (charts/meshdoctor), rendered by Helm itself

const CHART: &str = "charts/meshdoctor";

/// Renders or lints the chart with Helm's Go SDK (the PyPI wheel helm-python-sdk that
/// `cargo xtask setup` installs: no Helm binary can be had from the registries here), as
/// release `meshdoctor` in namespace `meshdoctor`. argv: mode, chart dir, values JSON.
const HELM_PY: &str = r#"
import json, sys
import helm_python as helm
mode, chart, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if mode == "lint":
    print(json.dumps(helm.lint(chart, values, strict=True, namespace="meshdoctor")))
else:
    out = helm.Chart.load(chart).render(values, name="meshdoctor", namespace="meshdoctor", is_install=True)
    for path, text in sorted(out.items()):
        if path.endswith(".yaml") and text.strip():
            sys.stdout.write("---\n# Source: " + path + "\n" + text + "\n")
"#;

/// Runs [`HELM_PY`]; `None` (the test is skipped, or fails after setup) without the SDK.
fn helm(tools: &Tools, test: &str, mode: &str, values: &serde_json::Value) -> Option<String> {
    if !runs(&tools.python, &["-c", "import helm_python"]) {
        tools_present(
            test,
            "Helm's SDK (helm-python-sdk in the project's virtualenv)",
        );
        return None;
    }
    let out = Command::new(&tools.python)
        .args(["-c", HELM_PY, mode])
        .arg(workspace_root().join(CHART))
        .arg(values.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tools.python.display()));
    assert!(
        out.status.success(),
        "helm {mode} {CHART} with {values}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).expect("UTF-8"))
}

/// An object as both renderings must agree on it: Helm's own labels dropped, and the multus
/// annotation's JSON parsed (kustomize keeps the overlay's spelling, Helm writes compact JSON).
fn comparable(d: &Doc) -> Value {
    let mut v = d.value.clone();
    if let Some(labels) = find_mut(&mut v, &["metadata", "labels"]).and_then(Value::as_mapping_mut)
    {
        for helm_label in [
            "helm.sh/chart",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ] {
            labels.remove(helm_label);
        }
    }
    let networks = [
        "spec",
        "template",
        "metadata",
        "annotations",
        "k8s.v1.cni.cncf.io/networks",
    ];
    if let Some(annotation) = find_mut(&mut v, &networks)
        && let Some(json) = annotation.as_str()
    {
        let parsed: serde_json::Value = serde_json::from_str(json).expect("networks JSON");
        *annotation = serde_yaml::to_value(parsed).unwrap();
    }
    v
}

/// The value at `path`, if there is one.
fn find_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, key| v.get_mut(*key))
}

/// The objects of `docs` by `Kind/namespace/name`, without `skip` kinds.
fn by_id(docs: &[Doc], skip: &[&str]) -> BTreeMap<String, Value> {
    docs.iter()
        .filter(|d| !skip.contains(&d.kind()))
        .map(|d| {
            let id = format!("{}/{}/{}", d.kind(), d.namespace().unwrap_or(""), d.name());
            (id, comparable(d))
        })
        .collect()
}

/// Each chart option renders, with Helm, exactly what its kustomize counterpart renders (less
/// what a chart does not template: the Namespace, which `helm install --create-namespace`
/// makes, the CRDs, which Helm installs from crds/, and the example NetworkAttachment), and
/// every rendering passes kubernetes-validate and `helm lint --strict`.
#[test]
fn the_chart_renders_with_helm_what_kustomize_renders() {
    let test = "the_chart_renders_with_helm_what_kustomize_renders";
    let Some(tools) = tools(test) else {
        return;
    };
    let monitoring = serde_json::json!({"monitoring": {
        "podMonitor": true, "serviceMonitor": true, "prometheusRule": true, "dashboards": true,
    }});
    let cases: [(&str, serde_json::Value, &[&str]); 5] = [
        ("defaults", serde_json::json!({}), &["deploy"]),
        (
            "hostNetwork",
            serde_json::json!({"agent": {"hostNetwork": true}}),
            &["deploy/overlays/hostnetwork"],
        ),
        (
            "multus networks",
            serde_json::json!({"agent": {"networks": [{"name": "meshdoctor-net1", "interface": "net1"}]}}),
            &["deploy/overlays/multus"],
        ),
        (
            "the shipped seccomp profile",
            serde_json::json!({"agent": {"seccompProfile": {"type": "Localhost", "localhostProfile": "meshdoctor/agent.json"}}}),
            &["deploy/overlays/seccomp-localhost"],
        ),
        ("monitoring", monitoring, &["deploy", MONITORING]),
    ];
    let not_templated = [
        "Namespace",
        "CustomResourceDefinition",
        "NetworkAttachmentDefinition",
    ];
    for (what, values, dirs) in cases {
        let Some(text) = helm(&tools, test, "template", &values) else {
            return;
        };
        let source = format!("{CHART} ({what})");
        let chart = by_id(&parse_docs(&source, &text), &[]);
        let mut kustomized = BTreeMap::new();
        for dir in dirs {
            kustomized.extend(by_id(&rendered(&tools, dir), &not_templated));
        }
        let (ours, theirs): (BTreeSet<_>, BTreeSet<_>) =
            (chart.keys().collect(), kustomized.keys().collect());
        assert_eq!(ours, theirs, "{source}: objects differ from {dirs:?}");
        for (id, value) in &chart {
            assert!(
                *value == kustomized[id],
                "{source}: {id} differs from {dirs:?}:\nhelm:\n{}\nkustomize:\n{}",
                serde_yaml::to_string(value).unwrap(),
                serde_yaml::to_string(&kustomized[id]).unwrap()
            );
        }
        let validated = kubernetes_validate(&tools, &source, &text);
        let lint = helm(&tools, test, "lint", &values).expect("Helm's SDK ran for template");
        let report: serde_json::Value = serde_json::from_str(&lint).expect("lint JSON");
        let problems: Vec<&serde_json::Value> = report["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["severity"].as_u64().unwrap_or(0) >= 2)
            .collect();
        assert!(
            problems.is_empty(),
            "{source}: helm lint --strict: {problems:?}"
        );
        eprintln!(
            "{source}: {} objects as {dirs:?}, {validated} validated",
            chart.len()
        );
    }
}

/// What the chart carries as files is deploy/'s, byte for byte (`cargo xtask chart` copies
/// them), and it is versioned and named as the workspace and the image are.
#[test]
fn the_chart_carries_deploys_crds_rules_and_dashboards_and_the_release_version() {
    let root = workspace_root();
    let chart = root.join(CHART);
    let mut pairs = Vec::new();
    for crd in ["apphttphealthy.yaml", "netdns.yaml", "netreach.yaml"] {
        pairs.push((
            root.join("deploy/crds").join(crd),
            chart.join("crds").join(crd),
        ));
    }
    pairs.push((
        root.join(MONITORING).join("prometheusrule.yaml"),
        chart.join("files/prometheusrule.yaml"),
    ));
    let dashboards = root.join(MONITORING).join("dashboards");
    for entry in std::fs::read_dir(&dashboards).unwrap() {
        let name = entry.unwrap().file_name();
        pairs.push((
            dashboards.join(&name),
            chart.join("files/dashboards").join(&name),
        ));
    }
    for (source, copy) in &pairs {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            read(source) == read(copy),
            "{} is not {}: run `cargo xtask chart`",
            copy.display(),
            source.display()
        );
    }
    let copies = |dir: &str| std::fs::read_dir(chart.join(dir)).unwrap().count();
    assert_eq!(
        copies("crds") + copies("files/dashboards") + 1,
        pairs.len(),
        "stray files in the chart"
    );
    let meta: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(
        meta["version"].as_str(),
        Some(meshdoctor_ops::RELEASE),
        "Chart.yaml version"
    );
    assert_eq!(
        meta["appVersion"].as_str(),
        Some(meshdoctor_ops::RELEASE),
        "Chart.yaml appVersion"
    );
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    assert_eq!(
        values["image"]["repository"].as_str(),
        Some(meshdoctor_ops::IMAGE_REPOSITORY),
        "values.yaml image.repository"
    );
}
