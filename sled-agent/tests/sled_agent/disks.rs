//! QEMU VMMs with disks: three QEMU sled agents with storage each hold one region (replica) of a
//! disk; a VMM attaches the disk (virtio-blk over `quorum` of the three NBD exports) and its
//! guest formats, mounts, writes and reads it through the serial console. The data outlives the
//! VMM (a new VMM on another sled reads it back), a replica's storage daemon killed with -9
//! while the guest writes (writes go on, the daemon is restarted, nothing is lost), and a live
//! migration while the guest writes (every record is there afterwards). A crash-consistent
//! snapshot of a writing guest's disk (vCPUs paused, the three regions snapshotted, resumed)
//! holds the records up to the pause, and a disk made from it shows them to a new VMM.

use crate::qemu::{
    BOOT_TIMEOUT, QemuSled, console_text, guest, pid_of, put, qemu_config, runs, start_migration,
    state_dir, wait_for_console,
};
use crate::recording_nexus::RecordingNexus;
use crate::storage::{compare_exports, qemu_io, shape, wait_for_restart, with_storage};
use crate::{Role, log, sled_client, wait_for_state_within};
use futures::SinkExt;
use halyard_common::ids::{DiskUuid, RegionUuid, SnapshotUuid, VmmUuid};
use halyard_common::{MigrationState, VmmState};
use halyard_sled_agent::Server;
use halyard_sled_agent::guest_console::BOOT_BANNER;
use halyard_sled_agent_api::{
    RegionEnsureBody, RegionSummary, VmmDisk, VmmRegisterBody, VmmStateRequested, VmmVcpus,
};
use halyard_sled_agent_client::Client;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

/// Each region (and so the disk) in MiB: small, so mke2fs is quick under TCG.
const DISK_MIB: u32 = 32;
/// How long a command typed into the guest may take (TCG on a busy machine is slow).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

async fn storage_sled(nexus: &Arc<RecordingNexus>, dir: &Path) -> QemuSled {
    let config = with_storage(qemu_config(nexus.address(), dir).await, 4 * DISK_MIB);
    let server = Server::start(&config, &log()).await.unwrap();
    nexus.watch_sled(server.local_addr());
    let client = sled_client(server.local_addr(), Role::Nexus);
    QemuSled {
        server,
        client,
        config,
    }
}

/// Three QEMU sleds with storage, and a disk with one region on each.
async fn three_sleds_and_a_disk(
    nexus: &Arc<RecordingNexus>,
    name: &str,
) -> (Vec<QemuSled>, VmmDisk, Vec<RegionSummary>) {
    let dir = state_dir();
    let mut sleds = Vec::new();
    for _ in 0..3 {
        sleds.push(storage_sled(nexus, &dir).await);
    }
    let mut regions = Vec::new();
    for sled in &sleds {
        let region = sled
            .client
            .region_ensure(&RegionUuid::new_v4(), &shape(DISK_MIB))
            .await
            .unwrap()
            .into_inner();
        regions.push(region);
    }
    let disk = VmmDisk {
        disk_id: DiskUuid::new_v4(),
        name: name.into(),
        size: shape(DISK_MIB).size,
        block_size: shape(DISK_MIB).block_size,
        replicas: regions
            .iter()
            .map(|r| r.export.clone().expect("a QEMU sled serves its regions"))
            .collect(),
    };
    (sleds, disk, regions)
}

fn with_disk(hostname: &str, disk: &VmmDisk) -> VmmRegisterBody {
    VmmRegisterBody {
        disks: vec![disk.clone()],
        ..guest(hostname)
    }
}

/// Registers and runs a VMM, and waits for its shell's prompt.
pub async fn boot(sled: &QemuSled, body: &VmmRegisterBody) -> VmmUuid {
    let id = VmmUuid::new_v4();
    sled.client.vmm_register(&id, body).await.unwrap();
    put(&sled.client, id, VmmStateRequested::Run).await;
    let prompt = format!("{}# ", body.hostname);
    wait_for_console(&sled.client, id, "the shell's prompt", |text| {
        text.split_once(&format!("{BOOT_BANNER}{}", body.hostname))
            .is_some_and(|(_, after)| after.contains(&prompt))
    })
    .await;
    id
}

