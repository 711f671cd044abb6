//! A small in-memory Kubernetes API server behind a [`kube::Client`], for tests of the code
//! that talks to Kubernetes (the controller's backend, the CLI's `--kubeconfig` path): no
//! apiserver can run where the tests run (see docs/testing.md).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// An in-memory API server.
///
/// It serves what meshdoctor uses and nothing more: LIST (with an equality `labelSelector`;
/// watches ignore selectors: tests only add matching objects) and WATCH of registered
/// collections, GET, POST (create, 409 when it exists), PUT (replace, 409 on a stale
/// resourceVersion), DELETE, PATCH of the status subresource (the patch's `status` replaces
/// the object's, as a server-side apply by the only status manager would) and of whole
/// objects (a JSON merge patch: events, the leader's pod label), and the paths given to
/// [`FakeApiServer::proxy`] (a Service proxy). Every write is recorded for assertions.
/// Watches replay the changes after the resourceVersion they start from, then stream live
/// changes, so no event falls between a LIST and its WATCH.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<FakeState>>,
    changed: Arc<tokio::sync::Notify>,
}

/// One write the fake received.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: String,
    /// Path and query, e.g. `/apis/meshdoctor.io/v1beta1/netreaches/mesh/status?...`.
    pub uri: String,
    pub body: serde_json::Value,
}

/// Answers the requests under a path prefix: (method, the path after the prefix with its
/// query, the body) to (status code, JSON body).
type ProxyHandler =
    Arc<dyn Fn(&str, &str, &serde_json::Value) -> (u16, serde_json::Value) + Send + Sync>;

#[derive(Default)]
struct FakeState {
    rv: u64,
    collections: BTreeMap<String, Collection>,
    writes: Vec<Write>,
    proxies: Vec<(String, ProxyHandler)>,
}

#[derive(Default)]
struct Collection {
    list_kind: String,
    objects: BTreeMap<String, serde_json::Value>,
    /// (resourceVersion, watch event) of every change, for replays.
    log: Vec<(u64, serde_json::Value)>,
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<bytes::Bytes>>,
}

type FakeBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

