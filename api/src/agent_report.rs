//! What an agent posts at the end of a round: what it sent, and what its observers saw of the
//! probes it answered. The controller joins both ends by path index and, for the probes that
//! did not make it, by sequence number.

use serde::{Deserialize, Serialize};

use crate::{Histogram, LoadStats, PathId, RoundPlan, Timestamping};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub node: String,
    pub task: String,
    pub round: u32,
    pub round_tag: u32,
    pub timestamping: Timestamping,
    /// One entry per planned target, in plan order.
    pub sent: Vec<SentPath>,
    /// Probes of this round that arrived at this agent, grouped by path.
    pub answered: Vec<AnsweredPath>,
    pub observer: ObserverStats,
    /// This round's probe packets the kernel dropped in this agent's network namespace
    /// (skb:kfree_skb), both its own probes and the ones it answered.
    #[serde(default)]
    pub drops: Vec<ProbeDrop>,
    /// Application rounds (AppHttpHealthy, NetDns): what the load against the plan's target
    /// did. `None` in NetReach reports, whose JSON is unchanged by this field.
    #[serde(default)]
    pub app: Option<AppResult>,
}

impl AgentReport {
    /// `node`'s report on `plan` with nothing in it yet: the round's identity filled in, for
    /// the caller to add what it saw.
    pub fn on_plan(node: impl Into<String>, plan: &RoundPlan, timestamping: Timestamping) -> Self {
        Self {
            node: node.into(),
            task: plan.task.clone(),
            round: plan.round,
            round_tag: plan.round_tag,
            timestamping,
            sent: Vec::new(),
            answered: Vec::new(),
            observer: ObserverStats::default(),
            drops: Vec::new(),
            app: None,
        }
    }
}

/// The largest report an agent can justify for `plan` when `answered` planned paths end at it:
/// the controller refuses a larger one unread.
///
/// Generous by design, as it only has to stop a report no plan explains: 1 MiB for the report's
/// fixed part (identity, observer health, an application result), and per path, sent or
/// answered, 8 KiB (its counts, error messages and time histograms, whose at most 496 buckets
/// each fit) plus 1 KiB per planned probe (its entries in the lost, unsent or missed lists, and
/// a drop record for its request and its reply).
pub fn max_report_bytes(plan: &RoundPlan, answered: usize) -> u64 {
    const FIXED: u64 = 1 << 20;
    const PER_PATH: u64 = 8 << 10;
    const PER_PROBE: u64 = 1 << 10;
    let paths = (plan.targets.len() + answered) as u64;
    let per_path = PER_PATH + u64::from(plan.probes_per_target()) * PER_PROBE;
    FIXED.saturating_add(paths.saturating_mul(per_path))
}

/// The `Content-Type` agents post their reports with: the report in postcard, serde's compact
/// binary encoding (varint numbers, no field names), which the controller parses several times
/// faster than JSON, about 100 B per healthy pair-path and side without compression. Every
/// field is written (the report types skip none when serializing), as postcard needs.
pub const REPORT_CONTENT_TYPE: &str = "application/vnd.meshdoctor.report+postcard";

/// The `Content-Encoding` a JSON report may come with (earlier agents, hand-made reports):
/// zstd.
pub const REPORT_ENCODING: &str = "zstd";

