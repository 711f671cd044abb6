//! What this agent agrees to send, whatever its controller asks: destinations
//! (`--allow-targets`) and a rate (`--max-probe-rate`). The controller has limits of its own;
//! these hold even when it is mistaken or compromised. A probe refused here is never sent and
//! is reported as a send error naming the flag, never as loss.

use std::{net::IpAddr, time::Duration};

use meshdoctor_api::{RoundPlan, allow::AllowList};

/// The agent's own limits; the default has none.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub allow: AllowList,
    /// Most probe packets (or application requests) per second a round may send.
    pub max_rate: Option<u32>,
}

/// How a round's probes are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Between two sends.
    pub period: Duration,
    /// Sends that fit the round at that pace; the rest are not sent.
    pub sends: u64,
}

impl Guard {
    /// Why this agent does not probe `dst`, if it does not.
    pub fn refusal(&self, dst: IpAddr) -> Option<String> {
        (!self.allow.admits_addr(dst))
            .then(|| format!("refused: {dst} is outside this agent's --allow-targets"))
    }

    /// The pace of `plan`'s `targets` x `per_target` probes (`targets`: those this agent
    /// allows, so that refusing some never speeds up the others): evenly spread over the
    /// round, as planned, unless that is above the rate cap; then at the cap, as many as fit
    /// the round.
    pub fn pace(&self, plan: &RoundPlan, targets: usize, per_target: usize) -> Pace {
        let planned = (targets as u64).saturating_mul(per_target as u64);
        let rate = u64::from(plan.qps.max(1)).saturating_mul(targets.max(1) as u64);
        match self.max_rate.map(u64::from) {
            Some(cap) if rate > cap => Pace {
                period: Duration::from_secs(1) / u32::try_from(cap.max(1)).unwrap_or(u32::MAX),
                sends: (cap.saturating_mul(plan.duration_ms) / 1000)
                    .max(1)
                    .min(planned),
            },
            _ => Pace {
                period: Duration::from_secs_f64(1.0 / rate as f64),
                sends: planned,
            },
        }
    }

    /// The send error of the probes a rate cap left out.
    pub fn over_rate(&self, plan: &RoundPlan, targets: usize) -> String {
        format!(
            "not sent: the round asks {} probes/s, above this agent's --max-probe-rate {}",
            u64::from(plan.qps).saturating_mul(targets as u64),
            self.max_rate.unwrap_or_default()
        )
    }

    /// Why this agent does not run application `plan` at all, if it does not: its target or
    /// its rate.
    pub fn app_refusal(&self, plan: &RoundPlan) -> Option<String> {
        let refused = self.allow.refused(plan, |_| true);
        if !refused.is_empty() {
            return Some(format!(
                "refused: {} is outside this agent's --allow-targets",
                refused.join(", ")
            ));
        }
        self.max_rate.filter(|&cap| plan.qps > cap).map(|cap| {
            format!(
                "refused: plan qps {} is above this agent's --max-probe-rate {cap}",
                plan.qps
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::PlannedTarget;

    use super::*;

    #[test]
    fn the_rate_cap_slows_the_pace_and_drops_what_does_not_fit() {
        // 10 targets at 20 qps for 1 s: 200 probes/s.
        let plan = RoundPlan::test(20, vec![PlannedTarget::test(1); 10]);
        let free = Guard::default().pace(&plan, 10, 20);
        // Nothing allowed: nothing to send, no panic.
        assert_eq!(Guard::default().pace(&plan, 0, 20).sends, 0);
        assert_eq!(
            free,
            Pace {
                period: Duration::from_millis(5),
                sends: 200
            }
        );
        let capped = Guard {
            max_rate: Some(50),
            ..Guard::default()
        };
        assert_eq!(
            capped.pace(&plan, 10, 20),
            Pace {
                period: Duration::from_millis(20),
                sends: 50
            }
        );
        assert!(capped.over_rate(&plan, 10).contains("200 probes/s"));
        let roomy = Guard {
            max_rate: Some(500),
            ..Guard::default()
        };
        assert_eq!(roomy.pace(&plan, 10, 20), free);
    }

    #[test]
    fn destinations_outside_the_list_are_refused() {
        let g = Guard {
            allow: AllowList(vec!["192.0.2.0/24".parse().unwrap()]),
            max_rate: Some(100),
        };
        assert_eq!(g.refusal("192.0.2.9".parse().unwrap()), None);
        let e = g.refusal("198.51.100.1".parse().unwrap()).unwrap();
        assert!(
            e.contains("198.51.100.1") && e.contains("--allow-targets"),
            "{e}"
        );
        let mut plan = RoundPlan::test(200, vec![]);
        assert!(
            g.app_refusal(&plan)
                .unwrap()
                .contains("--max-probe-rate 100")
        );
        plan.qps = 100;
        assert_eq!(g.app_refusal(&plan), None);
    }
}
