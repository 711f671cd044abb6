//! The controller's Kubernetes backend: tasks are NetReach, AppHttpHealthy and NetDns objects,
//! agents are the agent DaemonSet's pods, Service targets come from the agent Service and
//! Ingress, status goes to the tasks' status subresource, and only the replica holding the
//! Lease runs rounds.
//!
//! linkerd's split: the pure parts ([`tasks`], [`agents`], [`targets`], the lease decision in
//! [`lease`]) compute what the cluster means for rounds and what to write; this module is the
//! thin IO around them:
//! - reflectors (kube-runtime watchers with a store) mirror the task objects, the agent pods,
//!   the nodes' labels, the agent Service and Ingress; every change wakes [`run`], which hands the task list to
//!   the round driver while this replica leads (and an empty list when it stops leading);
//! - [`Kubernetes`] is the driver's [`Backend`]: it answers the roster and Service targets from
//!   the mirrors and queues status changes;
//! - a status writer applies each task's latest status with server-side apply (field manager
//!   `meshdoctor-controller`, retried until written; a deleted task's status is dropped), and
//!   publishes a Warning event when a condition turns bad;
//! - pods whose metadata is wrong (a malformed network-status annotation) get a Warning event
//!   once per problem; they still take part.
//!
//! Watch errors (the CRDs not installed yet, RBAC missing, the apiserver away) are logged and
//! retried with backoff: the controller keeps serving and never crash-loops on them.

pub mod agents;
pub mod leader_label;
pub mod lease;
pub mod targets;
pub mod tasks;
pub mod token_review;

