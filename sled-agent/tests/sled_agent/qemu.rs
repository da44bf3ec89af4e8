//! The QEMU backend with real QEMU processes (TCG here) booting the real guest image:
//! boot, console, reboot, stop, a QEMU that dies, live migration between two sled agents, a
//! migration whose target dies, migration streams whose certificates the target or the source
//! refuses, a VMM task that panics, a sled agent that shuts down, one
//! killed and restarted, and bad input.

use crate::recording_nexus::{RecordingNexus, assert_in_order};
use crate::{eventually, log, wait_for_state_within};
use halyard_common::ids::{InstanceUuid, MigrationUuid, SledUuid, VmmUuid};
use halyard_common::{ByteCount, MigrationState, SledBackend, VmmState};
use halyard_sled_agent::guest_console::{BOOT_BANNER, heartbeats};
use halyard_sled_agent::{Config, QemuConfig, Server};
use halyard_sled_agent_api::{
    MigrationTarget, SimFault, VmmPutStateBody, VmmRegisterBody, VmmStateRequested,
};
use halyard_sled_agent_client::Client;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// TCG boots the guest in about 3 s when the machine is idle; leave room for a busy one.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the guest image once per test process (a no-op when it is cached).
pub async fn guest_image() -> PathBuf {
    static BUILT: OnceCell<PathBuf> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async { halyard_sled_agent::build_guest_image().await.unwrap() })
        .await
        .clone()
}

pub struct QemuSled {
    pub server: Server,
    pub client: Client,
    pub config: Config,
}

/// A scratch directory for VMM state, short enough for unix socket paths.
pub fn state_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hq-{}", &uuid_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uuid_prefix() -> String {
    InstanceUuid::new_v4().to_string()[..8].to_string()
}

pub async fn qemu_config(nexus: SocketAddr, state_dir: &Path) -> Config {
    let sled_id = SledUuid::new_v4();
    Config {
        sled_id,
        listen_address: "127.0.0.1:0".parse().unwrap(),
        nexus_address: nexus,
        backend: SledBackend::Qemu,
        hardware_threads: 4,
        physical_ram: ByteCount::from_gibibytes_u32(2),
        registration_interval_ms: 100,
        sim: Default::default(),
        qemu: QemuConfig {
            guest_dir: guest_image().await,
            state_dir: state_dir.to_path_buf(),
            stop_timeout_ms: 10_000,
            ..Default::default()
        },
        storage: Default::default(),
        tls: crate::tls_files(crate::Role::Sled(sled_id)),
    }
}

async fn qemu_sled(nexus: &Arc<RecordingNexus>, state_dir: &Path) -> QemuSled {
    let config = qemu_config(nexus.address(), state_dir).await;
    let server = Server::start(&config, &log()).await.unwrap();
    nexus.watch_sled(server.local_addr());
    let client = crate::sled_client(server.local_addr(), crate::Role::Nexus);
    QemuSled {
        server,
        client,
        config,
    }
}

pub fn guest(hostname: &str) -> VmmRegisterBody {
    VmmRegisterBody {
        instance_id: InstanceUuid::new_v4(),
        ncpus: 1,
        memory: ByteCount::from_mebibytes_u32(256),
        hostname: hostname.into(),
        migration_target: None,
        disks: Vec::new(),
        nics: Vec::new(),
    }
}

pub async fn put(client: &Client, id: VmmUuid, state: VmmStateRequested) {
    client
        .vmm_put_state(&id, &VmmPutStateBody { state })
        .await
        .unwrap();
}

/// Everything the VMM's console holds.
pub async fn console_text(client: &Client, id: VmmUuid) -> String {
    let data = client
        .vmm_serial_console(&id, Some(0), Some(1 << 20), None)
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&data.data).into_owned()
}

