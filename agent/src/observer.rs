//! Loader for the TC eBPF observers (`meshdoctor-agent-ebpf`).
//!
//! One [`Observer`] serves one network namespace: it is loaded with that namespace's inode as
//! the `NETNS_ID` global, because ifindex is only unique within a netns and the kernel cannot
//! tell a TC program which netns its device is in
//! (docs/ebpf.md, "Which netns a TC program runs in"). Load it and attach it from a thread that
//! has `setns`'d into the target namespace; interface names are resolved there. Afterwards the
//! handle may be used from any thread: maps, links and the ring buffer are file descriptors that
//! keep their netns.
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
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TracePoint,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    sys::SyscallError,
};
use meshdoctor_agent_common::{
    CounterKey, DEFAULT_EVENT_BUFFER_BYTES, DEFAULT_TCP_PATHS, DropLayout, GLOBAL_DROP_LAYOUT,
    GLOBAL_NETNS_ID, MAP_ACTIVE_ROUNDS, MAP_COUNTERS, MAP_EVENTS, MAP_RINGBUF_DROPS, MAP_TCP_PATHS,
    PROG_DROPS, PROG_EGRESS, PROG_INGRESS, ProbeEvent, TcpPath, TcpPathKey, probe_tag,
};
use tokio::io::{Interest, unix::AsyncFd};

use crate::map_sizes::MapSizes;

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
    /// [`Observer::trace_drops`] on an observer loaded without a [`DropLayout`].
    #[error("the drop tracer needs the kernel layout, which was not resolved at load")]
    NoDropLayout,
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
/// `Send` (checked by a test). The methods take `&mut self`: share it behind a
/// `std::sync::Mutex` (every method is a few quick syscalls, so the lock is never held long
/// and never across an await).
pub struct Observer {
    /// Owns the programs and therefore their attachments.
    ebpf: Ebpf,
    active_rounds: HashMap<MapData, u32, u8>,
    tcp_paths: HashMap<MapData, TcpPathKey, TcpPath>,
    counters: PerCpuHashMap<MapData, CounterKey, u64>,
    ringbuf_drops: PerCpuArray<MapData, u64>,
    /// Moved into the [`EventStream`] by [`Observer::events`].
    events: Option<RingBuf<MapData>>,
    /// By ifindex (names can be reused by a new interface), with the name attached to:
    /// attaching twice is a no-op.
    attached: StdHashMap<u32, (String, AttachMode)>,
    /// Cleared after TCX failed once as unsupported, so later interfaces go straight to netlink.
    tcx_supported: bool,
    /// Legacy-tc priority of its filters: [`NETLINK_PRIORITY`], or the next one for an
    /// observer that replaces one still attached at it ([`Observer::reload`]), whose filters
    /// its drop then removes by (priority, handle) without touching the new ones.
    netlink_priority: u16,
    /// What it was loaded with: a [`Observer::reload`] loads the same with bigger maps.
    options: LoadOptions,
    /// Whether [`Observer::trace_drops`] attached the drop tracer.
    traces_drops: bool,
    /// Counter totals of the observers this one replaced ([`Observer::reload`]), so that the
    /// metrics read from the kernel never go back.
    carried: Carried,
}

/// What [`Observer::counters`] and [`Observer::ringbuf_drops`] had counted before a reload.
#[derive(Debug, Default)]
struct Carried {
    counters: StdHashMap<CounterKey, u64>,
    ringbuf_drops: u64,
}

