//! Instances: what the external API's calls on instances do.

use super::Nexus;
use super::disk::validate_disk_create;
use super::sagas::{
    disk_create, instance_create, instance_delete, instance_migrate, instance_start,
};
use super::sled::sled_agent_error;
use halyard_common::ids::{DiskUuid, GenericUuid, InstanceUuid, ProjectUuid, SledUuid};
use halyard_common::{ByteCount, Error, NameOrId, VmmState};
use halyard_db_model::{Instance, MAX_DISKS_PER_INSTANCE, Vmm};
use halyard_db_queries::{PaginatedBy, validate_instance_shape};
use halyard_nexus_external_api::params::{
    DiskCreate, InstanceCreate, InstanceDiskAttachment, InstanceUpdate,
};
use halyard_sled_agent_api::{VmmPutStateBody, VmmStateRequested};
use slog::info;
use std::sync::Arc;

/// An instance and its active VMM, read together in one statement (see the DataStore).
pub use halyard_db_queries::InstanceAndVmm;

/// The largest instance Nexus accepts: 64 vCPUs and 1 TiB; the smallest memory is 64 MiB.
const MAX_NCPUS: u16 = 64;
const MIN_MEMORY: ByteCount = ByteCount::from_mebibytes_u32(64);
const MAX_MEMORY: ByteCount = ByteCount::from_gibibytes_u32(1024);

impl Nexus {
    /// The interfaces an instance create makes, their VPCs and subnets looked up in the
    /// project (404 naming the missing one) and their ids chosen, before the saga is recorded.
    pub async fn instance_create_interfaces(
        &self,
        project_id: halyard_common::ids::ProjectUuid,
        params: &InstanceCreate,
    ) -> Result<Vec<instance_create::InterfaceToCreate>, Error> {
        let mut interfaces = Vec::new();
        let mut first_vpc = None;
        for nic in params
            .network_interfaces
            .interfaces()
            .map_err(Error::invalid_request)?
        {
            let resolved = nic.ip_config.resolve().map_err(Error::invalid_request)?;
            let vpc = self
                .datastore()
                .vpc_fetch(project_id, &NameOrId::Name(nic.vpc_name.clone()))
                .await?;
            // All in one VPC (as the interface insert checks again): refused before the saga.
            match &first_vpc {
                None => first_vpc = Some(vpc.name().clone()),
                Some(first) if first != vpc.name() => {
                    return Err(Error::invalid_request(format!(
                        "an instance's network interfaces must all be in one VPC: \
                         \"{}\" is in \"{}\", the first in \"{first}\"",
                        nic.name,
                        vpc.name()
                    )));
                }
                Some(_) => {}
            }
            let subnet = self
                .datastore()
                .vpc_subnet_fetch(vpc.id(), &NameOrId::Name(nic.subnet_name.clone()))
                .await?;
            interfaces.push(instance_create::InterfaceToCreate {
                id: halyard_common::ids::NetworkInterfaceUuid::new_v4(),
                name: nic.name,
                description: nic.description,
                subnet_id: subnet.id(),
                ip: resolved.ipv4,
                dual_stack: resolved.dual_stack,
            });
        }
        Ok(interfaces)
    }
}

/// Every rule a request to create an instance must meet, checked once, before anything is
/// read or recorded: no feature Halyard does not support yet (400 naming the fields), a size
/// Nexus accepts, and what the instance's row may hold (`validate_instance_shape`: whole MiB
/// of memory, a description of printable text, a well-formed hostname).
fn validate_instance_create(params: &InstanceCreate) -> Result<(), Error> {
    // The interfaces first: their refusal says exactly what cannot be had.
    params
        .network_interfaces
        .interfaces()
        .map_err(Error::invalid_request)?;
    let unsupported = params.unsupported_fields();
    if !unsupported.is_empty() {
        return Err(Error::invalid_request(format!(
            "Halyard does not support these instance features yet: {}; leave them unset",
            unsupported.join(", ")
        )));
    }
    validate_size(params.ncpus, params.memory)?;
    validate_instance_shape(
        params.ncpus,
        params.memory,
        &params.description,
        &params.hostname,
    )
}

