//! The lock engine against a real `redis-server` (started here on a free loopback port,
//! persistence off), without Python: acquisition, contention and hand-off between threads,
//! an interrupted wait, the async path and renewal, a lease lost when Redis dies, the local
//! fallback, and the log hook.
//!
//! Without `redis-server` these tests pass with a note unless `SESSIONLOCK_REQUIRE_REDIS=1`
//! (see `common/mod.rs`).

mod common;

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sessionlock_core::lock::{Backend, Handle, LockConfig, LockOptions, OwnedHandle};
use sessionlock_core::log::{self, Sink, DEBUG};
use sessionlock_core::redis::process;
use sessionlock_core::Error;

use common::Server;

/// The log records of this test binary (the sink is process-wide: tests look only at
/// records that name their own keys).
#[derive(Default)]
struct Records {
    all: Mutex<Vec<(u8, String)>>,
    added: Condvar,
}

impl Records {
    /// Waits (bounded) for a record containing `needle`.
    fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let until = Instant::now() + within;
        let mut all = self.all.lock().unwrap();
        loop {
            if all.iter().any(|(_, m)| m.contains(needle)) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            all = self.added.wait_timeout(all, left).unwrap().0;
        }
    }
}

struct Keep(Arc<Records>);

impl Sink for Keep {
    fn enabled(&self, level: u8) -> bool {
        level >= DEBUG
    }
    fn emit(&self, level: u8, msg: String) {
        self.0.all.lock().unwrap().push((level, msg));
        self.0.added.notify_all();
    }
}

fn records() -> Arc<Records> {
    static RECORDS: OnceLock<Arc<Records>> = OnceLock::new();
    RECORDS
        .get_or_init(|| {
            let r = Arc::new(Records::default());
            assert!(log::install(Box::new(Keep(r.clone()))));
            r
        })
        .clone()
}

fn config(url: &str, prefix: &str, ttl: f64, fallback: &str) -> Arc<LockConfig> {
    Arc::new(
        LockConfig::new(&LockOptions {
            url: Some(url),
            prefix: prefix.to_owned(),
            ttl,
            wait: 5.0,
            auto_renew: true,
            max_hold: None,
            fallback,
            connect_timeout: 1.0,
            min_replicas: 0,
            replica_timeout: 0.5,
        })
        .expect("valid options"),
    )
}

fn handle(config: &Arc<LockConfig>, key: &str, wait: Duration) -> OwnedHandle {
    OwnedHandle::new(Handle::new(config, key, config.ttl, wait).expect("an open lock"))
}

#[expect(
    clippy::unnecessary_wraps,
    reason = "the interrupt check's signature: never interrupts"
)]
fn no_interrupt() -> Result<(), Error> {
    Ok(())
}

#[test]
fn acquire_contend_release_and_fence_order() {
    let Some(server) = Server::start() else {
        return;
    };
    let logs = records();
    let cfg = config(&server.url(), "t1:", 10.0, "raise");
    let a = handle(&cfg, "job", Duration::from_secs(1));
    assert!(a.acquire_blocking(no_interrupt).unwrap());
    a.log_outcome(true);
    assert_eq!(a.backend(), Backend::Redis);
    let fa = a.fencing_token().expect("a fencing token on Redis");
    assert!(logs.wait_for(
        &format!("acquired \"t1:{{job}}\" token={}", a.token()),
        Duration::ZERO
    ));

    // a second handle of this process waits behind the first, then gives up
    let b = handle(&cfg, "job", Duration::ZERO);
    assert!(!b.acquire_blocking(no_interrupt).unwrap());
    assert!(matches!(b.timeout_error(), Error::Timeout(_)));
    assert_eq!(
        cfg.holder(a.names()).unwrap().map(|h| h.0),
        Some(a.token().to_owned())
    );

    assert!(a.release_sync().unwrap());
    assert!(!a.release_sync().unwrap(), "a second release finds nothing");
    let c = handle(&cfg, "job", Duration::ZERO);
    assert!(c.acquire_blocking(no_interrupt).unwrap());
    assert!(c.fencing_token().unwrap() > fa, "fencing tokens increase");
    assert!(c.release_sync().unwrap());
    assert_eq!(cfg.holder(c.names()).unwrap(), None);
}

#[test]
fn a_release_hands_the_lock_to_a_waiting_thread() {
    let Some(server) = Server::start() else {
        return;
    };
    let logs = records();
    // two configs = two lock objects: the in-process table still serialises them, and the
    // second waits on Redis's queue once the first is given back
    let cfg = config(&server.url(), "t2:", 10.0, "raise");
    let a = handle(&cfg, "user", Duration::from_secs(1));
    assert!(a.acquire_blocking(no_interrupt).unwrap());
    let fa = a.fencing_token().unwrap();
    let b = handle(&cfg, "user", Duration::from_secs(10));
    let b_token = b.token().to_owned();
    let waiter = {
        let b = b.shared();
        std::thread::spawn(move || b.acquire_blocking(no_interrupt).unwrap())
    };
    assert!(logs.wait_for(
        &format!("(token {b_token}): held by"),
        Duration::from_secs(5)
    ));
    assert!(a.release_sync().unwrap());
    assert!(waiter.join().unwrap(), "the waiter got the lock");
    assert!(b.fencing_token().unwrap() > fa);
    assert!(b.release_sync().unwrap());
}

