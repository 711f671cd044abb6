//! `NetReach`: probe the full mesh of agents over every interface and family.
//!
//! kdoctor's NetReach fields, with meshdoctor's extensions (`request.protocol`,
//! `target.interfaces`, `target.addresses`, `target.remoteAgents`, `pairPaths`). kdoctor's
//! NetReach GETs every agent pod over HTTP; meshdoctor's probes the same mesh
//! (`target.endpoint`) with ICMP, UDP, TCP connects or HTTP GETs, timestamped in the kernel,
//! listed addresses without an agent, and the agents of another cluster whose network this one
//! routes to (`target.remoteAgents`: the cross-cluster check). kdoctor's
//! Service targets (`clusterIP`, `nodePort`, `loadBalancer`, `ingress`) are probed by the
//! Kubernetes backend through the agent Service and Ingress (tcp, udp or http); the standalone
//! controller and icmp tasks skip them, which [`NetReach::warnings`] says.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{
    Invalid, Kind, MAX_QPS, MeshSpec, Metadata, SchedulePlan, SuccessCondition, TaskSpec,
    agent_spec_warning, default_duration, default_qps, default_timeout, validate_common,
    validate_expect, yes,
};
use crate::{
    Family, InterfaceInfo, Protocol, TaskKind,
    plan::{MAX_PROBES_PER_PATH, MAX_TCP_PROBES_PER_PATH},
};

/// The primary pod interface, what kdoctor's `multusInterface: false` limits the mesh to.
pub const PRIMARY_INTERFACE: &str = "eth0";

/// A NetReach task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetReach {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: NetReachSpec,
}

/// `spec` of a NetReach task.
///
/// With the `crd` feature it also derives `NetReachResource`, the Kubernetes custom resource
/// (`netreaches.meshdoctor.io`, cluster-scoped as kdoctor's). Both roots exist because they
/// parse different documents: [`NetReach`] is a task file, with kdoctor's `apiVersion` accepted
/// and only `metadata.name` kept, and builds without kube; `NetReachResource` is the object
/// the apiserver serves, with its full `ObjectMeta` and the status subresource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(kube::CustomResource, schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    kube(
        group = "meshdoctor.io",
        version = "v1beta1",
        kind = "NetReach",
        root = "NetReachResource",
        plural = "netreaches",
        shortname = "nr",
        category = "meshdoctor",
        status = "crate::status::TaskStatus",
        doc = "A NetReach task: probe the full mesh of agents over every interface and family.",
    )
)]
#[cfg_attr(
    feature = "crd",
    schemars(
        description = crate::crd_schema::SPEC_DESCRIPTION,
        transform = crate::crd_schema::plain_docs,
        extend("x-kubernetes-validations" = [{
            "rule": "!has(self.pairPaths) || size(self.pairPaths) == 0 || self.target.endpoint \
                     || (has(self.target.remoteAgents) && size(self.target.remoteAgents) > 0)",
            "message": "pairPaths selects agent-to-agent pair-paths, but target.endpoint is \
                        false (no mesh) and target.remoteAgents lists no agent; drop pairPaths \
                        or probe the mesh or remote agents",
            "fieldPath": ".pairPaths",
        }])
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetReachSpec {
    /// kdoctor's per-task agent workload. Accepted, not used: tasks run on every registered
    /// agent ([`NetReach::warnings`] says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "crd",
        schemars(schema_with = "crate::crd_schema::preserved_object")
    )]
    pub agent_spec: Option<serde_yaml::Value>,
    #[serde(default)]
    pub schedule: SchedulePlan,
    #[serde(default)]
    pub request: NetReachRequest,
    #[serde(default)]
    pub expect: SuccessCondition,
    #[serde(default)]
    pub target: NetReachTarget,
    /// meshdoctor's extension: when given, a round probes only the agent-to-agent pair-paths
    /// that match an entry: the mesh's, and those toward `target.remoteAgents` (`dstNode` a
    /// remote agent's `node`); no listed addresses or Service targets. This is
    /// how `meshdoctor resume` re-probes just the pair-paths that failed, without the load
    /// and the noise of the whole mesh. Entries select, they never add: a pair-path the mesh
    /// would not plan (a node that is not registered, a network the interfaces filter leaves
    /// out) is simply not probed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pair_paths: Vec<PairPath>,
}

/// One entry of NetReach's `spec.pairPaths`: the directed pair-paths from `srcNode`'s agent to
/// `dstNode`'s, narrowed to one network and one family when those are given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.srcNode != self.dstNode",
        "message": "dstNode is also srcNode: an agent does not probe itself",
        "fieldPath": ".dstNode",
    }]))
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PairPath {
    /// The node of the probing agent.
    #[cfg_attr(feature = "crd", schemars(length(min = 1)))]
    pub src_node: String,
    /// The node of the probed agent.
    #[cfg_attr(feature = "crd", schemars(length(min = 1)))]
    pub dst_node: String,
    /// The network both interfaces are on (as agents register it); every network when
    /// omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "crd", schemars(length(min = 1)))]
    pub network: Option<String>,
    /// `ipv4` or `ipv6`; every enabled family when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
}

impl PairPath {
    /// Whether the mesh's pair-path `src` -> `dst` over `network` in `family` is selected.
    pub fn matches(&self, src: &str, dst: &str, network: &str, family: Family) -> bool {
        self.src_node == src
            && self.dst_node == dst
            && self.network.as_deref().is_none_or(|n| n == network)
            && self.family.is_none_or(|f| f == family)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    schemars(extend("x-kubernetes-validations" = [{
        "rule": format!(
            "self.qps * self.durationInSecond <= (self.protocol in ['tcp', 'http'] ? \
             {MAX_TCP_PROBES_PER_PATH} : {MAX_PROBES_PER_PATH})"
        ),
        "message": format!(
            "qps x durationInSecond probes per path: at most {MAX_PROBES_PER_PATH}, \
             {MAX_TCP_PROBES_PER_PATH} for tcp and http (one source port per probe)"
        ),
        "fieldPath": ".qps",
    }]))
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetReachRequest {
    /// meshdoctor's extension: the probe protocol (default icmp).
    #[serde(default)]
    pub protocol: Protocol,
    /// Probes per second per agent and target path.
    #[serde(default = "default_qps")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1, max = MAX_QPS)))]
    pub qps: u32,
    #[serde(default = "default_duration")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1, max = super::MAX_DURATION_IN_SECOND)))]
    pub duration_in_second: u32,
    #[serde(default = "default_timeout", rename = "perRequestTimeoutInMS")]
    #[cfg_attr(
        feature = "crd",
        schemars(range(min = 1, max = super::MAX_PER_REQUEST_TIMEOUT_IN_MS))
    )]
    pub per_request_timeout_in_ms: u32,
}

