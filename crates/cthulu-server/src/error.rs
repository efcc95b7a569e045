//! [`ApiFailure`]: the one error type of the HTTP layer. It answers
//! `{ "error": { "code", "message", "hint"? } }` with the code's status; a 5xx says nothing
//! internal, and its real cause is logged once, here.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cthulu_core::SandboxError;
use cthulu_types::exec::FieldError;
use cthulu_types::{ApiError, ErrorBody, ErrorCode};

use crate::db::DbError;

#[derive(Debug)]
pub struct ApiFailure {
    pub code: ErrorCode,
    pub message: String,
    pub hint: Option<String>,
}

impl ApiFailure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiFailure {
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiFailure::new(ErrorCode::BadRequest, message)
    }

    /// A server-side failure: logged with its whole chain, answered without details.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::error!(error = %chain, "request failed");
        ApiFailure::new(ErrorCode::Internal, "internal error; see the server log")
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ApiError {
                code: self.code,
                message: self.message.clone(),
                hint: self.hint.clone(),
            },
        }
    }
}

impl From<SandboxError> for ApiFailure {
    fn from(error: SandboxError) -> Self {
        if error.is_internal() {
            return ApiFailure::internal(&error);
        }
        ApiFailure {
            code: error.code(),
            message: error.to_string(),
            hint: error.hint(),
        }
    }
}

impl From<DbError> for ApiFailure {
    fn from(error: DbError) -> Self {
        ApiFailure::internal(&error)
    }
}

impl From<FieldError> for ApiFailure {
    fn from(error: FieldError) -> Self {
        ApiFailure::bad_request(format!("invalid field {}", error))
    }
}

impl From<JsonRejection> for ApiFailure {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiFailure::new(ErrorCode::PayloadTooLarge, "request body is too large")
                    .with_hint("JSON bodies are limited to 16 MiB; upload files with PUT .../files")
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiFailure::bad_request("expected a JSON body")
                    .with_hint("send Content-Type: application/json")
            }
            other => ApiFailure::bad_request(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiFailure {
    fn from(rejection: QueryRejection) -> Self {
        ApiFailure::bad_request(rejection.body_text())
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiFailure>;