/// Types `line` (and a carriage return) on the VMM's serial console.
async fn type_line(client: &Client, id: VmmUuid, line: &str) {
    let upgraded = client
        .vmm_serial_console_stream(&id, Some(0))
        .await
        .unwrap()
        .into_inner();
    let mut ws = WebSocketStream::from_raw_socket(upgraded, WsRole::Client, None).await;
    ws.send(Message::Text(format!("{line}\r").into()))
        .await
        .unwrap();
    ws.close(None).await.unwrap();
}

/// A marker the guest prints but whose typed (echoed) form differs: the shell joins the two
/// quoted halves, the echo of the input shows them apart.
fn marker(word: &str, n: u64) -> (String, String) {
    let (a, b) = word.split_at(word.len() / 2);
    (format!("\"{a}\"\"{b}-{n}\""), format!("{word}-{n}"))
}

/// Runs `script` in the guest's shell and returns what it printed (heartbeats left out),
/// failing the test if it exits non-zero.
pub async fn run(client: &Client, id: VmmUuid, script: &str) -> String {
    let (rc, output) = run_status(client, id, script).await;
    assert_eq!(rc, "0", "`{script}` failed in the guest:\n{output}");
    output
}

/// Runs `script` in the guest's shell; returns its exit status and what it printed
/// (heartbeats left out).
pub async fn run_status(client: &Client, id: VmmUuid, script: &str) -> (String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let (typed_begin, begin) = marker("HQBEGIN", n);
    let (typed_end, end) = marker("HQEND", n);
    type_line(
        client,
        id,
        &format!("echo {typed_begin}; {script}; echo {typed_end} rc=$?"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
    loop {
        let text = console_text(client, id).await;
        if let Some((_, after)) = text.split_once(&format!("{begin}\r\n"))
            && let Some((output, rest)) = after.split_once(&format!("{end} rc="))
        {
            let rc: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let output: String = output
                .lines()
                .filter(|l| !l.contains(halyard_sled_agent::guest_console::HEARTBEAT))
                .map(|l| format!("{}\n", l.trim_end_matches('\r')))
                .collect();
            return (rc, output);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{script}` never finished in the guest; the console holds:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The one line of `output` starting with `prefix`, without it.
fn line_after<'a>(output: &'a str, prefix: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{output}"))
        .trim()
}

/// Formats the disk (once) and mounts it at /mnt.
async fn mount(client: &Client, id: VmmUuid, format: bool) {
    if format {
        run(client, id, "mke2fs -q /dev/vda >/dev/null").await;
    }
    run(client, id, "mount /dev/vda /mnt").await;
}

/// The file's checksum, read from the disk (the guest's page cache dropped first).
async fn checksum(client: &Client, id: VmmUuid, file: &str) -> String {
    let output = run(
        client,
        id,
        &format!("sync; echo 3 >/proc/sys/vm/drop_caches; echo SUM $(sha256sum {file})"),
    )
    .await;
    let sum = line_after(&output, "SUM ");
    sum.split_whitespace().next().unwrap().to_string()
}

/// The writer loop: appends numbered records to /mnt/log, syncing each, and prints every
/// tenth number, until /tmp/stop exists; then prints how many it wrote. A record is 1 KiB, the
/// file system's block: each lands in a block of its own that is never written again, so a
/// replica that missed a write keeps missing it.
const WRITER: &str = "rm -f /tmp/stop; (i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); \
    printf 'record %8d %01007d\\n' $i 0 >>/mnt/log; sync; [ $((i % 10)) -ne 0 ] || echo \"HQWR\"\"OTE $i\"; \
    done; echo \"HQWRITER\"\"DONE $i\") & true";

/// Waits until the writer has printed a record number of at least `n`; returns the highest.
async fn wait_for_records(client: &Client, id: VmmUuid, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
    loop {
        let text = console_text(client, id).await;
        let highest = record_numbers(&text, "HQWROTE ")
            .into_iter()
            .max()
            .unwrap_or(0);
        if highest >= n {
            return highest;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never reached record {n} (at {highest}); the console holds:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn record_numbers(text: &str, word: &str) -> Vec<u64> {
    text.match_indices(word)
        .filter_map(|(at, _)| {
            let digits: String = text[at + word.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// Stops the writer; returns how many records it wrote.
async fn stop_writer(client: &Client, id: VmmUuid) -> u64 {
    run(client, id, "touch /tmp/stop").await;
    let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
    loop {
        let text = console_text(client, id).await;
        if let Some(&n) = record_numbers(&text, "HQWRITERDONE ").last() {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never stopped; the console holds:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks every record of /mnt/log, read from the disk: record k is line k, for k up to
/// `records`, and nothing else is there. Returns the file's checksum.
async fn verify_records(client: &Client, id: VmmUuid, records: u64) -> String {
    let output = run(
        client,
        id,
        "sync; echo 3 >/proc/sys/vm/drop_caches; \
         awk '$1 != \"record\" || $2 + 0 != NR { bad++ } END { print \"RECORDS\", NR, bad + 0 }' /mnt/log",
    )
    .await;
    let counts: Vec<u64> = line_after(&output, "RECORDS ")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        counts,
        vec![records, 0],
        "the log should hold records 1 to {records} in order, no gap, nothing else"
    );
    checksum(client, id, "/mnt/log").await
}

/// Fails the test unless the two regions hold the same bytes (read over NBD).
async fn compare_replicas(a: &RegionSummary, b: &RegionSummary) {
    let url = |r: &RegionSummary| {
        let export = r.export.as_ref().expect("served");
        format!("nbd://{}/{}", export.address, export.name)
    };
    let output = tokio::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &url(a), &url(b)])
        .output()
        .await
        .expect("qemu-img runs");
    assert!(
        output.status.success(),
        "replicas {} and {} differ: {}{}",
        a.region_id,
        b.region_id,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn stop(sled: &QemuSled, id: VmmUuid) {
    put(&sled.client, id, VmmStateRequested::Stop).await;
    wait_for_state_within(&sled.client, id, VmmState::Destroyed, BOOT_TIMEOUT).await;
    sled.client.vmm_unregister(&id).await.unwrap();
}

async fn close(sleds: Vec<QemuSled>) {
    for sled in sleds {
        sled.server.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_disk_keeps_its_data_from_one_vmm_to_the_next_on_another_sled() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let (sleds, disk, _) = three_sleds_and_a_disk(&nexus, "data").await;

    let body = with_disk("first", &disk);
    let first = boot(&sleds[0], &body).await;
    let listed = sleds[0].client.vmm_list().await.unwrap().into_inner();
    assert_eq!(
        listed[0].disks,
        vec![disk.disk_id],
        "the VMM lists its disk"
    );
    // The guest sees the disk by its name, with its size and block size.
    let seen = run(
        &sleds[0].client,
        first,
        "echo SERIAL $(cat /sys/block/vda/serial); echo SECTORS $(cat /sys/block/vda/size); \
         echo BLOCK $(cat /sys/block/vda/queue/logical_block_size)",
    )
    .await;
    assert_eq!(line_after(&seen, "SERIAL "), "data");
    assert_eq!(
        line_after(&seen, "SECTORS "),
        (u64::from(DISK_MIB) * 2048).to_string()
    );
    assert_eq!(line_after(&seen, "BLOCK "), "512");
    mount(&sleds[0].client, first, true).await;
    run(
        &sleds[0].client,
        first,
        "dd if=/dev/urandom of=/mnt/file bs=1k count=512 2>/dev/null; sync",
    )
    .await;
    let written = checksum(&sleds[0].client, first, "/mnt/file").await;
    assert_eq!(written.len(), 64, "a sha256: {written}");
    stop(&sleds[0], first).await;

    // Another VMM, on another sled, attaches the same replicas and finds the file.
    let second = boot(&sleds[1], &with_disk("second", &disk)).await;
    mount(&sleds[1].client, second, false).await;
    assert_eq!(
        checksum(&sleds[1].client, second, "/mnt/file").await,
        written
    );
    stop(&sleds[1], second).await;
    close(sleds).await;
}

#[tokio::test]
async fn writes_go_on_while_a_replicas_storage_daemon_is_killed_and_restarted() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let (sleds, disk, regions) = three_sleds_and_a_disk(&nexus, "survivor").await;
    let id = boot(&sleds[0], &with_disk("writer", &disk)).await;
    let client = &sleds[0].client;
    mount(client, id, true).await;
    run(client, id, WRITER).await;
    let before_kill = wait_for_records(client, id, 20).await;

    // kill -9 the storage daemon of the third sled (not the VMM's own).
    let victim = &sleds[2];
    let pid = victim.server.agent().storage_daemon_pid().expect("it runs");
    let restarts = victim.server.agent().storage_daemon_restarts();
    // SAFETY: kill(2) of the daemon's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_for_restart(&victim.server, restarts).await;
    let new_pid = victim.server.agent().storage_daemon_pid().unwrap();
    assert_ne!(new_pid, pid, "a new daemon serves the region");
    assert!(!runs(pid as i32), "the killed daemon is gone");
    // The region is served again, at the same address.
    let listed = victim.client.region_list().await.unwrap().into_inner();
    assert_eq!(listed, vec![regions[2].clone()]);
    qemu_io(&regions[2], "read 0 4k")
        .await
        .expect("the restarted daemon serves the region");

    // The writes go on, well past where they were.
    wait_for_records(client, id, before_kill + 50).await;
    let records = stop_writer(client, id).await;
    let sum = verify_records(client, id, records).await;
    stop(&sleds[0], id).await;

    // The two replicas never disturbed took every write. Not only outvoted: the replica
    // whose daemon was killed took every write too (the VMM held its requests while it
    // reconnected, within the reconnect delay, and sent them again; and what the killed
    // daemon had acknowledged was already on disk: its exports are writethrough), so all
    // three are identical. (With a 10 s delay it missed writes under load: QEMU's reconnect attempts
    // 7 and 15 s after the break straddled it; see `RECONNECT_DELAY_S`.)
    compare_replicas(&regions[0], &regions[1]).await;
    compare_replicas(&regions[0], &regions[2]).await;

    // What a new VMM reads from the replicas is exactly what the guest wrote.
    let reader = boot(&sleds[1], &with_disk("reader", &disk)).await;
    mount(&sleds[1].client, reader, false).await;
    assert_eq!(verify_records(&sleds[1].client, reader, records).await, sum);
    stop(&sleds[1], reader).await;
    close(sleds).await;
}

#[tokio::test]
async fn a_guest_writing_to_its_disk_migrates_without_losing_a_record() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let (sleds, disk, _) = three_sleds_and_a_disk(&nexus, "mover").await;
    let body = with_disk("mover", &disk);
    let source_id = boot(&sleds[0], &body).await;
    let source_pid = pid_of(&sleds[0].config, source_id).await;
    mount(&sleds[0].client, source_id, true).await;
    run(&sleds[0].client, source_id, WRITER).await;
    wait_for_records(&sleds[0].client, source_id, 20).await;

    // The target (given the same disk: it attaches the same exports) takes the guest over
    // while it writes.
    let target_id = start_migration(&sleds[0], source_id, &sleds[1], &body).await;
    let arrived =
        wait_for_state_within(&sleds[1].client, target_id, VmmState::Running, BOOT_TIMEOUT).await;
    assert_eq!(
        arrived.migration_in.unwrap().state,
        MigrationState::Completed
    );
    wait_for_state_within(
        &sleds[0].client,
        source_id,
        VmmState::Destroyed,
        BOOT_TIMEOUT,
    )
    .await;
    assert!(!runs(source_pid), "the source QEMU is gone");
    let target = &sleds[1].client;
    let listed = target.vmm_list().await.unwrap().into_inner();
    assert_eq!(listed[0].disks, vec![disk.disk_id]);

    // The writer goes on on the target (its output appears on the target's console).
    let first_on_target = wait_for_records(target, target_id, 1).await;
    wait_for_records(target, target_id, first_on_target + 30).await;
    let records = stop_writer(target, target_id).await;
    assert!(
        !console_text(target, target_id).await.contains(BOOT_BANNER),
        "the guest did not boot again"
    );
    verify_records(target, target_id, records).await;
    stop(&sleds[1], target_id).await;
    sleds[0].client.vmm_unregister(&source_id).await.unwrap();
    close(sleds).await;
}

/// The longest run of records 1, 2, ... at the start of /mnt/log, and how many lines it has.
async fn record_prefix(client: &Client, id: VmmUuid) -> (u64, u64) {
    let output = run(
        client,
        id,
        "awk 'BEGIN { ok = 1 } ok && $1 == \"record\" && $2 + 0 == NR { good = NR; next } \
         { ok = 0 } END { print \"PREFIX\", good + 0, NR }' /mnt/log",
    )
    .await;
    let counts: Vec<u64> = line_after(&output, "PREFIX ")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (counts[0], counts[1])
}

#[tokio::test]
async fn a_snapshot_of_a_writing_guest_paused_for_it_holds_every_record_up_to_the_pause() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let (sleds, disk, regions) = three_sleds_and_a_disk(&nexus, "snapped").await;
    let id = boot(&sleds[0], &with_disk("snapped", &disk)).await;
    let client = &sleds[0].client;
    mount(client, id, true).await;
    run(client, id, WRITER).await;
    let before_pause = wait_for_records(client, id, 20).await;

    // Pause: the VMM still counts as running; the guest's writes are drained and flushed.
    let pause = VmmVcpus { paused: true };
    assert_eq!(
        client
            .vmm_put_vcpus(&id, &pause)
            .await
            .unwrap()
            .into_inner(),
        pause
    );
    let listed = client.vmm_list().await.unwrap().into_inner();
    assert!(listed[0].vcpus_paused);
    assert_eq!(listed[0].state.vmm_state.state, VmmState::Running);
    let reboot = halyard_sled_agent_api::VmmPutStateBody {
        state: VmmStateRequested::Reboot,
    };
    let refused = client.vmm_put_state(&id, &reboot).await.unwrap_err();
    assert_eq!(
        refused.status().unwrap().as_u16(),
        409,
        "no reboot while paused"
    );
    let snapshot_id = SnapshotUuid::new_v4();
    let mut snapshots = Vec::new();
    for (sled, region) in sleds.iter().zip(&regions) {
        let snapshot = sled
            .client
            .region_snapshot_ensure(&region.region_id, &snapshot_id)
            .await
            .unwrap()
            .into_inner();
        snapshots.push(snapshot.export.expect("served"));
    }
    // One point in time: the three snapshots are identical, and equal to the regions while
    // the guest is paused.
    for (snapshot, region) in snapshots.iter().zip(&regions) {
        compare_exports(&snapshots[0], snapshot).await;
        compare_exports(snapshot, region.export.as_ref().unwrap()).await;
    }
    client
        .vmm_put_vcpus(&id, &VmmVcpus { paused: false })
        .await
        .unwrap();
    assert!(!client.vmm_list().await.unwrap().into_inner()[0].vcpus_paused);

    // The guest writes on; the snapshots stay as they were.
    wait_for_records(client, id, before_pause + 50).await;
    let records = stop_writer(client, id).await;
    verify_records(client, id, records).await;
    stop(&sleds[0], id).await;
    let differs = tokio::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(format!(
            "nbd://{}/{}",
            snapshots[0].address, snapshots[0].name
        ))
        .arg({
            let region = regions[0].export.as_ref().unwrap();
            format!("nbd://{}/{}", region.address, region.name)
        })
        .status()
        .await
        .unwrap();
    assert_eq!(
        differs.code(),
        Some(1),
        "the region moved on from its snapshot"
    );

    // A disk made from the snapshot: three new regions copied from the snapshot's exports
    // (each from another sled's), read by a new VMM.
    let mut copies = Vec::new();
    for (i, sled) in sleds.iter().enumerate() {
        let copy = sled
            .client
            .region_ensure(
                &RegionUuid::new_v4(),
                &RegionEnsureBody {
                    source: Some(snapshots[(i + 1) % 3].clone()),
                    ..shape(DISK_MIB)
                },
            )
            .await
            .unwrap()
            .into_inner();
        copies.push(copy.export.expect("served"));
    }
    let restored = VmmDisk {
        disk_id: DiskUuid::new_v4(),
        name: "restored".into(),
        replicas: copies,
        ..disk.clone()
    };
    let reader = boot(&sleds[1], &with_disk("reader", &restored)).await;
    mount(&sleds[1].client, reader, false).await;
    let (prefix, lines) = record_prefix(&sleds[1].client, reader).await;
    assert!(
        prefix >= before_pause,
        "the snapshot lost records: it holds 1 to {prefix}, the guest had synced {before_pause}"
    );
    assert!(
        prefix < records,
        "the snapshot holds records written after it was taken ({prefix} of {records})"
    );
    assert!(
        lines <= prefix + 1,
        "after record {prefix}, at most one record cut short by the pause ({lines} lines)"
    );
    stop(&sleds[1], reader).await;
    close(sleds).await;
}

/// A simulated sled takes disks too and keeps them with the VMM (its summary lists them), and
/// refuses, like a QEMU sled, disks no VMM could attach.
#[tokio::test]
async fn a_sim_vmm_keeps_its_disks_and_bad_disks_are_refused() {
    let env = crate::TestEnv::new(crate::visible_delays()).await;
    let export = |port: u16| halyard_sled_agent_api::NbdExport {
        address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        name: RegionUuid::new_v4().to_string(),
    };
    let disk = |name: &str| VmmDisk {
        disk_id: DiskUuid::new_v4(),
        name: name.into(),
        size: shape(DISK_MIB).size,
        block_size: shape(DISK_MIB).block_size,
        replicas: vec![export(1), export(2), export(3)],
    };
    let (boot_disk, data) = (disk("boot"), disk("data"));
    let body = VmmRegisterBody {
        disks: vec![boot_disk.clone(), data.clone()],
        ..crate::register_body()
    };
    let id = VmmUuid::new_v4();
    env.client.vmm_register(&id, &body).await.unwrap();
    let listed = env.client.vmm_list().await.unwrap().into_inner();
    assert_eq!(listed[0].disks, vec![boot_disk.disk_id, data.disk_id]);

    // Simulated regions are served nowhere, so a simulated VMM takes a disk with fewer
    // replicas than a QEMU VMM could vote over (a QEMU sled refuses it: see the unit tests).
    let mut unserved = disk("unserved");
    unserved.replicas.clear();
    let body = VmmRegisterBody {
        disks: vec![unserved.clone()],
        ..crate::register_body()
    };
    env.client
        .vmm_register(&VmmUuid::new_v4(), &body)
        .await
        .unwrap();

    let mut odd_size = disk("odd");
    odd_size.size = halyard_common::ByteCount::try_from(512u64 * 7 + 100).unwrap();
    let mut twice = disk("twice");
    twice.replicas[1] = twice.replicas[0].clone();
    for bad in [odd_size, twice, disk("Not-A-Name")] {
        let body = VmmRegisterBody {
            disks: vec![bad.clone()],
            ..crate::register_body()
        };
        let status = env
            .client
            .vmm_register(&VmmUuid::new_v4(), &body)
            .await
            .expect_err("a disk no VMM could attach is refused")
            .status()
            .unwrap();
        assert_eq!(status.as_u16(), 400, "{bad:?}");
    }
    assert_eq!(env.client.vmm_list().await.unwrap().into_inner().len(), 2);
}
