//! Throwaway PostgreSQL databases for Halyard's tests, and a small general
//! helper for starting and stopping a local PostgreSQL cluster.
//!
//! # How tests get a database
//!
//! [`TestDatabase::new`] returns a fresh database with the Halyard schema
//! loaded. Behind it:
//!
//! * **One cluster per test process.** Running `initdb` and starting a server
//!   takes around a second, which is too slow to do for every test but fine to
//!   do once per test binary. The first call in a process starts a cluster in
//!   `$TMPDIR/halyard-test-pg-<pid>-<nanos>` on a reserved port
//!   ([`reserve_port`]: no other test takes it meanwhile), with fsync off;
//!   every later call reuses it. Tests in the same process run in threads, so
//!   they share it safely, and separate processes (e.g. under nextest) never
//!   see each other's cluster.
//! * **A template database.** The schema (`schema/dbinit.sql`) is loaded once
//!   into `halyard_template`; each test's database is then made with
//!   `CREATE DATABASE ... TEMPLATE halyard_template`, a file-level copy that is
//!   much faster than replaying the schema. The copies are serialised, because
//!   PostgreSQL refuses to clone a template that another session is using
//!   ("source database is being accessed by other users").
//! * **Clean-up without help.** An `atexit` handler stops the cluster and
//!   removes its directory when the process exits normally (including when
//!   tests fail). A watchdog shell process, started with the cluster, does the
//!   same if the test process dies without running `atexit` handlers (SIGKILL,
//!   Ctrl-C, abort).
//! * **runuser when root.** `initdb` and the server refuse to run as root. When
//!   the process is root (as in CI containers and dev VMs), `initdb` and
//!   `pg_ctl` are run as the `postgres` user with `runuser -u postgres --`, and
//!   the data directory is handed to that user. `psql` always runs as the
//!   current user and connects over TCP to `127.0.0.1` with trust auth.
//!
//! ```no_run
//! let db = halyard_test_db::TestDatabase::new();
//! // Connect to db.url(), e.g. "postgresql://postgres@127.0.0.1:41234/test_1234_1".
//! # let _ = db;
//! ```
//!
//! # General use
//!
//! [`PostgresCluster::start`] works on any data directory (initialising it if
//! it is empty or missing) and [`PostgresCluster::stop`] stops it; nothing is
//! removed and nothing is stopped on drop, so a long-lived cluster (e.g. a
//! project-local dev environment) can be started and stopped explicitly.
//! [`PrivateCluster`] is the throwaway kind for a test that stops and restarts
//! its own server (an outage test): it is removed when dropped, also when the
//! test panics, and by a watchdog if the process dies first.
//!
//! PostgreSQL is found under `/usr/lib/postgresql/<version>/bin` (the Debian
//! and Ubuntu layout); the highest version wins.
//!
//! # Replication and proxies
//!
//! [`PatroniCluster`] ([`patroni`]) is a replicated PostgreSQL: three members under Patroni
//! with one etcd, synchronous replication, a multi-host URL that finds the primary, and a way
//! to kill the primary and wait for the next. [`Haproxy`] ([`haproxy`]) runs HAProxy in front of
//! several copies of a server (two Nexus). Both need their Debian packages (`patroni`,
//! `etcd-server`, `haproxy`), which `dev-tools/run-tests.sh` installs.
//!
//! # Networks
//!
//! [`Underlay`] ([`underlay`]) is a bridge joining QEMU sled agents' virtual switches (their
//! `[qemu.underlay]`), handing out their addresses; it goes away with the namespaces linked to
//! it when dropped, or by a watchdog if the process dies. Needs root.

pub mod haproxy;
mod http;
pub mod patroni;
mod ports;
pub mod underlay;

pub use haproxy::{Frontend, Haproxy, HealthCheck, ProxyMode};
pub use patroni::{MemberPorts, PatroniCluster, PatroniPorts};
pub use ports::{ReservedPort, reserve_port};
pub use underlay::Underlay;