/// The vCPU and memory bounds an instance's size must fall within.
fn validate_size(ncpus: u16, memory: ByteCount) -> Result<(), Error> {
    if ncpus == 0 || ncpus > MAX_NCPUS {
        return Err(Error::invalid_value(
            "ncpus",
            format!("an instance has 1 to {MAX_NCPUS} vCPUs, not {ncpus}"),
        ));
    }
    if memory < MIN_MEMORY || memory > MAX_MEMORY {
        return Err(Error::invalid_value(
            "memory",
            format!("an instance has {MIN_MEMORY} to {MAX_MEMORY} of memory, not {memory}"),
        ));
    }
    Ok(())
}

impl Nexus {
    // Instances

    /// Changes an instance found by a lookup as `update` says (see `InstanceUpdate`).
    pub async fn instance_update_found(
        &self,
        found: InstanceAndVmm,
        update: InstanceUpdate,
    ) -> Result<InstanceAndVmm, Error> {
        let unsupported = update.unsupported_fields();
        if !unsupported.is_empty() {
            return Err(Error::invalid_request(format!(
                "Halyard does not support these instance features yet: {}; leave them unset",
                unsupported.join(", ")
            )));
        }
        validate_size(update.ncpus, update.memory)?;
        let instance = &found.instance;
        if let Some(asked) = &update.boot_disk {
            let current = match instance.boot_disk() {
                Some(id) => Some(self.datastore().disk_fetch(id).await?),
                None => None,
            };
            let same = current.as_ref().is_some_and(|disk| match asked {
                NameOrId::Id(id) => *id == disk.id().into_untyped_uuid(),
                NameOrId::Name(name) => name == disk.name(),
            });
            if !same {
                return Err(Error::invalid_request(
                    "changing an instance's boot disk is not supported yet: send its current \
                     boot disk, or null to leave it as it is",
                ));
            }
        }
        self.datastore()
            .instance_reconfigure(
                instance.id(),
                update.ncpus,
                update.memory,
                update.auto_restart_policy.map(Into::into),
            )
            .await?;
        self.instance_view(instance.id()).await
    }

    /// Finds a live instance and its active VMM (one statement, so the two agree): by id
    /// (then no project may be given), or by name within a project.
    pub async fn instance_lookup(
        &self,
        project: Option<&NameOrId>,
        instance: &NameOrId,
    ) -> Result<InstanceAndVmm, Error> {
        match (instance, project) {
            (NameOrId::Id(id), None) => {
                self.datastore()
                    .instance_fetch_with_vmm(InstanceUuid::from_untyped_uuid(*id))
                    .await
            }
            (NameOrId::Id(_), Some(_)) => Err(Error::invalid_request(
                "when the instance is given by id, do not also give a project",
            )),
            (NameOrId::Name(_), None) => Err(Error::invalid_request(
                "when the instance is given by name, its project must be given too \
                 (?project=<name or id>)",
            )),
            (NameOrId::Name(name), Some(project)) => {
                let project = self.datastore().project_fetch(project).await?;
                self.datastore()
                    .instance_fetch_by_name_with_vmm(project.id(), name)
                    .await
            }
        }
    }

    /// A live instance and its active VMM, read in one statement.
    pub async fn instance_view(&self, id: InstanceUuid) -> Result<InstanceAndVmm, Error> {
        self.datastore().instance_fetch_with_vmm(id).await
    }

