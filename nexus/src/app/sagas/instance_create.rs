//! instance-create: records a new instance, stopped, with its disks made and attached.
//!
//! ```text
//!   create_record ──► [create_disk_params_N ──► created_disk_N (disk-create subsaga)]... ──►
//!   attach_disks ──► create_interfaces ──► mark_stopped
//! ```
//!
//! - `create_record` inserts the instance in `nexus_state` `creating` (idempotent by instance
//!   id), naming its boot disk. Undo: marks it destroyed, which frees its name (and detaches
//!   any disk still naming it, in the same transaction).
//! - `created_disk_N`, one per disk the request creates (`Params::disks_to_create`, its
//!   parameters in the constant node `create_disk_params_N` before it): the disk-create saga
//!   as a subsaga (`disk_create.rs`: record, three regions placed, made on their sled agents,
//!   detached), the disk marked as made by this instance (`created_by_instance_id`, so the
//!   instance's delete deletes it). Undo: the subsaga's own undos (regions deleted and
//!   released, the disk destroyed): a failed create leaves no disk it made.
//!   **The window before `attach_disks`:** the subsaga leaves its disk `detached`, where a
//!   user could see it. Had someone attached it elsewhere (or deleted it) then, the create
//!   would fail and the subsaga's undo could not put the disk back to `creating` to destroy
//!   it: a stuck saga. So while this instance is `creating`, the database refuses to attach a
//!   disk it made to any other instance (`disk_attach_begin`) or to delete it
//!   (`disk_destroy_unless_held`, disk-delete's first step): both `Conflict`, checked against
//!   `created_by_instance_id` and the instance's state, which never returns to `creating`
//!   (so the check needs no lock). Only this saga touches the disk until it is attached here,
//!   and every undo finds it where its action left it. (The alternative, the subsaga's last
//!   step going `creating` → `attached` directly, would give disk-create a second ending
//!   and make its undo depend on the outer saga; this keeps the subsaga the saga it is.)
//! - `attach_disks` attaches the disks the request names (`Params::disk_ids`: the boot disk
//!   first, then `disks`, each `detached` → `attaching` → `attached`, in slots 0, 1, ...):
//!   `DataStore::disk_attach_begin` with `InstanceForDisks::Creating`, which only this saga
//!   uses (the API attaches to stopped instances only), so while the instance is `creating` no
//!   one else attaches to it. `Conflict` if a disk is not detached (or was deleted: not
//!   found); the action then detaches what it attached before failing. Repeats find the disks
//!   attached. Undo: detaches every disk naming the instance.
//! - `interfaces` makes the interfaces the request asks for (`Params::interfaces`: a
//!   `default_*` attachment makes `net0` in the project's `default` VPC and subnet), each
//!   with its MAC and private address allocated as it is inserted
//!   (`DataStore::network_interface_create` with `InstanceForNics::Creating`; a full subnet is
//!   `Conflict`); the action deletes what it made before failing. Repeats find each by its id.
//!   Undo: deletes every interface of the instance (their addresses free again).
//! - `mark_stopped` moves it to `no_vmm` (stopped), generation-guarded; a repeat finds it
//!   already stopped. Last node: nothing after it can fail, so its undo is a no-op. Outputs
//!   the instance's row as the transition returned it ([`created`]), which Nexus answers
//!   with (or starts from), without reading it again.
//!
//! The saga's parameters hold the request as the user sent it (`params::InstanceCreate`,
//! validated by Nexus before the saga was recorded). Its `start` is Nexus's business: with
//! `start: true` Nexus runs instance-start after this saga finishes.

use super::{
    ActionRegistry, NexusActionContext, NexusSaga, action_failed, declare_action, disk_create,
};
use halyard_common::Error;
use halyard_common::Name;
use halyard_common::ids::{
    DiskUuid, InstanceUuid, NetworkInterfaceUuid, ProjectUuid, VpcSubnetUuid,
};
use halyard_db_model::{Instance, NewInstanceParams};
use halyard_db_queries::{DiskTransition, InstanceForDisks, InstanceForNics, NewNetworkInterface};
use halyard_nexus_external_api::params::InstanceCreate;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use steno::ActionError;

// The saga's own actions; the DAG (with a disk-create subsaga per disk to make) is written
// by hand below, since how many subsagas it has depends on the request.
declare_action!(
    CREATE_RECORD,
    "instance_create.create_record",
    create_record,
    undo_create_record
);
declare_action!(
    ATTACH_DISKS,
    "instance_create.attach_disks",
    attach_disks,
    undo_attach_disks
);
declare_action!(
    CREATE_INTERFACES,
    "instance_create.create_interfaces",
    create_interfaces,
    undo_create_interfaces
);
declare_action!(MARK_STOPPED, "instance_create.mark_stopped", mark_stopped);

pub struct SagaInstanceCreate;

impl NexusSaga for SagaInstanceCreate {
    const NAME: &'static str = "instance-create";
    type Params = Params;

    fn register_actions(registry: &mut ActionRegistry) {
        for action in [
            &CREATE_RECORD,
            &ATTACH_DISKS,
            &CREATE_INTERFACES,
            &MARK_STOPPED,
        ] {
            registry.register((**action).clone());
        }
    }

