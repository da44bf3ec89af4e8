//! The Nexus of the development environment: in this process when there is one, or each in a
//! process of its own (`halyard-nexus`, built beside `halyard-run-all`) when there are
//! several, so that one can be killed (`kill -9 <pid>`, printed in the banner) while the other
//! keeps serving behind HAProxy and adopts the dead one's sagas.

use anyhow::{Context, bail};
use halyard_common::ids::NexusUuid;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One running Nexus.
pub enum RunningNexus {
    InProcess(halyard_nexus::Server),
    Process(NexusProcess),
}

/// A `halyard-nexus` child process.
pub struct NexusProcess {
    id: NexusUuid,
    child: Child,
    external: SocketAddr,
    internal: SocketAddr,
    log_path: PathBuf,
}

impl RunningNexus {
    /// Starts Nexus in this process.
    pub async fn in_process(
        config: &halyard_nexus::Config,
        log: &slog::Logger,
    ) -> anyhow::Result<RunningNexus> {
        Ok(RunningNexus::InProcess(
            halyard_nexus::Server::start(config, log).await?,
        ))
    }

    /// Starts `halyard-nexus` with `config` (written to `dir/nexus-<id>.toml`, its log to
    /// `dir/nexus-<id>.log`) and waits until its external API accepts connections. The child
    /// gets SIGTERM if this process dies first.
    pub async fn process(
        config: &halyard_nexus::Config,
        dir: &Path,
        log_level: slog::Level,
    ) -> anyhow::Result<RunningNexus> {
        let binary = std::env::current_exe()
            .context("finding this executable")?
            .with_file_name("halyard-nexus");
        if !binary.exists() {
            bail!(
                "{} is missing: build it with `cargo build -p halyard-nexus` (run-all.sh does)",
                binary.display()
            );
        }
        let config_path = dir.join(format!("nexus-{}.toml", config.id));
        std::fs::write(&config_path, config.to_toml())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log_path = dir.join(format!("nexus-{}.log", config.id));
        let log_file = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&config_path)
            .arg("--log-level")
            .arg(level_name(log_level))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe, and the closure touches nothing else.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        for _ in 0..300 {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "Nexus {} exited at start ({status}); its log: {}",
                    config.id,
                    log_path.display()
                );
            }
            if tokio::net::TcpStream::connect(config.external_address)
                .await
                .is_ok()
            {
                return Ok(RunningNexus::Process(NexusProcess {
                    id: config.id,
                    child,
                    external: config.external_address,
                    internal: config.internal_address,
                    log_path,
                }));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        bail!(
            "Nexus {} did not answer within 30 s; its log: {}",
            config.id,
            log_path.display()
        )
    }

    pub fn id(&self) -> NexusUuid {
        match self {
            RunningNexus::InProcess(server) => server.nexus().id(),
            RunningNexus::Process(process) => process.id,
        }
    }

    pub fn external_address(&self) -> SocketAddr {
        match self {
            RunningNexus::InProcess(server) => server.external_address(),
            RunningNexus::Process(process) => process.external,
        }
    }

    pub fn internal_address(&self) -> SocketAddr {
        match self {
            RunningNexus::InProcess(server) => server.internal_address(),
            RunningNexus::Process(process) => process.internal,
        }
    }

    /// For the banner: the process to kill and where it logs, for a child.
    pub fn process_details(&self) -> Option<(u32, &Path)> {
        match self {
            RunningNexus::InProcess(_) => None,
            RunningNexus::Process(process) => Some((process.child.id(), &process.log_path)),
        }
    }

    /// Stops it: closes the servers, or sends the child SIGTERM and reaps it (an already dead
    /// child, killed by hand, is just reaped).
    pub async fn close(self) -> anyhow::Result<()> {
        match self {
            RunningNexus::InProcess(server) => server.close().await,
            RunningNexus::Process(mut process) => {
                if process.child.try_wait()?.is_none() {
                    // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
                    unsafe {
                        libc::kill(process.child.id() as libc::pid_t, libc::SIGTERM);
                    }
                    for _ in 0..100 {
                        if process.child.try_wait()?.is_some() {
                            return Ok(());
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    process.child.kill()?;
                }
                process.child.wait()?;
                Ok(())
            }
        }
    }
}

/// `level` as `--log-level` takes it.
fn level_name(level: slog::Level) -> &'static str {
    match level {
        slog::Level::Critical => "critical",
        slog::Level::Error => "error",
        slog::Level::Warning => "warning",
        slog::Level::Info => "info",
        slog::Level::Debug => "debug",
        slog::Level::Trace => "trace",
    }
}
