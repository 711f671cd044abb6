//! `check` and `resume`: one NetReach round as a short-lived task on the controller. The task
//! is PUT, its first round polled for, and deleted again unless `--keep`.

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use http::StatusCode;
use meshdoctor_api::{
    NetReach, RoundReport, Task, TaskSpec as _,
    routes::RoundRef,
    task::{PairPath, RemoteAgent, SchedulePlan},
    views::AgentView,
};

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

/// A NetReach with every default, which the flags change.
const FLAGS_TASK: &str =
    "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {name: meshdoctor-check}\n";

/// `task` validated as the controller will validate it (and with its defaults filled in);
/// `what` names it in errors.
fn validated(task: &NetReach, what: &str) -> anyhow::Result<NetReach> {
    let text = serde_json::to_string(task).context("encoding the task")?;
    NetReach::from_yaml(what, &text).map_err(|e| anyhow!("{e}"))
}

/// Whether IPv6 is probed when no flag says: when every agent has an IPv6 address, as netctl
/// and a dual-stack cluster's users expect (both families), else IPv4 alone.
pub fn dual_stack(agents: &[AgentView]) -> bool {
    !agents.is_empty()
        && agents
            .iter()
            .all(|a| a.registration.interfaces.iter().any(|i| i.ipv6.is_some()))
}

/// The task of a check: the `--file` (validated locally first) or the flags, with a
/// one-round schedule; `ipv6_by_default` is [`dual_stack`] of the agents. The name is set by
/// [`run`].
pub fn check_task(args: &CheckArgs, ipv6_by_default: bool) -> anyhow::Result<NetReach> {
    let task = match &args.file {
        Some(path) => {
            let task = Task::from_file(path).map_err(|e| anyhow!("bad task file: {e}"))?;
            let Task::NetReach(reach) = task else {
                bail!(
                    "{}: kind: a check runs a NetReach task, this is {}",
                    path.display(),
                    task.kind()
                );
            };
            reach
        }
        None => {
            let mut task =
                NetReach::from_yaml("the command line", FLAGS_TASK).map_err(|e| anyhow!("{e}"))?;
            let (request, target) = (&mut task.spec.request, &mut task.spec.target);
            if let Some(p) = args.protocol {
                request.protocol = p;
            }
            request.qps = args.qps;
            request.duration_in_second = args.duration;
            target.ipv4 = !args.no_ipv4;
            target.ipv6 = args.ipv6 || ipv6_by_default && !args.no_ipv6;
            if let Some(i) = &args.interfaces {
                target.interfaces = Some(i.clone());
            }
            task.spec.expect.success_rate = args.success_rate;
            // Validate the flags as the controller will.
            validated(&task, "the command line")?
        }
    };
    Ok(one_round(task))
}

/// Makes `task` a cross-cluster check: the destination controller's `agents` become
/// `spec.target.remoteAgents`, named `{dst_name}/{node}`. A check from flags then probes them
/// alone (NetDoctor's dstKubeConfig); a task file keeps its own `endpoint`. The result is
/// validated as the controller will.
pub fn add_remote_agents(
    task: &NetReach,
    agents: Vec<AgentView>,
    dst_name: &str,
    from_file: bool,
) -> anyhow::Result<NetReach> {
    if agents.is_empty() {
        bail!("the destination controller has no agents registered: nothing to probe");
    }
    let mut task = task.clone();
    let target = &mut task.spec.target;
    target.remote_agents = Some(
        agents
            .into_iter()
            .map(|a| RemoteAgent {
                node: format!("{dst_name}/{}", a.registration.node),
                interfaces: a.registration.interfaces,
                probe_port: a.registration.probe_port,
            })
            .collect(),
    );
    if !from_file {
        target.endpoint = false;
    }
    validated(&task, "the cross-cluster check")
}

/// Replaces the schedule with one round starting now, with a deadline long enough for the
/// probing: "0 N" starts at once and gives the round N minutes.
fn one_round(mut task: NetReach) -> NetReach {
    let minutes = (probing(&task).as_secs() + 30).div_ceil(60).max(1);
    task.spec.schedule = SchedulePlan {
        schedule: format!("0 {minutes}"),
        round_timeout_minute: None,
        round_number: 1,
    };
    task
}

