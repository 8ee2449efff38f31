//! Errors of the server layer, and their one mapping to HTTP responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nimbus_api::{ApiError, ErrorBody, ErrorCode};
use nimbus_store::StoreError;

/// Everything an API operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed or a value is out of range.
    #[error("{0}")]
    InvalidRequest(String),
    /// The named object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// A create collided with an existing, different object.
    #[error("{0}")]
    AlreadyExists(String),
    /// The action is not valid in the object's current state.
    #[error("{0}")]
    InvalidState(String),
    /// Too many concurrent writers; the client may retry.
    #[error("{0}")]
    Conflict(String),
    /// The request can never be satisfied by this cluster.
    #[error("{0}")]
    Unsatisfiable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something else failed inside the server.
    #[error("{0}")]
    Internal(String),
}

impl ServerError {
    fn code(&self) -> ErrorCode {
        match self {
            ServerError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ServerError::NotFound { .. } => ErrorCode::NotFound,
            ServerError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            ServerError::InvalidState(_) => ErrorCode::InvalidState,
            ServerError::Conflict(_) => ErrorCode::Conflict,
            ServerError::Unsatisfiable(_) => ErrorCode::Unsatisfiable,
            ServerError::Store(StoreError::Conflict { .. }) => ErrorCode::Conflict,
            ServerError::Store(StoreError::NotFound { .. }) => ErrorCode::NotFound,
            ServerError::Store(StoreError::AlreadyExists { .. }) => ErrorCode::AlreadyExists,
            ServerError::Store(_) | ServerError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// HTTP status of each error code; the only place codes meet HTTP.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists | ErrorCode::InvalidState | ErrorCode::Conflict => {
            StatusCode::CONFLICT
        }
        ErrorCode::Unsatisfiable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let code = self.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %self, "internal error");
        }
        let body = ErrorBody {
            error: ApiError {
                code,
                message: self.to_string(),
            },
        };
        (status_of(code), axum::Json(body)).into_response()
    }
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Maps a chunk-store error to the API: what the caller got wrong is a 4xx.
pub fn image_error(e: nimbus_image::ImageError) -> ServerError {
    use nimbus_image::ImageError as E;
    match &e {
        E::NotFound { .. } => ServerError::NotFound {
            kind: "stored object",
            name: e.to_string(),
        },
        E::AlreadyExists { .. } => ServerError::AlreadyExists(e.to_string()),
        E::NotAnImage { .. } | E::UnsupportedFormat { .. } | E::Invalid { .. } => {
            ServerError::InvalidRequest(e.to_string())
        }
        E::Corrupt { .. } | E::ManifestCorrupt { .. } | E::MissingChunks { .. } => {
            ServerError::InvalidState(e.to_string())
        }
        _ => ServerError::Internal(e.to_string()),
    }
}
