//! The command line: global flags, the subcommands and their options.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use meshdoctor_api::{
    Protocol,
    task::{DEFAULT_DURATION_SECS, DEFAULT_QPS, DEFAULT_SUCCESS_RATE},
};

/// The default state file of `check` and `resume`, in the current directory as netctl's.
pub const DEFAULT_STATE: &str = "meshdoctor-resume.json";

#[derive(Debug, Parser)]
#[command(name = "meshdoctor", version = meshdoctor_ops::VERSION, about)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    /// File holding the controller's admin token (check and clean write tasks) or reader
    /// token (the other commands read). MESHDOCTOR_TOKEN gives the value itself; without
    /// either, none is sent. In Kubernetes it goes in X-Meshdoctor-Authorization, which the
    /// API server's proxy lets through.
    #[arg(long, global = true, help_heading = "Controller")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) that signed an https controller's certificate (only these are
    /// trusted). Without it, only an http:// controller is reached.
    #[arg(
        long,
        env = "MESHDOCTOR_CA_FILE",
        global = true,
        help_heading = "Controller"
    )]
    pub ca_file: Option<PathBuf>,
    /// Output format: tables for humans, JSON or YAML for scripts.
    #[arg(
        long,
        short,
        value_enum,
        default_value_t = Output::Table,
        global = true,
        help_heading = "Output"
    )]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the controller is: its URL, or a kubeconfig whose API server proxies to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub controller: String,
    /// Set for Kubernetes: `None` is KUBECONFIG or ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Kubernetes even without `kubeconfig` or `context`.
    pub kube: bool,
    /// Namespace and name of the controller Service.
    pub namespace: String,
    pub service: String,
}

impl Target {
    /// Whether the controller is reached through the Kubernetes API server.
    pub fn kubernetes(&self) -> bool {
        self.kube || self.kubeconfig.is_some() || self.context.is_some()
    }
}

#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "Controller")]
pub struct TargetArgs {
    /// Controller base URL: the standalone controller, or a port-forward. Without it, like
    /// kubectl, the current context of KUBECONFIG or ~/.kube/config when there is one (the
    /// controller behind its Service), else http://127.0.0.1:7070.
    #[arg(long, env = "MESHDOCTOR_CONTROLLER", global = true)]
    pub controller: Option<String>,
    /// Reach the controller through this kubeconfig's API server (the Service proxy);
    /// check's tasks are then NetReach objects (without it: see --controller).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (implies Kubernetes; default: the kubeconfig's current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Kubernetes, with the kubeconfig of KUBECONFIG or ~/.kube/config.
    #[arg(long, global = true)]
    pub kube: bool,
    /// Namespace of the controller Service in Kubernetes.
    #[arg(long, default_value = DEFAULT_NAMESPACE, global = true)]
    pub namespace: String,
    /// Name of the controller Service in Kubernetes.
    #[arg(long, default_value = DEFAULT_SERVICE, global = true)]
    pub controller_service: String,
}

/// The controller when neither a URL nor a kubeconfig says otherwise: a standalone one here.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7070";

impl TargetArgs {
    pub fn target(&self) -> Target {
        self.resolve(kubeconfig_present())
    }

    /// The target, given whether a kubeconfig exists: an explicit URL wins, then the
    /// Kubernetes flags, then (as kubectl does) the kubeconfig's current context.
    fn resolve(&self, kubeconfig_present: bool) -> Target {
        Target {
            controller: self
                .controller
                .clone()
                .unwrap_or_else(|| DEFAULT_CONTROLLER.into()),
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            kube: self.kube || self.controller.is_none() && kubeconfig_present,
            namespace: self.namespace.clone(),
            service: self.controller_service.clone(),
        }
    }
}

