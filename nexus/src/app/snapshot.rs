//! Snapshots: what the external API's calls on snapshots do. A snapshot is one region
//! snapshot beside each of its disk's regions (`app/sagas/snapshot_create.rs`,
//! `snapshot_delete.rs`).

use super::Nexus;
use super::sagas::{snapshot_create, snapshot_delete};
use halyard_common::ids::SnapshotUuid;
use halyard_common::{DiskState, Error, Labelled, ResourceType};
use halyard_db_model::{Disk, Snapshot};
use halyard_nexus_external_api::params::SnapshotCreate;
use std::sync::Arc;

/// The states of a disk that can be snapshotted: its data is on its regions and no saga is
/// changing where it is used.
pub const SNAPSHOTTABLE: [DiskState; 2] = [DiskState::Detached, DiskState::Attached];

impl Nexus {
    /// Snapshots a disk (the snapshot-create saga). A description that is not printable text
    /// is 400, a taken name or a disk that is not detached or attached is 409, all before a
    /// saga is recorded (the saga's insert still decides between racing creates of one name).
    pub async fn snapshot_create(
        self: &Arc<Self>,
        disk: &Disk,
        params: SnapshotCreate,
    ) -> Result<Snapshot, Error> {
        halyard_common::validate_description(&params.description)?;
        if !SNAPSHOTTABLE.contains(&disk.state()) {
            return Err(Error::conflict(format!(
                "disk \"{}\" is {}; only a detached or attached disk can be snapshotted",
                disk.name(),
                disk.state().label()
            )));
        }
        match self
            .datastore()
            .snapshot_fetch_by_name(disk.project_id(), &params.name)
            .await
        {
            Ok(_) => {
                return Err(Error::ObjectAlreadyExists {
                    type_name: ResourceType::Snapshot,
                    name: params.name.to_string(),
                });
            }
            Err(Error::ObjectNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let snapshot_id = SnapshotUuid::new_v4();
        let result = self
            .run_saga::<snapshot_create::SagaSnapshotCreate>(snapshot_create::Params {
                snapshot_id,
                disk_id: disk.id(),
                name: params.name,
                description: params.description,
            })
            .await?;
        match snapshot_create::created(&result) {
            Some(snapshot) => Ok(snapshot),
            None => self.datastore().snapshot_fetch(snapshot_id).await,
        }
    }

    /// Deletes a snapshot (the snapshot-delete saga). One being created is refused (409)
    /// before a saga is recorded; the saga's first step re-checks it.
    pub async fn snapshot_delete(self: &Arc<Self>, snapshot: &Snapshot) -> Result<(), Error> {
        if !snapshot_delete::DELETABLE.contains(&snapshot.state()) {
            return Err(snapshot_delete::not_deletable(snapshot));
        }
        self.run_saga::<snapshot_delete::SagaSnapshotDelete>(snapshot_delete::Params {
            snapshot_id: snapshot.id(),
        })
        .await
        .map(|_| ())
    }
}
