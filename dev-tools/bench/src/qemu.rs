//! `halyard-bench qemu`: real VMs through the external API (see the crate docs).

use anyhow::{Context, bail};
use clap::Parser;
use halyard_common::ids::{NexusUuid, SledUuid};
use halyard_common::{ByteCount, InstanceState, MigrationState, SledBackend};
use halyard_nexus_external_client::Client;
use halyard_nexus_external_client::types::InstanceMigrate;
use halyard_sled_agent::guest_console::BOOT_BANNER;
use slog::KV;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct QemuArgs {
    /// Guests started (and stopped) at once.
    #[arg(long, default_value_t = 4)]
    pub guests: u16,
    /// Memory of each guest, in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u32,
    /// Live migrations of one guest (alternating between the two sleds).
    #[arg(long, default_value_t = 4)]
    pub migrations: u16,
}

const PATIENCE: Duration = Duration::from_secs(300);
/// Goal: N guests started at once reach their banners within this multiple of one guest's
/// time (2 is the fair share of two cores).
const BOOT_RATIO_GOAL: f64 = 2.5;
/// Goal: a stop sent while the guest still boots (deaf to its power button) ends it within
/// this.
const BOOTING_STOP_GOAL: Duration = Duration::from_secs(1);
const PROJECT: &str = "bench";

