//! Identity: silos, users, API tokens and OAuth device authorization requests.
//!
//! Secrets (tokens, device codes) never reach the database: only their SHA-256 (see
//! [`crate::secret`]). A token is handed out once, when it is made.

use super::DataStore;
use crate::error::{TxnError, is_unique_violation, public_error_from_diesel};
use crate::secret::{Secret, hash_secret};
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{
    ApiTokenKind, ApiTokenUuid, DeviceAuthRequestUuid, GenericUuid, SiloUuid, UserKind, UserUuid,
};
use halyard_common::{Error, Name, ResourceType};
use halyard_db_model::schema::{api_token, device_auth_request, silo, silo_user};
use halyard_db_model::{ApiToken, DbName, DbTypedUuid, DeviceAuthRequest, Silo, SiloUser};

/// How long a device authorization request waits for its user to confirm it.
pub const DEVICE_AUTH_REQUEST_LIFETIME: Duration = Duration::minutes(5);

/// Letters of a user code: no vowels (no words), no look-alikes (0/O, 1/I/L).
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKMNPQRSTVWXZ";

/// The caller a valid token stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOwner {
    pub token: ApiToken,
    pub user: SiloUser,
}

/// What a poll of `POST /device/token` finds.
#[derive(Debug)]
pub enum DeviceTokenPoll {
    /// The user confirmed: here is the token (made now, handed out this once).
    Granted { token: ApiToken, secret: Secret },
    /// Not confirmed yet: poll again.
    Pending,
    /// No such request for this client, or it expired, or its token was already handed out.
    Invalid,
}

impl DataStore {
    pub async fn silo_fetch(&self, id: SiloUuid) -> Result<Silo, Error> {
        let conn = &mut *self.connection().await?;
        silo::table
            .filter(silo::id.eq(DbTypedUuid(id)))
            .filter(silo::time_deleted.is_null())
            .select(Silo::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| Error::not_found_by_id(ResourceType::Silo, id.into_untyped_uuid()))
    }

