use crate::recording_nexus::assert_in_order;
use crate::{TestEnv, eventually, register_body, wait_for_state};
use halyard_common::VmmState;
use halyard_common::ids::VmmUuid;
use halyard_sled_agent::SimConfig;
use halyard_sled_agent_api::{VmmPutStateBody, VmmStateRequested};
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn reports_are_retried_until_nexus_is_back_and_never_reordered() {
    let sim = SimConfig {
        start_delay_ms: 30,
        stop_delay_ms: 30,
        reboot_delay_ms: 30,
        migration_phase_delay_ms: 0,
    };
    let env = TestEnv::new(sim).await;
    let ids: Vec<VmmUuid> = (0..5).map(|_| VmmUuid::new_v4()).collect();
    for id in &ids {
        env.client.vmm_register(id, &register_body()).await.unwrap();
    }
    eventually("the registrations' reports", || {
        env.nexus.reports.lock().unwrap().len() >= ids.len()
    })
    .await;

    // Nexus goes down; VMMs keep changing.
    env.nexus.available.store(false, Ordering::SeqCst);
    for id in &ids {
        env.client
            .vmm_put_state(
                id,
                &VmmPutStateBody {
                    state: VmmStateRequested::Run,
                },
            )
            .await
            .unwrap();
    }
    for id in &ids {
        wait_for_state(&env.client, *id, VmmState::Running).await;
    }
    for id in &ids[..3] {
        env.client
            .vmm_put_state(
                id,
                &VmmPutStateBody {
                    state: VmmStateRequested::Stop,
                },
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = env.nexus.refused.load(Ordering::SeqCst);
    assert!(
        refused >= ids.len(),
        "the sled agent should have tried while Nexus was down"
    );

    // Nexus is back: every VMM's newest state arrives, in order.
    env.nexus.available.store(true, Ordering::SeqCst);
    for id in &ids[..3] {
        eventually("the destroyed report", || {
            env.nexus.final_report(*id).is_some()
        })
        .await;
        assert_eq!(
            env.nexus.final_report(*id).unwrap().state.vmm_state.state,
            VmmState::Destroyed
        );
    }
    for id in &ids[3..] {
        eventually("the running report", || {
            env.nexus
                .reports_for(*id)
                .last()
                .is_some_and(|r| r.state.vmm_state.state == VmmState::Running)
        })
        .await;
    }
    for id in &ids {
        let reports = env.nexus.reports_for(*id);
        assert_in_order(&reports);
        let newest = env.client.vmm_get_state(id).await.unwrap().into_inner();
        assert_eq!(
            reports.last().unwrap().state,
            newest,
            "the newest state must be the last reported"
        );
    }
}
