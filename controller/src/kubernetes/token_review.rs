//! Agents' identity in Kubernetes: each agent presents its pod's projected service-account
//! token (audience-bound, rotated by the kubelet), and the controller asks the API server
//! whose it is with a TokenReview. The review says the service account, which must be the
//! agents', and the node the pod runs on (the `authentication.kubernetes.io/node-name` extra
//! that Kubernetes >= 1.30 puts in bound tokens): the only node that agent may act for.
//!
//! Verdicts are kept for a minute (a plan poll and a report do not each cost a review) and
//! reviews run a few at a time, so a flood of made-up tokens cannot flood the API server. A
//! token whose own claims (read without their signature, which the API server checks) rule it
//! out costs no review at all: another audience or subject, or expired. A request waits a few
//! seconds at most for a review and is then answered 503 (agents retry), so made-up tokens
//! shaped like an agent's can delay agents, not hold them.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};
use tokio::sync::Semaphore;

/// The extra a bound service-account token's review carries the pod's node in.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// How long an accepted token is trusted without another review.
const TRUST_FOR: Duration = Duration::from_secs(60);
/// How long a refused token stays refused without another review.
const REFUSE_FOR: Duration = Duration::from_secs(10);
/// Verdicts kept; beyond, the expired go, and if none has, all.
const MAX_VERDICTS: usize = 65_536;
/// Reviews in flight at once.
const CONCURRENT_REVIEWS: usize = 8;
/// The longest a request waits for its turn to be reviewed.
const REVIEW_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("TokenReview: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "the API server accepted the token of {user} but names no node \
         ({NODE_NAME_EXTRA}): agents' identities need Kubernetes >= 1.30"
    )]
    NoNodeName { user: String },
    #[error(
        "{CONCURRENT_REVIEWS} token reviews are running and none finished within \
         {REVIEW_WAIT:?}; try again"
    )]
    Busy,
}

/// Reviews agents' tokens.
pub struct Reviewer {
    api: Api<TokenReview>,
    audience: String,
    /// `system:serviceaccount:<namespace>:<name>` of the agents.
    user: String,
    /// By the token's SHA-256: tokens themselves are not kept.
    verdicts: Mutex<HashMap<Vec<u8>, Verdict>>,
    reviews: Semaphore,
}

#[derive(Clone)]
struct Verdict {
    node: Option<String>,
    until: Instant,
}