/// Something that runs SQL with psql in one of its databases: a [`PostgresCluster`], or a
/// [`PatroniCluster`] (on its current primary). For checkers that only read the database and
/// do not care which kind of cluster holds it.
pub trait RunSql {
    /// Runs `sql` in `database`; psql's unaligned, tuples-only output.
    fn run_sql(&self, database: &str, sql: &str) -> Result<String, ClusterError>;
}

impl RunSql for PostgresCluster {
    fn run_sql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        self.psql(database, sql)
    }
}

impl RunSql for PatroniCluster {
    fn run_sql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        self.psql(database, sql)
    }
}

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where Debian/Ubuntu install PostgreSQL's versioned binaries.
const POSTGRES_LIB_DIR: &str = "/usr/lib/postgresql";
/// The superuser created by `initdb`, and the OS user the server runs as when
/// we are root.
const SUPERUSER: &str = "postgres";
/// The address the server listens on and clients connect to.
const LISTEN_ADDRESS: &str = "127.0.0.1";
/// How many reserved ports to try when the caller did not fix one (a port some unrelated
/// program takes between [`reserve_port`]'s check and the server's bind).
const START_ATTEMPTS: usize = 3;
/// How much of `server.log` to quote when the server does not start.
const LOG_TAIL_LINES: usize = 30;
/// The database holding the loaded schema, cloned for each test.
const TEMPLATE_DATABASE: &str = "halyard_template";

/// libpq environment variables that could point our commands at some other
/// server, user or database; they are removed from every child's environment.
const SCRUBBED_ENV: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSSLMODE",
];

// ---------------------------------------------------------------------------
// Errors

/// Why a cluster operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// No `/usr/lib/postgresql/<version>/bin` with `initdb` and `pg_ctl`.
    NotInstalled,
    /// We are root, so the server must run as the `postgres` user, but there
    /// is no such user.
    NoPostgresUser,
    /// A command ran but exited unsuccessfully.
    CommandFailed {
        /// The command line, shell-quoted.
        command: String,
        /// How it exited, e.g. "exit status: 1".
        status: String,
        stdout: String,
        stderr: String,
        /// The last lines of the server log, when the server failed to start.
        server_log_tail: Option<String>,
    },
    /// A program (Patroni, etcd, HAProxy) is not installed.
    MissingProgram {
        program: String,
        /// The Debian package that has it.
        package: String,
    },
    /// A file-system or process-spawning operation failed.
    Io {
        /// What we were doing.
        context: String,
        source: io::Error,
    },
}

impl ClusterError {
    fn io(context: impl Into<String>, source: io::Error) -> ClusterError {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::NotInstalled => write!(
                f,
                "PostgreSQL is not installed: run \
                 \"apt-get update && apt-get install -y postgresql\""
            ),
            ClusterError::NoPostgresUser => write!(
                f,
                "running as root, but there is no \"{SUPERUSER}\" user to run \
                 PostgreSQL as (initdb refuses to run as root)"
            ),
            ClusterError::CommandFailed {
                command,
                status,
                stdout,
                stderr,
                server_log_tail,
            } => {
                write!(f, "`{command}` failed ({status})")?;
                for (label, text) in [("stderr", stderr), ("stdout", stdout)] {
                    let text = text.trim_end();
                    if !text.is_empty() {
                        write!(f, "\n--- {label} ---\n{text}")?;
                    }
                }
                if let Some(tail) = server_log_tail {
                    write!(f, "\n--- end of server log ---\n{}", tail.trim_end())?;
                }
                Ok(())
            }
            ClusterError::MissingProgram { program, package } => write!(
                f,
                "{program} is not installed: run \
                 \"apt-get update && apt-get install -y {package}\""
            ),
            ClusterError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClusterError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Finding PostgreSQL and deciding who runs it

/// The newest `/usr/lib/postgresql/<N>/bin` that contains `initdb` and
/// `pg_ctl`.
pub fn postgres_bin_dir() -> Result<PathBuf, ClusterError> {
    let entries = match fs::read_dir(POSTGRES_LIB_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ClusterError::NotInstalled),
        Err(e) => return Err(ClusterError::io(format!("reading {POSTGRES_LIB_DIR}"), e)),
    };
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in entries {
        let entry =
            entry.map_err(|e| ClusterError::io(format!("reading {POSTGRES_LIB_DIR}"), e))?;
        let Some(version) = entry.file_name().to_str().and_then(parse_version) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !bin.join("initdb").is_file() || !bin.join("pg_ctl").is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin).ok_or(ClusterError::NotInstalled)
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// The OS user that `initdb`, `pg_ctl` and the server run as, when that is
/// not the current user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerUser {
    uid: u32,
    gid: u32,
}

/// `None` when not root (run everything as ourselves); the `postgres` user
/// when root.
fn server_user() -> Result<Option<ServerUser>, ClusterError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user(SUPERUSER).map(Some)
}

