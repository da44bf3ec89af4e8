use crate::recording_nexus::{RecordingNexus, assert_in_order};
use crate::{TestEnv, eventually, register_body, visible_delays, wait_for_state};
use halyard_common::VmmState;
use halyard_common::ids::VmmUuid;
use halyard_sled_agent::SimConfig;
use halyard_sled_agent_api::{SimFault, VmmPutStateBody, VmmStateRequested};
use std::time::Duration;

fn request(state: VmmStateRequested) -> VmmPutStateBody {
    VmmPutStateBody { state }
}

#[tokio::test]
async fn the_sled_registers_and_keeps_registering_so_a_restarted_nexus_learns_it() {
    // Nexus comes back at the same address: a port no other test takes while it is away.
    let nexus_port = halyard_test_db::reserve_port().unwrap();
    let env = TestEnv::with_nexus_at(nexus_port.address(), SimConfig::default()).await;
    let sled_id = env.sled.agent().id();
    eventually("a registration", || {
        !env.nexus.registrations.lock().unwrap().is_empty()
    })
    .await;
    let (id, info) = env.nexus.registrations.lock().unwrap()[0].clone();
    assert_eq!(id, sled_id);
    assert_eq!(info.address, env.sled.local_addr());
    assert_eq!(info.hardware_threads, 64);
    eventually("re-registration", || {
        env.nexus.registrations.lock().unwrap().len() >= 3
    })
    .await;

    // Nexus goes away and comes back on the same address with no memory of the sled.
    let address = env.nexus.address();
    env.nexus.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = RecordingNexus::start(address);
    eventually("registration with the restarted Nexus", || {
        restarted
            .registrations
            .lock()
            .unwrap()
            .iter()
            .any(|(id, _)| *id == sled_id)
    })
    .await;

    let inventory = env.client.inventory().await.unwrap().into_inner();
    assert_eq!((inventory.sled_id, inventory.vmm_count), (sled_id, 0));
}

#[tokio::test]
async fn a_vmm_runs_stops_and_is_reported_destroyed_only_once_gone() {
    let env = TestEnv::new(visible_delays()).await;
    let id = VmmUuid::new_v4();
    let registered = env
        .client
        .vmm_register(&id, &register_body())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.vmm_state.state, VmmState::Creating);

    let starting = env
        .client
        .vmm_put_state(&id, &request(VmmStateRequested::Run))
        .await
        .unwrap();
    assert_eq!(starting.vmm_state.state, VmmState::Starting);
    wait_for_state(&env.client, id, VmmState::Running).await;
    assert_eq!(env.client.vmm_list().await.unwrap().len(), 1);
    // Run again: already running, a no-op.
    let again = env
        .client
        .vmm_put_state(&id, &request(VmmStateRequested::Run))
        .await
        .unwrap();
    assert_eq!(again.vmm_state.state, VmmState::Running);

    env.client
        .vmm_put_state(&id, &request(VmmStateRequested::Stop))
        .await
        .unwrap();
    eventually("the destroyed report", || {
        env.nexus.final_report(id).is_some()
    })
    .await;

    let reports = env.nexus.reports_for(id);
    assert_in_order(&reports);
    let states: Vec<VmmState> = reports.iter().map(|r| r.state.vmm_state.state).collect();
    for expected in [VmmState::Starting, VmmState::Running, VmmState::Destroyed] {
        assert!(
            states.contains(&expected),
            "no {expected} report in {states:?}"
        );
    }
    let last = reports.last().unwrap();
    assert_eq!(last.state.vmm_state.state, VmmState::Destroyed);
    assert_eq!(
        last.still_listed,
        Some(false),
        "destroyed was reported while still listed"
    );
    assert!(env.client.vmm_list().await.unwrap().is_empty());

    // Gone, but its final state is readable until Nexus unregisters it.
    let state = env.client.vmm_get_state(&id).await.unwrap();
    assert_eq!(state.vmm_state, last.state.vmm_state);
    env.client.vmm_unregister(&id).await.unwrap();
    let err = env.client.vmm_get_state(&id).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    env.client.vmm_unregister(&id).await.unwrap(); // idempotent
}

