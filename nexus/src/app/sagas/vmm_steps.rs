//! The steps every saga that brings up a new VMM shares (instance-start for a first VMM,
//! instance-migrate for a target): reserve room on a sled, record the VMM, register it with
//! its sled agent, and each one's undo. Each is idempotent, as saga actions must be.

use super::action_failed;
use crate::app::Nexus;
use crate::app::sled::sled_agent_error;
use halyard_common::ids::{InstanceUuid, SledUuid, VmmUuid};
use halyard_common::{ByteCount, Error, VmmState};
use halyard_db_model::{Instance, SledResources, Vmm};
use halyard_db_queries::{AttachedDisk, SledChoice};
use halyard_sled_agent_api::{MigrationTarget, NbdExport, VmmDisk, VmmNic, VmmRegisterBody};
use serde::{Deserialize, Serialize};
use steno::ActionError;

/// What a new VMM of an instance is made of: its size and hostname. The start saga takes
/// it from its claim (which returns the instance), so it reads the instance no more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct VmmShape {
    ncpus: u16,
    memory: ByteCount,
    hostname: String,
}

impl VmmShape {
    pub(super) fn of(instance: &Instance) -> VmmShape {
        VmmShape {
            ncpus: u16::try_from(instance.ncpus).unwrap_or(u16::MAX),
            memory: instance.memory.0,
            hostname: instance.hostname.clone(),
        }
    }

    /// The instance's shape, read from the database.
    pub(super) async fn read(
        nexus: &Nexus,
        instance_id: InstanceUuid,
    ) -> Result<VmmShape, ActionError> {
        let instance = nexus
            .datastore()
            .instance_fetch(instance_id)
            .await
            .map_err(action_failed)?;
        Ok(VmmShape::of(&instance))
    }

    fn resources(&self) -> SledResources {
        SledResources {
            hardware_threads: u32::from(self.ncpus),
            physical_ram: self.memory,
        }
    }
}

/// Reserves the instance's threads and memory for VMM `vmm_id` on a sled `choice` allows;
/// returns the sled.
pub(super) async fn reserve(
    nexus: &Nexus,
    instance_id: InstanceUuid,
    vmm_id: VmmUuid,
    shape: &VmmShape,
    choice: SledChoice,
) -> Result<SledUuid, ActionError> {
    let reservation = nexus
        .datastore()
        .sled_reserve(vmm_id, instance_id, choice, shape.resources())
        .await
        .map_err(action_failed)?;
    Ok(reservation.sled_id())
}

pub(super) async fn unreserve(nexus: &Nexus, vmm_id: VmmUuid) -> Result<(), anyhow::Error> {
    nexus.datastore().sled_reservation_release(vmm_id).await?;
    Ok(())
}

/// Records the VMM (state `creating`) at its sled agent's address: the sled agent serves its
/// VMMs, so that is where Nexus reaches it. Refuses a sled expunged meanwhile.
pub(super) async fn create_record(
    nexus: &Nexus,
    instance_id: InstanceUuid,
    vmm_id: VmmUuid,
    sled_id: SledUuid,
) -> Result<(), ActionError> {
    let datastore = nexus.datastore();
    let sled = datastore.sled_fetch(sled_id).await.map_err(action_failed)?;
    if sled.is_expunged() {
        // Expunged after this saga reserved room there: give up the sled (the undo releases
        // the reservation); a new start places the instance elsewhere.
        return Err(action_failed(Error::conflict(format!(
            "sled {sled_id} was expunged while the VMM was being placed there; retry"
        ))));
    }
    let vmm = Vmm::new(vmm_id, instance_id, sled_id, sled.address());
    datastore.vmm_insert(vmm).await.map_err(action_failed)?;
    Ok(())
}

/// Retires the VMM as `saga_unwound` (which also releases its reservation and clears any
/// instance pointer to it); a VMM never recorded is fine.
pub(super) async fn retire_record(nexus: &Nexus, vmm_id: VmmUuid) -> Result<(), anyhow::Error> {
    match nexus
        .datastore()
        .vmm_retire(vmm_id, VmmState::SagaUnwound)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.error_code() == "ObjectNotFound" => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Registers the VMM with its sled agent (as a migration target, if given), unless it was
/// retired meanwhile.
pub(super) async fn register(
    nexus: &Nexus,
    instance_id: InstanceUuid,
    vmm_id: VmmUuid,
    sled_id: SledUuid,
    shape: &VmmShape,
    migration_target: Option<MigrationTarget>,
) -> Result<(), ActionError> {
    // The instance has this VMM (claimed, or as a migration's target), so its disks cannot
    // change until the VMM ends (see `db-queries/src/datastore/disk_attach.rs`): a repeat of
    // this step sends the same body.
    let disks = nexus
        .datastore()
        .instance_attached_disks(instance_id)
        .await
        .map_err(action_failed)?
        .into_iter()
        .map(vmm_disk)
        .collect();
    // Likewise its interfaces: they are added and removed only while it has no VMM.
    let nics = nexus
        .datastore()
        .instance_network_interfaces(instance_id)
        .await
        .map_err(action_failed)?
        .into_iter()
        .map(vmm_nic)
        .collect();
    let body = VmmRegisterBody {
        instance_id,
        ncpus: shape.ncpus,
        memory: shape.memory,
        hostname: shape.hostname.clone(),
        migration_target,
        disks,
        nics,
    };
    nexus
        .ensure_vmm_not_retired(vmm_id)
        .await
        .map_err(action_failed)?;
    let client = nexus.sled_client(sled_id).await.map_err(action_failed)?;
    client
        .vmm_register(&vmm_id, &body)
        .await
        .map_err(|e| action_failed(sled_agent_error(e)))?;
    Ok(())
}

/// A network interface as its VMM gets it (with its subnet's block and its VPC's VNI).
pub fn vmm_nic(
    (nic, subnet, vpc): (
        halyard_db_model::NetworkInterface,
        halyard_db_model::VpcSubnet,
        halyard_db_model::Vpc,
    ),
) -> VmmNic {
    VmmNic {
        nic_id: nic.id(),
        name: nic.name().to_string(),
        mac: nic.mac(),
        ip: nic.ip(),
        subnet: subnet.ipv4_block(),
        vni: vpc.vni(),
        primary: nic.is_primary,
        slot: u8::try_from(nic.slot).expect("the slot column's CHECK"),
    }
}

/// An attached disk as its VMM gets it: its replicas' NBD exports, those whose sled agent has
/// recorded where it serves them (a simulated sled's regions have none).
fn vmm_disk(attached: AttachedDisk) -> VmmDisk {
    let AttachedDisk { disk, regions } = attached;
    VmmDisk {
        disk_id: disk.id(),
        name: disk.name().to_string(),
        size: disk.size(),
        block_size: disk.block_size(),
        replicas: regions
            .iter()
            .filter_map(|region| {
                let address = region.export_address.as_deref()?.parse().ok()?;
                Some(NbdExport {
                    address,
                    name: region.id().to_string(),
                })
            })
            .collect(),
    }
}

pub(super) async fn unregister(
    nexus: &Nexus,
    vmm_id: VmmUuid,
    sled_id: SledUuid,
) -> Result<(), anyhow::Error> {
    nexus.unregister_vmm(sled_id, vmm_id).await?;
    Ok(())
}
