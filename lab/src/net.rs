//! Namespaces, bridges, veths and addresses, built with `ip` and torn down on drop.

use std::{
    fs::{File, OpenOptions},
    os::fd::AsRawFd,
    path::Path,
    process::Output,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use meshdoctor_api::Family;

use crate::{
    Fault, LabError,
    command::{run, run_with_input},
    fault::FAULT_TABLE_PREFIX,
    plan::{
        CONTROLLER_HOST, CONTROLLER_NS, ETH0, INTERFACES, LabInterface, MAX_NODES, NS_PREFIX,
        SWITCH_NS, node_host, node_ns, switch_port,
    },
};

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// How long a lab process gets to exit after SIGTERM before it is killed.
pub(crate) const TERM_GRACE: Duration = Duration::from_secs(3);

/// One lab per process at a time: the namespace names are fixed, so a second lab would tear the
/// first one down. Tests in one binary run in parallel threads and take turns on this.
static LAB_LOCK: Mutex<()> = Mutex::new(());
/// The same across processes (a `cargo xtask lab` next to a test run, two test binaries): an
/// flock held for as long as a lab exists, released by the kernel when its holder dies.
const MACHINE_LOCK: &str = "/run/meshdoctor-lab.lock";
/// How long [`Network::build`] waits for another process's lab to go away.
const MACHINE_LOCK_WAIT: Duration = Duration::from_secs(600);
/// Whether this process holds [`MACHINE_LOCK`], i.e. the existing lab is ours to remove.
static HOLDS_MACHINE_LOCK: AtomicBool = AtomicBool::new(false);

/// This process's hold on [`MACHINE_LOCK`]; dropping it closes the file, which unlocks.
struct MachineLock {
    _file: File,
}

impl MachineLock {
    /// Takes the lock if no other process holds it.
    fn try_take() -> Result<Option<Self>, LabError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(MACHINE_LOCK)
            .map_err(LabError::io(MACHINE_LOCK))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(LabError::io(MACHINE_LOCK)(e));
        }
        HOLDS_MACHINE_LOCK.store(true, Ordering::SeqCst);
        Ok(Some(Self { _file: file }))
    }

    /// Takes the lock, waiting (bounded) while another process's lab exists.
    fn take() -> Result<Self, LabError> {
        let deadline = Instant::now() + MACHINE_LOCK_WAIT;
        let mut said = false;
        loop {
            if let Some(lock) = Self::try_take()? {
                return Ok(lock);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Busy {
                    lock: MACHINE_LOCK.into(),
                });
            }
            if !said {
                eprintln!(
                    "meshdoctor-lab: another process runs a lab ({MACHINE_LOCK} is locked); waiting"
                );
                said = true;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        HOLDS_MACHINE_LOCK.store(false, Ordering::SeqCst);
    }
}

/// Whether the process runs as root; the lab and the end-to-end tests need it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns` (a name under
/// /run/netns), and returns its result.
///
/// Sockets belong to the namespace they were created in, so sockets made inside `f` keep
/// working in that namespace after `f` returns. Only the helper thread switches namespaces: the
/// caller's threads are untouched. A panic in `f` is propagated.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path).map_err(|source| LabError::Netns {
        ns: ns.into(),
        source,
    })?;
    let joined = thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `file` is an open namespace file for the whole call; setns only changes
            // this thread's network namespace, and this thread ends right after `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(LabError::Netns {
                    ns: ns.into(),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
    });
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn ip(args: &[&str]) -> Result<Output, LabError> {
    run("ip", args)
}

/// Runs `args` inside the namespace `ns` (`ip netns exec`).
pub(crate) fn netns_exec(ns: &str, args: &[&str]) -> Result<Output, LabError> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Loads an nft ruleset into the namespace `ns` in one transaction (`nft -f -`): all of it or,
/// failing, none of it, with nft's complaint (quoting the offending line) in the error.
pub(crate) fn load_nft(ns: &str, ruleset: &str) -> Result<(), LabError> {
    run_with_input(
        "ip",
        &["netns", "exec", ns, "nft", "-f", "-"],
        Some(ruleset),
    )?;
    Ok(())
}

