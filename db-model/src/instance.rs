use crate::schema::instance;
use crate::{DbByteCount, DbEnum, DbGeneration, DbName, DbTypedUuid};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::ids::{
    DiskKind, DiskUuid, InstanceKind, InstanceUuid, MigrationKind, MigrationUuid, ProjectKind,
    ProjectUuid, VmmKind, VmmUuid,
};
use halyard_common::{AutoRestartPolicy, ByteCount, Generation, InstanceNexusState, Name};
use serde::{Deserialize, Serialize};

/// An instance: the virtual machine a user asked for, apart from any VMM that runs it.
///
/// Serializable so that a saga's node can hand on the row its statement returned (the
/// instance-start claim's, the instance-create's last step), which spares its caller reading
/// it again.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = instance, check_for_backend(diesel::pg::Pg))]
pub struct Instance {
    pub id: DbTypedUuid<InstanceKind>,
    pub name: DbName,
    pub description: String,
    pub project_id: DbTypedUuid<ProjectKind>,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
    pub ncpus: i64,
    pub memory: DbByteCount,
    pub hostname: String,
    #[diesel(embed)]
    pub runtime: InstanceRuntimeState,
    /// The disk the instance boots from, one of its attached disks. (A row logged by a saga
    /// before the column existed reads back as none.)
    #[serde(default)]
    pub boot_disk_id: Option<DbTypedUuid<DiskKind>>,
    /// The auto-restart policy its owner set; `None`: the default (best effort).
    #[serde(default)]
    pub auto_restart_policy: Option<DbEnum<AutoRestartPolicy>>,
    /// When the control plane last restarted it on its own after it failed.
    #[serde(default)]
    pub time_last_auto_restarted: Option<DateTime<Utc>>,
}

/// What a new instance is made of. The datastore validates it before inserting.
#[derive(Debug, Clone)]
pub struct NewInstanceParams {
    pub id: InstanceUuid,
    pub project_id: ProjectUuid,
    pub name: Name,
    pub description: String,
    pub ncpus: u16,
    pub memory: ByteCount,
    pub hostname: String,
    /// The disk it will boot from (attached by the instance's create saga).
    pub boot_disk_id: Option<DiskUuid>,
    /// The auto-restart policy asked for; `None`: the default.
    pub auto_restart_policy: Option<AutoRestartPolicy>,
}

/// The fields of an instance that change as it runs, all protected by `state_generation`:
/// a write of this struct applies only if its generation is newer than the stored one.
#[derive(
    Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset, Serialize, Deserialize,
)]
#[diesel(table_name = instance, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub struct InstanceRuntimeState {
    pub nexus_state: DbEnum<InstanceNexusState>,
    pub active_propolis_id: Option<DbTypedUuid<VmmKind>>,
    pub target_propolis_id: Option<DbTypedUuid<VmmKind>>,
    pub migration_id: Option<DbTypedUuid<MigrationKind>>,
    pub state_generation: DbGeneration,
    pub time_state_updated: DateTime<Utc>,
}

impl Instance {
    /// A new instance record, in `nexus_state` `creating` with no VMM.
    pub fn new(params: NewInstanceParams) -> Instance {
        let now = crate::now();
        Instance {
            id: params.id.into(),
            name: params.name.into(),
            description: params.description,
            project_id: params.project_id.into(),
            time_created: now,
            time_modified: now,
            time_deleted: None,
            ncpus: params.ncpus.into(),
            memory: params.memory.into(),
            hostname: params.hostname,
            runtime: InstanceRuntimeState {
                nexus_state: InstanceNexusState::Creating.into(),
                active_propolis_id: None,
                target_propolis_id: None,
                migration_id: None,
                state_generation: Generation::new().into(),
                time_state_updated: now,
            },
            boot_disk_id: params.boot_disk_id.map(DbTypedUuid),
            auto_restart_policy: params.auto_restart_policy.map(DbEnum),
            time_last_auto_restarted: None,
        }
    }

    pub fn id(&self) -> InstanceUuid {
        self.id.0
    }

    pub fn project_id(&self) -> ProjectUuid {
        self.project_id.0
    }

    pub fn name(&self) -> &Name {
        &self.name.0
    }

    pub fn boot_disk(&self) -> Option<DiskUuid> {
        self.boot_disk_id.map(|id| id.0)
    }
}

impl InstanceRuntimeState {
    pub fn nexus_state(&self) -> InstanceNexusState {
        self.nexus_state.0
    }

    pub fn generation(&self) -> Generation {
        self.state_generation.0
    }

    pub fn active_vmm(&self) -> Option<VmmUuid> {
        self.active_propolis_id.map(|id| id.0)
    }

    pub fn target_vmm(&self) -> Option<VmmUuid> {
        self.target_propolis_id.map(|id| id.0)
    }

    pub fn migration(&self) -> Option<MigrationUuid> {
        self.migration_id.map(|id| id.0)
    }

    /// A copy with the next generation and the current time, to be edited and written back.
    pub fn next(&self) -> InstanceRuntimeState {
        InstanceRuntimeState {
            state_generation: self.generation().next().into(),
            time_state_updated: crate::now(),
            ..self.clone()
        }
    }
}
