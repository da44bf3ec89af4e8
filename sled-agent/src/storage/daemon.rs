//! One `qemu-storage-daemon` per sled: serves each region's qcow2 file as an NBD export.
//!
//! The region directory holds, per region, `<id>.qcow2` (the data, created with `qemu-img`) and
//! `<id>.json` (its shape, written after the data file, so a region whose creation was cut
//! short has no shape file and is not served). The daemon listens for NBD on a port chosen
//! once and kept in `nbd-port`, so an export's address outlives restarts of the daemon and of
//! the sled agent; it is driven over QMP on `qsd.qmp` (`blockdev-add` + `block-export-add`
//! to serve a region, `block-export-del` + `blockdev-del` to stop).
//!
//! A region's export is `writethrough`: the daemon flushes (qcow2's metadata caches to the
//! file, then the file to disk) before it acknowledges a write. Without it, a write that
//! allocated a cluster was acknowledged while the cluster's L2 entry sat only in the daemon's
//! memory, so a `kill -9` of the daemon lost it on that replica while the other two kept it:
//! the VMM's NBD client resends only what was not acknowledged, and the replica came back
//! stale with nobody knowing. The price, measured with `qemu-img bench` (4 KiB writes, 8 in
//! flight, over loopback NBD): about 2,400 writes/s instead of about 17,000.
//!
//! A region made as a copy (`source`) is filled by `qemu-img convert` from the source export
//! into `<id>.qcow2` before its shape file is written, so a copy cut short is not a region.
//!
//! A region snapshot `snapshots/<region>.<snapshot>.qcow2` (+ `.json`) is made inside the
//! daemon by `blockdev-backup` with `sync: full` from the region's node: the job puts a
//! copy-before-write filter over the region, so every write that arrives (from a VMM over NBD)
//! after the job starts first saves the old data to the snapshot; the snapshot is the region as
//! it was when the job started, even while writes go on. (qcow2 internal snapshots would be
//! instant but live inside the region's file: they could not outlive it, and QEMU cannot serve
//! one while the region's active layer is open.) The snapshot is then served read-only, as
//! export `<region>.<snapshot>`.
//!
//! A supervisor task starts the daemon, serves every region in the table, and waits for the
//! process; when it dies (a crash, a `kill -9`) the supervisor starts it again and serves
//! every region again. The table's lock is held while the daemon's QMP connection is used, so
//! a region is never created or deleted halfway through a restart.

use super::Contents;
use crate::qemu::qmp::Qmp;
use halyard_common::Error;
use halyard_common::ids::{GenericUuid, RegionUuid, SnapshotUuid};
use halyard_sled_agent_api::{NbdExport, RegionShape};
use slog::{Logger, info, warn};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type RegionTable = Arc<tokio::sync::Mutex<Contents>>;

/// The subdirectory of the region directory holding region snapshots.
const SNAPSHOTS: &str = "snapshots";

/// The daemon's pid file in the region directory (how a restarted sled agent finds the
/// daemon an earlier run left).
const PID_FILE: &str = "qsd.pid";

/// How long a starting daemon has to open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon is doing, for the inventory and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DaemonStatus {
    /// The running daemon's process id (none between a death and the restart).
    pub pid: Option<u32>,
    /// How many times it has been started again after dying.
    pub restarts: u64,
}

pub(crate) struct StorageDaemon {
    binary: PathBuf,
    directory: PathBuf,
    nbd: SocketAddr,
    regions: RegionTable,
    /// The QMP connection to the running daemon; `None` while it is down.
    qmp: tokio::sync::Mutex<Option<Qmp>>,
    pid: AtomicU32,
    restarts: AtomicU64,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    log: Logger,
}

