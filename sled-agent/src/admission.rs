//! Which requested states a VMM takes: one rule for both backends.
//!
//! [`admit`] decides, from what a VMM is doing alone, whether a request is carried out, is
//! already done (or under way), or is refused with a reason. How a backend carries it out
//! (a timer in the simulator, a QMP command to QEMU) is the backend's business; whether it
//! may is decided here, so the two backends can't drift apart.

use halyard_common::ids::{MigrationUuid, SledUuid, VmmUuid};
use halyard_common::{Error, VmmState};
use halyard_sled_agent_api::VmmStateRequested;
use std::net::SocketAddr;

/// What a VMM is doing, as far as admitting a request goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VmmSituation {
    pub id: VmmUuid,
    pub state: VmmState,
    /// Registered as the target of an inbound migration.
    pub is_migration_target: bool,
    /// An outbound migration is under way.
    pub migrating_out: bool,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Boot a VMM that never ran.
    Start,
    /// Shut the VMM down. `never_ran`: it is still `creating`, with nothing in it to shut
    /// down gracefully, so it ends at once.
    Stop { never_ran: bool },
    /// Reboot a running VMM.
    Reboot,
    /// Begin migrating out.
    MigrateOut {
        migration_id: MigrationUuid,
        target_propolis_id: VmmUuid,
        target_sled_id: SledUuid,
        target_address: SocketAddr,
    },
    /// Done already, or under way: answer with the current state and change nothing.
    AlreadyDone,
    /// Refused (409), saying why.
    Refused(Error),
}

/// Decides `requested` for a VMM in `situation`. `earlier_target` is the target VMM of an
/// earlier outbound migration with the requested migration's id, if this VMM has seen one
/// (so a repeated `MigrateOut` is answered from what that migration did).
pub(crate) fn admit(
    situation: VmmSituation,
    requested: &VmmStateRequested,
    earlier_target: Option<VmmUuid>,
) -> Admission {
    use VmmState::*;
    let refuse = |what: &str, why: &str| {
        Admission::Refused(conflict(situation.id, situation.state, what, why))
    };
    match requested {
        VmmStateRequested::Run => match situation.state {
            Creating if situation.is_migration_target => refuse(
                "run",
                "it is a migration target and starts when its migration completes",
            ),
            Creating => Admission::Start,
            Starting | Running | Rebooting => Admission::AlreadyDone,
            Migrating => refuse("run", "wait for its migration to finish"),
            _ => refuse(
                "run",
                "a stopped VMM never runs again; start the instance on a new VMM",
            ),
        },
        VmmStateRequested::Stop => match situation.state {
            Stopping | Stopped => Admission::AlreadyDone,
            Migrating => refuse("stop", "wait for its migration to finish"),
            Creating => Admission::Stop { never_ran: true },
            _ => Admission::Stop { never_ran: false },
        },
        VmmStateRequested::Reboot => match situation.state {
            Rebooting => Admission::AlreadyDone,
            Running => Admission::Reboot,
            _ => refuse("reboot", "only a running VMM can reboot"),
        },
        VmmStateRequested::MigrateOut {
            migration_id,
            target_propolis_id,
            target_sled_id,
            target_address,
        } => match earlier_target {
            // A repeat: answered from what this migration did (in progress, or failed).
            Some(earlier) if earlier == *target_propolis_id => Admission::AlreadyDone,
            Some(earlier) => refuse(
                "migrate",
                &format!(
                    "migration {migration_id} goes to VMM {earlier}, not {target_propolis_id}"
                ),
            ),
            None if situation.state == Running && !situation.migrating_out => {
                Admission::MigrateOut {
                    migration_id: *migration_id,
                    target_propolis_id: *target_propolis_id,
                    target_sled_id: *target_sled_id,
                    target_address: *target_address,
                }
            }
            None => refuse("migrate", "only a running VMM can migrate out"),
        },
    }
}

/// The 409 for what a VMM in `state` can't do, and why.
pub(crate) fn conflict(id: VmmUuid, state: VmmState, what: &str, why: &str) -> Error {
    Error::conflict(format!("cannot {what} VMM {id}: it is {state}; {why}"))
}

/// Whether a VMM may have its vCPUs paused or resumed now (`want_paused`, from
/// `already_paused`): a repeat is always fine; a change only while it runs and does not
/// migrate out.
pub(crate) fn admit_vcpus(
    situation: VmmSituation,
    already_paused: bool,
    want_paused: bool,
) -> Result<bool, Error> {
    if already_paused == want_paused {
        return Ok(false);
    }
    if situation.state != VmmState::Running || situation.migrating_out {
        let what = if want_paused { "pause" } else { "resume" };
        return Err(conflict(
            situation.id,
            situation.state,
            what,
            "only a running VMM that is not migrating can be paused or resumed",
        ));
    }
    Ok(true)
}

