//! A replicated PostgreSQL: three members under Patroni, with one etcd as Patroni's
//! consensus store, all on 127.0.0.1. For tests that kill the primary and for the development
//! environment's `--replicated-db`.
//!
//! # Why synchronous replication
//!
//! Nexus records each saga step in the database before it acts on it, and steno's recovery
//! replays a saga from what the log holds. A saga event whose commit was acknowledged must
//! therefore survive the loss of the primary: if a failover promoted a standby that had not
//! yet received it, a new Nexus would replay the saga from an older point and redo (or, worse,
//! undo) a step the world already saw. So the cluster runs with Patroni's
//! `synchronous_mode: true`: Patroni names one standby in `synchronous_standby_names`, a
//! commit (`synchronous_commit` stays `on`) returns only once that standby has flushed its WAL,
//! and on a failure Patroni promotes only the member that was the synchronous standby (it is
//! recorded in the `/sync` key in etcd), never one that may lack acknowledged commits.
//!
//! `synchronous_mode_strict` is left **off**. Strict mode would make the primary refuse
//! commits while no standby is left, so that every acknowledged commit is always on two
//! members. Non-strict, when the last standby goes, Patroni empties `synchronous_standby_names`
//! and the primary goes on alone; its commits are then on one member only, but Patroni still
//! promotes nobody who was not the synchronous standby, so such a commit is lost only with the
//! primary's disk, not by a failover. With three members that state needs two of them down at
//! once; we prefer a database that keeps working then (a development environment, tests that
//! kill one member) to one that stops taking writes.
//!
//! # Timing
//!
//! `ttl: 10`, `loop_wait: 1`, `retry_timeout: 4` (Patroni's rule of thumb,
//! `loop_wait + 2 * retry_timeout <= ttl`, holds): when the primary's whole member dies (its
//! Patroni too, so the leader key is not released) a standby takes over once the leader key's
//! lease expires, within about `ttl` seconds.
//!
//! # Processes and users
//!
//! etcd and each Patroni are children of this process, each in its own process group. Patroni
//! starts PostgreSQL in a session of its own (through a helper process that calls `setsid`
//! and then runs the postmaster, so the postmaster leads no group: its group is the helper's),
//! so that PostgreSQL outlives a Patroni crash; [`PatroniCluster::kill_primary`] therefore
//! kills both the Patroni process group and the postmaster's (the postmaster's pid read from
//! `postmaster.pid`, its group from the kernel). PostgreSQL refuses to run as root: when root,
//! Patroni runs as the `postgres` user (the member directories belong to it), and so do the
//! `initdb`, `pg_basebackup` and PostgreSQL it starts.
//!
//! Patroni 3.0 talks to etcd 3.4 through the `etcd3:` configuration section (etcd's v3 gRPC
//! gateway); the `etcd:` section would need etcd's v2 API, which etcd 3.4 serves only with
//! `--enable-v2`.

use crate::{
    ClusterError, LISTEN_ADDRESS, ReservedPort, SUPERUSER, ServerUser, absolute, http,
    pg_ctl_stop_immediate_words, postgres_bin_dir, prepare_dir, psql_argv, reserve_port,
    server_user, shell_quote, spawn_watchdog_script,
};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How many PostgreSQL members the cluster has.
pub const MEMBERS: usize = 3;

/// How long the cluster may take to come up (initdb, two base backups, streaming).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a failover may take before [`PatroniCluster::wait_for_new_primary`] gives up.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each Patroni may take to stop its PostgreSQL on a graceful stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one question to a REST API may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(100);

/// One member's ports on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberPorts {
    pub postgres: u16,
    /// Patroni's REST API.
    pub rest_api: u16,
}

/// Every port the cluster listens on (all on 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatroniPorts {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub members: [MemberPorts; MEMBERS],
}