impl Default for NetReachRequest {
    fn default() -> Self {
        Self {
            protocol: Protocol::default(),
            qps: default_qps(),
            duration_in_second: default_duration(),
            per_request_timeout_in_ms: default_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.ipv4 || self.ipv6",
            "message": "at least one of ipv4 and ipv6 must be true",
        },
        {
            "rule": "self.endpoint || (has(self.addresses) && size(self.addresses) > 0) \
                     || (has(self.remoteAgents) && size(self.remoteAgents) > 0) \
                     || (has(self.clusterIP) && self.clusterIP) \
                     || (has(self.nodePort) && self.nodePort) \
                     || (has(self.loadBalancer) && self.loadBalancer) \
                     || (has(self.ingress) && self.ingress)",
            "message": "endpoint: false needs addresses, remoteAgents or a Service target \
                        (clusterIP, nodePort, loadBalancer, ingress): without the agent mesh, \
                        only those are probed",
            "fieldPath": ".endpoint",
        },
        {
            "rule": format!(
                "!has(self.multusInterface) || self.multusInterface || !has(self.interfaces) \
                 || (size(self.interfaces) == 1 && self.interfaces[0] == '{PRIMARY_INTERFACE}')"
            ),
            "message": "multusInterface: false (primary interface only) contradicts interfaces; \
                        set one of them",
            "fieldPath": ".multusInterface",
        },
    ]))
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetReachTarget {
    #[serde(default = "yes")]
    pub ipv4: bool,
    #[serde(default)]
    pub ipv6: bool,
    /// meshdoctor's extension: networks (or interface names) to mesh over; all when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "crd", schemars(length(min = 1)))]
    pub interfaces: Option<Vec<String>>,
    /// kdoctor: probe every agent pod (the mesh). `false` needs `addresses`, `remoteAgents` or
    /// a Service target: then only they are probed.
    #[serde(default = "yes")]
    pub endpoint: bool,
    /// meshdoctor's extension: addresses without an agent, probed from every agent, e.g. a
    /// gateway or a server outside the cluster: `IP` for icmp, `IP:port` / `[IPv6]:port` for
    /// tcp, http (a `GET /`; any 2xx or 3xx answers) and udp (which needs a meshdoctor
    /// responder there). They are probed over `interfaces` when given, else over the primary
    /// interface `eth0`. Only the source's hooks see these probes: a loss past them is
    /// `beyond`, never placed on an interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// meshdoctor's extension: agents of another cluster whose pod network this cluster routes
    /// to, probed from every local agent like peers of the mesh (the cross-cluster check of
    /// `meshdoctor check --dst-controller`, which copies them from that cluster's `GET
    /// /v1/agents`). Nothing registers them here, so the task carries what probing needs:
    /// their names, interfaces and responder port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "crd",
        schemars(extend(
            "x-kubernetes-list-type" = "map",
            "x-kubernetes-list-map-keys" = ["node"]
        ))
    )]
    pub remote_agents: Option<Vec<RemoteAgent>>,
    /// kdoctor: also probe the secondary (multus) interfaces. Omitted or `true`, meshdoctor
    /// meshes over every network; `false` limits the mesh to the primary interface `eth0`
    /// (filled into `interfaces`, which must then be omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multus_interface: Option<bool>,
    /// kdoctor's Service targets: probe the agent Service's cluster IPs, node ports and
    /// load-balancer IPs and the agent Ingress (Kubernetes backend; tcp, udp or http).
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    /// kdoctor: keep every latency sample for percentiles. meshdoctor always measures
    /// latency, so this changes nothing.
    #[serde(default)]
    pub enable_latency_metric: bool,
    /// meshdoctor's extension: which agent pairs a round probes ([`MeshSpec`]); `auto` when
    /// omitted: the full mesh while it fits the controller's probe budget.
    #[serde(default, skip_serializing_if = "MeshSpec::is_default")]
    pub mesh: MeshSpec,
}

impl NetReachTarget {
    /// Whether `spec.target.ipv4` / `ipv6` turns `family` on.
    pub fn family_enabled(&self, family: Family) -> bool {
        match family {
            Family::Ipv4 => self.ipv4,
            Family::Ipv6 => self.ipv6,
        }
    }

    /// `spec.target.remoteAgents`, none when omitted.
    pub fn remotes(&self) -> &[RemoteAgent] {
        self.remote_agents.as_deref().unwrap_or_default()
    }

    /// The Service targets (kdoctor's field names) that are turned on.
    pub fn service_targets(&self) -> impl Iterator<Item = &'static str> {
        [
            ("clusterIP", self.cluster_ip),
            ("nodePort", self.node_port),
            ("loadBalancer", self.load_balancer),
            ("ingress", self.ingress),
        ]
        .into_iter()
        .filter(|(_, on)| *on == Some(true))
        .map(|(field, _)| field)
    }
}

/// One entry of NetReach's `spec.target.remoteAgents`: an agent of another cluster, as that
/// cluster's controller registered it.
///
/// Every local agent probes it like a peer of the mesh (over the networks and enabled
/// families both ends have, narrowed by `target.interfaces` and `pairPaths`), but it takes no
/// part in the round: it gets no plan and sends no report, so only the source's hooks see
/// these probes and a loss past them is `beyond`, as for listed addresses. Unlike a listed
/// address it is a pair-path of the mesh: reports name its node and interface, and
/// `pairPaths` select it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteAgent {
    /// The name reports give the agent (their `dstNode`) and `pairPaths` select it by; one
    /// entry per name. Prefix its cluster (`dst/node-3`) so that it cannot be taken for a
    /// local node.
    #[cfg_attr(feature = "crd", schemars(length(min = 1)))]
    pub node: String,
    /// Its interfaces as it registered them (`name`, `network`, `ipv4`, `ipv6`): a local
    /// interface probes the remote ones on the same network.
    #[serde(deserialize_with = "strict_interfaces")]
    #[cfg_attr(
        feature = "crd",
        schemars(
            length(min = 1),
            extend(
                "x-kubernetes-list-type" = "map",
                "x-kubernetes-list-map-keys" = ["name"]
            )
        )
    )]
    pub interfaces: Vec<InterfaceInfo>,
    /// Its responders' port (its registration's `probePort`): tcp, udp and http probes need
    /// it; icmp ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1)))]
    pub probe_port: Option<u16>,
}

/// [`InterfaceInfo`] as a task spells it: strict like the rest of the task, so that a typo
/// (`ipv6a`) is an error rather than an interface without that address. Registrations stay
/// lenient (a newer agent may send more). Being serde's `remote` of the same type, it cannot
/// drift from it: a field added there fails to compile here.
#[derive(Deserialize)]
#[serde(
    remote = "InterfaceInfo",
    rename_all = "camelCase",
    deny_unknown_fields
)]
struct StrictInterface {
    name: String,
    network: String,
    #[serde(default)]
    ipv4: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    ipv6: Option<std::net::Ipv6Addr>,
}

