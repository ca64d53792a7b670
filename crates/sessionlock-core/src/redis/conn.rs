//! The connections to one target: a small pool of blocking connections for sync calls, one
//! multiplexed connection for async calls and renewals, the SCAN and UNLINK walks over every
//! master, and the outage state behind the local fallback. The pub/sub side is `pubsub.rs`.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;

use crate::redis::cluster;

use super::pubsub::Hub;
use super::source::Source;
use super::target::Target;

/// Outage bookkeeping for the fallback: one warning per outage, probes with backoff.
#[derive(Default)]
pub struct Outage {
    pub down: bool,
    pub next_probe: Option<Instant>,
    pub backoff: Duration,
}

/// A blocking connection: to one node (a server, or the master Sentinel named), or a
/// cluster connection that routes each command to its slot's master.
pub enum SyncConn {
    Node(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

/// `WAIT replicas timeout` for the master of `key`'s slot: on a cluster it is routed there
/// (a bare WAIT would go to every master), and on one node it goes down the same connection,
/// so it counts the write this connection just made.
fn wait_cmd(
    key: &str,
    replicas: u32,
    timeout: Duration,
) -> (redis::Cmd, redis::cluster_routing::RoutingInfo) {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let cmd = redis::cmd("WAIT").arg(replicas).arg(ms).clone();
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
        Slot::for_key(key),
        SlotAddr::Master,
    )));
    (cmd, route)
}

impl SyncConn {
    /// How many replicas acknowledged this connection's writes to `key`'s master, waiting
    /// up to `timeout` for `replicas` of them.
    ///
    /// # Errors
    ///
    /// The Redis error if the WAIT fails (connection, timeout, or an error reply).
    pub fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<i64> {
        let (cmd, route) = wait_cmd(key, replicas, timeout);
        match self {
            SyncConn::Node(c) => cmd.query(c),
            SyncConn::Cluster(c) => Ok(redis::from_redis_value(c.route_command(&cmd, route)?)?),
        }
    }

    /// Sets how long a reply may take on this connection (every node of a cluster).
    ///
    /// # Errors
    ///
    /// The Redis error if the socket refuses the timeout (e.g. a zero duration).
    pub fn set_read_timeout(&self, dur: Option<Duration>) -> redis::RedisResult<()> {
        match self {
            SyncConn::Node(c) => c.set_read_timeout(dur),
            SyncConn::Cluster(c) => c.set_read_timeout(dur),
        }
    }
}

impl redis::ConnectionLike for SyncConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        match self {
            SyncConn::Node(c) => c.req_packed_command(cmd),
            SyncConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            SyncConn::Node(c) => c.req_packed_commands(cmd, offset, count),
            SyncConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            SyncConn::Node(c) => c.req_command(cmd),
            SyncConn::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            SyncConn::Node(c) => c.get_db(),
            SyncConn::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            SyncConn::Node(c) => c.supports_pipelining(),
            SyncConn::Cluster(c) => c.supports_pipelining(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            SyncConn::Node(c) => c.check_connection(),
            SyncConn::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            SyncConn::Node(c) => c.is_open(),
            SyncConn::Cluster(c) => c.is_open(),
        }
    }
}

/// The async counterpart of [`SyncConn`]; cheap to clone (both kinds multiplex).
#[derive(Clone)]
pub enum AConn {
    Node(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl AConn {
    /// See [`SyncConn::wait_replicas`]. Clones of one multiplexed connection share it, so
    /// the WAIT counts the write made through any clone before it.
    ///
    /// # Errors
    ///
    /// As [`SyncConn::wait_replicas`].
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<i64> {
        let (cmd, route) = wait_cmd(key, replicas, timeout);
        match self {
            AConn::Node(c) => cmd.query_async(c).await,
            AConn::Cluster(c) => Ok(redis::from_redis_value(c.route_command(cmd, route).await?)?),
        }
    }
}

impl redis::aio::ConnectionLike for AConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AConn::Node(c) => c.req_packed_command(cmd),
            AConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            AConn::Node(c) => c.req_packed_commands(cmd, offset, count),
            AConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AConn::Node(c) => c.get_db(),
            AConn::Cluster(c) => c.get_db(),
        }
    }
}

