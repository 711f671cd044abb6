//! One function per subcommand. Each prints its output and returns whether the thing it
//! checked failed (exit status 1); errors are exit status 2.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;
use meshdoctor_api::{RoundStatus, routes::RoundRef};

use crate::{
    args::{Args, CheckArgs, Command, Output, StateArgs},
    check::{self, TASK_PREFIX},
    client::Client,
    output::{self, CheckOutput},
    state::State,
};

pub async fn run(args: &Args) -> anyhow::Result<bool> {
    if let Command::Completions { shell } = &args.command {
        let mut cmd = Args::command();
        clap_complete::generate(*shell, &mut cmd, "meshdoctor", &mut std::io::stdout());
        return Ok(false);
    }
    let client = Client::connect(&args.target.target(), args.token_file.as_deref()).await?;
    let out = args.output;
    match &args.command {
        Command::Check(check) => run_check(&client, out, check).await,
        Command::Resume(state) => resume(&client, out, state).await,
        Command::Report { task, round } => report(&client, out, task, *round).await,
        Command::Tasks => list(out, &client.tasks().await?, output::task_row),
        Command::Agents => list(out, &client.agents().await?, output::agent_row),
        Command::Clean(state) => clean(&client, &state.state).await,
        Command::Completions { .. } => unreachable!("handled above"),
    }
}

async fn run_check(client: &Client, out: Output, args: &CheckArgs) -> anyhow::Result<bool> {
    let mut task = check::check_task(args)?;
    if let Some(dst) = args.dst.target() {
        let dst_client = Client::connect(&dst, None).await?;
        let agents = dst_client
            .agents()
            .await
            .context("listing the destination cluster's agents")?;
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

async fn report(
    client: &Client,
    out: Output,
    task: &str,
    round: Option<u32>,
) -> anyhow::Result<bool> {
    let which = round.map_or(RoundRef::Latest, RoundRef::Number);
    let report = client.round(task, which).await?;
    print!("{}", output::render_report(out, &report)?);
    Ok(report.status == RoundStatus::Fail)
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
