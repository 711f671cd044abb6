//! Servers a test starts inside the lab (nginx, unbound, ...), so that the agents' application
//! probes reach them on lab addresses.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use crate::{
    LabError, in_netns,
    net::{TERM_GRACE, is_running},
};

/// A process started in a lab namespace with [`Lab::spawn_server`](crate::Lab::spawn_server),
/// its output in the lab's `logs/<name>.log`.
///
/// [`stop`](Self::stop) or dropping it ends it (SIGTERM, then SIGKILL after a grace); it also
/// dies with the thread that started it (`PR_SET_PDEATHSIG`), so a killed test leaves no
/// server behind, and the lab's network removes whatever still runs in its namespaces.
pub struct LabServer {
    name: String,
    ns: String,
    child: Option<Child>,
    log: PathBuf,
}

impl LabServer {
    pub(crate) fn spawn(
        name: &str,
        ns: &str,
        program: &Path,
        args: &[&str],
        log: PathBuf,
    ) -> Result<Self, LabError> {
        let out = std::fs::File::create(&log).map_err(LabError::io(&log))?;
        let err = out.try_clone().map_err(LabError::io(&log))?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // `ip netns exec` execs the program in place, which keeps the death signal.
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| LabError::Spawn {
            command: format!(
                "ip netns exec {ns} {} {}",
                program.display(),
                args.join(" ")
            ),
            source,
        })?;
        Ok(Self {
            name: name.into(),
            ns: ns.into(),
            child: Some(child),
            log,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether it still runs (not stopped, not exited).
    pub fn is_running(&self) -> bool {
        self.pid().is_some_and(|pid| is_running(pid as i32))
    }

    /// Waits until a TCP connection to `addr` succeeds from inside its namespace; an error when
    /// it exits first (with the last lines of its log) or after `timeout`.
    pub fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(self.exited(status.to_string()));
            }
            if self.child.is_none() {
                return Err(self.exited("stopped".into()));
            }
            let connected = in_netns(&self.ns, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map(drop)
            })?;
            let last = match connected {
                Ok(()) => return Ok(()),
                Err(e) => format!("connect {addr}: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{} listening on {addr} in {}", self.name, self.ns),
                    timeout,
                    last,
                    logs: self.log.clone(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends it: SIGTERM, then SIGKILL after a grace. Stopping a stopped server does nothing.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child, so
        // it cannot have been reused.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + TERM_GRACE;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        // Already gone is fine; wait() then reaps it either way.
        let _ = child.kill();
        let _ = child.wait();
    }

    fn exited(&self, status: String) -> LabError {
        LabError::process_exited(&self.name, status, &self.log)
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes the child get SIGKILL when the thread that spawns it dies (`PR_SET_PDEATHSIG`), so a
/// server started by a test never outlives it, even when the test process is killed and no
/// `Drop` runs.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// An nginx configuration that keeps every file in `dir` (pid, error log as `{name}-error.log`,
/// temp paths) and runs one process in the foreground (`master_process off`: killing a master
/// leaves its workers serving), with `http` (server blocks, access_log) as its http section.
pub fn nginx_config(dir: &Path, name: &str, http: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         {http}}}\n"
    )
}

/// An unbound that answers one static zone from its own records and refuses every other name
/// (it never recurses, so nothing leaves the test), over UDP and TCP and, with `tls`, DNS over
/// TLS. [`render`](Self::render) writes its configuration; run it as `unbound -d -c FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnboundConfig {
    /// Its working directory, which holds its pid file.
    pub dir: PathBuf,
    /// The address it listens on.
    pub addr: IpAddr,
    /// Plain DNS, UDP and TCP.
    pub port: u16,
    /// DNS over TLS as well.
    pub tls: Option<UnboundTls>,
    /// Client networks allowed to query (`access-control: CIDR allow`).
    pub allow: Vec<String>,
    /// The static zone, fully qualified (`lab.test.`).
    pub zone: String,
    /// Its records, as unbound's `local-data` (`web.lab.test. A 192.0.2.254`).
    pub records: Vec<String>,
}

