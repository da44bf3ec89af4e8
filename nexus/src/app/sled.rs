//! Sleds: a sled agent's registration and the reconciliation that follows it, the client
//! Nexus reaches a sled agent with, and the operator's expunge.
//!
//! ## Expunge: sleds declared gone
//!
//! A sled agent that stops answering is left alone (see `Nexus::reconcile_sled`): its VMMs
//! may well still run, so Nexus cannot tell a network blip from a dead sled, and its VMMs
//! keep their reservations. An operator who knows the sled is gone says so (`omdb nexus
//! sled-expunge`, the internal API's `POST /sleds/{id}/expunge`), and then:
//!
//! 1. the sled is marked expunged, for good: placement never picks it again (the claim that
//!    reserves room writes the sled row and requires it in service, so a reservation either
//!    committed before the expunge, and is swept below, or finds the sled expunged), its
//!    registrations are refused with 409, and a saga that was placing a VMM there fails at
//!    its next step (`Nexus::sled_client` and `vmm_steps::create_record` refuse the sled)
//!    and unwinds;
//! 2. every live VMM on it is marked failed (generation bumped) and retired: its reservation
//!    is released, and an instance whose active VMM it was becomes failed (docs/design.md: an
//!    instance whose active VMM failed), from where it can be started again, on another
//!    sled (instance-start accepts a failed instance, as Oxide does);
//! 3. migrations: one *into* the sled loses its target (retired, and the instance's target
//!    and migration ids cleared, the migration's target side marked failed): the instance
//!    runs on, on its source, whose sled agent sees its transfer fail. One *out of* the sled
//!    loses its source: the instance fails, and the target on the healthy sled, which can
//!    never receive the guest now, is unregistered there and retired (`saga_unwound`);
//!    the migration's source side is marked failed;
//! 4. nothing is sent to the expunged sled: unregistering from it is a no-op (nothing there
//!    counts any more), so saga undos that would unregister a VMM there finish;
//! 5. a source paused on a target that was on the sled is told the target is gone (below).
//!
//! **A source paused on a target that is gone.** Migration's commit point is the target's
//! `finish` (the target resuming the guest). A source whose `finish` got no answer (the reply
//! was lost, or the target's sled died) can't tell whether the target resumed, so it stays
//! paused and keeps asking the target's sled agent (`push_finish` in the sled agent). If that
//! sled is expunged, nothing would ever answer it. Expunge is the operator's guarantee that
//! nothing runs on the sled any more, so whatever the target did, its copy of the guest is
//! dead, and the rule is:
//!
//! - (a) Nexus never recorded the target as the instance's active VMM (its `completed` report
//!   never arrived): the source is still live in the database, the instance still points at
//!   it. Nexus tells the source's sled agent that the migration's target is gone
//!   (`PUT /vmms/{id}/migration-out/target-gone`); the source stops asking, resumes the
//!   guest and reports its side failed, and the instance runs on, on its source. Only one
//!   copy can run: the target's is certainly dead. (Should the target have resumed before
//!   dying, the guest goes back to the state it was paused in on the source: what a guest
//!   whose host died loses anyway, and far better than an instance stuck for good.)
//! - (b) Nexus already recorded the target as active (its `completed` report arrived): the
//!   source was retired in the same transaction and unregistered from its sled agent (or, if
//!   that sled agent was out of reach, by reconciliation when it registers again), which
//!   ends its wait; the target, the instance's active VMM, is failed with the sled like any
//!   other, so the instance fails and can be started again.
//!
//! The sources are found by query (`DataStore::migration_list_sources_waiting_on`: migrations
//! into the sled whose source is live and has not ended its side), so a repeated expunge
//! tells any that an interrupted one did not reach. A source on a sled that is expunged too
//! is left alone (its own expunge retired it).
//!
//! Idempotent: a repeat finds the sled expunged already (keeping the first time) and sweeps
//! again, finishing whatever an interrupted first call left (e.g. an orphaned migration target
//! whose sled agent did not answer).
//!
//! A reservation on the sled whose VMM record is not written yet belongs to a start or migrate
//! saga in flight; it is left to that saga, whose next step refuses the sled and whose undo
//! releases the reservation.

