//! Leftovers: what a saga left behind when an action's effect landed but its reply was lost
//! and its node then failed (steno never runs a failed node's undo), found so that Nexus's
//! leftover task can release them.
//!
//! Three kinds: an instance claimed by a VMM id that has no VMM record; a reservation whose
//! VMM has no live record; and a VMM still `creating` that is neither its instance's active
//! nor its target VMM. Each is a leftover only once no unfinished saga names it (its instance
//! or VMM id in the saga's DAG, which holds its parameters, or in a node's output): an
//! unfinished saga may still be about to use it, or to undo it.

use super::DataStore;
use super::instance_transition::vmm_released;
use super::sled::release_reservation;
use crate::error::{TxnError, public_error_from_diesel};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use halyard_common::ids::{GenericUuid, InstanceKind, InstanceUuid, VmmKind, VmmUuid};
use halyard_common::{Error, InstanceNexusState, Labelled, VmmState};
use halyard_db_model::schema::{instance, saga, saga_node_event, sled_reservation, vmm};
use halyard_db_model::{DbEnum, DbTypedUuid, SagaState, SledReservation, Vmm};

/// An instance claimed (`nexus_state = vmm`) by a VMM id that has no VMM record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftoverClaim {
    pub instance_id: InstanceUuid,
    pub vmm_id: VmmUuid,
    pub time_claimed: DateTime<Utc>,
}

/// Everything left over and older than asked, that no unfinished saga names.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    pub claims: Vec<LeftoverClaim>,
    pub reservations: Vec<SledReservation>,
    pub creating_vmms: Vec<Vmm>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.reservations.is_empty() && self.creating_vmms.is_empty()
    }
}

/// An instance's id, its active VMM id and when that was last written.
type ClaimRow = (
    DbTypedUuid<InstanceKind>,
    Option<DbTypedUuid<VmmKind>>,
    DateTime<Utc>,
);

impl DataStore {
    /// Leftovers (see the module doc) last changed before `older_than` that no unfinished
    /// saga names.
    pub async fn leftover_list(&self, older_than: DateTime<Utc>) -> Result<Leftovers, Error> {
        let conn = &mut *self.connection().await?;
        let claims: Vec<ClaimRow> = instance::table
            .filter(instance::time_deleted.is_null())
            // As a literal, not a parameter: so every plan, the generic one too, can use the
            // partial index `instance_with_vmm_by_time_state_updated` (most instances are
            // stopped; this is the few that are not).
            .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
                "\"instance\".\"nexus_state\" = '{}'",
                InstanceNexusState::Vmm.label()
            )))
            .filter(instance::time_state_updated.lt(older_than))
            .filter(diesel::dsl::not(diesel::dsl::exists(
                vmm::table.filter(vmm::id.nullable().eq(instance::active_propolis_id)),
            )))
            .select((
                instance::id,
                instance::active_propolis_id,
                instance::time_state_updated,
            ))
            .order(instance::time_state_updated.asc())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        let reservations: Vec<SledReservation> = sled_reservation::table
            .filter(sled_reservation::time_created.lt(older_than))
            .filter(diesel::dsl::not(diesel::dsl::exists(
                vmm::table
                    .filter(vmm::id.eq(sled_reservation::vmm_id))
                    .filter(vmm::time_deleted.is_null()),
            )))
            .select(SledReservation::as_select())
            .order(sled_reservation::time_created.asc())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        let creating_vmms: Vec<Vmm> = vmm::table
            .filter(vmm::time_deleted.is_null())
            // A literal, for the partial index `creating_vmm_by_time_state_updated` (see above).
            .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
                "\"vmm\".\"state\" = '{}'",
                VmmState::Creating.label()
            )))
            .filter(vmm::time_state_updated.lt(older_than))
            .filter(diesel::dsl::not(diesel::dsl::exists(
                instance::table.filter(
                    instance::active_propolis_id
                        .eq(vmm::id.nullable())
                        .or(instance::target_propolis_id.eq(vmm::id.nullable())),
                ),
            )))
            .select(Vmm::as_select())
            .order(vmm::time_state_updated.asc())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        let mut leftovers = Leftovers {
            claims: claims
                .into_iter()
                .filter_map(|(instance_id, vmm_id, time_claimed)| {
                    Some(LeftoverClaim {
                        instance_id: instance_id.0,
                        vmm_id: vmm_id?.0,
                        time_claimed,
                    })
                })
                .collect(),
            reservations,
            creating_vmms,
        };
        if leftovers.is_empty() {
            return Ok(leftovers);
        }
        // What the unfinished sagas name: their DAGs (parameters) and node outputs, as text.
        let unfinished: Vec<serde_json::Value> = saga::table
            .filter(saga::saga_state.ne(DbEnum(SagaState::Done)))
            .select(saga::dag)
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        let outputs: Vec<Option<serde_json::Value>> = saga_node_event::table
            .inner_join(saga::table)
            .filter(saga::saga_state.ne(DbEnum(SagaState::Done)))
            .select(saga_node_event::data)
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        let named: Vec<String> = unfinished
            .iter()
            .chain(outputs.iter().flatten())
            .map(|v| v.to_string())
            .collect();
        let owned = |id: uuid::Uuid| {
            let id = id.to_string();
            named.iter().any(|text| text.contains(&id))
        };
        leftovers.claims.retain(|c| {
            !owned(c.instance_id.into_untyped_uuid()) && !owned(c.vmm_id.into_untyped_uuid())
        });
        leftovers.reservations.retain(|r| {
            !owned(r.instance_id.0.into_untyped_uuid()) && !owned(r.vmm_id().into_untyped_uuid())
        });
        leftovers.creating_vmms.retain(|v| {
            !owned(v.instance_id().into_untyped_uuid()) && !owned(v.id().into_untyped_uuid())
        });
        Ok(leftovers)
    }

    /// Releases a leftover claim: the instance goes back to `no_vmm` (generation bumped),
    /// only if it is still claimed by `vmm_id` and that VMM still has no record. `Ok(false)`:
    /// it no longer was a leftover.
    pub async fn instance_release_leftover_claim(
        &self,
        instance_id: InstanceUuid,
        vmm_id: VmmUuid,
    ) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        let updated = diesel::update(
            instance::table
                .filter(instance::id.eq(DbTypedUuid(instance_id)))
                .filter(instance::nexus_state.eq(DbEnum(InstanceNexusState::Vmm)))
                .filter(instance::active_propolis_id.eq(DbTypedUuid(vmm_id)))
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    vmm::table.filter(vmm::id.eq(DbTypedUuid(vmm_id))),
                ))),
        )
        .set(vmm_released())
        .execute(conn)
        .await
        .map_err(public_error_from_diesel)?;
        Ok(updated == 1)
    }

    /// Releases a leftover reservation (its resources back to its sled), only if its VMM
    /// still has no live record. `Ok(false)`: it no longer was a leftover.
    pub async fn sled_reservation_release_leftover(&self, vmm_id: VmmUuid) -> Result<bool, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let live: i64 = vmm::table
                    .filter(vmm::id.eq(DbTypedUuid(vmm_id)))
                    .filter(vmm::time_deleted.is_null())
                    .count()
                    .get_result(conn)
                    .await?;
                if live > 0 {
                    return Ok::<bool, TxnError>(false);
                }
                release_reservation(conn, vmm_id).await
            })
            .await
        })
        .await
    }
}
