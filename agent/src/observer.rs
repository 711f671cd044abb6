//! Loader for the TC eBPF observers (`meshdoctor-agent-ebpf`).
//!
//! One [`Observer`] serves one network namespace: it is loaded with that namespace's inode as
//! the `NETNS_ID` global, because ifindex is only unique within a netns and the kernel cannot
//! tell a TC program which netns its device is in (research/ebpf.md §0.5). Load it and attach
//! it from a thread that has `setns`'d into the target namespace; interface names are resolved
//! there. Afterwards the handle may be used from any thread: maps, links and the ring buffer
//! are file descriptors that keep their netns.
//!
//! Flow: [`Observer::load`] → [`Observer::attach`] per interface → [`Observer::events`] once
//! (spawn a task that loops on [`EventStream::next`]) → [`Observer::arm`] a round tag
//! before sending its probes, [`Observer::disarm`] it when the round is over.
//!
//! Dropping the [`Observer`] detaches every program it attached (TCX links and netlink
//! filters alike); the [`EventStream`] stays valid but receives nothing more.

use std::{collections::HashMap as StdHashMap, ffi::CString, io, os::unix::fs::MetadataExt as _};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    sys::SyscallError,
};
use meshdoctor_agent_common::{
    CounterKey, GLOBAL_NETNS_ID, MAP_ACTIVE_ROUNDS, MAP_COUNTERS, MAP_EVENTS, MAP_RINGBUF_DROPS,
    PROG_EGRESS, PROG_INGRESS, ProbeEvent,
};
use tokio::io::{Interest, unix::AsyncFd};

/// The eBPF object built by build.rs. Empty when the build ran with `AYA_BUILD_SKIP=1`.
static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshdoctor-observer"));

/// Legacy-tc priority of our filters: the lowest number runs first, so other filters (a CNI's, a
/// loss injector returning `TC_ACT_OK`) cannot hide packets from the observer. A later filter
/// with the default priority 0 would otherwise be given a smaller number and run before us.
const NETLINK_PRIORITY: u16 = 1;

/// `ENOTSUPP`: the kernel-internal "operation not supported" some bpf paths leak to user space.
const ENOTSUPP: i32 = 524;

/// Failures of the observer, one variant per failure domain.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    /// The agent was built with `AYA_BUILD_SKIP=1`, so there is no eBPF object to load.
    #[error("the eBPF observer was not built into this agent (built with AYA_BUILD_SKIP)")]
    NotBuilt,
    /// Reading the current network namespace inode (`/proc/thread-self/ns/net`) failed.
    #[error("reading the current network namespace id: {0}")]
    Netns(#[source] io::Error),
    /// The kernel refused the object: maps could not be created, BTF was rejected, ...
    #[error("loading the eBPF object: {0}")]
    Load(#[source] EbpfError),
    /// A program is missing from the object, has the wrong type, or failed verification.
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A map is missing from the object, has the wrong type, or a map operation failed.
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// A map the loader needs is not in the object (or was already taken).
    #[error("eBPF map {0} not found in the object")]
    MissingMap(&'static str),
    /// The interface name does not exist in the loader's network namespace.
    #[error("interface {ifname}: {source}")]
    Interface {
        ifname: String,
        #[source]
        source: io::Error,
    },
    /// Attaching a program (TCX link or netlink filter) to an interface failed.
    #[error("attaching {program} to {ifname}: {source}")]
    Attach {
        ifname: String,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// Netlink tc housekeeping (adding clsact, removing stale filters) failed.
    #[error("tc on {ifname}: {source}")]
    Tc {
        ifname: String,
        #[source]
        source: TcError,
    },
    /// [`Observer::events`] was already called: there is one ring buffer and one consumer.
    #[error("the event stream (map {MAP_EVENTS}) was already taken")]
    EventsTaken,
    /// [`Observer::events`] was called outside a tokio runtime.
    #[error("the event stream must be created inside a tokio runtime")]
    NoRuntime,
    /// Registering or polling the ring buffer (map EVENTS) with tokio failed.
    #[error("polling eBPF map {MAP_EVENTS}: {0}")]
    Poll(#[source] io::Error),
}

/// How an interface's programs were attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links (kernel >= 6.6), first in the chain; detached when the observer is dropped or
    /// the process exits.
    Tcx,
    /// Legacy clsact filters over netlink, priority 1; removed when the observer is dropped,
    /// and removed at the next attach if a crashed agent left them behind.
    Netlink,
}

/// The loaded observer programs and maps of one network namespace.
///
/// `Send` (checked by a test), not `Sync` by need: keep it behind a `std::sync::Mutex` (all
/// methods are quick syscalls, never held across an await) or in one task.
pub struct Observer {
    /// Owns the programs and therefore their attachments.
    ebpf: Ebpf,
    active_rounds: HashMap<MapData, u32, u8>,
    counters: PerCpuHashMap<MapData, CounterKey, u64>,
    ringbuf_drops: PerCpuArray<MapData, u64>,
    /// Moved into the [`EventStream`] by [`Observer::events`].
    events: Option<RingBuf<MapData>>,
    /// By ifindex (names can be reused by a new interface): attaching twice is a no-op.
    attached: StdHashMap<u32, AttachMode>,
    /// Cleared after TCX failed once as unsupported, so later interfaces go straight to netlink.
    tcx_supported: bool,
}

/// Inode of the calling thread's network namespace (`/proc/thread-self/ns/net`): the netns id
/// carried by every [`ProbeEvent`] of an observer loaded by this thread.
pub fn current_netns_id() -> io::Result<u32> {
    let ino = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    u32::try_from(ino).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("netns inode {ino} does not fit in 32 bits"),
        )
    })
}

