//! Simulated sled agents in a child process: `halyard-bench sled-host` (hidden) starts them,
//! pointed at a Nexus, and keeps them until its standard input ends. The benchmark runs
//! itself as that child so that Nexus's memory (the benchmark's process) and the sled
//! agents' (the child's) are measured apart.
//!
//! The sleds' certificates are issued by the parent's CA (the test PKI of its process): the
//! child is given the directory of their files and the sled ids.

use crate::system::INSTANCE_MEMORY_MIB;
use anyhow::{Context, bail};
use clap::Parser;
use halyard_common::ids::SledUuid;
use halyard_common::{ByteCount, SledBackend};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

#[derive(Parser)]
pub struct SledHostArgs {
    /// Nexus's internal API.
    #[arg(long)]
    pub nexus: SocketAddr,
    /// The directory of the CA's and the sleds' certificate files.
    #[arg(long)]
    pub pki_dir: PathBuf,
    /// A file of sled ids, one a line: a sled agent for each.
    #[arg(long)]
    pub ids_file: PathBuf,
    /// The index of the first sled among all the benchmark's (picks its loopback address).
    #[arg(long, default_value_t = 0)]
    pub first_index: usize,
    /// Room on each sled, in benchmark instances.
    #[arg(long)]
    pub instances: u32,
    #[arg(long, default_value_t = 10_000)]
    pub registration_interval_ms: u64,
}

/// The most sled agents one child hosts: each holds about five file descriptors (its
/// listening sockets, its connections to Nexus and from its TLS front).
pub const MAX_SLEDS_A_HOST: usize = 2_000;

/// What the child prints on its standard output once every sled agent has started.
const READY: &str = "ready";

/// A child process hosting sled agents.
pub struct SledHost {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    pub sleds: usize,
}

impl SledHost {
    /// Issues `count` sleds' certificates, starts the child with them and waits until it has
    /// started every sled agent (not until they have registered).
    pub async fn spawn(
        nexus: SocketAddr,
        count: usize,
        first_index: usize,
        instances: u32,
    ) -> anyhow::Result<SledHost> {
        let pki = halyard_tls::pki::test_pki();
        let mut ids = String::new();
        for _ in 0..count {
            let id = SledUuid::new_v4();
            pki.files(halyard_tls::Role::Sled(id))?;
            ids.push_str(&format!("{id}\n"));
        }
        let ids_file = pki.dir().join(format!("sled-host-{first_index}.ids"));
        std::fs::write(&ids_file, ids)?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("sled-host")
            .arg("--nexus")
            .arg(nexus.to_string())
            .arg("--pki-dir")
            .arg(pki.dir())
            .arg("--ids-file")
            .arg(&ids_file)
            .arg("--first-index")
            .arg(first_index.to_string())
            .arg("--instances")
            .arg(instances.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the sled host")?;
        let stdin = child.stdin.take();
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().context("no stdout")?).lines();
        match lines.next_line().await? {
            Some(line) if line == READY => {}
            other => bail!("the sled host did not start its sled agents (it said {other:?})"),
        }
        Ok(SledHost {
            child,
            stdin,
            sleds: count,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The child's resident memory, in bytes.
    pub fn resident_bytes(&self) -> Option<u64> {
        crate::system::resident_bytes(&self.pid().to_string())
    }

    /// Ends the child (closing its standard input) and waits for it, killing it if it takes
    /// more than a few seconds.
    pub async fn close(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// The loopback address of the `index`th sled's API: sleds are spread over 127.1.0.0/16 so
/// that their listening ports do not run out.
fn sled_address(index: usize) -> SocketAddr {
    let [_, _, high, low] = u32::try_from(index % 65_024 + 256)
        .expect("small")
        .to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 1, high, low)), 0)
}

/// The child: starts the sled agents, says so, and keeps them until standard input ends.
pub async fn run(args: SledHostArgs) -> anyhow::Result<()> {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let ids = std::fs::read_to_string(&args.ids_file)?;
    let mut sleds = Vec::new();
    for (i, line) in ids.lines().enumerate() {
        let sled_id: SledUuid = line.parse().context("a sled id")?;
        let stem = format!("sled-{sled_id}");
        let config = halyard_sled_agent::Config {
            sled_id,
            listen_address: sled_address(args.first_index + i),
            nexus_address: args.nexus,
            backend: SledBackend::Sim,
            hardware_threads: args.instances,
            physical_ram: ByteCount::from_mebibytes_u32(INSTANCE_MEMORY_MIB)
                .to_bytes()
                .checked_mul(u64::from(args.instances))
                .map(ByteCount::try_from)
                .context("too much memory")??,
            registration_interval_ms: args.registration_interval_ms,
            sim: halyard_sled_agent::SimConfig::default(),
            qemu: Default::default(),
            storage: Default::default(),
            tls: halyard_tls::TlsFiles {
                ca_cert: args.pki_dir.join("ca.pem"),
                cert: args.pki_dir.join(format!("{stem}.pem")),
                key: args.pki_dir.join(format!("{stem}-key.pem")),
            },
        };
        sleds.push(
            halyard_sled_agent::Server::start(&config, &log)
                .await
                .with_context(|| format!("starting sled agent {i}"))?,
        );
    }
    println!("{READY}");
    // Until the parent closes standard input (or ends).
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
    std::process::exit(0);
}
