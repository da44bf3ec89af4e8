//! Authentication and the audit log: the one place every external request passes through to
//! learn who is calling, and where every mutating one is recorded.
//!
//! Every external handler runs its work through [`external_request`] (or, for the two device
//! login endpoints a client calls before it has a token, [`unauthenticated_request`]). It
//!
//! 1. authenticates the caller from `Authorization: Bearer <token>`, or, on a request without
//!    that header, from the web console's `session` cookie (see [`crate::console`]; refused
//!    on a request whose `Origin` is another origin): the token (a session is one too) is
//!    looked up by its SHA-256 and must be neither revoked nor expired, its user not deleted.
//!    Anything else (no credentials, several, a value that is not ASCII, too long, not
//!    `Bearer`, not token-shaped, a cookie sent cross-origin, unknown, expired, revoked) is
//!    401 with Oxide's body (`Unauthorized`, "credentials missing or invalid"), the same for
//!    every case; which one it was is logged (never the token);
//! 2. hands the work an [`OpContext`] naming the [`Actor`]: what authorization (coming next)
//!    decides from;
//! 3. records a mutating request (POST, PUT, DELETE) in the audit log before the work starts
//!    and completes the record with the status when it ends; a refused authentication on a
//!    mutating request is recorded too, with no actor. A mutation that cannot be recorded is
//!    not made (503).

use crate::app::Nexus;
use crate::console;
use dropshot::{
    Body, HttpError, HttpResponseAccepted, HttpResponseCreated, HttpResponseDeleted,
    HttpResponseOk, HttpResponseUpdatedNoContent, RequestContext,
};
use halyard_common::Error;
use halyard_common::ids::{AuditLogEntryUuid, SiloUuid, SledUuid, UserUuid};
use halyard_db_model::{AUDIT_ACTOR_UNAUTHENTICATED, AUDIT_ACTOR_USER, AuditLogEntry};
use halyard_db_queries::secret::looks_like_token;
use schemars::JsonSchema;
use serde::Serialize;
use slog::{error, info};
use std::future::Future;
use std::sync::Arc;

/// The longest `Authorization` header looked at; a token is far shorter.
const MAX_AUTHORIZATION_LEN: usize = 1024;

/// Who is acting. Sagas keep their starter's in their parameters (see [`saga_param`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A user, authenticated by an API token.
    User {
        user_id: UserUuid,
        silo_id: SiloUuid,
    },
    /// One of Nexus's background tasks (`vmm_retirement`, `saga_leftover_release`, ...).
    BackgroundTask {
        name: std::borrow::Cow<'static, str>,
    },
    /// A saga resumed after a restart, whose starter is not known here.
    Saga,
    /// A sled agent calling the internal API.
    SledAgent { sled_id: SledUuid },
}

/// The context of one operation: who acts, for which request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpContext {
    pub actor: Actor,
    /// The external request this operation serves, if any.
    pub request_id: Option<String>,
}

impl OpContext {
    pub fn for_background_task(name: &'static str) -> OpContext {
        OpContext {
            actor: Actor::BackgroundTask { name: name.into() },
            request_id: None,
        }
    }

    /// The user acting, if a user is.
    pub fn user(&self) -> Option<(UserUuid, SiloUuid)> {
        match self.actor {
            Actor::User { user_id, silo_id } => Some((user_id, silo_id)),
            _ => None,
        }
    }
}

tokio::task_local! {
    /// The actor the current task works for (an external request's caller, inside
    /// [`external_request`]).
    static CURRENT_ACTOR: Actor;
}

/// The actor the current task works for, if it works for one (see [`external_request`]).
pub fn current_actor() -> Option<Actor> {
    CURRENT_ACTOR.try_with(Clone::clone).ok()
}

/// Runs `work` as work for `actor` ([`current_actor`] returns it inside).
pub async fn act_as<F: Future>(actor: Actor, work: F) -> F::Output {
    CURRENT_ACTOR.scope(actor, work).await
}

/// The field of a saga's parameters (in the saga log) that names the actor who started the
/// saga, so the saga acts as them even when resumed after a crash.
pub const SAGA_ACTOR_PARAM: &str = "actor";

/// Why a request's credentials were refused: for the log only; the client is told none of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Repeated,
    SessionRepeated,
    SessionCrossOrigin,
    NotVisibleAscii,
    TooLong,
    NotBearer,
    Malformed,
    UnknownExpiredOrRevoked,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "no Authorization header or session cookie",
            Refusal::Repeated => "more than one Authorization header",
            Refusal::SessionRepeated => "more than one session cookie",
            Refusal::SessionCrossOrigin => "session cookie on a request from another origin",
            Refusal::NotVisibleAscii => "Authorization header is not visible ASCII",
            Refusal::TooLong => "Authorization header too long",
            Refusal::NotBearer => "Authorization scheme is not Bearer",
            Refusal::Malformed => "bearer token malformed",
            Refusal::UnknownExpiredOrRevoked => "token unknown, expired or revoked",
        }
    }
}