impl Observer {
    /// Loads the programs in the calling thread's current netns; `netns_id` = inode of
    /// /proc/thread-self/ns/net (see [`current_netns_id`]).
    ///
    /// Nothing is attached yet: see [`Observer::attach`]. Needs CAP_BPF + CAP_NET_ADMIN (or
    /// root).
    pub fn load() -> Result<Self, ObserverError> {
        if OBJECT.is_empty() {
            return Err(ObserverError::NotBuilt);
        }
        bump_memlock_rlimit();
        let netns_id = current_netns_id().map_err(ObserverError::Netns)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_NETNS_ID, &netns_id, true)
            .load(OBJECT)
            .map_err(ObserverError::Load)?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            program_mut(&mut ebpf, name)?
                .load()
                .map_err(|source| ObserverError::Program { name, source })?;
        }
        let active_rounds = HashMap::try_from(take_map(&mut ebpf, MAP_ACTIVE_ROUNDS)?)
            .map_err(map_err(MAP_ACTIVE_ROUNDS))?;
        let counters = PerCpuHashMap::try_from(take_map(&mut ebpf, MAP_COUNTERS)?)
            .map_err(map_err(MAP_COUNTERS))?;
        let ringbuf_drops = PerCpuArray::try_from(take_map(&mut ebpf, MAP_RINGBUF_DROPS)?)
            .map_err(map_err(MAP_RINGBUF_DROPS))?;
        let events =
            RingBuf::try_from(take_map(&mut ebpf, MAP_EVENTS)?).map_err(map_err(MAP_EVENTS))?;
        Ok(Self {
            ebpf,
            active_rounds,
            counters,
            ringbuf_drops,
            events: Some(events),
            attached: StdHashMap::new(),
            tcx_supported: true,
        })
    }

    /// Attaches ingress+egress to the interface `ifname`, resolved in the calling thread's
    /// netns (setns there first). Uses TCX with `LinkOrder::first()` when the kernel has it,
    /// else a clsact qdisc and netlink filters at priority 1. Stale netlink filters of ours (a
    /// crashed agent's) are removed first in both modes, since they would report every probe a
    /// second time. Attaching an interface again is a no-op returning the mode used before.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode, ObserverError> {
        let ifindex = ifindex(ifname)?;
        if let Some(mode) = self.attached.get(&ifindex) {
            return Ok(*mode);
        }
        remove_stale_filters(ifname)?;
        let mode = if self.tcx_supported {
            match self.attach_both(ifname, AttachMode::Tcx) {
                Ok(()) => AttachMode::Tcx,
                Err(ObserverError::Attach { source, .. }) if tcx_unsupported(&source) => {
                    self.tcx_supported = false;
                    self.attach_netlink(ifname)?
                }
                Err(e) => return Err(e),
            }
        } else {
            self.attach_netlink(ifname)?
        };
        self.attached.insert(ifindex, mode);
        Ok(mode)
    }

    fn attach_netlink(&mut self, ifname: &str) -> Result<AttachMode, ObserverError> {
        if let Err(source) = tc::qdisc_add_clsact(ifname)
            && !is_errno(&source, libc::EEXIST)
        {
            return Err(ObserverError::Tc {
                ifname: ifname.to_owned(),
                source,
            });
        }
        self.attach_both(ifname, AttachMode::Netlink)?;
        Ok(AttachMode::Netlink)
    }

    /// Attaches both programs, or neither: a half-attached interface would report requests
    /// without replies (or the reverse) and look like loss.
    fn attach_both(&mut self, ifname: &str, mode: AttachMode) -> Result<(), ObserverError> {
        let ingress = self.attach_one(ifname, PROG_INGRESS, TcAttachType::Ingress, mode)?;
        if let Err(e) = self.attach_one(ifname, PROG_EGRESS, TcAttachType::Egress, mode) {
            // Best effort: the ingress link is also detached when the observer is dropped.
            if let Ok(prog) = program_mut(&mut self.ebpf, PROG_INGRESS) {
                let _ = prog.detach(ingress);
            }
            return Err(e);
        }
        Ok(())
    }

    fn attach_one(
        &mut self,
        ifname: &str,
        program: &'static str,
        attach_type: TcAttachType,
        mode: AttachMode,
    ) -> Result<SchedClassifierLinkId, ObserverError> {
        let options = match mode {
            AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
            AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions {
                priority: NETLINK_PRIORITY,
                ..Default::default()
            }),
        };
        program_mut(&mut self.ebpf, program)?
            .attach_with_options(ifname, attach_type, options)
            .map_err(|source| ObserverError::Attach {
                ifname: ifname.to_owned(),
                program,
                source,
            })
    }

    /// Starts reporting probes whose round tag (`probe_id >> 32`) is `round_tag`. Call it before
    /// sending the round's first probe. At most 64 rounds can be armed at once.
    pub fn arm(&mut self, round_tag: u32) -> Result<(), ObserverError> {
        self.active_rounds
            .insert(round_tag, 1, 0)
            .map_err(map_err(MAP_ACTIVE_ROUNDS))
    }

    /// Stops reporting the round's probes (late replies are then ignored). Disarming a round
    /// that is not armed is not an error.
    pub fn disarm(&mut self, round_tag: u32) -> Result<(), ObserverError> {
        match self.active_rounds.remove(&round_tag) {
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            r => r.map_err(map_err(MAP_ACTIVE_ROUNDS)),
        }
    }

    /// Takes the ring buffer: a stream of events to be polled on tokio, for the agent to
    /// spawn. Must be called inside a tokio runtime (the fd is registered with its reactor),
    /// and only once.
    pub fn events(&mut self) -> Result<EventStream, ObserverError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ObserverError::NoRuntime);
        }
        let ring = self.events.take().ok_or(ObserverError::EventsTaken)?;
        // SAFETY: the RingBuf owns its map fd (MapData holds an OwnedFd) and always returns
        // that same fd from as_raw_fd, so it stays open and unchanged while registered.
        match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
            Ok(fd) => Ok(EventStream { fd }),
            Err(e) => {
                let (ring, cause) = e.into_parts();
                // Keep the ring buffer so a later call can retry.
                self.events = Some(ring);
                Err(ObserverError::Poll(cause))
            }
        }
    }

    /// Events lost because the ring buffer was full (summed over CPUs). The probes they
    /// belonged to still show up in [`Observer::counters`].
    pub fn ringbuf_drops(&self) -> Result<u64, ObserverError> {
        let values = self
            .ringbuf_drops
            .get(&0, 0)
            .map_err(map_err(MAP_RINGBUF_DROPS))?;
        Ok(values.iter().sum())
    }

    /// Probe packets seen per (ifindex, hook, kind, family) in this netns, summed over CPUs.
    /// Counts every probe of an armed round, including those whose event was dropped.
    pub fn counters(&self) -> Result<Vec<(CounterKey, u64)>, ObserverError> {
        self.counters
            .iter()
            .map(|entry| {
                let (key, values) = entry.map_err(map_err(MAP_COUNTERS))?;
                Ok((key, values.iter().sum()))
            })
            .collect()
    }
}

