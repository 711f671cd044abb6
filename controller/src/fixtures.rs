//! Builders shared by the controller's unit tests.

use std::path::PathBuf;

use meshdoctor_api::{
    Direction, Evidence, Family, Finding, HookCounts, Interval, LossSegments, Packet, PathResult,
    PathSegment, PathState, ReasonCount, RoundReport, RoundStatus, RoundSummary, Segment,
};

/// A fresh directory under the system's temp dir, unique per test and process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "meshdoctor-{tag}-{}-{}",
        std::process::id(),
        crate::now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A finding of 30 lost of 150 probes arriving on `node`'s net1 (IPv4 link), dropped for
/// `NETFILTER_DROP`, with evidence from two peers.
pub fn mk_finding(node: &str) -> Finding {
    let evidence = |src: &str| Evidence {
        path: 0,
        src_node: src.into(),
        src_interface: "net1".into(),
        dst_node: node.into(),
        dst_interface: "net1".into(),
        segment: PathSegment::Forward,
        lost: 15,
        probes: 75,
    };
    Finding {
        node: node.into(),
        interface: "net1".into(),
        network: "sec".into(),
        family: Family::Ipv4,
        direction: Direction::Ingress,
        segment: Segment::Link,
        packets: vec![Packet::Request],
        lost: 30,
        probes: 150,
        loss_ratio: 0.2,
        interval: Interval {
            low: 0.12,
            high: 0.3,
            level: 0.99,
        },
        drop_reasons: vec![ReasonCount {
            reason: "NETFILTER_DROP".into(),
            location: "nft_do_chain+0x4c1".into(),
            count: 30,
        }],
        evidence: vec![evidence("node-a"), evidence("node-b")],
    }
}

/// A round report of `task` with no paths: what status and storage tests need.
pub fn mk_round(task: &str, round: u32, status: RoundStatus) -> RoundReport {
    RoundReport {
        task: task.into(),
        round,
        round_tag: round,
        status,
        failure_reasons: vec![],
        start_ms: u64::from(round) * 1000,
        end_ms: u64::from(round) * 1000 + 500,
        expected_agents: vec!["a".into(), "b".into()],
        not_reported: vec![],
        findings: vec![],
        summary: RoundSummary {
            paths: 0,
            lossy_paths: 0,
            sent: 0,
            received: 0,
            lost: 0,
            success_rate: 0.0,
            mean_rtt_ms: None,
            unobserved_events: 0,
        },
        paths: vec![],
        app: None,
    }
}

/// A clean pair-path between agents: `probes` sent and received on `interface` of both
/// nodes, nothing observed; tests change what they need with struct update syntax.
pub fn mk_path(
    src: &str,
    dst: &str,
    (interface, network): (&str, &str),
    family: Family,
    probes: u32,
) -> PathResult {
    let addr = match family {
        Family::Ipv4 => "192.0.2.1".parse().unwrap(),
        Family::Ipv6 => "2001:db8::1".parse().unwrap(),
    };
    PathResult {
        path: 0,
        src_node: src.into(),
        dst_node: dst.into(),
        src_interface: interface.into(),
        dst_interface: interface.into(),
        network: network.into(),
        family,
        src_addr: addr,
        dst_addr: addr,
        external: false,
        state: PathState::Ok,
        planned: probes,
        sent: probes,
        received: probes,
        lost: 0,
        loss_ratio: 0.0,
        send_failed: 0,
        dst_reported: true,
        hooks: HookCounts::default(),
        segments: LossSegments::default(),
        kernel_rtt: None,
        user_rtt: None,
        network_rtt: None,
        dst_stack: None,
        drops: Vec::new(),
        errors: Vec::new(),
        probes: Vec::new(),
    }
}

/// A running agent pod on `node` with `ips`, and a network-status annotation when given.
pub fn mk_pod(
    name: &str,
    node: &str,
    ips: &[&str],
    annotation: Option<&str>,
) -> k8s_openapi::api::core::v1::Pod {
    k8s_openapi::api::core::v1::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("meshdoctor".into()),
            annotations: annotation.map(|a| {
                [(
                    crate::kubernetes::agents::NETWORK_STATUS.to_string(),
                    a.to_string(),
                )]
                .into()
            }),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            pod_ips: Some(
                ips.iter()
                    .map(|ip| k8s_openapi::api::core::v1::PodIP { ip: ip.to_string() })
                    .collect(),
            ),
            host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
                ip: "192.0.2.1".into(),
            }]),
            ..Default::default()
        }),
    }
}