#[cfg(test)]
mod scenarios;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use futures_util::{Stream, StreamExt as _};
use k8s_openapi::api::{
    core::v1::{Node, ObjectReference, Pod, Service},
    networking::v1::Ingress,
};
use kube::{
    Api, Client, Resource as _,
    api::{Patch, PatchParams},
    core::DynamicObject,
    runtime::{
        WatchStreamExt as _,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use meshdoctor_api::{
    AgentRegistration, NetReach, TaskKind, TaskStatus, status::ConditionStatus, task::ListedAddress,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    backend::Backend,
    driver::Controller,
    task_table::{TaskSource, VALID},
};
use agents::{NotAgent, PodAgent, pod_agent};
use tasks::{TaskObject, resource, task_defs, task_object};

/// A task object: its kind and name.
type ObjectName = (TaskKind, String);

/// Field manager of the status this controller applies.
pub const FIELD_MANAGER: &str = "meshdoctor-controller";
/// How long a failed status write waits before it is tried again.
const STATUS_RETRY: Duration = Duration::from_secs(2);

/// Where the agents are, from the controller's flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// The namespace of the agent pods, Service and Ingress (the controller's own).
    pub namespace: String,
    /// Label selector of the agent DaemonSet's pods.
    pub agent_selector: String,
    /// Name of the agent Service (clusterIP, nodePort and loadBalancer targets).
    pub agent_service: String,
    /// Name of the agent Ingress (ingress targets).
    pub agent_ingress: String,
    /// This replica's name (the pod name): the Lease holder and the events' reporting instance.
    pub identity: String,
}

/// The mirrors of what the backend watches, and the queue of status changes.
pub struct Kubernetes {
    tasks: [(TaskKind, Store<DynamicObject>); 3],
    pods: Store<Pod>,
    /// The nodes, labels only.
    nodes: Store<Node>,
    services: Store<Service>,
    ingresses: Store<Ingress>,
    cfg: Config,
    statuses: mpsc::UnboundedSender<(ObjectName, TaskStatus)>,
}

impl Backend for Kubernetes {
    fn roster(&self, registered: Vec<AgentRegistration>) -> Vec<AgentRegistration> {
        let node_labels = |node: &str| {
            let node = self.nodes.get(&ObjectRef::new(node))?;
            Some(node.metadata.labels.clone().unwrap_or_default())
        };
        let pods = self.agents();
        for r in &registered {
            let unvouched = pods
                .get(&r.node)
                .map(|p| p.unvouched(r))
                .unwrap_or_default();
            for (interface, ip) in unvouched {
                warn!(
                    node = r.node, interface, %ip,
                    "the agent registered an address its pod does not list (status.podIPs, the \
                     network-status annotation); it is not probed"
                );
            }
        }
        agents::roster(&pods, node_labels, registered)
    }

    fn service_targets(&self, task: &NetReach) -> (Vec<ListedAddress>, Vec<String>) {
        let ns = &self.cfg.namespace;
        let service = self
            .services
            .get(&ObjectRef::new(&self.cfg.agent_service).within(ns));
        let ingress = self
            .ingresses
            .get(&ObjectRef::new(&self.cfg.agent_ingress).within(ns));
        let ep = targets::service_endpoints(service.as_deref(), ingress.as_deref());
        let node_ips: BTreeSet<IpAddr> = self
            .agents()
            .values()
            .flat_map(|a| a.host_ips.iter().copied())
            .collect();
        targets::cluster_targets(task, &ep, &node_ips.into_iter().collect::<Vec<_>>())
    }

    fn status_changed(&self, source: &TaskSource, status: &TaskStatus) {
        let TaskSource::Object { kind, name } = source else {
            return;
        };
        // The generation the driver's task came from: a spec change restarts the task, which
        // writes a new status at once, so the object's current generation is the task's.
        let generation = self
            .tasks
            .iter()
            .find(|(k, _)| k == kind)
            .and_then(|(_, store)| store.get(&ObjectRef::new_with(name, resource(*kind))))
            .and_then(|o| o.metadata.generation);
        let mut status = status.clone();
        for c in &mut status.conditions {
            c.observed_generation = generation;
        }
        // The receiver lives as long as the backend runs; after that nothing is written.
        let _ = self.statuses.send(((*kind, name.clone()), status));
    }
}

impl Kubernetes {
    /// Agent pods by node. A node with two agent pods (a rolling update) takes the newer one.
    pub fn agents(&self) -> BTreeMap<String, PodAgent> {
        let mut pods = self.pods.state();
        pods.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        pods.iter()
            .filter_map(|p| pod_agent(p).ok())
            .map(|a| (a.node.clone(), a))
            .collect()
    }

    /// The agent pods that are not agents yet, and why.
    pub fn pending_agents(&self) -> Vec<NotAgent> {
        self.pods
            .state()
            .iter()
            .filter_map(|p| pod_agent(p).err())
            .collect()
    }

    /// Every task object, parsed.
    pub fn task_objects(&self) -> Vec<TaskObject> {
        self.tasks
            .iter()
            .flat_map(|(kind, store)| store.state().into_iter().map(|o| task_object(*kind, &o)))
            .collect()
    }
}

/// The mirrors, running, and what [`run`] needs of them.
pub struct Watched {
    pub backend: Arc<Kubernetes>,
    statuses: mpsc::UnboundedReceiver<(ObjectName, TaskStatus)>,
    /// Notified when a task object changed.
    tasks_changed: watch::Sender<()>,
    /// Notified when an agent pod changed.
    pods_changed: watch::Sender<()>,
}

/// Starts the watchers (the reflectors fill the backend's mirrors from now on).
pub fn watch(client: Client, cfg: Config) -> Watched {
    let tasks_changed = watch::Sender::new(());
    let pods_changed = watch::Sender::new(());
    let ns = cfg.namespace.as_str();
    let task_store = |kind: TaskKind| {
        let ar = resource(kind);
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let reader = writer.as_reader();
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        spawn_mirror(
            format!("{} objects", ar.plural),
            reflector::reflector(writer, watcher(api, watcher::Config::default())),
            Some(tasks_changed.clone()),
        );
        (kind, reader)
    };
    let tasks = TaskKind::ALL.map(task_store);
    let (pods, writer) = reflector::store();
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let by_label = watcher::Config::default().labels(&cfg.agent_selector);
    spawn_mirror(
        "agent pods".into(),
        reflector::reflector(writer, watcher(api, by_label)),
        Some(pods_changed.clone()),
    );
    // The nodes' labels name the agents' topology domains; only the labels are kept, a Node's
    // status (its image list) being large. Read when a round is planned, like the Service.
    let (nodes, writer) = reflector::store();
    let api = Api::<Node>::all(client.clone());
    let labels_only = |node: &mut Node| {
        node.spec = None;
        node.status = None;
        node.metadata.managed_fields = None;
        node.metadata.annotations = None;
    };
    spawn_mirror(
        "nodes".into(),
        reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).modify(labels_only),
        ),
        None,
    );
    // The Service and Ingress are read when a round is planned: nobody waits on them.
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let (services, writer) = reflector::store();
    let api = Api::<Service>::namespaced(client.clone(), ns);
    spawn_mirror(
        "agent Service".into(),
        reflector::reflector(writer, watcher(api, by_name(&cfg.agent_service))),
        None,
    );
    let (ingresses, writer) = reflector::store();
    let api = Api::<Ingress>::namespaced(client.clone(), ns);
    spawn_mirror(
        "agent Ingress".into(),
        reflector::reflector(writer, watcher(api, by_name(&cfg.agent_ingress))),
        None,
    );
    let (tx, statuses) = mpsc::unbounded_channel();
    let backend = Arc::new(Kubernetes {
        tasks,
        pods,
        nodes,
        services,
        ingresses,
        cfg,
        statuses: tx,
    });
    Watched {
        backend,
        statuses,
        tasks_changed,
        pods_changed,
    }
}

