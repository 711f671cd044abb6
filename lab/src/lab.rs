//! The lab with its processes: the controller in `mdlab-ctl` and one agent per node, and with
//! [`LabConfig::second_cluster`] a second controller next to the first for the last nodes; as
//! processes, or with [`LabConfig::containers`] as podman containers of the image.

use std::{
    fs::{self, File, OpenOptions},
    io::Read,
    net::{Ipv6Addr, SocketAddr},
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use meshdoctor_api::{
    RoundReport,
    routes::{self, RoundRef},
};

use crate::{
    Fault, LabError, LabServer, Network,
    command::{self, command_line},
    container::{self, Containers},
    fault::FAULT_TABLE_PREFIX,
    http, in_netns,
    net::{TERM_GRACE, is_running},
    plan::{
        CONTROLLER_NS, CONTROLLER_PORT, INTERFACES, SECOND_CONTROLLER_PORT, cluster_of, node_name,
        node_ns,
    },
    task::default_task_yaml,
};

const CONTROLLER_BIN: &str = "meshdoctor-controller";
const AGENT_BIN: &str = "meshdoctor-agent";
const POLL: Duration = Duration::from_millis(200);

/// The directory holding the agent and controller binaries: `$MESHDOCTOR_BIN_DIR`, else the
/// debug profile of the cargo target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`),
/// which is what `cargo build` and the tests use.
pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHDOCTOR_BIN_DIR") {
        return dir.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("debug")
}

/// What lab to build.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Number of nodes (agents), `1..=plan::MAX_NODES`.
    pub nodes: usize,
    /// Lab directory: `tasks/`, `data/`, `logs/`, `faults/` (the nft rulesets) and `token` are
    /// (re)created in it, and `tasks-2/` and `data-2/` with a second cluster.
    pub dir: PathBuf,
    /// Where `meshdoctor-controller` and `meshdoctor-agent` are.
    pub bin_dir: PathBuf,
    /// Task files written to `tasks/` before the controller starts: (file name, YAML).
    pub tasks: Vec<(String, String)>,
    /// How long to wait for the controller to list every agent (for each controller).
    pub ready_timeout: Duration,
    /// Faults injected before any agent starts, so they are in place before the first probe;
    /// checked against the lab before anything is built.
    pub faults: Vec<Fault>,
    /// Extra command-line flags for every agent (e.g. `--event-buffer-kib 4 --fixed-observer-maps`).
    pub agent_args: Vec<String>,
    /// Extra command-line flags for the controller (e.g. `--pair-metrics`); both controllers
    /// get them when there is a second cluster.
    pub controller_args: Vec<String>,
    /// The last `second_cluster` nodes form a second cluster, on the same (routable) lab
    /// network: their agents register with a second controller, process `controller-2`, also
    /// in `mdlab-ctl`, listening on
    /// [`SECOND_CONTROLLER_PORT`](crate::plan::SECOND_CONTROLLER_PORT) (agents use
    /// [`SECOND_CONTROLLER_URL`](crate::plan::SECOND_CONTROLLER_URL)), with the tasks dir
    /// `tasks-2/` (empty: [`tasks`](Self::tasks) go to the first controller only), the data dir
    /// `data-2/` and the same token. See [`plan::cluster_of`](crate::plan::cluster_of).
    /// 0 (the default) is a single cluster; otherwise less than `nodes`, so the first cluster
    /// keeps at least one node.
    pub second_cluster: usize,
    /// Splits the nodes into this many topology zones, consecutive blocks `zone-1`, ...
    /// ([`plan::zone_of`](crate::plan::zone_of)), each agent started with `--zone`; 0 (the
    /// default): no zones.
    pub zones: usize,
    /// Runs the agents and the controllers as podman containers of an image, with the
    /// security contexts of the manifests, instead of as processes; `None` (the default):
    /// processes from [`bin_dir`](Self::bin_dir).
    pub containers: Option<Containers>,
    /// Mounts a tmpfs of this many KiB as `data/`, the first controller's data dir, so that a
    /// test can fill the controller's disk; `None` (the default): the lab directory's own
    /// filesystem.
    pub data_size_kib: Option<u32>,
}

