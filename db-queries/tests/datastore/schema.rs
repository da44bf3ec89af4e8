//! The schema: dbinit.sql and the migration steps agree, and Nexus's version check works.

use crate::Harness;
use halyard_db_queries::{DataStore, PoolConfig, SchemaVersionError};
use halyard_schema::{SCHEMA_VERSION, SchemaVersion};
use halyard_test_db::{TestDatabase, shared_cluster};

/// Everything that makes up a schema, as sorted text: tables, columns (type, nullability,
/// default), constraints, indexes. Comments and row data are not schema.
fn describe_schema(database: &str) -> String {
    let cluster = shared_cluster();
    let queries = [
        "SELECT table_name, table_type FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY 1",
        "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '-'), \
                ordinal_position \
         FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' \
         ORDER BY 1, 2",
    ];
    queries
        .iter()
        .map(|q| cluster.psql(database, q).expect("describe schema"))
        .collect::<Vec<_>>()
        .join("\n--\n")
}

fn datastore_for(db: &TestDatabase) -> DataStore {
    DataStore::new(&crate::log(), db.url(), PoolConfig::default())
}

#[tokio::test]
async fn migrating_from_empty_gives_exactly_what_dbinit_gives() {
    let from_dbinit = TestDatabase::new();
    let migrated = TestDatabase::new_empty();
    let datastore = datastore_for(&migrated);
    assert!(matches!(
        datastore.check_schema_version().await,
        Err(SchemaVersionError::NotInitialized)
    ));
    assert_eq!(datastore.schema_version().await.unwrap(), None);

    assert_eq!(
        datastore.apply_schema_migrations().await.unwrap(),
        SCHEMA_VERSION
    );
    datastore.check_schema_version().await.unwrap();
    // Applying again is a no-op.
    datastore.apply_schema_migrations().await.unwrap();

    let expected = describe_schema(from_dbinit.name());
    let actual = describe_schema(migrated.name());
    assert!(
        expected.lines().count() > 80,
        "schema description looks too small:\n{expected}"
    );
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .filter(|l| !actual.lines().any(|a| a == *l))
            .map(|l| format!("- {l}"))
            .chain(
                actual
                    .lines()
                    .filter(|l| !expected.lines().any(|e| e == *l))
                    .map(|l| format!("+ {l}")),
            )
            .collect();
        panic!(
            "dbinit.sql (-) and the migrations (+) disagree:\n{}",
            diff.join("\n")
        );
    }
}

#[tokio::test]
async fn the_comparison_notices_a_schema_difference() {
    // The check above must be able to fail: an extra index shows up in the description.
    let a = TestDatabase::new();
    let b = TestDatabase::new();
    shared_cluster()
        .psql(b.name(), "CREATE INDEX extra ON vmm (state)")
        .unwrap();
    assert_ne!(describe_schema(a.name()), describe_schema(b.name()));
    let c = TestDatabase::new();
    shared_cluster()
        .psql(
            c.name(),
            "ALTER TABLE vmm ALTER COLUMN state SET DEFAULT 'creating'",
        )
        .unwrap();
    assert_ne!(describe_schema(a.name()), describe_schema(c.name()));
}

#[tokio::test]
async fn the_version_check_names_both_versions_on_a_mismatch() {
    let h = Harness::new();
    h.datastore.check_schema_version().await.unwrap();
    assert_eq!(
        h.datastore.schema_version().await.unwrap(),
        Some(SCHEMA_VERSION)
    );

    h.sql("UPDATE db_metadata SET version = '0.9.0'");
    let err = h.datastore.check_schema_version().await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, SchemaVersionError::Mismatch { found, expected } if found == SchemaVersion::new(0, 9, 0) && expected == SCHEMA_VERSION)
    );
    assert!(
        message.contains("0.9.0") && message.contains(&SCHEMA_VERSION.to_string()),
        "{message}"
    );

    // A newer database than this build knows is refused too, and never "upgraded" backwards.
    h.sql("UPDATE db_metadata SET version = '99.0.0'");
    assert!(matches!(
        h.datastore.check_schema_version().await,
        Err(SchemaVersionError::Mismatch { .. })
    ));
    assert!(h.datastore.apply_schema_migrations().await.is_err());

    h.sql("UPDATE db_metadata SET version = 'garbage'");
    assert!(matches!(
        h.datastore.check_schema_version().await,
        Err(SchemaVersionError::Unreadable(_))
    ));
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_a_panic() {
    // Nothing listens on port 1.
    let datastore = DataStore::new(
        &crate::log(),
        "postgresql://postgres@127.0.0.1:1/nowhere",
        PoolConfig {
            max_connections: 2,
            connection_timeout: std::time::Duration::from_millis(500),
        },
    );
    let err = datastore
        .project_fetch(&"p".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 503, "{err:?}");
    assert!(err.is_retryable());
    assert!(matches!(
        datastore.check_schema_version().await,
        Err(SchemaVersionError::Database(_))
    ));
}
