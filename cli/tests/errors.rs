//! The built binary's clear errors: an unreachable controller, a bad flag, a bad task file.

use std::process::{Command, Output};

fn meshdoctor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshdoctor"))
        .args(args)
        .env_remove("MESHDOCTOR_CONTROLLER")
        .env_remove("MESHDOCTOR_TOKEN")
        .output()
        .expect("running meshdoctor")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unreachable_controller_is_named_with_a_hint() {
    let out = meshdoctor(&["--controller", "http://127.0.0.1:1", "tasks"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the controller at http://127.0.0.1:1: ")
            && err.contains("(is it running? --controller / MESHDOCTOR_CONTROLLER)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_bad_flag_exits_2() {
    let out = meshdoctor(&["check", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--no-such-flag"));
    let out = meshdoctor(&["check", "--protocol", "sctp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expected icmp, tcp, udp or http"));
}

#[test]
fn a_bad_task_file_names_the_file_and_the_field() {
    let dir = std::env::temp_dir().join(format!("meshdoctor-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad-task.yaml");
    std::fs::write(
        &file,
        "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {name: x}\n\
         spec:\n  request:\n    qps: 0\n",
    )
    .unwrap();
    // Checked before anything is sent: the controller is never reached.
    let file_arg = file.to_str().unwrap();
    let out = meshdoctor(&[
        "--controller",
        "http://127.0.0.1:1",
        "check",
        "--file",
        file_arg,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(file_arg) && err.contains("spec.request.qps"),
        "{err}"
    );
    assert!(!err.contains("cannot reach"), "{err}");

    std::fs::write(&file, "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {name: x}\nspec: {bogus: 1}\n").unwrap();
    let out = meshdoctor(&["check", "--file", file_arg]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(file_arg) && err.contains("bogus"), "{err}");

    let out = meshdoctor(&["check", "--file", "/nonexistent/task.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/task.yaml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_without_a_state_file_says_to_check_first() {
    let out = meshdoctor(&["resume", "--state", "/nonexistent/state.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("run `meshdoctor check` first"));
}

#[test]
fn completions_are_printed() {
    let out = meshdoctor(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("meshdoctor"));
}
