//! The task `vmm_retirement`: re-drives retirements a crash or an error interrupted.

use crate::app::Nexus;
use halyard_common::Error;
use slog::info;
use std::sync::Arc;
use std::time::Duration;

/// How long the retirement task leaves a VMM that ended to the report that ended it (which
/// retires it at once): the task re-drives retirements a crash or a failure interrupted, and
/// racing the report's own would only unregister the VMM twice.
pub const RETIREMENT_GRACE: Duration = Duration::from_secs(2);

/// The name of the task that re-drives VMM retirements.
pub const VMM_RETIREMENT_TASK: &str = "vmm_retirement";

impl Nexus {
    /// Re-drives the retirement of VMMs that ended but were not retired (a crash between the
    /// report and the retirement), forever.
    pub(crate) fn spawn_retirement_task(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_background_task(
            VMM_RETIREMENT_TASK,
            "retires VMMs that ended (destroyed, failed) but were not retired, and migration \
             targets whose source was retired: unregisters them from their sled agent, \
             releases their reservation, clears their instance's pointer",
            interval,
            |nexus| {
                Box::pin(async move {
                    let retired = nexus.retire_ended_vmms().await?;
                    Ok(match retired {
                        0 => "nothing to retire".to_string(),
                        n => format!("retired {n} ended VMM(s)"),
                    })
                })
            },
        )
    }

    /// Retires every VMM that reached a terminal state more than [`RETIREMENT_GRACE`] ago but
    /// was not retired yet.
    pub async fn retire_ended_vmms(&self) -> Result<usize, Error> {
        let ended_before = chrono::Utc::now()
            - chrono::Duration::from_std(RETIREMENT_GRACE).expect("a few seconds");
        let ended = self
            .datastore
            .vmm_list_unretired_terminal(ended_before)
            .await?;
        for vmm in &ended {
            info!(self.log, "retiring an ended VMM"; "propolis_id" => %vmm.id(), "state" => %vmm.state());
            self.retire_vmm(vmm.sled_id(), vmm.id(), vmm.state())
                .await?;
        }
        // Targets that never reached a terminal state but whose source is retired (its
        // retirement failed before it retired them, or Nexus crashed in between).
        let orphans = self.datastore.vmm_list_orphaned_targets(None).await?;
        for target in &orphans {
            self.retire_orphaned_target(target).await?;
        }
        Ok(ended.len() + orphans.len())
    }
}
