//! The Kubernetes backend against an in-memory API server ([`FakeApiServer`]): the real
//! watchers, reflectors, round driver and status writer, with the apiserver's side scripted.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Config, Kubernetes, run, watch as start_watching};
use crate::{
    driver::{Controller, Settings},
    fixtures::{FakeApiServer, MULTUS, Write, mk_pod, mk_registration, temp_dir},
    sinks::store::ReportStore,
};

const NETREACHES: &str = "/apis/meshdoctor.io/v1beta1/netreaches";
const PODS: &str = "/api/v1/namespaces/meshdoctor/pods";
const NODES: &str = "/api/v1/nodes";
const TASK_EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const POD_EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/meshdoctor/events";

struct Scenario {
    fake: FakeApiServer,
    ctl: Arc<Controller>,
    backend: Arc<Kubernetes>,
    leading: watch::Sender<bool>,
}

/// A backend watching a fake apiserver with every collection it watches, empty; this replica
/// leads unless told otherwise.
fn start(leading: bool) -> Scenario {
    let fake = FakeApiServer::default();
    fake.collection(NETREACHES, "NetReachList")
        .collection(
            "/apis/meshdoctor.io/v1beta1/apphttphealthies",
            "AppHttpHealthyList",
        )
        .collection("/apis/meshdoctor.io/v1beta1/netdnses", "NetDnsList")
        .collection(PODS, "PodList")
        .collection(NODES, "NodeList")
        .collection("/api/v1/namespaces/meshdoctor/services", "ServiceList")
        .collection(
            "/apis/networking.k8s.io/v1/namespaces/meshdoctor/ingresses",
            "IngressList",
        );
    let settings = Settings {
        wait_agents: 0,
        start_delay: Duration::from_millis(50),
        report_grace: Duration::from_millis(200),
        max_history: 10,
        pair_metrics: false,
        budget: Default::default(),
        tls_dir: crate::driver::DEFAULT_TLS_DIR.into(),
        limits: Default::default(),
    };
    let ctl = Controller::new(settings, ReportStore::new(&temp_dir("kube")));
    let cfg = Config {
        namespace: "meshdoctor".into(),
        agent_selector: "app.kubernetes.io/name=meshdoctor-agent".into(),
        agent_service: "meshdoctor-agent".into(),
        agent_ingress: "meshdoctor-agent".into(),
        identity: "controller-0".into(),
    };
    let watched = start_watching(fake.client(), cfg);
    let backend = watched.backend.clone();
    let (tx, rx) = watch::channel(leading);
    tokio::spawn(run(fake.client(), ctl.clone(), watched, rx));
    Scenario {
        fake,
        ctl,
        backend,
        leading: tx,
    }
}

fn mk_netreach(name: &str, generation: i64, spec: Value) -> Value {
    json!({
        "apiVersion": "meshdoctor.io/v1beta1",
        "kind": "NetReach",
        "metadata": { "name": name, "generation": generation },
        "spec": spec,
    })
}

fn status_writes<'a>(writes: &'a [Write], task: &str) -> Vec<&'a Value> {
    let path = format!("{NETREACHES}/{task}/status?");
    writes
        .iter()
        .filter(|w| w.method == "PATCH" && w.uri.starts_with(&path))
        .map(|w| &w.body)
        .collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Polls `pred` every 20 ms for up to 10 s.
