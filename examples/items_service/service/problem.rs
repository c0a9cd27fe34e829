//! Error responses: every failure the API reports is an RFC 9457 problem+json document.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FieldError {
    pub(crate) field: &'static str,
    pub(crate) message: &'static str,
}

/// Why a request failed; each variant knows its status.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The body is not JSON, not the right shape, too large, or not declared as JSON.
    Json(JsonRejection),
    /// The query string does not parse.
    Query(QueryRejection),
    /// A path parameter does not parse (an id that is not a number).
    Path(PathRejection),
    /// The request parsed, but these fields break the rules (422).
    Invalid(Vec<FieldError>),
    /// No item has this id (404).
    NotFound,
    /// No route has this path (404).
    NoRoute,
    /// The database failed; the client learns only that (500), the log has the cause.
    Database(sqlx::Error),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Json(rejection) => rejection.status(),
            Self::Query(rejection) => rejection.status(),
            Self::Path(rejection) => rejection.status(),
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Json(rejection) => rejection.body_text(),
            Self::Query(rejection) => rejection.body_text(),
            Self::Path(rejection) => rejection.body_text(),
            Self::Invalid(_) => "The request has invalid fields; see `errors`.".to_owned(),
            Self::NotFound => "No item has this id.".to_owned(),
            Self::NoRoute => "No resource lives at this path.".to_owned(),
            Self::Database(_) => "The database failed; try again later.".to_owned(),
        }
    }

    fn field_errors(&self) -> &[FieldError] {
        match self {
            Self::Invalid(errors) => errors,
            _ => &[],
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::Json(rejection)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::Query(rejection)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::Path(rejection)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Database(error) = &self {
            tracing::error!(%error, "database error");
        }
        problem(self.status(), self.detail(), self.field_errors())
    }
}

/// A problem+json response with `status`, its reason phrase as title, and `detail`.
pub(crate) fn problem(status: StatusCode, detail: String, errors: &[FieldError]) -> Response {
    let body = Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        errors,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        json,
    )
        .into_response()
}
