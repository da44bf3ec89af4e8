//! VMMs: applying sled agents' reports (and the migration outcomes they carry), and retiring
//! VMMs that ended.

use super::Nexus;
use super::sled::sled_agent_error;
use super::v2p::PushScope;
use halyard_common::ids::{InstanceUuid, SledUuid, VmmUuid};
use halyard_common::internal_api::SledVmmState;
use halyard_common::{Error, MigrationState, VmmState};
use halyard_db_model::{Vmm, VmmRuntimeState};
use halyard_db_queries::{MigrationReport, SledAgentAt, VmmStateReport};
use slog::{info, warn};
use std::time::Duration;

/// The sled of each VMM that reported lately. A VMM never moves (a migration makes a new
/// one), so an entry is never stale: only the first report of a VMM reads its sled from the
/// database to check who may report it. Bounded: past [`VmmSleds::CAPACITY`] entries it starts
/// over (an entry is also dropped when its VMM ends).
#[derive(Debug, Default)]
pub(crate) struct VmmSleds(std::sync::Mutex<std::collections::HashMap<VmmUuid, SledUuid>>);

impl VmmSleds {
    const CAPACITY: usize = 65_536;

    fn get(&self, vmm: VmmUuid) -> Option<SledUuid> {
        self.lock().get(&vmm).copied()
    }

    fn insert(&self, vmm: VmmUuid, sled: SledUuid) {
        let mut map = self.lock();
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(vmm, sled);
    }

