//! The network-namespace lab: N "nodes" and a controller "pod" on one machine.
//!
//! Two layers:
//! - [`Network`] builds the namespaces, bridges, veths and addresses (the fixed [address
//!   plan](crate::plan)) and removes them on drop. It needs root and nothing else.
//! - [`Lab`] adds the processes: `meshdoctor-controller` in `mdlab-ctl` and one
//!   `meshdoctor-agent` per node, with a lab directory for tasks, data, logs and the token.
//!   With [`LabConfig::second_cluster`] the last nodes form a second cluster with its own
//!   controller (`controller-2` on [`plan::SECOND_CONTROLLER_PORT`]), for cross-cluster checks.
//!
//! With [`LabConfig::containers`] the agents and controllers run as podman containers of the
//! project's image instead, each with the security context its manifest declares
//! ([`Containers::from_manifests`]).
//!
//! Both inject [`Fault`]s: random loss of the probes' echo packets on one node, interface,
//! family and direction, on the link (in the switch) or in the node's stack, made with nftables
//! (`LabConfig::faults` before the agents start, `inject` / `remove_fault` / `clear_faults`
//! while they run).
//!
//! Tests start the real servers application probes need (nginx, unbound) inside the lab with
//! [`Lab::spawn_server`], and add tasks while it runs with [`Lab::add_task`]; [`TestCa`],
//! [`nginx_config`], [`UnboundConfig`] and [`die_with_parent`] serve every test and benchmark
//! that runs such a server, in the lab or not. [`Prometheus`] is one such server: a real
//! Prometheus scraping the lab, to query and to evaluate alert rules against.
//!
//! The namespace names are fixed (the agent and controller tests rely on them), so only one lab
//! can exist per machine: building one first removes the leftovers of a crashed run, and inside
//! one process a lock makes concurrent tests take turns instead of tearing each other down.

mod command;
mod container;
mod error;
mod fault;
mod http;
mod lab;
mod net;
mod pki;
pub mod plan;
mod prometheus;
mod server;
mod task;

pub use command::command_line;
pub use container::{
    Containers, HostMount, PodSecurity, SECCOMP_ROOT, Seccomp, container_name, kubectl, render,
    venv_dir,
};
pub use error::LabError;
pub use fault::{FAULT_SYNTAX, FAULT_TABLE_PREFIX, Fault, FaultParseError};
pub use lab::{Lab, LabConfig, default_bin_dir};
pub use net::{Network, cleanup_leftovers, in_netns, is_root};
pub use pki::{Pem, TestCa};
pub use prometheus::{
    AGENT_JOB, Alert, CONTROLLER_JOB, PROMETHEUS_ADDR, Prometheus, Sample, alert_rules,
};
pub use server::{LabServer, UnboundConfig, UnboundTls, die_with_parent, nginx_config};
pub use task::{DEFAULT_QPS, DEFAULT_SECS, MeshTask, default_task_yaml, task_yaml};
