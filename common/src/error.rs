//! The error type of the Halyard API.
//!
//! Every failure a client can see is one of these. Each has a stable `error_code`, an HTTP
//! status, and a message written for the person reading it: what went wrong and what to do.
//! Internal details stay in logs: `InternalError` shows the client only a generic message.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// The kinds of object an error can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceType {
    Project,
    Instance,
    Vmm,
    Sled,
    SledReservation,
    Migration,
    Saga,
    Silo,
    User,
    ApiToken,
    DeviceAuthRequest,
    Disk,
    Region,
    Snapshot,
    RegionSnapshot,
    Vpc,
    VpcSubnet,
    NetworkInterface,
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceType::Project => "project",
            ResourceType::Instance => "instance",
            ResourceType::Vmm => "vmm",
            ResourceType::Sled => "sled",
            ResourceType::SledReservation => "sled reservation",
            ResourceType::Migration => "migration",
            ResourceType::Saga => "saga",
            ResourceType::Silo => "silo",
            ResourceType::User => "user",
            ResourceType::Disk => "disk",
            ResourceType::Vpc => "vpc",
            ResourceType::VpcSubnet => "vpc subnet",
            ResourceType::NetworkInterface => "network interface",
            ResourceType::Region => "region",
            ResourceType::Snapshot => "snapshot",
            ResourceType::RegionSnapshot => "region snapshot",
            ResourceType::ApiToken => "API token",
            ResourceType::DeviceAuthRequest => "device authorization request",
        })
    }
}

/// How an object was looked up, so a not-found error can say what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupType {
    ById(Uuid),
    ByName(String),
}

impl fmt::Display for LookupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupType::ById(id) => write!(f, "id \"{id}\""),
            LookupType::ByName(name) => write!(f, "name \"{name}\""),
        }
    }
}

/// Serializable so a saga action can fail with one and the caller get it back intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The object does not exist (or was deleted).
    #[error("not found: {type_name} with {lookup}")]
    ObjectNotFound {
        type_name: ResourceType,
        lookup: LookupType,
    },

    /// An object with this name already exists where names must be unique.
    #[error(
        "already exists: {type_name} \"{name}\"; choose another name or delete the existing one"
    )]
    ObjectAlreadyExists {
        type_name: ResourceType,
        name: String,
    },

    /// The request is malformed or asks for something impossible.
    #[error("{message}")]
    InvalidRequest { message: String },

    /// One value in the request is out of range or malformed.
    #[error("unsupported value for \"{label}\": {message}")]
    InvalidValue { label: String, message: String },

    /// The request is valid but the object's current state does not allow it (retrying later
    /// may succeed; the message says what state is needed).
    #[error("{message}")]
    Conflict { message: String },

    /// There is not enough capacity anywhere to do this now.
    #[error("{message}")]
    InsufficientCapacity { message: String },

    /// A dependency (the database, a sled agent) is unavailable; retry later.
    #[error("service unavailable: {message}")]
    ServiceUnavailable { message: String },

    /// The request carried no credentials, or ones that are malformed, unknown, expired or
    /// revoked. The client is told only that (Oxide's words); which it was stays in the log.
    #[error("unauthenticated: {internal_message}")]
    Unauthenticated { internal_message: String },

    /// A bug or an unexpected failure. The message is for logs only.
    /// The caller may see the resource but not do this to it (one who may not see it gets
    /// `ObjectNotFound`, as if it did not exist).
    #[error("forbidden: {internal_message}")]
    Forbidden {
        /// What the client is told after "Forbidden" (empty: nothing more).
        #[serde(default)]
        reason: String,
        internal_message: String,
    },

    #[error("internal error: {internal_message}")]
    InternalError { internal_message: String },
}

impl Error {
    pub fn not_found_by_id(type_name: ResourceType, id: impl Into<Uuid>) -> Error {
        Error::ObjectNotFound {
            type_name,
            lookup: LookupType::ById(id.into()),
        }
    }

    pub fn not_found_by_name(type_name: ResourceType, name: impl fmt::Display) -> Error {
        Error::ObjectNotFound {
            type_name,
            lookup: LookupType::ByName(name.to_string()),
        }
    }

