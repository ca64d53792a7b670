// A thread waiter's signal for the key-lock table's tests and benchmark (the binding's real
// thread waiters have their own): 0 nothing, 1 nudged, 2 granted. `include!`d by both (the
// includer brings the table's `Payload` trait into scope), so there is one copy; not part of
// the crate's API.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};


#[derive(Clone, Default)]
pub(crate) struct Sig(Arc<(Mutex<u8>, Condvar)>);

impl Sig {
    /// Raises the signal to `v` (a grant is never lowered to a nudge) and wakes the waiter.
    pub(crate) fn post(&self, v: u8) {
        let mut g = self.0 .0.lock();
        *g = (*g).max(v);
        self.0 .1.notify_one();
    }

    /// Waits for a signal and consumes it.
    pub(crate) fn take(&self) -> u8 {
        let mut g = self.0 .0.lock();
        while *g == 0 {
            self.0 .1.wait(&mut g);
        }
        std::mem::take(&mut *g)
    }
}

impl Payload for Sig {
    type Nudge = Sig;
    fn nudge(&self) -> Option<Sig> {
        Some(self.clone())
    }
}
