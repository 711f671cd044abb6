//! Runs one round plan: paced probes (echo, UDP, TCP or HTTP) to every planned target, then
//! the agent report.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use meshdoctor_api::{
    AgentReport, Histogram, LostProbe, ObserverStats, PathId, PlannedTarget, Protocol, RoundPlan,
    SentPath, probe_id, probe_tag,
};
use prometheus_client::metrics::counter::Counter;
use tokio::{task::JoinSet, time::Instant};
use tracing::{debug, warn};

use crate::{
    guard::{Guard, Pace},
    hooks::RoundHooks,
    icmp::monotonic_ns,
    map_sizes::stall_covered_ms,
    runtime::Agent,
    sockets::{ProbeSocket, Reply},
    tcp,
};

/// What the sender and the receivers learn about one target's probes.
#[derive(Debug, Clone)]
struct TargetProbes {
    send_ns: Vec<u64>,
    recv_ns: Vec<u64>,
    send_errors: BTreeMap<String, u32>,
    /// Probes sent that failed with an error of their own (a refused connection, an HTTP
    /// status), by error.
    failures: BTreeMap<String, u32>,
    /// Probes the agent kept back, by reason: its own limits, or a round it joined late.
    withheld: BTreeMap<String, u32>,
}

impl TargetProbes {
    fn new(n: usize) -> Self {
        Self {
            send_ns: vec![0; n],
            recv_ns: vec![0; n],
            send_errors: BTreeMap::new(),
            failures: BTreeMap::new(),
            withheld: BTreeMap::new(),
        }
    }
}

type Shared = Arc<Mutex<Vec<TargetProbes>>>;

/// Runs `plan` and returns the report to post. Never fails: what could not be done (a socket
/// that would not open, a send error) is counted in the report.
pub async fn run(agent: &Agent, plan: &RoundPlan) -> AgentReport {
    let tag = plan.round_tag;
    let tcp_paths = tcp::round_paths(plan, agent.probe_port);
    agent.fit_observer(plan, tcp_paths.len());
    let timeout = Duration::from_millis(plan.timeout_ms);
    let (drops_before, complete) = agent.arm(tag, timeout, &tcp_paths);
    let n = plan.probes_per_target() as usize;
    let probes: Shared = Arc::new(Mutex::new(vec![TargetProbes::new(n); plan.targets.len()]));

    wait_until_ms(plan.start_at_ms).await;

    // One socket per protocol, source interface and address, shared by that source's targets
    // (an icmp round probes its Service targets over http); a socket that would not open is
    // the send error of every probe of its targets.
    type SocketKey<'a> = (Protocol, &'a str, IpAddr);
    let mut opened: HashMap<SocketKey<'_>, Result<Arc<ProbeSocket>, String>> = HashMap::new();
    let sockets: Vec<Result<Arc<ProbeSocket>, String>> = plan
        .targets
        .iter()
        .map(|t| {
            let protocol = plan.protocol_of(t);
            opened
                .entry((protocol, t.src_interface.as_str(), t.src_addr))
                .or_insert_with(|| {
                    ProbeSocket::open(protocol, &t.src_interface, t.src_addr, timeout)
                        .map(Arc::new)
                        .map_err(|e| {
                            warn!(interface = %t.src_interface, src = %t.src_addr, "cannot open probe socket: {e}");
                            format!("socket: {e}")
                        })
                })
                .clone()
        })
        .collect();
    let path_index: Arc<HashMap<PathId, (usize, IpAddr)>> = Arc::new(
        plan.targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.path, (i, t.dst_addr)))
            .collect(),
    );
    let mut receivers = JoinSet::new();
    for sock in opened.values().flatten() {
        receivers.spawn(receive(
            sock.clone(),
            tag,
            path_index.clone(),
            probes.clone(),
            timeout,
            agent.metrics.foreign_replies.clone(),
        ));
    }

    send_all(plan, &sockets, &probes, n, &agent.guard).await;
    wait_for_replies(&probes, timeout).await;
    receivers.abort_all();
    // The observers also see the probes this agent answers, which its peers send until the
    // round's end: an agent with few or no targets of its own (a round of `spec.pairPaths`)
    // stays armed until then.
    wait_until_ms(plan.start_at_ms + plan.duration_ms + plan.timeout_ms).await;
    // Let the observers' last events drain from the ring buffer.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (hooks, ringbuf_drops) = agent.disarm(tag, &tcp_paths, drops_before);
    let probes = probes.lock().map(|p| p.clone()).unwrap_or_default();
    let observed = Observed {
        ringbuf_drops,
        complete,
    };
    let report = build_report(agent, plan, &probes, &hooks, observed);
    for (t, s) in plan.targets.iter().zip(&report.sent) {
        agent
            .metrics
            .count_path(&t.src_interface, t.family, s.sent, s.received);
    }
    report
}

