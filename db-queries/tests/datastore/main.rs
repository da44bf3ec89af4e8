//! The datastore against a real PostgreSQL: one throwaway cluster for this test binary, one
//! fresh database per test (see `halyard-test-db`).

mod disk_attach;
mod disks;
mod identity;
mod instance_transitions;
mod instances;
mod network;
mod operator;
mod projects;
mod reservations;
mod saga_adoption;
mod saga_log;
mod schema;
mod sled_silence;
mod vmms;

use halyard_common::ids::{InstanceUuid, ProjectUuid, SledUuid, VmmUuid};
use halyard_common::{ByteCount, InstanceNexusState, Name, SledBackend};
use halyard_db_model::{Instance, NewInstanceParams, Project, Sled, SledResources};
use halyard_db_queries::{DataStore, PoolConfig, SledChoice};
use halyard_test_db::TestDatabase;
use std::net::SocketAddr;
use std::time::Duration;

/// A datastore over its own fresh database.
pub struct Harness {
    pub db: TestDatabase,
    pub datastore: DataStore,
}

pub fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl Harness {
    pub(crate) fn new() -> Harness {
        Harness::with_pool(16)
    }

    pub fn with_pool(max_connections: u32) -> Harness {
        let db = TestDatabase::new();
        let datastore = DataStore::new(
            &log(),
            db.url(),
            PoolConfig {
                max_connections,
                connection_timeout: Duration::from_secs(30),
            },
        );
        Harness { db, datastore }
    }

    /// Runs SQL directly, behind the datastore's back (to corrupt or inspect rows).
    pub fn sql(&self, sql: &str) -> String {
        halyard_test_db::shared_cluster()
            .psql(self.db.name(), sql)
            .expect("psql")
    }

    pub async fn project(&self, name: &str) -> Project {
        self.datastore
            .project_create(Project::new(
                ProjectUuid::new_v4(),
                name.parse().unwrap(),
                String::new(),
            ))
            .await
            .expect("create project")
    }

    pub async fn instance(&self, project: &Project, name: &str) -> Instance {
        self.datastore
            .instance_insert(instance_params(project, name))
            .await
            .expect("insert instance")
    }

    /// An instance as the create saga leaves it: stopped, no VMM.
    pub async fn stopped_instance(&self, project: &Project, name: &str) -> Instance {
        let created = self.instance(project, name).await;
        let mut runtime = created.runtime.next();
        runtime.nexus_state = InstanceNexusState::NoVmm.into();
        assert!(
            self.datastore
                .instance_update_runtime(created.id(), &runtime)
                .await
                .unwrap()
        );
        self.datastore.instance_fetch(created.id()).await.unwrap()
    }

    /// Places (and releases) twenty one-VMM reservations on any sled and checks each landed
    /// on sled `only`.
    pub async fn assert_placement_picks_only(&self, only: SledUuid) {
        for _ in 0..20 {
            let reservation = self
                .datastore
                .sled_reserve(
                    VmmUuid::new_v4(),
                    InstanceUuid::new_v4(),
                    SledChoice::Any,
                    one_vmm(),
                )
                .await
                .unwrap();
            assert_eq!(reservation.sled_id(), only);
            self.datastore
                .sled_reservation_release(reservation.vmm_id())
                .await
                .unwrap();
        }
    }

    pub async fn sled(&self, hardware_threads: u32, ram_gib: u32) -> Sled {
        self.sled_of(SledBackend::Sim, hardware_threads, ram_gib)
            .await
    }

    pub async fn sled_of(&self, backend: SledBackend, hardware_threads: u32, ram_gib: u32) -> Sled {
        self.datastore
            .sled_upsert(Sled::new(
                SledUuid::new_v4(),
                "127.0.0.1:12345".parse::<SocketAddr>().unwrap(),
                backend,
                SledResources {
                    hardware_threads,
                    physical_ram: ByteCount::from_gibibytes_u32(ram_gib),
                },
            ))
            .await
            .expect("register sled")
    }
}

pub fn instance_params(project: &Project, name: &str) -> NewInstanceParams {
    NewInstanceParams {
        id: InstanceUuid::new_v4(),
        project_id: project.id(),
        name: name.parse::<Name>().unwrap(),
        description: format!("instance {name}"),
        ncpus: 2,
        memory: ByteCount::from_gibibytes_u32(1),
        hostname: name.to_string(),
        boot_disk_id: None,
        auto_restart_policy: None,
    }
}

/// What one VMM of the default instance shape needs.
pub fn one_vmm() -> SledResources {
    SledResources {
        hardware_threads: 2,
        physical_ram: ByteCount::from_gibibytes_u32(1),
    }
}
