//! One QEMU VMM: its process, its QMP connection, its console, and the task that owns them.
//!
//! ```text
//!  register: QEMU starts paused (-S); a migration target also waits for its stream
//!  creating ──run (cont)──► starting ──► running ──reboot (system_reset)──► rebooting ─► running
//!     │                                   │
//!     └──stop (kill)──┐                   └──stop (ACPI powerdown; after stop_timeout, kill)──► stopping
//!                     │                       (still booting, power button not armed: kill)
//!                     ▼                                                                        │
//!                  stopped ◄───────────────────── the process exits ◄───────────────────────────┘
//!  running ──migrate out──► migrating ──QEMU sends it──► (target resumes) ──► stopped
//!                                     └──QEMU reports failure──► running
//!  target: creating ──sync (migrate-incoming)──► migrating ──finish (cont)──► running
//! ```
//!
//! The process ending decides the VMM's final state: destroyed if it was asked to end (a
//! stop, a completed migration out, or the guest powering itself off), failed otherwise (it
//! crashed or was killed). Either is published only after the process has been reaped, the
//! console closed and the VMM's directory removed.

use super::migration::OutboundMigration;
use super::network::Switch;
use super::qmp::Qmp;
use super::{GuestImage, QemuBackend, tls};
use crate::admission::{Admission, VmmSituation, admit};
use crate::console::SerialConsole;
use crate::guest_console::BannerScanner;
use crate::vmm_runtime::{Command, Ended, FinishHook, VmmRuntime, sleep_until, target_gone_signal};
use halyard_common::ids::{MigrationUuid, VmmUuid};
use halyard_common::internal_api::SledVmmState;
use halyard_common::{Error, MigrationState, VmmState};
use halyard_sled_agent_api::{
    Accelerator, MigrationInReply, MigrationInStep, MigrationPhase, MigrationTarget, SimFault,
    VmmDisk, VmmNic, VmmRegisterBody, VmmStateRequested,
};
use qapi::qmp;
use slog::{Logger, error, info, warn};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub(crate) const QMP_SOCKET: &str = "qmp.sock";
pub(crate) const CONSOLE_SOCKET: &str = "console.sock";
pub(crate) const PID_FILE: &str = "qemu.pid";
const QEMU_LOG: &str = "qemu.log";

/// How long QEMU may take to open its sockets after it starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a migration target waits for its incoming stream to finish once the source
/// says it has sent everything.
const INCOMING_COMPLETION_TIMEOUT: Duration = Duration::from_secs(30);

/// A launched QEMU VMM, before its task runs.
pub(crate) struct QemuVmm {
    id: VmmUuid,
    runtime: VmmRuntime,
    dir: PathBuf,
    child: Child,
    console: Arc<SerialConsole>,
    migration_target: Option<MigrationTarget>,
    /// The inbound migration's listening address, once the source asked for it.
    incoming: Option<SocketAddr>,
    /// Every outbound migration this VMM was asked for, with its target (so a repeated
    /// request is answered from what that migration did, and a VMM whose migration failed
    /// can migrate again).
    migrations_out: BTreeMap<MigrationUuid, VmmUuid>,
    /// The outbound migration in progress, if any.
    migrating_out: Option<MigrationUuid>,
    /// Set when Nexus declares the target of the migration in progress gone for good.
    target_gone: Option<watch::Sender<bool>>,
    /// A test hook ([`SimFault::LoseNextFinishReply`]) for the next migration out.
    lose_next_finish_reply: bool,
    /// Where a migration target listens (the sled agent's own address).
    listen_ip: IpAddr,
    /// The disks attached (boot disk first), to name a replica QEMU reports about.
    disks: Vec<VmmDisk>,
    /// Its NICs, connected to the sled's switch once QEMU is up (QEMU made their taps).
    nics: Vec<VmmNic>,
    switch: Arc<Switch>,
    /// Whether its vCPUs were paused through the API (QMP `stop`).
    vcpus_paused: bool,
    /// Whether the guest listens to its power button: set when its console shows the boot
    /// banner (see `guest_console`), cleared by a reboot. A stop before it ends QEMU at once:
    /// a powerdown the guest cannot hear would only wait out `stop_timeout`.
    power_button_armed: Arc<AtomicBool>,
    /// How many failed or outvoted requests QEMU reported per replica (block node).
    bad_replica_reports: BTreeMap<String, u64>,
    stop_timeout: Duration,
    /// The process is meant to end (a stop, a migration out that completed, or the guest
    /// powering off): its exit means destroyed, not failed.
    exit_expected: bool,
    /// When a stop stops waiting for the guest and ends the process.
    hard_stop_at: Option<Instant>,
    commands: mpsc::WeakSender<Command>,
    /// The HTTP client for other sled agents (a migration's target), with this sled's
    /// certificate.
    peer_http: reqwest::Client,
    log: Logger,
}