    pub fn invalid_value(label: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidValue {
            label: label.into(),
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Error {
        Error::InvalidRequest {
            message: message.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> Error {
        Error::Conflict {
            message: message.into(),
        }
    }

    pub fn insufficient_capacity(message: impl Into<String>) -> Error {
        Error::InsufficientCapacity {
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::ServiceUnavailable {
            message: message.into(),
        }
    }

    pub fn unauthenticated(internal_message: impl Into<String>) -> Error {
        Error::Unauthenticated {
            internal_message: internal_message.into(),
        }
    }

    pub fn forbidden(internal_message: impl Into<String>) -> Error {
        Error::Forbidden {
            reason: String::new(),
            internal_message: internal_message.into(),
        }
    }

    /// A refusal whose `reason` (safe to show: it names no other user's resource) the
    /// client is told: "Forbidden: {reason}".
    pub fn forbidden_because(
        reason: impl Into<String>,
        internal_message: impl Into<String>,
    ) -> Error {
        Error::Forbidden {
            reason: reason.into(),
            internal_message: internal_message.into(),
        }
    }

    pub fn internal(internal_message: impl Into<String>) -> Error {
        Error::InternalError {
            internal_message: internal_message.into(),
        }
    }

    /// The stable machine-readable code clients match on.
    pub fn error_code(&self) -> &'static str {
        match self {
            Error::ObjectNotFound { .. } => "ObjectNotFound",
            Error::ObjectAlreadyExists { .. } => "ObjectAlreadyExists",
            Error::InvalidRequest { .. } => "InvalidRequest",
            Error::InvalidValue { .. } => "InvalidValue",
            Error::Conflict { .. } => "Conflict",
            Error::InsufficientCapacity { .. } => "InsufficientCapacity",
            Error::ServiceUnavailable { .. } => "ServiceNotAvailable",
            Error::Unauthenticated { .. } => "Unauthorized",
            Error::Forbidden { .. } => "Forbidden",
            Error::InternalError { .. } => "Internal",
        }
    }

    /// The HTTP status this error is served with.
    pub fn status_code(&self) -> u16 {
        match self {
            Error::ObjectNotFound { .. } => 404,
            Error::ObjectAlreadyExists { .. } => 400,
            Error::InvalidRequest { .. } | Error::InvalidValue { .. } => 400,
            Error::Conflict { .. } => 409,
            Error::InsufficientCapacity { .. } => 507,
            Error::ServiceUnavailable { .. } => 503,
            Error::Unauthenticated { .. } => 401,
            Error::Forbidden { .. } => 403,
            Error::InternalError { .. } => 500,
        }
    }

    /// The message shown to the client. Internal details are withheld.
    pub fn external_message(&self) -> String {
        match self {
            Error::InternalError { .. } => "Internal Server Error".to_string(),
            Error::Unauthenticated { .. } => "credentials missing or invalid".to_string(),
            Error::Forbidden { reason, .. } if reason.is_empty() => "Forbidden".to_string(),
            Error::Forbidden { reason, .. } => format!("Forbidden: {reason}"),
            other => other.to_string(),
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::ServiceUnavailable { .. })
    }
}

impl From<Error> for dropshot::HttpError {
    fn from(error: Error) -> Self {
        let status = dropshot::ErrorStatusCode::from_u16(error.status_code())
            .unwrap_or(dropshot::ErrorStatusCode::INTERNAL_SERVER_ERROR);
        dropshot::HttpError {
            status_code: status,
            error_code: Some(error.error_code().to_string()),
            external_message: error.external_message(),
            internal_message: error.to_string(),
            headers: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_codes_statuses_and_actionable_messages() {
        let e = Error::not_found_by_name(ResourceType::Instance, "web");
        assert_eq!(e.error_code(), "ObjectNotFound");
        assert_eq!(e.status_code(), 404);
        assert_eq!(
            e.external_message(),
            "not found: instance with name \"web\""
        );

        let e = Error::ObjectAlreadyExists {
            type_name: ResourceType::Project,
            name: "p".into(),
        };
        assert!(e.external_message().contains("choose another name"));

        let e = Error::internal("connection pool exploded");
        assert_eq!(e.status_code(), 500);
        assert!(!e.external_message().contains("pool"));
        assert!(Error::unavailable("database").is_retryable());

        // Oxide's 401: one message whatever was wrong with the credentials.
        let e = Error::unauthenticated("token revoked");
        assert_eq!((e.status_code(), e.error_code()), (401, "Unauthorized"));
        assert_eq!(e.external_message(), "credentials missing or invalid");
        assert!(!Error::conflict("instance is running").is_retryable());
    }

    #[test]
    fn errors_become_http_errors_with_code_status_and_message() {
        let http: dropshot::HttpError = Error::insufficient_capacity("no room").into();
        assert_eq!(http.status_code.as_u16(), 507);
        assert_eq!(http.error_code.as_deref(), Some("InsufficientCapacity"));
        assert_eq!(http.external_message, "no room");
        let http: dropshot::HttpError = Error::internal("secret detail").into();
        assert_eq!(http.status_code.as_u16(), 500);
        assert!(!http.external_message.contains("secret"));
        assert!(http.internal_message.contains("secret"));
    }
}
