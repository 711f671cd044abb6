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

/// Reads the effective capability mask of this process.
pub fn effective() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| std::io::Error::other("no CapEff line in /proc/self/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
