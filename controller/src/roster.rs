//! The agent roster: the agents registered with this controller, by node, and when each last
//! asked for plans. Agents re-register on restart with their current interfaces; nothing is
//! removed (the Kubernetes backend narrows the roster to the agent pods it sees).

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use meshdoctor_api::{AgentRegistration, views::AgentView};
use tokio::sync::watch;
use tracing::info;

use crate::now_ms;

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

    pub fn registrations(&self) -> Vec<AgentRegistration> {
        self.lock()
            .values()
            .map(|a| a.registration.clone())
            .collect()
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
