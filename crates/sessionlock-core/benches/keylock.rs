//! The key-lock table without Python: an uncontended acquire+release, and four threads
//! taking turns on a few hot keys with real waits (a condvar signal, as a thread waiter of
//! the binding has), under the default eventual fairness.
//! `cargo bench -p sessionlock-core --bench keylock`.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use sessionlock_core::local::key::Loc;
use sessionlock_core::local::keylock::{KeyLocks, Next, Outcome, Owner, Retry};

mod thread_signal {
    use sessionlock_core::local::keylock::Payload;
    include!("../src/local/thread_signal.rs");
}
use thread_signal::Sig;

fn tell(next: Next<Sig>) {
    match next {
        Next::Granted(w) => w.payload.post(2),
        Next::Nudge(s) => s.post(1),
        Next::Nobody => {}
    }
}

/// Acquires `k` for `owner`, waiting as the binding's thread waiters do.
fn lock(l: &KeyLocks<Sig>, k: &Loc<'_>, owner: Owner) {
    // the signal is made only if this caller has to queue (as the binding does)
    let mut made = None;
    let payload = || {
        let s = Sig::default();
        made = Some(s.clone());
        s
    };
    let Outcome::Queued(id) = l.acquire(k, owner, true, None, payload) else {
        return; // taken at once
    };
    let sig = made.expect("queued: the payload was made");
    loop {
        match sig.take() {
            2 => return,
            _ => match l.retry(k, id, owner) {
                Retry::Acquired => return,
                Retry::Wait => {}
                Retry::Gone => unreachable!("only this thread withdraws its waiter"),
            },
        }
    }
}

fn uncontended(c: &mut Criterion) {
    let l: KeyLocks<Sig> = KeyLocks::new();
    let id = "0b9d7c3e-4f1a-4c2b-9d8e-7f6a5b4c3d2e";
    let owner = Owner::thread(1);
    c.bench_function("keylock acquire+release, uncontended", |b| {
        b.iter(|| {
            let k = Loc::new(id);
            lock(&l, &k, owner);
            tell(l.release(&k, owner).expect("held"));
        });
    });
}

fn contended(c: &mut Criterion) {
    const THREADS: u64 = 4;
    const KEYS: [&str; 2] = ["hot-a", "hot-b"];
    c.bench_function(
        "keylock 4 threads on 2 hot keys, per acquire+release",
        |b| {
            b.iter_custom(|iters| {
                let l = Arc::new(KeyLocks::<Sig>::new());
                let start = Arc::new(Barrier::new(
                    usize::try_from(THREADS).expect("4 fits a usize") + 1,
                ));
                let per_thread = iters.div_ceil(THREADS);
                let threads: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (l, start) = (l.clone(), start.clone());
                        thread::spawn(move || {
                            let owner = Owner::thread(t + 1);
                            start.wait();
                            for i in 0..per_thread {
                                let k = Loc::new(KEYS[(i % 2) as usize]);
                                lock(&l, &k, owner);
                                tell(l.release(&k, owner).expect("held"));
                            }
                        })
                    })
                    .collect();
                start.wait();
                let t0 = Instant::now();
                for t in threads {
                    t.join().expect("bench thread");
                }
                let elapsed = t0.elapsed();
                assert!(l.is_empty(), "every lock released");
                elapsed
            });
        },
    );
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
