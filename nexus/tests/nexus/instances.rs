use crate::context::{SLED_THREADS, TestContext};
use halyard_common::{Error, InstanceState};
use std::collections::BTreeSet;

#[tokio::test]
async fn an_instance_lives_stops_restarts_and_keeps_its_vmm_history() {
    let ctx = TestContext::new().await;
    let project = ctx.project("web").await;
    let id = ctx.instance(&project, "vm", 2).await;
    assert_eq!(ctx.view(id).await.run_state(), InstanceState::Stopped);
    assert_eq!(ctx.sql("SELECT count(*) FROM sled_reservation").trim(), "0");

    let mut sleds = BTreeSet::new();
    for round in 0..3 {
        let started = ctx.nexus().instance_start(id).await.unwrap();
        assert!(matches!(
            started.run_state(),
            InstanceState::Starting | InstanceState::Running
        ));
        ctx.wait_for(id, InstanceState::Running).await;
        let view = ctx.view(id).await;
        let vmm = view
            .active_vmm
            .clone()
            .expect("a running instance has an active VMM");
        sleds.insert(vmm.sled_id());
        assert_eq!(
            ctx.sql("SELECT count(*) FROM sled_reservation").trim(),
            "1",
            "round {round}"
        );
        ctx.assert_quiet_and_consistent().await;

        // Reboot once, on the way.
        if round == 1 {
            ctx.nexus().instance_reboot(id).await.unwrap();
            ctx.wait_for(id, InstanceState::Running).await;
        }
        if round < 2 {
            ctx.nexus().instance_stop(id).await.unwrap();
            ctx.wait_for(id, InstanceState::Stopped).await;
            assert_eq!(ctx.sql("SELECT count(*) FROM sled_reservation").trim(), "0");
            ctx.assert_quiet_and_consistent().await;
        }
    }
    let history = ctx
        .nexus()
        .datastore()
        .instance_vmm_history(id)
        .await
        .unwrap();
    assert_eq!(history.len(), 3, "one VMM per start");
    let live: Vec<_> = history
        .iter()
        .filter(|v| v.time_deleted.is_none())
        .collect();
    assert_eq!(live.len(), 1);
    assert_eq!(
        ctx.view(id).await.instance.runtime.active_vmm(),
        Some(live[0].id())
    );
    assert!(!sleds.is_empty());

    // A running instance cannot be deleted.
    let err = ctx.nexus().instance_delete(id).await.unwrap_err();
    assert_eq!(err.error_code(), "Conflict", "{err:?}");
    ctx.nexus().instance_stop(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Stopped).await;
    ctx.nexus().instance_delete(id).await.unwrap();
    assert_eq!(
        ctx.nexus()
            .instance_view(id)
            .await
            .unwrap_err()
            .error_code(),
        "ObjectNotFound"
    );
    // Starting a deleted instance: not found.
    assert_eq!(
        ctx.nexus()
            .instance_start(id)
            .await
            .unwrap_err()
            .error_code(),
        "ObjectNotFound"
    );
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn starts_beyond_capacity_fail_clearly_and_leak_nothing() {
    let ctx = TestContext::new().await;
    let project = ctx.project("big").await;
    // Two sleds of 8 threads: four 4-vCPU instances fit, the fifth does not.
    let ncpus = (SLED_THREADS / 2) as u16;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(ctx.instance(&project, &format!("vm-{i}"), ncpus).await);
    }
    for id in &ids[..4] {
        ctx.nexus().instance_start(*id).await.unwrap();
    }
    let err = ctx.nexus().instance_start(ids[4]).await.unwrap_err();
    assert!(matches!(err, Error::InsufficientCapacity { .. }), "{err:?}");
    assert_eq!(err.status_code(), 507);
    assert!(err.to_string().contains("no sled has room"), "{err}");
    assert_eq!(ctx.view(ids[4]).await.run_state(), InstanceState::Stopped);
    for id in &ids[..4] {
        ctx.wait_for(*id, InstanceState::Running).await;
    }
    assert_eq!(ctx.sql("SELECT count(*) FROM sled_reservation").trim(), "4");
    ctx.assert_quiet_and_consistent().await;

    // Once one stops, the fifth fits.
    ctx.nexus().instance_stop(ids[0]).await.unwrap();
    ctx.wait_for(ids[0], InstanceState::Stopped).await;
    ctx.nexus().instance_start(ids[4]).await.unwrap();
    ctx.wait_for(ids[4], InstanceState::Running).await;
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn twenty_concurrent_starts_of_one_instance_make_one_vmm() {
    let ctx = TestContext::new().await;
    let project = ctx.project("race").await;
    let id = ctx.instance(&project, "vm", 2).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let nexus = ctx.nexus().clone();
        tasks.spawn(async move { nexus.instance_start(id).await });
    }
    for result in tasks.join_all().await {
        if let Err(e) = result {
            assert!(
                e.status_code() < 500,
                "a start failed with a server error: {e:?}"
            );
        }
    }
    ctx.wait_for(id, InstanceState::Running).await;
    ctx.assert_quiet_and_consistent().await;
    let history = ctx
        .nexus()
        .datastore()
        .instance_vmm_history(id)
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "exactly one VMM: {history:?}");
    assert_eq!(ctx.sql("SELECT count(*) FROM sled_reservation").trim(), "1");
}

#[tokio::test]
async fn a_failed_vmm_leaves_the_instance_failed_not_running() {
    let ctx = TestContext::new().await;
    let project = ctx.project("p").await;
    let id = ctx.instance(&project, "vm", 2).await;
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
    let vmm = ctx.view(id).await.active_vmm.unwrap();
    let sled = ctx
        .sleds
        .iter()
        .find(|s| s.agent().id() == vmm.sled_id())
        .unwrap();
    let client = crate::context::sled_client(sled.local_addr(), crate::context::Role::Operator);
    client
        .vmm_inject_fault(&vmm.id(), &halyard_sled_agent_api::SimFault::Crash)
        .await
        .unwrap();
    ctx.wait_for(id, InstanceState::Failed).await;
    ctx.assert_quiet_and_consistent().await;
    // A failed instance can be started again, on a new VMM.
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
    ctx.assert_quiet_and_consistent().await;
}
