//! The process-local keyed lease lock used while Redis is unreachable (`fallback="local"`).
//! Same contract as the Redis lease: a token owns the key until it releases or its lease
//! runs out; extend and release are compare-and-act. It excludes within this process only.
//! Entries exist only while held, so the map never outgrows the locks in use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

struct Lease {
    token: String,
    expires: Instant,
}

#[derive(Default)]
pub struct LocalLocks {
    /// key -> lease. Held only for a lookup or an edit, never across a wait or Python.
    map: Mutex<HashMap<String, Lease>>,
    /// Thread waiters (wait with the GIL released).
    cv: Condvar,
    /// Async waiters.
    notify: tokio::sync::Notify,
}

/// Outcome of one attempt: taken, or the time until the current lease ends.
pub enum Try {
    Taken,
    Held { holder: String, remaining: Duration },
}

impl LocalLocks {
    fn try_locked(map: &mut HashMap<String, Lease>, key: &str, token: &str, ttl: Duration) -> Try {
        let now = Instant::now();
        if let Some(l) = map.get(key) {
            if l.expires > now && l.token != token {
                return Try::Held {
                    holder: l.token.clone(),
                    remaining: l.expires - now,
                };
            }
        }
        map.insert(
            key.to_owned(),
            Lease {
                token: token.to_owned(),
                expires: now + ttl,
            },
        );
        Try::Taken
    }

    pub fn try_take(&self, key: &str, token: &str, ttl: Duration) -> Try {
        Self::try_locked(&mut self.map.lock(), key, token, ttl)
    }

    /// Waits (blocking; call with the GIL released) at most `step` for the key. Returns
    /// whether it was taken.
    pub fn take_sync(&self, key: &str, token: &str, ttl: Duration, step: Duration) -> bool {
        let deadline = Instant::now() + step;
        let mut map = self.map.lock();
        loop {
            match Self::try_locked(&mut map, key, token, ttl) {
                Try::Taken => return true,
                Try::Held { remaining, .. } => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    let until = (now + remaining).min(deadline);
                    let _ = self.cv.wait_until(&mut map, until);
                }
            }
        }
    }

    /// Async version of [`take_sync`]: waits at most `step` without blocking the runtime.
    pub async fn take_async(&self, key: &str, token: &str, ttl: Duration, step: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + step;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // register before looking, so a release between the look and the wait wakes us
            notified.as_mut().enable();
            let remaining = match self.try_take(key, token, ttl) {
                Try::Taken => return true,
                Try::Held { remaining, .. } => remaining,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let until = (now + remaining).min(deadline);
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    fn wake(&self) {
        self.cv.notify_all();
        self.notify.notify_waiters();
    }

    pub fn release(&self, key: &str, token: &str) -> bool {
        let ok = {
            let mut map = self.map.lock();
            match map.get(key) {
                Some(l) if l.token == token => {
                    let live = l.expires > Instant::now();
                    map.remove(key);
                    live
                }
                _ => false,
            }
        };
        self.wake();
        ok
    }

    pub fn extend(&self, key: &str, token: &str, ttl: Duration) -> bool {
        let mut map = self.map.lock();
        match map.get_mut(key) {
            Some(l) if l.token == token && l.expires > Instant::now() => {
                l.expires = Instant::now() + ttl;
                true
            }
            _ => false,
        }
    }

    /// Current holder and its remaining lease.
    pub fn holder(&self, key: &str) -> Option<(String, Duration)> {
        let now = Instant::now();
        self.map
            .lock()
            .get(key)
            .filter(|l| l.expires > now)
            .map(|l| (l.token.clone(), l.expires - now))
    }

    pub fn force_release(&self, key: &str) -> bool {
        let had = self
            .map
            .lock()
            .remove(key)
            .is_some_and(|l| l.expires > Instant::now());
        self.wake();
        had
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn exclusion_and_compare_and_act() {
        let l = LocalLocks::default();
        assert!(matches!(l.try_take("k", "a", T), Try::Taken));
        assert!(matches!(l.try_take("k", "b", T), Try::Held { .. }));
        assert!(!l.release("k", "b"));
        assert!(!l.extend("k", "b", T));
        assert!(l.extend("k", "a", T));
        assert_eq!(l.holder("k").unwrap().0, "a");
        assert!(l.release("k", "a"));
        assert!(!l.release("k", "a"));
        assert!(l.holder("k").is_none());
    }

    #[test]
    fn lease_runs_out() {
        let l = LocalLocks::default();
        assert!(matches!(
            l.try_take("k", "a", Duration::from_millis(20)),
            Try::Taken
        ));
        assert!(l.take_sync("k", "b", T, Duration::from_secs(2)));
        assert!(!l.release("k", "a"));
        assert_eq!(l.holder("k").unwrap().0, "b");
    }

    #[test]
    fn waiter_wakes_on_release() {
        let l = Arc::new(LocalLocks::default());
        assert!(matches!(l.try_take("k", "a", T), Try::Taken));
        let l2 = l.clone();
        let h = std::thread::spawn(move || l2.take_sync("k", "b", T, Duration::from_secs(4)));
        std::thread::sleep(Duration::from_millis(20)); // sleep-ok: let the waiter block
        let t0 = Instant::now();
        assert!(l.release("k", "a"));
        assert!(h.join().unwrap());
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