/// Whether kubectl would find a kubeconfig: a file named by KUBECONFIG, or ~/.kube/config.
fn kubeconfig_present() -> bool {
    match std::env::var_os("KUBECONFIG") {
        Some(paths) => std::env::split_paths(&paths).any(|p| p.is_file()),
        None => std::env::var_os("HOME")
            .is_some_and(|home| PathBuf::from(home).join(".kube/config").is_file()),
    }
}

/// The destination cluster of a cross-cluster check: its controller lists the agents the
/// source cluster's agents probe.
#[derive(Debug, Clone, Default, ClapArgs)]
#[command(next_help_heading = "Cross-cluster check")]
pub struct DstArgs {
    /// The destination cluster's controller URL: probe its agents from this cluster's
    /// (without it or --dst-kubeconfig, none: a check of this cluster alone).
    #[arg(long, conflicts_with_all = ["dst_kubeconfig", "dst_context"])]
    pub dst_controller: Option<String>,
    /// The destination cluster's kubeconfig (NetDoctor's dstKubeConfig): probe its agents
    /// from this cluster's; their networks must be routable from here (default: none).
    #[arg(long)]
    pub dst_kubeconfig: Option<PathBuf>,
    /// The destination kubeconfig's context (default: its current one).
    #[arg(long)]
    pub dst_context: Option<String>,
    /// Namespace of the destination controller Service.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub dst_namespace: String,
    /// Name of the destination controller Service.
    #[arg(long, default_value = DEFAULT_SERVICE)]
    pub dst_controller_service: String,
    /// Prefix of the destination nodes in reports: `dst/node-3`.
    #[arg(long, default_value = "dst")]
    pub dst_name: String,
    /// File holding the destination controller's reader token (without it, none is sent).
    #[arg(long, value_name = "FILE")]
    pub dst_token_file: Option<PathBuf>,
    /// PEM CA of an https destination controller (without it, only http:// is reached).
    #[arg(long, value_name = "FILE")]
    pub dst_ca_file: Option<PathBuf>,
}

impl DstArgs {
    /// The destination controller, if a cross-cluster check was asked for.
    pub fn target(&self) -> Option<Target> {
        let kube = self.dst_kubeconfig.is_some() || self.dst_context.is_some();
        if self.dst_controller.is_none() && !kube {
            return None;
        }
        Some(Target {
            controller: self.dst_controller.clone().unwrap_or_default(),
            kubeconfig: self.dst_kubeconfig.clone(),
            context: self.dst_context.clone(),
            kube,
            namespace: self.dst_namespace.clone(),
            service: self.dst_controller_service.clone(),
        })
    }
}

