//! The simulated VMM backend: each VMM is one task walking the VMM state machine.
//!
//! ```text
//!  creating ──run──► starting ──(start delay)──► running ──reboot──► rebooting ─┐
//!     │                 │                          │  ▲                       │
//!     │                 │                          │  └──(reboot delay)───────┘
//!     └──────stop───────┴─────────stop─────────────┴──► stopping ──(stop delay)──► stopped ─► gone
//!  running ──migrate out──► migrating ──(phases pushed to the target)──► stopped ─► gone
//!                                      └──(a phase fails)──► running
//!  target: creating ──sync──► migrating ──finish──► running
//! ```
//!
//! "Gone" is the task returning; the sled agent then removes the VMM from its table and only
//! then publishes the terminal state (destroyed, or failed after a crash or failed start), so
//! a VMM is never reported destroyed while it still exists. Faults can be injected through the
//! API: fail the next start, crash now, hang the next transition, fail a migration at a phase.
//! Delays come from the config and may be zero; a VMM costs one task and a few hundred bytes,
//! so a sled agent holds thousands.
//!
//! The console behaves like the real guest's, minimally: each boot (and each reboot) writes
//! `HALYARD-GUEST BOOTED hostname=<hostname>`, and typed input is echoed back while the VMM
//! runs, as a tty would.

use crate::admission::{Admission, VmmSituation, admit};
use crate::config::SimConfig;
use crate::console::SerialConsole;
use crate::guest_console::BOOT_BANNER;
use crate::vmm_runtime::{
    Command, Ended, FinishHook, TARGET_GONE, VmmRuntime, push_finish, sleep_until,
    target_gone_signal,
};
use halyard_common::ids::{MigrationUuid, VmmUuid};
use halyard_common::internal_api::SledVmmState;
use halyard_common::{Error, MigrationState, VmmState};
use halyard_sled_agent_api::{
    MigrationInReply, MigrationInStep, MigrationPhase, MigrationTarget, SimFault, VmmStateRequested,
};
use slog::{Logger, info, warn};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// A state change waiting for its delay to pass.
#[derive(Debug, Clone, Copy)]
enum Transition {
    Booted,
    Rebooted,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    transition: Transition,
    /// `None`: hung (an injected fault); it never completes.
    at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Faults {
    fail_next_start: bool,
    hang_next_transition: bool,
    fail_migration_at: Option<MigrationPhase>,
    lose_next_finish_reply: bool,
    lose_next_finish: bool,
}

/// An outbound migration this VMM was asked for, and how it went (kept for every migration
/// out of this VMM, so a repeated request for one is answered from what it did, and a VMM
/// whose migration failed can migrate again).
#[derive(Debug, Clone, Copy)]
struct MigrationOut {
    target_propolis_id: VmmUuid,
}

/// One simulated VMM. Owned by its task; everything else talks to it through [`Command`]s
/// and reads its state from the watch channel it publishes to.
pub(crate) struct SimVmm {
    id: VmmUuid,
    config: SimConfig,
    hostname: String,
    console: Arc<SerialConsole>,
    runtime: VmmRuntime,
    pending: Option<Pending>,
    faults: Faults,
    migration_target: Option<MigrationTarget>,
    /// The last phase of an inbound migration accepted so far.
    migration_in_phase: Option<MigrationPhase>,
    migrations_out: BTreeMap<MigrationUuid, MigrationOut>,
    /// The outbound migration in progress, if any.
    migrating_out: Option<MigrationUuid>,
    /// Set when Nexus declares the target of the migration in progress gone for good.
    target_gone: Option<watch::Sender<bool>>,
    /// Whether its vCPUs are paused (recorded only: nothing runs in a simulated guest).
    vcpus_paused: bool,
    /// For the migration driver to talk back to this task.
    commands: mpsc::WeakSender<Command>,
    /// The HTTP client for other sled agents (a migration's target), with this sled's
    /// certificate.
    peer_http: reqwest::Client,
    log: Logger,
}

impl SimVmm {
    /// A registered VMM in state `creating` (with its inbound migration pending, for a
    /// migration target), and the receiver of its state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: VmmUuid,
        config: SimConfig,
        hostname: String,
        migration_target: Option<MigrationTarget>,
        console: Arc<SerialConsole>,
        commands: mpsc::WeakSender<Command>,
        peer_http: reqwest::Client,
        log: Logger,
    ) -> (SimVmm, watch::Sender<SledVmmState>) {
        let (runtime, publisher) = VmmRuntime::new(migration_target);
        let vmm = SimVmm {
            id,
            config,
            hostname,
            console,
            runtime,
            pending: None,
            faults: Faults::default(),
            migration_target,
            migration_in_phase: None,
            migrations_out: BTreeMap::new(),
            migrating_out: None,
            vcpus_paused: false,
            target_gone: None,
            commands,
            peer_http,
            log,
        };
        (vmm, publisher)
    }