    fn remove(&self, vmm: VmmUuid) {
        self.lock().remove(&vmm);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<VmmUuid, SledUuid>> {
        // Every change under this lock is one insert, removal or clear.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Nexus {
    /// The sled a VMM was placed on (which alone may report its state): remembered, since it
    /// never changes, so a VMM's later reports do not read it again.
    pub async fn vmm_sled(&self, vmm_id: VmmUuid) -> Result<SledUuid, Error> {
        if let Some(sled) = self.vmm_sleds.get(vmm_id) {
            return Ok(sled);
        }
        let sled = self.datastore.vmm_fetch(vmm_id).await?.sled_id();
        self.vmm_sleds.insert(vmm_id, sled);
        Ok(sled)
    }

    /// Applies a sled agent's report of a VMM (only what is newer than what Nexus has), and
    /// retires the VMM if the report says it is gone.
    ///
    /// Returns the VMM's record as it is once the report is applied, unless the VMM is
    /// retired (`None`: this report or an earlier one ended it), so a caller that asked the
    /// sled agent for a state can answer with it without reading it again.
    pub async fn apply_vmm_report(
        &self,
        id: VmmUuid,
        state: SledVmmState,
    ) -> Result<Option<Vmm>, Error> {
        let side = |s: halyard_common::internal_api::MigrationRuntimeState| MigrationReport {
            migration_id: s.migration_id,
            state: s.state,
            generation: s.generation,
            time_updated: s.time_updated,
        };
        let report = VmmStateReport {
            vmm_id: id,
            vmm: VmmRuntimeState {
                state: state.vmm_state.state.into(),
                generation: state.vmm_state.generation.into(),
                time_state_updated: state.vmm_state.time_updated,
            },
            migration_in: state.migration_in.map(side),
            migration_out: state.migration_out.map(side),
        };
        let sides = [state.migration_in, state.migration_out];
        // A completed migration first: the target becomes the active VMM before the source's
        // "destroyed" is recorded, so the instance never looks stopped in between, and a
        // source that reports "migrated out, destroyed" is not retired as the active VMM.
        for side in sides
            .iter()
            .flatten()
            .filter(|s| s.state == MigrationState::Completed)
        {
            self.migration_completed(side.migration_id).await?;
        }
        let (_, mut vmm) = self.datastore().vmm_apply_report(&report).await?;
        let mut migration_failed = false;
        for side in sides
            .iter()
            .flatten()
            .filter(|s| s.state == MigrationState::Failed)
        {
            self.migration_failed(side.migration_id).await?;
            migration_failed = true;
        }
        if migration_failed {
            // A failed migration may have retired this very VMM (its target).
            vmm = self.datastore().vmm_fetch(id).await?;
        }
        let reported = state.vmm_state.state;
        if reported.is_terminal() {
            self.vmm_sleds.remove(id);
            if vmm.time_deleted.is_none() {
                self.retire_vmm(vmm.sled_id(), id, reported).await?;
            }
            return Ok(None);
        }
        // Not retired: its instance still points at it (retiring a VMM and moving the
        // pointer are one transaction), even if a newer report than this one ended it.
        Ok(vmm.time_deleted.is_none().then_some(vmm))
    }

    /// A migration completed (either side said so; each says so only once the target runs):
    /// the target becomes the active VMM and the source is retired, in one transaction; then
    /// the source is unregistered from its sled agent. Idempotent.
    async fn migration_completed(
        &self,
        id: halyard_common::ids::MigrationUuid,
    ) -> Result<(), Error> {
        let _pending = self.mapping_push_pending();
        let record = self.datastore().migration_fetch(id).await?;
        let (source, target) = (record.source_propolis_id.0, record.target_propolis_id.0);
        let instance_id = record.instance_id.0;
        if self
            .datastore()
            .instance_migration_complete(instance_id, id, source, target)
            .await?
        {
            info!(self.log(), "migration completed"; "migration_id" => %id,
                "instance_id" => %instance_id, "active" => %target);
            let source_vmm = self.datastore().vmm_fetch(source).await?;
            // The guest runs on the target now: its peers' sleds send to the target's sled.
            self.push_mappings_best_effort(instance_id, source_vmm.sled_id())
                .await;
            self.unregister_vmm(source_vmm.sled_id(), source).await?;
        }
        Ok(())
    }

    /// A migration failed (on either side): the target is retired; the instance runs on, on
    /// its source. Idempotent.
    ///
    /// A completed outcome from either side wins over a failed one from the other: the
    /// target resuming the guest is the commit point, so once either side has reported
    /// completed (or the target has become the instance's active VMM), the guest runs on the
    /// target and the other side's failure retires nothing.
    async fn migration_failed(&self, id: halyard_common::ids::MigrationUuid) -> Result<(), Error> {
        let record = self.datastore().migration_fetch(id).await?;
        let target_id = record.target_propolis_id.0;
        let completed = record.source_state() == MigrationState::Completed
            || record.target_state() == MigrationState::Completed;
        let target_is_active = match self.datastore().instance_fetch(record.instance_id.0).await {
            Ok(instance) => instance.runtime.active_vmm() == Some(target_id),
            Err(Error::ObjectNotFound { .. }) => false,
            Err(e) => return Err(e),
        };
        if completed || target_is_active {
            warn!(self.log(), "a side of a completed migration reported failed; the guest runs \
                on the target, which stays"; "migration_id" => %id, "target" => %target_id,
                "source_state" => %record.source_state(),
                "target_state" => %record.target_state(),
                "target_is_active" => target_is_active);
            return Ok(());
        }
        let target = self.datastore().vmm_fetch(target_id).await?;
        if target.time_deleted.is_none() {
            info!(self.log(), "migration failed; retiring its target"; "migration_id" => %id,
                "target" => %target.id());
            self.retire_vmm(target.sled_id(), target.id(), VmmState::SagaUnwound)
                .await?;
        }
        Ok(())
    }

    /// Fails with `Conflict` if the VMM was retired meanwhile (e.g. its instance failed or was
    /// stopped while a saga prepared it): registering it then would leave a VMM running that
    /// the database has given up on.
    pub(crate) async fn ensure_vmm_not_retired(&self, vmm_id: VmmUuid) -> Result<(), Error> {
        let vmm = self.datastore.vmm_fetch(vmm_id).await?;
        if vmm.time_deleted.is_some() {
            return Err(Error::conflict(format!(
                "VMM {vmm_id} was retired while it was being prepared; retry"
            )));
        }
        Ok(())
    }

    /// Unregisters a VMM from its sled agent (idempotent there), retrying briefly. On an
    /// expunged sled there is nothing to unregister: the sled is gone, and what it ran counts
    /// for nothing.
    pub async fn unregister_vmm(&self, sled_id: SledUuid, vmm_id: VmmUuid) -> Result<(), Error> {
        let sled = self.datastore.sled_fetch(sled_id).await?;
        if sled.is_expunged() {
            return Ok(());
        }
        let client = self.sled_client_at(
            sled_id,
            SledAgentAt {
                address: sled.address(),
                expunged: false,
            },
        )?;
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=4 {
            match client.vmm_unregister(&vmm_id).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 4 => return Err(sled_agent_error(e)),
                Err(e) => {
                    self.metrics.transient_error("vmm_unregister");
                    warn!(self.log, "cannot unregister VMM; retrying";
                        "propolis_id" => %vmm_id, "sled_id" => %sled_id, "error" => %e);
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Retires an ended VMM: unregisters it from its sled agent, then (in one transaction)
    /// marks it retired, releases its reservation and clears the instance's pointer to it.
    /// Idempotent. A migration target orphaned by the end of its source is retired too.
    pub async fn retire_vmm(
        &self,
        sled_id: SledUuid,
        vmm_id: VmmUuid,
        final_state: halyard_common::VmmState,
    ) -> Result<(), Error> {
        let _pending = self.mapping_push_pending();
        self.unregister_vmm(sled_id, vmm_id).await?;
        self.datastore.vmm_retire(vmm_id, final_state).await?;
        // No sled keeps a mapping for a guest that is gone (its sled gets the empty set if it
        // hosts no other interface of the VPC).
        let instance_id = self.datastore.vmm_fetch(vmm_id).await?.instance_id();
        self.push_mappings_best_effort(instance_id, sled_id).await;
        // By query, not from what this retirement cleared: an earlier attempt may have
        // cleared the instance's pointer to the target and then failed to unregister it.
        for target in self
            .datastore
            .vmm_list_orphaned_targets(Some(vmm_id))
            .await?
        {
            self.retire_orphaned_target(&target).await?;
        }
        Ok(())
    }

    /// Pushes the instance's VPCs' mapping sets after one of its VMMs changed or ended on
    /// `sled_id` (which is told too); a failure is logged and left to reconciliation (the
    /// VMM's change is done either way).
    pub(crate) async fn push_mappings_best_effort(
        &self,
        instance_id: InstanceUuid,
        sled_id: SledUuid,
    ) {
        let scope = PushScope {
            also: &[sled_id],
            excluding: None,
            must_reach: None,
        };
        if let Err(e) = self.push_instance_mappings(instance_id, scope).await {
            warn!(self.log, "cannot push VPC mappings; reconciliation will";
                "instance_id" => %instance_id, "sled_id" => %sled_id, "error" => %e);
        }
    }

    pub(crate) async fn retire_orphaned_target(
        &self,
        target: &halyard_db_model::Vmm,
    ) -> Result<(), Error> {
        info!(self.log, "retiring a migration target whose source was retired";
            "propolis_id" => %target.id(), "sled_id" => %target.sled_id(),
            "instance_id" => %target.instance_id());
        self.unregister_vmm(target.sled_id(), target.id()).await?;
        self.datastore
            .vmm_retire(target.id(), halyard_common::VmmState::SagaUnwound)
            .await?;
        Ok(())
    }
}
