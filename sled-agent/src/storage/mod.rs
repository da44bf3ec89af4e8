//! The sled's storage: the regions (replicas of disks) it holds.
//!
//! Nexus places regions (race-safe, in its database) and asks the sled agent of each chosen
//! sled to create and serve them. The sled agent keeps its own table of regions and refuses
//! what would not fit in the capacity it offers. Two kinds of storage:
//!
//! - simulated (sim sleds): regions are entries in the table and hold no data;
//! - a `qemu-storage-daemon` (QEMU sleds, [`daemon`]): each region is a qcow2 file in the
//!   sled's region directory, served over NBD by one daemon per sled that the sled agent
//!   starts, watches and restarts. The files are the table: a sled agent that restarts finds
//!   its regions (and their data) again.
//!
//! A region can start as a copy of an NBD export (`RegionEnsureBody.source`: a healthy replica
//! for region replacement, a region snapshot for a disk made from a snapshot). A region
//! snapshot is a point-in-time, read-only full copy of a region, served over NBD like one; it
//! holds as much of the sled's storage as its region (the sled's reserved storage is the sum of
//! its regions' and its snapshots' sizes) and outlives its region.

mod daemon;

use crate::config::StorageConfig;
use daemon::StorageDaemon;
use halyard_common::ids::{GenericUuid, RegionUuid, SledUuid, SnapshotUuid};
use halyard_common::{ByteCount, Error, ResourceType};
use halyard_sled_agent_api::{
    NbdExport, RegionEnsureBody, RegionShape, RegionSnapshotSummary, RegionSummary,
};
use slog::{Logger, info};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) use daemon::DaemonStatus;

/// What a sled's storage holds: its regions and region snapshots, by id, with their shapes.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    pub regions: BTreeMap<RegionUuid, RegionShape>,
    pub snapshots: BTreeMap<(RegionUuid, SnapshotUuid), RegionShape>,
}

impl Contents {
    /// What the regions and snapshots hold.
    fn reserved(&self) -> ByteCount {
        let bytes: u64 = self
            .regions
            .values()
            .chain(self.snapshots.values())
            .map(|s| s.size.to_bytes())
            .sum();
        ByteCount::try_from(bytes).unwrap_or(ByteCount::from_gibibytes_u32(u32::MAX))
    }
}

/// This sled's regions and snapshots, and what serves them.
pub(crate) struct Storage {
    capacity: ByteCount,
    contents: Arc<tokio::sync::Mutex<Contents>>,
    daemon: Option<Arc<StorageDaemon>>,
    log: Logger,
}

impl Storage {
    /// Simulated storage: regions without data.
    pub(crate) fn simulated(config: &StorageConfig, log: &Logger) -> Storage {
        Storage {
            capacity: config.capacity,
            contents: Arc::default(),
            daemon: None,
            log: log.new(slog::o!("component" => "storage")),
        }
    }

    /// Storage served by a `qemu-storage-daemon` over NBD on `nbd_ip`, with its region files in
    /// `directory` (created if missing; the regions already there are served again). A sled
    /// offering no storage starts no daemon.
    pub(crate) async fn with_daemon(
        config: &StorageConfig,
        directory: PathBuf,
        nbd_ip: IpAddr,
        sled_id: SledUuid,
        log: &Logger,
    ) -> anyhow::Result<Storage> {
        let log = log.new(slog::o!("component" => "storage"));
        if config.capacity.to_bytes() == 0 {
            return Ok(Storage {
                capacity: config.capacity,
                contents: Arc::default(),
                daemon: None,
                log,
            });
        }
        let found = daemon::contents_of(&directory).await?;
        info!(log, "serving regions over NBD"; "directory" => %directory.display(),
            "regions" => found.regions.len(), "snapshots" => found.snapshots.len(),
            "sled_id" => %sled_id);
        let contents = Arc::new(tokio::sync::Mutex::new(found));
        let daemon = StorageDaemon::start(
            config.daemon_binary.clone(),
            directory,
            nbd_ip,
            Arc::clone(&contents),
            &log,
        )
        .await?;
        Ok(Storage {
            capacity: config.capacity,
            contents,
            daemon: Some(daemon),
            log,
        })
    }