    /// Runs the VMM until it is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Ended {
        let mut input = self.console.take_input();
        loop {
            let deadline = self.pending.and_then(|p| p.at);
            let done = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    // The sled agent is shutting down.
                    None => Some(VmmState::Destroyed),
                },
                _ = sleep_until(deadline) => self.complete_pending(),
                Some(typed) = recv_input(&mut input) => {
                    // A tty echoes what is typed, while there is a guest to type to.
                    if self.current() == VmmState::Running {
                        self.console.record_output(&typed);
                    }
                    None
                }
            };
            if let Some(final_state) = done {
                info!(self.log, "VMM is gone"; "final_state" => %final_state);
                return Ended {
                    final_state,
                    publish: self.runtime.into_sender(),
                };
            }
        }
    }

    fn current(&self) -> VmmState {
        self.runtime.current()
    }

    /// Schedules `transition` after `delay`, unless a hang was injected.
    fn schedule(&mut self, transition: Transition, delay: std::time::Duration) {
        let hang = std::mem::take(&mut self.faults.hang_next_transition);
        self.pending = Some(Pending {
            transition,
            at: (!hang).then(|| Instant::now() + delay),
        });
    }

    /// Handles one command; returns the final state if the VMM is now gone.
    fn handle(&mut self, command: Command) -> Option<VmmState> {
        match command {
            Command::Request { requested, reply } => {
                let result = self.request(requested);
                let _ = reply.send(result.map(|()| self.runtime.snapshot()));
                None
            }
            Command::MigrationIn { step, reply } => {
                let (result, gone) = self.migration_in(step);
                // Simulated phases carry no data: there is nowhere to send any.
                let _ = reply.send(result.map(|()| MigrationInReply {
                    incoming_address: None,
                }));
                gone
            }
            Command::Fault {
                fault: SimFault::Panic,
                reply,
            } => {
                let _ = reply.send(Ok(()));
                panic!("injected fault: the task of VMM {} panics", self.id);
            }
            Command::Fault { fault, reply } => {
                let (result, gone) = self.inject(fault);
                let _ = reply.send(result);
                gone
            }
            Command::MigrationOutPhase { phase, reply } => {
                let fail = self.faults.fail_migration_at == Some(phase);
                if fail {
                    self.faults.fail_migration_at = None; // the next migration only
                }
                let _ = reply.send(!fail);
                None
            }
            Command::MigrationOutFinished { result } => self.migration_out_finished(result),
            Command::MigrationTargetGone {
                migration_id,
                reply,
            } => {
                self.migration_target_gone(migration_id);
                let _ = reply.send(Ok(self.runtime.snapshot()));
                None
            }
            Command::Vcpus { paused, reply } => {
                let situation = self.situation();
                let result = crate::admission::admit_vcpus(situation, self.vcpus_paused, paused)
                    .map(|changed| {
                        if changed {
                            info!(self.log, "vCPUs paused or resumed"; "paused" => paused);
                            self.vcpus_paused = paused;
                        }
                    });
                let _ = reply.send(result);
                None
            }
            Command::Kill => Some(VmmState::Destroyed),
        }
    }

    fn situation(&self) -> VmmSituation {
        VmmSituation {
            id: self.id,
            state: self.current(),
            is_migration_target: self.migration_target.is_some(),
            migrating_out: self.migrating_out.is_some(),
        }
    }

    fn conflict(&self, what: &str, why: &str) -> Error {
        crate::admission::conflict(self.id, self.current(), what, why)
    }

    fn request(&mut self, requested: VmmStateRequested) -> Result<(), Error> {
        let situation = self.situation();
        crate::admission::refuse_while_paused(situation, self.vcpus_paused, &requested)?;
        if requested == VmmStateRequested::Stop {
            self.vcpus_paused = false;
        }
        let earlier_target = match &requested {
            VmmStateRequested::MigrateOut { migration_id, .. } => self
                .migrations_out
                .get(migration_id)
                .map(|out| out.target_propolis_id),
            _ => None,
        };
        match admit(situation, &requested, earlier_target) {
            Admission::Start => {
                self.runtime.set_state(VmmState::Starting);
                let delay = self.config.start_delay();
                self.schedule(Transition::Booted, delay);
            }
            Admission::Stop { never_ran } => {
                self.runtime.set_state(VmmState::Stopping);
                // A VMM that never ran has nothing to shut down: it ends at once.
                let delay = if never_ran {
                    std::time::Duration::ZERO
                } else {
                    self.config.stop_delay()
                };
                self.schedule(Transition::Stopped, delay);
            }
            Admission::Reboot => {
                self.runtime.set_state(VmmState::Rebooting);
                let delay = self.config.reboot_delay();
                self.schedule(Transition::Rebooted, delay);
            }
            Admission::MigrateOut {
                migration_id,
                target_propolis_id,
                target_address,
                // Simulated VMMs carry no stream of their own; the target checks the
                // source's sled on each phase pushed to it (`migration-in`).
                target_sled_id: _,
            } => self.start_migration_out(migration_id, target_propolis_id, target_address),
            Admission::AlreadyDone => {}
            Admission::Refused(error) => return Err(error),
        }
        Ok(())
    }

    fn complete_pending(&mut self) -> Option<VmmState> {
        let pending = self.pending.take()?;
        match pending.transition {
            Transition::Booted if std::mem::take(&mut self.faults.fail_next_start) => {
                warn!(self.log, "injected fault: start failed");
                Some(VmmState::Failed)
            }
            Transition::Booted | Transition::Rebooted => {
                self.runtime.set_state(VmmState::Running);
                let banner = format!("{BOOT_BANNER}{}\r\n", self.hostname);
                self.console.record_output(banner.as_bytes());
                None
            }
            Transition::Stopped => {
                self.runtime.set_state(VmmState::Stopped);
                Some(VmmState::Destroyed)
            }
        }
    }

    fn inject(&mut self, fault: SimFault) -> (Result<(), Error>, Option<VmmState>) {
        info!(self.log, "injecting fault"; "fault" => ?fault);
        match fault {
            SimFault::FailNextStart => self.faults.fail_next_start = true,
            SimFault::HangNextTransition => self.faults.hang_next_transition = true,
            SimFault::Panic => unreachable!("a panic is injected by `handle`"),
            SimFault::FailMigration { phase } => {
                // A migration target whose inbound migration, still under way, is already
                // past `phase` could only fail some later migration: refuse, so the caller
                // knows it missed. (Once the migration in is over, the fault is for the
                // next one, as on any VMM.)
                let in_progress_past = self
                    .migration_in_phase
                    .filter(|last| *last != MigrationPhase::Finish && *last >= phase);
                if let Some(last) = in_progress_past {
                    let err = self.conflict(
                        "arm a migration fault in",
                        &format!(
                            "its inbound migration is under way and past phase {phase:?} \
                             (at {last:?})"
                        ),
                    );
                    return (Err(err), None);
                }
                self.faults.fail_migration_at = Some(phase);
            }
            SimFault::LoseNextFinishReply => self.faults.lose_next_finish_reply = true,
            SimFault::LoseNextFinish => self.faults.lose_next_finish = true,
            SimFault::Crash => {
                return match self.current() {
                    VmmState::Starting
                    | VmmState::Running
                    | VmmState::Rebooting
                    | VmmState::Migrating => {
                        self.runtime.fail_unfinished_migrations();
                        (Ok(()), Some(VmmState::Failed))
                    }
                    _ => (
                        Err(self.conflict("crash", "only a VMM that runs can crash")),
                        None,
                    ),
                };
            }
        }
        (Ok(()), None)
    }

    fn start_migration_out(
        &mut self,
        migration_id: MigrationUuid,
        target_propolis_id: VmmUuid,
        target_address: SocketAddr,
    ) {
        info!(self.log, "migrating out"; "migration_id" => %migration_id,
            "target" => %target_propolis_id, "target_address" => %target_address);
        self.migrations_out
            .insert(migration_id, MigrationOut { target_propolis_id });
        self.migrating_out = Some(migration_id);
        let (target_gone, target_gone_signal) = target_gone_signal();
        self.target_gone = Some(target_gone);
        self.runtime
            .set_migration_out(migration_id, MigrationState::InProgress);
        self.runtime.set_state(VmmState::Migrating);
        let finish_hook = if std::mem::take(&mut self.faults.lose_next_finish) {
            FinishHook::LoseEveryRequest
        } else if std::mem::take(&mut self.faults.lose_next_finish_reply) {
            FinishHook::LoseFirstReply
        } else {
            FinishHook::None
        };
        let driver = MigrationDriver {
            source_propolis_id: self.id,
            migration_id,
            target_propolis_id,
            target: halyard_sled_agent_client::Client::new_with_client(
                &format!("https://{target_address}"),
                self.peer_http.clone(),
            ),
            phase_delay: self.config.migration_phase_delay(),
            commands: self.commands.clone(),
            finish_hook,
            target_gone: target_gone_signal,
            log: self.log.clone(),
        };
        tokio::spawn(driver.run());
    }

    /// Nexus says the target of `migration_id` is gone for good: if that is the migration in
    /// progress, its driver stops (at its next phase, or while it asks for `finish`) and the
    /// guest resumes here. Any other migration is left as it is.
    fn migration_target_gone(&mut self, migration_id: MigrationUuid) {
        if self.migrating_out != Some(migration_id) {
            info!(self.log, "told a migration's target is gone; not migrating there";
                "migration_id" => %migration_id, "migrating_out" => ?self.migrating_out);
            return;
        }
        warn!(self.log, "the migration's target is gone for good; the migration fails here";
            "migration_id" => %migration_id);
        if let Some(target_gone) = &self.target_gone {
            target_gone.send_replace(true);
        }
    }

    fn migration_out_finished(&mut self, result: Result<(), String>) -> Option<VmmState> {
        let migration_id = self.migrating_out.take()?;
        self.target_gone = None;
        match result {
            Ok(()) => {
                info!(self.log, "migrated out"; "migration_id" => %migration_id);
                self.runtime
                    .set_migration_out(migration_id, MigrationState::Completed);
                // The instance lives on the target now; this VMM's work is done.
                self.runtime.set_state(VmmState::Stopped);
                Some(VmmState::Destroyed)
            }
            Err(reason) => {
                warn!(self.log, "migration out failed; still running here";
                    "migration_id" => %migration_id, "reason" => reason);
                self.runtime
                    .set_migration_out(migration_id, MigrationState::Failed);
                self.runtime.set_state(VmmState::Running);
                None
            }
        }
    }

    fn migration_in(&mut self, step: MigrationInStep) -> (Result<(), Error>, Option<VmmState>) {
        let expected = self.migration_target.filter(|t| {
            t.migration_id == step.migration_id && t.source_propolis_id == step.source_propolis_id
        });
        if expected.is_none() {
            let err = Error::conflict(format!(
                "VMM {} is not the target of migration {} from VMM {}",
                self.id, step.migration_id, step.source_propolis_id
            ));
            return (Err(err), None);
        }
        if self
            .migration_in_phase
            .is_some_and(|last| step.phase < last || last == MigrationPhase::Finish)
        {
            // A repeat of an earlier phase, or of `finish` (whose reply the source may have
            // lost): the guest already runs here.
            return (Ok(()), None);
        }
        if self.faults.fail_migration_at == Some(step.phase) {
            self.faults.fail_migration_at = None;
            warn!(self.log, "injected fault: inbound migration fails"; "phase" => ?step.phase);
            self.runtime.set_migration_in(MigrationState::Failed);
            let err = Error::conflict(format!(
                "migration {} failed on target VMM {} at phase {:?}",
                step.migration_id, self.id, step.phase
            ));
            // Half an instance is no instance: the target is gone.
            return (Err(err), Some(VmmState::Destroyed));
        }
        let expected_next = match self.migration_in_phase {
            None => MigrationPhase::Sync,
            Some(last) => MigrationPhase::ALL
                .into_iter()
                .find(|p| *p > last)
                .unwrap_or(MigrationPhase::Finish),
        };
        if step.phase != expected_next && Some(step.phase) != self.migration_in_phase {
            let err = Error::conflict(format!(
                "migration {} phase {:?} arrived out of order (expected {:?})",
                step.migration_id, step.phase, expected_next
            ));
            return (Err(err), None);
        }
        self.migration_in_phase = Some(step.phase);
        match step.phase {
            MigrationPhase::Sync => {
                self.runtime.set_migration_in(MigrationState::InProgress);
                self.runtime.set_state(VmmState::Migrating);
            }
            MigrationPhase::Pause | MigrationPhase::Transfer => {}
            MigrationPhase::Finish => {
                self.runtime.set_migration_in(MigrationState::Completed);
                self.runtime.set_state(VmmState::Running);
            }
        }
        (Ok(()), None)
    }
}

