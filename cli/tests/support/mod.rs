//! What the CLI's integration tests share: the controller's side of a check.

use std::path::Path;

use serde_json::{Value, json};

/// The golden faulty round, renamed; restricted to `pairPaths` (and healed) when they are set.
pub fn round_of(name: &str, task: &Value) -> Value {
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/check-faulty.json"),
    )
    .unwrap();
    let mut report = serde_json::from_str::<Value>(&golden).unwrap()["report"].clone();
    report["task"] = json!(name);
    let Some(pp) = task["spec"]["pairPaths"].as_array() else {
        return report;
    };
    let selected = |p: &Value| {
        pp.iter().any(|s| {
            ["srcNode", "dstNode", "network", "family"]
                .iter()
                .all(|k| s[k] == p[k])
        })
    };
    let mut paths: Vec<Value> = report["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| selected(p))
        .cloned()
        .collect();
    for p in &mut paths {
        p["state"] = json!("ok");
        p["lost"] = json!(0);
        p["received"] = p["sent"].clone();
        p["lossRatio"] = json!(0.0);
        p["segments"] = json!({"srcSend": 0, "forward": 0, "dstStack": 0, "reply": 0,
                               "srcReceive": 0, "unobserved": 0});
        p.as_object_mut().unwrap().remove("drops");
    }
    let n = paths.len() as u64;
    report["paths"] = json!(paths);
    report["status"] = json!("succeed");
    report["failureReasons"] = json!([]);
    report["findings"] = json!([]);
    report["summary"] = json!({"paths": n, "lossyPaths": 0, "sent": 50 * n, "received": 50 * n,
                               "lost": 0, "successRate": 1.0, "meanRttMs": 0.1,
                               "unobservedEvents": 0});
    report
}