impl QemuBackend {
    /// Starts the QEMU process of a newly registered VMM, paused, and returns it with the
    /// receiver of its state. Nothing runs in the guest until it is asked to run.
    #[allow(clippy::too_many_arguments)] // each is one thing the VMM is made of
    pub(crate) fn launch(
        &self,
        id: VmmUuid,
        params: &VmmRegisterBody,
        listen_ip: IpAddr,
        console: Arc<SerialConsole>,
        commands: mpsc::WeakSender<Command>,
        peer_http: reqwest::Client,
        log: Logger,
    ) -> Result<(QemuVmm, watch::Sender<SledVmmState>), Error> {
        let image = GuestImage::find(&self.config.guest_dir)?;
        let dir = self.vmm_root.join(id.to_string());
        let internal = |what: &str, e: std::io::Error| {
            Error::internal(format!("{what} for VMM {id} in {}: {e}", dir.display()))
        };
        // A directory left from an earlier registration of this id (its process is gone:
        // the table had no entry) would confuse QEMU's socket setup.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| internal("removing an old directory", e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| internal("creating the directory", e))?;
        let log_file = std::fs::File::create(dir.join(QEMU_LOG))
            .map_err(|e| internal("creating QEMU's log", e))?;
        let mut command = self.command_line(id, params, &image, &dir);
        command.args(tls::object_args(
            &self.credentials,
            params.migration_target.as_ref(),
        ));
        if params.migration_target.is_some() {
            command.args(["-incoming", "defer"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                Error::unavailable(format!(
                    "starting {} failed: {e} (is qemu-system-x86 installed?)",
                    self.config.binary.display()
                ))
            })?;
        info!(log, "QEMU started"; "pid" => child.id(), "dir" => %dir.display(),
            "accelerator" => %self.accelerator);
        let (runtime, state) = VmmRuntime::new(params.migration_target);
        let vmm = QemuVmm {
            id,
            runtime,
            dir,
            child,
            console,
            migration_target: params.migration_target,
            incoming: None,
            migrations_out: BTreeMap::new(),
            migrating_out: None,
            target_gone: None,
            lose_next_finish_reply: false,
            listen_ip,
            disks: params.disks.clone(),
            nics: params.nics.clone(),
            switch: Arc::clone(&self.switch),
            bad_replica_reports: BTreeMap::new(),
            vcpus_paused: false,
            // A migration target's guest was running on its source.
            power_button_armed: Arc::new(AtomicBool::new(params.migration_target.is_some())),
            stop_timeout: self.config.stop_timeout(),
            exit_expected: false,
            hard_stop_at: None,
            commands,
            peer_http,
            log,
        };
        Ok((vmm, state))
    }

    fn command_line(
        &self,
        id: VmmUuid,
        params: &VmmRegisterBody,
        image: &GuestImage,
        dir: &std::path::Path,
    ) -> tokio::process::Command {
        let (machine, cpu) = match self.accelerator {
            Accelerator::Kvm => ("q35,accel=kvm", "host"),
            Accelerator::Tcg => ("q35,accel=tcg", "max"),
        };
        let memory_mib = params.memory.to_bytes() / (1024 * 1024);
        let console = dir.join(CONSOLE_SOCKET);
        let qmp = dir.join(QMP_SOCKET);
        let mut command = tokio::process::Command::new(&self.config.binary);
        command
            .arg("-name")
            .arg(format!("guest={},process=halyard-vmm", params.hostname))
            .args(["-machine", machine, "-cpu", cpu])
            .arg("-smp")
            .arg(params.ncpus.to_string())
            .arg("-m")
            .arg(format!("{memory_mib}M"))
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-nic",
                "none",
            ])
            .arg("-chardev")
            .arg(format!(
                "socket,id=console,path={},server=on,wait=off",
                console.display()
            ))
            .args(["-serial", "chardev:console"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=qmp,path={},server=on,wait=off",
                qmp.display()
            ))
            .args(["-mon", "chardev=qmp,mode=control"])
            .arg("-pidfile")
            .arg(dir.join(PID_FILE))
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initramfs)
            .arg("-append")
            .arg(
                [format!(
                    "console=ttyS0 quiet panic=-1 halyard.hostname={}",
                    params.hostname
                )]
                .into_iter()
                .chain(super::network::kernel_args(&params.nics))
                .collect::<Vec<_>>()
                .join(" "),
            )
            // Paused until the sled agent is connected and Nexus asks it to run.
            .arg("-S");
        // The disks, boot disk first; a migration target attaches the same exports.
        command.args(super::disks::command_line_args(&params.disks));
        // The NICs: taps QEMU makes in the root namespace, moved to the switch by the task.
        command.args(super::network::command_line_args(id, &params.nics));
        command
    }
}