/// Polls the console until `check` holds on its text (or fails the test with `what`).
pub async fn wait_for_console(
    client: &Client,
    id: VmmUuid,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
    loop {
        let text = console_text(client, id).await;
        if check(&text) {
            return text;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("the console never showed {what}; it holds:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The VMM's QEMU pid, from the pid file QEMU writes once it is up.
pub async fn pid_of(config: &Config, id: VmmUuid) -> i32 {
    let file = vmm_dir(config, id).join("qemu.pid");
    let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
    loop {
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "QEMU never wrote {}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn vmm_dir(config: &Config, id: VmmUuid) -> PathBuf {
    config
        .qemu
        .state_dir
        .join(config.sled_id.to_string())
        .join(id.to_string())
}

/// Whether a process runs (a zombie does not).
pub fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

pub fn kill_9(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_qemu_vmm_boots_reboots_and_stops_for_real() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let sled = qemu_sled(&nexus, &state_dir()).await;
    let inventory = sled.client.inventory().await.unwrap().into_inner();
    assert_eq!(inventory.backend, SledBackend::Qemu);
    assert!(inventory.accelerator.is_some(), "the accelerator is shown");

    let id = VmmUuid::new_v4();
    sled.client
        .vmm_register(&id, &guest("web-1"))
        .await
        .unwrap();
    let pid = pid_of(&sled.config, id).await;
    assert!(runs(pid));
    put(&sled.client, id, VmmStateRequested::Run).await;
    wait_for_state_within(&sled.client, id, VmmState::Running, BOOT_TIMEOUT).await;

    let text = wait_for_console(&sled.client, id, "the banner and heartbeats", |text| {
        text.contains(&format!("{BOOT_BANNER}web-1")) && heartbeats(text).len() >= 3
    })
    .await;
    let beats = heartbeats(&text);
    assert!(
        beats.windows(2).all(|w| w[1] > w[0]),
        "heartbeats increase: {beats:?}"
    );

    put(&sled.client, id, VmmStateRequested::Reboot).await;
    wait_for_console(
        &sled.client,
        id,
        "a second banner after the reboot",
        |text| text.matches(BOOT_BANNER).count() >= 2,
    )
    .await;
    assert_eq!(
        sled.client
            .vmm_get_state(&id)
            .await
            .unwrap()
            .into_inner()
            .vmm_state
            .state,
        VmmState::Running
    );

    put(&sled.client, id, VmmStateRequested::Stop).await;
    wait_for_state_within(&sled.client, id, VmmState::Destroyed, BOOT_TIMEOUT).await;
    assert!(!runs(pid), "the QEMU process is gone");
    assert!(!vmm_dir(&sled.config, id).exists(), "its files are gone");
    eventually("Nexus hears that it is destroyed", || {
        nexus.final_report(id).is_some()
    })
    .await;
    let last = nexus.final_report(id).unwrap();
    assert_eq!(last.state.vmm_state.state, VmmState::Destroyed);
    assert_eq!(
        last.still_listed,
        Some(false),
        "reported only once it was gone"
    );
    sled.server.close().await.unwrap();
}

/// A stop is a stop: a guest still booting (its power button not armed: no banner yet) ends
/// at once, and so does one rebooting; a booted guest powers off on ACPI's powerdown. The
/// sled waits 10 minutes for a guest to power off before it kills QEMU, so a stop that waited
/// for a powerdown the guest cannot hear would not end within the boot bound.
#[tokio::test]
async fn a_stop_never_waits_for_a_guest_that_cannot_hear_its_power_button() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let mut config = qemu_config(nexus.address(), &state_dir()).await;
    config.qemu.stop_timeout_ms = 600_000;
    let server = Server::start(&config, &log()).await.unwrap();
    nexus.watch_sled(server.local_addr());
    let client = crate::sled_client(server.local_addr(), crate::Role::Nexus);

    // Stopped right after it was started: still booting.
    let booting = VmmUuid::new_v4();
    client
        .vmm_register(&booting, &guest("booting"))
        .await
        .unwrap();
    put(&client, booting, VmmStateRequested::Run).await;
    put(&client, booting, VmmStateRequested::Stop).await;
    wait_for_state_within(&client, booting, VmmState::Destroyed, BOOT_TIMEOUT).await;
    eventually("Nexus hears the booting guest destroyed", || {
        nexus.final_report(booting).is_some()
    })
    .await;
    let report = nexus.final_report(booting).unwrap();
    assert_eq!(report.state.vmm_state.state, VmmState::Destroyed);

    // Booted: the powerdown is heard. Then a reboot, stopped before its second banner.
    let booted = VmmUuid::new_v4();
    client
        .vmm_register(&booted, &guest("booted"))
        .await
        .unwrap();
    put(&client, booted, VmmStateRequested::Run).await;
    wait_for_console(&client, booted, "the banner", |text| {
        text.contains(BOOT_BANNER)
    })
    .await;
    put(&client, booted, VmmStateRequested::Stop).await;
    wait_for_state_within(&client, booted, VmmState::Destroyed, BOOT_TIMEOUT).await;

    let rebooting = VmmUuid::new_v4();
    client
        .vmm_register(&rebooting, &guest("rebooting"))
        .await
        .unwrap();
    put(&client, rebooting, VmmStateRequested::Run).await;
    wait_for_console(&client, rebooting, "the banner", |text| {
        text.contains(BOOT_BANNER)
    })
    .await;
    put(&client, rebooting, VmmStateRequested::Reboot).await;
    put(&client, rebooting, VmmStateRequested::Stop).await;
    wait_for_state_within(&client, rebooting, VmmState::Destroyed, BOOT_TIMEOUT).await;
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_qemu_killed_with_sigkill_is_reported_failed() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let sled = qemu_sled(&nexus, &state_dir()).await;
    let id = VmmUuid::new_v4();
    sled.client
        .vmm_register(&id, &guest("doomed"))
        .await
        .unwrap();
    put(&sled.client, id, VmmStateRequested::Run).await;
    wait_for_state_within(&sled.client, id, VmmState::Running, BOOT_TIMEOUT).await;
    let pid = pid_of(&sled.config, id).await;
    kill_9(pid);
    wait_for_state_within(&sled.client, id, VmmState::Failed, BOOT_TIMEOUT).await;
    assert!(!vmm_dir(&sled.config, id).exists(), "its files are gone");
    // `final_report` also checks that the VMM was no longer listed when its end arrived.
    eventually("Nexus hears of the failure", || {
        nexus
            .final_report(id)
            .is_some_and(|r| r.state.vmm_state.state == VmmState::Failed)
    })
    .await;
    assert_eq!(
        nexus.final_report(id).unwrap().still_listed,
        Some(false),
        "a VMM killed with SIGKILL was reported failed while still listed"
    );
    assert!(
        sled.client
            .vmm_list()
            .await
            .unwrap()
            .into_inner()
            .is_empty()
    );
    sled.server.close().await.unwrap();
}

/// Finding 6 of issue 15 on QEMU: a VMM whose task panics (a sled-agent bug, injected by the
/// `panic` test hook) is reported failed, and only once its QEMU is dead and its files are
/// gone, so Nexus can start the instance again without a second copy of the guest running.
#[tokio::test]
async fn a_qemu_vmm_whose_task_panics_is_reported_failed_with_its_qemu_gone() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let sled = qemu_sled(&nexus, &state_dir()).await;
    let id = VmmUuid::new_v4();
    sled.client
        .vmm_register(&id, &guest("panicky"))
        .await
        .unwrap();
    put(&sled.client, id, VmmStateRequested::Run).await;
    wait_for_state_within(&sled.client, id, VmmState::Running, BOOT_TIMEOUT).await;
    let pid = pid_of(&sled.config, id).await;
    assert!(runs(pid), "QEMU runs before the panic");
    sled.client
        .vmm_inject_fault(&id, &SimFault::Panic)
        .await
        .unwrap();
    eventually("Nexus hears the panicked VMM failed", || {
        nexus
            .final_report(id)
            .is_some_and(|r| r.state.vmm_state.state == VmmState::Failed)
    })
    .await;
    // The terminal report came after the cleanup: by now QEMU must be dead and its files
    // removed, not merely on their way out.
    assert!(
        !runs(pid),
        "QEMU {pid} still runs after its VMM was reported failed"
    );
    assert!(
        !vmm_dir(&sled.config, id).exists(),
        "the VMM's files outlived its report"
    );
    let last = nexus.final_report(id).unwrap();
    assert_eq!(
        last.still_listed,
        Some(false),
        "a panicked VMM was reported failed while still listed"
    );
    assert_in_order(&nexus.reports_for(id));
    assert_eq!(
        sled.client
            .vmm_get_state(&id)
            .await
            .unwrap()
            .vmm_state
            .state,
        VmmState::Failed
    );
    assert!(
        sled.client
            .vmm_list()
            .await
            .unwrap()
            .into_inner()
            .is_empty(),
        "a VMM whose task died is not live"
    );
    sled.server.close().await.unwrap();
}

/// A sled agent that shuts down ends its QEMU VMMs and, before it is gone, Nexus has taken
/// each one's last report (destroyed), so Nexus does not go on believing they run.
#[tokio::test]
async fn a_qemu_sled_that_shuts_down_reports_its_vmms_ended_first() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let sled = qemu_sled(&nexus, &state_dir()).await;
    let id = VmmUuid::new_v4();
    sled.client
        .vmm_register(&id, &guest("closing"))
        .await
        .unwrap();
    put(&sled.client, id, VmmStateRequested::Run).await;
    wait_for_state_within(&sled.client, id, VmmState::Running, BOOT_TIMEOUT).await;
    let pid = pid_of(&sled.config, id).await;
    sled.server.close().await.unwrap();
    // No waiting here: `close` returned, so the report must already be in.
    let last = nexus
        .final_report(id)
        .expect("the sled agent shut down before Nexus had its VMM's last report");
    assert_eq!(last.state.vmm_state.state, VmmState::Destroyed);
    assert_in_order(&nexus.reports_for(id));
    assert!(!runs(pid), "QEMU {pid} outlived its sled agent");
}

#[tokio::test]
async fn a_running_guest_migrates_between_two_qemu_sled_agents() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let source = qemu_sled(&nexus, &dir).await;
    let target = qemu_sled(&nexus, &dir).await;

    let source_id = VmmUuid::new_v4();
    let body = guest("mover");
    source.client.vmm_register(&source_id, &body).await.unwrap();
    let source_pid = pid_of(&source.config, source_id).await;
    put(&source.client, source_id, VmmStateRequested::Run).await;
    let before = wait_for_console(&source.client, source_id, "heartbeats", |text| {
        heartbeats(text).len() >= 3
    })
    .await;
    let last_on_source = *heartbeats(&before).last().unwrap();

    let target_id = start_migration(&source, source_id, &target, &body).await;

    let arrived =
        wait_for_state_within(&target.client, target_id, VmmState::Running, BOOT_TIMEOUT).await;
    assert_eq!(
        arrived.migration_in.unwrap().state,
        MigrationState::Completed
    );
    let left =
        wait_for_state_within(&source.client, source_id, VmmState::Destroyed, BOOT_TIMEOUT).await;
    assert_eq!(left.migration_out.unwrap().state, MigrationState::Completed);
    assert!(!runs(source_pid), "the source QEMU is gone");

    // The guest really moved: its counter goes on from where it was, without a new boot.
    let after = wait_for_console(
        &target.client,
        target_id,
        "heartbeats on the target",
        |text| heartbeats(text).len() >= 3,
    )
    .await;
    assert!(
        !after.contains(BOOT_BANNER),
        "the guest did not boot again:\n{after}"
    );
    let first_on_target = heartbeats(&after)[0];
    assert!(
        first_on_target > last_on_source,
        "the counter continues ({last_on_source} on the source, then {first_on_target})"
    );

    put(&target.client, target_id, VmmStateRequested::Stop).await;
    wait_for_state_within(&target.client, target_id, VmmState::Destroyed, BOOT_TIMEOUT).await;
    source.server.close().await.unwrap();
    target.server.close().await.unwrap();
}

#[tokio::test]
async fn a_migration_whose_target_qemu_dies_leaves_the_guest_on_the_source() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let source = qemu_sled(&nexus, &dir).await;
    let target = qemu_sled(&nexus, &dir).await;

    let source_id = VmmUuid::new_v4();
    let body = guest("stayer");
    source.client.vmm_register(&source_id, &body).await.unwrap();
    put(&source.client, source_id, VmmStateRequested::Run).await;
    wait_for_console(&source.client, source_id, "heartbeats", |text| {
        heartbeats(text).len() >= 2
    })
    .await;

    let target_id = start_migration(&source, source_id, &target, &body).await;
    let target_pid = pid_of(&target.config, target_id).await;
    // The target starts receiving, and dies.
    wait_for_state_within(&target.client, target_id, VmmState::Migrating, BOOT_TIMEOUT).await;
    kill_9(target_pid);

    let target_end =
        wait_for_state_within(&target.client, target_id, VmmState::Failed, BOOT_TIMEOUT).await;
    assert_eq!(
        target_end.migration_in.unwrap().state,
        MigrationState::Failed
    );
    eventually("Nexus hears that the target failed", || {
        nexus
            .final_report(target_id)
            .is_some_and(|r| r.state.vmm_state.state == VmmState::Failed)
    })
    .await;
    assert_eq!(
        nexus.final_report(target_id).unwrap().still_listed,
        Some(false),
        "a target killed with SIGKILL was reported failed while still listed"
    );
    let source_state = wait_for_migration_out(&source.client, source_id).await;
    assert_eq!(source_state, MigrationState::Failed);
    let state = source
        .client
        .vmm_get_state(&source_id)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.vmm_state.state, VmmState::Running);

    // The guest still runs there: its counter keeps going.
    let seen = heartbeats(&console_text(&source.client, source_id).await).len();
    wait_for_console(&source.client, source_id, "more heartbeats", |text| {
        heartbeats(text).len() >= seen + 3
    })
    .await;
    source.server.close().await.unwrap();
    target.server.close().await.unwrap();
}