impl LabConfig {
    /// `nodes` nodes in /run/meshdoctor-lab, binaries from [`default_bin_dir`], and the default
    /// task `mesh`.
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            dir: PathBuf::from("/run/meshdoctor-lab"),
            bin_dir: default_bin_dir(),
            tasks: vec![("mesh.yaml".into(), default_task_yaml("mesh"))],
            ready_timeout: Duration::from_secs(30),
            faults: Vec::new(),
            agent_args: Vec::new(),
            controller_args: Vec::new(),
            second_cluster: 0,
            zones: 0,
            containers: None,
            data_size_kib: None,
        }
    }
}

/// A started lab process.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// How it was started, to start it again ([`Lab::restart`]).
    launch: Launch,
}

/// A command's program, arguments and environment, kept to run it again.
struct Launch {
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)>,
}

impl Launch {
    fn of(command: &Command) -> Self {
        Self {
            program: command.get_program().to_owned(),
            args: command.get_args().map(ToOwned::to_owned).collect(),
            envs: command
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
                .collect(),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for (key, value) in &self.envs {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command
    }
}

impl Proc {
    /// `Some(status)` once the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown status: {e}")),
        }
    }

    fn exited_error(&self, status: String) -> LabError {
        LabError::process_exited(&self.name, status, &self.log)
    }
}

/// A running lab: the [`Network`], the controller and the agents.
///
/// Dropping it (also while unwinding from a panic) stops the processes and removes the
/// network; the lab directory with its logs stays for inspection until the next lab.
pub struct Lab {
    procs: Vec<Proc>,
    dir: PathBuf,
    /// The admin token, and the client side of the controllers' TLS.
    admin: String,
    tls: http::Tls,
    containers: Option<Containers>,
    /// The tmpfs of [`LabConfig::data_size_kib`], unmounted when the lab goes down.
    data_mount: Option<PathBuf>,
    // Declared last: dropped after `Drop::drop` has stopped the processes.
    net: Network,
}

