//! The HTTP API (axum): agent registration, plan long-polling and report intake for agents,
//! plus read-only views of agents, tasks, reports, findings and metrics. The standalone
//! controller also takes tasks: `PUT`/`DELETE /v1/tasks/{name}` write or remove the task's file
//! in the tasks directory and apply it at once, which is how the CLI runs a one-shot check
//! without access to the controller's disk. Each route says what credential it needs
//! ([`access`](crate::access)), checked before any body is read.
//!
//! Request bodies are parsed by hand so that any malformed agent input is a 400 with a JSON
//! message, whatever the content type, and never a panic.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use meshdoctor_api::{
    AgentRegistration, RoundPlan,
    agent_report::{ReportBodyError, decode_report},
    routes::{self, PlansQuery, RoundRef},
    views::{AgentView, ErrorBody, TaskFindings, TaskView},
};
use meshdoctor_ops::credential::ALT_AUTHORIZATION;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;

use crate::{
    access::{Access, Caller, Need},
    driver::Controller,
    mailbox::ReportError,
    sinks::store::StoreError,
    task_table::TaskDef,
    tasks_dir::{TaskFileError, TasksDir, Written},
};

/// Longest plan long-poll an agent may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Registrations and task documents; a report has the bound its plan justifies instead.
const MAX_BODY: usize = 4 << 20;
/// Time a request's body has to arrive whole: a client sending a byte now and then does not
/// keep a connection and its buffer.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the routes serve from.
#[derive(Clone)]
pub struct Serving {
    pub ctl: Arc<Controller>,
    /// Who may call what.
    pub access: Arc<Access>,
    /// The standalone backend's tasks directory, which `PUT`/`DELETE /v1/tasks/{name}` write
    /// to; `None` with the Kubernetes backend, whose tasks are objects.
    pub tasks_dir: Option<Arc<TasksDir>>,
}

#[derive(Clone)]
struct AppState {
    ctl: Arc<Controller>,
    access: Arc<Access>,
    tasks_dir: Option<Arc<TasksDir>>,
}

/// An error answer: a status and a JSON `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The API routes.
pub fn router(serving: Serving) -> Router {
    let state = AppState {
        ctl: serving.ctl,
        access: serving.access,
        tasks_dir: serving.tasks_dir,
    };
    Router::new()
        .route(routes::AGENTS, post(register).get(agents))
        .route(routes::AGENT_PLANS, get(plans))
        .route(routes::AGENT_REPORT, post(report))
        .route(routes::TASKS, get(tasks))
        .route(routes::TASK, put(put_task).delete(delete_task))
        .route(routes::TASK_ROUND, get(round_report))
        .route(routes::FINDINGS, get(findings))
        .route(routes::HEALTHZ, get(|| async { "ok" }))
        .route(routes::READYZ, get(readyz))
        .route(routes::METRICS, get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// 200 once serving, on every replica: in Kubernetes the standby is Ready too (a rollout
/// completes), and agents reach the leader because the controller Service selects the label
/// the leader puts on its pod ([`crate::kubernetes::leader_label`]). 503 while round reports
/// cannot be stored (a full or read-only disk), with why, until one is.
async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.ctl.store_failure().await {
        None => (StatusCode::OK, "ok".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// The caller, when their credential (`Authorization: Bearer`, or the header the Kubernetes
/// API server's proxy lets through) allows what the route `need`s: 401 or 403 otherwise.
async fn allow(s: &AppState, headers: &HeaderMap, need: Need<'_>) -> ApiResult<Caller> {
    let token = [
        header::AUTHORIZATION,
        header::HeaderName::from_static(ALT_AUTHORIZATION),
    ]
    .iter()
    .find_map(|name| headers.get(name))
    .and_then(|v| v.to_str().ok())
    .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
    let caller = s.access.caller(token).await.map_err(denied)?;
    s.access.allows(&caller, need).map_err(denied)?;
    Ok(caller)
}

fn denied(e: crate::access::Denied) -> ApiError {
    ApiError(e.status(), e.to_string())
}

/// A request body, read once its sender is authorized (a body is never read for nobody), up to
/// `limit` bytes: 413 beyond, without reading further.
/// 413 beyond; 408 when it takes longer than [`BODY_TIMEOUT`].
async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds {limit} bytes"),
        )),
        Err(_) => Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

async fn register(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let caller = allow(&s, &headers, Need::AnyAgent).await?;
    let registration: AgentRegistration = parse(&read_body(body, MAX_BODY).await?)?;
    if registration.node.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "node must not be empty".into(),
        ));
    }
    s.access
        .allows(&caller, Need::Agent(&registration.node))
        .map_err(denied)?;
    s.ctl.register(registration);
    Ok(Json(json!({})))
}

