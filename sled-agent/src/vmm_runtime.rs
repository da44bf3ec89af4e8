//! A VMM's runtime state as its backend publishes it: every change bumps the generation of
//! what changed (the VMM, or one side of a migration), so Nexus can apply reports newest-wins.
//! Both backends (sim and qemu) publish through this, so they number changes the same way,
//! and both take the same [`Command`]s and end with an [`Ended`].

use chrono::Utc;
use halyard_common::Error;
use halyard_common::ids::MigrationUuid;
use halyard_common::internal_api::{MigrationRuntimeState, SledVmmState, VmmRuntimeState};
use halyard_common::{Generation, MigrationState, VmmState};
use halyard_sled_agent_api::MigrationTarget;
use halyard_sled_agent_api::{
    MigrationInReply, MigrationInStep, MigrationPhase, SimFault, VmmStateRequested,
};
use tokio::sync::{oneshot, watch};

/// What the sled agent (or the VMM's own migration driver) asks of a VMM's task.
pub(crate) enum Command {
    Request {
        requested: VmmStateRequested,
        reply: oneshot::Sender<Result<SledVmmState, Error>>,
    },
    MigrationIn {
        step: MigrationInStep,
        reply: oneshot::Sender<Result<MigrationInReply, Error>>,
    },
    Fault {
        fault: SimFault,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// From the migration driver: may this phase proceed on the source?
    MigrationOutPhase {
        phase: MigrationPhase,
        reply: oneshot::Sender<bool>,
    },
    /// From the migration driver: how the migration ended.
    MigrationOutFinished { result: Result<(), String> },
    /// From Nexus: this outbound migration's target is gone for good (its sled expunged).
    MigrationTargetGone {
        migration_id: MigrationUuid,
        reply: oneshot::Sender<Result<SledVmmState, Error>>,
    },
    /// Pause (`true`) or resume its vCPUs; its state does not change.
    Vcpus {
        paused: bool,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Unregister: the VMM is destroyed at once.
    Kill,
}

/// How a VMM's task ended: its terminal state and the channel to publish it on.
pub(crate) struct Ended {
    pub final_state: VmmState,
    pub publish: watch::Sender<SledVmmState>,
}

/// A VMM's state as its task owns it, and the channel it publishes on.
pub(crate) struct VmmRuntime {
    state: SledVmmState,
    publish: watch::Sender<SledVmmState>,
}

impl VmmRuntime {
    /// A registered VMM in state `creating` (with its inbound migration pending, for a
    /// migration target), and a second sender of its state: the sled agent subscribes its
    /// readers to it and keeps it to publish `failed` should the VMM's task die.
    pub(crate) fn new(
        migration_target: Option<MigrationTarget>,
    ) -> (VmmRuntime, watch::Sender<SledVmmState>) {
        let now = Utc::now();
        let state = SledVmmState {
            vmm_state: VmmRuntimeState {
                state: VmmState::Creating,
                generation: Generation::new(),
                time_updated: now,
            },
            migration_in: migration_target.map(|target| MigrationRuntimeState {
                migration_id: target.migration_id,
                state: MigrationState::Pending,
                generation: Generation::new(),
                time_updated: now,
            }),
            migration_out: None,
        };
        let (publish, _) = watch::channel(state);
        let publisher = publish.clone();
        (VmmRuntime { state, publish }, publisher)
    }

    pub(crate) fn current(&self) -> VmmState {
        self.state.vmm_state.state
    }

    pub(crate) fn snapshot(&self) -> SledVmmState {
        self.state
    }

    /// The inbound migration's state, if this VMM is a migration target.
    pub(crate) fn migration_in(&self) -> Option<MigrationState> {
        self.state.migration_in.map(|side| side.state)
    }

    pub(crate) fn set_state(&mut self, state: VmmState) {
        let vmm = &mut self.state.vmm_state;
        if vmm.state != state {
            *vmm = VmmRuntimeState {
                state,
                generation: vmm.generation.next(),
                time_updated: Utc::now(),
            };
            self.publish.send_replace(self.state);
        }
    }

    pub(crate) fn set_migration_in(&mut self, state: MigrationState) {
        if let Some(side) = self
            .state
            .migration_in
            .as_mut()
            .filter(|s| s.state != state)
        {
            side.state = state;
            side.generation = side.generation.next();
            side.time_updated = Utc::now();
            self.publish.send_replace(self.state);
        }
    }

    pub(crate) fn set_migration_out(&mut self, migration_id: MigrationUuid, state: MigrationState) {
        let now = Utc::now();
        let side = match self.state.migration_out.as_mut() {
            Some(side) if side.migration_id == migration_id => side,
            _ => self.state.migration_out.insert(MigrationRuntimeState {
                migration_id,
                state: MigrationState::Pending,
                generation: Generation::new(),
                time_updated: now,
            }),
        };
        if side.state != state {
            side.state = state;
            side.generation = side.generation.next();
            side.time_updated = now;
            self.publish.send_replace(self.state);
        }
    }

    /// The VMM died: a migration it was part of and that had not finished has failed, on
    /// this VMM's side (whatever phase it was in, pending included).
    pub(crate) fn fail_unfinished_migrations(&mut self) {
        if self
            .state
            .migration_in
            .is_some_and(|side| !side.state.is_terminal())
        {
            self.set_migration_in(MigrationState::Failed);
        }
        if let Some(side) = self
            .state
            .migration_out
            .filter(|side| !side.state.is_terminal())
        {
            self.set_migration_out(side.migration_id, MigrationState::Failed);
        }
    }

    /// The VMM's task is ending: hand over the channel, so the sled agent publishes the
    /// terminal state once the VMM is out of its table.
    pub(crate) fn into_sender(self) -> watch::Sender<SledVmmState> {
        self.publish
    }
}

/// What a VMM whose task died (it panicked) last said, made final: `failed` (generation
/// bumped), and each side of a migration it took part in that had not finished, failed too.
pub(crate) fn failed_after_death(last: SledVmmState) -> SledVmmState {
    let now = Utc::now();
    let fail = |side: Option<MigrationRuntimeState>| {
        side.map(|side| {
            if side.state.is_terminal() {
                side
            } else {
                MigrationRuntimeState {
                    state: MigrationState::Failed,
                    generation: side.generation.next(),
                    time_updated: now,
                    ..side
                }
            }
        })
    };
    SledVmmState {
        vmm_state: VmmRuntimeState {
            state: VmmState::Failed,
            generation: last.vmm_state.generation.next(),
            time_updated: now,
        },
        migration_in: fail(last.migration_in),
        migration_out: fail(last.migration_out),
    }
}

/// Sleeps until `deadline`, or forever if there is none (a VMM task's timer branch).
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How many times in a row a target that answers may fail `finish` with a server error before
/// the source counts the migration as failed (the target is alive and says it could not
/// resume the guest; a target that did resume answers a repeated `finish` with success).
const FINISH_SERVER_ERRORS_ALLOWED: u32 = 10;

/// Test hooks on `finish`'s way to the target and back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum FinishHook {
    #[default]
    None,
    /// [`SimFault::LoseNextFinishReply`]: the first `finish` is carried out by the target and
    /// its successful reply dropped, as if lost.
    LoseFirstReply,
    /// [`SimFault::LoseNextFinish`]: every `finish` is lost before it reaches the target.
    LoseEveryRequest,
}

/// One outbound migration's word from Nexus that its target is gone for good (the target's
/// sled was expunged): the VMM's task keeps the sender and sets it
/// ([`Command::MigrationTargetGone`]); the migration driver watches the receiver.
pub(crate) fn target_gone_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Waits until the target is declared gone (forever if the VMM's task, which holds the
/// sender, ended without saying so).
pub(crate) async fn target_declared_gone(signal: &mut watch::Receiver<bool>) {
    if signal.wait_for(|gone| *gone).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Why a migration whose target was declared gone failed on its source.
pub(crate) const TARGET_GONE: &str =
    "the migration's target is gone for good (its sled was expunged); the guest resumes here";

/// Pushes the `finish` phase of an outbound migration to its target: the commit point.
///
/// The target resuming the guest is the commit. If the reply says it did, the migration has
/// completed; if the target refused (4xx), it did not resume and never will, so the source may
/// resume its own copy. Any other error (the reply was lost, the target could not be
/// reached, it answered 5xx) leaves the source unable to tell, so the source stays paused and
/// asks again (`finish` is idempotent on the target: a target that has resumed answers it
/// with success) until it gets an answer, until `source` is gone (unregistered: Nexus
/// recorded the target as the instance's active VMM), or until Nexus declares the target gone
/// for good (`target_gone`: its sled was expunged, so it runs nothing and never will; the
/// source then resumes the guest, the only copy there can be).
pub(crate) async fn push_finish(
    target: &halyard_sled_agent_client::Client,
    target_propolis_id: &halyard_common::ids::VmmUuid,
    step: &MigrationInStep,
    source: &tokio::sync::mpsc::WeakSender<Command>,
    hook: FinishHook,
    target_gone: &mut watch::Receiver<bool>,
    log: &slog::Logger,
) -> Result<MigrationInReply, String> {
    debug_assert_eq!(step.phase, MigrationPhase::Finish);
    let mut delay = std::time::Duration::from_millis(50);
    let mut server_errors = 0;
    let mut lose_reply = hook == FinishHook::LoseFirstReply;
    loop {
        if *target_gone.borrow() {
            return Err(TARGET_GONE.to_string());
        }
        let error = if hook == FinishHook::LoseEveryRequest {
            slog::info!(log, "test hook: finish is lost on its way to the target";
                "migration_id" => %step.migration_id, "target" => %target_propolis_id);
            "the request was lost (test hook)".to_string()
        } else {
            let reply = tokio::select! {
                reply = target.vmm_migration_in(target_propolis_id, step) => reply,
                () = target_declared_gone(target_gone) => return Err(TARGET_GONE.to_string()),
            };
            match reply {
                Ok(_) if std::mem::take(&mut lose_reply) => {
                    slog::info!(log, "test hook: the reply to finish is lost";
                        "migration_id" => %step.migration_id, "target" => %target_propolis_id);
                    "the reply was lost (test hook)".to_string()
                }
                Ok(reply) => return Ok(reply.into_inner()),
                Err(e) => {
                    let status = e.status();
                    if status.is_some_and(|s| s.is_client_error()) {
                        return Err(format!("target refused phase Finish: {e}"));
                    }
                    if status.is_some() {
                        server_errors += 1;
                        if server_errors >= FINISH_SERVER_ERRORS_ALLOWED {
                            return Err(format!(
                                "target failed phase Finish {server_errors} times: {e}"
                            ));
                        }
                    }
                    e.to_string()
                }
            }
        };
        if source.upgrade().is_none() {
            return Err("the source VMM is gone".to_string());
        }
        slog::warn!(log, "no answer to finish; the source stays paused and asks again";
            "migration_id" => %step.migration_id, "target" => %target_propolis_id,
            "error" => %error, "retry_in_ms" => delay.as_millis());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = target_declared_gone(target_gone) => return Err(TARGET_GONE.to_string()),
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(2));
    }
}