/// The bearer token of a request, or why there is none worth looking up.
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, Refusal> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Refusal::Missing)?;
    if values.next().is_some() {
        return Err(Refusal::Repeated);
    }
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(Refusal::TooLong);
    }
    let value = value.to_str().map_err(|_| Refusal::NotVisibleAscii)?;
    let (scheme, token) = value.split_once(' ').ok_or(Refusal::NotBearer)?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::NotBearer);
    }
    if !looks_like_token(token) {
        return Err(Refusal::Malformed);
    }
    Ok(token)
}

/// A request's credentials: its bearer token, or, with no `Authorization` header, its
/// console session (`tls`: whether the request came over TLS, for its origin).
fn credentials(headers: &http::HeaderMap, tls: bool) -> Result<&str, Refusal> {
    if headers.contains_key(http::header::AUTHORIZATION) {
        return bearer_token(headers);
    }
    match console::cookie_values(headers, console::SESSION_COOKIE).as_slice() {
        [] => Err(Refusal::Missing),
        [_] if !console::same_origin(headers, tls) => Err(Refusal::SessionCrossOrigin),
        [secret] if looks_like_token(secret) => Ok(secret),
        [_] => Err(Refusal::Malformed),
        _ => Err(Refusal::SessionRepeated),
    }
}

/// Authenticates a request: the one function that learns who is calling.
async fn authenticate(rqctx: &RequestContext<Arc<Nexus>>) -> Result<OpContext, Error> {
    let refused = |refusal: Refusal| {
        info!(rqctx.log, "request refused: not authenticated"; "reason" => refusal.label());
        Error::unauthenticated(refusal.label())
    };
    let tls = rqctx.server.using_tls();
    let token = credentials(rqctx.request.headers(), tls).map_err(refused)?;
    let owner = rqctx
        .context()
        .datastore()
        .token_authenticate(token)
        .await?
        .ok_or_else(|| refused(Refusal::UnknownExpiredOrRevoked))?;
    Ok(OpContext {
        actor: Actor::User {
            user_id: owner.user.id(),
            silo_id: owner.user.silo_id(),
        },
        request_id: Some(rqctx.request_id.clone()),
    })
}

/// Runs an external request's `work` as its authenticated caller, recording it in the audit
/// log if it mutates. Every external handler that needs a caller goes through here.
pub async fn external_request<R, F, Fut>(
    rqctx: &RequestContext<Arc<Nexus>>,
    work: F,
) -> Result<R, HttpError>
where
    R: ResponseStatus,
    F: FnOnce(OpContext) -> Fut,
    Fut: Future<Output = Result<R, HttpError>>,
{
    let audit = AuditRecord::for_request(rqctx);
    let opctx = match authenticate(rqctx).await {
        Ok(opctx) => opctx,
        Err(error) => {
            if let Some(audit) = audit {
                let status = error.status_code();
                audit
                    .record_ended(rqctx, None, status, error.error_code())
                    .await;
            }
            return Err(error.into());
        }
    };
    let actor = opctx.actor.clone();
    let Some(audit) = audit else {
        return act_as(actor, work(opctx)).await;
    };
    let id = audit.record_started(rqctx, opctx.user()).await?;
    let result = act_as(actor, work(opctx)).await;
    audit_complete(rqctx, id, &result).await;
    result
}

/// Runs an external request that needs no caller (the device login steps a client takes
/// before it has a token), recording it in the audit log (with no actor) if it mutates.
pub async fn unauthenticated_request<R, Fut>(
    rqctx: &RequestContext<Arc<Nexus>>,
    work: Fut,
) -> Result<R, HttpError>
where
    R: ResponseStatus,
    Fut: Future<Output = Result<R, HttpError>>,
{
    let Some(audit) = AuditRecord::for_request(rqctx) else {
        return work.await;
    };
    let id = audit.record_started(rqctx, None).await?;
    let result = work.await;
    audit_complete(rqctx, id, &result).await;
    result
}

async fn audit_complete<R: ResponseStatus>(
    rqctx: &RequestContext<Arc<Nexus>>,
    id: AuditLogEntryUuid,
    result: &Result<R, HttpError>,
) {
    let (status, error_code) = match result {
        Ok(response) => (response.status(), None),
        Err(e) => (e.status_code.as_u16(), e.error_code.clone()),
    };
    if let Err(e) = rqctx
        .context()
        .datastore()
        .audit_log_complete(id, status, error_code)
        .await
    {
        // The request is done; its start is recorded. Say loudly that its end is not.
        error!(rqctx.log, "audit log: could not record the end of a request";
            "audit_id" => %id, "status" => status, "error" => %e);
    }
}

/// What the audit log keeps of a mutating request, before its actor is known.
struct AuditRecord {
    method: String,
    path: String,
    operation_id: String,
}

impl AuditRecord {
    /// The record for this request, if it mutates (POST, PUT, DELETE, PATCH).
    fn for_request(rqctx: &RequestContext<Arc<Nexus>>) -> Option<AuditRecord> {
        let method = rqctx.request.method();
        let mutating = [
            http::Method::POST,
            http::Method::PUT,
            http::Method::DELETE,
            http::Method::PATCH,
        ]
        .contains(method);
        mutating.then(|| AuditRecord {
            method: method.to_string(),
            path: rqctx.request.uri().path().to_string(),
            operation_id: rqctx.endpoint.operation_id.clone(),
        })
    }

