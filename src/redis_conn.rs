//! Everything a process needs to talk to Redis, given where (`Target`, parsed by the core:
//! one server, a Redis Cluster given by seed nodes, or the master a set of Sentinels
//! names): the tokio runtime the async side runs on, the per-URL
//! connections (a small pool of blocking connections for sync calls, one multiplexed
//! connection for async calls and renewals, one pub/sub connection for hand-off notices),
//! and the outage state behind the local fallback.
//!
//! Fork safety: all of it hangs off one `Process` value tagged with the pid that built it.
//! A child after `os.fork()` finds a foreign pid, leaks the parent's value (its threads do
//! not exist in the child, so dropping it could block) and builds its own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{ContextExt, Runtime as GenericRuntime};
use pyo3_async_runtimes::TaskLocals;
use redis::aio::MultiplexedConnection;

use crate::errors::{Error, Result};
use sessionlock_core::lock::held_keys::HeldKeys;
use sessionlock_core::lock::scripts::{channel_pattern, parse_notice};
pub use sessionlock_core::redis::target::Target;
use sessionlock_core::redis::target::Topology;

// ---------------------------------------------------------------------------------------
// Runtime

/// The per-process state. Built lazily, rebuilt after fork.
pub struct Process {
    pid: u32,
    /// Where tasks are spawned; keeps working (spawns are refused) once the runtime is shut.
    pub handle: tokio::runtime::Handle,
    /// Owned here so that `shutdown_runtime` can stop it before the interpreter finalizes.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    /// The keys this process holds or waits for (`held_keys.rs`): fresh in a forked child,
    /// so a child never waits behind, or releases, what its parent holds.
    pub held: Arc<HeldKeys>,
}

static PROCESS: Mutex<Option<Arc<Process>>> = Mutex::new(None);

/// This process's id, cached: `getpid` is a system call and the lock's hot paths ask for
/// it several times per acquisition. 0 means "not known": a `pthread_atfork` child handler
/// resets it, so a forked child looks its own pid up on first use.
static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn forget_pid_in_child() {
    // Async-signal-safe: one atomic store.
    PID.store(0, Ordering::Relaxed);
}

/// The current process id (right in a forked child too).
pub fn pid() -> u32 {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let p = PID.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // registered before the first value is cached, so no fork can copy a stale one
    ONCE.call_once(|| {
        // SAFETY: the handler is a plain `extern "C" fn` that only stores to an atomic.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
    });
    let p = std::process::id();
    PID.store(p, Ordering::Relaxed);
    p
}

