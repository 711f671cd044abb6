//! check, resume and clean against a stand-in controller that speaks the task write API
//! (PUT / DELETE /v1/tasks/{name}, `spec.pairPaths`): the first round report is the golden
//! faulty round; a round restricted by `pairPaths` comes back clean.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Output,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, put},
};
use meshdoctor_api::{TaskKind, TaskStatus, views::TaskView};
use serde_json::{Value, json};
use support::round_of;

mod support;

const TOKEN: &str = "s3cret";

#[derive(Default)]
struct Mock {
    tasks: BTreeMap<String, Value>,
    /// Every task document PUT, in order.
    put: Vec<Value>,
    deleted: Vec<String>,
    /// Round polls answered 404 so far, per task: the first poll of each task is too early.
    polls: BTreeMap<String, u32>,
}

type Shared = Arc<Mutex<Mock>>;

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"))
}

async fn put_task(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    Json(task): Json<Value>,
) -> Response {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    if task["metadata"]["name"] != json!(name) {
        return error(
            StatusCode::BAD_REQUEST,
            "metadata.name: must be the name in the URL",
        );
    }
    if task["spec"]["schedule"]["roundNumber"] != json!(1) {
        return error(
            StatusCode::BAD_REQUEST,
            "spec.schedule.roundNumber: expected 1",
        );
    }
    let mut m = s.lock().unwrap();
    m.put.push(task.clone());
    m.tasks.insert(name.clone(), task);
    (StatusCode::CREATED, Json(json!({"name": name}))).into_response()
}

async fn delete_task(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let mut m = s.lock().unwrap();
    if m.tasks.remove(&name).is_none() {
        return error(StatusCode::NOT_FOUND, &format!("no task {name:?}"));
    }
    m.deleted.push(name);
    StatusCode::NO_CONTENT.into_response()
}

async fn tasks(State(s): State<Shared>) -> Json<Vec<TaskView>> {
    let m = s.lock().unwrap();
    Json(
        m.tasks
            .keys()
            .map(|n| TaskView {
                name: n.clone(),
                file: format!("tasks/{n}.yaml"),
                kind: Some(TaskKind::NetReach),
                schedule: Some("0 1".into()),
                error: None,
                warnings: vec![],
                status: Some(TaskStatus::new(1, 10)),
            })
            .collect(),
    )
}

async fn round(
    State(s): State<Shared>,
    UrlPath((name, round)): UrlPath<(String, String)>,
) -> Response {
    let mut m = s.lock().unwrap();
    let Some(task) = m.tasks.get(&name).cloned() else {
        return error(StatusCode::NOT_FOUND, &format!("no task {name:?}"));
    };
    let polls = m.polls.entry(name.clone()).or_default();
    *polls += 1;
    if round != "1" || *polls == 1 {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no report for task {name:?} round {round}"),
        );
    }
    Json(round_of(&name, &task)).into_response()
}

async fn start() -> (String, Shared) {
    let shared = Shared::default();
    let app = Router::new()
        // No agent listed: check keeps its IPv4-only default, as the golden round is.
        .route("/v1/agents", get(async || Json(Vec::<Value>::new())))
        .route("/v1/tasks", get(tasks))
        .route("/v1/tasks/{name}", put(put_task).delete(delete_task))
        .route("/v1/tasks/{name}/rounds/{round}", get(round))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, shared)
}

async fn meshdoctor(url: &str, dir: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshdoctor"));
    cmd.current_dir(dir)
        .arg("--controller")
        .arg(url)
        .args(args)
        .env("MESHDOCTOR_TOKEN", TOKEN);
    cmd.output().await.unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn check_then_resume_until_clean() {
    let (url, mock) = start().await;
    let dir = std::env::temp_dir().join(format!("meshdoctor-cli-flow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A faulty mesh: exit 1, the faulty interface and the failed pair-paths printed.
    let out = meshdoctor(
        &url,
        &dir,
        &["check", "--protocol", "udp", "--duration", "3"],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let faulty = stdout.find("FAULTY INTERFACES").unwrap();
    let failed = stdout.find("FAILED PAIR-PATHS").unwrap();
    assert!(faulty < failed, "{stdout}");
    assert!(stdout.contains("node-3  net1   storage"), "{stdout}");
    assert!(stdout.contains("NETFILTER_DROP"), "{stdout}");
    {
        let m = mock.lock().unwrap();
        let task = &m.put[0];
        let name = task["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("meshdoctor-check-"), "{name}");
        assert_eq!(task["spec"]["request"]["protocol"], "udp");
        assert_eq!(task["spec"]["request"]["durationInSecond"], 3);
        assert_eq!(
            task["spec"]["schedule"],
            json!({"schedule": "0 1", "roundNumber": 1})
        );
        assert!(task["spec"].get("pairPaths").is_none());
        assert_eq!(m.deleted, [name], "the check's task is deleted");
    }
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meshdoctor-resume.json")).unwrap())
            .unwrap();
    assert_eq!(state["failedPaths"].as_array().unwrap().len(), 2);

    // resume probes only the two failed pair-paths, with the same spec; they are clean now.
    // Task names have a one-second resolution.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = meshdoctor(&url, &dir, &["-o", "json", "resume", "--keep"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["summary"]["status"], "succeed");
    assert_eq!(result["report"]["paths"].as_array().unwrap().len(), 2);
    {
        let m = mock.lock().unwrap();
        let task = &m.put[1];
        assert_eq!(task["spec"]["request"]["protocol"], "udp");
        assert_eq!(
            task["spec"]["pairPaths"],
            json!([
                {"srcNode": "node-1", "dstNode": "node-3", "network": "storage", "family": "ipv4"},
                {"srcNode": "node-2", "dstNode": "node-3", "network": "storage", "family": "ipv4"},
            ])
        );
        assert_eq!(m.tasks.len(), 1, "--keep keeps the task");
    }
    let out = meshdoctor(&url, &dir, &["resume"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("nothing failed"), "{stderr}");

    // clean removes the kept task and the state file.
    let out = meshdoctor(&url, &dir, &["clean"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout.contains("deleted task meshdoctor-check-"),
        "{stdout}"
    );
    assert!(
        stdout.contains("removed meshdoctor-resume.json"),
        "{stdout}"
    );
    assert!(mock.lock().unwrap().tasks.is_empty());
    assert!(!dir.join("meshdoctor-resume.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controllers_error_is_shown() {
    let (url, _) = start().await;
    let dir = std::env::temp_dir();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshdoctor"))
        .args(["--controller", &url, "check"])
        .env_remove("MESHDOCTOR_TOKEN")
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("HTTP 401 Unauthorized: missing or wrong bearer token")
            && stderr.contains("--token-file or MESHDOCTOR_TOKEN"),
        "{stderr}"
    );
}
