//! `check` and `resume`: one NetReach round as a short-lived task on the controller. The task
//! is PUT, its first round polled for, and deleted again unless `--keep`.

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use http::StatusCode;
use meshdoctor_api::{AgentRegistration, RoundReport, Task, task::RemoteAgent};
use serde_json::{Value, json};

use crate::{
    args::{CheckArgs, StateArgs},
    client::{Client, status_of},
    output::CheckOutput,
    state::State,
};

/// Every task `check` creates is named with this prefix; `clean` removes them by it.
pub const TASK_PREFIX: &str = "meshdoctor-check-";

/// Time given to the agents and the controller past the probing itself.
const GRACE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);

/// The task document of a check: the `--file` (validated locally first) or the flags, as
/// JSON, with a one-round schedule. The name is set by [`run`].
pub fn task_document(args: &CheckArgs) -> anyhow::Result<Value> {
    let mut doc = match &args.file {
        Some(path) => {
            let task = Task::from_file(path).map_err(|e| anyhow!("bad task file: {e}"))?;
            let Some(reach) = task.as_net_reach() else {
                bail!(
                    "{}: kind: a check runs a NetReach task, this is {}",
                    path.display(),
                    task.kind()
                );
            };
            serde_json::to_value(reach)?
        }
        None => {
            let mut request = json!({});
            if let Some(p) = args.protocol {
                request["protocol"] = json!(p);
            }
            if let Some(q) = args.qps {
                request["qps"] = json!(q);
            }
            if let Some(d) = args.duration {
                request["durationInSecond"] = json!(d);
            }
            let mut target = json!({"ipv4": !args.no_ipv4, "ipv6": args.ipv6 && !args.no_ipv6});
            if let Some(i) = &args.interfaces {
                target["interfaces"] = json!(i);
            }
            let mut spec = json!({"request": request, "target": target});
            if let Some(r) = args.success_rate {
                spec["expect"] = json!({"successRate": r});
            }
            let doc = json!({
                "apiVersion": "meshdoctor.io/v1beta1",
                "kind": "NetReach",
                "metadata": {"name": "meshdoctor-check"},
                "spec": spec,
            });
            // Validate the flags as the controller will, and fill in the defaults.
            let task = Task::from_yaml("the command line", &doc.to_string())
                .map_err(|e| anyhow!("{e}"))?;
            serde_json::to_value(task)?
        }
    };
    one_round(&mut doc)?;
    Ok(doc)
}

/// Makes `doc` a cross-cluster check: the destination controller's `agents` (its GET
/// /v1/agents) become `spec.target.remoteAgents`, named `{dst_name}/{node}`. A check from
/// flags then probes them alone (NetDoctor's dstKubeConfig); a task file keeps its own
/// `endpoint`. The result is validated as the controller will.
pub fn add_remote_agents(
    doc: &mut Value,
    agents: &Value,
    dst_name: &str,
    from_file: bool,
) -> anyhow::Result<()> {
    let agents: Vec<AgentRegistration> = serde_json::from_value(agents.clone())
        .context("the destination controller's /v1/agents is not a list of agents")?;
    if agents.is_empty() {
        bail!("the destination controller has no agents registered: nothing to probe");
    }
    let remote: Vec<RemoteAgent> = agents
        .into_iter()
        .map(|a| RemoteAgent {
            node: format!("{dst_name}/{}", a.node),
            interfaces: a.interfaces,
            probe_port: a.probe_port,
        })
        .collect();
    let target = &mut doc["spec"]["target"];
    target["remoteAgents"] = serde_json::to_value(remote)?;
    if !from_file {
        target["endpoint"] = json!(false);
    }
    Task::from_yaml("the cross-cluster check", &doc.to_string()).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Replaces the schedule with one round starting now, with a deadline long enough for the
/// probing: "0 N" starts at once and gives the round N minutes.
fn one_round(doc: &mut Value) -> anyhow::Result<()> {
    let secs = probing_secs(doc);
    let minutes = (secs + 30).div_ceil(60).max(1);
    let spec = doc
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .context("the task has no spec")?;
    spec.insert(
        "schedule".into(),
        json!({"schedule": format!("0 {minutes}"), "roundNumber": 1}),
    );
    Ok(())
}

/// Seconds the probing of a round lasts: duration plus the last probe's timeout.
fn probing_secs(doc: &Value) -> u64 {
    let request = &doc["spec"]["request"];
    let duration = request["durationInSecond"].as_u64().unwrap_or(2);
    let timeout_ms = request["perRequestTimeoutInMS"].as_u64().unwrap_or(500);
    duration + timeout_ms.div_ceil(1000)
}

/// The round deadline of a document made by [`one_round`].
fn round_deadline(doc: &Value) -> Duration {
    let minutes = doc["spec"]["schedule"]["schedule"]
        .as_str()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(minutes * 60)
}

/// A fresh task name: the prefix and the Unix time.
pub fn task_name() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{TASK_PREFIX}{secs}")
}