    pub(crate) fn capacity(&self) -> ByteCount {
        self.capacity
    }

    /// What the sled's regions and snapshots hold.
    pub(crate) async fn reserved(&self) -> ByteCount {
        self.contents.lock().await.reserved()
    }

    /// Refuses `size` more bytes if the sled does not have them left.
    fn check_fits(&self, contents: &Contents, size: ByteCount, what: &str) -> Result<(), Error> {
        let free = self
            .capacity
            .to_bytes()
            .saturating_sub(contents.reserved().to_bytes());
        if size.to_bytes() > free {
            return Err(Error::insufficient_capacity(format!(
                "{what} needs {size} but this sled has {free} bytes of storage left"
            )));
        }
        Ok(())
    }

    /// Creates region `id` (and serves it) unless it exists with this shape already; with a
    /// source, its content is copied from there first.
    pub(crate) async fn ensure(
        &self,
        id: RegionUuid,
        body: RegionEnsureBody,
    ) -> Result<RegionSummary, Error> {
        let shape = body.shape();
        let bytes = shape.size.to_bytes();
        let block = u64::from(shape.block_size.to_bytes());
        if bytes == 0 || !bytes.is_multiple_of(block) {
            return Err(Error::invalid_request(format!(
                "a region's size must be a positive multiple of its block size ({block}), \
                 not {bytes}"
            )));
        }
        let mut contents = self.contents.lock().await;
        if let Some(existing) = contents.regions.get(&id) {
            if *existing != shape {
                return Err(Error::conflict(format!(
                    "region {id} exists with size {} and block size {}, not {} and {}",
                    existing.size, existing.block_size, shape.size, shape.block_size
                )));
            }
            return Ok(self.summary(id, *existing));
        }
        self.check_fits(&contents, shape.size, &format!("region {id}"))?;
        if let Some(daemon) = &self.daemon {
            daemon.create(id, shape, body.source.as_ref()).await?;
        }
        contents.regions.insert(id, shape);
        info!(self.log, "region created"; "region_id" => %id, "size" => %shape.size,
            "source" => body.source.as_ref().map(export_url));
        Ok(self.summary(id, shape))
    }

    /// Deletes region `id` and its data; a region this sled does not hold is already gone.
    /// Its snapshots stay.
    pub(crate) async fn delete(&self, id: RegionUuid) -> Result<(), Error> {
        let mut contents = self.contents.lock().await;
        let Some(shape) = contents.regions.remove(&id) else {
            return Ok(());
        };
        if let Some(daemon) = &self.daemon
            && let Err(e) = daemon.delete(id).await
        {
            // Keep it listed: a later delete tries again.
            contents.regions.insert(id, shape);
            return Err(e);
        }
        info!(self.log, "region deleted"; "region_id" => %id);
        Ok(())
    }

    pub(crate) async fn list(&self) -> Vec<RegionSummary> {
        let contents = self.contents.lock().await;
        contents
            .regions
            .iter()
            .map(|(id, shape)| self.summary(*id, *shape))
            .collect()
    }

    /// [`Storage::list`] without waiting: `None` while the table is locked.
    pub(crate) fn list_now(&self) -> Option<Vec<RegionSummary>> {
        let contents = self.contents.try_lock().ok()?;
        Some(
            contents
                .regions
                .iter()
                .map(|(id, shape)| self.summary(*id, *shape))
                .collect(),
        )
    }

