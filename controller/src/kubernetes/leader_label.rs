//! The leader's mark on its own pod: the label [`LEADER_LABEL`] (`"true"`) while this replica leads,
//! removed when it stops. The controller Service selects it, so the agents reach the leader
//! while every replica is Ready: the standby is not reported broken and `kubectl rollout
//! status` completes, where gating readiness on leadership left a Deployment of two at 1/2.
//!
//! [`patch`] is pure; [`run`] applies it to the pod after every change of leadership,
//! retrying while the change stands (a leader whose mark did not land yet is unreachable to
//! agents, never a second leader: the Lease alone decides who runs rounds).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

pub use meshdoctor_api::routes::LEADER_LABEL;

/// How long a failed patch waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The JSON merge patch that marks (`leading`) or unmarks a pod: `null` removes the label.
pub fn patch(leading: bool) -> Value {
    let value = if leading { json!("true") } else { Value::Null };
    json!({ "metadata": { "labels": { LEADER_LABEL: value } } })
}

/// Marks or unmarks pod `pod` of `namespace` once.
pub async fn mark(client: &Client, namespace: &str, pod: &str, leading: bool) -> kube::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(patch(leading)))
        .await
        .map(drop)
}

/// Keeps the pod's mark equal to `leading`, for as long as the channel lives.
pub async fn run(
    client: Client,
    namespace: String,
    pod: String,
    mut leading: watch::Receiver<bool>,
) {
    let mut marked = None;
    loop {
        let want = *leading.borrow_and_update();
        if marked != Some(want) {
            match mark(&client, &namespace, &pod, want).await {
                Ok(()) => {
                    info!(pod, leader = want, "leader label set");
                    marked = Some(want);
                }
                Err(e) => warn!(pod, leader = want, "cannot label the pod: {e}; retrying"),
            }
        }
        if marked == Some(want) {
            if leading.changed().await.is_err() {
                return;
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                r = leading.changed() => if r.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_or_removes_only_the_label() {
        assert_eq!(
            patch(true),
            json!({"metadata": {"labels": {"meshdoctor.io/leader": "true"}}})
        );
        assert_eq!(
            patch(false),
            json!({"metadata": {"labels": {"meshdoctor.io/leader": null}}})
        );
    }
}