fn strict_interfaces<'de, D>(de: D) -> Result<Vec<InterfaceInfo>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Strict(#[serde(with = "StrictInterface")] InterfaceInfo);
    let list = Vec::<Strict>::deserialize(de)?;
    Ok(list.into_iter().map(|Strict(i)| i).collect())
}

impl Default for NetReachTarget {
    fn default() -> Self {
        Self {
            ipv4: true,
            ipv6: false,
            interfaces: None,
            endpoint: true,
            addresses: None,
            remote_agents: None,
            multus_interface: None,
            cluster_ip: None,
            node_port: None,
            load_balancer: None,
            ingress: None,
            enable_latency_metric: false,
            mesh: MeshSpec::default(),
        }
    }
}

impl Kind for NetReach {
    const KIND: TaskKind = TaskKind::NetReach;
    const MAX_QPS: u32 = MAX_QPS;

    fn normalize(&mut self) {
        let t = &mut self.spec.target;
        if t.multus_interface == Some(false) && t.interfaces.is_none() {
            t.interfaces = Some(vec![PRIMARY_INTERFACE.into()]);
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        validate_common(self)?;
        let sp = &self.spec;
        let rq = &sp.request;
        let probes = u64::from(rq.qps) * u64::from(rq.duration_in_second);
        // An icmp task probes its Service targets over http (see `warnings`).
        let http_services = rq.protocol == Protocol::Icmp
            && sp.pair_paths.is_empty()
            && sp.target.service_targets().next().is_some();
        let (max, why) = if rq.protocol.is_tcp() {
            (
                MAX_TCP_PROBES_PER_PATH,
                " for tcp and http (one source port per probe)",
            )
        } else if http_services {
            (
                MAX_TCP_PROBES_PER_PATH,
                " when an icmp task has Service targets, which it probes over http (one source \
                 port per probe)",
            )
        } else {
            (MAX_PROBES_PER_PATH, "")
        };
        if probes > u64::from(max) {
            return Err(Invalid::new(
                "spec.request.qps",
                format!("qps x durationInSecond = {probes} probes per path; at most {max}{why}"),
            ));
        }
        validate_expect(sp.expect.success_rate, sp.expect.mean_access_delay_in_ms)?;
        let t = &sp.target;
        if !t.ipv4 && !t.ipv6 {
            return Err(Invalid::new(
                "spec.target",
                "at least one of ipv4 and ipv6 must be true",
            ));
        }
        if !t.endpoint
            && t.addresses.as_ref().is_none_or(Vec::is_empty)
            && t.remotes().is_empty()
            && t.service_targets().next().is_none()
        {
            return Err(Invalid::new(
                "spec.target.endpoint",
                "false needs spec.target.addresses, spec.target.remoteAgents or a Service \
                 target (clusterIP, nodePort, loadBalancer, ingress): without the agent mesh, \
                 only those are probed",
            ));
        }
        self.parse_addresses()?;
        self.validate_remote_agents()?;
        t.mesh.validate()?;
        match &t.interfaces {
            Some(i) if i.is_empty() => {
                return Err(Invalid::new(
                    "spec.target.interfaces",
                    "must name at least one network when given",
                ));
            }
            Some(i) if t.multus_interface == Some(false) && i[..] != [PRIMARY_INTERFACE] => {
                return Err(Invalid::new(
                    "spec.target.multusInterface",
                    "false (primary interface only) contradicts spec.target.interfaces; \
                     set one of them",
                ));
            }
            _ => {}
        }
        self.validate_pair_paths()
    }
}

impl NetReach {
    super::parsers!();

    /// `spec.target.addresses`, parsed (a loaded task's are all valid).
    pub fn listed_addresses(&self) -> Vec<ListedAddress> {
        self.parse_addresses().unwrap_or_default()
    }

    /// Whether the mesh's pair-path `src` -> `dst` over `network` in `family` is probed:
    /// always without `spec.pairPaths`, else when an entry matches it.
    pub fn selects_pair_path(&self, src: &str, dst: &str, network: &str, family: Family) -> bool {
        let pairs = &self.spec.pair_paths;
        pairs.is_empty() || pairs.iter().any(|p| p.matches(src, dst, network, family))
    }

    /// `spec.pairPaths`: each entry must be able to match a pair-path of the mesh or toward
    /// a remote agent. An entry that cannot (no mesh and no remote agent, a node to itself, a
    /// remote agent as the source, without the mesh a destination that is no remote agent, a
    /// family turned off) would silently probe nothing, which a resume would read as "all
    /// clear".
    fn validate_pair_paths(&self) -> Result<(), Invalid> {
        let t = &self.spec.target;
        if self.spec.pair_paths.is_empty() {
            return Ok(());
        }
        let remotes = t.remotes();
        if !t.endpoint && remotes.is_empty() {
            return Err(Invalid::new(
                "spec.pairPaths",
                "selects agent-to-agent pair-paths, but spec.target.endpoint is false (no \
                 mesh) and spec.target.remoteAgents lists no agent; drop pairPaths or probe \
                 the mesh or remote agents",
            ));
        }
        let remote = |node: &str| remotes.iter().any(|r| r.node == node);
        for (i, p) in self.spec.pair_paths.iter().enumerate() {
            let field = |f: &str| format!("spec.pairPaths[{i}].{f}");
            for (f, value) in [("srcNode", &p.src_node), ("dstNode", &p.dst_node)] {
                if value.is_empty() {
                    return Err(Invalid::new(field(f), "must name a node"));
                }
            }
            if remote(&p.src_node) {
                return Err(Invalid::new(
                    field("srcNode"),
                    format!(
                        "{:?} is a remote agent (spec.target.remoteAgents): it is probed, it \
                         probes nothing",
                        p.src_node
                    ),
                ));
            }
            if !t.endpoint && !remote(&p.dst_node) {
                return Err(Invalid::new(
                    field("dstNode"),
                    format!(
                        "{:?} is not in spec.target.remoteAgents, and spec.target.endpoint is \
                         false: only remote agents are probed",
                        p.dst_node
                    ),
                ));
            }
            if p.src_node == p.dst_node {
                return Err(Invalid::new(
                    field("dstNode"),
                    format!(
                        "{:?} is also srcNode: an agent does not probe itself",
                        p.dst_node
                    ),
                ));
            }
            if p.network.as_deref() == Some("") {
                return Err(Invalid::new(
                    field("network"),
                    "must name a network when given",
                ));
            }
            if let Some(family) = p.family.filter(|&f| !t.family_enabled(f)) {
                return Err(Invalid::new(
                    field("family"),
                    format!("{family} but spec.target.{family} is false"),
                ));
            }
        }
        Ok(())
    }

