//! Per-key re-entrant locks with a FIFO wait queue shared by threads and asyncio tasks.
//!
//! Pure Rust, generic over the waiter payload `W` (how to wake a waiter is the binding's
//! business: a condvar for a thread, an asyncio future for a task).
//!
//! Invariants:
//! - A key has an entry in the table only while someone holds it (`count > 0`); the entry
//!   is removed by the release that frees it. So no lock state survives for keys nobody
//!   holds or waits on.
//! - A queued waiter implies a holder: release hands the lock *directly* to the front
//!   waiter (no barging), which is what makes the queue FIFO across both worlds.
//! - The table's guard is held only for the bookkeeping below; nothing here calls foreign
//!   code, and waiters that leave the queue are returned to the caller (their payload may
//!   hold Python objects, which must be dropped or woken after the guard is gone).
//! - This module never touches the session store (lock order: store shard -> this table).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use foldhash::fast::RandomState;

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

#[derive(Debug)]
pub struct Waiter<W> {
    pub id: u64,
    pub owner: Owner,
    pub payload: W,
}

struct State<W> {
    owner: Owner,
    count: u32,
    /// Set by `get_or_create` while its factory runs under this lock.
    computing: bool,
    queue: VecDeque<Waiter<W>>,
    /// When the current hold began (`metrics::stamp`, 0 while metrics are off).
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

pub enum Cancel<W> {
    /// The waiter was still queued and has been removed.
    Removed(Waiter<W>),
    /// The lock had already been handed to the waiter, which now owns it.
    Granted,
    /// Neither (already removed).
    Gone,
}

#[derive(Debug, PartialEq, Eq)]
pub struct NotOwned;

pub struct KeyLocks<W> {
    table: DashMap<Box<str>, State<W>, RandomState>,
    next_waiter: AtomicU64,
    /// How long holds lasted (first acquire to last release). Recorded by `release`, whose
    /// callers (the binding) all hold the GIL: see `record_since_serialized`.
    pub hold: crate::metrics::Histogram,
}

impl<W> Default for KeyLocks<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> KeyLocks<W> {
    #[must_use]
    pub fn new() -> Self {
        Self {
            table: DashMap::with_hasher(RandomState::default()),
            next_waiter: AtomicU64::new(1),
            hold: crate::metrics::Histogram::default(),
        }
    }

    /// Number of keys with lock state (held ones).
    #[must_use]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    #[must_use]
    pub fn is_held(&self, key: &str) -> bool {
        self.table.get(key).is_some_and(|s| s.count > 0)
    }

    /// Re-entrancy depth of `owner` on `key` (0 if it does not hold it).
    #[must_use]
    pub fn depth(&self, key: &str, owner: Owner) -> u32 {
        self.table
            .get(key)
            .map_or(0, |s| if s.owner == owner { s.count } else { 0 })
    }

    /// Takes `key` for `owner` if free or already owned by it; otherwise, with `wait`,
    /// queues a waiter made by `payload`. `sync_on_loop` is the current thread's id when
    /// the wait would block an event loop running on this thread.
    pub fn acquire(
        &self,
        key: &str,
        owner: Owner,
        wait: bool,
        sync_on_loop: Option<u64>,
        payload: impl FnOnce() -> W,
    ) -> Outcome {
        if let Some(mut state) = self.table.get_mut(key) {
            return self.contend(&mut state, owner, wait, sync_on_loop, payload);
        }
        match self.table.entry(key.into()) {
            dashmap::Entry::Vacant(v) => {
                v.insert(State {
                    owner,
                    count: 1,
                    computing: false,
                    queue: VecDeque::new(),
                    since: crate::metrics::stamp_for(owner.id),
                });
                Outcome::Acquired { reentered: false }
            }
            // Lost a race with another acquirer between the two lookups.
            dashmap::Entry::Occupied(mut o) => {
                self.contend(o.get_mut(), owner, wait, sync_on_loop, payload)
            }
        }
    }

