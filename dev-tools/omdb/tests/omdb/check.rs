//! `omdb db check`: none on a healthy system (exit 0); each kind of disagreement found after
//! making it on purpose (exit 2), and nothing else reported alongside it.

use crate::context::{RunOmdb, TestContext};
use crate::snapshot::{Redactor, Snapshots};
use halyard_common::ByteCount;
use halyard_common::ids::{InstanceUuid, SledUuid, VmmUuid};
use halyard_sled_agent_api::VmmRegisterBody;
use serde_json::Value;

const GIB: u64 = 1024 * 1024 * 1024;

/// Runs `omdb db check`, asserts it found exactly the disagreements of `kinds` (in the order
/// omdb sorts them: by kind, then id), and returns its redacted text output (sleds named
/// `sled-<i>`, or by role in `roles` where placement decides which sled it is).
async fn expect_disagreements(ctx: &TestContext, kinds: &[&str], ids: &[String]) -> String {
    expect_disagreements_named(ctx, kinds, ids, &[]).await
}

async fn expect_disagreements_named(
    ctx: &TestContext,
    kinds: &[&str],
    ids: &[String],
    roles: &[(SledUuid, &str)],
) -> String {
    let json = ctx.omdb(&["db", "check", "--json"]).await;
    assert_eq!(json.code, 2, "check must exit 2 on disagreements: {json:?}");
    let found: Value = serde_json::from_str(&json.stdout).unwrap();
    let found = found.as_array().unwrap();
    let found_kinds: Vec<&str> = found.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(found_kinds, kinds, "{found:#?}");
    let found_ids: Vec<&str> = found.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(found_ids, ids, "{found:#?}");

    let text = ctx.omdb(&["db", "check"]).await;
    assert_eq!(text.code, 2, "{text:?}");
    assert!(
        text.stdout
            .contains(&format!("{} disagreement(s)", kinds.len())),
        "{}",
        text.stdout
    );
    let mut redactor = Redactor::new();
    for (i, sled) in ctx.sleds.iter().enumerate() {
        redactor.name(sled.agent().id(), &format!("sled-{i}"));
    }
    for (sled, role) in roles {
        redactor.name(sled, role);
    }
    redactor.redact(&text.stdout)
}

