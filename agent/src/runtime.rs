//! State the agent shares across rounds: its identity, its interfaces, the eBPF observers, and
//! the hook times of the rounds in flight.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use meshdoctor_agent_common::probe_round_tag;
use meshdoctor_agent_common::{Hook, IpFamily, Kind, TcpPath, TcpPathKey};
use meshdoctor_api::{
    AgentRegistration, Packet, ProbeDrop, RoundPlan, Timestamping, probe_id_parts, probe_tag,
};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    drops::{DropTracer, Symbols},
    hooks::{KernelDrop, RoundHooks},
    interfaces::Interface,
    metrics::{DropLabels, HookLabels, Metrics},
    observer::{EventStream, Observer},
};

pub struct Agent {
    pub node: String,
    /// Port of the UDP and TCP probe responders, announced to the controller; `None` when off.
    pub probe_port: Option<u16>,
    /// The node's labels it registers with (`--label`, `--zone`).
    pub labels: BTreeMap<String, String>,
    pub interfaces: Vec<Interface>,
    pub timestamping: Timestamping,
    pub metrics: Metrics,
    /// `None` when eBPF is off: reports then carry user-space times only.
    observer: Option<Mutex<Observer>>,
    /// Names of the drop tracer's reasons; `None` when it does not run.
    drop_tracer: Option<DropTracer>,
    /// Drop locations named so far.
    symbols: Mutex<Symbols>,
    /// Hook times per armed round tag. Events of other round tags are ignored.
    /// By [`probe_tag`]: what the events carry.
    rounds: Mutex<HashMap<u32, RoundHooks>>,
    /// Whether plans may grow the observers' maps (`--fixed-observer-maps` clears it).
    pub grow_maps: bool,
    /// Where and how fast this agent agrees to send.
    pub guard: crate::guard::Guard,
    /// Told when the observers were reloaded: the event dispatcher takes the new ring buffer.
    events_moved: Notify,
}

impl Agent {
    pub fn new(
        node: String,
        interfaces: Vec<Interface>,
        observer: Option<Observer>,
        drop_tracer: Option<DropTracer>,
    ) -> Self {
        let timestamping = if observer.is_some() {
            Timestamping::Ebpf
        } else {
            Timestamping::Socket
        };
        let metrics = Metrics::default();
        metrics.set_capabilities(timestamping, drop_tracer.is_some());
        if let Some(o) = &observer {
            metrics.set_map_sizes(o.sizes());
        }
        Self {
            node,
            probe_port: None,
            labels: BTreeMap::new(),
            interfaces,
            timestamping,
            metrics,
            observer: observer.map(Mutex::new),
            drop_tracer,
            symbols: Mutex::default(),
            rounds: Mutex::default(),
            grow_maps: true,
            guard: Default::default(),
            events_moved: Notify::new(),
        }
    }

    /// Whether kernel drops of probes are traced.
    pub fn traces_drops(&self) -> bool {
        self.drop_tracer.is_some()
    }

    /// A round's kernel drops as report records: reasons and locations named, interfaces
    /// named when they are this agent's, and counted in the metrics.
    pub fn drop_records(&self, drops: &[KernelDrop]) -> Vec<ProbeDrop> {
        let Some(tracer) = &self.drop_tracer else {
            return Vec::new();
        };
        let locations = self
            .symbols
            .lock()
            .map(|mut s| s.resolve(drops.iter().map(|d| d.location)))
            .unwrap_or_default();
        drops
            .iter()
            .map(|d| {
                let (_, path, seq) = probe_id_parts(d.probe_id);
                let reason = tracer.reason_name(d.reason);
                self.metrics
                    .drops
                    .get_or_create(&DropLabels {
                        reason: reason.clone(),
                        kind: match d.packet {
                            Packet::Request => "request",
                            Packet::Reply => "reply",
                        }
                        .into(),
                    })
                    .inc();
                ProbeDrop {
                    path,
                    seq,
                    packet: d.packet,
                    reason,
                    location: locations
                        .get(&d.location)
                        .cloned()
                        .unwrap_or_else(|| format!("{:#x}", d.location)),
                    interface: self
                        .interfaces
                        .iter()
                        .find(|i| d.ifindex != 0 && i.ifindex == d.ifindex)
                        .map(|i| i.info.name.clone()),
                }
            })
            .collect()
    }

    pub fn registration(&self) -> AgentRegistration {
        AgentRegistration {
            node: self.node.clone(),
            interfaces: self.interfaces.iter().map(|i| i.info.clone()).collect(),
            timestamping: self.timestamping,
            probe_port: self.probe_port,
            labels: self.labels.clone(),
        }
    }

    pub fn interface_name(&self, ifindex: u32) -> String {
        self.interfaces
            .iter()
            .find(|i| i.ifindex == ifindex)
            .map_or_else(|| format!("ifindex-{ifindex}"), |i| i.info.name.clone())
    }