    fn contend(
        &self,
        state: &mut State<W>,
        owner: Owner,
        wait: bool,
        sync_on_loop: Option<u64>,
        payload: impl FnOnce() -> W,
    ) -> Outcome {
        if state.count == 0 {
            // Freed but not yet removed by its releaser (see `release`).
            state.owner = owner;
            state.count = 1;
            state.since = crate::metrics::stamp_for(owner.id);
            return Outcome::Acquired { reentered: false };
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
        });
        Outcome::Queued(id)
    }

    /// Releases one level of `owner`'s hold. When the hold ends, the lock passes to the
    /// front waiter, which is returned so that the caller can wake it (outside any lock).
    pub fn release(&self, key: &str, owner: Owner) -> Result<Option<Waiter<W>>, NotOwned> {
        let mut result = Err(NotOwned);
        self.table.remove_if_mut(key, |_, state| {
            if state.count == 0 || state.owner != owner {
                return false;
            }
            state.count -= 1;
            if state.count > 0 {
                result = Ok(None);
                return false;
            }
            state.computing = false;
            self.hold.record_since_serialized(state.since);
            if let Some(next) = state.queue.pop_front() {
                state.owner = next.owner;
                state.count = 1;
                state.since = crate::metrics::stamp_for(next.owner.id);
                result = Ok(Some(next));
                false
            } else {
                result = Ok(None);
                true
            }
        });
        result
    }

    /// Withdraws waiter `id` (timed out, cancelled, interrupted).
    pub fn cancel(&self, key: &str, id: u64, owner: Owner) -> Cancel<W> {
        let Some(mut state) = self.table.get_mut(key) else {
            return Cancel::Gone;
        };
        if let Some(pos) = state.queue.iter().position(|w| w.id == id) {
            let waiter = state.queue.remove(pos).expect("position is in range");
            return Cancel::Removed(waiter);
        }
        if state.count > 0 && state.owner == owner {
            Cancel::Granted
        } else {
            Cancel::Gone
        }
    }

    /// Marks (or clears) that `owner` runs a factory under `key`; returns the previous flag.
    pub fn set_computing(&self, key: &str, owner: Owner, flag: bool) -> bool {
        match self.table.get_mut(key) {
            Some(mut s) if s.owner == owner && s.count > 0 => {
                std::mem::replace(&mut s.computing, flag)
            }
            _ => false,
        }
    }

    #[must_use]
    pub fn is_computing(&self, key: &str) -> bool {
        self.table.get(key).is_some_and(|s| s.computing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            l.acquire("k", t(1), true, None, || ()),
            Outcome::Acquired { reentered: false }
        );
        assert_eq!(
            l.acquire("k", t(1), true, None, || ()),
            Outcome::Acquired { reentered: true }
        );
        assert_eq!(l.depth("k", t(1)), 2);
        assert!(l.release("k", t(1)).unwrap().is_none());
        assert!(l.is_held("k"));
        assert!(l.release("k", t(1)).unwrap().is_none());
        assert!(!l.is_held("k"));
        assert!(l.is_empty(), "no state for a key nobody holds");
        assert_eq!(l.release("k", t(1)).unwrap_err(), NotOwned);
    }

    #[test]
    fn fifo_hand_off() {
        let l: KeyLocks<u32> = KeyLocks::new();
        l.acquire("k", t(1), true, None, || 0);
        let Outcome::Queued(a) = l.acquire("k", t(2), true, None, || 2) else {
            panic!()
        };
        let Outcome::Queued(b) = l.acquire("k", task(3, 9), true, None, || 3) else {
            panic!()
        };
        assert!(a < b);
        assert_eq!(l.acquire("k", t(4), false, None, || 4), Outcome::Busy);
        assert_eq!(l.release("k", t(2)).unwrap_err(), NotOwned);
        let next = l.release("k", t(1)).unwrap().unwrap();
        assert_eq!((next.owner, next.payload), (t(2), 2));
        assert_eq!(l.depth("k", t(2)), 1);
        let next = l.release("k", t(2)).unwrap().unwrap();
        assert_eq!(next.owner, task(3, 9));
        assert!(l.release("k", task(3, 9)).unwrap().is_none());
        assert!(l.is_empty());
    }

