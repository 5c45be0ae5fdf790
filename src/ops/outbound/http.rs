//! The dead letters' admin API: list, retry, drop.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use super::policy::host_of;
use super::queue::{Job, Outbound, OutboundError};
use crate::error::{ApiError, Code};

/// `GET /admin/outbound/deadletters`, `POST /admin/outbound/deadletters/{id}/retry`,
/// `DELETE /admin/outbound/deadletters/{id}`; mounted behind the admin token. A store
/// that fails answers 503 with `Retry-After: retry_after_secs`
/// (`backpressure.retry_after_secs`).
pub fn admin_routes<S>(retry_after_secs: u64) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Outbound: axum::extract::FromRef<S>,
{
    let retry = retry_after_secs;
    Router::new()
        .route(
            "/admin/outbound/deadletters",
            get(move |o: State<Outbound>| list_deadletters(o, retry)),
        )
        .route(
            "/admin/outbound/deadletters/{id}/retry",
            post(move |o: State<Outbound>, id: Path<String>| retry_deadletter(o, id, retry)),
        )
        .route(
            "/admin/outbound/deadletters/{id}",
            delete(move |o: State<Outbound>, id: Path<String>| drop_deadletter(o, id, retry)),
        )
}

fn view(job: &Job) -> serde_json::Value {
    json!({
        "id": job.id,
        "kind": job.kind,
        "target": host_of(&job.target),
        "attempts": job.attempts,
        "throttled": job.throttled,
        "last_error": job.last_error,
        "created_ms": job.created_ms,
        "request_id": job.idempotency_id,
    })
}

fn storage_error(e: impl std::fmt::Display, retry_after_secs: u64) -> ApiError {
    ApiError::unavailable(
        Code::StorageUnavailable,
        format!("the outbound store could not be read or written ({e}); retry later"),
        retry_after_secs,
    )
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            Code::InvalidId,
            format!(
                "{id:?} is not a dead-letter id; take one from GET /admin/outbound/deadletters"
            ),
        )
        .field("id")
    })
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        format!("no dead letter {id}; list them with GET /admin/outbound/deadletters"),
    )
}

async fn list_deadletters(State(outbound): State<Outbound>, retry_after_secs: u64) -> Response {
    match outbound.deadletters() {
        Ok(jobs) => Json(json!({
            "deadletters": jobs.iter().map(view).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => storage_error(e, retry_after_secs).into_response(),
    }
}

async fn retry_deadletter(
    State(outbound): State<Outbound>,
    Path(id): Path<String>,
    retry_after_secs: u64,
) -> Response {
    let act = |id| async move { outbound.retry_deadletter(id).await };
    on_deadletter(&id, retry_after_secs, act, |job| {
        tracing::info!(id = job.id, kind = %job.kind, target = %host_of(&job.target), "admin: dead letter queued again");
        (
            StatusCode::ACCEPTED,
            Json(json!({"status": "queued", "job": view(&job)})),
        )
            .into_response()
    })
    .await
}

async fn drop_deadletter(
    State(outbound): State<Outbound>,
    Path(id): Path<String>,
    retry_after_secs: u64,
) -> Response {
    let act = |id| async move { outbound.drop_deadletter(id).await };
    on_deadletter(&id, retry_after_secs, act, |job| {
        tracing::info!(id = job.id, kind = %job.kind, target = %host_of(&job.target), "admin: dead letter dropped");
        Json(json!({"status": "dropped", "job": view(&job)})).into_response()
    })
    .await
}

/// Runs `act` on the dead letter the path names and answers: `done` with the job it
/// acted on, 404 when there is none, 400 for a path that names none, 503 when the
/// store fails.
async fn on_deadletter<Fut>(
    id: &str,
    retry_after_secs: u64,
    act: impl FnOnce(u64) -> Fut,
    done: impl FnOnce(Job) -> Response,
) -> Response
where
    Fut: std::future::Future<Output = Result<Option<Job>, OutboundError>>,
{
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match act(id).await {
        Ok(Some(job)) => done(job),
        Ok(None) => not_found(id).into_response(),
        Err(e) => storage_error(e, retry_after_secs).into_response(),
    }
}
