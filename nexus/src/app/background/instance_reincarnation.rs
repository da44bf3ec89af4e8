//! The task `instance_reincarnation`: failed instances start again by themselves, as Oxide's
//! auto-restart does.
//!
//! An instance's `auto_restart_policy` is `never`, `best_effort`, or unset (the default, which
//! is best effort). Each pass finds the live instances that are failed (their last VMM failed:
//! its sled agent reported it, the sled was expunged, or the instance watcher declared its
//! sled silent), whose policy allows a restart and whose cooldown is over: never restarted
//! automatically, or longer ago than the cooldown (`auto_restart_cooldown_ms`, an hour by
//! default, as Oxide's). For each, it first claims the restart
//! (`DataStore::instance_claim_reincarnation`: one conditional UPDATE that records
//! `time_last_auto_restarted`, so of several Nexus exactly one restarts it and the cooldown
//! starts), then runs an instance-start saga, which places the new VMM on any sled with room
//! (never an expunged sled, nor one whose VMMs the watcher failed).
//!
//! A restart that fails (no sled has room) leaves the instance failed until the cooldown is
//! over, as Oxide's best effort does; so does a Nexus that dies between the claim and the
//! saga. A user may always start a failed instance by hand.

use crate::app::Nexus;
use halyard_common::Error;
use slog::{info, warn};
use std::sync::Arc;
use std::time::Duration;

/// The name of the task that restarts failed instances.
pub const INSTANCE_REINCARNATION_TASK: &str = "instance_reincarnation";

/// Oxide's default: an instance restarted automatically is not restarted again within an hour.
pub const DEFAULT_AUTO_RESTART_COOLDOWN: Duration = Duration::from_secs(3600);

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstancesReincarnated {
    /// Instances started again.
    pub restarted: usize,
    /// Restarts that failed (the instance stays failed until its cooldown is over).
    pub failed: usize,
}

impl Nexus {
    pub(crate) fn spawn_instance_reincarnation_task(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_background_task(
            INSTANCE_REINCARNATION_TASK,
            "starts again each failed instance whose auto-restart policy allows it and whose \
             cooldown is over",
            interval,
            |nexus| {
                Box::pin(async move {
                    let pass = nexus.reincarnate_failed_instances().await?;
                    Ok(format!(
                        "{} instance(s) restarted, {} restart(s) failed",
                        pass.restarted, pass.failed
                    ))
                })
            },
        )
    }

    /// One pass of the reincarnation task (see the module doc).
    pub async fn reincarnate_failed_instances(
        self: &Arc<Self>,
    ) -> Result<InstancesReincarnated, Error> {
        let cooldown = self.auto_restart_cooldown();
        let mut pass = InstancesReincarnated::default();
        for instance in self
            .datastore()
            .instance_list_to_reincarnate(cooldown)
            .await?
        {
            let id = instance.id();
            if !self
                .datastore()
                .instance_claim_reincarnation(id, cooldown)
                .await?
            {
                continue; // another Nexus has it, or it changed meanwhile
            }
            match self.instance_start(id).await {
                Ok(view) => {
                    info!(self.log(), "restarted a failed instance (auto-restart)";
                        "instance_id" => %id, "name" => %instance.name(),
                        "propolis_id" => ?view.instance.runtime.active_vmm());
                    pass.restarted += 1;
                }
                Err(e) => {
                    warn!(self.log(), "automatic restart of a failed instance failed; it stays \
                        failed until its cooldown is over";
                        "instance_id" => %id, "name" => %instance.name(), "error" => %e,
                        "cooldown_ms" => cooldown.as_millis());
                    pass.failed += 1;
                }
            }
        }
        Ok(pass)
    }
}