/// A running instance on a two-sled system; returns its active VMM and that VMM's sled.
async fn running(ctx: &TestContext) -> (InstanceUuid, VmmUuid, usize) {
    let project = ctx.project("alpha").await;
    let id = ctx.instance_ready(&project, "web", 2, true).await;
    ctx.instance_ready(&project, "idle", 1, false).await;
    ctx.quiesce().await;
    let vmm = ctx.active_vmm(id).await;
    let sled = ctx.sled_of(vmm).await;
    (id, vmm, sled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_system_has_no_disagreements() {
    let ctx = TestContext::with_stoppable_nexus(2).await;
    running(&ctx).await;
    let run = ctx.omdb(&["db", "check"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "no disagreements (2 sled(s), 1 live VMM(s), 1 reservation(s) checked)\n"
    );
    let json = ctx.omdb(&["db", "check", "--json"]).await;
    assert_eq!(json.code, 0, "{json:?}");
    assert_eq!(json.stdout.trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_the_database_holds_live_but_its_sled_does_not_have() {
    let mut ctx = TestContext::with_stoppable_nexus(2).await;
    let (_, vmm, sled) = running(&ctx).await;
    // With Nexus down, the sled agent's report that the VMM is gone cannot land, so the
    // database keeps it live.
    ctx.stop_nexus().await;
    ctx.sled_client(sled).vmm_unregister(&vmm).await.unwrap();
    let text = expect_disagreements_named(
        &ctx,
        &["vmm-missing-on-sled"],
        &[vmm.to_string()],
        &[(ctx.sled_id(sled), "its-sled")],
    )
    .await;
    let mut snapshots = Snapshots::new();
    snapshots.check("check-vmm-missing-on-sled", &text);
    snapshots.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_a_sled_runs_that_the_database_never_heard_of() {
    let mut ctx = TestContext::with_stoppable_nexus(2).await;
    running(&ctx).await;
    // With Nexus down, its reconciliation of the sled (on the sled agent's next
    // registration) cannot unregister the stranger first.
    ctx.stop_nexus().await;
    let stranger = VmmUuid::new_v4();
    ctx.sled_client(1)
        .vmm_register(
            &stranger,
            &VmmRegisterBody {
                instance_id: InstanceUuid::new_v4(),
                ncpus: 1,
                memory: ByteCount::from_gibibytes_u32(1),
                hostname: "stranger".to_string(),
                migration_target: None,
                disks: Vec::new(),
                nics: Vec::new(),
            },
        )
        .await
        .unwrap();
    let text =
        expect_disagreements(&ctx, &["vmm-unknown-to-database"], &[stranger.to_string()]).await;
    assert!(text.contains("the database has no record of it"), "{text}");
    let mut snapshots = Snapshots::new();
    snapshots.check("check-vmm-unknown-to-database", &text);
    snapshots.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_without_a_vmm() {
    let ctx = TestContext::with_stoppable_nexus(2).await;
    running(&ctx).await;
    let stray = VmmUuid::new_v4();
    let sled = ctx.sled_id(0);
    // The sled's totals are raised with it, so that only the stray row disagrees.
    ctx.sql(&format!(
        "INSERT INTO sled_reservation \
             (vmm_id, sled_id, instance_id, hardware_threads, physical_ram, time_created) \
         VALUES ('{stray}', '{sled}', '{}', 1, {GIB}, now()); \
         UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads + 1, \
             reserved_physical_ram = reserved_physical_ram + {GIB} WHERE id = '{sled}';",
        InstanceUuid::new_v4()
    ));
    let text = expect_disagreements(&ctx, &["reservation-without-vmm"], &[stray.to_string()]).await;
    assert!(text.contains("but the VMM has no live record"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_vmm_without_a_reservation() {
    let ctx = TestContext::with_stoppable_nexus(2).await;
    let (_, vmm, sled) = running(&ctx).await;
    let sled = ctx.sled_id(sled);
    ctx.sql(&format!(
        "DELETE FROM sled_reservation WHERE vmm_id = '{vmm}'; \
         UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads - 2, \
             reserved_physical_ram = reserved_physical_ram - {GIB} WHERE id = '{sled}';"
    ));
    expect_disagreements(&ctx, &["vmm-without-reservation"], &[vmm.to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_whose_totals_disagree_with_its_reservations() {
    let ctx = TestContext::with_stoppable_nexus(2).await;
    let (_, _, sled) = running(&ctx).await;
    let sled = ctx.sled_id(sled);
    ctx.sql(&format!(
        "UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads + 3 \
         WHERE id = '{sled}'"
    ));
    let text = expect_disagreements(&ctx, &["sled-totals-mismatch"], &[sled.to_string()]).await;
    assert!(
        text.contains("records 5 threads and 1 GiB reserved, but its 1 reservation(s) add up to 2 threads and 1 GiB"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_over_capacity() {
    let ctx = TestContext::with_stoppable_nexus(2).await;
    let sled = ctx.sled_id(1);
    // The schema refuses this; a database that lost the constraint would not.
    ctx.sql(&format!(
        "ALTER TABLE sled DROP CONSTRAINT reservations_within_capacity; \
         UPDATE sled SET reserved_hardware_threads = usable_hardware_threads + 1 \
         WHERE id = '{sled}'"
    ));
    let text = expect_disagreements(
        &ctx,
        &["sled-over-capacity", "sled-totals-mismatch"],
        &[sled.to_string(), sled.to_string()],
    )
    .await;
    assert!(
        text.contains(
            "has 9 threads and 0 B reserved, more than its capacity of 8 threads and 16 GiB"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_sled_agent_is_a_disagreement_not_a_crash() {
    let mut ctx = TestContext::with_stoppable_nexus(2).await;
    let gone = ctx.sleds.remove(1);
    let (id, address) = (gone.agent().id(), gone.local_addr());
    gone.close().await.unwrap();
    let text = expect_disagreements(&ctx, &["sled-unreachable"], &[id.to_string()]).await;
    assert!(
        text.contains("cannot reach the sled agent of sled"),
        "{text}"
    );
    let json = ctx.omdb(&["db", "check", "--json"]).await;
    assert!(json.stdout.contains(&address.to_string()), "{json:?}");
    let mut snapshots = Snapshots::new();
    snapshots.check("check-sled-unreachable", &text);
    snapshots.finish();
}
