//! The handlers behind the guard: probes, metrics, the active rule and its status, and rule
//! swaps (an upload read within the endpoint's limits, one at a time).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router, middleware};
use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::AdminConfig;
use super::guard::{Authenticated, Policy, closing, guard};
use super::server::Limits;
use crate::swap::{Origin, Refusal, Role, RuleControl, RuleRef};
use crate::telemetry::Metrics;

/// What the admin endpoint serves from: the metrics, the rule control and who may use it.
#[derive(Debug, Clone)]
pub(super) struct AdminState {
    pub(super) metrics: Arc<Metrics>,
    pub(super) control: Arc<RuleControl>,
    pub(super) policy: Arc<Policy>,
    /// One upload is read and gated at a time.
    pub(super) uploads: Arc<Semaphore>,
    pub(super) limits: Limits,
}

/// The endpoint's routes behind the guard.
pub(super) fn router(
    config: &AdminConfig,
    metrics: Arc<Metrics>,
    control: Arc<RuleControl>,
    limits: Limits,
) -> Router {
    let state = AdminState {
        metrics,
        control,
        policy: Arc::new(Policy::new(config)),
        uploads: Arc::new(Semaphore::new(1)),
        limits,
    };
    if state.policy.token_digest.is_none() {
        tracing::info!("no admin token: rule swaps through the admin endpoint are disabled");
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/rule", get(rule).post(upload_rule))
        .route("/rule/status", get(rule_status))
        .route("/rule/promote", post(promote_rule))
        .route("/rule/rollback", post(rollback_rule))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// The active rule's info.
async fn rule(State(state): State<AdminState>) -> Response {
    json_response(StatusCode::OK, &state.control.active_info())
}

pub(super) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(body).unwrap_or_default(),
    )
        .into_response()
}

fn swap_response(result: Result<RuleRef, Refusal>) -> Response {
    match result {
        Ok(applied) => json_response(StatusCode::OK, &applied),
        Err(refusal) => json_response(StatusCode::UNPROCESSABLE_ENTITY, &refusal),
    }
}

/// How much of the shadow samples `/rule/status` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Samples {
    /// Keys, payloads and reasons replaced (the default).
    #[default]
    Redacted,
    /// As decided: only with the token.
    Full,
}

#[derive(Debug, serde::Deserialize)]
struct StatusQuery {
    #[serde(default)]
    samples: Samples,
}

async fn rule_status(
    State(state): State<AdminState>,
    Query(query): Query<StatusQuery>,
    authenticated: Option<Extension<Authenticated>>,
) -> Response {
    let status = state.control.status();
    // The guard refuses `samples=full` without the token; redacting here too keeps the
    // samples hidden should the two ever disagree.
    let status = if query.samples == Samples::Full && authenticated.is_some() {
        status
    } else {
        status.redacted()
    };
    json_response(StatusCode::OK, &status)
}

#[derive(Debug, serde::Deserialize)]
struct UploadQuery {
    #[serde(default = "default_role")]
    role: Role,
    /// Bring back a version this instance refused (`?force=true`): logged and counted, and
    /// judged again (gates where it never passed them, probation).
    #[serde(default)]
    force: bool,
}

/// `POST /rule/rollback?force=true`: roll back to a previous version that was refused since.
#[derive(Debug, Default, serde::Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

fn default_role() -> Role {
    Role::Active
}

/// Gates an uploaded component and swaps it in on this instance only.
async fn upload_rule(
    State(state): State<AdminState>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = state.control.max_component_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok())
        .and_then(|length| length.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&size| size > limit as u64) {
        return too_large(size, limit);
    }
    // One upload at a time, its body within the body time (its wait for its turn included).
    let deadline = Instant::now() + state.limits.body_timeout;
    let Ok(Ok(permit)) =
        tokio::time::timeout_at(deadline, Arc::clone(&state.uploads).acquire_owned()).await
    else {
        return body_timed_out(state.limits.body_timeout);
    };
    let bytes = match tokio::time::timeout_at(deadline, read_body(body, limit)).await {
        Err(_) => return body_timed_out(state.limits.body_timeout),
        Ok(Err(BodyRead::TooLarge(size))) => return too_large(size, limit),
        Ok(Err(BodyRead::Failed(error))) => {
            let mut response = json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": format!("cannot read the upload: {error}") }),
            );
            closing(&mut response);
            return response;
        }
        Ok(Ok(bytes)) => bytes,
    };
    let control = state.control;
    let offered = tokio::task::spawn_blocking(move || {
        let _permit: OwnedSemaphorePermit = permit;
        if query.force {
            control.offer_overriding(&bytes, None, &Origin::Admin, query.role)
        } else {
            control.offer(&bytes, None, &Origin::Admin, query.role)
        }
    })
    .await;
    match offered {
        Ok(result) => swap_response(result),
        Err(error) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": error.to_string()}),
        ),
    }
}

/// Why an upload's body was not read whole.
enum BodyRead {
    /// Longer than the cap: this many bytes at least.
    TooLarge(u64),
    /// The client broke off or sent something unreadable.
    Failed(axum::Error),
}

/// Reads a body of at most `limit` bytes, stopping at the first byte past it.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, BodyRead> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyRead::Failed)?;
        let size = bytes.len() + chunk.len();
        if size > limit {
            return Err(BodyRead::TooLarge(size as u64));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// 413, from the declared length or as far as the body was read; the rest is left unread.
fn too_large(size: u64, limit: usize) -> Response {
    let mut response = json_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &serde_json::json!({
            "error": format!(
                "the upload is {size} bytes or more, over the cap of {limit} bytes \
                 (rule.max_component_bytes)"
            )
        }),
    );
    closing(&mut response);
    response
}

/// 408: the upload did not arrive within the body time.
fn body_timed_out(within: Duration) -> Response {
    let mut response = json_response(
        StatusCode::REQUEST_TIMEOUT,
        &serde_json::json!({
            "error": format!("the upload did not arrive within {} s", within.as_secs())
        }),
    );
    closing(&mut response);
    response
}

async fn promote_rule(State(state): State<AdminState>) -> Response {
    swap_response(state.control.promote(&Origin::Admin))
}

async fn rollback_rule(
    State(state): State<AdminState>,
    Query(query): Query<ForceQuery>,
) -> Response {
    swap_response(if query.force {
        state.control.rollback_overriding(&Origin::Admin)
    } else {
        state.control.rollback(&Origin::Admin)
    })
}