/// The next typed input, or never if there is no input channel.
async fn recv_input(input: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match input {
        Some(input) => input.recv().await,
        None => std::future::pending().await,
    }
}

/// Pushes an outbound migration's phases to the target's sled agent, asking the source VMM
/// before each phase whether it may go on (so a fault can stop it at any phase).
struct MigrationDriver {
    source_propolis_id: VmmUuid,
    migration_id: MigrationUuid,
    target_propolis_id: VmmUuid,
    target: halyard_sled_agent_client::Client,
    phase_delay: std::time::Duration,
    commands: mpsc::WeakSender<Command>,
    /// A test hook on `finish`.
    finish_hook: FinishHook,
    /// Nexus's word that the target is gone for good.
    target_gone: watch::Receiver<bool>,
    log: Logger,
}

impl MigrationDriver {
    async fn run(self) {
        let result = self.push_phases().await;
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands
                .send(Command::MigrationOutFinished { result })
                .await;
        }
    }

    async fn push_phases(&self) -> Result<(), String> {
        let mut target_gone = self.target_gone.clone();
        for phase in MigrationPhase::ALL {
            tokio::time::sleep(self.phase_delay).await;
            if *target_gone.borrow() {
                return Err(TARGET_GONE.to_string());
            }
            let (reply, may_proceed) = oneshot::channel();
            let commands = self.commands.upgrade().ok_or("the source VMM is gone")?;
            commands
                .send(Command::MigrationOutPhase { phase, reply })
                .await
                .map_err(|_| "the source VMM is gone")?;
            drop(commands);
            if !may_proceed.await.map_err(|_| "the source VMM is gone")? {
                return Err(format!("injected fault on the source at phase {phase:?}"));
            }
            let step = MigrationInStep {
                migration_id: self.migration_id,
                source_propolis_id: self.source_propolis_id,
                phase,
            };
            if phase == MigrationPhase::Finish {
                // The commit point: the answer decides where the guest lives.
                push_finish(
                    &self.target,
                    &self.target_propolis_id,
                    &step,
                    &self.commands,
                    self.finish_hook,
                    &mut target_gone,
                    &self.log,
                )
                .await?;
                continue;
            }
            self.target
                .vmm_migration_in(&self.target_propolis_id, &step)
                .await
                .map_err(|e| format!("target refused phase {phase:?}: {e}"))?;
        }
        Ok(())
    }
}
