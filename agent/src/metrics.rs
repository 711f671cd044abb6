//! The agent's Prometheus metrics. Series grow with interfaces x families, never with peers.

use meshdoctor_api::{Family, Timestamping};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family as MetricFamily, gauge::Gauge},
    registry::Registry,
};

use crate::map_sizes::MapSizes;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub interface: String,
    pub family: String,
}

/// Labels of the eBPF observers' per-interface packet counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub interface: String,
    /// `ingress` or `egress`.
    pub hook: String,
    /// `request` or `reply`.
    pub kind: String,
    pub family: String,
}

/// Labels of the kernel drops of probe packets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `enum skb_drop_reason` name, e.g. `NETFILTER_DROP`; `unknown` on kernels without reasons.
    pub reason: String,
    /// `request` or `reply`.
    pub kind: String,
}

/// Labels of application requests (AppHttpHealthy, NetDns rounds).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `success`, `failure` or `not_sent`.
    pub result: String,
}

/// Labels of the timestamp source gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    /// `ebpf` or `socket`, as the reports name it.
    source: String,
}

pub struct Metrics {
    registry: Registry,
    timestamping: MetricFamily<SourceLabels, Gauge>,
    drop_tracing: Gauge,
    /// Round reports the agent gave up delivering (the controller's deadline passed).
    pub report_failures: Counter,
    /// Report posts that failed for a passing reason and were tried again (a controller
    /// restarting or out of reach): a report that got through late shows here.
    pub report_retries: Counter,
    /// Replies to a round's probe ids that answered no probe of the agent's: without the
    /// probe socket's nonce, or from another address than the probe went to.
    pub foreign_replies: Counter,
    app_requests: MetricFamily<RequestLabels, Counter>,
    pub drops: MetricFamily<DropLabels, Counter>,
    sent: MetricFamily<PathLabels, Counter>,
    received: MetricFamily<PathLabels, Counter>,
    observed: MetricFamily<HookLabels, Counter>,
    pub rounds: Counter,
    pub ringbuf_drops: Counter,
    pub kernel_events: Counter,
    /// Times the observers were reloaded with bigger maps for a plan (`crate::map_sizes`).
    pub observer_reloads: Counter,
    event_buffer_bytes: Gauge,
    tcp_paths_capacity: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        meshdoctor_ops::register_build_info(&mut root, "agent");
        let registry = root.sub_registry_with_prefix("meshdoctor_agent");
        let sent = MetricFamily::<PathLabels, Counter>::default();
        let received = MetricFamily::<PathLabels, Counter>::default();
        let observed = MetricFamily::<HookLabels, Counter>::default();
        let rounds = Counter::default();
        let ringbuf_drops = Counter::default();
        let kernel_events = Counter::default();
        let drops = MetricFamily::<DropLabels, Counter>::default();
        registry.register(
            "probe_drops",
            "Probe packets the kernel dropped in this agent's netns (skb:kfree_skb), by drop reason and packet",
            drops.clone(),
        );
        registry.register(
            "probes_sent",
            "Probes handed to the kernel, by source interface and family",
            sent.clone(),
        );
        registry.register(
            "probes_received",
            "Probe replies received in time, by source interface and family",
            received.clone(),
        );
        registry.register(
            "observed_packets",
            "Probe packets of armed rounds seen by the eBPF observers, by interface, hook, kind and family",
            observed.clone(),
        );
        registry.register("rounds", "Rounds run", rounds.clone());
        registry.register(
            "ringbuf_drops",
            "Probe events the eBPF observers could not queue (full ring buffer): unobserved, not lost",
            ringbuf_drops.clone(),
        );
        registry.register(
            "kernel_events",
            "Probe events read from the eBPF observers",
            kernel_events.clone(),
        );
        let observer_reloads = Counter::default();
        registry.register(
            "observer_reloads",
            "Times the eBPF observers were reloaded with bigger maps because a plan needed more",
            observer_reloads.clone(),
        );
        let event_buffer_bytes = Gauge::default();
        registry.register(
            "event_buffer_bytes",
            "Size of the eBPF observers' event ring buffer (grown from plans)",
            event_buffer_bytes.clone(),
        );
        let tcp_paths_capacity = Gauge::default();
        registry.register(
            "tcp_paths_capacity",
            "TCP probe paths the eBPF observers can follow at once (grown from plans)",
            tcp_paths_capacity.clone(),
        );
        let app_requests = MetricFamily::<RequestLabels, Counter>::default();
        registry.register(
            "app_requests",
            "Application requests (AppHttpHealthy, NetDns) by result: success, failure, or \
             not_sent (planned, but the in-flight bound was reached or the agent fell behind)",
            app_requests.clone(),
        );
        let timestamping = MetricFamily::<SourceLabels, Gauge>::default();
        registry.register(
            "timestamping",
            "1 for the probe timestamp source in use: ebpf (the TC observers, per-hook loss \
             attribution) or socket (user space only)",
            timestamping.clone(),
        );
        let drop_tracing = Gauge::default();
        registry.register(
            "drop_tracing",
            "1 when the skb:kfree_skb drop tracer runs (reports name drop reasons)",
            drop_tracing.clone(),
        );
        let report_failures = Counter::default();
        registry.register(
            "report_failures",
            "Round reports not delivered to the controller before its deadline",
            report_failures.clone(),
        );
        let report_retries = Counter::default();
        registry.register(
            "report_retries",
            "Round report posts that failed for a passing reason (no connection, a timeout, the \
             controller's own error) and were tried again",
            report_retries.clone(),
        );
        let foreign_replies = Counter::default();
        registry.register(
            "foreign_replies",
            "Replies with one of a round's probe ids that answered no probe of this agent's \
             (without the probe socket's nonce, or from another address): forged or misrouted, \
             never counted as a probe's reply",
            foreign_replies.clone(),
        );
        Self {
            registry: root,
            timestamping,
            drop_tracing,
            report_failures,
            report_retries,
            foreign_replies,
            app_requests,
            drops,
            sent,
            received,
            observed,
            rounds,
            ringbuf_drops,
            kernel_events,
            observer_reloads,
            event_buffer_bytes,
            tcp_paths_capacity,
        }
    }
}

