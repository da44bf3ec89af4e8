//! Sleds declared gone: the operator's expunge.
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
//!    counts any more), so saga undos that would unregister a VMM there finish.
//!
//! Idempotent: a repeat finds the sled expunged already (keeping the first time) and sweeps
//! again, finishing whatever an interrupted first call left (e.g. an orphaned migration target
//! whose sled agent did not answer).
//!
//! A reservation on the sled whose VMM record is not written yet belongs to a start or migrate
//! saga in flight; it is left to that saga, whose next step refuses the sled and whose undo
//! releases the reservation.

use super::Nexus;
use halyard_common::ids::SledUuid;
use halyard_common::{Error, VmmState};
use halyard_nexus_internal_api::SledExpunged;
use slog::{info, warn};

impl Nexus {
    /// Declares sled `sled_id` gone for good (see the module doc).
    pub async fn sled_expunge(&self, sled_id: SledUuid) -> Result<SledExpunged, Error> {
        let sled = self.datastore().sled_expunge(sled_id).await?;
        let time_expunged = sled
            .time_expunged
            .ok_or_else(|| Error::internal(format!("sled {sled_id} is not marked expunged")))?;
        warn!(self.log(), "sled expunged: failing and retiring its VMMs";
            "sled_id" => %sled_id, "time_expunged" => %time_expunged);
        let mut expunged = SledExpunged {
            sled_id,
            time_expunged,
            vmms_failed: Vec::new(),
            instances_failed: Vec::new(),
            migration_targets_retired: Vec::new(),
        };
        for vmm in self.datastore().vmm_list(Some(sled_id), false).await? {
            let was_active = match self.datastore().instance_fetch(vmm.instance_id()).await {
                Ok(instance) => instance.runtime.active_vmm() == Some(vmm.id()),
                Err(Error::ObjectNotFound { .. }) => false,
                Err(e) => return Err(e),
            };
            let outcome = self.datastore().vmm_retire_lost(vmm.id()).await?;
            if outcome.vmm_marked_deleted {
                info!(self.log(), "VMM on an expunged sled failed and retired";
                    "sled_id" => %sled_id, "propolis_id" => %vmm.id(),
                    "instance_id" => %vmm.instance_id(), "was_active" => was_active);
                expunged.vmms_failed.push(vmm.id());
                if was_active && outcome.instance_updated {
                    expunged.instances_failed.push(vmm.instance_id());
                }
            }
        }
        // Migration targets elsewhere that lost their source with the sled: unregister them
        // from their (healthy) sled agents, then retire them.
        for target in self
            .datastore()
            .vmm_list_orphaned_targets_from(sled_id)
            .await?
        {
            info!(self.log(), "retiring a migration target whose source's sled was expunged";
                "sled_id" => %sled_id, "propolis_id" => %target.id(),
                "target_sled_id" => %target.sled_id());
            self.retire_vmm(target.sled_id(), target.id(), VmmState::SagaUnwound)
                .await?;
            expunged.migration_targets_retired.push(target.id());
        }
        Ok(expunged)
    }
}
