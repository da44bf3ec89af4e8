//! Losing a storage sled (simulated sleds): the disks that had a region on it show degraded,
//! a VMM is given the two replicas left, and the region-replacement saga (run by its
//! background task once nothing writes the disk) brings each back to three regions on three
//! sleds in service. Every node of the saga is failed and repeated; while it runs, the disk
//! and its instance refuse what would write or move the disk.

use crate::context::TestContext;
use crate::saga_faults::{inject_error_at_every_node, repeat_every_node};
use halyard_common::ids::{DiskUuid, GenericUuid, RegionUuid, SledUuid};
use halyard_common::{ByteCount, InstanceState, NameOrId};
use halyard_nexus::app::sagas::region_replace;
use halyard_nexus_external_client::types;
use std::sync::Mutex;

/// A system of four storage sleds whose disks lost a region with one expunged sled: the
/// region-replacement task is stopped, so each disk stays degraded until a test repairs it.
pub struct DegradedDisks {
    pub ctx: TestContext,
    pub expunged: SledUuid,
    /// Degraded disks not handed out yet, each with its lost region.
    degraded: Mutex<Vec<(DiskUuid, RegionUuid)>>,
}

impl DegradedDisks {
    /// Makes `disks` 1 MiB disks, then expunges the sled holding the most of their regions.
    pub async fn new(disks: usize) -> DegradedDisks {
        let mut ctx = TestContext::with_storage(4, ByteCount::from_gibibytes_u32(1)).await;
        ctx.stop_background_tasks();
        let project = NameOrId::Name("p".parse().unwrap());
        ctx.project("p").await;
        for i in 0..disks {
            crate::instance_disks::detached_disk(&ctx, &project, &format!("d{i}")).await;
        }
        let busiest = ctx.sql(
            "SELECT sled_id FROM region GROUP BY sled_id ORDER BY count(*) DESC, sled_id LIMIT 1",
        );
        let expunged: SledUuid = busiest.trim().parse().unwrap();
        silence(&mut ctx, expunged).await;
        ctx.nexus().sled_expunge(expunged).await.unwrap();
        let degraded = ctx
            .sql(&format!(
                "SELECT disk_id, id FROM region WHERE sled_id = '{expunged}' ORDER BY disk_id"
            ))
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (disk, region) = l.split_once('|').unwrap();
                (disk.parse().unwrap(), region.parse().unwrap())
            })
            .collect();
        DegradedDisks {
            ctx,
            expunged,
            degraded: Mutex::new(degraded),
        }
    }

    /// Saga parameters replacing the lost region of a degraded disk not handed out before.
    pub fn next(&self) -> region_replace::Params {
        let (disk_id, lost_region_id) = self
            .degraded
            .lock()
            .unwrap()
            .pop()
            .expect("the fixture made enough degraded disks");
        region_replace::Params {
            disk_id,
            lost_region_id,
            new_region_id: RegionUuid::new_v4(),
        }
    }

    /// The sleds holding a disk's regions, and whether each is expunged.
    pub fn region_sleds(&self, disk: DiskUuid) -> Vec<(String, bool)> {
        self.ctx
            .sql(&format!(
                "SELECT r.sled_id, s.time_expunged IS NOT NULL FROM region r \
                 JOIN sled s ON s.id = r.sled_id WHERE r.disk_id = '{disk}' ORDER BY r.sled_id"
            ))
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (sled, expunged) = l.split_once('|').unwrap();
                (sled.to_string(), expunged == "t")
            })
            .collect()
    }

    /// Whether the disk is as the replacement left it: three regions on three sleds in
    /// service, the lost one gone, the new one there, no mark.
    pub fn assert_replaced(&self, params: &region_replace::Params) {
        let sleds = self.region_sleds(params.disk_id);
        assert_eq!(sleds.len(), 3, "{sleds:?}");
        assert!(sleds.iter().all(|(_, expunged)| !expunged), "{sleds:?}");
        let regions = self.ctx.sql(&format!(
            "SELECT id FROM region WHERE disk_id = '{}'",
            params.disk_id
        ));
        assert!(regions.contains(&params.new_region_id.to_string()));
        assert!(!regions.contains(&params.lost_region_id.to_string()));
        assert_eq!(self.mark(params.disk_id), "");
    }

    /// Whether the disk is as it was before the replacement: degraded, its lost region still
    /// listed, the new one nowhere (no row, no storage counted, no file on a sled agent), no
    /// mark.
    pub fn assert_unreplaced(&self, params: &region_replace::Params) {
        let sleds = self.region_sleds(params.disk_id);
        assert_eq!(sleds.len(), 3, "{sleds:?}");
        assert_eq!(sleds.iter().filter(|(_, expunged)| *expunged).count(), 1);
        assert_eq!(
            self.ctx
                .sql(&format!(
                    "SELECT count(*) FROM region WHERE id = '{}'",
                    params.new_region_id
                ))
                .trim(),
            "0"
        );
        assert_eq!(self.mark(params.disk_id), "");
    }

    fn mark(&self, disk: DiskUuid) -> String {
        self.ctx
            .sql(&format!(
                "SELECT replacing_region_id FROM disk WHERE id = '{disk}'"
            ))
            .trim()
            .to_string()
    }
}

