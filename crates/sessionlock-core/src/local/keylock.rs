//! Per-key re-entrant locks with a FIFO wait queue shared by threads and asyncio tasks, and
//! eventual fairness as in `parking_lot`.
//!
//! Pure Rust, generic over the waiter payload `W` (how to wake a waiter is the binding's
//! business: a condvar for a thread, an asyncio future for a task).
//!
//! Fairness. A release that finds waiters either *hands the lock off* (the front waiter
//! becomes the owner before it runs) or, while the front waiter has waited less than
//! [`FAIR_AFTER`], *frees* it and nudges that waiter to come and take it: meanwhile a caller
//! that finds the lock free may barge in. Strict hand-off forms a convoy under the GIL (each
//! hand-off costs a wake-up while the releaser keeps running and soon needs the lock
//! again); unbounded barging starves the queue. Bounding the barging window by the front
//! waiter's age gives both throughput and a wait bound. Waiters whose payload cannot be
//! nudged (asyncio tasks: a retry would cost a loop round trip) always get a hand-off.
//!
//! Invariants (all state of a key is guarded by its shard's mutex):
//! - A key has an entry only while someone holds it or waits for it; the operation that
//!   leaves it with `count == 0` and an empty queue removes it. So no lock state survives
//!   for keys nobody holds or waits on.
//! - Queued waiters are served in queue order: only the front waiter is ever nudged or
//!   handed the lock, and waiters only join at the back.
//! - `count == 0` with a non-empty queue means "free, front waiter nudged": the front waiter
//!   is nudgeable and `nudged` is set. The front waiter (or a newcomer that finds it past
//!   `FAIR_AFTER`, or a cancel that removes it) resolves that state; nobody else takes the
//!   lock ahead of a front waiter older than `FAIR_AFTER`.
//! - The table is sharded by key hash (the hash of [`Loc`], shared with the store, so a
//!   call hashes its id once); a shard's mutex is held only for the bookkeeping below and
//!   no two are ever held at once; nothing here calls foreign code. Waiters that leave the queue are returned to the caller (their payload may hold
//!   Python objects, which must be dropped or woken after the guard is gone), except a
//!   nudgeable payload, which is dropped in place (it must hold no Python object).
//! - This module never touches the session store (lock order: store shard -> this table).
//! - Exclusion comes from the shard mutexes, never from the GIL.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hashbrown::hash_table::Entry as Slot;
use hashbrown::HashTable;
use parking_lot::Mutex;

use crate::local::key::{Key, Loc};

const SHARDS: usize = 16;

/// A front waiter older than this is handed the lock at the next release instead of being
/// overtaken by a barging caller (`parking_lot` switches to fair unlocking about every
/// 0.5 ms).
pub const FAIR_AFTER: Duration = Duration::from_micros(500);

/// A process-unique id of the calling OS thread (1, 2, ... in order of first use; never
/// reused, unlike Python's `get_ident()`): what owners and loop threads are compared by. A
/// thread-local counter, no system call.
#[inline]
#[must_use]
pub fn thread_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    ID.with(|id| *id)
}

/// Who holds or waits: a thread, or an asyncio task (and the thread its loop runs on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub id: u64,
    pub task: bool,
    /// Thread id of the event loop the task runs on (0 for a plain thread owner).
    pub loop_thread: u64,
}

impl Owner {
    #[must_use]
    pub fn thread(id: u64) -> Self {
        Self {
            id,
            task: false,
            loop_thread: 0,
        }
    }

    /// Whether this owner can only make progress on OS thread `thread`: a task of the loop
    /// running there, or that thread itself outside any task (a thread that took the lock
    /// and then ran an event loop, or a loop callback): a sync wait on `thread` behind it
    /// could never end.
    fn runs_on_loop_of(&self, thread: u64) -> bool {
        if self.task {
            self.loop_thread == thread
        } else {
            self.id == thread
        }
    }
}

