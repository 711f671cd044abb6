//! Running the commands the lab is made of (`ip`, `nft`, `kubectl`, `podman`): to completion
//! with their stderr in the error, and named in messages.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use crate::LabError;

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<Output, LabError> {
    run_with_input(program, args, None)
}

/// [`run`], feeding `input` to the command's stdin (else stdin is empty).
pub(crate) fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<Output, LabError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_error = |source| LabError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Small inputs (rulesets) fit the pipe; a command that exits without reading all of its
    // input fails on its own and says so on stderr.
    let written = stdin.write_all(input.unwrap_or_default().as_bytes());
    drop(stdin);
    let output = child.wait_with_output().map_err(spawn_error)?;
    if let Err(e) = written
        && output.status.success()
    {
        return Err(spawn_error(e));
    }
    if !output.status.success() {
        return Err(LabError::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// `program arg ...` of `command`, for messages.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
