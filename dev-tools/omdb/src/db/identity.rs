//! `omdb db users|tokens|audit`: who may call the external API, and what was asked of it.
//!
//! Unlike the rest of `omdb db`, `users create`, `tokens create` and `tokens revoke` write:
//! they are how an operator gives someone access (and takes it away).

use crate::output::{opt, opt_time, print_json, print_rows, time};
use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use halyard_common::Name;
use halyard_common::ids::{ApiTokenUuid, SiloUuid, UserUuid};
use halyard_db_model::{SiloUser, default_silo_id};
use serde::Serialize;
use std::collections::BTreeMap;
use tabled::Tabled;

use super::store::Db;

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct UserRow {
    id: UserUuid,
    name: String,
    silo: SiloUuid,
    #[tabled(display = "time")]
    time_created: DateTime<Utc>,
}

fn user_row(user: &SiloUser) -> UserRow {
    UserRow {
        id: user.id(),
        name: user.name().to_string(),
        silo: user.silo_id(),
        time_created: user.time_created,
    }
}

pub(super) async fn cmd_users(db: &Db, json: bool) -> anyhow::Result<()> {
    let users = db.datastore.user_list().await.map_err(|e| db.err(e))?;
    let rows: Vec<UserRow> = users.iter().map(user_row).collect();
    print_rows(&rows, json, "no users")
}

pub(super) async fn cmd_user_create(
    db: &Db,
    name: &str,
    fleet_role: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    // Checked before the user is made, so a typo makes nothing.
    let fleet_role = fleet_role.map(fleet_role_name).transpose()?;
    let name: Name = name
        .parse()
        .map_err(|e| anyhow::anyhow!("{name:?} is not a valid user name: {e}"))?;
    let user = db
        .datastore
        .user_create(default_silo_id(), name)
        .await
        .map_err(|e| db.err(e))?;
    if let Some(role) = fleet_role {
        db.datastore
            .fleet_role_grant(user.id(), role)
            .await
            .map_err(|e| db.err(e))?;
    }
    print_rows(&[user_row(&user)], json, "")
}

/// The fleet roles there are.
const FLEET_ROLES: [&str; 2] = ["admin", "viewer"];

fn fleet_role_name(role: &str) -> anyhow::Result<&'static str> {
    FLEET_ROLES
        .into_iter()
        .find(|known| *known == role)
        .ok_or_else(|| anyhow::anyhow!("no fleet role {role:?} (fleet roles: admin, viewer)"))
}

async fn user_by_name(db: &Db, user: &str) -> anyhow::Result<SiloUser> {
    let name: Name = user
        .parse()
        .map_err(|e| anyhow::anyhow!("{user:?} is not a valid user name: {e}"))?;
    db.datastore
        .user_fetch_by_name(default_silo_id(), &name)
        .await
        .map_err(|e| db.err(e))
}

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct FleetRoleRow {
    user: String,
    user_id: uuid::Uuid,
    role: String,
}

pub(super) async fn cmd_fleet_roles(db: &Db, json: bool) -> anyhow::Result<()> {
    let users: BTreeMap<uuid::Uuid, String> = db
        .datastore
        .user_list()
        .await
        .map_err(|e| db.err(e))?
        .iter()
        .map(|u| (u.id().into_untyped_uuid(), u.name().to_string()))
        .collect();
    let rows: Vec<FleetRoleRow> = db
        .datastore
        .fleet_role_list()
        .await
        .map_err(|e| db.err(e))?
        .into_iter()
        .map(|row| FleetRoleRow {
            user: users
                .get(&row.identity_id)
                .cloned()
                .unwrap_or_else(|| "(deleted)".to_string()),
            user_id: row.identity_id,
            role: row.role_name,
        })
        .collect();
    print_rows(&rows, json, "no fleet roles")
}

pub(super) async fn cmd_fleet_role_grant(
    db: &Db,
    user: &str,
    role: &str,
    json: bool,
) -> anyhow::Result<()> {
    let role = fleet_role_name(role)?;
    let user = user_by_name(db, user).await?;
    db.datastore
        .fleet_role_grant(user.id(), role)
        .await
        .map_err(|e| db.err(e))?;
    cmd_fleet_roles(db, json).await
}

pub(super) async fn cmd_fleet_role_revoke(
    db: &Db,
    user: &str,
    role: &str,
    json: bool,
) -> anyhow::Result<()> {
    let role = fleet_role_name(role)?;
    let user = user_by_name(db, user).await?;
    let held = db
        .datastore
        .fleet_role_revoke(user.id(), role)
        .await
        .map_err(|e| db.err(e))?;
    if !held {
        bail!("{} does not hold the fleet role {role}", user.name());
    }
    cmd_fleet_roles(db, json).await
}

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct TokenRow {
    id: ApiTokenUuid,
    user: String,
    #[tabled(display = "time")]
    time_created: DateTime<Utc>,
    #[tabled(display = "opt_time")]
    time_expires: Option<DateTime<Utc>>,
    #[tabled(display = "opt_time")]
    time_revoked: Option<DateTime<Utc>>,
}

