//! The one error shape of the API: `{"error": {"code": "...", "message": "..."}}`.

use serde::{Deserialize, Serialize};

/// Machine-readable error codes; each maps to one HTTP status in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a value is out of range (400).
    InvalidRequest,
    /// The named object does not exist (404).
    NotFound,
    /// The object exists already with a different spec (409).
    AlreadyExists,
    /// The action is not valid in the object's current state (409).
    InvalidState,
    /// A concurrent write changed the object first; retry (409).
    Conflict,
    /// The request can never be satisfied by this cluster (422).
    Unsatisfiable,
    /// Something failed inside the server (500).
    Internal,
    /// The server cannot serve now (503).
    Unavailable,
}

/// The error as it travels on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ApiError {}