fn lookup_user(name: &str) -> Result<ServerUser, ClusterError> {
    let c_name = CString::new(name).map_err(|_| ClusterError::NoPostgresUser)?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: passwd is plain old data; getpwnam_r fills it in, pointing
        // its strings into `buf`, which outlives every use below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the stated lengths.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(ClusterError::io(
                format!("looking up user {name:?}"),
                io::Error::from_raw_os_error(rc),
            ));
        }
        if result.is_null() {
            return Err(ClusterError::NoPostgresUser);
        }
        return Ok(ServerUser {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
    }
}

fn runuser_program() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

// ---------------------------------------------------------------------------
// Running commands

/// A command line kept as data, so that it can be both run and quoted in
/// error messages (and in the watchdog's shell script).
#[derive(Debug, Clone)]
struct Argv(Vec<OsString>);

impl Argv {
    fn new(program: impl AsRef<OsStr>) -> Argv {
        Argv(vec![program.as_ref().to_owned()])
    }

    /// `program`, wrapped in `runuser -u postgres --` when `user` is set.
    fn as_user(user: Option<ServerUser>, program: &Path) -> Argv {
        match user {
            Some(_) => Argv::new(runuser_program())
                .args(["-u", SUPERUSER, "--"])
                .arg(program),
            None => Argv::new(program),
        }
    }

    fn arg(mut self, arg: impl AsRef<OsStr>) -> Argv {
        self.0.push(arg.as_ref().to_owned());
        self
    }

    fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Argv {
        self.0
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The command line as shell words.
    fn shell_words(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, word) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            out.extend(shell_quote(word));
        }
        out
    }

    fn display(&self) -> String {
        String::from_utf8_lossy(&self.shell_words()).into_owned()
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.0[0]);
        cmd.args(&self.0[1..]).stdin(Stdio::null()).current_dir("/");
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs to completion; returns stdout on success.
    fn run(&self) -> Result<String, ClusterError> {
        let output = self
            .command()
            .output()
            .map_err(|e| ClusterError::io(format!("running `{}`", self.display()), e))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(ClusterError::CommandFailed {
                command: self.display(),
                status: output.status.to_string(),
                stdout,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                server_log_tail: None,
            })
        }
    }
}