pub struct Conn {
    pub(super) source: Source,
    pub target: Target,
    pub(super) connect_timeout: Duration,
    /// Idle blocking connections. A connection is taken out while used, so the mutex is
    /// held only for a push/pop, never across I/O.
    pub(super) pool: Mutex<Vec<SyncConn>>,
    pub(super) aconn: tokio::sync::Mutex<Option<AConn>>,
    pub hub: Hub,
    /// The thread waiters' fast path (see `wait_sync`): a blocking RESP3 pub/sub
    /// connection that a waiting thread reads itself. The mutex is held by the one thread
    /// reading it (GIL released, no other lock held), never by anyone else for long.
    pub(super) sync_sub: Mutex<Option<redis::Connection>>,
    /// Patterns the fast path must listen to, and those it already does.
    pub(super) sync_patterns: Mutex<(Vec<String>, Vec<String>)>,
    /// Set when the fast path could not connect (e.g. no RESP3); cleared after an outage.
    pub sync_fast_off: AtomicBool,
    pub outage: Mutex<Outage>,
}

const MAX_IDLE: usize = 8;

/// How long one command may take before its connection counts as broken.
pub(super) fn io_timeout_for(connect_timeout: Duration) -> Duration {
    connect_timeout.max(Duration::from_millis(500)) * 2
}

/// The connection is unusable (as opposed to a script or server error).
#[must_use]
pub fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        // a master demoted by a Sentinel failover: reconnect, which asks the Sentinels again
        || e.code() == Some("READONLY")
}

impl Conn {
    /// How long a blocking call may wait for a reply.
    pub fn io_timeout(&self) -> Duration {
        io_timeout_for(self.connect_timeout)
    }

    fn connect_sync(&self) -> redis::RedisResult<SyncConn> {
        if let Source::Cluster { client, .. } = &self.source {
            let c = client.get_connection()?;
            c.set_read_timeout(Some(self.io_timeout()))?;
            c.set_write_timeout(Some(self.io_timeout()))?;
            return Ok(SyncConn::Cluster(Box::new(c)));
        }
        let c = self
            .source
            .node_sync(self.connect_timeout)?
            .get_connection_with_timeout(self.connect_timeout)?;
        c.set_read_timeout(Some(self.io_timeout()))?;
        c.set_write_timeout(Some(self.io_timeout()))?;
        Ok(SyncConn::Node(c))
    }

    /// Runs `f` on a pooled blocking connection (the caller has released the GIL). An idle
    /// connection that turns out dead (Redis restarted while it sat in the pool) is
    /// replaced and `f` retried once on a fresh one; every script is safe to repeat.
    ///
    /// # Errors
    ///
    /// The Redis error if no connection can be made, or what `f` returns (after the one
    /// retry, for a broken pooled connection).
    pub fn sync<T>(
        &self,
        f: impl FnMut(&mut SyncConn) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        self.sync_until(None, f)
    }

    /// [`Conn::sync`] for a call that is pointless after `until` (a lease deadline): no
    /// retry once it has passed.
    ///
    /// # Errors
    ///
    /// As [`Conn::sync`].
    pub fn sync_until<T>(
        &self,
        until: Option<Instant>,
        mut f: impl FnMut(&mut SyncConn) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let pooled = self.pool.lock().pop();
        let was_pooled = pooled.is_some();
        let mut c = match pooled {
            Some(c) => c,
            None => self.connect_sync()?,
        };
        let mut r = f(&mut c);
        let retry = until.is_none_or(|u| Instant::now() < u);
        if was_pooled && retry && matches!(&r, Err(e) if is_broken(e)) {
            self.reset_pool();
            c = self.connect_sync()?;
            r = f(&mut c);
        }
        if !matches!(&r, Err(e) if is_broken(e)) {
            let mut pool = self.pool.lock();
            if pool.len() < MAX_IDLE {
                pool.push(c);
            }
        }
        r
    }

    /// Every key matching `pattern` (SCAN ... MATCH, on every master of a cluster in turn).
    /// SCAN may return a key twice: callers dedup. Call with the GIL released.
    ///
    /// # Errors
    ///
    /// The Redis error of the first command that fails (connect, `CLUSTER NODES`, SCAN).
    pub fn scan_keys(&self, pattern: &str) -> redis::RedisResult<Vec<Vec<u8>>> {
        self.sync(|c| {
            let mut out = Vec::new();
            match c {
                SyncConn::Node(n) => scan_one(|cmd| cmd.query(n), pattern, &mut out)?,
                SyncConn::Cluster(cl) => {
                    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(cl)?;
                    for (host, port) in cluster::masters(&nodes) {
                        let route = redis::cluster_routing::RoutingInfo::SingleNode(
                            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress { host, port },
                        );
                        scan_one(
                            |cmd| {
                                let v = cl.route_command(cmd, route.clone())?;
                                Ok(redis::from_redis_value(v)?)
                            },
                            pattern,
                            &mut out,
                        )?;
                    }
                }
            }
            Ok(out)
        })
    }