impl StorageDaemon {
    /// Starts the daemon serving every region in `regions` (whose files are in `directory`),
    /// and the task that restarts it when it dies.
    pub(crate) async fn start(
        binary: PathBuf,
        directory: PathBuf,
        nbd_ip: IpAddr,
        regions: RegionTable,
        log: &Logger,
    ) -> anyhow::Result<Arc<StorageDaemon>> {
        end_leftover_daemon(&directory, log).await?;
        let port = nbd_port(&directory, nbd_ip).await?;
        let daemon = Arc::new(StorageDaemon {
            binary,
            directory,
            nbd: SocketAddr::new(nbd_ip, port),
            regions,
            qmp: tokio::sync::Mutex::new(None),
            pid: AtomicU32::new(0),
            restarts: AtomicU64::new(0),
            supervisor: Mutex::new(None),
            log: log.clone(),
        });
        // The first start's failure is the caller's (a missing binary, a port in use).
        let child = daemon.launch().await?;
        let supervisor = tokio::spawn(Arc::clone(&daemon).supervise(child));
        *daemon.supervisor.lock().expect("supervisor lock") = Some(supervisor);
        Ok(daemon)
    }

    pub(crate) fn export_of(&self, id: RegionUuid) -> NbdExport {
        NbdExport {
            address: self.nbd,
            name: id.to_string(),
        }
    }

    pub(crate) fn status(&self) -> DaemonStatus {
        let pid = self.pid.load(Ordering::SeqCst);
        DaemonStatus {
            pid: (pid != 0).then_some(pid),
            restarts: self.restarts.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn snapshot_export_of(
        &self,
        region_id: RegionUuid,
        snapshot_id: SnapshotUuid,
    ) -> NbdExport {
        NbdExport {
            address: self.nbd,
            name: snapshot_export_name(region_id, snapshot_id),
        }
    }

    /// Creates region `id`'s file (a copy of `source` if given) and serves it (the caller
    /// holds the table's lock). With the daemon down, the file is made and the restart serves
    /// it.
    pub(crate) async fn create(
        &self,
        id: RegionUuid,
        shape: RegionShape,
        source: Option<&NbdExport>,
    ) -> Result<(), Error> {
        let data = self.directory.join(format!("{id}.qcow2"));
        let made = match source {
            None => create_image(&data, shape).await,
            Some(source) => copy_export(source, &data, shape).await,
        };
        if let Err(e) = made {
            self.remove_files(id).await?;
            return Err(e);
        }
        let shape_json = serde_json::to_vec(&shape).expect("a region shape serializes");
        tokio::fs::write(self.directory.join(format!("{id}.json")), shape_json)
            .await
            .map_err(|e| Error::internal(format!("recording region {id}'s shape: {e}")))?;
        if let Some(qmp) = &*self.qmp.lock().await
            && let Err(e) = serve(qmp, &self.directory, id).await
        {
            // Not created after all: no file is left for a restart to serve.
            let _ = unserve(qmp, id).await;
            self.remove_files(id).await?;
            return Err(e);
        }
        Ok(())
    }

    /// Takes snapshot `snapshot_id` of region `region_id` (`blockdev-backup`, `sync: full`,
    /// into a new qcow2 file) and serves it read-only (the caller holds the table's lock).
    pub(crate) async fn snapshot(
        &self,
        region_id: RegionUuid,
        snapshot_id: SnapshotUuid,
        shape: RegionShape,
    ) -> Result<(), Error> {
        let qmp_guard = self.qmp.lock().await;
        let Some(qmp) = &*qmp_guard else {
            return Err(Error::unavailable(
                "the storage daemon is restarting; take the snapshot again",
            ));
        };
        let directory = self.directory.join(SNAPSHOTS);
        tokio::fs::create_dir_all(&directory)
            .await
            .map_err(|e| Error::internal(format!("creating {}: {e}", directory.display())))?;
        let data = directory.join(format!("{region_id}.{snapshot_id}.qcow2"));
        let shape_file = directory.join(format!("{region_id}.{snapshot_id}.json"));
        let taken = async {
            create_image(&data, shape).await?;
            backup(qmp, region_id, snapshot_id, &data).await?;
            let shape_json = serde_json::to_vec(&shape).expect("a region shape serializes");
            tokio::fs::write(&shape_file, shape_json)
                .await
                .map_err(|e| Error::internal(format!("recording a snapshot's shape: {e}")))?;
            serve_snapshot(qmp, &self.directory, region_id, snapshot_id).await
        }
        .await;
        if let Err(e) = taken {
            let _ = unserve_node(qmp, &snapshot_node_name(region_id, snapshot_id)).await;
            self.remove_snapshot_files(region_id, snapshot_id).await?;
            return Err(e);
        }
        Ok(())
    }

    /// Stops serving a region snapshot and deletes its files (the caller holds the lock).
    pub(crate) async fn snapshot_delete(
        &self,
        region_id: RegionUuid,
        snapshot_id: SnapshotUuid,
    ) -> Result<(), Error> {
        if let Some(qmp) = &*self.qmp.lock().await {
            unserve_node(qmp, &snapshot_node_name(region_id, snapshot_id)).await?;
        }
        self.remove_snapshot_files(region_id, snapshot_id).await
    }

    async fn remove_snapshot_files(
        &self,
        region_id: RegionUuid,
        snapshot_id: SnapshotUuid,
    ) -> Result<(), Error> {
        let directory = self.directory.join(SNAPSHOTS);
        for file in [
            format!("{region_id}.{snapshot_id}.json"),
            format!("{region_id}.{snapshot_id}.qcow2"),
        ] {
            match tokio::fs::remove_file(directory.join(&file)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::internal(format!("removing {file}: {e}"))),
            }
        }
        Ok(())
    }

    /// Stops serving region `id` and deletes its files (the caller holds the table's lock).
    pub(crate) async fn delete(&self, id: RegionUuid) -> Result<(), Error> {
        if let Some(qmp) = &*self.qmp.lock().await {
            unserve(qmp, id).await?;
        }
        self.remove_files(id).await
    }

    async fn remove_files(&self, id: RegionUuid) -> Result<(), Error> {
        for file in [format!("{id}.json"), format!("{id}.qcow2")] {
            match tokio::fs::remove_file(self.directory.join(&file)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::internal(format!("removing {file}: {e}"))),
            }
        }
        Ok(())
    }