/// Refuses a reboot or a migration of a VMM whose vCPUs are paused (a stop is fine).
pub(crate) fn refuse_while_paused(
    situation: VmmSituation,
    paused: bool,
    requested: &VmmStateRequested,
) -> Result<(), Error> {
    let refused = match requested {
        VmmStateRequested::Reboot => "reboot",
        VmmStateRequested::MigrateOut { .. } => "migrate",
        VmmStateRequested::Run | VmmStateRequested::Stop => return Ok(()),
    };
    if paused {
        return Err(conflict(
            situation.id,
            situation.state,
            refused,
            "its vCPUs are paused; resume them first",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn situation(state: VmmState) -> VmmSituation {
        VmmSituation {
            id: VmmUuid::new_v4(),
            state,
            is_migration_target: false,
            migrating_out: false,
        }
    }

    fn migrate_out(migration_id: MigrationUuid, target: VmmUuid) -> VmmStateRequested {
        VmmStateRequested::MigrateOut {
            migration_id,
            target_propolis_id: target,
            target_sled_id: SledUuid::new_v4(),
            target_address: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn refused(admission: &Admission) -> bool {
        matches!(admission, Admission::Refused(Error::Conflict { .. }))
    }

    #[test]
    fn run_starts_only_a_vmm_that_never_ran_and_is_no_migration_target() {
        use VmmState::*;
        let run = VmmStateRequested::Run;
        assert_eq!(admit(situation(Creating), &run, None), Admission::Start);
        let target = VmmSituation {
            is_migration_target: true,
            ..situation(Creating)
        };
        assert!(refused(&admit(target, &run, None)));
        for state in [Starting, Running, Rebooting] {
            assert_eq!(admit(situation(state), &run, None), Admission::AlreadyDone);
        }
        for state in [Migrating, Stopping, Stopped, Failed, Destroyed] {
            assert!(refused(&admit(situation(state), &run, None)), "{state}");
        }
    }

    #[test]
    fn stop_ends_a_vmm_that_never_ran_at_once_and_waits_for_a_migration() {
        use VmmState::*;
        let stop = VmmStateRequested::Stop;
        assert_eq!(
            admit(situation(Creating), &stop, None),
            Admission::Stop { never_ran: true }
        );
        for state in [Starting, Running, Rebooting] {
            assert_eq!(
                admit(situation(state), &stop, None),
                Admission::Stop { never_ran: false }
            );
        }
        for state in [Stopping, Stopped] {
            assert_eq!(admit(situation(state), &stop, None), Admission::AlreadyDone);
        }
        assert!(refused(&admit(situation(Migrating), &stop, None)));
    }

    #[test]
    fn reboot_only_a_running_vmm() {
        use VmmState::*;
        let reboot = VmmStateRequested::Reboot;
        assert_eq!(admit(situation(Running), &reboot, None), Admission::Reboot);
        assert_eq!(
            admit(situation(Rebooting), &reboot, None),
            Admission::AlreadyDone
        );
        for state in [Creating, Starting, Migrating, Stopping, Stopped] {
            assert!(refused(&admit(situation(state), &reboot, None)), "{state}");
        }
    }

    #[test]
    fn a_repeated_migrate_out_is_answered_by_what_that_migration_did() {
        let (migration, target) = (MigrationUuid::new_v4(), VmmUuid::new_v4());
        let request = migrate_out(migration, target);
        assert!(matches!(
            admit(situation(VmmState::Running), &request, None),
            Admission::MigrateOut { .. }
        ));
        // The same migration again, whatever the VMM's state now: already under way or done.
        for state in [VmmState::Migrating, VmmState::Running, VmmState::Destroyed] {
            assert_eq!(
                admit(situation(state), &request, Some(target)),
                Admission::AlreadyDone
            );
        }
        // The same migration id with another target: refused, naming the first.
        let other = admit(
            situation(VmmState::Running),
            &migrate_out(migration, VmmUuid::new_v4()),
            Some(target),
        );
        assert!(refused(&other));
        // A new migration while one is under way, or from a VMM that is not running.
        let busy = VmmSituation {
            migrating_out: true,
            ..situation(VmmState::Running)
        };
        assert!(refused(&admit(busy, &request, None)));
        assert!(refused(&admit(
            situation(VmmState::Starting),
            &request,
            None
        )));
    }
}
