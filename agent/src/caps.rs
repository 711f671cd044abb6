//! Start-up check of the Linux capabilities the agent needs, so that a DaemonSet missing one
//! fails at once with a message naming it instead of later with a bare EPERM.

/// A capability the agent needs, with why.
struct Need {
    name: &'static str,
    bit: u32,
    why: &'static str,
    /// Also granted by CAP_SYS_ADMIN (kernels before 5.8 have no CAP_BPF / CAP_PERFMON).
    sys_admin_covers: bool,
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

const RAW: Need = Need {
    name: "CAP_NET_RAW",
    bit: CAP_NET_RAW,
    why: "raw ICMP sockets",
    sys_admin_covers: false,
};
const EBPF: [Need; 3] = [
    Need {
        name: "CAP_NET_ADMIN",
        bit: CAP_NET_ADMIN,
        why: "attaching TC observers",
        sys_admin_covers: false,
    },
    Need {
        name: "CAP_BPF",
        bit: CAP_BPF,
        why: "loading eBPF programs",
        sys_admin_covers: true,
    },
    Need {
        name: "CAP_PERFMON",
        bit: CAP_PERFMON,
        why: "eBPF helpers reading kernel time and memory",
        sys_admin_covers: true,
    },
];

/// Returns an error message naming every missing capability, given the `CapEff:` mask of
/// `/proc/self/status`. Without eBPF only CAP_NET_RAW is needed.
pub fn missing(cap_eff: u64, ebpf: bool) -> Option<String> {
    let has = |bit: u32| cap_eff & (1 << bit) != 0;
    let needs = std::iter::once(&RAW).chain(EBPF.iter().filter(|_| ebpf));
    let lacking: Vec<String> = needs
        .filter(|n| !(has(n.bit) || n.sys_admin_covers && has(CAP_SYS_ADMIN)))
        .map(|n| format!("{} ({})", n.name, n.why))
        .collect();
    (!lacking.is_empty()).then(|| {
        format!(
            "meshdoctor-agent is missing capabilities: {}. Run it as root, or grant them \
             (Kubernetes: securityContext.capabilities.add){}",
            lacking.join(", "),
            if ebpf {
                "; --no-ebpf needs only CAP_NET_RAW"
            } else {
                ""
            }
        )
    })
}

/// Why loading eBPF failed with EPERM although the capabilities are there, from
/// `/proc/self/status` and the error: a seccomp filter (`Seccomp: 2`) with CAP_BPF but not
/// CAP_SYS_ADMIN is a runtime default profile that allows bpf() to CAP_SYS_ADMIN only (CRI-O's
/// and podman's, containers-common's), and the shipped profile is the fix.
pub fn seccomp_hint(status: &str, error: &str) -> Option<&'static str> {
    let filtered = status_field(status, "Seccomp:") == Some("2");
    let cap_eff = cap_eff(status)?;
    let has = |bit: u32| cap_eff & (1 << bit) != 0;
    (filtered && error.contains("Operation not permitted") && has(CAP_BPF) && !has(CAP_SYS_ADMIN))
        .then_some(
            "a seccomp filter refused the call although the agent holds CAP_BPF: the \
             container runtime's default profile allows bpf() and perf_event_open() only with \
             CAP_SYS_ADMIN (CRI-O and podman do so). Run the agent under the shipped profile \
             deploy/seccomp/meshdoctor/agent.json (the overlay deploy/overlays/seccomp-localhost), \
             not Unconfined",
        )
}

/// Reads the effective capability mask of this process.
pub fn effective() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    cap_eff(&status).ok_or_else(|| std::io::Error::other("no CapEff line in /proc/self/status"))
}

/// The `CapEff:` mask of a `/proc/PID/status` text.
fn cap_eff(status: &str) -> Option<u64> {
    status_field(status, "CapEff:").and_then(|hex| u64::from_str_radix(hex, 16).ok())
}

/// The value of line `name` (`"Seccomp:"`) of a `/proc/PID/status` text.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seccomp_refusal_with_cap_bpf_points_at_the_shipped_profile() {
        let bpf_perfmon_net = (1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        let status = |seccomp: u8, caps: u64| {
            format!("Name:\tagent\nCapEff:\t{caps:016x}\nSeccomp:\t{seccomp}\n")
        };
        let eperm = "failed to create map `TCP_PATHS`: Operation not permitted (os error 1)";
        let hint = seccomp_hint(&status(2, bpf_perfmon_net), eperm).unwrap();
        assert!(
            hint.contains("deploy/seccomp/meshdoctor/agent.json"),
            "{hint}"
        );
        // No filter, CAP_SYS_ADMIN held, or another error: something else is wrong.
        assert_eq!(seccomp_hint(&status(0, bpf_perfmon_net), eperm), None);
        let admin = bpf_perfmon_net | 1 << CAP_SYS_ADMIN;
        assert_eq!(seccomp_hint(&status(2, admin), eperm), None);
        assert_eq!(
            seccomp_hint(&status(2, bpf_perfmon_net), "No such file"),
            None
        );
    }

    #[test]
    fn root_has_everything() {
        assert_eq!(missing(0x1ff_ffff_ffff, true), None);
    }

    #[test]
    fn names_each_missing_capability() {
        let e = missing(0, true).unwrap();
        for cap in ["CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"] {
            assert!(e.contains(cap), "{e}");
        }
        let only_raw = 1 << CAP_NET_RAW;
        let e = missing(only_raw, true).unwrap();
        assert!(
            !e.contains("CAP_NET_RAW (") && e.contains("CAP_BPF ("),
            "{e}"
        );
        assert_eq!(missing(only_raw, false), None);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        let old_kernel = (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN);
        assert_eq!(missing(old_kernel, true), None);
    }
}
