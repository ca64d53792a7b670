//! Where to connect: a Redis URL (or the `REDIS_*` environment) resolved into one of three
//! deployments — one server, a Redis Cluster given by seed nodes, or the master that a set
//! of Sentinels names — with the password kept out of every string we show.

use std::fmt::Write as _;

use crate::error::{Error, Result};

/// Where to connect, and how to show it. `url` may hold a password: it never leaves this
/// struct except into the redis client; `display` is what logs, reprs and errors use.
#[derive(Clone)]
pub struct Target {
    url: String,
    password: Option<String>,
    pub display: String,
    topology: Topology,
}

/// The three deployments a URL can name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// `redis://`, `rediss://`, `unix://`: `url` itself.
    Single,
    /// `redis+cluster://h1:p1,h2:p2/`: one `redis://` URL per seed node (credentials and TLS
    /// carried into each).
    Cluster { nodes: Vec<String> },
    /// `redis+sentinel://h1:p1,h2:p2/service[/db]`: the Sentinels' URLs, the service name,
    /// and a URL whose credentials, db and TLS mode apply to the master they name.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
        node: String,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The deployment a URL names, from its parts (`scheme://[userinfo@]hosts tail`); the
/// error is why the URL is malformed.
fn topology_of(
    scheme: &str,
    userinfo: Option<&str>,
    hosts: &str,
    tail: &str,
) -> std::result::Result<Topology, &'static str> {
    let node_scheme = if scheme.starts_with("rediss") {
        "rediss"
    } else {
        "redis"
    };
    let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let host_list = || {
        let list: Vec<&str> = hosts.split(',').map(str::trim).collect();
        if list.iter().any(|h| h.is_empty()) {
            return Err("expected host:port[,host:port...]");
        }
        Ok(list)
    };
    Ok(match scheme {
        "redis+cluster" | "rediss+cluster" => {
            if !matches!(tail, "" | "/") && !tail.starts_with('#') && !tail.starts_with("/#") {
                return Err("a cluster URL has no database or path (cluster mode has db 0 only)");
            }
            let frag = tail.trim_start_matches('/');
            let nodes = host_list()?
                .into_iter()
                .map(|h| format!("{node_scheme}://{auth}{h}/{frag}"))
                .collect();
            Topology::Cluster { nodes }
        }
        "redis+sentinel" | "rediss+sentinel" => {
            let path = tail.split(['?', '#']).next().unwrap_or("");
            let frag = &tail[path.len()..];
            let mut parts = path.trim_start_matches('/').split('/');
            let service = parts.next().unwrap_or("");
            let db = parts.next().unwrap_or("0");
            if service.is_empty() || parts.next().is_some() || db.parse::<u32>().is_err() {
                return Err("expected redis+sentinel://host:port[,host:port...]/service_name[/db]");
            }
            // Sentinels themselves are asked without the data nodes' credentials.
            let sentinels = host_list()?
                .into_iter()
                .map(|h| format!("{node_scheme}://{h}{frag}"))
                .collect();
            Topology::Sentinel {
                sentinels,
                service: percent_decode(service),
                node: format!("{node_scheme}://{auth}sentinel-master/{db}{frag}"),
            }
        }
        _ => Topology::Single,
    })
}

impl Target {
    /// `url`, else `REDIS_URL`, else `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`/`REDIS_PASSWORD`,
    /// else `redis://localhost:6379/0`. `env` is passed in so the rule is testable.
    ///
    /// # Errors
    ///
    /// `Error::Value` if `REDIS_PORT` is not a port or `REDIS_DB` not a number (when they
    /// are used), or the URL is malformed, has an unsupported scheme, or the Redis client
    /// refuses it.
    pub fn resolve(url: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let url = match (url, env("REDIS_URL")) {
            (Some(u), _) => u.to_owned(),
            (None, Some(u)) => u,
            (None, None) => {
                let host = env("REDIS_HOST").unwrap_or_else(|| "localhost".into());
                let port = env("REDIS_PORT").unwrap_or_else(|| "6379".into());
                let db = env("REDIS_DB").unwrap_or_else(|| "0".into());
                if port.parse::<u16>().is_err() {
                    return Err(Error::Value(format!("REDIS_PORT is not a port: {port:?}")));
                }
                if db.parse::<u32>().is_err() {
                    return Err(Error::Value(format!("REDIS_DB is not a number: {db:?}")));
                }
                let auth = env("REDIS_PASSWORD")
                    .map(|p| format!(":{}@", percent_encode(&p)))
                    .unwrap_or_default();
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("redis://{auth}{host}:{port}/{db}")
            }
        };
        Self::from_url(url)
    }