    pub async fn instance_list(
        &self,
        project: &NameOrId,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<InstanceAndVmm>, Error> {
        let project = self.datastore().project_fetch(project).await?;
        self.datastore()
            .instance_list_with_vmm(project.id(), page)
            .await
    }

    /// Creates an instance (the instance-create saga), then starts it if asked. The request is
    /// validated in full before the saga is recorded (`validate_instance_create`): a refused
    /// request (`InvalidRequest` for an unsupported feature, `InvalidValue` for a bad size,
    /// hostname or description, e.g. one holding NUL, which the saga log could not even
    /// store) leaves no saga behind.
    pub async fn instance_create(
        self: &Arc<Self>,
        project: &NameOrId,
        params: InstanceCreate,
    ) -> Result<InstanceAndVmm, Error> {
        validate_instance_create(&params)?;
        let project = self.datastore().project_fetch(project).await?;
        // A name already taken is refused before a saga is recorded (the saga's insert still
        // decides between racing creates of one name).
        match self
            .datastore()
            .instance_fetch_by_name(project.id(), &params.name)
            .await
        {
            Ok(_) => {
                return Err(Error::ObjectAlreadyExists {
                    type_name: halyard_common::ResourceType::Instance,
                    name: params.name.to_string(),
                });
            }
            Err(Error::ObjectNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let instance_id = InstanceUuid::new_v4();
        let (disk_ids, disks_to_create) = self
            .instance_create_disks(project.id(), instance_id, &params)
            .await?;
        let interfaces = self
            .instance_create_interfaces(project.id(), &params)
            .await?;
        let start = params.start;
        let result = self
            .run_saga::<instance_create::SagaInstanceCreate>(instance_create::Params {
                instance_id,
                project_id: project.id(),
                create: params,
                disk_ids,
                disks_to_create,
                interfaces,
            })
            .await?;
        // The saga's last step returned the new instance's row: answer (or start) from it.
        let created = match instance_create::created(&result) {
            Some(instance) => InstanceAndVmm {
                instance,
                active_vmm: None,
            },
            None => self.instance_view(instance_id).await?,
        };
        if start {
            self.instance_start_found(created).await
        } else {
            Ok(created)
        }
    }

    /// The disks a create request attaches, in attach order (its boot disk first, then
    /// `disks`): each disk to attach looked up by name in the project (404 if there is none),
    /// each disk to create validated as a disk create is (`validate_disk_create`) and given a
    /// new id and its disk-create parameters (made by `instance_id`). Refused before a saga is
    /// recorded: more than [`MAX_DISKS_PER_INSTANCE`] disks, one disk named twice (400), a
    /// disk to create whose name is taken (409).
    async fn instance_create_disks(
        &self,
        project_id: ProjectUuid,
        instance_id: InstanceUuid,
        params: &InstanceCreate,
    ) -> Result<(Vec<DiskUuid>, Vec<disk_create::Params>), Error> {
        let attachments: Vec<&InstanceDiskAttachment> =
            params.boot_disk.iter().chain(&params.disks).collect();
        if attachments.len() > MAX_DISKS_PER_INSTANCE {
            return Err(Error::invalid_value(
                "disks",
                format!(
                    "an instance has at most {MAX_DISKS_PER_INSTANCE} disks, its boot disk \
                     included; this asks for {}",
                    attachments.len()
                ),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut ids = Vec::with_capacity(attachments.len());
        let mut to_create = Vec::new();
        for attachment in attachments {
            let name = match attachment {
                InstanceDiskAttachment::Attach { name } => name,
                InstanceDiskAttachment::Create { name, .. } => name,
            };
            if !names.insert(name.clone()) {
                return Err(Error::invalid_value(
                    "disks",
                    format!(
                        "disk \"{name}\" is named twice (the boot disk is not also listed in \
                         `disks`)"
                    ),
                ));
            }
            match attachment {
                InstanceDiskAttachment::Attach { name } => {
                    let disk = self
                        .datastore()
                        .disk_fetch_by_name(project_id, name)
                        .await?;
                    ids.push(disk.id());
                }
                InstanceDiskAttachment::Create {
                    name,
                    description,
                    disk_backend,
                    size,
                } => {
                    let create = DiskCreate {
                        name: name.clone(),
                        description: description.clone(),
                        disk_backend: disk_backend.clone(),
                        size: *size,
                    };
                    let block_size = validate_disk_create(&create)?;
                    match self.datastore().disk_fetch_by_name(project_id, name).await {
                        Ok(_) => {
                            return Err(Error::ObjectAlreadyExists {
                                type_name: halyard_common::ResourceType::Disk,
                                name: name.to_string(),
                            });
                        }
                        Err(Error::ObjectNotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    let disk_id = DiskUuid::new_v4();
                    ids.push(disk_id);
                    to_create.push(disk_create::Params {
                        disk_id,
                        project_id,
                        create,
                        block_size,
                        created_by_instance_id: Some(instance_id),
                        source_snapshot_id: None,
                    });
                }
            }
        }
        Ok((ids, to_create))
    }

    /// Starts a stopped instance (the instance-start saga). Starting an instance that already
    /// has a VMM is a no-op that returns it, also when a racing start won.
    pub async fn instance_start(
        self: &Arc<Self>,
        id: InstanceUuid,
    ) -> Result<InstanceAndVmm, Error> {
        let found = self.instance_view(id).await?;
        self.instance_start_found(found).await
    }

    /// [`Nexus::instance_start`] of the instance a lookup has just found (so it is not read
    /// again). The answer comes from what the saga's statements returned (see
    /// `instance_start::started`); the instance is read again only when the saga could not
    /// tell (its VMM was retired meanwhile), or another start won the race.
    pub async fn instance_start_found(
        self: &Arc<Self>,
        found: InstanceAndVmm,
    ) -> Result<InstanceAndVmm, Error> {
        let id = found.instance.id();
        if found.instance.runtime.active_vmm().is_some() {
            return self.instance_view(id).await;
        }
        let started = self
            .run_saga::<instance_start::SagaInstanceStart>(instance_start::Params {
                instance_id: id,
            })
            .await;
        match started {
            Ok(result) => match instance_start::started(&result) {
                Some(view) => Ok(view),
                None => self.instance_view(id).await,
            },
            Err(e) => {
                let now = self.instance_view(id).await?;
                let lost_race = matches!(e, Error::Conflict { .. })
                    && now.instance.runtime.active_vmm().is_some();
                if lost_race { Ok(now) } else { Err(e) }
            }
        }
    }

    /// Asks the sled agent running the instance's VMM to stop it. A stopped instance stays
    /// stopped (no-op). The VMM is retired when its sled agent reports it gone.
    pub async fn instance_stop(&self, id: InstanceUuid) -> Result<InstanceAndVmm, Error> {
        let found = self.instance_view(id).await?;
        self.instance_stop_found(found).await
    }

    /// [`Nexus::instance_stop`] of the instance a lookup has just found.
    pub async fn instance_stop_found(&self, view: InstanceAndVmm) -> Result<InstanceAndVmm, Error> {
        if let Some(migration) = view.instance.runtime.migration() {
            // Stopping mid-migration would leave two half-instances; the sled agents refuse it
            // too. The user retries once the migration has finished (it takes seconds).
            return Err(Error::conflict(format!(
                "instance \"{}\" is migrating (migration {migration}); stop it once the \
                 migration has finished",
                view.instance.name()
            )));
        }
        let Some(vmm) = &view.active_vmm else {
            if view.instance.runtime.active_vmm().is_some() {
                return Err(Error::conflict(
                    "the instance is still starting; stop it once it is running",
                ));
            }
            return Ok(view);
        };
        let stopping = self.request_vmm_state(vmm, VmmStateRequested::Stop).await?;
        self.answer_from(view.instance, stopping).await
    }

    /// Asks the sled agent running the instance's VMM to reboot it.
    pub async fn instance_reboot(&self, id: InstanceUuid) -> Result<InstanceAndVmm, Error> {
        let found = self.instance_view(id).await?;
        self.instance_reboot_found(found).await
    }

    /// [`Nexus::instance_reboot`] of the instance a lookup has just found.
    pub async fn instance_reboot_found(
        &self,
        view: InstanceAndVmm,
    ) -> Result<InstanceAndVmm, Error> {
        match &view.active_vmm {
            Some(vmm) if vmm.state() == VmmState::Running => {
                let rebooting = self
                    .request_vmm_state(vmm, VmmStateRequested::Reboot)
                    .await?;
                self.answer_from(view.instance, rebooting).await
            }
            _ => Err(Error::conflict(format!(
                "instance \"{}\" is {}; only a running instance can reboot",
                view.instance.name(),
                view.run_state()
            ))),
        }
    }

    /// Live-migrates a running instance to another sled (the instance-migrate saga). Returns
    /// once the migration has begun; its outcome arrives in the sled agents' reports.
    pub async fn instance_migrate(
        self: &Arc<Self>,
        id: InstanceUuid,
        destination: Option<SledUuid>,
    ) -> Result<InstanceAndVmm, Error> {
        let found = self.instance_view(id).await?;
        self.instance_migrate_found(found, destination).await
    }

    /// [`Nexus::instance_migrate`] of the instance a lookup has just found.
    pub async fn instance_migrate_found(
        self: &Arc<Self>,
        found: InstanceAndVmm,
        destination: Option<SledUuid>,
    ) -> Result<InstanceAndVmm, Error> {
        let id = found.instance.id();
        // Refused outright (not running, already migrating), the request leaves no saga.
        let source = instance_migrate::migration_source(&found, destination)?;
        if let Some(destination) = destination {
            self.check_migration_destination(source.sled_id(), destination)
                .await?;
        }
        self.run_saga::<instance_migrate::SagaInstanceMigrate>(instance_migrate::Params {
            instance_id: id,
            destination,
        })
        .await?;
        self.instance_view(id).await
    }

    /// A VMM moves only between sleds of one kind (a simulated VMM has no memory to send to
    /// a QEMU, and the other way round): refuse a destination of another kind up front.
    async fn check_migration_destination(
        &self,
        source: SledUuid,
        destination: SledUuid,
    ) -> Result<(), Error> {
        let source_backend = self.datastore().sled_fetch(source).await?.backend.0;
        let destination_backend = self.datastore().sled_fetch(destination).await?.backend.0;
        if source_backend != destination_backend {
            return Err(Error::invalid_value(
                "dst_sled_id",
                format!(
                    "sled {destination} runs {destination_backend} VMMs, but the instance runs \
                     on a {source_backend} sled; a VMM migrates only between sleds of one kind"
                ),
            ));
        }
        Ok(())
    }

    /// Deletes a stopped instance (the instance-delete saga).
    pub async fn instance_delete(self: &Arc<Self>, id: InstanceUuid) -> Result<(), Error> {
        let created_disk_ids = self.datastore().instance_created_disks(id).await?;
        self.run_saga::<instance_delete::SagaInstanceDelete>(instance_delete::Params {
            instance_id: id,
            created_disk_ids,
        })
        .await
        .map(|_| ())
    }

    /// The answer to a request made of the instance's active VMM: the instance as the lookup
    /// found it with its VMM as the sled agent's answer left it, if the VMM is not retired
    /// (then the instance still points at it: retiring a VMM and clearing the pointer are one
    /// transaction); else the instance as it is now, read.
    async fn answer_from(
        &self,
        instance: Instance,
        vmm_after: Option<Vmm>,
    ) -> Result<InstanceAndVmm, Error> {
        match vmm_after {
            Some(vmm) if instance.runtime.active_vmm() == Some(vmm.id()) => Ok(InstanceAndVmm {
                instance,
                active_vmm: Some(vmm),
            }),
            _ => self.instance_view(instance.id()).await,
        }
    }

    /// Asks the VMM's sled agent for a state and applies its answer. Returns the VMM's record
    /// as the answer left it, unless it is retired (`None`: it ended, and is retired).
    async fn request_vmm_state(
        &self,
        vmm: &Vmm,
        requested: VmmStateRequested,
    ) -> Result<Option<Vmm>, Error> {
        let client = self.sled_client(vmm.sled_id()).await?;
        match client
            .vmm_put_state(&vmm.id(), &VmmPutStateBody { state: requested })
            .await
        {
            Ok(state) => self.apply_vmm_report(vmm.id(), state.into_inner()).await,
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => {
                if vmm.state() == VmmState::Creating {
                    // A start saga has recorded the VMM but not registered it yet: nothing to
                    // ask the sled agent about, and nothing lost.
                    return Err(Error::conflict(
                        "the instance is still starting; retry once it is running",
                    ));
                }
                // The sled agent no longer has a VMM it reported on (it restarted): the VMM
                // is gone.
                info!(self.log(), "sled agent lost a VMM; retiring it"; "propolis_id" => %vmm.id());
                self.retire_vmm(vmm.sled_id(), vmm.id(), VmmState::Failed)
                    .await?;
                Ok(None)
            }
            Err(e) => Err(sled_agent_error(e)),
        }
    }
}
