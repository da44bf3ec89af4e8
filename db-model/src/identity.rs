//! Identity: silos, their users, API tokens, device authorization requests and the audit log.

use crate::schema::{api_token, audit_log, device_auth_request, silo, silo_user};
use crate::{DbName, DbTypedUuid};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::Name;
use halyard_common::ids::{
    ApiTokenKind, ApiTokenUuid, AuditLogEntryKind, DeviceAuthRequestKind, SiloKind, SiloUuid,
    UserKind, UserUuid,
};

/// The silo every user belongs to until Halyard has more than one (created by `dbinit.sql`).
pub const DEFAULT_SILO_ID: uuid::Uuid = uuid::Uuid::from_u128(0x001de000_5110_4000_8000_000000000000);

pub fn default_silo_id() -> SiloUuid {
    SiloUuid::from_untyped_uuid(DEFAULT_SILO_ID)
}

use halyard_common::ids::GenericUuid;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = silo, check_for_backend(diesel::pg::Pg))]
pub struct Silo {
    pub id: DbTypedUuid<SiloKind>,
    pub name: DbName,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
}

impl Silo {
    pub fn id(&self) -> SiloUuid {
        self.id.0
    }

    pub fn name(&self) -> &Name {
        &self.name.0
    }
}

/// A user of a silo.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = silo_user, check_for_backend(diesel::pg::Pg))]
pub struct SiloUser {
    pub id: DbTypedUuid<UserKind>,
    pub silo_id: DbTypedUuid<SiloKind>,
    pub name: DbName,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
}

impl SiloUser {
    pub fn new(silo_id: SiloUuid, name: Name) -> SiloUser {
        let now = crate::now();
        SiloUser {
            id: UserUuid::new_v4().into(),
            silo_id: silo_id.into(),
            name: name.into(),
            time_created: now,
            time_modified: now,
            time_deleted: None,
        }
    }

    pub fn id(&self) -> UserUuid {
        self.id.0
    }

    pub fn silo_id(&self) -> SiloUuid {
        self.silo_id.0
    }

    pub fn name(&self) -> &Name {
        &self.name.0
    }
}

/// An API token as stored: its secret's SHA-256 (hex), never the secret.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_token, check_for_backend(diesel::pg::Pg))]
pub struct ApiToken {
    pub id: DbTypedUuid<ApiTokenKind>,
    pub token_hash: String,
    pub user_id: DbTypedUuid<UserKind>,
    pub time_created: DateTime<Utc>,
    pub time_expires: Option<DateTime<Utc>>,
    pub time_revoked: Option<DateTime<Utc>>,
}

impl ApiToken {
    pub fn id(&self) -> ApiTokenUuid {
        self.id.0
    }

    pub fn user_id(&self) -> UserUuid {
        self.user_id.0
    }

    /// Whether the token may be used at `now`: not revoked and not expired.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.time_revoked.is_none() && self.time_expires.is_none_or(|expires| now < expires)
    }
}

/// An OAuth 2.0 device authorization grant in progress.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = device_auth_request, check_for_backend(diesel::pg::Pg))]
pub struct DeviceAuthRequest {
    pub id: DbTypedUuid<DeviceAuthRequestKind>,
    pub client_id: uuid::Uuid,
    pub device_code_hash: String,
    pub user_code: String,
    pub time_created: DateTime<Utc>,
    pub time_expires: DateTime<Utc>,
    pub token_ttl_seconds: Option<i64>,
    pub user_id: Option<DbTypedUuid<UserKind>>,
    pub time_confirmed: Option<DateTime<Utc>>,
    pub token_id: Option<DbTypedUuid<ApiTokenKind>>,
}

/// One mutating external request, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_log, check_for_backend(diesel::pg::Pg))]
pub struct AuditLogEntry {
    pub id: DbTypedUuid<AuditLogEntryKind>,
    pub time_started: DateTime<Utc>,
    pub time_completed: Option<DateTime<Utc>>,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub operation_id: String,
    /// `user` or `unauthenticated` (authentication failed: `actor_id` is `None`).
    pub actor_kind: String,
    pub actor_id: Option<uuid::Uuid>,
    pub actor_silo_id: Option<uuid::Uuid>,
    pub http_status: Option<i32>,
    pub error_code: Option<String>,
}

pub const AUDIT_ACTOR_USER: &str = "user";
pub const AUDIT_ACTOR_UNAUTHENTICATED: &str = "unauthenticated";