impl Metrics {
    /// Records how this agent measures: both timestamp sources get a series (0 or 1), so an
    /// alert on `socket` has a series to compare in either case.
    pub fn set_capabilities(&self, timestamping: Timestamping, drop_tracing: bool) {
        for (source, value) in [
            (Timestamping::Ebpf, "ebpf"),
            (Timestamping::Socket, "socket"),
        ] {
            self.timestamping
                .get_or_create(&SourceLabels {
                    source: value.into(),
                })
                .set(i64::from(source == timestamping));
        }
        self.drop_tracing.set(i64::from(drop_tracing));
    }

    /// Records the sizes of the observers' plan-dependent maps.
    pub fn set_map_sizes(&self, sizes: MapSizes) {
        self.event_buffer_bytes
            .set(i64::from(sizes.event_buffer_bytes));
        self.tcp_paths_capacity.set(i64::from(sizes.tcp_paths));
    }

    pub fn count_path(&self, interface: &str, family: Family, sent: u32, received: u32) {
        let labels = PathLabels {
            interface: interface.into(),
            family: family.to_string(),
        };
        self.sent.get_or_create(&labels).inc_by(sent.into());
        self.received.get_or_create(&labels).inc_by(received.into());
    }

    /// Counts an application round's requests.
    pub fn count_requests(&self, successes: u64, failures: u64, not_sent: u64) {
        for (result, n) in [
            ("success", successes),
            ("failure", failures),
            ("not_sent", not_sent),
        ] {
            self.app_requests
                .get_or_create(&RequestLabels {
                    result: result.into(),
                })
                .inc_by(n);
        }
    }

    /// Sets the observers' packet counters to the kernel's totals (they are read from per-CPU
    /// maps at scrape time rather than counted twice in user space).
    pub fn set_observed(&self, labels: HookLabels, total: u64) {
        self.observed
            .get_or_create(&labels)
            .inner()
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.count_path("net1", Family::Ipv6, 10, 8);
        m.rounds.inc();
        let text = m.render();
        assert!(
            text.contains(
                r#"meshdoctor_agent_probes_sent_total{interface="net1",family="ipv6"} 10"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"meshdoctor_agent_probes_received_total{interface="net1",family="ipv6"} 8"#
        ));
        assert!(text.contains("meshdoctor_agent_rounds_total 1"));
        m.set_capabilities(Timestamping::Socket, false);
        let text = m.render();
        for line in [
            "meshdoctor_agent_timestamping{source=\"ebpf\"} 0\n",
            "meshdoctor_agent_timestamping{source=\"socket\"} 1\n",
            "meshdoctor_agent_drop_tracing 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.count_requests(8, 2, 0);
        let text = m.render();
        assert!(text.contains(r#"meshdoctor_agent_app_requests_total{result="failure"} 2"#));
    }

    /// One agent's series with two interfaces and two families after probe and application
    /// rounds with kernel drops, printed for the record (`cargo test -p meshdoctor-agent
    /// series_of_one_agent -- --nocapture`); they do not depend on the number of peers.
    #[test]
    fn series_of_one_agent() {
        let m = Metrics::default();
        m.set_capabilities(Timestamping::Ebpf, true);
        for interface in ["eth0", "net1"] {
            for family in [Family::Ipv4, Family::Ipv6] {
                m.count_path(interface, family, 10, 9);
                for hook in ["ingress", "egress"] {
                    for kind in ["request", "reply"] {
                        let labels = HookLabels {
                            interface: interface.into(),
                            hook: hook.into(),
                            kind: kind.into(),
                            family: family.to_string(),
                        };
                        m.set_observed(labels, 10);
                    }
                }
            }
        }
        for kind in ["request", "reply"] {
            let labels = DropLabels {
                reason: "NETFILTER_DROP".into(),
                kind: kind.into(),
            };
            m.drops.get_or_create(&labels).inc();
        }
        m.count_requests(1, 0, 0);
        let series = m.render().lines().filter(|l| !l.starts_with('#')).count();
        eprintln!("agent series, 2 interfaces x 2 families: {series}");
        // ... meshdoctor_build_info, and the observers' reloads and two map sizes; report
        // retries and foreign replies.
        assert_eq!(series, 8 + 16 + 2 + 3 + 3 + 2 + 1 + 1 + 1 + 3 + 2);
    }
}
