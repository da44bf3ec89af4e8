//! The sled agent's state: the table of its VMMs, and what each API call does to it.

use crate::config::{Config, SimConfig};
use crate::console::SerialConsole;
use crate::metrics::SledMetrics;
use crate::qemu::QemuBackend;
use crate::reporter;
use crate::sim::SimVmm;
use crate::storage::Storage;
use crate::vmm_runtime::{Command, Ended, failed_after_death};
use chrono::Utc;
use futures::future::BoxFuture;
use halyard_common::ids::{GenericUuid, MigrationUuid, SledUuid, VmmUuid};
use halyard_common::internal_api::{SledAgentInfo, SledVmmState, VmmRuntimeState};
use halyard_common::{ByteCount, Error, Labelled, ResourceType, SledBackend};
use halyard_sled_agent_api::{
    Inventory, MigrationInReply, MigrationInStep, SimFault, V2pApplied, VmmRegisterBody,
    VmmStateRequested, VmmSummary, VpcMappings,
};
use slog::{Logger, info, o, warn};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot, watch};

/// One registered VMM: live (it has a task to command) or gone (destroyed or failed, kept so
/// its final state can still be read until Nexus unregisters it).
struct VmmEntry {
    params: VmmRegisterBody,
    state: watch::Receiver<SledVmmState>,
    commands: Option<mpsc::Sender<Command>>,
    /// Its serial console; closed when the VMM is gone, readable until it is unregistered.
    console: Arc<SerialConsole>,
    /// The task that pushes its states to Nexus (it ends once the terminal one is taken).
    reporter: Option<tokio::task::JoinHandle<()>>,
    /// Whether its vCPUs were paused through the API.
    vcpus_paused: bool,
}

/// What runs this sled's VMMs.
pub(crate) enum Backend {
    Sim(SimConfig),
    Qemu(QemuBackend),
}

impl Backend {
    fn kind(&self) -> SledBackend {
        match self {
            Backend::Sim(_) => SledBackend::Sim,
            Backend::Qemu(_) => SledBackend::Qemu,
        }
    }
}

/// How long a sled agent that shuts down waits for Nexus to take its ended VMMs' reports.
const FINAL_REPORTS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct SledAgent {
    id: SledUuid,
    backend: Backend,
    hardware_threads: u32,
    physical_ram: ByteCount,
    /// The regions this sled holds.
    storage: Storage,
    /// Set once the HTTP server is bound.
    address: OnceLock<SocketAddr>,
    vmms: Mutex<BTreeMap<VmmUuid, VmmEntry>>,
    nexus: halyard_nexus_client::Client,
    /// The HTTP client for other sled agents (migrations), with this sled's certificate.
    peer_http: reqwest::Client,
    /// Proves a request came through this sled agent's TLS front (`halyard_tls::front`).
    front_secret: halyard_tls::peer::FrontSecret,
    metrics: SledMetrics,
    /// The VPCs' virtual-to-physical mappings Nexus pushed. A tokio lock: the QEMU backend
    /// programs its switch while holding it, so two sets for one VPC reach the switch in the
    /// order the table took them.
    v2p: tokio::sync::Mutex<crate::v2p::V2pTable>,
    log: Logger,
}

impl SledAgent {
    /// `tls` is this sled's certificate (it presents it to Nexus and to other sled agents);
    /// `front_secret` the secret its TLS front adds to every request it forwards.
    pub(crate) fn new(
        config: &Config,
        backend: Backend,
        storage: Storage,
        tls: &halyard_tls::TlsMaterial,
        front_secret: halyard_tls::peer::FrontSecret,
        log: &Logger,
    ) -> Result<Arc<SledAgent>, halyard_tls::TlsError> {
        let nexus = halyard_nexus_client::Client::new_with_client(
            &format!("https://{}", config.nexus_address),
            tls.http_client(halyard_tls::NEXUS_NAME)?,
        );
        let peer_http = tls.http_client(halyard_tls::SLED_AGENT_NAME)?;
        Ok(Arc::new(SledAgent {
            id: config.sled_id,
            backend,
            hardware_threads: config.hardware_threads,
            physical_ram: config.physical_ram,
            storage,
            address: OnceLock::new(),
            vmms: Mutex::new(BTreeMap::new()),
            nexus,
            peer_http,
            front_secret,
            metrics: SledMetrics::new(),
            v2p: tokio::sync::Mutex::new(crate::v2p::V2pTable::default()),
            log: log.new(o!("sled_id" => config.sled_id.to_string())),
        }))
    }

