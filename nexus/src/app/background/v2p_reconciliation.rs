//! The task `v2p_reconciliation`: every sled's VPC mappings match the database's.
//!
//! Sagas and VMM retirements push a VPC's mapping set as they change where its interfaces
//! live (`app/v2p.rs`), but a push to a sled that is unreachable is only logged. Each pass of
//! this task asks every in-service sled agent what it holds (`GET /v2p`) and pushes every set
//! that differs from what the database says (`Nexus::reconcile_sled_mappings`): the full set
//! to a sled hosting an interface of the VPC, the empty set to one that hosts none. A sled
//! agent that restarted also gets its sets when it registers again (`reconcile_sled`).

use crate::app::Nexus;
use futures::StreamExt;
use halyard_common::Error;
use slog::warn;
use std::sync::Arc;
use std::time::Duration;

/// The name of the task that reconciles sleds' VPC mappings.
pub const V2P_RECONCILIATION_TASK: &str = "v2p_reconciliation";

/// How many sled agents one pass talks to at once.
const SLEDS_AT_ONCE: usize = 16;

impl Nexus {
    pub(crate) fn spawn_v2p_reconciliation_task(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_background_task(
            V2P_RECONCILIATION_TASK,
            "compares every sled's VPC mappings with the database's and pushes the sets that \
             differ",
            interval,
            |nexus| {
                Box::pin(async move {
                    let (sleds, pushed, unreachable) = nexus.reconcile_all_sleds_mappings().await?;
                    Ok(format!(
                        "{sleds} sled(s) checked, {pushed} set(s) pushed, {unreachable} sled(s) \
                         unreachable"
                    ))
                })
            },
        )
    }

    /// One pass: returns how many sleds it checked, how many sets it pushed, and how many
    /// sleds it could not reach (they are tried again next pass).
    pub async fn reconcile_all_sleds_mappings(&self) -> Result<(usize, usize, usize), Error> {
        let sleds: Vec<_> = self
            .datastore()
            .sled_list_all()
            .await?
            .into_iter()
            .filter(|sled| !sled.is_expunged() && sled.time_vmms_failed.is_none())
            .collect();
        let count = sleds.len();
        let outcomes: Vec<_> = futures::stream::iter(sleds)
            .map(|sled| async move { (sled.id(), self.reconcile_sled_mappings(sled.id()).await) })
            .buffer_unordered(SLEDS_AT_ONCE)
            .collect()
            .await;
        let (mut pushed, mut unreachable) = (0, 0);
        for (sled_id, outcome) in outcomes {
            match outcome {
                Ok(n) => pushed += n,
                Err(e) => {
                    unreachable += 1;
                    warn!(self.log(), "cannot reconcile a sled's VPC mappings";
                        "sled_id" => %sled_id, "error" => %e);
                }
            }
        }
        Ok((count, pushed, unreachable))
    }
}