/// Names of the lab namespaces that exist now.
fn lab_namespaces() -> Result<Vec<String>, LabError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(NETNS_DIR)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.map_err(LabError::io(NETNS_DIR))?.file_name();
        if let Some(name) = name.to_str().filter(|n| n.starts_with(NS_PREFIX)) {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `pid` is still running. A zombie counts as gone: it holds no namespace or socket.
pub(crate) fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesized command name, which may itself hold ") ".
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// SIGTERM, a grace period, then SIGKILL for whatever still runs.
pub(crate) fn terminate(pids: &[i32]) {
    for &pid in pids {
        // SAFETY: kill has no memory-safety preconditions; a vanished pid only yields ESRCH.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + TERM_GRACE;
    while pids.iter().any(|&p| is_running(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids.iter().filter(|&&p| is_running(p)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Removes everything a lab may have left behind: stops every process running in a `mdlab-*`
/// namespace and deletes those namespaces (their veths and bridges go with them).
///
/// Safe to call at any time, also from a signal handler thread while this process uses a lab:
/// it is what a crashed or interrupted run needs before the next one. A lab that another live
/// process is using is left alone ([`LabError::Busy`]).
pub fn cleanup_leftovers() -> Result<(), LabError> {
    if HOLDS_MACHINE_LOCK.load(Ordering::SeqCst) {
        return remove_all();
    }
    match MachineLock::try_take()? {
        Some(_lock) => remove_all(),
        None => Err(LabError::Busy {
            lock: MACHINE_LOCK.into(),
        }),
    }
}

fn remove_all() -> Result<(), LabError> {
    crate::container::remove_all();
    let names = lab_namespaces()?;
    let mut pids = Vec::new();
    for ns in &names {
        let out = ip(&["netns", "pids", ns])?;
        pids.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    terminate(&pids);
    for ns in &names {
        ip(&["netns", "del", ns])?;
    }
    Ok(())
}

/// The lab's namespaces, bridges and veths, without any process. Dropping it removes them all
/// (and stops anything still running inside them).
///
/// Layout: [`SWITCH_NS`] holds one bridge per network; node `i` lives in `mdlab-n{i}` with `eth0`
/// and `net1`, each a veth to its bridge; the controller lives in [`CONTROLLER_NS`] with `eth0`.
/// IPv6 duplicate address detection is off, so addresses work the moment they are added, and
/// there is no default route anywhere.
pub struct Network {
    nodes: usize,
    // Released in this order, after `Drop::drop` removed the namespaces.
    _machine: MachineLock,
    _turn: MutexGuard<'static, ()>,
}

impl Network {
    /// Builds the network for `nodes` nodes, after removing any leftovers of an earlier lab.
    /// Waits while another lab of this process exists.
    pub fn build(nodes: usize) -> Result<Self, LabError> {
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(LabError::NodeCount {
                nodes,
                max: MAX_NODES,
            });
        }
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        // A test that panicked while holding the lock poisons it; its lab was torn down by the
        // unwinding drop, so the next one can go ahead.
        let turn = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let machine = MachineLock::take()?;
        remove_all()?;
        // From here on, dropping `net` removes whatever part was built.
        let net = Self {
            nodes,
            _machine: machine,
            _turn: turn,
        };
        net.build_switch()?;
        for i in 1..=nodes {
            let owner = format!("n{i}");
            net.build_host(&node_ns(i), &owner, node_host(i), &INTERFACES)?;
        }
        net.build_host(CONTROLLER_NS, "ctl", CONTROLLER_HOST, &[ETH0])?;
        Ok(net)
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Runs a command inside node `node`'s namespace (e.g. `nft`, `ip`), failing on a non-zero
    /// exit.
    pub fn exec(&self, node: usize, args: &[&str]) -> Result<Output, LabError> {
        self.check_node(node)?;
        netns_exec(&node_ns(node), args)
    }

    /// Loads an nft ruleset (`nft -f -`) into node `node`'s namespace, e.g. a custom drop rule.
    pub fn nft(&self, node: usize, ruleset: &str) -> Result<(), LabError> {
        self.check_node(node)?;
        load_nft(&node_ns(node), ruleset)
    }

    /// Starts dropping the fault's packets; a fault at the same place (everything but the
    /// rate) is replaced, and its counter restarts. See [`Fault`] for where each kind drops.
    pub fn inject(&self, fault: &Fault) -> Result<(), LabError> {
        fault.check(self.nodes)?;
        load_nft(&fault.namespace(), &fault.ruleset())
    }

    /// Stops the fault at this place (the rate does not matter); nothing to stop is fine.
    pub fn remove_fault(&self, fault: &Fault) -> Result<(), LabError> {
        fault.check(self.nodes)?;
        let (family, table) = (fault.nft_family(), fault.table());
        load_nft(
            &fault.namespace(),
            &format!("table {family} {table} {{}}\ndelete table {family} {table}\n"),
        )
    }

    /// Stops every fault, however it was injected (its table's name starts with
    /// [`FAULT_TABLE_PREFIX`]). Other nft rules (e.g. [`nft`](Self::nft)'s) stay.
    pub fn clear_faults(&self) -> Result<(), LabError> {
        let namespaces =
            std::iter::once(SWITCH_NS.to_string()).chain((1..=self.nodes).map(node_ns));
        for ns in namespaces {
            let out = netns_exec(&ns, &["nft", "list", "tables"])?;
            let deletes: String = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| {
                    let mut words = line.split_whitespace();
                    let (Some("table"), Some(family), Some(name)) =
                        (words.next(), words.next(), words.next())
                    else {
                        return None;
                    };
                    name.starts_with(FAULT_TABLE_PREFIX)
                        .then(|| format!("delete table {family} {name}\n"))
                })
                .collect();
            if !deletes.is_empty() {
                load_nft(&ns, &deletes)?;
            }
        }
        Ok(())
    }

    /// How many packets the fault has dropped since it was injected (its nft counter).
    pub fn fault_drops(&self, fault: &Fault) -> Result<u64, LabError> {
        fault.check(self.nodes)?;
        let (family, table) = (fault.nft_family(), fault.table());
        let out = netns_exec(
            &fault.namespace(),
            &["nft", "-j", "list", "table", family, &table],
        )?;
        let bad = |reason: String| LabError::Command {
            command: format!("nft -j list table {family} {table}"),
            status: "exit status: 0".into(),
            stderr: reason,
        };
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| bad(format!("output is not JSON: {e}")))?;
        // {"nftables": [{"metainfo": ..}, {"table": ..}, {"chain": ..},
        //   {"rule": {"expr": [.., {"counter": {"packets": N, "bytes": M}}, {"drop": null}]}}]}
        let counters: Vec<u64> = json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|expr| expr["counter"]["packets"].as_u64())
            .collect();
        if counters.is_empty() {
            return Err(bad("no rule with a counter in the table".into()));
        }
        Ok(counters.iter().sum())
    }

    fn check_node(&self, node: usize) -> Result<(), LabError> {
        if !(1..=self.nodes).contains(&node) {
            return Err(LabError::NoSuchNode {
                node,
                nodes: self.nodes,
            });
        }
        Ok(())
    }

    fn build_switch(&self) -> Result<(), LabError> {
        ip(&["netns", "add", SWITCH_NS])?;
        // The switch is layer 2 only: no IPv6 addresses, no router solicitations, no noise.
        netns_exec(
            SWITCH_NS,
            &[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        ip(&["-n", SWITCH_NS, "link", "set", "lo", "up"])?;
        for iface in INTERFACES {
            // Without a multicast querier, snooping could prune neighbour discovery.
            ip(&[
                "-n",
                SWITCH_NS,
                "link",
                "add",
                iface.bridge,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ])?;
            ip(&["-n", SWITCH_NS, "link", "set", iface.bridge, "up"])?;
        }
        Ok(())
    }

    /// One namespace with a veth per interface to the switch, addressed with `host`.
    fn build_host(
        &self,
        ns: &str,
        owner: &str,
        host: u8,
        ifaces: &[LabInterface],
    ) -> Result<(), LabError> {
        ip(&["netns", "add", ns])?;
        netns_exec(
            ns,
            &[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        for iface in ifaces {
            let port = switch_port(owner, iface);
            ip(&[
                "-n", ns, "link", "add", iface.name, "type", "veth", "peer", "name", &port,
                "netns", SWITCH_NS,
            ])?;
            ip(&[
                "-n",
                SWITCH_NS,
                "link",
                "set",
                &port,
                "master",
                iface.bridge,
                "up",
            ])?;
            for family in [Family::Ipv4, Family::Ipv6] {
                let cidr = format!(
                    "{}/{}",
                    iface.addr(host, family),
                    LabInterface::prefix_len(family)
                );
                let mut args = vec!["-n", ns, "addr", "add", &cidr, "dev", iface.name];
                if family == Family::Ipv6 {
                    args.push("nodad");
                }
                ip(&args)?;
            }
            ip(&["-n", ns, "link", "set", iface.name, "up"])?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(e) = remove_all() {
            eprintln!("meshdoctor-lab: teardown incomplete: {e}");
        }
    }
}
