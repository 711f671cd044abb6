//! Who may call what on the API (docs/security.md). Three kinds of callers, each with its own
//! credential: an agent, which may register, poll plans and report for its own node only; an
//! admin, who may also write tasks; a reader, who may read reports, findings, agents and
//! tasks. Health is open; metrics too unless configured otherwise. A kind of caller without a
//! configured credential is open to anyone (the binary warns at start), so that a lab or a
//! laptop runs without ceremony and a deployment closes each door it configures; task writes
//! stay open only while neither an admin nor a reader token is configured.

use std::sync::Arc;

use axum::http::StatusCode;
use meshdoctor_ops::credential::{AGENT_PREFIX, NodeKey, same_secret};

use crate::kubernetes::token_review::Reviewer;

/// How agents prove their node.
pub enum AgentAuth {
    /// Anyone may act for any node.
    Open,
    /// Standalone: per-node credentials made with the controller's agent key.
    Key(NodeKey),
    /// Kubernetes: the agent pod's service-account token, which the API server verifies.
    ServiceAccount(Arc<Reviewer>),
}

/// The API's credentials.
pub struct Access {
    pub agents: AgentAuth,
    /// Task writes (and reads); `None`: anyone may write tasks.
    pub admin: Option<String>,
    /// Reads; `None`: anyone may read.
    pub reader: Option<String>,
    /// Whether `/metrics` needs the reader credential.
    pub metrics_need_reader: bool,
}

impl Access {
    /// No credential anywhere: every door open.
    pub fn open() -> Self {
        Self {
            agents: AgentAuth::Open,
            admin: None,
            reader: None,
            metrics_need_reader: false,
        }
    }

    /// The doors left open, for the start-up warning.
    pub fn open_doors(&self) -> Vec<&'static str> {
        let mut open = Vec::new();
        if matches!(self.agents, AgentAuth::Open) {
            open.push("agents (--agent-key-file or --agent-token-audience)");
        }
        if self.writes_open() {
            open.push("task writes (--admin-token-file)");
        }
        if self.reader.is_none() && self.admin.is_none() {
            open.push("reads (--reader-token-file)");
        }
        open
    }
}

impl Access {
    /// Task writes are open only while no client credential is configured at all: a reader
    /// token alone must not leave writes open while reads are closed.
    fn writes_open(&self) -> bool {
        self.admin.is_none() && self.reader.is_none()
    }
}