/// A report body the controller cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ReportBodyError {
    #[error("Content-Encoding {0:?} is not supported: send identity or {REPORT_ENCODING}")]
    Encoding(String),
    #[error("Content-Type {0:?} is not supported: send {REPORT_CONTENT_TYPE} or application/json")]
    ContentType(String),
    #[error("the report exceeds the {limit} bytes its plan justifies")]
    TooLarge { limit: u64 },
    #[error("the report is not valid {REPORT_ENCODING}: {0}")]
    Compression(#[source] std::io::Error),
    #[error("the report is not a valid report: {0}")]
    Json(#[from] serde_path_to_error::Error<serde_json::Error>),
    #[error("the report is not a valid {REPORT_CONTENT_TYPE} report: {0}")]
    Postcard(#[from] postcard::Error),
}

/// `report` as agents post it: [`REPORT_CONTENT_TYPE`].
pub fn encode_report(report: &AgentReport) -> Result<Vec<u8>, ReportBodyError> {
    Ok(postcard::to_allocvec(report)?)
}

/// A report body as posted with `content_type` and `encoding` (`None`: not given): postcard as
/// agents send it ([`REPORT_CONTENT_TYPE`]), or JSON, plain or zstd-compressed (agents of
/// earlier versions during an upgrade, reports made by hand). A body of more than `limit` bytes
/// is refused, a compressed one as soon as it decompresses past it (a small body can inflate a
/// thousandfold).
pub fn decode_report(
    body: &[u8],
    content_type: Option<&str>,
    encoding: Option<&str>,
    limit: u64,
) -> Result<AgentReport, ReportBodyError> {
    use std::io::Read as _;
    if body.len() as u64 > limit {
        return Err(ReportBodyError::TooLarge { limit });
    }
    // Parameters (`; charset=utf-8`) do not change the format.
    let media = content_type.map(|t| t.split(';').next().unwrap_or_default().trim());
    let json = match (media, encoding) {
        (Some(REPORT_CONTENT_TYPE), None | Some("identity")) => {
            return Ok(postcard::from_bytes(body)?);
        }
        (Some(REPORT_CONTENT_TYPE), Some(other)) => {
            return Err(ReportBodyError::Encoding(other.into()));
        }
        (None | Some("application/json"), None | Some("identity")) => body.to_vec(),
        (None | Some("application/json"), Some(REPORT_ENCODING)) => {
            let mut out = Vec::new();
            zstd::Decoder::new(body)
                .map_err(ReportBodyError::Compression)?
                .take(limit.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(ReportBodyError::Compression)?;
            out
        }
        (None | Some("application/json"), Some(other)) => {
            return Err(ReportBodyError::Encoding(other.into()));
        }
        (Some(other), _) => return Err(ReportBodyError::ContentType(other.into())),
    };
    if json.len() as u64 > limit {
        return Err(ReportBodyError::TooLarge { limit });
    }
    Ok(serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_slice(&json),
    )?)
}

/// One agent's application load against its round's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppResult {
    /// The target as [`crate::AppTarget::label`] names it.
    pub target: String,
    /// Why the load could not run at all (a target the agent could not build a requester for:
    /// bad TLS material, a URL it rejects, a plan beyond its caps). No request was sent then.
    #[serde(default)]
    pub error: Option<String>,
    pub stats: LoadStats,
}

/// The source side of one pair-path: counts and time histograms for all its probes, one
/// record per probe only for the probes that did not make it (the only ones the join
/// classifies), so that a healthy path costs a few numbers however many probes it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentPath {
    pub path: PathId,
    /// Probes the plan asked for.
    pub planned: u32,
    /// Probes handed to the kernel (`sendto` succeeded).
    pub sent: u32,
    /// Probes whose echo reply reached the agent's socket in time.
    pub received: u32,
    /// Send errors by message (e.g. "Network is unreachable"), counted.
    #[serde(default)]
    pub send_errors: Vec<(String, u32)>,
    /// Probes sent whose exchange failed with an error of its own rather than silence (TCP
    /// and HTTP: "connection refused", "HTTP status 503"), counted. They are lost too.
    #[serde(default)]
    pub failures: Vec<(String, u32)>,
    /// Probes the agent did not send because of its own limits (`--allow-targets`,
    /// `--max-probe-rate`), by reason, counted: neither sent nor lost.
    #[serde(default)]
    pub withheld: Vec<(String, u32)>,
    /// Requests seen leaving at TC egress on the source interface.
    pub src_egress: u32,
    /// Replies seen arriving at TC ingress on the source interface.
    pub src_ingress: u32,
    /// Sequence numbers of the planned probes not handed to the kernel (`sendto` failed, or
    /// the round ended first), ascending.
    #[serde(default)]
    pub unsent: Vec<u16>,
    /// The probes handed to the kernel whose reply was not delivered in time, ascending, with
    /// what the source's hooks saw of each.
    #[serde(default)]
    pub lost: Vec<LostProbe>,
    /// Kernel RTT (src ingress - src egress) of every probe both hooks saw in order.
    pub kernel_rtt: Histogram,
    /// User-space RTT (receive - send, CLOCK_MONOTONIC) of every delivered probe.
    pub user_rtt: Histogram,
    /// Source stack time (user RTT - kernel RTT) of every delivered probe with a kernel RTT.
    #[serde(default)]
    pub src_stack: Histogram,
}

/// A probe sent and not delivered, on the wire as `[seq, hooks]`: bit 1 set when its request
/// was seen leaving at the source's TC egress, bit 2 when its reply was seen arriving at the
/// source's TC ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "(u16, u8)", into = "(u16, u8)")]
pub struct LostProbe {
    pub seq: u16,
    pub src_egress: bool,
    pub src_ingress: bool,
}