/// A multus network-status annotation: eth0 on the cluster network, net1 on a macvlan.
pub const MULTUS: &str = r#"[
    {"name": "k8s-pod-network", "interface": "eth0", "ips": ["10.244.1.5", "fd00::5"],
     "mac": "aa:bb:cc:dd:ee:ff", "default": true, "dns": {}},
    {"name": "default/macvlan-conf", "interface": "net1", "ips": ["192.168.1.205"],
     "mac": "86:1d:96:ff:55:0d", "dns": {}}
    ]"#;

/// An agent registered with eth0 at `ip` and net1 at 192.168.1.205, networks named after the
/// interfaces (as an agent without `--interface NAME=NETWORK` registers).
pub fn mk_registration(node: &str, ip: &str) -> meshdoctor_api::AgentRegistration {
    let iface = |name: &str, ip: &str| meshdoctor_api::InterfaceInfo {
        name: name.into(),
        network: name.into(),
        ipv4: Some(ip.parse().unwrap()),
        ipv6: None,
    };
    meshdoctor_api::AgentRegistration {
        node: node.into(),
        interfaces: vec![iface("eth0", ip), iface("net1", "192.168.1.205")],
        timestamping: meshdoctor_api::Timestamping::Ebpf,
        probe_port: Some(9091),
    }
}

/// A small in-memory Kubernetes API server behind a [`kube::Client`], for the Kubernetes
/// backend's scenarios (no apiserver can run here; see shared/research/kube-and-style.md).
///
/// It serves what the backend uses and nothing more: LIST and WATCH of registered collections
/// (selectors are ignored: tests only add matching objects), GET, POST (create, 409 when it
/// exists), PUT (replace, 409 on a stale resourceVersion), PATCH of the status subresource
/// (the patch's `status` replaces the object's, as a server-side apply by the only status
/// manager would) and of whole objects (merge of `metadata` and the rest, used for events).
/// Every write is recorded for assertions. Watches replay the changes after the
/// resourceVersion they start from, then stream live changes, so no event falls between a
/// LIST and its WATCH.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: std::sync::Arc<std::sync::Mutex<FakeState>>,
    changed: std::sync::Arc<tokio::sync::Notify>,
}

/// One write the fake received.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: String,
    /// Path and query, e.g. `/apis/meshdoctor.io/v1beta1/netreaches/mesh/status?...`.
    pub uri: String,
    pub body: serde_json::Value,
}

#[derive(Default)]
struct FakeState {
    rv: u64,
    collections: std::collections::BTreeMap<String, Collection>,
    writes: Vec<Write>,
}

#[derive(Default)]
struct Collection {
    list_kind: String,
    objects: std::collections::BTreeMap<String, serde_json::Value>,
    /// (resourceVersion, watch event) of every change, for replays.
    log: Vec<(u64, serde_json::Value)>,
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<bytes::Bytes>>,
}

type FakeBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

