//! The admin endpoint: `/healthz` (the process is up), `/readyz` (the rule is loaded and the
//! source, store and dead-letter queue are connected), `/metrics` (Prometheus text format) and
//! `/rule` (the active rule's info as JSON).
//!
//! Rule swaps on this instance only (see [`crate::swap`]): `POST /rule` with a component as the
//! body (`?role=shadow` to run it as a shadow) gates it and swaps it in, answering the new
//! rule or, with 422, the refusal; `GET /rule/status` shows active, previous and shadow rules,
//! the last swap and shadow disagreements; `POST /rule/promote` and `POST /rule/rollback`. The
//! endpoint has no authentication: keep it on loopback or a private network.
//!
//! Metrics are listed in [`crate::telemetry`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::swap::{Refusal, Role, RuleControl, RuleRef};
use crate::telemetry::Metrics;

/// The largest rule component the admin endpoint accepts.
const MAX_RULE_BYTES: usize = 64 << 20;

/// What the admin endpoint serves from: the metrics and the rule control.
#[derive(Debug, Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    control: Arc<RuleControl>,
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
async fn rule(State(state): State<AdminState>) -> axum::response::Response {
    json_response(StatusCode::OK, &state.control.active_info())
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> axum::response::Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(body).unwrap_or_default(),
    )
        .into_response()
}

fn swap_response(result: Result<RuleRef, Refusal>) -> axum::response::Response {
    match result {
        Ok(applied) => json_response(StatusCode::OK, &applied),
        Err(refusal) => json_response(StatusCode::UNPROCESSABLE_ENTITY, &refusal),
    }
}

async fn rule_status(State(state): State<AdminState>) -> axum::response::Response {
    json_response(StatusCode::OK, &state.control.status())
}

#[derive(Debug, serde::Deserialize)]
struct UploadQuery {
    #[serde(default = "default_role")]
    role: Role,
}

fn default_role() -> Role {
    Role::Active
}

/// Gates an uploaded component and swaps it in on this instance only.
async fn upload_rule(
    State(state): State<AdminState>,
    Query(query): Query<UploadQuery>,
    body: Bytes,
) -> axum::response::Response {
    let control = state.control;
    let offered =
        tokio::task::spawn_blocking(move || control.offer(&body, None, "admin", query.role)).await;
    match offered {
        Ok(result) => swap_response(result),
        Err(error) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": error.to_string()}),
        ),
    }
}

async fn promote_rule(State(state): State<AdminState>) -> axum::response::Response {
    swap_response(state.control.promote("admin"))
}

async fn rollback_rule(State(state): State<AdminState>) -> axum::response::Response {
    swap_response(state.control.rollback("admin"))
}

/// Binds the admin endpoint's address, so that a taken port fails at start-up.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    Ok(listener)
}

/// Serves the admin endpoint until `shutdown` resolves.
pub(crate) async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    control: Arc<RuleControl>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/rule",
            get(rule)
                .post(upload_rule)
                .layer(DefaultBodyLimit::max(MAX_RULE_BYTES)),
        )
        .route("/rule/status", get(rule_status))
        .route("/rule/promote", post(promote_rule))
        .route("/rule/rollback", post(rollback_rule))
        .with_state(AdminState { metrics, control });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
