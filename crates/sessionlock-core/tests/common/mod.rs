//! Support shared by the core's integration tests: a private `redis-server` on a free
//! loopback port (persistence off), killed on drop.
//!
//! Without `redis-server` on PATH, `Server::start` prints why and returns `None` (the test
//! passes), unless `SESSIONLOCK_REQUIRE_REDIS=1` (set by `make test`, so CI cannot skip).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private redis-server, killed (SIGKILL) on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub fn start() -> Option<Server> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("SESSIONLOCK_REQUIRE_REDIS").is_none(),
                "redis-server is not installed (make deps installs it)"
            );
            eprintln!("redis-server not found: skipped");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = Server { child, port };
        let until = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(server.url()).expect("a valid URL");
        loop {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Some(server);
                }
            }
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on (bound, then closed again).
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
