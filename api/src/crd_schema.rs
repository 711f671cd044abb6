//! The parts of the CRD schemas that schemars attributes cannot express: fields whose Rust
//! type is not their JSON, user-facing descriptions, NetDns's required target. Used by the
//! task kinds and the status, which both end up in the CRDs (`crd` feature).

use schemars::{Schema, SchemaGenerator, json_schema};

/// kdoctor's `agentSpec` and `sourceAgentNodeSelector`, accepted and unused: any object,
/// kept as written (the apiserver would otherwise prune every field of it).
pub fn preserved_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// The description of the three kinds' `spec`, instead of the Rust docs of the spec types
/// (which are about the Rust types).
pub const SPEC_DESCRIPTION: &str =
    "What the task probes, when and how hard, and what makes a round succeed.";

/// Turns rustdoc links into plain code in every description of `schema` and below: the
/// descriptions are the types' doc comments, which `kubectl explain` shows, and `[`X`]`
/// is noise there.
pub fn plain_docs(schema: &mut Schema) {
    fn walk(map: &mut serde_json::Map<String, serde_json::Value>) {
        for (key, value) in map.iter_mut() {
            match value {
                serde_json::Value::String(doc) if key == "description" => {
                    *doc = doc.replace("[`", "`").replace("`]", "`");
                }
                serde_json::Value::Object(inner) => walk(inner),
                serde_json::Value::Array(items) => items
                    .iter_mut()
                    .filter_map(serde_json::Value::as_object_mut)
                    .for_each(walk),
                _ => {}
            }
        }
    }
    if let Some(map) = schema.as_object_mut() {
        walk(map);
    }
}

/// Makes NetDns's `spec.target` required, without the default schemars derives from its
/// `#[serde(default)]`: that default (no server) fails the target's own CEL rule, and
/// Kubernetes would otherwise accept a NetDns without a target.
pub fn netdns_target_required(schema: &mut Schema) {
    if let Some(target) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("target"))
        .and_then(serde_json::Value::as_object_mut)
    {
        target.remove("default");
    }
    match schema.get_mut("required") {
        Some(serde_json::Value::Array(required)) => required.push("target".into()),
        _ => {
            schema.insert("required".into(), serde_json::json!(["target"]));
        }
    }
}

/// AppHttpHealthy's `header`: `"Key: Value"` strings ([`crate::HttpHeader`] parses them).
pub fn headers(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "string", "pattern": "^[^:]+:.*$"},
    })
}