    /// Creates a user. Fails with `ObjectAlreadyExists` if the silo has one by that name, and
    /// `ObjectNotFound` if the silo does not exist.
    pub async fn user_create(&self, silo_id: SiloUuid, name: Name) -> Result<SiloUser, Error> {
        self.silo_fetch(silo_id).await?;
        let new = SiloUser::new(silo_id, name);
        let conn = &mut *self.connection().await?;
        diesel::insert_into(silo_user::table)
            .values(&new)
            .returning(SiloUser::as_returning())
            .get_result(conn)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::ObjectAlreadyExists {
                        type_name: ResourceType::User,
                        name: new.name().to_string(),
                    }
                } else {
                    public_error_from_diesel(e)
                }
            })
    }

    /// A live user of a silo, by name.
    pub async fn user_fetch_by_name(
        &self,
        silo_id: SiloUuid,
        name: &Name,
    ) -> Result<SiloUser, Error> {
        let conn = &mut *self.connection().await?;
        silo_user::table
            .filter(silo_user::silo_id.eq(DbTypedUuid(silo_id)))
            .filter(silo_user::name.eq(DbName(name.clone())))
            .filter(silo_user::time_deleted.is_null())
            .select(SiloUser::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| Error::not_found_by_name(ResourceType::User, name))
    }

    /// A live user, by id.
    pub async fn user_fetch(&self, id: UserUuid) -> Result<SiloUser, Error> {
        let conn = &mut *self.connection().await?;
        silo_user::table
            .filter(silo_user::id.eq(DbTypedUuid(id)))
            .filter(silo_user::time_deleted.is_null())
            .select(SiloUser::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| Error::not_found_by_id(ResourceType::User, id.into_untyped_uuid()))
    }

    /// Every live user, by silo and name (for operators).
    pub async fn user_list(&self) -> Result<Vec<SiloUser>, Error> {
        let conn = &mut *self.connection().await?;
        silo_user::table
            .filter(silo_user::time_deleted.is_null())
            .order((silo_user::silo_id.asc(), silo_user::name.asc()))
            .select(SiloUser::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// A new never-expiring token for the default silo's user `name`, made (and granted the
    /// fleet's `admin` role) if missing: how development environments, benchmarks and tests
    /// get a caller without a login. The secret is returned this once.
    pub async fn default_silo_admin_token(&self, name: &Name) -> Result<(SiloUser, Secret), Error> {
        let silo = halyard_db_model::default_silo_id();
        let user = match self.user_fetch_by_name(silo, name).await {
            Ok(user) => user,
            Err(Error::ObjectNotFound { .. }) => match self.user_create(silo, name.clone()).await {
                Ok(user) => user,
                // Another caller made it meanwhile.
                Err(Error::ObjectAlreadyExists { .. }) => {
                    self.user_fetch_by_name(silo, name).await?
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        self.fleet_role_grant(user.id(), "admin").await?;
        let (_, secret) = self.token_create(user.id(), None).await?;
        Ok((user, secret))
    }

    /// Makes a token for a live user, expiring at `time_expires` (never if `None`). The
    /// secret is returned this once; only its hash is stored.
    pub async fn token_create(
        &self,
        user_id: UserUuid,
        time_expires: Option<DateTime<Utc>>,
    ) -> Result<(ApiToken, Secret), Error> {
        let conn = &mut *self.connection().await?;
        conn.transaction(async |conn| token_insert(conn, user_id, time_expires).await)
            .await
            .map_err(TxnError::into_public)
    }

    /// The token whose secret this is and its user, if the token is neither revoked nor
    /// expired (by the database's clock) and its user not deleted; `None` otherwise, without
    /// saying which (callers answer every case alike).
    pub async fn token_authenticate(&self, secret: &str) -> Result<Option<TokenOwner>, Error> {
        let conn = &mut *self.connection().await?;
        let found = api_token::table
            .inner_join(silo_user::table)
            .filter(api_token::token_hash.eq(hash_secret(secret)))
            .filter(api_token::time_revoked.is_null())
            .filter(
                api_token::time_expires
                    .is_null()
                    .or(api_token::time_expires.gt(diesel::dsl::now)),
            )
            .filter(silo_user::time_deleted.is_null())
            .select((ApiToken::as_select(), SiloUser::as_select()))
            .first::<(ApiToken, SiloUser)>(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?;
        Ok(found.map(|(token, user)| TokenOwner { token, user }))
    }

    /// Revokes a token: every request presenting it from now on is refused. Revoking a
    /// revoked token keeps its first revocation time. `ObjectNotFound` for an unknown id.
    pub async fn token_revoke(&self, id: ApiTokenUuid) -> Result<ApiToken, Error> {
        let conn = &mut *self.connection().await?;
        diesel::update(api_token::table)
            .filter(api_token::id.eq(DbTypedUuid(id)))
            .filter(api_token::time_revoked.is_null())
            .set(api_token::time_revoked.eq(Utc::now()))
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        api_token::table
            .filter(api_token::id.eq(DbTypedUuid(id)))
            .select(ApiToken::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| Error::not_found_by_id(ResourceType::ApiToken, id.into_untyped_uuid()))
    }

    /// Every token (revoked and expired ones too), oldest first, for operators.
    pub async fn token_list(&self) -> Result<Vec<ApiToken>, Error> {
        let conn = &mut *self.connection().await?;
        api_token::table
            .order((api_token::time_created.asc(), api_token::id.asc()))
            .select(ApiToken::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Starts a device authorization grant (`POST /device/auth`): returns the request (with
    /// its user code) and the device code, a secret the client polls with.
    pub async fn device_auth_request_create(
        &self,
        client_id: uuid::Uuid,
        token_ttl_seconds: Option<u32>,
    ) -> Result<(DeviceAuthRequest, Secret), Error> {
        let conn = &mut *self.connection().await?;
        // A user code is short, so two live requests may draw the same one (1 in 19^8):
        // draw again.
        for _ in 0..5 {
            let device_code = Secret::new_device_code();
            let now = halyard_db_model::now();
            let request = DeviceAuthRequest {
                id: DeviceAuthRequestUuid::new_v4().into(),
                client_id,
                device_code_hash: device_code.hash(),
                user_code: new_user_code(),
                time_created: now,
                time_expires: now + DEVICE_AUTH_REQUEST_LIFETIME,
                token_ttl_seconds: token_ttl_seconds.map(i64::from),
                user_id: None,
                time_confirmed: None,
                token_id: None,
            };
            match diesel::insert_into(device_auth_request::table)
                .values(&request)
                .execute(conn)
                .await
            {
                Ok(_) => return Ok((request, device_code)),
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(public_error_from_diesel(e)),
            }
        }
        Err(Error::unavailable("no free user code; try again"))
    }

    /// A user confirms a device authorization request by its user code (`POST
    /// /device/confirm`). `ObjectNotFound` if no unexpired, unconfirmed request has that code.
    pub async fn device_auth_confirm(
        &self,
        user_code: &str,
        user_id: UserUuid,
    ) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        let updated = diesel::update(device_auth_request::table)
            .filter(device_auth_request::user_code.eq(normalize_user_code(user_code)))
            .filter(device_auth_request::time_confirmed.is_null())
            .filter(device_auth_request::time_expires.gt(diesel::dsl::now))
            .set((
                device_auth_request::user_id.eq(Some(DbTypedUuid(user_id))),
                device_auth_request::time_confirmed.eq(Some(Utc::now())),
            ))
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        if updated == 0 {
            return Err(Error::not_found_by_name(
                ResourceType::DeviceAuthRequest,
                "(the user code given; it may have expired or been confirmed already)",
            ));
        }
        Ok(())
    }

    /// A client polls for its token (`POST /device/token`). Once the request is confirmed the
    /// token is made and handed out, exactly once: the request records the token in the same
    /// transaction, conditionally on having none.
    pub async fn device_access_token_poll(
        &self,
        client_id: uuid::Uuid,
        device_code: &str,
    ) -> Result<DeviceTokenPoll, Error> {
        let device_code_hash = hash_secret(device_code);
        let conn = &mut *self.connection().await?;
        conn.transaction(async |conn| {
            let request = device_auth_request::table
                .filter(device_auth_request::device_code_hash.eq(&device_code_hash))
                .filter(device_auth_request::client_id.eq(client_id))
                .filter(device_auth_request::token_id.is_null())
                .select(DeviceAuthRequest::as_select())
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let Some(request) = request else {
                return Ok(DeviceTokenPoll::Invalid);
            };
            let Some(user_id) = request.user_id else {
                return Ok(if request.time_expires > Utc::now() {
                    DeviceTokenPoll::Pending
                } else {
                    DeviceTokenPoll::Invalid
                });
            };
            let expires = request
                .token_ttl_seconds
                .map(|ttl| Utc::now() + Duration::seconds(ttl));
            let (token, secret) = token_insert(conn, user_id.0, expires).await?;
            diesel::update(device_auth_request::table)
                .filter(device_auth_request::id.eq(request.id))
                .set(device_auth_request::token_id.eq(Some(token.id)))
                .execute(conn)
                .await?;
            Ok(DeviceTokenPoll::Granted { token, secret })
        })
        .await
        .map_err(TxnError::into_public)
    }
}

async fn token_insert(
    conn: &mut AsyncPgConnection,
    user_id: UserUuid,
    time_expires: Option<DateTime<Utc>>,
) -> Result<(ApiToken, Secret), TxnError> {
    let user_live: i64 = silo_user::table
        .filter(silo_user::id.eq(DbTypedUuid(user_id)))
        .filter(silo_user::time_deleted.is_null())
        .count()
        .get_result(conn)
        .await?;
    if user_live == 0 {
        return Err(Error::not_found_by_id(ResourceType::User, user_id.into_untyped_uuid()).into());
    }
    let secret = Secret::new_token();
    let token = ApiToken {
        id: DbTypedUuid::<ApiTokenKind>(ApiTokenUuid::new_v4()),
        token_hash: secret.hash(),
        user_id: DbTypedUuid::<UserKind>(user_id),
        time_created: halyard_db_model::now(),
        time_expires: time_expires.map(|t| t.trunc_to_micros()),
        time_revoked: None,
    };
    diesel::insert_into(api_token::table)
        .values(&token)
        .execute(conn)
        .await?;
    Ok((token, secret))
}

trait TruncToMicros {
    fn trunc_to_micros(self) -> Self;
}

impl TruncToMicros for DateTime<Utc> {
    fn trunc_to_micros(self) -> Self {
        use chrono::SubsecRound;
        self.trunc_subsecs(6)
    }
}

/// A user code: 8 letters shown as `XXXX-XXXX`.
fn new_user_code() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let letters: String = (0..8)
        .map(|_| char::from(USER_CODE_ALPHABET[rng.random_range(0..USER_CODE_ALPHABET.len())]))
        .collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

/// A user code as typed: case and the dash do not matter.
fn normalize_user_code(typed: &str) -> String {
    let letters: String = typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if letters.len() == 8 {
        format!("{}-{}", &letters[..4], &letters[4..])
    } else {
        letters
    }
}
