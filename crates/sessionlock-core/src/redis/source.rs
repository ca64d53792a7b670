//! How connections to a target are made: one server, a Redis Cluster given by seed nodes,
//! or the master a set of Sentinels names.

use std::time::Duration;

use crate::redis::target::Topology;

use super::target::Target;

/// How connections to a target are made.
pub(super) enum Source {
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
    pub(super) fn new(
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
    pub(super) fn node_sync(&self, connect_timeout: Duration) -> redis::RedisResult<redis::Client> {
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

    pub(super) async fn node_async(
        &self,
        connect_timeout: Duration,
    ) -> redis::RedisResult<redis::Client> {
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
