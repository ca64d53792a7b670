//! The in-process table of lock keys held by this process, consulted before Redis and
//! before the local fallback, so one process never has two holders of one key whatever the
//! backend (Redis dying while a key is held, or coming back while a fallback holder holds
//! it). While Redis is unreachable it is the whole lock (`fallback="local"`).
//!
//! A key is taken here first and on Redis second: the process's other contenders queue
//! here, first-in first-out, instead of in Redis. An entry is held from the start of an
//! acquisition (no expiry while acquiring: every acquisition path ends by committing or
//! dropping its [`Entry`] guard) and then until the handle's local lease deadline, which
//! renewals move. A holder that neither releases nor renews (lost, paused, abandoned) stops
//! excluding here at its deadline, exactly when it stops excluding on Redis.
//!
//! Entries exist only while a key is held or waited for, so the map never outgrows the
//! locks in use: an entry goes when its holder releases and nobody waits, and the entries of
//! handles dropped without a release (their deadline passed) are swept whenever the map
//! has doubled since the last sweep (amortized O(1) per acquisition). The table lives in
//! the per-process state: a forked child starts empty.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// One queued waiter. `granted` is set (never cleared) only under the table's map lock,
/// by whoever hands the key over; a waiter that gives up checks it under the map lock
/// too, so a grant and a give-up never both win. Waiting threads sleep on `cv` (holding
/// only `granted`'s lock), async waiters on `notify`.
pub struct Ticket {
    token: String,
    granted: Mutex<bool>,
    cv: Condvar,
    notify: tokio::sync::Notify,
}

impl Ticket {
    fn signal(&self) {
        *self.granted.lock() = true;
        self.cv.notify_all();
        self.notify.notify_one();
    }

    fn nudge(&self) {
        self.cv.notify_all();
        self.notify.notify_one();
    }
}

struct Holder {
    token: String,
    /// None while the holder is still acquiring (it ends by committing or dropping).
    expires: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    holder: Option<Holder>,
    queue: VecDeque<Arc<Ticket>>,
}

impl Slot {
    fn live_holder(&self, now: Instant) -> Option<&Holder> {
        self.holder
            .as_ref()
            .filter(|h| h.expires.is_none_or(|e| e > now))
    }

    /// Drops an expired holder and hands the key to the queue's head; returns whether
    /// the key is now free with nobody queued.
    fn settle(&mut self, now: Instant) -> bool {
        if self.live_holder(now).is_none() {
            self.holder = None;
            if let Some(next) = self.queue.pop_front() {
                self.holder = Some(Holder {
                    token: next.token.clone(),
                    expires: None,
                });
                next.signal();
            }
        }
        self.holder.is_none() && self.queue.is_empty()
    }
}

/// The table. Its one mutex is held only for a lookup or an edit: never across a wait, a
/// round trip or Python. Ticket locks are taken under it (map -> ticket, never back).
#[derive(Default)]
pub struct HeldKeys {
    map: Mutex<HashMap<String, Slot>>,
    /// Map size that triggers the next sweep; read and written only under `map`.
    sweep_at: AtomicUsize,
}

/// The smallest map worth sweeping.
const SWEEP_MIN: usize = 64;

/// What `enter` found.
pub enum Entered {
    Taken,
    /// Queued behind `holder` (its token, for logs and `LockTimeout` messages).
    Queued {
        ticket: Arc<Ticket>,
        holder: String,
    },
}

impl HeldKeys {
    /// Takes `key` for `token` (free, or its holder's deadline passed) or queues.
    pub fn enter(&self, key: &str, token: &str) -> Entered {
        let now = Instant::now();
        let mut map = self.map.lock();
        if map.len() >= self.sweep_at.load(Ordering::Relaxed).max(SWEEP_MIN) {
            map.retain(|_, s| !s.settle(now));
            self.sweep_at.store(map.len() * 2, Ordering::Relaxed);
        }
        let slot = map.entry(key.to_owned()).or_default();
        slot.settle(now);
        if let Some(h) = slot.holder.as_ref() {
            let ticket = Arc::new(Ticket {
                token: token.to_owned(),
                granted: Mutex::new(false),
                cv: Condvar::new(),
                notify: tokio::sync::Notify::new(),
            });
            let holder = h.token.clone();
            slot.queue.push_back(ticket.clone());
            return Entered::Queued { ticket, holder };
        }
        slot.holder = Some(Holder {
            token: token.to_owned(),
            expires: None,
        });
        Entered::Taken
    }

    /// When a queued waiter should look again: the holder's deadline, at most `until`.
    fn next_look(&self, key: &str, until: Instant) -> Instant {
        let map = self.map.lock();
        map.get(key)
            .and_then(|s| s.holder.as_ref())
            .and_then(|h| h.expires)
            .map_or(until, |e| e.min(until))
    }

