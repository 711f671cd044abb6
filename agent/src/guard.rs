//! What this agent agrees to send, whatever its controller asks: destinations
//! (`--allow-targets`) and a rate (`--max-probe-rate`). The controller has limits of its own;
//! these hold even when it is mistaken or compromised. A probe refused here is never sent and
//! is reported as a send error naming the flag, never as loss.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use meshdoctor_api::{RoundPlan, allow::AllowList};

/// The agent's own limits; the default has none.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub allow: AllowList,
    /// Most probe packets (or application requests) per second the agent sends, all the
    /// rounds it runs at once together.
    pub max_rate: Option<u32>,
    /// The part of `max_rate` the rounds running now have taken.
    in_use: Arc<Mutex<u64>>,
}

/// The rate a round may send at: what of `--max-probe-rate` the rounds already running left
/// (`None`: no cap). Given back when dropped, at the round's end.
#[derive(Debug)]
pub struct RateShare {
    rate: Option<u64>,
    in_use: Arc<Mutex<u64>>,
}

impl Drop for RateShare {
    fn drop(&mut self) {
        if let Some(rate) = self.rate
            && let Ok(mut used) = self.in_use.lock()
        {
            *used = used.saturating_sub(rate);
        }
    }
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
    /// A guard allowing `allow` and at most `max_rate` packets per second in all.
    pub fn new(allow: AllowList, max_rate: Option<u32>) -> Self {
        Self {
            allow,
            max_rate,
            in_use: Arc::default(),
        }
    }

    /// Takes for a round that `wants` packets per second its share of the rate cap: all it
    /// wants when that much is left, else what is left (maybe nothing).
    pub fn share(&self, wants: u64) -> RateShare {
        let Some(cap) = self.max_rate else {
            return RateShare {
                rate: None,
                in_use: self.in_use.clone(),
            };
        };
        let mut used = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let granted = wants.min(u64::from(cap).saturating_sub(*used));
        *used += granted;
        RateShare {
            rate: Some(granted),
            in_use: self.in_use.clone(),
        }
    }

    /// What `plan` asks of `targets` targets per second.
    pub fn wants(plan: &RoundPlan, targets: usize) -> u64 {
        u64::from(plan.qps).saturating_mul(targets as u64)
    }

    /// Why this agent does not probe `dst`, if it does not.
    pub fn refusal(&self, dst: IpAddr) -> Option<String> {
        (!self.allow.admits_addr(dst))
            .then(|| format!("refused: {dst} is outside this agent's --allow-targets"))
    }

    /// The pace of `plan`'s `targets` x `per_target` probes (`targets`: those this agent
    /// allows, so that refusing some never speeds up the others): evenly spread over the
    /// round, as planned, unless that is above the rate cap; then at the cap, as many as fit
    /// the round.
    pub fn pace(plan: &RoundPlan, targets: usize, per_target: usize, share: &RateShare) -> Pace {
        let planned = (targets as u64).saturating_mul(per_target as u64);
        let rate = u64::from(plan.qps.max(1)).saturating_mul(targets.max(1) as u64);
        match share.rate {
            Some(0) => Pace {
                period: Duration::from_secs(1),
                sends: 0,
            },
            Some(cap) if rate > cap => Pace {
                period: Duration::from_secs(1) / u32::try_from(cap).unwrap_or(u32::MAX),
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

    /// Why the probes a rate cap left out were not sent.
    pub fn over_rate(&self, plan: &RoundPlan, targets: usize, share: &RateShare) -> String {
        format!(
            "not sent: the round asks {} probes/s; this agent's --max-probe-rate {} left it {} \
             beside the rounds it runs at the same time",
            Self::wants(plan, targets),
            self.max_rate.unwrap_or_default(),
            share.rate.unwrap_or_default()
        )
    }

    /// Why this agent does not run application `plan` at all, if it does not: its target or
    /// its rate.
    pub fn app_refusal(&self, plan: &RoundPlan, share: &RateShare) -> Option<String> {
        let refused = self.allow.refused(plan, |_| true);
        if !refused.is_empty() {
            return Some(format!(
                "refused: {} is outside this agent's --allow-targets",
                refused.join(", ")
            ));
        }
        let cap = self.max_rate?;
        let left = share.rate?;
        (u64::from(plan.qps) > left).then(|| {
            format!(
                "refused: plan qps {} is above what this agent's --max-probe-rate {cap} left it \
                 ({left}) beside the rounds it runs at the same time",
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
        let uncapped = Guard::default();
        let free = Guard::pace(&plan, 10, 20, &uncapped.share(200));
        // Nothing allowed: nothing to send, no panic.
        assert_eq!(Guard::pace(&plan, 0, 20, &uncapped.share(0)).sends, 0);
        assert_eq!(
            free,
            Pace {
                period: Duration::from_millis(5),
                sends: 200
            }
        );
        let capped = Guard::new(AllowList::default(), Some(50));
        let share = capped.share(200);
        assert_eq!(
            Guard::pace(&plan, 10, 20, &share),
            Pace {
                period: Duration::from_millis(20),
                sends: 50
            }
        );
        assert!(capped.over_rate(&plan, 10, &share).contains("200 probes/s"));
        let roomy = Guard::new(AllowList::default(), Some(500));
        assert_eq!(Guard::pace(&plan, 10, 20, &roomy.share(200)), free);
    }

    /// Rounds that run at once share the cap: the second gets what the first left, a third
    /// nothing, and a share comes back when its round ends.
    #[test]
    fn rounds_at_once_share_the_rate_cap() {
        let plan = RoundPlan::test(20, vec![PlannedTarget::test(1); 10]);
        let g = Guard::new(AllowList::default(), Some(300));
        let first = g.share(200);
        let second = g.share(200);
        assert_eq!(Guard::pace(&plan, 10, 20, &second).sends, 100);
        let third = g.share(200);
        assert_eq!(Guard::pace(&plan, 10, 20, &third).sends, 0);
        assert!(g.over_rate(&plan, 10, &third).contains("left it 0"));
        drop((first, third));
        assert_eq!(Guard::pace(&plan, 10, 20, &g.share(200)).sends, 200);
        drop(second);
        assert_eq!(Guard::pace(&plan, 10, 20, &g.share(300)).sends, 200);
    }

    #[test]
    fn destinations_outside_the_list_are_refused() {
        let g = Guard::new(AllowList(vec!["192.0.2.0/24".parse().unwrap()]), Some(100));
        assert_eq!(g.refusal("192.0.2.9".parse().unwrap()), None);
        let e = g.refusal("198.51.100.1".parse().unwrap()).unwrap();
        assert!(
            e.contains("198.51.100.1") && e.contains("--allow-targets"),
            "{e}"
        );
        let mut plan = RoundPlan::test(200, vec![]);
        let share = g.share(200);
        assert!(
            g.app_refusal(&plan, &share)
                .unwrap()
                .contains("--max-probe-rate 100")
        );
        plan.qps = 100;
        assert_eq!(g.app_refusal(&plan, &share), None);
        // With another round holding half the cap, 100 qps no longer fits.
        drop(share);
        let other = g.share(50);
        assert!(g.app_refusal(&plan, &g.share(100)).is_some());
        drop(other);
    }
}