impl PatroniPorts {
    /// Eight consecutive ports from `first`: each member's PostgreSQL (`first`, `first + 1`,
    /// `first + 2`), then their REST APIs, then etcd's client and peer ports.
    pub fn consecutive(first: u16) -> PatroniPorts {
        let n = MEMBERS as u16;
        PatroniPorts {
            members: std::array::from_fn(|i| MemberPorts {
                postgres: first + i as u16,
                rest_api: first + n + i as u16,
            }),
            etcd_client: first + 2 * n,
            etcd_peer: first + 2 * n + 1,
        }
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    /// Owned by the server user: Patroni's configuration, log, pgpass, and `data/`.
    dir: PathBuf,
    ports: MemberPorts,
    patroni: Option<Child>,
}

impl Member {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn rest_api(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.rest_api))
    }

    fn is_running(&self) -> bool {
        self.patroni.is_some()
    }

    /// The postmaster's pid, from the first line of `postmaster.pid`.
    fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// Three PostgreSQL members under Patroni with one etcd; see the module's documentation.
///
/// Members are numbered `0..MEMBERS`. Dropping the cluster stops everything: a private one
/// ([`PatroniCluster::start_private`]) is killed and its directory removed, a long-lived one
/// ([`PatroniCluster::start`]) is stopped gracefully and its data kept. A watchdog does the
/// killing (and, for a private cluster, the removing) if this process dies first.
#[derive(Debug)]
pub struct PatroniCluster {
    dir: PathBuf,
    bin_dir: PathBuf,
    user: Option<ServerUser>,
    ports: PatroniPorts,
    etcd: Option<Child>,
    members: Vec<Member>,
    /// When each member was killed by [`PatroniCluster::kill_member`].
    killed_at: [Option<Instant>; MEMBERS],
    private: bool,
    watchdog: Option<u32>,
    _reservations: Vec<ReservedPort>,
}

impl PatroniCluster {
    /// Starts (or restarts: the data in `dir` is kept) a durable cluster (fsync on) on `ports`,
    /// and waits until it has a primary and every standby streams, one synchronously. Dropping
    /// it stops it gracefully.
    pub fn start(dir: &Path, ports: PatroniPorts) -> Result<PatroniCluster, ClusterError> {
        Self::start_in(absolute(dir)?, ports, false, Vec::new())
    }

    /// Starts a throwaway cluster in a fresh `$TMPDIR/halyard-test-pg-patroni-...` on reserved
    /// ports, fsync off (a killed process loses nothing it committed; only a host crash
    /// would). Dropping it kills it and removes its directory.
    pub fn start_private() -> Result<PatroniCluster, ClusterError> {
        // What would fail before the cluster exists to clean up after itself.
        postgres_bin_dir()?;
        server_user()?;
        find_program("patroni", "patroni")?;
        find_program("etcd", "etcd-server")?;
        let reservations = (0..2 + 2 * MEMBERS)
            .map(|_| reserve_port())
            .collect::<Result<Vec<_>, _>>()?;
        let port = |i: usize| reservations[i].port();
        let ports = PatroniPorts {
            etcd_client: port(0),
            etcd_peer: port(1),
            members: std::array::from_fn(|i| MemberPorts {
                postgres: port(2 + 2 * i),
                rest_api: port(3 + 2 * i),
            }),
        };
        let root = crate::fresh_temp_root("patroni")?;
        Self::start_in(root, ports, true, reservations)
    }

    fn start_in(
        dir: PathBuf,
        ports: PatroniPorts,
        private: bool,
        reservations: Vec<ReservedPort>,
    ) -> Result<PatroniCluster, ClusterError> {
        let bin_dir = postgres_bin_dir()?;
        let user = server_user()?;
        let patroni = find_program("patroni", "patroni")?;
        let etcd = find_program("etcd", "etcd-server")?;
        fs::create_dir_all(&dir)
            .map_err(|e| ClusterError::io(format!("creating {}", dir.display()), e))?;
        let members = (0..MEMBERS)
            .map(|i| Member {
                name: format!("member-{i}"),
                dir: dir.join(format!("member-{i}")),
                ports: ports.members[i],
                patroni: None,
            })
            .collect();
        let mut cluster = PatroniCluster {
            dir,
            bin_dir,
            user,
            ports,
            etcd: None,
            members,
            killed_at: [None; MEMBERS],
            private,
            watchdog: None,
            _reservations: reservations,
        };
        // From here on, dropping `cluster` (on an error too) stops what was started.
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        cluster.start_etcd(&etcd)?;
        for i in 0..MEMBERS {
            cluster.start_member(i, &patroni)?;
        }
        cluster.wait_until_replicated(START_TIMEOUT)?;
        Ok(cluster)
    }

