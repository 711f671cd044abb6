//! meshdoctor: the operator's command line against a controller's HTTP API.
//!
//! `meshdoctor check` runs one round of the full mesh now and exits 1 when it failed;
//! `meshdoctor resume` re-checks what failed until it is clean; `meshdoctor report mesh`
//! prints the latest round of task `mesh`. Exit status: 0 fine, 1 the checked round failed,
//! 2 a usage, I/O or controller error.

use std::process::ExitCode;

use clap::Parser as _;
use meshdoctor_cli::{args::Args, commands};

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(commands::run(&args)) {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
