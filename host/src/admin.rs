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
//! Metrics, all prefixed `converge_`: `decisions_total{decision}`, `dead_letters_total{kind}`,
//! `batches_total`, `batch_duration_seconds` (histogram), `messages_total`, `writes_total`,
//! `conflicts_total`, `event_to_stored_seconds` (histogram: from the producer's timestamp to the
//! state stored or dead-lettered, for sources that record one), `store_duration_seconds{operation}` (one pipelined round trip, load or
//! write), `enrichment_duration_seconds` (fetching one batch's distinct keys),
//! `enrichment_keys_total`, `unavailable_total{service,operation}` (failed calls to the store or
//! dead-letter queue, each retried after a backoff), `consumer_lag{topic,partition}` (messages
//! behind the partition's end, as last seen when acknowledging), and `rule_info{rule}` (1 for
//! the active rule), `rule_swaps_total{role,result,gate}`, `shadow_decisions_total`,
//! `shadow_disagreements_total`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::dead_letter::DeadLetterKind;
use crate::entity::{DecisionKind, RuleInfo};
use crate::swap::{Refusal, Role, RuleControl, RuleRef};

/// The largest rule component the admin endpoint accepts.
const MAX_RULE_BYTES: usize = 64 << 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwapLabel {
    role: &'static str,
    result: &'static str,
    /// The gate that refused; empty when applied.
    gate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnavailableLabel {
    service: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    topic: String,
    partition: i32,
}

/// Everything the admin endpoint reports; shared by the pipeline and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabel, Counter>,
    dead_letters: Family<KindLabel, Counter>,
    batches: Counter,
    batch_duration: Histogram,
    messages: Counter,
    writes: Counter,
    conflicts: Counter,
    rule_info: Family<RuleLabel, Gauge>,
    store_duration: Family<OperationLabel, Histogram, fn() -> Histogram>,
    enrichment_duration: Histogram,
    enrichment_keys: Counter,
    stored_latency: Histogram,
    unavailable: Family<UnavailableLabel, Counter>,
    consumer_lag: Family<PartitionLabel, Gauge>,
    source_gaps: Family<PartitionLabel, Counter>,
    source_reconnects: Family<PartitionLabel, Counter>,
    swaps: Family<SwapLabel, Counter>,
    shadow_decisions: Counter,
    shadow_disagreements: Counter,
    rule: Mutex<Option<RuleInfo>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("converge");
        let decisions = Family::<DecisionLabel, Counter>::default();
        let dead_letters = Family::<KindLabel, Counter>::default();
        let batches = Counter::default();
        // 100 µs .. ~6.5 s
        let batch_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        let messages = Counter::default();
        let writes = Counter::default();
        let conflicts = Counter::default();
        let rule_info = Family::<RuleLabel, Gauge>::default();
        registry.register(
            "decisions",
            "Decisions by outcome, one per decided event",
            decisions.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages dead-lettered, by kind",
            dead_letters.clone(),
        );
        registry.register(
            "batches",
            "Batches processed and acknowledged",
            batches.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Time from a batch's arrival to its acknowledgement",
            batch_duration.clone(),
        );
        registry.register("messages", "Messages processed", messages.clone());
        registry.register(
            "writes",
            "States written (at most one per key per batch)",
            writes.clone(),
        );
        registry.register(
            "conflicts",
            "Compare-and-set races lost and decided again",
            conflicts.clone(),
        );
        registry.register("rule_info", "The active rule (value 1)", rule_info.clone());
        // 50 µs .. ~3.3 s: a pipelined round trip on loopback is well under a millisecond.
        let store_duration =
            Family::<OperationLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 17))
            });
        registry.register(
            "store_duration_seconds",
            "One pipelined store round trip for a batch, by operation (load, write)",
            store_duration.clone(),
        );
        let enrichment_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        registry.register(
            "enrichment_duration_seconds",
            "Fetching the distinct id-only keys of one batch from the order API",
            enrichment_duration.clone(),
        );
        // 1 ms .. ~65 s
        let stored_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "event_to_stored_seconds",
            "From the producer's timestamp of a message to its state stored (or dead-lettered)",
            stored_latency.clone(),
        );
        let enrichment_keys = Counter::default();
        registry.register(
            "enrichment_keys",
            "Keys fetched from the order API",
            enrichment_keys.clone(),
        );
        let unavailable = Family::<UnavailableLabel, Counter>::default();
        registry.register(
            "unavailable",
            "Failed calls to the store or dead-letter queue, each retried after a backoff",
            unavailable.clone(),
        );
        let consumer_lag = Family::<PartitionLabel, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Messages between the last acknowledged offset and the partition's end",
            consumer_lag.clone(),
        );
        let source_gaps = Family::<PartitionLabel, Counter>::default();
        registry.register(
            "source_gaps",
            "Ranges of offsets a partition's stream skipped; each is read again, or dead-lettered as lost when the records no longer exist",
            source_gaps.clone(),
        );
        let source_reconnects = Family::<PartitionLabel, Counter>::default();
        registry.register(
            "source_reconnects",
            "Partition streams opened again after they failed, ended or skipped offsets",
            source_reconnects.clone(),
        );
        let swaps = Family::<SwapLabel, Counter>::default();
        registry.register(
            "rule_swaps",
            "Rule candidates offered, by role (active, shadow), result (applied, refused) and refusing gate",
            swaps.clone(),
        );
        let shadow_decisions = Counter::default();
        registry.register(
            "shadow_decisions",
            "Events the shadow rule decided beside the active rule",
            shadow_decisions.clone(),
        );
        let shadow_disagreements = Counter::default();
        registry.register(
            "shadow_disagreements",
            "Events the shadow rule decided otherwise than the active rule",
            shadow_disagreements.clone(),
        );
        Self {
            registry,
            decisions,
            dead_letters,
            batches,
            batch_duration,
            messages,
            writes,
            conflicts,
            rule_info,
            store_duration,
            enrichment_duration,
            enrichment_keys,
            stored_latency,
            unavailable,
            consumer_lag,
            source_gaps,
            source_reconnects,
            swaps,
            shadow_decisions,
            shadow_disagreements,
            rule: Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Records the rule now serving.
    pub fn set_rule(&self, info: &RuleInfo) {
        let mut rule = self.rule.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = rule.as_ref() {
            self.rule_info
                .get_or_create(&RuleLabel {
                    rule: previous.stamp(),
                })
                .set(0);
        }
        self.rule_info
            .get_or_create(&RuleLabel { rule: info.stamp() })
            .set(1);
        *rule = Some(info.clone());
    }

    pub(crate) fn record_swap(&self, role: &'static str, result: &'static str, gate: Option<&str>) {
        self.swaps
            .get_or_create(&SwapLabel {
                role,
                result,
                gate: gate.unwrap_or_default().to_owned(),
            })
            .inc();
    }

    pub(crate) fn record_shadow(&self, decisions: u64, disagreements: u64) {
        self.shadow_decisions.inc_by(decisions);
        self.shadow_disagreements.inc_by(disagreements);
    }

    pub(crate) fn record_decision(&self, kind: DecisionKind) {
        self.decisions
            .get_or_create(&DecisionLabel {
                decision: kind.as_str(),
            })
            .inc();
    }

    pub(crate) fn record_dead_letter(&self, kind: DeadLetterKind) {
        self.dead_letters
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub(crate) fn record_batch(
        &self,
        messages: usize,
        writes: u64,
        conflicts: u64,
        took: Duration,
    ) {
        self.batches.inc();
        self.messages.inc_by(messages as u64);
        self.writes.inc_by(writes);
        self.conflicts.inc_by(conflicts);
        self.batch_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn record_store_call(&self, operation: &'static str, took: Duration) {
        self.store_duration
            .get_or_create(&OperationLabel { operation })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn record_enrichment(&self, keys: usize, took: Duration) {
        self.enrichment_keys.inc_by(keys as u64);
        self.enrichment_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn record_stored_latency(&self, millis: i64) {
        self.stored_latency.observe(millis.max(0) as f64 / 1000.0);
    }

    pub(crate) fn record_unavailable(&self, service: &'static str, operation: &'static str) {
        self.unavailable
            .get_or_create(&UnavailableLabel { service, operation })
            .inc();
    }

    /// Records how far behind its partition's end this consumer is.
    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabel {
                topic: topic.to_owned(),
                partition,
            })
            .set(lag.max(0));
    }

    /// Records a range of offsets a partition's stream skipped.
    pub(crate) fn record_source_gap(&self, topic: &str, partition: i32) {
        self.source_gaps
            .get_or_create(&PartitionLabel {
                topic: topic.to_owned(),
                partition,
            })
            .inc();
    }

    /// Records a partition stream opened again.
    pub(crate) fn record_source_reconnect(&self, topic: &str, partition: i32) {
        self.source_reconnects
            .get_or_create(&PartitionLabel {
                topic: topic.to_owned(),
                partition,
            })
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// What the admin endpoint serves from: the metrics, and the rule control when rules can be
/// swapped.
#[derive(Debug, Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    control: Option<Arc<RuleControl>>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.metrics.ready.load(Ordering::Acquire) {
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

async fn rule(State(state): State<AdminState>) -> impl IntoResponse {
    let rule = state
        .metrics
        .rule
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match rule {
        Some(info) => (
            StatusCode::OK,
            serde_json::to_string(&info).unwrap_or_default(),
        ),
        None => (StatusCode::SERVICE_UNAVAILABLE, "{}".to_owned()),
    }
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> axum::response::Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(body).unwrap_or_default(),
    )
        .into_response()
}

fn no_control() -> axum::response::Response {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "this instance does not swap rules"}),
    )
}

fn swap_response(result: Result<RuleRef, Refusal>) -> axum::response::Response {
    match result {
        Ok(applied) => json_response(StatusCode::OK, &applied),
        Err(refusal) => json_response(StatusCode::UNPROCESSABLE_ENTITY, &refusal),
    }
}

async fn rule_status(State(state): State<AdminState>) -> axum::response::Response {
    match &state.control {
        Some(control) => json_response(StatusCode::OK, &control.status()),
        None => no_control(),
    }
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
    let Some(control) = state.control else {
        return no_control();
    };
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
    match &state.control {
        Some(control) => swap_response(control.promote("admin")),
        None => no_control(),
    }
}

async fn rollback_rule(State(state): State<AdminState>) -> axum::response::Response {
    match &state.control {
        Some(control) => swap_response(control.rollback("admin")),
        None => no_control(),
    }
}

/// Binds the admin endpoint's address, so that a taken port fails at start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    Ok(listener)
}

/// Serves the admin endpoint until `shutdown` resolves.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    control: Option<Arc<RuleControl>>,
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
