//! The session map's hot paths without Python: a hit on one hot id, a hit among 100 000
//! sessions, an insert of a fresh uuid id, and four threads reading while one writes.
//! `cargo bench -p sessionlock-core --bench store` (criterion; a regression in the map
//! shows here before any Python benchmark).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sessionlock_core::local::key::Loc;
use sessionlock_core::local::store::{Insert, Store, Ttl};
use sessionlock_core::random::uuid_v4;

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid_v4().hyphenated().to_string()).collect()
}

fn filled(ids: &[String]) -> Store<u64> {
    let store = Store::new();
    let never_held = |_: &Loc<'_>| false;
    for (i, id) in ids.iter().enumerate() {
        let r = store.insert(
            &Loc::new(id),
            i as u64,
            0,
            Ttl::default(),
            &never_held,
            false,
        );
        assert!(matches!(r, Insert::Inserted { .. }));
    }
    store
}

fn get(c: &mut Criterion) {
    let hot = ids(1);
    let store = filled(&hot);
    c.bench_function("store get, one hot id", |b| {
        b.iter(|| store.get(&Loc::new(&hot[0]), 0, Ttl::default(), true, |v| *v));
    });
    let many = ids(100_000);
    let store = filled(&many);
    let mut i = 0;
    c.bench_function("store get, 100k sessions", |b| {
        b.iter(|| {
            i = (i + 7919) % many.len();
            store.get(&Loc::new(&many[i]), 0, Ttl::default(), true, |v| *v)
        });
    });
}

fn insert(c: &mut Criterion) {
    let never_held = |_: &Loc<'_>| false;
    c.bench_function("store insert, fresh uuid id", |b| {
        b.iter_batched(
            || (Store::<u64>::new(), ids(1000)),
            |(store, fresh)| {
                for id in &fresh {
                    store.insert(&Loc::new(id), 1, 0, Ttl::default(), &never_held, false);
                }
                store
            },
            BatchSize::LargeInput,
        );
    });
}

fn contended_reads(c: &mut Criterion) {
    let hot = ids(16);
    let store = Arc::new(filled(&hot));
    let stop = Arc::new(AtomicBool::new(false));
    let never_held = |_: &Loc<'_>| false;
    let readers: Vec<_> = (0..3)
        .map(|t| {
            let (store, stop, hot) = (store.clone(), stop.clone(), hot.clone());
            thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 1) % hot.len();
                    store.get(&Loc::new(&hot[i]), 0, Ttl::default(), true, |v| *v);
                }
            })
        })
        .collect();
    let mut i = 0;
    c.bench_function("store replace, 16 hot ids, 3 reader threads", |b| {
        b.iter(|| {
            i = (i + 1) % hot.len();
            store.insert(&Loc::new(&hot[i]), 2, 0, Ttl::default(), &never_held, true)
        });
    });
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader thread");
    }
}

criterion_group!(benches, get, insert, contended_reads);
criterion_main!(benches);
