use crate::recording_nexus::assert_in_order;
use crate::{TestEnv, eventually, register_body, wait_for_state};
use halyard_common::VmmState;
use halyard_common::ids::VmmUuid;
use halyard_sled_agent::SimConfig;
use halyard_sled_agent_api::{VmmPutStateBody, VmmStateRequested};
use std::sync::atomic::Ordering;

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
    let outage_start = env.nexus.set_available(false);
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
    let mut newest = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let state = if i < 3 {
            VmmState::Destroyed
        } else {
            VmmState::Running
        };
        newest.push(wait_for_state(&env.client, *id, state).await);
    }
    // Each VMM's newest state was offered and refused, and offered again (the sled agent
    // retries; it does not drop a report Nexus did not take).
    for (id, newest) in ids.iter().zip(&newest) {
        eventually("the newest state refused, then retried", || {
            let attempts = env.nexus.report_attempts_for(*id);
            attempts.iter().filter(|a| !a.accepted).count() >= 2
                && attempts.iter().any(|a| !a.accepted && a.state == *newest)
        })
        .await;
    }
    // Registrations are counted apart from reports: the sled agent kept trying those too.
    eventually("a refused registration", || {
        env.nexus.refused_registrations.load(Ordering::SeqCst) > 0
    })
    .await;

    // Nexus is back: every VMM's newest state arrives, in order.
    let outage_end = env.nexus.set_available(true);
    let during_outage =
        env.nexus.report_attempts.lock().unwrap()[outage_start..outage_end].to_vec();
    assert!(
        during_outage.iter().all(|a| !a.accepted),
        "a report was taken while Nexus was down: {during_outage:?}"
    );
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
    for (id, newest) in ids.iter().zip(&newest) {
        let reports = env.nexus.reports_for(*id);
        assert_in_order(&reports);
        let current = env.client.vmm_get_state(id).await.unwrap().into_inner();
        assert_eq!(current, *newest, "the VMM changed after the outage");
        assert_eq!(
            reports.last().unwrap().state,
            *newest,
            "the newest state must be the last reported"
        );
        // The same report, refused during the outage, was taken once Nexus was back.
        let attempts = env.nexus.report_attempts_for(*id);
        let first_refused = attempts
            .iter()
            .position(|a| !a.accepted && a.state == *newest)
            .unwrap();
        let taken = attempts
            .iter()
            .position(|a| a.accepted && a.state == *newest)
            .expect("the newest state was taken");
        assert!(taken > first_refused, "refused, then taken: {attempts:?}");
    }
}