/// What woke the VMM's task.
enum Wakeup {
    Command(Option<Command>),
    Event(Option<qmp::Event>),
    Exited(std::io::Result<ExitStatus>),
    HardStop,
}

impl QemuVmm {
    /// Runs the VMM until its process is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Ended {
        let (qmp, mut events) = match self.connect().await {
            Ok((qmp, events)) => (qmp, Some(events)),
            Err(e) => {
                error!(self.log, "could not connect to QEMU"; "error" => %e,
                    "qemu_log" => self.qemu_log());
                let _ = self.child.start_kill();
                let status = self.child.wait().await;
                return self.exited(status).await;
            }
        };
        // QEMU answers on QMP only once its taps exist: connect them before the guest runs.
        if let Err(e) = self.switch.attach(self.id, &self.nics).await {
            error!(self.log, "could not connect the VMM's NICs"; "error" => %e);
            let _ = self.child.start_kill();
            let status = self.child.wait().await;
            return self.exited(status).await;
        }
        loop {
            let hard_stop_at = self.hard_stop_at;
            let wakeup = tokio::select! {
                command = commands.recv() => Wakeup::Command(command),
                event = next_event(&mut events) => Wakeup::Event(event),
                status = self.child.wait() => Wakeup::Exited(status),
                _ = sleep_until(hard_stop_at) => Wakeup::HardStop,
            };
            match wakeup {
                Wakeup::Command(Some(command)) => self.handle(command, &qmp).await,
                // The sled agent is shutting down, or unregistered the VMM: end it now.
                Wakeup::Command(None) => self.end_now("the sled agent let go of it"),
                Wakeup::Event(Some(event)) => self.on_event(event),
                // QMP closed: the process is ending; its exit follows.
                Wakeup::Event(None) => events = None,
                Wakeup::Exited(status) => return self.exited(status).await,
                Wakeup::HardStop => {
                    warn!(self.log, "the guest did not power off in time; ending QEMU";
                        "stop_timeout_ms" => self.stop_timeout.as_millis());
                    self.hard_stop_at = None;
                    let _ = self.child.start_kill();
                }
            }
        }
    }

    /// Connects to QMP (with events pumped into a channel) and to the serial console.
    async fn connect(&mut self) -> anyhow::Result<(Arc<Qmp>, mpsc::Receiver<qmp::Event>)> {
        let qmp_socket = wait_for_socket(&self.dir.join(QMP_SOCKET), &mut self.child).await?;
        let console_socket =
            wait_for_socket(&self.dir.join(CONSOLE_SOCKET), &mut self.child).await?;
        let (qmp, events) = Qmp::negotiate(qmp_socket, &self.log).await?;
        pump_console(
            console_socket,
            Arc::clone(&self.console),
            Arc::clone(&self.power_button_armed),
            self.log.clone(),
        );
        Ok((Arc::new(qmp), events))
    }

    async fn handle(&mut self, command: Command, qmp: &Arc<Qmp>) {
        match command {
            Command::Request { requested, reply } => {
                let result = self.request(requested, qmp).await;
                let _ = reply.send(result.map(|()| self.runtime.snapshot()));
            }
            Command::MigrationIn { step, reply } => {
                let _ = reply.send(self.migration_in(step, qmp).await);
            }
            Command::Fault {
                fault: SimFault::LoseNextFinishReply,
                reply,
            } => {
                info!(
                    self.log,
                    "test hook: the next migration out loses finish's reply"
                );
                self.lose_next_finish_reply = true;
                let _ = reply.send(Ok(()));
            }
            Command::Fault {
                fault: SimFault::Panic,
                reply,
            } => {
                // Answer first, as the simulator does, so the caller sees the hook taken.
                let _ = reply.send(Ok(()));
                panic!("injected fault: the task of VMM {} panics", self.id);
            }
            Command::Fault { reply, .. } => {
                let _ = reply.send(Err(Error::invalid_request(
                    "faults can only be injected into simulated VMMs",
                )));
            }
            // The simulated backend's migration driver; QEMU migrates on its own.
            Command::MigrationOutPhase { reply, .. } => {
                let _ = reply.send(true);
            }
            Command::MigrationOutFinished { result } => {
                self.migration_out_finished(result, qmp).await
            }
            Command::MigrationTargetGone {
                migration_id,
                reply,
            } => {
                if self.migrating_out == Some(migration_id) {
                    warn!(self.log, "the migration's target is gone for good; the migration \
                        fails here"; "migration_id" => %migration_id);
                    if let Some(target_gone) = &self.target_gone {
                        target_gone.send_replace(true);
                    }
                } else {
                    info!(self.log, "told a migration's target is gone; not migrating there";
                        "migration_id" => %migration_id, "migrating_out" => ?self.migrating_out);
                }
                let _ = reply.send(Ok(self.runtime.snapshot()));
            }
            Command::Vcpus { paused, reply } => {
                let _ = reply.send(self.put_vcpus(paused, qmp).await);
            }
            Command::Kill => self.end_now("it was unregistered"),
        }
    }

    fn situation(&self) -> VmmSituation {
        VmmSituation {
            id: self.id,
            state: self.runtime.current(),
            is_migration_target: self.migration_target.is_some(),
            migrating_out: self.migrating_out.is_some(),
        }
    }

    /// QMP `stop` (which drains the guest's block requests and flushes its disks before it
    /// answers) or `cont`.
    async fn put_vcpus(&mut self, paused: bool, qmp: &Arc<Qmp>) -> Result<(), Error> {
        if !crate::admission::admit_vcpus(self.situation(), self.vcpus_paused, paused)? {
            return Ok(());
        }
        if paused {
            qmp.call(qmp::stop {}, "pause the guest").await?;
        } else {
            qmp.call(qmp::cont {}, "resume the guest").await?;
        }
        self.vcpus_paused = paused;
        info!(self.log, "vCPUs paused or resumed"; "paused" => paused);
        Ok(())
    }

    async fn request(&mut self, requested: VmmStateRequested, qmp: &Arc<Qmp>) -> Result<(), Error> {
        let situation = self.situation();
        crate::admission::refuse_while_paused(situation, self.vcpus_paused, &requested)?;
        let earlier_target = match &requested {
            VmmStateRequested::MigrateOut { migration_id, .. } => {
                self.migrations_out.get(migration_id).copied()
            }
            _ => None,
        };
        match admit(situation, &requested, earlier_target) {
            Admission::Start => {
                self.runtime.set_state(VmmState::Starting);
                qmp.call(qmp::cont {}, "run the guest").await?;
                self.runtime.set_state(VmmState::Running);
                Ok(())
            }
            // Never ran: nothing in it to shut down gracefully.
            Admission::Stop { never_ran: true } => {
                self.runtime.set_state(VmmState::Stopping);
                self.end_now("it was stopped before it ran");
                Ok(())
            }
            Admission::Stop { never_ran: false }
                if !self.power_button_armed.load(Ordering::SeqCst) =>
            {
                self.runtime.set_state(VmmState::Stopping);
                self.end_now("it was stopped while the guest was still booting (before it armed its power button)");
                Ok(())
            }
            Admission::Stop { never_ran: false } => {
                self.runtime.set_state(VmmState::Stopping);
                // A paused guest could not hear the power button.
                if std::mem::take(&mut self.vcpus_paused)
                    && let Err(e) = qmp.call(qmp::cont {}, "resume the guest to stop it").await
                {
                    warn!(self.log, "resuming the paused guest to stop it"; "error" => %e);
                }
                self.exit_expected = true;
                self.hard_stop_at = Some(Instant::now() + self.stop_timeout);
                if let Err(e) = qmp.call(qmp::system_powerdown {}, "power off").await {
                    warn!(self.log, "ACPI powerdown failed; ending QEMU"; "error" => %e);
                    self.end_now("ACPI powerdown failed");
                }
                Ok(())
            }
            Admission::Reboot => {
                self.runtime.set_state(VmmState::Rebooting);
                // The guest boots again: deaf to its power button until its banner.
                self.power_button_armed.store(false, Ordering::SeqCst);
                let reset = qmp.call(qmp::system_reset {}, "reset the guest").await;
                self.runtime.set_state(VmmState::Running);
                reset.map(|_| ())
            }
            Admission::AlreadyDone => Ok(()),
            Admission::Refused(error) => Err(error),
            Admission::MigrateOut {
                migration_id,
                target_propolis_id,
                target_sled_id,
                target_address,
            } => {
                info!(self.log, "migrating out"; "migration_id" => %migration_id,
                        "target" => %target_propolis_id, "target_sled_id" => %target_sled_id,
                        "target_address" => %target_address);
                self.migrations_out.insert(migration_id, target_propolis_id);
                self.migrating_out = Some(migration_id);
                let (target_gone, target_gone_signal) = target_gone_signal();
                self.target_gone = Some(target_gone);
                self.runtime
                    .set_migration_out(migration_id, MigrationState::InProgress);
                self.runtime.set_state(VmmState::Migrating);
                let finish_hook = if std::mem::take(&mut self.lose_next_finish_reply) {
                    FinishHook::LoseFirstReply
                } else {
                    FinishHook::None
                };
                let migration = OutboundMigration {
                    source_propolis_id: self.id,
                    migration_id,
                    target_propolis_id,
                    target_sled_id,
                    target: halyard_sled_agent_client::Client::new_with_client(
                        &format!("https://{target_address}"),
                        self.peer_http.clone(),
                    ),
                    qmp: Arc::clone(qmp),
                    commands: self.commands.clone(),
                    finish_hook,
                    target_gone: target_gone_signal,
                    log: self.log.clone(),
                };
                tokio::spawn(migration.run());
                Ok(())
            }
        }
    }

    async fn migration_out_finished(&mut self, result: Result<(), String>, qmp: &Arc<Qmp>) {
        let Some(migration_id) = self.migrating_out.take() else {
            return;
        };
        self.target_gone = None;
        match result {
            Ok(()) => {
                info!(self.log, "migrated out; ending the source QEMU";
                    "migration_id" => %migration_id);
                self.runtime
                    .set_migration_out(migration_id, MigrationState::Completed);
                self.end_now("its instance moved to the migration target");
            }
            Err(reason) => {
                warn!(self.log, "migration out failed; the guest keeps running here";
                    "migration_id" => %migration_id, "reason" => %reason);
                // QEMU resumes a guest whose migration failed; one whose migration completed
                // but whose target then could not take over is paused and resumed here.
                if let Err(e) = qmp.call(qmp::cont {}, "resume the guest").await {
                    warn!(self.log, "resuming the guest after the failed migration"; "error" => %e);
                }
                self.runtime
                    .set_migration_out(migration_id, MigrationState::Failed);
                self.runtime.set_state(VmmState::Running);
            }
        }
    }

    async fn migration_in(
        &mut self,
        step: MigrationInStep,
        qmp: &Arc<Qmp>,
    ) -> Result<MigrationInReply, Error> {
        let expected = self.migration_target.filter(|t| {
            t.migration_id == step.migration_id && t.source_propolis_id == step.source_propolis_id
        });
        if expected.is_none() {
            return Err(Error::conflict(format!(
                "VMM {} is not the target of migration {} from VMM {}",
                self.id, step.migration_id, step.source_propolis_id
            )));
        }
        if self.runtime.migration_in() == Some(MigrationState::Failed) {
            return Err(Error::conflict(format!(
                "migration {} already failed on target VMM {}",
                step.migration_id, self.id
            )));
        }
        match step.phase {
            MigrationPhase::Sync => {
                if self.incoming.is_none() {
                    let address = self.listen_for_migration(qmp).await?;
                    self.incoming = Some(address);
                    self.runtime.set_migration_in(MigrationState::InProgress);
                    self.runtime.set_state(VmmState::Migrating);
                }
                Ok(MigrationInReply {
                    incoming_address: self.incoming,
                })
            }
            MigrationPhase::Pause | MigrationPhase::Transfer => Ok(MigrationInReply {
                incoming_address: self.incoming,
            }),
            MigrationPhase::Finish => {
                if self.runtime.migration_in() != Some(MigrationState::Completed) {
                    if self.incoming.is_none() {
                        return Err(Error::conflict(format!(
                            "migration {} cannot finish on VMM {}: it never started",
                            step.migration_id, self.id
                        )));
                    }
                    if let Err(e) = wait_for_incoming(qmp).await {
                        // The guest never resumed here and never will: a definite refusal,
                        // so the source resumes its own copy.
                        warn!(self.log, "the incoming migration did not complete";
                            "migration_id" => %step.migration_id, "error" => %e);
                        self.runtime.set_migration_in(MigrationState::Failed);
                        return Err(Error::conflict(format!(
                            "migration {} cannot finish on VMM {}: {e}",
                            step.migration_id, self.id
                        )));
                    }
                    qmp.call(qmp::cont {}, "resume the migrated guest").await?;
                    info!(self.log, "migrated in; the guest runs here now";
                        "migration_id" => %step.migration_id);
                    self.runtime.set_migration_in(MigrationState::Completed);
                    self.runtime.set_state(VmmState::Running);
                }
                Ok(MigrationInReply {
                    incoming_address: self.incoming,
                })
            }
        }
    }

    /// Opens the migration stream's listening socket on a free port of this sled's address,
    /// for a TLS stream from the source sled's QEMU only.
    async fn listen_for_migration(&self, qmp: &Arc<Qmp>) -> Result<SocketAddr, Error> {
        // QEMU listens itself; a free port is found by binding and releasing it (another
        // process could take it in between; then migrate-incoming fails and the migration
        // fails cleanly).
        let port = std::net::TcpListener::bind((self.listen_ip, 0))
            .and_then(|listener| listener.local_addr())
            .map_err(|e| Error::unavailable(format!("finding a free migration port: {e}")))?
            .port();
        let address = SocketAddr::new(self.listen_ip, port);
        // TLS, admitting only the source sled's certificate (`tls`).
        qmp.call(
            tls::incoming_parameters(),
            "accept the migration only over TLS from its source sled",
        )
        .await?;
        let listen = qmp::migrate_incoming {
            uri: Some(format!("tcp:{address}")),
            channels: None,
            exit_on_error: None,
        };
        qmp.call(listen, "listen for the migration").await?;
        info!(self.log, "listening for the incoming migration"; "address" => %address);
        Ok(address)
    }

    fn on_event(&mut self, event: qmp::Event) {
        match event {
            // The guest powered itself off (or obeyed ACPI powerdown): QEMU exits next.
            qmp::Event::SHUTDOWN { data, .. } if data.guest => {
                info!(self.log, "the guest powered off"; "reason" => ?data.reason);
                self.exit_expected = true;
                if !self.runtime.current().is_terminal() {
                    self.runtime.set_state(VmmState::Stopping);
                }
            }
            // The guest rebooted itself (a `reboot`, or a panic with panic=-1).
            qmp::Event::RESET { data, .. }
                if data.guest && self.runtime.current() == VmmState::Running =>
            {
                info!(self.log, "the guest rebooted"; "reason" => ?data.reason);
                self.runtime.set_state(VmmState::Rebooting);
                self.runtime.set_state(VmmState::Running);
            }
            // A replica failed a request or was outvoted on a read: the disk goes on on the
            // others. Logged at the 1st, 2nd, 4th, 8th, ... report per replica (an unreachable
            // replica fails every request).
            qmp::Event::QUORUM_REPORT_BAD { data, .. } => {
                let count = self
                    .bad_replica_reports
                    .entry(data.node_name.clone())
                    .or_default();
                *count += 1;
                if count.is_power_of_two() {
                    let replica = super::disks::replica_of_node(&self.disks, &data.node_name);
                    warn!(self.log, "a disk replica failed a request or disagreed with the others";
                        "disk_id" => ?replica.map(|(disk, _)| disk.disk_id),
                        "replica" => ?replica.map(|(_, export)| export),
                        "node" => %data.node_name, "op" => ?data.type_, "error" => ?data.error,
                        "sector" => data.sector_num, "sectors" => data.sectors_count,
                        "reports" => *count);
                }
            }
            // Too few replicas agreed or answered: the guest saw an I/O error.
            qmp::Event::QUORUM_FAILURE { data, .. } => {
                error!(self.log, "a disk lost its quorum: the guest got an I/O error";
                    "node" => %data.reference, "sector" => data.sector_num,
                    "sectors" => data.sectors_count);
            }
            _ => {}
        }
    }

    /// Ends the QEMU process; its exit (handled by the task's loop) ends the VMM.
    fn end_now(&mut self, why: &str) {
        info!(self.log, "ending QEMU"; "why" => why);
        self.exit_expected = true;
        self.hard_stop_at = None;
        let _ = self.child.start_kill();
    }

    /// The process has exited: clean up, then say how the VMM ended.
    async fn exited(mut self, status: std::io::Result<ExitStatus>) -> Ended {
        let final_state = if self.exit_expected {
            self.runtime.set_state(VmmState::Stopped);
            info!(self.log, "QEMU exited"; "status" => ?status);
            VmmState::Destroyed
        } else {
            error!(self.log, "QEMU died"; "status" => ?status, "qemu_log" => self.qemu_log());
            self.runtime.fail_unfinished_migrations();
            VmmState::Failed
        };
        self.console.close();
        // Its taps (gone with QEMU's file descriptors, or deleted here) and any VNI segment
        // left without a NIC, before the VMM is reported gone.
        self.switch.detach(self.id).await;
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
            warn!(self.log, "removing the VMM's directory"; "dir" => %self.dir.display(),
                "error" => %e);
        }
        Ended {
            final_state,
            publish: self.runtime.into_sender(),
        }
    }

    /// The end of QEMU's own log, for error reports.
    fn qemu_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join(QEMU_LOG)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

