//! HAProxy in front of several copies of a server (two Nexus), as a child process.
//!
//! [`Haproxy::start`] writes a configuration for a list of [`Frontend`]s, each an address that
//! spreads connections round-robin over its backends, and runs `haproxy -f <config> -db` (in
//! the foreground, as a child of this process). It is stopped when dropped, and by a watchdog
//! if this process dies first.
//!
//! What makes a dead backend invisible to clients:
//!
//! * **fast health checks**: every 500 ms (`inter 500ms`), down after two failures
//!   (`fall 2`), up again after one success (`rise 1`); [`HealthCheck::Http`] asks for a path
//!   and wants a 2xx or 3xx, [`HealthCheck::Tcp`] only connects;
//! * **retries on another backend**: a connection to a backend that fails (refused, or no
//!   answer within `timeout connect`, 1 s) is tried again up to `retries 3` times, each on
//!   another backend (`option redispatch 1`), so requests sent before the checks noticed the
//!   death still succeed. Only a failed *connection* is retried (HAProxy's default
//!   `retry-on conn-failure`): a request that reached a backend which then died is not sent
//!   again, since it may have had its effect (an instance create), and its client sees the
//!   error.
//!
//! [`ProxyMode::Http`] parses HTTP (WebSocket upgrades become tunnels, `timeout tunnel 1h`);
//! [`ProxyMode::Tcp`] passes bytes through, e.g. TLS whose ends (mutual TLS between sled
//! agents and Nexus) must stay end to end.

use crate::patroni::find_program;
use crate::{ClusterError, spawn_watchdog_script};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How HAProxy handles a frontend's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// HTTP/1.1 (and WebSocket upgrades), parsed.
    Http,
    /// TCP passed through untouched (TLS stays end to end).
    Tcp,
}

/// How HAProxy decides a backend is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// It accepts a TCP connection.
    Tcp,
    /// `GET <path>` answers 2xx or 3xx (over plain HTTP).
    Http { path: String },
}

/// One listening address and the servers behind it.
#[derive(Debug, Clone)]
pub struct Frontend {
    /// Names the frontend and its backend in the configuration and HAProxy's messages
    /// (letters, digits, `-`, `_`).
    pub name: String,
    pub listen: SocketAddr,
    pub mode: ProxyMode,
    pub check: HealthCheck,
    pub backends: Vec<SocketAddr>,
}

/// A running `haproxy -db`; see the module's documentation.
#[derive(Debug)]
pub struct Haproxy {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    watchdog: Option<u32>,
}

impl Haproxy {
    /// The configuration [`Haproxy::start`] writes for `frontends`.
    pub fn config(frontends: &[Frontend]) -> String {
        let mut config = String::from(
            "\
global
    maxconn 4096

defaults
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout check 1s
    retries 3
    option redispatch 1
",
        );
        for frontend in frontends {
            let name = &frontend.name;
            let mode = match frontend.mode {
                ProxyMode::Http => "http",
                ProxyMode::Tcp => "tcp",
            };
            let _ = write!(
                config,
                "
frontend {name}
    mode {mode}
    bind {}
    default_backend {name}

backend {name}
    mode {mode}
    balance roundrobin
",
                frontend.listen
            );
            if let HealthCheck::Http { path } = &frontend.check {
                let _ = writeln!(config, "    option httpchk GET {path}");
            }
            config.push_str("    default-server check inter 500ms fall 2 rise 1\n");
            for (i, backend) in frontend.backends.iter().enumerate() {
                let _ = writeln!(config, "    server {name}-{i} {backend}");
            }
        }
        config
    }

