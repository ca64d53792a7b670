//! `RedisSessions` against a real `redis-server`, without Python: options, signed values
//! that round-trip and reject tampering, holds that re-enter and refuse strangers, and a
//! write-back refused once the lock was taken over.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use sessionlock_core::local::keylock::{thread_id, Owner};
use sessionlock_core::session::{RedisSessions, SessionOptions};
use sessionlock_core::Error;

use common::Server;

fn options(url: &str, prefix: &str) -> SessionOptions<'static> {
    SessionOptions {
        url: Some(Box::leak(url.to_owned().into_boxed_str())),
        prefix: prefix.to_owned(),
        idle_ttl: Some(60.0),
        absolute_ttl: Some(3600.0),
        secret: Some(b"0123456789abcdef0123456789abcdef".to_vec()),
        lock_ttl: 5.0,
        lock_wait: 1.0,
        min_replicas: 0,
        replica_timeout: 0.5,
    }
}

#[expect(
    clippy::unnecessary_wraps,
    reason = "the interrupt check's signature: never interrupts"
)]
fn no_interrupt() -> Result<(), Error> {
    Ok(())
}

/// Takes `sid`'s lock for `owner` as the binding does (re-entry first, then a handle).
fn hold(s: &RedisSessions, sid: &str, owner: Owner) -> bool {
    if s.try_reenter(sid, owner, false).unwrap() {
        return true;
    }
    let h = s.new_handle(sid, Duration::from_secs(1)).unwrap();
    let got = h.acquire_blocking(no_interrupt).unwrap();
    if got {
        s.register(sid, owner, h);
    }
    got
}

fn release(s: &RedisSessions, sid: &str, owner: Owner) -> bool {
    match s.unregister(sid, owner).unwrap() {
        Some(h) => s.release(&h),
        None => false,
    }
}

#[test]
fn bad_options_are_refused() {
    let ok = options(
        &format!("redis://127.0.0.1:{}/0", common::closed_port()),
        "p:",
    );
    assert!(RedisSessions::new(&ok).is_ok());
    for bad in [
        SessionOptions {
            prefix: String::new(),
            ..ok.clone()
        },
        SessionOptions {
            prefix: "a\0".into(),
            ..ok.clone()
        },
        SessionOptions {
            idle_ttl: Some(-1.0),
            ..ok.clone()
        },
        SessionOptions {
            absolute_ttl: Some(f64::NAN),
            ..ok.clone()
        },
        SessionOptions {
            lock_ttl: 0.0,
            ..ok.clone()
        },
        SessionOptions {
            lock_wait: -1.0,
            ..ok.clone()
        },
        SessionOptions {
            secret: Some(b"short".to_vec()),
            ..ok.clone()
        },
        SessionOptions {
            url: Some("http://h"),
            ..ok.clone()
        },
    ] {
        assert!(
            matches!(RedisSessions::new(&bad), Err(Error::Value(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn signed_values_round_trip_and_tampering_is_caught() {
    let Some(server) = Server::start() else {
        return;
    };
    let s = RedisSessions::new(&options(&server.url(), "st1:")).unwrap();
    assert!(s.signed());
    let key = s.key("abc");
    assert_eq!(key, "st1:{abc}");
    let body = s.seal(&key, b"payload");
    assert_eq!(s.insert(&key, &body, false).unwrap(), Ok(()));
    // a second create finds the stored value (its head, then the sealed body)
    let Err(Some(existing)) = s.insert(&key, &body, true).unwrap() else {
        panic!("the key exists")
    };
    assert_eq!(s.open(&key, &existing).unwrap(), b"payload");
    let stored = s.fetch(&key).unwrap().expect("stored");
    assert_eq!(s.open(&key, &stored).unwrap(), b"payload");
    // another key's value, or one flipped byte, is rejected
    assert!(matches!(
        s.open("st1:{other}", &stored),
        Err(Error::Corrupted(_))
    ));
    let mut flipped = stored.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(s.open(&key, &flipped), Err(Error::Corrupted(_))));
    assert_eq!(s.stats.creates.load(Ordering::Relaxed), 1);
    assert_eq!(s.clear().unwrap(), 1);
    assert_eq!(s.fetch(&key).unwrap(), None);
}

#[test]
fn holds_reenter_refuse_strangers_and_write_back_only_while_owned() {
    let Some(server) = Server::start() else {
        return;
    };
    let s = RedisSessions::new(&options(&server.url(), "st2:")).unwrap();
    let me = Owner::thread(thread_id());
    let stranger = Owner::thread(thread_id() + 1_000_000);
    let key = s.key("sid");
    assert_eq!(s.insert(&key, &s.seal(&key, b"v1"), false).unwrap(), Ok(()));

    assert!(hold(&s, "sid", me));
    assert!(hold(&s, "sid", me), "the owner re-enters");
    assert!(s.holds("sid", me) && !s.holds("sid", stranger));
    assert_eq!(s.holds_count(), 1);
    assert!(matches!(
        s.unregister("sid", stranger),
        Err(Error::NotOwned(_))
    ));
    assert!(matches!(
        s.write_back("sid", stranger, &s.seal(&key, b"x")),
        Err(Error::NotOwned(_))
    ));
    assert!(s.write_back("sid", me, &s.seal(&key, b"v2")).unwrap());
    let stored = s.fetch(&key).unwrap().unwrap();
    assert_eq!(s.open(&key, &stored).unwrap(), b"v2");
    assert!(!release(&s, "sid", me), "one level of two: still held");
    assert!(!release(&s, "sid", me), "released, not lost");
    assert_eq!(s.holds_count(), 0);

    // taken over behind the holder's back: the write-back is refused and says lost
    assert!(hold(&s, "sid", me));
    let names = s.lock.names("sid");
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_connection().unwrap();
    redis::cmd("SET")
        .arg(&names.lock)
        .arg("another-process")
        .exec(&mut c)
        .unwrap();
    let r = s.write_back("sid", me, &s.seal(&key, b"v3"));
    assert!(matches!(r, Err(Error::Lost(_))), "{r:?}");
    assert!(release(&s, "sid", me), "lost while held");
    assert_eq!(s.stats.lock_lost.load(Ordering::Relaxed), 1);
    let stored = s.fetch(&key).unwrap().unwrap();
    assert_eq!(s.open(&key, &stored).unwrap(), b"v2", "nothing was written");
}
