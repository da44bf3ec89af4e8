//! Halyard's database schema: the full `dbinit.sql`, the upgrade steps between versions, and
//! the version this build of the software expects.
//!
//! Versions are `MAJOR.MINOR.PATCH`. `dbinit.sql` creates a database at [`SCHEMA_VERSION`]
//! directly; `migrations/<version>/upNN.sql` hold the steps that take a database from the
//! previous version to `<version>`, one statement per file (CockroachDB runs each DDL
//! statement best in its own transaction). The first version's steps start from an empty
//! database, so applying every step from the first version must give exactly what
//! `dbinit.sql` gives; the db-queries tests check that.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The schema version this build of Halyard reads and writes.
pub const SCHEMA_VERSION: SchemaVersion = SchemaVersion::new(1, 12, 0);

/// The SQL that creates the whole schema at [`SCHEMA_VERSION`].
pub const DBINIT_SQL: &str = include_str!("../dbinit.sql");

/// Where `dbinit.sql` lives in the source tree (for tools that load it with `psql -f`).
pub fn dbinit_sql_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dbinit.sql")
}

/// A schema version, ordered numerically (so 1.10.0 is after 1.9.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl SchemaVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> SchemaVersion {
        SchemaVersion {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a schema version (expected MAJOR.MINOR.PATCH, e.g. \"1.0.0\")")]
pub struct BadSchemaVersion(pub String);

impl FromStr for SchemaVersion {
    type Err = BadSchemaVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadSchemaVersion(s.to_string());
        let mut parts = s.split('.').map(|p| {
            // Reject "+1", " 1" and the like, which u32's parser would partly accept.
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u32>().map_err(|_| bad())
        });
        let version = SchemaVersion::new(
            parts.next().ok_or_else(bad)??,
            parts.next().ok_or_else(bad)??,
            parts.next().ok_or_else(bad)??,
        );
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

/// The steps that upgrade a database from the previous version to `version`.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: SchemaVersion,
    pub steps: Vec<MigrationStep>,
}

/// One SQL statement of a migration.
#[derive(Debug, Clone, Copy)]
pub struct MigrationStep {
    /// The file it came from, e.g. `up03.sql`.
    pub file: &'static str,
    pub sql: &'static str,
}

struct RawMigration {
    version: &'static str,
    steps: &'static [RawStep],
}

struct RawStep {
    file: &'static str,
    sql: &'static str,
}

static RAW_MIGRATIONS: &[RawMigration] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Every migration, oldest first.
///
/// # Panics
///
/// If a directory under `migrations/` is not a version; the unit tests catch that at build
/// time of the tree, long before anything runs in production.
pub fn all_migrations() -> Vec<Migration> {
    let mut migrations: Vec<Migration> = RAW_MIGRATIONS
        .iter()
        .map(|raw| Migration {
            version: raw
                .version
                .parse()
                .unwrap_or_else(|e| panic!("schema/migrations: {e}")),
            steps: raw
                .steps
                .iter()
                .map(|step| MigrationStep {
                    file: step.file,
                    sql: step.sql,
                })
                .collect(),
        })
        .collect();
    migrations.sort_by_key(|m| m.version);
    migrations
}

/// The migrations that take a database at `from` to [`SCHEMA_VERSION`], in order.
pub fn migrations_after(from: SchemaVersion) -> Vec<Migration> {
    all_migrations()
        .into_iter()
        .filter(|m| m.version > from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order_numerically() {
        let v: SchemaVersion = "1.10.0".parse().unwrap();
        assert!(v > "1.9.3".parse().unwrap());
        assert_eq!(v.to_string(), "1.10.0");
        for bad in [
            "", "1", "1.0", "1.0.0.0", "a.b.c", "1.-1.0", "1.+1.0", " 1.0.0",
        ] {
            assert!(bad.parse::<SchemaVersion>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn migrations_end_at_the_current_version_and_are_well_formed() {
        let all = all_migrations();
        assert!(!all.is_empty());
        assert_eq!(
            all.last().unwrap().version,
            SCHEMA_VERSION,
            "the newest migration folder must be SCHEMA_VERSION"
        );
        for migration in &all {
            assert!(
                !migration.steps.is_empty(),
                "{} has no up*.sql steps",
                migration.version
            );
            for (i, step) in migration.steps.iter().enumerate() {
                assert_eq!(
                    step.file,
                    format!("up{:02}.sql", i + 1),
                    "steps of {} must be numbered up01.sql, up02.sql, ... without gaps",
                    migration.version
                );
                assert!(
                    !step.sql.trim().is_empty(),
                    "{} {} is empty",
                    migration.version,
                    step.file
                );
            }
        }
    }

    #[test]
    fn dbinit_records_the_current_version() {
        assert!(
            DBINIT_SQL.contains(&format!("'{SCHEMA_VERSION}'")),
            "dbinit.sql must insert db_metadata version {SCHEMA_VERSION}"
        );
        assert!(dbinit_sql_path().exists());
    }
}
