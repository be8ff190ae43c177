//! The control plane's one error type. Every failure of a store method or an
//! API handler is an [`Error`]; the router renders it as
//! `{"error": KIND, "field": FIELD, "message": TEXT}` with the matching HTTP
//! status, so a client learns which field broke which rule.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What went wrong, in words a client or an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be read at all (bad JSON, bad query string): `400`.
    #[error("{message}")]
    BadRequest {
        /// What was wrong with it.
        message: String,
    },
    /// A field broke a rule (a name's characters, a limit above the parent's): `422`.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, dotted (`limits.quota_daily`, `limits.allow_ips[2]`).
        field: String,
        /// The rule it broke.
        message: String,
    },
    /// The named customer, sub-user, token or exit does not exist: `404`.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `customer "alice"`.
        what: String,
    },
    /// The request contradicts what is stored (a name already taken): `409`.
    #[error("{message}")]
    Conflict {
        /// The field in conflict, if one.
        field: Option<String>,
        /// Why.
        message: String,
    },
    /// No or a wrong bearer token: `401`.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token may only read: `403`.
    #[error("{message}")]
    Forbidden {
        /// Why.
        message: String,
    },
    /// The database holds a schema newer than this build knows: refused at open.
    #[error("the database's schema is at version {found}, newer than this build's {known}; run a newer exitpool or restore a matching backup")]
    SchemaTooNew {
        /// The newest migration applied to the database.
        found: i64,
        /// The newest migration this build has.
        known: i64,
    },
    /// The database location could not be used.
    #[error("database {location}: {message}")]
    Location {
        /// The location as given (never a password: see [`crate::store::redact`]).
        location: String,
        /// Why.
        message: String,
    },
    /// The database failed (connection lost, disk full, ...): `500`.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Something that should not happen (a hash that failed): `500`.
    #[error("internal: {0}")]
    Internal(String),
}

/// Shorthand for the control plane's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A field broke a rule.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Something was not found.
    pub fn not_found(what: impl Into<String>) -> Error {
        Error::NotFound { what: what.into() }
    }

    /// The short kind in the JSON body (`invalid`, `not_found`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadRequest { .. } => "bad_request",
            Error::Invalid { .. } => "invalid",
            Error::NotFound { .. } => "not_found",
            Error::Conflict { .. } => "conflict",
            Error::Unauthorized => "unauthorized",
            Error::Forbidden { .. } => "forbidden",
            Error::SchemaTooNew { .. }
            | Error::Location { .. }
            | Error::Database(_)
            | Error::Migrate(_)
            | Error::Internal(_) => "internal",
        }
    }

    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The field it names, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Invalid { field, .. } => Some(field),
            Error::Conflict { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The body the API answers with.
    pub fn body(&self) -> ErrorBody {
        let message = match self.status() {
            // Database details stay in the log, not in an answer.
            StatusCode::INTERNAL_SERVER_ERROR => "internal error; see the gateway's log".into(),
            _ => self.to_string(),
        };
        ErrorBody {
            error: self.kind().into(),
            field: self.field().map(str::to_owned),
            message,
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `invalid`, `not_found`, `conflict`, `unauthorized`,
    /// `forbidden`, `no_route` or `internal`.
    pub error: String,
    /// The field that broke a rule, dotted (`limits.quota_daily`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The rule, in words.
    pub message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "control plane request failed");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if matches!(self, Error::Unauthorized) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