/// Sleeps until the wall-clock time `at_ms` (Unix ms), the clock plans are written in.
/// Wall-clock now in Unix milliseconds, the clock plans are written in.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) async fn wait_until_ms(at_ms: u64) {
    if let Some(wait) = at_ms.checked_sub(now_ms()) {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Waits until every sent probe has its reply, or the per-request timeout of the last one has
/// passed: a clean round reports a timeout sooner.
async fn wait_for_replies(probes: &Shared, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let all_answered = || {
        probes.lock().is_ok_and(|p| {
            p.iter().all(|t| {
                t.send_ns
                    .iter()
                    .zip(&t.recv_ns)
                    .all(|(s, r)| *s == 0 || *r != 0)
            })
        })
    };
    while Instant::now() < deadline && !all_answered() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `n` probes to every target, round-robin, evenly spread at `qps` per target (slower,
/// and fewer, above the agent's rate cap).
async fn send_all(
    plan: &RoundPlan,
    sockets: &[Result<Arc<ProbeSocket>, String>],
    probes: &Shared,
    n: usize,
    guard: &Guard,
) {
    let targets = plan.targets.len();
    if targets == 0 {
        return;
    }
    // Within this agent's own limits: a destination it does not allow is never probed, and
    // above its rate cap the probes that do not fit the round are not sent.
    let refusals: Vec<Option<String>> = plan
        .targets
        .iter()
        .map(|t| guard.refusal(t.dst_addr))
        .collect();
    let allowed = refusals.iter().filter(|r| r.is_none()).count();
    // Held until every probe is sent: rounds running at once share the cap.
    let share = guard.share(Guard::wants(plan, allowed));
    let pace = Guard::pace(plan, allowed, n, &share);
    let over_rate = guard.over_rate(plan, allowed, &share);
    let (start, missed) = late_start(plan, &pace, now_ms(), Instant::now());
    let mut k = 0u32;
    for seq in 0..n {
        for (i, t) in plan.targets.iter().enumerate() {
            let refused = refusals[i]
                .as_ref()
                .or((u64::from(k) >= pace.sends).then_some(&over_rate));
            if let Some(why) = refused {
                record(probes, i, |p| {
                    *p.withheld.entry(why.clone()).or_default() += 1
                });
                continue;
            }
            if u64::from(k) < missed {
                record(probes, i, |p| {
                    *p.withheld.entry(LATE_START.into()).or_default() += 1
                });
                k += 1;
                continue;
            }
            tokio::time::sleep_until(start + pace.period * k).await;
            k += 1;
            let sock = match &sockets[i] {
                Ok(sock) => sock,
                Err(e) => {
                    record(probes, i, |p| {
                        *p.send_errors.entry(e.clone()).or_default() += 1
                    });
                    continue;
                }
            };
            let id = probe_id(plan.round_tag, t.path, seq as u16);
            // The send time is stored before the send: the reply can come back (and be read
            // on another thread) before `send` returns.
            let sent_at = monotonic_ns();
            record(probes, i, |p| p.send_ns[seq] = sent_at);
            if let Err(e) = sock.send(t, seq as u16, id).await {
                record(probes, i, |p| {
                    p.send_ns[seq] = 0;
                    *p.send_errors.entry(e.to_string()).or_default() += 1;
                });
            }
        }
    }
}

/// Why the probes of a round this agent joined late were not sent.
pub const LATE_START: &str =
    "not sent: the agent (re)started after the round began, past these probes' time";

/// How late past a plan's start an agent still sends every probe: the agents' and the
/// controller's clocks may differ this much, and a late start within it only shifts the round.
const LATE_START_TOLERANCE_MS: u64 = 1000;

/// Where the pacer's clock starts for `plan`, and how many of its sends are already past.
///
/// An agent that (re)started after its round began (a crash, a rollout) keeps to the round's
/// window: sending the whole round late would put its probes after its peers disarmed their
/// observers and into the next round, so the sends whose time has passed are withheld
/// ([`LATE_START`]) and the rest keep their time.
fn late_start(plan: &RoundPlan, pace: &Pace, now_ms: u64, now: Instant) -> (Instant, u64) {
    let late_ms = now_ms.saturating_sub(plan.start_at_ms);
    if late_ms <= LATE_START_TOLERANCE_MS {
        return (now, 0);
    }
    let late = Duration::from_millis(late_ms);
    let missed = late.as_nanos() / pace.period.as_nanos().max(1);
    let start = now.checked_sub(late).unwrap_or(now);
    (start, u64::try_from(missed).unwrap_or(u64::MAX))
}

fn record(probes: &Shared, i: usize, f: impl FnOnce(&mut TargetProbes)) {
    if let Ok(mut p) = probes.lock() {
        f(&mut p[i]);
    }
}

/// Records replies on one socket until aborted. A reply later than `timeout` is lost, as for
/// an application waiting for it.
async fn receive(
    sock: Arc<ProbeSocket>,
    tag: u32,
    path_index: Arc<HashMap<PathId, (usize, IpAddr)>>,
    probes: Shared,
    timeout: Duration,
    foreign: Counter,
) {
    loop {
        let Reply {
            id,
            outcome,
            from,
            genuine,
        } = match sock.recv().await {
            Ok(r) => r,
            Err(e) => {
                warn!("probe socket receive failed: {e}");
                return;
            }
        };
        let (rtag, path, seq) = meshdoctor_api::probe_id_parts(id);
        let Some(&(i, dst)) = path_index.get(&path).filter(|_| rtag == probe_tag(tag)) else {
            continue;
        };
        // A reply to this round's probe id without the socket's nonce, or from an address the
        // probe did not go to, answers no probe of ours: forged (the id is predictable) or
        // misrouted. Counted, never taken as the probe's reply.
        if !answers(genuine, from, dst) {
            foreign.inc();
            debug!(path, seq, ?from, %dst, "reply without our nonce or from another address");
            continue;
        }
        let Ok(mut p) = probes.lock() else { return };
        let p = &mut p[i];
        let seq = usize::from(seq);
        let t = match outcome {
            Ok(t) => t,
            Err(failure) => {
                if p.send_ns.get(seq).is_some_and(|&s| s != 0) {
                    *p.failures.entry(failure).or_default() += 1;
                }
                continue;
            }
        };
        if let (Some(&sent), Some(recv)) = (p.send_ns.get(seq), p.recv_ns.get_mut(seq))
            && sent != 0
            && *recv == 0
            && t.saturating_sub(sent) <= timeout.as_nanos() as u64
        {
            *recv = t;
        } else {
            debug!(path, seq, "late, duplicate or unknown reply");
        }
    }
}

/// Whether a reply read for a probe to `dst` answers it: it carries the socket's nonce and
/// comes from `dst` (or from the connection to it, for TCP and HTTP).
fn answers(genuine: bool, from: Option<IpAddr>, dst: IpAddr) -> bool {
    genuine && from.is_none_or(|from| from == dst)
}

/// How the observers fared in a round.
#[derive(Debug, Clone, Copy)]
struct Observed {
    ringbuf_drops: u64,
    /// Arming the round succeeded: every probe was followed.
    complete: bool,
}

/// Turns what the sockets and the observers saw into the report (pure: tested below).
fn build_report(
    agent: &Agent,
    plan: &RoundPlan,
    probes: &[TargetProbes],
    hooks: &RoundHooks,
    observed: Observed,
) -> AgentReport {
    let sent = plan
        .targets
        .iter()
        .zip(probes)
        .map(|(t, p)| sent_path(plan, t, p, hooks))
        .collect();
    let own: HashSet<PathId> = plan.targets.iter().map(|t| t.path).collect();
    AgentReport {
        sent,
        answered: hooks.answered(&own, |i| agent.interface_name(i)),
        observer: ObserverStats {
            ringbuf_drops: observed.ringbuf_drops,
            events: hooks.events(),
            drop_tracer: agent.traces_drops(),
            incomplete: !observed.complete,
            stall_covered_ms: agent
                .event_buffer_bytes()
                .and_then(|bytes| stall_covered_ms(bytes, plan)),
        },
        drops: agent.drop_records(hooks.drops()),
        ..AgentReport::on_plan(agent.node.clone(), plan, agent.timestamping)
    }
}

fn sent_path(
    plan: &RoundPlan,
    t: &PlannedTarget,
    p: &TargetProbes,
    hooks: &RoundHooks,
) -> SentPath {
    let n = p.send_ns.len();
    let mut s = SentPath {
        path: t.path,
        planned: n as u32,
        sent: 0,
        received: 0,
        send_errors: p.send_errors.iter().map(|(e, c)| (e.clone(), *c)).collect(),
        failures: p.failures.iter().map(|(e, c)| (e.clone(), *c)).collect(),
        withheld: p.withheld.iter().map(|(e, c)| (e.clone(), *c)).collect(),
        src_egress: 0,
        src_ingress: 0,
        unsent: Vec::new(),
        lost: Vec::new(),
        kernel_rtt: Histogram::default(),
        user_rtt: Histogram::default(),
        src_stack: Histogram::default(),
    };
    for seq in 0..n {
        let h = hooks.get(probe_id(plan.round_tag, t.path, seq as u16));
        s.src_egress += u32::from(h.src_egress != 0);
        s.src_ingress += u32::from(h.src_ingress != 0);
        let kernel = h.kernel_rtt();
        if let Some(k) = kernel {
            s.kernel_rtt.record(k);
        }
        if p.send_ns[seq] == 0 {
            s.unsent.push(seq as u16);
            continue;
        }
        s.sent += 1;
        if p.recv_ns[seq] == 0 {
            s.lost.push(LostProbe {
                seq: seq as u16,
                src_egress: h.src_egress != 0,
                src_ingress: h.src_ingress != 0,
            });
            continue;
        }
        s.received += 1;
        let user = p.recv_ns[seq] - p.send_ns[seq];
        s.user_rtt.record(user);
        if let Some(k) = kernel.filter(|&k| k <= user) {
            s.src_stack.record(user - k);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::tests::ev;
    use meshdoctor_agent_common::{Hook, Kind};
    use meshdoctor_api::Family;

    fn mk_plan() -> RoundPlan {
        RoundPlan::test(3, vec![PlannedTarget::test(5)])
    }

    #[test]
    fn only_a_reply_with_the_nonce_from_the_probed_address_answers() {
        let (dst, other): (IpAddr, IpAddr) = ([192, 0, 2, 2].into(), [192, 0, 2, 9].into());
        assert!(answers(true, Some(dst), dst));
        assert!(answers(true, None, dst), "TCP: the connection was to dst");
        assert!(!answers(false, Some(dst), dst), "no nonce");
        assert!(!answers(true, Some(other), dst), "another address");
        assert!(!answers(false, None, dst));
    }

    /// Node B ignores echo requests, and forges an echo reply for every probe id of the round
    /// (they are predictable) without the socket's nonce: no probe counts as answered, and the
    /// forged replies are counted as foreign.
    #[test]
    fn forged_echo_replies_answer_no_probe_and_are_counted() {
        use crate::testnet::{ADDR_A4, ADDR_B4, Pair, skip_unless_root};

        if skip_unless_root() {
            return;
        }
        let pair = Pair::new();
        let sysctl = std::process::Command::new("ip")
            .args(["netns", "exec", &pair.ns_b])
            .args(["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1"])
            .status()
            .unwrap();
        assert!(sysctl.success());
        let target = PlannedTarget {
            src_interface: pair.veth_a.as_str().into(),
            src_addr: ADDR_A4.into(),
            dst_addr: ADDR_B4.into(),
            ..PlannedTarget::test(1)
        };
        let plan = RoundPlan {
            round_tag: 0x0bad_f00d,
            qps: 10,
            timeout_ms: 500,
            start_at_ms: now_ms(),
            ..RoundPlan::test(10, vec![target])
        };
        let ns_b = pair.ns_b.clone();
        let tag = plan.round_tag;
        let forger = std::thread::spawn(move || {
            Pair::run_in(&ns_b, || {
                let sock = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::RAW,
                    Some(socket2::Protocol::ICMPV4),
                )
                .unwrap();
                let dst = socket2::SockAddr::from(std::net::SocketAddr::new(ADDR_A4.into(), 0));
                // Every 20 ms for 1.5 s, a reply to each of the round's ten probe ids.
                for _ in 0..75 {
                    for seq in 0..10 {
                        let mut pkt = crate::icmp::echo_request(
                            Family::Ipv4,
                            1,
                            seq,
                            probe_id(tag, 1, seq),
                            0x5eed,
                        );
                        pkt[0] = 0; // echo reply; the checksum is not what the agent reads
                        let _ = sock.send_to(&pkt, &dst);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        });
        let agent = Agent::for_test("node-a");
        let report = Pair::run_in(&pair.ns_a, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(&agent, &plan))
        });
        forger.join().unwrap();
        let s = &report.sent[0];
        assert_eq!((s.sent, s.received), (10, 0), "{s:?}");
        assert!(agent.metrics.foreign_replies.get() >= 10);
    }

    /// A round joined 2.5 s late at 10 probes/s skips the 25 sends whose time has passed and
    /// keeps the rest on the round's clock; a start within the clocks' tolerance skips none.
    #[test]
    fn a_late_start_skips_the_sends_whose_time_has_passed() {
        let mut plan = mk_plan();
        plan.start_at_ms = 100_000;
        let pace = Pace {
            period: Duration::from_millis(100),
            sends: 50,
        };
        let now = Instant::now();
        let (start, missed) = late_start(&plan, &pace, 102_500, now);
        assert_eq!(missed, 25);
        assert_eq!(now - start, Duration::from_millis(2500));
        // The next send (number 25) is due at once, the one after a period later.
        assert_eq!(start + pace.period * 25, now);
        assert_eq!(late_start(&plan, &pace, 100_900, now), (now, 0));
        assert_eq!(late_start(&plan, &pace, 99_000, now), (now, 0));
    }

    #[test]
    fn report_joins_socket_and_kernel_times() {
        let plan = mk_plan();
        let agent = Agent::for_test("node-1");
        let mut p = TargetProbes::new(3);
        p.send_ns = vec![1_000, 2_000, 0];
        p.recv_ns = vec![1_900, 0, 0];
        p.send_errors.insert("Network is unreachable".into(), 1);
        let mut h = RoundHooks::default();
        h.record(&ev(probe_id(77, 5, 0), Kind::Request, Hook::Egress, 1_100));
        h.record(&ev(probe_id(77, 5, 0), Kind::Reply, Hook::Ingress, 1_800));
        h.record(&ev(probe_id(77, 5, 1), Kind::Request, Hook::Egress, 2_100));
        h.record(&ev(probe_id(77, 9, 0), Kind::Request, Hook::Ingress, 50)); // a peer's probe
        let observed = Observed {
            ringbuf_drops: 4,
            complete: true,
        };
        let r = build_report(&agent, &plan, &[p], &h, observed);
        let s = &r.sent[0];
        assert_eq!((s.planned, s.sent, s.received), (3, 2, 1));
        assert_eq!((s.src_egress, s.src_ingress), (2, 1));
        assert_eq!(s.kernel_rtt, Histogram::from_iter([700]));
        assert_eq!(s.user_rtt, Histogram::from_iter([900]));
        assert_eq!(s.src_stack, Histogram::from_iter([200]));
        let lost = LostProbe {
            seq: 1,
            src_egress: true,
            src_ingress: false,
        };
        assert_eq!(
            (s.lost.as_slice(), s.unsent.as_slice()),
            (&[lost][..], &[2][..])
        );
        assert_eq!(
            s.send_errors,
            vec![("Network is unreachable".to_string(), 1)]
        );
        assert_eq!(r.answered.len(), 1);
        assert_eq!(r.answered[0].path, 9);
        assert_eq!(
            r.observer,
            ObserverStats {
                ringbuf_drops: 4,
                events: 4,
                drop_tracer: false,
                incomplete: false,
                stall_covered_ms: None,
            }
        );
    }

    /// An icmp round whose plan probes one target over http (a Service target, as kdoctor
    /// does): the agent pings the icmp target and sends HTTP GETs to the other, over a veth
    /// pair, every probe answered.
    #[test]
    fn an_icmp_round_probes_its_http_targets_over_http() {
        use std::{
            io::{Read as _, Write as _},
            net::TcpListener,
            sync::atomic::{AtomicUsize, Ordering},
        };

        use crate::testnet::{ADDR_A4, ADDR_B4, Pair, skip_unless_root};

        if skip_unless_root() {
            return;
        }
        let pair = Pair::new();
        // An HTTP server in B that counts the GETs it answers.
        let listener = Pair::run_in(&pair.ns_b, || TcpListener::bind((ADDR_B4, 0)).unwrap());
        let port = listener.local_addr().unwrap().port();
        let gets = Arc::new(AtomicUsize::new(0));
        let served = gets.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                if conn
                    .read(&mut buf)
                    .is_ok_and(|n| buf[..n].starts_with(b"GET "))
                {
                    served.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.write_all(crate::tcp::HTTP_RESPONSE);
                }
            }
        });
        let icmp_target = PlannedTarget {
            path: 1,
            dst_node: "node-b".into(),
            src_interface: pair.veth_a.as_str().into(),
            dst_interface: "-".into(),
            network: "default".into(),
            family: Family::Ipv4,
            src_addr: ADDR_A4.into(),
            dst_addr: ADDR_B4.into(),
            dst_port: None,
            external: true,
            protocol: None,
        };
        let http_target = PlannedTarget {
            path: 2,
            dst_node: format!("clusterIP {ADDR_B4}:{port} over http").into(),
            dst_port: Some(port),
            protocol: Some(Protocol::Http),
            ..icmp_target.clone()
        };
        let plan = RoundPlan {
            round_tag: 0x0bad_f00d,
            qps: 10,
            timeout_ms: 500,
            start_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            targets: vec![icmp_target, http_target],
            ..mk_plan()
        };
        let report = Pair::run_in(&pair.ns_a, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(&Agent::for_test("node-a"), &plan))
        });
        for s in &report.sent {
            assert_eq!((s.path, s.sent, s.received), (s.path, 10, 10), "{s:?}");
        }
        assert_eq!(gets.load(Ordering::Relaxed), 10, "one GET per http probe");
    }

    /// A TCP round at 20 probes/s to node B over IPv4 and IPv6 needs two TCP paths and an 8 KiB
    /// ring buffer; the agent was started with one path and 4 KiB. With its maps fixed the
    /// round cannot be followed (reported incomplete); allowed to grow them, the agent reloads
    /// its observers before the next round, whose every probe is then seen at both hooks
    /// through the new ring buffer, and the counters carry on.
    #[test]
    fn a_round_that_outgrows_the_observers_maps_grows_them() {
        use meshdoctor_api::agent_report::TOLERATED_STALL_MS;

        use crate::{
            observer::{LoadOptions, Observer},
            testnet::{ADDR_A4, ADDR_A6, ADDR_B4, ADDR_B6, Pair, skip_unless_root},
        };

        if skip_unless_root() {
            return;
        }
        const PORT: u16 = 9191;
        let pair = Pair::new();
        let ns_b = pair.ns_b.clone();
        let responder = std::thread::spawn(move || {
            Pair::run_in(&ns_b, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let listener = crate::tcp::responder_listener(PORT).unwrap();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(8), crate::tcp::respond(listener))
                            .await;
                });
            })
        });
        let target = |path, src_addr: IpAddr, dst_addr: IpAddr| PlannedTarget {
            src_interface: pair.veth_a.as_str().into(),
            src_addr,
            dst_addr,
            dst_port: Some(PORT),
            family: if src_addr.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            ..PlannedTarget::test(path)
        };
        let plan = |round_tag| RoundPlan {
            round_tag,
            protocol: Protocol::Tcp,
            timeout_ms: 500,
            start_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
                + 200,
            ..RoundPlan::test(
                20,
                vec![
                    target(1, ADDR_A4.into(), ADDR_B4.into()),
                    target(2, ADDR_A6.into(), ADDR_B6.into()),
                ],
            )
        };
        // One agent per case, on a runtime of its own: dropping the runtime drops the event
        // dispatcher and with it the agent and its observer, detached before the next loads.
        let run_agent = |grow_maps: bool, round_tag| {
            let veth_a = pair.veth_a.clone();
            let plan = plan(round_tag);
            Pair::run_in(&pair.ns_a, move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut obs = Observer::load(&LoadOptions {
                        event_buffer_bytes: Some(4096),
                        tcp_paths: Some(1),
                        drops: None,
                    })
                    .unwrap();
                    obs.attach(&veth_a).unwrap();
                    let mut agent = Agent::new("node-a".into(), Vec::new(), Some(obs), None);
                    agent.grow_maps = grow_maps;
                    let agent = Arc::new(agent);
                    let events = agent.take_events().unwrap();
                    tokio::spawn(agent.clone().dispatch_events(events));
                    let report = run(&agent, &plan).await;
                    let reloads = agent.metrics.observer_reloads.get();
                    (report, reloads, agent.event_buffer_bytes())
                })
            })
        };
        let (fixed, reloads, buffer) = run_agent(false, 0x0100_0001);
        assert!(fixed.observer.incomplete, "{:?}", fixed.observer);
        assert_eq!((reloads, buffer), (0, Some(4096)));

        let (grown, reloads, buffer) = run_agent(true, 0x0100_0002);
        assert_eq!((reloads, buffer), (1, Some(8192)));
        assert!(!grown.observer.incomplete, "{:?}", grown.observer);
        assert_eq!(grown.observer.ringbuf_drops, 0);
        for s in &grown.sent {
            assert_eq!((s.sent, s.received), (20, 20), "{s:?}");
            assert_eq!((s.src_egress, s.src_ingress), (20, 20), "{s:?}");
        }
        assert!(grown.observer.stall_covered_ms >= Some(TOLERATED_STALL_MS));
        responder.join().unwrap();
    }
}