/// How to load the observer.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// The kernel layout the drop tracer reads (see [`crate::drops::DropTracer`]); without it
    /// [`Observer::trace_drops`] is unavailable.
    pub drops: Option<DropLayout>,
    /// Size of the event ring buffer in bytes (a power-of-two multiple of the page size);
    /// `None` keeps the program's 256 KiB.
    pub event_buffer_bytes: Option<u32>,
    /// Entries of the TCP probe paths map: the most TCP paths (its own and those toward it)
    /// the agent can follow at once; `None` keeps the program's 16,384.
    pub tcp_paths: Option<u32>,
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
    /// Loads the programs in the calling thread's current netns, whose inode
    /// (/proc/thread-self/ns/net, see [`current_netns_id`]) tags every event.
    ///
    /// Nothing is attached yet: see [`Observer::attach`]. Needs CAP_BPF + CAP_NET_ADMIN (or
    /// root).
    pub fn load(options: &LoadOptions) -> Result<Self, ObserverError> {
        if OBJECT.is_empty() {
            return Err(ObserverError::NotBuilt);
        }
        bump_memlock_rlimit();
        let netns_id = current_netns_id().map_err(ObserverError::Netns)?;
        let layout = options.drops.unwrap_or_default();
        let mut loader = EbpfLoader::new();
        loader
            .override_global(GLOBAL_NETNS_ID, &netns_id, true)
            .override_global(GLOBAL_DROP_LAYOUT, &layout, true);
        if let Some(bytes) = options.event_buffer_bytes {
            loader.map_max_entries(MAP_EVENTS, bytes);
        }
        if let Some(entries) = options.tcp_paths {
            loader.map_max_entries(MAP_TCP_PATHS, entries);
        }
        let mut ebpf = loader.load(OBJECT).map_err(ObserverError::Load)?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            program_mut(&mut ebpf, name)?
                .load()
                .map_err(|source| ObserverError::Program { name, source })?;
        }
        let active_rounds = HashMap::try_from(take_map(&mut ebpf, MAP_ACTIVE_ROUNDS)?)
            .map_err(map_err(MAP_ACTIVE_ROUNDS))?;
        let tcp_paths = HashMap::try_from(take_map(&mut ebpf, MAP_TCP_PATHS)?)
            .map_err(map_err(MAP_TCP_PATHS))?;
        let counters = PerCpuHashMap::try_from(take_map(&mut ebpf, MAP_COUNTERS)?)
            .map_err(map_err(MAP_COUNTERS))?;
        let ringbuf_drops = PerCpuArray::try_from(take_map(&mut ebpf, MAP_RINGBUF_DROPS)?)
            .map_err(map_err(MAP_RINGBUF_DROPS))?;
        let events =
            RingBuf::try_from(take_map(&mut ebpf, MAP_EVENTS)?).map_err(map_err(MAP_EVENTS))?;
        Ok(Self {
            ebpf,
            active_rounds,
            tcp_paths,
            counters,
            ringbuf_drops,
            events: Some(events),
            attached: StdHashMap::new(),
            tcx_supported: true,
            netlink_priority: NETLINK_PRIORITY,
            options: *options,
            traces_drops: false,
            carried: Carried::default(),
        })
    }

    /// Replaces this observer by one loaded the same way with maps of `sizes`, attached to the
    /// same interfaces (and the drop tracer if this one ran it), with the armed rounds and TCP
    /// paths copied over and the counters carried on. Call it from the netns it was loaded in.
    ///
    /// On an error this observer stays as it was. On success the new ring buffer's
    /// [`Observer::events`] must be taken: the old stream receives nothing more. The new
    /// programs are attached beside the old ones (TCX links, or netlink filters at the other
    /// priority) and the old ones detached when this observer is replaced, so between the two
    /// a packet is seen by both: the agent reloads only while no round is armed.
    pub fn reload(&mut self, sizes: MapSizes) -> Result<(), ObserverError> {
        let mut next = Self::load(&LoadOptions {
            event_buffer_bytes: Some(sizes.event_buffer_bytes),
            tcp_paths: Some(sizes.tcp_paths),
            ..self.options
        })?;
        next.tcx_supported = self.tcx_supported;
        next.netlink_priority = if self.netlink_priority == NETLINK_PRIORITY {
            NETLINK_PRIORITY + 1
        } else {
            NETLINK_PRIORITY
        };
        // No stale-filter sweep: the old filters are live until the old observer is dropped,
        // which removes only its own.
        for (name, _) in self.attached.values() {
            next.attach_swept(name, false)?;
        }
        if self.traces_drops {
            next.trace_drops()?;
        }
        for tag in self.active_rounds.keys() {
            let tag = tag.map_err(map_err(MAP_ACTIVE_ROUNDS))?;
            next.active_rounds
                .insert(tag, 1, 0)
                .map_err(map_err(MAP_ACTIVE_ROUNDS))?;
        }
        for entry in self.tcp_paths.iter() {
            let (key, path) = entry.map_err(map_err(MAP_TCP_PATHS))?;
            next.tcp_paths
                .insert(key, path, 0)
                .map_err(map_err(MAP_TCP_PATHS))?;
        }
        next.carried = Carried {
            counters: self.counters()?.into_iter().collect(),
            ringbuf_drops: self.ringbuf_drops()?,
        };
        // Dropping the old observer detaches its programs.
        *self = next;
        Ok(())
    }

    /// Sizes of the maps a plan can outgrow.
    pub fn sizes(&self) -> MapSizes {
        MapSizes {
            event_buffer_bytes: self
                .options
                .event_buffer_bytes
                .unwrap_or(DEFAULT_EVENT_BUFFER_BYTES),
            tcp_paths: self.options.tcp_paths.unwrap_or(DEFAULT_TCP_PATHS),
        }
    }

    /// Loads and attaches the `skb:kfree_skb` drop tracer: from now on, probes of armed rounds
    /// that the kernel frees as a drop in this netns are events with [`Hook::Drop`]. Needs
    /// CAP_PERFMON besides CAP_BPF, and tracefs (mounted by
    /// [`crate::drops::DropTracer::resolve`]).
    ///
    /// [`Hook::Drop`]: meshdoctor_agent_common::Hook::Drop
    pub fn trace_drops(&mut self) -> Result<(), ObserverError> {
        if self.options.drops.is_none() {
            return Err(ObserverError::NoDropLayout);
        }
        let name = PROG_DROPS;
        let err = |source| ObserverError::Program { name, source };
        let program: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or(err(ProgramError::NotLoaded))?
            .try_into()
            .map_err(err)?;
        program.load().map_err(err)?;
        let (category, event) = crate::drops::TRACEPOINT;
        program.attach(category, event).map_err(err)?;
        self.traces_drops = true;
        Ok(())
    }

    /// Attaches ingress+egress to the interface `ifname`, resolved in the calling thread's
    /// netns, which must be the one the observer was loaded in (its events carry that netns id). Uses TCX with `LinkOrder::first()` when the kernel has it,
    /// else a clsact qdisc and netlink filters at priority 1. Stale netlink filters of ours (a
    /// crashed agent's) are removed first in both modes, since they would report every probe a
    /// second time. Attaching an interface again is a no-op returning the mode used before.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode, ObserverError> {
        self.attach_swept(ifname, true)
    }

    /// [`Observer::attach`], removing stale filters first when `sweep`.
    fn attach_swept(&mut self, ifname: &str, sweep: bool) -> Result<AttachMode, ObserverError> {
        let ifindex = ifindex(ifname)?;
        if let Some((_, mode)) = self.attached.get(&ifindex) {
            return Ok(*mode);
        }
        if sweep {
            remove_stale_filters(ifname)?;
        }
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
        self.attached.insert(ifindex, (ifname.to_owned(), mode));
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
                priority: self.netlink_priority,
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

    /// Starts reporting the probes of round `round_tag` (those whose id carries its
    /// [`probe_tag`]). Call it before sending the round's first probe. At most 64 rounds can
    /// be armed at once.
    pub fn arm(&mut self, round_tag: u32) -> Result<(), ObserverError> {
        self.active_rounds
            .insert(probe_tag(round_tag), 1, 0)
            .map_err(map_err(MAP_ACTIVE_ROUNDS))
    }

    /// Stops reporting the round's probes (late replies are then ignored). Disarming a round
    /// that is not armed is not an error.
    pub fn disarm(&mut self, round_tag: u32) -> Result<(), ObserverError> {
        ignore_missing(self.active_rounds.remove(&probe_tag(round_tag)))
            .map_err(map_err(MAP_ACTIVE_ROUNDS))
    }

    /// Names the TCP probe paths of an armed round (see `crate::tcp`). A 4-tuple another
    /// armed round also probes is taken over by the later round.
    pub fn add_tcp_paths(&mut self, paths: &[(TcpPathKey, TcpPath)]) -> Result<(), ObserverError> {
        for (key, path) in paths {
            self.tcp_paths
                .insert(key, path, 0)
                .map_err(map_err(MAP_TCP_PATHS))?;
        }
        Ok(())
    }

    /// Forgets TCP probe paths that still belong to `round_tag` (not those another round took
    /// over).
    pub fn remove_tcp_paths(
        &mut self,
        round_tag: u32,
        paths: &[(TcpPathKey, TcpPath)],
    ) -> Result<(), ObserverError> {
        for (key, _) in paths {
            if self
                .tcp_paths
                .get(key, 0)
                .is_ok_and(|p| p.round_tag == round_tag)
            {
                ignore_missing(self.tcp_paths.remove(key)).map_err(map_err(MAP_TCP_PATHS))?;
            }
        }
        Ok(())
    }

    /// Takes the ring buffer: a stream of events to be polled on tokio, for the agent to
    /// spawn. Must be called inside a tokio runtime (the fd is registered with its reactor),
    /// and only once.
    pub fn events(&mut self) -> Result<EventStream, ObserverError> {
        if self.events.is_none() {
            return Err(ObserverError::EventsTaken);
        }
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

    /// Events lost because the ring buffer was full (summed over CPUs, since the agent
    /// started). The probes they belonged to still show up in [`Observer::counters`].
    pub fn ringbuf_drops(&self) -> Result<u64, ObserverError> {
        let values = self
            .ringbuf_drops
            .get(&0, 0)
            .map_err(map_err(MAP_RINGBUF_DROPS))?;
        Ok(self.carried.ringbuf_drops + values.iter().sum::<u64>())
    }

    /// Probe packets seen per (ifindex, hook, kind, family) in this netns, summed over CPUs,
    /// since the agent started. Counts every probe of an armed round, including those whose
    /// event was dropped.
    pub fn counters(&self) -> Result<Vec<(CounterKey, u64)>, ObserverError> {
        let mut totals = self.carried.counters.clone();
        for entry in self.counters.iter() {
            let (key, values) = entry.map_err(map_err(MAP_COUNTERS))?;
            *totals.entry(key).or_default() += values.iter().sum::<u64>();
        }
        Ok(totals.into_iter().collect())
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

/// Removing what is not there (`ENOENT`) is done, not an error.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        r => r,
    }
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

#[cfg(test)]
mod tests {
    //! Root tests: two network namespaces joined by a veth pair, the observer attached on one
    //! side, raw-socket echo probes to the other side. Skipped when not root.

    use std::{
        collections::HashSet,
        net::{IpAddr, UdpSocket},
        os::fd::AsRawFd as _,
        process::Command,
        time::Duration,
    };

    use meshdoctor_agent_common::{Hook, IpFamily, Kind};
    use meshdoctor_api::probe_id;
    use socket2::Socket;

    use super::*;
    use crate::testnet::{
        ADDR_A4, ADDR_B4, ADDR_B6, Pair, Pinger, collect, event_stream, skip_unless_root,
    };

    fn scenario(v6: bool) {
        let pair = Pair::new();
        let (dst, family) = if v6 {
            (IpAddr::V6(ADDR_B6), IpFamily::V6)
        } else {
            (IpAddr::V4(ADDR_B4), IpFamily::V4)
        };
        let veth = pair.veth_a.clone();
        Pair::run_in(&pair.ns_a, move || {
            let netns = current_netns_id().unwrap();
            let ifindex = ifindex(&veth).unwrap();
            let mut obs = Observer::load(&LoadOptions::default()).unwrap();
            let mode = obs.attach(&veth).unwrap();
            assert_eq!(obs.attach(&veth).unwrap(), mode, "second attach is a no-op");
            println!("attached to {veth} with {mode:?}");
            let (rt, mut stream) = event_stream(&mut obs);
            assert!(matches!(obs.events(), Err(ObserverError::EventsTaken)));

            let armed: u32 = 0x00c0_ffee;
            let unarmed = armed + 1;
            obs.arm(armed).unwrap();
            let pinger = Pinger::new(dst);
            // seq 0..5: armed probes; 5..8: probes of a round that is not armed;
            // 8..11: ordinary pings (no cookie, same length).
            for seq in 0..5 {
                pinger.probe(armed, seq);
            }
            for seq in 5..8 {
                pinger.probe(unarmed, seq);
            }
            for seq in 8..11 {
                pinger.plain(seq);
            }
            let replies = pinger.replies(11, Duration::from_secs(3));
            assert_eq!(replies, (0..11).collect(), "every echo was answered");

            let events = collect(&rt, &mut stream, 10);
            assert_eq!(events.len(), 10, "5 requests + 5 replies: {events:#?}");
            for seq in 0..5 {
                let id = probe_id(armed, 1, seq);
                let of = |hook: Hook, kind: Kind| {
                    let matching: Vec<_> = events
                        .iter()
                        .filter(|e| e.probe_id == id && e.hook == hook as u8)
                        .collect();
                    assert_eq!(matching.len(), 1, "probe {id:#x} at {hook:?}: {events:#?}");
                    let e = *matching[0];
                    assert_eq!(e.kind, kind as u8);
                    assert_eq!(e.family, family as u8);
                    assert_eq!(e.ifindex, ifindex);
                    assert_eq!(e.netns, netns);
                    e
                };
                let request = of(Hook::Egress, Kind::Request);
                let reply = of(Hook::Ingress, Kind::Reply);
                assert!(
                    reply.ktime_ns > request.ktime_ns,
                    "kernel RTT of probe {id:#x} must be positive"
                );
                println!(
                    "probe {id:#x}: kernel RTT {} ns",
                    reply.ktime_ns - request.ktime_ns
                );
            }

            let mut counters = obs.counters().unwrap();
            counters.sort_by_key(|(k, _)| k.hook);
            let key = |hook: Hook, kind: Kind| CounterKey {
                ifindex,
                hook: hook as u8,
                kind: kind as u8,
                family: family as u8,
                proto: meshdoctor_agent_common::PROTO_ICMP,
            };
            assert_eq!(
                counters,
                vec![
                    (key(Hook::Ingress, Kind::Reply), 5),
                    (key(Hook::Egress, Kind::Request), 5),
                ]
            );
            assert_eq!(obs.ringbuf_drops().unwrap(), 0);

            // Disarmed: the same round's probes are no longer reported.
            obs.disarm(armed).unwrap();
            obs.disarm(armed).unwrap();
            pinger.probe(armed, 20);
            assert_eq!(
                pinger.replies(1, Duration::from_secs(3)),
                HashSet::from([20])
            );
            let late = collect(&rt, &mut stream, 0);
            assert!(late.is_empty(), "disarmed round reported: {late:#?}");
        });
    }

    /// Cumulative (run count, run time ns) of both programs of `obs`: [ingress, egress].
    /// (runs, ns) of one program so far.
    fn prog_stats(obs: &Observer, name: &str) -> (u64, u64) {
        let info = obs.ebpf.program(name).unwrap().info().unwrap();
        (info.run_count(), info.run_time().as_nanos() as u64)
    }

    fn run_stats(obs: &Observer) -> [(u64, u64); 2] {
        [PROG_INGRESS, PROG_EGRESS].map(|name| prog_stats(obs, name))
    }

    fn print_cost(what: &str, before: [(u64, u64); 2], after: [(u64, u64); 2]) {
        for (i, name) in [PROG_INGRESS, PROG_EGRESS].iter().enumerate() {
            let runs = after[i].0 - before[i].0;
            let ns = after[i].1 - before[i].1;
            let per = if runs == 0 {
                0.0
            } else {
                ns as f64 / runs as f64
            };
            println!("eBPF cost, {what:<22} {name:<16} runs {runs:>6}  {per:>7.1} ns/packet");
        }
    }

    /// Prints the observers' cost per packet (kernel run-time statistics) for probe packets
    /// and for packets they reject: ordinary pings and UDP. No timing assertions.
    #[test]
    fn measures_per_packet_cost() {
        if skip_unless_root() {
            return;
        }
        const N: u16 = 2000;
        let pair = Pair::new();
        // A UDP sink in B, so the datagrams are consumed without ICMP errors coming back.
        let sink = Pair::run_in(&pair.ns_b, || UdpSocket::bind((ADDR_B4, 0)).unwrap());
        let sink_addr = sink.local_addr().unwrap();
        let veth = pair.veth_a.clone();
        Pair::run_in(&pair.ns_a, move || {
            let mut obs = Observer::load(&LoadOptions::default()).unwrap();
            obs.attach(&veth).unwrap();
            let tag = 0x0bad_cafe;
            obs.arm(tag).unwrap();
            // Statistics are on while this fd is open (same as kernel.bpf_stats_enabled=1).
            let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
            let pinger = Pinger::new(IpAddr::V4(ADDR_B4));
            let udp = UdpSocket::bind((ADDR_A4, 0)).unwrap();

            // Batches of 50 so that neither the veth backlog nor the socket buffer overflow.
            let s0 = run_stats(&obs);
            for batch in (0..N).step_by(50) {
                for seq in batch..batch + 50 {
                    pinger.probe(tag, seq);
                }
                pinger.replies(50, Duration::from_millis(500));
            }
            let s1 = run_stats(&obs);
            for batch in (0..N).step_by(50) {
                for seq in batch..batch + 50 {
                    pinger.plain(seq);
                }
                pinger.replies(50, Duration::from_millis(500));
            }
            let s2 = run_stats(&obs);
            for _ in 0..N {
                udp.send_to(b"not a probe", sink_addr).unwrap();
            }
            let s3 = run_stats(&obs);
            print_cost("probe echo (v4)", s0, s1);
            print_cost("plain echo (v4)", s1, s2);
            print_cost("UDP (v4)", s2, s3);
            let probes: u64 = obs.counters().unwrap().iter().map(|(_, n)| n).sum();
            println!(
                "probe packets counted: {probes}, ring buffer drops: {}",
                obs.ringbuf_drops().unwrap()
            );
        });
        drop(sink);
    }

    /// Prints the drop tracer's cost per kfree_skb event (kernel run-time statistics): for
    /// drops of ordinary packets (UDP to a closed port), which it must reject quickly, since it
    /// sees every drop of the machine. No timing assertions.
    #[test]
    fn measures_drop_tracer_cost() {
        if skip_unless_root() {
            return;
        }
        const N: u64 = 2000;
        let tracer = crate::drops::DropTracer::resolve().unwrap();
        let pair = Pair::new();
        Pair::run_in(&pair.ns_a, move || {
            let mut obs = Observer::load(&LoadOptions {
                drops: Some(tracer.layout),
                ..LoadOptions::default()
            })
            .unwrap();
            obs.trace_drops().unwrap();
            let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
            // Nothing listens on port 9 of B: every datagram is freed with NO_SOCKET there.
            let udp = UdpSocket::bind((ADDR_A4, 0)).unwrap();
            let before = prog_stats(&obs, PROG_DROPS);
            for _ in 0..N {
                let _ = udp.send_to(b"not a probe", (ADDR_B4, 9));
            }
            std::thread::sleep(Duration::from_millis(200));
            let after = prog_stats(&obs, PROG_DROPS);
            let runs = after.0 - before.0;
            assert!(
                runs >= N / 2,
                "the tracer saw {runs} drops of {N} datagrams"
            );
            println!(
                "eBPF cost, kfree_skb of non-probe packets: runs {runs}, {:.1} ns/drop",
                (after.1 - before.1) as f64 / runs as f64
            );
        });
    }

    /// Names of our filters on one hook of `dev` in the calling thread's netns.
    fn our_filters(dev: &str, hook: &str) -> usize {
        let out = Command::new("tc")
            .args(["filter", "show", "dev", dev, hook])
            .output()
            .expect("run tc");
        // One line per filter: "filter protocol all pref 1 bpf chain 0 handle 0x1
        // observe_ingress direct-action not_in_hw id 42 name observe_ingress tag ...".
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" bpf ") && l.contains("observe_"))
            .count()
    }

    /// An observer attached to `veth` with netlink filters, as on kernels without TCX.
    fn netlink_observer(veth: &str) -> Observer {
        let mut obs = Observer::load(&LoadOptions::default()).unwrap();
        obs.tcx_supported = false;
        assert_eq!(obs.attach(veth).unwrap(), AttachMode::Netlink);
        obs
    }

    /// The legacy path (kernels < 6.6): clsact + netlink filters. A crashed agent's filters are
    /// replaced, not doubled, and ours are removed when the observer is dropped.
    #[test]
    fn netlink_mode_replaces_stale_filters() {
        if skip_unless_root() {
            return;
        }
        let pair = Pair::new();
        let veth = pair.veth_a.clone();
        Pair::run_in(&pair.ns_a, move || {
            let crashed = netlink_observer(&veth);
            // A crash: the process dies without detaching, the kernel keeps the filters.
            std::mem::forget(crashed);
            assert_eq!(our_filters(&veth, "ingress"), 1);
            assert_eq!(our_filters(&veth, "egress"), 1);

            let mut obs = netlink_observer(&veth);
            assert_eq!(our_filters(&veth, "ingress"), 1);
            assert_eq!(our_filters(&veth, "egress"), 1);

            let tag = 0x00ab_cdef;
            obs.arm(tag).unwrap();
            let pinger = Pinger::new(IpAddr::V4(ADDR_B4));
            pinger.probe(tag, 1);
            assert_eq!(
                pinger.replies(1, Duration::from_secs(3)),
                HashSet::from([1])
            );
            let mut counters = obs.counters().unwrap();
            counters.sort_by_key(|(k, _)| k.hook);
            let hooks: Vec<_> = counters.iter().map(|(k, n)| (k.hook, k.kind, *n)).collect();
            assert_eq!(
                hooks,
                vec![
                    (Hook::Ingress as u8, Kind::Reply as u8, 1),
                    (Hook::Egress as u8, Kind::Request as u8, 1)
                ]
            );

            drop(obs);
            assert_eq!(our_filters(&veth, "ingress"), 0);
            assert_eq!(our_filters(&veth, "egress"), 0);
        });
    }

    /// Reloading with bigger maps in netlink mode leaves the new filters (and only them) in
    /// place, twice in a row (the priorities alternate), and they observe probes; the counters
    /// carry on across reloads.
    #[test]
    fn netlink_reload_keeps_the_new_filters() {
        if skip_unless_root() {
            return;
        }
        let pair = Pair::new();
        let veth = pair.veth_a.clone();
        Pair::run_in(&pair.ns_a, move || {
            let mut obs = netlink_observer(&veth);
            let pinger = Pinger::new(IpAddr::V4(ADDR_B4));
            let tag = 0x00ab_cdef;
            obs.arm(tag).unwrap();
            for (seq, kib) in [(1, 512), (2, 1024)] {
                pinger.probe(tag, seq);
                assert_eq!(
                    pinger.replies(1, Duration::from_secs(3)),
                    HashSet::from([seq])
                );
                obs.reload(MapSizes {
                    event_buffer_bytes: kib << 10,
                    tcp_paths: 32768,
                })
                .unwrap();
                assert_eq!(obs.sizes().event_buffer_bytes, kib << 10);
                assert_eq!(our_filters(&veth, "ingress"), 1, "after reload {seq}");
                assert_eq!(our_filters(&veth, "egress"), 1, "after reload {seq}");
            }
            pinger.probe(tag, 3);
            assert_eq!(
                pinger.replies(1, Duration::from_secs(3)),
                HashSet::from([3])
            );
            // Three probes, each seen leaving and its reply arriving: the last by the filters
            // of the second reload, the first two carried over.
            let seen: u64 = obs.counters().unwrap().iter().map(|(_, n)| n).sum();
            assert_eq!(seen, 6);
            drop(obs);
            assert_eq!(our_filters(&veth, "ingress"), 0);
        });
    }

    /// Sets a sticky IPv6 extension header (`opt` = IPV6_HOPOPTS or IPV6_DSTOPTS) holding
    /// one PadN option on `sock`, so every packet sent carries that header.
    fn set_ext_header(sock: &Socket, opt: libc::c_int) {
        // next header (filled by the kernel), length 0 (= 8 bytes), PadN with 4 zero bytes.
        let hdr: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
        // SAFETY: valid fd and an 8-byte buffer of the advertised length.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IPV6,
                opt,
                hdr.as_ptr().cast(),
                hdr.len() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt {opt}: {}", io::Error::last_os_error());
    }

    /// ICMPv6 probes behind hop-by-hop and destination-options headers are still recognised.
    #[test]
    fn observes_ipv6_probe_behind_extension_headers() {
        if skip_unless_root() {
            return;
        }
        let pair = Pair::new();
        let veth = pair.veth_a.clone();
        Pair::run_in(&pair.ns_a, move || {
            let mut obs = Observer::load(&LoadOptions::default()).unwrap();
            obs.attach(&veth).unwrap();
            let (rt, mut stream) = event_stream(&mut obs);
            let tag = 0x0006_0e47;
            obs.arm(tag).unwrap();
            let pinger = Pinger::new(IpAddr::V6(ADDR_B6));
            set_ext_header(&pinger.sock, libc::IPV6_HOPOPTS);
            set_ext_header(&pinger.sock, libc::IPV6_DSTOPTS);
            pinger.probe(tag, 7);
            assert_eq!(
                pinger.replies(1, Duration::from_secs(3)),
                HashSet::from([7])
            );
            // The request carries both headers; the reply from the peer carries none.
            let events = collect(&rt, &mut stream, 2);
            let mut seen: Vec<_> = events
                .iter()
                .map(|e| (e.probe_id, e.hook, e.kind, e.family))
                .collect();
            seen.sort_unstable();
            let id = probe_id(tag, 1, 7);
            let v6 = IpFamily::V6 as u8;
            assert_eq!(
                seen,
                vec![
                    (id, Hook::Ingress as u8, Kind::Reply as u8, v6),
                    (id, Hook::Egress as u8, Kind::Request as u8, v6),
                ]
            );
        });
    }

    #[test]
    fn observer_and_stream_are_send() {
        fn send<T: Send>() {}
        send::<Observer>();
        send::<EventStream>();
    }

    #[test]
    fn observes_ipv4_echo_probes() {
        if skip_unless_root() {
            return;
        }
        scenario(false);
    }

    #[test]
    fn observes_ipv6_echo_probes() {
        if skip_unless_root() {
            return;
        }
        scenario(true);
    }
}
