//! Disks end to end through the API with real QEMU (TCG here): an instance created with a new
//! disk on three QEMU sleds with storage (three regions, each served by its sled's
//! `qemu-storage-daemon`), the guest formatting and writing it through the serial console,
//! the data kept across a stop and a start on another sled, and a guest writing numbered
//! records while it live-migrates and one replica's storage daemon is killed, none lost;
//! then that replica's sled expunged, the region replaced by a byte-identical copy on a fourth
//! sled, and every record read back.

use crate::context::TestContext;
use crate::real_vm::{
    self, PATIENCE, line_after, request_migration, sdk, wait_for_shell, wait_for_state,
};
use halyard_common::ids::InstanceUuid;
use halyard_common::{BlockSize, ByteCount, InstanceState, Name};
use halyard_nexus_external_client::types;
use oxide::prelude::*;
use std::time::Duration;

/// The disk the instance is created with: Oxide's smallest usual size. ext2 formats it in
/// seconds: only the inode tables and bitmaps are written.
const DISK_GIB: u32 = 1;
/// Each sled's storage: room for one region of the disk (three sleds, three regions).
const SLED_STORAGE_GIB: u32 = 2;
/// How many starts may land on the instance's first sled before the test gives up on
/// seeing it move (odds (1/3)^10 when placement is as random as it should be).
const MOST_STARTS: usize = 10;

fn name(n: &str) -> Name {
    n.parse().unwrap()
}

fn client(ctx: &TestContext) -> halyard_nexus_external_client::Client {
    halyard_nexus_external_client::Client::new_with_client(
        &ctx.external_url(),
        crate::authn_support::http_client(&ctx.token),
    )
}

/// `sleds` QEMU sleds with storage, project `p`, and a running 1-vCPU, 256 MiB instance
/// `name` created with a new blank disk `data` (its only disk, so the guest's `vda`).
async fn vm_with_a_new_disk(name_: &str, sleds: usize) -> (TestContext, InstanceUuid) {
    let ctx =
        TestContext::with_qemu_storage(sleds, ByteCount::from_gibibytes_u32(SLED_STORAGE_GIB))
            .await;
    sdk(&ctx)
        .project_create()
        .body_map(|b| b.name("p").description(""))
        .send()
        .await
        .unwrap();
    let created = client(&ctx)
        .instance_create()
        .project(halyard_common::NameOrId::Name(name("p")))
        .body(
            types::InstanceCreate::builder()
                .name(name(name_))
                .description("a real VM with a disk")
                .hostname(name_)
                .ncpus(1u16)
                .memory(ByteCount::from_mebibytes_u32(256))
                .disks(vec![types::InstanceDiskAttachment::Create {
                    name: name("data"),
                    description: String::new(),
                    disk_backend: types::DiskBackend::Distributed(types::DiskSource::Blank {
                        block_size: BlockSize::try_from(512u32).unwrap(),
                    }),
                    size: ByteCount::from_gibibytes_u32(DISK_GIB),
                }]),
        )
        .send()
        .await
        .unwrap()
        .into_inner();
    let id: InstanceUuid = created.id;
    wait_for_state(&ctx, id, InstanceState::Running).await;
    wait_for_shell(&ctx, "p", name_).await;
    // The disk's three regions are on the three sleds, each served.
    let regions = ctx.sql(
        "SELECT count(DISTINCT r.sled_id), count(r.export_address) FROM region r \
         JOIN disk d ON d.id = r.disk_id WHERE d.name = 'data' AND d.time_deleted IS NULL",
    );
    assert_eq!(regions.trim(), "3|3", "three served regions on three sleds");
    (ctx, id)
}

/// The sled of the instance's active VMM.
async fn vmm_sled(ctx: &TestContext, id: InstanceUuid) -> String {
    let vmm = ctx.view(id).await.active_vmm.expect("a VMM runs").id();
    ctx.sql(&format!("SELECT sled_id FROM vmm WHERE id = '{vmm}'"))
        .trim()
        .to_string()
}

/// Everything the instance's current VMM's console holds (project `p`).
async fn console(ctx: &TestContext, instance: &str) -> String {
    real_vm::console(ctx, "p", instance).await
}

/// Runs `script` in the guest's shell (project `p`); fails the test if it exits non-zero.
async fn run(ctx: &TestContext, instance: &str, script: &str) -> String {
    real_vm::run(ctx, "p", instance, script).await
}

