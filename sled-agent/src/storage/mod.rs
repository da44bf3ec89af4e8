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

mod daemon;

use crate::config::StorageConfig;
use daemon::StorageDaemon;
use halyard_common::ids::{RegionUuid, SledUuid};
use halyard_common::{ByteCount, Error};
use halyard_sled_agent_api::{RegionEnsureBody, RegionSummary};
use slog::{Logger, info};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) use daemon::DaemonStatus;

/// This sled's regions and what serves them.
pub(crate) struct Storage {
    capacity: ByteCount,
    regions: Arc<tokio::sync::Mutex<BTreeMap<RegionUuid, RegionEnsureBody>>>,
    daemon: Option<Arc<StorageDaemon>>,
    log: Logger,
}

impl Storage {
    /// Simulated storage: regions without data.
    pub(crate) fn simulated(config: &StorageConfig, log: &Logger) -> Storage {
        Storage {
            capacity: config.capacity,
            regions: Arc::default(),
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
                regions: Arc::default(),
                daemon: None,
                log,
            });
        }
        let found = daemon::regions_in(&directory).await?;
        info!(log, "serving regions over NBD"; "directory" => %directory.display(),
            "regions" => found.len(), "sled_id" => %sled_id);
        let regions = Arc::new(tokio::sync::Mutex::new(found));
        let daemon = StorageDaemon::start(
            config.daemon_binary.clone(),
            directory,
            nbd_ip,
            Arc::clone(&regions),
            &log,
        )
        .await?;
        Ok(Storage {
            capacity: config.capacity,
            regions,
            daemon: Some(daemon),
            log,
        })
    }

    pub(crate) fn capacity(&self) -> ByteCount {
        self.capacity
    }

    /// What the sled's regions hold.
    pub(crate) async fn reserved(&self) -> ByteCount {
        total(self.regions.lock().await.values())
    }

    /// Creates region `id` (and serves it) unless it exists with this shape already.
    pub(crate) async fn ensure(
        &self,
        id: RegionUuid,
        shape: RegionEnsureBody,
    ) -> Result<RegionSummary, Error> {
        let mut regions = self.regions.lock().await;
        if let Some(existing) = regions.get(&id) {
            if *existing != shape {
                return Err(Error::conflict(format!(
                    "region {id} exists with size {} and block size {}, not {} and {}",
                    existing.size, existing.block_size, shape.size, shape.block_size
                )));
            }
            return Ok(self.summary(id, *existing));
        }
        let held = total(regions.values());
        let free = self.capacity.to_bytes().saturating_sub(held.to_bytes());
        if shape.size.to_bytes() > free {
            return Err(Error::insufficient_capacity(format!(
                "region {id} needs {} but this sled has {free} bytes of storage left",
                shape.size
            )));
        }
        if let Some(daemon) = &self.daemon {
            daemon.create(id, shape).await?;
        }
        regions.insert(id, shape);
        info!(self.log, "region created"; "region_id" => %id, "size" => %shape.size);
        Ok(self.summary(id, shape))
    }

    /// Deletes region `id` and its data; a region this sled does not hold is already gone.
    pub(crate) async fn delete(&self, id: RegionUuid) -> Result<(), Error> {
        let mut regions = self.regions.lock().await;
        if regions.remove(&id).is_none() {
            return Ok(());
        }
        if let Some(daemon) = &self.daemon
            && let Err(e) = daemon.delete(id).await
        {
            // Keep it listed: a later delete tries again.
            if let Some(shape) = daemon::region_shape(&daemon.directory(), id).await {
                regions.insert(id, shape);
            }
            return Err(e);
        }
        info!(self.log, "region deleted"; "region_id" => %id);
        Ok(())
    }

    pub(crate) async fn list(&self) -> Vec<RegionSummary> {
        let regions = self.regions.lock().await;
        regions
            .iter()
            .map(|(id, shape)| self.summary(*id, *shape))
            .collect()
    }

    /// [`Storage::list`] without waiting: `None` while the table is locked.
    pub(crate) fn list_now(&self) -> Option<Vec<RegionSummary>> {
        let regions = self.regions.try_lock().ok()?;
        Some(
            regions
                .iter()
                .map(|(id, shape)| self.summary(*id, *shape))
                .collect(),
        )
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

    fn summary(&self, id: RegionUuid, shape: RegionEnsureBody) -> RegionSummary {
        RegionSummary {
            region_id: id,
            size: shape.size,
            block_size: shape.block_size,
            export: self.daemon.as_ref().map(|d| d.export_of(id)),
        }
    }
}

fn total<'a>(shapes: impl Iterator<Item = &'a RegionEnsureBody>) -> ByteCount {
    let bytes: u64 = shapes.map(|s| s.size.to_bytes()).sum();
    ByteCount::try_from(bytes).unwrap_or(ByteCount::from_gibibytes_u32(u32::MAX))
}