/// This process's state (a fresh one in a forked child).
pub fn process() -> Arc<Process> {
    let pid = pid();
    let mut slot = PROCESS.lock();
    if let Some(p) = slot.as_ref() {
        if p.pid == pid {
            return p.clone();
        }
        // Forked child: the parent's runtime threads and sockets are not ours. Leak them.
        if let Some(old) = slot.take() {
            std::mem::forget(old);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sessionlock-redis")
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let p = Arc::new(Process {
        pid,
        handle: runtime.handle().clone(),
        runtime: Mutex::new(Some(runtime)),
        conns: Mutex::new(HashMap::new()),
        held: Arc::new(HeldKeys::default()),
    });
    *slot = Some(p.clone());
    p
}

/// Stops this process's runtime; registered with `atexit`. CPython ends any thread that
/// tries to take the GIL once finalization has begun, and a runtime thread completing an
/// asyncio future then (pyo3-async-runtimes' `set_result`) dies inside Rust frames, which
/// aborts the whole process. atexit runs before finalization, so after this no runtime
/// thread is left to try. Tasks still in flight are dropped: leases they held run out.
#[pyfunction]
pub fn _shutdown_runtime(py: Python<'_>) {
    let current = PROCESS.lock().clone();
    let Some(p) = current else { return };
    if p.pid != pid() {
        return; // a forked child that never used Redis: the parent's runtime is not ours
    }
    let runtime = p.runtime.lock().take();
    if let Some(rt) = runtime {
        // Runtime threads may need the GIL to finish what they are doing: let them have it.
        py.detach(move || rt.shutdown_timeout(Duration::from_secs(1)));
    }
}

impl Process {
    /// The connections to `target` (created on first use; no I/O here).
    pub fn conn(&self, target: &Target, connect_timeout: Duration) -> Result<Arc<Conn>> {
        let mut map = self.conns.lock();
        if let Some(c) = map.get(target.url()) {
            return Ok(c.clone());
        }
        let source = Source::new(target, connect_timeout, io_timeout_for(connect_timeout))
            .map_err(|e| Error::Value(target.describe(&e)))?;
        let c = Arc::new(Conn {
            source,
            target: target.clone(),
            connect_timeout,
            pool: Mutex::new(Vec::new()),
            aconn: tokio::sync::Mutex::new(None),
            hub: Hub::default(),
            sync_sub: Mutex::new(None),
            sync_patterns: Mutex::new((Vec::new(), Vec::new())),
            sync_fast_off: AtomicBool::new(false),
            outage: Mutex::new(Outage::default()),
        });
        map.insert(target.url().to_owned(), c.clone());
        Ok(c)
    }
}

/// pyo3-async-runtimes glue: awaitables run on this process's runtime (fork-aware), not on
/// the crate's global one, which cannot be rebuilt in a forked child.
pub struct ForkSafeRuntime;

tokio::task_local! {
    static TASK_LOCALS: std::cell::OnceCell<TaskLocals>;
}

impl GenericRuntime for ForkSafeRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        process().handle.spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        process().handle.spawn_blocking(f)
    }
}

impl ContextExt for ForkSafeRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = std::cell::OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|c| c.get().cloned())
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Connections

/// Outage bookkeeping for the fallback: one warning per outage, probes with backoff.
#[derive(Default)]
pub struct Outage {
    pub down: bool,
    pub next_probe: Option<Instant>,
    pub backoff: Duration,
}

/// How connections to a target are made.
enum Source {
    Single(redis::Client),
    /// The cluster client routes every keyed command to its slot's master and follows
    /// MOVED/ASK/TRYAGAIN itself (with retries). Pub/sub needs no routing: a classic PUBLISH
    /// reaches every node of the cluster, so the one subscription goes to the first seed
    /// node that answers.
    Cluster {
        client: redis::cluster::ClusterClient,
        seeds: Vec<redis::Client>,
    },
    /// The master is looked up from the Sentinels for every new connection, so the
    /// connections made after a failover (the old ones fail and are dropped) go to the
    /// promoted replica.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
        node: redis::ConnectionInfo,
    },
}

impl Source {
    fn new(
        target: &Target,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> redis::RedisResult<Self> {
        Ok(match target.topology() {
            Topology::Single => Source::Single(redis::Client::open(target.url())?),
            Topology::Cluster { nodes } => Source::Cluster {
                client: redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .response_timeout(io_timeout)
                    .build()?,
                seeds: nodes
                    .iter()
                    .map(|n| redis::Client::open(n.as_str()))
                    .collect::<redis::RedisResult<_>>()?,
            },
            Topology::Sentinel {
                sentinels,
                service,
                node,
            } => Source::Sentinel {
                sentinels: sentinels.clone(),
                service: service.clone(),
                node: redis::IntoConnectionInfo::into_connection_info(node.as_str())?,
            },
        })
    }

    fn sentinel_client(
        sentinels: &[String],
        service: &str,
        node: &redis::ConnectionInfo,
    ) -> redis::RedisResult<redis::sentinel::SentinelClient> {
        let mut info = redis::sentinel::SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(node.redis_settings().clone());
        if let redis::ConnectionAddr::TcpTls { insecure, .. } = node.addr() {
            info = info.set_tls_mode(if *insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            });
        }
        redis::sentinel::SentinelClient::build(
            sentinels.iter().map(String::as_str).collect(),
            service,
            Some(info),
            redis::sentinel::SentinelServerType::Master,
        )
    }

