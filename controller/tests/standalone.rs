//! The standalone controller end to end, in process: fake agents register, long-poll their
//! plans, post reports built from them, and read back the judged round, over HTTP and through
//! the controller's own API (deadline and task reload).

use std::{path::PathBuf, sync::Arc, time::Duration};

use meshdoctor_api::routes::RoundRef;
use meshdoctor_api::{
    AgentRegistration, AgentReport, AnsweredPath, InterfaceInfo, LastRoundStatus, PathId,
    PathState, RoundPlan, RoundReport, RoundStatus, SentPath, Timestamping,
};
use meshdoctor_controller::{
    access::{Access, AgentAuth},
    api_server::{self, Serving},
    driver::{Controller, DEFAULT_TLS_DIR, Settings},
    fixtures,
    mailbox::ReportError,
    now_ms,
    sinks::store::ReportStore,
    tasks_dir::{self, TasksDir},
};
use meshdoctor_ops::credential::NodeKey;
use serde_json::Value;

/// The agent key, and the admin's and reader's tokens, of the controller under test.
const KEY: [u8; 32] = [9; 32];
const ADMIN: &str = "admin-s3cret";
const READER: &str = "reader-s3cret";
const TASK: &str = "apiVersion: meshdoctor.io/v1beta1
kind: NetReach
metadata: {name: mesh}
spec:
  schedule: {schedule: '@every 5s', roundNumber: 1}
  request: {qps: 5, durationInSecond: 1, perRequestTimeoutInMS: 200}
  target: {ipv4: true}
";

/// The credential of `node`'s agent.
fn agent(node: &str) -> String {
    NodeKey::new(&KEY).credential(node)
}

/// GET `url` with `token` and decode the JSON answer.
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
    token: &str,
) -> T {
    let r = http.get(url).bearer_auth(token).send().await.unwrap();
    assert!(r.status().is_success(), "{r:?}");
    r.json().await.unwrap()
}

/// A fresh directory with an empty `tasks/`.
fn temp_dir(test: &str) -> PathBuf {
    let dir = fixtures::temp_dir(test);
    std::fs::create_dir_all(dir.join("tasks")).unwrap();
    dir
}

fn mk_agent(n: u8) -> AgentRegistration {
    AgentRegistration {
        node: format!("node-{n}"),
        interfaces: vec![InterfaceInfo {
            name: "eth0".into(),
            network: "pod".into(),
            ipv4: Some([10, 1, 0, n].into()),
            ipv6: None,
        }],
        timestamping: Timestamping::Ebpf,
        probe_port: Some(9091),
        labels: Default::default(),
    }
}

