//! `halyard-bench disks`: disk creates and deletes per second, then instance lifecycles per
//! second without a disk and with one new disk each, measured side by side in the same run
//! (see the crate docs).

use crate::system::{Extras, Figures, PROJECT, System, lifecycle_window, round};
use anyhow::bail;
use clap::Parser;
use halyard_common::{BlockSize, ByteCount, Name, NameOrId};
use halyard_nexus_external_client::types;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct DisksArgs {
    /// Simulated sleds, each offering storage.
    #[arg(long, default_value_t = 6)]
    pub sleds: usize,
    /// Concurrent clients, each creating and deleting one disk after another.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Measured time.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    /// Size of each disk, in MiB (its three regions hold that much on three sleds).
    #[arg(long, default_value_t = 1024)]
    pub disk_mib: u32,
    /// Measured time of each lifecycle window (without disks, then with one disk per
    /// instance; each after a 2 s warm-up). 0: skip the lifecycle comparison.
    #[arg(long, default_value_t = 15)]
    pub lifecycle_secs: u64,
    /// How often a lifecycle client waiting for running or stopped looks at the instance.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Print the results as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What one client measured.
#[derive(Default)]
struct Measured {
    creates: Vec<Duration>,
    deletes: Vec<Duration>,
    errors: Vec<String>,
}

async fn client_loop(
    client: halyard_nexus_external_client::Client,
    id: u32,
    disk_size: ByteCount,
    until: Instant,
) -> Measured {
    let mut measured = Measured::default();
    let project = NameOrId::Name(PROJECT.parse::<Name>().expect("valid"));
    let block_size = BlockSize::try_from(4096u32).expect("a block size");
    let mut round = 0u64;
    while Instant::now() < until {
        round += 1;
        let name: Name = format!("c{id}-d{round}").parse().expect("valid");
        let began = Instant::now();
        let created = client
            .disk_create()
            .project(project.clone())
            .body(types::DiskCreate {
                name: name.clone(),
                description: String::new(),
                disk_backend: types::DiskBackend::Distributed(types::DiskSource::Blank {
                    block_size,
                }),
                size: disk_size,
            })
            .send()
            .await;
        let disk = match created {
            Ok(disk) => disk.into_inner(),
            Err(e) => {
                measured.errors.push(format!("create {name}: {e}"));
                continue;
            }
        };
        measured.creates.push(began.elapsed());
        let began = Instant::now();
        let by_id = NameOrId::Id(halyard_common::ids::GenericUuid::into_untyped_uuid(disk.id));
        match client.disk_delete().disk(by_id).send().await {
            Ok(_) => measured.deletes.push(began.elapsed()),
            Err(e) => measured.errors.push(format!("delete {name}: {e}")),
        }
    }
    measured
}

pub async fn run(args: DisksArgs) -> anyhow::Result<()> {
    if args.sleds < 3 || args.clients == 0 || args.disk_mib == 0 {
        bail!("need --sleds >= 3 (a disk's three regions), --clients >= 1, --disk-mib >= 1");
    }
    let disk_size = ByteCount::from_mebibytes_u32(args.disk_mib);
    // Room for every client's disk on every sled, so no create is refused for storage.
    let storage = ByteCount::try_from(disk_size.to_bytes() * u64::from(args.clients))?;
    let mut system = System::start(false).await?;
    // Room on every sled for every client's instance too (the lifecycle windows).
    system
        .add_sleds_with_storage(args.sleds, args.clients, storage)
        .await?;
    let from = Instant::now();
    let until = from + Duration::from_secs(args.duration_secs);
    let clients: Vec<_> = (0..args.clients)
        .map(|id| tokio::spawn(client_loop(system.client.clone(), id, disk_size, until)))
        .collect();
    let mut all = Measured::default();
    for client in clients {
        let measured = client.await?;
        all.creates.extend(measured.creates);
        all.deletes.extend(measured.deletes);
        all.errors.extend(measured.errors);
    }
    let elapsed = from.elapsed().as_secs_f64();
    let lifecycles = if args.lifecycle_secs > 0 {
        let poll = Duration::from_millis(args.poll_ms);
        let window = Duration::from_secs(args.lifecycle_secs);
        // Both windows without a network interface, so the disk is the only difference.
        let bare = Extras {
            disk: None,
            nic: false,
        };
        let without = lifecycle_window(&system, args.clients, "n", poll, window, bare).await?;
        let with = lifecycle_window(
            &system,
            args.clients,
            "w",
            poll,
            window,
            Extras {
                disk: Some(disk_size),
                ..bare
            },
        )
        .await?;
        Some((without, with))
    } else {
        None
    };
    let violations = system.violations()?;
    let left = system.sql_u64("SELECT count(*) FROM region")?;
    system.close().await?;

    let creates_per_s = all.creates.len() as f64 / elapsed;
    let deletes_per_s = all.deletes.len() as f64 / elapsed;
    let create = Figures::of(all.creates.iter().copied());
    let delete = Figures::of(all.deletes.iter().copied());
    if args.json {
        let value = json!({
            "sleds": args.sleds,
            "clients": args.clients,
            "duration_s": round(elapsed),
            "disk_mib": args.disk_mib,
            "creates_per_s": round(creates_per_s),
            "deletes_per_s": round(deletes_per_s),
            "create": create.json(),
            "delete": delete.json(),
            "errors": all.errors.len(),
            "first_errors": all.errors.iter().take(5).collect::<Vec<_>>(),
            "regions_left": left,
            "lifecycles": lifecycles.as_ref().map(|(without, with)| json!({
                "window_s": args.lifecycle_secs,
                "without_disk": without.json(),
                "with_one_disk": with.json(),
                "rate_ratio_with_to_without": round(with.rate / without.rate.max(f64::MIN_POSITIVE)),
            })),
            "violations": violations,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "{} clients, {} sleds, {} MiB disks, {elapsed:.1} s: {creates_per_s:.1} disk creates/s, \
         {deletes_per_s:.1} deletes/s, {} error(s)",
        args.clients,
        args.sleds,
        args.disk_mib,
        all.errors.len()
    );
    println!("{}", create.line("create"));
    println!("{}", delete.line("delete"));
    if let Some(e) = all.errors.first() {
        println!("first error: {e}");
    }
    println!("regions left after the last delete: {left}");
    if let Some((without, with)) = &lifecycles {
        println!(
            "instance lifecycles (create, start, running, stop, stopped, delete), {} clients, \
             {} s each, side by side:",
            args.clients, args.lifecycle_secs
        );
        println!("{}", without.line("without a disk"));
        println!(
            "{}",
            with.line(&format!("with one {} MiB disk", args.disk_mib))
        );
        println!(
            "  with/without lifecycle rate: {:.2}",
            with.rate / without.rate.max(f64::MIN_POSITIVE)
        );
    }
    if violations.is_empty() {
        println!("invariant checker: clean");
    } else {
        println!("invariant checker: {} violation(s):", violations.len());
        for v in violations.iter().take(20) {
            println!("  {v}");
        }
    }
    Ok(())
}