/// Registers a migration target for `source_id` on `target` and asks the source to migrate
/// out to it; returns the target VMM's id.
pub async fn start_migration(
    source: &QemuSled,
    source_id: VmmUuid,
    target: &QemuSled,
    body: &VmmRegisterBody,
) -> VmmUuid {
    let migration_id = MigrationUuid::new_v4();
    let target_id = VmmUuid::new_v4();
    let target_body = VmmRegisterBody {
        migration_target: Some(MigrationTarget {
            migration_id,
            source_propolis_id: source_id,
            source_sled_id: source.server.agent().id(),
            source_address: source.server.local_addr(),
        }),
        ..body.clone()
    };
    target
        .client
        .vmm_register(&target_id, &target_body)
        .await
        .unwrap();
    put(
        &source.client,
        source_id,
        VmmStateRequested::MigrateOut {
            migration_id,
            target_propolis_id: target_id,
            target_sled_id: target.server.agent().id(),
            target_address: target.server.local_addr(),
        },
    )
    .await;
    target_id
}

/// Issue 18 for QEMU's own stream: a target's QEMU admits the guest's memory only from a
/// QEMU presenting the certificate the CA issued to the sled Nexus named as the source
/// (`tls-authz`). Here the named source sled's QEMU presents a third sled's certificate from
/// the same CA: the stream is refused, the migration fails, the guest keeps running on the
/// source, and the target never runs it.
#[tokio::test]
async fn a_qemu_target_refuses_a_migration_stream_with_another_sleds_certificate() {
    let third_sled = crate::tls_files(crate::Role::Sled(SledUuid::new_v4()));
    a_migration_stream_with_this_certificate_is_refused(
        End::Source,
        |_| third_sled,
        "TLS x509 authz check for CN=",
    )
    .await;
}