impl TryFrom<(u16, u8)> for LostProbe {
    type Error = String;

    fn try_from((seq, hooks): (u16, u8)) -> Result<Self, String> {
        if hooks > 3 {
            return Err(format!(
                "lost probe {seq}: hook bits {hooks} beyond srcEgress (1) and srcIngress (2)"
            ));
        }
        Ok(Self {
            seq,
            src_egress: hooks & 1 != 0,
            src_ingress: hooks & 2 != 0,
        })
    }
}

impl From<LostProbe> for (u16, u8) {
    fn from(p: LostProbe) -> Self {
        (p.seq, u8::from(p.src_egress) | u8::from(p.src_ingress) << 1)
    }
}

/// The destination side of one pair-path, as seen by the answering agent's observers.
///
/// The destination does not know how many probes a path planned (an ICMP or UDP probe names
/// its path itself), so it reports how far the sequence numbers it saw reach and which below
/// that each hook missed: on a healthy path, `span` alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnsweredPath {
    pub path: PathId,
    /// One past the highest sequence number either hook saw: the probes from `span` on were
    /// seen by neither.
    pub span: u32,
    /// Sequence numbers below `span` whose request was not seen arriving at TC ingress,
    /// ascending.
    #[serde(default)]
    pub ingress_missed: Vec<u16>,
    /// Sequence numbers below `span` whose reply was not seen leaving at TC egress, ascending.
    #[serde(default)]
    pub egress_missed: Vec<u16>,
    /// Destination stack time (dst egress - dst ingress) of every probe both hooks saw.
    pub stack: Histogram,
    /// Interface names the requests arrived on (normally exactly the planned one).
    pub interfaces: Vec<String>,
}

/// Health of the agent's eBPF observers during the round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObserverStats {
    /// Probe events the kernel could not put into the full ring buffer during the round.
    /// When non-zero, missing hook bits are 'unobserved', not loss.
    pub ringbuf_drops: u64,
    /// Probe events read from the ring buffer during the round.
    pub events: u64,
    /// Whether the kfree_skb drop tracer ran, so a lost probe without a drop record was not
    /// dropped by this host's stack with a traced reason.
    #[serde(default)]
    pub drop_tracer: bool,
    /// The observers could not follow every probe of the round: arming it failed (more TCP
    /// probe paths than the agent's map holds (`--tcp-paths`, grown from plans), or too many
    /// rounds armed at once).
    /// Missing hook bits are then 'unobserved', not loss.
    #[serde(default)]
    pub incomplete: bool,
    /// How long the ring buffer absorbs a stall of the agent's event reader at this round's
    /// rate of probe events, in milliseconds; none without eBPF. Below
    /// [`TOLERATED_STALL_MS`] the round report warns.
    #[serde(default)]
    pub stall_covered_ms: Option<u64>,
}

/// The stall of an agent's event reader (a busy node, a slow CPU share) its ring buffer should
/// absorb without losing events: below this the round report warns.
pub const TOLERATED_STALL_MS: u64 = 1000;

/// Echo request (source to destination) or echo reply (back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Packet {
    Request,
    Reply,
}

/// The names the JSON report uses, for tables and metric labels.
impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Request => "request",
            Self::Reply => "reply",
        })
    }
}

