//! `omdb db disks|regions`: disks (with their project, shape, state and instance, how many of
//! their regions were lost with an expunged sled, and the one being replaced) and the regions
//! that hold their data (which sled each is on, whether that sled is expunged, and its size).

use crate::output::{opt_time, print_rows};
use chrono::{DateTime, Utc};
use halyard_common::ids::{DiskUuid, RegionUuid, SledUuid};
use halyard_common::{ByteCount, DiskState};
use halyard_db_model::Disk;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use tabled::Tabled;

use super::store::{Db, instance_name, project_name};

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct DiskRow {
    id: DiskUuid,
    name: String,
    project: String,
    size: ByteCount,
    block_size: u32,
    state: DiskState,
    /// The instance it is attaching to, attached to or detaching from (its name).
    #[tabled(display = "instance_display")]
    instance: Option<String>,
    /// How many regions hold it.
    regions: usize,
    /// How many of them are on expunged sleds (lost: the disk is degraded until the
    /// region-replacement task replaces them).
    lost: usize,
    /// The lost region a region-replacement saga is replacing now.
    #[tabled(display = "replacing_display")]
    replacing: Option<RegionUuid>,
    #[tabled(skip)]
    time_deleted: Option<DateTime<Utc>>,
}

fn instance_display(instance: &Option<String>) -> String {
    instance.clone().unwrap_or_else(|| "-".to_string())
}

fn replacing_display(region: &Option<RegionUuid>) -> String {
    region.map_or_else(|| "-".to_string(), |r| r.to_string())
}

/// The ids of the expunged sleds.
async fn expunged_sleds(db: &Db) -> anyhow::Result<BTreeSet<SledUuid>> {
    Ok(db
        .sleds()
        .await?
        .iter()
        .filter(|s| s.is_expunged())
        .map(|s| s.id())
        .collect())
}

pub(super) async fn cmd_disks(db: &Db, include_deleted: bool, json: bool) -> anyhow::Result<()> {
    let projects = db.projects().await?;
    let instances = db.instances().await?;
    let disks = db.datastore.disk_list_all().await.map_err(|e| db.err(e))?;
    let expunged = expunged_sleds(db).await?;
    // Per disk: its regions, and those on expunged sleds.
    let mut regions: BTreeMap<DiskUuid, (usize, usize)> = BTreeMap::new();
    for region in db
        .datastore
        .region_list(None)
        .await
        .map_err(|e| db.err(e))?
    {
        let counts = regions.entry(region.disk_id()).or_default();
        counts.0 += 1;
        counts.1 += usize::from(expunged.contains(&region.sled_id()));
    }
    let mut rows: Vec<DiskRow> = disks
        .iter()
        .filter(|d| include_deleted || d.time_deleted.is_none())
        .map(|d| DiskRow {
            id: d.id(),
            name: d.name().to_string(),
            project: project_name(&projects, d.project_id()),
            size: d.size(),
            block_size: d.block_size().to_bytes(),
            state: d.state(),
            instance: d.attached_to().map(|id| instance_name(&instances, id)),
            regions: regions.get(&d.id()).map_or(0, |c| c.0),
            lost: regions.get(&d.id()).map_or(0, |c| c.1),
            replacing: d.replacing_region(),
            time_deleted: d.time_deleted,
        })
        .collect();
    rows.sort_by(|a, b| (&a.project, &a.name, a.id).cmp(&(&b.project, &b.name, b.id)));
    print_rows(&rows, json, "no disks")
}

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct RegionRow {
    id: RegionUuid,
    #[tabled(skip)]
    disk_id: DiskUuid,
    /// The disk's name (`?` if the disk is gone: a region that outlived its disk).
    disk: String,
    sled: SledUuid,
    /// Whether its sled is expunged (the region is lost with it).
    sled_expunged: bool,
    size: ByteCount,
    block_size: u32,
    #[tabled(display = "opt_time")]
    disk_deleted: Option<DateTime<Utc>>,
}

pub(super) async fn cmd_regions(db: &Db, json: bool) -> anyhow::Result<()> {
    let disks: BTreeMap<DiskUuid, Disk> = db
        .datastore
        .disk_list_all()
        .await
        .map_err(|e| db.err(e))?
        .into_iter()
        .map(|d| (d.id(), d))
        .collect();
    let regions = db
        .datastore
        .region_list(None)
        .await
        .map_err(|e| db.err(e))?;
    let expunged = expunged_sleds(db).await?;
    let rows: Vec<RegionRow> = regions
        .iter()
        .map(|r| {
            let disk = disks.get(&r.disk_id());
            RegionRow {
                id: r.id(),
                disk_id: r.disk_id(),
                disk: disk.map_or_else(|| "?".to_string(), |d| d.name().to_string()),
                sled: r.sled_id(),
                sled_expunged: expunged.contains(&r.sled_id()),
                size: r.size(),
                block_size: u32::try_from(r.block_size).unwrap_or(0),
                disk_deleted: disk.and_then(|d| d.time_deleted),
            }
        })
        .collect();
    print_rows(&rows, json, "no regions")
}
