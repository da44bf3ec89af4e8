//! The instance watcher and auto-restart: a sled agent frozen with SIGSTOP (a real process)
//! loses its VMMs within the bound, their reservations freed and the sled closed to placement;
//! instances whose policy allows it run again on another sled; thawed, the sled agent destroys
//! the VMMs it still had, and nothing it reports late brings them back. And the policy, set
//! on create and update through Oxide's SDK.

use crate::context::{Role, SLED_RAM_GIB, SLED_THREADS, TestContext, sled_client, tls_files};
use halyard_common::ids::{InstanceUuid, SledUuid};
use halyard_common::{ByteCount, InstanceState, NameOrId};
use halyard_nexus_external_api::params::{InstanceAutoRestartPolicy, InstanceCreate};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A query's answer, trimmed.
fn sql(ctx: &TestContext, query: &str) -> String {
    ctx.sql(query).trim().to_string()
}

/// The sled agent binary that `cargo test --workspace` (and `cargo build`) put beside this
/// test binary's directory (`target/<profile>/`).
fn sled_agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("halyard-sled-agent");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p halyard-sled-agent` (the README's test \
         command does)",
        path.display()
    );
    path
}

/// A sim sled agent in a process of its own, so a test can freeze it (SIGSTOP) like a hung
/// host: it neither answers nor reports, its VMMs stay in its memory.
struct SledAgentProcess {
    id: SledUuid,
    child: Child,
    dir: PathBuf,
}

impl SledAgentProcess {
    fn start(nexus_internal: SocketAddr) -> SledAgentProcess {
        let id = SledUuid::new_v4();
        let dir = std::env::temp_dir().join(format!(
            "halyard-sled-process-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("sled-agent.toml");
        std::fs::write(
            &config,
            format!(
                "sled_id = \"{id}\"\nlisten_address = \"127.0.0.1:0\"\n\
                 nexus_address = \"{nexus_internal}\"\nbackend = \"sim\"\n\
                 hardware_threads = {SLED_THREADS}\nphysical_ram = {}\n\
                 registration_interval_ms = 1000\n{}",
                ByteCount::from_gibibytes_u32(SLED_RAM_GIB).to_bytes(),
                tls_files(Role::Sled(id)).toml_table()
            ),
        )
        .unwrap();
        let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
        let child = Command::new(sled_agent_binary())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        SledAgentProcess { id, child, dir }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }
}

impl Drop for SledAgentProcess {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `name` (best effort unless `policy` says otherwise) and moves it onto `sled`.
async fn running_on(
    ctx: &TestContext,
    project: &NameOrId,
    name: &str,
    policy: Option<InstanceAutoRestartPolicy>,
    sled: SledUuid,
) -> InstanceUuid {
    let created = ctx
        .nexus()
        .instance_create(
            project,
            InstanceCreate {
                auto_restart_policy: policy,
                ..InstanceCreate::new(
                    name.parse().unwrap(),
                    "",
                    name,
                    2,
                    ByteCount::from_gibibytes_u32(1),
                )
            },
        )
        .await
        .unwrap();
    let id = created.instance.id();
    ctx.wait_for(id, InstanceState::Running).await;
    let now_on = ctx.view(id).await.active_vmm.map(|v| v.sled_id());
    if now_on != Some(sled) {
        ctx.nexus().instance_migrate(id, Some(sled)).await.unwrap();
        ctx.eventually(
            "the instance runs on the chosen sled",
            async |ctx: &TestContext| {
                let view = ctx.view(id).await;
                view.instance.runtime.migration().is_none()
                    && view.active_vmm.is_some_and(|v| v.sled_id() == sled)
            },
        )
        .await;
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sled_agent_loses_its_vmms_and_destroys_them_when_it_thaws() {
    let ctx = TestContext::with_sleds(2).await;
    let bound = Duration::from_secs(3);
    ctx.nexus().set_sled_unresponsive_after(bound);
    let frozen = SledAgentProcess::start(ctx.server().internal_address());
    ctx.eventually(
        "the sled agent process registered",
        async |ctx: &TestContext| sql(ctx, "SELECT count(*) FROM sled") == "3",
    )
    .await;
    let project = ctx.project("p").await;
    let restarts = running_on(&ctx, &project, "restarts", None, frozen.id).await;
    let stays = running_on(
        &ctx,
        &project,
        "stays-failed",
        Some(InstanceAutoRestartPolicy::Never),
        frozen.id,
    )
    .await;
    let old_vmms = [ctx.active_vmm(restarts).await, ctx.active_vmm(stays).await];
    let address = ctx
        .nexus()
        .datastore()
        .sled_fetch(frozen.id)
        .await
        .unwrap()
        .address();

    frozen.signal("STOP");
    let frozen_at = Instant::now();
    let sled = frozen.id;
    ctx.eventually_within(
        Duration::from_secs(30),
        "the frozen sled's VMMs failed",
        async |ctx: &TestContext| {
            sql(
                ctx,
                &format!(
                    "SELECT count(*) FROM vmm WHERE sled_id = '{sled}' AND time_deleted IS NULL"
                ),
            ) == "0"
        },
    )
    .await;
    println!(
        "VMMs on the frozen sled failed {:.1} s after SIGSTOP (bound {} s, watcher every 1 s)",
        frozen_at.elapsed().as_secs_f64(),
        bound.as_secs()
    );
    for vmm in old_vmms {
        assert_eq!(
            sql(
                &ctx,
                &format!(
                    "SELECT state || ' ' || (time_deleted IS NOT NULL) FROM vmm WHERE id = '{vmm}'"
                )
            ),
            "failed true",
            "VMM {vmm} is failed and retired"
        );
    }
    assert_eq!(
        sql(
            &ctx,
            &format!("SELECT count(*) FROM sled_reservation WHERE sled_id = '{sled}'")
        ),
        "0",
        "the frozen sled's reservations are freed"
    );
    assert_eq!(
        sql(
            &ctx,
            &format!("SELECT time_vmms_failed IS NOT NULL FROM sled WHERE id = '{sled}'")
        ),
        "t",
        "the frozen sled is closed to placement"
    );
    for id in [restarts, stays] {
        assert_eq!(ctx.view(id).await.run_state(), InstanceState::Failed);
    }

    // Auto-restart: the best-effort instance runs again, on another sled (the frozen one has
    // the most room now, but is closed); the other stays failed.
    let pass = ctx.nexus().reincarnate_failed_instances().await.unwrap();
    assert_eq!(pass.restarted, 1, "{pass:?}");
    ctx.wait_for(restarts, InstanceState::Running).await;
    let view = ctx.view(restarts).await;
    let new_sled = view.active_vmm.as_ref().unwrap().sled_id();
    assert_ne!(new_sled, sled, "restarted on another sled");
    assert!(view.instance.time_last_auto_restarted.is_some());
    assert_eq!(ctx.view(stays).await.run_state(), InstanceState::Failed);
    // In its cooldown, a second failure would wait: a pass now restarts nothing.
    let pass = ctx.nexus().reincarnate_failed_instances().await.unwrap();
    assert_eq!(pass.restarted, 0, "{pass:?}");

    // Thawed: it still has both VMMs in memory; Nexus has it destroy them before anything
    // is placed there again, and its late reports change nothing.
    let client = sled_client(address, Role::Nexus);
    frozen.signal("CONT");
    ctx.eventually_within(
        Duration::from_secs(30),
        "the thawed sled agent destroyed the failed VMMs and the sled reopened",
        async |ctx: &TestContext| {
            let on_sled = client.vmm_list().await.map(|l| l.into_inner().len());
            on_sled.is_ok_and(|n| n == 0)
                && sql(
                    ctx,
                    &format!("SELECT time_vmms_failed IS NULL FROM sled WHERE id = '{sled}'"),
                ) == "t"
        },
    )
    .await;
    for vmm in old_vmms {
        assert_eq!(
            sql(
                &ctx,
                &format!(
                    "SELECT state || ' ' || (time_deleted IS NOT NULL) FROM vmm WHERE id = '{vmm}'"
                )
            ),
            "failed true",
            "VMM {vmm} stays failed after its sled agent came back"
        );
    }
    assert_eq!(ctx.view(stays).await.run_state(), InstanceState::Failed);
    assert_eq!(ctx.view(restarts).await.run_state(), InstanceState::Running);
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn the_sdk_sets_the_auto_restart_policy_on_create_and_update() {
    use oxide::prelude::*;
    use oxide::types::InstanceAutoRestartPolicy as Policy;
    let ctx = TestContext::new().await;
    let url = format!("http://{}", ctx.server().external_address());
    let client = crate::authn_support::sdk(&url, &ctx.token);
    client
        .project_create()
        .body_map(|b| b.name("demo").description(""))
        .send()
        .await
        .unwrap();
    let created = client
        .instance_create()
        .project("demo")
        .body_map(|b| {
            b.name("web")
                .description("")
                .hostname("web")
                .ncpus(2u16)
                .memory(1073741824u64)
                .start(false)
                .auto_restart_policy(Some(Policy::Never))
        })
        .send()
        .await
        .unwrap();
    assert_eq!(created.auto_restart_policy, Some(Policy::Never));
    assert!(!created.auto_restart_enabled);
    assert_eq!(created.time_last_auto_restarted, None);

    let update = |policy: Option<Policy>, ncpus: u16| {
        client
            .instance_update()
            .project("demo")
            .instance("web")
            .body_map(move |b| {
                b.ncpus(ncpus)
                    .memory(1073741824u64)
                    .auto_restart_policy(policy)
                    .boot_disk(None)
                    .cpu_platform(None)
                    .enable_jumbo_frames(false)
            })
            .send()
    };
    // Unset: the default, best effort.
    let updated = update(None, 4).await.unwrap();
    assert_eq!(updated.auto_restart_policy, None);
    assert!(updated.auto_restart_enabled);
    assert_eq!(updated.ncpus.0, 4);
    let updated = update(Some(Policy::BestEffort), 2).await.unwrap();
    assert_eq!(updated.auto_restart_policy, Some(Policy::BestEffort));
    assert!(updated.auto_restart_enabled);

    // Running: the policy may change, the size may not.
    client
        .instance_start()
        .project("demo")
        .instance("web")
        .send()
        .await
        .unwrap();
    let id = ctx
        .nexus()
        .datastore()
        .instance_list_all(false)
        .await
        .unwrap()[0]
        .id();
    ctx.wait_for(id, InstanceState::Running).await;
    let updated = update(Some(Policy::Never), 2).await.unwrap();
    assert_eq!(updated.auto_restart_policy, Some(Policy::Never));
    match update(Some(Policy::Never), 8).await.unwrap_err() {
        oxide::Error::ErrorResponse(e) => {
            assert_eq!(e.status(), 409, "{e:?}");
            assert!(e.message.contains("stop it"), "{}", e.message);
        }
        other => panic!("expected a 409, got {other}"),
    }
    assert_eq!(
        sql(
            &ctx,
            "SELECT ncpus || ' ' || auto_restart_policy FROM instance"
        ),
        "2 never",
        "a refused update changes nothing"
    );
    ctx.assert_quiet_and_consistent().await;
}