impl Lab {
    /// Builds the network (removing leftovers of a crashed run first), starts the controller
    /// (both controllers with a [second cluster](LabConfig::second_cluster)) and then the
    /// agents, and waits until each controller lists all of its agents.
    pub fn up(cfg: LabConfig) -> Result<Lab, LabError> {
        if cfg.second_cluster >= cfg.nodes.max(1) {
            return Err(LabError::SecondCluster {
                second_cluster: cfg.second_cluster,
                nodes: cfg.nodes,
            });
        }
        for fault in &cfg.faults {
            fault.check(cfg.nodes)?;
        }
        let binaries = [
            (CONTROLLER_BIN, "meshdoctor-controller"),
            (AGENT_BIN, "meshdoctor-agent"),
        ];
        // Containers run the image's binaries.
        for (bin, package) in binaries.iter().filter(|_| cfg.containers.is_none()) {
            let path = cfg.bin_dir.join(bin);
            if !path.is_file() {
                return Err(LabError::MissingBinary {
                    path,
                    package: (*package).into(),
                });
            }
        }
        let net = Network::build(cfg.nodes)?;
        let (admin, tls) = prepare_dir(&cfg)?;
        let data = cfg.dir.join("data");
        let data_mount = match cfg.data_size_kib {
            Some(kib) => {
                let (size, dir) = (format!("size={kib}k"), data.display().to_string());
                command::run("mount", &["-t", "tmpfs", "-o", &size, "mdlab-data", &dir])?;
                Some(data)
            }
            None => None,
        };
        let mut lab = Lab {
            procs: Vec::new(),
            dir: cfg.dir.clone(),
            admin,
            tls,
            containers: cfg.containers.clone(),
            data_mount,
            net,
        };
        for fault in &cfg.faults {
            lab.inject(fault)?;
        }
        if let Some(containers) = &cfg.containers {
            container::grant(&cfg.dir, &containers.controller, &CONTROLLER_SECRETS)?;
        }
        let first_cluster = cfg.nodes - cfg.second_cluster;
        lab.spawn_controller(&cfg, "controller", CONTROLLER_PORT, "", first_cluster)?;
        if cfg.second_cluster > 0 {
            lab.spawn_controller(
                &cfg,
                "controller-2",
                SECOND_CONTROLLER_PORT,
                "-2",
                cfg.second_cluster,
            )?;
        }
        let ca = format!("{}/{API_TLS}/ca.pem", cfg.dir.display());
        let interfaces: Vec<String> = INTERFACES
            .iter()
            .map(|i| format!("{}={}", i.name, i.network))
            .collect();
        for i in 1..=cfg.nodes {
            let node = node_name(i);
            let controller = cluster_of(i, cfg.nodes, cfg.second_cluster).controller_url();
            let credential = format!("{}/{CREDENTIALS}/{node}", cfg.dir.display());
            let mut args = vec!["--node", &node, "--controller", controller];
            args.extend(["--token-file", &credential, "--controller-ca", &ca]);
            for iface in &interfaces {
                args.extend(["--interface", iface]);
            }
            let listen = format!("[::]:{}", crate::plan::AGENT_PORT);
            args.extend(["--listen", &listen]);
            let zone = crate::plan::zone_of(i, cfg.nodes, cfg.zones);
            if let Some(zone) = &zone {
                args.extend(["--zone", zone]);
            }
            args.extend(cfg.agent_args.iter().map(String::as_str));
            lab.spawn_meshdoctor(&cfg, &node, &node_ns(i), Role::Agent, &args)?;
        }
        lab.wait_agents(CONTROLLER_PORT, first_cluster, cfg.ready_timeout)?;
        if cfg.second_cluster > 0 {
            lab.wait_agents(
                SECOND_CONTROLLER_PORT,
                cfg.second_cluster,
                cfg.ready_timeout,
            )?;
        }
        Ok(lab)
    }