    fn make_dag(params: &Params, builder: &mut steno::DagBuilder) {
        builder.append(steno::Node::action(
            "instance",
            "CreateRecord",
            CREATE_RECORD.as_ref(),
        ));
        for (i, disk) in params.disks_to_create.iter().enumerate() {
            let params_node = format!("create_disk_params_{i}");
            let mut subsaga =
                steno::DagBuilder::new(steno::SagaName::new(disk_create::SagaDiskCreate::NAME));
            disk_create::SagaDiskCreate::make_dag(disk, &mut subsaga);
            let subsaga = subsaga
                .build()
                .expect("disk-create's DAG is a chain of its declared nodes");
            builder.append(steno::Node::constant(
                &params_node,
                serde_json::to_value(disk).expect("disk-create parameters serialize"),
            ));
            builder.append(steno::Node::subsaga(
                format!("created_disk_{i}"),
                subsaga,
                &params_node,
            ));
        }
        builder.append(steno::Node::action(
            "disks",
            "AttachDisks",
            ATTACH_DISKS.as_ref(),
        ));
        builder.append(steno::Node::action(
            "interfaces",
            "CreateInterfaces",
            CREATE_INTERFACES.as_ref(),
        ));
        builder.append(steno::Node::action(
            "stopped",
            "MarkStopped",
            MARK_STOPPED.as_ref(),
        ));
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub instance_id: InstanceUuid,
    pub project_id: ProjectUuid,
    /// What the user asked for.
    pub create: InstanceCreate,
    /// The disks to attach, in order (the request's boot disk first, then its `disks`),
    /// looked up (or, for those it creates, given new ids) by Nexus before the saga was
    /// recorded. (Empty for a saga logged before.)
    #[serde(default)]
    pub disk_ids: Vec<DiskUuid>,
    /// The disks it creates first, each by a disk-create subsaga (their ids are in
    /// `disk_ids`).
    #[serde(default)]
    pub disks_to_create: Vec<disk_create::Params>,
    /// The interfaces to make, in order (the first is the primary), their subnets looked up
    /// and ids chosen by Nexus before the saga was recorded. (Empty for a saga logged
    /// before.)
    #[serde(default)]
    pub interfaces: Vec<InterfaceToCreate>,
}

/// One network interface instance-create makes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceToCreate {
    pub id: NetworkInterfaceUuid,
    pub name: Name,
    pub description: String,
    pub subnet_id: VpcSubnetUuid,
    /// The address asked for; `None`: any free one.
    pub ip: Option<Ipv4Addr>,
    pub dual_stack: bool,
}

async fn create_record(ctx: &NexusActionContext) -> Result<InstanceUuid, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    let created = datastore
        .instance_insert(NewInstanceParams {
            id: params.instance_id,
            project_id: params.project_id,
            name: params.create.name,
            description: params.create.description,
            ncpus: params.create.ncpus,
            memory: params.create.memory,
            hostname: params.create.hostname,
            boot_disk_id: params
                .create
                .boot_disk
                .is_some()
                .then(|| params.disk_ids.first().copied())
                .flatten(),
            auto_restart_policy: params.create.auto_restart_policy.map(Into::into),
        })
        .await
        .map_err(action_failed)?;
    Ok(created.id())
}

async fn undo_create_record(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    match datastore.instance_mark_destroyed(params.instance_id).await {
        Ok(_) => Ok(()),
        Err(e) if e.error_code() == "ObjectNotFound" => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn attach_disks(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    let instance_id = params.instance_id;
    for &disk_id in &params.disk_ids {
        let attached = async {
            datastore
                .disk_attach_begin(instance_id, disk_id, InstanceForDisks::Creating)
                .await?;
            match datastore.disk_attach_finish(instance_id, disk_id).await? {
                DiskTransition::Applied(_) | DiskTransition::AlreadyDone(_) => Ok(()),
                DiskTransition::Conflict(disk) => Err(Error::conflict(format!(
                    "disk \"{}\" stopped attaching meanwhile (it is {})",
                    disk.name(),
                    disk.state()
                ))),
            }
        }
        .await;
        if let Err(e) = attached {
            // A failed action's undo does not run: give back what this one attached.
            datastore
                .instance_detach_all_disks(instance_id)
                .await
                .map_err(action_failed)?;
            return Err(action_failed(e));
        }
    }
    Ok(())
}

async fn undo_attach_disks(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .instance_detach_all_disks(params.instance_id)
        .await?;
    Ok(())
}

async fn create_interfaces(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    let instance_id = params.instance_id;
    for nic in &params.interfaces {
        let made = async {
            let subnet = datastore.vpc_subnet_fetch_by_id(nic.subnet_id).await?;
            datastore
                .network_interface_create(
                    NewNetworkInterface {
                        id: nic.id,
                        instance_id,
                        name: nic.name.clone(),
                        description: nic.description.clone(),
                        subnet,
                        ip: nic.ip,
                        dual_stack: nic.dual_stack,
                    },
                    InstanceForNics::Creating,
                )
                .await
        }
        .await;
        if let Err(e) = made {
            // A failed action's undo does not run: give back what this one made.
            datastore
                .instance_network_interfaces_delete(instance_id)
                .await
                .map_err(action_failed)?;
            return Err(action_failed(e));
        }
    }
    Ok(())
}

async fn undo_create_interfaces(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .instance_network_interfaces_delete(params.instance_id)
        .await?;
    Ok(())
}

/// The instance the finished saga `result` created, as its last step left it (`None` for a
/// saga logged before that step output it: then the caller reads the instance).
pub fn created(result: &steno::SagaResultOk) -> Option<Instance> {
    result
        .lookup_node_output::<Option<Instance>>("stopped")
        .ok()
        .flatten()
}

async fn mark_stopped(ctx: &NexusActionContext) -> Result<Option<Instance>, ActionError> {
    let id = ctx.lookup::<InstanceUuid>("instance")?;
    // `AlreadyDone` is a repeat; there is no conflict (every other state comes later).
    let (_, instance) = ctx
        .user_data()
        .nexus
        .datastore()
        .instance_mark_stopped(id)
        .await
        .map_err(action_failed)?;
    Ok(Some(instance))
}