/// Stops sled `sled`'s agent: it answers nothing from now on (and holds what it held).
async fn silence(ctx: &mut TestContext, sled: SledUuid) {
    let index = (0..ctx.sleds.len())
        .find(|i| ctx.sled_id(*i) == sled)
        .unwrap();
    ctx.sleds.remove(index).close().await.unwrap();
}

fn client(ctx: &TestContext) -> halyard_nexus_external_client::Client {
    halyard_nexus_external_client::Client::new_with_client(
        &ctx.external_url(),
        crate::authn_support::http_client(&ctx.token),
    )
}

async fn disk_view(ctx: &TestContext, disk: DiskUuid) -> types::Disk {
    client(ctx)
        .disk_view()
        .disk(NameOrId::Id(disk.into_untyped_uuid()))
        .send()
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_detached_disk_that_lost_a_sled_is_degraded_until_its_region_is_replaced() {
    let system = DegradedDisks::new(4).await;
    let ctx = &system.ctx;
    let params = system.next();
    let view = disk_view(ctx, params.disk_id).await;
    assert!(view.degraded, "{view:?}");
    assert_eq!(view.state, types::DiskState::Detached);
    // Degraded, but nothing the checker can fault: the task that repairs it ran less than
    // the bound ago.
    ctx.assert_quiet_and_consistent().await;

    // One pass of the task repairs every degraded disk.
    let pass = ctx.nexus().replace_lost_regions().await.unwrap();
    assert!(pass.failed.is_empty(), "{:?}", pass.failed);
    assert!(pass.replaced >= 1);
    let view = disk_view(ctx, params.disk_id).await;
    assert!(!view.degraded, "{view:?}");
    let sleds = system.region_sleds(params.disk_id);
    assert_eq!(sleds.len(), 3);
    assert!(sleds.iter().all(|(_, expunged)| !expunged), "{sleds:?}");
    assert_eq!(
        ctx.sql(&format!(
            "SELECT count(*) FROM region WHERE sled_id = '{}'",
            system.expunged
        ))
        .trim(),
        "0",
        "every lost region was replaced"
    );
    // A second pass finds nothing to do.
    let again = ctx.nexus().replace_lost_regions().await.unwrap();
    assert_eq!((again.replaced, again.failed.len()), (0, 0));
    ctx.assert_quiet_and_consistent().await;

    // The repaired disk is a disk like any other: attached, started, deleted.
    let instance = ctx
        .instance(&NameOrId::Name("p".parse().unwrap()), "vm", 1)
        .await;
    client(ctx)
        .instance_disk_attach()
        .instance(NameOrId::Id(instance.into_untyped_uuid()))
        .body(types::DiskPath {
            disk: NameOrId::Id(params.disk_id.into_untyped_uuid()),
        })
        .send()
        .await
        .unwrap();
    ctx.nexus().instance_start(instance).await.unwrap();
    ctx.wait_for(instance, InstanceState::Running).await;
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_disk_in_use_is_repaired_once_its_instance_stops_and_nothing_moves_it_meanwhile() {
    let system = DegradedDisks::new(4).await;
    let ctx = &system.ctx;
    let project = NameOrId::Name("p".parse().unwrap());
    let params = system.next();
    let disk = NameOrId::Id(params.disk_id.into_untyped_uuid());
    let instance = ctx.instance(&project, "vm", 1).await;
    client(ctx)
        .instance_disk_attach()
        .instance(NameOrId::Id(instance.into_untyped_uuid()))
        .body(types::DiskPath { disk: disk.clone() })
        .send()
        .await
        .unwrap();
    // A degraded disk still starts: the VMM gets the two replicas left.
    ctx.nexus().instance_start(instance).await.unwrap();
    ctx.wait_for(instance, InstanceState::Running).await;
    assert!(disk_view(ctx, params.disk_id).await.degraded);

    // While the instance runs the disk is not repaired (the task passes it over, and the
    // saga refuses it).
    let err = ctx
        .nexus()
        .run_saga::<region_replace::SagaRegionReplace>(params.clone())
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "Conflict", "{err:?}");
    system.assert_unreplaced(&params);
    let pass = ctx.nexus().replace_lost_regions().await.unwrap();
    let sleds = system.region_sleds(params.disk_id);
    assert!(sleds.iter().any(|(_, expunged)| *expunged), "{pass:?}");
    ctx.assert_quiet_and_consistent().await;

    // Stopped: while a replacement holds the disk, a start, a detach and a delete of it are
    // refused (409) and change nothing.
    ctx.nexus().instance_stop(instance).await.unwrap();
    ctx.wait_for(instance, InstanceState::Stopped).await;
    ctx.nexus()
        .datastore()
        .region_replacement_begin(params.disk_id, params.lost_region_id, params.new_region_id)
        .await
        .unwrap();
    // Another replacement of the same region (another saga: another new region; e.g. one a
    // live Nexus started while the first's saga waited to be adopted) cannot pass the mark; a
    // repeat of the first can; the other's undo leaves the first's mark alone.
    let datastore = ctx.nexus().datastore();
    let other = halyard_common::ids::RegionUuid::new_v4();
    let err = datastore
        .region_replacement_begin(params.disk_id, params.lost_region_id, other)
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "Conflict", "{err:?}");
    datastore
        .region_replacement_abandon(params.disk_id, params.lost_region_id, other)
        .await
        .unwrap();
    datastore
        .region_replacement_begin(params.disk_id, params.lost_region_id, params.new_region_id)
        .await
        .unwrap();
    let err = ctx.nexus().instance_start(instance).await.unwrap_err();
    assert_eq!(err.error_code(), "Conflict", "{err:?}");
    let refused = client(ctx)
        .instance_disk_detach()
        .instance(NameOrId::Id(instance.into_untyped_uuid()))
        .body(types::DiskPath { disk: disk.clone() })
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap().as_u16(), 409, "{refused:?}");
    let err = ctx.nexus().instance_delete(instance).await.unwrap_err();
    assert_eq!(err.error_code(), "Conflict", "{err:?}");
    assert_eq!(ctx.view(instance).await.run_state(), InstanceState::Stopped);
    ctx.nexus()
        .datastore()
        .region_replacement_abandon(params.disk_id, params.lost_region_id, params.new_region_id)
        .await
        .unwrap();

    // The task's pass now repairs it, and the instance starts on three replicas.
    let pass = ctx.nexus().replace_lost_regions().await.unwrap();
    assert!(pass.failed.is_empty(), "{pass:?}");
    assert!(!disk_view(ctx, params.disk_id).await.degraded);
    ctx.nexus().instance_start(instance).await.unwrap();
    ctx.wait_for(instance, InstanceState::Running).await;
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn the_background_task_repairs_degraded_disks_on_its_own() {
    let mut ctx = TestContext::with_storage(4, ByteCount::from_gibibytes_u32(1)).await;
    let project = NameOrId::Name("p".parse().unwrap());
    ctx.project("p").await;
    let disk = crate::instance_disks::detached_disk(&ctx, &project, "d").await;
    let lost: SledUuid = ctx
        .sql(&format!(
            "SELECT sled_id FROM region WHERE disk_id = '{disk}' LIMIT 1"
        ))
        .trim()
        .parse()
        .unwrap();
    silence(&mut ctx, lost).await;
    ctx.nexus().sled_expunge(lost).await.unwrap();
    ctx.eventually("the lost region is replaced", async |ctx: &TestContext| {
        !disk_view(ctx, disk).await.degraded
    })
    .await;
    // By the task (nothing else here starts a replacement): its pass records a run once the
    // saga it started has returned, which is after the disk stopped showing degraded (the
    // saga's swap), so wait for that too.
    ctx.eventually("the task's pass recorded", async |ctx: &TestContext| {
        ctx.nexus()
            .background_tasks()
            .list()
            .iter()
            .any(|t| t.name == "region_replacement" && t.runs > 0)
    })
    .await;
    // ... and for the saga to end (under load, its last step can follow the swap by a while).
    ctx.eventually(
        "the replacement saga finished",
        async |ctx: &TestContext| {
            ctx.sql(
                "SELECT count(*) FROM saga WHERE name = 'region-replace' AND saga_state != 'done'",
            )
            .trim()
                == "0"
        },
    )
    .await;
    assert_eq!(
        ctx.sql("SELECT count(*) || ' ' || saga_state FROM saga WHERE name = 'region-replace' GROUP BY saga_state")
            .trim(),
        "1 done"
    );
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn with_no_sled_to_copy_to_the_disk_stays_degraded_and_nothing_leaks() {
    // Three storage sleds: once one is expunged, every disk holds a region on each sled left.
    let mut ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    ctx.stop_background_tasks();
    let project = NameOrId::Name("p".parse().unwrap());
    ctx.project("p").await;
    let disk = crate::instance_disks::detached_disk(&ctx, &project, "d").await;
    let lost = ctx.sled_id(2);
    ctx.sleds.remove(2).close().await.unwrap();
    ctx.nexus().sled_expunge(lost).await.unwrap();
    let reserved_before = ctx.sql("SELECT id, reserved_storage FROM sled ORDER BY id");
    let sagas_before = ctx.sql("SELECT count(*) FROM saga");
    // The task does not even try (a saga bound to fail on every pass would fill the log).
    let pass = ctx.nexus().replace_lost_regions().await.unwrap();
    assert_eq!((pass.replaced, pass.failed.len()), (0, 0), "{pass:?}");
    assert_eq!(ctx.sql("SELECT count(*) FROM saga"), sagas_before);
    // Asked anyway, the saga is refused for want of room (507) and unwinds.
    let lost_region: RegionUuid = ctx
        .sql(&format!(
            "SELECT id FROM region WHERE disk_id = '{disk}' AND sled_id = '{lost}'"
        ))
        .trim()
        .parse()
        .unwrap();
    let err = ctx
        .nexus()
        .run_saga::<region_replace::SagaRegionReplace>(region_replace::Params {
            disk_id: disk,
            lost_region_id: lost_region,
            new_region_id: RegionUuid::new_v4(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "InsufficientCapacity", "{err:?}");
    assert!(err.to_string().contains("no sim sled"), "{err}");
    assert!(disk_view(&ctx, disk).await.degraded);
    assert_eq!(
        ctx.sql("SELECT id, reserved_storage FROM sled ORDER BY id"),
        reserved_before
    );
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn region_replace_unwinds_from_every_node_and_tolerates_repeats() {
    // 4 nodes, each failed and repeated, plus the DAG's own listing twice: 10 disks.
    let system = DegradedDisks::new(16).await;
    let covered = inject_error_at_every_node::<region_replace::SagaRegionReplace>(
        &system.ctx,
        async |_| system.next(),
        async |_, params| system.assert_unreplaced(params),
    )
    .await;
    assert_eq!(covered, 4);
    let covered = repeat_every_node::<region_replace::SagaRegionReplace>(
        &system.ctx,
        async |_| system.next(),
        async |_, params| system.assert_replaced(params),
    )
    .await;
    assert_eq!(covered, 4);
    system.ctx.assert_quiet_and_consistent().await;
}

/// The region-replace saga's params for a disk whose lost region is on a sled in service: the
/// saga refuses it (only regions of expunged sleds are replaced).
#[tokio::test]
async fn a_region_on_a_sled_in_service_is_not_replaced() {
    let system = DegradedDisks::new(4).await;
    let ctx = &system.ctx;
    let params = system.next();
    let healthy: RegionUuid = ctx
        .sql(&format!(
            "SELECT r.id FROM region r JOIN sled s ON s.id = r.sled_id \
             WHERE r.disk_id = '{}' AND s.time_expunged IS NULL LIMIT 1",
            params.disk_id
        ))
        .trim()
        .parse()
        .unwrap();
    let err = ctx
        .nexus()
        .run_saga::<region_replace::SagaRegionReplace>(region_replace::Params {
            lost_region_id: healthy,
            ..params.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "Conflict", "{err:?}");
    system.assert_unreplaced(&params);
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_disk_on_a_silent_sled_shows_degraded_but_is_not_replaced() {
    let mut ctx = TestContext::with_storage(4, ByteCount::from_gibibytes_u32(1)).await;
    // Test sled agents register every second: two seconds unheard is silence.
    ctx.nexus()
        .set_sled_silence_bound(std::time::Duration::from_secs(2));
    let project = NameOrId::Name("p".parse().unwrap());
    ctx.project("p").await;
    let disk = crate::instance_disks::detached_disk(&ctx, &project, "d").await;
    assert!(!disk_view(&ctx, disk).await.degraded);
    let silent: SledUuid = ctx
        .sql(&format!(
            "SELECT sled_id FROM region WHERE disk_id = '{disk}' LIMIT 1"
        ))
        .trim()
        .parse()
        .unwrap();
    // Its agent stops answering; nobody expunges it.
    silence(&mut ctx, silent).await;
    ctx.eventually("the disk shows degraded", async |ctx: &TestContext| {
        disk_view(ctx, disk).await.degraded
    })
    .await;
    // A silent sled may come back: its region is not replaced.
    let pass = ctx.nexus().replace_lost_regions().await.unwrap();
    assert_eq!((pass.replaced, pass.failed.len()), (0, 0), "{pass:?}");
    let sleds = ctx.sql(&format!(
        "SELECT count(*) FROM region WHERE disk_id = '{disk}' AND sled_id = '{silent}'"
    ));
    assert_eq!(sleds.trim(), "1");
    ctx.assert_quiet_and_consistent().await;
}