pub async fn run(args: QemuArgs) -> anyhow::Result<()> {
    let guest_dir = halyard_sled_agent::build_guest_image().await?;
    let db = halyard_test_db::TestDatabase::new();
    let figures = MigrationLog::default();
    let log = slog::Logger::root(figures.clone(), slog::o!());
    let nexus = halyard_nexus::Server::start(
        &halyard_nexus::Config {
            retirement_interval_ms: 1000,
            // Off (an hour): the benchmark measures the lifecycles it drives, nothing else.
            instance_reincarnation_interval_ms: 3_600_000,
            // Sagas and retirements push mappings themselves; a periodic pass would only add load.
            v2p_reconciliation_interval_ms: 3_600_000,
            ..halyard_nexus::Config::new(
                NexusUuid::new_v4(),
                db.url().to_string(),
                "127.0.0.1:0".parse()?,
                "127.0.0.1:0".parse()?,
                halyard_tls::pki::test_pki().files(halyard_tls::Role::Nexus)?,
            )
        },
        &log,
    )
    .await?;
    let state_dir = std::env::temp_dir().join(format!(
        "hq-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    ));
    let mut sleds = Vec::new();
    for _ in 0..2 {
        let sled_id = SledUuid::new_v4();
        let config = halyard_sled_agent::Config {
            sled_id,
            listen_address: "127.0.0.1:0".parse()?,
            nexus_address: nexus.internal_address(),
            backend: SledBackend::Qemu,
            hardware_threads: u32::from(args.guests).max(1),
            physical_ram: ByteCount::from_mebibytes_u32(args.memory_mib)
                .to_bytes()
                .checked_mul(u64::from(args.guests))
                .map(ByteCount::try_from)
                .context("too much memory")??,
            registration_interval_ms: 1000,
            sim: Default::default(),
            qemu: halyard_sled_agent::QemuConfig {
                guest_dir: guest_dir.clone(),
                state_dir: state_dir.clone(),
                ..Default::default()
            },
            storage: Default::default(),
            tls: halyard_tls::pki::test_pki().files(halyard_tls::Role::Sled(sled_id))?,
        };
        sleds.push(halyard_sled_agent::Server::start(&config, &log).await?);
    }
    let accelerator = sleds[0]
        .agent()
        .inventory()
        .await
        .accelerator
        .map(|a| a.to_string())
        .unwrap_or_default();
    let client = crate::system::authenticated_client(&nexus).await?;
    wait_until("both sleds register", || async {
        Ok(client.sled_list().send().await?.into_inner().items.len() == 2)
    })
    .await?;
    client
        .project_create()
        .body_map(|body| {
            body.name(PROJECT.parse::<halyard_common::Name>().expect("valid"))
                .description(String::new())
        })
        .send()
        .await?;

    println!(
        "QEMU benchmark: {} guest(s) of {} MiB, 1 vCPU, accelerator {accelerator}, {} host CPU(s)",
        args.guests,
        args.memory_mib,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let names: Vec<String> = (0..args.guests).map(|i| format!("guest-{i}")).collect();
    for name in &names {
        client
            .instance_create()
            .project(PROJECT)
            .body_map(|body| {
                body.name(name.parse::<halyard_common::Name>().expect("a valid name"))
                    .description(String::new())
                    .hostname(name.clone())
                    .ncpus(1u16)
                    .memory(ByteCount::from_mebibytes_u32(args.memory_mib))
                    .start(false)
            })
            .send()
            .await?;
    }
    // One guest alone first: what N at once is measured against, in the same run.
    let alone = start_to_banner(&client, &names[0]).await?;
    stop_to_stopped(&client, &names[0]).await?;
    print_figures("one guest alone: start → boot banner", &[alone]);
    let starts =
        futures::future::try_join_all(names.iter().map(|name| start_to_banner(&client, name)))
            .await?;
    print_figures("start → boot banner on the console", &starts);
    let slowest = starts.iter().max().copied().unwrap_or_default();
    let ratio = slowest.as_secs_f64() / alone.as_secs_f64().max(f64::MIN_POSITIVE);
    print_goal(
        &format!(
            "{} guests started at once all reach their banners within {BOOT_RATIO_GOAL}x one \
             guest's time",
            args.guests
        ),
        &format!(
            "slowest {:.0} ms / alone {:.0} ms = {ratio:.2}x",
            ms(slowest),
            ms(alone)
        ),
        ratio <= BOOT_RATIO_GOAL,
    );
    let stops =
        futures::future::try_join_all(names.iter().map(|name| stop_to_stopped(&client, name)))
            .await?;
    print_figures("stop → instance stopped (VMM destroyed)", &stops);
    let (booting_stop, banner_seen) = stop_while_booting(&client, &names[0]).await?;
    print_goal(
        "a stop sent while the guest boots completes in under 1 s",
        &format!(
            "{:.0} ms{}",
            ms(booting_stop),
            if banner_seen {
                " (but the guest had booted before the stop: not a booting guest)"
            } else {
                ""
            }
        ),
        booting_stop < BOOTING_STOP_GOAL && !banner_seen,
    );

    if args.migrations > 0 {
        let name = &names[0];
        start_to_banner(&client, name).await?;
        let mut totals = Vec::new();
        for _ in 0..args.migrations {
            totals.push(migrate(&client, name).await?);
        }
        print_figures("migrate → both sides completed", &totals);
        let downtimes = figures.downtimes();
        let qemu_totals = figures.totals();
        print_figures("  of which QEMU's transfer (its own total)", &qemu_totals);
        print_figures("  guest downtime (as QEMU measured it)", &downtimes);
        stop_to_stopped(&client, name).await?;
    }

    for sled in sleds {
        sled.close().await?;
    }
    nexus.close().await?;
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
}

async fn start_to_banner(client: &Client, name: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let before = console(client, name).await.unwrap_or_default();
    let banners_before = before.matches(BOOT_BANNER).count();
    client
        .instance_start()
        .project(PROJECT)
        .instance(name)
        .send()
        .await?;
    let wanted = format!("{BOOT_BANNER}{name}");
    wait_until(&format!("{name}'s boot banner"), || async {
        let text = console(client, name).await.unwrap_or_default();
        Ok(text.matches(&wanted).count() > banners_before)
    })
    .await?;
    Ok(started.elapsed())
}

/// The console's whole history (None while the instance has no running VMM).
async fn console(client: &Client, name: &str) -> Option<String> {
    let data = client
        .instance_serial_console()
        .project(PROJECT)
        .instance(name)
        .from_start(0)
        .max_bytes(1 << 20)
        .send()
        .await
        .ok()?
        .into_inner();
    Some(String::from_utf8_lossy(&data.data).into_owned())
}

async fn stop_to_stopped(client: &Client, name: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    client
        .instance_stop()
        .project(PROJECT)
        .instance(name)
        .send()
        .await?;
    wait_until(&format!("{name} to stop"), || async {
        let view = client
            .instance_view()
            .project(PROJECT)
            .instance(name)
            .send()
            .await?
            .into_inner();
        Ok(view.run_state == InstanceState::Stopped)
    })
    .await?;
    Ok(started.elapsed())
}

/// Starts `name` and stops it as soon as the start is accepted, while its guest boots: how
/// long the stop took, and whether the banner was already out when the stop was sent (then
/// it measured no booting guest).
async fn stop_while_booting(client: &Client, name: &str) -> anyhow::Result<(Duration, bool)> {
    let banners_before = console(client, name)
        .await
        .unwrap_or_default()
        .matches(BOOT_BANNER)
        .count();
    client
        .instance_start()
        .project(PROJECT)
        .instance(name)
        .send()
        .await?;
    // Read just before the stop (a few milliseconds): the VMM's console ends with it.
    let banner_seen = console(client, name)
        .await
        .is_some_and(|text| text.matches(BOOT_BANNER).count() > banners_before);
    let took = stop_to_stopped(client, name).await?;
    Ok((took, banner_seen))
}

async fn migrate(client: &Client, name: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let migration = client
        .instance_migrate()
        .project(PROJECT)
        .instance(name)
        .body(InstanceMigrate { dst_sled_id: None })
        .send()
        .await?
        .into_inner();
    let id = migration
        .migration_id
        .context("the migrate response names no migration")?;
    wait_until(&format!("migration {id}"), || async {
        let migrations = client
            .instance_migration_list()
            .project(PROJECT)
            .instance(name)
            .send()
            .await?
            .into_inner();
        let Some(this) = migrations.iter().find(|m| m.id == id) else {
            return Ok(false);
        };
        if this.source_state == MigrationState::Failed
            || this.target_state == MigrationState::Failed
        {
            bail!("migration {id} failed");
        }
        Ok(this.source_state == MigrationState::Completed
            && this.target_state == MigrationState::Completed)
    })
    .await?;
    Ok(started.elapsed())
}

async fn wait_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One goal of the benchmark: what it asks, what was measured, met or missed.
fn print_goal(goal: &str, measured: &str, met: bool) {
    let verdict = if met { "met" } else { "MISSED" };
    println!("goal: {goal}: {measured} — {verdict}");
}

fn print_figures(what: &str, samples: &[Duration]) {
    if samples.is_empty() {
        println!("{what}: no samples");
        return;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let mean = sorted.iter().map(|d| ms(*d)).sum::<f64>() / sorted.len() as f64;
    println!(
        "{what}: n={} min={:.0} ms  median={:.0} ms  mean={:.0} ms  max={:.0} ms",
        sorted.len(),
        ms(sorted[0]),
        ms(sorted[sorted.len() / 2]),
        mean,
        ms(sorted[sorted.len() - 1])
    );
}

/// A log drain that discards everything but keeps the figures of each completed migration
/// (the source sled agent logs QEMU's own total time and the guest's downtime).
#[derive(Clone, Default)]
struct MigrationLog {
    records: Arc<Mutex<Vec<(Duration, Duration)>>>,
}

impl MigrationLog {
    fn totals(&self) -> Vec<Duration> {
        self.records.lock().unwrap().iter().map(|r| r.0).collect()
    }
    fn downtimes(&self) -> Vec<Duration> {
        self.records.lock().unwrap().iter().map(|r| r.1).collect()
    }
}

impl slog::Drain for MigrationLog {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if record.msg().to_string() != "migration completed" {
            return Ok(());
        }
        let mut fields = Fields::default();
        let _ = record.kv().serialize(record, &mut fields);
        if let (Some(total), Some(downtime)) = (fields.total_ms, fields.downtime_ms) {
            self.records.lock().unwrap().push((
                Duration::from_millis(total),
                Duration::from_millis(downtime),
            ));
        }
        Ok(())
    }
}

#[derive(Default)]
struct Fields {
    total_ms: Option<u64>,
    downtime_ms: Option<u64>,
}

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let parsed = value.to_string().parse().ok();
        match key.as_ref() {
            "qemu_total_ms" => self.total_ms = parsed,
            "downtime_ms" => self.downtime_ms = parsed,
            _ => {}
        }
        Ok(())
    }
}