#[tokio::test]
async fn a_vmm_reboots() {
    let env = TestEnv::new(visible_delays()).await;
    let id = VmmUuid::new_v4();
    env.client
        .vmm_register(&id, &register_body())
        .await
        .unwrap();
    env.client
        .vmm_put_state(&id, &request(VmmStateRequested::Run))
        .await
        .unwrap();
    let running = wait_for_state(&env.client, id, VmmState::Running).await;
    let rebooting = env
        .client
        .vmm_put_state(&id, &request(VmmStateRequested::Reboot))
        .await
        .unwrap();
    assert_eq!(rebooting.vmm_state.state, VmmState::Rebooting);
    let after = wait_for_state(&env.client, id, VmmState::Running).await;
    assert_eq!(
        after.vmm_state.generation.as_u64(),
        running.vmm_state.generation.as_u64() + 2
    );
    eventually("the reboot reports", || {
        env.nexus
            .reports_for(id)
            .last()
            .is_some_and(|r| r.state == after)
    })
    .await;
    let states: Vec<VmmState> = env
        .nexus
        .reports_for(id)
        .iter()
        .map(|r| r.state.vmm_state.state)
        .collect();
    assert!(states.contains(&VmmState::Rebooting), "{states:?}");
    assert_in_order(&env.nexus.reports_for(id));
}

#[tokio::test]
async fn injected_faults_are_reported_as_the_right_states() {
    let env = TestEnv::new(visible_delays()).await;

    // A start that fails ends in failed, reported after the VMM is gone.
    let failed_start = VmmUuid::new_v4();
    env.client
        .vmm_register(&failed_start, &register_body())
        .await
        .unwrap();
    env.client
        .vmm_inject_fault(&failed_start, &SimFault::FailNextStart)
        .await
        .unwrap();
    env.client
        .vmm_put_state(&failed_start, &request(VmmStateRequested::Run))
        .await
        .unwrap();
    eventually("the failed start", || {
        env.nexus.final_report(failed_start).is_some()
    })
    .await;
    let last = env.nexus.final_report(failed_start).unwrap();
    assert_eq!(last.state.vmm_state.state, VmmState::Failed);
    assert_eq!(last.still_listed, Some(false));
    assert!(
        !env.nexus
            .reports_for(failed_start)
            .iter()
            .any(|r| r.state.vmm_state.state == VmmState::Running)
    );

    // A crash of a running VMM.
    let crashed = VmmUuid::new_v4();
    env.client
        .vmm_register(&crashed, &register_body())
        .await
        .unwrap();
    env.client
        .vmm_put_state(&crashed, &request(VmmStateRequested::Run))
        .await
        .unwrap();
    wait_for_state(&env.client, crashed, VmmState::Running).await;
    env.client
        .vmm_inject_fault(&crashed, &SimFault::Crash)
        .await
        .unwrap();
    // `final_report` fails the test if the crashed VMM was still listed when its end arrived.
    eventually("the crash", || env.nexus.final_report(crashed).is_some()).await;
    assert_eq!(
        env.nexus
            .final_report(crashed)
            .unwrap()
            .state
            .vmm_state
            .state,
        VmmState::Failed
    );
    assert_eq!(
        env.nexus.final_report(crashed).unwrap().still_listed,
        Some(false)
    );
    assert_in_order(&env.nexus.reports_for(crashed));

    // A hung start stays starting well past its delay; unregistering still destroys it.
    let hung = VmmUuid::new_v4();
    env.client
        .vmm_register(&hung, &register_body())
        .await
        .unwrap();
    env.client
        .vmm_inject_fault(&hung, &SimFault::HangNextTransition)
        .await
        .unwrap();
    env.client
        .vmm_put_state(&hung, &request(VmmStateRequested::Run))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.client
            .vmm_get_state(&hung)
            .await
            .unwrap()
            .vmm_state
            .state,
        VmmState::Starting
    );
    env.client.vmm_unregister(&hung).await.unwrap();
    eventually("the hung VMM's end", || {
        env.nexus.final_report(hung).is_some()
    })
    .await;
    let last = env.nexus.final_report(hung).unwrap();
    assert_eq!(last.state.vmm_state.state, VmmState::Destroyed);
    assert_eq!(last.still_listed, Some(false));
    assert!(env.client.vmm_list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_sled_agent_holds_thousands_of_vmms() {
    let env = TestEnv::new(SimConfig::default()).await;
    let count = 2000;
    let ids: Vec<VmmUuid> = (0..count).map(|_| VmmUuid::new_v4()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in ids.chunks(count / 16) {
        let client = env.client.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for id in chunk {
                client
                    .vmm_register(&id, &crate::register_body())
                    .await
                    .unwrap();
                client
                    .vmm_put_state(&id, &request(VmmStateRequested::Run))
                    .await
                    .unwrap();
            }
        });
    }
    tasks.join_all().await;
    eventually("every VMM running", || {
        env.sled
            .agent()
            .vmm_list()
            .iter()
            .filter(|v| v.state.vmm_state.state == VmmState::Running)
            .count()
            == count
    })
    .await;
    assert_eq!(
        env.client.inventory().await.unwrap().vmm_count,
        count as u64
    );
    // Every VMM's newest state reaches Nexus.
    eventually("every running report", || {
        let reports = env.nexus.reports.lock().unwrap();
        let running: std::collections::HashSet<_> = reports
            .iter()
            .filter(|r| r.state.vmm_state.state == VmmState::Running)
            .map(|r| r.propolis_id)
            .collect();
        running.len() == count
    })
    .await;
}