async fn eventually(what: &str, pred: impl Fn() -> bool) {
    for _ in 0..500 {
        if pred() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_created_task_runs_and_its_status_is_applied() {
    let s = start(true);
    s.fake.apply(
        NETREACHES,
        mk_netreach("mesh", 1, json!({"request": {"durationInSecond": 1}})),
    );
    let writes = s
        .fake
        .wait_writes("the round's status", |w| {
            status_writes(w, "mesh")
                .iter()
                .any(|b| b["status"]["doneRound"] == 1)
        })
        .await;
    let statuses = status_writes(&writes, "mesh");
    // First the accepted spec, then the closed round.
    let first = statuses[0];
    assert_eq!(first["apiVersion"], "meshdoctor.io/v1beta1");
    assert_eq!(first["kind"], "NetReach");
    let valid = condition(first, "Valid").unwrap();
    assert_eq!(
        (
            &valid["status"],
            &valid["reason"],
            &valid["observedGeneration"]
        ),
        (&json!("True"), &json!("Valid"), &json!(1))
    );
    let done = statuses.last().unwrap();
    assert_eq!(done["status"]["finish"], true);
    assert_eq!(done["status"]["expectedRound"], 1);
    assert_eq!(done["status"]["history"][0]["roundNumber"], 1);
    assert_eq!(done["status"]["latestRound"]["roundNumber"], 1);
    assert_eq!(
        done["status"]["latestRound"]["report"],
        "/v1/tasks/mesh/rounds/1"
    );
    // Server-side apply of the status subresource by the controller's field manager.
    let uri = &writes.iter().find(|w| w.method == "PATCH").unwrap().uri;
    assert!(
        uri.contains("fieldManager=meshdoctor-controller") && uri.contains("force=true"),
        "{uri}"
    );
    // The status landed on the object.
    let stored = s.fake.get(NETREACHES, "mesh").unwrap();
    assert_eq!(stored["status"]["doneRound"], 1);
}

#[tokio::test]
async fn an_invalid_spec_is_refused_with_a_condition_and_an_event() {
    let s = start(true);
    s.fake.apply(
        NETREACHES,
        mk_netreach("bad", 4, json!({"request": {"qps": 0}})),
    );
    let writes = s
        .fake
        .wait_writes("the refusal", |w| {
            !status_writes(w, "bad").is_empty() && w.iter().any(|w| w.uri.starts_with(TASK_EVENTS))
        })
        .await;
    let status = status_writes(&writes, "bad")[0];
    let valid = condition(status, "Valid").unwrap();
    assert_eq!(valid["status"], "False");
    assert_eq!(valid["reason"], "InvalidSpec");
    assert_eq!(valid["observedGeneration"], 4);
    let message = valid["message"].as_str().unwrap();
    assert!(
        message.starts_with("netreaches/bad: spec.request.qps: "),
        "{message}"
    );
    let event = &writes
        .iter()
        .find(|w| w.uri.starts_with(TASK_EVENTS))
        .unwrap()
        .body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidSpec");
    assert_eq!(event["regarding"]["kind"], "NetReach");
    assert_eq!(event["regarding"]["name"], "bad");
    assert!(event["note"].as_str().unwrap().contains("spec.request.qps"));
    // No round ran.
    assert!(s.ctl.store().latest_round("bad").await.unwrap().is_none());
    // Fixed: valid again.
    s.fake.apply(NETREACHES, mk_netreach("bad", 5, json!({})));
    s.fake
        .wait_writes("the fixed status", |w| {
            status_writes(w, "bad").iter().any(|b| {
                condition(b, "Valid").is_some_and(|c| c["status"] == "True")
                    && condition(b, "Valid").unwrap()["observedGeneration"] == 5
            })
        })
        .await;
}

#[tokio::test]
async fn agent_pods_come_and_go_with_their_networks() {
    use crate::backend::Backend as _;
    let s = start(true);
    let registered = || {
        vec![
            mk_registration("node-a", "10.244.1.5"),
            mk_registration("node-b", "10.244.2.5"),
        ]
    };
    s.fake.apply(
        PODS,
        mk_pod("agent-a", "node-a", &["10.244.1.5"], Some(MULTUS)),
    );
    eventually("pod a in the roster", || {
        s.backend.roster(registered()).len() == 1
    })
    .await;
    // The Node's labels come with the agent (its zone), the Node's status not at all.
    s.fake.apply(
        NODES,
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}},
            "status": {"images": [{"names": ["big/image:1"], "sizeBytes": 1}]},
        }),
    );
    eventually("node-a's zone", || {
        s.backend.roster(registered())[0]
            .labels
            .get("topology.kubernetes.io/zone")
            == Some(&"z1".to_string())
    })
    .await;
    let roster = s.backend.roster(registered());
    assert_eq!(roster[0].node, "node-a");
    // The multus annotation named the networks.
    assert_eq!(roster[0].interfaces[0].network, "k8s-pod-network");
    assert_eq!(roster[0].interfaces[1].network, "default/macvlan-conf");
    // A pod still pending is no agent yet, and says why.
    let mut pending: Pod = mk_pod("agent-b", "node-b", &[], None);
    pending.status.as_mut().unwrap().phase = Some("Pending".into());
    s.fake.apply(PODS, &pending);
    eventually("pod b pending", || s.backend.pending_agents().len() == 1).await;
    assert_eq!(
        s.backend.pending_agents()[0].to_string(),
        "pod agent-b is Pending, not Running"
    );
    s.fake
        .apply(PODS, mk_pod("agent-b", "node-b", &["10.244.2.5"], None));
    eventually("pod b in the roster", || {
        s.backend.roster(registered()).len() == 2
    })
    .await;
    s.fake.delete(PODS, "agent-a");
    eventually("pod a gone", || {
        let roster = s.backend.roster(registered());
        roster.len() == 1 && roster[0].node == "node-b"
    })
    .await;
}