    /// Takes snapshot `snapshot_id` of region `region_id` (a point-in-time copy of its data,
    /// served read-only) unless it exists.
    pub(crate) async fn snapshot_ensure(
        &self,
        region_id: RegionUuid,
        snapshot_id: SnapshotUuid,
    ) -> Result<RegionSnapshotSummary, Error> {
        let mut contents = self.contents.lock().await;
        let key = (region_id, snapshot_id);
        if let Some(existing) = contents.snapshots.get(&key) {
            return Ok(self.snapshot_summary(key, *existing));
        }
        let shape = *contents.regions.get(&region_id).ok_or_else(|| {
            Error::not_found_by_id(ResourceType::Region, region_id.into_untyped_uuid())
        })?;
        self.check_fits(
            &contents,
            shape.size,
            &format!("snapshot {snapshot_id} of region {region_id}"),
        )?;
        if let Some(daemon) = &self.daemon {
            daemon.snapshot(region_id, snapshot_id, shape).await?;
        }
        contents.snapshots.insert(key, shape);
        info!(self.log, "region snapshot taken"; "region_id" => %region_id,
            "snapshot_id" => %snapshot_id, "size" => %shape.size);
        Ok(self.snapshot_summary(key, shape))
    }

    /// Deletes a region snapshot; one this sled does not hold is already gone.
    pub(crate) async fn snapshot_delete(
        &self,
        region_id: RegionUuid,
        snapshot_id: SnapshotUuid,
    ) -> Result<(), Error> {
        let mut contents = self.contents.lock().await;
        let key = (region_id, snapshot_id);
        let Some(shape) = contents.snapshots.remove(&key) else {
            return Ok(());
        };
        if let Some(daemon) = &self.daemon
            && let Err(e) = daemon.snapshot_delete(region_id, snapshot_id).await
        {
            contents.snapshots.insert(key, shape);
            return Err(e);
        }
        info!(self.log, "region snapshot deleted"; "region_id" => %region_id,
            "snapshot_id" => %snapshot_id);
        Ok(())
    }

    /// [`Storage::snapshot_list`] without waiting: `None` while the table is locked.
    pub(crate) fn snapshot_list_now(&self) -> Option<Vec<RegionSnapshotSummary>> {
        let contents = self.contents.try_lock().ok()?;
        Some(
            contents
                .snapshots
                .iter()
                .map(|(key, shape)| self.snapshot_summary(*key, *shape))
                .collect(),
        )
    }

    pub(crate) async fn snapshot_list(&self) -> Vec<RegionSnapshotSummary> {
        let contents = self.contents.lock().await;
        contents
            .snapshots
            .iter()
            .map(|(key, shape)| self.snapshot_summary(*key, *shape))
            .collect()
    }

    /// The storage daemon's process and restarts (none for simulated storage).
    pub(crate) fn daemon_status(&self) -> Option<DaemonStatus> {
        self.daemon.as_ref().map(|d| d.status())
    }

    /// Ends the storage daemon (the region files stay).
    pub(crate) async fn stop(&self) {
        if let Some(daemon) = &self.daemon {
            daemon.stop().await;
        }
    }

    fn summary(&self, id: RegionUuid, shape: RegionShape) -> RegionSummary {
        RegionSummary {
            region_id: id,
            size: shape.size,
            block_size: shape.block_size,
            export: self.daemon.as_ref().map(|d| d.export_of(id)),
        }
    }

    fn snapshot_summary(
        &self,
        (region_id, snapshot_id): (RegionUuid, SnapshotUuid),
        shape: RegionShape,
    ) -> RegionSnapshotSummary {
        RegionSnapshotSummary {
            region_id,
            snapshot_id,
            size: shape.size,
            block_size: shape.block_size,
            export: self
                .daemon
                .as_ref()
                .map(|d| d.snapshot_export_of(region_id, snapshot_id)),
        }
    }
}

/// An export as an `nbd://` URL, for logs.
fn export_url(export: &NbdExport) -> String {
    format!("nbd://{}/{}", export.address, export.name)
}
