//! The round runner: paces a [`Requester`] at a fixed rate with bounded concurrency, times every
//! request and sums the outcomes into [`LoadStats`].
//!
//! Why it is built this way:
//! - Request `i` is due at `start + i / qps`, computed from the start instant, so pacing neither
//!   bursts (kdoctor before Dec 2023 sent a second's worth at once) nor drifts (sleeping one
//!   interval after another adds each wake-up's lateness). A pacer that fell behind (a stalled
//!   runtime) sends what is already due at once and is back on schedule.
//! - At most `max_in_flight` requests are outstanding. A request that comes due while the bound
//!   is reached is not sent and is counted in `not_sent`: kdoctor spawns a goroutine per request
//!   without bound, so a slow target turns the prober into a load bomb. Not-sent requests are
//!   the prober's shortfall and are reported apart from the target's failures.
//! - Everything runs in the caller's task, and a request costs no allocation, timer or lock of
//!   the runner's: in-flight requests live in [`Slots`], one pinned box per slot allocated the
//!   first time the slot is used and reused by every later request, each slot with its own
//!   waker that marks it ready in a bitset, so only woken requests are polled. Protocols that
//!   need background work (connection drivers) spawn it themselves.
//! - Latency is measured here, around the requester's future, so every protocol is timed the
//!   same way. The per-request timeout is the runner's too (error kind `timeout`), with one
//!   timer for all requests instead of one registered and cancelled per request: it is armed
//!   no later than the oldest request's deadline (a request sent later has a later deadline),
//!   and when it fires the slots are scanned, the expired dropped and the timer re-armed at the
//!   oldest deadline left: about one scan per timeout period, with no memory per request.
//! - The pacing timer is re-armed only when it fired or must fire earlier, not on every turn:
//!   at saturation (every slot refilled as soon as it frees) that is once per timer tick rather
//!   than once per request.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use meshdoctor_api::LoadStats;
use tokio::time::Instant;

use crate::stats::Collector;
use crate::{Outcome, Requester};

/// How hard and how long to load one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    /// Requests per second.
    pub qps: u32,
    /// How long requests are sent; in-flight requests are then awaited (each at most `timeout`).
    pub duration: Duration,
    /// Per-request timeout, from the first poll of the request to its outcome.
    pub timeout: Duration,
    /// Most requests outstanding at once (values below 1 count as 1).
    pub max_in_flight: usize,
}

impl LoadSpec {
    /// Requests the pacing calls for: `qps` x `duration`, rounded down.
    pub fn planned(&self) -> u64 {
        let n = u128::from(self.qps) * self.duration.as_nanos() / 1_000_000_000;
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// How many requests are due `elapsed` after the round's start: those `i` whose
    /// [`due`](Self::due) offset, `floor(i * 1e9 / qps)` ns, is at most `elapsed`, which is
    /// `ceil((elapsed_ns + 1) * qps / 1e9)` of them.
    fn due_count(&self, elapsed: Duration) -> u64 {
        let n = (elapsed.as_nanos() + 1) * u128::from(self.qps.max(1)) + 999_999_999;
        u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX)
    }

