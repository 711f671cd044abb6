//! The lab's processes as podman containers of the project's image, each with the security
//! context its workload declares in the rendered manifests (the agent DaemonSet, the controller
//! Deployment): what a kubelet would ask of the runtime, asked of podman instead.
//!
//! Mapped: `privileged`, `allowPrivilegeEscalation` (no-new-privileges), `readOnlyRootFilesystem`,
//! `runAsUser` / `runAsGroup`, `capabilities.drop` / `add`, `seccompProfile` (RuntimeDefault is
//! podman's default profile; Localhost is a file under the lab's seccomp root, as kubelet's is
//! under /var/lib/kubelet/seccomp), and the read-only hostPath mounts (tracefs). Secrets and
//! emptyDirs are the lab directory, bound at its own path so command lines stay the lab's.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize as _;
use serde_yaml::Value;

use crate::LabError;

/// The repository's directory that plays kubelet's seccomp root (/var/lib/kubelet/seccomp):
/// a `localhostProfile` of the manifests is a file under it. Relative to the workspace.
pub const SECCOMP_ROOT: &str = "deploy/seccomp";

/// Label on every container the lab starts, for the teardown of a crashed run to find them.
const CONTAINER_LABEL: &str = "io.meshdoctor.lab";

/// Runs the lab's agents and controllers as containers of `image`.
#[derive(Debug, Clone)]
pub struct Containers {
    /// `ghcr.io/meshdoctor/meshdoctor:<release>`, in the local containers-storage.
    pub image: String,
    pub agent: PodSecurity,
    pub controller: PodSecurity,
    /// Where `seccompProfile.localhostProfile` paths are resolved (kubelet's seccomp root).
    pub seccomp_root: PathBuf,
}

impl Containers {
    /// From rendered manifests (`kubectl kustomize` output): the security of the DaemonSet
    /// `meshdoctor-agent` and the Deployment `meshdoctor-controller`.
    pub fn from_manifests(
        image: &str,
        manifests: &str,
        seccomp_root: &Path,
    ) -> Result<Self, LabError> {
        Ok(Self {
            image: image.into(),
            agent: PodSecurity::of(manifests, "DaemonSet", "meshdoctor-agent")?,
            controller: PodSecurity::of(manifests, "Deployment", "meshdoctor-controller")?,
            seccomp_root: seccomp_root.into(),
        })
    }
}

/// A workload's seccomp profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    /// The container runtime's own default profile.
    RuntimeDefault,
    /// A profile file, relative to the seccomp root.
    Localhost(String),
    Unconfined,
}

/// One hostPath volume mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    pub host: String,
    pub container: String,
    pub read_only: bool,
}

/// The effective security context of a workload's first container: pod-level fields, overridden
/// by the container's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSecurity {
    pub privileged: bool,
    pub allow_privilege_escalation: bool,
    pub read_only_root: bool,
    pub run_as_user: Option<u64>,
    pub run_as_group: Option<u64>,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub seccomp: Seccomp,
    pub host_mounts: Vec<HostMount>,
}

fn bad(workload: &str, field: &str, expected: &str) -> LabError {
    LabError::Manifest {
        workload: workload.into(),
        field: field.into(),
        expected: expected.into(),
    }
}