/// Waits for QEMU to open a socket, unless it exits first.
async fn wait_for_socket(path: &std::path::Path, child: &mut Child) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!("connecting to {}: {e}", path.display())
            }
            Err(_) => {}
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("QEMU exited ({status}) before opening {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Copies console output into the ring buffer (setting `power_button_armed` when the boot
/// banner goes by) and typed input to the guest, until the socket closes.
fn pump_console(
    socket: UnixStream,
    console: Arc<SerialConsole>,
    power_button_armed: Arc<AtomicBool>,
    log: Logger,
) {
    let (mut reader, mut writer) = tokio::io::split(socket);
    let output = Arc::clone(&console);
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        let mut banner = BannerScanner::default();
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) => return,
                Ok(n) => {
                    output.record_output(&buffer[..n]);
                    if banner.saw_banner(&buffer[..n]) {
                        power_button_armed.store(true, Ordering::SeqCst);
                    }
                }
                Err(e) => {
                    warn!(log, "reading the serial console"; "error" => %e);
                    return;
                }
            }
        }
    });
    if let Some(mut input) = console.take_input() {
        tokio::spawn(async move {
            while let Some(bytes) = input.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Waits until an inbound migration's stream has been fully received.
async fn wait_for_incoming(qmp: &Arc<Qmp>) -> Result<(), Error> {
    let deadline = Instant::now() + INCOMING_COMPLETION_TIMEOUT;
    loop {
        let info = qmp
            .call(qmp::query_migrate {}, "report the incoming migration")
            .await?;
        match info.status {
            Some(qmp::MigrationStatus::completed) => return Ok(()),
            Some(qmp::MigrationStatus::failed | qmp::MigrationStatus::cancelled) => {
                return Err(Error::conflict(format!(
                    "the incoming migration failed: {}",
                    info.error_desc.unwrap_or_default()
                )));
            }
            _ if Instant::now() > deadline => {
                return Err(Error::unavailable(
                    "the incoming migration did not complete in time",
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The next QMP event, or never once QMP has closed.
async fn next_event(events: &mut Option<mpsc::Receiver<qmp::Event>>) -> Option<qmp::Event> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}