    /// The caller of a request, as its certificate says (403 for a request that did not come
    /// through the TLS front).
    pub(crate) fn peer(
        &self,
        request: &dropshot::RequestInfo,
    ) -> Result<halyard_tls::peer::Peer, dropshot::HttpError> {
        halyard_tls::peer::Peer::from_request(request, &self.front_secret)
    }

    /// The sled Nexus named as the source of VMM `id`'s inbound migration, if `id` is a
    /// registered migration target.
    pub(crate) fn migration_source_sled(&self, id: VmmUuid) -> Option<SledUuid> {
        self.table()
            .get(&id)
            .and_then(|entry| entry.params.migration_target)
            .map(|target| target.source_sled_id)
    }

    pub(crate) fn set_address(&self, address: SocketAddr) {
        let _ = self.address.set(address);
    }

    pub fn address(&self) -> SocketAddr {
        *self
            .address
            .get()
            .expect("the server binds before anything asks")
    }

    pub(crate) fn nexus(&self) -> &halyard_nexus_client::Client {
        &self.nexus
    }

    pub(crate) fn log(&self) -> &Logger {
        &self.log
    }

    pub(crate) fn metrics(&self) -> &SledMetrics {
        &self.metrics
    }

    /// The metrics as Prometheus text, the VMM gauges read from the table now.
    pub(crate) fn metrics_response(
        &self,
    ) -> Result<http::Response<dropshot::Body>, dropshot::HttpError> {
        {
            let table = self.table();
            let states: Vec<&str> = table
                .values()
                .map(|entry| entry.state.borrow().vmm_state.state.label())
                .collect();
            self.metrics.set_vmms(
                self.backend.kind().label(),
                states,
                self.hardware_threads,
                self.physical_ram.to_i64(),
            );
        }
        halyard_observability::metrics_response(&self.metrics.registry)
    }

    /// What this sled tells Nexus when it registers.
    pub fn registration(&self) -> SledAgentInfo {
        SledAgentInfo {
            address: self.address(),
            backend: self.backend.kind(),
            hardware_threads: self.hardware_threads,
            physical_ram: self.physical_ram,
            usable_storage: self.storage.capacity(),
            underlay_address: match &self.backend {
                Backend::Sim(_) => None,
                Backend::Qemu(qemu) => qemu.switch().underlay_address(),
            },
        }
    }

    /// Takes a VPC's mapping set if it is newer than the one held (see `v2p`). A QEMU sled
    /// then programs its switch with the set it holds, under the table's lock (so sets reach
    /// the switch in the order the table took them); programming is idempotent, so a repeated
    /// or stale set retries what an earlier, failed programming left undone and changes
    /// nothing else. A failure to program is a 503 (the table has taken the set).
    pub async fn v2p_put(&self, set: VpcMappings) -> Result<V2pApplied, Error> {
        let mut table = self.v2p.lock().await;
        let vni = set.vni;
        let answer = table.apply(set);
        if answer.applied {
            info!(self.log, "VPC mappings set"; "vni" => %vni,
                "generation" => %answer.generation,
                "mappings" => table.get(vni).map_or(0, |held| held.mappings.len()));
        }
        if let (Backend::Qemu(qemu), Some(held)) = (&self.backend, table.get(vni)) {
            qemu.switch().program(held).await.map_err(|e| {
                slog::error!(self.log, "cannot program the VPC's mappings into the switch";
                    "vni" => %vni, "generation" => %held.generation, "error" => %e);
                Error::from(e)
            })?;
        }
        Ok(answer)
    }

    /// Every VPC's mapping set this sled holds.
    pub async fn v2p_list(&self) -> Vec<VpcMappings> {
        self.v2p.lock().await.list()
    }

