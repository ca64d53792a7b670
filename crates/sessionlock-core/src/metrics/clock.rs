//! The clock that times lock holds: the CPU's time-stamp counter where the kernel itself
//! trusts it (clocksource `tsc`: about half the cost of `Instant::now()`), else `Instant`;
//! read only while [`enable`] has a user, and not inside [`untimed`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Invariant: set only after `NS_PER_TICK` and `TSC` are final (Release). A hold stamped
/// while this was false has stamp 0 and is not recorded; one stamped while true is recorded
/// at its end even if timing was turned off meanwhile.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Ticks are TSC cycles (true) or nanoseconds since `EPOCH` (false). Written before `ENABLED`.
static TSC: AtomicBool = AtomicBool::new(false);
/// Nanoseconds per tick in 32.32 fixed point. Written before `ENABLED`.
static NS_PER_TICK: AtomicU64 = AtomicU64::new(1 << 32);
/// (Instant, ticks) at module import: the far end of the TSC calibration.
static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
static EPOCH: OnceLock<Instant> = OnceLock::new();

#[inline]
pub(crate) fn raw_ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    if TSC.load(Ordering::Relaxed) {
        return tsc();
    }
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions and exists on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The owner (`keylock::Owner::id`) whose hold is being taken inside `untimed()`, or 0.
/// Invariant: written only by a caller holding the GIL, on both sides of one acquire; if
/// two such windows overlap (one of them waited, GIL released) a hold may be classified
/// wrongly, never lost or double counted.
static UNTIMED_OWNER: AtomicU64 = AtomicU64::new(0);

/// The start of a hold: 0 while metrics are off (such a hold is never recorded).
#[inline]
#[must_use]
pub fn stamp() -> u64 {
    if ENABLED.load(Ordering::Acquire) {
        raw_ticks() | 1
    } else {
        0
    }
}

/// `stamp()` for a hold taken by `owner`: 0 as well inside that owner's `untimed()`.
#[inline]
#[must_use]
pub fn stamp_for(owner: u64) -> u64 {
    if UNTIMED_OWNER.load(Ordering::Relaxed) == owner {
        0
    } else {
        stamp()
    }
}

/// Holds of one key-lock shard timed one by one before sampling starts (so every hold of a
/// short test, or of a quiet service's first minutes, is exact).
pub const EXACT_HOLDS: u64 = 1024;
/// After that, one hold in `HOLD_SAMPLE` is timed and stands for `HOLD_SAMPLE` holds: two
/// clock reads per hold were ~7 % of an uncontended `with lock` on a VM whose `rdtsc` costs
/// ~17 ns, over the 5 % budget; one in eight keeps the histogram's shape and totals.
pub const HOLD_SAMPLE: u64 = 8;
/// Bit of a stamp that says "this timed hold stands for `HOLD_SAMPLE` holds".
pub const SAMPLED: u64 = 2;

/// The stamp of the `n`th hold of a key-lock shard taken by `owner`: 0 when this hold is not
/// timed (metrics off, `untimed()`, or not sampled), else a `stamp()` whose [`SAMPLED`] bit
/// says whether it stands for `HOLD_SAMPLE` holds. The low bits of the tick count are
/// sacrificed (a few ns).
#[inline]
#[must_use]
pub fn hold_stamp(owner: u64, n: u64) -> u64 {
    let sampled = n >= EXACT_HOLDS;
    if sampled && n % HOLD_SAMPLE != 0 {
        return 0;
    }
    let s = stamp_for(owner);
    if s == 0 {
        0
    } else if sampled {
        s | SAMPLED
    } else {
        s & !SAMPLED
    }
}

/// While the returned guard lives, a hold `owner` begins is not timed (also one handed to
/// it by a releaser while it waits). For the holds of `update()` / `get_or_create()`, which
/// last as long as the caller's own function: two clock reads would cost ~10 % of an
/// uncontended `update()`, over the 5 % budget. One global slot, not per thread: cheaper
/// to read on every hold than thread-local storage in a shared library.
#[must_use]
pub fn untimed(owner: u64) -> Untimed {
    UNTIMED_OWNER.store(owner, Ordering::Relaxed);
    Untimed
}

pub struct Untimed;

impl Drop for Untimed {
    fn drop(&mut self) {
        UNTIMED_OWNER.store(0, Ordering::Relaxed);
    }
}

#[inline]
pub(crate) fn ticks_to_ns(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * u128::from(NS_PER_TICK.load(Ordering::Relaxed))) >> 32;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Whether the kernel clocksource is the TSC (then it is invariant and synchronized across
/// CPUs, or the kernel would have demoted it).
fn tsc_trusted() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|s| s.trim() == "tsc")
}

/// Set once the tick rate is known (stays set).
static CALIBRATED: AtomicBool = AtomicBool::new(false);

/// How many users (Prometheus registries, the OpenTelemetry bridge) want hold timing.
/// Invariant: `ENABLED == (*USERS > 0)` whenever this mutex is free; held only for that.
static USERS: Mutex<u64> = Mutex::new(0);

/// Adds (`on`) or removes a user of hold timing; timing runs while there is one. The first
/// time on, calibrates the TSC against `Instant` over the time since [`start_clock`], calling
/// `sleep` (the binding releases the GIL around it; no lock is held) only if that was under
/// 20 ms. Two threads calibrating at once store near-equal rates: harmless.
pub fn enable(on: bool, sleep: impl FnOnce(Duration)) {
    if on && !CALIBRATED.load(Ordering::Acquire) {
        #[cfg(target_arch = "x86_64")]
        if tsc_trusted() {
            let (t0, c0) = *BASE.get_or_init(|| (Instant::now(), tsc()));
            let short = Duration::from_millis(20).saturating_sub(t0.elapsed());
            if !short.is_zero() {
                sleep(short);
            }
            let (ns, ticks) = (t0.elapsed().as_nanos(), u128::from(tsc().wrapping_sub(c0)));
            if let Some(fixed) = (ns << 32).checked_div(ticks) {
                NS_PER_TICK.store(u64::try_from(fixed).unwrap_or(1 << 32), Ordering::Relaxed);
                TSC.store(true, Ordering::Relaxed);
            }
        }
        CALIBRATED.store(true, Ordering::Release);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = sleep;
    let mut users = USERS.lock();
    *users = if on {
        *users + 1
    } else {
        users.saturating_sub(1)
    };
    ENABLED.store(*users > 0, Ordering::Release);
}

/// Whether hold timing is on (some user called [`enable`]).
#[must_use]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Marks the far end of the TSC calibration; called at module import, so that the first
/// [`enable`] rarely has to sleep.
pub fn start_clock() {
    #[cfg(target_arch = "x86_64")]
    let _ = BASE.get_or_init(|| (Instant::now(), tsc()));
}
