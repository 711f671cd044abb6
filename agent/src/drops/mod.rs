//! The kernel drop tracer's user-space half: everything `trace_drops` needs to know about the
//! running kernel, and the names of what it reports.
//!
//! Nothing here is hard-coded per kernel version (docs/ebpf.md, "The skb:kfree_skb tracepoint"
//! and "Drop reasons and struct offsets from BTF"): the tracepoint's field offsets come from its
//! tracefs `format` file, struct offsets from BTF, reason names from BTF's `enum skb_drop_reason`,
//! and drop locations from `/proc/kallsyms`. A kernel whose tracepoint has no `reason` field
//! (before 5.17) still works; its drops are reported as `unknown`.

pub mod btf;
pub mod format;
pub mod kallsyms;

use std::{collections::HashMap, io, path::PathBuf};

pub use btf::Btf;
pub use format::TracepointFormat;
pub use kallsyms::Symbols;
use meshdoctor_agent_common::{DropLayout, NO_FIELD, UNKNOWN_REASON};

/// The tracepoint the tracer attaches to.
pub const TRACEPOINT: (&str, &str) = ("skb", "kfree_skb");
/// Prefix of every `enum skb_drop_reason` variant, left out of reported names.
const REASON_PREFIX: &str = "SKB_DROP_REASON_";
/// Where tracefs is (or is mounted by us): the first is the modern place, the second the
/// debugfs automount older distributions use.
const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Why the drop tracer cannot run; the agent then runs without drop reasons and says so.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// tracefs is not mounted and could not be mounted (no CAP_SYS_ADMIN in a pod: mount the
    /// host's /sys/kernel/tracing into it).
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}); mount it, \
         or in a pod mount the host's /sys/kernel/tracing"
    )]
    NoTracefs(#[source] io::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The tracepoint's format file lacks a field the tracer needs, or is malformed.
    #[error("tracepoint format {0}")]
    Format(String),
    /// The kernel's BTF is missing, malformed or lacks a type or member the tracer reads.
    #[error("BTF: {0}")]
    Btf(String),
}

/// Everything resolved for the running kernel: the layout patched into the program and the
/// names of the reasons it reports.
#[derive(Debug, Clone)]
pub struct DropTracer {
    pub layout: DropLayout,
    reasons: HashMap<u32, String>,
}

impl DropTracer {
    /// Resolves the layout from tracefs and `/sys/kernel/btf/vmlinux`, mounting tracefs first
    /// if the kernel made its mount point but nobody mounted it (as in a fresh mount
    /// namespace).
    pub fn resolve() -> Result<Self, DropError> {
        let dir = tracefs_dir()?;
        let path = dir.join(format!("events/{}/{}/format", TRACEPOINT.0, TRACEPOINT.1));
        let text = std::fs::read_to_string(&path).map_err(|source| DropError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let format = TracepointFormat::parse(&text)
            .map_err(|e| DropError::Format(format!("{}: {e}", path.display())))?;
        Self::from_parts(&format, &Btf::from_sys_fs()?)
    }

    /// The layout for a kernel with this tracepoint format and this BTF.
    pub fn from_parts(format: &TracepointFormat, btf: &Btf) -> Result<Self, DropError> {
        let field = |name: &str, size: u32| -> Result<u32, DropError> {
            match format.field(name) {
                Some(f) if f.size == size => Ok(f.offset),
                Some(f) => Err(DropError::Format(format!(
                    "field {name} has size {}, expected {size}",
                    f.size
                ))),
                None => Err(DropError::Format(format!("has no field {name}"))),
            }
        };
        let member = |strukt: &str, path: &str, size: u32| -> Result<u32, DropError> {
            let m = btf.member(strukt, path)?;
            if m.size != size {
                return Err(DropError::Btf(format!(
                    "{strukt}.{path} has size {}, expected {size}",
                    m.size
                )));
            }
            Ok(m.offset)
        };
        let ptr = size_of::<usize>() as u32;
        // Kernels before 5.17 have neither the field nor the enum: reasons are then unknown.
        let (tp_reason, reasons) = match format.field("reason") {
            Some(f) if f.size == 4 => (f.offset, reason_names(btf)?),
            Some(f) => {
                return Err(DropError::Format(format!(
                    "field reason has size {}, expected 4",
                    f.size
                )));
            }
            None => (NO_FIELD, HashMap::new()),
        };
        let reason_no_socket = reasons
            .iter()
            .find(|(_, name)| *name == "NO_SOCKET")
            .map_or(NO_FIELD, |(v, _)| *v);
        let layout = DropLayout {
            tp_skbaddr: field("skbaddr", ptr)?,
            tp_location: field("location", ptr)?,
            tp_protocol: field("protocol", 2)?,
            tp_reason,
            skb_head: member("sk_buff", "head", ptr)?,
            skb_network_header: member("sk_buff", "network_header", 2)?,
            skb_dev: member("sk_buff", "dev", ptr)?,
            skb_sk: member("sk_buff", "sk", ptr)?,
            dev_ifindex: member("net_device", "ifindex", 4)?,
            dev_net: member("net_device", "nd_net.net", ptr)?,
            sk_net: member("sock", "__sk_common.skc_net.net", ptr)?,
            net_inum: member("net", "ns.inum", 4)?,
            reason_no_socket,
        };
        Ok(Self { layout, reasons })
    }

    /// The same tracer as on a kernel whose tracepoint has no `reason` field: how the agent
    /// behaves on 5.10 and 5.15, checked on this kernel.
    #[cfg(test)]
    pub fn without_reasons(mut self) -> Self {
        self.layout.tp_reason = NO_FIELD;
        self.layout.reason_no_socket = NO_FIELD;
        self.reasons.clear();
        self
    }

    /// The name of a reason value as the kernel defines it, without the `SKB_DROP_REASON_`
    /// prefix; `unknown` when the kernel does not report reasons.
    pub fn reason_name(&self, value: u32) -> String {
        if value == UNKNOWN_REASON {
            return "unknown".into();
        }
        self.reasons
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("reason {value}"))
    }
}