/// What a waiter's payload offers besides being woken with the lock.
pub trait Payload {
    /// A handle that tells the waiter "the lock is free now, come and try".
    type Nudge;
    /// `None`: this waiter cannot retry by itself and is always handed the lock directly.
    fn nudge(&self) -> Option<Self::Nudge>;
}

impl Payload for () {
    type Nudge = ();
    fn nudge(&self) -> Option<()> {
        None
    }
}

#[derive(Debug)]
pub struct Waiter<W> {
    pub id: u64,
    pub owner: Owner,
    pub payload: W,
    since: Instant,
    /// Told that the lock is free (see the module invariants).
    nudged: bool,
}

/// One held key: its owner and re-entry depth, and the waiters queued behind it.
struct KeyHold<W> {
    owner: Owner,
    count: u32,
    /// Set by `get_or_create` while its factory runs under this lock.
    computing: bool,
    queue: VecDeque<Waiter<W>>,
    /// When the current hold began (`metrics::stamp_for`, 0 while metrics are off).
    since: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Taken; `true` if the owner already held it (re-entered).
    Acquired { reentered: bool },
    /// Held by another owner; the caller was queued under this waiter id.
    Queued(u64),
    /// Held by another owner and the caller did not want to wait.
    Busy,
    /// Waiting could only deadlock: the holder, or a waiter ahead, runs on the event loop
    /// that this (synchronous) wait would block.
    Deadlock,
}

/// Who must be told after an operation (outside the guard).
pub enum Next<W: Payload> {
    Nobody,
    /// The lock was handed to this waiter, which left the queue: wake it.
    Granted(Waiter<W>),
    /// The lock is free and this (still queued) front waiter should come and take it.
    Nudge(W::Nudge),
}

pub enum Cancel<W> {
    /// The waiter was still queued and has been removed.
    Removed(Waiter<W>),
    /// The lock had already been handed to the waiter, which now owns it.
    Granted,
    /// Neither (already removed).
    Gone,
}

/// Result of a nudged waiter's attempt ([`KeyLocks::retry`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Retry {
    /// The waiter owns the lock now (it took it, or it had been handed to it).
    Acquired,
    /// Still held by someone else: the waiter stays queued where it was.
    Wait,
    /// The waiter is neither queued nor the owner (it was withdrawn).
    Gone,
}

#[derive(Debug, PartialEq, Eq)]
pub struct NotOwned;

struct Entry<W> {
    key: Key,
    state: KeyHold<W>,
}

/// One shard: its entries, and how many holds began in it. `holds` is the hold histogram's
/// sampling clock (see `crate::metrics::hold_stamp`); it is read and written only while the
/// shard's mutex is held, so plain relaxed loads and stores suffice and it shares the
/// mutex's cache line (no extra line per operation).
struct Shard<W> {
    table: Mutex<HashTable<Entry<W>>>,
    holds: AtomicU64,
}

impl<W> Shard<W> {
    /// The stamp of the hold `owner` begins now (call with the shard's mutex held).
    fn hold_stamp(&self, owner: Owner) -> u64 {
        let n = self.holds.load(Ordering::Relaxed);
        self.holds.store(n.wrapping_add(1), Ordering::Relaxed);
        crate::metrics::hold_stamp(owner.id, n)
    }
}

pub struct KeyLocks<W> {
    shards: Box<[Shard<W>]>,
    len: AtomicUsize,
    next_waiter: AtomicU64,
    /// [`FAIR_AFTER`] unless a test or benchmark chose another policy (nanoseconds).
    fair_after_ns: AtomicU64,
    /// How long holds lasted (first acquire to last release). Recorded by `release`, whose
    /// callers (the binding) all hold the GIL: see `record_since_serialized`.
    pub hold: crate::metrics::Histogram,
}

impl<W: Payload> Default for KeyLocks<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W: Payload> KeyHold<W> {
    /// `owner` takes the free lock: a new hold begins (`shard` is this state's, locked).
    fn take(&mut self, owner: Owner, shard: &Shard<W>) {
        self.owner = owner;
        self.count = 1;
        self.since = shard.hold_stamp(owner);
    }