/// Probe events from the kernel, polled with tokio's `AsyncFd` on the ring buffer.
///
/// Independent of the [`Observer`] once taken (`Send`, owns its map fd), so it can move into a
/// spawned task: `while let Some(ev) = stream.next().await { ... }`.
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    /// The next probe event, waiting for one if the ring buffer is empty. Events come in
    /// ring-buffer (commit) order, which is not exactly timestamp order across CPUs.
    ///
    /// Returns `None` only if polling the ring buffer fails (logged; it does not happen in
    /// practice), after which the stream is finished. Cancel-safe: an event is consumed only
    /// when it is returned. Cheap per event: while events are pending the readiness stays
    /// cached and no syscall is made.
    pub async fn next(&mut self) -> Option<ProbeEvent> {
        loop {
            let mut guard = match self.fd.readable_mut().await {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::error!(error = %e, map = MAP_EVENTS, "polling the eBPF ring buffer");
                    return None;
                }
            };
            // Some(None): a record we could not decode (none are produced); skip it.
            let record = guard.get_inner_mut().next().map(|item| parse_event(&item));
            match record {
                Some(Some(event)) => return Some(event),
                Some(None) => {}
                // Drained: wait for the next wakeup. If the kernel committed a record after
                // our read, tokio keeps the readiness and we loop straight back.
                None => guard.clear_ready(),
            }
        }
    }
}