pub(super) async fn cmd_tokens(db: &Db, json: bool) -> anyhow::Result<()> {
    let users: BTreeMap<UserUuid, String> = db
        .datastore
        .user_list()
        .await
        .map_err(|e| db.err(e))?
        .iter()
        .map(|u| (u.id(), u.name().to_string()))
        .collect();
    let tokens = db.datastore.token_list().await.map_err(|e| db.err(e))?;
    let rows: Vec<TokenRow> = tokens
        .iter()
        .map(|t| TokenRow {
            id: t.id(),
            user: users
                .get(&t.user_id())
                .cloned()
                .unwrap_or_else(|| format!("{} (deleted)", t.user_id())),
            time_created: t.time_created,
            time_expires: t.time_expires,
            time_revoked: t.time_revoked,
        })
        .collect();
    print_rows(&rows, json, "no tokens")
}

/// A lifetime such as `90s`, `30m`, `12h` or `7d`.
pub(super) fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow::anyhow!("{text:?} is not a lifetime (e.g. 90s, 30m, 12h, 7d)");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    if number <= 0 {
        return Err(bad());
    }
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    number
        .checked_mul(seconds)
        .and_then(Duration::try_seconds)
        .ok_or_else(bad)
}

#[derive(Debug, Serialize)]
struct CreatedToken {
    id: ApiTokenUuid,
    user: String,
    time_expires: Option<DateTime<Utc>>,
    /// The secret: shown this once, kept nowhere.
    token: String,
}

pub(super) async fn cmd_token_create(
    db: &Db,
    user: &str,
    ttl: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let expires = ttl.map(parse_ttl).transpose()?.map(|ttl| Utc::now() + ttl);
    let name: Name = user
        .parse()
        .map_err(|e| anyhow::anyhow!("{user:?} is not a valid user name: {e}"))?;
    let user = db
        .datastore
        .user_fetch_by_name(default_silo_id(), &name)
        .await
        .map_err(|e| db.err(e))?;
    let (token, secret) = db
        .datastore
        .token_create(user.id(), expires)
        .await
        .map_err(|e| db.err(e))?;
    let created = CreatedToken {
        id: token.id(),
        user: user.name().to_string(),
        time_expires: token.time_expires,
        token: secret.expose().to_string(),
    };
    if json {
        return print_json(&created);
    }
    println!("token id:  {}", created.id);
    println!("user:      {}", created.user);
    println!("expires:   {}", opt_time(&created.time_expires));
    println!("token:     {}", created.token);
    println!("(the token is shown only now; Halyard keeps only its hash)");
    Ok(())
}

pub(super) async fn cmd_token_revoke(db: &Db, id: &str, json: bool) -> anyhow::Result<()> {
    let id: ApiTokenUuid = id
        .parse()
        .with_context(|| format!("{id:?} is not a token id"))?;
    let token = db.datastore.token_revoke(id).await.map_err(|e| db.err(e))?;
    let Some(revoked) = token.time_revoked else {
        bail!("token {id} was not revoked");
    };
    if json {
        return print_json(&serde_json::json!({ "id": id, "time_revoked": revoked }));
    }
    println!("token {id} revoked at {}", time(&revoked));
    Ok(())
}

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct AuditRow {
    #[tabled(display = "time")]
    time_started: DateTime<Utc>,
    /// Milliseconds from start to end; `-` for a request that has not ended.
    #[tabled(display = "opt")]
    ms: Option<i64>,
    #[tabled(display = "opt")]
    status: Option<i32>,
    method: String,
    path: String,
    operation: String,
    /// The user's name, or `unauthenticated`.
    actor: String,
    #[tabled(display = "opt")]
    error_code: Option<String>,
    request_id: String,
}

pub(super) async fn cmd_audit(db: &Db, limit: u32, json: bool) -> anyhow::Result<()> {
    let users: BTreeMap<uuid::Uuid, String> = db
        .datastore
        .user_list()
        .await
        .map_err(|e| db.err(e))?
        .iter()
        .map(|u| (u.id().into_untyped_uuid(), u.name().to_string()))
        .collect();
    let entries = db
        .datastore
        .audit_log_list(i64::from(limit))
        .await
        .map_err(|e| db.err(e))?;
    let rows: Vec<AuditRow> = entries
        .into_iter()
        .map(|e| AuditRow {
            time_started: e.time_started,
            ms: e
                .time_completed
                .map(|done| (done - e.time_started).num_milliseconds()),
            status: e.http_status,
            method: e.method,
            path: e.path,
            operation: e.operation_id,
            actor: match e.actor_id {
                Some(id) => users.get(&id).cloned().unwrap_or_else(|| id.to_string()),
                None => e.actor_kind,
            },
            error_code: e.error_code,
            request_id: e.request_id,
        })
        .collect();
    print_rows(&rows, json, "no audited requests")
}

use halyard_common::ids::GenericUuid;

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn lifetimes_have_a_number_and_a_unit() {
        assert_eq!(parse_ttl("90s").unwrap().num_seconds(), 90);
        assert_eq!(parse_ttl("30m").unwrap().num_seconds(), 1800);
        assert_eq!(parse_ttl("12h").unwrap().num_seconds(), 43200);
        assert_eq!(parse_ttl("7d").unwrap().num_seconds(), 604800);
        for bad in [
            "",
            "s",
            "10",
            "0h",
            "-1h",
            "1w",
            "1.5h",
            "99999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