    #[test]
    fn cancel_removes_or_reports_grant() {
        let l: KeyLocks<u32> = KeyLocks::new();
        l.acquire("k", t(1), true, None, || 0);
        let Outcome::Queued(a) = l.acquire("k", t(2), true, None, || 2) else {
            panic!()
        };
        let Outcome::Queued(b) = l.acquire("k", t(3), true, None, || 3) else {
            panic!()
        };
        assert!(matches!(l.cancel("k", a, t(2)), Cancel::Removed(w) if w.payload == 2));
        assert!(matches!(l.cancel("k", a, t(2)), Cancel::Gone));
        l.release("k", t(1)).unwrap();
        assert!(matches!(l.cancel("k", b, t(3)), Cancel::Granted));
        l.release("k", t(3)).unwrap();
        assert!(l.is_empty());
    }

    #[test]
    fn sync_wait_behind_a_task_of_this_loop_is_a_deadlock() {
        let l: KeyLocks<()> = KeyLocks::new();
        l.acquire("k", task(10, 7), true, None, || ());
        assert_eq!(
            l.acquire("k", t(7), true, Some(7), || ()),
            Outcome::Deadlock
        );
        // another thread may wait: the loop keeps running
        assert!(matches!(
            l.acquire("k", t(8), true, None, || ()),
            Outcome::Queued(_)
        ));
        // a waiter queued ahead that is a task of this loop also counts
        let m: KeyLocks<()> = KeyLocks::new();
        m.acquire("k", t(1), true, None, || ());
        assert!(matches!(
            m.acquire("k", task(11, 7), true, None, || ()),
            Outcome::Queued(_)
        ));
        assert_eq!(
            m.acquire("k", t(7), true, Some(7), || ()),
            Outcome::Deadlock
        );
        // the holder is this very thread outside the loop (it took the lock, then ran a
        // loop whose task now waits synchronously)
        let n: KeyLocks<()> = KeyLocks::new();
        n.acquire("k", t(7), true, None, || ());
        assert_eq!(
            n.acquire("k", task(12, 7), true, Some(7), || ()),
            Outcome::Deadlock
        );
        assert!(matches!(
            n.acquire("k", task(13, 8), true, Some(8), || ()),
            Outcome::Queued(_)
        ));
    }

    #[test]
    fn computing_flag_follows_the_hold() {
        let l: KeyLocks<()> = KeyLocks::new();
        l.acquire("k", t(1), true, None, || ());
        assert!(!l.set_computing("k", t(1), true));
        assert!(l.is_computing("k"));
        assert!(
            !l.set_computing("k", t(2), false),
            "only the owner may flag"
        );
        l.release("k", t(1)).unwrap();
        assert!(!l.is_computing("k"));
    }

    #[test]
    fn threads_exclude_each_other() {
        use std::sync::Arc;
        type Sig = Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>;
        let l: Arc<KeyLocks<Sig>> = Arc::new(KeyLocks::new());
        let counter = Arc::new(parking_lot::Mutex::new((0u64, false)));
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let (l, counter) = (l.clone(), counter.clone());
                std::thread::spawn(move || {
                    let me = t(i + 1);
                    for _ in 0..2000 {
                        let sig =
                            Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
                        let s2 = sig.clone();
                        if let Outcome::Queued(_) = l.acquire("k", me, true, None, move || s2) {
                            let mut g = sig.0.lock();
                            while !*g {
                                sig.1.wait(&mut g);
                            }
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
                        if let Some(next) = l.release("k", me).unwrap() {
                            *next.payload.0.lock() = true;
                            next.payload.1.notify_one();
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