/// How long the probing of a round lasts: duration plus the last probe's timeout, in whole
/// seconds.
fn probing(task: &NetReach) -> Duration {
    let load = task.load();
    Duration::from_secs(
        load.duration.as_secs() + load.per_request_timeout.as_millis().div_ceil(1000) as u64,
    )
}

/// A fresh task name: the prefix and the Unix time.
pub fn task_name() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{TASK_PREFIX}{secs}")
}

/// Runs `task` (restricted to `pair_paths` when given) as one round and returns its result,
/// then writes the state file and deletes the task unless `keep`.
pub async fn run(
    client: &Client,
    task: &NetReach,
    pair_paths: Option<Vec<PairPath>>,
    state: &StateArgs,
) -> anyhow::Result<CheckOutput> {
    let name = task_name();
    let mut base = task.clone();
    base.metadata.name = name.clone();
    let mut sent = base.clone();
    if let Some(pp) = pair_paths {
        sent.spec.pair_paths = pp;
    }
    client
        .put_task(&sent)
        .await
        .with_context(|| format!("creating task {name}"))?;
    let outcome = tokio::select! {
        r = wait_for_round(client, &name, task) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if !state.keep
        && let Err(e) = client.delete_task(&name).await
    {
        eprintln!("warning: could not delete task {name}: {e:#} (meshdoctor clean removes it)");
    }
    let report = outcome?;
    let out = CheckOutput::new(&name, report);
    State {
        task: base,
        last_task: name,
        failed_paths: out.failed_paths.clone(),
    }
    .write(&state.state)?;
    Ok(out)
}

/// Polls round 1 of `name` until its report exists, with a progress bar on a terminal.
async fn wait_for_round(
    client: &Client,
    name: &str,
    task: &NetReach,
) -> anyhow::Result<RoundReport> {
    let probing = probing(task);
    let limit = task.round_timeout() + GRACE;
    let bar = progress_bar(name, probing);
    let start = Instant::now();
    let result = loop {
        match client.round(name, RoundRef::Number(1)).await {
            Ok(report) => break Ok(report),
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use meshdoctor_api::{AgentRegistration, InterfaceInfo, Timestamping};

    use super::*;
    use crate::args::{Args, Command};

    fn agent(node: &str, ipv6: bool) -> AgentView {
        AgentView {
            registration: AgentRegistration {
                node: node.into(),
                interfaces: vec![InterfaceInfo {
                    name: "eth0".into(),
                    network: "default".into(),
                    ipv4: Some("10.0.0.1".parse().unwrap()),
                    ipv6: ipv6.then(|| "fd00::1".parse().unwrap()),
                }],
                timestamping: Timestamping::Ebpf,
                probe_port: None,
                labels: Default::default(),
            },
            last_seen_ms: 0,
        }
    }

    fn families(flags: &[&str], ipv6_by_default: bool) -> (bool, bool) {
        let args = Args::try_parse_from(["meshdoctor", "check"].iter().chain(flags)).unwrap();
        let Command::Check(check) = args.command else {
            unreachable!()
        };
        let task = check_task(&check, ipv6_by_default).unwrap();
        (task.spec.target.ipv4, task.spec.target.ipv6)
    }

    #[test]
    fn both_families_by_default_when_every_agent_has_both() {
        assert!(dual_stack(&[agent("a", true), agent("b", true)]));
        assert!(!dual_stack(&[agent("a", true), agent("b", false)]));
        assert!(!dual_stack(&[]));
        assert_eq!(families(&[], true), (true, true));
        assert_eq!(families(&[], false), (true, false));
        assert_eq!(families(&["--no-ipv6"], true), (true, false));
        assert_eq!(families(&["--ipv6"], false), (true, true));
        assert_eq!(families(&["--no-ipv4"], true), (false, true));
    }
}
