use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

/// Lines of a process's log quoted when it died.
const TAIL_LINES: usize = 20;

/// Why the lab could not be built, driven or queried. Every message names what was being done
/// (the command line, the file, the HTTP path) and what the system said.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab manipulates namespaces and starts privileged daemons.
    #[error("the lab needs root (run as root, e.g. `sudo -E cargo xtask lab`)")]
    NotRoot,
    /// The address plan has one /24 per network, with .254 taken by the controller.
    #[error("a lab has 1..={max} nodes, not {nodes}")]
    NodeCount { nodes: usize, max: usize },
    /// `LabConfig::second_cluster` must leave at least one node to the first cluster.
    #[error(
        "second_cluster is {second_cluster} in a lab of {nodes} nodes: it must be less than nodes \
         (the first cluster needs at least one node)"
    )]
    SecondCluster { second_cluster: usize, nodes: usize },
    /// Another live process is using the lab (the namespace names are per machine).
    #[error("another process is using the lab ({lock} is locked); wait for it to finish")]
    Busy { lock: PathBuf },
    #[error("no node {node} in a lab of {nodes} nodes (nodes are numbered from 1)")]
    NoSuchNode { node: usize, nodes: usize },
    /// A fault that does not fit the lab (no such node or interface, a rate out of range).
    #[error("fault {fault}: {reason}")]
    BadFault { fault: String, reason: String },
    #[error(
        "no lab process named {0:?} (processes are \"controller\", \"controller-2\" with a second cluster, and \"node-N\")"
    )]
    NoSuchProcess(String),
    /// A workload in the rendered manifests lacks what the containerized lab reads of it.
    #[error("{workload}: {field}: expected {expected}")]
    Manifest {
        workload: String,
        field: String,
        expected: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {ns}: {source}")]
    Netns {
        ns: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} not found: build it with `cargo build -p {package}` or point MESHDOCTOR_BIN_DIR at its directory"
    )]
    MissingBinary { path: PathBuf, package: String },
    /// An HTTP exchange with the controller failed or was answered with an error status.
    #[error("controller GET {path}: {reason}")]
    Http {
        path: String,
        /// The response status, when there was a response.
        status: Option<u16>,
        reason: String,
    },
    /// The lab's Prometheus refused a request or answered something unexpected.
    #[error("Prometheus: cannot {what}: {reason}")]
    Prometheus { what: String, reason: String },
    /// A PrometheusRule manifest the lab Prometheus cannot take its rules from.
    #[error("PrometheusRule: {0}")]
    BadRules(String),
    /// A lab process died while the lab needed it.
    #[error("{process} exited ({status}); last lines of {log}:\n{tail}")]
    ProcessExited {
        process: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} did not happen within {timeout:?} ({last}); see the logs in {logs}")]
    Timeout {
        what: String,
        timeout: Duration,
        /// The last thing observed while waiting, e.g. the last HTTP answer.
        last: String,
        logs: PathBuf,
    },
}

impl LabError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// Lab process `process` exited with `status`: quotes the last lines of its `log`.
    pub(crate) fn process_exited(process: &str, status: String, log: &Path) -> Self {
        let tail = match fs::read_to_string(log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(cannot read: {e})"),
        };
        Self::ProcessExited {
            process: process.into(),
            status,
            log: log.into(),
            tail,
        }
    }
}
