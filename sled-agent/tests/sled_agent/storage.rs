//! Regions: simulated ones on a sim sled, and real ones (qcow2 files served over NBD by a
//! `qemu-storage-daemon` the sled agent supervises) on a QEMU sled: data written through the
//! export survives the daemon's death (`kill -9`) and a restart of the sled agent. Regions
//! made as copies of another sled's export, and region snapshots: point-in-time, read-only,
//! served like regions, counted in the sled's storage, and kept through restarts.

use crate::qemu::{qemu_config, state_dir};
use crate::recording_nexus::RecordingNexus;
use crate::{Role, log, sled_client, sled_config};
use halyard_common::ids::{RegionUuid, SnapshotUuid, VmmUuid};
use halyard_common::{BlockSize, ByteCount};
use halyard_sled_agent::{Config, Server, SimConfig, StorageConfig};
use halyard_sled_agent_api::{
    NbdExport, RegionEnsureBody, RegionSnapshotSummary, RegionSummary, VmmStateRequested, VmmVcpus,
};
use halyard_sled_agent_client::Client;
use std::path::Path;
use std::time::Duration;

pub fn shape(mib: u32) -> RegionEnsureBody {
    RegionEnsureBody {
        size: ByteCount::from_mebibytes_u32(mib),
        block_size: BlockSize::try_from(512u32).unwrap(),
        source: None,
    }
}

pub fn with_storage(mut config: Config, mib: u32) -> Config {
    config.storage = StorageConfig {
        capacity: ByteCount::from_mebibytes_u32(mib),
        ..Default::default()
    };
    config
}

async fn ensure(client: &Client, id: RegionUuid, mib: u32) -> RegionSummary {
    client
        .region_ensure(&id, &shape(mib))
        .await
        .unwrap()
        .into_inner()
}

/// The status of a refused call.
async fn refused(
    call: impl Future<Output = Result<impl Sized, halyard_sled_agent_client::Error<impl Sized>>>,
) -> u16 {
    match call.await {
        Ok(_) => panic!("the call was accepted"),
        Err(e) => e.status().expect("an HTTP answer").as_u16(),
    }
}

#[tokio::test]
async fn a_sim_sled_keeps_regions_within_its_storage() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let config = with_storage(sled_config(nexus.address(), SimConfig::default()), 100);
    let sled = Server::start(&config, &log()).await.unwrap();
    let client = sled_client(sled.local_addr(), Role::Nexus);

    let a = RegionUuid::new_v4();
    let created = ensure(&client, a, 60).await;
    assert_eq!(created.size, ByteCount::from_mebibytes_u32(60));
    assert_eq!(
        created.export, None,
        "a simulated region has no data to serve"
    );
    // The same request again is a no-op; another shape for the id is refused.
    assert_eq!(ensure(&client, a, 60).await, created);
    assert_eq!(refused(client.region_ensure(&a, &shape(50))).await, 409);
    // 40 MiB left: a 50 MiB region does not fit.
    let b = RegionUuid::new_v4();
    let status = refused(client.region_ensure(&b, &shape(50))).await;
    assert_eq!(status, 507, "too little storage left");
    let inventory = client.inventory().await.unwrap().into_inner();
    assert_eq!(inventory.usable_storage, ByteCount::from_mebibytes_u32(100));
    assert_eq!(
        inventory.reserved_storage,
        ByteCount::from_mebibytes_u32(60)
    );
    // Only Nexus creates regions; an operator may list them.
    let operator = sled_client(sled.local_addr(), Role::Operator);
    assert_eq!(refused(operator.region_ensure(&b, &shape(10))).await, 403);
    assert_eq!(
        operator.region_list().await.unwrap().into_inner(),
        vec![created]
    );

    client.region_delete(&a).await.unwrap();
    client.region_delete(&a).await.unwrap();
    assert!(client.region_list().await.unwrap().into_inner().is_empty());
    ensure(&client, b, 50).await;
    sled.close().await.unwrap();
}