    /// The lab directory (tasks/, data/, logs/, tls/, the API's credentials and TLS; tasks-2/
    /// and data-2/ with a second cluster).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The controllers' `--tls-dir`: the only place the TLS files tasks name may be.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    pub fn nodes(&self) -> usize {
        self.net.nodes()
    }

    /// The file holding the controllers' admin token (task writes and reads).
    pub fn admin_token_path(&self) -> PathBuf {
        self.dir.join(ADMIN_TOKEN)
    }

    /// The file holding the controllers' reader token.
    pub fn reader_token_path(&self) -> PathBuf {
        self.dir.join(READER_TOKEN)
    }

    /// The CA that signed the controllers' certificate (`--ca-file` of the CLI).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(API_TLS).join("ca.pem")
    }

    /// Log file of a process: `controller`, `controller-2` or a node name (`node-1`).
    pub fn log_path(&self, process: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{process}.log"))
    }

    /// Starts a server (`program` with `args`) inside the lab namespace `ns` (e.g.
    /// [`CONTROLLER_NS`](crate::plan::CONTROLLER_NS) or a node's), its output in
    /// `logs/<name>.log`. It runs until the returned handle is stopped or dropped; drop it
    /// before the lab (declare it after the lab), though the lab's network removes anything
    /// left in its namespaces anyway.
    pub fn spawn_server(
        &self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[&str],
    ) -> Result<LabServer, LabError> {
        LabServer::spawn(name, ns, program, args, self.log_path(name))
    }

    /// Writes a task file into `tasks/` while the lab runs (atomically, so the controller, which
    /// re-reads the directory every 2 s, never sees half a file); the controller then starts
    /// it. Returns the file's path. With a second cluster this is the first cluster's
    /// controller; `tasks-2/` in [`dir`](Self::dir) is the second's.
    pub fn add_task(&self, file: &str, yaml: &str) -> Result<PathBuf, LabError> {
        let dir = self.dir.join("tasks");
        let path = dir.join(file);
        let tmp = dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml).map_err(LabError::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(LabError::io(&path))?;
        Ok(path)
    }

    /// Runs a command inside node `node`'s namespace, e.g. `nft`; a non-zero exit is an error.
    pub fn exec(&self, node: usize, args: &[&str]) -> Result<Output, LabError> {
        self.net.exec(node, args)
    }

    /// Loads an nft ruleset into node `node`'s namespace, e.g. a rule cutting its agent off
    /// from the controller; [`exec`](Self::exec) `nft delete table ...` removes it.
    pub fn nft(&self, node: usize, ruleset: &str) -> Result<(), LabError> {
        self.net.nft(node, ruleset)
    }

    /// Starts dropping the fault's packets, e.g. while a task runs; a fault at the same place
    /// is replaced. The ruleset is kept in `faults/` while the fault is active.
    pub fn inject(&self, fault: &Fault) -> Result<(), LabError> {
        self.net.inject(fault)?;
        self.record(&fault.table(), &fault.ruleset())
    }

    /// Stops the fault at this place (the rate does not matter); nothing to stop is fine.
    pub fn remove_fault(&self, fault: &Fault) -> Result<(), LabError> {
        self.net.remove_fault(fault)?;
        self.unrecord(|name| name == fault.table())
    }

    /// Stops every injected fault ([`LabConfig::faults`] and [`inject`](Self::inject)); other
    /// nft tables stay.
    pub fn clear_faults(&self) -> Result<(), LabError> {
        self.net.clear_faults()?;
        self.unrecord(|name| name.starts_with(FAULT_TABLE_PREFIX))
    }

    /// Packets the fault has dropped since it was injected.
    pub fn fault_drops(&self, fault: &Fault) -> Result<u64, LabError> {
        self.net.fault_drops(fault)
    }

    /// Keeps a copy of a loaded ruleset as `faults/<name>.nft`, for whoever inspects the lab.
    fn record(&self, name: &str, ruleset: &str) -> Result<(), LabError> {
        let file = self.dir.join("faults").join(format!("{name}.nft"));
        fs::write(&file, ruleset).map_err(LabError::io(&file))
    }

    /// Removes the copies in `faults/` whose name (without `.nft`) matches.
    fn unrecord(&self, matches: impl Fn(&str) -> bool) -> Result<(), LabError> {
        let dir = self.dir.join("faults");
        for entry in fs::read_dir(&dir).map_err(LabError::io(&dir))? {
            let path = entry.map_err(LabError::io(&dir))?.path();
            let name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.extension().is_some_and(|e| e == "nft") && matches(name) {
                fs::remove_file(&path).map_err(LabError::io(&path))?;
            }
        }
        Ok(())
    }

    /// GET on the controller's API, from inside its namespace; any status but 2xx is an error
    /// ([`LabError::Http`] with the status). With a second cluster this is the first cluster's
    /// controller; see [`controller_get_on`](Self::controller_get_on).
    pub fn controller_get(&self, path: &str) -> Result<serde_json::Value, LabError> {
        self.controller_get_on(CONTROLLER_PORT, path)
    }

    /// [`controller_get`](Self::controller_get) on the controller listening on `port`:
    /// [`CONTROLLER_PORT`](crate::plan::CONTROLLER_PORT) (the first cluster's), or
    /// [`SECOND_CONTROLLER_PORT`](crate::plan::SECOND_CONTROLLER_PORT) for the second
    /// cluster's (see [`LabConfig::second_cluster`]).
    pub fn controller_get_on(&self, port: u16, path: &str) -> Result<serde_json::Value, LabError> {
        let response = self.get_on(port, path)?;
        let http_error = |status, reason| LabError::Http {
            path: path.into(),
            status,
            reason,
        };
        if !(200..300).contains(&response.status) {
            return Err(http_error(Some(response.status), response.body));
        }
        serde_json::from_str(&response.body).map_err(|e| {
            http_error(
                Some(response.status),
                format!("not JSON ({e}): {}", excerpt(&response.body)),
            )
        })
    }

    /// GET on the first controller's API as text, whatever the answer's status: (status,
    /// body), for `/metrics` and `/readyz`.
    pub fn controller_text(&self, path: &str) -> Result<(u16, String), LabError> {
        self.get(path).map(|r| (r.status, r.body))
    }

    /// Node `node`'s agent's `/metrics` (Prometheus text), read from inside its node.
    pub fn agent_metrics(&self, node: usize) -> Result<String, LabError> {
        let path = "/metrics";
        let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, crate::plan::AGENT_PORT));
        let response = in_netns(&node_ns(node), || http::get(addr, path, None, None))?;
        match response {
            Ok(r) if (200..300).contains(&r.status) => Ok(r.body),
            Ok(r) => Err(LabError::Http {
                path: path.into(),
                status: Some(r.status),
                reason: excerpt(&r.body),
            }),
            Err(reason) => Err(LabError::Http {
                path: path.into(),
                status: None,
                reason,
            }),
        }
    }

    /// Polls `GET /v1/tasks/{task}/rounds/{round}` until the report is there (404 and
    /// connection errors mean "not yet"), failing early if the controller dies.
    pub fn wait_round(
        &self,
        task: &str,
        round: u32,
        timeout: Duration,
    ) -> Result<RoundReport, LabError> {
        let path = routes::task_round(task, RoundRef::Number(round));
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.get(&path) {
                Ok(r) if r.status == 200 => {
                    return serde_json::from_str(&r.body).map_err(|e| LabError::Http {
                        path: path.clone(),
                        status: Some(200),
                        reason: format!("not a round report ({e}): {}", excerpt(&r.body)),
                    });
                }
                Ok(r) => format!("last answer: {} {}", r.status, excerpt(&r.body)),
                Err(e) => format!("last error: {e}"),
            };
            self.check_controller()?;
            if Instant::now() >= deadline {
                return Err(self.timeout(format!("round {round} of task {task}"), timeout, last));
            }
            thread::sleep(POLL);
        }
    }

    /// Kills one lab process at once (SIGKILL), as a crash would: `controller` or a node name.
    pub fn kill(&mut self, process: &str) -> Result<(), LabError> {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.name == process)
            .ok_or_else(|| LabError::NoSuchProcess(process.into()))?;
        // A container outlives its `podman run` client: kill the container itself.
        if self.containers.is_some() {
            let _ = Command::new("podman")
                .args([
                    "kill",
                    "--signal",
                    "KILL",
                    &container::container_name(process),
                ])
                .output();
        }
        // Already gone is fine: the point is that it no longer runs.
        let _ = p.child.kill();
        let _ = p.child.wait();
        Ok(())
    }

    /// Starts a process again with the command line it was first started with, as a restarted
    /// pod would be (killing it first, at once, if it still runs); its log goes on in the same
    /// file, after a line saying so.
    pub fn restart(&mut self, process: &str) -> Result<(), LabError> {
        self.kill(process)?;
        if self.containers.is_some() {
            // `--rm` removes the killed container, perhaps not yet: its name must be free.
            let _ = Command::new("podman")
                .args(["rm", "--force", &container::container_name(process)])
                .output();
        }
        let i = self
            .procs
            .iter()
            .position(|p| p.name == process)
            .ok_or_else(|| LabError::NoSuchProcess(process.into()))?;
        let command = self.procs[i].launch.command();
        self.procs[i].child = self.start(process, command, true)?;
        Ok(())
    }

    /// The process id of a lab process (`controller` or a node name): the program itself for
    /// processes (`ip netns exec` execs it), the `podman run` client for containers.
    pub fn pid(&self, process: &str) -> Result<u32, LabError> {
        self.procs
            .iter()
            .find(|p| p.name == process)
            .map(|p| p.child.id())
            .ok_or_else(|| LabError::NoSuchProcess(process.into()))
    }

    /// Stops the processes and removes the network (what dropping the lab does).
    pub fn down(self) {}

    /// Leaves the lab running after this process exits, for `cargo xtask lab --keep`;
    /// [`cleanup_leftovers`](crate::cleanup_leftovers) stops it later. No other lab can be
    /// built in this process afterwards.
    pub fn keep(self) {
        // The daemons run in their own process group and outlive us; dropping the Child
        // handles would not stop them, but dropping the network would.
        std::mem::forget(self);
    }

    fn get(&self, path: &str) -> Result<http::Response, LabError> {
        self.get_on(CONTROLLER_PORT, path)
    }

    fn get_on(&self, port: u16, path: &str) -> Result<http::Response, LabError> {
        let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let (token, tls) = (Some(self.admin.as_str()), Some(&self.tls));
        in_netns(CONTROLLER_NS, || http::get(addr, path, token, tls))?.map_err(|reason| {
            LabError::Http {
                path: path.into(),
                status: None,
                reason,
            }
        })
    }

    /// Starts a controller named `name` listening on `port`, with the tasks and data dirs
    /// `tasks{suffix}/` and `data{suffix}/` of the lab directory, waiting for `agents` agents.
    fn spawn_controller(
        &mut self,
        cfg: &LabConfig,
        name: &str,
        port: u16,
        suffix: &str,
        agents: usize,
    ) -> Result<(), LabError> {
        let dir = cfg.dir.display().to_string();
        let agents = agents.to_string();
        let (tasks, data) = (
            format!("{dir}/tasks{suffix}"),
            format!("{dir}/data{suffix}"),
        );
        let listen = format!("[::]:{port}");
        let tls = format!("{dir}/tls");
        let [key, admin, reader, cert, cert_key] = CONTROLLER_SECRETS.map(|f| format!("{dir}/{f}"));
        let mut args = vec![
            "--tls-dir",
            &tls,
            "--tasks-dir",
            &tasks,
            "--data-dir",
            &data,
            "--listen",
            &listen,
            "--agent-key-file",
            &key,
            "--admin-token-file",
            &admin,
            "--reader-token-file",
            &reader,
            "--api-tls-cert",
            &cert,
            "--api-tls-key",
            &cert_key,
            "--wait-agents",
            &agents,
        ];
        args.extend(cfg.controller_args.iter().map(String::as_str));
        self.spawn_meshdoctor(cfg, name, CONTROLLER_NS, Role::Controller, &args)
    }

    /// Starts an agent or a controller in namespace `ns`: a process of the binary in
    /// `bin_dir`, or a container of the image with the workload's security context.
    fn spawn_meshdoctor(
        &mut self,
        cfg: &LabConfig,
        name: &str,
        ns: &str,
        role: Role,
        args: &[&str],
    ) -> Result<(), LabError> {
        let bin = match role {
            Role::Agent => AGENT_BIN,
            Role::Controller => CONTROLLER_BIN,
        };
        let Some(containers) = &self.containers else {
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", ns])
                .arg(cfg.bin_dir.join(bin))
                .args(args);
            return self.spawn(name, command);
        };
        let (security, writable) = match role {
            Role::Agent => (&containers.agent, false),
            // The controller writes its data dir and the tasks the API puts.
            Role::Controller => (&containers.controller, true),
        };
        let command = container::run_command(
            containers,
            security,
            name,
            ns,
            &[(&self.dir, writable)],
            bin,
            args,
        );
        self.spawn(name, command)
    }

    fn spawn(&mut self, name: &str, command: Command) -> Result<(), LabError> {
        let launch = Launch::of(&command);
        let child = self.start(name, command, false)?;
        self.procs.push(Proc {
            name: name.into(),
            child,
            log: self.log_path(name),
            launch,
        });
        Ok(())
    }

    /// Starts `command` as lab process `name`, its output in its log (`append`ed to, after a
    /// line saying it restarted, or created afresh).
    fn start(&self, name: &str, mut command: Command, append: bool) -> Result<Child, LabError> {
        let log = self.log_path(name);
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log)
            .map_err(LabError::io(&log))?;
        if append {
            std::io::Write::write_all(&mut out, b"--- restarted by the lab ---\n")
                .map_err(LabError::io(&log))?;
        }
        let err = out.try_clone().map_err(LabError::io(&log))?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C in the terminal reaches the xtask, which tears
            // the lab down in order, instead of killing the daemons mid-round.
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        command.spawn().map_err(|source| LabError::Spawn {
            command: command_line(&command),
            source,
        })
    }

    fn check_controller(&self) -> Result<(), LabError> {
        // The controller is spawned first. Reading /proc instead of `try_wait` keeps this
        // `&self`; an exited child stays a zombie until the drop reaps it, and counts as dead.
        let Some(p) = self.procs.first() else {
            return Ok(());
        };
        if !is_running(p.child.id() as i32) {
            return Err(p.exited_error("exited".into()));
        }
        Ok(())
    }

    /// Waits until the controller on `port` lists `nodes` agents, failing early if any lab
    /// process dies.
    fn wait_agents(&mut self, port: u16, nodes: usize, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            for p in &mut self.procs {
                if let Some(status) = p.exited() {
                    return Err(p.exited_error(status));
                }
            }
            let last = match self.controller_get_on(port, routes::AGENTS) {
                Ok(serde_json::Value::Array(agents)) if agents.len() >= nodes => return Ok(()),
                Ok(serde_json::Value::Array(agents)) => {
                    format!("{} of {nodes} agents registered", agents.len())
                }
                Ok(other) => format!(
                    "{} is not an array: {}",
                    routes::AGENTS,
                    excerpt(&other.to_string())
                ),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let what =
                    format!("registration of {nodes} agents with the controller on port {port}");
                return Err(self.timeout(what, timeout, last));
            }
            thread::sleep(POLL);
        }
    }

    fn timeout(&self, what: String, timeout: Duration, last: String) -> LabError {
        LabError::Timeout {
            what,
            timeout,
            last,
            logs: self.dir.join("logs"),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &self.procs {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child,
            // so it cannot have been reused.
            unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + TERM_GRACE;
        for p in &mut self.procs {
            while p.exited().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if p.exited().is_none() {
                // Already gone is fine; wait() then reaps it either way.
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        if self.containers.is_some() {
            container::remove_all();
        }
        if let Some(data) = &self.data_mount {
            let _ = command::run("umount", &[&data.display().to_string()]);
        }
        // `net` drops next and removes the namespaces.
    }
}

/// What a meshdoctor lab process is.
#[derive(Clone, Copy)]
enum Role {
    Agent,
    Controller,
}

/// The first 300 characters of `text`, for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// The lab directory's agent key, admin and reader tokens, agents' credentials (one file per
/// node) and the controllers' TLS (CA, certificate and key).
const AGENT_KEY: &str = "agent-key";
const ADMIN_TOKEN: &str = "admin-token";
const READER_TOKEN: &str = "reader-token";
const CREDENTIALS: &str = "credentials";
const API_TLS: &str = "api-tls";
const CONTROLLER_CERT: &str = "api-tls/controller.pem";
const CONTROLLER_CERT_KEY: &str = "api-tls/controller-key.pem";
/// The files of the lab directory the controllers read, in the order of their flags:
/// --agent-key-file, --admin-token-file, --reader-token-file, --api-tls-cert, --api-tls-key.
const CONTROLLER_SECRETS: [&str; 5] = [
    AGENT_KEY,
    ADMIN_TOKEN,
    READER_TOKEN,
    CONTROLLER_CERT,
    CONTROLLER_CERT_KEY,
];

/// Recreates the lab directory's contents, with fresh credentials and certificates; returns
/// the admin token and the client side of the controllers' TLS.
///
/// Old tasks, data and logs are removed: a controller finding the previous run's data would
/// resume it instead of running the task afresh.
fn prepare_dir(cfg: &LabConfig) -> Result<(String, http::Tls), LabError> {
    let second = cfg.second_cluster > 0;
    for (sub, used) in [
        ("tasks", true),
        ("data", true),
        ("logs", true),
        ("faults", true),
        ("tls", true),
        (CREDENTIALS, true),
        (API_TLS, true),
        ("tasks-2", second),
        ("data-2", second),
    ] {
        let path = cfg.dir.join(sub);
        unmount_leftover(&path);
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LabError::io(path)(e)),
        }
        if used {
            fs::create_dir_all(&path).map_err(LabError::io(&path))?;
        }
    }
    for (name, yaml) in &cfg.tasks {
        let path = cfg.dir.join("tasks").join(name);
        fs::write(&path, yaml).map_err(LabError::io(&path))?;
    }
    let [key, admin, reader] = [random_hex(32)?, random_hex(16)?, random_hex(16)?];
    write_secret(&cfg.dir.join(AGENT_KEY), &key)?;
    write_secret(&cfg.dir.join(ADMIN_TOKEN), &admin)?;
    write_secret(&cfg.dir.join(READER_TOKEN), &reader)?;
    let node_key = meshdoctor_ops::credential::NodeKey::new(key.as_bytes());
    for i in 1..=cfg.nodes {
        let node = node_name(i);
        let path = cfg.dir.join(CREDENTIALS).join(&node);
        write_secret(&path, &node_key.credential(&node))?;
    }
    // The controllers' certificate names every address they are reached at: agents (eth0),
    // the CLI and the lab itself (loopback in the controller's namespace).
    let ca = crate::TestCa::new("meshdoctor lab CA");
    let eth0 = crate::plan::ETH0;
    let host = crate::plan::CONTROLLER_HOST;
    let names = [
        eth0.ipv4(host).to_string(),
        eth0.ipv6(host).to_string(),
        "::1".into(),
        "127.0.0.1".into(),
        "localhost".into(),
    ];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let server = ca.server(&names);
    let tls_dir = cfg.dir.join(API_TLS);
    for (file, text) in [
        (tls_dir.join("ca.pem"), &ca.cert_pem),
        (cfg.dir.join(CONTROLLER_CERT), &server.cert),
        (cfg.dir.join(CONTROLLER_CERT_KEY), &server.key),
    ] {
        write_secret(&file, text)?;
    }
    let tls = http::Tls::trusting(&ca.cert_pem).map_err(|why| LabError::Http {
        path: tls_dir.join("ca.pem").display().to_string(),
        status: None,
        reason: why,
    })?;
    Ok((admin, tls))
}

/// Unmounts what a crashed lab left mounted at `path` (its [`LabConfig::data_size_kib`]
/// tmpfs), so that the directory can be removed; a path on its parent's filesystem, or none,
/// is left alone.
fn unmount_leftover(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let device = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    let parent = path.parent().and_then(device);
    if device(path).is_some_and(|dev| Some(dev) != parent) {
        let _ = command::run("umount", &[&path.display().to_string()]);
    }
}

/// `bytes` random bytes, in hex.
fn random_hex(bytes: usize) -> Result<String, LabError> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(LabError::io("/dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to a new file only its owner reads.
fn write_secret(path: &Path, text: &str) -> Result<(), LabError> {
    let _ = fs::remove_file(path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(LabError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No root needed: the split is checked before anything is built or started.
    #[test]
    fn up_refuses_a_second_cluster_without_a_first() {
        for (nodes, second) in [(3, 3), (3, 4), (1, 1)] {
            let mut cfg = LabConfig::new(nodes);
            cfg.bin_dir = "/nonexistent".into();
            cfg.second_cluster = second;
            let err = Lab::up(cfg)
                .err()
                .expect("no node left to the first cluster");
            assert!(
                matches!(err, LabError::SecondCluster { second_cluster, nodes: n }
                    if second_cluster == second && n == nodes),
                "{err}"
            );
            assert!(err.to_string().contains("must be less than nodes"), "{err}");
        }
        // A valid split gets past the check (and stops at the missing binaries).
        let mut cfg = LabConfig::new(3);
        cfg.bin_dir = "/nonexistent".into();
        cfg.second_cluster = 2;
        let err = Lab::up(cfg).err().expect("no binaries");
        assert!(matches!(err, LabError::MissingBinary { .. }), "{err}");
    }
}
