//! The built binary with `--kubeconfig`, against an in-memory API server served over HTTP
//! (no apiserver can run here): check's task is a NetReach object labelled for clean, the
//! reads go through the API server's proxy to the controller Service, errors carry the API
//! server's message, and `--dst-kubeconfig` probes the other cluster's agents.

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::{Arc, Mutex},
};

use meshdoctor_fake_apiserver::{FakeApiServer, Write};
use serde_json::{Value, json};
use support::round_of;

mod support;

const NETREACHES: &str = "/apis/meshdoctor.io/v1beta1/netreaches";
const PROXY: &str =
    "/api/v1/namespaces/meshdoctor/services/https:meshdoctor-controller:https/proxy";

/// A fresh directory for a test's kubeconfigs and state file.
fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("meshdoctor-cli-kube-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A kubeconfig file for the API server at `server`, with a bearer token.
fn kubeconfig(dir: &Path, name: &str, server: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {name}\n\
         clusters: [{{name: {name}, cluster: {{server: \"{server}\"}}}}]\n\
         users: [{{name: alice, user: {{token: t0ken}}}}]\n\
         contexts: [{{name: {name}, context: {{cluster: {name}, user: alice}}}}]\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A cluster: the fake API server with the NetReach collection and a controller behind the
/// Service proxy that serves `round_of` a NetReach object once it has been polled for once
/// (503 before, as during a leader hand-over), the golden report for other rounds, and
/// `agents`.
struct Cluster {
    fake: FakeApiServer,
    kubeconfig: PathBuf,
    /// Every path the controller was asked for through the proxy.
    proxied: Arc<Mutex<Vec<String>>>,
}

async fn cluster(dir: &Path, name: &str, agents: Value) -> Cluster {
    let fake = FakeApiServer::default();
    fake.collection(NETREACHES, "NetReachList");
    let proxied = Arc::new(Mutex::new(Vec::new()));
    let (seen, objects) = (proxied.clone(), fake.clone());
    fake.proxy(PROXY, move |method, path, _| {
        assert_eq!(method, "GET", "the CLI only reads through the proxy");
        let polls = {
            let mut seen = seen.lock().unwrap();
            seen.push(path.to_string());
            seen.iter().filter(|p| *p == path).count()
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts[..] {
            ["v1", "agents"] => (200, agents.clone()),
            ["v1", "tasks", task, "rounds", "1"] => match objects.get(NETREACHES, task) {
                // A leader hand-over: for a moment no controller is Ready.
                Some(_) if polls == 1 => (
                    503,
                    json!({"kind": "Status", "status": "Failure", "code": 503,
                           "reason": "ServiceUnavailable",
                           "message": "no endpoints available for service \"meshdoctor-controller\""}),
                ),
                Some(object) => (200, round_of(task, &object)),
                None => (
                    404,
                    json!({"error": format!("no report for task {task:?} round 1")}),
                ),
            },
            ["v1", "tasks", task, "rounds", round] => {
                let mut report = round_of(task, &json!({}));
                report["round"] = json!(round.parse::<u32>().unwrap_or(0));
                (200, report)
            }
            _ => (404, json!({"error": format!("no route {path}")})),
        }
    });
    let addr = fake.serve().await;
    let kubeconfig = kubeconfig(dir, name, &format!("http://{addr}"));
    Cluster {
        fake,
        kubeconfig,
        proxied,
    }
}

async fn meshdoctor(dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_meshdoctor"))
        .current_dir(dir)
        .args(args)
        .env_remove("MESHDOCTOR_CONTROLLER")
        .env_remove("MESHDOCTOR_TOKEN")
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn writes(fake: &FakeApiServer, method: &str) -> Vec<Write> {
    fake.writes()
        .into_iter()
        .filter(|w| w.method == method && w.uri.starts_with(NETREACHES))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_resume_and_clean_through_the_api_server() {
    let dir = temp_dir("flow");
    let c = cluster(&dir, "src", json!([])).await;
    // Somebody else's tasks: clean must leave them alone, even one named like check's.
    for name in ["mesh", "meshdoctor-check-1"] {
        c.fake.apply(
            NETREACHES,
            json!({"apiVersion": "meshdoctor.io/v1beta1", "kind": "NetReach",
                   "metadata": {"name": name}, "spec": {}}),
        );
    }
    let kc = c.kubeconfig.to_str().unwrap();

    let out = meshdoctor(&dir, &["--kubeconfig", kc, "check", "--protocol", "udp"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAULTY INTERFACES"), "{stdout}");
    assert!(stdout.contains("node-3  net1   storage"), "{stdout}");
    let created = writes(&c.fake, "POST");
    assert_eq!(created.len(), 1);
    let task = &created[0].body;
    let name = task["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("meshdoctor-check-"), "{name}");
    assert_eq!(task["kind"], "NetReach");
    assert_eq!(
        task["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshdoctor-cli"
    );
    assert_eq!(task["spec"]["request"]["protocol"], "udp");
    assert_eq!(
        task["spec"]["schedule"],
        json!({"schedule": "0 1", "roundNumber": 1})
    );
    // The report was read through the controller Service, then the object deleted.
    assert!(
        c.proxied
            .lock()
            .unwrap()
            .contains(&format!("/v1/tasks/{name}/rounds/1"))
    );
    let deleted = writes(&c.fake, "DELETE");
    assert_eq!(deleted.len(), 1);
    assert!(
        deleted[0].uri.ends_with(&format!("/{name}")),
        "{:?}",
        deleted[0]
    );
    assert!(c.fake.get(NETREACHES, &name).is_none());

    // resume creates a NetReach of the failed pair-paths only, kept with --keep.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = meshdoctor(&dir, &["--kubeconfig", kc, "resume", "--keep"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let created = writes(&c.fake, "POST");
    let resumed = &created[1].body;
    assert_eq!(resumed["spec"]["pairPaths"].as_array().unwrap().len(), 2);
    let kept = resumed["metadata"]["name"].as_str().unwrap();
    assert!(c.fake.get(NETREACHES, kept).is_some(), "--keep keeps it");

    // clean deletes the kept object, found by its label, and nothing else.
    let out = meshdoctor(&dir, &["--kubeconfig", kc, "clean"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("deleted task {kept}")),
        "{}",
        text(&out)
    );
    assert!(c.fake.get(NETREACHES, kept).is_none());
    for name in ["mesh", "meshdoctor-check-1"] {
        assert!(
            c.fake.get(NETREACHES, name).is_some(),
            "{name} was not check's"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_and_agents_are_read_through_the_service_proxy() {
    let dir = temp_dir("read");
    let agents = json!([{"node": "node-1", "timestamping": "ebpf", "lastSeenMs": 1,
                         "interfaces": [{"name": "eth0", "network": "eth0", "ipv4": "10.0.0.1"}]}]);
    let c = cluster(&dir, "src", agents).await;
    let kc = c.kubeconfig.to_str().unwrap();
    let out = meshdoctor(
        &dir,
        &["--kubeconfig", kc, "report", "mesh", "--round", "7"],
    )
    .await;
    // The golden round failed: exit 1 with its pair table.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-3"));
    let out = meshdoctor(&dir, &["--kubeconfig", kc, "-o", "json", "agents"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["node"], "node-1");
    assert_eq!(
        *c.proxied.lock().unwrap(),
        ["/v1/tasks/mesh/rounds/7", "/v1/agents"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_carry_the_api_servers_message_and_a_hint() {
    let dir = temp_dir("errors");
    let c = cluster(&dir, "src", json!([])).await;
    // RBAC refuses the NetReach (a proxy handler stands in for the authorizer).
    c.fake.proxy(NETREACHES, |_, _, _| {
        (
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                   "reason": "Forbidden",
                   "message": "netreaches.meshdoctor.io is forbidden: User \"alice\" cannot \
                               create resource \"netreaches\""}),
        )
    });
    let kc = c.kubeconfig.to_str().unwrap();
    let out = meshdoctor(&dir, &["--kubeconfig", kc, "check"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("HTTP 403 Forbidden: netreaches.meshdoctor.io is forbidden: User \"alice\"")
            && err.contains("the ClusterRole and the Role meshdoctor-cli"),
        "{err}"
    );

    // No API server there.
    let down = kubeconfig(&dir, "down", "http://127.0.0.1:1");
    let out = meshdoctor(&dir, &["--kubeconfig", down.to_str().unwrap(), "tasks"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot reach the Kubernetes API server at http://127.0.0.1:1/"),
        "{err}"
    );

    // Not a kubeconfig: the flag and the file are named.
    let bad = dir.join("bad-kubeconfig");
    std::fs::write(&bad, "clusters: 7\n").unwrap();
    let out = meshdoctor(&dir, &["--kubeconfig", bad.to_str().unwrap(), "tasks"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("--kubeconfig {}", bad.display())),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A context the kubeconfig does not have.
    let out = meshdoctor(&dir, &["--kubeconfig", kc, "--context", "nope", "tasks"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nope"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dst_kubeconfig_probes_the_other_clusters_agents() {
    let dir = temp_dir("dst");
    let src = cluster(&dir, "src", json!([])).await;
    let dst_agents = json!([
        {"node": "node-7", "timestamping": "ebpf", "probePort": 7080, "lastSeenMs": 1, "interfaces": [
            {"name": "eth0", "network": "eth0", "ipv4": "10.7.0.7", "ipv6": "fd00:7::7"},
            {"name": "net1", "network": "storage", "ipv4": "10.8.0.7"}]},
        {"node": "node-8", "timestamping": "socket", "probePort": 7080, "lastSeenMs": 1, "interfaces": [
            {"name": "eth0", "network": "eth0", "ipv4": "10.7.0.8"}]},
    ]);
    let dst = cluster(&dir, "dst", dst_agents).await;
    let out = meshdoctor(
        &dir,
        &[
            "--kubeconfig",
            src.kubeconfig.to_str().unwrap(),
            "check",
            "--protocol",
            "tcp",
            "--dst-kubeconfig",
            dst.kubeconfig.to_str().unwrap(),
            "--dst-name",
            "east",
        ],
    )
    .await;
    // The stand-in controller answers with the golden faulty round.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(*dst.proxied.lock().unwrap(), ["/v1/agents"]);
    assert!(
        writes(&dst.fake, "POST").is_empty(),
        "nothing is written to the destination"
    );
    let created = writes(&src.fake, "POST");
    let target = &created[0].body["spec"]["target"];
    assert_eq!(
        target["endpoint"], false,
        "only the other cluster is probed"
    );
    assert_eq!(
        target["remoteAgents"],
        json!([
            {"node": "east/node-7", "probePort": 7080, "interfaces": [
                {"name": "eth0", "network": "eth0", "ipv4": "10.7.0.7", "ipv6": "fd00:7::7"},
                {"name": "net1", "network": "storage", "ipv4": "10.8.0.7"}]},
            {"node": "east/node-8", "probePort": 7080, "interfaces": [
                {"name": "eth0", "network": "eth0", "ipv4": "10.7.0.8"}]},
        ])
    );

    // A destination without agents is a clear error before anything is created.
    let empty = cluster(&dir, "empty", json!([])).await;
    let out = meshdoctor(
        &dir,
        &[
            "--kubeconfig",
            src.kubeconfig.to_str().unwrap(),
            "check",
            "--dst-kubeconfig",
            empty.kubeconfig.to_str().unwrap(),
        ],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the destination controller has no agents registered"),
        "{err}"
    );
    assert_eq!(writes(&src.fake, "POST").len(), 1, "no second task");
    std::fs::remove_dir_all(&dir).unwrap();
}