/// A raw request as Nexus (so malformed paths and bodies can be sent); its status.
async fn raw_status(sled: &Server, method: reqwest::Method, path: &str, body: &str) -> u16 {
    crate::http_as(Role::Nexus, halyard_tls::SLED_AGENT_NAME)
        .request(method, format!("https://{}{path}", sled.local_addr()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn copy_of(mib: u32, source: &NbdExport) -> RegionEnsureBody {
    RegionEnsureBody {
        source: Some(source.clone()),
        ..shape(mib)
    }
}

#[tokio::test]
async fn a_sim_sled_copies_and_snapshots_regions_and_pauses_vmms() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let config = with_storage(sled_config(nexus.address(), crate::visible_delays()), 100);
    let sled = Server::start(&config, &log()).await.unwrap();
    nexus.watch_sled(sled.local_addr());
    let client = sled_client(sled.local_addr(), Role::Nexus);

    // A region made as a copy: simulated, so nothing is copied, but the shape is kept and
    // a repeat answers the same region whatever its source says.
    let source = NbdExport {
        address: "127.0.0.1:10809".parse().unwrap(),
        name: RegionUuid::new_v4().to_string(),
    };
    let copy = RegionUuid::new_v4();
    let made = client
        .region_ensure(&copy, &copy_of(20, &source))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.size, ByteCount::from_mebibytes_u32(20));
    assert_eq!(ensure(&client, copy, 20).await, made);

    // Snapshots: idempotent, listed, counted in the sled's storage.
    let region = RegionUuid::new_v4();
    ensure(&client, region, 30).await;
    let first = SnapshotUuid::new_v4();
    let taken = client
        .region_snapshot_ensure(&region, &first)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        taken,
        RegionSnapshotSummary {
            region_id: region,
            snapshot_id: first,
            size: ByteCount::from_mebibytes_u32(30),
            block_size: shape(30).block_size,
            export: None,
        }
    );
    let again = client
        .region_snapshot_ensure(&region, &first)
        .await
        .unwrap();
    assert_eq!(again.into_inner(), taken);
    assert_eq!(
        client.region_snapshot_list().await.unwrap().into_inner(),
        vec![taken.clone()]
    );
    let reserved = |client: Client| async move {
        let inventory = client.inventory().await.unwrap().into_inner();
        inventory.reserved_storage.to_bytes() / (1 << 20)
    };
    assert_eq!(reserved(client.clone()).await, 20 + 30 + 30);
    // 20 MiB left: another snapshot of the 30 MiB region does not fit.
    let second = SnapshotUuid::new_v4();
    let status = refused(client.region_snapshot_ensure(&region, &second)).await;
    assert_eq!(status, 507);
    // An unknown region has no snapshot to take.
    let unknown = RegionUuid::new_v4();
    assert_eq!(
        refused(client.region_snapshot_ensure(&unknown, &second)).await,
        404
    );
    // Only Nexus takes snapshots; an operator may list them.
    let operator = sled_client(sled.local_addr(), Role::Operator);
    assert_eq!(
        refused(operator.region_snapshot_ensure(&region, &second)).await,
        403
    );
    assert_eq!(
        operator.region_snapshot_list().await.unwrap().into_inner(),
        vec![taken.clone()]
    );

    // Bad input: 400, and nothing made.
    let block = shape(1).block_size.to_bytes();
    for body in [
        serde_json::json!({ "size": 0, "block_size": block }),
        serde_json::json!({ "size": 1000, "block_size": block }),
        serde_json::json!({ "size": 1 << 20, "block_size": 1000 }),
        serde_json::json!({ "size": 1 << 20, "block_size": block, "source": "nbd://x/y" }),
        serde_json::json!({ "size": 1 << 20, "block_size": block,
            "source": { "address": "not an address", "name": "r" } }),
    ] {
        let path = format!("/regions/{}", RegionUuid::new_v4());
        let status = raw_status(&sled, reqwest::Method::PUT, &path, &body.to_string()).await;
        assert_eq!(status, 400, "{body}");
    }
    for path in [
        format!("/regions/{region}/snapshots/not-a-uuid"),
        format!("/regions/not-a-uuid/snapshots/{first}"),
    ] {
        assert_eq!(
            raw_status(&sled, reqwest::Method::PUT, &path, "").await,
            400,
            "{path}"
        );
    }
    assert_eq!(client.region_list().await.unwrap().into_inner().len(), 2);
    assert_eq!(
        client
            .region_snapshot_list()
            .await
            .unwrap()
            .into_inner()
            .len(),
        1
    );

    // A snapshot outlives its region; deleting it is idempotent and frees its storage.
    client.region_delete(&region).await.unwrap();
    assert_eq!(
        client.region_snapshot_list().await.unwrap().into_inner(),
        vec![taken]
    );
    assert_eq!(reserved(client.clone()).await, 20 + 30);
    client
        .region_snapshot_delete(&region, &first)
        .await
        .unwrap();
    client
        .region_snapshot_delete(&region, &first)
        .await
        .unwrap();
    assert!(
        client
            .region_snapshot_list()
            .await
            .unwrap()
            .into_inner()
            .is_empty()
    );
    assert_eq!(reserved(client.clone()).await, 20);

    // Pausing a VMM's vCPUs: only a running one, idempotent, its state stays running, and
    // while paused it cannot reboot; it can still stop.
    let vmm = VmmUuid::new_v4();
    client
        .vmm_register(&vmm, &crate::register_body())
        .await
        .unwrap();
    let pause = VmmVcpus { paused: true };
    let resume = VmmVcpus { paused: false };
    assert_eq!(refused(client.vmm_put_vcpus(&vmm, &pause)).await, 409);
    let run = halyard_sled_agent_api::VmmPutStateBody {
        state: VmmStateRequested::Run,
    };
    client.vmm_put_state(&vmm, &run).await.unwrap();
    crate::wait_for_state(&client, vmm, halyard_common::VmmState::Running).await;
    for _ in 0..2 {
        let answer = client.vmm_put_vcpus(&vmm, &pause).await.unwrap();
        assert_eq!(answer.into_inner(), pause);
    }
    let listed = client.vmm_list().await.unwrap().into_inner();
    assert!(listed[0].vcpus_paused);
    assert_eq!(
        listed[0].state.vmm_state.state,
        halyard_common::VmmState::Running
    );
    let reboot = halyard_sled_agent_api::VmmPutStateBody {
        state: VmmStateRequested::Reboot,
    };
    assert_eq!(refused(client.vmm_put_state(&vmm, &reboot)).await, 409);
    assert_eq!(
        refused(operator.vmm_put_vcpus(&vmm, &resume)).await,
        403,
        "only Nexus pauses and resumes"
    );
    let path = format!("/vmms/{vmm}/vcpus");
    assert_eq!(
        raw_status(&sled, reqwest::Method::PUT, &path, r#"{"paused":"yes"}"#).await,
        400
    );
    for _ in 0..2 {
        client.vmm_put_vcpus(&vmm, &resume).await.unwrap();
    }
    assert!(!client.vmm_list().await.unwrap().into_inner()[0].vcpus_paused);
    client.vmm_put_state(&vmm, &reboot).await.unwrap();
    crate::wait_for_state(&client, vmm, halyard_common::VmmState::Running).await;
    // Paused, then stopped: the stop goes through.
    client.vmm_put_vcpus(&vmm, &pause).await.unwrap();
    let stop = halyard_sled_agent_api::VmmPutStateBody {
        state: VmmStateRequested::Stop,
    };
    client.vmm_put_state(&vmm, &stop).await.unwrap();
    crate::wait_for_state(&client, vmm, halyard_common::VmmState::Destroyed).await;
    sled.close().await.unwrap();
}

/// Runs `qemu-io` on an NBD export; its output, or the error.
pub async fn qemu_io(export: &RegionSummary, command: &str) -> Result<String, String> {
    qemu_io_on(
        export
            .export
            .as_ref()
            .expect("a QEMU sled's region is served"),
        command,
    )
    .await
}

/// Runs `qemu-io` on an NBD export (opened read-only for a read, so a read-only export can be
/// read); its output, or the error.
pub async fn qemu_io_on(export: &NbdExport, command: &str) -> Result<String, String> {
    let url = format!("nbd://{}/{}", export.address, export.name);
    let read_only: &[&str] = if command.starts_with("read ") {
        &["-r"]
    } else {
        &[]
    };
    let output = tokio::process::Command::new("qemu-io")
        .args(read_only)
        .args(["-f", "raw", &url, "-c", command])
        .output()
        .await
        .expect("qemu-io runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    // qemu-io exits 0 even when a pattern check fails: read its words.
    if output.status.success() && !text.contains("Pattern verification failed") {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Starts `qemu-io` on the region's export with `command` (a write), without flushes (cache
/// mode `unsafe`), and returns once the write is acknowledged, with the client still
/// connected: the write is in the daemon's hands and nothing asked for it to be made durable.
/// (A client that disconnects makes the daemon drain and flush.) Dropping the child ends it.
async fn unflushed_write(region: &RegionSummary, command: &str) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let export = region.export.as_ref().expect("served");
    // `stdbuf`: qemu-io's output to a pipe is otherwise held until it exits.
    let mut child = tokio::process::Command::new("stdbuf")
        .args(["-oL", "qemu-io", "-t", "unsafe", "-f", "raw"])
        .arg(format!("nbd://{}/{}", export.address, export.name))
        .args(["-c", command, "-c", "sleep 600000"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-io runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("wrote ") {
            return child;
        }
    }
    panic!("qemu-io ended without acknowledging {command}");
}

pub async fn wait_for_restart(sled: &Server, restarts: u64) {
    for _ in 0..1000 {
        if sled.agent().storage_daemon_restarts() > restarts
            && sled.agent().storage_daemon_pid().is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the storage daemon was not started again");
}

fn region_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qcow2"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_qemu_sleds_regions_keep_their_data_through_daemon_and_agent_restarts() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let regions_dir = dir.join("regions");
    let mut config = with_storage(qemu_config(nexus.address(), &dir).await, 256);
    config.storage.directory = Some(regions_dir.clone());
    let sled = Server::start(&config, &log()).await.unwrap();
    let client = sled_client(sled.local_addr(), Role::Nexus);

    let id = RegionUuid::new_v4();
    let region = ensure(&client, id, 64).await;
    assert_eq!(region_files(&regions_dir), vec![format!("{id}.qcow2")]);
    qemu_io(&region, "write -P 0xa5 0 1M").await.unwrap();
    qemu_io(&region, "write -P 0x5a 63M 1M").await.unwrap();
    qemu_io(&region, "read -P 0xa5 0 1M").await.unwrap();
    // The check can fail: the wrong pattern is noticed.
    assert!(qemu_io(&region, "read -P 0x00 0 1M").await.is_err());

    // A client still connected, whose last write was acknowledged but never flushed (as a
    // VMM's writes are between the guest's flushes), into a cluster not yet allocated.
    let holder = unflushed_write(&region, "write -P 0x3c 32M 64k").await;

    // kill -9 the daemon: the sled agent starts it again, serving the same data at the same
    // address, acknowledged writes included.
    let pid = sled.agent().storage_daemon_pid().expect("the daemon runs");
    let restarts = sled.agent().storage_daemon_restarts();
    // SAFETY: kill(2) of the daemon's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_for_restart(&sled, restarts).await;
    assert_ne!(sled.agent().storage_daemon_pid(), Some(pid));
    assert_eq!(ensure(&client, id, 64).await, region);
    qemu_io(&region, "read -P 0xa5 0 1M").await.unwrap();
    qemu_io(&region, "read -P 0x5a 63M 1M").await.unwrap();
    drop(holder);
    qemu_io(&region, "read -P 0x3c 32M 64k")
        .await
        .expect("an acknowledged write outlives the daemon");

    // A new sled agent on the same directory finds the region and its data.
    sled.close().await.unwrap();
    assert!(
        qemu_io(&region, "read -P 0xa5 0 1M").await.is_err(),
        "served after close"
    );
    let sled = Server::start(&config, &log()).await.unwrap();
    let client = sled_client(sled.local_addr(), Role::Nexus);
    assert_eq!(
        client.region_list().await.unwrap().into_inner(),
        vec![region.clone()]
    );
    qemu_io(&region, "read -P 0x5a 63M 1M").await.unwrap();

    // Deleted: no longer served, the file gone, the storage free again.
    client.region_delete(&id).await.unwrap();
    assert!(
        qemu_io(&region, "read -P 0xa5 0 1M").await.is_err(),
        "served after delete"
    );
    assert!(region_files(&regions_dir).is_empty());
    let inventory = client.inventory().await.unwrap().into_inner();
    assert_eq!(inventory.reserved_storage.to_bytes(), 0);
    sled.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_storage_daemon_an_earlier_sled_agent_left_is_ended_at_start() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let regions_dir = dir.join("regions");
    std::fs::create_dir_all(&regions_dir).unwrap();
    // What a sled agent killed with -9 leaves: its daemon, still serving on the kept port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(regions_dir.join("nbd-port"), port.to_string()).unwrap();
    let mut leftover = std::process::Command::new("qemu-storage-daemon")
        .arg("--chardev")
        .arg(format!(
            "socket,id=qmp,path={},server=on,wait=off",
            regions_dir.join("qsd.qmp").display()
        ))
        .args(["--monitor", "chardev=qmp", "--pidfile"])
        .arg(regions_dir.join("qsd.pid"))
        .arg("--nbd-server")
        .arg(format!(
            "addr.type=inet,addr.host=127.0.0.1,addr.port={port}"
        ))
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if regions_dir.join("qsd.pid").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut config = with_storage(qemu_config(nexus.address(), &dir).await, 64);
    config.storage.directory = Some(regions_dir.clone());
    let sled = Server::start(&config, &log()).await.unwrap();
    let status = leftover.wait().unwrap();
    assert!(
        !status.success(),
        "the leftover daemon was not killed: {status}"
    );
    let client = sled_client(sled.local_addr(), Role::Nexus);
    let region = ensure(&client, RegionUuid::new_v4(), 8).await;
    assert_eq!(region.export.as_ref().unwrap().address.port(), port);
    qemu_io(&region, "write -P 0x11 0 64k").await.unwrap();
    qemu_io(&region, "read -P 0x11 0 64k").await.unwrap();
    sled.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fails the test unless the two exports hold the same bytes.
pub async fn compare_exports(a: &NbdExport, b: &NbdExport) {
    let url = |e: &NbdExport| format!("nbd://{}/{}", e.address, e.name);
    let output = tokio::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &url(a), &url(b)])
        .output()
        .await
        .expect("qemu-img runs");
    assert!(
        output.status.success(),
        "{} and {} differ: {}{}",
        url(a),
        url(b),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn snapshot_files(regions_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(regions_dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_qemu_sled_copies_regions_from_nbd_and_keeps_point_in_time_snapshots() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let mut sleds = Vec::new();
    for name in ["one", "two"] {
        let mut config = with_storage(qemu_config(nexus.address(), &dir).await, 256);
        config.storage.directory = Some(dir.join(name));
        let sled = Server::start(&config, &log()).await.unwrap();
        let client = sled_client(sled.local_addr(), Role::Nexus);
        sleds.push((sled, client, config));
    }
    let (one, two) = (&sleds[0].1, &sleds[1].1);

    // A replica with data at both ends, copied over NBD to a region on the other sled.
    let original_id = RegionUuid::new_v4();
    let original = ensure(one, original_id, 16).await;
    let original_export = original.export.clone().unwrap();
    qemu_io(&original, "write -P 0xa5 0 1M").await.unwrap();
    qemu_io(&original, "write -P 0x3c 15M 1M").await.unwrap();
    let copy_id = RegionUuid::new_v4();
    let copy = two
        .region_ensure(&copy_id, &copy_of(16, &original_export))
        .await
        .unwrap()
        .into_inner();
    compare_exports(&original_export, copy.export.as_ref().unwrap()).await;
    qemu_io(&copy, "read -P 0x3c 15M 1M").await.unwrap();
    // The copy is a region of its own: a write to it leaves the original as it was.
    qemu_io(&copy, "write -P 0x77 0 4k").await.unwrap();
    qemu_io(&original, "read -P 0xa5 0 4k").await.unwrap();
    // Ensuring it again answers at once, without copying again.
    let again = two
        .region_ensure(&copy_id, &copy_of(16, &original_export))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, copy);
    qemu_io(&copy, "read -P 0x77 0 4k").await.unwrap();

    // A source of another size, or one that does not answer: refused, nothing left behind,
    // and a retry with a good source makes the region.
    let failed_id = RegionUuid::new_v4();
    assert_eq!(
        refused(two.region_ensure(&failed_id, &copy_of(8, &original_export))).await,
        400
    );
    let nobody = NbdExport {
        address: std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(),
        name: "nothing".into(),
    };
    assert_eq!(
        refused(two.region_ensure(&failed_id, &copy_of(16, &nobody))).await,
        503
    );
    let two_dir = dir.join("two");
    assert_eq!(region_files(&two_dir), vec![format!("{copy_id}.qcow2")]);
    assert_eq!(
        two.region_list().await.unwrap().into_inner(),
        vec![copy.clone()]
    );
    let retried = two
        .region_ensure(&failed_id, &copy_of(16, &original_export))
        .await
        .unwrap()
        .into_inner();
    qemu_io(&retried, "read -P 0xa5 0 1M").await.unwrap();
    two.region_delete(&failed_id).await.unwrap();

    // A snapshot is the region as it was: later writes to the region do not reach it, and it
    // cannot be written.
    let snapshot_id = SnapshotUuid::new_v4();
    let snapshot = one
        .region_snapshot_ensure(&original_id, &snapshot_id)
        .await
        .unwrap()
        .into_inner();
    let snapshot_export = snapshot.export.clone().expect("a QEMU sled serves it");
    assert_ne!(snapshot_export.name, original_export.name);
    qemu_io(&original, "write -P 0x5a 0 1M").await.unwrap();
    qemu_io_on(&snapshot_export, "read -P 0xa5 0 1M")
        .await
        .unwrap();
    qemu_io_on(&snapshot_export, "read -P 0x3c 15M 1M")
        .await
        .unwrap();
    assert!(
        qemu_io_on(&snapshot_export, "read -P 0xa5 0 1M")
            .await
            .is_ok()
            && qemu_io(&original, "read -P 0xa5 0 1M").await.is_err(),
        "the region moved on, the snapshot did not"
    );
    assert!(
        qemu_io_on(&snapshot_export, "write -P 0x11 0 4k")
            .await
            .is_err(),
        "a snapshot is read-only"
    );
    let inventory = one.inventory().await.unwrap().into_inner();
    assert_eq!(inventory.reserved_storage.to_bytes(), 32 << 20);
    assert_eq!(
        one.region_snapshot_ensure(&original_id, &snapshot_id)
            .await
            .unwrap()
            .into_inner(),
        snapshot
    );

    // A disk made from the snapshot: a region copied from its export.
    let from_snapshot = two
        .region_ensure(&RegionUuid::new_v4(), &copy_of(16, &snapshot_export))
        .await
        .unwrap()
        .into_inner();
    compare_exports(&snapshot_export, from_snapshot.export.as_ref().unwrap()).await;

    // kill -9 the daemon: the restarted one serves the snapshot again, read-only.
    let (sled, _, config) = &sleds[0];
    let pid = sled.agent().storage_daemon_pid().unwrap();
    let restarts = sled.agent().storage_daemon_restarts();
    // SAFETY: kill(2) of the daemon's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_for_restart(sled, restarts).await;
    qemu_io_on(&snapshot_export, "read -P 0xa5 0 1M")
        .await
        .unwrap();
    assert!(qemu_io_on(&snapshot_export, "write 0 4k").await.is_err());
    qemu_io(&original, "read -P 0x5a 0 1M").await.unwrap();

    // A new sled agent on the same directory lists and serves it too.
    let config = config.clone();
    let (sled, _, _) = sleds.remove(0);
    sled.close().await.unwrap();
    let sled = Server::start(&config, &log()).await.unwrap();
    let one = sled_client(sled.local_addr(), Role::Nexus);
    assert_eq!(
        one.region_snapshot_list().await.unwrap().into_inner(),
        vec![snapshot.clone()]
    );
    qemu_io_on(&snapshot_export, "read -P 0x3c 15M 1M")
        .await
        .unwrap();

    // The snapshot outlives its region; deleted, it is served no more and its files are gone.
    one.region_delete(&original_id).await.unwrap();
    qemu_io_on(&snapshot_export, "read -P 0xa5 0 1M")
        .await
        .unwrap();
    one.region_snapshot_delete(&original_id, &snapshot_id)
        .await
        .unwrap();
    assert!(qemu_io_on(&snapshot_export, "read 0 4k").await.is_err());
    assert!(snapshot_files(&dir.join("one")).is_empty());
    let inventory = one.inventory().await.unwrap().into_inner();
    assert_eq!(inventory.reserved_storage.to_bytes(), 0);
    sled.close().await.unwrap();
    for (sled, _, _) in sleds {
        sled.close().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
