//! The tasks the lab runs.

/// The full-mesh ICMP NetReach task the lab runs by default: one round, starting at once,
/// 10 probes/s for 5 s on every pair, interface and family, expecting no loss.
pub fn default_task_yaml(name: &str) -> String {
    task_yaml(name, DEFAULT_QPS, DEFAULT_SECS)
}

/// The default task's pace: 10 probes per second for 5 s on every pair-path.
pub const DEFAULT_QPS: u32 = 10;
pub const DEFAULT_SECS: u32 = 5;

/// A one-round full-mesh ICMP NetReach task over both families: `qps` x `secs` probes per
/// pair-path, 1 s per-probe timeout, expecting no loss.
pub fn task_yaml(name: &str, qps: u32, secs: u32) -> String {
    MeshTask::new(name, qps, secs).yaml()
}

/// A full-mesh NetReach task over both families, expecting no loss; [`MeshTask::new`] gives
/// one ICMP round starting at once, with a 1 s per-probe timeout.
#[derive(Debug, Clone)]
pub struct MeshTask<'a> {
    pub name: &'a str,
    /// `spec.schedule.schedule`, e.g. `"0 1"` or `"@every 4s"`.
    pub schedule: &'a str,
    pub rounds: i64,
    /// `icmp`, `udp`, `tcp` or `http`.
    pub protocol: &'a str,
    pub qps: u32,
    pub secs: u32,
    /// `perRequestTimeoutInMS`.
    pub timeout_ms: u32,
    /// `spec.target.mesh.mode`: `full` by default, so that a lab round probes every pair
    /// whatever its rate (the controller's probe budget would sample a fast task's peers).
    pub mesh: &'a str,
}

impl<'a> MeshTask<'a> {
    pub fn new(name: &'a str, qps: u32, secs: u32) -> Self {
        Self {
            name,
            schedule: "0 1",
            rounds: 1,
            protocol: "icmp",
            qps,
            secs,
            timeout_ms: 1000,
            mesh: "full",
        }
    }

    pub fn yaml(&self) -> String {
        let Self {
            name,
            schedule,
            rounds,
            protocol,
            qps,
            secs,
            timeout_ms,
            mesh,
        } = self;
        format!(
            "apiVersion: meshdoctor.io/v1beta1
kind: NetReach
metadata:
  name: {name}
spec:
  schedule:
    schedule: \"{schedule}\"
    roundNumber: {rounds}
  request:
    protocol: {protocol}
    qps: {qps}
    durationInSecond: {secs}
    perRequestTimeoutInMS: {timeout_ms}
  expect:
    successRate: 1
  target:
    ipv4: true
    ipv6: true
    mesh: {{mode: {mesh}}}
"
        )
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{NetReach, TaskSpec as _};

    use super::*;

    #[test]
    fn default_task_parses_as_specified() {
        let task = NetReach::from_yaml("mesh.yaml", &default_task_yaml("mesh")).unwrap();
        assert_eq!(task.name(), "mesh");
        let spec = &task.spec;
        assert_eq!(spec.schedule.schedule, "0 1");
        assert_eq!(spec.schedule.round_number, 1);
        assert_eq!(spec.request.qps, 10);
        assert_eq!(spec.request.duration_in_second, 5);
        assert_eq!(spec.request.per_request_timeout_in_ms, 1000);
        assert_eq!(spec.expect.success_rate, 1.0);
        assert!(spec.target.ipv4 && spec.target.ipv6);
        assert!(spec.target.interfaces.is_none());
        assert_eq!(spec.target.mesh.mode, meshdoctor_api::MeshMode::Full);
    }
}