#[tokio::test]
async fn a_malformed_network_status_is_an_event_on_the_pod_not_a_crash() {
    use crate::backend::Backend as _;
    let s = start(true);
    s.fake.apply(
        PODS,
        mk_pod("agent-a", "node-a", &["10.244.1.5"], Some("[{\"name\": 1}")),
    );
    let writes = s
        .fake
        .wait_writes("the pod event", |w| {
            w.iter().any(|w| w.uri.starts_with(POD_EVENTS))
        })
        .await;
    let event = &writes
        .iter()
        .find(|w| w.uri.starts_with(POD_EVENTS))
        .unwrap()
        .body;
    assert_eq!(event["reason"], "BadAgentPod");
    assert_eq!(event["regarding"]["kind"], "Pod");
    assert_eq!(event["regarding"]["name"], "agent-a");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with(
            "metadata.annotations[k8s.v1.cni.cncf.io/network-status]: expected a JSON list"
        ),
        "{note}"
    );
    // The pod still takes part, with the agent's own network names.
    let roster = s
        .backend
        .roster(vec![mk_registration("node-a", "10.244.1.5")]);
    assert_eq!(roster[0].interfaces[1].network, "net1");
    // Once per problem: another change of the pod does not repeat it.
    s.fake.apply(
        PODS,
        mk_pod("agent-a", "node-a", &["10.244.1.5"], Some("[{\"name\": 1}")),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = s
        .fake
        .writes()
        .iter()
        .filter(|w| w.uri.starts_with(POD_EVENTS))
        .count();
    assert_eq!(events, 1);
    // A running pod without an IP (a CNI failure) is an event too, and no agent.
    s.fake.apply(PODS, mk_pod("agent-b", "node-b", &[], None));
    let writes = s
        .fake
        .wait_writes("the no-IP event", |w| {
            w.iter().filter(|w| w.uri.starts_with(POD_EVENTS)).count() == 2
        })
        .await;
    let event = &writes
        .iter()
        .rfind(|w| w.uri.starts_with(POD_EVENTS))
        .unwrap()
        .body;
    assert_eq!(event["regarding"]["name"], "agent-b");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .starts_with("pod agent-b has no IP yet"),
        "{event}"
    );
    assert!(!s.backend.agents().contains_key("node-b"));
}