async fn agents(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<AgentView>>> {
    allow(&s, &headers, Need::Reader).await?;
    Ok(Json(s.ctl.agents()))
}

async fn plans(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    Query(q): Query<PlansQuery>,
) -> ApiResult<Json<Vec<Arc<RoundPlan>>>> {
    allow(&s, &headers, Need::Agent(&node)).await?;
    let wait = Duration::from_millis(q.wait_ms).min(MAX_WAIT);
    s.ctl
        .wait_plans(&node, q.after, wait)
        .await
        .map(Json)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("agent {node:?} is not registered; POST /v1/agents first"),
            )
        })
}

/// 404 (no such open round or plan), 400 (a report of another round); why, in the log.
fn refused(node: &str, tag: u32, e: ReportError) -> ApiError {
    warn!(node, round_tag = tag, "report refused: {e}");
    let status = match e {
        ReportError::NoOpenRound(_) | ReportError::NotPlanned { .. } => StatusCode::NOT_FOUND,
        ReportError::Mismatch { .. } => StatusCode::BAD_REQUEST,
    };
    ApiError(status, e.to_string())
}

/// An agent's report on round `tag`, postcard or JSON (plain or zstd-compressed): refused unread (413) when
/// larger than its plan can justify (compressed or once decompressed), decompressed, parsed and
/// folded into its round off the async workers.
async fn report(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((node, tag)): Path<(String, u32)>,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    allow(&s, &headers, Need::Agent(&node)).await?;
    let limit = s
        .ctl
        .report_limit(&node, tag)
        .map_err(|e| refused(&node, tag, e))?;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the report of {node:?} on round tag {tag} exceeds the {limit} bytes its plan justifies"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let body = read_body(body, limit_usize).await.map_err(|e| match e.0 {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        _ => e,
    })?;
    let text = |name: header::HeaderName| match headers.get(&name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|v| Some(v.to_string()))
            .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("bad {name}"))),
    };
    let content_type = text(header::CONTENT_TYPE)?;
    let encoding = text(header::CONTENT_ENCODING)?;
    let ctl = s.ctl.clone();
    let accepted = tokio::task::spawn_blocking(move || {
        let report = decode_report(&body, content_type.as_deref(), encoding.as_deref(), limit)
            .map_err(|e| {
                let status = match e {
                    ReportBodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    ReportBodyError::Encoding(_) | ReportBodyError::ContentType(_) => {
                        StatusCode::UNSUPPORTED_MEDIA_TYPE
                    }
                    ReportBodyError::Compression(_)
                    | ReportBodyError::Json(_)
                    | ReportBodyError::Postcard(_) => StatusCode::BAD_REQUEST,
                };
                ApiError(status, e.to_string())
            })?;
        if report.node != node || report.round_tag != tag {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "the report names node {:?} round tag {}, its path node {node:?} tag {tag}",
                    report.node, report.round_tag
                ),
            ));
        }
        ctl.accept_report(report)
            .map_err(|e| refused(&node, tag, e))
    })
    .await;
    match accepted {
        Ok(result) => result.map(|()| Json(json!({}))),
        Err(e) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the report could not be taken: {e}"),
        )),
    }
}