/// Runs `doc` (plus `pair_paths` when given) as one round and returns its result, then writes
/// the state file and deletes the task unless `keep`.
pub async fn run(
    client: &Client,
    doc: &Value,
    pair_paths: Option<Vec<Value>>,
    state: &StateArgs,
) -> anyhow::Result<CheckOutput> {
    let name = task_name();
    let mut sent = doc.clone();
    sent["metadata"] = json!({"name": name});
    if let Some(pp) = pair_paths {
        sent["spec"]["pairPaths"] = Value::Array(pp);
    }
    client
        .put_task(&name, &sent)
        .await
        .with_context(|| format!("creating task {name}"))?;
    let outcome = tokio::select! {
        r = wait_for_round(client, &name, doc) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if !state.keep
        && let Err(e) = client.delete_task(&name).await
    {
        eprintln!("warning: could not delete task {name}: {e:#} (meshdoctor clean removes it)");
    }
    let report = outcome?;
    let out = CheckOutput::new(&name, report);
    let mut base = doc.clone();
    base["metadata"] = json!({"name": name});
    State {
        task: base,
        last_task: name,
        failed_paths: out.failed_paths.clone(),
    }
    .write(&state.state)?;
    Ok(out)
}

/// Polls round 1 of `name` until its report exists, with a progress bar on a terminal.
async fn wait_for_round(client: &Client, name: &str, doc: &Value) -> anyhow::Result<RoundReport> {
    let probing = Duration::from_secs(probing_secs(doc));
    let limit = round_deadline(doc) + GRACE;
    let bar = progress_bar(name, probing);
    let start = Instant::now();
    let path = format!("/v1/tasks/{name}/rounds/1");
    let result = loop {
        match client.get(&path).await {
            Ok(value) => {
                break serde_json::from_value::<RoundReport>(value)
                    .context("the round report does not parse");
            }
            // Not yet; or, through the API server, no Ready controller for a moment (a
            // leader hand-over): the new leader runs the task.
            Err(e) if status_of(&e).is_some_and(transient) => {
                if start.elapsed() > limit {
                    break Err(anyhow!(
                        "no report for round 1 of task {name} after {}s (the round's deadline \
                         plus {}s of grace): are agents registered? (meshdoctor agents); last \
                         answer: {e:#}",
                        start.elapsed().as_secs(),
                        GRACE.as_secs()
                    ));
                }
            }
            Err(e) => break Err(e),
        }
        let elapsed = start.elapsed();
        if let Some(bar) = &bar {
            bar.set_position(elapsed.as_secs().min(probing.as_secs()));
            if elapsed >= probing {
                bar.set_message("waiting for the report");
            }
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

/// Answers worth polling past: no report yet (404), no Ready controller behind the Service or
/// no answer from it through the API server (503, 502).
fn transient(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY
    )
}

fn progress_bar(name: &str, probing: Duration) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(probing.as_secs().max(1));
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len}s {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(name.to_string());
    bar.set_message("probing");
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}
