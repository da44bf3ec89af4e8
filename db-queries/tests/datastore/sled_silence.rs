//! The queries behind the instance watcher and auto-restart: a sled silent past the bound is
//! marked once and never picked while marked; the mark is cleared only as it was set; of many
//! Nexus claiming one failed instance's restart at once, exactly one wins, and the cooldown
//! holds off the next.

use crate::{Harness, one_vmm};
use halyard_common::ids::{InstanceUuid, VmmUuid};
use halyard_common::{AutoRestartPolicy, Error, InstanceNexusState};
use halyard_db_queries::SledChoice;
use std::time::Duration;

#[tokio::test]
async fn a_silent_sled_is_marked_once_and_never_picked_until_cleared() {
    let h = Harness::new();
    let silent = h.sled(16, 16).await;
    let other = h.sled(16, 16).await;
    let long = Duration::from_secs(3600);

    // Seen just now: not silent for an hour, so neither listed nor marked.
    assert!(h.datastore.sled_list_silent(long).await.unwrap().is_empty());
    assert_eq!(
        h.datastore
            .sled_mark_vmms_failed(silent.id(), long)
            .await
            .unwrap(),
        None
    );

    h.sql(&format!(
        "UPDATE sled SET time_last_seen = now() - INTERVAL '2 hours' WHERE id = '{}'",
        silent.id()
    ));
    let listed = h.datastore.sled_list_silent(long).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id()).collect::<Vec<_>>(),
        [silent.id()]
    );
    let mark = h
        .datastore
        .sled_mark_vmms_failed(silent.id(), long)
        .await
        .unwrap()
        .expect("a silent sled is marked");
    // A repeat (another Nexus's pass) keeps the first mark.
    let again = h
        .datastore
        .sled_mark_vmms_failed(silent.id(), long)
        .await
        .unwrap();
    assert_eq!(again, Some(mark));

    // Placement skips it, though it has all its room free; named, it is unavailable (503).
    h.assert_placement_picks_only(other.id()).await;
    let named = h
        .datastore
        .sled_reserve(
            VmmUuid::new_v4(),
            InstanceUuid::new_v4(),
            SledChoice::Specific(silent.id()),
            one_vmm(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(named, Error::ServiceUnavailable { .. }),
        "{named:?}"
    );

    // Seen again, it stays closed until the mark is cleared, and only the same mark clears.
    h.datastore.sled_mark_seen(silent.id()).await.unwrap();
    assert!(h.datastore.sled_list_silent(long).await.unwrap().is_empty());
    assert!(
        h.datastore
            .sled_vmms_failed_swept(silent.id(), mark)
            .await
            .unwrap()
    );
    let older = mark - chrono::Duration::seconds(1);
    assert!(
        !h.datastore
            .sled_clear_vmms_failed(silent.id(), older)
            .await
            .unwrap()
    );
    assert!(
        h.datastore
            .sled_clear_vmms_failed(silent.id(), mark)
            .await
            .unwrap()
    );
    let named = h
        .datastore
        .sled_reserve(
            VmmUuid::new_v4(),
            InstanceUuid::new_v4(),
            SledChoice::Specific(silent.id()),
            one_vmm(),
        )
        .await
        .unwrap();
    assert_eq!(named.sled_id(), silent.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_many_claims_to_restart_a_failed_instance_exactly_one_wins() {
    let h = Harness::new();
    let project = h.project("p").await;
    let never = h.stopped_instance(&project, "never").await;
    let default = h.stopped_instance(&project, "default").await;
    h.sql(&format!(
        "UPDATE instance SET auto_restart_policy = 'never' WHERE id = '{}'",
        never.id()
    ));
    let cooldown = Duration::from_secs(3600);
    // Stopped: not a candidate.
    assert!(
        h.datastore
            .instance_list_to_reincarnate(cooldown)
            .await
            .unwrap()
            .is_empty()
    );
    for instance in [&never, &default] {
        let mut runtime = h
            .datastore
            .instance_fetch(instance.id())
            .await
            .unwrap()
            .runtime
            .next();
        runtime.nexus_state = InstanceNexusState::Failed.into();
        assert!(
            h.datastore
                .instance_update_runtime(instance.id(), &runtime)
                .await
                .unwrap()
        );
    }
    // Failed: the one whose policy is unset (best effort) is; `never` is not.
    let candidates = h
        .datastore
        .instance_list_to_reincarnate(cooldown)
        .await
        .unwrap();
    assert_eq!(
        candidates.iter().map(|i| i.id()).collect::<Vec<_>>(),
        [default.id()]
    );
    assert_eq!(
        candidates[0].auto_restart_policy.map(|p| p.0),
        None::<AutoRestartPolicy>
    );

    let claims = (0..8).map(|_| {
        let datastore = h.datastore.clone();
        let id = default.id();
        tokio::spawn(async move {
            datastore
                .instance_claim_reincarnation(id, cooldown)
                .await
                .unwrap()
        })
    });
    let mut won = 0;
    for claim in claims.collect::<Vec<_>>() {
        won += usize::from(claim.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one claim wins");
    // In its cooldown: no longer a candidate, and a claim now fails.
    assert!(
        h.datastore
            .instance_list_to_reincarnate(cooldown)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !h.datastore
            .instance_claim_reincarnation(default.id(), cooldown)
            .await
            .unwrap()
    );
    assert!(
        !h.datastore
            .instance_claim_reincarnation(never.id(), cooldown)
            .await
            .unwrap()
    );
    // With a cooldown already over (zero), it is a candidate again.
    assert_eq!(
        h.datastore
            .instance_list_to_reincarnate(Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
}