/// DNS over TLS in an [`UnboundConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnboundTls {
    /// Its port (unbound's `tls-port`; 853 is the standard one).
    pub port: u16,
    /// The server certificate chain, PEM (`tls-service-pem`).
    pub cert: PathBuf,
    /// Its private key, PEM (`tls-service-key`).
    pub key: PathBuf,
}

/// Incoming TCP and TLS connections an [`UnboundConfig`] server keeps (`incoming-num-tcp`).
const UNBOUND_TCP_CONNECTIONS: u32 = 256;

impl UnboundConfig {
    /// The configuration file's text.
    pub fn render(&self) -> String {
        let (addr, port, d) = (self.addr, self.port, self.dir.display());
        let mut conf = format!("server:\n  interface: {addr}@{port}\n  port: {port}\n");
        if let Some(tls) = &self.tls {
            // unbound speaks TLS on the interfaces whose port is the tls-port.
            conf += &format!(
                "  interface: {addr}@{}\n  tls-port: {}\n  tls-service-pem: \"{}\"\n  \
                 tls-service-key: \"{}\"\n",
                tls.port,
                tls.port,
                tls.cert.display(),
                tls.key.display()
            );
        }
        let ip6 = if addr.is_ipv6() { "yes" } else { "no" };
        // TCP and TLS connections: unbound's default of 10 per thread is soon half used by a
        // few agents' pooled connections, and then it cuts its idle timeout to a few ms and
        // closes connections under the queries pipelined on them.
        conf += &format!(
            "  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  directory: \"{d}\"\n  \
             pidfile: \"{d}/unbound.pid\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  \
             num-threads: 1\n  incoming-num-tcp: {UNBOUND_TCP_CONNECTIONS}\n  do-ip6: {ip6}\n  \
             so-rcvbuf: 4m\n  so-sndbuf: 4m\n  \
             module-config: \"iterator\"\n  do-not-query-localhost: yes\n"
        );
        for net in &self.allow {
            conf += &format!("  access-control: {net} allow\n");
        }
        conf += &format!(
            "  local-zone: \".\" refuse\n  local-zone: \"{}\" static\n",
            self.zone
        );
        for record in &self.records {
            conf += &format!("  local-data: \"{record}\"\n");
        }
        conf + "remote-control:\n  control-enable: no\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbound_config_serves_dns_over_tls_only_when_asked() {
        let mut conf = UnboundConfig {
            dir: "/run/lab/unbound".into(),
            addr: "192.0.2.254".parse().unwrap(),
            port: 53,
            tls: Some(UnboundTls {
                port: 853,
                cert: "/run/lab/unbound/server.pem".into(),
                key: "/run/lab/unbound/server.key".into(),
            }),
            allow: vec!["192.0.2.0/24".into()],
            zone: "lab.test.".into(),
            records: vec!["web.lab.test. A 192.0.2.254".into()],
        };
        let text = conf.render();
        for line in [
            "server:",
            "  interface: 192.0.2.254@53",
            "  interface: 192.0.2.254@853",
            "  tls-port: 853",
            "  tls-service-pem: \"/run/lab/unbound/server.pem\"",
            "  tls-service-key: \"/run/lab/unbound/server.key\"",
            "  pidfile: \"/run/lab/unbound/unbound.pid\"",
            "  incoming-num-tcp: 256",
            "  do-ip6: no",
            "  access-control: 192.0.2.0/24 allow",
            "  local-zone: \".\" refuse",
            "  local-zone: \"lab.test.\" static",
            "  local-data: \"web.lab.test. A 192.0.2.254\"",
            "remote-control:",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        conf.tls = None;
        conf.addr = "2001:db8::53".parse().unwrap();
        let text = conf.render();
        assert!(!text.contains("tls"), "{text}");
        assert!(
            text.contains("  interface: 2001:db8::53@53\n  port: 53\n"),
            "{text}"
        );
        assert!(text.contains("  do-ip6: yes\n"), "{text}");
    }
}