/// The same with a certificate naming the right source sled but issued by another CA
/// (`verify-peer=on`: the name alone admits nothing). GnuTLS offers only a certificate from
/// a CA the server asks for, so the source's QEMU sends none, and the target refuses a
/// stream without a certificate from its CA.
#[tokio::test]
async fn a_qemu_target_refuses_a_migration_stream_with_a_certificate_from_another_ca() {
    let foreign_dir = state_dir().join("foreign-pki");
    a_migration_stream_with_this_certificate_is_refused(
        End::Source,
        |source_sled| {
            halyard_tls::pki::DevPki::create("another deployment", &foreign_dir)
                .unwrap()
                .files(crate::Role::Sled(source_sled))
                .unwrap()
        },
        "Verify failed: No certificate was found",
    )
    .await;
}

/// And the other way: the source's QEMU sends the guest only to a QEMU presenting the
/// certificate of the sled Nexus named as the target (`tls-hostname`), not to one presenting
/// another sled's.
#[tokio::test]
async fn a_qemu_source_sends_the_guest_only_to_the_target_sleds_certificate() {
    let third_sled = crate::tls_files(crate::Role::Sled(SledUuid::new_v4()));
    a_migration_stream_with_this_certificate_is_refused(
        End::Target,
        |_| third_sled,
        "Certificate does not match the hostname",
    )
    .await;
}