    /// Serves the front waiter of a lock that has just become free (`count == 0`): a hand-off
    /// if it cannot barge or has waited long enough, else a nudge (once).
    fn serve_front(&mut self, fair_after: Duration, shard: &Shard<W>) -> Next<W> {
        debug_assert_eq!(self.count, 0);
        let Some(front) = self.queue.front_mut() else {
            return Next::Nobody;
        };
        match front.payload.nudge() {
            Some(nudge) if front.since.elapsed() < fair_after => {
                if std::mem::replace(&mut front.nudged, true) {
                    Next::Nobody // already told; it will come
                } else {
                    Next::Nudge(nudge)
                }
            }
            _ => {
                let next = self.queue.pop_front().expect("front exists");
                self.take(next.owner, shard);
                Next::Granted(next)
            }
        }
    }
}

impl<W: Payload> KeyLocks<W> {
    #[must_use]
    pub fn new() -> Self {
        Self::with_fairness(FAIR_AFTER)
    }

    /// `fair_after`: how long a front waiter may be overtaken (zero: strict FIFO hand-off;
    /// `Duration::MAX`: unbounded barging). For tests and benchmarks of the policy itself.
    #[must_use]
    pub fn with_fairness(fair_after: Duration) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    table: Mutex::new(HashTable::new()),
                    holds: AtomicU64::new(0),
                })
                .collect(),
            len: AtomicUsize::new(0),
            next_waiter: AtomicU64::new(1),
            fair_after_ns: AtomicU64::new(u64::try_from(fair_after.as_nanos()).unwrap_or(u64::MAX)),
            hold: crate::metrics::Histogram::default(),
        }
    }

    /// Changes the fairness bound (see [`KeyLocks::with_fairness`]).
    pub fn set_fairness(&self, fair_after: Duration) {
        let ns = u64::try_from(fair_after.as_nanos()).unwrap_or(u64::MAX);
        self.fair_after_ns.store(ns, Ordering::Relaxed);
    }

    fn fair_after(&self) -> Duration {
        Duration::from_nanos(self.fair_after_ns.load(Ordering::Relaxed))
    }

    #[inline]
    fn shard(&self, k: &Loc<'_>) -> &Shard<W> {
        // Bits the shard's own table does not use (hashbrown takes the low bits for the
        // position and the top seven for its tag).
        &self.shards[(k.hash >> 40) as usize % SHARDS]
    }

    /// Runs `f` on the state of `k` if it has any, removing the entry when `f` leaves it
    /// idle (free, nobody queued).
    fn with_state<R>(
        &self,
        k: &Loc<'_>,
        f: impl FnOnce(&mut KeyHold<W>, &Shard<W>) -> R,
    ) -> Option<R> {
        let shard = self.shard(k);
        let mut table = shard.table.lock();
        let Ok(mut slot) = table.find_entry(k.hash, |e| e.key.matches(k.key)) else {
            return None;
        };
        let state = &mut slot.get_mut().state;
        let out = f(state, shard);
        if state.count == 0 && state.queue.is_empty() {
            slot.remove();
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        Some(out)
    }

    /// Number of keys with lock state (held or awaited ones).
    #[must_use]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[must_use]
    pub fn is_held(&self, k: &Loc<'_>) -> bool {
        self.with_state(k, |s, _| s.count > 0).unwrap_or(false)
    }

    /// Re-entrancy depth of `owner` on `k` (0 if it does not hold it).
    #[must_use]
    pub fn depth(&self, k: &Loc<'_>, owner: Owner) -> u32 {
        self.with_state(k, |s, _| {
            if s.count > 0 && s.owner == owner {
                s.count
            } else {
                0
            }
        })
        .unwrap_or(0)
    }

    /// Takes `k` for `owner` if free (and no front waiter is owed it) or already owned by
    /// it; otherwise, with `wait`, queues a waiter made by `payload`. `sync_on_loop` is the
    /// current thread's id when the wait would block an event loop running on this thread.
    pub fn acquire(
        &self,
        k: &Loc<'_>,
        owner: Owner,
        wait: bool,
        sync_on_loop: Option<u64>,
        payload: impl FnOnce() -> W,
    ) -> Outcome {
        let shard = self.shard(k);
        let mut table = shard.table.lock();
        let hasher = |e: &Entry<W>| e.key.as_ref().hash();
        match table.entry(k.hash, |e| e.key.matches(k.key), hasher) {
            Slot::Occupied(mut o) => self.contend(
                &mut o.get_mut().state,
                shard,
                owner,
                wait,
                sync_on_loop,
                payload,
            ),
            Slot::Vacant(v) => {
                v.insert(Entry {
                    key: Key::from_ref(k.key),
                    state: KeyHold {
                        owner,
                        count: 1,
                        computing: false,
                        queue: VecDeque::new(),
                        since: shard.hold_stamp(owner),
                    },
                });
                self.len.fetch_add(1, Ordering::Relaxed);
                Outcome::Acquired { reentered: false }
            }
        }
    }

    fn contend(
        &self,
        state: &mut KeyHold<W>,
        shard: &Shard<W>,
        owner: Owner,
        wait: bool,
        sync_on_loop: Option<u64>,
        payload: impl FnOnce() -> W,
    ) -> Outcome {
        if state.count == 0 {
            // Free; any queue has a nudged front waiter (see the invariants).
            match state.queue.front() {
                Some(front) if front.since.elapsed() >= self.fair_after() => {
                    // It has been overtaken long enough: it gets the lock, we contend.
                    let front = state.queue.pop_front().expect("front exists");
                    state.take(front.owner, shard);
                    // Nudged, so it is awake and will find that it owns the lock; its
                    // payload is nudgeable and holds no Python object (dropped here).
                    drop(front);
                }
                _ => {
                    state.take(owner, shard);
                    return Outcome::Acquired { reentered: false };
                }
            }
        }
        if state.owner == owner {
            state.count += 1;
            return Outcome::Acquired { reentered: true };
        }
        if !wait {
            return Outcome::Busy;
        }
        if let Some(t) = sync_on_loop {
            if state.owner.runs_on_loop_of(t)
                || state.queue.iter().any(|w| w.owner.runs_on_loop_of(t))
            {
                return Outcome::Deadlock;
            }
        }
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        state.queue.push_back(Waiter {
            id,
            owner,
            payload: payload(),
            since: Instant::now(),
            nudged: false,
        });
        Outcome::Queued(id)
    }

    /// Releases one level of `owner`'s hold. When the hold ends, the front waiter is handed
    /// the lock or nudged (see the module doc); the caller tells it, outside any lock.
    ///
    /// # Errors
    ///
    /// `NotOwned` if `owner` does not hold the lock on `k` (free, or held by another owner).
    pub fn release(&self, k: &Loc<'_>, owner: Owner) -> Result<Next<W>, NotOwned> {
        let fair_after = self.fair_after();
        self.with_state(k, |state, shard| {
            if state.count == 0 || state.owner != owner {
                return Err(NotOwned);
            }
            state.count -= 1;
            if state.count > 0 {
                return Ok(Next::Nobody);
            }
            self.hold.record_since_serialized(state.since);
            state.computing = false;
            Ok(state.serve_front(fair_after, shard))
        })
        .unwrap_or(Err(NotOwned))
    }

    /// A nudged waiter comes to take the lock: it gets it if it is free (or was handed to it
    /// meanwhile); otherwise it keeps its place and waits for the next nudge or hand-off.
    ///
    /// # Panics
    ///
    /// Never in practice: the queue's front is popped or changed only after it was seen to
    /// be waiter `id`, under the same shard lock.
    pub fn retry(&self, k: &Loc<'_>, id: u64, owner: Owner) -> Retry {
        self.with_state(k, |state, shard| {
            let front = state.queue.front().map(|w| w.id);
            if front == Some(id) {
                if state.count == 0 {
                    let me = state.queue.pop_front().expect("front exists");
                    state.take(me.owner, shard);
                    return Retry::Acquired;
                }
                // Someone barged in: the release that ends their hold serves us again.
                state.queue.front_mut().expect("front exists").nudged = false;
                return Retry::Wait;
            }
            if state.queue.iter().any(|w| w.id == id) {
                Retry::Wait
            } else if state.count > 0 && state.owner == owner {
                Retry::Acquired
            } else {
                Retry::Gone
            }
        })
        .unwrap_or(Retry::Gone)
    }

    /// Withdraws waiter `id` (timed out, cancelled, interrupted). If it was the nudged front
    /// waiter of a free lock, the next one is served in its place (returned in `Next`).
    ///
    /// # Panics
    ///
    /// Never in practice: the waiter is removed at the position just found for it, under
    /// the same shard lock.
    pub fn cancel(&self, k: &Loc<'_>, id: u64, owner: Owner) -> (Cancel<W>, Next<W>) {
        let fair_after = self.fair_after();
        self.with_state(k, |state, shard| {
            if let Some(pos) = state.queue.iter().position(|w| w.id == id) {
                let waiter = state.queue.remove(pos).expect("position is in range");
                let next = if state.count == 0 {
                    state.serve_front(fair_after, shard)
                } else {
                    Next::Nobody
                };
                (Cancel::Removed(waiter), next)
            } else if state.count > 0 && state.owner == owner {
                (Cancel::Granted, Next::Nobody)
            } else {
                (Cancel::Gone, Next::Nobody)
            }
        })
        .unwrap_or((Cancel::Gone, Next::Nobody))
    }

    /// Marks (or clears) that `owner` runs a factory under `k`; returns the previous flag.
    pub fn set_computing(&self, k: &Loc<'_>, owner: Owner, flag: bool) -> bool {
        self.with_state(k, |s, _| {
            if s.owner == owner && s.count > 0 {
                std::mem::replace(&mut s.computing, flag)
            } else {
                false
            }
        })
        .unwrap_or(false)
    }

    #[must_use]
    pub fn is_computing(&self, k: &Loc<'_>) -> bool {
        self.with_state(k, |s, _| s.computing).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> Loc<'static> {
        Loc::new("k")
    }

    impl Payload for u32 {
        type Nudge = ();
        fn nudge(&self) -> Option<()> {
            None
        }
    }

    fn t(id: u64) -> Owner {
        Owner::thread(id)
    }
    fn task(id: u64, loop_thread: u64) -> Owner {
        Owner {
            id,
            task: true,
            loop_thread,
        }
    }

    #[test]
    fn reentrant_and_removed_when_free() {
        let l: KeyLocks<()> = KeyLocks::new();
        assert_eq!(
            l.acquire(&k(), t(1), true, None, || ()),
            Outcome::Acquired { reentered: false }
        );
        assert_eq!(
            l.acquire(&k(), t(1), true, None, || ()),
            Outcome::Acquired { reentered: true }
        );
        assert_eq!(l.depth(&k(), t(1)), 2);
        assert!(matches!(l.release(&k(), t(1)).unwrap(), Next::Nobody));
        assert!(l.is_held(&k()));
        assert!(matches!(l.release(&k(), t(1)).unwrap(), Next::Nobody));
        assert!(!l.is_held(&k()));
        assert!(l.is_empty(), "no state for a key nobody holds");
        assert!(matches!(l.release(&k(), t(1)), Err(NotOwned)));
    }

    #[test]
    fn fifo_hand_off() {
        let l: KeyLocks<u32> = KeyLocks::new();
        l.acquire(&k(), t(1), true, None, || 0);
        let Outcome::Queued(a) = l.acquire(&k(), t(2), true, None, || 2) else {
            panic!()
        };
        let Outcome::Queued(b) = l.acquire(&k(), task(3, 9), true, None, || 3) else {
            panic!()
        };
        assert!(a < b);
        assert_eq!(l.acquire(&k(), t(4), false, None, || 4), Outcome::Busy);
        assert!(matches!(l.release(&k(), t(2)), Err(NotOwned)));
        let Next::Granted(next) = l.release(&k(), t(1)).unwrap() else {
            panic!("a waiter that cannot be nudged is handed the lock")
        };
        assert_eq!((next.owner, next.payload), (t(2), 2));
        assert_eq!(l.depth(&k(), t(2)), 1);
        let Next::Granted(next) = l.release(&k(), t(2)).unwrap() else {
            panic!()
        };
        assert_eq!(next.owner, task(3, 9));
        assert!(matches!(l.release(&k(), task(3, 9)).unwrap(), Next::Nobody));
        assert!(l.is_empty());
    }

    #[test]
    fn cancel_removes_or_reports_grant() {
        let l: KeyLocks<u32> = KeyLocks::new();
        l.acquire(&k(), t(1), true, None, || 0);
        let Outcome::Queued(a) = l.acquire(&k(), t(2), true, None, || 2) else {
            panic!()
        };
        let Outcome::Queued(b) = l.acquire(&k(), t(3), true, None, || 3) else {
            panic!()
        };
        assert!(matches!(l.cancel(&k(), a, t(2)).0, Cancel::Removed(w) if w.payload == 2));
        assert!(matches!(l.cancel(&k(), a, t(2)).0, Cancel::Gone));
        l.release(&k(), t(1)).unwrap();
        assert!(matches!(l.cancel(&k(), b, t(3)).0, Cancel::Granted));
        l.release(&k(), t(3)).unwrap();
        assert!(l.is_empty());
    }

    #[test]
    fn sync_wait_behind_a_task_of_this_loop_is_a_deadlock() {
        let l: KeyLocks<()> = KeyLocks::new();
        l.acquire(&k(), task(10, 7), true, None, || ());
        assert_eq!(
            l.acquire(&k(), t(7), true, Some(7), || ()),
            Outcome::Deadlock
        );
        // another thread may wait: the loop keeps running
        assert!(matches!(
            l.acquire(&k(), t(8), true, None, || ()),
            Outcome::Queued(_)
        ));
        // a waiter queued ahead that is a task of this loop also counts
        let m: KeyLocks<()> = KeyLocks::new();
        m.acquire(&k(), t(1), true, None, || ());
        assert!(matches!(
            m.acquire(&k(), task(11, 7), true, None, || ()),
            Outcome::Queued(_)
        ));
        assert_eq!(
            m.acquire(&k(), t(7), true, Some(7), || ()),
            Outcome::Deadlock
        );
        // the holder is this very thread outside the loop (it took the lock, then ran a
        // loop whose task now waits synchronously)
        let n: KeyLocks<()> = KeyLocks::new();
        n.acquire(&k(), t(7), true, None, || ());
        assert_eq!(
            n.acquire(&k(), task(12, 7), true, Some(7), || ()),
            Outcome::Deadlock
        );
        assert!(matches!(
            n.acquire(&k(), task(13, 8), true, Some(8), || ()),
            Outcome::Queued(_)
        ));
    }

    #[test]
    fn computing_flag_follows_the_hold() {
        let l: KeyLocks<()> = KeyLocks::new();
        l.acquire(&k(), t(1), true, None, || ());
        assert!(!l.set_computing(&k(), t(1), true));
        assert!(l.is_computing(&k()));
        assert!(
            !l.set_computing(&k(), t(2), false),
            "only the owner may flag"
        );
        l.release(&k(), t(1)).unwrap();
        assert!(!l.is_computing(&k()));
    }

    use crate::local::thread_signal::Sig;

    #[test]
    fn young_front_waiter_is_nudged_and_may_be_overtaken() {
        let l: KeyLocks<Sig> = KeyLocks::with_fairness(Duration::MAX);
        l.acquire(&k(), t(1), true, None, Sig::default);
        let Outcome::Queued(a) = l.acquire(&k(), t(2), true, None, Sig::default) else {
            panic!()
        };
        let Outcome::Queued(b) = l.acquire(&k(), t(3), true, None, Sig::default) else {
            panic!()
        };
        assert!(matches!(l.release(&k(), t(1)).unwrap(), Next::Nudge(_)));
        assert!(!l.is_held(&k()));
        // a caller that finds it free barges in; the nudged waiter keeps its place
        assert_eq!(
            l.acquire(&k(), t(4), false, None, Sig::default),
            Outcome::Acquired { reentered: false }
        );
        assert_eq!(l.retry(&k(), b, t(3)), Retry::Wait, "not the front waiter");
        assert_eq!(l.retry(&k(), a, t(2)), Retry::Wait);
        assert!(matches!(l.release(&k(), t(4)).unwrap(), Next::Nudge(_)));
        assert_eq!(l.retry(&k(), a, t(2)), Retry::Acquired);
        // the front waiter withdrawing while nudged passes the nudge on
        assert!(matches!(l.release(&k(), t(2)).unwrap(), Next::Nudge(_)));
        let (c, next) = l.cancel(&k(), b, t(3));
        assert!(matches!(c, Cancel::Removed(_)));
        assert!(matches!(next, Next::Nobody));
        assert!(l.is_empty());
    }

    #[test]
    fn old_front_waiter_is_handed_the_lock() {
        let l: KeyLocks<Sig> = KeyLocks::with_fairness(Duration::ZERO);
        l.acquire(&k(), t(1), true, None, Sig::default);
        let Outcome::Queued(a) = l.acquire(&k(), t(2), true, None, Sig::default) else {
            panic!()
        };
        let Next::Granted(w) = l.release(&k(), t(1)).unwrap() else {
            panic!("past the fairness bound: a direct hand-off")
        };
        assert_eq!(w.owner, t(2));
        assert_eq!(
            l.acquire(&k(), t(4), false, None, Sig::default),
            Outcome::Busy
        );
        assert_eq!(l.retry(&k(), a, t(2)), Retry::Acquired);
        l.release(&k(), t(2)).unwrap();
        assert!(l.is_empty());

        // nudged while young, then too old: a newcomer hands it over instead of barging
        let l: KeyLocks<Sig> = KeyLocks::with_fairness(Duration::from_millis(20));
        l.acquire(&k(), t(1), true, None, Sig::default);
        let Outcome::Queued(a) = l.acquire(&k(), t(2), true, None, Sig::default) else {
            panic!()
        };
        assert!(matches!(l.release(&k(), t(1)).unwrap(), Next::Nudge(_)));
        std::thread::sleep(Duration::from_millis(25));
        assert!(matches!(
            l.acquire(&k(), t(3), true, None, Sig::default),
            Outcome::Queued(_)
        ));
        assert_eq!(l.depth(&k(), t(2)), 1);
        assert_eq!(l.retry(&k(), a, t(2)), Retry::Acquired);
    }

    #[test]
    fn threads_exclude_each_other() {
        use std::sync::Arc;
        for fair_after in [Duration::ZERO, FAIR_AFTER, Duration::MAX] {
            let l: Arc<KeyLocks<Sig>> = Arc::new(KeyLocks::with_fairness(fair_after));
            let counter = Arc::new(parking_lot::Mutex::new((0u64, false)));
            let handles: Vec<_> = (0..4u64)
                .map(|i| {
                    let (l, counter) = (l.clone(), counter.clone());
                    std::thread::spawn(move || {
                        let me = t(i + 1);
                        for _ in 0..2000 {
                            let sig = Sig::default();
                            let s2 = sig.clone();
                            if let Outcome::Queued(id) = l.acquire(&k(), me, true, None, move || s2)
                            {
                                while sig.take() != 2 && l.retry(&k(), id, me) != Retry::Acquired {}
                            }
                            {
                                let mut c = counter.lock();
                                assert!(!c.1, "two holders at once");
                                c.1 = true;
                            }
                            let v = counter.lock().0;
                            std::thread::yield_now();
                            {
                                let mut c = counter.lock();
                                c.0 = v + 1;
                                c.1 = false;
                            }
                            match l.release(&k(), me).unwrap() {
                                Next::Granted(next) => next.payload.post(2),
                                Next::Nudge(s) => s.post(1),
                                Next::Nobody => {}
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(counter.lock().0, 8000);
            assert!(l.is_empty());
        }
    }
}