async fn tasks(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<TaskView>>> {
    allow(&s, &headers, Need::Reader).await?;
    Ok(Json(s.ctl.tasks()))
}

/// Why the Kubernetes backend takes no task over this API.
const TASKS_ARE_OBJECTS: &str = "tasks are NetReach/AppHttpHealthy/NetDns objects in \
     Kubernetes: create them with kubectl or `meshdoctor --kubeconfig`";

/// Runs a blocking task-file operation on the tasks directory, whose listings go to the
/// controller: 409 when there is none (the Kubernetes backend), the operation's error mapped
/// to its status.
async fn on_tasks_dir<T: Send + 'static>(
    s: &AppState,
    op: impl FnOnce(&dyn Fn(Vec<TaskDef>), &TasksDir) -> Result<T, TaskFileError> + Send + 'static,
) -> ApiResult<T> {
    let Some(dir) = s.tasks_dir.clone() else {
        return Err(ApiError(StatusCode::CONFLICT, TASKS_ARE_OBJECTS.into()));
    };
    let ctl = s.ctl.clone();
    let done = tokio::task::spawn_blocking(move || op(&|defs| ctl.sync_tasks(defs), &dir))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    done.map_err(|e| {
        let status = match e {
            TaskFileError::BadName(_)
            | TaskFileError::Invalid(_)
            | TaskFileError::NameMismatch { .. } => StatusCode::BAD_REQUEST,
            TaskFileError::Taken { .. } => StatusCode::CONFLICT,
            TaskFileError::NotFound { .. } => StatusCode::NOT_FOUND,
            TaskFileError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    })
}

/// Creates or replaces task `name` from one task document (YAML or JSON, as a task file):
/// 201 or 200 with the task as `GET /v1/tasks` lists it.
async fn put_task(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<TaskView>)> {
    allow(&s, &headers, Need::Admin).await?;
    let body = read_body(body, MAX_BODY).await?;
    let text = String::from_utf8(body.to_vec()).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "request body: not UTF-8 text".into(),
        )
    })?;
    let (written, file) = on_tasks_dir(&s, move |apply, dir| {
        let written = dir.put(apply, &name, &text)?;
        Ok((written, dir.file_of(&name).display().to_string()))
    })
    .await?;
    let view = s
        .ctl
        .tasks()
        .into_iter()
        .find(|v| v.file == file)
        .ok_or_else(|| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{file} was written but is not among the tasks"),
            )
        })?;
    let status = match written {
        Written::Created => StatusCode::CREATED,
        Written::Replaced => StatusCode::OK,
    };
    Ok((status, Json(view)))
}

/// Removes task `name`'s file, which stops the task: 204.
async fn delete_task(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    allow(&s, &headers, Need::Admin).await?;
    on_tasks_dir(&s, move |apply, dir| dir.delete(apply, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The faulty interfaces of every task's latest round: the one call a dashboard or an on-call
/// script needs, without fetching whole round reports.
async fn findings(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<TaskFindings>>> {
    allow(&s, &headers, Need::Reader).await?;
    Ok(Json(s.ctl.findings().await))
}

async fn round_report(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((name, round)): Path<(String, String)>,
) -> ApiResult<Response> {
    allow(&s, &headers, Need::Reader).await?;
    let round: RoundRef = round
        .parse()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    match s.ctl.store().open(&name, round).await {
        // Written out as JSON and sent a piece at a time: a big round's report is never in
        // memory whole. Reading blocks, so it runs off the async workers, a few pieces ahead.
        Ok(Some(report)) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
            tokio::task::spawn_blocking(move || {
                let mut out = Pieces {
                    tx: tx.clone(),
                    piece: Vec::with_capacity(PIECE),
                };
                let written = report
                    .write_json(&mut out)
                    .map_err(std::io::Error::other)
                    .and_then(|()| std::io::Write::flush(&mut out));
                // A failed file ends the body with an error (the client went away: nothing to
                // tell).
                if let Err(e) = written {
                    let _ = tx.blocking_send(Err(e));
                }
            });
            let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|piece| (piece, rx))
            });
            let headers = [(header::CONTENT_TYPE, "application/json")];
            Ok((headers, axum::body::Body::from_stream(chunks)).into_response())
        }
        Ok(None) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no report for task {name:?} round {round}"),
        )),
        Err(StoreError::BadName(n)) => {
            Err(ApiError(StatusCode::NOT_FOUND, format!("no task {n:?}")))
        }
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Bytes of a served report per piece of the response body.
const PIECE: usize = 64 << 10;

/// A response body being written: full pieces go to the body's channel.
struct Pieces {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    piece: Vec<u8>,
}

impl std::io::Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.piece.extend_from_slice(buf);
        if self.piece.len() >= PIECE {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(PIECE));
        self.tx
            .blocking_send(Ok(Bytes::from(piece)))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    allow(&s, &headers, Need::Metrics).await?;
    let text = s
        .ctl
        .metrics()
        .encode()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}
