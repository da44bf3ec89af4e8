//! The task `region_replacement`: degraded disks get their third replica back.
//!
//! A sled that is expunged takes its regions with it; each disk that had one is degraded
//! (served by two replicas; `degraded` in its view). Each pass finds the regions on expunged
//! sleds whose disk can be repaired now (`DataStore::regions_to_replace`: detached, or attached
//! to a stopped instance; a disk whose instance runs waits until it stops) and runs a
//! region-replace saga for each, one disk at a time. A replacement that fails (no sled with
//! room, a sled agent out of reach) unwinds and is tried again on a later pass.

use crate::app::Nexus;
use crate::app::sagas::region_replace;
use halyard_common::Error;
use halyard_common::ids::RegionUuid;
use halyard_db_queries::LostRegion;
use slog::{info, warn};
use std::sync::Arc;
use std::time::Duration;

/// The name of the task that replaces regions lost with expunged sleds.
pub const REGION_REPLACEMENT_TASK: &str = "region_replacement";

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionsReplaced {
    /// Regions replaced (their disks back to three replicas).
    pub replaced: usize,
    /// Replacements that failed (and unwound), with why.
    pub failed: Vec<(LostRegion, String)>,
}

impl Nexus {
    pub(crate) fn spawn_region_replacement_task(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_background_task(
            REGION_REPLACEMENT_TASK,
            "replaces each region lost with an expunged sled by a copy of a healthy replica on \
             another sled, for disks that are detached or attached to a stopped instance",
            interval,
            |nexus| {
                Box::pin(async move {
                    let pass = nexus.replace_lost_regions().await?;
                    let mut outcome = match pass.replaced {
                        0 => "no region replaced".to_string(),
                        n => format!("replaced {n} lost region(s)"),
                    };
                    if let Some((lost, why)) = pass.failed.first() {
                        outcome.push_str(&format!(
                            "; {} replacement(s) failed, first region {} of disk {}: {why}",
                            pass.failed.len(),
                            lost.region_id,
                            lost.disk_id
                        ));
                    }
                    Ok(outcome)
                })
            },
        )
    }

    /// One pass of the region-replacement task: runs a region-replace saga for every region
    /// on an expunged sled whose disk can be repaired now.
    pub async fn replace_lost_regions(self: &Arc<Self>) -> Result<RegionsReplaced, Error> {
        let lost = self.datastore().regions_to_replace().await?;
        let mut pass = RegionsReplaced::default();
        for region in lost {
            let params = region_replace::Params {
                disk_id: region.disk_id,
                lost_region_id: region.region_id,
                new_region_id: RegionUuid::new_v4(),
            };
            match self
                .run_saga::<region_replace::SagaRegionReplace>(params)
                .await
            {
                Ok(_) => {
                    info!(self.log(), "replaced a region lost with an expunged sled";
                        "disk_id" => %region.disk_id, "region_id" => %region.region_id);
                    pass.replaced += 1;
                }
                Err(e) => {
                    warn!(self.log(), "replacing a region lost with an expunged sled failed";
                        "disk_id" => %region.disk_id, "region_id" => %region.region_id,
                        "error" => %e);
                    pass.failed.push((region, e.to_string()));
                }
            }
        }
        Ok(pass)
    }
}