/// Decodes one ring-buffer record; records of another size (none are produced) are skipped.
fn parse_event(bytes: &[u8]) -> Option<ProbeEvent> {
    if bytes.len() != size_of::<ProbeEvent>() {
        return None;
    }
    // SAFETY: the length matches and ProbeEvent is repr(C) plain integers (any bit pattern is
    // valid); read_unaligned makes no alignment assumption about the ring buffer slice.
    Some(unsafe { bytes.as_ptr().cast::<ProbeEvent>().read_unaligned() })
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, ObserverError> {
    let program = ebpf.program_mut(name).ok_or(ObserverError::Program {
        name,
        source: ProgramError::NotLoaded,
    })?;
    program
        .try_into()
        .map_err(|source| ObserverError::Program { name, source })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ObserverError> {
    ebpf.take_map(name).ok_or(ObserverError::MissingMap(name))
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> ObserverError {
    move |source| ObserverError::Map { map, source }
}

fn ifindex(ifname: &str) -> Result<u32, ObserverError> {
    let interface_err = |source| ObserverError::Interface {
        ifname: ifname.to_owned(),
        source,
    };
    let c_name = CString::new(ifname)
        .map_err(|e| interface_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: c_name is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(interface_err(io::Error::last_os_error()));
    }
    Ok(index)
}

/// Removes netlink filters named like our programs from both hooks of `ifname`.
fn remove_stale_filters(ifname: &str) -> Result<(), ObserverError> {
    for (attach_type, name) in [
        (TcAttachType::Ingress, PROG_INGRESS),
        (TcAttachType::Egress, PROG_EGRESS),
    ] {
        match tc::qdisc_detach_program(ifname, attach_type, name) {
            Ok(()) => tracing::info!(ifname, name, "removed a stale tc filter of ours"),
            // No filter of ours, or no clsact qdisc at all.
            Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::EINVAL) => {}
            Err(source) => {
                return Err(ObserverError::Tc {
                    ifname: ifname.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn is_errno(e: &TcError, errno: i32) -> bool {
    match e {
        TcError::NetlinkError(e) => e.raw_os_error() == Some(errno),
        TcError::IoError(e) => {
            e.raw_os_error() == Some(errno)
                || (errno == libc::ENOENT && e.kind() == io::ErrorKind::NotFound)
        }
        _ => false,
    }
}

/// Whether a TCX attach failed because the kernel has no TCX (before 6.6 `bpf_link_create`
/// rejects the attach type).
fn tcx_unsupported(e: &ProgramError) -> bool {
    match e {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => matches!(
            io_error.raw_os_error(),
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
        ),
        _ => false,
    }
}

/// Kernels before 5.11 charge map memory to RLIMIT_MEMLOCK, whose default is far too small.
/// Later kernels use memcg accounting, so a failure here is only worth a debug line.
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11"
        );
    }
}