    /// A waiter looks: settles an expired holder (which may grant the key to it).
    fn look(&self, key: &str, ticket: &Ticket) -> bool {
        let mut map = self.map.lock();
        if let Some(slot) = map.get_mut(key) {
            slot.settle(Instant::now());
        }
        let granted = *ticket.granted.lock();
        granted
    }

    /// Waits (blocking; GIL released by the caller) until the key is handed to `ticket`
    /// or `until` passes. Returns whether it was handed over.
    pub fn wait_sync(&self, key: &str, ticket: &Ticket, until: Instant) -> bool {
        loop {
            if self.look(key, ticket) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let wake = self
                .next_look(key, until)
                .max(now + Duration::from_micros(50));
            let mut g = ticket.granted.lock();
            if !*g {
                let _ = ticket.cv.wait_until(&mut g, wake);
            }
        }
    }

    /// Async version of [`HeldKeys::wait_sync`]; never blocks the runtime.
    pub async fn wait_async(&self, key: &str, ticket: &Ticket, until: Instant) -> bool {
        loop {
            if self.look(key, ticket) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let wake = self
                .next_look(key, until)
                .max(now + Duration::from_micros(50));
            // notify_one stores a permit, so a grant between `look` and here is not lost
            let _ = tokio::time::timeout_at(wake.into(), ticket.notify.notified()).await;
        }
    }

    /// A waiter gives up: leaves the queue. True if the key had been handed to it in the
    /// meantime (the caller then holds it and must release it or keep it).
    pub fn leave(&self, key: &str, ticket: &Arc<Ticket>) -> bool {
        let mut map = self.map.lock();
        let Some(slot) = map.get_mut(key) else {
            return *ticket.granted.lock();
        };
        if *ticket.granted.lock() {
            return true;
        }
        slot.queue.retain(|t| !Arc::ptr_eq(t, ticket));
        if slot.settle(Instant::now()) {
            map.remove(key);
        }
        false
    }