/// Quotes `word` for `sh` (leaving plainly safe words alone).
fn shell_quote(word: &OsStr) -> Vec<u8> {
    let bytes = word.as_bytes();
    let safe = !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,@%+".contains(b));
    if safe {
        return bytes.to_vec();
    }
    let mut out = vec![b'\''];
    for &b in bytes {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

// ---------------------------------------------------------------------------
// Clusters

/// How to start a [`PostgresCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The data directory; `initdb` runs first if it is missing or has no
    /// `PG_VERSION`. The server log is written to `server.log` inside it.
    pub data_dir: PathBuf,
    /// The TCP port on 127.0.0.1; `None` reserves one ([`reserve_port`],
    /// held as long as the cluster value lives; retrying with another if the
    /// server fails to start).
    pub port: Option<u16>,
    /// `false` turns off fsync, synchronous commit and full-page writes (and
    /// makes `initdb` skip syncing): fast, but data is lost on a host crash.
    pub fsync: bool,
    /// Where the server puts its Unix socket; `None` means the data
    /// directory. Clients here always use TCP, so this only matters to
    /// others. Unix socket paths are limited to about 100 bytes.
    pub socket_dir: Option<PathBuf>,
}

impl ClusterOptions {
    /// Options for `data_dir` with a free port, fsync on, and the socket in
    /// the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> ClusterOptions {
        ClusterOptions {
            data_dir: data_dir.into(),
            port: None,
            fsync: true,
            socket_dir: None,
        }
    }
}

/// A running PostgreSQL server with trust auth for the superuser `postgres`,
/// listening on 127.0.0.1.
///
/// Dropping it does not stop the server; call [`PostgresCluster::stop`].
#[derive(Debug)]
pub struct PostgresCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    user: Option<ServerUser>,
    /// The reservation of `port`, when the caller did not fix it.
    port_reservation: Option<ReservedPort>,
}

impl PostgresCluster {
    /// Initialises `options.data_dir` if needed, then starts the server with
    /// `pg_ctl start -w` and waits until it accepts connections.
    pub fn start(options: ClusterOptions) -> Result<PostgresCluster, ClusterError> {
        let bin_dir = postgres_bin_dir()?;
        let user = server_user()?;
        let data_dir = absolute(&options.data_dir)?;
        let socket_dir = match &options.socket_dir {
            Some(dir) => absolute(dir)?,
            None => data_dir.clone(),
        };
        prepare_dir(&data_dir, user)?;
        if socket_dir != data_dir {
            prepare_dir(&socket_dir, user)?;
        }

        if !data_dir.join("PG_VERSION").exists() {
            let mut initdb = Argv::as_user(user, &bin_dir.join("initdb"))
                .arg("-D")
                .arg(&data_dir)
                .args([
                    "--auth=trust",
                    &format!("--username={SUPERUSER}"),
                    "--encoding=UTF8",
                    "--no-locale",
                ]);
            if !options.fsync {
                initdb = initdb.arg("--no-sync");
            }
            initdb.run()?;
        }

        let log_file = data_dir.join("server.log");
        let attempts = if options.port.is_some() {
            1
        } else {
            START_ATTEMPTS
        };
        let mut last_error = None;
        for _ in 0..attempts {
            let (port, reservation) = match options.port {
                Some(port) => (port, None),
                None => {
                    let reservation = reserve_port()?;
                    (reservation.port(), Some(reservation))
                }
            };
            let cluster = PostgresCluster {
                bin_dir: bin_dir.clone(),
                data_dir: data_dir.clone(),
                port,
                user,
                port_reservation: reservation,
            };
            match cluster.pg_ctl_start(&log_file, &socket_dir, options.fsync) {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(ClusterError::CommandFailed {
                command,
                status,
                stdout,
                stderr,
                server_log_tail: _,
            }) => ClusterError::CommandFailed {
                command,
                status,
                stdout,
                stderr,
                server_log_tail: log_tail(&log_file),
            },
            Some(other) => other,
            None => ClusterError::io(
                "starting PostgreSQL",
                io::Error::other("no start attempts were made"),
            ),
        })
    }

    fn pg_ctl_start(
        &self,
        log_file: &Path,
        socket_dir: &Path,
        fsync: bool,
    ) -> Result<(), ClusterError> {
        // pg_ctl hands `-o` to a shell, so the socket path must be quoted.
        let mut server_options = format!("-p {} -k ", self.port).into_bytes();
        server_options.extend(shell_quote(socket_dir.as_os_str()));
        server_options.extend(
            format!(" -c listen_addresses={LISTEN_ADDRESS} -c max_connections=400").bytes(),
        );
        if !fsync {
            server_options.extend(b" -F -c synchronous_commit=off -c full_page_writes=off");
        }
        self.pg_ctl()
            .arg("-l")
            .arg(log_file)
            .arg("-o")
            .arg(OsString::from_vec(server_options))
            .arg("start")
            .run()
            .map(drop)
    }

