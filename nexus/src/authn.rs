//! Authentication: the one place every external request passes through to learn who is
//! calling.
//!
//! Real tokens and roles come later. For now every request is accepted: one with an
//! `Authorization: Bearer <token>` header (as the Oxide SDK sends) is attributed to that token,
//! one without to an anonymous caller; a malformed `Authorization` header is refused. When
//! tokens become real, only [`authenticate`] changes.

use dropshot::{HttpError, RequestContext};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Anonymous,
    /// A caller that presented a bearer token (not yet verified).
    Token,
}

pub fn authenticate<C: dropshot::ServerContext>(
    rqctx: &RequestContext<C>,
) -> Result<Actor, HttpError> {
    let Some(header) = rqctx.request.headers().get(http::header::AUTHORIZATION) else {
        return Ok(Actor::Anonymous);
    };
    let value = header.to_str().unwrap_or_default();
    match value.strip_prefix("Bearer ") {
        Some(token) if !token.trim().is_empty() => Ok(Actor::Token),
        _ => Err(HttpError::for_client_error(
            Some("Unauthorized".to_string()),
            dropshot::ClientErrorStatusCode::UNAUTHORIZED,
            "the Authorization header must be \"Bearer <token>\"".to_string(),
        )),
    }
}