    /// A client for one node: the server, the master the Sentinels name now, or a seed
    /// node of the cluster that accepts a connection (for pub/sub).
    fn node_sync(&self, connect_timeout: Duration) -> redis::RedisResult<redis::Client> {
        match self {
            Source::Single(c) => Ok(c.clone()),
            Source::Cluster { seeds, .. } => {
                let mut last = None;
                for seed in seeds {
                    match seed.get_connection_with_timeout(connect_timeout) {
                        Ok(_) => return Ok(seed.clone()),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("a cluster URL has at least one node"))
            }
            Source::Sentinel {
                sentinels,
                service,
                node,
            } => Self::sentinel_client(sentinels, service, node)?.get_client(),
        }
    }

    async fn node_async(&self, connect_timeout: Duration) -> redis::RedisResult<redis::Client> {
        match self {
            Source::Single(c) => Ok(c.clone()),
            Source::Cluster { seeds, .. } => {
                let mut last = None;
                for seed in seeds {
                    let cfg = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(connect_timeout));
                    match seed
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await
                    {
                        Ok(_) => return Ok(seed.clone()),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("a cluster URL has at least one node"))
            }
            Source::Sentinel {
                sentinels,
                service,
                node,
            } => {
                Self::sentinel_client(sentinels, service, node)?
                    .async_get_client()
                    .await
            }
        }
    }
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
    source: Source,
    pub target: Target,
    connect_timeout: Duration,
    /// Idle blocking connections. A connection is taken out while used, so the mutex is
    /// held only for a push/pop, never across I/O.
    pool: Mutex<Vec<SyncConn>>,
    aconn: tokio::sync::Mutex<Option<AConn>>,
    pub hub: Hub,
    /// The thread waiters' fast path (see `wait_sync`): a blocking RESP3 pub/sub
    /// connection that a waiting thread reads itself. The mutex is held by the one thread
    /// reading it (GIL released, no other lock held), never by anyone else for long.
    sync_sub: Mutex<Option<redis::Connection>>,
    /// Patterns the fast path must listen to, and those it already does.
    sync_patterns: Mutex<(Vec<String>, Vec<String>)>,
    /// Set when the fast path could not connect (e.g. no RESP3); cleared after an outage.
    pub sync_fast_off: AtomicBool,
    pub outage: Mutex<Outage>,
}

const MAX_IDLE: usize = 8;

/// How long one command may take before its connection counts as broken.
fn io_timeout_for(connect_timeout: Duration) -> Duration {
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
    pub fn sync<T>(
        &self,
        f: impl FnMut(&mut SyncConn) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        self.sync_until(None, f)
    }

    /// [`Conn::sync`] for a call that is pointless after `until` (a lease deadline): no
    /// retry once it has passed.
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
    pub fn scan_keys(&self, pattern: &str) -> redis::RedisResult<Vec<Vec<u8>>> {
        self.sync(|c| {
            let mut out = Vec::new();
            match c {
                SyncConn::Node(n) => scan_one(|cmd| cmd.query(n), pattern, &mut out)?,
                SyncConn::Cluster(cl) => {
                    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(cl)?;
                    for (host, port) in cluster_masters(&nodes) {
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

/// `(host, port)` of every master that is not failed, from a `CLUSTER NODES` reply.
fn cluster_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (_id, addr, flags) = (f.next()?, f.next()?, f.next()?);
            let is_master = flags.split(',').any(|x| x == "master");
            let failed = flags.split(',').any(|x| x == "fail" || x == "fail?");
            if !is_master || failed {
                return None;
            }
            let hostport = addr.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Hand-off notices

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_from_cluster_nodes() {
        let nodes = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b 127.0.0.1:7001@17001 slave a 0 0 1 connected\n\
                     c 127.0.0.1:7002@17002,host master,fail - 0 0 2 connected\n\
                     d 127.0.0.1:7003@17003 master - 0 0 3 connected 5461-16383\n";
        assert_eq!(
            cluster_masters(nodes),
            vec![("127.0.0.1".into(), 7000), ("127.0.0.1".into(), 7003)]
        );
    }
}
