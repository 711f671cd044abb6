//! One function per subcommand. Each prints its output and returns whether the thing it
//! checked failed (exit status 1); errors are exit status 2.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;
use std::time::Duration;

use meshdoctor_api::{RoundReport, RoundStatus, routes::RoundRef, views::TaskFindings};

use crate::{
    args::{Args, CheckArgs, Command, Output, StateArgs, WatchArgs},
    check::{self, TASK_PREFIX},
    client::{Client, Token},
    output::{self, CheckOutput},
    state::State,
};

pub async fn run(args: &Args) -> anyhow::Result<bool> {
    if let Command::Completions { shell } = &args.command {
        let mut cmd = Args::command();
        clap_complete::generate(*shell, &mut cmd, "meshdoctor", &mut std::io::stdout());
        return Ok(false);
    }
    if let Command::AgentCredential {
        agent_key_file,
        node,
    } = &args.command
    {
        let key = meshdoctor_ops::credential::NodeKey::read(agent_key_file)?;
        println!("{}", key.credential(node));
        return Ok(false);
    }
    let token = args.token_file.as_deref().map_or(Token::Env, Token::File);
    let client = Client::connect(&args.target.target(), token, args.ca_file.as_deref()).await?;
    let out = args.output;
    match &args.command {
        Command::Check(check) => run_check(&client, out, check).await,
        Command::Resume(state) => resume(&client, out, state).await,
        Command::Report { task, round, watch } => match round {
            Some(n) => print_report(out, &client.round(task, RoundRef::Number(*n)).await?),
            None => {
                let latest = async || client.round(task, RoundRef::Latest).await;
                watching(*watch, latest, |r| r.round, |r| print_report(out, r)).await
            }
        },
        Command::Findings { watch } => {
            let findings = async || client.findings().await;
            let rounds = |all: &Vec<TaskFindings>| -> Vec<(String, u32)> {
                all.iter().map(|t| (t.task.clone(), t.round)).collect()
            };
            watching(*watch, findings, rounds, |all| print_findings(out, all)).await
        }
        Command::Tasks => list(out, &client.tasks().await?, output::task_row),
        Command::Agents => list(out, &client.agents().await?, output::agent_row),
        Command::Clean(state) => clean(&client, &state.state).await,
        Command::Completions { .. } | Command::AgentCredential { .. } => {
            unreachable!("handled above")
        }
    }
}

async fn run_check(client: &Client, out: Output, args: &CheckArgs) -> anyhow::Result<bool> {
    let dst_agents = match args.dst.target() {
        Some(dst) => Some(
            Client::connect(
                &dst,
                args.dst
                    .dst_token_file
                    .as_deref()
                    .map_or(Token::None, Token::File),
                args.dst.dst_ca_file.as_deref(),
            )
            .await?
            .agents()
            .await
            .context("listing the destination cluster's agents")?,
        ),
        None => None,
    };
    // Both families when every agent has both (the destination's too), unless a flag or a
    // task file says.
    let ipv6 = args.file.is_none()
        && check::dual_stack(&client.agents().await.context("listing the agents")?)
        && dst_agents.as_deref().is_none_or(check::dual_stack);
    let mut task = check::check_task(args, ipv6)?;
    if let Some(agents) = dst_agents {
        task = check::add_remote_agents(&task, agents, &args.dst.dst_name, args.file.is_some())?;
    }
    let result = check::run(client, &task, None, &args.state).await?;
    print_check(out, &result)
}

fn print_check(out: Output, result: &CheckOutput) -> anyhow::Result<bool> {
    print!("{}", result.render(out)?);
    Ok(result.failed())
}

async fn resume(client: &Client, out: Output, args: &StateArgs) -> anyhow::Result<bool> {
    let state = State::read(&args.state)?;
    if state.failed_paths.is_empty() {
        eprintln!(
            "{}: nothing failed in the last check ({}): run `meshdoctor check` for a full one",
            args.state.display(),
            state.last_task
        );
        return Ok(false);
    }
    eprintln!(
        "re-checking the {} pair-path(s) that failed in {}",
        state.failed_paths.len(),
        state.last_task
    );
    let pair_paths = state.failed_paths.iter().map(|p| p.pair_path()).collect();
    let result = check::run(client, &state.task, Some(pair_paths), args).await?;
    print_check(out, &result)
}

fn print_report(out: Output, report: &RoundReport) -> anyhow::Result<bool> {
    print!("{}", output::render_report(out, report)?);
    Ok(report.status == RoundStatus::Fail)
}

fn print_findings(out: Output, all: &[TaskFindings]) -> anyhow::Result<bool> {
    print!("{}", output::render_findings(out, all)?);
    Ok(all.iter().any(|t| !t.findings.is_empty()))
}

/// Fetches and prints once; with --watch, again each time `key` of what is fetched (the
/// rounds shown) changes, until interrupted or --rounds new rounds were shown. A controller
/// that does not answer for a while (a restart, a leader change) is waited for, not fatal.
/// Whether the last thing shown failed.
async fn watching<T, K: PartialEq>(
    watch: WatchArgs,
    fetch: impl AsyncFn() -> anyhow::Result<T>,
    key: impl Fn(&T) -> K,
    print: impl Fn(&T) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let first = fetch().await?;
    let mut failed = print(&first)?;
    if !watch.watch {
        return Ok(failed);
    }
    let (mut shown, mut new_rounds) = (key(&first), 0);
    let period = Duration::from_secs(watch.interval.max(1));
    // The first look again is one period after the first fetch, not at once.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while watch.rounds.is_none_or(|n| new_rounds < n) {
        ticker.tick().await;
        let next = match fetch().await {
            Ok(next) => next,
            Err(e) => {
                eprintln!("watching: {e:#}; retrying");
                continue;
            }
        };
        if key(&next) != shown {
            shown = key(&next);
            new_rounds += 1;
            println!();
            failed = print(&next)?;
        }
    }
    Ok(failed)
}

fn list<T: serde::Serialize>(
    out: Output,
    items: &[T],
    row: fn(&T) -> String,
) -> anyhow::Result<bool> {
    print!("{}", output::render_list(out, items, row)?);
    Ok(false)
}

/// Deletes the tasks `check` left behind (`--keep`, or an interrupted run) and the state file.
async fn clean(client: &Client, state: &Path) -> anyhow::Result<bool> {
    let names = client.check_tasks(TASK_PREFIX).await?;
    for name in &names {
        if client.delete_task(name).await? {
            println!("deleted task {name}");
        }
    }
    if names.is_empty() {
        println!("no {TASK_PREFIX}* task on {}", client.server());
    }
    match std::fs::remove_file(state) {
        Ok(()) => println!("removed {}", state.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", state.display())),
    }
    Ok(false)
}