#[tokio::test]
async fn a_spec_changed_mid_round_says_so_and_the_round_finishes() {
    let s = start(true);
    s.ctl.register(mk_registration("node-a", "10.244.1.5"));
    s.fake
        .apply(PODS, mk_pod("agent-a", "node-a", &["10.244.1.5"], None));
    eventually("the agent pod", || s.backend.agents().len() == 1).await;
    // node-a never reports: the round stays open until its deadline (1 s + 0.5 s + 0.2 s).
    s.fake.apply(
        NETREACHES,
        mk_netreach("mesh", 1, json!({"request": {"durationInSecond": 1}})),
    );
    eventually("the round to open", || {
        s.ctl.agents()[0].last_seen_ms > 0
            && s.ctl
                .tasks()
                .first()
                .and_then(|t| t.status.as_ref())
                .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.fake.apply(
        NETREACHES,
        mk_netreach(
            "mesh",
            2,
            json!({"request": {"durationInSecond": 1, "qps": 2}}),
        ),
    );
    let writes = s
        .fake
        .wait_writes("the mid-round condition and the old round's close", |w| {
            let st = status_writes(w, "mesh");
            st.iter().any(|b| {
                condition(b, "Current").is_some_and(|c| c["reason"] == "SpecChangedMidRound")
            }) && st
                .iter()
                .any(|b| b["status"]["history"][0]["roundNumber"] == 1)
        })
        .await;
    let changed = status_writes(&writes, "mesh")
        .into_iter()
        .find(|b| condition(b, "Current").is_some_and(|c| c["status"] == "False"))
        .unwrap();
    let current = condition(changed, "Current").unwrap();
    assert_eq!(current["observedGeneration"], 2);
    assert!(
        current["message"]
            .as_str()
            .unwrap()
            .starts_with("the spec changed while round 1 was running"),
        "{current}"
    );
    // The old spec's round closed into the history without counting for the new spec.
    let closed = status_writes(&writes, "mesh")
        .into_iter()
        .find(|b| b["status"]["history"][0]["roundNumber"] == 1)
        .unwrap();
    assert_eq!(closed["status"]["doneRound"], 0);
    assert_eq!(
        closed["status"]["history"][0]["notReportedAgents"],
        json!(["node-a"])
    );
}

#[tokio::test]
async fn only_the_leader_runs_tasks_and_a_new_leader_continues_from_the_status() {
    let s = start(false);
    // An earlier leader finished this task's only round for generation 7.
    let mut done = mk_netreach("mesh", 7, json!({}));
    done["status"] = json!({
        "expectedRound": 1, "doneRound": 1, "finish": true, "lastRoundStatus": "succeed",
        "history": [{
            "roundNumber": 1, "status": "succeed", "failureReasons": [],
            "startTimestamp": "2026-01-01T00:00:00.000Z", "endTimestamp": "2026-01-01T00:00:01.000Z",
            "duration": "1s", "deadline": "2026-01-01T00:00:01.000Z", "expectedAgents": 0,
            "reportedAgents": [], "notReportedAgents": [],
        }],
        "conditions": [{
            "type": "Valid", "status": "True", "reason": "Valid", "message": "the spec is valid",
            "lastTransitionTime": "2026-01-01T00:00:00.000Z", "observedGeneration": 7,
        }],
    });
    s.fake.apply(NETREACHES, &done);
    s.fake.apply(NETREACHES, mk_netreach("other", 1, json!({})));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.ctl.tasks().is_empty(), "a follower runs no task");
    assert!(s.fake.writes().is_empty(), "a follower writes nothing");
    s.leading.send_replace(true);
    let writes = s
        .fake
        .wait_writes("the leader's statuses", |w| {
            status_writes(w, "other")
                .iter()
                .any(|b| b["status"]["doneRound"] == 1)
                && !status_writes(w, "mesh").is_empty()
        })
        .await;
    // `mesh` continued from its status: still one round done and finished, no second round.
    let mesh = status_writes(&writes, "mesh");
    let last = mesh.last().unwrap();
    assert_eq!(
        (&last["status"]["doneRound"], &last["status"]["finish"]),
        (&json!(1), &json!(true))
    );
    assert_eq!(last["status"]["history"].as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.ctl.store().latest_round("mesh").await.unwrap().is_none());
    // Stepping down stops the tasks.
    s.leading.send_replace(false);
    eventually("the tasks to stop", || s.ctl.tasks().is_empty()).await;
}

/// The leader's pod carries the label the controller Service selects, and loses it when the
/// replica stops leading; the pod's other labels stay.
#[tokio::test]
async fn the_leader_labels_its_pod_and_unlabels_it_when_it_steps_down() {
    let fake = FakeApiServer::default();
    fake.collection(PODS, "PodList");
    let selector = json!({
        "app.kubernetes.io/name": "meshdoctor-controller",
        "app.kubernetes.io/part-of": "meshdoctor",
    });
    fake.apply(
        PODS,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "controller-0", "namespace": "meshdoctor", "labels": selector},
        }),
    );
    let label = |fake: &FakeApiServer| {
        fake.get(PODS, "controller-0").unwrap()["metadata"]["labels"].clone()
    };
    let (tx, rx) = watch::channel(false);
    let labeller = tokio::spawn(super::leader_label::run(
        fake.client(),
        "meshdoctor".into(),
        "controller-0".into(),
        rx,
    ));
    tx.send_replace(true);
    eventually("the leader label", || {
        label(&fake)[super::leader_label::LEADER_LABEL] == "true"
    })
    .await;
    let labels = label(&fake);
    assert_eq!(
        labels["app.kubernetes.io/name"], "meshdoctor-controller",
        "{labels}"
    );
    tx.send_replace(false);
    eventually("the label's removal", || {
        label(&fake)
            .get(super::leader_label::LEADER_LABEL)
            .is_none()
    })
    .await;
    assert_eq!(label(&fake), selector);
    labeller.abort();
}

