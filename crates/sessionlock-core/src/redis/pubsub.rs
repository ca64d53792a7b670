//! Hand-off notices: the process's one pub/sub connection per target and the waiters it
//! wakes (`Hub`, `Slot`), plus the thread waiters' fast path, a blocking RESP3 connection
//! that a waiting thread reads itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lock::scripts::{channel_pattern, parse_notice};
use futures_util::StreamExt;
use parking_lot::{Condvar, Mutex};

use super::conn::Conn;

impl Conn {
    /// Thread waiters' wait for a notice, at most `d`. If no other thread is reading the
    /// fast-path connection, this one reads it itself and dispatches every notice it sees
    /// (its own included), so its own notice costs one wake-up instead of two (runtime
    /// thread, then this thread). Correctness never depends on it: the async hub delivers
    /// every notice as well, and any error just drops the fast path.
    pub fn wait_sync(&self, slot: &Slot, d: Duration) -> Option<Notice> {
        if let Some(n) = slot.take() {
            return Some(n);
        }
        if self.sync_fast_off.load(Ordering::Relaxed) {
            return slot.wait_sync(d);
        }
        let Some(mut sub) = self.sync_sub.try_lock() else {
            return slot.wait_sync(d);
        };
        let deadline = Instant::now() + d;
        let res = self.lead(&mut sub, slot, deadline);
        drop(sub);
        // let another waiting thread take over the reading
        self.hub.nudge_all();
        res
    }

    fn lead(
        &self,
        sub: &mut Option<redis::Connection>,
        slot: &Slot,
        deadline: Instant,
    ) -> Option<Notice> {
        if let Err(()) = self.ensure_sync_sub(sub) {
            *sub = None;
            return slot.wait_sync(deadline.saturating_duration_since(Instant::now()));
        }
        let con = sub.as_mut().expect("ensured above");
        loop {
            if let Some(n) = slot.take() {
                return Some(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if con
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .is_err()
            {
                *sub = None;
                return slot.wait_sync(left);
            }
            match con.recv_response() {
                Ok(redis::Value::Push {
                    kind: redis::PushKind::PMessage,
                    data,
                }) => {
                    if let [_, redis::Value::BulkString(ch), redis::Value::BulkString(p)] =
                        data.as_slice()
                    {
                        if let (Ok(ch), Ok(p)) = (std::str::from_utf8(ch), std::str::from_utf8(p)) {
                            if let Some((token, fence)) = parse_notice(p) {
                                self.hub.deliver(ch, token, fence);
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if e.is_timeout() => return slot.take(),
                Err(_) => {
                    *sub = None;
                    return slot.wait_sync(deadline.saturating_duration_since(Instant::now()));
                }
            }
        }
    }

    /// Connects the fast path and subscribes it to every wanted pattern (no round trip:
    /// RESP3 subscriptions are fire-and-forget; confirmations arrive as pushes).
    fn ensure_sync_sub(&self, sub: &mut Option<redis::Connection>) -> Result<(), ()> {
        let (missing, fresh) = {
            let mut pats = self.sync_patterns.lock();
            if sub.is_none() {
                pats.1.clear();
            }
            let (wanted, have) = &mut *pats;
            let missing: Vec<String> = wanted
                .iter()
                .filter(|p| !have.contains(p))
                .cloned()
                .collect();
            have.extend(missing.iter().cloned());
            (missing, sub.is_none())
        };
        if fresh {
            let info = self
                .source
                .node_sync(self.connect_timeout)
                .map_err(|_| ())?
                .get_connection_info()
                .clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let c = redis::Client::open(info.set_redis_settings(settings))
                .and_then(|c| c.get_connection_with_timeout(self.connect_timeout))
                .map_err(|_| self.sync_fast_off.store(true, Ordering::Relaxed))?;
            c.set_write_timeout(Some(self.io_timeout()))
                .map_err(|_| ())?;
            *sub = Some(c);
        }
        let con = sub.as_mut().expect("set above");
        for p in missing {
            if con.psubscribe_resp3(&p).is_err() {
                self.sync_patterns.lock().1.clear();
                return Err(());
            }
        }
        Ok(())
    }

    /// Makes sure this process listens for hand-off notices of `prefix`.
    ///
    /// # Errors
    ///
    /// The Redis error if the pub/sub connection cannot be made or PSUBSCRIBE fails, or a
    /// timed-out I/O error if either takes longer than its timeout.
    ///
    /// # Panics
    ///
    /// Never in practice: the subscriber's sink is set just above whenever it was missing.
    pub async fn listen(self: &Arc<Self>, prefix: &str) -> redis::RedisResult<()> {
        let pattern = channel_pattern(prefix);
        {
            let mut pats = self.sync_patterns.lock();
            if !pats.0.contains(&pattern) {
                pats.0.push(pattern.clone());
            }
        }
        let mut sub = self.hub.sub.lock().await;
        if sub.alive.load(Ordering::Acquire) && sub.patterns.contains(&pattern) {
            return Ok(());
        }
        if !sub.alive.load(Ordering::Acquire) || sub.sink.is_none() {
            let ps = tokio::time::timeout(self.connect_timeout, async {
                self.source
                    .node_async(self.connect_timeout)
                    .await?
                    .get_async_pubsub()
                    .await
            })
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "pub/sub connect timed out",
                ))
            })??;
            let (sink, mut stream) = ps.split();
            let alive = Arc::new(AtomicBool::new(true));
            sub.alive = alive.clone();
            sub.sink = Some(sink);
            sub.patterns.clear();
            let me = Arc::clone(self);
            tokio::spawn(async move {
                while let Some(msg) = stream.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let channel = msg.get_channel_name().to_owned();
                    if let Some((token, fence)) = parse_notice(&payload) {
                        me.hub.deliver(&channel, token, fence);
                    }
                }
                // Connection gone: the next waiter resubscribes; wake everyone so they
                // re-check the lock (and notice an outage) instead of sleeping on.
                alive.store(false, Ordering::Release);
                me.hub.wake_all();
            });
        }
        let sink = sub.sink.as_mut().expect("set above");
        tokio::time::timeout(self.io_timeout(), sink.psubscribe(&pattern))
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "psubscribe timed out",
                ))
            })??;
        sub.patterns.push(pattern);
        Ok(())
    }
}

