//! The controller, reached one of two ways: its HTTP API directly (the standalone controller,
//! or a port-forward), or through a kubeconfig's API server. In Kubernetes the reads go
//! through the API server's proxy to the controller Service (the leader is the only Ready
//! replica behind it) and `check`'s tasks are NetReach objects, which is all the RBAC a user
//! needs (deploy/base/cli-rbac.yaml). Every error names where it was sent and carries the
//! controller's or the API server's own message.

use meshdoctor_ops::credential::ALT_AUTHORIZATION;
use std::{path::Path, time::Duration};

use anyhow::{Context as _, anyhow};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use meshdoctor_api::{
    NetReach,
    routes::{self, RoundRef},
    task::NetReachResource,
    views::{AgentView, ErrorBody, TaskFindings, TaskView},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::args::Target;

/// Label on every task `check` creates in Kubernetes: `clean` finds them by it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshdoctor-cli");

/// The body of a request without one.
const NO_BODY: Option<&()> = None;

/// Where a client's token comes from.
#[derive(Debug, Clone, Copy)]
pub enum Token<'a> {
    File(&'a Path),
    /// `MESHDOCTOR_TOKEN`, when set.
    Env,
    /// None: a controller of another cluster must not get this one's token by default.
    None,
}

/// One controller.
pub struct Client {
    transport: Transport,
}

enum Transport {
    Http {
        base: String,
        token: Option<String>,
        http: reqwest::Client,
    },
    Kube {
        client: kube::Client,
        /// The controller's token, in [`ALT_AUTHORIZATION`]: the API server keeps
        /// `Authorization` for itself.
        token: Option<String>,
        /// The API server's URL and the context, for messages.
        server: String,
        /// `/api/v1/namespaces/{ns}/services/https:{service}:https/proxy`: the Service's
        /// TLS port `https`.
        proxy: String,
        /// `/apis/meshdoctor.io/v1beta1/netreaches`.
        netreaches: String,
    },
}

/// A response the controller or the API server refused; `status` lets callers treat a 404
/// as "not yet".
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for HttpError {}

impl Client {
    /// The controller `target` names, presenting the token `token` says and, over https,
    /// trusting the CA in `ca_file`.
    pub async fn connect(
        target: &Target,
        token: Token<'_>,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let token = match token {
            Token::File(path) => Some(meshdoctor_ops::credential::read_token(path)?),
            Token::Env => std::env::var("MESHDOCTOR_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            Token::None => None,
        };
        if target.kubernetes() {
            return Self::kube(target, token).await;
        }
        Self::http(&target.controller, token, ca_file)
    }

    /// The controller's HTTP API at `base`.
    pub fn http(base: &str, token: Option<String>, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let https = base
            .split_once("://")
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("https"));
        if https && ca_file.is_none() {
            anyhow::bail!(
                "--controller {base} is https: --ca-file must name the CA that signed its certificate"
            );
        }
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(15));
        if let Some(ca) = ca_file {
            builder = meshdoctor_ops::tls::trusting(builder, ca)?;
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self {
            transport: Transport::Http {
                base: base.trim_end_matches('/').to_string(),
                token,
                http,
            },
        })
    }

    /// The controller behind the API server of `target`'s kubeconfig and context.
    async fn kube(target: &Target, token: Option<String>) -> anyhow::Result<Self> {
        let options = KubeConfigOptions {
            context: target.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &target.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| anyhow!("--kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| anyhow!("--kubeconfig {}: {e}", path.display()))?
            }
            None => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| anyhow!("the kubeconfig (KUBECONFIG or ~/.kube/config): {e}"))?,
        };
        let mut server = config.cluster_url.to_string();
        if let Some(context) = &target.context {
            server = format!("{server} (context {context})");
        }
        let client = kube::Client::try_from(config)
            .map_err(|e| anyhow!("a client for the API server at {server}: {e}"))?;
        Ok(Self::with_kube_client(client, server, target, token))
    }

    /// The controller behind `client`'s API server: the Service and namespace of `target`.
    pub fn with_kube_client(
        client: kube::Client,
        server: String,
        target: &Target,
        token: Option<String>,
    ) -> Self {
        let proxy = format!(
            "/api/v1/namespaces/{}/services/https:{}:https/proxy",
            target.namespace, target.service
        );
        let netreaches = format!("/apis/{}/netreaches", meshdoctor_api::task::API_VERSION);
        Self {
            transport: Transport::Kube {
                client,
                token,
                server,
                proxy,
                netreaches,
            },
        }
    }

    /// Where requests go, for messages: the controller's URL, or the API server's (with the
    /// context).
    pub fn server(&self) -> &str {
        match &self.transport {
            Transport::Http { base, .. } => base,
            Transport::Kube { server, .. } => server,
        }
    }

    /// GETs `path` of the controller's API and decodes the JSON answer.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        match &self.transport {
            Transport::Http { .. } => self.get_json(path).await,
            Transport::Kube { proxy, .. } => self.get_json(&format!("{proxy}{path}")).await,
        }
    }

    /// GETs `url` (below [`Self::server`]) and decodes the JSON answer.
    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> anyhow::Result<T> {
        let text = self.send(Method::GET, url, NO_BODY).await?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}{url}: the answer is not what this meshdoctor reads",
                self.server()
            )
        })
    }

    /// The registered agents.
    pub async fn agents(&self) -> anyhow::Result<Vec<AgentView>> {
        self.get(routes::AGENTS).await
    }

    /// The controller's tasks.
    pub async fn findings(&self) -> anyhow::Result<Vec<TaskFindings>> {
        self.get(routes::FINDINGS).await
    }

    pub async fn tasks(&self) -> anyhow::Result<Vec<TaskView>> {
        self.get(routes::TASKS).await
    }

    /// A round report of task `name`, as the controller stored it.
    pub async fn round(
        &self,
        name: &str,
        round: RoundRef,
    ) -> anyhow::Result<meshdoctor_api::RoundReport> {
        self.get(&routes::task_round(name, round)).await
    }

    /// Creates or replaces `task`: a PUT on the standalone controller, a NetReach object
    /// (labelled [`MANAGED_BY`]) in Kubernetes.
    pub async fn put_task(&self, task: &NetReach) -> anyhow::Result<()> {
        let name = &task.metadata.name;
        match &self.transport {
            Transport::Http { .. } => {
                self.send(Method::PUT, &routes::task(name), Some(task))
                    .await?;
            }
            Transport::Kube { netreaches, .. } => {
                let mut object = NetReachResource::new(name, task.spec.clone());
                object.metadata.labels =
                    Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into());
                self.send(Method::POST, netreaches, Some(&object)).await?;
            }
        }
        Ok(())
    }

    /// Deletes a task; `Ok(false)` when there was no such task.
    pub async fn delete_task(&self, name: &str) -> anyhow::Result<bool> {
        let path = match &self.transport {
            Transport::Http { .. } => routes::task(name),
            Transport::Kube { netreaches, .. } => format!("{netreaches}/{name}"),
        };
        match self.send(Method::DELETE, &path, NO_BODY).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Names of the tasks `check` created (named with `prefix`; in Kubernetes also labelled
    /// [`MANAGED_BY`], so that nobody else's NetReach is touched).
    pub async fn check_tasks(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        /// Only the names of the listed objects: another tool's NetReach whose spec this
        /// meshdoctor cannot read must not fail the listing.
        #[derive(Deserialize)]
        struct Objects {
            items: Vec<Named>,
        }
        #[derive(Deserialize)]
        struct Named {
            metadata: ObjectMeta,
        }
        let names = match &self.transport {
            Transport::Http { .. } => self.tasks().await?.into_iter().map(|t| t.name).collect(),
            Transport::Kube { netreaches, .. } => {
                let path = format!(
                    "{netreaches}?labelSelector={}%3D{}",
                    MANAGED_BY.0, MANAGED_BY.1
                );
                let objects: Objects = self.get_json(&path).await?;
                objects
                    .items
                    .into_iter()
                    .filter_map(|o| o.metadata.name)
                    .collect::<Vec<_>>()
            }
        };
        Ok(names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// Sends one request; the body of a 2xx answer, an [`HttpError`] carrying
    /// the answer's own message otherwise.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<String> {
        let where_ = format!("{method} {}{path}", self.server());
        let (status, text) = match &self.transport {
            Transport::Http { base, token, http } => {
                let url = format!("{base}{path}");
                let mut req = http.request(method.clone(), &url);
                if let Some(token) = token {
                    req = req.bearer_auth(token);
                }
                if let Some(body) = body {
                    req = req.json(body);
                }
                let resp = req.send().await.map_err(|e| {
                    anyhow!(
                        "cannot reach the controller at {base}: {} (is it running? \
                         --controller / MESHDOCTOR_CONTROLLER)",
                        cause(&e)
                    )
                })?;
                let status = resp.status();
                let text = resp
                    .text()
                    .await
                    .with_context(|| format!("reading the answer to {where_}"))?;
                (status, text)
            }
            Transport::Kube {
                client,
                server,
                token,
                ..
            } => {
                let bytes = match body {
                    Some(b) => serde_json::to_vec(b).context("encoding the request")?,
                    None => Vec::new(),
                };
                let mut req = Request::builder()
                    .method(method.clone())
                    .uri(path)
                    .header(http::header::CONTENT_TYPE, "application/json");
                if let Some(token) = token {
                    req = req.header(ALT_AUTHORIZATION, format!("Bearer {token}"));
                }
                let req = req
                    .body(kube::client::Body::from(bytes))
                    .context("building the request")?;
                let resp = tokio::time::timeout(Duration::from_secs(30), client.send(req))
                    .await
                    .map_err(|_| anyhow!("{where_}: the API server did not answer in 30s"))?
                    .map_err(|e| {
                        anyhow!("cannot reach the Kubernetes API server at {server}: {e}")
                    })?;
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .with_context(|| format!("reading the answer to {where_}"))?
                    .to_bytes();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        if !status.is_success() {
            return Err(HttpError {
                status,
                message: format!(
                    "{where_}: HTTP {status}: {}{}",
                    said(&text),
                    self.hint(status)
                ),
            }
            .into());
        }
        Ok(text)
    }

    /// What to do about a refusal, where there is a likely fix.
    fn hint(&self, status: StatusCode) -> &'static str {
        match (&self.transport, status) {
            (_, StatusCode::UNAUTHORIZED) => {
                " (give the controller's reader or admin token: --token-file or MESHDOCTOR_TOKEN)"
            }
            (Transport::Http { .. }, StatusCode::FORBIDDEN) => {
                " (writing tasks needs the admin token: --token-file)"
            }
            (Transport::Kube { .. }, StatusCode::FORBIDDEN) => {
                " (bind your user to the ClusterRole and the Role meshdoctor-cli: \
                 deploy/base/cli-rbac.yaml)"
            }
            (Transport::Kube { .. }, StatusCode::SERVICE_UNAVAILABLE) => {
                " (is the controller running and Ready? --namespace / --controller-service)"
            }
            _ => "",
        }
    }
}

/// The message of an error answer: the controller's [`ErrorBody`], the API server's Status
/// `message`, else the body itself.
fn said(text: &str) -> String {
    /// The API server's `Status`, as far as a message goes.
    #[derive(Deserialize)]
    struct Status {
        message: String,
    }
    serde_json::from_str::<ErrorBody>(text)
        .map(|e| e.error)
        .or_else(|_| serde_json::from_str::<Status>(text).map(|s| s.message))
        .unwrap_or_else(|_| text.trim().to_string())
}

/// The HTTP status of a refused request, if that is what `e` is.
pub fn status_of(e: &anyhow::Error) -> Option<StatusCode> {
    e.downcast_ref::<HttpError>().map(|h| h.status)
}

/// The innermost cause of a transport error: "Connection refused (os error 111)" rather than
/// reqwest's "error sending request".
fn cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    source.to_string()
}