impl FakeApiServer {
    /// A client whose requests this fake answers.
    pub fn client(&self) -> kube::Client {
        let fake = self.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let fake = fake.clone();
            async move { Ok::<_, std::convert::Infallible>(fake.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    /// Serves `path` (e.g. `/api/v1/namespaces/meshdoctor/pods`) as a collection of `list_kind`.
    pub fn collection(&self, path: &str, list_kind: &str) -> &Self {
        self.lock()
            .collections
            .entry(path.into())
            .or_default()
            .list_kind = list_kind.into();
        self
    }

    /// Answers every request under `prefix` (e.g. a Service's
    /// `/api/v1/namespaces/ns/services/name/proxy`) with `handler`, given the method, the rest
    /// of the path and query, and the JSON body (`null` when there is none).
    pub fn proxy(
        &self,
        prefix: &str,
        handler: impl Fn(&str, &str, &serde_json::Value) -> (u16, serde_json::Value)
        + Send
        + Sync
        + 'static,
    ) -> &Self {
        self.lock().proxies.push((prefix.into(), Arc::new(handler)));
        self
    }

    /// Adds or replaces an object (by `metadata.name`) in a collection, as another client would.
    pub fn apply(&self, path: &str, obj: impl serde::Serialize) {
        let obj = serde_json::to_value(obj).unwrap();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        self.lock().store(path, &name, obj);
        self.changed.notify_waiters();
    }

    /// Deletes an object, as another client would.
    pub fn delete(&self, path: &str, name: &str) {
        let mut state = self.lock();
        assert!(
            state.collections.contains_key(path),
            "registered collection"
        );
        state.remove(path, name);
    }

    /// An object as the fake holds it.
    pub fn get(&self, path: &str, name: &str) -> Option<serde_json::Value> {
        self.lock()
            .collections
            .get(path)?
            .objects
            .get(name)
            .cloned()
    }

    /// The writes so far.
    pub fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    /// Waits until `pred` holds for the writes, up to 10 s (then panics with them).
    pub async fn wait_writes(&self, what: &str, pred: impl Fn(&[Write]) -> bool) -> Vec<Write> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let changed = self.changed.notified();
            let writes = self.writes();
            if pred(&writes) {
                return writes;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("timed out waiting for {what}; writes: {writes:#?}");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Serves the fake over HTTP on a free port of 127.0.0.1 for as long as the runtime runs,
    /// for a program under test that reads a kubeconfig (`server: http://{addr}`).
    pub async fn serve(&self) -> std::net::SocketAddr {
        let fake = self.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let fake = fake.clone();
            async move { fake.handle(req).await.map(axum::body::Body::new) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    async fn handle<B>(&self, req: http::Request<B>) -> http::Response<FakeBody>
    where
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        use http_body_util::BodyExt as _;
        let method = req.method().as_str().to_string();
        let uri = req.uri().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let param = |key: &str| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let proxy = self.lock().proxies.iter().find_map(|(prefix, handler)| {
            let rest = path.strip_prefix(prefix.as_str())?;
            let rest = match query.is_empty() {
                true => rest.to_string(),
                false => format!("{rest}?{query}"),
            };
            Some((handler.clone(), rest))
        });
        if let Some((handler, rest)) = proxy {
            let (code, reply) = handler(&method, &rest, &body);
            return json_reply(code, reply);
        }
        let reply = {
            let mut state = self.lock();
            if method != "GET" {
                state.writes.push(Write {
                    method: method.clone(),
                    uri,
                    body: body.clone(),
                });
            }
            state.route(
                &method,
                &path,
                Query {
                    watch: param("watch").is_some(),
                    since: param("resourceVersion"),
                    selector: param("labelSelector"),
                },
                body,
            )
        };
        self.changed.notify_waiters();
        reply
    }
}

impl Collection {
    fn publish(&mut self, rv: u64, kind: &str, obj: serde_json::Value) {
        let event = serde_json::json!({ "type": kind, "object": obj });
        let line = bytes::Bytes::from(format!("{event}\n"));
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
        self.log.push((rv, event));
    }
}

impl FakeState {
    fn store(&mut self, path: &str, name: &str, mut obj: serde_json::Value) -> serde_json::Value {
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        let c = self.collections.entry(path.into()).or_default();
        let kind = if c.objects.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.objects.insert(name.into(), obj.clone());
        c.publish(rv, kind, obj.clone());
        obj
    }

    fn route(
        &mut self,
        method: &str,
        path: &str,
        query: Query,
        body: serde_json::Value,
    ) -> http::Response<FakeBody> {
        let Query {
            watch,
            since,
            selector,
        } = query;
        use http_body_util::BodyExt as _;
        let (collection, name, status) =
            match method == "POST" || self.collections.contains_key(path) {
                true => (path.to_string(), None, false),
                false => {
                    let (base, status) = match path.strip_suffix("/status") {
                        Some(base) => (base, true),
                        None => (path, false),
                    };
                    let (coll, name) = base.rsplit_once('/').unwrap_or((base, ""));
                    (coll.to_string(), Some(name.to_string()), status)
                }
            };
        let rv = self.rv;
        match (method, name) {
            ("GET", None) if watch => {
                let since: u64 = since.and_then(|s| s.parse().ok()).unwrap_or(0);
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let c = self.collections.entry(collection).or_default();
                for (_, event) in c.log.iter().filter(|(v, _)| *v > since) {
                    let _ = tx.send(bytes::Bytes::from(format!("{event}\n")));
                }
                c.watchers.push(tx);
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    let line = rx.recv().await?;
                    Some((Ok(http_body::Frame::data(line)), rx))
                });
                http::Response::new(http_body_util::StreamBody::new(stream).boxed())
            }
            ("GET", None) => {
                let c = self.collections.entry(collection).or_default();
                let items: Vec<_> = c
                    .objects
                    .values()
                    .filter(|o| selector.as_deref().is_none_or(|s| labels_match(o, s)))
                    .cloned()
                    .collect();
                json_reply(
                    200,
                    serde_json::json!({
                        "apiVersion": "v1", "kind": c.list_kind,
                        "metadata": { "resourceVersion": rv.to_string() },
                        "items": items,
                    }),
                )
            }
            ("GET", Some(name)) => match self.object(&collection, &name) {
                Some(obj) => json_reply(200, obj),
                None => not_found(&name),
            },
            ("POST", None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .or(body["metadata"]["generateName"].as_str())
                    .unwrap_or("unnamed")
                    .to_string();
                if self.object(&collection, &name).is_some() {
                    return status_reply(409, "AlreadyExists", &format!("{name} already exists"));
                }
                json_reply(201, self.store(&collection, &name, body))
            }
            ("PUT", Some(name)) => {
                let Some(current) = self.object(&collection, &name) else {
                    return not_found(&name);
                };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status_reply(409, "Conflict", "the object has been modified");
                }
                json_reply(200, self.store(&collection, &name, body))
            }
            ("PATCH", Some(name)) => {
                let Some(mut obj) = self.object(&collection, &name) else {
                    return not_found(&name);
                };
                if status {
                    obj["status"] = body["status"].clone();
                } else {
                    merge_patch(&mut obj, &body);
                }
                json_reply(200, self.store(&collection, &name, obj))
            }
            ("DELETE", Some(name)) => match self.remove(&collection, &name) {
                Some(obj) => json_reply(200, obj),
                None => not_found(&name),
            },
            _ => status_reply(405, "MethodNotAllowed", &format!("{method} {path}")),
        }
    }

    /// Removes an object and tells the watchers; `None` when there is none.
    fn remove(&mut self, collection: &str, name: &str) -> Option<serde_json::Value> {
        let mut obj = self.collections.get_mut(collection)?.objects.remove(name)?;
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        let c = self.collections.get_mut(collection)?;
        c.publish(rv, "DELETED", obj.clone());
        Some(obj)
    }

    fn object(&self, collection: &str, name: &str) -> Option<serde_json::Value> {
        self.collections.get(collection)?.objects.get(name).cloned()
    }
}

/// A JSON merge patch (RFC 7386), as the API server applies `application/merge-patch+json`:
/// objects merge key by key, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let Some(target) = target.as_object_mut() else {
        return;
    };
    for (key, value) in fields {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(
                target.entry(key.clone()).or_insert(serde_json::Value::Null),
                value,
            );
        }
    }
}

fn json_reply(code: u16, body: serde_json::Value) -> http::Response<FakeBody> {
    use http_body_util::BodyExt as _;
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn status_reply(code: u16, reason: &str, message: &str) -> http::Response<FakeBody> {
    json_reply(
        code,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "reason": reason, "message": message, "code": code,
        }),
    )
}

fn not_found(name: &str) -> http::Response<FakeBody> {
    status_reply(404, "NotFound", &format!("{name:?} not found"))
}

/// The query parameters the fake heeds.
struct Query {
    watch: bool,
    since: Option<String>,
    selector: Option<String>,
}

/// Whether `obj` carries every `key=value` of an equality label selector.
fn labels_match(obj: &serde_json::Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][key] == value
    })
}