    /// Ends the daemon and its supervisor.
    pub(crate) async fn stop(&self) {
        if let Some(supervisor) = self.supervisor.lock().expect("supervisor lock").take() {
            supervisor.abort();
        }
        // The child was spawned with kill_on_drop: aborting the supervisor drops it.
        *self.qmp.lock().await = None;
        self.pid.store(0, Ordering::SeqCst);
    }

    fn qmp_socket(&self) -> PathBuf {
        self.directory.join("qsd.qmp")
    }

    /// Starts a daemon process and serves every region of the table through it.
    async fn launch(&self) -> anyhow::Result<tokio::process::Child> {
        let socket = self.qmp_socket();
        let _ = tokio::fs::remove_file(&socket).await;
        let mut child = tokio::process::Command::new(&self.binary)
            .arg("--chardev")
            .arg(format!(
                "socket,id=qmp,path={},server=on,wait=off",
                socket.display()
            ))
            .args(["--monitor", "chardev=qmp"])
            .arg("--pidfile")
            .arg(self.directory.join(PID_FILE))
            .arg("--nbd-server")
            .arg(format!(
                "addr.type=inet,addr.host={},addr.port={}",
                self.nbd.ip(),
                self.nbd.port()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", self.binary.display()))?;
        let connected = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("{} exited at start ({status})", self.binary.display());
                }
                match tokio::net::UnixStream::connect(&socket).await {
                    Ok(stream) => return Ok(stream),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("qemu-storage-daemon opened no QMP socket in time"))??;
        let (qmp, mut events) = Qmp::negotiate(connected, &self.log).await?;
        // The daemon's events (an export going away, ...) are only logged, but they must be
        // taken: the connection delivers answers only while its events are read.
        let log = self.log.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                slog::debug!(log, "qemu-storage-daemon event"; "event" => ?event);
            }
        });
        let contents = self.regions.lock().await;
        for id in contents.regions.keys() {
            serve(&qmp, &self.directory, *id).await?;
        }
        for (region_id, snapshot_id) in contents.snapshots.keys() {
            serve_snapshot(&qmp, &self.directory, *region_id, *snapshot_id).await?;
        }
        *self.qmp.lock().await = Some(qmp);
        self.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
        info!(self.log, "qemu-storage-daemon serving"; "nbd" => %self.nbd,
            "regions" => contents.regions.len(), "snapshots" => contents.snapshots.len(),
            "pid" => child.id());
        Ok(child)
    }

    /// Waits for the daemon to die, then starts it again, for as long as the sled agent runs.
    async fn supervise(self: Arc<Self>, mut child: tokio::process::Child) {
        loop {
            let status = child.wait().await;
            *self.qmp.lock().await = None;
            self.pid.store(0, Ordering::SeqCst);
            warn!(self.log, "qemu-storage-daemon died; starting it again";
                "status" => ?status);
            let mut retry = Duration::from_millis(50);
            child = loop {
                match self.launch().await {
                    Ok(child) => break child,
                    Err(e) => {
                        warn!(self.log, "cannot start qemu-storage-daemon; retrying";
                            "error" => %e, "retry_in_ms" => retry.as_millis());
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(Duration::from_secs(5));
                    }
                }
            };
            self.restarts.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The block node name and export id of region `id` (QEMU wants them to start with a letter
/// and allows at most 31 characters: the id's first 30 hex digits after an `r`; ids are
/// random, so they do not collide in one sled). The NBD export's name is the whole id.
fn node_name(id: RegionUuid) -> String {
    let hex = id.into_untyped_uuid().simple().to_string();
    format!("r{}", &hex[..30])
}

/// `blockdev-add` of the region's qcow2 file, then `block-export-add` of it over NBD, named by
/// the region's id.
async fn serve(qmp: &Qmp, directory: &Path, id: RegionUuid) -> Result<(), Error> {
    let node = node_name(id);
    let file = directory.join(format!("{id}.qcow2"));
    qmp.call(
        BlockdevAdd(serde_json::json!({
            "driver": "qcow2",
            "node-name": node,
            "file": { "driver": "file", "filename": file },
        })),
        "open a region's file",
    )
    .await?;
    qmp.call(
        BlockExportAdd(serde_json::json!({
            "type": "nbd",
            "id": node,
            "node-name": node,
            "name": id.to_string(),
            "writable": true,
            // Acknowledged means durable: see the module comment.
            "writethrough": true,
        })),
        "serve a region over NBD",
    )
    .await?;
    Ok(())
}

/// Region snapshot `snapshot_id` of `region_id`'s block node name and export id: an `s`,
/// then 15 hex digits of each id.
fn snapshot_node_name(region_id: RegionUuid, snapshot_id: SnapshotUuid) -> String {
    let region = region_id.into_untyped_uuid().simple().to_string();
    let snapshot = snapshot_id.into_untyped_uuid().simple().to_string();
    format!("s{}{}", &region[..15], &snapshot[..15])
}

/// A region snapshot's NBD export name.
fn snapshot_export_name(region_id: RegionUuid, snapshot_id: SnapshotUuid) -> String {
    format!("{region_id}.{snapshot_id}")
}

/// Serves a region snapshot's file read-only over NBD.
async fn serve_snapshot(
    qmp: &Qmp,
    directory: &Path,
    region_id: RegionUuid,
    snapshot_id: SnapshotUuid,
) -> Result<(), Error> {
    let node = snapshot_node_name(region_id, snapshot_id);
    let file = directory
        .join(SNAPSHOTS)
        .join(format!("{region_id}.{snapshot_id}.qcow2"));
    qmp.call(
        BlockdevAdd(serde_json::json!({
            "driver": "qcow2",
            "node-name": node,
            "read-only": true,
            "file": { "driver": "file", "filename": file, "read-only": true },
        })),
        "open a region snapshot's file",
    )
    .await?;
    qmp.call(
        BlockExportAdd(serde_json::json!({
            "type": "nbd",
            "id": node,
            "node-name": node,
            "name": snapshot_export_name(region_id, snapshot_id),
            "writable": false,
        })),
        "serve a region snapshot over NBD",
    )
    .await?;
    Ok(())
}

/// Copies region `region_id` as it is now into the (new, empty) qcow2 file `data`: opens
/// `data` as a node, runs `blockdev-backup` (`sync: full`) from the region's node into it and
/// waits for the job to end, then closes `data` again.
async fn backup(
    qmp: &Qmp,
    region_id: RegionUuid,
    snapshot_id: SnapshotUuid,
    data: &Path,
) -> Result<(), Error> {
    let target = format!("t{}", &snapshot_node_name(region_id, snapshot_id)[1..]);
    qmp.call(
        BlockdevAdd(serde_json::json!({
            "driver": "qcow2",
            "node-name": target,
            "file": { "driver": "file", "filename": data },
        })),
        "open a new snapshot's file",
    )
    .await?;
    let job = format!("j{}", &target[1..]);
    let copied = async {
        qmp.call(
            BlockdevBackup(serde_json::json!({
                "job-id": job,
                "device": node_name(region_id),
                "target": target,
                "sync": "full",
                "auto-dismiss": false,
            })),
            "copy a region into a snapshot",
        )
        .await?;
        // The point in time is fixed once the job has started; wait for the copy to end.
        loop {
            let jobs = qmp
                .call(qapi::qmp::query_jobs {}, "follow a snapshot's copy")
                .await?;
            let Some(info) = jobs.into_iter().find(|j| j.id == job) else {
                return Err(Error::internal(format!("snapshot copy job {job} vanished")));
            };
            if info.status == qapi::qmp::JobStatus::concluded {
                let _ = qmp
                    .call(
                        qapi::qmp::job_dismiss { id: job.clone() },
                        "dismiss a copy job",
                    )
                    .await;
                return match info.error {
                    None => Ok(()),
                    Some(e) => Err(Error::internal(format!("copying region {region_id}: {e}"))),
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    unserve_node(qmp, &target).await?;
    copied
}

/// Stops serving region `id`: its export (its clients are cut off), then its node.
async fn unserve(qmp: &Qmp, id: RegionUuid) -> Result<(), Error> {
    unserve_node(qmp, &node_name(id)).await
}

/// Removes the export named after a node (if any), then the node.
async fn unserve_node(qmp: &Qmp, node: &str) -> Result<(), Error> {
    let export = qapi::qmp::block_export_del {
        id: node.to_string(),
        mode: Some(qapi::qmp::BlockExportRemoveMode::hard),
    };
    if let Err(e) = qmp.call(export, "stop serving a region").await
        && !e.to_string().contains("not found")
    {
        return Err(e);
    }
    // The export lets go of the node once its connections are closed; that may take a moment.
    let mut last = None;
    for _ in 0..50 {
        let del = qapi::qmp::blockdev_del {
            node_name: node.to_string(),
        };
        match qmp.call(del, "close a region's file").await {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("not find") => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.expect("at least one try"))
}

/// A QMP command whose arguments are given as JSON: the typed forms of `blockdev-add` and
/// `block-export-add` are deep unions, and these two calls only need a few fields.
macro_rules! json_qmp_command {
    ($name:ident, $command:literal) => {
        #[derive(serde::Serialize)]
        #[serde(transparent)]
        struct $name(serde_json::Value);

        impl qapi::Command for $name {
            type Ok = qapi::Empty;
            const NAME: &'static str = $command;
            const ALLOW_OOB: bool = false;
        }

        impl qapi::qmp::QmpCommand for $name {}
    };
}

json_qmp_command!(BlockdevAdd, "blockdev-add");
json_qmp_command!(BlockExportAdd, "block-export-add");
json_qmp_command!(BlockdevBackup, "blockdev-backup");

/// Creates an empty qcow2 file of the shape's size.
async fn create_image(data: &Path, shape: RegionShape) -> Result<(), Error> {
    run_qemu_img(
        tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(data)
            .arg(shape.size.to_bytes().to_string()),
        "create a region's file",
    )
    .await
    .map(|_| ())
}

/// The `nbd://` URL QEMU opens an NBD export with (`SocketAddr` puts an IPv6 address in
/// brackets, as URLs want).
fn nbd_url(export: &NbdExport) -> String {
    format!("nbd://{}/{}", export.address, export.name)
}

/// Makes the qcow2 file `data` a copy of NBD export `source`, which must be the shape's size.
async fn copy_export(source: &NbdExport, data: &Path, shape: RegionShape) -> Result<(), Error> {
    let source_name = nbd_url(source);
    let info = run_qemu_img(
        tokio::process::Command::new("qemu-img")
            .args(["info", "--output=json", "-f", "raw"])
            .arg(&source_name),
        "read the size of the copy's source",
    )
    .await?;
    let size = serde_json::from_slice::<serde_json::Value>(&info)
        .ok()
        .and_then(|info| info["virtual-size"].as_u64())
        .ok_or_else(|| Error::internal("qemu-img info gave no size for the source"))?;
    if size != shape.size.to_bytes() {
        return Err(Error::invalid_request(format!(
            "the source nbd://{}/{} holds {size} bytes, not the region's {}",
            source.address, source.name, shape.size
        )));
    }
    run_qemu_img(
        tokio::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&source_name)
            .arg(data),
        "copy a region from its source",
    )
    .await
    .map(|_| ())
}

/// Runs qemu-img; its standard output, or its error as ours.
async fn run_qemu_img(command: &mut tokio::process::Command, what: &str) -> Result<Vec<u8>, Error> {
    let output = command
        .output()
        .await
        .map_err(|e| Error::internal(format!("running qemu-img: {e}")))?;
    if !output.status.success() {
        return Err(Error::unavailable(format!(
            "qemu-img could not {what}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// The regions and region snapshots whose files are in `directory` (created if missing):
/// those with a shape file.
pub(crate) async fn contents_of(directory: &Path) -> anyhow::Result<Contents> {
    tokio::fs::create_dir_all(directory.join(SNAPSHOTS))
        .await
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", directory.display()))?;
    let mut contents = Contents::default();
    for (name, shape) in shape_files(directory).await? {
        if let Ok(id) = name.parse::<RegionUuid>() {
            contents.regions.insert(id, shape);
        }
    }
    for (name, shape) in shape_files(&directory.join(SNAPSHOTS)).await? {
        let Some((region, snapshot)) = name.split_once('.') else {
            continue;
        };
        if let (Ok(region), Ok(snapshot)) = (region.parse(), snapshot.parse()) {
            contents.snapshots.insert((region, snapshot), shape);
        }
    }
    Ok(contents)
}

/// The `<name>.json` shape files in `directory`, by name.
async fn shape_files(directory: &Path) -> anyhow::Result<Vec<(String, RegionShape)>> {
    let mut found = Vec::new();
    let mut entries = tokio::fs::read_dir(directory).await?;
    while let Some(entry) = entries.next_entry().await? {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let Ok(text) = tokio::fs::read(entry.path()).await else {
            continue;
        };
        if let Ok(shape) = serde_json::from_slice(&text) {
            found.push((name.to_string(), shape));
        }
    }
    Ok(found)
}

/// The NBD port kept in `directory/nbd-port`, or a free one chosen now and kept there.
async fn nbd_port(directory: &Path, ip: IpAddr) -> anyhow::Result<u16> {
    let file = directory.join("nbd-port");
    if let Ok(text) = tokio::fs::read_to_string(&file).await
        && let Ok(port) = text.trim().parse::<u16>()
    {
        return Ok(port);
    }
    let port = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?
        .local_addr()?
        .port();
    tokio::fs::write(&file, port.to_string()).await?;
    Ok(port)
}

/// Ends the daemon an earlier run of this sled agent left serving `directory` (a sled agent
/// killed with -9 cannot end it), so the new one can take the NBD port and the files. The pid
/// file's process is killed only if it really is a storage daemon of this directory (a pid may
/// have been reused).
async fn end_leftover_daemon(directory: &Path, log: &Logger) -> anyhow::Result<()> {
    let Ok(text) = tokio::fs::read_to_string(directory.join(PID_FILE)).await else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    let socket = directory.join("qsd.qmp");
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&*socket.to_string_lossy()))
        .unwrap_or(false);
    if !ours {
        return Ok(());
    }
    info!(log, "ending the storage daemon an earlier run left"; "pid" => pid);
    // SAFETY: kill(2) with a pid read above and a valid signal number.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for _ in 0..500 {
        if !process_runs(pid) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("the storage daemon an earlier run left (pid {pid}) did not exit")
}

/// Whether process `pid` exists and has not exited (a zombie, exited but not yet reaped by its
/// parent, holds no port or file any more).
fn process_runs(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