/// What a waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The lock was handed to this waiter with this fencing token.
    Granted(i64),
    /// Something changed (connection lost): look again.
    Recheck,
}

/// One waiting acquire. Signalled from the pub/sub task; waited on by a thread (condvar,
/// GIL released) or an async task (`Notify`).
#[derive(Default)]
pub struct Slot {
    notice: Mutex<Option<Notice>>,
    cv: Condvar,
    notify: tokio::sync::Notify,
}

impl Slot {
    fn signal(&self, n: Notice) {
        {
            let mut g = self.notice.lock();
            // a grant is never overwritten by a mere recheck
            if !matches!(*g, Some(Notice::Granted(_))) {
                *g = Some(n);
            }
        }
        self.cv.notify_all();
        self.notify.notify_one();
    }

    /// Wakes a waiting thread without a notice (it re-checks and may take over reading).
    fn nudge(&self) {
        self.cv.notify_all();
    }

    /// Takes the notice, if any.
    pub fn take(&self) -> Option<Notice> {
        self.notice.lock().take()
    }

    /// Blocks up to `d` for a notice (call with the GIL released).
    pub fn wait_sync(&self, d: Duration) -> Option<Notice> {
        let mut g = self.notice.lock();
        if g.is_none() {
            let _ = self.cv.wait_for(&mut g, d);
        }
        g.take()
    }

    /// Waits up to `d` for a notice without blocking the runtime thread.
    pub async fn wait_async(&self, d: Duration) -> Option<Notice> {
        if let Some(n) = self.take() {
            return Some(n);
        }
        // notify_one stores a permit, so a signal between take() and here is not lost
        let _ = tokio::time::timeout(d, self.notify.notified()).await;
        self.take()
    }
}

struct Sub {
    sink: Option<redis::aio::PubSubSink>,
    patterns: Vec<String>,
    alive: Arc<AtomicBool>,
}

impl Default for Sub {
    fn default() -> Self {
        Sub {
            sink: None,
            patterns: Vec::new(),
            alive: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The process's one pub/sub connection and the waiters it serves.
#[derive(Default)]
pub struct Hub {
    sub: tokio::sync::Mutex<Sub>,
    /// channel -> token -> slot. Held only for map edits and lookups.
    waiters: Mutex<HashMap<String, HashMap<String, Arc<Slot>>>>,
}

impl Conn {
    /// Registers a waiter; it is removed when the guard drops.
    pub fn register(self: &Arc<Self>, channel: &str, token: &str) -> WaitGuard {
        let slot = Arc::new(Slot::default());
        self.hub
            .waiters
            .lock()
            .entry(channel.to_owned())
            .or_default()
            .insert(token.to_owned(), slot.clone());
        WaitGuard {
            conn: self.clone(),
            channel: channel.to_owned(),
            token: token.to_owned(),
            slot,
        }
    }
}

impl Hub {
    fn deliver(&self, channel: &str, token: &str, fence: i64) {
        let slot = self
            .waiters
            .lock()
            .get(channel)
            .and_then(|m| m.get(token))
            .cloned();
        if let Some(s) = slot {
            s.signal(Notice::Granted(fence));
        }
    }

    fn nudge_all(&self) {
        let slots: Vec<Arc<Slot>> = self
            .waiters
            .lock()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for s in slots {
            s.nudge();
        }
    }

    fn wake_all(&self) {
        let slots: Vec<Arc<Slot>> = self
            .waiters
            .lock()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for s in slots {
            s.signal(Notice::Recheck);
        }
    }
}

pub struct WaitGuard {
    conn: Arc<Conn>,
    channel: String,
    token: String,
    pub slot: Arc<Slot>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut map = self.conn.hub.waiters.lock();
        if let Some(m) = map.get_mut(&self.channel) {
            m.remove(&self.token);
            if m.is_empty() {
                map.remove(&self.channel);
            }
        }
    }
}
