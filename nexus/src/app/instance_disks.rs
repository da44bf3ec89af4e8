//! Disks on instances: what the external API's attach, detach and list do. The rules (stopped
//! instances only, one instance per disk, at most 8 per instance) are kept by the database
//! statements the sagas run (`db-queries/src/datastore/disk_attach.rs`).

use super::Nexus;
use super::sagas::{disk_attach, disk_detach};
use halyard_common::ids::{DiskUuid, GenericUuid, InstanceUuid};
use halyard_common::{DiskState, Error, NameOrId, ResourceType};
use halyard_db_model::{Disk, Instance};
use halyard_db_queries::PaginatedBy;
use std::sync::Arc;

impl Nexus {
    /// The disk a request names for an instance: by name within the instance's project, or by
    /// id. A disk of another project is not found (as Oxide: a disk is attached within its
    /// project), whoever asks.
    pub async fn instance_disk_lookup(
        &self,
        instance: &Instance,
        disk: &NameOrId,
    ) -> Result<Disk, Error> {
        match disk {
            NameOrId::Name(name) => {
                self.datastore()
                    .disk_fetch_by_name(instance.project_id(), name)
                    .await
            }
            NameOrId::Id(id) => {
                let id = DiskUuid::from_untyped_uuid(*id);
                let found = self.datastore().disk_fetch(id).await?;
                if found.project_id() == instance.project_id() {
                    Ok(found)
                } else {
                    Err(Error::not_found_by_id(
                        ResourceType::Disk,
                        id.into_untyped_uuid(),
                    ))
                }
            }
        }
    }

    /// Attaches a disk to a stopped instance (the disk-attach saga); the disk as attached.
    pub async fn instance_disk_attach(
        self: &Arc<Self>,
        instance: &Instance,
        disk: &NameOrId,
    ) -> Result<Disk, Error> {
        let disk = self.instance_disk_lookup(instance, disk).await?;
        // Refused before a saga is recorded; the saga's first statement decides races (two
        // requests that both got here: the second to lock finds the disk taken, or, for the
        // same instance, already attaching to it, which is the same end).
        if disk.state() != DiskState::Detached {
            return Err(Error::conflict(format!(
                "disk \"{}\" is {}{}; only a detached disk can be attached",
                disk.name(),
                disk.state(),
                disk.attached_to()
                    .map(|id| format!(" (instance {id})"))
                    .unwrap_or_default()
            )));
        }
        let result = self
            .run_saga::<disk_attach::SagaDiskAttach>(disk_attach::Params {
                instance_id: instance.id(),
                disk_id: disk.id(),
            })
            .await?;
        match disk_attach::attached(&result) {
            Some(disk) => Ok(disk),
            None => self.datastore().disk_fetch(disk.id()).await,
        }
    }

    /// Detaches a disk from a stopped instance (the disk-detach saga); the disk as detached.
    pub async fn instance_disk_detach(
        self: &Arc<Self>,
        instance: &Instance,
        disk: &NameOrId,
    ) -> Result<Disk, Error> {
        let disk = self.instance_disk_lookup(instance, disk).await?;
        if disk.state() != DiskState::Attached || disk.attached_to() != Some(instance.id()) {
            return Err(Error::conflict(format!(
                "disk \"{}\" is not attached to instance \"{}\" (it is {})",
                disk.name(),
                instance.name(),
                disk.state()
            )));
        }
        let result = self
            .run_saga::<disk_detach::SagaDiskDetach>(disk_detach::Params {
                instance_id: instance.id(),
                disk_id: disk.id(),
            })
            .await?;
        match disk_detach::detached(&result) {
            Some(disk) => Ok(disk),
            None => self.datastore().disk_fetch(disk.id()).await,
        }
    }

    /// One page of the disks attached to an instance.
    pub async fn instance_disk_list(
        &self,
        instance_id: InstanceUuid,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<Disk>, Error> {
        self.datastore().instance_disk_list(instance_id, page).await
    }
}
