//! NetReach's `spec.target.mesh` (meshdoctor's extension): which agent pairs a round probes.
//!
//! A full mesh asks every agent for `4 x qps x (N - 1)` probe packets per second per interface
//! pair (requests and replies, of its own probes and of those it answers): fine for tens of nodes, not for thousands (Pingmesh, Goldpinger and
//! cilium-health all stop probing every pair). The shapes:
//! - `full`: every ordered pair of agents, kdoctor's mesh;
//! - `sampled`: each agent probes `peers` others per network and family, picked on a hash ring
//!   of the node names and rotated each round, so that every pair is probed within
//!   `ceil((N - 1) / peers)` rounds and every agent is the destination of exactly `peers`;
//! - `topology`: the full mesh inside each topology domain (the nodes sharing a value of the
//!   `topologyKey` label, e.g. a zone), and `peers` per network and family across domains;
//! - `auto` (the default): the full mesh while it keeps every agent within the controller's
//!   probe budget (`--probe-budget`, probe packets per second an agent sends and receives),
//!   else the topology shape when the nodes are in several domains and it fits, else the
//!   sampled one, with the most peers that fit.

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::kinds::MeshMode;

/// The label whose values are the topology domains when a task names none: the zone.
pub const DEFAULT_TOPOLOGY_KEY: &str = "topology.kubernetes.io/zone";

/// `spec.target.mesh`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "!has(self.mode) || self.mode != 'full' || !has(self.peers)",
            "message": "peers applies to the sampled, topology and auto modes; a full mesh \
                        probes every peer",
            "fieldPath": ".peers",
        },
    ]))
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    #[serde(default)]
    pub mode: MeshMode,
    /// `sampled` and `topology`: peers per agent, network and family (across domains for
    /// `topology`); chosen to fit the probe budget when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1)))]
    pub peers: Option<u32>,
    /// `topology` and `auto`: the node label whose values are the domains (Kubernetes: the
    /// Node's label; standalone: the agent's `--label`/`--zone`);
    /// `topology.kubernetes.io/zone` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_key: Option<String>,
}

impl MeshSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The label naming the topology domains.
    pub fn topology_key(&self) -> &str {
        self.topology_key.as_deref().unwrap_or(DEFAULT_TOPOLOGY_KEY)
    }

    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.peers == Some(0) {
            return Err(Invalid::new(
                "spec.target.mesh.peers",
                "must be at least 1 when given",
            ));
        }
        if self.mode == MeshMode::Full && self.peers.is_some() {
            return Err(Invalid::new(
                "spec.target.mesh.peers",
                "applies to the sampled, topology and auto modes; a full mesh probes every peer",
            ));
        }
        if self.topology_key.as_deref() == Some("") {
            return Err(Invalid::new(
                "spec.target.mesh.topologyKey",
                "must name a node label when given",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_field() {
        let spec: MeshSpec = serde_yaml::from_str("{}").unwrap();
        assert!(spec.is_default());
        assert_eq!(spec.mode, MeshMode::Auto);
        assert_eq!(spec.topology_key(), DEFAULT_TOPOLOGY_KEY);
        let parse = |y: &str| serde_yaml::from_str::<MeshSpec>(y).unwrap().validate();
        assert!(parse("{mode: sampled, peers: 4}").is_ok());
        for (yaml, field) in [
            ("{peers: 0}", "spec.target.mesh.peers"),
            ("{mode: full, peers: 3}", "spec.target.mesh.peers"),
            (
                "{mode: topology, topologyKey: ''}",
                "spec.target.mesh.topologyKey",
            ),
        ] {
            assert_eq!(parse(yaml).unwrap_err().field, field, "{yaml}");
        }
        assert!(serde_yaml::from_str::<MeshSpec>("{mode: ring}").is_err());
    }
}
