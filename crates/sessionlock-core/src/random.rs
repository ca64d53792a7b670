//! Randomness for session ids and lock tokens: the OS CSPRNG (`getrandom`), read in blocks
//! into a per-thread buffer so an id costs one syscall per 32 draws.
//!
//! Fork safety: a forked child inherits the forking thread's buffer, so parent and child would
//! hand out the same ids and tokens (the bug `uuid`'s `fast-rng` has: rand's thread RNG is not
//! reseeded after fork). A `pthread_atfork` child handler bumps `FORK_GENERATION`; a buffer
//! filled under another generation is thrown away before anything is drawn from it. The
//! handler is registered at module init, before any fork can copy a filled buffer.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: one atomic add, no allocation, no lock.
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Registers the fork handler (idempotent; the module calls it at import).
///
/// # Panics
///
/// If `pthread_atfork` fails (it can only run out of memory): without the handler a forked
/// child could repeat its parent's ids, so this refuses to go on.
pub fn register_fork_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handler is a plain `extern "C" fn` that only touches an atomic.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
    });
}

const BLOCK: usize = 512;

struct Buffer {
    generation: u64,
    used: usize,
    bytes: [u8; BLOCK],
}

thread_local!(static BUFFER: RefCell<Buffer> = const {
    RefCell::new(Buffer { generation: u64::MAX, used: BLOCK, bytes: [0; BLOCK] })
});

/// 16 fresh random bytes, never the same in two processes.
///
/// # Panics
///
/// If the OS random source fails (`getrandom`), or as [`register_fork_handler`]: ids and
/// tokens are never made from weaker randomness.
#[must_use]
pub fn bytes16() -> [u8; 16] {
    register_fork_handler();
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        let generation = FORK_GENERATION.load(Ordering::Relaxed);
        if b.generation != generation || b.used + 16 > BLOCK {
            getrandom::fill(&mut b.bytes).expect("the OS random source failed");
            b.generation = generation;
            b.used = 0;
        }
        let mut out = [0u8; 16];
        let start = b.used;
        out.copy_from_slice(&b.bytes[start..start + 16]);
        // Drawn bytes are wiped so no later reader of this buffer can see a past id.
        b.bytes[start..start + 16].fill(0);
        b.used += 16;
        out
    })
}

/// A random (version 4) uuid from [`bytes16`].
#[must_use]
pub fn uuid_v4() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(bytes16()).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ_and_are_v4() {
        let a = uuid_v4();
        let b = uuid_v4();
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 4);
    }

    #[test]
    fn a_new_generation_discards_the_buffer() {
        let _ = bytes16();
        let before = BUFFER.with(|b| b.borrow().used);
        after_fork_in_child();
        let _ = bytes16();
        assert_eq!(
            BUFFER.with(|b| b.borrow().used),
            16,
            "refilled, not continued from {before}"
        );
    }
}
