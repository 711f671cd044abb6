//! The controller's limits on what a task may make agents send: where (`--allow-targets`)
//! and how fast (`--max-qps`). Checked on a round's plans before they are published, whatever
//! the task kind: a round beyond them fails at once, naming the destination or the task field
//! and the flag. Agents check their own limits again (the agent's `guard`), so a compromised
//! controller is bounded too.

use meshdoctor_api::{RoundPlan, allow::AllowList};

use crate::ByNode;

/// The controller's limits; the default has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Destinations tasks may name (listed addresses, Service and remote-agent targets,
    /// application targets); empty: any. Agents' own addresses are always allowed: they are
    /// the mesh.
    pub allow: AllowList,
    /// Most probes or requests per second per target (`spec.request.qps`).
    pub max_qps: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "spec.request.qps {qps} is above the controller's --max-qps {max}: ask for at most {max}"
    )]
    Qps { qps: u32, max: u32 },
    #[error("the task names {} outside the controller's --allow-targets ({allowed})", refused.join(", "))]
    Target {
        refused: Vec<String>,
        allowed: String,
    },
}

/// Whether `plans` stay within `limits`.
pub fn check(plans: &ByNode<RoundPlan>, limits: &Limits) -> Result<(), LimitError> {
    if let Some(max) = limits.max_qps
        && let Some(qps) = plans.values().map(|p| p.qps).max().filter(|&q| q > max)
    {
        return Err(LimitError::Qps { qps, max });
    }
    let mut refused: Vec<String> = plans
        .values()
        .flat_map(|p| limits.allow.refused(p, |t| t.external))
        .collect();
    refused.sort();
    refused.dedup();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(LimitError::Target {
            refused,
            allowed: limits.allow.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{
        AppPlan, AppTarget, HttpMethod, HttpPlan, PlannedTarget, RoundPlan, allow::AllowList,
    };

    use super::*;

    fn plans(targets: Vec<PlannedTarget>, app: Option<&str>) -> ByNode<RoundPlan> {
        let mut plan = RoundPlan::test(20, targets);
        plan.app = app.map(|url| AppPlan {
            target: AppTarget::Http(HttpPlan {
                url: url.into(),
                method: HttpMethod::Get,
                headers: vec![],
                body: None,
                http2: false,
                tls: None,
                expect_status: None,
            }),
            max_in_flight: 2,
        });
        [("node-1".to_string(), plan)].into()
    }

    fn target(dst: &str, external: bool) -> PlannedTarget {
        PlannedTarget {
            external,
            dst_addr: dst.parse().unwrap(),
            ..PlannedTarget::test(1)
        }
    }

    #[test]
    fn rounds_beyond_the_limits_fail_naming_what_and_which_flag() {
        let allow = AllowList(vec![
            "192.0.2.0/24".parse().unwrap(),
            "*.lab.test".parse().unwrap(),
        ]);
        let limits = Limits {
            allow,
            max_qps: Some(10),
        };
        let e = check(&plans(vec![], None), &limits)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.request.qps 20") && e.contains("--max-qps 10"),
            "{e}"
        );

        let limits = Limits {
            max_qps: Some(20),
            ..limits
        };
        // Agents (not external) anywhere; listed addresses and the app target inside.
        let ok = plans(
            vec![target("10.9.9.9", false), target("192.0.2.10", true)],
            Some("https://web.lab.test/health"),
        );
        assert_eq!(check(&ok, &limits), Ok(()));
        let out = plans(
            vec![target("198.51.100.1", true), target("192.0.2.10", true)],
            Some("http://203.0.113.5:8080/"),
        );
        let e = check(&out, &limits).unwrap_err().to_string();
        assert!(
            e.contains("198.51.100.1, http://203.0.113.5:8080/")
                && e.contains("--allow-targets (192.0.2.0/24, *.lab.test)"),
            "{e}"
        );
        assert_eq!(check(&out, &Limits::default()), Ok(()));
    }
}