use super::Nexus;
use halyard_common::ids::{SledUuid, VmmUuid};
use halyard_common::internal_api::SledAgentInfo;
use halyard_common::{Error, VmmState};
use halyard_db_model::{Migration, Sled, SledResources};
use halyard_db_queries::SledAgentAt;
use halyard_nexus_internal_api::SledExpunged;
use halyard_sled_agent_api::MigrationTargetGone;
use slog::{info, warn};
use std::sync::Arc;

impl Nexus {
    /// A client for a sled's agent, at the address it last registered. `Conflict` for an
    /// expunged sled: nothing is asked of a sled declared gone.
    pub async fn sled_client(
        &self,
        sled_id: SledUuid,
    ) -> Result<halyard_sled_agent_client::Client, Error> {
        let sled = self.datastore.sled_fetch(sled_id).await?;
        self.sled_client_at(
            sled_id,
            SledAgentAt {
                address: sled.address(),
                expunged: sled.is_expunged(),
            },
        )
    }

    /// A client for a sled's agent at an address the caller read from the database already
    /// (in the same read as what it sends), so the sled is not read again.
    pub(crate) fn sled_client_at(
        &self,
        sled_id: SledUuid,
        at: SledAgentAt,
    ) -> Result<halyard_sled_agent_client::Client, Error> {
        if at.expunged {
            return Err(Error::conflict(format!(
                "sled {sled_id} was expunged (declared gone for good); nothing runs there"
            )));
        }
        Ok(halyard_sled_agent_client::Client::new_with_client(
            &format!("https://{}", at.address),
            self.sled_http.clone(),
        ))
    }