    /// Grows the observers' maps when a round of `plan` with `tcp_paths` TCP probe paths needs
    /// more than they hold (`crate::map_sizes`): a reload, done only while no round is armed
    /// (see [`Observer::reload`]). Otherwise, or if the reload fails, the round runs with the
    /// maps there are, and its report says what they missed (`incomplete`, unobserved events).
    /// Blocks for the reload (tens of milliseconds, rarely: maps only grow).
    pub fn fit_observer(&self, plan: &RoundPlan, tcp_paths: usize) {
        let Some(observer) = &self.observer else {
            return;
        };
        let Ok(mut observer) = observer.lock() else {
            return;
        };
        let (has, needed) = (observer.sizes(), observer.sizes().for_plan(plan, tcp_paths));
        if !self.grow_maps || has.cover(needed) {
            return;
        }
        if self.rounds.lock().map_or(true, |r| !r.is_empty()) {
            warn!(
                ?has, ?needed, task = %plan.task, round = plan.round,
                "the eBPF observers' maps are too small for this round, and other rounds are \
                 running: they grow at a round that starts alone"
            );
            return;
        }
        match observer.reload(needed) {
            Ok(()) => {
                info!(?has, ?needed, task = %plan.task, "eBPF observers reloaded with bigger maps");
                self.metrics.observer_reloads.inc();
                self.metrics.set_map_sizes(needed);
                self.events_moved.notify_one();
            }
            Err(e) => warn!(?needed, "growing the eBPF observers' maps failed: {e}"),
        }
    }

    /// Starts recording the probes of round `tag`, whose probes time out after `timeout`, with
    /// its TCP probe paths (see `crate::tcp::round_paths`); returns the ring-buffer drop count
    /// so far, and whether the observers follow every probe of the round (false when arming
    /// failed: a full map).
    pub fn arm(
        &self,
        tag: u32,
        timeout: Duration,
        tcp_paths: &[(TcpPathKey, TcpPath)],
    ) -> (u64, bool) {
        if let Ok(mut r) = self.rounds.lock() {
            r.insert(
                probe_tag(tag),
                RoundHooks::with_timeout(timeout.as_nanos() as u64),
            );
        }
        let armed = self.with_observer(|o| {
            o.add_tcp_paths(tcp_paths)?;
            o.arm(tag)?;
            o.ringbuf_drops()
        });
        (
            armed.unwrap_or(0),
            armed.is_some() || self.observer.is_none(),
        )
    }

    /// Size of the event ring buffer; `None` without eBPF.
    pub fn event_buffer_bytes(&self) -> Option<u64> {
        let obs = self.observer.as_ref()?.lock().ok()?;
        Some(obs.sizes().event_buffer_bytes.into())
    }

    /// Stops recording round `tag` (and forgets its TCP paths); returns its hook times and the
    /// ring-buffer drops since `drops_before`.
    pub fn disarm(
        &self,
        tag: u32,
        tcp_paths: &[(TcpPathKey, TcpPath)],
        drops_before: u64,
    ) -> (RoundHooks, u64) {
        let drops = self
            .with_observer(|o| {
                o.disarm(tag)?;
                o.remove_tcp_paths(tag, tcp_paths)?;
                o.ringbuf_drops()
            })
            .map_or(0, |now| now.saturating_sub(drops_before));
        self.metrics.ringbuf_drops.inc_by(drops);
        let hooks = self
            .rounds
            .lock()
            .ok()
            .and_then(|mut r| r.remove(&probe_tag(tag)))
            .unwrap_or_default();
        (hooks, drops)
    }

    fn with_observer<T>(
        &self,
        f: impl FnOnce(&mut Observer) -> Result<T, crate::observer::ObserverError>,
    ) -> Option<T> {
        let obs = self.observer.as_ref()?;
        let mut guard = obs.lock().ok()?;
        f(&mut guard).map_err(|e| warn!("eBPF observer: {e}")).ok()
    }

    /// The metrics text, with the observers' kernel counters brought up to date.
    pub fn render_metrics(&self) -> String {
        let counters = self.with_observer(|o| o.counters()).unwrap_or_default();
        for (key, total) in counters {
            let labels = HookLabels {
                interface: self.interface_name(key.ifindex),
                hook: if key.hook == Hook::Ingress as u8 {
                    "ingress"
                } else {
                    "egress"
                }
                .into(),
                kind: if key.kind == Kind::Request as u8 {
                    "request"
                } else {
                    "reply"
                }
                .into(),
                family: if key.family == IpFamily::V6 as u8 {
                    "ipv6"
                } else {
                    "ipv4"
                }
                .into(),
            };
            self.metrics.set_observed(labels, total);
        }
        self.metrics.render()
    }

    /// Takes the observers' event stream, if eBPF is on.
    pub fn take_events(&self) -> Option<EventStream> {
        self.with_observer(|o| o.events())
    }

    /// Routes kernel events to the round they belong to, until the stream ends; moves to the
    /// new ring buffer when the observers are reloaded ([`Agent::fit_observer`]).
    pub async fn dispatch_events(self: Arc<Self>, mut events: EventStream) {
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                () = self.events_moved.notified() => {
                    if let Some(moved) = self.take_events() {
                        events = moved;
                    }
                    continue;
                }
            };
            let Some(ev) = ev else { break };
            self.metrics.kernel_events.inc();
            if let Ok(mut rounds) = self.rounds.lock()
                && let Some(r) = rounds.get_mut(&probe_round_tag(ev.probe_id))
            {
                r.record(&ev);
            }
        }
        warn!("eBPF event stream ended; further rounds carry no kernel timestamps");
    }

    #[cfg(test)]
    pub fn for_test(node: &str) -> Self {
        Self::new(node.into(), Vec::new(), None, None)
    }
}