/// One end of a migration stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The source's QEMU (the TLS client).
    Source,
    /// The target's QEMU (the TLS server).
    Target,
}

/// Migrates a running guest between two QEMU sled agents after replacing the certificate
/// that `replaced`'s sled's QEMUs present (the sled agent's own certificate, with which it
/// pushes the phases or answers them, stays its own) with `presented(that sled)`. Checks
/// that the other end's QEMU refused the stream, saying `refusal` in its log, and that the
/// guest stayed on the source and never ran on the target.
async fn a_migration_stream_with_this_certificate_is_refused(
    replaced: End,
    presented: impl FnOnce(SledUuid) -> halyard_tls::TlsFiles,
    refusal: &str,
) {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let source = qemu_sled(&nexus, &dir).await;
    let target = qemu_sled(&nexus, &dir).await;
    let (sled, cert, key) = match replaced {
        End::Source => (&source, "client-cert.pem", "client-key.pem"),
        End::Target => (&target, "server-cert.pem", "server-key.pem"),
    };
    let presented = presented(sled.config.sled_id);
    let credentials = dir.join(format!("{}-tls", sled.config.sled_id));
    assert!(
        credentials.join(cert).is_file(),
        "the sled agent wrote its QEMU credentials into {}",
        credentials.display()
    );
    std::fs::copy(&presented.cert, credentials.join(cert)).unwrap();
    std::fs::copy(&presented.key, credentials.join(key)).unwrap();
    // QEMU loads only a certificate its own CA file vouches for: a certificate from another
    // CA comes with that CA added (the deployment's stays, so the other end is still trusted).
    let ca_file = credentials.join("ca-cert.pem");
    let deployment_ca = std::fs::read_to_string(&ca_file).unwrap();
    let presented_ca = std::fs::read_to_string(&presented.ca_cert).unwrap();
    if presented_ca != deployment_ca {
        std::fs::write(&ca_file, format!("{deployment_ca}{presented_ca}")).unwrap();
    }

    let source_id = VmmUuid::new_v4();
    let body = guest("held");
    source.client.vmm_register(&source_id, &body).await.unwrap();
    put(&source.client, source_id, VmmStateRequested::Run).await;
    wait_for_console(&source.client, source_id, "heartbeats", |text| {
        heartbeats(text).len() >= 2
    })
    .await;

    let target_id = start_migration(&source, source_id, &target, &body).await;
    assert_eq!(
        wait_for_migration_out(&source.client, source_id).await,
        MigrationState::Failed,
        "the guest was sent over a stream with a certificate that must be refused"
    );
    let refusing_log = match replaced {
        End::Source => vmm_dir(&target.config, target_id),
        End::Target => vmm_dir(&source.config, source_id),
    }
    .join("qemu.log");
    let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(&refusing_log).unwrap_or_default();
        if log.contains(refusal) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "QEMU never logged {refusal:?} in {}; it holds:\n{log}",
            refusing_log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The guest never ran on the target, and still runs on the source.
    let on_target = target
        .client
        .vmm_get_state(&target_id)
        .await
        .unwrap()
        .into_inner();
    assert_ne!(on_target.vmm_state.state, VmmState::Running);
    assert_ne!(
        on_target.migration_in.map(|m| m.state),
        Some(MigrationState::Completed)
    );
    assert!(
        heartbeats(&console_text(&target.client, target_id).await).is_empty(),
        "the guest ran on the target"
    );
    let on_source = source
        .client
        .vmm_get_state(&source_id)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_source.vmm_state.state, VmmState::Running);
    let seen = heartbeats(&console_text(&source.client, source_id).await).len();
    wait_for_console(&source.client, source_id, "more heartbeats", |text| {
        heartbeats(text).len() >= seen + 2
    })
    .await;
    source.server.close().await.unwrap();
    target.server.close().await.unwrap();
}