    /// When request `i` is due, as an offset from the round's start.
    fn due(&self, i: u64) -> Duration {
        let ns = u128::from(i) * 1_000_000_000 / u128::from(self.qps.max(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// How late past the end of the duration the pacer may still send a due request. Timers fire
/// on a 1 ms wheel and the runtime may be briefly busy, so the last requests of a round are
/// often sent a little after the nominal end; past this grace the prober itself is too slow
/// and the rest are counted not sent rather than sent outside the round.
const SEND_GRACE: Duration = Duration::from_millis(20);

/// Runs one round of requests against `requester` as `spec` says and returns its statistics.
pub async fn run<R: Requester>(requester: Arc<R>, spec: &LoadSpec) -> LoadStats {
    let planned = spec.planned();
    let max_in_flight = spec.max_in_flight.max(1);
    let mut stats = Collector::new();
    // Never more slots than requests: a huge bound on a short round costs nothing.
    let mut slots = Slots::new(max_in_flight.min(usize::try_from(planned).unwrap_or(usize::MAX)));
    let mut not_sent = 0u64;
    let mut next = 0u64;

    let start = Instant::now();
    let stop = start + spec.duration + SEND_GRACE;
    let mut first_send: Option<Instant> = None;
    let mut last_done = start;
    // Wakes the loop when request `next` is due. `pace_at` is the deadline it is armed at,
    // `None` once it fired.
    let pace = tokio::time::sleep_until(start);
    tokio::pin!(pace);
    let mut pace_at: Option<Instant> = None;
    // Fires at the oldest deadline of a request in flight, or earlier when that request ended
    // meanwhile; armed only while `expiry_armed`.
    let expiry = tokio::time::sleep_until(start);
    tokio::pin!(expiry);
    let mut expiry_armed = false;

    loop {
        // Send what is due, on every turn: after a completion (the timer may tick a little
        // late) as well as when the pacing timer fires. The first request goes out at once.
        if next < planned {
            let now = Instant::now();
            if now > stop {
                not_sent += planned - next;
                next = planned;
            }
            // Requests next..due are due; as many as there are free slots go, the rest are
            // not sent. Counted in one step, so an overloaded round costs no work per request
            // it skips.
            let due = spec.due_count(now - start).min(planned);
            if due > next {
                let free = max_in_flight.saturating_sub(slots.in_flight());
                let send = (due - next).min(free as u64);
                if send > 0 {
                    first_send.get_or_insert(now);
                }
                for _ in 0..send {
                    slots.start(requester.request(), now);
                }
                if send > 0 && !expiry_armed {
                    // Nothing older is in flight (else the timer would be armed).
                    expiry.as_mut().reset(now + spec.timeout);
                    expiry_armed = true;
                }
                not_sent += due - next - send;
                next = due;
            }
            if next < planned {
                let at = start + spec.due(next);
                if pace_at.is_none_or(|armed| at < armed) {
                    pace.as_mut().reset(at);
                    pace_at = Some(at);
                }
            }
        }
        if next >= planned && slots.in_flight() == 0 {
            break;
        }
        // Wait until a request completes or times out, or the pacer is due.
        poll_fn(|cx| {
            // Completions first: a slot freed now is free for a request due now.
            let mut progress = slots.poll_ready(cx, |outcome, started| {
                let done = Instant::now();
                stats.record(&outcome, done - started);
                last_done = done;
            });
            if expiry_armed && expiry.as_mut().poll(cx).is_ready() {
                progress = true;
                let now = Instant::now();
                let (expired, oldest) = slots.expire(|sent| sent + spec.timeout <= now);
                for _ in 0..expired {
                    stats.record_error("timeout", || {
                        format!("no reply within {} ms", spec.timeout.as_millis())
                    });
                    last_done = now;
                }
                expiry_armed = oldest.is_some();
                if let Some(sent) = oldest {
                    expiry.as_mut().reset(sent + spec.timeout);
                }
            }
            if next < planned && pace_at.is_some() && pace.as_mut().poll(cx).is_ready() {
                pace_at = None;
                progress = true;
            }
            if progress {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    let span = first_send.map_or(Duration::ZERO, |first| {
        last_done.saturating_duration_since(first)
    });
    stats.finish(planned, not_sent, span)
}

/// The requests in flight: a fixed set of reusable slots, each holding at most one request's
/// future in a pinned box, with a bitset of the slots woken since they were last polled.
///
/// A slot's box is allocated the first time the slot is needed and kept: starting a request
/// writes its future into a free slot in place. Each slot has its own waker, made once, which
/// sets the slot's bit and wakes the runner, so a turn polls only the requests that can move.
struct Slots<F> {
    futures: Vec<Pin<Box<Option<F>>>>,
    /// When each slot's request was sent.
    started: Vec<Instant>,
    wakers: Vec<Waker>,
    ready: Arc<ReadySet>,
    free: Vec<usize>,
    in_flight: usize,
}

/// Slots woken since their last poll, one bit each, and the runner's waker.
struct ReadySet {
    bits: Box<[AtomicU64]>,
    runner: AtomicWaker,
}

impl ReadySet {
    fn mark(&self, slot: usize) {
        self.bits[slot / 64].fetch_or(1 << (slot % 64), Ordering::Release);
    }
}

/// The waker of one slot.
struct SlotWaker {
    ready: Arc<ReadySet>,
    slot: usize,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.mark(self.slot);
        self.ready.runner.wake();
    }
}

impl<F: Future<Output = Outcome>> Slots<F> {
    /// Room for `capacity` requests at once (at least one).
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            futures: Vec::new(),
            started: Vec::new(),
            wakers: Vec::new(),
            ready: Arc::new(ReadySet {
                bits: (0..capacity.div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                runner: AtomicWaker::new(),
            }),
            free: Vec::new(),
            in_flight: 0,
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Puts `request`, sent at `now`, into a free slot, to be polled on the next
    /// [`poll_ready`](Self::poll_ready). The caller keeps the number in flight within the
    /// capacity.
    fn start(&mut self, request: F, now: Instant) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.futures[slot].as_mut().set(Some(request));
                slot
            }
            None => {
                let slot = self.futures.len();
                self.futures.push(Box::pin(Some(request)));
                self.started.push(now);
                self.wakers.push(Waker::from(Arc::new(SlotWaker {
                    ready: self.ready.clone(),
                    slot,
                })));
                slot
            }
        };
        self.started[slot] = now;
        self.in_flight += 1;
        self.ready.mark(slot);
    }

    /// Drops every request in flight whose send instant is `expired`: how many, and when the
    /// oldest request left was sent.
    fn expire(&mut self, expired: impl Fn(Instant) -> bool) -> (u64, Option<Instant>) {
        let mut dropped = 0;
        let mut oldest: Option<Instant> = None;
        for slot in 0..self.futures.len() {
            if self.futures[slot].is_none() {
                continue;
            }
            let sent = self.started[slot];
            if expired(sent) {
                self.release(slot);
                dropped += 1;
            } else if oldest.is_none_or(|o| sent < o) {
                oldest = Some(sent);
            }
        }
        (dropped, oldest)
    }

    fn release(&mut self, slot: usize) {
        self.futures[slot].as_mut().set(None);
        self.free.push(slot);
        self.in_flight -= 1;
    }

    /// Polls every slot woken since its last poll (and every slot just started); hands each
    /// outcome to `done` with the instant its request was sent. Whether any request completed.
    fn poll_ready(&mut self, cx: &mut Context<'_>, mut done: impl FnMut(Outcome, Instant)) -> bool {
        // Registered before the bits are read, so a wake after the read is not lost.
        self.ready.runner.register(cx.waker());
        let mut completed = false;
        for word in 0..self.ready.bits.len() {
            let mut bits = self.ready.bits[word].swap(0, Ordering::Acquire);
            while bits != 0 {
                let slot = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // A slot woken after its request ended (or before the slot was ever used).
                let Some(request) = self
                    .futures
                    .get_mut(slot)
                    .and_then(|f| f.as_mut().as_pin_mut())
                else {
                    continue;
                };
                let mut cx = Context::from_waker(&self.wakers[slot]);
                if let Poll::Ready(outcome) = request.poll(&mut cx) {
                    self.release(slot);
                    done(outcome, self.started[slot]);
                    completed = true;
                }
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A requester whose `i`-th request (0-based) takes `delay(i)` and ends with `outcome(i)`.
    /// It records when each request started, relative to its creation.
    struct Fake {
        n: AtomicU64,
        born: Instant,
        starts: Mutex<Vec<Duration>>,
        delay: fn(u64) -> Duration,
        outcome: fn(u64) -> Outcome,
    }

    impl Fake {
        fn new(delay: fn(u64) -> Duration, outcome: fn(u64) -> Outcome) -> Arc<Self> {
            Arc::new(Self {
                n: AtomicU64::new(0),
                born: Instant::now(),
                starts: Mutex::new(Vec::new()),
                delay,
                outcome,
            })
        }
    }

    impl Requester for Fake {
        async fn request(&self) -> Outcome {
            let i = self.n.fetch_add(1, Ordering::Relaxed);
            self.starts.lock().unwrap().push(self.born.elapsed());
            tokio::time::sleep((self.delay)(i)).await;
            (self.outcome)(i)
        }
    }

    fn ok(_: u64) -> Outcome {
        Outcome::Reply {
            code: "200".into(),
            success: true,
            bytes: 1,
        }
    }

    fn spec(qps: u32, secs: u64, timeout_ms: u64, max_in_flight: usize) -> LoadSpec {
        LoadSpec {
            qps,
            duration: Duration::from_secs(secs),
            timeout: Duration::from_millis(timeout_ms),
            max_in_flight,
        }
    }

    #[test]
    fn due_count_agrees_with_due() {
        for qps in [1, 3, 7, 100, 999, 1000, 1001, 65_537, 1_000_000] {
            let spec = spec(qps, 1, 1, 1);
            for i in 0..200u64 {
                let at = spec.due(i);
                assert_eq!(spec.due_count(at), i + 1, "qps {qps} request {i}");
                if at > Duration::ZERO {
                    assert_eq!(
                        spec.due_count(at - Duration::from_nanos(1)),
                        i,
                        "qps {qps} {i}"
                    );
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paced_from_the_start_without_bursts() {
        let fake = Fake::new(|_| Duration::from_millis(3), ok);
        let s = run(fake.clone(), &spec(100, 2, 1000, 10)).await;
        assert_eq!(
            (s.planned, s.requests, s.successes, s.not_sent),
            (200, 200, 200, 0)
        );
        let starts = fake.starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 200);
        for (i, t) in starts.iter().enumerate() {
            let due = Duration::from_millis(10 * i as u64);
            // Paused time fires timers exactly on their 1 ms tick.
            assert!(
                *t >= due && *t < due + Duration::from_millis(1),
                "request {i} at {t:?}"
            );
        }
        let l = s.latency.unwrap();
        assert_eq!((l.min, l.p50, l.p99, l.max), (3000, 3000, 3000, 3000));
        assert_eq!(l.mean, 3000.0);
        // First send at 0, last completion at 1.99 s + 3 ms.
        assert_eq!(s.duration_ms, 1993);
        assert!((s.tps - 200.0 / 1.993).abs() < 1e-9, "{}", s.tps);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_rate_and_duration() {
        let fake = Fake::new(|_| Duration::ZERO, ok);
        let s = run(
            fake.clone(),
            &LoadSpec {
                qps: 3,
                duration: Duration::from_millis(2500),
                timeout: Duration::from_secs(1),
                max_in_flight: 1,
            },
        )
        .await;
        assert_eq!((s.planned, s.requests), (7, 7));
        let starts = fake.starts.lock().unwrap().clone();
        // i / 3 s, on the 1 ms timer wheel.
        let want = [0, 334, 667, 1000, 1334, 1667, 2000];
        for (t, w) in starts.iter().zip(want) {
            assert!(t.as_millis().abs_diff(w) <= 1, "{t:?} vs {w} ms");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_due_while_the_bound_is_reached_are_not_sent() {
        // 100 qps, each request takes 45 ms, at most 2 in flight: requests at 0 and 10 ms go,
        // 20, 30 and 40 ms find both slots taken, 50 ms finds one free (the 0 ms one ended at
        // 45), and so on: 2 of every 5.
        let fake = Fake::new(|_| Duration::from_millis(45), ok);
        let s = run(fake.clone(), &spec(100, 1, 1000, 2)).await;
        assert_eq!(s.planned, 100);
        assert_eq!(s.requests, 40);
        assert_eq!(s.not_sent, 60);
        assert_eq!(s.successes, 40);
        assert!(s.errors.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_are_errors_and_not_timed() {
        // Every third request hangs far past the 50 ms timeout; the rest take 1 ms.
        let fake = Fake::new(
            |i| {
                if i % 3 == 0 {
                    Duration::from_secs(3600)
                } else {
                    Duration::from_millis(1)
                }
            },
            ok,
        );
        let begun = Instant::now();
        let s = run(fake, &spec(30, 1, 50, 100)).await;
        assert_eq!((s.requests, s.successes, s.not_sent), (30, 20, 0));
        assert_eq!(s.errors.get("timeout"), Some(&10));
        assert_eq!(s.latency.unwrap().max, 1000);
        // The last hanging request (27, sent at 900 ms) times out at 950 ms; the last one (29,
        // sent at 967 ms) ends 1 ms later.
        let took = begun.elapsed();
        assert!(
            took >= Duration::from_millis(966) && took < Duration::from_millis(1000),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn mean_and_percentiles_over_successes_only() {
        // Latency i ms for request i (1..=100 ms for successes); odd requests fail after 1 ms
        // with a status the expectation rejects, even ones error out.
        let fake = Fake::new(
            |i| Duration::from_millis(if i < 100 { i + 1 } else { 1 }),
            |i| {
                if i < 100 {
                    ok(i)
                } else if i % 2 == 1 {
                    Outcome::Reply {
                        code: "500".into(),
                        success: false,
                        bytes: 0,
                    }
                } else {
                    Outcome::Error {
                        kind: "connect",
                        detail: "refused".into(),
                    }
                }
            },
        );
        let s = run(fake, &spec(200, 1, 1000, 1000)).await;
        assert_eq!((s.requests, s.successes), (200, 100));
        assert_eq!(s.codes.get("200"), Some(&100));
        assert_eq!(s.codes.get("500"), Some(&50));
        assert_eq!(s.errors.get("connect"), Some(&50));
        let l = s.latency.unwrap();
        assert_eq!((l.min, l.max), (1000, 100_000));
        assert_eq!(l.mean, 50_500.0);
        // Within the histogram's 3 significant digits.
        for (got, want) in [
            (l.p50, 50_000),
            (l.p90, 90_000),
            (l.p95, 95_000),
            (l.p99, 99_000),
        ] {
            assert!(got.abs_diff(want) <= want / 1000, "{got} vs {want}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_planned_nothing_sent() {
        let fake = Fake::new(|_| Duration::ZERO, ok);
        let s = run(fake.clone(), &spec(0, 5, 10, 1)).await;
        assert_eq!(s, LoadStats::default());
        let s = run(fake, &spec(10, 0, 10, 1)).await;
        assert_eq!(s.requests, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_pacer_catches_up_within_the_round_and_not_after() {
        // The first request blocks the runtime thread for 300 ms (as a busy CPU would): the
        // requests due meanwhile go out at once when it returns, on schedule from then on.
        struct Stall(AtomicU64);
        impl Requester for Stall {
            async fn request(&self) -> Outcome {
                if self.0.fetch_add(1, Ordering::Relaxed) == 0 {
                    tokio::time::advance(Duration::from_millis(300)).await;
                }
                ok(0)
            }
        }
        let s = run(Arc::new(Stall(AtomicU64::new(0))), &spec(100, 1, 1000, 100)).await;
        assert_eq!((s.requests, s.not_sent), (100, 0));

        // Stalled past the end of the round: what is left is not sent.
        struct Late(AtomicU64);
        impl Requester for Late {
            async fn request(&self) -> Outcome {
                if self.0.fetch_add(1, Ordering::Relaxed) == 10 {
                    tokio::time::advance(Duration::from_secs(2)).await;
                }
                ok(0)
            }
        }
        let s = run(Arc::new(Late(AtomicU64::new(0))), &spec(100, 1, 5000, 100)).await;
        assert_eq!((s.requests, s.not_sent), (11, 89));
    }
}
