//! Application rounds (AppHttpHealthy, NetDns), kdoctor style: every agent of the roster loads
//! the task's one target at the task's qps for its duration, and the controller aggregates.
//! Pure, in three steps like NetReach's plan, join and judge:
//!
//! - [`target`]: the task's spec as the [`meshdoctor_api::AppTarget`] every plan carries, and
//!   every agent's (same) plan. The TLS files a target names (AppHttpHealthy's `tlsCaFile`,
//!   `tlsCertFile`, `tlsKeyFile`; a `tcp-tls` NetDns's `targetUser.tlsCaFile`) are listed here
//!   and read by the driver, on the controller's host; their PEM contents go into the plan, so
//!   agents need no access to the controller's files. A file that cannot be read, or a spec
//!   field only the Kubernetes backend can act on (`bodyConfigmapName`, `tlsSecretName`,
//!   `targetDns`), fails the round with a reason naming the field instead of running a
//!   different request than the task says.
//! - [`aggregate`]: the agents' load statistics summed into the round's report.
//! - [`judge`]: that aggregate against `expect`: `successRate` over the requests of all agents,
//!   `meanAccessDelayInMs` over the successful requests only, `statusCode` through the agents'
//!   success counting, requests not sent (kdoctor's `existsNotSendRequests`) as a reason of
//!   their own, and agents that did not report or could not run the load. Every reason names
//!   its cause: the agents, the error kinds, the unexpected codes.

pub mod aggregate;
pub mod judge;
pub mod target;

use meshdoctor_api::{AppHttpHealthy, NetDns, TaskKind};

/// Which replies succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessCodes {
    /// `expect.statusCode`.
    HttpStatus(u16),
    /// No `statusCode`: any 2xx or 3xx.
    HttpOk,
    /// DNS: NOERROR only (kdoctor counts NXDOMAIN as success: a defect).
    DnsNoError,
}

impl SuccessCodes {
    pub fn is_success(self, code: &str) -> bool {
        match self {
            Self::HttpStatus(want) => code == want.to_string(),
            Self::HttpOk => code.len() == 3 && (code.starts_with('2') || code.starts_with('3')),
            Self::DnsNoError => code == "NOERROR",
        }
    }
}

impl std::fmt::Display for SuccessCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HttpStatus(code) => write!(f, "{code}"),
            Self::HttpOk => f.write_str("2xx or 3xx"),
            Self::DnsNoError => f.write_str("NOERROR"),
        }
    }
}

/// An application task's `expect`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AppExpect {
    pub kind: TaskKind,
    pub success_rate: f64,
    pub mean_access_delay_in_ms: u64,
    pub codes: SuccessCodes,
}

impl AppExpect {
    pub fn http(t: &AppHttpHealthy) -> Self {
        let e = &t.spec.expect;
        Self {
            kind: TaskKind::AppHttpHealthy,
            success_rate: e.success_rate,
            mean_access_delay_in_ms: e.mean_access_delay_in_ms,
            codes: e
                .status_code
                .map_or(SuccessCodes::HttpOk, SuccessCodes::HttpStatus),
        }
    }

    pub fn dns(t: &NetDns) -> Self {
        let e = &t.spec.expect;
        Self {
            kind: TaskKind::NetDns,
            success_rate: e.success_rate,
            mean_access_delay_in_ms: e.mean_access_delay_in_ms,
            codes: SuccessCodes::DnsNoError,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use meshdoctor_api::Task;

    pub(crate) fn http_task(extra_target: &str, expect: &str) -> Task {
        Task::from_yaml(
            "web.yaml",
            &format!(
                "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {{name: web}}\n\
                 spec:\n  request: {{qps: 10, durationInSecond: 2, perRequestTimeoutInMS: 500}}\n  \
                 expect: {{successRate: 1{expect}}}\n  target: {{method: GET{extra_target}}}\n"
            ),
        )
        .unwrap()
    }

    pub(crate) fn dns_task(target: &str) -> Task {
        dns_task_over("tcp", target)
    }

    pub(crate) fn dns_task_over(protocol: &str, target: &str) -> Task {
        Task::from_yaml(
            "dns.yaml",
            &format!(
                "apiVersion: meshdoctor.io/v1beta1\nkind: NetDns\nmetadata: {{name: dns}}\n\
                 spec:\n  request: {{qps: 5, durationInSecond: 2, domain: web.lab.test, protocol: {protocol}}}\n  \
                 target: {target}\n"
            ),
        )
        .unwrap()
    }
}