    /// The watchdog: once this process is gone, kill every process group whose leader's pid
    /// is in `run/*.pid` (etcd, each Patroni), stop each member's PostgreSQL, and for a
    /// private cluster remove the directory. (`kill -9 -<pgid>`, without `--`: dash's `kill`,
    /// Debian's `sh`, refuses `--`.)
    fn spawn_watchdog(&self) -> Result<u32, ClusterError> {
        let run = self.dir.join("run");
        let _ = fs::remove_dir_all(&run);
        fs::create_dir_all(&run)
            .map_err(|e| ClusterError::io(format!("creating {}", run.display()), e))?;
        let mut script = b"for f in ".to_vec();
        script.extend(shell_quote(run.as_os_str()));
        script.extend(b"/*.pid; do [ -f \"$f\" ] && kill -9 \"-$(cat \"$f\")\"; done 2>/dev/null");
        for member in &self.members {
            script.extend(b"; ");
            script.extend(pg_ctl_stop_immediate_words(
                &self.bin_dir,
                &member.data_dir(),
                self.user,
            ));
            script.extend(b" >/dev/null 2>&1");
        }
        spawn_watchdog_script(
            std::process::id(),
            &script,
            self.private.then_some(self.dir.as_path()),
        )
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join("run").join(format!("{name}.pid"))
    }

