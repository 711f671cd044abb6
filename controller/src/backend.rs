//! What a backend adds to the round driver ([`crate::driver`]), which is the same for both:
//! who takes part in a round, which cluster targets a NetReach task probes besides the mesh,
//! and where a task's status goes.
//!
//! The standalone backend adds little: every registered agent takes part, there are no
//! Service targets, status is served by the HTTP API and, given a directory, kept on disk
//! ([`StatusFiles`]) for the next controller. The Kubernetes backend
//! ([`crate::kubernetes`]) answers from what its watchers saw and writes status to the task
//! objects.

use meshdoctor_api::{AgentRegistration, NetReach, TaskStatus, task::ListedAddress};

use crate::{status_files::StatusFiles, task_table::TaskSource};

pub trait Backend: Send + Sync + 'static {
    /// The agents that take part in a round, from the registered ones.
    fn roster(&self, registered: Vec<AgentRegistration>) -> Vec<AgentRegistration> {
        registered
    }

    /// A NetReach task's cluster targets (Service, node ports, load balancer, ingress), and
    /// why some of those it asks for cannot be probed (each fails the round with its reason).
    fn service_targets(&self, _task: &NetReach) -> (Vec<ListedAddress>, Vec<String>) {
        (vec![], vec![])
    }

    /// The status of the task from `source` changed. Called under the driver's task lock:
    /// must not block.
    fn status_changed(&self, _source: &TaskSource, _status: &TaskStatus) {}
}

/// Tasks from files, agents over HTTP, status in memory and, with [`Standalone::saving`], on
/// disk.
#[derive(Debug, Default)]
pub struct Standalone {
    statuses: Option<StatusFiles>,
}

impl Standalone {
    /// Saves every status change to `files`.
    pub fn saving(files: StatusFiles) -> Self {
        Self {
            statuses: Some(files),
        }
    }
}

impl Backend for Standalone {
    fn status_changed(&self, source: &TaskSource, status: &TaskStatus) {
        if let Some(files) = &self.statuses {
            files.save(source, status);
        }
    }
}
