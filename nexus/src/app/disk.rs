//! Disks: what the external API's calls on disks do. A disk is three regions on three sleds
//! (`app/sagas/disk_create.rs`, `disk_delete.rs`).

use super::Nexus;
use super::sagas::{disk_create, disk_delete};
use halyard_common::ids::{DiskUuid, GenericUuid, ProjectUuid, SnapshotUuid};
use halyard_common::{BlockSize, Error, Labelled, NameOrId, ResourceType, SnapshotState};
use halyard_db_model::{Disk, NewDiskParams, Snapshot};
use halyard_db_queries::{PaginatedBy, validate_new_disk};
use halyard_nexus_external_api::params::{DiskBackend, DiskCreate, DiskSource};
use std::sync::Arc;

/// Every rule a request to create a disk must meet, checked once, before anything is read or
/// recorded: a source Halyard supports (400 otherwise, saying which), and a size above zero,
/// a whole number of blocks and at most `MAX_DISK_SIZE` (`validate_new_disk`). Returns the
/// disk's block size.
pub fn validate_disk_create(params: &DiskCreate) -> Result<BlockSize, Error> {
    let block_size = match &params.disk_backend {
        DiskBackend::Local => {
            return Err(Error::invalid_request(
                "local disks are not supported: Halyard's disks are distributed (three \
                 replicas on three sleds); use \"disk_backend\": {\"type\": \"distributed\", ...}",
            ));
        }
        DiskBackend::Distributed(DiskSource::Blank { block_size }) => *block_size,
        DiskBackend::Distributed(DiskSource::Snapshot { read_only, .. }) => {
            return Err(Error::invalid_request(if *read_only {
                "read-only disks are not supported; create a disk from the snapshot that is \
                 not read-only"
            } else {
                "a disk from a snapshot is created with POST /v1/disks, not in an instance \
                 create; create it first, then name it in \"disks\" as an attachment"
            }));
        }
        DiskBackend::Distributed(DiskSource::Image { .. }) => {
            return Err(Error::invalid_request(
                "Halyard has no images: a disk cannot be created from one; create a blank disk",
            ));
        }
        DiskBackend::Distributed(DiskSource::ImportingBlocks { .. }) => {
            return Err(Error::invalid_request(
                "disks that import blocks are not supported; create a blank disk",
            ));
        }
    };
    validate_new_disk(&NewDiskParams {
        id: DiskUuid::nil(),
        project_id: ProjectUuid::nil(),
        name: params.name.clone(),
        description: params.description.clone(),
        size: params.size,
        block_size,
        created_by_instance_id: None,
    })?;
    Ok(block_size)
}

impl Nexus {
    /// A live disk by id (then no project may be given), or by name within a project.
    pub async fn disk_lookup(
        &self,
        project: Option<&NameOrId>,
        disk: &NameOrId,
    ) -> Result<Disk, Error> {
        match (disk, project) {
            (NameOrId::Id(id), None) => {
                self.datastore()
                    .disk_fetch(DiskUuid::from_untyped_uuid(*id))
                    .await
            }
            (NameOrId::Id(_), Some(_)) => Err(Error::invalid_request(
                "when the disk is given by id, do not also give a project",
            )),
            (NameOrId::Name(_), None) => Err(Error::invalid_request(
                "when the disk is given by name, its project must be given too \
                 (?project=<name or id>)",
            )),
            (NameOrId::Name(name), Some(project)) => {
                let project = self.datastore().project_fetch(project).await?;
                self.datastore()
                    .disk_fetch_by_name(project.id(), name)
                    .await
            }
        }
    }