    fn start_etcd(&mut self, etcd: &Path) -> Result<(), ClusterError> {
        let data = self.dir.join("etcd");
        let log = self.dir.join("etcd.log");
        let client = format!("http://{LISTEN_ADDRESS}:{}", self.ports.etcd_client);
        let peer = format!("http://{LISTEN_ADDRESS}:{}", self.ports.etcd_peer);
        let mut command = Command::new(etcd);
        if cfg!(target_arch = "aarch64") {
            // etcd 3.4 refuses to start on arm64 unless told it may.
            command.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        command
            .arg("--name=halyard")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=halyard={peer}"))
            .arg("--initial-cluster-state=new")
            .arg(format!(
                "--initial-cluster-token=halyard-{}",
                std::process::id()
            ));
        let child = spawn_logged(command, &log, None)?;
        write_pid(&self.pid_file("etcd"), child.id())?;
        self.etcd = Some(child);
        let health = SocketAddr::from(([127, 0, 0, 1], self.ports.etcd_client));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http::get(health, "/health", HTTP_TIMEOUT) {
                return Ok(());
            }
            if let Some(etcd) = &mut self.etcd
                && let Ok(Some(status)) = etcd.try_wait()
            {
                return Err(timeout_error(
                    format!("etcd exited ({status})"),
                    &[("etcd.log", &log)],
                ));
            }
            if Instant::now() > deadline {
                return Err(timeout_error(
                    "etcd did not become healthy within 30 s",
                    &[("etcd.log", &log)],
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    fn start_member(&mut self, i: usize, patroni: &Path) -> Result<(), ClusterError> {
        let member = &self.members[i];
        prepare_dir(&member.dir, self.user)?;
        let config = member.dir.join("patroni.yml");
        fs::write(&config, self.patroni_config(member))
            .map_err(|e| ClusterError::io(format!("writing {}", config.display()), e))?;
        if let Some(user) = self.user {
            std::os::unix::fs::chown(&config, Some(user.uid), Some(user.gid))
                .map_err(|e| ClusterError::io(format!("chown {}", config.display()), e))?;
        }
        let mut command = Command::new(patroni);
        command.arg(&config).env("HOME", &member.dir);
        let child = spawn_logged(command, &member.dir.join("patroni.log"), self.user)?;
        write_pid(&self.pid_file(&member.name), child.id())?;
        self.members[i].patroni = Some(child);
        self.killed_at[i] = None;
        Ok(())
    }

    fn patroni_config(&self, member: &Member) -> String {
        let dir = member.dir.display().to_string();
        let mut local_parameters = format!(
            "    unix_socket_directories: {}\n    logging_collector: 'on'\n    log_directory: log\n",
            yaml_quote(&dir)
        );
        if self.private {
            local_parameters.push_str("    fsync: 'off'\n");
        }
        let mut config = String::new();
        let _ = write!(
            config,
            "\
scope: halyard
namespace: /halyard/
name: {name}
log:
  level: INFO
restapi:
  listen: {LISTEN_ADDRESS}:{rest}
  connect_address: {LISTEN_ADDRESS}:{rest}
etcd3:
  hosts: {LISTEN_ADDRESS}:{etcd}
watchdog:
  mode: 'off'
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    synchronous_mode_strict: false
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 400
        max_wal_senders: 10
        max_replication_slots: 10
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        wal_keep_size: 128MB
        synchronous_commit: 'on'
  initdb:
  - encoding: UTF8
  - no-locale
  - auth: trust
postgresql:
  listen: {LISTEN_ADDRESS}:{pg}
  connect_address: {LISTEN_ADDRESS}:{pg}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: {SUPERUSER}
    replication:
      username: {SUPERUSER}
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
  basebackup:
  - checkpoint: fast
  parameters:
{local_parameters}",
            name = member.name,
            rest = member.ports.rest_api,
            etcd = self.ports.etcd_client,
            pg = member.ports.postgres,
            data = yaml_quote(&member.data_dir().display().to_string()),
            bin = yaml_quote(&self.bin_dir.display().to_string()),
            pgpass = yaml_quote(&member.dir.join("pgpass").display().to_string()),
        );
        config
    }

    /// Waits until there is a primary, every other running member streams from it, and one
    /// of them is its synchronous standby.
    fn wait_until_replicated(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let standbys = self.members.iter().filter(|m| m.is_running()).count() - 1;
        let sql = "SELECT count(*) FILTER (WHERE state = 'streaming') || ' ' || \
                   count(*) FILTER (WHERE state = 'streaming' AND sync_state = 'sync') \
                   FROM pg_stat_replication";
        let mut last = String::from("no primary yet");
        loop {
            if let Ok(primary) = self.primary() {
                match self.psql_on(primary, "postgres", sql) {
                    Ok(out) => {
                        let counts: Vec<usize> = out
                            .split_whitespace()
                            .filter_map(|n| n.parse().ok())
                            .collect();
                        if counts.len() == 2 && counts[0] >= standbys && counts[1] >= 1 {
                            return Ok(());
                        }
                        last = format!(
                            "primary {}: streaming, synchronous standbys: {}",
                            self.members[primary].name,
                            out.trim()
                        );
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() > deadline {
                return Err(self.timeout_with_logs(format!(
                    "the Patroni cluster did not replicate within {} s (last: {last})",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn timeout_with_logs(&self, what: String) -> ClusterError {
        let logs: Vec<(String, PathBuf)> = self
            .members
            .iter()
            .map(|m| (format!("{} patroni.log", m.name), m.dir.join("patroni.log")))
            .chain([("etcd.log".to_string(), self.dir.join("etcd.log"))])
            .collect();
        let logs: Vec<(&str, &Path)> = logs
            .iter()
            .map(|(name, path)| (name.as_str(), path.as_path()))
            .collect();
        timeout_error(what, &logs)
    }

    /// The running member that is the primary, by asking each Patroni's REST API
    /// (`GET /primary`: 200 only on the leader whose PostgreSQL runs read-write).
    pub fn primary(&self) -> Result<usize, ClusterError> {
        self.members
            .iter()
            .position(|m| {
                m.is_running()
                    && matches!(
                        http::get(m.rest_api(), "/primary", HTTP_TIMEOUT),
                        Ok((200, _))
                    )
            })
            .ok_or_else(|| {
                ClusterError::io(
                    "finding the primary",
                    io::Error::other("no member is the primary"),
                )
            })
    }

    /// Member `i`'s name (`member-<i>`, as Patroni and `patronictl` know it).
    pub fn member_name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Member `i`'s PostgreSQL port.
    pub fn postgres_port(&self, i: usize) -> u16 {
        self.members[i].ports.postgres
    }

    /// Every port the cluster listens on.
    pub fn ports(&self) -> PatroniPorts {
        self.ports
    }

    /// The cluster's directory (a member's files are in `member-<i>/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A libpq URL naming every member, that connects to whichever is the primary:
    /// `postgresql://postgres@127.0.0.1:<p0>,127.0.0.1:<p1>,127.0.0.1:<p2>/<database>?target_session_attrs=read-write`.
    /// libpq and tokio-postgres try the hosts in turn and keep the first that accepts
    /// writes (a standby answers `transaction_read_only = on`; a dead member refuses).
    pub fn url(&self, database: &str) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{LISTEN_ADDRESS}:{}", m.ports.postgres))
            .collect();
        format!(
            "postgresql://{SUPERUSER}@{}/{database}?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    fn psql_on(&self, i: usize, database: &str, sql: &str) -> Result<String, ClusterError> {
        psql_argv(&self.bin_dir, self.members[i].ports.postgres, database)
            .arg("-c")
            .arg(sql)
            .run()
    }

    /// Runs `sql` in `database` on the current primary; psql's unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        self.psql_on(self.primary()?, database, sql)
    }

    /// Runs the SQL file at `path` in `database` on the current primary, stopping at the
    /// first error.
    pub fn psql_file(&self, database: &str, path: &Path) -> Result<(), ClusterError> {
        let path = absolute(path)?;
        psql_argv(
            &self.bin_dir,
            self.members[self.primary()?].ports.postgres,
            database,
        )
        .arg("-f")
        .arg(path)
        .run()
        .map(drop)
    }

    /// Creates `database` on the primary unless it exists; returns its [`url`](Self::url).
    pub fn create_database(&self, database: &str) -> Result<String, ClusterError> {
        let exists = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{database}'"),
        )?;
        if exists.trim().is_empty() {
            self.psql("postgres", &format!("CREATE DATABASE \"{database}\""))?;
        }
        Ok(self.url(database))
    }

    /// Kills the primary's whole member with SIGKILL (its Patroni and its PostgreSQL, so no
    /// leader key is handed over: a standby takes over once it expires); returns the member.
    pub fn kill_primary(&mut self) -> Result<usize, ClusterError> {
        let primary = self.primary()?;
        self.kill_member(primary)?;
        Ok(primary)
    }

    /// Kills member `i` with SIGKILL: its Patroni's process group, then its postmaster's
    /// (PostgreSQL's backends, WAL sender and receiver).
    pub fn kill_member(&mut self, i: usize) -> Result<(), ClusterError> {
        let postmaster = self.members[i].postmaster_pid();
        let Some(mut patroni) = self.members[i].patroni.take() else {
            return Ok(());
        };
        kill_group(patroni.id() as i32, libc::SIGKILL);
        let _ = patroni.wait();
        if let Some(pid) = postmaster {
            // SAFETY: getpgid and getpgrp have no memory-safety preconditions.
            let (group, ours) = unsafe { (libc::getpgid(pid), libc::getpgrp()) };
            // Its session's group holds only PostgreSQL's processes; never signal ours.
            if group > 1 && group != ours {
                kill_group(group, libc::SIGKILL);
            }
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.killed_at[i] = Some(Instant::now());
        let _ = fs::remove_file(self.pid_file(&self.members[i].name));
        Ok(())
    }

    /// Waits until a running member other than `old` is the primary; returns it and the time
    /// since `old` was killed (or since this call, if it was not killed here). Only the
    /// leader's role is waited for; connect to [`url`](Self::url) to find it.
    pub fn wait_for_new_primary(&self, old: usize) -> Result<(usize, Duration), ClusterError> {
        let start = self.killed_at[old].unwrap_or_else(Instant::now);
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if i != old
                    && member.is_running()
                    && matches!(
                        http::get(member.rest_api(), "/primary", HTTP_TIMEOUT),
                        Ok((200, _))
                    )
                {
                    return Ok((i, start.elapsed()));
                }
            }
            if Instant::now() > deadline {
                return Err(self.timeout_with_logs(format!(
                    "no new primary within {} s of losing {}",
                    FAILOVER_TIMEOUT.as_secs(),
                    self.members[old].name
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops the cluster: a private one is killed (nothing in it is kept), a long-lived one
    /// stopped gracefully, its standbys first (so that stopping the primary makes no
    /// failover), then the primary, then etcd.
    fn shutdown(&mut self) {
        if self.private {
            for member in &mut self.members {
                if let Some(mut patroni) = member.patroni.take() {
                    kill_group(patroni.id() as i32, libc::SIGKILL);
                    let _ = patroni.wait();
                }
            }
        } else {
            let primary = self.primary().ok();
            let standbys: Vec<usize> = (0..MEMBERS).filter(|i| Some(*i) != primary).collect();
            self.stop_members(&standbys);
            self.stop_members(&primary.into_iter().collect::<Vec<_>>());
        }
        for member in &self.members {
            let _ = crate::Argv::as_user(self.user, &self.bin_dir.join("pg_ctl"))
                .arg("-w")
                .arg("-D")
                .arg(member.data_dir())
                .args(["-m", "immediate", "stop"])
                .run();
        }
        if let Some(mut etcd) = self.etcd.take() {
            let signal = if self.private {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            };
            kill_group(etcd.id() as i32, signal);
            let _ = etcd.wait();
        }
        let _ = fs::remove_dir_all(self.dir.join("run"));
    }

    /// SIGTERM to each member's Patroni (which stops its PostgreSQL, fast), waiting for all;
    /// SIGKILL after [`STOP_TIMEOUT`].
    fn stop_members(&mut self, members: &[usize]) {
        let mut children: Vec<Child> = members
            .iter()
            .filter_map(|i| self.members[*i].patroni.take())
            .collect();
        for child in &children {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !children.is_empty() {
            children.retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_)) | Err(_)));
            if Instant::now() > deadline {
                for child in &mut children {
                    kill_group(child.id() as i32, libc::SIGKILL);
                    let _ = child.wait();
                }
                break;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Ours to do now; a watchdog left waiting could otherwise kill a later run's processes
        // (a long-lived cluster's pid files are in the same place).
        if let Some(pid) = self.watchdog.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        self.shutdown();
        if self.private {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends `signal` to process group `pgid` (and to the process itself, in case it leads no
/// group).
fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, signal);
        libc::kill(pgid, signal);
    }
}

/// Spawns `command` in a process group of its own, stdout and stderr appended to `log`, as
/// `user` when given.
fn spawn_logged(
    mut command: Command,
    log: &Path,
    user: Option<ServerUser>,
) -> Result<Child, ClusterError> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| ClusterError::io(format!("opening {}", log.display()), e))?;
    let file2 = file
        .try_clone()
        .map_err(|e| ClusterError::io(format!("opening {}", log.display()), e))?;
    for var in crate::SCRUBBED_ENV {
        command.env_remove(var);
    }
    command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(file2)
        .current_dir("/")
        .process_group(0);
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
    }
    command
        .spawn()
        .map_err(|e| ClusterError::io(format!("starting {:?}", command.get_program()), e))
}

fn write_pid(path: &Path, pid: u32) -> Result<(), ClusterError> {
    fs::write(path, pid.to_string())
        .map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))
}

/// `program` on `PATH`, or in `/usr/sbin` or `/usr/bin`; else an error that names the Debian
/// package to install.
pub(crate) fn find_program(program: &str, package: &str) -> Result<PathBuf, ClusterError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| ClusterError::MissingProgram {
            program: program.to_string(),
            package: package.to_string(),
        })
}

/// A single-quoted YAML scalar.
fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// An error for something that did not happen in time, quoting the ends of `logs`.
fn timeout_error(what: impl Into<String>, logs: &[(&str, &Path)]) -> ClusterError {
    let mut message = what.into();
    for (name, path) in logs {
        if let Some(tail) = crate::log_tail(path) {
            let _ = write!(message, "\n--- end of {name} ---\n{}", tail.trim_end());
        }
    }
    ClusterError::io(message, io::Error::from(io::ErrorKind::TimedOut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Which member a session is on, by its server port.
    async fn server_port(client: &tokio_postgres::Client) -> u16 {
        let row = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        u16::try_from(row.get::<_, i32>(0)).unwrap()
    }

    /// Rows are committed through the multi-host URL (tokio-postgres, as Nexus connects) while
    /// the primary's whole member is killed: every commit that was acknowledged must be on the
    /// new primary, which the same URL finds and which takes writes.
    #[test]
    fn acknowledged_commits_survive_killing_the_primary() {
        let t = Instant::now();
        let mut cluster = PatroniCluster::start_private().unwrap_or_else(|e| panic!("{e}"));
        println!(
            "cluster up (leader, two streaming standbys) in {:.1?}",
            t.elapsed()
        );
        let url = cluster.create_database("failover").unwrap();
        assert!(
            url.contains(",127.0.0.1:")
                && url.ends_with("/failover?target_session_attrs=read-write"),
            "{url}"
        );
        cluster
            .psql("failover", "CREATE TABLE t (id int PRIMARY KEY)")
            .unwrap();
        let old = cluster.primary().unwrap();
        let sync_names = cluster
            .psql("postgres", "SHOW synchronous_standby_names")
            .unwrap();
        println!(
            "primary {}; synchronous_standby_names = {}",
            cluster.member_name(old),
            sync_names.trim()
        );
        assert!(!sync_names.trim().is_empty(), "no synchronous standby");

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let acknowledged = Arc::new(Mutex::new(Vec::<i32>::new()));
        let writer = {
            let acknowledged = Arc::clone(&acknowledged);
            let url = url.clone();
            let old_port = cluster.postgres_port(old);
            runtime.spawn(async move {
                let client = connect(&url).await.unwrap();
                assert_eq!(server_port(&client).await, old_port, "not on the primary");
                for id in 1.. {
                    if let Err(e) = client.execute("INSERT INTO t VALUES ($1)", &[&id]).await {
                        return (id, e);
                    }
                    acknowledged.lock().unwrap().push(id);
                }
                unreachable!()
            })
        };
        std::thread::sleep(Duration::from_secs(2));
        let killed = cluster.kill_primary().unwrap();
        assert_eq!(killed, old);
        let (in_flight, error) = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), writer).await })
            .expect("the writer did not notice the primary's death")
            .unwrap();
        let acknowledged = acknowledged.lock().unwrap().clone();
        println!(
            "killed {} after {} acknowledged commits; commit {in_flight} failed: {error}",
            cluster.member_name(old),
            acknowledged.len()
        );
        assert!(!acknowledged.is_empty());

        let (new, window) = cluster.wait_for_new_primary(old).unwrap();
        println!(
            "new primary {} after {:.1?} (Patroni's view, from the kill)",
            cluster.member_name(new),
            window
        );
        let (client, writable) = runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match connect(&url).await {
                    Ok(client) => match client.execute("INSERT INTO t VALUES (-1)", &[]).await {
                        Ok(_) => break (client, cluster.killed_at[old].unwrap().elapsed()),
                        Err(e) if Instant::now() > deadline => panic!("no write: {e}"),
                        Err(_) => {}
                    },
                    Err(e) if Instant::now() > deadline => panic!("no connection: {e}"),
                    Err(_) => {}
                }
                tokio::time::sleep(POLL).await;
            }
        });
        println!("the URL reaches a writable primary {writable:.1?} after the kill");
        let (port, present) = runtime.block_on(async {
            let rows = client.query("SELECT id FROM t", &[]).await.unwrap();
            let present: std::collections::HashSet<i32> = rows.iter().map(|r| r.get(0)).collect();
            (server_port(&client).await, present)
        });
        assert_eq!(port, cluster.postgres_port(new), "the URL led elsewhere");
        let lost: Vec<i32> = acknowledged
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged commits lost in the failover: {lost:?}",
            lost.len()
        );
        println!(
            "all {} acknowledged rows are on the new primary (the one in flight {})",
            acknowledged.len(),
            if present.contains(&in_flight) {
                "too"
            } else {
                "is not"
            }
        );
        let root = cluster.dir().to_owned();
        drop(cluster);
        assert!(!root.exists(), "{} is left behind", root.display());
    }
}