    /// `pg_ctl -w -D <data dir>`, as the server user.
    fn pg_ctl(&self) -> Argv {
        Argv::as_user(self.user, &self.bin_dir.join("pg_ctl"))
            .arg("-w")
            .arg("-D")
            .arg(&self.data_dir)
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<database>`.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@{LISTEN_ADDRESS}:{}/{database}",
            self.port
        )
    }

    fn psql_argv(&self, database: &str) -> Argv {
        psql_argv(&self.bin_dir, self.port, database)
    }

    /// Runs `sql` in `database` as the superuser; returns psql's unaligned,
    /// tuples-only output (one row per line, columns separated by `|`).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        self.psql_argv(database).arg("-c").arg(sql).run()
    }

    /// Runs the SQL file at `path` in `database` as the superuser, stopping
    /// at the first error.
    pub fn psql_file(&self, database: &str, path: &Path) -> Result<(), ClusterError> {
        let path = absolute(path)?;
        self.psql_argv(database).arg("-f").arg(path).run().map(drop)
    }

    /// Stops the server (`pg_ctl stop -m fast`), waiting for it to exit.
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.pg_ctl().args(["-m", "fast", "stop"]).run().map(drop)
    }

    /// Stops the server without a shutdown checkpoint, for clusters about to
    /// be deleted.
    fn stop_immediate(&self) -> Result<(), ClusterError> {
        self.pg_ctl()
            .args(["-m", "immediate", "stop"])
            .run()
            .map(drop)
    }
}

/// `psql` as the superuser over TCP to `127.0.0.1:<port>`: unaligned, tuples only, stopping at
/// the first error, never asking for a password.
fn psql_argv(bin_dir: &Path, port: u16, database: &str) -> Argv {
    let psql = bin_dir.join("psql");
    let psql = if psql.is_file() {
        psql
    } else {
        PathBuf::from("psql")
    };
    Argv::new(psql)
        .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-At", "-w"])
        .args(["-h", LISTEN_ADDRESS, "-p", &port.to_string()])
        .args(["-U", SUPERUSER, "-d", database])
}

fn absolute(path: &Path) -> Result<PathBuf, ClusterError> {
    std::path::absolute(path)
        .map_err(|e| ClusterError::io(format!("resolving {}", path.display()), e))
}

/// Creates `dir` (mode 0700) if missing and, when the server runs as another
/// user, gives it to that user.
fn prepare_dir(dir: &Path, user: Option<ServerUser>) -> Result<(), ClusterError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ClusterError::io(format!("creating {}", dir.display()), e))?;
    }
    if let Some(user) = user {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(|e| {
            ClusterError::io(format!("giving {} to user {SUPERUSER}", dir.display()), e)
        })?;
    }
    Ok(())
}

fn log_tail(log_file: &Path) -> Option<String> {
    let bytes = fs::read(log_file).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    Some(lines[start..].join("\n"))
}

// ---------------------------------------------------------------------------
// The per-process shared cluster

struct SharedCluster {
    cluster: PostgresCluster,
    /// `$TMPDIR/halyard-test-pg-<pid>-<nanos>`, holding the data directory.
    root: PathBuf,
    /// Serialises `CREATE DATABASE ... TEMPLATE`.
    create_lock: Mutex<()>,
    next_id: AtomicU64,
}

/// Set up on first use. A failure is kept (as its message) so that every
/// test fails with it rather than each retrying the start-up.
static SHARED: OnceLock<Result<SharedCluster, String>> = OnceLock::new();

fn shared() -> &'static SharedCluster {
    match SHARED.get_or_init(start_shared) {
        Ok(shared) => shared,
        Err(message) => {
            panic!("halyard-test-db: cannot set up the test PostgreSQL cluster: {message}")
        }
    }
}

/// The process's shared test cluster, started (and the schema template
/// loaded) on first use.
///
/// # Panics
///
/// If the cluster cannot be started or the schema cannot be loaded.
pub fn shared_cluster() -> &'static PostgresCluster {
    &shared().cluster
}

fn start_shared() -> Result<SharedCluster, String> {
    let bin_dir = postgres_bin_dir().map_err(|e| e.to_string())?;
    let user = server_user().map_err(|e| e.to_string())?;

    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let root = std::env::temp_dir().join(format!("halyard-test-pg-{pid}-{nanos}"));
    fs::create_dir(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let fail = |message: String| {
        let _ = fs::remove_dir_all(&root);
        message
    };
    // The server user must be able to reach the data directory inside.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
        .map_err(|e| fail(format!("setting permissions on {}: {e}", root.display())))?;
    let data_dir = root.join("data");

    // Started before initdb so that nothing is left behind whenever this
    // process dies from here on.
    spawn_watchdog(pid, &bin_dir, &data_dir, user, &root).map_err(|e| fail(e.to_string()))?;

    let mut options = ClusterOptions::new(&data_dir);
    options.fsync = false;
    let cluster = PostgresCluster::start(options).map_err(|e| fail(e.to_string()))?;

    let schema = halyard_schema::dbinit_sql_path();
    let loaded = cluster
        .psql("postgres", &format!("CREATE DATABASE {TEMPLATE_DATABASE}"))
        .and_then(|_| cluster.psql_file(TEMPLATE_DATABASE, &schema));
    if let Err(e) = loaded {
        let _ = cluster.stop_immediate();
        return Err(fail(format!(
            "loading {} into {TEMPLATE_DATABASE}: {e}",
            schema.display()
        )));
    }

    // SAFETY: registering a plain extern "C" function has no preconditions.
    if unsafe { libc::atexit(remove_shared_at_exit) } != 0 {
        eprintln!(
            "halyard-test-db: could not register an atexit handler; the watchdog will remove {}",
            root.display()
        );
    }

    Ok(SharedCluster {
        cluster,
        root,
        create_lock: Mutex::new(()),
        next_id: AtomicU64::new(1),
    })
}

/// Stops the shared cluster and removes its directory on normal exit.
extern "C" fn remove_shared_at_exit() {
    // A panic must not unwind out of an extern "C" function.
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(shared)) = SHARED.get() {
            let _ = shared.cluster.stop_immediate();
            let _ = fs::remove_dir_all(&shared.root);
        }
    });
}

/// Starts a detached `sh` that waits for process `pid` to go away, then stops
/// the cluster in `data_dir` and removes `remove` (see [`spawn_watchdog_script`]).
fn spawn_watchdog(
    pid: u32,
    bin_dir: &Path,
    data_dir: &Path,
    user: Option<ServerUser>,
    remove: &Path,
) -> Result<(), ClusterError> {
    let mut cleanup = pg_ctl_stop_immediate_words(bin_dir, data_dir, user);
    cleanup.extend(b" >/dev/null 2>&1");
    spawn_watchdog_script(pid, &cleanup, Some(remove)).map(drop)
}

/// `pg_ctl -w -D <data_dir> -m immediate stop` (as the server user) as shell words.
fn pg_ctl_stop_immediate_words(
    bin_dir: &Path,
    data_dir: &Path,
    user: Option<ServerUser>,
) -> Vec<u8> {
    Argv::as_user(user, &bin_dir.join("pg_ctl"))
        .arg("-w")
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "immediate", "stop"])
        .shell_words()
}

/// Starts a detached `sh` that waits for process `pid` to go away, then runs the shell
/// commands `cleanup` and removes `remove` (if given). It covers deaths that skip `atexit`
/// handlers and destructors (SIGKILL, signals, aborts). It gets its own process group, so a
/// Ctrl-C aimed at the tests does not reach it, and null stdio, so it does not hold the test
/// runner's pipes open. Returns the watchdog's pid (to end it early: SIGKILL).
fn spawn_watchdog_script(
    pid: u32,
    cleanup: &[u8],
    remove: Option<&Path>,
) -> Result<u32, ClusterError> {
    let mut script = format!("while kill -0 {pid} 2>/dev/null; do sleep 1; done; ").into_bytes();
    script.extend(cleanup);
    if let Some(remove) = remove {
        script.extend(b"; rm -rf -- ");
        script.extend(shell_quote(remove.as_os_str()));
    }

    // Never waited for: it outlives this process by design (and is reaped by
    // init), and while this process lives it does not exit.
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(OsString::from_vec(script))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .map_err(|e| ClusterError::io("starting the clean-up watchdog (/bin/sh)", e))?;
    Ok(child.id())
}

/// A fresh `$TMPDIR/halyard-test-pg-<kind>-<pid>-<n>-<nanos>`, readable by all (the server
/// user must reach the data directories inside).
fn fresh_temp_root(kind: &str) -> Result<PathBuf, ClusterError> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("halyard-test-pg-{kind}-{pid}-{n}-{nanos}"));
    fs::create_dir(&root)
        .map_err(|e| ClusterError::io(format!("creating {}", root.display()), e))?;
    if let Err(e) = fs::set_permissions(&root, fs::Permissions::from_mode(0o755)) {
        let _ = fs::remove_dir_all(&root);
        return Err(ClusterError::io(
            format!("setting permissions on {}", root.display()),
            e,
        ));
    }
    Ok(root)
}

// ---------------------------------------------------------------------------
// Private clusters

/// A cluster of one test's own, for tests that stop and restart PostgreSQL
/// (outage tests) and so must not share the process's cluster.
///
/// It lives in a fresh `$TMPDIR/halyard-test-pg-private-<pid>-<n>-<nanos>`
/// with fsync off, and cleans up after itself however the test ends: dropping
/// it (also while a failed assertion unwinds the test) stops the server and
/// removes the directory, and a watchdog does the same if the process dies
/// without unwinding (SIGKILL, abort).
#[derive(Debug)]
pub struct PrivateCluster {
    cluster: PostgresCluster,
    options: ClusterOptions,
    root: PathBuf,
}

impl PrivateCluster {
    /// Initialises and starts a new cluster on a free port.
    pub fn start() -> Result<PrivateCluster, ClusterError> {
        let bin_dir = postgres_bin_dir()?;
        let user = server_user()?;
        let pid = std::process::id();
        let root = fresh_temp_root("private")?;
        let remove_root = |e: ClusterError| {
            let _ = fs::remove_dir_all(&root);
            e
        };
        let data_dir = root.join("data");
        spawn_watchdog(pid, &bin_dir, &data_dir, user, &root).map_err(remove_root)?;
        let mut options = ClusterOptions::new(&data_dir);
        options.fsync = false;
        let cluster = PostgresCluster::start(options.clone()).map_err(remove_root)?;
        // Restarts reuse the port, so that clients configured with its URL find it again.
        options.port = Some(cluster.port());
        Ok(PrivateCluster {
            cluster,
            options,
            root,
        })
    }

    pub fn cluster(&self) -> &PostgresCluster {
        &self.cluster
    }

    /// Creates database `name` with the Halyard schema loaded; returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, ClusterError> {
        self.cluster
            .psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        self.cluster
            .psql_file(name, &halyard_schema::dbinit_sql_path())?;
        Ok(self.cluster.url_for(name))
    }

    /// Stops the server (`pg_ctl stop -m fast`: open sessions are ended). Its data stays.
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.cluster.stop()
    }

    /// Starts the stopped server again, on the same port (still reserved for it).
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        let mut cluster = PostgresCluster::start(self.options.clone())?;
        cluster.port_reservation = self.cluster.port_reservation.take();
        self.cluster = cluster;
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // It may be stopped already; then this fails, harmlessly.
        let _ = self.cluster.stop_immediate();
        let _ = fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------
// Test databases

/// A fresh database cloned from the schema template, in the process's shared
/// cluster. It lives until the process exits (the whole cluster is removed
/// then); nothing happens on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a new database from the template (starting the cluster first
    /// if this is the first call in this process).
    ///
    /// # Panics
    ///
    /// If the cluster cannot be started, the schema cannot be loaded, or the
    /// database cannot be created.
    #[allow(clippy::new_without_default)] // Creating a database is not a default value.
    pub fn new() -> TestDatabase {
        TestDatabase::create_from(TEMPLATE_DATABASE)
    }

    /// Creates a new *empty* database (no schema), for schema-migration tests.
    ///
    /// # Panics
    ///
    /// As for [`TestDatabase::new`].
    pub fn new_empty() -> TestDatabase {
        TestDatabase::create_from("template0")
    }

    fn create_from(template: &str) -> TestDatabase {
        let shared = shared();
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{id}", std::process::id());
        let sql = format!("CREATE DATABASE \"{name}\" TEMPLATE {template}");
        let created = {
            let _guard = shared
                .create_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shared.cluster.psql("postgres", &sql)
        };
        if let Err(e) = created {
            panic!("halyard-test-db: cannot create database {name:?} from {template}: {e}");
        }
        TestDatabase {
            url: shared.cluster.url_for(&name),
            name,
        }
    }

    /// libpq-style URL: `postgresql://postgres@127.0.0.1:<port>/<name>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(database: &str, sql: &str) -> String {
        shared_cluster()
            .psql(database, sql)
            .unwrap_or_else(|e| panic!("{e}"))
            .trim()
            .to_owned()
    }

