//! The agent refuses to start without the capabilities it needs, at once, naming them.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use meshdoctor_e2e::can_run;

/// Runs the agent under `setpriv` with the given privilege options; it must exit by itself
/// within a few seconds.
fn agent_under(setpriv: &[&str], extra: &[&str]) -> (Output, Duration) {
    let agent = meshdoctor_lab::default_bin_dir().join("meshdoctor-agent");
    assert!(
        agent.exists(),
        "{} not built (cargo xtask test builds it)",
        agent.display()
    );
    let start = Instant::now();
    let mut child = Command::new("setpriv")
        .args(setpriv)
        .arg(&agent)
        .args(["--node", "node-x", "--controller", "http://127.0.0.1:9"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv runs");
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("agent did not stop by itself within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().expect("output"), start.elapsed())
}

#[test]
fn agent_without_root_names_every_missing_capability() {
    if !can_run("agent_without_root_names_every_missing_capability") {
        return;
    }
    let (out, took) = agent_under(&["--reuid=65534", "--regid=65534", "--clear-groups"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    for cap in ["CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"] {
        assert!(err.contains(cap), "{cap} not named in: {err}");
    }
}

#[test]
fn agent_with_only_net_raw_names_the_ebpf_capabilities() {
    if !can_run("agent_with_only_net_raw_names_the_ebpf_capabilities") {
        return;
    }
    // Root, but the bounding set leaves only CAP_NET_RAW.
    let (out, _) = agent_under(&["--bounding-set=-all,+net_raw", "--inh-caps=-all"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for cap in ["CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"] {
        assert!(err.contains(cap), "{cap} not named in: {err}");
    }
    assert!(!err.contains("CAP_NET_RAW ("), "NET_RAW is present: {err}");
}

#[test]
fn agent_rejects_a_malformed_interface_flag() {
    if !can_run("agent_rejects_a_malformed_interface_flag") {
        return;
    }
    let (out, _) = agent_under(&[], &["--interface", "eth0="]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--interface") && err.contains("INTERFACE=NETWORK"),
        "{err}"
    );
}

#[test]
fn agent_rejects_an_event_buffer_that_is_not_a_power_of_two() {
    if !can_run("agent_rejects_an_event_buffer_that_is_not_a_power_of_two") {
        return;
    }
    let (out, _) = agent_under(&[], &["--event-buffer-kib", "100"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--event-buffer-kib") && err.contains("power of two"),
        "{err}"
    );
}

/// `--log-format json`: every line the agent logs is one JSON object with its level and
/// message (here: its start, then its retries against a controller that is not there).
#[test]
fn agent_logs_json_lines_with_log_format_json() {
    if !can_run("agent_logs_json_lines_with_log_format_json") {
        return;
    }
    use std::io::{BufRead as _, BufReader};
    let agent = meshdoctor_lab::default_bin_dir().join("meshdoctor-agent");
    let mut child = Command::new(&agent)
        .args([
            "--node",
            "node-x",
            "--controller",
            "http://127.0.0.1:9",
            "--no-ebpf",
        ])
        .args([
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--probe-port",
            "0",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent runs");
    let stderr = child.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let retrying = line.contains("retrying");
        lines.push(line);
        if retrying || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("retrying")),
        "no retry logged: {lines:?}"
    );
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}