/// Makes `watched` the round driver's backend, starts the status writer, then keeps the
/// driver's tasks in step with the task objects while `leading` says this replica leads.
/// Runs until the process ends.
pub async fn run(
    client: Client,
    ctl: Arc<Controller>,
    watched: Watched,
    leading: watch::Receiver<bool>,
) {
    let Watched {
        backend,
        statuses,
        tasks_changed,
        pods_changed,
    } = watched;
    ctl.set_backend(backend.clone());
    let recorder = recorder(client.clone(), &backend.cfg);
    tokio::spawn(write_statuses(
        client,
        recorder.clone(),
        statuses,
        leading.clone(),
    ));
    tokio::spawn(report_pod_problems(recorder, backend.clone(), pods_changed));
    sync_tasks(ctl, backend, tasks_changed, leading).await;
}

/// Events are published as this controller replica.
fn recorder(client: Client, cfg: &Config) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(cfg.identity.clone()),
        },
    )
}

/// Drives a reflector forever, notifying `changed` after each change: errors are logged and
/// the watch retried with backoff.
fn spawn_mirror<K, S>(what: String, stream: S, changed: Option<watch::Sender<()>>)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.default_backoff());
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitApply(_) | watcher::Event::Init) => {}
                Ok(_) => {
                    if let Some(changed) = &changed {
                        changed.send_replace(());
                    }
                }
                Err(e) => warn!("watching {what}: {e} (retrying)"),
            }
        }
    });
}

/// Hands the task objects to the round driver on every change while leading; stops every
/// task when this replica stops leading (the new leader takes them over).
async fn sync_tasks(
    ctl: Arc<Controller>,
    backend: Arc<Kubernetes>,
    changed: watch::Sender<()>,
    mut leading: watch::Receiver<bool>,
) {
    let mut changed = changed.subscribe();
    let mut was_leading = false;
    loop {
        let is_leading = *leading.borrow_and_update();
        if is_leading != was_leading {
            info!(leading = is_leading, "leadership changed");
            was_leading = is_leading;
        }
        if is_leading {
            let objects = backend.task_objects();
            let seeds = seeds(&objects);
            ctl.sync_tasks_seeded(task_defs(&objects), seeds);
        } else {
            ctl.sync_tasks(vec![]);
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
        }
    }
}

