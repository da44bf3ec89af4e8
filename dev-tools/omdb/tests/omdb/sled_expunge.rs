//! `omdb nexus sled-expunge`: a sled that stopped answering declared gone, through Nexus; what
//! it prints (as a snapshot), that a repeat is harmless, an unknown sled an error, and how
//! `omdb db sleds` and `omdb db check` see the expunged sled afterwards.

use crate::context::{RunOmdb, TestContext};
use crate::output::sorted_body;
use crate::snapshot::{Redactor, Snapshots};
use halyard_common::InstanceState;
use halyard_common::ids::SledUuid;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_expunge_fails_the_sleds_vmms_and_reports_what_it_did() {
    let mut ctx = TestContext::with_stoppable_nexus(2).await;
    let project = ctx.project("alpha").await;
    let web = ctx.instance_ready(&project, "web", 2, true).await;
    ctx.instance_ready(&project, "idle", 1, false).await;
    ctx.quiesce().await;
    let vmm = ctx.active_vmm(web).await;
    let gone_index = ctx.sled_of(vmm).await;
    let gone = ctx.sled_id(gone_index);
    let other = ctx.sled_id(1 - gone_index);
    let mut redactor = Redactor::new();
    redactor
        .name(gone, "gone-sled")
        .name(other, "other-sled")
        .name(web, "web")
        .name(vmm, "web-vmm");

    // The sled stops answering.
    ctx.sleds.remove(gone_index).close().await.unwrap();

    let nexus_url = ctx.nexus_url().to_string();
    let sled = gone.to_string();
    let args = ["nexus", "sled-expunge", &sled, "--nexus-url", &nexus_url];
    let mut snapshots = Snapshots::new();
    snapshots.check(
        "nexus-sled-expunge",
        &redactor.redact(&ctx.omdb(&args).await.ok()),
    );
    ctx.wait_for(web, InstanceState::Failed).await;
    // A repeat is harmless and says nothing more was failed.
    snapshots.check(
        "nexus-sled-expunge-repeat",
        &redactor.redact(&ctx.omdb(&args).await.ok()),
    );
    let json: Value = serde_json::from_str(
        &ctx.omdb(&[
            "nexus",
            "sled-expunge",
            &sled,
            "--nexus-url",
            &nexus_url,
            "--json",
        ])
        .await
        .ok(),
    )
    .unwrap();
    assert_eq!(json["sled_id"], sled);
    assert_eq!(json["vmms_failed"], Value::Array(Vec::new()));

    // An unknown sled: exit 1, one line naming the 404.
    let unknown = SledUuid::new_v4().to_string();
    let run = ctx
        .omdb(&["nexus", "sled-expunge", &unknown, "--nexus-url", &nexus_url])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.contains("404") && run.stderr.contains("not found"),
        "{run:?}"
    );

    // The listing shows when it was expunged; check does not ask it, and finds the
    // database consistent.
    snapshots.check(
        "db-sleds-expunged",
        // Sorted: the two sleds registered at about the same time.
        &sorted_body(&redactor.redact(&ctx.omdb(&["db", "sleds"]).await.ok())),
    );
    let check = ctx.omdb(&["db", "check"]).await;
    assert_eq!(check.code, 0, "{check:?}");
    snapshots.finish();
}