impl PodSecurity {
    /// The security of workload `kind/name` in the multi-document YAML `manifests`.
    pub fn of(manifests: &str, kind: &str, name: &str) -> Result<Self, LabError> {
        let workload = format!("{kind}/{name}");
        let doc = serde_yaml::Deserializer::from_str(manifests)
            .filter_map(|d| Value::deserialize(d).ok())
            .find(|v| {
                v["kind"].as_str() == Some(kind) && v["metadata"]["name"].as_str() == Some(name)
            })
            .ok_or_else(|| {
                bad(
                    &workload,
                    "kind/metadata.name",
                    "the workload in the manifests",
                )
            })?;
        let pod = &doc["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        if container.is_null() {
            return Err(bad(
                &workload,
                "spec.template.spec.containers",
                "a container",
            ));
        }
        let (pod_sc, sc) = (&pod["securityContext"], &container["securityContext"]);
        // The container's field wins over the pod's, as in Kubernetes.
        let field = |key: &str| {
            let c = &sc[key];
            if c.is_null() { &pod_sc[key] } else { c }
        };
        let flag = |key: &str, default: bool| field(key).as_bool().unwrap_or(default);
        let caps = |key: &str| -> Vec<String> {
            sc["capabilities"][key]
                .as_sequence()
                .map(|s| {
                    s.iter()
                        .filter_map(|c| c.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let profile = field("seccompProfile");
        let seccomp = match profile["type"].as_str() {
            None => Seccomp::Unconfined,
            Some("RuntimeDefault") => Seccomp::RuntimeDefault,
            Some("Unconfined") => Seccomp::Unconfined,
            Some("Localhost") => Seccomp::Localhost(
                profile["localhostProfile"]
                    .as_str()
                    .ok_or_else(|| {
                        bad(
                            &workload,
                            "securityContext.seccompProfile.localhostProfile",
                            "a profile path with type Localhost",
                        )
                    })?
                    .into(),
            ),
            Some(_) => {
                return Err(bad(
                    &workload,
                    "securityContext.seccompProfile.type",
                    "RuntimeDefault, Localhost or Unconfined",
                ));
            }
        };
        let mut host_mounts = Vec::new();
        for m in container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let volume = pod["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == m["name"]);
            let Some(host) = volume.and_then(|v| v["hostPath"]["path"].as_str()) else {
                continue;
            };
            let container_path = m["mountPath"]
                .as_str()
                .ok_or_else(|| bad(&workload, "volumeMounts.mountPath", "a path"))?;
            host_mounts.push(HostMount {
                host: host.into(),
                container: container_path.into(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
            });
        }
        Ok(Self {
            privileged: flag("privileged", false),
            allow_privilege_escalation: flag("allowPrivilegeEscalation", true),
            read_only_root: flag("readOnlyRootFilesystem", false),
            run_as_user: field("runAsUser").as_u64(),
            run_as_group: field("runAsGroup").as_u64(),
            cap_drop: caps("drop"),
            cap_add: caps("add"),
            seccomp,
            host_mounts,
        })
    }

    /// `podman run` flags for this security context.
    pub fn podman_args(&self, seccomp_root: &Path) -> Vec<String> {
        let mut args = Vec::new();
        if self.privileged {
            args.push("--privileged".into());
        }
        if !self.allow_privilege_escalation {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        if self.read_only_root {
            args.push("--read-only".into());
        }
        match (self.run_as_user, self.run_as_group) {
            (Some(u), Some(g)) => args.extend(["--user".into(), format!("{u}:{g}")]),
            (Some(u), None) => args.extend(["--user".into(), u.to_string()]),
            _ => {}
        }
        for cap in &self.cap_drop {
            args.extend(["--cap-drop".into(), cap.clone()]);
        }
        for cap in &self.cap_add {
            args.extend(["--cap-add".into(), cap.clone()]);
        }
        match &self.seccomp {
            Seccomp::RuntimeDefault => {}
            Seccomp::Unconfined => {
                args.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
            }
            Seccomp::Localhost(profile) => args.extend([
                "--security-opt".into(),
                format!("seccomp={}", seccomp_root.join(profile).display()),
            ]),
        }
        for m in &self.host_mounts {
            let ro = if m.read_only { ":ro" } else { "" };
            args.extend(["--volume".into(), format!("{}:{}{ro}", m.host, m.container)]);
        }
        args
    }
}

/// The virtualenv the project owns for its Python tools and, on machines without a kubectl
/// that renders deploy/, kubectl itself (`cargo xtask setup` makes it): `$MESHDOCTOR_VENV`
/// or /opt/meshdoctor/venv.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("MESHDOCTOR_VENV")
        .map_or_else(|| PathBuf::from("/opt/meshdoctor/venv"), PathBuf::from)
}

/// The kubectl that renders deploy/: the virtualenv's when there is one, else the machine's.
pub fn kubectl() -> PathBuf {
    let venv = venv_dir().join("bin/kubectl");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("kubectl")
    }
}

/// `kubectl kustomize dir`: the manifests a user would apply.
pub fn render(dir: &Path) -> Result<String, LabError> {
    let out = crate::command::run(
        &kubectl().to_string_lossy(),
        &["kustomize", &dir.to_string_lossy()],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `podman run` of `image` in network namespace `ns`, named `name`, running `binary args`.
pub(crate) fn run_command(
    containers: &Containers,
    security: &PodSecurity,
    name: &str,
    ns: &str,
    binds: &[(&Path, bool)],
    binary: &str,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["run", "--rm", "--name", &container_name(name)])
        .args(["--label", &format!("{CONTAINER_LABEL}=1")])
        // crun refuses this kind of machine's hybrid cgroups; runc runs.
        .args(["--runtime", "runc"])
        .arg(format!("--network=ns:/run/netns/{ns}"))
        // Under the hard limits: the lab runs without CAP_SYS_RESOURCE to raise them.
        .args(["--ulimit", &format!("nofile={n}:{n}", n = nofile_limit())])
        .args(["--ulimit", "nproc=4096:4096"])
        .args(security.podman_args(&containers.seccomp_root));
    for (path, writable) in binds {
        let mode = if *writable { "rw" } else { "ro" };
        cmd.arg("--volume")
            .arg(format!("{p}:{p}:{mode}", p = path.display()));
    }
    // podman passes its own RUST_LOG on, which the lab sets for every process it starts.
    cmd.args(["--env", "RUST_LOG"]);
    cmd.arg(&containers.image).arg(binary).args(args);
    cmd
}

/// Gives a non-root controller what Kubernetes gives it: its `secrets` (files of the lab
/// directory: credentials, TLS) readable by its group (a Secret's mode 0440 under the pod's
/// fsGroup) and its tasks and data directories as its own (an emptyDir). Root agents without CAP_DAC_OVERRIDE still read their
/// root-owned credential.
pub(crate) fn grant(
    dir: &Path,
    controller: &PodSecurity,
    secrets: &[&str],
) -> Result<(), LabError> {
    let (Some(uid), gid) = (controller.run_as_user, controller.run_as_group) else {
        return Ok(());
    };
    let (uid, gid) = (uid as u32, gid.map(|g| g as u32));
    for secret in secrets {
        let path = dir.join(secret);
        std::os::unix::fs::chown(&path, Some(0), gid).map_err(LabError::io(&path))?;
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o440))
            .map_err(LabError::io(&path))?;
    }
    for sub in ["tasks", "data", "tasks-2", "data-2"] {
        let path = dir.join(sub);
        if path.is_dir() {
            std::os::unix::fs::chown(&path, Some(uid), gid).map_err(LabError::io(&path))?;
        }
    }
    Ok(())
}

/// The container of lab process `name`.
pub fn container_name(name: &str) -> String {
    format!("mdlab-{name}")
}

/// This process's hard limit of open files, at most 65,536.
fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok { limit.rlim_max.min(65_536) } else { 1024 }
}

/// Removes every container the lab started (a crashed run's included); quiet when there is
/// no podman or no container.
pub(crate) fn remove_all() {
    let Ok(listed) = Command::new("podman")
        .args(["ps", "-aq", "--filter", &format!("label={CONTAINER_LABEL}")])
        .output()
    else {
        return;
    };
    let ids = String::from_utf8_lossy(&listed.stdout);
    if !ids.trim().is_empty() {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0"])
            .args(ids.split_whitespace())
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: meshdoctor-agent}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: meshdoctor-agent}
spec:
  template:
    spec:
      containers:
        - name: agent
          securityContext:
            privileged: false
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            runAsUser: 0
            capabilities: {drop: [ALL], add: [NET_RAW, BPF]}
            seccompProfile: {type: Localhost, localhostProfile: meshdoctor/agent.json}
          volumeMounts:
            - {name: token, mountPath: /etc/meshdoctor/token, readOnly: true}
            - {name: tracefs, mountPath: /sys/kernel/tracing, readOnly: true}
      volumes:
        - {name: token, secret: {secretName: t}}
        - {name: tracefs, hostPath: {path: /sys/kernel/tracing}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: meshdoctor-controller}
spec:
  template:
    spec:
      securityContext: {runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: controller
          securityContext: {readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
"#;

    #[test]
    fn a_daemonsets_security_context_becomes_podman_flags() {
        let agent = PodSecurity::of(MANIFESTS, "DaemonSet", "meshdoctor-agent").unwrap();
        let args = agent.podman_args(Path::new("/seccomp")).join(" ");
        assert_eq!(
            args,
            "--security-opt no-new-privileges --read-only --user 0 --cap-drop ALL \
             --cap-add NET_RAW --cap-add BPF --security-opt seccomp=/seccomp/meshdoctor/agent.json \
             --volume /sys/kernel/tracing:/sys/kernel/tracing:ro"
        );
    }

    #[test]
    fn pod_level_fields_apply_unless_the_container_overrides_them() {
        let ctl = PodSecurity::of(MANIFESTS, "Deployment", "meshdoctor-controller").unwrap();
        assert_eq!(ctl.seccomp, Seccomp::RuntimeDefault);
        assert_eq!(
            (ctl.run_as_user, ctl.run_as_group),
            (Some(65532), Some(65532))
        );
        assert!(ctl.read_only_root && ctl.host_mounts.is_empty());
        let args = ctl.podman_args(Path::new("/s")).join(" ");
        assert!(!args.contains("seccomp="), "{args}");
    }

    #[test]
    fn a_missing_workload_or_bad_profile_names_the_field() {
        let err = PodSecurity::of(MANIFESTS, "DaemonSet", "other").unwrap_err();
        assert!(err.to_string().contains("DaemonSet/other"), "{err}");
        let odd = MANIFESTS.replace("type: Localhost", "type: Sometimes");
        let err = PodSecurity::of(&odd, "DaemonSet", "meshdoctor-agent").unwrap_err();
        assert!(err.to_string().contains("seccompProfile.type"), "{err}");
    }
}
