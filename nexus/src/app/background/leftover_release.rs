//! The task `saga_leftover_release`: nothing stays stuck.
//!
//! An action whose effect landed but whose reply was lost (the database committed, the
//! connection dropped, and the database then stayed down past the forward budget) fails its
//! node, and steno never runs a failed node's undo. What it leaves behind — an instance
//! claimed by a VMM id with no VMM record, a reservation with no VMM, a VMM stuck in
//! `creating` that no instance points at — no saga will ever release. This task finds them
//! (`DataStore::leftover_list`: no unfinished saga names them) once they are older than a
//! grace period, and releases each: the claim is cleared (the instance is stopped and can be
//! started again), the reservation given back, the VMM retired as `saga_unwound`.

use crate::app::Nexus;
use chrono::Utc;
use halyard_common::{Error, VmmState};
use slog::info;
use std::sync::Arc;
use std::time::Duration;

/// The name of the task that releases what failed sagas left behind.
pub const LEFTOVER_RELEASE_TASK: &str = "saga_leftover_release";

/// How old a leftover must be before it is released, unless set otherwise
/// (`Nexus::set_leftover_grace`). Whether a saga owns it is decided by the saga log, not by
/// its age: the grace is a margin on top.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// What one pass released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeftoversReleased {
    pub claims: usize,
    pub reservations: usize,
    pub creating_vmms: usize,
}

impl Nexus {
    pub fn leftover_grace(&self) -> Duration {
        *self
            .leftover_grace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Changes how old a leftover must be before it is released (tests use a short one).
    pub fn set_leftover_grace(&self, grace: Duration) {
        *self
            .leftover_grace
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = grace;
    }

    pub(crate) fn spawn_leftover_task(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_background_task(
            LEFTOVER_RELEASE_TASK,
            "releases what failed sagas left behind and no unfinished saga names, once older \
             than the grace period: clears an instance's claim by a VMM that has no record, \
             gives back a reservation whose VMM has no live record, retires a VMM stuck in \
             creating that no instance points at",
            interval,
            |nexus| {
                Box::pin(async move {
                    let released = nexus.release_leftovers().await?;
                    Ok(if released == LeftoversReleased::default() {
                        "nothing left over".to_string()
                    } else {
                        format!(
                            "released {} claim(s), {} reservation(s), {} creating VMM(s)",
                            released.claims, released.reservations, released.creating_vmms
                        )
                    })
                })
            },
        )
    }

    /// One pass of the leftover task: releases every leftover older than the grace period.
    pub async fn release_leftovers(&self) -> Result<LeftoversReleased, Error> {
        let grace = chrono::Duration::from_std(self.leftover_grace())
            .map_err(|e| Error::internal(format!("leftover grace period: {e}")))?;
        let leftovers = self.datastore().leftover_list(Utc::now() - grace).await?;
        let mut released = LeftoversReleased::default();
        for claim in &leftovers.claims {
            if self
                .datastore()
                .instance_release_leftover_claim(claim.instance_id, claim.vmm_id)
                .await?
            {
                info!(self.log(), "released a leftover claim: no VMM record, no saga owns it";
                    "instance_id" => %claim.instance_id, "propolis_id" => %claim.vmm_id,
                    "time_claimed" => %claim.time_claimed);
                released.claims += 1;
            }
        }
        for reservation in &leftovers.reservations {
            if self
                .datastore()
                .sled_reservation_release_leftover(reservation.vmm_id())
                .await?
            {
                info!(self.log(), "released a leftover reservation: no live VMM, no saga owns it";
                    "propolis_id" => %reservation.vmm_id(), "sled_id" => %reservation.sled_id(),
                    "time_created" => %reservation.time_created);
                released.reservations += 1;
            }
        }
        for vmm in &leftovers.creating_vmms {
            info!(self.log(), "retiring a leftover VMM: creating, no instance points at it, \
                no saga owns it";
                "propolis_id" => %vmm.id(), "instance_id" => %vmm.instance_id(),
                "sled_id" => %vmm.sled_id());
            self.retire_vmm(vmm.sled_id(), vmm.id(), VmmState::SagaUnwound)
                .await?;
            released.creating_vmms += 1;
        }
        Ok(released)
    }
}