#[test]
fn an_interrupted_wait_is_withdrawn_and_leaves_the_handle_pending() {
    let Some(server) = Server::start() else {
        return;
    };
    let cfg = config(&server.url(), "t3:", 10.0, "raise");
    let a = handle(&cfg, "k", Duration::from_secs(1));
    assert!(a.acquire_blocking(no_interrupt).unwrap());
    let b = handle(&cfg, "k", Duration::from_secs(30));
    let mut checks = 0;
    let r = b.acquire_blocking(|| {
        checks += 1;
        if checks >= 3 {
            Err(Error::State("interrupted".into()))
        } else {
            Ok(())
        }
    });
    assert_eq!(r, Err(Error::State("interrupted".into())));
    assert!(!b.is_acquired());
    assert!(
        b.claim().unwrap(),
        "pending again: it can be acquired later"
    );
    // nothing of b is left in this process's table: a new handle waits only for a
    assert!(a.release_sync().unwrap());
    let c = handle(&cfg, "k", Duration::ZERO);
    assert!(c.acquire_blocking(no_interrupt).unwrap());
    assert!(c.release_sync().unwrap());
}

#[test]
fn async_acquisition_renews_past_the_ttl() {
    let Some(server) = Server::start() else {
        return;
    };
    let cfg = config(&server.url(), "t4:", 0.3, "raise");
    let h = handle(&cfg, "renewed", Duration::from_secs(1));
    assert!(h.claim().unwrap());
    let rt = process();
    assert!(rt.handle.block_on(h.shared().settle(true, true)).unwrap());
    // held for more than three leases: only the renewal keeps it
    std::thread::sleep(Duration::from_secs(1));
    assert!(!h.is_lost());
    assert!(h.is_held_sync().unwrap());
    assert!(
        cfg.stats
            .renewals
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert!(rt.handle.block_on(h.release_async()).unwrap());
}

#[test]
fn a_lease_is_lost_by_its_deadline_when_redis_dies() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let logs = records();
    let cfg = config(&server.url(), "t5:", 0.5, "raise");
    let h = handle(&cfg, "doomed", Duration::from_secs(1));
    assert!(h.acquire_blocking(no_interrupt).unwrap());
    let killed = Instant::now();
    server.kill();
    let token = h.token().to_owned();
    assert!(logs.wait_for(&format!("(token {token}) LOST"), Duration::from_secs(3)));
    assert!(
        killed.elapsed() < Duration::from_millis(600),
        "lost by the lease deadline"
    );
    assert!(h.is_lost());
    assert!(matches!(h.ensure_held(), Err(Error::Lost(_))));
    assert!(!h.release_sync().unwrap(), "a lost lease releases nothing");
}

#[test]
fn an_unreachable_redis_falls_back_to_the_local_table_or_raises() {
    let port = common::closed_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let local = config(&url, "t6:", 5.0, "local");
    let a = handle(&local, "k", Duration::from_secs(1));
    assert!(a.acquire_blocking(no_interrupt).unwrap());
    assert_eq!(a.backend(), Backend::Local);
    assert_eq!(a.fencing_token(), None);
    let b = handle(&local, "k", Duration::ZERO);
    assert!(
        !b.acquire_blocking(no_interrupt).unwrap(),
        "the table excludes in-process"
    );
    assert!(a.release_sync().unwrap());

    let raising = config(&url, "t6r:", 5.0, "raise");
    let c = handle(&raising, "k", Duration::from_secs(1));
    assert!(matches!(
        c.acquire_blocking(no_interrupt),
        Err(Error::Unavailable(_))
    ));
    assert!(!c.is_acquired());
}

#[test]
fn bad_options_are_refused() {
    let ok = LockOptions {
        url: Some("redis://127.0.0.1:1/0"),
        prefix: "p:".into(),
        ttl: 1.0,
        wait: 1.0,
        auto_renew: true,
        max_hold: None,
        fallback: "local",
        connect_timeout: 1.0,
        min_replicas: 0,
        replica_timeout: 0.5,
    };
    assert!(LockConfig::new(&ok).is_ok());
    for bad in [
        LockOptions {
            ttl: 0.0,
            ..ok.clone()
        },
        LockOptions {
            wait: -1.0,
            ..ok.clone()
        },
        LockOptions {
            fallback: "maybe",
            ..ok.clone()
        },
        LockOptions {
            min_replicas: -1,
            ..ok.clone()
        },
        LockOptions {
            prefix: "a\0b".into(),
            ..ok.clone()
        },
        LockOptions {
            url: Some("http://h"),
            ..ok.clone()
        },
        LockOptions {
            max_hold: Some(f64::NAN),
            ..ok.clone()
        },
    ] {
        assert!(
            matches!(LockConfig::new(&bad), Err(Error::Value(_))),
            "{bad:?}"
        );
    }
    let cfg = Arc::new(LockConfig::new(&ok).unwrap());
    cfg.closed.store(true, std::sync::atomic::Ordering::Release);
    assert!(matches!(
        Handle::new(&cfg, "k", Duration::from_secs(1), Duration::ZERO),
        Err(Error::State(_))
    ));
}