    #[test]
    fn databases_are_distinct_and_isolated() {
        let a = TestDatabase::new();
        let b = TestDatabase::new();
        assert_ne!(a.name(), b.name());
        assert_eq!(a.url(), shared_cluster().url_for(a.name()));
        assert!(a.url().starts_with("postgresql://postgres@127.0.0.1:"));

        let databases = query("postgres", "SELECT datname FROM pg_database");
        let databases: Vec<&str> = databases.lines().collect();
        assert!(databases.contains(&a.name()), "{databases:?}");
        assert!(databases.contains(&b.name()), "{databases:?}");

        query(a.name(), "CREATE TABLE only_in_a (x int)");
        let count = "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'";
        assert_eq!(query(a.name(), count), "1");
        assert_eq!(query(b.name(), count), "0");
    }

    #[test]
    fn empty_database_has_no_tables() {
        let db = TestDatabase::new_empty();
        let count = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'";
        assert_eq!(query(db.name(), count), "0");
    }

    #[test]
    fn a_private_cluster_restarts_on_its_port_and_is_removed_when_dropped() {
        let mut private = PrivateCluster::start().unwrap_or_else(|e| panic!("{e}"));
        let root = private.root.clone();
        let url = private.create_database("outage").unwrap();
        let port = private.cluster().port();
        private
            .cluster()
            .psql("outage", "CREATE TABLE t (x int)")
            .unwrap();
        private.stop().unwrap();
        assert!(private.cluster().psql("outage", "SELECT 1").is_err());
        private.restart().unwrap();
        assert_eq!(private.cluster().port(), port);
        assert_eq!(private.cluster().url_for("outage"), url);
        let count = "SELECT count(*) FROM pg_tables WHERE tablename IN ('t', 'db_metadata')";
        assert_eq!(private.cluster().psql("outage", count).unwrap().trim(), "2");
        drop(private);
        assert!(!root.exists(), "{} is left behind", root.display());
    }

    #[test]
    fn database_has_the_schema() {
        let db = TestDatabase::new();
        let count = "SELECT count(*) FROM pg_tables WHERE tablename = 'db_metadata'";
        assert_eq!(query(db.name(), count), "1");
    }
}