/// One probe packet the kernel dropped, as the agent's kfree_skb tracer saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeDrop {
    pub path: PathId,
    pub seq: u16,
    pub packet: Packet,
    /// The kernel's `enum skb_drop_reason` name without its `SKB_DROP_REASON_` prefix (e.g.
    /// `NETFILTER_DROP`), named from the running kernel's BTF; `unknown` on kernels whose
    /// tracepoint carries no reason.
    pub reason: String,
    /// The dropping kernel function (`symbol+0xoff`) when kallsyms is readable, else the
    /// address in hex.
    pub location: String,
    /// The device the packet was on, when it is one of this agent's interfaces.
    #[serde(default)]
    pub interface: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> AgentReport {
        let plan: RoundPlan = serde_json::from_str(
            r#"{"task":"mesh","round":3,"roundTag":7,"protocol":"icmp","startAtMs":0,
                "durationMs":1000,"qps":10,"timeoutMs":500,"reportDeadlineMs":0,"targets":[]}"#,
        )
        .unwrap();
        let mut r = AgentReport::on_plan("node-1", &plan, Timestamping::Ebpf);
        r.answered = (0..200)
            .map(|path| AnsweredPath {
                path,
                span: 50,
                ingress_missed: vec![],
                egress_missed: vec![],
                stack: (0..50).map(|i| 10_000 + i * 997).collect(),
                interfaces: vec!["eth0".into()],
            })
            .collect();
        r
    }

    #[test]
    fn reports_round_trip_in_postcard_and_json() {
        let mut r = report();
        r.drops.push(ProbeDrop {
            path: 3,
            seq: 7,
            packet: Packet::Reply,
            reason: "NETFILTER_DROP".into(),
            location: "nf_hook_slow+0x8f".into(),
            interface: None,
        });
        r.sent.push(SentPath {
            lost: vec![LostProbe {
                seq: 7,
                src_egress: true,
                src_ingress: false,
            }],
            failures: vec![("connection refused".into(), 1)],
            withheld: Vec::new(),
            ..SentPath::test(3, 50, 49, [800_000, 1_000_000, 200_000])
        });
        // Every probe lost: empty time histograms.
        r.sent
            .push(SentPath::test(4, 50, 0, [800_000, 1_000_000, 200_000]));
        assert!(r.sent[1].kernel_rtt.is_empty());
        let body = encode_report(&r).unwrap();
        let json = serde_json::to_vec(&r).unwrap();
        // An application result with empty maps and no latency reads back too.
        let app = AgentReport {
            app: Some(AppResult {
                target: "http://web".into(),
                error: None,
                stats: LoadStats::default(),
            }),
            ..r.clone()
        };
        let app_body = encode_report(&app).unwrap();
        let limit = app_body.len() as u64;
        let back = decode_report(&app_body, Some(REPORT_CONTENT_TYPE), None, limit).unwrap();
        assert_eq!(back, app);
        // Binary: no field names, numbers as varints.
        assert!(
            body.len() * 3 < json.len(),
            "{} of {}",
            body.len(),
            json.len()
        );
        let limit = body.len() as u64;
        let back = decode_report(&body, Some(REPORT_CONTENT_TYPE), None, limit).unwrap();
        assert_eq!(back, r);
        // JSON, plain or compressed, from agents of earlier versions.
        assert_eq!(decode_report(&json, None, None, 1 << 20).unwrap(), r);
        let zstd = zstd::bulk::compress(&json, 1).unwrap();
        let typed = Some("application/json; charset=utf-8");
        assert_eq!(
            decode_report(&zstd, typed, Some(REPORT_ENCODING), 1 << 20).unwrap(),
            r
        );
    }

    #[test]
    fn bad_bodies_are_refused_by_name() {
        let postcard = Some(REPORT_CONTENT_TYPE);
        // 64 MiB of zeros compress to a few KiB: refused at the limit, not inflated whole.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 1).unwrap();
        assert!(bomb.len() < 64 << 10);
        let err = decode_report(&bomb, None, Some(REPORT_ENCODING), 1 << 20).unwrap_err();
        assert!(
            matches!(err, ReportBodyError::TooLarge { limit: 1_048_576 }),
            "{err}"
        );
        let err = decode_report(b"{}", None, Some("gzip"), 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Content-Encoding \"gzip\" is not supported: send identity or zstd"
        );
        let err = decode_report(b"{}", Some("text/plain"), None, 1 << 20).unwrap_err();
        assert!(matches!(err, ReportBodyError::ContentType(_)), "{err}");
        let err = decode_report(b"not zstd", None, Some(REPORT_ENCODING), 1 << 20).unwrap_err();
        assert!(matches!(err, ReportBodyError::Compression(_)), "{err}");
        let err = decode_report(&[b'x'; 100], postcard, None, 99).unwrap_err();
        assert!(
            matches!(err, ReportBodyError::TooLarge { limit: 99 }),
            "{err}"
        );
        // Truncated or garbled binary is an error, never a panic or a huge allocation.
        let body = encode_report(&report()).unwrap();
        for cut in [0, 1, body.len() / 2, body.len() - 1] {
            let err = decode_report(&body[..cut], postcard, None, 1 << 20).unwrap_err();
            assert!(matches!(err, ReportBodyError::Postcard(_)), "{err}");
        }
        let huge_vec = [0x01, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode_report(&huge_vec, postcard, None, 1 << 20).is_err());
        // A JSON error names the field.
        let err = decode_report(br#"{"node": 3}"#, None, None, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("node"), "{err}");
    }
}