    /// Sets the holder's deadline (after an acquisition or a renewal). False if `token`
    /// does not hold the key any more (its deadline passed and the key moved on).
    pub fn set_deadline(&self, key: &str, token: &str, until: Instant) -> bool {
        let mut map = self.map.lock();
        let Some(slot) = map.get_mut(key) else {
            return false;
        };
        match slot.holder.as_mut() {
            Some(h) if h.token == token && h.expires.is_none_or(|e| e > Instant::now()) => {
                let shortened = h.expires.is_none_or(|e| until < e);
                h.expires = Some(until);
                if shortened {
                    // waiters sleep until the old deadline: let them look again
                    for t in &slot.queue {
                        t.nudge();
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Whether `token` holds `key` (its deadline not passed).
    pub fn holds(&self, key: &str, token: &str) -> bool {
        let map = self.map.lock();
        map.get(key)
            .and_then(|s| s.live_holder(Instant::now()))
            .is_some_and(|h| h.token == token)
    }

    /// Gives the key up if `token` holds it (the next waiter gets it). Returns whether
    /// `token` held it and its deadline had not passed.
    pub fn release(&self, key: &str, token: &str) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock();
        let Some(slot) = map.get_mut(key) else {
            return false;
        };
        let live = match slot.holder.as_ref() {
            Some(h) if h.token == token => {
                let live = h.expires.is_none_or(|e| e > now);
                slot.holder = None;
                live
            }
            _ => false,
        };
        if slot.settle(now) {
            map.remove(key);
        }
        live
    }

    /// The current holder and the time left to its deadline (None while acquiring: it
    /// is not a holder yet).
    pub fn holder(&self, key: &str) -> Option<(String, Duration)> {
        let now = Instant::now();
        let map = self.map.lock();
        let h = map.get(key)?.live_holder(now)?;
        Some((h.token.clone(), h.expires?.saturating_duration_since(now)))
    }

    /// Drops whoever holds `key` (an admin action); the next waiter gets it.
    pub fn force_release(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock();
        let Some(slot) = map.get_mut(key) else {
            return false;
        };
        let had = slot.live_holder(now).is_some_and(|h| h.expires.is_some());
        if had {
            slot.holder = None;
        }
        if slot.settle(now) {
            map.remove(key);
        }
        had
    }
}

/// An acquisition's hold on a table entry: taken, or queued. Dropped without
/// [`Entry::commit`], it leaves the queue or gives the key back (so a cancelled or failed
/// acquisition leaves no trace).
pub struct Entry {
    table: Arc<HeldKeys>,
    key: String,
    token: String,
    ticket: Option<Arc<Ticket>>,
    taken: bool,
}

impl Entry {
    /// Enters the table: takes the key, or queues for it behind the returned holder.
    pub fn enter(table: Arc<HeldKeys>, key: &str, token: &str) -> (Self, Option<String>) {
        let (ticket, holder) = match table.enter(key, token) {
            Entered::Taken => (None, None),
            Entered::Queued { ticket, holder } => (Some(ticket), Some(holder)),
        };
        let is_free = ticket.is_none();
        (
            Entry {
                table,
                key: key.to_owned(),
                token: token.to_owned(),
                ticket,
                taken: is_free,
            },
            holder,
        )
    }

    #[must_use]
    pub fn taken(&self) -> bool {
        self.taken
    }

    /// Waits (GIL released by the caller) at most until `until`; true once taken.
    ///
    /// # Panics
    ///
    /// Never in practice: an entry that is not taken was queued, and queued entries have a
    /// ticket.
    pub fn wait_sync(&mut self, until: Instant) -> bool {
        if !self.taken {
            let ticket = self.ticket.clone().expect("queued entries have a ticket");
            self.taken = self.table.wait_sync(&self.key, &ticket, until);
        }
        self.taken
    }

    /// [`Entry::wait_sync`] for async callers.
    ///
    /// # Panics
    ///
    /// As [`Entry::wait_sync`]: never in practice.
    pub async fn wait_async(&mut self, until: Instant) -> bool {
        if !self.taken {
            let ticket = self.ticket.clone().expect("queued entries have a ticket");
            self.taken = self.table.wait_async(&self.key, &ticket, until).await;
        }
        self.taken
    }

    /// The acquisition succeeded: the entry now lasts until `deadline` (the handle moves
    /// it with each renewal and gives it back on release).
    pub fn commit(mut self, deadline: Instant) {
        self.table.set_deadline(&self.key, &self.token, deadline);
        self.taken = false;
        self.ticket = None;
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            if !self.taken && self.table.leave(&self.key, &t) {
                self.taken = true;
            }
        }
        if self.taken {
            self.table.release(&self.key, &self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(5);

    fn later(d: Duration) -> Instant {
        Instant::now() + d
    }

    #[test]
    fn exclusion_fifo_and_release() {
        let t = Arc::new(HeldKeys::default());
        let (a, _) = Entry::enter(t.clone(), "k", "a");
        assert!(a.taken());
        a.commit(later(LONG));
        let (mut b, holder) = Entry::enter(t.clone(), "k", "b");
        assert_eq!(holder.as_deref(), Some("a"));
        let (mut c, _) = Entry::enter(t.clone(), "k", "c");
        assert!(!b.wait_sync(later(Duration::from_millis(10))));
        assert!(!t.release("k", "b"));
        assert!(t.release("k", "a"));
        assert!(!c.wait_sync(later(Duration::from_millis(10))), "b is first");
        assert!(b.wait_sync(later(LONG)));
        drop(b); // gives it on to c
        assert!(c.wait_sync(later(LONG)));
        drop(c);
        assert!(
            t.map.lock().is_empty(),
            "no entry outlives its holders and waiters"
        );
    }

    #[test]
    fn a_deadline_that_passes_frees_the_key() {
        let t = Arc::new(HeldKeys::default());
        let (a, _) = Entry::enter(t.clone(), "k", "a");
        a.commit(later(Duration::from_millis(30)));
        assert!(t.holds("k", "a"));
        let (mut b, _) = Entry::enter(t.clone(), "k", "b");
        let t0 = Instant::now();
        assert!(b.wait_sync(later(LONG)));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(
            !t.set_deadline("k", "a", later(LONG)),
            "a late renewal is refused"
        );
        assert!(!t.release("k", "a"));
        b.commit(later(LONG));
        assert_eq!(t.holder("k").unwrap().0, "b");
    }

    #[test]
    fn giving_up_leaves_no_trace_and_a_racing_grant_is_passed_on() {
        let t = Arc::new(HeldKeys::default());
        let (a, _) = Entry::enter(t.clone(), "k", "a");
        a.commit(later(LONG));
        let (b, _) = Entry::enter(t.clone(), "k", "b");
        let (mut c, _) = Entry::enter(t.clone(), "k", "c");
        assert!(t.release("k", "a")); // b is granted but never looks
        drop(b); // gives up: the grant passes to c
        assert!(c.wait_sync(later(LONG)));
        drop(c);
        assert!(t.map.lock().is_empty());
    }

    #[test]
    fn entries_of_handles_dropped_without_release_are_swept() {
        let t = Arc::new(HeldKeys::default());
        for i in 0..10_000 {
            let (e, _) = Entry::enter(t.clone(), &format!("k{i}"), "a");
            e.commit(Instant::now()); // a deadline that has passed: never released
        }
        assert!(
            t.map.lock().len() <= 2 * SWEEP_MIN,
            "{}",
            t.map.lock().len()
        );
    }

    #[test]
    fn waiter_wakes_on_release() {
        let t = Arc::new(HeldKeys::default());
        let (a, _) = Entry::enter(t.clone(), "k", "a");
        a.commit(later(LONG));
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            let (mut b, _) = Entry::enter(t2, "k", "b");
            b.wait_sync(later(LONG))
        });
        while t.map.lock().get("k").is_none_or(|s| s.queue.is_empty()) {
            std::thread::yield_now();
        }
        let t0 = Instant::now();
        assert!(t.release("k", "a"));
        assert!(h.join().unwrap());
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