    /// Writes `dir/haproxy.cfg` for `frontends`, checks it (`haproxy -c`), starts
    /// `haproxy -f dir/haproxy.cfg -db` (its output in `dir/haproxy.log`) and waits until
    /// every frontend accepts connections.
    pub fn start(dir: &Path, frontends: &[Frontend]) -> Result<Haproxy, ClusterError> {
        let haproxy = find_program("haproxy", "haproxy")?;
        fs::create_dir_all(dir)
            .map_err(|e| ClusterError::io(format!("creating {}", dir.display()), e))?;
        let config = dir.join("haproxy.cfg");
        fs::write(&config, Self::config(frontends))
            .map_err(|e| ClusterError::io(format!("writing {}", config.display()), e))?;
        crate::Argv::new(&haproxy)
            .args(["-c", "-q", "-f"])
            .arg(&config)
            .run()?;

        let log = dir.join("haproxy.log");
        let file = File::create(&log)
            .map_err(|e| ClusterError::io(format!("creating {}", log.display()), e))?;
        let file2 = file
            .try_clone()
            .map_err(|e| ClusterError::io(format!("opening {}", log.display()), e))?;
        let child = Command::new(&haproxy)
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .current_dir("/")
            .spawn()
            .map_err(|e| ClusterError::io(format!("starting {}", haproxy.display()), e))?;
        let kill = format!("kill -9 {} 2>/dev/null", child.id());
        let mut proxy = Haproxy {
            child: Some(child),
            config,
            log,
            watchdog: None,
        };
        proxy.watchdog = Some(spawn_watchdog_script(
            std::process::id(),
            kill.as_bytes(),
            None,
        )?);

        let deadline = Instant::now() + Duration::from_secs(10);
        for frontend in frontends {
            while TcpStream::connect_timeout(&frontend.listen, Duration::from_millis(200)).is_err()
            {
                let exited = proxy
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten());
                if exited.is_some() || Instant::now() > deadline {
                    let tail = crate::log_tail(&proxy.log).unwrap_or_default();
                    return Err(ClusterError::io(
                        format!(
                            "HAProxy does not listen on {} ({}); end of {}:\n{tail}",
                            frontend.listen,
                            match exited {
                                Some(status) => format!("it exited: {status}"),
                                None => "after 10 s".to_string(),
                            },
                            proxy.log.display()
                        ),
                        std::io::Error::from(std::io::ErrorKind::TimedOut),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(proxy)
    }

    /// The configuration file it runs.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Its output (backends going down and up are reported there).
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(pid) = self.watchdog.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Some(mut child) = self.child.take() {
            // SIGTERM: a hard stop, open connections closed.
            // SAFETY: as above.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ReservedPort, http, reserve_port};
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;

    /// A tiny HTTP server that answers every request with 200 and its name, until stopped
    /// (then its port refuses connections, as a dead Nexus's would).
    struct Responder {
        address: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
        _port: ReservedPort,
    }

    impl Responder {
        fn start(name: &'static str) -> Responder {
            let port = reserve_port().unwrap();
            let listener = TcpListener::bind(port.address()).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(mut stream) = stream else { continue };
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut request = Vec::new();
                        let mut buf = [0; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                            name.len()
                        );
                    }
                })
            };
            Responder {
                address: port.address(),
                stop,
                thread: Some(thread),
                _port: port,
            }
        }

        /// Closes its listening socket: connections are refused from now on.
        fn stop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.address);
            if let Some(thread) = self.thread.take() {
                thread.join().unwrap();
            }
        }
    }

    impl Drop for Responder {
        fn drop(&mut self) {
            self.stop();
        }
    }

    /// One request through HAProxy: which responder answered, or why it failed.
    fn ask(frontend: SocketAddr) -> Result<String, String> {
        match http::get(frontend, "/v1/projects", Duration::from_secs(5)) {
            Ok((200, body)) => Ok(body),
            Ok((status, body)) => Err(format!("{status}: {body}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Two servers behind HAProxy, reached over an HTTP frontend (HTTP health checks) and a
    /// TCP one (TCP checks); one dies, and no request through either frontend fails, also
    /// those sent before the health checks noticed. (Without `option redispatch` the first
    /// request to the dead one fails.)
    #[test]
    fn requests_still_succeed_when_one_backend_dies() {
        let a = Responder::start("a");
        let mut b = Responder::start("b");
        let http_port = reserve_port().unwrap();
        let tcp_port = reserve_port().unwrap();
        let frontends = [
            Frontend {
                name: "http".into(),
                listen: http_port.address(),
                mode: ProxyMode::Http,
                check: HealthCheck::Http {
                    path: "/v1/ping".into(),
                },
                backends: vec![a.address, b.address],
            },
            Frontend {
                name: "tcp".into(),
                listen: tcp_port.address(),
                mode: ProxyMode::Tcp,
                check: HealthCheck::Tcp,
                backends: vec![a.address, b.address],
            },
        ];
        let dir = RemoveOnDrop(crate::fresh_temp_root("haproxy").unwrap());
        let proxy = Haproxy::start(&dir.0, &frontends).unwrap_or_else(|e| panic!("{e}"));
        let config = fs::read_to_string(proxy.config_path()).unwrap();
        assert!(config.contains("option httpchk GET /v1/ping"), "{config}");

        // Both are used (round robin), through both frontends.
        for frontend in &frontends {
            let mut answers: Vec<String> = (0..6).map(|_| ask(frontend.listen).unwrap()).collect();
            answers.sort();
            answers.dedup();
            assert_eq!(answers, ["a", "b"], "frontend {}", frontend.name);
        }

        // b dies; ask at once, before any health check can have run, then for two seconds.
        b.stop();
        let died = Instant::now();
        let mut sent = 0;
        let mut failures = Vec::new();
        while died.elapsed() < Duration::from_secs(2) {
            for frontend in &frontends {
                sent += 1;
                match ask(frontend.listen) {
                    Ok(body) => assert_eq!(body, "a"),
                    Err(e) => {
                        failures.push(format!("{} after {:?}: {e}", frontend.name, died.elapsed()))
                    }
                }
            }
        }
        println!("{sent} requests after b died, {} failed", failures.len());
        assert!(failures.is_empty(), "{failures:#?}");
        let log = fs::read_to_string(proxy.log_path()).unwrap_or_default();
        println!("HAProxy's log:\n{log}");
        drop(proxy);
        assert!(
            TcpStream::connect(http_port.address()).is_err(),
            "HAProxy still listens after the drop"
        );
        drop(a);
    }

    /// Removes its directory when dropped, also when the test fails.
    struct RemoveOnDrop(PathBuf);

    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
