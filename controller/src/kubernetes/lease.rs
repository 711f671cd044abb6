//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! The controller runs with two replicas for availability, but rounds must be planned, joined
//! and published by one of them only: the one holding the Lease. [`run`] keeps trying to hold
//! it and publishes on a `watch` channel whether this replica leads; the rest of the controller
//! runs rounds only while that value is `true`, and marks its pod for the controller Service
//! ([`super::leader_label`]).
//!
//! The split is sans-IO: `decide` is a pure function from the Lease as read (or its absence)
//! to what to do, and `Elector::tick` is one GET-decide-write exchange with the apiserver.
//! Every write is a POST (create) or a PUT carrying the `resourceVersion` that was read, never a
//! blind write: when two candidates race, the apiserver accepts one and answers 409 to the
//! other, which re-reads the Lease and follows the winner.
//!
//! Safety rests on the leader stepping down before anyone else may take over. A follower takes
//! over once `renewTime + leaseDurationSeconds` has passed on its wall clock; the leader stops
//! leading `ttl` after it *sent* its last successful renewal (a monotonic deadline, checked
//! even while a request hangs), and the duration it writes is `ttl` rounded up to whole
//! seconds. So with node clocks in sync (well within `ttl`, as NTP keeps them), the old leader
//! is no longer leading when the new one starts. Clock skew between nodes eats into that
//! margin one for one.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};
use tokio::{
    sync::watch,
    time::{Instant, sleep_until, timeout_at},
};
use tracing::{debug, info, warn};

/// Where the Lease lives, who this replica is and how long a lease lasts.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the controller's own namespace).
    pub namespace: String,
    /// Name of the Lease, shared by every replica of the controller.
    pub name: String,
    /// This replica's identity written as `holderIdentity`; unique per replica and stable across
    /// restarts of the same pod (the pod name), so a restarted leader renews its own lease.
    pub identity: String,
    /// How long a lease lasts without renewal: the longest time the controller is leaderless
    /// after a leader dies without [`step_down`]. Written rounded up to whole seconds.
    pub ttl: Duration,
    /// How often the Lease is read and renewed; a fraction of `ttl` (`ttl / 3` is usual) so a
    /// leader survives a couple of failed renewals. Values not below `ttl` are replaced by
    /// `ttl / 3`, since a leader could not renew in time with them.
    pub renew_every: Duration,
}

/// Holds or follows the Lease forever, publishing on `leading` whether this replica leads.
///
/// Every `renew_every` it reads the Lease and creates, renews, takes over or follows it.
/// `leading` turns `true` after a successful write and `false` when the Lease is
/// held by another replica, or when `ttl` has passed since the last successful renewal was sent
/// (API errors, a hung request): a leader that cannot renew steps down before another replica
/// may take over. API errors are logged and retried at the next tick; a request taking longer
/// than `ttl` (or than the leader's remaining time) is abandoned. It never returns.
///
/// On shutdown, abort the task running this future, then call [`step_down`] with a clone of
/// the same sender so a follower takes over at once instead of after `ttl`.
pub async fn run(client: Client, cfg: LeaseConfig, leading: watch::Sender<bool>) {
    let renew_every = if cfg.renew_every < cfg.ttl {
        cfg.renew_every
    } else {
        warn!(renew_every = ?cfg.renew_every, ttl = ?cfg.ttl, "lease renewal interval not below its ttl, renewing every ttl/3");
        cfg.ttl / 3
    };
    let mut elector = Elector::new(client, cfg);
    loop {
        let at = Instant::now();
        let deadline = elector.deadline().filter(|&d| d > at);
        if deadline.is_none() {
            // Leadership lapsed while sleeping: step down before talking to the apiserver.
            publish(&leading, false);
        }
        // A leader must not outlive its deadline waiting for an answer; a follower waits at most
        // `ttl`, so a hung request does not keep it from taking over for long.
        let limit = deadline.unwrap_or(at + elector.cfg.ttl);
        let leader = timeout_at(limit, elector.tick(Timestamp::now(), at))
            .await
            .unwrap_or_else(|_| {
                warn!(lease = %elector.cfg.name, "lease request unanswered in time, not leading");
                false
            });
        publish(&leading, leader);
        let next = at + renew_every;
        let wake = match elector.deadline() {
            Some(d) if d > Instant::now() && d < next => d,
            _ => next,
        };
        sleep_until(wake).await;
    }
}