/// The check behind every `final_report`: a terminal report of a VMM its sled agent still
/// lists (here sent by the test, not by the sled agent, which never does that) fails it.
#[tokio::test]
async fn a_terminal_report_of_a_vmm_still_listed_fails_the_check() {
    let env = TestEnv::new(visible_delays()).await;
    let id = VmmUuid::new_v4();
    let registered = env
        .client
        .vmm_register(&id, &register_body())
        .await
        .unwrap()
        .into_inner();
    // The sled agent's own report first, so that ours is the last.
    eventually("the creating report", || {
        !env.nexus.reports_for(id).is_empty()
    })
    .await;
    let mut premature = registered;
    premature.vmm_state.state = VmmState::Destroyed;
    premature.vmm_state.generation = registered.vmm_state.generation.next().next();
    halyard_nexus_client::Client::new_with_client(
        &format!("https://{}", env.nexus.address()),
        crate::http_as(
            crate::Role::Sled(env.sled.agent().id()),
            halyard_tls::NEXUS_NAME,
        ),
    )
    .vmm_put_state(&id, &premature)
    .await
    .unwrap();
    assert_eq!(env.client.vmm_list().await.unwrap().len(), 1);
    let checked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| env.nexus.final_report(id)));
    let message = checked.expect_err("the premature terminal report passed the check");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("still listed it"), "{message}");
}

/// Finding 6 of issue 15: a VMM whose task panics is reported failed (after it left the
/// live table, like any end), and its state reads failed, so its instance can be stopped
/// or started again instead of waiting forever.
#[tokio::test]
async fn a_vmm_whose_task_panics_is_reported_failed() {
    let env = TestEnv::new(visible_delays()).await;
    let id = VmmUuid::new_v4();
    env.client
        .vmm_register(&id, &register_body())
        .await
        .unwrap();
    env.client
        .vmm_put_state(&id, &request(VmmStateRequested::Run))
        .await
        .unwrap();
    wait_for_state(&env.client, id, VmmState::Running).await;
    env.client
        .vmm_inject_fault(&id, &SimFault::Panic)
        .await
        .unwrap();
    eventually("the panicked VMM's final report", || {
        env.nexus.final_report(id).is_some()
    })
    .await;
    let last = env.nexus.final_report(id).unwrap();
    assert_eq!(last.state.vmm_state.state, VmmState::Failed);
    assert_eq!(last.still_listed, Some(false));
    assert_in_order(&env.nexus.reports_for(id));
    assert_eq!(
        env.client.vmm_get_state(&id).await.unwrap().vmm_state.state,
        VmmState::Failed
    );
    assert!(
        env.client
            .vmm_list()
            .await
            .unwrap()
            .iter()
            .all(|v| v.propolis_id != id),
        "a VMM whose task died is not live"
    );
}
