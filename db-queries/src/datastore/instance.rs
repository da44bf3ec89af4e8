//! Instances.

use super::DataStore;
use super::disk_attach::{detach_all, disk_being_repaired};
use super::project::project_bump_rcgen;
use crate::cached::CacheByText;
use crate::error::{
    TxnError, is_foreign_key_violation, is_unique_violation, public_error_from_diesel,
};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{GenericUuid, InstanceUuid, ProjectUuid};
use halyard_common::{AutoRestartPolicy, Error, InstanceNexusState, Name, ResourceType};
use halyard_db_model::schema::instance;
use halyard_db_model::{
    DbByteCount, DbEnum, DbName, DbTypedUuid, Instance, InstanceRuntimeState, NewInstanceParams,
};

const MIB: u64 = 1024 * 1024;

impl DataStore {
    /// Inserts a new instance (in `nexus_state` `creating`) into a live project.
    ///
    /// Rejects out-of-range sizes and malformed hostnames with `InvalidValue`, a name already
    /// used in the project with `ObjectAlreadyExists`, and a missing project with
    /// `ObjectNotFound`. Inserting the same instance id twice returns the existing record
    /// (sagas repeat actions).
    pub async fn instance_insert(&self, params: NewInstanceParams) -> Result<Instance, Error> {
        validate_new_instance(&params)?;
        let new = Instance::new(params);
        let new = &new;
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            // The insert first, the project's generation bump last: every instance insert in
            // the project queues on that bump's row lock, held until COMMIT, so it comes
            // right before it (one round trip instead of two). Both are in one transaction
            // either way, so a racing project delete still sees the bump or makes it fail.
            // A repeat (the id is there already) inserts nothing and reads the stored record
            // instead: a first insert reads nothing.
            conn.transaction(async |conn| {
                let inserted = diesel::insert_into(instance::table)
                    .values(new)
                    .on_conflict(instance::id)
                    .do_nothing()
                    .returning(Instance::as_returning())
                    .cached_by_text()
                    .get_result(conn)
                    .await
                    .optional()
                    .map_err(|e| {
                        if is_unique_violation(&e) {
                            TxnError::Public(Error::ObjectAlreadyExists {
                                type_name: ResourceType::Instance,
                                name: new.name().to_string(),
                            })
                        } else if is_foreign_key_violation(&e) {
                            TxnError::Public(Error::not_found_by_id(
                                ResourceType::Project,
                                new.project_id().into_untyped_uuid(),
                            ))
                        } else {
                            TxnError::Database(e)
                        }
                    })?;
                let Some(inserted) = inserted else {
                    return instance_fetch_any(conn, new.id())
                        .await?
                        .ok_or_else(|| TxnError::Public(instance_not_found(new.id())));
                };
                project_bump_rcgen(conn, new.project_id()).await?;
                Ok(inserted)
            })
            .await
        })
        .await
    }

    /// A live instance by id.
    pub async fn instance_fetch(&self, id: InstanceUuid) -> Result<Instance, Error> {
        let conn = &mut *self.connection().await?;
        live_instance(conn, id).await
    }

    /// A live instance by its name within a project.
    pub async fn instance_fetch_by_name(
        &self,
        project_id: ProjectUuid,
        name: &Name,
    ) -> Result<Instance, Error> {
        let conn = &mut *self.connection().await?;
        instance::table
            .filter(instance::project_id.eq(DbTypedUuid(project_id)))
            .filter(instance::name.eq(DbName(name.clone())))
            .filter(instance::time_deleted.is_null())
            .select(Instance::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| Error::not_found_by_name(ResourceType::Instance, name))
    }

    /// Changes what may change of a live instance after creation: its size (`ncpus`,
    /// `memory`) and its auto-restart policy (`None`: the default). A new size takes effect
    /// at its next start, so it is refused (`Conflict`) while a VMM runs it; the same size is
    /// always accepted. Returns the updated record.
    pub async fn instance_reconfigure(
        &self,
        id: InstanceUuid,
        ncpus: u16,
        memory: halyard_common::ByteCount,
        auto_restart_policy: Option<AutoRestartPolicy>,
    ) -> Result<Instance, Error> {
        let current = self.instance_fetch(id).await?;
        validate_instance_shape(ncpus, memory, &current.description, &current.hostname)?;
        let conn = &mut *self.connection().await?;
        let same_size = instance::ncpus
            .eq(i64::from(ncpus))
            .and(instance::memory.eq(DbByteCount(memory)));
        let updated: Option<Instance> = diesel::update(instance::table)
            .filter(instance::id.eq(DbTypedUuid(id)))
            .filter(instance::time_deleted.is_null())
            .filter(
                instance::nexus_state
                    .ne(DbEnum(InstanceNexusState::Vmm))
                    .or(same_size),
            )
            .set((
                instance::ncpus.eq(i64::from(ncpus)),
                instance::memory.eq(DbByteCount(memory)),
                instance::auto_restart_policy.eq(auto_restart_policy.map(DbEnum)),
                instance::time_modified.eq(Utc::now()),
            ))
            .returning(Instance::as_returning())
            .get_result(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?;
        match updated {
            Some(instance) => Ok(instance),
            None => {
                let now = live_instance(conn, id).await?;
                Err(Error::conflict(format!(
                    "instance \"{}\" is running: stop it before changing its size ({} vCPUs, \
                     {} now)",
                    now.name(),
                    now.ncpus,
                    now.memory.0
                )))
            }
        }
    }

    /// Failed instances the control plane may restart on its own now: live, failed (their
    /// last VMM failed), whose auto-restart policy is best effort (set, or by default), and
    /// not restarted automatically within `cooldown` (by the database's clock).
    pub async fn instance_list_to_reincarnate(
        &self,
        cooldown: std::time::Duration,
    ) -> Result<Vec<Instance>, Error> {
        let conn = &mut *self.connection().await?;
        reincarnation_candidates(cooldown)
            .order((instance::time_state_updated.asc(), instance::id.asc()))
            .select(Instance::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Claims instance `id` for an automatic restart: records the restart's time if it is
    /// still a candidate (see `instance_list_to_reincarnate`). Returns whether this caller
    /// won it: of several Nexus that found it, exactly one does, and the cooldown starts.
    pub async fn instance_claim_reincarnation(
        &self,
        id: InstanceUuid,
        cooldown: std::time::Duration,
    ) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        let claimed = diesel::update(instance::table)
            .filter(instance::id.eq_any(reincarnation_candidates(cooldown).select(instance::id)))
            .filter(instance::id.eq(DbTypedUuid(id)))
            .set(instance::time_last_auto_restarted.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >("now()")))
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(claimed == 1)
    }

    /// Every instance in every project, oldest first; deleted ones too if `include_deleted`.
    /// For operators (omdb): unpaginated, so not for the API.
    pub async fn instance_list_all(&self, include_deleted: bool) -> Result<Vec<Instance>, Error> {
        let conn = &mut *self.connection().await?;
        let mut query = instance::table.select(Instance::as_select()).into_boxed();
        if !include_deleted {
            query = query.filter(instance::time_deleted.is_null());
        }
        query
            .order((instance::time_created.asc(), instance::id.asc()))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// An instance by id, deleted or not (for operators).
    pub async fn instance_fetch_including_deleted(
        &self,
        id: InstanceUuid,
    ) -> Result<Instance, Error> {
        let conn = &mut *self.connection().await?;
        instance_fetch_any(conn, id)
            .await
            .map_err(TxnError::into_public)?
            .ok_or_else(|| instance_not_found(id))
    }

    /// The live instances with this name, in any project, oldest first (for operators, who
    /// may not know the project).
    pub async fn instance_list_by_name(&self, name: &Name) -> Result<Vec<Instance>, Error> {
        let conn = &mut *self.connection().await?;
        instance::table
            .filter(instance::name.eq(DbName(name.clone())))
            .filter(instance::time_deleted.is_null())
            .order((instance::time_created.asc(), instance::id.asc()))
            .select(Instance::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Writes an instance's runtime state if `new`'s generation is newer than the stored one.
    ///
    /// Returns whether it applied: `false` means a write with this or a later generation
    /// already happened (a stale or repeated write), and nothing changed.
    pub async fn instance_update_runtime(
        &self,
        id: InstanceUuid,
        new: &InstanceRuntimeState,
    ) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        let updated = diesel::update(instance::table)
            .filter(instance::id.eq(DbTypedUuid(id)))
            .filter(instance::time_deleted.is_null())
            .filter(instance::state_generation.lt(new.state_generation))
            .set(new)
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        if updated == 0 {
            // Distinguish "stale" from "no such instance" (on this connection: taking a second
            // one while holding the first can starve the pool).
            instance_fetch_any(conn, id)
                .await
                .map_err(TxnError::into_public)?
                .filter(|found| found.time_deleted.is_none())
                .ok_or_else(|| instance_not_found(id))?;
        }
        Ok(updated > 0)
    }

    /// Marks an instance destroyed (and frees its name), only if no VMM incarnates it, and
    /// detaches every disk naming it and deletes its network interfaces, in one transaction: the `UPDATE` takes the instance
    /// row's lock first, which an attach takes too, so no attach lands between the two (see
    /// `disk_attach.rs`).
    ///
    /// Returns `true` if this call destroyed it, `false` if it already was. An instance with
    /// an active or target VMM gets `Conflict`: stop it first.
    pub async fn instance_mark_destroyed(&self, id: InstanceUuid) -> Result<bool, Error> {
        let updated = self
            .retry_conflicts(|| async move {
                let conn = &mut *self.connection().await?;
                conn.transaction(async |conn| {
                    let now = Utc::now();
                    let updated = diesel::update(instance::table)
                        .filter(instance::id.eq(DbTypedUuid(id)))
                        .filter(instance::time_deleted.is_null())
                        .filter(instance::active_propolis_id.is_null())
                        .filter(instance::target_propolis_id.is_null())
                        .set((
                            instance::time_deleted.eq(now),
                            instance::nexus_state.eq(DbEnum(InstanceNexusState::Destroyed)),
                            instance::state_generation.eq(instance::state_generation + 1),
                            instance::time_state_updated.eq(now),
                        ))
                        .cached_by_text()
                        .execute(conn)
                        .await?;
                    if updated > 0 {
                        // A disk having a region replaced stays attached until that is done
                        // (the replacement took this row's lock too, so it is ordered).
                        if let Some(disk) = disk_being_repaired(conn, id).await? {
                            return Err(TxnError::Public(Error::conflict(format!(
                                "disk {disk} of this instance is having a lost region \
                                 replaced; retry the delete when that is done"
                            ))));
                        }
                        detach_all(conn, id).await?;
                        // Its interfaces go with it: their addresses and MACs are free again.
                        super::network::instance_interfaces_delete_in(conn, id).await?;
                    }
                    Ok::<_, TxnError>(updated)
                })
                .await
            })
            .await?;
        if updated > 0 {
            return Ok(true);
        }
        let conn = &mut *self.connection().await?;
        match instance_fetch_any(conn, id)
            .await
            .map_err(TxnError::into_public)?
        {
            None => Err(instance_not_found(id)),
            Some(found) if found.time_deleted.is_some() => Ok(false),
            Some(found) => Err(Error::conflict(format!(
                "instance \"{}\" is running (it has an active VMM); stop it before deleting it",
                found.name()
            ))),
        }
    }
}

/// An instance by id, deleted or not.
pub(crate) async fn instance_fetch_any(
    conn: &mut AsyncPgConnection,
    id: InstanceUuid,
) -> Result<Option<Instance>, TxnError> {
    Ok(instance::table
        .filter(instance::id.eq(DbTypedUuid(id)))
        .select(Instance::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub(crate) fn instance_not_found(id: InstanceUuid) -> Error {
    Error::not_found_by_id(ResourceType::Instance, id.into_untyped_uuid())
}

/// Checks what the types alone do not: sizes in range, a description of printable text and
/// at most 512 characters, a well-formed hostname. `instance_insert` checks this itself (what
/// a row may hold); Nexus checks the same of a request, through [`validate_instance_shape`],
/// before it records the saga that inserts the instance, so a bad request leaves no saga
/// behind.
/// Live failed instances whose policy allows an automatic restart and whose cooldown is over.
fn reincarnation_candidates(
    cooldown: std::time::Duration,
) -> instance::BoxedQuery<'static, diesel::pg::Pg> {
    let micros = i64::try_from(cooldown.as_micros()).unwrap_or(i64::MAX);
    let cooled_down_since = diesel::dsl::sql::<
        diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
    >(&format!("now() - {micros} * INTERVAL '1 microsecond'"));
    instance::table
        .filter(instance::time_deleted.is_null())
        .filter(instance::nexus_state.eq(DbEnum(InstanceNexusState::Failed)))
        .filter(
            instance::auto_restart_policy
                .is_null()
                .or(instance::auto_restart_policy.eq(DbEnum(AutoRestartPolicy::BestEffort))),
        )
        .filter(
            instance::time_last_auto_restarted
                .is_null()
                .or(instance::time_last_auto_restarted.lt(cooled_down_since)),
        )
        .into_boxed()
}

pub fn validate_new_instance(params: &NewInstanceParams) -> Result<(), Error> {
    validate_instance_shape(
        params.ncpus,
        params.memory,
        &params.description,
        &params.hostname,
    )
}

/// The rules of [`validate_new_instance`], on the fields that carry them.
pub fn validate_instance_shape(
    ncpus: u16,
    memory: halyard_common::ByteCount,
    description: &str,
    hostname: &str,
) -> Result<(), Error> {
    if ncpus == 0 {
        return Err(Error::invalid_value(
            "ncpus",
            "an instance needs at least 1 vCPU",
        ));
    }
    let memory = memory.to_bytes();
    if memory == 0 || !memory.is_multiple_of(MIB) {
        return Err(Error::invalid_value(
            "memory",
            format!("memory must be a positive whole number of MiB, got {memory} bytes"),
        ));
    }
    halyard_common::validate_description(description)?;
    validate_hostname(hostname)
}

/// RFC 1123 host names: dot-separated labels of letters, digits and `-`, each 1–63 long and
/// not starting or ending with `-`; 253 characters at most.
fn validate_hostname(hostname: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Error::invalid_value(
            "hostname",
            format!("{hostname:?} is not a valid host name: {why}"),
        )
    };
    if hostname.is_empty() || hostname.len() > 253 {
        return Err(bad("it must be 1 to 253 characters long"));
    }
    for label in hostname.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad(
                "each dot-separated part must be 1 to 63 characters long",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a part cannot begin or end with '-'"));
        }
    }
    Ok(())
}

/// The live instance `id` on connection `conn` (e.g. the one that just updated it: taking a
/// second connection while holding the first can starve the pool); `ObjectNotFound` if it
/// does not exist or was deleted.
pub(super) async fn live_instance(
    conn: &mut AsyncPgConnection,
    id: InstanceUuid,
) -> Result<Instance, Error> {
    instance_fetch_any(conn, id)
        .await
        .map_err(TxnError::into_public)?
        .filter(|found| found.time_deleted.is_none())
        .ok_or_else(|| instance_not_found(id))
}

#[cfg(test)]
mod tests {
    use super::validate_hostname;

    #[test]
    fn hostnames_follow_rfc_1123() {
        for ok in ["web", "web-1", "a.b.c", "A1", &"a".repeat(63)] {
            assert!(validate_hostname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "a..b",
            "we_b",
            "wéb",
            &"a".repeat(64),
            "a b",
        ] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
    }
}