    /// `spec.target.remoteAgents`: nothing registers them, so each entry must be probe-able as
    /// written: a unique name, interfaces with a name, a network and a unicast address, and
    /// the responder port the protocol needs. An enabled family no interface has an address
    /// of is fine (its pair-paths are not planned), as for registered agents.
    fn validate_remote_agents(&self) -> Result<(), Invalid> {
        let protocol = self.spec.request.protocol;
        let agents = self.spec.target.remotes();
        for (i, agent) in agents.iter().enumerate() {
            let field = |f: &str| format!("spec.target.remoteAgents[{i}]{f}");
            if agent.node.is_empty() {
                return Err(Invalid::new(
                    field(".node"),
                    "must name the agent (reports show it as dstNode), e.g. dst/node-3",
                ));
            }
            if let Some(j) = agents[..i].iter().position(|a| a.node == agent.node) {
                return Err(Invalid::new(
                    field(".node"),
                    format!(
                        "{:?} is also remoteAgents[{j}]: one entry per agent",
                        agent.node
                    ),
                ));
            }
            match (protocol, agent.probe_port) {
                (_, Some(0)) => return Err(Invalid::new(field(".probePort"), "port 0")),
                (Protocol::Icmp, _) | (_, Some(_)) => {}
                (p, None) => {
                    return Err(Invalid::new(
                        field(".probePort"),
                        format!(
                            "missing for {:?}: {} probes go to the agent's responder port (its \
                             registration's probePort)",
                            agent.node,
                            p.name()
                        ),
                    ));
                }
            }
            if agent.interfaces.is_empty() {
                return Err(Invalid::new(
                    field(".interfaces"),
                    "must list at least one interface",
                ));
            }
            for (k, iface) in agent.interfaces.iter().enumerate() {
                let field = |f: &str| field(&format!(".interfaces[{k}]{f}"));
                for (f, value, what) in [
                    (".name", &iface.name, "must name an interface"),
                    (".network", &iface.network, "must name the network it is on"),
                ] {
                    if value.is_empty() {
                        return Err(Invalid::new(field(f), what));
                    }
                }
                if let Some(j) = agent.interfaces[..k]
                    .iter()
                    .position(|o| o.name == iface.name)
                {
                    return Err(Invalid::new(
                        field(".name"),
                        format!(
                            "{:?} is also interfaces[{j}]: one entry per interface",
                            iface.name
                        ),
                    ));
                }
                if iface.ipv4.is_none() && iface.ipv6.is_none() {
                    return Err(Invalid::new(
                        field(""),
                        "needs an address: ipv4, ipv6 or both",
                    ));
                }
                for family in [Family::Ipv4, Family::Ipv6] {
                    if let Some(ip) = iface.addr(family) {
                        unicast(ip, &ip.to_string())
                            .map_err(|why| Invalid::new(field(&format!(".{family}")), why))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `spec.target.addresses`, parsed; an error names the entry and what was expected.
    fn parse_addresses(&self) -> Result<Vec<ListedAddress>, Invalid> {
        let t = &self.spec.target;
        let protocol = self.spec.request.protocol;
        let mut out = Vec::new();
        for (i, entry) in t.addresses.iter().flatten().enumerate() {
            let field = format!("spec.target.addresses[{i}]");
            let bad = |why: String| Invalid::new(field.clone(), why);
            let (ip, port) = match (entry.parse::<IpAddr>(), entry.parse::<SocketAddr>()) {
                (Ok(ip), _) => (ip, None),
                (_, Ok(sa)) => (sa.ip(), Some(sa.port())),
                _ => {
                    return Err(bad(format!(
                        "expected an IP address, or IP:port ([IPv6]:port), got {entry:?}"
                    )));
                }
            };
            match (protocol, port) {
                (Protocol::Icmp, Some(_)) => {
                    return Err(bad(format!(
                        "{entry:?}: icmp probes have no port; give the address alone"
                    )));
                }
                (Protocol::Icmp, None) => {}
                (p, None) => {
                    return Err(bad(format!(
                        "{entry:?}: {} probes need a port, e.g. 192.0.2.10:80",
                        p.name()
                    )));
                }
                (_, Some(0)) => return Err(bad(format!("{entry:?}: port 0"))),
                (_, Some(_)) => {}
            }
            let (on, flag) = match ip {
                IpAddr::V4(_) => (t.ipv4, "ipv4"),
                IpAddr::V6(_) => (t.ipv6, "ipv6"),
            };
            if !on {
                return Err(bad(format!(
                    "{entry:?} is an {flag} address but spec.target.{flag} is false"
                )));
            }
            unicast(ip, entry).map_err(bad)?;
            out.push(ListedAddress {
                label: entry.clone(),
                ip,
                port,
                protocol: None,
            });
        }
        Ok(out)
    }
}

/// Refuses what no probe can be sent to: the unspecified address and multicast. `written` is
/// the address as the task wrote it.
fn unicast(ip: IpAddr, written: &str) -> Result<(), String> {
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{written:?}: not a unicast address"));
    }
    Ok(())
}

/// One entry of NetReach's `spec.target.addresses`, or a Service target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAddress {
    /// As written in the task: the path's destination name in reports.
    pub label: String,
    pub ip: IpAddr,
    pub port: Option<u16>,
    /// The protocol that probes it when not the task's: an icmp task probes its Service
    /// targets over http, as kdoctor does (no ping reaches a Service port).
    pub protocol: Option<Protocol>,
}

impl TaskSpec for NetReach {
    super::common_accessors!();

    fn warnings(&self) -> Vec<String> {
        let t = &self.spec.target;
        let mut w = Vec::new();
        if self.spec.agent_spec.is_some() {
            w.push(agent_spec_warning());
        }
        let protocol = self.spec.request.protocol;
        if !self.spec.pair_paths.is_empty() {
            let mut skipped = Vec::new();
            if t.addresses.as_ref().is_some_and(|a| !a.is_empty()) {
                skipped.push("addresses");
            }
            skipped.extend(t.service_targets());
            if !skipped.is_empty() {
                w.push(format!(
                    "spec.target.{}: not probed: spec.pairPaths limits rounds to the listed \
                     agent-to-agent pair-paths",
                    skipped.join(", spec.target.")
                ));
            }
            return w;
        }
        for field in t.service_targets() {
            w.push(match (protocol, field) {
                (Protocol::Icmp, _) => format!(
                    "spec.target.{field}: probed over http, as kdoctor does (no ping reaches a \
                     Service port), while the mesh stays icmp; by the Kubernetes backend only \
                     (through the agent Service and Ingress), ignored by the standalone \
                     controller"
                ),
                (Protocol::Udp, "ingress") => {
                    "spec.target.ingress: skipped: an Ingress serves HTTP, not udp".to_string()
                }
                _ => format!(
                    "spec.target.{field}: probed by the Kubernetes backend only (through the \
                     agent Service and Ingress); ignored by the standalone controller"
                ),
            });
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::task::tests::assert_err;

    const GOOD: &str = "
apiVersion: meshdoctor.io/v1beta1
kind: NetReach
metadata:
  name: mesh
spec:
  schedule:
    schedule: '@every 10s'
    roundNumber: -1
  request:
    qps: 20
    durationInSecond: 3
    perRequestTimeoutInMS: 800
  expect:
    successRate: 0.99
  target:
    ipv4: true
    ipv6: true
";

    fn err(yaml: &str) -> String {
        NetReach::from_yaml("tasks/mesh.yaml", yaml)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_with_defaults() {
        let t = NetReach::from_yaml("f", GOOD).unwrap();
        assert_eq!(t.spec.request.qps, 20);
        assert_eq!(t.spec.request.protocol, Protocol::Icmp);
        assert_eq!(t.spec.expect.mean_access_delay_in_ms, 5000);
        assert_eq!(t.schedule().every, Duration::from_secs(10));
        assert_eq!(t.schedule().first_after, Duration::ZERO);
        assert_eq!(t.round_timeout(), Duration::from_secs(10));
        assert!(t.spec.target.endpoint);
        assert!(t.warnings().is_empty());
        let minimal =
            "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {name: m}\nspec: {}\n";
        let t = NetReach::from_yaml("f", minimal).unwrap();
        assert_eq!(t.spec.request.per_request_timeout_in_ms, 500);
        assert_eq!(t.round_timeout(), Duration::from_secs(60));
        // Bool defaults survive a target block that omits them (kdoctor loses them).
        let t = NetReach::from_yaml(
            "f",
            &minimal.replace("spec: {}", "spec: {target: {ipv6: true}}"),
        )
        .unwrap();
        assert!(t.spec.target.ipv4 && t.spec.target.ipv6 && t.spec.target.endpoint);
    }

    #[test]
    fn a_kdoctor_manifest_ports_as_is() {
        let kdoctor = "
apiVersion: kdoctor.io/v1beta1
kind: NetReach
metadata:
  name: netreach
  labels: {team: net}
spec:
  agentSpec:
    hostNetwork: false
    kind: DaemonSet
  schedule:
    roundNumber: 2
    roundTimeoutMinute: 1
    schedule: 0 1
  request:
    durationInSecond: 10
    perRequestTimeoutInMS: 1000
    qps: 10
  target:
    clusterIP: true
    endpoint: true
    ingress: false
    ipv4: true
    ipv6: false
    loadBalancer: false
    multusInterface: false
    nodePort: true
    enableLatencyMetric: false
  expect:
    meanAccessDelayInMs: 1500
    successRate: 1
";
        let t = NetReach::from_yaml("k.yaml", kdoctor).unwrap();
        assert_eq!(t.spec.schedule.round_number, 2);
        assert_eq!(
            t.spec.target.interfaces.as_deref(),
            Some(&["eth0".to_string()][..])
        );
        let w = t.warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("spec.agentSpec: ignored"), "{w:?}");
        assert!(w[1].starts_with("spec.target.clusterIP: "), "{w:?}");
        assert!(
            w[2].starts_with("spec.target.nodePort: probed over http, as kdoctor does"),
            "{w:?}"
        );
        // Over http the Kubernetes backend probes them; an Ingress takes no udp.
        let http = kdoctor.replace("qps: 10", "qps: 10\n    protocol: http");
        let w = NetReach::from_yaml("k.yaml", &http).unwrap().warnings();
        assert!(
            w[1].contains("probed by the Kubernetes backend only"),
            "{w:?}"
        );
        let udp = kdoctor
            .replace("qps: 10", "qps: 10\n    protocol: udp")
            .replace("ingress: false", "ingress: true");
        let w = NetReach::from_yaml("k.yaml", &udp).unwrap().warnings();
        assert_eq!(
            w.last().unwrap(),
            "spec.target.ingress: skipped: an Ingress serves HTTP, not udp"
        );
        // Without the mesh, a Service target is enough to probe.
        let services_only = http.replace("endpoint: true", "endpoint: false");
        assert!(NetReach::from_yaml("k.yaml", &services_only).is_ok());
        let nothing = services_only
            .replace("clusterIP: true", "clusterIP: false")
            .replace("nodePort: true", "nodePort: false");
        let e = NetReach::from_yaml("k.yaml", &nothing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.target.endpoint: false needs"), "{e}");
        let all_networks = kdoctor.replace("multusInterface: false", "multusInterface: true");
        let t = NetReach::from_yaml("k.yaml", &all_networks).unwrap();
        assert!(t.spec.target.interfaces.is_none());
    }

    #[test]
    fn tcp_probes_are_bounded_by_their_source_ports() {
        // 9.8 s of probing leaves the agents 1 s to report before the next round.
        let busy = GOOD.replace("'@every 10s'", "'@every 11s'").replace(
            "qps: 20\n    durationInSecond: 3",
            "qps: 500\n    durationInSecond: 9",
        );
        for protocol in ["icmp", "udp"] {
            let yaml = busy.replace("request:", &format!("request:\n    protocol: {protocol}"));
            NetReach::from_yaml("f", &yaml).unwrap();
        }
        for protocol in ["tcp", "http"] {
            let e = err(&busy.replace("request:", &format!("request:\n    protocol: {protocol}")));
            assert_eq!(
                e,
                "tasks/mesh.yaml: spec.request.qps: qps x durationInSecond = 4500 probes per \
                 path; at most 4096 for tcp and http (one source port per probe)"
            );
        }
        // An icmp task probes its Service targets over http: they bound it too.
        let services = busy.replace("ipv6: true", "ipv6: true\n    clusterIP: true");
        let e = err(&services);
        assert!(
            e.ends_with(
                "at most 4096 when an icmp task has Service targets, which it probes over http \
                 (one source port per probe)"
            ),
            "{e}"
        );
    }

    #[test]
    fn listed_addresses_are_parsed_and_checked_against_protocol_and_families() {
        let with = |protocol: &str, addresses: &str| {
            GOOD.replace("request:", &format!("request:\n    protocol: {protocol}"))
                .replace(
                    "ipv6: true",
                    &format!("ipv6: true\n    addresses: {addresses}"),
                )
        };
        let t = NetReach::from_yaml("f", &with("tcp", "['192.0.2.10:80', '[2001:db8::1]:443']"))
            .unwrap();
        assert_eq!(
            t.listed_addresses(),
            vec![
                ListedAddress {
                    label: "192.0.2.10:80".into(),
                    ip: "192.0.2.10".parse().unwrap(),
                    port: Some(80),
                    protocol: None,
                },
                ListedAddress {
                    label: "[2001:db8::1]:443".into(),
                    ip: "2001:db8::1".parse().unwrap(),
                    port: Some(443),
                    protocol: None,
                },
            ]
        );
        let icmp = NetReach::from_yaml("f", &with("icmp", "['192.0.2.10', '2001:db8::1']"));
        assert_eq!(icmp.unwrap().listed_addresses().len(), 2);
        // Only listed addresses, no mesh.
        let only =
            with("icmp", "['192.0.2.10']").replace("ipv6: true", "ipv6: true\n    endpoint: false");
        assert!(
            !NetReach::from_yaml("f", &only)
                .unwrap()
                .spec
                .target
                .endpoint
        );
        for (protocol, addresses, message) in [
            (
                "icmp",
                "[gateway]",
                "[0]: expected an IP address, or IP:port ([IPv6]:port), got \"gateway\"",
            ),
            (
                "icmp",
                "['192.0.2.1', '192.0.2.1:80']",
                "[1]: \"192.0.2.1:80\": icmp probes have no port",
            ),
            (
                "tcp",
                "['192.0.2.1']",
                "[0]: \"192.0.2.1\": tcp probes need a port",
            ),
            ("http", "['192.0.2.1:0']", "[0]: \"192.0.2.1:0\": port 0"),
            (
                "icmp",
                "['224.0.0.1']",
                "[0]: \"224.0.0.1\": not a unicast address",
            ),
        ] {
            let e = err(&with(protocol, addresses));
            assert!(
                e.starts_with(&format!("tasks/mesh.yaml: spec.target.addresses{message}")),
                "{e}"
            );
        }
        let v4_only = with("icmp", "['2001:db8::1']").replace("ipv6: true\n", "ipv6: false\n");
        let e = err(&v4_only);
        assert!(
            e.ends_with("\"2001:db8::1\" is an ipv6 address but spec.target.ipv6 is false"),
            "{e}"
        );
    }

    /// GOOD with `spec.pairPaths` set to the flow sequence `pairs`.
    fn with_pairs(pairs: &str) -> String {
        format!("{GOOD}  pairPaths: {pairs}\n")
    }

    #[test]
    fn pair_paths_parse_and_select() {
        let t = NetReach::from_yaml(
            "f",
            &with_pairs(
                "[{srcNode: a, dstNode: b}, {srcNode: b, dstNode: a, network: sec, family: ipv6}]",
            ),
        )
        .unwrap();
        assert_eq!(
            t.spec.pair_paths[1],
            PairPath {
                src_node: "b".into(),
                dst_node: "a".into(),
                network: Some("sec".into()),
                family: Some(Family::Ipv6),
            }
        );
        assert!(t.selects_pair_path("a", "b", "pod", Family::Ipv4));
        assert!(!t.selects_pair_path("a", "c", "pod", Family::Ipv4));
        assert!(t.selects_pair_path("b", "a", "sec", Family::Ipv6));
        assert!(!t.selects_pair_path("b", "a", "sec", Family::Ipv4));
        assert!(!t.selects_pair_path("b", "a", "pod", Family::Ipv6));
        // Omitted when empty, so a task without them serializes as before.
        let plain = NetReach::from_yaml("f", GOOD).unwrap();
        assert!(plain.selects_pair_path("x", "y", "pod", Family::Ipv4));
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json["spec"].get("pairPaths").is_none(), "{json}");
    }

    #[test]
    fn pair_paths_errors_name_the_entry_and_field() {
        for (pairs, field, says) in [
            (
                "[{srcNode: a, dstNode: b}, {srcNode: '', dstNode: b}]",
                "spec.pairPaths[1].srcNode",
                "must name a node",
            ),
            (
                "[{srcNode: a, dstNode: ''}]",
                "spec.pairPaths[0].dstNode",
                "must name a node",
            ),
            (
                "[{srcNode: a, dstNode: a}]",
                "spec.pairPaths[0].dstNode",
                "does not probe itself",
            ),
            (
                "[{srcNode: a, dstNode: b, network: ''}]",
                "spec.pairPaths[0].network",
                "must name a network",
            ),
            (
                "[{srcNode: a}]",
                "spec.pairPaths[0]",
                "missing field `dstNode`",
            ),
            (
                "[{srcNode: a, dstNode: b, family: ipv5}]",
                "spec.pairPaths[0].family",
                "unknown variant",
            ),
            (
                "[{srcNode: a, dstNode: b, node: c}]",
                "spec.pairPaths[0].node",
                "unknown field `node`",
            ),
        ] {
            assert_err(&with_pairs(pairs), field, says);
        }
        let v4_only = with_pairs("[{srcNode: a, dstNode: b, family: ipv6}]")
            .replace("ipv6: true", "ipv6: false");
        assert_err(
            &v4_only,
            "spec.pairPaths[0].family",
            "ipv6 but spec.target.ipv6 is false",
        );
        // Addresses without the mesh: pairPaths would select nothing.
        let no_mesh = with_pairs("[{srcNode: a, dstNode: b}]").replace(
            "ipv6: true\n",
            "ipv6: true\n    endpoint: false\n    addresses: ['192.0.2.1']\n",
        );
        assert_err(&no_mesh, "spec.pairPaths", "spec.target.endpoint is false");
        // With the mesh, listed addresses and Service targets are skipped, with a warning.
        let skipped = no_mesh
            .replace("endpoint: false", "endpoint: true")
            .replace("addresses:", "clusterIP: true\n    addresses:");
        let w = NetReach::from_yaml("f", &skipped).unwrap().warnings();
        assert_eq!(
            w,
            [
                "spec.target.addresses, spec.target.clusterIP: not probed: spec.pairPaths limits \
              rounds to the listed agent-to-agent pair-paths"
            ]
        );
    }

    /// Two agents of another cluster, without the local mesh.
    const REMOTE: &str = "
    endpoint: false
    remoteAgents:
      - node: dst/node-3
        probePort: 7080
        interfaces:
          - {name: eth0, network: eth0, ipv4: 10.1.0.3, ipv6: 'fd00::3'}
          - {name: net1, network: sec, ipv4: 10.2.0.3}
      - node: dst/node-4
        probePort: 7080
        interfaces:
          - {name: eth0, network: eth0, ipv6: 'fd00::4'}
";

    /// GOOD probing [`REMOTE`] over `protocol`, with `from` replaced by `to`.
    fn with_remote(protocol: &str, from: &str, to: &str) -> String {
        GOOD.replace("request:", &format!("request:\n    protocol: {protocol}"))
            .replace("ipv6: true\n", &format!("ipv6: true{REMOTE}"))
            .replace(from, to)
    }

    #[test]
    fn a_cross_cluster_task_probes_remote_agents_and_selects_their_pair_paths() {
        let pairs = "  pairPaths: [{srcNode: node-1, dstNode: dst/node-3, network: sec}]\n";
        let yaml = format!("{}{pairs}", with_remote("tcp", "", ""));
        let t = NetReach::from_yaml("f", &yaml).unwrap();
        let remotes = t.spec.target.remotes();
        assert_eq!(
            remotes[0],
            RemoteAgent {
                node: "dst/node-3".into(),
                interfaces: vec![
                    InterfaceInfo {
                        name: "eth0".into(),
                        network: "eth0".into(),
                        ipv4: Some([10, 1, 0, 3].into()),
                        ipv6: Some("fd00::3".parse().unwrap()),
                    },
                    InterfaceInfo {
                        name: "net1".into(),
                        network: "sec".into(),
                        ipv4: Some([10, 2, 0, 3].into()),
                        ipv6: None,
                    },
                ],
                probe_port: Some(7080),
            }
        );
        assert_eq!(remotes[1].interfaces[0].ipv4, None);
        assert!(t.selects_pair_path("node-1", "dst/node-3", "sec", Family::Ipv4));
        assert!(!t.selects_pair_path("node-1", "dst/node-3", "eth0", Family::Ipv4));
        // Remote agents are pair-paths, not listed addresses: pairPaths keeps them, silently.
        assert!(t.warnings().is_empty(), "{:?}", t.warnings());
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["spec"]["target"]["remoteAgents"][0]["probePort"], 7080);
        let back: NetReach = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
        let plain = serde_json::to_value(NetReach::from_yaml("f", GOOD).unwrap()).unwrap();
        assert!(
            plain["spec"]["target"].get("remoteAgents").is_none(),
            "{plain}"
        );

        // Without pairPaths; icmp needs no port; an enabled family without any address (ipv4
        // of node-4) and an address of a disabled family are fine.
        let icmp = with_remote("icmp", "        probePort: 7080\n", "");
        assert!(NetReach::from_yaml("f", &icmp).is_ok());
        let v4_only = with_remote("udp", "ipv6: true\n", "ipv6: false\n");
        assert!(NetReach::from_yaml("f", &v4_only).is_ok());
        // With the mesh too.
        let both = with_remote("http", "endpoint: false", "endpoint: true");
        assert!(NetReach::from_yaml("f", &format!("{both}{pairs}")).is_ok());
        // Without the mesh, an empty list probes nothing.
        let none = GOOD.replace(
            "ipv6: true\n",
            "ipv6: true\n    endpoint: false\n    remoteAgents: []\n",
        );
        assert_err(
            &none,
            "spec.target.endpoint",
            "false needs spec.target.addresses, spec.target.remoteAgents or a Service target",
        );
    }

    #[test]
    fn remote_agents_errors_name_the_entry_and_field() {
        let node_4 = "      - node: dst/node-4\n        probePort: 7080\n";
        let node_4_iface = "{name: eth0, network: eth0, ipv6: 'fd00::4'}";
        for (from, to, field, says) in [
            (
                "node: dst/node-4",
                "node: ''",
                "spec.target.remoteAgents[1].node",
                "must name the agent (reports show it as dstNode)",
            ),
            (
                "node: dst/node-4",
                "node: dst/node-3",
                "spec.target.remoteAgents[1].node",
                "\"dst/node-3\" is also remoteAgents[0]: one entry per agent",
            ),
            (
                node_4,
                "      - node: dst/node-4\n",
                "spec.target.remoteAgents[1].probePort",
                "missing for \"dst/node-4\": tcp probes go to the agent's responder port (its \
                 registration's probePort)",
            ),
            (
                "probePort: 7080",
                "probePort: 0",
                "spec.target.remoteAgents[0].probePort",
                "port 0",
            ),
            (
                "probePort: 7080",
                "probePort: 70000",
                "spec.target.remoteAgents[0].probePort",
                "invalid value",
            ),
            (
                "probePort: 7080",
                "port: 7080",
                "spec.target.remoteAgents[0].port",
                "unknown field `port`",
            ),
            (
                &format!("interfaces:\n          - {node_4_iface}"),
                "interfaces: []",
                "spec.target.remoteAgents[1].interfaces",
                "must list at least one interface",
            ),
            (
                &format!("        interfaces:\n          - {node_4_iface}\n"),
                "",
                "spec.target.remoteAgents[1]",
                "missing field `interfaces`",
            ),
            (
                node_4_iface,
                "{name: '', network: eth0, ipv6: 'fd00::4'}",
                "spec.target.remoteAgents[1].interfaces[0].name",
                "must name an interface",
            ),
            (
                node_4_iface,
                "{name: eth0, network: '', ipv6: 'fd00::4'}",
                "spec.target.remoteAgents[1].interfaces[0].network",
                "must name the network it is on",
            ),
            (
                "name: net1",
                "name: eth0",
                "spec.target.remoteAgents[0].interfaces[1].name",
                "\"eth0\" is also interfaces[0]: one entry per interface",
            ),
            (
                node_4_iface,
                "{name: eth0, network: eth0}",
                "spec.target.remoteAgents[1].interfaces[0]",
                "needs an address: ipv4, ipv6 or both",
            ),
            (
                "ipv4: 10.2.0.3",
                "ipv4: 224.0.0.1",
                "spec.target.remoteAgents[0].interfaces[1].ipv4",
                "\"224.0.0.1\": not a unicast address",
            ),
            (
                "'fd00::4'",
                "'::'",
                "spec.target.remoteAgents[1].interfaces[0].ipv6",
                "\"::\": not a unicast address",
            ),
            (
                "ipv4: 10.2.0.3",
                "ipv4: 'fd00::9'",
                "spec.target.remoteAgents[0].interfaces[1].ipv4",
                "invalid IPv4 address syntax",
            ),
            (
                "ipv4: 10.2.0.3",
                "ip4: 10.2.0.3",
                "spec.target.remoteAgents[0].interfaces[1].ip4",
                "unknown field `ip4`",
            ),
        ] {
            assert_err(&with_remote("tcp", from, to), field, says);
        }
        for protocol in ["udp", "http"] {
            assert_err(
                &with_remote(protocol, node_4, "      - node: dst/node-4\n"),
                "spec.target.remoteAgents[1].probePort",
                &format!("{protocol} probes go to the agent's responder port"),
            );
        }
        // pairPaths: a remote agent does not probe; without the mesh, only remote agents are
        // probed.
        for (pair, field, says) in [
            (
                "{srcNode: dst/node-3, dstNode: node-1}",
                "spec.pairPaths[0].srcNode",
                "\"dst/node-3\" is a remote agent (spec.target.remoteAgents): it is probed, it \
                 probes nothing",
            ),
            (
                "{srcNode: node-1, dstNode: node-2}",
                "spec.pairPaths[0].dstNode",
                "\"node-2\" is not in spec.target.remoteAgents, and spec.target.endpoint is \
                 false: only remote agents are probed",
            ),
        ] {
            let yaml = format!("{}  pairPaths: [{pair}]\n", with_remote("tcp", "", ""));
            assert_err(&yaml, field, says);
        }
        // With the mesh, a local destination is fine.
        let mesh = with_remote("tcp", "endpoint: false", "endpoint: true");
        let yaml = format!("{mesh}  pairPaths: [{{srcNode: node-1, dstNode: node-2}}]\n");
        assert!(NetReach::from_yaml("f", &yaml).is_ok());
    }

    /// The CRD's CEL rules take remote agents as the Rust validation does: as a target
    /// without the mesh, and as what pairPaths select without it.
    #[cfg(feature = "crd")]
    #[test]
    fn cel_rules_accept_remote_agents_as_the_rust_validation_does() {
        use kube::{CustomResourceExt as _, core::cel::Validator};
        let crd = NetReachResource::crd();
        let schema = crd.spec.versions[0].schema.as_ref();
        let schema =
            serde_json::to_value(schema.and_then(|s| s.open_api_v3_schema.as_ref())).unwrap();
        let pairs = "  pairPaths: [{srcNode: node-1, dstNode: dst/node-3}]\n";
        let no_remote = GOOD.replace(
            "ipv6: true\n",
            "ipv6: true\n    endpoint: false\n    addresses: ['192.0.2.1']\n",
        );
        let empty = GOOD.replace(
            "ipv6: true\n",
            "ipv6: true\n    endpoint: false\n    remoteAgents: []\n",
        );
        for (yaml, failed) in [
            (format!("{}{pairs}", with_remote("tcp", "", "")), None),
            (with_remote("icmp", "", ""), None),
            (
                format!("{no_remote}{pairs}"),
                Some("target.endpoint is false (no mesh) and target.remoteAgents lists no agent"),
            ),
            (
                empty,
                Some("endpoint: false needs addresses, remoteAgents or"),
            ),
        ] {
            let object: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
            let cel = Validator::new().validate(&schema, &object, None);
            let rust = NetReach::from_yaml("f", &yaml);
            match failed {
                None => {
                    assert!(cel.is_ok(), "{yaml}: {cel:?}");
                    assert!(rust.is_ok(), "{yaml}: {rust:?}");
                }
                Some(says) => {
                    let errors = cel.unwrap_err();
                    assert!(
                        errors.len() == 1 && errors[0].to_string().contains(says),
                        "{yaml}: {errors:?}"
                    );
                    assert!(rust.is_err(), "{yaml}");
                }
            }
        }
    }

    #[test]
    fn wrong_type_names_file_and_field() {
        let e = err(&GOOD.replace("qps: 20", "qps: fast"));
        assert!(
            e.starts_with("tasks/mesh.yaml: spec.request.qps: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_is_rejected() {
        let e = err(&GOOD.replace("qps: 20", "qsp: 20"));
        assert!(e.starts_with("tasks/mesh.yaml: spec.request"), "{e}");
        assert!(e.contains("unknown field `qsp`"), "{e}");
    }

    #[test]
    fn missing_required_field_is_rejected() {
        let e = err(&GOOD.replace("schedule: '@every 10s'", "roundTimeoutMinute: 1"));
        assert!(e.starts_with("tasks/mesh.yaml: spec.schedule"), "{e}");
        assert!(e.contains("missing field `schedule`"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for (from, to, field) in [
            ("qps: 20", "qps: 5000", "spec.request.qps"),
            (
                "roundNumber: -1",
                "roundNumber: 0",
                "spec.schedule.roundNumber",
            ),
            (
                "successRate: 0.99",
                "successRate: 1.5",
                "spec.expect.successRate",
            ),
            (
                "successRate: 0.99",
                "meanAccessDelayInMs: 0",
                "spec.expect.meanAccessDelayInMs",
            ),
            ("'@every 10s'", "'every 10s'", "spec.schedule.schedule"),
            (
                "'@every 10s'",
                "'0 1'\n    roundTimeoutMinute: 2",
                "spec.schedule.roundTimeoutMinute",
            ),
            ("ipv4: true\n    ipv6: true", "ipv4: false", "spec.target"),
            (
                "ipv6: true",
                "ipv6: true\n    endpoint: false",
                "spec.target.endpoint",
            ),
            (
                "ipv6: true",
                "ipv6: true\n    interfaces: []",
                "spec.target.interfaces",
            ),
            (
                "ipv6: true",
                "ipv6: true\n    interfaces: [net1]\n    multusInterface: false",
                "spec.target.multusInterface",
            ),
            (
                "durationInSecond: 3",
                "durationInSecond: 30",
                "spec.request.durationInSecond",
            ),
            (
                "perRequestTimeoutInMS: 800",
                "perRequestTimeoutInMS: 11000",
                "spec.request.perRequestTimeoutInMS",
            ),
            ("name: mesh", "name: Mesh", "metadata.name"),
        ] {
            let e = err(&GOOD.replace(from, to));
            assert!(
                e.starts_with(&format!("tasks/mesh.yaml: {field}: ")),
                "{to}: {e}"
            );
        }
        let long = GOOD
            .replace("'@every 10s'", "'0 5'")
            .replace("qps: 20", "qps: 1000")
            .replace("durationInSecond: 3", "durationInSecond: 66");
        let e = err(&long);
        assert!(
            e.starts_with("tasks/mesh.yaml: spec.request.qps: qps x durationInSecond = 66000"),
            "{e}"
        );
    }

    #[test]
    fn a_schedule_leaves_the_agents_time_to_report() {
        // 5 s of probing and a 1 s timeout fill a 6 s round: nobody could report in time.
        let tight = GOOD
            .replace("'@every 10s'", "'@every 6s'")
            .replace("durationInSecond: 3", "durationInSecond: 5")
            .replace("perRequestTimeoutInMS: 800", "perRequestTimeoutInMS: 1000");
        assert_err(
            &tight.replace("mesh.yaml", "t.yaml"),
            "spec.request.durationInSecond",
            "durationInSecond plus perRequestTimeoutInMS (6s) leaves the agents less than 1s to \
             report within the 6s between @every rounds",
        );
        assert!(NetReach::from_yaml("t", &tight.replace("'@every 6s'", "'@every 7s'")).is_ok());
    }

    #[test]
    fn cron_schedules_bound_the_round() {
        let cron = |s: &str| {
            GOOD.replace("'@every 10s'", &format!("'{s}'"))
                .replace("durationInSecond: 3", "durationInSecond: 60")
        };
        let t = NetReach::from_yaml("f", &cron("*/2 * * * *")).unwrap();
        assert!(t.schedule().cron().is_some());
        assert_err(
            &cron("* * * * *").replace("mesh.yaml", "t.yaml"),
            "spec.request.durationInSecond",
            "durationInSecond plus perRequestTimeoutInMS (1m0.8s) is longer than the 1m0s \
             between the closest rounds of cron \"* * * * *\"",
        );
        assert_err(
            &cron("* * * * 8"),
            "spec.schedule.schedule",
            "invalid cron schedule \"* * * * 8\"",
        );
    }
}