impl FakeApiServer {
    /// A client whose requests this fake answers.
    pub fn client(&self) -> kube::Client {
        let fake = self.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let fake = fake.clone();
            async move { Ok::<_, std::convert::Infallible>(fake.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    /// Serves `path` (e.g. `/api/v1/namespaces/meshdoctor/pods`) as a collection of `list_kind`.
    pub fn collection(&self, path: &str, list_kind: &str) -> &Self {
        self.lock()
            .collections
            .entry(path.into())
            .or_default()
            .list_kind = list_kind.into();
        self
    }

    /// Adds or replaces an object (by `metadata.name`) in a collection, as another client would.
    pub fn apply(&self, path: &str, obj: impl serde::Serialize) {
        let obj = serde_json::to_value(obj).unwrap();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        self.lock().store(path, &name, obj);
        self.changed.notify_waiters();
    }

    /// Deletes an object, as another client would.
    pub fn delete(&self, path: &str, name: &str) {
        let mut state = self.lock();
        state.rv += 1;
        let rv = state.rv;
        let c = state
            .collections
            .get_mut(path)
            .expect("registered collection");
        if let Some(mut obj) = c.objects.remove(name) {
            obj["metadata"]["resourceVersion"] = rv.to_string().into();
            c.publish(rv, "DELETED", obj);
        }
    }

    /// An object as the fake holds it.
    pub fn get(&self, path: &str, name: &str) -> Option<serde_json::Value> {
        self.lock()
            .collections
            .get(path)?
            .objects
            .get(name)
            .cloned()
    }

    /// The writes so far.
    pub fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    /// Waits until `pred` holds for the writes, up to 10 s (then panics with them).
    pub async fn wait_writes(&self, what: &str, pred: impl Fn(&[Write]) -> bool) -> Vec<Write> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let changed = self.changed.notified();
            let writes = self.writes();
            if pred(&writes) {
                return writes;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("timed out waiting for {what}; writes: {writes:#?}");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    async fn handle(&self, req: http::Request<kube::client::Body>) -> http::Response<FakeBody> {
        use http_body_util::BodyExt as _;
        let method = req.method().as_str().to_string();
        let uri = req.uri().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        let reply = {
            let mut state = self.lock();
            if method != "GET" {
                state.writes.push(Write {
                    method: method.clone(),
                    uri,
                    body: body.clone(),
                });
            }
            state.route(
                &method,
                &path,
                param("watch").is_some(),
                param("resourceVersion"),
                body,
            )
        };
        self.changed.notify_waiters();
        reply
    }
}

impl Collection {
    fn publish(&mut self, rv: u64, kind: &str, obj: serde_json::Value) {
        let event = serde_json::json!({ "type": kind, "object": obj });
        let line = bytes::Bytes::from(format!("{event}\n"));
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
        self.log.push((rv, event));
    }
}

impl FakeState {
    fn store(&mut self, path: &str, name: &str, mut obj: serde_json::Value) -> serde_json::Value {
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        let c = self.collections.entry(path.into()).or_default();
        let kind = if c.objects.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.objects.insert(name.into(), obj.clone());
        c.publish(rv, kind, obj.clone());
        obj
    }

    fn route(
        &mut self,
        method: &str,
        path: &str,
        watch: bool,
        since: Option<String>,
        body: serde_json::Value,
    ) -> http::Response<FakeBody> {
        use http_body_util::BodyExt as _;
        let (collection, name, status) =
            match method == "POST" || self.collections.contains_key(path) {
                true => (path.to_string(), None, false),
                false => {
                    let (base, status) = match path.strip_suffix("/status") {
                        Some(base) => (base, true),
                        None => (path, false),
                    };
                    let (coll, name) = base.rsplit_once('/').unwrap_or((base, ""));
                    (coll.to_string(), Some(name.to_string()), status)
                }
            };
        let rv = self.rv;
        match (method, name) {
            ("GET", None) if watch => {
                let since: u64 = since.and_then(|s| s.parse().ok()).unwrap_or(0);
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let c = self.collections.entry(collection).or_default();
                for (_, event) in c.log.iter().filter(|(v, _)| *v > since) {
                    let _ = tx.send(bytes::Bytes::from(format!("{event}\n")));
                }
                c.watchers.push(tx);
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    let line = rx.recv().await?;
                    Some((Ok(http_body::Frame::data(line)), rx))
                });
                http::Response::new(http_body_util::StreamBody::new(stream).boxed())
            }
            ("GET", None) => {
                let c = self.collections.entry(collection).or_default();
                let items: Vec<_> = c.objects.values().cloned().collect();
                json_reply(
                    200,
                    serde_json::json!({
                        "apiVersion": "v1", "kind": c.list_kind,
                        "metadata": { "resourceVersion": rv.to_string() },
                        "items": items,
                    }),
                )
            }
            ("GET", Some(name)) => match self.object(&collection, &name) {
                Some(obj) => json_reply(200, obj),
                None => not_found(&name),
            },
            ("POST", None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .or(body["metadata"]["generateName"].as_str())
                    .unwrap_or("unnamed")
                    .to_string();
                if self.object(&collection, &name).is_some() {
                    return status_reply(409, "AlreadyExists", &format!("{name} already exists"));
                }
                json_reply(201, self.store(&collection, &name, body))
            }
            ("PUT", Some(name)) => {
                let Some(current) = self.object(&collection, &name) else {
                    return not_found(&name);
                };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status_reply(409, "Conflict", "the object has been modified");
                }
                json_reply(200, self.store(&collection, &name, body))
            }
            ("PATCH", Some(name)) => {
                let Some(mut obj) = self.object(&collection, &name) else {
                    return not_found(&name);
                };
                if status {
                    obj["status"] = body["status"].clone();
                } else if let (Some(o), Some(b)) = (obj.as_object_mut(), body.as_object()) {
                    o.extend(b.clone());
                }
                json_reply(200, self.store(&collection, &name, obj))
            }
            _ => status_reply(405, "MethodNotAllowed", &format!("{method} {path}")),
        }
    }

    fn object(&self, collection: &str, name: &str) -> Option<serde_json::Value> {
        self.collections.get(collection)?.objects.get(name).cloned()
    }
}

fn json_reply(code: u16, body: serde_json::Value) -> http::Response<FakeBody> {
    use http_body_util::BodyExt as _;
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn status_reply(code: u16, reason: &str, message: &str) -> http::Response<FakeBody> {
    json_reply(
        code,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "reason": reason, "message": message, "code": code,
        }),
    )
}

fn not_found(name: &str) -> http::Response<FakeBody> {
    status_reply(404, "NotFound", &format!("{name:?} not found"))
}