/// `enum skb_drop_reason` from BTF, by value, without the common prefix.
fn reason_names(btf: &Btf) -> Result<HashMap<u32, String>, DropError> {
    Ok(btf
        .enum_values("skb_drop_reason")?
        .into_iter()
        .filter_map(|(name, value)| {
            let short = name
                .strip_prefix(REASON_PREFIX)
                .unwrap_or(&name)
                .to_string();
            u32::try_from(value).ok().map(|v| (v, short))
        })
        .collect())
}

/// The mounted tracefs, mounting it at the first of [`TRACEFS_DIRS`] if none is.
fn tracefs_dir() -> Result<PathBuf, DropError> {
    let mounted =
        |dir: &str| std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if let Some(dir) = TRACEFS_DIRS.iter().find(|d| mounted(d)) {
        return Ok(PathBuf::from(dir));
    }
    let dir = TRACEFS_DIRS[0];
    nix::mount::mount(
        Some("tracefs"),
        dir,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| DropError::NoTracefs(e.into()))?;
    tracing::info!(dir, "mounted tracefs for the kfree_skb drop tracer");
    Ok(PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::Packet;

    use super::*;

    #[test]
    fn resolves_the_running_kernel_and_names_reasons_from_btf() {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (tracefs)");
            return;
        }
        let t = DropTracer::resolve().unwrap();
        let l = t.layout;
        assert!(l.tp_reason != NO_FIELD, "6.x kernels have drop reasons");
        assert!(l.tp_skbaddr >= 8 && l.tp_location > l.tp_skbaddr);
        let netfilter = t
            .reasons
            .iter()
            .find(|(_, n)| *n == "NETFILTER_DROP")
            .map(|(v, _)| *v)
            .unwrap();
        assert_eq!(t.reason_name(netfilter), "NETFILTER_DROP");
        assert_ne!(l.reason_no_socket, NO_FIELD);
        assert_eq!(t.reason_name(UNKNOWN_REASON), "unknown");
        let old = t.without_reasons();
        assert_eq!(old.reason_name(netfilter), format!("reason {netfilter}"));
    }

    #[test]
    fn a_format_without_reason_gives_unknown_reasons() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        // The 5.10 layout: no rx_sk, no reason.
        let format = TracepointFormat::parse(format::tests::FORMAT_5_10).unwrap();
        let t = DropTracer::from_parts(&format, &btf).unwrap();
        assert_eq!(t.layout.tp_reason, NO_FIELD);
        assert_eq!(t.layout.tp_protocol, 24);
        assert_eq!(t.reason_name(UNKNOWN_REASON), "unknown");
        let broken = TracepointFormat::parse("name: kfree_skb\nformat:\n").unwrap();
        let e = DropTracer::from_parts(&broken, &btf)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no field skbaddr"), "{e}");
    }

    /// Loads an nftables ruleset into netns `ns`.
    fn nft(ns: &str, ruleset: &str) {
        use std::io::Write as _;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f in {ns}: {ruleset}");
    }

    /// Probes from A to B: 0..3 come back (a healthy raw-socket reply must not look like a
    /// drop), 3..6 have their replies dropped by nftables in A's input (drops in A's netns),
    /// 6..8 have their requests dropped in B's input (B's netns: none of A's business).
    fn drop_scenario(v6: bool, tracer: DropTracer) -> Vec<(u16, Packet, u32, u64, u32)> {
        use std::{net::IpAddr, time::Duration};

        use meshdoctor_agent_common::{Hook, Kind};
        use meshdoctor_api::probe_id;

        use crate::{
            observer::{LoadOptions, Observer, current_netns_id},
            testnet::{ADDR_B4, ADDR_B6, Pair, Pinger, collect, event_stream},
        };

        let pair = Pair::new();
        let (icmp, dst) = if v6 {
            ("icmpv6", IpAddr::V6(ADDR_B6))
        } else {
            ("icmp", IpAddr::V4(ADDR_B4))
        };
        let input = |rule: &str| {
            format!(
                "table inet loss {{\n chain input {{\n type filter hook input priority 0;\n {rule}\n }}\n}}\n"
            )
        };
        nft(
            &pair.ns_b,
            &input(&format!(
                "{icmp} type echo-request {icmp} sequence >= 6 drop;"
            )),
        );
        let veth = pair.veth_a.clone();
        let ns_a = pair.ns_a.clone();
        Pair::run_in(&pair.ns_a, move || {
            let netns = current_netns_id().unwrap();
            let mut obs = Observer::load(&LoadOptions {
                drops: Some(tracer.layout),
                ..LoadOptions::default()
            })
            .unwrap();
            obs.attach(&veth).unwrap();
            obs.trace_drops().unwrap();
            let (rt, mut stream) = event_stream(&mut obs);
            let tag = 0x00d1_0b00 | u32::from(v6);
            obs.arm(tag).unwrap();
            let pinger = Pinger::new(dst);
            for seq in 0..3 {
                pinger.probe(tag, seq);
            }
            assert_eq!(pinger.replies(3, Duration::from_secs(3)).len(), 3);
            nft(
                &ns_a,
                &input(&format!(
                    "{icmp} type echo-reply {icmp} sequence >= 3 drop;"
                )),
            );
            for seq in 3..8 {
                pinger.probe(tag, seq);
            }
            assert!(pinger.replies(5, Duration::from_millis(500)).is_empty());
            // 8 requests out, 3 replies in, plus the drops.
            let events = collect(&rt, &mut stream, 11);
            events
                .iter()
                .filter(|e| e.hook == Hook::Drop as u8)
                .map(|e| {
                    assert_eq!(e.netns, netns);
                    let (t, path, seq) = meshdoctor_api::probe_id_parts(e.probe_id);
                    assert_eq!((t, path), (meshdoctor_api::probe_tag(tag), 1));
                    assert_eq!(e.probe_id, probe_id(tag, 1, seq));
                    let packet = if e.kind == Kind::Request as u8 {
                        Packet::Request
                    } else {
                        Packet::Reply
                    };
                    (seq, packet, e.reason, e.location, e.ifindex)
                })
                .collect()
        })
    }

    fn check_drops(v6: bool) {
        if crate::testnet::skip_unless_root() {
            return;
        }
        let tracer = DropTracer::resolve().unwrap();
        let drops = drop_scenario(v6, tracer.clone());
        let mut symbols = Symbols::default();
        for (seq, packet, reason, location, ifindex) in &drops {
            println!(
                "seq {seq} {packet:?}: {} at {}, ifindex {ifindex}",
                tracer.reason_name(*reason),
                symbols.resolve([*location])[location]
            );
        }
        let seqs: Vec<u16> = drops.iter().map(|d| d.0).collect();
        assert_eq!(
            seqs,
            vec![3, 4, 5],
            "only A's drops, no raw-socket noise: {drops:?}"
        );
        for (_, packet, reason, location, ifindex) in drops {
            assert_eq!(packet, Packet::Reply);
            assert_eq!(tracer.reason_name(reason), "NETFILTER_DROP");
            assert_ne!(location, 0);
            assert_ne!(ifindex, 0, "dropped on the veth at input");
        }
    }

    #[test]
    fn traces_netfilter_drops_of_ipv4_probes_in_its_own_netns_only() {
        check_drops(false);
    }

    #[test]
    fn traces_netfilter_drops_of_ipv6_probes_in_its_own_netns_only() {
        check_drops(true);
    }

    #[test]
    fn without_a_reason_field_drops_are_still_traced_as_unknown() {
        if crate::testnet::skip_unless_root() {
            return;
        }
        let tracer = DropTracer::resolve().unwrap().without_reasons();
        let drops = drop_scenario(false, tracer.clone());
        // Without reasons the raw-socket clone noise of 0..3 cannot be told apart in the
        // kernel (the controller ignores drops of probes that came back); 3..6 must be there.
        let dropped: Vec<u16> = drops.iter().map(|d| d.0).filter(|s| *s >= 3).collect();
        assert_eq!(dropped, vec![3, 4, 5], "{drops:?}");
        assert!(drops.iter().all(|d| tracer.reason_name(d.2) == "unknown"));
    }
}