    fn from_url(url: String) -> Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::Value(
                "Redis URL must look like redis://[user:password@]host[:port][/db]".into(),
            ));
        };
        if !matches!(
            scheme,
            "redis"
                | "rediss"
                | "unix"
                | "redis+unix"
                | "redis+cluster"
                | "rediss+cluster"
                | "redis+sentinel"
                | "rediss+sentinel"
        ) {
            return Err(Error::Value(format!(
                "unsupported Redis URL scheme {scheme:?} (redis, rediss, unix, redis+cluster, \
                 rediss+cluster, redis+sentinel or rediss+sentinel)"
            )));
        }
        // userinfo is everything before the last '@' of the authority
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (userinfo, hosts) = match rest[..authority_end].rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..authority_end]),
            None => (None, &rest[..authority_end]),
        };
        let tail = &rest[authority_end..];
        let (password, display) = match userinfo {
            Some(userinfo) => {
                let (user, pw) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                let shown = match pw {
                    Some(_) => format!("{user}:***"),
                    None => user.to_owned(),
                };
                (
                    pw.filter(|p| !p.is_empty()).map(percent_decode),
                    format!("{scheme}://{shown}@{hosts}{tail}"),
                )
            }
            None => (None, url.clone()),
        };
        let invalid = |why: &str| Error::Value(format!("invalid Redis URL {display}: {why}"));
        let topology = topology_of(scheme, userinfo, hosts, tail).map_err(&invalid)?;
        // validate now so a bad URL is a ValueError at construction, not an outage later
        let check = |u: &str| {
            redis::Client::open(u)
                .map(|_| ())
                .map_err(|e| invalid(e.category()))
        };
        match &topology {
            Topology::Single => check(&url)?,
            Topology::Cluster { nodes } => nodes.iter().try_for_each(|n| check(n))?,
            Topology::Sentinel {
                sentinels, node, ..
            } => {
                sentinels.iter().try_for_each(|n| check(n))?;
                check(node)?;
            }
        }
        Ok(Target {
            url,
            password,
            display,
            topology,
        })
    }

    /// The URL as given (it may hold a password: only for the redis client).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Identifies the server (the full URL, password included): a map key, never shown.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.url
    }

    /// The deployment this URL names.
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// True for a Redis Cluster URL (where keyless commands would go to every master).
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster { .. })
    }

    /// `msg` with the password (raw or URL-encoded) masked.
    #[must_use]
    pub fn redact(&self, msg: &str) -> String {
        match &self.password {
            Some(p) => msg
                .replace(p.as_str(), "***")
                .replace(&percent_encode(p), "***"),
            None => msg.to_owned(),
        }
    }

    /// Describes a redis error without leaking the password.
    #[must_use]
    pub fn describe(&self, err: &redis::RedisError) -> String {
        self.redact(&format!("{} ({})", err, self.display))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn resolution_order() {
        let t = Target::resolve(
            Some("redis://h:1/2"),
            &env_of(&[("REDIS_URL", "redis://x")]),
        )
        .unwrap();
        assert_eq!(t.display, "redis://h:1/2");
        let t = Target::resolve(None, &env_of(&[("REDIS_URL", "redis://x:5/1")])).unwrap();
        assert_eq!(t.display, "redis://x:5/1");
        let t = Target::resolve(
            None,
            &env_of(&[
                ("REDIS_HOST", "db"),
                ("REDIS_PORT", "7000"),
                ("REDIS_DB", "3"),
                ("REDIS_PASSWORD", "s3:cr@t"),
            ]),
        )
        .unwrap();
        assert_eq!(t.display, "redis://:***@db:7000/3");
        assert!(!t.display.contains("s3"));
        assert_eq!(t.redact("x s3:cr@t y"), "x *** y");
        let t = Target::resolve(None, &env_of(&[])).unwrap();
        assert_eq!(t.display, "redis://localhost:6379/0");
    }

    #[test]
    fn password_hidden_in_display() {
        let t = Target::resolve(Some("rediss://user:hunter2@h:6380/0"), &env_of(&[])).unwrap();
        assert_eq!(t.display, "rediss://user:***@h:6380/0");
        assert!(Target::resolve(Some("http://h"), &env_of(&[])).is_err());
        assert!(Target::resolve(Some("nonsense"), &env_of(&[])).is_err());
    }

    #[test]
    fn cluster_and_sentinel_urls() {
        let t = Target::resolve(
            Some("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001/"),
            &env_of(&[]),
        )
        .unwrap();
        assert_eq!(
            t.display,
            "redis+cluster://u:***@10.0.0.1:7000,10.0.0.2:7001/"
        );
        assert_eq!(
            t.topology,
            Topology::Cluster {
                nodes: vec![
                    "redis://u:pw@10.0.0.1:7000/".into(),
                    "redis://u:pw@10.0.0.2:7001/".into()
                ]
            }
        );
        assert!(t.is_cluster());
        let t = Target::resolve(
            Some("rediss+sentinel://:pw@s1:26379,s2:26379/mymaster/2"),
            &env_of(&[]),
        )
        .unwrap();
        assert_eq!(
            t.display,
            "rediss+sentinel://:***@s1:26379,s2:26379/mymaster/2"
        );
        assert_eq!(
            t.topology,
            Topology::Sentinel {
                sentinels: vec!["rediss://s1:26379".into(), "rediss://s2:26379".into()],
                service: "mymaster".into(),
                node: "rediss://:pw@sentinel-master/2".into(),
            }
        );
        for bad in [
            "redis+cluster://h:1/3",
            "redis+cluster://h:1,/",
            "redis+sentinel://h:1/",
            "redis+sentinel://h:1/svc/db",
            "redis+sentinel://h:1/svc/0/x",
        ] {
            assert!(Target::resolve(Some(bad), &env_of(&[])).is_err(), "{bad}");
        }
    }

    #[test]
    fn encoding_roundtrip() {
        assert_eq!(percent_decode(&percent_encode("a:b@c/d%")), "a:b@c/d%");
    }
}