/// A report where every probe of `plan` came back, and `answered` answered in full.
fn mk_report(node: &str, plan: &RoundPlan, answered: &[PathId]) -> AgentReport {
    let n = plan.probes_per_target();
    AgentReport {
        sent: plan
            .targets
            .iter()
            .map(|t| SentPath::test(t.path, n, n, [300_000, 400_000, 100_000]))
            .collect(),
        answered: answered
            .iter()
            .map(|&path| AnsweredPath::test(path, n, 50_000, "eth0"))
            .collect(),
        ..AgentReport::on_plan(node, plan, Timestamping::Ebpf)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_a_round_over_http() {
    let dir = temp_dir("http");
    std::fs::write(dir.join("tasks/mesh.yaml"), TASK).unwrap();
    std::fs::write(
        dir.join("tasks/broken.yaml"),
        TASK.replace("qps: 5", "qps: lots"),
    )
    .unwrap();
    let settings = Settings {
        wait_agents: 2,
        start_delay: Duration::from_millis(300),
        report_grace: Duration::from_secs(1),
        max_history: 10,
        pair_metrics: false,
        budget: Default::default(),
        tls_dir: DEFAULT_TLS_DIR.into(),
        limits: Default::default(),
    };
    let ctl = Controller::new(settings, ReportStore::new(&dir));
    ctl.sync_tasks(tasks_dir::load_dir(&dir.join("tasks")).unwrap());
    let base = serve(ctl, None).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{base}{p}");

    // Agent endpoints need an agent's credential; bad JSON is a 400 with a message.
    let r = http
        .post(url("/v1/agents"))
        .json(&mk_agent(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(url("/v1/agents"))
        .bearer_auth(agent("node-1"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("invalid request body")
    );
    let r = http
        .get(url("/v1/agents/node-9/plans"))
        .bearer_auth(agent("node-9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // An agent acts for its own node only: node-1's credential cannot register node-2 (with
    // its own addresses) nor poll node-2's plans.
    let r = http
        .post(url("/v1/agents"))
        .bearer_auth(agent("node-1"))
        .json(&mk_agent(2))
        .send()
        .await
        .unwrap();
    let e = error_of(r, 403).await;
    assert!(
        e.contains("node \"node-1\" may not act for node \"node-2\""),
        "{e}"
    );
    let r = http
        .get(url("/v1/agents/node-2/plans"))
        .bearer_auth(agent("node-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let mut forged = agent("node-2");
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(forged.len() - 1.., last);
    let r = http
        .post(url("/v1/agents"))
        .bearer_auth(forged)
        .json(&mk_agent(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(ctl_agents(&http, &url("/v1/agents")).await.is_empty());

    for n in [1, 2] {
        let r = http
            .post(url("/v1/agents"))
            .bearer_auth(agent(&format!("node-{n}")))
            .json(&mk_agent(n))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Reads need the reader's (or admin's) credential; an agent's is not one.
    let r = http.get(url("/v1/agents")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(url("/v1/tasks")).bearer_auth(agent("node-1"));
    assert_eq!(r.send().await.unwrap().status(), 403);
    // Through the Kubernetes API server's proxy, which drops Authorization, the CLI sends the
    // token in X-Meshdoctor-Authorization.
    let r = http
        .get(url("/v1/agents"))
        .header("x-meshdoctor-authorization", format!("Bearer {READER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let agents: Value = get_json(&http, url("/v1/agents"), READER).await;
    assert_eq!(agents[1]["node"], "node-2");
    assert!(agents[1]["lastSeenMs"].as_u64().unwrap() > 0);

    // Long-poll the plans; the round is published once both agents registered.
    let mut plans = Vec::new();
    for n in [1, 2] {
        let got: Vec<RoundPlan> = get_json(
            &http,
            url(&format!("/v1/agents/node-{n}/plans?after=0&waitMs=10000")),
            &agent(&format!("node-{n}")),
        )
        .await;
        assert_eq!(got.len(), 1, "node-{n}");
        assert_eq!(got[0].targets.len(), 1);
        assert!(got[0].start_at_ms > now_ms().saturating_sub(1000));
        plans.push(got.into_iter().next().unwrap());
    }
    let tag = plans[0].round_tag;
    let empty: Vec<RoundPlan> = get_json(
        &http,
        url(&format!("/v1/agents/node-1/plans?after={tag}&waitMs=100")),
        &agent("node-1"),
    )
    .await;
    assert!(empty.is_empty());

    // A report is posted on its round: bad JSON is a 400, a body larger than the plan can
    // justify a 413 before it is read, a report of another node a 400, a node without a plan
    // a 404.
    let report_url = |node: &str, tag: u32| url(&format!("/v1/agents/{node}/reports/{tag}"));
    let post_report = |node: &str, tag: u32, body: Vec<u8>| {
        http.post(report_url(node, tag))
            .bearer_auth(agent(node))
            .body(body)
            .send()
    };
    let r = post_report("node-1", tag, b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let limit = meshdoctor_api::agent_report::max_report_bytes(&plans[0], 1);
    // Refused on its declared length, unread: the controller answers and closes, so the client
    // sees the 413 or, when still writing the body then, a broken connection.
    match post_report("node-1", tag, vec![b' '; limit as usize + 1]).await {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            assert!(r.text().await.unwrap().contains("exceeds"));
        }
        Err(e) => assert!(format!("{e:?}").contains("BodyWrite"), "{e:?}"),
    }
    // A small compressed body that inflates past the bound: refused while decompressing.
    let bomb = zstd::bulk::compress(&vec![b' '; limit as usize + 1], 1).unwrap();
    let r = http
        .post(report_url("node-1", tag))
        .bearer_auth(agent("node-1"))
        .header("content-encoding", "zstd")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("exceeds"));
    let reports = [
        mk_report("node-1", &plans[0], &[plans[1].targets[0].path]),
        mk_report("node-2", &plans[1], &[plans[0].targets[0].path]),
    ];
    let as_node2 = serde_json::to_vec(&reports[0]).unwrap();
    let r = post_report("node-2", tag, as_node2).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post_report("node-9", tag, b"{}".to_vec()).await.unwrap();
    assert_eq!(r.status(), 404);
    // node-1's credential cannot report for node-2: refused before the body is read.
    let r = http
        .post(report_url("node-2", tag))
        .bearer_auth(agent("node-1"))
        .json(&reports[1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for report in &reports {
        let r = http
            .post(report_url(&report.node, tag))
            .bearer_auth(agent(&report.node))
            .json(report)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // Both reported: the round closes without waiting for its deadline.
    let mut tasks = Value::Null;
    for _ in 0..50 {
        tasks = get_json(&http, url("/v1/tasks"), READER).await;
        if tasks[1]["status"]["doneRound"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tasks[0]["name"], "broken");
    assert!(
        tasks[0]["error"]
            .as_str()
            .unwrap()
            .contains("spec.request.qps"),
        "{tasks}"
    );
    let status = &tasks[1]["status"];
    assert_eq!(tasks[1]["name"], "mesh");
    assert_eq!(
        (status["finish"].as_bool(), status["expectedRound"].as_i64()),
        (Some(true), Some(1))
    );
    assert_eq!(status["lastRoundStatus"], "succeed", "{tasks}");
    assert_eq!(status["history"][0]["expectedAgents"], 2);

    let report: RoundReport = get_json(&http, url("/v1/tasks/mesh/rounds/latest"), ADMIN).await;
    assert_eq!(
        report.status,
        RoundStatus::Succeed,
        "{:?}",
        report.failure_reasons
    );
    assert_eq!(
        (
            report.summary.paths,
            report.summary.sent,
            report.summary.lost
        ),
        (2, 10, 0)
    );
    assert_eq!(report.summary.mean_rtt_ms, Some(0.4));
    assert_eq!(report.findings, []);
    // The broken task has no round, so no entry.
    let findings: Value = get_json(&http, url("/v1/findings"), READER).await;
    assert_eq!(
        findings,
        serde_json::json!([{"task": "mesh", "round": report.round, "findings": []}])
    );
    assert_eq!(report.paths[0].network_rtt.unwrap().mean_us, 250.0);
    assert!(
        dir.join(format!("reports/mesh/{}.msgpack.zst", report.round))
            .exists()
    );
    let r = http
        .get(url("/v1/tasks/mesh/rounds/99"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A report for the closed round is late: refused and counted.
    let r = http
        .post(report_url("node-1", tag))
        .bearer_auth(agent("node-1"))
        .json(&reports[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "meshdoctor_rounds_total{task=\"mesh\",status=\"succeed\"} 1",
        "meshdoctor_probes_sent_total{task=\"mesh\",node=\"node-1\",interface=\"eth0\",\
         network=\"pod\",family=\"ipv4\",role=\"source\"} 5",
        "meshdoctor_probes_lost_total{task=\"mesh\",node=\"node-2\",interface=\"eth0\",\
         network=\"pod\",family=\"ipv4\",role=\"destination\"} 0",
        "meshdoctor_round_result{task=\"mesh\"} 1",
        "meshdoctor_agents 2",
        "meshdoctor_reports_late_total 1",
        "meshdoctor_interface_findings{task=\"mesh\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert_eq!(
        http.get(url("/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_fails_the_round_at_its_deadline_and_reload_follows_files() {
    let dir = temp_dir("deadline");
    let tasks_dir = dir.join("tasks");
    std::fs::write(tasks_dir.join("mesh.yaml"), TASK).unwrap();
    let settings = Settings {
        wait_agents: 2,
        start_delay: Duration::from_millis(100),
        report_grace: Duration::from_millis(200),
        max_history: 10,
        pair_metrics: false,
        budget: Default::default(),
        tls_dir: DEFAULT_TLS_DIR.into(),
        limits: Default::default(),
    };
    let ctl = Controller::new(settings, ReportStore::new(&dir));
    ctl.sync_tasks(tasks_dir::load_dir(&tasks_dir).unwrap());
    ctl.register(mk_agent(1));
    ctl.register(mk_agent(2));
    let wait = Duration::from_secs(5);
    let plan = ctl.wait_plans("node-1", 0, wait).await.unwrap().remove(0);
    let dst_plan = ctl.wait_plans("node-2", 0, wait).await.unwrap().remove(0);
    // node-1 answered node-2's probes, but node-2 never reports.
    ctl.accept_report(mk_report("node-1", &plan, &[dst_plan.targets[0].path]))
        .unwrap();

    let started = std::time::Instant::now();
    while ctl.tasks()[0].status.as_ref().unwrap().done_round == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // start + 1 s duration + 200 ms timeout + 200 ms grace.
    assert!(now_ms() >= plan.report_deadline_ms);
    assert_eq!(plan.report_deadline_ms, plan.start_at_ms + 1_400);
    let status = ctl.tasks()[0].status.clone().unwrap();
    assert_eq!(status.last_round_status, LastRoundStatus::Fail);
    assert_eq!(
        status.history[0].failure_reasons,
        ["agents did not report: node-2"]
    );

    let json = ctl
        .store()
        .read("mesh", RoundRef::Latest)
        .await
        .unwrap()
        .unwrap();
    let report: RoundReport = serde_json::from_slice(&json).unwrap();
    assert_eq!(report.not_reported, ["node-2"]);
    let by_src = |src: &str| report.paths.iter().find(|p| p.src_node == src).unwrap();
    assert_eq!(
        (by_src("node-1").state, by_src("node-1").dst_reported),
        (PathState::Ok, false)
    );
    assert_eq!(by_src("node-2").state, PathState::NotReported);
    assert_eq!((report.summary.sent, report.summary.lost), (5, 0));

    let late = ctl.accept_report(mk_report("node-2", &dst_plan, &[]));
    assert_eq!(late, Err(ReportError::NoOpenRound(plan.round_tag)));

    std::fs::remove_file(tasks_dir.join("mesh.yaml")).unwrap();
    std::fs::write(
        tasks_dir.join("other.yaml"),
        TASK.replace("name: mesh", "name: other"),
    )
    .unwrap();
    ctl.sync_tasks(tasks_dir::load_dir(&tasks_dir).unwrap());
    let names: Vec<String> = ctl.tasks().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["other"]);
    // "other" has agents and starts its first round: stop it before removing its store.
    ctl.sync_tasks(Vec::new());
    fixtures::remove_temp_dir(&dir);
}

/// Serves `ctl`'s API (agents' credentials from [`KEY`], the [`ADMIN`] and [`READER`] tokens,
/// task writes to `tasks_dir`) on a free local port; its base URL.
async fn serve(ctl: Arc<Controller>, tasks_dir: Option<Arc<TasksDir>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let serving = Serving {
        ctl,
        access: Arc::new(Access {
            agents: AgentAuth::Key(NodeKey::new(&KEY)),
            admin: Some(ADMIN.into()),
            reader: Some(READER.into()),
            metrics_need_reader: false,
        }),
        tasks_dir,
    };
    let bounds = meshdoctor_ops::http::Bounds::within_fd_limit(1024, Duration::from_secs(10));
    tokio::spawn(meshdoctor_ops::http::serve(
        listener,
        api_server::router(serving),
        bounds,
        None,
        std::future::pending(),
    ));
    base
}

/// The agents the controller at `url` lists.
async fn ctl_agents(http: &reqwest::Client, url: &str) -> Vec<Value> {
    get_json(http, url.into(), READER).await
}

fn quiet_settings() -> Settings {
    Settings {
        wait_agents: 1,
        start_delay: Duration::from_millis(300),
        report_grace: Duration::from_secs(1),
        max_history: 10,
        pair_metrics: false,
        budget: Default::default(),
        tls_dir: DEFAULT_TLS_DIR.into(),
        limits: Default::default(),
    }
}

/// The `error` of a JSON error answer, after checking its status.
async fn error_of(r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status(), status);
    r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_put_and_deleted_over_http() {
    let dir = temp_dir("task-api");
    let tasks_dir = dir.join("tasks");
    let ctl = Controller::new(quiet_settings(), ReportStore::new(&dir));
    let dir_of_tasks = Arc::new(TasksDir::new(tasks_dir.clone()));
    dir_of_tasks.sync(&|defs| ctl.sync_tasks(defs)).unwrap();
    let base = serve(ctl.clone(), Some(dir_of_tasks)).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{base}{p}");
    let put = |name: &str, body: String, auth: bool| {
        let rb = http.put(url(&format!("/v1/tasks/{name}"))).body(body);
        if auth { rb.bearer_auth(ADMIN) } else { rb }.send()
    };
    let file = tasks_dir.join("mesh.yaml");

    // The admin's credential is required: none is a 401, the reader's or an agent's a 403.
    let r = put("mesh", TASK.into(), false).await.unwrap();
    assert_eq!(r.status(), 401);
    for other in [READER.to_string(), agent("node-1")] {
        let r = http
            .put(url("/v1/tasks/mesh"))
            .bearer_auth(other)
            .body(TASK);
        let e = error_of(r.send().await.unwrap(), 403).await;
        assert!(e.contains("needs the admin credential"), "{e}");
    }
    assert!(!file.exists());

    // Created: the file is there and the task listed, at once.
    let r = put("mesh", TASK.into(), true).await.unwrap();
    assert_eq!(r.status(), 201);
    let view: Value = r.json().await.unwrap();
    assert_eq!(
        (&view["name"], &view["kind"], &view["file"]),
        (
            &Value::from("mesh"),
            &Value::from("NetReach"),
            &Value::from(file.display().to_string())
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), TASK);
    let listed: Vec<Value> = get_json(&http, url("/v1/tasks"), READER).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "mesh");

    // Replaced, as JSON, with pairPaths.
    let json = serde_json::json!({
        "apiVersion": "meshdoctor.io/v1beta1",
        "kind": "NetReach",
        "metadata": {"name": "mesh"},
        "spec": {"pairPaths": [{"srcNode": "node-1", "dstNode": "node-2", "family": "ipv4"}]},
    });
    let r = put("mesh", json.to_string(), true).await.unwrap();
    assert_eq!(r.status(), 200);
    let task = tasks_dir::load_dir(&tasks_dir)
        .unwrap()
        .remove(0)
        .task
        .unwrap();
    assert_eq!(task.as_net_reach().unwrap().spec.pair_paths.len(), 1);

    // Invalid documents, a name that differs from the path's, or a bad name: 400, no file.
    for (name, body, says) in [
        (
            "web",
            TASK.replace("qps: 5", "qps: lots"),
            "spec.request.qps: invalid type",
        ),
        ("web", "{not: [yaml".to_string(), "request body: "),
        (
            "web",
            TASK.replace("target: {", "target: {colour: red, "),
            "spec.target.colour: unknown field `colour`",
        ),
        (
            "web",
            TASK.into(),
            "metadata.name: \"mesh\" differs from the name in the path, \"web\"",
        ),
        ("a..b", TASK.into(), "\"a..b\" is not a task name"),
        (
            "..%2Fescape",
            TASK.into(),
            "\"../escape\" is not a task name",
        ),
        (&"a".repeat(254), TASK.into(), "is not a task name"),
    ] {
        let e = error_of(put(name, body, true).await.unwrap(), 400).await;
        assert!(e.contains(says), "{name}: expected {says:?} in {e}");
    }
    let files: Vec<_> = std::fs::read_dir(&tasks_dir).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(!dir.join("escape").exists());

    // Another file holding the name: 409, not a second task of that name.
    let r = put("mesh2", TASK.replace("name: mesh", "name: mesh2"), true);
    assert_eq!(r.await.unwrap().status(), 201);
    std::fs::rename(tasks_dir.join("mesh2.yaml"), tasks_dir.join("other.yaml")).unwrap();
    let e = error_of(
        put("mesh2", TASK.replace("name: mesh", "name: mesh2"), true)
            .await
            .unwrap(),
        409,
    )
    .await;
    assert!(e.contains("already defined in"), "{e}");
    std::fs::remove_file(tasks_dir.join("other.yaml")).unwrap();

    // Deleted: 204, gone from the list; then 404. Without the admin's credential: 401.
    let delete = |name: &str, auth: bool| {
        let rb = http.delete(url(&format!("/v1/tasks/{name}")));
        if auth { rb.bearer_auth(ADMIN) } else { rb }.send()
    };
    assert_eq!(delete("mesh", false).await.unwrap().status(), 401);
    assert_eq!(delete("mesh", true).await.unwrap().status(), 204);
    assert!(!file.exists());
    assert!(ctl.tasks().is_empty());
    let e = error_of(delete("mesh", true).await.unwrap(), 404).await;
    assert!(e.contains("no task file mesh.yaml or mesh.yml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn tasks_api_without_a_tasks_dir_points_to_kubernetes() {
    let dir = temp_dir("task-api-kube");
    let base = serve(
        Controller::new(quiet_settings(), ReportStore::new(&dir)),
        None,
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/tasks/mesh");
    let r = http
        .put(&url)
        .bearer_auth(ADMIN)
        .body(TASK)
        .send()
        .await
        .unwrap();
    let e = error_of(r, 409).await;
    assert!(
        e.contains("objects in Kubernetes: create them with kubectl"),
        "{e}"
    );
    let r = http.delete(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 409);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A request without a credential is refused before its body is read: a client that announces
/// 100 MB and sends none of it gets its 401 at once, for every route that takes a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_never_read_for_an_unauthorized_client() {
    use std::io::{Read as _, Write as _};

    let dir = temp_dir("unauthorized-body");
    let ctl = Controller::new(quiet_settings(), ReportStore::new(&dir));
    let base = serve(ctl, None).await;
    let addr = base.trim_start_matches("http://").to_string();
    tokio::task::spawn_blocking(move || {
        for request in [
            "POST /v1/agents",
            "PUT /v1/tasks/mesh",
            "POST /v1/agents/node-1/reports/7",
        ] {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let head = format!("{request} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n");
            c.write_all(head.as_bytes()).unwrap();
            let mut answer = [0u8; 12];
            c.read_exact(&mut answer)
                .unwrap_or_else(|e| panic!("{request}: no answer without the body: {e}"));
            assert_eq!(&answer, b"HTTP/1.1 401", "{request}");
        }
    })
    .await
    .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
