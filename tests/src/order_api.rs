//! A real HTTP order-detail API on loopback for the enrichment tests: `GET /orders/{id}`
//! answers the order's latest state as JSON, 404 for an unknown id, and — for ids chosen by the
//! test — a 500, 401 or 404 the first few times, a body that is not an order, or one too large
//! to read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use converge::entity::Event;

#[derive(Debug, Default)]
pub struct OrderApiState {
    pub orders: Mutex<HashMap<String, Event>>,
    /// Ids answered with 500 this many more times.
    pub failing: Mutex<HashMap<String, usize>>,
    /// Ids answered with 401 (converge's credentials refused) this many more times.
    pub unauthorized: Mutex<HashMap<String, usize>>,
    /// Ids answered with 404 this many more times although the order exists: an API that
    /// does not show a new order yet.
    pub not_yet_visible: Mutex<HashMap<String, usize>>,
    /// Ids answered with a body that is not an order.
    pub garbled: Mutex<Vec<String>>,
    /// Ids answered with a body of this many bytes (a JSON string), streamed without a length.
    pub huge: Mutex<HashMap<String, usize>>,
    pub requests: AtomicUsize,
}

/// A running API; its address is `http://{addr}`.
#[derive(Debug)]
pub struct OrderApi {
    pub url: String,
    pub state: Arc<OrderApiState>,
}

async fn order(State(state): State<Arc<OrderApiState>>, Path(id): Path<String>) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    for (answers, status) in [
        (&state.failing, StatusCode::INTERNAL_SERVER_ERROR),
        (&state.unauthorized, StatusCode::UNAUTHORIZED),
        (&state.not_yet_visible, StatusCode::NOT_FOUND),
    ] {
        let mut answers = answers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(left) = answers.get_mut(&id).filter(|left| **left > 0) {
            *left -= 1;
            return status.into_response();
        }
    }
    if state
        .garbled
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&id)
    {
        return (StatusCode::OK, "<html>maintenance</html>").into_response();
    }
    let huge = state
        .huge
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&id)
        .copied();
    if let Some(size) = huge {
        // Chunked, so the client cannot refuse it by its length.
        let chunks = (0..size.div_ceil(64 * 1024)).map(|_| {
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(vec![b' '; 64 * 1024]))
        });
        return (
            StatusCode::OK,
            axum::body::Body::from_stream(futures::stream::iter(chunks)),
        )
            .into_response();
    }
    let orders = state.orders.lock().unwrap_or_else(PoisonError::into_inner);
    match orders.get(&id) {
        Some(event) => (
            StatusCode::OK,
            serde_json::to_string(event).unwrap_or_default(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl OrderApi {
    pub async fn start() -> Self {
        let state = Arc::new(OrderApiState::default());
        let app = Router::new()
            .route("/orders/{id}", get(order))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Serves `orders` (by key) from now on.
    pub fn serve_orders(&self, orders: &std::collections::BTreeMap<String, Event>) {
        self.state
            .orders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(
                orders
                    .iter()
                    .map(|(key, event)| (key.clone(), event.clone())),
            );
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}