    fn entry(
        self,
        rqctx: &RequestContext<Arc<Nexus>>,
        actor: Option<(UserUuid, SiloUuid)>,
    ) -> AuditLogEntry {
        AuditLogEntry {
            id: AuditLogEntryUuid::new_v4().into(),
            time_started: halyard_db_model::now(),
            time_completed: None,
            request_id: rqctx.request_id.clone(),
            method: self.method,
            path: self.path,
            operation_id: self.operation_id,
            actor_kind: if actor.is_some() {
                AUDIT_ACTOR_USER
            } else {
                AUDIT_ACTOR_UNAUTHENTICATED
            }
            .to_string(),
            actor_id: actor.map(|(user, _)| user.into_untyped_uuid()),
            actor_silo_id: actor.map(|(_, silo)| silo.into_untyped_uuid()),
            http_status: None,
            error_code: None,
        }
    }

    /// Records the start; the work must not run unless this succeeded.
    async fn record_started(
        self,
        rqctx: &RequestContext<Arc<Nexus>>,
        actor: Option<(UserUuid, SiloUuid)>,
    ) -> Result<AuditLogEntryUuid, HttpError> {
        let entry = self.entry(rqctx, actor);
        let id = entry.id.0;
        rqctx
            .context()
            .datastore()
            .audit_log_insert(&entry)
            .await
            .map_err(|e| {
                error!(rqctx.log, "audit log: could not record a request; refusing it";
                    "error" => %e);
                Error::unavailable("the audit log cannot record this request; retry later")
            })?;
        Ok(id)
    }

    /// Records a request that ended before any work (its authentication refused).
    async fn record_ended(
        self,
        rqctx: &RequestContext<Arc<Nexus>>,
        actor: Option<(UserUuid, SiloUuid)>,
        status: u16,
        error_code: &str,
    ) {
        let mut entry = self.entry(rqctx, actor);
        entry.time_completed = Some(entry.time_started);
        entry.http_status = Some(i32::from(status));
        entry.error_code = Some(error_code.to_string());
        if let Err(e) = rqctx.context().datastore().audit_log_insert(&entry).await {
            error!(rqctx.log, "audit log: could not record a refused request";
                "error" => %e);
        }
    }
}

use halyard_common::ids::GenericUuid;

/// The HTTP status a successful response is sent with (for the audit log).
pub trait ResponseStatus {
    fn status(&self) -> u16;
}

impl<T: JsonSchema + Serialize + Send + Sync + 'static> ResponseStatus for HttpResponseOk<T> {
    fn status(&self) -> u16 {
        200
    }
}

impl<T: JsonSchema + Serialize + Send + Sync + 'static> ResponseStatus for HttpResponseCreated<T> {
    fn status(&self) -> u16 {
        201
    }
}

impl<T: JsonSchema + Serialize + Send + Sync + 'static> ResponseStatus for HttpResponseAccepted<T> {
    fn status(&self) -> u16 {
        202
    }
}

impl ResponseStatus for HttpResponseDeleted {
    fn status(&self) -> u16 {
        204
    }
}

impl ResponseStatus for HttpResponseUpdatedNoContent {
    fn status(&self) -> u16 {
        204
    }
}

/// A WebSocket handler's answer (dropshot does not name its type), switching protocols.
pub struct WebsocketUpgraded<T>(pub T);

impl<T> ResponseStatus for WebsocketUpgraded<T> {
    fn status(&self) -> u16 {
        101
    }
}

impl ResponseStatus for http::Response<Body> {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_db_queries::secret::Secret;

    fn headers(values: &[&[u8]]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for value in values {
            map.append(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn only_one_well_formed_bearer_token_is_looked_up() {
        let token = Secret::new_token();
        let good = format!("Bearer {}", token.expose());
        assert_eq!(
            bearer_token(&headers(&[good.as_bytes()])),
            Ok(token.expose())
        );
        let lower = format!("bearer {}", token.expose());
        assert_eq!(
            bearer_token(&headers(&[lower.as_bytes()])),
            Ok(token.expose())
        );

        let long = format!("Bearer {}", "a".repeat(10_000));
        let non_ascii = format!("Bearer {}é", &token.expose()[..token.expose().len() - 1]);
        let cases: [(Vec<&[u8]>, Refusal); 8] = [
            (vec![], Refusal::Missing),
            (vec![good.as_bytes(), good.as_bytes()], Refusal::Repeated),
            (vec![non_ascii.as_bytes()], Refusal::NotVisibleAscii),
            (vec![long.as_bytes()], Refusal::TooLong),
            (vec![b"Basic dXNlcjpwYXNz"], Refusal::NotBearer),
            (vec![b"Bearer"], Refusal::NotBearer),
            (vec![b"Bearer "], Refusal::Malformed),
            (vec![b"Bearer halyard_short"], Refusal::Malformed),
        ];
        for (values, refusal) in cases {
            assert_eq!(bearer_token(&headers(&values)), Err(refusal), "{values:?}");
        }
    }
}