    /// Every VPC's mapping set, read without waiting (for the invariant checker, which may not
    /// await): `None` while a set is being applied.
    pub fn v2p_now(&self) -> Option<Vec<VpcMappings>> {
        self.v2p.try_lock().ok().map(|table| table.list())
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn id(&self) -> SledUuid {
        self.id
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<VmmUuid, VmmEntry>> {
        // A panic while holding the lock leaves the table consistent (every change is one
        // insert or update), so a poisoned lock is still usable.
        self.vmms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn not_found(id: VmmUuid) -> Error {
        Error::not_found_by_id(ResourceType::Vmm, id.into_untyped_uuid())
    }

    /// Registers a VMM (idempotent for the same body; a different body is a conflict).
    pub fn vmm_register(
        self: &Arc<Self>,
        id: VmmUuid,
        params: VmmRegisterBody,
    ) -> Result<SledVmmState, Error> {
        self.validate_register(&params)?;
        let mut table = self.table();
        if let Some(existing) = table.get(&id) {
            if existing.params != params {
                return Err(Error::conflict(format!(
                    "VMM {id} is already registered with different parameters; \
                     unregister it first or use a new VMM id"
                )));
            }
            return Ok(*existing.state.borrow());
        }
        let log = self.log.new(o!("propolis_id" => id.to_string(),
            "instance_id" => params.instance_id.to_string()));
        let (commands, receiver) = mpsc::channel(16);
        let console = SerialConsole::new();
        let (task, publisher): (BoxFuture<'static, Ended>, _) = match &self.backend {
            Backend::Sim(sim) => {
                let (vmm, state) = SimVmm::new(
                    id,
                    *sim,
                    params.hostname.clone(),
                    params.migration_target,
                    Arc::clone(&console),
                    commands.downgrade(),
                    self.peer_http.clone(),
                    log.clone(),
                );
                (Box::pin(vmm.run(receiver)), state)
            }
            Backend::Qemu(qemu) => {
                let (vmm, state) = qemu.launch(
                    id,
                    &params,
                    self.address().ip(),
                    Arc::clone(&console),
                    commands.downgrade(),
                    self.peer_http.clone(),
                    log.clone(),
                )?;
                (Box::pin(vmm.run(receiver)), state)
            }
        };
        let state = publisher.subscribe();
        let initial = *state.borrow();
        let reporter = reporter::spawn(
            id,
            state.clone(),
            self.nexus.clone(),
            self.metrics.reports.clone(),
            log.clone(),
        );
        table.insert(
            id,
            VmmEntry {
                params,
                state,
                commands: Some(commands),
                console: Arc::clone(&console),
                reporter: Some(reporter),
                vcpus_paused: false,
            },
        );
        drop(table);
        info!(log, "VMM registered");
        let task = tokio::spawn(task);
        let agent = Arc::clone(self);
        tokio::spawn(async move {
            let ended = task.await;
            // The VMM is gone: its console's live streams end.
            console.close();
            let ended = match ended {
                Ok(ended) => ended,
                Err(e) => {
                    // The VMM's task panicked: it is gone, and failed. Its QEMU (killed as
                    // the task dropped it) must be gone and its files removed before the
                    // sled agent says so.
                    slog::error!(agent.log, "VMM task died"; "propolis_id" => %id, "error" => %e);
                    if let Backend::Qemu(qemu) = &agent.backend {
                        qemu.clean_up_after_dead_task(id, &agent.log).await;
                    }
                    return agent.vmm_died(id, publisher);
                }
            };
            drop(publisher);
            agent.vmm_gone(id, ended);
        });
        Ok(initial)
    }

    /// The VMM's task has ended: take it out of the live table, and only then publish its
    /// terminal state (so Nexus never hears "destroyed" about a VMM that still exists).
    fn vmm_gone(&self, id: VmmUuid, ended: Ended) {
        if let Some(entry) = self.table().get_mut(&id) {
            entry.commands = None;
        }
        // Copy first: holding a borrow of the channel while sending on it deadlocks.
        let last = *ended.publish.borrow();
        ended.publish.send_replace(SledVmmState {
            vmm_state: VmmRuntimeState {
                state: ended.final_state,
                generation: last.vmm_state.generation.next(),
                time_updated: Utc::now(),
            },
            ..last
        });
    }

    /// The VMM's task died (it panicked) without ending: like [`Self::vmm_gone`], out of
    /// the live table first, then `failed` published on the sled agent's own sender, with
    /// each unfinished migration side failed, so the reporter delivers it and Nexus retires
    /// the VMM.
    fn vmm_died(&self, id: VmmUuid, publisher: watch::Sender<SledVmmState>) {
        if let Some(entry) = self.table().get_mut(&id) {
            entry.commands = None;
        }
        let last = *publisher.borrow();
        if last.vmm_state.state.is_terminal() {
            return; // it published its end before it died
        }
        publisher.send_replace(failed_after_death(last));
    }

    fn commands_of(&self, id: VmmUuid) -> Result<Option<mpsc::Sender<Command>>, Error> {
        let table = self.table();
        let entry = table.get(&id).ok_or_else(|| Self::not_found(id))?;
        Ok(entry.commands.clone())
    }

    pub fn vmm_state(&self, id: VmmUuid) -> Result<SledVmmState, Error> {
        let table = self.table();
        let entry = table.get(&id).ok_or_else(|| Self::not_found(id))?;
        Ok(*entry.state.borrow())
    }

    /// A VMM's serial console (live or gone, until the VMM is unregistered).
    pub(crate) fn vmm_console(&self, id: VmmUuid) -> Result<Arc<SerialConsole>, Error> {
        let table = self.table();
        let entry = table.get(&id).ok_or_else(|| Self::not_found(id))?;
        Ok(Arc::clone(&entry.console))
    }

    /// Sends a command to a live VMM and waits for its answer.
    async fn ask<T>(
        &self,
        id: VmmUuid,
        what: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let gone = || {
            let state = self.vmm_state(id).map(|s| s.vmm_state.state);
            match state {
                Ok(state) => Error::conflict(format!(
                    "cannot {what} VMM {id}: it is {state} and gone; a VMM never runs again, \
                     start the instance on a new VMM"
                )),
                Err(e) => e,
            }
        };
        let Some(commands) = self.commands_of(id)? else {
            return Err(gone());
        };
        let (reply, answer) = oneshot::channel();
        commands.send(make(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    pub async fn vmm_put_state(
        &self,
        id: VmmUuid,
        requested: VmmStateRequested,
    ) -> Result<SledVmmState, Error> {
        if let Ok(state) = self.vmm_state(id) {
            let gone = state.vmm_state.state.is_terminal();
            if gone {
                match requested {
                    // Already as stopped as it gets.
                    VmmStateRequested::Stop => return Ok(state),
                    // A repeat of the migration this VMM ended with (it completed, or the VMM
                    // died during it): answered from what that migration did.
                    VmmStateRequested::MigrateOut { migration_id, .. }
                        if state
                            .migration_out
                            .is_some_and(|out| out.migration_id == migration_id) =>
                    {
                        return Ok(state);
                    }
                    _ => {}
                }
            }
        }
        let what = match requested {
            VmmStateRequested::Run => "run",
            VmmStateRequested::Stop => "stop",
            VmmStateRequested::Reboot => "reboot",
            VmmStateRequested::MigrateOut { .. } => "migrate",
        };
        let state = self
            .ask(id, what, |reply| Command::Request { requested, reply })
            .await?;
        if requested == VmmStateRequested::Stop {
            self.set_vcpus_paused(id, false);
        }
        Ok(state)
    }

    /// Pauses or resumes VMM `id`'s vCPUs; its state does not change.
    pub async fn vmm_put_vcpus(&self, id: VmmUuid, paused: bool) -> Result<(), Error> {
        let what = if paused { "pause" } else { "resume" };
        self.ask(id, what, |reply| Command::Vcpus { paused, reply })
            .await?;
        self.set_vcpus_paused(id, paused);
        Ok(())
    }

    fn set_vcpus_paused(&self, id: VmmUuid, paused: bool) {
        if let Some(entry) = self.table().get_mut(&id) {
            entry.vcpus_paused = paused;
        }
    }

    pub async fn vmm_migration_in(
        &self,
        id: VmmUuid,
        step: MigrationInStep,
    ) -> Result<MigrationInReply, Error> {
        self.ask(id, "migrate into", |reply| Command::MigrationIn {
            step,
            reply,
        })
        .await
    }

    /// Nexus's word that the target of VMM `id`'s outbound migration `migration_id` is gone
    /// for good (its sled was expunged): a source waiting on it (paused, asking for `finish`)
    /// resumes the guest and fails the migration. Answers the VMM's state; a VMM already gone
    /// answers its final state, having nothing left to resume.
    pub async fn vmm_migration_target_gone(
        &self,
        id: VmmUuid,
        migration_id: MigrationUuid,
    ) -> Result<SledVmmState, Error> {
        let state = self.vmm_state(id)?;
        if state.vmm_state.state.is_terminal() {
            return Ok(state);
        }
        let told = self
            .ask(id, "tell the migration's target is gone to", |reply| {
                Command::MigrationTargetGone {
                    migration_id,
                    reply,
                }
            })
            .await;
        match told {
            Ok(state) => Ok(state),
            // It ended meanwhile: its final state says how.
            Err(e) => match self.vmm_state(id) {
                Ok(state) if state.vmm_state.state.is_terminal() => Ok(state),
                _ => Err(e),
            },
        }
    }

    pub async fn vmm_inject_fault(&self, id: VmmUuid, fault: SimFault) -> Result<(), Error> {
        // Every backend takes the test hooks (a lost reply, a panicking task); the other
        // faults are the simulator's.
        let every_backend_takes = matches!(fault, SimFault::LoseNextFinishReply | SimFault::Panic);
        if self.backend.kind() != SledBackend::Sim && !every_backend_takes {
            return Err(Error::invalid_request(
                "faults can only be injected into simulated VMMs",
            ));
        }
        self.ask(id, "inject a fault into", |reply| Command::Fault {
            fault,
            reply,
        })
        .await
    }

    /// Destroys a VMM if it still runs, waits until it is gone, and forgets it.
    pub async fn vmm_unregister(&self, id: VmmUuid) -> Result<(), Error> {
        let (commands, mut state) = {
            let table = self.table();
            let Some(entry) = table.get(&id) else {
                return Ok(());
            };
            (entry.commands.clone(), entry.state.clone())
        };
        if let Some(commands) = commands {
            let _ = commands.send(Command::Kill).await;
            // Gone means the task ended and the terminal state was published.
            let _ = state.wait_for(|s| s.vmm_state.state.is_terminal()).await;
        }
        self.table().remove(&id);
        info!(self.log, "VMM unregistered"; "propolis_id" => %id);
        Ok(())
    }

    /// Ends every QEMU VMM (when the sled agent shuts down), and waits, for a bounded time,
    /// until Nexus has taken each one's last report: Nexus then knows they are gone instead of
    /// finding out when the sled agent next registers, and no report is left to retry
    /// against a Nexus that shuts down next.
    pub(crate) async fn end_qemu_vmms(&self) {
        if !matches!(self.backend, Backend::Qemu(_)) {
            return;
        }
        let ids: Vec<VmmUuid> = self.table().keys().copied().collect();
        let mut reporters = Vec::new();
        for id in ids {
            let reporter = self.table().get_mut(&id).and_then(|e| e.reporter.take());
            reporters.extend(reporter);
            let _ = self.vmm_unregister(id).await;
        }
        let deadline = tokio::time::Instant::now() + FINAL_REPORTS_TIMEOUT;
        for reporter in reporters {
            if tokio::time::timeout_at(deadline, reporter).await.is_err() {
                warn!(self.log, "shutting down before Nexus took every VMM's last report";
                    "waited_ms" => FINAL_REPORTS_TIMEOUT.as_millis());
                return;
            }
        }
    }

    /// Removes a QEMU sled's virtual switch (its network namespace), once its VMMs are gone.
    pub(crate) async fn remove_switch(&self) {
        if let Backend::Qemu(qemu) = &self.backend {
            qemu.switch().shut_down().await;
        }
    }

    /// The live VMMs.
    pub fn vmm_list(&self) -> Vec<VmmSummary> {
        self.table()
            .iter()
            .filter(|(_, entry)| entry.commands.is_some())
            .map(|(id, entry)| VmmSummary {
                propolis_id: *id,
                instance_id: entry.params.instance_id,
                ncpus: entry.params.ncpus,
                memory: entry.params.memory,
                hostname: entry.params.hostname.clone(),
                disks: entry.params.disks.iter().map(|d| d.disk_id).collect(),
                vcpus_paused: entry.vcpus_paused,
                state: *entry.state.borrow(),
            })
            .collect()
    }

    pub async fn inventory(&self) -> Inventory {
        let vmm_count = self
            .table()
            .values()
            .filter(|e| e.commands.is_some())
            .count();
        Inventory {
            sled_id: self.id,
            address: self.address(),
            backend: self.backend.kind(),
            hardware_threads: self.hardware_threads,
            physical_ram: self.physical_ram,
            vmm_count: vmm_count as u64,
            accelerator: match &self.backend {
                Backend::Sim(_) => None,
                Backend::Qemu(qemu) => Some(qemu.accelerator()),
            },
            usable_storage: self.storage.capacity(),
            reserved_storage: self.storage.reserved().await,
        }
    }

    /// The regions this sled holds, read without waiting (for the invariant checker, which
    /// runs at quiet points and may not await): `None` if a region is being made or deleted
    /// right now.
    pub fn regions_now(&self) -> Option<Vec<halyard_sled_agent_api::RegionSummary>> {
        self.storage.list_now()
    }

    /// The region snapshots this sled holds, read without waiting (for the invariant checker):
    /// `None` while the storage table is locked.
    pub fn region_snapshots_now(
        &self,
    ) -> Option<Vec<halyard_sled_agent_api::RegionSnapshotSummary>> {
        self.storage.snapshot_list_now()
    }

    /// The process id of the daemon serving this sled's regions, if it runs one and it is up
    /// (for tests that kill it).
    pub fn storage_daemon_pid(&self) -> Option<u32> {
        self.storage.daemon_status().and_then(|status| status.pid)
    }

    /// How many times the storage daemon was started again after dying.
    pub fn storage_daemon_restarts(&self) -> u64 {
        self.storage
            .daemon_status()
            .map(|status| status.restarts)
            .unwrap_or(0)
    }

    /// Refuses what no VMM of this sled could be, before anything starts.
    fn validate_register(&self, params: &VmmRegisterBody) -> Result<(), Error> {
        if params.ncpus == 0 {
            return Err(Error::invalid_value("ncpus", "a VMM needs at least 1 vCPU"));
        }
        if params.memory.to_bytes() == 0 {
            return Err(Error::invalid_value("memory", "a VMM needs memory"));
        }
        if let Backend::Qemu(_) = self.backend {
            let min = crate::qemu::MIN_GUEST_MEMORY_MIB;
            if params.memory.to_bytes() < min * 1024 * 1024 {
                return Err(Error::invalid_value(
                    "memory",
                    format!("the guest image needs at least {min} MiB to boot"),
                ));
            }
        }
        if u32::from(params.ncpus) > self.hardware_threads {
            return Err(Error::invalid_value(
                "ncpus",
                format!(
                    "{} vCPUs is more than this sled has ({} hardware threads)",
                    params.ncpus, self.hardware_threads
                ),
            ));
        }
        if params.memory.to_bytes() > self.physical_ram.to_bytes() {
            return Err(Error::invalid_value(
                "memory",
                format!(
                    "{} bytes is more than this sled has ({} bytes)",
                    params.memory.to_bytes(),
                    self.physical_ram.to_bytes()
                ),
            ));
        }
        let replicas = match self.backend.kind() {
            SledBackend::Qemu => crate::qemu::disks::Replicas::Served,
            SledBackend::Sim => crate::qemu::disks::Replicas::Simulated,
        };
        crate::qemu::disks::validate(&params.disks, replicas)?;
        crate::qemu::network::validate(&params.nics)?;
        if let Backend::Qemu(qemu) = &self.backend {
            qemu.switch().check_available(&params.nics)?;
        }
        if params.hostname.is_empty() || params.hostname.len() > 253 {
            return Err(Error::invalid_value(
                "hostname",
                "must be 1 to 253 characters long",
            ));
        }
        // It goes onto the guest's kernel command line: letters, digits, '-' and '.' only.
        if !params
            .hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(Error::invalid_value(
                "hostname",
                "may contain only ASCII letters, digits, '-' and '.'",
            ));
        }
        Ok(())
    }
}