impl Reviewer {
    /// Reviews tokens for `audience`, accepting those of service account `name` in `namespace`.
    pub fn new(client: Client, audience: &str, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::all(client),
            audience: audience.into(),
            user: format!("system:serviceaccount:{namespace}:{name}"),
            verdicts: Mutex::new(HashMap::new()),
            reviews: Semaphore::new(CONCURRENT_REVIEWS),
        }
    }

    /// The node whose agent holds `token`; `None` when the token is not an agent's.
    pub async fn node_of(&self, token: &str) -> Result<Option<String>, ReviewError> {
        // A JWT has three parts; anything else is refused without asking, as is a token whose
        // claims rule it out.
        if token.split('.').count() != 3 || self.ruled_out(token, crate::now_ms() / 1000) {
            return Ok(None);
        }
        let key = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .to_vec();
        if let Some(v) = self.kept(&key) {
            return Ok(v);
        }
        let _turn = tokio::time::timeout(REVIEW_WAIT, self.reviews.acquire())
            .await
            .map_err(|_| ReviewError::Busy)?;
        if let Some(v) = self.kept(&key) {
            return Ok(v);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = self.api.create(&PostParams::default(), &review).await?;
        let node = self.judge(answer)?;
        let until = Instant::now()
            + if node.is_some() {
                TRUST_FOR
            } else {
                REFUSE_FOR
            };
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if verdicts.len() >= MAX_VERDICTS {
            let now = Instant::now();
            verdicts.retain(|_, v| v.until > now);
            if verdicts.len() >= MAX_VERDICTS {
                verdicts.clear();
            }
        }
        verdicts.insert(
            key,
            Verdict {
                node: node.clone(),
                until,
            },
        );
        Ok(node)
    }

    /// Whether a token's own claims, read without checking their signature, already rule it
    /// out: not for our audience, expired (at `now_s`) or of another subject than the agents'
    /// account. Checking costs a base64 and a JSON decode; a review costs the API server.
    fn ruled_out(&self, token: &str, now_s: u64) -> bool {
        use base64::Engine as _;
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Audience {
            One(String),
            Many(Vec<String>),
        }
        #[derive(serde::Deserialize)]
        struct Claims {
            aud: Option<Audience>,
            exp: Option<u64>,
            sub: Option<String>,
        }
        let Some(payload) = token.split('.').nth(1) else {
            return true;
        };
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let Ok(json) = engine.decode(payload.trim_end_matches('=')) else {
            return true;
        };
        let Ok(claims) = serde_json::from_slice::<Claims>(&json) else {
            return true;
        };
        let for_us = match &claims.aud {
            Some(Audience::One(a)) => *a == self.audience,
            Some(Audience::Many(all)) => all.contains(&self.audience),
            None => false,
        };
        !for_us
            || claims.exp.is_none_or(|exp| exp <= now_s)
            || claims.sub != Some(self.user.clone())
    }

    fn kept(&self, key: &[u8]) -> Option<Option<String>> {
        let verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        verdicts
            .get(key)
            .filter(|v| v.until > Instant::now())
            .map(|v| v.node.clone())
    }

    /// The node of an answered review: authenticated, for our audience, the agents' account.
    fn judge(&self, review: TokenReview) -> Result<Option<String>, ReviewError> {
        let Some(status) = review.status else {
            return Ok(None);
        };
        // No audiences in the answer means the API server's own: not a token for us.
        let for_us = status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience));
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if status.authenticated != Some(true) || !for_us || username != self.user {
            return Ok(None);
        }
        let node = user
            .extra
            .and_then(|mut extra| extra.remove(NODE_NAME_EXTRA))
            .and_then(|names| names.into_iter().next())
            .filter(|n| !n.is_empty());
        match node {
            Some(node) => Ok(Some(node)),
            None => Err(ReviewError::NoNodeName { user: username }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use meshdoctor_fake_apiserver::FakeApiServer;
    use serde_json::json;

    use super::*;

    const AGENTS: &str = "system:serviceaccount:meshdoctor:meshdoctor-agent";

    /// A token shaped like a bound service-account token: its claims, and as its signature
    /// part the name the fake API server knows it by.
    fn jwt_with(name: &str, aud: &str, sub: &str, exp: u64) -> String {
        use base64::Engine as _;
        let claims = json!({"aud": [aud], "sub": sub, "exp": exp, "iss": "https://kubernetes"});
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.{name}",
            engine.encode(claims.to_string())
        )
    }

    /// [`jwt_with`] for the agents' account and our audience, valid for an hour.
    fn jwt(name: &str) -> String {
        jwt_with(name, "meshdoctor", AGENTS, crate::now_ms() / 1000 + 3600)
    }

    /// An API server that knows three tokens: node-1's agent, another account's, and one
    /// for another audience; it counts the reviews it answers.
    fn api_server() -> (FakeApiServer, Arc<AtomicUsize>) {
        let fake = FakeApiServer::default();
        let reviews = Arc::new(AtomicUsize::new(0));
        let counted = reviews.clone();
        fake.proxy(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            move |method, _, body| {
                assert_eq!(method, "POST");
                counted.fetch_add(1, Ordering::SeqCst);
                let audiences = &body["spec"]["audiences"];
                let token = body["spec"]["token"].as_str().unwrap();
                let status = match token.rsplit('.').next().unwrap() {
                    "node-1" => json!({"authenticated": true, "audiences": audiences,
                        "user": {"username": AGENTS,
                                 "extra": {NODE_NAME_EXTRA: ["node-1"]}}}),
                    "old-apiserver" => json!({"authenticated": true, "audiences": audiences,
                        "user": {"username": AGENTS}}),
                    // An API server token of the agents' account: no audience of ours.
                    "api-audience" => json!({"authenticated": true,
                        "user": {"username": AGENTS,
                                 "extra": {NODE_NAME_EXTRA: ["node-1"]}}}),
                    "other-account" => json!({"authenticated": true, "audiences": audiences,
                        "user": {"username": "system:serviceaccount:default:default",
                                 "extra": {NODE_NAME_EXTRA: ["node-1"]}}}),
                    "other-audience" => json!({"authenticated": true, "audiences": ["api"],
                        "user": {"username": AGENTS,
                                 "extra": {NODE_NAME_EXTRA: ["node-1"]}}}),
                    _ => json!({"authenticated": false, "error": "invalid bearer token"}),
                };
                let review = json!({"apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview", "spec": body["spec"], "status": status});
                (201, review)
            },
        );
        (fake, reviews)
    }

    #[tokio::test]
    async fn only_the_agents_account_names_a_node_and_verdicts_are_kept() {
        let (fake, reviews) = api_server();
        let r = Reviewer::new(
            fake.client(),
            "meshdoctor",
            "meshdoctor",
            "meshdoctor-agent",
        );
        assert_eq!(
            r.node_of(&jwt("node-1")).await.unwrap().as_deref(),
            Some("node-1")
        );
        assert_eq!(
            r.node_of(&jwt("node-1")).await.unwrap().as_deref(),
            Some("node-1")
        );
        assert_eq!(
            reviews.load(Ordering::SeqCst),
            1,
            "the verdict was not kept"
        );
        // Claims that say agent, a review that says otherwise: the review decides.
        for refused in ["other-account", "other-audience", "api-audience", "forged"] {
            assert_eq!(r.node_of(&jwt(refused)).await.unwrap(), None, "{refused}");
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 5);
        // Refused without a review: not a JWT, claims that are not JSON, another audience,
        // another subject, expired.
        let now = crate::now_ms() / 1000;
        for refused in [
            "md1:node-1:00".to_string(),
            "a.b.c".to_string(),
            jwt_with(
                "node-1",
                "https://kubernetes.default.svc",
                AGENTS,
                now + 3600,
            ),
            jwt_with(
                "node-1",
                "meshdoctor",
                "system:serviceaccount:default:default",
                now + 60,
            ),
            jwt_with("node-1", "meshdoctor", AGENTS, now - 1),
        ] {
            assert_eq!(r.node_of(&refused).await.unwrap(), None, "{refused}");
        }
        assert_eq!(
            reviews.load(Ordering::SeqCst),
            5,
            "a ruled-out token was reviewed"
        );
        let e = r
            .node_of(&jwt("old-apiserver"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(NODE_NAME_EXTRA) && e.contains("1.30"), "{e}");
    }

    /// The API's access with reviewed agents: node-1's token acts for node-1 only, a
    /// standalone credential is no credential here, and a review the API server cannot answer
    /// is a 503 (try again), not a 401.
    #[tokio::test]
    async fn reviewed_agents_act_for_their_pods_node() {
        use crate::access::{Access, AgentAuth, Caller, Denied, Need};
        let (fake, _) = api_server();
        let reviewer = Reviewer::new(
            fake.client(),
            "meshdoctor",
            "meshdoctor",
            "meshdoctor-agent",
        );
        let access = Access {
            agents: AgentAuth::ServiceAccount(Arc::new(reviewer)),
            ..Access::open()
        };
        let caller = access.caller(Some(&jwt("node-1"))).await.unwrap();
        assert_eq!(caller, Caller::Agent("node-1".into()));
        assert!(access.allows(&caller, Need::Agent("node-1")).is_ok());
        assert!(matches!(
            access.allows(&caller, Need::Agent("node-2")),
            Err(Denied::OtherNode { .. })
        ));
        let key = meshdoctor_ops::credential::NodeKey::new(&[1; 32]).credential("node-1");
        assert_eq!(access.caller(Some(&key)).await, Err(Denied::Invalid));
        assert_eq!(
            access.caller(Some(&jwt("forged"))).await,
            Err(Denied::Invalid)
        );
        let failing = FakeApiServer::default();
        failing.proxy("/apis/authentication.k8s.io/v1/tokenreviews", |_, _, _| {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
            (500, status)
        });
        let unanswered = Reviewer::new(
            failing.client(),
            "meshdoctor",
            "meshdoctor",
            "meshdoctor-agent",
        );
        let access = Access {
            agents: AgentAuth::ServiceAccount(Arc::new(unanswered)),
            ..Access::open()
        };
        let e = access.caller(Some(&jwt("node-1"))).await.unwrap_err();
        assert_eq!(
            e.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "{e}"
        );
    }
}
