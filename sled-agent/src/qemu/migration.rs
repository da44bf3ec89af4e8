//! An outbound live migration between two QEMU VMMs, carried out by QEMU itself.
//!
//! The protocol is the one every backend speaks (the source's sled agent pushes phases into
//! the target's `migration-in` endpoint), with QEMU moving the memory:
//!
//! 1. `sync`: the target's QEMU starts listening (`migrate-incoming`) and the target's sled
//!    agent answers with the address.
//! 2. The source's QEMU sends the guest there (QMP `migrate`, over mutual TLS with the
//!    deployment's CA: see [`super::tls`]) while it keeps running, pauses
//!    it for the last pass, and reports `completed` (or `failed`); the source watches
//!    `query-migrate`.
//! 3. `finish`: the target's QEMU resumes the guest. Only then does the source's QEMU end.
//!
//! The target resuming the guest is the commit point. If anything fails before `finish` is
//! pushed, or the target refuses `finish` (4xx: it did not resume), the guest is resumed on
//! the source (QEMU does that itself for a failed transfer; the VMM task does it for a
//! completed transfer whose target could not take over), so the instance keeps running where
//! it was. If the source cannot tell whether the target resumed (the reply to `finish` was
//! lost), the guest stays paused on the source while it asks the target again
//! ([`push_finish`]): the guest never runs on both. Only Nexus's word that the target is gone
//! for good (its sled expunged: `Command::MigrationTargetGone`) ends that wait otherwise: the
//! guest resumes here, and a transfer still under way is cancelled (a stream to a dead host
//! would only end when TCP gives up).

use super::qmp::Qmp;
use super::tls;
use crate::vmm_runtime::{Command, FinishHook, TARGET_GONE, push_finish};
use halyard_common::ids::{MigrationUuid, SledUuid, VmmUuid};
use halyard_sled_agent_api::{MigrationInStep, MigrationPhase};
use qapi::qmp;
use slog::{Logger, info};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often the source asks QEMU how the transfer goes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// A transfer that has not completed by then is given up (the guest stays on the source).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// What QEMU reports about a completed transfer.
struct Transfer {
    /// From `migrate` to completion.
    total_ms: i64,
    /// How long the guest was paused.
    downtime_ms: i64,
}

pub(super) struct OutboundMigration {
    pub source_propolis_id: VmmUuid,
    pub migration_id: MigrationUuid,
    pub target_propolis_id: VmmUuid,
    /// The target's sled: the only certificate QEMU sends the guest to (`tls`).
    pub target_sled_id: SledUuid,
    pub target: halyard_sled_agent_client::Client,
    pub qmp: Arc<Qmp>,
    pub commands: mpsc::WeakSender<Command>,
    /// A test hook on `finish`.
    pub finish_hook: FinishHook,
    /// Nexus's word that the target is gone for good (its sled expunged).
    pub target_gone: watch::Receiver<bool>,
    pub log: Logger,
}

impl OutboundMigration {
    pub(super) async fn run(self) {
        let result = self.migrate().await;
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands
                .send(Command::MigrationOutFinished { result })
                .await;
        }
    }

    async fn migrate(&self) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        let reply = self.push(MigrationPhase::Sync).await?;
        let address = reply.ok_or_else(|| {
            "the target VMM gave no address to send to (is it a QEMU VMM?)".to_string()
        })?;
        self.qmp
            .call(
                tls::outgoing_parameters(self.target_sled_id),
                "send the migration over TLS to the target sled only",
            )
            .await
            .map_err(|e| e.to_string())?;
        let send = qmp::migrate {
            uri: Some(format!("tcp:{address}")),
            channels: None,
            detach: None,
            resume: None,
        };
        self.qmp
            .call(send, "migrate")
            .await
            .map_err(|e| e.to_string())?;
        let transfer = self.wait_for_transfer().await?;
        // The commit point: the guest is paused here, sent, and resumes there only.
        let finish = MigrationInStep {
            migration_id: self.migration_id,
            source_propolis_id: self.source_propolis_id,
            phase: MigrationPhase::Finish,
        };
        push_finish(
            &self.target,
            &self.target_propolis_id,
            &finish,
            &self.commands,
            self.finish_hook,
            &mut self.target_gone.clone(),
            &self.log,
        )
        .await?;
        info!(self.log, "migration completed";
            "migration_id" => %self.migration_id,
            "total_ms" => started.elapsed().as_millis(),
            "qemu_total_ms" => transfer.total_ms,
            "downtime_ms" => transfer.downtime_ms);
        Ok(())
    }

    /// Pushes one phase to the target; its answer carries the incoming address.
    async fn push(&self, phase: MigrationPhase) -> Result<Option<SocketAddr>, String> {
        let step = MigrationInStep {
            migration_id: self.migration_id,
            source_propolis_id: self.source_propolis_id,
            phase,
        };
        let reply = self
            .target
            .vmm_migration_in(&self.target_propolis_id, &step)
            .await
            .map_err(|e| format!("target refused phase {phase:?}: {e}"))?;
        Ok(reply.into_inner().incoming_address)
    }

    /// Waits until QEMU has sent everything.
    async fn wait_for_transfer(&self) -> Result<Transfer, String> {
        let deadline = tokio::time::Instant::now() + TRANSFER_TIMEOUT;
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if *self.target_gone.borrow() {
                // Its sled is gone: QEMU's stream there would only end when TCP gives up.
                let _ = self.qmp.call(qmp::migrate_cancel {}, "cancel").await;
                return Err(TARGET_GONE.to_string());
            }
            let info = self
                .qmp
                .call(qmp::query_migrate {}, "report the migration")
                .await
                .map_err(|e| e.to_string())?;
            match info.status {
                Some(qmp::MigrationStatus::completed) => {
                    return Ok(Transfer {
                        total_ms: info.total_time.unwrap_or(0),
                        downtime_ms: info.downtime.unwrap_or(0),
                    });
                }
                Some(qmp::MigrationStatus::failed | qmp::MigrationStatus::cancelled) => {
                    return Err(format!(
                        "QEMU could not send the guest: {}",
                        info.error_desc.as_deref().unwrap_or("no reason given")
                    ));
                }
                _ if tokio::time::Instant::now() > deadline => {
                    let _ = self.qmp.call(qmp::migrate_cancel {}, "cancel").await;
                    return Err("the transfer did not complete in time; cancelled".into());
                }
                _ => {}
            }
        }
    }
}