/// The namespace of deploy/.
pub const DEFAULT_NAMESPACE: &str = "meshdoctor";
/// The controller Service of deploy/.
pub const DEFAULT_SERVICE: &str = "meshdoctor-controller";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs one NetReach round now (the full mesh by default) and prints the faulty
    /// interfaces, the failed pair-paths and a summary. Exits 1 when the expectation failed.
    Check(Box<CheckArgs>),
    /// Re-checks only the pair-paths that failed in the last check or resume (the state file).
    /// Exits 0 once they are clean.
    Resume(StateArgs),
    /// A round report of a task: the pair table and a summary. Exits 1 when the round failed.
    Report {
        task: String,
        /// Round number; the latest when omitted.
        #[arg(long, conflicts_with = "watch")]
        round: Option<u32>,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// The faulty interfaces (and domain pairs) of every task's latest round. Exits 1 when
    /// there is any.
    Findings {
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// The tasks the controller runs, with their status.
    Tasks,
    /// The registered agents and their interfaces.
    Agents,
    /// Deletes the `meshdoctor-check-*` tasks check left on the controller (in Kubernetes:
    /// the NetReach objects it created) and the state file.
    Clean(StateArgs),
    /// Prints the credential a standalone agent presents for NODE (its --token-file), made
    /// with the controller's --agent-key-file. No controller is contacted.
    AgentCredential {
        /// The controller's agent key file.
        #[arg(long, value_name = "FILE", required = true)]
        agent_key_file: PathBuf,
        /// The agent's node name (its --node).
        #[arg(long, required = true)]
        node: String,
    },
    /// Prints a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Following rounds as they finish, as `kubectl get --watch` follows objects.
#[derive(Debug, Clone, Copy, Default, ClapArgs)]
#[command(next_help_heading = "Watch")]
pub struct WatchArgs {
    /// Print again each time a round finishes, until interrupted (or --rounds).
    #[arg(long, short)]
    pub watch: bool,
    /// With --watch: stop after this many new rounds (default: when interrupted).
    #[arg(long, requires = "watch", value_name = "N")]
    pub rounds: Option<u32>,
    /// With --watch: how often to ask the controller, in seconds.
    #[arg(long, requires = "watch", default_value_t = 2, value_name = "SECONDS")]
    pub interval: u64,
}

#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "State")]
pub struct StateArgs {
    /// Where check writes the failed pair-paths and resume reads them.
    #[arg(long, default_value = DEFAULT_STATE)]
    pub state: PathBuf,
    /// Keep the check's task on the controller (`meshdoctor clean` removes it).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct CheckArgs {
    /// A NetReach task file (YAML or JSON) instead of the flags below; its name is replaced
    /// (without it, the flags make the task).
    #[arg(long, short, conflicts_with_all = [
        "protocol", "interfaces", "ipv4", "no_ipv4", "ipv6", "no_ipv6", "qps", "duration",
        "success_rate",
    ])]
    pub file: Option<PathBuf>,
    /// Probe protocol: icmp, udp, tcp or http (default: icmp, NetReach's).
    #[arg(long, value_parser = str::parse::<Protocol>)]
    pub protocol: Option<Protocol>,
    /// Networks (or interface names) to mesh over, comma-separated; all when omitted.
    #[arg(long, visible_alias = "networks", value_delimiter = ',')]
    pub interfaces: Option<Vec<String>>,
    /// Probe IPv4 (the default).
    #[arg(long, overrides_with = "no_ipv4")]
    pub ipv4: bool,
    /// Do not probe IPv4.
    #[arg(long)]
    pub no_ipv4: bool,
    /// Probe IPv6 (the default when every agent has an IPv6 address).
    #[arg(long, overrides_with = "no_ipv6")]
    pub ipv6: bool,
    /// Do not probe IPv6.
    #[arg(long)]
    pub no_ipv6: bool,
    /// Probes per second per pair-path.
    #[arg(long, default_value_t = DEFAULT_QPS)]
    pub qps: u32,
    /// Seconds of probing.
    #[arg(long, default_value_t = DEFAULT_DURATION_SECS)]
    pub duration: u32,
    /// The round fails when fewer probes than this ratio (0..=1) come back.
    #[arg(long, default_value_t = DEFAULT_SUCCESS_RATE)]
    pub success_rate: f64,
    #[command(flatten)]
    pub dst: DstArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(flags: &[&str], kubeconfig_present: bool) -> Target {
        let args =
            Args::try_parse_from(["meshdoctor"].iter().chain(flags).chain(&["agents"])).unwrap();
        args.target.resolve(kubeconfig_present)
    }

    #[test]
    fn every_flag_says_its_default_values_or_absence() {
        meshdoctor_ops::assert_flags_explained(&<Args as clap::CommandFactory>::command());
    }

    #[test]
    fn like_kubectl_the_current_context_unless_a_url_is_given() {
        assert!(target(&[], true).kubernetes());
        let local = target(&[], false);
        assert!(!local.kubernetes());
        assert_eq!(local.controller, DEFAULT_CONTROLLER);
        let url = target(&["--controller", "http://ctl:7070"], true);
        assert!(!url.kubernetes());
        assert_eq!(url.controller, "http://ctl:7070");
        assert!(target(&["--context", "prod"], false).kubernetes());
    }
}
