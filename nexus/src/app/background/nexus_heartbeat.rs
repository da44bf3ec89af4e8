//! The task `nexus_heartbeat`: several Nexus share one database, and none's sagas are lost.
//!
//! Each pass, this Nexus
//! 1. says it is alive: its row in `nexus` gets the database's `now()` (so no Nexus host's
//!    clock matters). If another process has since registered with the same id (its
//!    incarnation is not ours), this one is superseded: it logs so, starts no more sagas and
//!    runs no more background tasks (the sagas it was running are fenced already: the newcomer
//!    took them over at its start, bumping their generation);
//! 2. adopts the unfinished sagas of every Nexus whose heartbeat is older than the bound
//!    ([`Nexus::nexus_gone_after`]), in one statement, and resumes them
//!    (`Nexus::adopt_sagas_of_gone_nexus`).
//!
//! A Nexus only paused (SIGSTOP, a long GC-like stall, a partition from the database) past the
//! bound is indistinguishable from a dead one; its sagas are adopted all the same. When it
//! comes back, every write it makes to those sagas' logs is refused (the generation moved), so
//! it drops them (`halyard_db_queries::SagaOwnership`): at most an action it was running when
//! it stopped completes once more, which the actions' idempotence covers. The bound trades
//! how long a dead Nexus's sagas wait against how long a stall may last before work moves.

use crate::app::Nexus;
use halyard_common::Error;
use slog::error;
use std::sync::Arc;
use std::time::Duration;

/// The name of the task.
pub const NEXUS_HEARTBEAT_TASK: &str = "nexus_heartbeat";

/// How long a Nexus may go without a heartbeat before another adopts its sagas, unless
/// configured otherwise (`nexus_gone_after_ms`): ten of the default one-second heartbeats.
pub const DEFAULT_GONE_AFTER: Duration = Duration::from_secs(10);

impl Nexus {
    /// How long a Nexus may go without a heartbeat before another adopts its sagas.
    pub fn nexus_gone_after(&self) -> Duration {
        *self
            .nexus_gone_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Changes [`Nexus::nexus_gone_after`].
    pub fn set_nexus_gone_after(&self, bound: Duration) {
        *self
            .nexus_gone_after
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = bound;
    }

    /// Records this process as the one running this Nexus's id (before it takes over its
    /// sagas): an earlier process with the same id is superseded.
    pub async fn register(&self) -> Result<(), Error> {
        self.datastore
            .nexus_register(self.id, self.incarnation)
            .await?;
        *self
            .last_heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        Ok(())
    }

    pub(crate) fn spawn_heartbeat_task(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_background_task(
            NEXUS_HEARTBEAT_TASK,
            "says this Nexus is alive (by the database's clock), and adopts and resumes the \
             unfinished sagas of any Nexus silent past the bound",
            interval,
            |nexus| Box::pin(nexus.heartbeat_and_adopt()),
        )
    }

    /// Before a saga action or undo runs: if this Nexus has not written a heartbeat for half
    /// the bound (it was stalled, stopped or cut off from the database), its sagas may have
    /// been adopted meanwhile, so it looks: a saga no longer its own is dropped here, before
    /// the action acts again (the call never returns). The common case costs a clock read.
    pub(crate) async fn check_still_owner(&self, saga: halyard_common::ids::SagaUuid) {
        if self.ownership.is_dropped(saga) {
            std::future::pending::<()>().await;
        }
        let since = self
            .last_heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if since < self.nexus_gone_after() / 2 {
            return;
        }
        let generation = self.ownership.generation_of(saga);
        match self.datastore.saga_fetch(saga).await {
            Ok(row) if row.current_sec.0 == self.id && row.adopt_generation.0 == generation => {}
            Ok(row) => {
                slog::warn!(self.log, "saga adopted by another Nexus while this one was \
                    silent: this Nexus drops the saga before its next action";
                    "saga_id" => %saga, "owner" => %row.current_sec.0,
                    "adopt_generation" => row.adopt_generation.0.as_u64());
                self.ownership.drop_saga(saga);
                std::future::pending::<()>().await;
            }
            // The database is out of reach: the action's own writes will wait for it, and
            // the log write that follows them is fenced anyway.
            Err(_) => {}
        }
    }

    /// Drops every saga this Nexus runs whose row names another owner or generation.
    async fn drop_sagas_adopted_elsewhere(&self) -> Result<(), Error> {
        let owned = self.ownership.owned();
        let ids: Vec<_> = owned.iter().map(|(saga, _)| *saga).collect();
        let rows = self.datastore.saga_owners(&ids).await?;
        for (saga, generation) in owned {
            let still_ours = rows
                .iter()
                .any(|(id, sec, g)| *id == saga && *sec == self.id && *g == generation);
            if !still_ours {
                slog::warn!(self.log, "saga adopted by another Nexus while this one was \
                    silent: this Nexus drops the saga"; "saga_id" => %saga);
                self.ownership.drop_saga(saga);
            }
        }
        Ok(())
    }

    /// One pass of the task (see the module docs).
    pub async fn heartbeat_and_adopt(self: &Arc<Self>) -> Result<String, Error> {
        // The heartbeat counts from when it was sent: a stall between sending it and hearing
        // back must not look like a fresh heartbeat to `check_still_owner`.
        let sent = std::time::Instant::now();
        let alive = self
            .datastore
            .nexus_heartbeat(self.id, self.incarnation)
            .await?;
        if alive {
            let gap = self
                .last_heartbeat
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            if gap >= self.nexus_gone_after() / 2 {
                // Silent long enough that others may have adopted some of this Nexus's sagas:
                // drop those before the fresh heartbeat lets actions run unchecked.
                self.drop_sagas_adopted_elsewhere().await?;
            }
            *self
                .last_heartbeat
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = sent;
        }
        if !alive {
            if !self
                .superseded
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                error!(self.log, "another process registered with this Nexus's id: this one \
                    is superseded and starts no more sagas"; "incarnation" => %self.incarnation);
            }
            return Err(Error::unavailable(
                "superseded: another process registered with this Nexus's id",
            ));
        }
        let adopted = self
            .adopt_sagas_of_gone_nexus(self.nexus_gone_after())
            .await?;
        Ok(format!("heartbeat written; adopted {adopted} saga(s)"))
    }
}