async fn wait_for_migration_out(client: &Client, id: VmmUuid) -> MigrationState {
    let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
    loop {
        let state = client.vmm_get_state(&id).await.unwrap().into_inner();
        if let Some(out) = state.migration_out
            && out.state.is_terminal()
        {
            return out.state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the migration never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_sled_agent_killed_and_restarted_leaves_no_orphan_qemu() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let mut config = qemu_config(nexus.address(), &dir).await;
    // The restarted sled agent must come back at the same address: a port no other test
    // takes meanwhile, also while the sled agent is down.
    let port = halyard_test_db::reserve_port().unwrap();
    config.listen_address = port.address();
    let file = dir.join("sled.toml");
    std::fs::write(
        &file,
        format!(
            "sled_id = \"{}\"\nlisten_address = \"{}\"\nnexus_address = \"{}\"\n\
             backend = \"qemu\"\nhardware_threads = 4\nphysical_ram = {}\n\
             [qemu]\nguest_dir = \"{}\"\nstate_dir = \"{}\"\n{}",
            config.sled_id,
            config.listen_address,
            config.nexus_address,
            config.physical_ram.to_bytes(),
            config.qemu.guest_dir.display(),
            config.qemu.state_dir.display(),
            config.tls.toml_table(),
        ),
    )
    .unwrap();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_halyard-sled-agent"))
            .arg("--config")
            .arg(&file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let client = crate::sled_client(config.listen_address, crate::Role::Nexus);
    // So that a terminal report, were one sent, is checked against the listing too.
    nexus.watch_sled(config.listen_address);
    let mut agent = start();
    wait_until_up(&client).await;
    let id = VmmUuid::new_v4();
    client.vmm_register(&id, &guest("orphan")).await.unwrap();
    put(&client, id, VmmStateRequested::Run).await;
    let pid = pid_of(&config, id).await;

    agent.kill().unwrap(); // SIGKILL
    agent.wait().unwrap();
    assert!(
        runs(pid),
        "the QEMU outlived its sled agent (an orphan, for now)"
    );

    let mut agent = start();
    wait_until_up(&client).await;
    assert!(!runs(pid), "the restarted sled agent ended the orphan");
    assert!(!vmm_dir(&config, id).exists(), "and removed its files");
    assert!(client.vmm_list().await.unwrap().into_inner().is_empty());
    agent.kill().unwrap();
    agent.wait().unwrap();
    // What the killed sled agent left for its next start to remove: its network namespace.
    let namespace = format!("hl-{}", &config.sled_id.to_string()[..8]);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &namespace])
        .status();
    drop(port);
}

pub async fn wait_until_up(client: &Client) {
    let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
    while client.inventory().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sled agent never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_qemu_sled_refuses_what_it_cannot_run_before_starting_qemu() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let sled = qemu_sled(&nexus, &dir).await;
    let too_many_cpus = VmmRegisterBody {
        ncpus: 5,
        ..guest("big")
    };
    let too_much_memory = VmmRegisterBody {
        memory: ByteCount::from_gibibytes_u32(3),
        ..guest("big")
    };
    for body in [too_many_cpus, too_much_memory] {
        let id = VmmUuid::new_v4();
        let error = sled.client.vmm_register(&id, &body).await.unwrap_err();
        assert_eq!(error.status().map(|s| s.as_u16()), Some(400), "{error}");
        assert!(
            error.to_string().contains("more than this sled has"),
            "{error}"
        );
        assert!(!vmm_dir(&sled.config, id).exists(), "no QEMU was started");
    }
    let too_little_memory = VmmRegisterBody {
        memory: ByteCount::from_mebibytes_u32(64),
        ..guest("tiny")
    };
    let error = sled
        .client
        .vmm_register(&VmmUuid::new_v4(), &too_little_memory)
        .await
        .unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400), "{error}");
    assert!(error.to_string().contains("at least 96 MiB"), "{error}");
    let bad_hostname = VmmRegisterBody {
        hostname: "a b".into(),
        ..guest("x")
    };
    let error = sled
        .client
        .vmm_register(&VmmUuid::new_v4(), &bad_hostname)
        .await
        .unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400), "{error}");
    sled.server.close().await.unwrap();

    // No guest image: the sled agent does not start, and says how to build one.
    let mut config = qemu_config(nexus.address(), &dir).await;
    config.qemu.guest_dir = dir.join("no-image-here");
    let error = Server::start(&config, &log()).await.err().unwrap();
    assert!(
        error.to_string().contains("bash dev-tools/guest-image.sh"),
        "{error}"
    );
}
