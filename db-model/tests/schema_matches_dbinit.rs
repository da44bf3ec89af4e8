//! Fails when the diesel `table!` definitions drift from `schema/dbinit.sql`.
//!
//! Diesel's view of each table (column names from the SQL it generates, SQL types from the
//! `table!` types) is compared with `information_schema` of a database freshly built from
//! `dbinit.sql`, in both directions: a column or table on one side only, a type mismatch, or a
//! nullability mismatch is reported, all at once.

use diesel::QueryDsl;
use diesel::Table;
use diesel::pg::Pg;
use halyard_db_model::schema;
use halyard_test_db::{TestDatabase, shared_cluster};
use std::collections::BTreeMap;

/// (table, column) -> (diesel type name, nullable)
type ColumnMap = BTreeMap<(String, String), (String, bool)>;

/// Splits a tuple type name at its top-level commas.
fn split_tuple_type(type_name: &str) -> Vec<String> {
    let inner = type_name
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')');
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in inner.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        parts.push(current.trim().to_string());
    }
    parts
}

/// `diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>` -> ("Timestamptz", true)
fn simple_type(full: &str) -> (String, bool) {
    let (inner, nullable) = match full.strip_prefix("diesel::sql_types::Nullable<") {
        Some(rest) => (rest.trim_end_matches('>'), true),
        None => (full, false),
    };
    (
        inner.rsplit("::").next().unwrap_or(inner).to_string(),
        nullable,
    )
}

macro_rules! diesel_columns {
    ($map:ident, $($table:ident),* $(,)?) => {
        $(
            let query = schema::$table::table.select(schema::$table::table::all_columns());
            let sql = diesel::debug_query::<Pg, _>(&query).to_string();
            let select_list = sql
                .strip_prefix("SELECT ")
                .and_then(|rest| rest.split(" FROM ").next())
                .expect("diesel generates SELECT ... FROM");
            let names: Vec<String> = select_list
                .split(", ")
                .map(|qualified| qualified.rsplit('.').next().unwrap().trim_matches('"').to_string())
                .collect();
            let types = split_tuple_type(std::any::type_name::<
                <<schema::$table::table as Table>::AllColumns as diesel::Expression>::SqlType,
            >());
            assert_eq!(names.len(), types.len(), "{}: {sql}", stringify!($table));
            for (name, ty) in names.into_iter().zip(types) {
                $map.insert((stringify!($table).to_string(), name), simple_type(&ty));
            }
        )*
    };
}

fn diesel_view() -> ColumnMap {
    let mut map = ColumnMap::new();
    diesel_columns!(
        map,
        db_metadata,
        project,
        sled,
        sled_reservation,
        instance,
        vmm,
        migration,
        saga,
        saga_node_event,
        silo,
        silo_user,
        api_token,
        device_auth_request,
        audit_log,
        role_assignment,
        disk,
        region,
        snapshot,
        region_snapshot,
        vpc,
        vpc_subnet,
        network_interface,
        nexus,
    );
    map
}

/// What `information_schema` says, with PostgreSQL type names mapped to diesel's.
fn database_view(database: &TestDatabase) -> ColumnMap {
    let rows = shared_cluster()
        .psql(
            database.name(),
            "SELECT table_name, column_name, data_type, is_nullable \
             FROM information_schema.columns WHERE table_schema = 'public' \
             ORDER BY table_name, ordinal_position",
        )
        .expect("query information_schema");
    rows.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            let diesel_type = match fields[2] {
                "uuid" => "Uuid",
                "text" => "Text",
                "bigint" => "BigInt",
                "integer" => "Integer",
                "boolean" => "Bool",
                "timestamp with time zone" => "Timestamptz",
                "jsonb" => "Jsonb",
                "inet" => "Inet",
                other => other,
            };
            (
                (fields[0].to_string(), fields[1].to_string()),
                (diesel_type.to_string(), fields[3] == "YES"),
            )
        })
        .collect()
}

#[test]
fn schema_matches_dbinit() {
    let database = TestDatabase::new();
    let diesel = diesel_view();
    let sql = database_view(&database);
    assert!(
        sql.len() > 50,
        "dbinit.sql should define the whole schema, got {sql:?}"
    );

    let mut problems = Vec::new();
    for (key, diesel_column) in &diesel {
        match sql.get(key) {
            None => problems.push(format!("{}.{}: in table! but not in dbinit.sql", key.0, key.1)),
            Some(sql_column) if sql_column != diesel_column => problems.push(format!(
                "{}.{}: table! says {diesel_column:?}, dbinit.sql says {sql_column:?} (type, nullable)",
                key.0, key.1
            )),
            Some(_) => {}
        }
    }
    for key in sql.keys().filter(|key| !diesel.contains_key(*key)) {
        problems.push(format!(
            "{}.{}: in dbinit.sql but not in any table!",
            key.0, key.1
        ));
    }
    assert!(
        problems.is_empty(),
        "db-model has drifted from dbinit.sql:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_drift_check_sees_a_changed_column() {
    // The comparison above is only worth something if it can fail: change one column's
    // nullability in a fresh database and check the views now differ there.
    let database = TestDatabase::new();
    shared_cluster()
        .psql(
            database.name(),
            "ALTER TABLE vmm ALTER COLUMN time_deleted SET NOT NULL",
        )
        .expect("alter column");
    let sql = database_view(&database);
    let diesel = diesel_view();
    let key = ("vmm".to_string(), "time_deleted".to_string());
    assert_eq!(diesel[&key], ("Timestamptz".to_string(), true));
    assert_eq!(sql[&key], ("Timestamptz".to_string(), false));
}