    /// One page of a project's live disks.
    pub async fn disk_list(
        &self,
        project_id: ProjectUuid,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<Disk>, Error> {
        self.datastore().disk_list(project_id, page).await
    }

    /// Creates a disk (the disk-create saga): validated in full first (a refused request
    /// leaves no saga and no disk behind), a taken name refused before a saga is recorded
    /// (the saga's insert still decides between racing creates of one name).
    pub async fn disk_create(
        self: &Arc<Self>,
        project_id: ProjectUuid,
        params: DiskCreate,
    ) -> Result<Disk, Error> {
        let (params, block_size, source_snapshot_id) = match &params.disk_backend {
            DiskBackend::Distributed(DiskSource::Snapshot {
                snapshot_id,
                read_only: false,
            }) => {
                let snapshot = self.disk_source_snapshot(project_id, *snapshot_id).await?;
                if params.size != snapshot.size() {
                    return Err(Error::invalid_request(format!(
                        "a disk from a snapshot has the snapshot's size: \"size\" must be {} \
                         (the snapshot's), not {}",
                        snapshot.size().to_bytes(),
                        params.size.to_bytes()
                    )));
                }
                validate_new_disk(&NewDiskParams {
                    id: DiskUuid::nil(),
                    project_id,
                    name: params.name.clone(),
                    description: params.description.clone(),
                    size: snapshot.size(),
                    block_size: snapshot.block_size(),
                    created_by_instance_id: None,
                })?;
                (params, snapshot.block_size(), Some(snapshot.id()))
            }
            _ => {
                let block_size = validate_disk_create(&params)?;
                (params, block_size, None)
            }
        };
        match self
            .datastore()
            .disk_fetch_by_name(project_id, &params.name)
            .await
        {
            Ok(_) => {
                return Err(Error::ObjectAlreadyExists {
                    type_name: ResourceType::Disk,
                    name: params.name.to_string(),
                });
            }
            Err(Error::ObjectNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let disk_id = DiskUuid::new_v4();
        let result = self
            .run_saga::<disk_create::SagaDiskCreate>(disk_create::Params {
                disk_id,
                project_id,
                create: params,
                block_size,
                created_by_instance_id: None,
                source_snapshot_id,
            })
            .await?;
        match disk_create::created(&result) {
            Some(disk) => Ok(disk),
            None => self.datastore().disk_fetch(disk_id).await,
        }
    }

    /// The snapshot a disk is to be made from: a ready snapshot in the disk's project (one in
    /// another project looks missing: 404; one not ready is 409).
    async fn disk_source_snapshot(
        &self,
        project_id: ProjectUuid,
        snapshot_id: SnapshotUuid,
    ) -> Result<Snapshot, Error> {
        let snapshot = self.datastore().snapshot_fetch(snapshot_id).await?;
        if snapshot.project_id() != project_id {
            return Err(Error::not_found_by_id(
                ResourceType::Snapshot,
                snapshot_id.into_untyped_uuid(),
            ));
        }
        if snapshot.state() != SnapshotState::Ready {
            return Err(Error::conflict(format!(
                "snapshot \"{}\" is {}; a disk is made only from a ready snapshot",
                snapshot.name(),
                snapshot.state().label()
            )));
        }
        Ok(snapshot)
    }

    /// Deletes a disk (the disk-delete saga). A disk attached to an instance, or being
    /// attached, detached or created, is refused (409) before a saga is recorded; the saga's
    /// first step re-checks it in its conditional update.
    pub async fn disk_delete(self: &Arc<Self>, disk: &Disk) -> Result<(), Error> {
        if !disk_delete::DELETABLE.contains(&disk.state()) {
            return Err(disk_delete::not_deletable(disk));
        }
        self.run_saga::<disk_delete::SagaDiskDelete>(disk_delete::Params { disk_id: disk.id() })
            .await
            .map(|_| ())
    }

    /// Of `disks`, the degraded ones: with a region on an expunged sled, or on a sled not
    /// heard from for [`Nexus::sled_silence_bound`].
    pub async fn disks_degraded(
        &self,
        disks: &[DiskUuid],
    ) -> Result<std::collections::BTreeSet<DiskUuid>, Error> {
        let bound =
            chrono::Duration::from_std(self.sled_silence_bound()).unwrap_or(chrono::Duration::MAX);
        let silent_since = chrono::Utc::now()
            .checked_sub_signed(bound)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        self.datastore().disks_degraded(disks, silent_since).await
    }
}