/// kdoctor's documented NetReach (every target kind on, no `request.protocol`): ported as it
/// is, it probes the mesh over icmp and its Service targets over http to the agent Service's
/// port and the Ingress, as kdoctor does (they used to be skipped: no ping reaches a Service
/// port), and the plan and the task's warnings say so.
#[tokio::test]
async fn kdoctors_netreach_example_probes_its_service_targets_over_http() {
    use crate::backend::Backend as _;
    let s = start(true);
    for (node, ip) in [("node-a", "10.244.1.5"), ("node-b", "10.244.2.5")] {
        s.ctl.register(mk_registration(node, ip));
        let pod = format!("agent-{}", &node[5..]);
        s.fake.apply(PODS, mk_pod(&pod, node, &[ip], None));
    }
    s.fake.apply(
        "/api/v1/namespaces/meshdoctor/services",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "meshdoctor-agent", "namespace": "meshdoctor"},
               "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20",
                        "ports": [{"name": "probe-tcp", "port": 9091, "protocol": "TCP",
                                   "nodePort": 30091}]},
               "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}}),
    );
    s.fake.apply(
        "/apis/networking.k8s.io/v1/namespaces/meshdoctor/ingresses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "meshdoctor-agent", "namespace": "meshdoctor"},
               "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}}),
    );
    eventually("the agent pods", || s.backend.agents().len() == 2).await;
    eventually("the Service and the Ingress", || {
        let (targets, _) = s.backend.service_targets(&crate::mesh::tests::mk_task(
            ", clusterIP: true, ingress: true",
        ));
        targets.len() == 2
    })
    .await;
    s.fake.apply(
        NETREACHES,
        mk_netreach(
            "kdoctor",
            1,
            json!({"target": {"endpoint": true, "clusterIP": true, "nodePort": true,
                              "loadBalancer": true, "ingress": true, "ipv4": true},
                   "request": {"durationInSecond": 1}}),
        ),
    );
    let plan = s
        .ctl
        .wait_plans("node-a", 0, Duration::from_secs(10))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        plan.protocol,
        meshdoctor_api::Protocol::Icmp,
        "the mesh stays icmp"
    );
    let by_protocol = |http: bool| -> Vec<(&str, Option<u16>)> {
        plan.targets
            .iter()
            .filter(|t| (plan.protocol_of(t) == meshdoctor_api::Protocol::Http) == http)
            .map(|t| (t.dst_node.as_str(), t.dst_port))
            .collect()
    };
    assert_eq!(by_protocol(false), [("node-b", None), ("node-b", None)]);
    assert_eq!(
        by_protocol(true),
        [
            ("clusterIP 10.96.0.20:9091 over http", Some(9091)),
            ("nodePort 192.0.2.1:30091 over http", Some(30091)),
            ("loadBalancer 203.0.113.5:9091 over http", Some(9091)),
            ("ingress 203.0.113.9:80 over http", Some(80)),
        ]
    );
    let view = s.ctl.tasks().remove(0);
    assert!(
        view.warnings
            .iter()
            .any(|w| w.starts_with("spec.target.clusterIP: probed over http, as kdoctor does")),
        "{:?}",
        view.warnings
    );
}