/// Releases the Lease if this replica holds it, so a follower takes over at its next tick
/// instead of waiting for the lease to expire.
///
/// Sets `leading` to `false` first, so nothing of this replica still acts as leader once
/// another one can. The task running [`run`] must be stopped before, or it would take the
/// Lease again. The release clears `holderIdentity` with a PUT carrying the `resourceVersion`
/// read: if the Lease changed in between, another replica took it and nothing is written.
/// Returns whether a lease was released.
pub async fn step_down(
    client: Client,
    cfg: &LeaseConfig,
    leading: &watch::Sender<bool>,
) -> Result<bool, kube::Error> {
    publish(leading, false);
    let api = Api::<Lease>::namespaced(client, &cfg.namespace);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(false);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => {
            info!(lease = %cfg.name, "released the lease");
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.is_conflict() => {
            debug!(lease = %cfg.name, "lease changed before its release: no longer ours");
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// Sets `leading`, notifying readers and logging only on a change.
fn publish(leading: &watch::Sender<bool>, leader: bool) {
    leading.send_if_modified(|current| {
        if *current == leader {
            return false;
        }
        *current = leader;
        if leader {
            info!("leading");
        } else {
            info!("not leading");
        }
        true
    });
}

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    /// No Lease yet: create it, held by me.
    Create,
    /// I hold it: renew it.
    Renew,
    /// Its holder let it expire, or released it: take it over.
    TakeOver { previous: Option<String> },
    /// Another replica holds it until `expires_at`: leave it alone.
    Follow {
        holder: String,
        expires_at: Timestamp,
    },
}

/// Decides what to do with `lease` (`None` when it does not exist) as `me`, at `now`.
///
/// A lease held by me is renewed, even if expired: nobody took it, and the `resourceVersion`
/// of the write stops me if someone does meanwhile. A lease held by another replica is followed
/// while `renewTime + leaseDurationSeconds > now`, and taken over from that instant on, or at
/// once if it has no holder (released) or no `renewTime`. `ttl` stands in for a missing
/// `leaseDurationSeconds`.
fn decide(lease: Option<&Lease>, me: &str, now: Timestamp, ttl: Duration) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    let Some(holder) = holder else {
        return Decision::TakeOver { previous: None };
    };
    if holder == me {
        return Decision::Renew;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .map_or_else(|| duration_seconds(ttl), i64::from);
    let expires_at = spec.and_then(|s| s.renew_time.as_ref()).map(|renewed| {
        renewed
            .0
            .checked_add(SignedDuration::from_secs(duration))
            .unwrap_or(Timestamp::MAX)
    });
    match expires_at {
        Some(expires_at) if expires_at > now => Decision::Follow {
            holder: holder.to_owned(),
            expires_at,
        },
        _ => Decision::TakeOver {
            previous: Some(holder.to_owned()),
        },
    }
}

/// `ttl` in whole seconds, rounded up so followers never wait less than the leader holds on.
fn duration_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The Lease to write for `decision` (`read` is the Lease as read), `None` when following.
fn claim(
    read: Option<&Lease>,
    decision: &Decision,
    cfg: &LeaseConfig,
    now: Timestamp,
) -> Option<Lease> {
    let mut lease = match (decision, read) {
        (Decision::Follow { .. }, _) => return None,
        (Decision::Create, _) | (_, None) => Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
        },
        // The read object keeps its resourceVersion: the write fails if the Lease changed.
        (_, Some(read)) => read.clone(),
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds =
        Some(i32::try_from(duration_seconds(cfg.ttl)).unwrap_or(i32::MAX));
    spec.renew_time = Some(MicroTime(now));
    match decision {
        Decision::Create => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        Decision::TakeOver { .. } => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        Decision::Renew | Decision::Follow { .. } => {}
    }
    Some(lease)
}

/// Outcome of one read-decide-write attempt.
enum Attempt {
    /// The Lease is mine until `ttl` after the attempt started.
    Holding,
    /// Another replica holds it.
    Following,
    /// The write lost a race (409): read again.
    Raced,
}

/// One replica's view of the election: the IO half around [`decide`].
struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// When the last successful create/renewal/take-over was sent; leadership lasts `ttl` from
    /// there.
    renewed_at: Option<Instant>,
}

impl Elector {
    fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            renewed_at: None,
        }
    }

    /// When leadership runs out unless renewed; `None` when following.
    fn deadline(&self) -> Option<Instant> {
        self.renewed_at.map(|at| at + self.cfg.ttl)
    }

    /// Reads the Lease and acts on it once (re-reading once after losing a race), with `now` the
    /// wall clock written to the Lease and `at` the same moment on the monotonic clock. Returns
    /// whether this replica leads.
    async fn tick(&mut self, now: Timestamp, at: Instant) -> bool {
        for _ in 0..2 {
            match self.attempt(now).await {
                Ok(Attempt::Holding) => {
                    self.renewed_at = Some(at);
                    return true;
                }
                Ok(Attempt::Following) => {
                    self.renewed_at = None;
                    return false;
                }
                Ok(Attempt::Raced) => {
                    debug!(lease = %self.cfg.name, "lost a race for the lease, reading it again");
                }
                Err(err) => {
                    warn!(lease = %self.cfg.name, error = %err, "lease read or write failed");
                    break;
                }
            }
        }
        self.deadline().is_some_and(|deadline| at < deadline)
    }

    async fn attempt(&self, now: Timestamp) -> Result<Attempt, kube::Error> {
        let read = self.api.get_opt(&self.cfg.name).await?;
        let decision = decide(read.as_ref(), &self.cfg.identity, now, self.cfg.ttl);
        let Some(lease) = claim(read.as_ref(), &decision, &self.cfg, now) else {
            if let Decision::Follow { holder, expires_at } = &decision {
                debug!(lease = %self.cfg.name, %holder, %expires_at, "following");
            }
            return Ok(Attempt::Following);
        };
        let pp = PostParams::default();
        let written = match &decision {
            Decision::Create => self.api.create(&pp, &lease).await,
            _ => self.api.replace(&self.cfg.name, &pp, &lease).await,
        };
        match written {
            Ok(lease) => {
                if let Decision::TakeOver { previous } = &decision {
                    info!(
                        lease = %self.cfg.name,
                        previous = previous.as_deref().unwrap_or("nobody"),
                        version = lease.metadata.resource_version.as_deref().unwrap_or(""),
                        "took over the lease",
                    );
                }
                Ok(Attempt::Holding)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(Attempt::Raced)
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::{self, Handle, SendResponse};

    use super::*;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/meshdoctor/leases";
    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/meshdoctor/leases/meshdoctor";
    const TTL: Duration = Duration::from_secs(15);

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            namespace: "meshdoctor".into(),
            name: "meshdoctor".into(),
            identity: "me".into(),
            ttl: TTL,
            renew_every: TTL / 3,
        }
    }

    fn ts(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn micro(t: Timestamp) -> String {
        serde_json::to_value(MicroTime(t))
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The Lease as the apiserver stores it: `holder` renewed it at `renewed` (seconds after
    /// [`ts`]'s origin) for 15 s, `transitions` times taken over, at `version`.
    fn lease_json(holder: Option<&str>, renewed: i64, transitions: i32, version: &str) -> Value {
        let mut spec = json!({
            "leaseDurationSeconds": 15,
            "acquireTime": micro(ts(0)),
            "renewTime": micro(ts(renewed)),
            "leaseTransitions": transitions,
        });
        if let Some(holder) = holder {
            spec["holderIdentity"] = json!(holder);
        }
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "meshdoctor", "namespace": "meshdoctor", "resourceVersion": version},
            "spec": spec,
        })
    }

    fn lease(holder: Option<&str>, renewed: i64, transitions: i32) -> Lease {
        serde_json::from_value(lease_json(holder, renewed, transitions, "1")).unwrap()
    }

    // --- decide ---

    #[test]
    fn absent_lease_is_created() {
        assert_eq!(decide(None, "me", ts(0), TTL), Decision::Create);
    }

    #[test]
    fn my_lease_is_renewed_even_expired() {
        let mine = lease(Some("me"), 0, 3);
        assert_eq!(decide(Some(&mine), "me", ts(1), TTL), Decision::Renew);
        assert_eq!(decide(Some(&mine), "me", ts(100), TTL), Decision::Renew);
    }

    #[test]
    fn fresh_lease_of_another_is_followed() {
        let theirs = lease(Some("other"), 0, 0);
        assert_eq!(
            decide(Some(&theirs), "me", ts(10), TTL),
            Decision::Follow {
                holder: "other".into(),
                expires_at: ts(15)
            }
        );
    }

    #[test]
    fn lease_of_another_expires_at_renew_time_plus_duration() {
        let theirs = lease(Some("other"), 0, 0);
        let just_before = ts(15).checked_sub(SignedDuration::from_micros(1)).unwrap();
        assert!(matches!(
            decide(Some(&theirs), "me", just_before, TTL),
            Decision::Follow { .. }
        ));
        let take_over = Decision::TakeOver {
            previous: Some("other".into()),
        };
        assert_eq!(decide(Some(&theirs), "me", ts(15), TTL), take_over);
        assert_eq!(decide(Some(&theirs), "me", ts(60), TTL), take_over);
    }

    #[test]
    fn released_or_holderless_lease_is_taken_over() {
        let released = lease(None, 0, 2);
        let take_over = Decision::TakeOver { previous: None };
        assert_eq!(decide(Some(&released), "me", ts(1), TTL), take_over);
        let empty = lease(Some(""), 0, 2);
        assert_eq!(decide(Some(&empty), "me", ts(1), TTL), take_over);
        let no_spec = Lease::default();
        assert_eq!(decide(Some(&no_spec), "me", ts(1), TTL), take_over);
    }

    #[test]
    fn lease_never_renewed_is_taken_over() {
        let mut theirs = lease(Some("other"), 0, 0);
        theirs.spec.as_mut().unwrap().renew_time = None;
        assert_eq!(
            decide(Some(&theirs), "me", ts(0), TTL),
            Decision::TakeOver {
                previous: Some("other".into())
            }
        );
    }

    #[test]
    fn missing_duration_falls_back_to_my_ttl() {
        let mut theirs = lease(Some("other"), 0, 0);
        theirs.spec.as_mut().unwrap().lease_duration_seconds = None;
        let ttl = Duration::from_millis(30_500);
        assert_eq!(
            decide(Some(&theirs), "me", ts(30), ttl),
            Decision::Follow {
                holder: "other".into(),
                expires_at: ts(31)
            }
        );
    }

    #[test]
    fn claims_write_holder_times_and_transitions() {
        let created = claim(None, &Decision::Create, &cfg(), ts(5)).unwrap();
        let spec = created.spec.unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("meshdoctor"));
        assert_eq!(created.metadata.resource_version, None);
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(5))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(5))));
        assert_eq!(spec.lease_transitions, Some(0));

        let read = lease(Some("me"), 0, 4);
        let renewed = claim(Some(&read), &Decision::Renew, &cfg(), ts(5)).unwrap();
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("1"));
        let spec = renewed.spec.unwrap();
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(0))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(5))));
        assert_eq!(spec.lease_transitions, Some(4));

        let read = lease(Some("other"), 0, 4);
        let take_over = Decision::TakeOver {
            previous: Some("other".into()),
        };
        let spec = claim(Some(&read), &take_over, &cfg(), ts(20))
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(20))));
        assert_eq!(spec.lease_transitions, Some(5));

        let sub_second = LeaseConfig {
            ttl: Duration::from_millis(1_200),
            ..cfg()
        };
        let spec = claim(None, &Decision::Create, &sub_second, ts(0))
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.lease_duration_seconds, Some(2));
    }

    // --- the mock apiserver ---

    type ApiServer = Handle<Request<Body>, Response<Body>>;

    fn mock_client() -> (Client, ApiServer) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
    }

    /// Takes the next request, asserting its method and path; returns its JSON body (`Null`
    /// when empty) and the reply handle.
    async fn expect(
        server: &mut ApiServer,
        method: Method,
        path: &str,
    ) -> (Value, SendResponse<Response<Body>>) {
        let (request, send) = pin!(server).next_request().await.expect("no request made");
        assert_eq!(request.method(), method);
        assert_eq!(request.uri().path(), path);
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (body, send)
    }

    /// Expects a request whose body the test does not look at, and answers it.
    async fn answer(server: &mut ApiServer, method: Method, path: &str, code: u16, body: &Value) {
        let (_, send) = expect(server, method, path).await;
        reply(send, code, body);
    }

    /// Expects the GET of the Lease, and answers it.
    async fn answer_get(server: &mut ApiServer, code: u16, body: &Value) {
        answer(server, Method::GET, PATH, code, body).await;
    }

    fn reply(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
        let response = Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap();
        send.send_response(response);
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": reason})
    }

    /// The apiserver's answer to a write: the body with a new resourceVersion.
    fn stored(mut body: Value, version: &str) -> Value {
        body["metadata"]["resourceVersion"] = json!(version);
        body
    }

    fn elector(client: Client) -> Elector {
        Elector::new(client, cfg())
    }

    // --- one tick against the mock apiserver ---

    #[tokio::test]
    async fn absent_lease_is_created_and_leads() {
        let (client, mut server) = mock_client();
        let apiserver = tokio::spawn(async move {
            answer_get(&mut server, 404, &status(404, "NotFound")).await;
            let (body, send) = expect(&mut server, Method::POST, LEASES).await;
            assert_eq!(body["metadata"]["name"], "meshdoctor");
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
            assert_eq!(body["spec"]["leaseTransitions"], 0);
            assert_eq!(body["spec"]["acquireTime"], micro(ts(0)));
            assert_eq!(body["spec"]["renewTime"], micro(ts(0)));
            reply(send, 201, &stored(body, "1"));
        });
        let mut elector = elector(client);
        assert!(elector.tick(ts(0), Instant::now()).await);
        apiserver.await.unwrap();
    }

    #[tokio::test]
    async fn fresh_lease_of_another_is_followed_without_writing() {
        let (client, mut server) = mock_client();
        let apiserver = tokio::spawn(async move {
            answer_get(&mut server, 200, &lease_json(Some("other"), 0, 0, "8")).await;
            server
        });
        let mut elector = elector(client);
        assert!(!elector.tick(ts(10), Instant::now()).await);
        assert_eq!(elector.deadline(), None);
        // The tick made exactly one request: the handle sees no other.
        let mut server = apiserver.await.unwrap();
        drop(elector);
        assert!(pin!(&mut server).next_request().await.is_none());
    }

    #[tokio::test]
    async fn expired_lease_of_another_is_taken_over_with_its_resource_version() {
        let (client, mut server) = mock_client();
        let apiserver = tokio::spawn(async move {
            answer_get(&mut server, 200, &lease_json(Some("other"), 0, 2, "8")).await;
            let (body, send) = expect(&mut server, Method::PUT, PATH).await;
            assert_eq!(body["metadata"]["resourceVersion"], "8");
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseTransitions"], 3);
            assert_eq!(body["spec"]["acquireTime"], micro(ts(20)));
            assert_eq!(body["spec"]["renewTime"], micro(ts(20)));
            assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
            reply(send, 200, &stored(body, "9"));
        });
        let mut elector = elector(client);
        assert!(elector.tick(ts(20), Instant::now()).await);
        apiserver.await.unwrap();
    }

    #[tokio::test]
    async fn take_over_lost_to_another_candidate_rereads_and_follows() {
        let (client, mut server) = mock_client();
        let apiserver = tokio::spawn(async move {
            answer_get(&mut server, 200, &lease_json(Some("other"), 0, 2, "8")).await;
            let (body, send) = expect(&mut server, Method::PUT, PATH).await;
            assert_eq!(body["metadata"]["resourceVersion"], "8");
            reply(send, 409, &status(409, "Conflict"));
            answer_get(&mut server, 200, &lease_json(Some("third"), 20, 3, "9")).await;
        });
        let mut elector = elector(client);
        assert!(!elector.tick(ts(20), Instant::now()).await);
        apiserver.await.unwrap();
    }

    #[tokio::test]
    async fn create_lost_to_another_candidate_rereads_and_follows() {
        let (client, mut server) = mock_client();
        let apiserver = tokio::spawn(async move {
            answer_get(&mut server, 404, &status(404, "NotFound")).await;
            answer(
                &mut server,
                Method::POST,
                LEASES,
                409,
                &status(409, "AlreadyExists"),
            )
            .await;
            answer_get(&mut server, 200, &lease_json(Some("other"), 0, 0, "1")).await;
        });
        let mut elector = elector(client);
        assert!(!elector.tick(ts(0), Instant::now()).await);
        apiserver.await.unwrap();
    }

    #[tokio::test]
    async fn leader_steps_down_when_renewals_fail_for_the_ttl() {
        let (client, mut server) = mock_client();
        let apiserver = tokio::spawn(async move {
            // Renewed at ts(0), then the apiserver fails: GET, then PUT, then GET again.
            answer_get(&mut server, 200, &lease_json(Some("me"), -5, 0, "4")).await;
            let (body, send) = expect(&mut server, Method::PUT, PATH).await;
            assert_eq!(body["metadata"]["resourceVersion"], "4");
            assert_eq!(body["spec"]["renewTime"], micro(ts(0)));
            reply(send, 200, &stored(body, "5"));
            answer_get(&mut server, 500, &status(500, "InternalError")).await;
            answer_get(&mut server, 200, &lease_json(Some("me"), 0, 0, "5")).await;
            answer(
                &mut server,
                Method::PUT,
                PATH,
                500,
                &status(500, "InternalError"),
            )
            .await;
            answer_get(&mut server, 500, &status(500, "InternalError")).await;
        });
        let mut elector = elector(client);
        let start = Instant::now();
        assert!(elector.tick(ts(0), start).await);
        assert_eq!(elector.deadline(), Some(start + TTL));
        assert!(elector.tick(ts(5), start + TTL / 3).await);
        assert!(elector.tick(ts(10), start + TTL * 2 / 3).await);
        assert!(!elector.tick(ts(15), start + TTL).await);
        apiserver.await.unwrap();
    }

    #[tokio::test]
    async fn step_down_clears_my_holder() {
        let (client, mut server) = mock_client();
        let apiserver = tokio::spawn(async move {
            answer_get(&mut server, 200, &lease_json(Some("me"), 0, 3, "7")).await;
            let (body, send) = expect(&mut server, Method::PUT, PATH).await;
            assert_eq!(body["metadata"]["resourceVersion"], "7");
            assert_eq!(body["spec"].get("holderIdentity"), None);
            assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
            assert_eq!(body["spec"]["leaseTransitions"], 3);
            reply(send, 200, &stored(body, "8"));
        });
        let (leading, watching) = watch::channel(true);
        assert!(step_down(client, &cfg(), &leading).await.unwrap());
        assert!(!*watching.borrow());
        apiserver.await.unwrap();
    }

    #[tokio::test]
    async fn step_down_leaves_a_lease_of_another_alone() {
        let (client, mut server) = mock_client();
        let apiserver = tokio::spawn(async move {
            answer_get(&mut server, 200, &lease_json(Some("other"), 0, 3, "7")).await;
        });
        let (leading, _watching) = watch::channel(false);
        assert!(!step_down(client, &cfg(), &leading).await.unwrap());
        apiserver.await.unwrap();
    }

    // --- the loop, on tokio's paused clock ---

    #[tokio::test(start_paused = true)]
    async fn run_leads_then_steps_down_when_a_renewal_hangs() {
        let (client, mut server) = mock_client();
        let (leading, mut watching) = watch::channel(false);
        let elector = tokio::spawn(run(client, cfg(), leading));

        answer_get(&mut server, 404, &status(404, "NotFound")).await;
        let (body, send) = expect(&mut server, Method::POST, LEASES).await;
        let created = Instant::now();
        reply(send, 201, &stored(body, "1"));
        watching.changed().await.unwrap();
        assert!(*watching.borrow_and_update());

        // The next renewal is a read that never gets an answer.
        let (_, hanging) = expect(&mut server, Method::GET, PATH).await;
        assert_eq!(Instant::now(), created + TTL / 3);
        watching.changed().await.unwrap();
        assert!(!*watching.borrow_and_update());
        assert_eq!(Instant::now(), created + TTL);

        elector.abort();
        drop(hanging);
    }
}
