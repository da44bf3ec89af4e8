//! The task `instance_watcher`: sleds that stop answering lose their VMMs.
//!
//! Each pass asks every sled agent in service for its VMMs (`GET /vmms`, with a short
//! timeout), all at once. A sled agent that answers is recorded as seen (as a registration
//! does). A sled not heard from for the bound (`sled_unresponsive_after`, by the database's
//! clock) is declared silent:
//!
//! 1. the sled is marked (`sled.time_vmms_failed`): placement never picks it while the mark
//!    stands (the reservation claim requires the mark unset, on the same row);
//! 2. every live VMM on it is failed and retired as an expunge would (`fail_vmms_on_sled`):
//!    its generation is bumped and its record retired, so a report the sled agent sends late
//!    (generation-guarded, and ignored for a retired VMM) cannot bring it back; its
//!    reservation is released; an instance whose active VMM it was becomes failed, from
//!    where it may be started again (by hand, or by auto-restart), elsewhere; migration
//!    targets elsewhere whose source was there are retired, and sources elsewhere paused on a
//!    target there are told the target is gone.
//!
//! When the sled agent answers again (this task's probe, or its next registration),
//! reconciliation (`Nexus::reconcile_sled`) has it destroy every VMM the database retired,
//! and only then clears the mark: nothing new runs there before those are gone.
//!
//! A Nexus fails nothing before it has itself been running for the bound: after an outage of
//! every Nexus, each sled's last sighting is old, and a sled agent slow to answer the first
//! probe is not silent for that.
//!
//! Idempotent, and safe with several Nexus running it at once: the mark keeps the first time,
//! each VMM's retirement is one transaction that a second finds done.
//!
//! ## A silent sled is not always a dead one
//!
//! Nexus cannot tell a sled agent that died (or froze) from one cut off by a partition. The
//! choice made here: past the bound, the sled's VMMs are declared failed either way, so their
//! instances can run again elsewhere and the capacity is not held hostage by a sled that may
//! never come back. The cost: during a partition longer than the bound, a guest still running
//! on the cut-off sled and its restarted copy elsewhere run at the same time, and both may
//! write the same disks, until the sled answers and is told to destroy its copy. The bound is
//! the knob: the longer it is, the rarer the double run and the longer a dead sled's
//! instances stay down (default 20 s: two missed registrations). Fencing the storage (a disk
//! generation each replica checks) or sled agents that stop their own VMMs when they cannot
//! reach Nexus for the bound would close that window; neither exists yet, and the second would
//! turn every Nexus outage into a guest outage.

use crate::app::Nexus;
use halyard_common::Error;
use halyard_common::ids::SledUuid;
use slog::{debug, warn};
use std::sync::Arc;
use std::time::Duration;

/// The name of the task that watches sled agents.
pub const INSTANCE_WATCHER_TASK: &str = "instance_watcher";

/// How long a sled may go unheard before its VMMs are declared failed, unless configured
/// otherwise: two of a sled agent's 10 s registrations missed.
pub const DEFAULT_SLED_UNRESPONSIVE_AFTER: Duration = Duration::from_secs(20);

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SledsWatched {
    /// Sled agents that answered.
    pub answered: usize,
    /// Sleds silent past the bound.
    pub silent: usize,
    /// VMMs failed this pass (on silent sleds).
    pub vmms_failed: usize,
}

impl Nexus {
    pub(crate) fn spawn_instance_watcher_task(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_background_task(
            INSTANCE_WATCHER_TASK,
            "asks every sled agent for its VMMs; fails and retires the VMMs of a sled silent \
             past the bound (placement skips it), and has it destroy them when it answers again",
            interval,
            |nexus| {
                Box::pin(async move {
                    let pass = nexus.watch_sleds().await?;
                    Ok(format!(
                        "{} sled(s) answered, {} silent; {} VMM(s) failed",
                        pass.answered, pass.silent, pass.vmms_failed
                    ))
                })
            },
        )
    }

    /// One pass of the instance watcher (see the module doc).
    pub async fn watch_sleds(self: &Arc<Self>) -> Result<SledsWatched, Error> {
        let bound = self.sled_unresponsive_after();
        // Long enough for a busy sled agent, short enough that a frozen one costs the pass
        // little (the probes run at once).
        let timeout = (bound / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let sleds: Vec<_> = self
            .datastore()
            .sled_list_all()
            .await?
            .into_iter()
            .filter(|sled| !sled.is_expunged())
            .collect();
        let probes = sleds.iter().map(|sled| async move {
            let answer = self.probe_sled(sled.id(), timeout).await;
            (sled, answer)
        });
        let mut pass = SledsWatched::default();
        for (sled, answer) in futures::future::join_all(probes).await {
            match answer {
                Ok(()) => {
                    pass.answered += 1;
                    self.datastore().sled_mark_seen(sled.id()).await?;
                    if sled.time_vmms_failed.is_some() {
                        // Back after its VMMs were failed: have it destroy them (and clear
                        // the mark) before anything is placed there.
                        self.reconcile_sled(sled.id()).await?;
                    }
                }
                Err(e) => {
                    debug!(self.log(), "sled agent did not answer the watcher";
                        "sled_id" => %sled.id(), "error" => %e);
                }
            }
        }
        if self.uptime() < bound {
            // A sled last seen before this Nexus started (after a long outage of every Nexus)
            // looks silent before it had a fair chance to answer this one: judge only after
            // watching for the bound.
            return Ok(pass);
        }
        for sled in self.datastore().sled_list_silent(bound).await? {
            let Some(mark) = self
                .datastore()
                .sled_mark_vmms_failed(sled.id(), bound)
                .await?
            else {
                continue; // it answered meanwhile
            };
            pass.silent += 1;
            let swept = self.fail_vmms_on_sled(sled.id(), "silent").await?;
            if !swept.vmms_failed.is_empty() {
                warn!(self.log(), "sled agent silent past the bound: its VMMs were failed and \
                    retired, and it gets nothing new until it answers";
                    "sled_id" => %sled.id(), "time_last_seen" => %sled.time_last_seen,
                    "time_vmms_failed" => %mark, "bound_ms" => bound.as_millis(),
                    "vmms_failed" => swept.vmms_failed.len(),
                    "instances_failed" => swept.instances_failed.len());
            }
            pass.vmms_failed += swept.vmms_failed.len();
        }
        Ok(pass)
    }

    /// Asks sled `sled_id`'s agent for its VMMs, giving up after `timeout`.
    async fn probe_sled(&self, sled_id: SledUuid, timeout: Duration) -> Result<(), Error> {
        let client = self.sled_client(sled_id).await?;
        match tokio::time::timeout(timeout, client.vmm_list()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(crate::app::sled::sled_agent_error(e)),
            Err(_) => Err(Error::unavailable(format!(
                "sled agent did not answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}
