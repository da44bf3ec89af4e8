//! Pushes each VMM's state to Nexus.
//!
//! One small task per VMM follows the VMM's watch channel. It sends the newest state, one
//! request at a time, so reports of one VMM are never reordered; while Nexus is unreachable it
//! retries with backoff, each time with the newest state (older ones it skipped are superseded:
//! Nexus applies by generation, so the newest report carries everything that matters). It ends
//! once a terminal state has been delivered.

use halyard_common::ids::VmmUuid;
use halyard_common::internal_api::SledVmmState;
use halyard_observability::prometheus::IntCounterVec;
use slog::{Logger, debug, warn};
use std::time::Duration;
use tokio::sync::watch;

const FIRST_RETRY: Duration = Duration::from_millis(20);
const MAX_RETRY: Duration = Duration::from_secs(2);

pub(crate) fn spawn(
    id: VmmUuid,
    mut states: watch::Receiver<SledVmmState>,
    nexus: halyard_nexus_client::Client,
    reports: IntCounterVec,
    log: Logger,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut delivered: Option<SledVmmState> = None;
        loop {
            let latest = *states.borrow_and_update();
            if delivered != Some(latest) {
                delivered = Some(deliver(id, &states, &nexus, &reports, &log).await);
                continue;
            }
            if latest.vmm_state.state.is_terminal() {
                return;
            }
            if states.changed().await.is_err() && delivered == Some(*states.borrow()) {
                // The VMM is gone and its last state was delivered.
                return;
            }
        }
    })
}

/// Sends the newest state until Nexus takes one; returns the state it took.
async fn deliver(
    id: VmmUuid,
    states: &watch::Receiver<SledVmmState>,
    nexus: &halyard_nexus_client::Client,
    reports: &IntCounterVec,
    log: &Logger,
) -> SledVmmState {
    let mut delay = FIRST_RETRY;
    loop {
        let state = *states.borrow();
        match nexus.vmm_put_state(&id, &state).await {
            Ok(_) => {
                reports.with_label_values(&["accepted"]).inc();
                debug!(log, "reported VMM state"; "state" => %state.vmm_state.state,
                    "generation" => %state.vmm_state.generation);
                return state;
            }
            Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                // Nexus understood and refused: sending it again will not help.
                reports.with_label_values(&["refused"]).inc();
                warn!(log, "Nexus refused a VMM report"; "error" => %e,
                    "generation" => %state.vmm_state.generation);
                return state;
            }
            Err(e) => {
                reports.with_label_values(&["retried"]).inc();
                warn!(log, "cannot report VMM state; retrying"; "error" => %e,
                    "retry_in_ms" => delay.as_millis());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}