    /// Deletes `keys` (UNLINK; one key per command on a cluster, where they span slots).
    /// Returns how many existed. Call with the GIL released.
    ///
    /// # Errors
    ///
    /// The Redis error of the first command that fails (keys before it may be deleted).
    pub fn unlink(&self, keys: &[Vec<u8>]) -> redis::RedisResult<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.sync(|c| match c {
            SyncConn::Node(n) => redis::cmd("UNLINK").arg(keys).query(n),
            SyncConn::Cluster(cl) => keys.iter().try_fold(0, |n, k| {
                Ok(n + redis::cmd("UNLINK").arg(k).query::<usize>(cl)?)
            }),
        })
    }

    /// Drops every idle blocking connection (after an outage they are all dead).
    pub fn reset_pool(&self) {
        let idle = std::mem::take(&mut *self.pool.lock());
        drop(idle);
    }

    /// The shared multiplexed connection (reconnects after a failure).
    ///
    /// # Errors
    ///
    /// The Redis error if a new connection is needed and cannot be made.
    pub async fn aconn(&self) -> redis::RedisResult<AConn> {
        let mut guard = self.aconn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = if let Source::Cluster { client, .. } = &self.source {
            AConn::Cluster(client.get_async_connection().await?)
        } else {
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.io_timeout()));
            AConn::Node(
                self.source
                    .node_async(self.connect_timeout)
                    .await?
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?,
            )
        };
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one script on the multiplexed connection; a connection that turns out dead is
    /// replaced and the script retried once (every script is safe to repeat).
    ///
    /// # Errors
    ///
    /// The Redis error if no connection can be made or the script fails (after the one
    /// retry, for a broken connection).
    pub async fn run_async<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        let had = self.aconn.lock().await.is_some();
        let mut c = self.aconn().await?;
        let mut r = inv.invoke_async::<T>(&mut c).await;
        if matches!(&r, Err(e) if is_broken(e)) {
            self.drop_aconn().await;
            if had {
                c = self.aconn().await?;
                r = inv.invoke_async::<T>(&mut c).await;
                if matches!(&r, Err(e) if is_broken(e)) {
                    self.drop_aconn().await;
                }
            }
        }
        r
    }

    /// One script, then (if it reported a write, `wrote`) WAIT for `replicas` on the same
    /// connection. Returns the script's result and the replicas that
    /// acknowledged (`i64::MAX` when nothing was written).
    ///
    /// # Errors
    ///
    /// The Redis error if no connection can be made, or the script or the WAIT fails (no
    /// retry). Too few acknowledgements are not an error here: the caller compares.
    pub async fn run_async_replicated<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        key: &str,
        replicas: u32,
        timeout: Duration,
        wrote: impl FnOnce(&T) -> bool,
    ) -> redis::RedisResult<(T, i64)> {
        // One connection for both, so the WAIT counts this very write (no retry on a fresh
        // connection here: a failure goes to the caller, which retries the whole step).
        let mut c = self.aconn().await?;
        let r = async {
            let v = inv.invoke_async::<T>(&mut c).await?;
            if !wrote(&v) {
                return Ok((v, i64::MAX));
            }
            let acked = c.wait_replicas(key, replicas, timeout).await?;
            Ok((v, acked))
        }
        .await;
        if matches!(&r, Err(e) if is_broken(e)) {
            self.drop_aconn().await;
        }
        r
    }

    /// Forget the multiplexed connection after an I/O error so the next call reconnects.
    pub async fn drop_aconn(&self) {
        *self.aconn.lock().await = None;
    }
}

/// One SCAN walk on one node.
fn scan_one(
    mut run: impl FnMut(&redis::Cmd) -> redis::RedisResult<(u64, Vec<Vec<u8>>)>,
    pattern: &str,
    out: &mut Vec<Vec<u8>>,
) -> redis::RedisResult<()> {
    let mut cursor = 0u64;
    loop {
        let cmd = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone();
        let (next, keys) = run(&cmd)?;
        out.extend(keys);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
