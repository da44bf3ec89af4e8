//! The state machines of instances, VMMs and migrations.
//!
//! An instance is what the user asked for; a VMM is one incarnation of it on one sled. Nexus
//! alone decides [`InstanceNexusState`]; sled agents report [`VmmState`] and the two sides of a
//! [`MigrationState`]; what the user sees, [`InstanceState`], is derived from both.

use crate::labelled_enum;

labelled_enum! {
    /// The state of an instance as the API shows it (Oxide's `run_state`).
    pub enum InstanceState {
        Creating => "creating",
        Starting => "starting",
        Running => "running",
        Stopping => "stopping",
        Stopped => "stopped",
        Rebooting => "rebooting",
        Migrating => "migrating",
        Repairing => "repairing",
        Failed => "failed",
        Destroyed => "destroyed",
    }
}

labelled_enum! {
    /// The part of an instance's state that Nexus alone decides.
    pub enum InstanceNexusState {
        /// The create saga has inserted the record but not finished.
        Creating => "creating",
        /// No VMM incarnates the instance: it is stopped and holds no resources.
        NoVmm => "no_vmm",
        /// `active_propolis_id` names the VMM whose state is the instance's state.
        Vmm => "vmm",
        /// The instance's last VMM failed; it needs to be started again.
        Failed => "failed",
        /// The instance has been deleted.
        Destroyed => "destroyed",
    }
}

labelled_enum! {
    /// Whether the control plane restarts an instance on its own after it failed (Oxide's
    /// `InstanceAutoRestartPolicy`). An instance with none set gets the default, best effort.
    pub enum AutoRestartPolicy {
        /// Never: a failed instance stays failed until someone starts it.
        Never => "never",
        /// A failed instance is started again (elsewhere if its sled is gone), at most once per
        /// cooldown.
        BestEffort => "best_effort",
    }
}

labelled_enum! {
    /// The state of one VMM, as its sled agent reports it (plus `SagaUnwound`, which only Nexus
    /// writes when a start or migrate saga gives the VMM up).
    pub enum VmmState {
        Creating => "creating",
        Starting => "starting",
        Running => "running",
        Stopping => "stopping",
        Stopped => "stopped",
        Rebooting => "rebooting",
        Migrating => "migrating",
        Failed => "failed",
        Destroyed => "destroyed",
        SagaUnwound => "saga_unwound",
    }
}

labelled_enum! {
    /// The state of one side (source or target) of a live migration.
    pub enum MigrationState {
        Pending => "pending",
        InProgress => "in_progress",
        Completed => "completed",
        Failed => "failed",
    }
}

labelled_enum! {
    /// The state of a disk (Oxide's disk states).
    pub enum DiskState {
        /// The create saga has inserted the record and is placing its regions.
        Creating => "creating",
        /// Ready, attached to no instance.
        Detached => "detached",
        /// An attach saga is attaching it to `attach_instance_id`.
        Attaching => "attaching",
        /// Attached to `attach_instance_id`; its VMMs use it.
        Attached => "attached",
        /// A detach saga is detaching it from `attach_instance_id`.
        Detaching => "detaching",
        /// Its data can no longer be served (fewer than two healthy regions).
        Faulted => "faulted",
        /// Deleted.
        Destroyed => "destroyed",
    }
}

labelled_enum! {
    /// The state of a snapshot (Oxide's snapshot states).
    pub enum SnapshotState {
        /// The create saga has inserted the record and is snapshotting the disk's regions.
        Creating => "creating",
        /// Every region of the disk has its region snapshot: disks can be made from it.
        Ready => "ready",
        /// Its data can no longer be served.
        Faulted => "faulted",
        /// Deleted.
        Destroyed => "destroyed",
    }
}

labelled_enum! {
    /// What runs a sled's VMMs.
    pub enum SledBackend {
        /// In-memory simulated VMMs, for tests and scale.
        Sim => "sim",
        /// A real QEMU process per VMM.
        Qemu => "qemu",
    }
}

impl VmmState {
    /// A terminal VMM never runs again and holds no sled reservation.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            VmmState::Destroyed | VmmState::Failed | VmmState::SagaUnwound
        )
    }
}

impl MigrationState {
    pub fn is_terminal(self) -> bool {
        matches!(self, MigrationState::Completed | MigrationState::Failed)
    }
}

impl InstanceState {
    /// What the user sees, given Nexus's own state and the state of the active VMM (if any).
    pub fn derive(nexus_state: InstanceNexusState, active_vmm: Option<VmmState>) -> InstanceState {
        match (nexus_state, active_vmm) {
            (InstanceNexusState::Creating, _) => InstanceState::Creating,
            (InstanceNexusState::Destroyed, _) => InstanceState::Destroyed,
            (InstanceNexusState::Failed, _) => InstanceState::Failed,
            (InstanceNexusState::NoVmm, _) | (InstanceNexusState::Vmm, None) => {
                InstanceState::Stopped
            }
            (InstanceNexusState::Vmm, Some(vmm)) => match vmm {
                VmmState::Creating | VmmState::Starting => InstanceState::Starting,
                VmmState::Running => InstanceState::Running,
                VmmState::Stopping => InstanceState::Stopping,
                // The VMM has stopped but Nexus has not yet retired it: still on its way down.
                VmmState::Stopped => InstanceState::Stopping,
                VmmState::Rebooting => InstanceState::Rebooting,
                VmmState::Migrating => InstanceState::Migrating,
                VmmState::Failed => InstanceState::Failed,
                // Gone, but Nexus has not retired it yet (its resources are still held): the
                // instance is stopped only once that is done.
                VmmState::Destroyed | VmmState::SagaUnwound => InstanceState::Stopping,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Labelled;

    #[test]
    fn labels_round_trip_through_serde_and_from_str() {
        fn check<T>()
        where
            T: Labelled
                + std::fmt::Debug
                + PartialEq
                + serde::Serialize
                + serde::de::DeserializeOwned,
        {
            for value in T::ALL {
                let json = serde_json::to_string(value).unwrap();
                assert_eq!(json, format!("\"{}\"", value.label()));
                assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), value);
                assert_eq!(&T::from_label(value.label()).unwrap(), value);
            }
            assert!(T::from_label("no-such-state").is_err());
        }
        check::<InstanceState>();
        check::<InstanceNexusState>();
        check::<VmmState>();
        check::<MigrationState>();
    }

    #[test]
    fn derived_state_follows_the_active_vmm() {
        use InstanceNexusState as N;
        assert_eq!(
            InstanceState::derive(N::NoVmm, None),
            InstanceState::Stopped
        );
        assert_eq!(
            InstanceState::derive(N::Creating, None),
            InstanceState::Creating
        );
        assert_eq!(
            InstanceState::derive(N::Vmm, Some(VmmState::Starting)),
            InstanceState::Starting
        );
        assert_eq!(
            InstanceState::derive(N::Vmm, Some(VmmState::Migrating)),
            InstanceState::Migrating
        );
        assert_eq!(
            InstanceState::derive(N::Failed, None),
            InstanceState::Failed
        );
        assert!(VmmState::SagaUnwound.is_terminal() && !VmmState::Stopped.is_terminal());
    }
}