/// Who is calling, once their credential was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Agent(String),
    Admin,
    Reader,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Some agent: the node it acts for is known only once the body is read.
    AnyAgent,
    /// The agent of this node.
    Agent(&'a str),
    Admin,
    Reader,
    Metrics,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("this needs {0}: send it as `Authorization: Bearer <token>`")]
    Missing(&'static str),
    #[error("the credential is not valid here")]
    Invalid,
    #[error("the agent of node {caller:?} may not act for node {node:?}")]
    OtherNode { caller: String, node: String },
    #[error("this needs {0}, not the credential given")]
    Role(&'static str),
    #[error("cannot verify the agent's token now: {0}")]
    Unverifiable(String),
}

impl Denied {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing(_) | Self::Invalid => StatusCode::UNAUTHORIZED,
            Self::OtherNode { .. } | Self::Role(_) => StatusCode::FORBIDDEN,
            Self::Unverifiable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

const AGENT: &str = "an agent's credential";
const ADMIN: &str = "the admin credential";
const READER: &str = "the reader or admin credential";

impl Access {
    /// Who presents `token` (none: anonymous). A token that matches nothing configured is
    /// refused even where anonymous callers are welcome: a typo should not pass silently.
    pub async fn caller(&self, token: Option<&str>) -> Result<Caller, Denied> {
        let Some(token) = token else {
            return Ok(Caller::Anonymous);
        };
        if self.admin.as_deref().is_some_and(|a| same_secret(token, a)) {
            return Ok(Caller::Admin);
        }
        if self
            .reader
            .as_deref()
            .is_some_and(|r| same_secret(token, r))
        {
            return Ok(Caller::Reader);
        }
        match &self.agents {
            AgentAuth::Key(key) if token.starts_with(AGENT_PREFIX) => key
                .node_of(token)
                .map(|node| Caller::Agent(node.into()))
                .ok_or(Denied::Invalid),
            AgentAuth::ServiceAccount(reviewer) if !token.starts_with(AGENT_PREFIX) => {
                match reviewer.node_of(token).await {
                    Ok(Some(node)) => Ok(Caller::Agent(node)),
                    Ok(None) => Err(Denied::Invalid),
                    Err(e) => Err(Denied::Unverifiable(e.to_string())),
                }
            }
            _ => Err(Denied::Invalid),
        }
    }

    /// Whether `caller` may do what `need`s.
    pub fn allows(&self, caller: &Caller, need: Need<'_>) -> Result<(), Denied> {
        let reads_open = self.reader.is_none() && self.admin.is_none();
        match (need, caller) {
            (Need::AnyAgent | Need::Agent(_), Caller::Anonymous) => match self.agents {
                AgentAuth::Open => Ok(()),
                _ => Err(Denied::Missing(AGENT)),
            },
            (Need::AnyAgent, Caller::Agent(_)) => Ok(()),
            (Need::Agent(node), Caller::Agent(own)) if own == node => Ok(()),
            (Need::Agent(node), Caller::Agent(own)) => Err(Denied::OtherNode {
                caller: own.clone(),
                node: node.into(),
            }),
            (Need::AnyAgent | Need::Agent(_), _) => Err(Denied::Role(AGENT)),
            (Need::Admin, Caller::Admin) => Ok(()),
            (Need::Admin, Caller::Anonymous) if self.writes_open() => Ok(()),
            (Need::Admin, Caller::Anonymous) => Err(Denied::Missing(ADMIN)),
            (Need::Admin, _) => Err(Denied::Role(ADMIN)),
            (Need::Metrics, _) if !self.metrics_need_reader => Ok(()),
            (Need::Reader | Need::Metrics, Caller::Admin | Caller::Reader) => Ok(()),
            (Need::Reader | Need::Metrics, _) if reads_open => Ok(()),
            (Need::Reader | Need::Metrics, Caller::Anonymous) => Err(Denied::Missing(READER)),
            (Need::Reader | Need::Metrics, Caller::Agent(_)) => Err(Denied::Role(READER)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed() -> (Access, NodeKey) {
        let access = Access {
            agents: AgentAuth::Key(NodeKey::new(&[1; 32])),
            admin: Some("admin-secret".into()),
            reader: Some("reader-secret".into()),
            metrics_need_reader: false,
        };
        (access, NodeKey::new(&[1; 32]))
    }

    #[tokio::test]
    async fn callers_are_told_apart_by_their_credential() {
        let (access, key) = closed();
        let c = |t: &'static str| access.caller(Some(t));
        assert_eq!(c("admin-secret").await, Ok(Caller::Admin));
        assert_eq!(c("reader-secret").await, Ok(Caller::Reader));
        let cred = key.credential("node-1");
        assert_eq!(
            access.caller(Some(&cred)).await,
            Ok(Caller::Agent("node-1".into()))
        );
        assert_eq!(access.caller(None).await, Ok(Caller::Anonymous));
        for bad in ["admin-secreT", "", "md1:node-1:00", "reader"] {
            assert_eq!(
                access.caller(Some(bad)).await,
                Err(Denied::Invalid),
                "{bad}"
            );
        }
        let other_key = NodeKey::new(&[2; 32]).credential("node-1");
        assert_eq!(access.caller(Some(&other_key)).await, Err(Denied::Invalid));
    }

    #[test]
    fn each_route_takes_its_callers_only() {
        let (access, _) = closed();
        let agent = Caller::Agent("node-1".into());
        let ok = |c: &Caller, n| access.allows(c, n).is_ok();
        assert!(ok(&agent, Need::Agent("node-1")) && ok(&agent, Need::AnyAgent));
        assert_eq!(
            access.allows(&agent, Need::Agent("node-2")),
            Err(Denied::OtherNode {
                caller: "node-1".into(),
                node: "node-2".into()
            })
        );
        for c in [Caller::Admin, Caller::Reader] {
            assert_eq!(
                access.allows(&c, Need::Agent("node-1")),
                Err(Denied::Role(AGENT))
            );
        }
        assert_eq!(
            access.allows(&Caller::Anonymous, Need::AnyAgent),
            Err(Denied::Missing(AGENT))
        );
        assert!(ok(&Caller::Admin, Need::Admin));
        assert_eq!(
            access.allows(&Caller::Reader, Need::Admin),
            Err(Denied::Role(ADMIN))
        );
        assert_eq!(access.allows(&agent, Need::Admin), Err(Denied::Role(ADMIN)));
        assert!(ok(&Caller::Admin, Need::Reader) && ok(&Caller::Reader, Need::Reader));
        assert_eq!(
            access.allows(&agent, Need::Reader),
            Err(Denied::Role(READER))
        );
        assert_eq!(
            access.allows(&Caller::Anonymous, Need::Reader),
            Err(Denied::Missing(READER))
        );
        // Metrics stay open unless asked otherwise.
        assert!(ok(&Caller::Anonymous, Need::Metrics));
        let guarded = Access {
            metrics_need_reader: true,
            ..closed().0
        };
        assert!(guarded.allows(&Caller::Anonymous, Need::Metrics).is_err());
        assert!(guarded.allows(&Caller::Reader, Need::Metrics).is_ok());
    }

    #[test]
    fn doors_without_a_credential_are_open_and_said() {
        let open = Access::open();
        for need in [Need::AnyAgent, Need::Agent("x"), Need::Admin, Need::Reader] {
            assert!(open.allows(&Caller::Anonymous, need).is_ok(), "{need:?}");
        }
        assert_eq!(open.open_doors().len(), 3);
        // An admin token alone closes reads too: only the admin reads.
        let admin_only = Access {
            admin: Some("a".into()),
            ..Access::open()
        };
        assert!(admin_only.allows(&Caller::Anonymous, Need::Reader).is_err());
        assert_eq!(admin_only.open_doors().len(), 1);
        // A reader token alone closes writes too: nobody writes then.
        let reader_only = Access {
            reader: Some("r".into()),
            ..Access::open()
        };
        assert_eq!(
            reader_only.allows(&Caller::Anonymous, Need::Admin),
            Err(Denied::Missing(ADMIN))
        );
        assert_eq!(
            reader_only.allows(&Caller::Reader, Need::Admin),
            Err(Denied::Role(ADMIN))
        );
        assert_eq!(reader_only.open_doors().len(), 1);
        assert_eq!((Denied::Missing(ADMIN)).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            (Denied::Unverifiable("x".into())).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
