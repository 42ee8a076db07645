//! The order API: `GET /orders/{id}` (the order-detail API enrichment calls), `POST /orders`,
//! `POST /orders/{id}/advance`, `GET /healthz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{OrderSystem, SimulatorError};
use crate::entity::Event;

/// Serves the order API on `listener` until `shutdown` resolves.
pub(super) async fn serve(
    system: Arc<OrderSystem>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(system))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(system: Arc<OrderSystem>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/advance", post(advance_order))
        .with_state(system)
}

async fn get_order(State(system): State<Arc<OrderSystem>>, Path(id): Path<String>) -> Response {
    let order = system.lock_orders().get(&id).cloned();
    match order {
        Some(event) => axum::Json(event).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no order {id:?}\n")).into_response(),
    }
}

async fn create_order(State(system): State<Arc<OrderSystem>>) -> Response {
    let key = system.new_key();
    respond(system.advance(&key, None).await, &key, StatusCode::CREATED)
}

async fn advance_order(State(system): State<Arc<OrderSystem>>, Path(id): Path<String>) -> Response {
    if !system.lock_orders().contains_key(&id) {
        return (StatusCode::NOT_FOUND, format!("no order {id:?}\n")).into_response();
    }
    let answer = system.advance(&id, None).await;
    // Publish now: a person driving the API expects to see the change arrive.
    if let Err(error) = system.network.lock().await.drain().await {
        return (StatusCode::BAD_GATEWAY, format!("{error}\n")).into_response();
    }
    respond(answer, &id, StatusCode::OK)
}

fn respond(answer: Result<Option<Event>, SimulatorError>, key: &str, ok: StatusCode) -> Response {
    match answer {
        Ok(Some(event)) => (ok, axum::Json(event)).into_response(),
        Ok(None) => (
            StatusCode::CONFLICT,
            format!("order {key:?} is already final\n"),
        )
            .into_response(),
        Err(error) => (StatusCode::BAD_GATEWAY, format!("{error}\n")).into_response(),
    }
}
