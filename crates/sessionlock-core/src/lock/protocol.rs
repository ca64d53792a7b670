//! The lock's scripts as `redis::Script` values (their text is `scripts.rs`) and the timing
//! constants of the acquisition loops.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::lock::scripts::{self as scripts, Names};

/// Longest a sync wait runs without checking for signals.
pub(crate) const STEP: Duration = Duration::from_millis(50);
/// A queued waiter refreshes its queue entry (and re-checks the lock) at least this often,
/// so the entry of a waiter that died is skipped soon after, and a hand-off to a dead
/// waiter (which expires after `CLAIM`) reaches the next waiter within `HEARTBEAT + CLAIM`.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a handed-over lock waits for its new owner to claim it (the core's `lock::scripts`).
pub(crate) const CLAIM: Duration = Duration::from_millis(scripts::CLAIM_MS);
/// How long a queue entry outlives the waiter's next planned refresh.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

pub(crate) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::with_prologue(scripts::ACQUIRE_BODY)));
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::with_prologue(scripts::RELEASE_BODY)));
pub(crate) static CANCEL: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::with_prologue(scripts::CANCEL_BODY)));
pub(crate) static FORCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::with_prologue(scripts::FORCE_BODY)));
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::EXTEND));
pub(crate) static HOLDER: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::HOLDER));

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn invoke4<'a>(
    script: &'a Script,
    n: &Names,
    args: &[&str],
) -> redis::ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    for k in n.keys() {
        inv.key(k);
    }
    for a in args {
        inv.arg(*a);
    }
    inv
}
