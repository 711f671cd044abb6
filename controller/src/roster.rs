//! The agent roster: the agents registered with this controller, by node, and when each last
//! asked for plans. Agents re-register on restart with their current interfaces. An agent that
//! has not asked for plans for [`EXPIRY`] is dropped when the next round is planned, so a node
//! that is gone is no longer probed (its agent registers again if it comes back); the
//! Kubernetes backend further narrows the roster to the agent pods it sees.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use meshdoctor_api::{AgentRegistration, views::AgentView};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::now_ms;

/// How long an agent may go without asking for plans: three of its longest long-polls (the
/// API's 30 s), so a slow network or a busy node does not drop it, a dead one goes within
/// two rounds of a minute.
pub const EXPIRY: Duration = Duration::from_secs(90);

pub struct Roster {
    agents: Mutex<BTreeMap<String, AgentView>>,
    /// The roster's size, watched by schedules waiting for enough agents.
    size: watch::Sender<usize>,
}

impl Default for Roster {
    fn default() -> Self {
        Self {
            agents: Mutex::default(),
            size: watch::Sender::new(0),
        }
    }
}

impl Roster {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, AgentView>> {
        crate::lock(&self.agents)
    }

    /// Adds or replaces an agent; `sized` learns the roster's new size, in the order of the
    /// registrations.
    pub fn register(&self, registration: AgentRegistration, sized: impl FnOnce(usize)) {
        let mut agents = self.lock();
        info!(node = %registration.node, interfaces = registration.interfaces.len(), "agent registered");
        agents.insert(
            registration.node.clone(),
            AgentView {
                registration,
                last_seen_ms: now_ms(),
            },
        );
        self.size.send_replace(agents.len());
        sized(agents.len());
    }

    pub fn agents(&self) -> Vec<AgentView> {
        self.lock().values().cloned().collect()
    }

    /// The agents to plan a round for: those seen within [`EXPIRY`]; the others are dropped,
    /// and `sized` learns the roster's size.
    pub fn registrations(&self, sized: impl FnOnce(usize)) -> Vec<AgentRegistration> {
        let live = self.live(now_ms());
        sized(live.len());
        live
    }

    fn live(&self, now_ms: u64) -> Vec<AgentRegistration> {
        let mut agents = self.lock();
        let expiry = EXPIRY.as_millis() as u64;
        agents.retain(|node, a| {
            let alive = now_ms.saturating_sub(a.last_seen_ms) <= expiry;
            if !alive {
                warn!(%node, last_seen_ms = a.last_seen_ms, "agent expired: no plan poll for {EXPIRY:?}; no longer planned");
            }
            alive
        });
        self.size.send_replace(agents.len());
        agents.values().map(|a| a.registration.clone()).collect()
    }

    /// Notes that `node` asked for plans; `false` when it is not registered (it must register
    /// again, e.g. after a controller restart).
    pub fn seen(&self, node: &str) -> bool {
        match self.lock().get_mut(node) {
            Some(agent) => {
                agent.last_seen_ms = now_ms();
                true
            }
            None => false,
        }
    }

    /// Returns once at least `n` agents registered.
    pub async fn wait_for(&self, n: usize) {
        let mut size = self.size.subscribe();
        // The sender lives as long as the roster, which outlives its waiters.
        let _ = size.wait_for(|&len| len >= n).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(node: &str) -> AgentRegistration {
        AgentRegistration {
            node: node.into(),
            interfaces: vec![],
            timestamping: meshdoctor_api::Timestamping::Ebpf,
            probe_port: None,
            labels: Default::default(),
        }
    }

    #[test]
    fn an_agent_that_stops_polling_expires_and_can_come_back() {
        let roster = Roster::default();
        roster.register(registration("node-1"), |_| {});
        roster.register(registration("node-2"), |_| {});
        let now = now_ms();
        let later = now + EXPIRY.as_millis() as u64;
        // node-1 polled just now; node-2 last did when it registered, EXPIRY ago.
        roster.lock().get_mut("node-1").unwrap().last_seen_ms = later;
        roster.lock().get_mut("node-2").unwrap().last_seen_ms = now;
        let nodes = |r: Vec<AgentRegistration>| r.into_iter().map(|r| r.node).collect::<Vec<_>>();
        assert_eq!(nodes(roster.live(later)), ["node-1", "node-2"]);
        assert_eq!(nodes(roster.live(later + 1)), ["node-1"]);
        assert_eq!(roster.agents().len(), 1);
        assert!(
            !roster.seen("node-2"),
            "an expired agent must register again"
        );
        roster.register(registration("node-2"), |_| {});
        assert_eq!(roster.agents().len(), 2);
    }
}