    /// Records a sled agent's registration, then (in the background) reconciles what the
    /// database and the sled agent each think runs there. An expunged sled's registration is
    /// refused (409, logged): a sled declared gone stays gone.
    pub async fn sled_register(
        self: &Arc<Self>,
        id: SledUuid,
        info: SledAgentInfo,
    ) -> Result<Sled, Error> {
        let resources = SledResources {
            hardware_threads: info.hardware_threads,
            physical_ram: info.physical_ram,
        };
        let sled = self
            .datastore()
            .sled_upsert(
                Sled::new(id, info.address, info.backend, resources)
                    .with_usable_storage(info.usable_storage)
                    .with_underlay(info.underlay_address),
            )
            .await
            .inspect_err(|e| {
                slog::warn!(self.log(), "sled registration refused";
                    "sled_id" => %id, "address" => %info.address, "error" => %e);
            })?;
        let nexus = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = nexus.reconcile_sled(id).await {
                slog::warn!(nexus.log(), "reconciling a sled failed; the next registration retries";
                    "sled_id" => %id, "error" => %e);
            }
        });
        Ok(sled)
    }

    /// Makes the database and a sled agent agree on what runs there. A sled agent registers
    /// at start and periodically, so this runs after a sled agent restart (when it has lost its
    /// VMMs) and now and then otherwise:
    ///
    /// - a VMM the database thinks runs on the sled (live, past `creating`) that the sled
    ///   agent does not have is gone: it is retired as `failed`, so its instance shows failed
    ///   and can be started again, and its reservation is released. (A VMM still `creating`
    ///   belongs to a start or migrate saga that has not registered it yet; the saga deals
    ///   with it.)
    /// - a VMM the sled agent runs that the database has retired is unregistered.
    ///
    /// A sled agent that stops answering is left alone: its VMMs may well still run, so they
    /// keep their reservations until the sled agent answers again, or until an operator
    /// declares the sled gone (`Nexus::sled_expunge`), which fails and retires them.
    ///
    /// A sled whose VMMs the instance watcher failed for its silence (see
    /// `background::instance_watcher`) gets its mark cleared here, so placement may pick it
    /// again, once this pass has had it destroy every VMM the database retired, which the
    /// sweep that followed the mark had finished before this pass listed them.
    pub async fn reconcile_sled(&self, sled_id: SledUuid) -> Result<(), Error> {
        let mark = self.datastore().sled_fetch(sled_id).await?.time_vmms_failed;
        let clear_mark = match mark {
            Some(mark) => {
                self.datastore()
                    .sled_vmms_failed_swept(sled_id, mark)
                    .await?
            }
            None => false,
        };
        let client = self.sled_client(sled_id).await?;
        let on_sled: std::collections::BTreeSet<VmmUuid> = client
            .vmm_list()
            .await
            .map_err(sled_agent_error)?
            .into_inner()
            .into_iter()
            .map(|v| v.propolis_id)
            .collect();
        let in_db = self.datastore().vmm_list(Some(sled_id), false).await?;
        let live: std::collections::BTreeSet<VmmUuid> = in_db.iter().map(|v| v.id()).collect();
        for vmm in &in_db {
            let past_creating = vmm.state() != VmmState::Creating && !vmm.state().is_terminal();
            if past_creating && !on_sled.contains(&vmm.id()) {
                // Look again: a report may have ended it meanwhile.
                match client.vmm_get_state(&vmm.id()).await {
                    // It ended just now and its last report is on its way: apply it here.
                    Ok(state) => {
                        self.apply_vmm_report(vmm.id(), state.into_inner()).await?;
                    }
                    // The sled agent never heard of it: it restarted and lost it.
                    Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => {
                        info!(self.log(), "sled agent lost a VMM; retiring it as failed";
                            "sled_id" => %sled_id, "propolis_id" => %vmm.id());
                        self.retire_vmm(sled_id, vmm.id(), VmmState::Failed).await?;
                    }
                    Err(e) => return Err(sled_agent_error(e)),
                }
            }
        }
        for stray in on_sled.difference(&live) {
            let retired = match self.datastore().vmm_fetch(*stray).await {
                Ok(vmm) => vmm.time_deleted.is_some(),
                Err(Error::ObjectNotFound { .. }) => true,
                Err(e) => return Err(e),
            };
            if retired {
                info!(self.log(), "sled agent runs a VMM the database has retired; unregistering it";
                    "sled_id" => %sled_id, "propolis_id" => %stray);
                self.unregister_vmm(sled_id, *stray).await?;
            }
        }
        if let Some(mark) = mark.filter(|_| clear_mark)
            && self
                .datastore()
                .sled_clear_vmms_failed(sled_id, mark)
                .await?
        {
            info!(self.log(), "sled agent answers again and destroyed the VMMs failed for its \
                silence; placement may pick the sled again";
                "sled_id" => %sled_id, "time_vmms_failed" => %mark);
        }
        // Its VPC mappings: a sled agent that restarted holds none.
        self.reconcile_sled_mappings(sled_id).await?;
        Ok(())
    }

    /// Declares sled `sled_id` gone for good (see the module doc).
    pub async fn sled_expunge(&self, sled_id: SledUuid) -> Result<SledExpunged, Error> {
        let sled = self.datastore().sled_expunge(sled_id).await?;
        let time_expunged = sled
            .time_expunged
            .ok_or_else(|| Error::internal(format!("sled {sled_id} is not marked expunged")))?;
        warn!(self.log(), "sled expunged: failing and retiring its VMMs";
            "sled_id" => %sled_id, "time_expunged" => %time_expunged);
        let swept = self.fail_vmms_on_sled(sled_id, "expunged").await?;
        Ok(SledExpunged {
            sled_id,
            time_expunged,
            vmms_failed: swept.vmms_failed,
            instances_failed: swept.instances_failed,
            migration_targets_retired: swept.migration_targets_retired,
        })
    }

    /// Fails and retires every live VMM on sled `sled_id`, which the caller has declared gone
    /// (`why`: expunged, or silent past the instance watcher's bound), with what follows
    /// (steps 2, 3 and 5 of the module doc). Idempotent: a repeat finishes what an interrupted
    /// sweep left.
    pub(crate) async fn fail_vmms_on_sled(
        &self,
        sled_id: SledUuid,
        why: &'static str,
    ) -> Result<SledSwept, Error> {
        let _pending = self.mapping_push_pending();
        let mut swept = SledSwept::default();
        for vmm in self.datastore().vmm_list(Some(sled_id), false).await? {
            let was_active = match self.datastore().instance_fetch(vmm.instance_id()).await {
                Ok(instance) => instance.runtime.active_vmm() == Some(vmm.id()),
                Err(Error::ObjectNotFound { .. }) => false,
                Err(e) => return Err(e),
            };
            let outcome = self.datastore().vmm_retire_lost(vmm.id()).await?;
            if outcome.vmm_marked_deleted {
                info!(self.log(), "VMM on a sled declared gone failed and retired";
                    "sled_id" => %sled_id, "why" => why, "propolis_id" => %vmm.id(),
                    "instance_id" => %vmm.instance_id(), "was_active" => was_active);
                swept.vmms_failed.push(vmm.id());
                if was_active && outcome.instance_updated {
                    swept.instances_failed.push(vmm.instance_id());
                }
                // The other sleds stop sending to it (the gone sled itself is told when it
                // answers again, by reconciliation).
                self.push_mappings_best_effort(vmm.instance_id(), sled_id)
                    .await;
            }
        }
        // Migration targets elsewhere that lost their source with the sled: unregister them
        // from their (healthy) sled agents, then retire them.
        for target in self
            .datastore()
            .vmm_list_orphaned_targets_from(sled_id)
            .await?
        {
            info!(self.log(), "retiring a migration target whose source's sled was declared gone";
                "sled_id" => %sled_id, "why" => why, "propolis_id" => %target.id(),
                "target_sled_id" => %target.sled_id());
            self.retire_vmm(target.sled_id(), target.id(), VmmState::SagaUnwound)
                .await?;
            swept.migration_targets_retired.push(target.id());
        }
        // Sources on other sleds that may be paused for good on a target that was here.
        for migration in self
            .datastore()
            .migration_list_sources_waiting_on(sled_id)
            .await?
        {
            self.migration_target_gone(sled_id, &migration).await?;
        }
        Ok(swept)
    }

    /// Tells the source of `migration`, whose target was on expunged sled `sled_id`, that
    /// the target is gone for good: a source paused on it resumes the guest and reports its
    /// side failed (rule (a) of the module doc). Idempotent.
    async fn migration_target_gone(
        &self,
        sled_id: SledUuid,
        migration: &Migration,
    ) -> Result<(), Error> {
        let source_id = migration.source_propolis_id.0;
        let source = self.datastore().vmm_fetch(source_id).await?;
        if self
            .datastore()
            .sled_fetch(source.sled_id())
            .await?
            .is_expunged()
        {
            return Ok(()); // its own sled's expunge retires it
        }
        info!(self.log(), "telling a migration's source that its target's sled was expunged";
            "sled_id" => %sled_id, "migration_id" => %migration.id(),
            "source" => %source_id, "source_sled_id" => %source.sled_id(),
            "target" => %migration.target_propolis_id.0);
        let client = self.sled_client(source.sled_id()).await?;
        let body = MigrationTargetGone {
            migration_id: migration.id(),
        };
        match client.vmm_migration_target_gone(&source_id, &body).await {
            // A head start: its reporter brings the same, and the outcome once it resumed.
            Ok(state) => self
                .apply_vmm_report(source_id, state.into_inner())
                .await
                .map(|_| ()),
            // Its sled agent no longer has it (it restarted): reconciliation retires it.
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => Ok(()),
            Err(e) => Err(sled_agent_error(e)),
        }
    }
}

/// What declaring a sled gone did to the VMMs on it and to migrations touching it.
#[derive(Debug, Default)]
pub(crate) struct SledSwept {
    pub vmms_failed: Vec<VmmUuid>,
    pub instances_failed: Vec<halyard_common::ids::InstanceUuid>,
    pub migration_targets_retired: Vec<VmmUuid>,
}

/// Maps a sled agent client error to an API error: the sled agent's own 4xx keeps its
/// meaning; anything else means the sled agent could not be reached or failed.
pub(crate) fn sled_agent_error<E: std::fmt::Debug>(e: progenitor_client::Error<E>) -> Error {
    match e.status().map(|s| s.as_u16()) {
        Some(404) => Error::conflict(format!("the sled agent does not know this VMM: {e}")),
        Some(status) if (400..500).contains(&status) => {
            Error::conflict(format!("the sled agent refused: {e}"))
        }
        _ => Error::unavailable(format!("sled agent: {e}")),
    }
}