/// The file's sha256, read from the disk (the guest's page cache dropped first).
async fn checksum(ctx: &TestContext, instance: &str, file: &str) -> String {
    let output = run(
        ctx,
        instance,
        &format!("sync; echo 3 >/proc/sys/vm/drop_caches; echo SUM $(sha256sum {file})"),
    )
    .await;
    let sum = line_after(&output, "SUM ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(sum.len(), 64, "a sha256: {sum}");
    sum
}

async fn start(ctx: &TestContext, id: InstanceUuid, instance: &str) {
    sdk(ctx)
        .instance_start()
        .project("p")
        .instance(instance)
        .send()
        .await
        .unwrap();
    wait_for_state(ctx, id, InstanceState::Running).await;
    wait_for_shell(ctx, "p", instance).await;
}

async fn stop(ctx: &TestContext, id: InstanceUuid, instance: &str) {
    sdk(ctx)
        .instance_stop()
        .project("p")
        .instance(instance)
        .send()
        .await
        .unwrap();
    wait_for_state(ctx, id, InstanceState::Stopped).await;
}

#[tokio::test]
async fn a_new_disk_keeps_a_file_across_a_stop_and_a_start_on_another_sled() {
    let (ctx, id) = vm_with_a_new_disk("keeper", 3).await;
    // The guest sees the disk by its name and its size.
    let seen = run(
        &ctx,
        "keeper",
        "echo SERIAL $(cat /sys/block/vda/serial); echo SECTORS $(cat /sys/block/vda/size)",
    )
    .await;
    assert_eq!(line_after(&seen, "SERIAL "), "data");
    assert_eq!(
        line_after(&seen, "SECTORS "),
        (u64::from(DISK_GIB) << 21).to_string()
    );
    run(
        &ctx,
        "keeper",
        "mke2fs -q /dev/vda >/dev/null && mount /dev/vda /mnt && \
         dd if=/dev/urandom of=/mnt/file bs=1k count=512 2>/dev/null && sync",
    )
    .await;
    let written = checksum(&ctx, "keeper", "/mnt/file").await;
    let first_sled = vmm_sled(&ctx, id).await;
    stop(&ctx, id, "keeper").await;

    // Started again until it runs on another sled: placement picks a sled with room at
    // random and all three are free, so each start leaves the first sled with odds 2/3.
    let mut second_sled = first_sled.clone();
    for _ in 0..MOST_STARTS {
        start(&ctx, id, "keeper").await;
        second_sled = vmm_sled(&ctx, id).await;
        if second_sled != first_sled {
            break;
        }
        stop(&ctx, id, "keeper").await;
    }
    assert_ne!(
        second_sled, first_sled,
        "{MOST_STARTS} starts all chose the instance's first sled of three"
    );
    run(&ctx, "keeper", "mount /dev/vda /mnt").await;
    assert_eq!(
        checksum(&ctx, "keeper", "/mnt/file").await,
        written,
        "the file read back on sled {second_sled} is the one written on sled {first_sled}"
    );
    stop(&ctx, id, "keeper").await;
    ctx.assert_quiet_and_consistent().await;
}

/// The writer loop: appends numbered 1 KiB records to /mnt/log, syncing each, and prints
/// every tenth number, until /tmp/stop exists; then prints how many it wrote.
const WRITER: &str = "rm -f /tmp/stop; (i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); \
    printf 'record %8d %01007d\\n' $i 0 >>/mnt/log; sync; [ $((i % 10)) -ne 0 ] || echo \"HQWR\"\"OTE $i\"; \
    done; echo \"HQWRITER\"\"DONE $i\") & true";

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

/// Waits until the writer has printed a record number of at least `n` on the current VMM's
/// console; returns the highest.
async fn wait_for_records(ctx: &TestContext, instance: &str, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = console(ctx, instance).await;
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops the writer; returns how many records it wrote.
async fn stop_writer(ctx: &TestContext, instance: &str) -> u64 {
    run(ctx, instance, "touch /tmp/stop").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = console(ctx, instance).await;
        if let Some(&n) = record_numbers(&text, "HQWRITERDONE ").last() {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never stopped; the console holds:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Checks every record of /mnt/log, read from the disk: record k is line k, for k up to
/// `records`, and nothing else is there.
async fn verify_records(ctx: &TestContext, instance: &str, records: u64) {
    let output = run(
        ctx,
        instance,
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
}

/// One test for all three (each boots QEMU sleds and a guest, and formats its disk): the
/// guest's writer runs through a live migration, then through a kill -9 of the storage
/// daemon of a sled the VMM does not run on (its region's replica), which that sled agent
/// restarts; then, the instance stopped, that sled is expunged and the region-replacement
/// task copies a healthy replica to the fourth sled.
#[tokio::test]
async fn a_writing_guest_migrates_and_outlives_a_killed_storage_daemon_losing_no_record() {
    let (mut ctx, id) = vm_with_a_new_disk("writer", 4).await;
    run(
        &ctx,
        "writer",
        "mke2fs -q /dev/vda >/dev/null && mount /dev/vda /mnt",
    )
    .await;
    run(&ctx, "writer", WRITER).await;
    wait_for_records(&ctx, "writer", 20).await;

    // Live migration while the writer runs: the target attaches the same three exports.
    let source_vmm = ctx.view(id).await.active_vmm.expect("a VMM runs").id();
    let source_sled = vmm_sled(&ctx, id).await;
    request_migration(&ctx, "p", "writer", None).await;
    ctx.eventually_within(PATIENCE, "the instance runs on its new VMM", async |ctx| {
        let view = ctx.view(id).await;
        view.run_state() == InstanceState::Running
            && view
                .active_vmm
                .as_ref()
                .is_some_and(|vmm| vmm.id() != source_vmm)
            && view.instance.runtime.migration().is_none()
    })
    .await;
    let target_sled = vmm_sled(&ctx, id).await;
    assert_ne!(target_sled, source_sled, "the VMM moved to another sled");
    // The same writer goes on in the migrated guest (its console is the target's: the
    // numbers it prints from now on).
    let after_migration = wait_for_records(&ctx, "writer", 1).await;

    // kill -9 the storage daemon of a sled holding a replica that the VMM does not run on.
    let replica_sleds = data_region_sleds(&ctx);
    let victim_index = ctx
        .sleds
        .iter()
        .position(|sled| {
            let id = sled.agent().id().to_string();
            id != target_sled && replica_sleds.contains(&id)
        })
        .unwrap();
    let victim = &ctx.sleds[victim_index];
    let pid = victim.agent().storage_daemon_pid().expect("it runs");
    let restarts = victim.agent().storage_daemon_restarts();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while victim.agent().storage_daemon_restarts() == restarts
        || victim.agent().storage_daemon_pid().is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sled agent never restarted its storage daemon"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(victim.agent().storage_daemon_pid(), Some(pid));
    // The writes go on, well past where they were.
    wait_for_records(&ctx, "writer", after_migration + 50).await;

    let records = stop_writer(&ctx, "writer").await;
    verify_records(&ctx, "writer", records).await;
    let written = checksum(&ctx, "writer", "/mnt/log").await;
    stop(&ctx, id, "writer").await;

    // That sled dies and is expunged: the disk is degraded, and with its instance stopped the
    // region-replacement task copies a healthy replica to the fourth sled.
    let victim = ctx.sleds.remove(victim_index);
    let victim_id = victim.agent().id();
    victim.close().await.unwrap();
    ctx.nexus().sled_expunge(victim_id).await.unwrap();
    ctx.eventually_within(PATIENCE, "the lost region is replaced", async |ctx| {
        let disk = client(ctx)
            .disk_view()
            .disk(halyard_common::NameOrId::Name(name("data")))
            .project(halyard_common::NameOrId::Name(name("p")))
            .send()
            .await
            .unwrap()
            .into_inner();
        !disk.degraded
    })
    .await;
    let replicas = ctx.sql(
        "SELECT r.id, r.export_address FROM region r JOIN disk d ON d.id = r.disk_id \
         WHERE d.name = 'data' AND d.time_deleted IS NULL ORDER BY r.time_created",
    );
    let replicas: Vec<(&str, &str)> = replicas
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once('|').unwrap())
        .collect();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert!(!data_region_sleds(&ctx).contains(&victim_id.to_string()));
    // The newest replica (the copy) holds exactly what the oldest does, byte for byte.
    let export = |(region, address): (&str, &str)| format!("nbd://{address}/{region}");
    let compared = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(export(replicas[0]))
        .arg(export(replicas[2]))
        .output()
        .unwrap();
    assert!(
        compared.status.success(),
        "the new replica differs from a healthy one: {}{}",
        String::from_utf8_lossy(&compared.stdout),
        String::from_utf8_lossy(&compared.stderr)
    );

    // Started again (its VMM on the three replicas), every record is there.
    start(&ctx, id, "writer").await;
    run(&ctx, "writer", "mount /dev/vda /mnt").await;
    verify_records(&ctx, "writer", records).await;
    assert_eq!(checksum(&ctx, "writer", "/mnt/log").await, written);
    stop(&ctx, id, "writer").await;
    ctx.assert_quiet_and_consistent().await;
}

/// The sleds holding the regions of disk `data`.
fn data_region_sleds(ctx: &TestContext) -> Vec<String> {
    ctx.sql(
        "SELECT r.sled_id FROM region r JOIN disk d ON d.id = r.disk_id \
         WHERE d.name = 'data' AND d.time_deleted IS NULL",
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_string)
    .collect()
}