/// The statuses earlier leaders wrote, for tasks whose spec did not change since: the new
/// leader continues their round count and history instead of starting over.
fn seeds(objects: &[TaskObject]) -> BTreeMap<TaskSource, TaskStatus> {
    objects
        .iter()
        .filter_map(|o| {
            let status = o.status.clone()?;
            let valid = status.conditions.iter().find(|c| c.type_ == VALID)?;
            (valid.observed_generation.is_some() && valid.observed_generation == o.generation)
                .then(|| (o.source(), status))
        })
        .collect()
}

/// Applies each task's latest status (server-side apply of `status` only); a failed write is
/// retried with the then latest status. Events are published when a condition turns bad.
async fn write_statuses(
    client: Client,
    recorder: Recorder,
    mut rx: mpsc::UnboundedReceiver<(ObjectName, TaskStatus)>,
    leading: watch::Receiver<bool>,
) {
    let mut pending: BTreeMap<ObjectName, TaskStatus> = BTreeMap::new();
    // The bad conditions already published, by task object and condition type.
    let mut published: BTreeMap<(ObjectName, String), String> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((source, status)) => {
                    pending.insert(source, status);
                }
                None => return,
            }
        }
        while let Ok((source, status)) = rx.try_recv() {
            pending.insert(source, status);
        }
        if !*leading.borrow() {
            // A follower's statuses are stale by definition: the leader writes.
            pending.clear();
            continue;
        }
        let mut retry = false;
        for (object, status) in std::mem::take(&mut pending) {
            let (kind, name) = (object.0, object.1.as_str());
            match apply_status(&client, kind, name, &status).await {
                Ok(()) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    info!(task = name, "task deleted; its status is not written");
                    continue;
                }
                Err(e) => {
                    warn!(task = name, "cannot write status (retrying): {e}");
                    pending.insert(object.clone(), status.clone());
                    retry = true;
                }
            }
            for c in &status.conditions {
                let key = (object.clone(), c.type_.clone());
                if c.status == ConditionStatus::False {
                    let note = format!("{}: {}", c.reason, c.message);
                    if published.get(&key) != Some(&note) {
                        let event = Event {
                            type_: EventType::Warning,
                            reason: c.reason.clone(),
                            note: Some(c.message.chars().take(1000).collect()),
                            action: c.type_.clone(),
                            secondary: None,
                        };
                        if let Err(e) = recorder.publish(&event, &task_reference(kind, name)).await
                        {
                            warn!(task = name, "cannot publish event: {e}");
                        }
                        published.insert(key, note);
                    }
                } else {
                    published.remove(&key);
                }
            }
        }
        if retry {
            tokio::time::sleep(STATUS_RETRY).await;
        }
    }
}

/// One server-side apply of a task's `status`.
async fn apply_status(
    client: &Client,
    kind: TaskKind,
    name: &str,
    status: &TaskStatus,
) -> Result<(), kube::Error> {
    let ar = resource(kind);
    let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
    let patch = json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

fn task_reference(kind: TaskKind, name: &str) -> ObjectReference {
    let ar = resource(kind);
    ObjectReference {
        api_version: Some(ar.api_version),
        kind: Some(ar.kind),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// Publishes a Warning event on an agent pod for each problem of its metadata, once per
/// problem and pod.
async fn report_pod_problems(
    recorder: Recorder,
    backend: Arc<Kubernetes>,
    changed: watch::Sender<()>,
) {
    let mut changed = changed.subscribe();
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        for pod in backend.pods.state() {
            let (name, problems) = match pod_agent(&pod) {
                Ok(agent) => (agent.pod, agent.problems),
                // Running without an IP is wrong (a CNI failure), not just early.
                Err(e @ NotAgent::NoIp(_)) => (
                    kube::ResourceExt::name_any(&*pod),
                    vec![format!("{e}: it takes no part in rounds until it has one")],
                ),
                Err(_) => continue,
            };
            for problem in problems {
                if !reported.insert((name.clone(), problem.clone())) {
                    continue;
                }
                warn!(pod = name, "{problem}");
                let event = Event {
                    type_: EventType::Warning,
                    reason: "BadAgentPod".into(),
                    note: Some(problem),
                    action: "ReadAgentPod".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
                    warn!(pod = name, "cannot publish event: {e}");
                }
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}
