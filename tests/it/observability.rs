//! The dashboard and the alert rules name only metrics and labels that `serve` exports.
//!
//! A real `converge serve` (Kafka -> Redis, through a fault proxy) is driven until every metric
//! family the dashboard (`deploy/grafana/converge.json`) and the alert rules
//! (`deploy/prometheus/converge-alerts.yaml`) read has samples: orders with duplicates, a
//! message that is not JSON and one the rule rejects, a Redis outage, an admin request without
//! the token, a rule the gates refuse and a shadow rule. Then `/metrics` is scraped, and every
//! PromQL expression of both files is parsed (`promql-parser`) and checked against it: each
//! metric must be exported with samples; each label a selector matches, an aggregation groups
//! by, a vector match joins on, a legend or an alert annotation prints must be one the series
//! at that point carry; each `label="value"` matcher's value must be one converge exports (an
//! alert matching a value that never occurs never fires). Labels Prometheus adds when it
//! scrapes are allowed beside them ([`SCRAPE_LABELS`]).
//!
//! Without a server: the dashboard's shape (every panel has expressions, one data-source
//! scheme, only defined variables), and every alert's runbook link is a section of the README.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use converge::config::{AdminConfig, StoreConfig};
use converge::entity::Event;
use converge::redact::Secret;
use converge_tests::fault_proxy::{FaultProxy, Outage};
use converge_tests::kafka::TestTopic;
use converge_tests::process::Server;
use converge_tests::prometheus::{Exposition, scrape, scrape_until};
use converge_tests::services::{TestStore, free_loopback_addr, redis_address};
use converge_tests::{Convergence, build, config, orders};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, LabelModifier, VectorMatchCardinality, VectorSelector};
use serde::Deserialize;
use serde_json::Value;

const DASHBOARD: &str = "deploy/grafana/converge.json";
const ALERTS: &str = "deploy/prometheus/converge-alerts.yaml";

/// Labels Prometheus adds to every series when it scrapes: `instance` and `job` always, and
/// `namespace` and `pod` from the PodMonitor's Kubernetes discovery
/// (`deploy/kubernetes/podmonitor.yaml`). Kept short on purpose: a query grouping by anything
/// else depends on relabelling nobody ships.
const SCRAPE_LABELS: [&str; 4] = ["instance", "job", "namespace", "pod"];

/// The one data source every panel and query variable reads: the dashboard's `datasource`
/// variable, so an import picks the Prometheus once.
const DATASOURCE_UID: &str = "${datasource}";

/// Grafana's interval variables, replaced by a duration before parsing: they stand where
/// PromQL wants one (`[$__rate_interval]`).
const INTERVALS: [(&str, &str); 3] = [
    ("__rate_interval", "5m"),
    ("__interval", "1m"),
    ("__range", "1h"),
];

/// Grafana's own variables, defined without a `templating` entry.
const GRAFANA_VARIABLES: [&str; 6] = [
    "__rate_interval",
    "__interval",
    "__range",
    "__all",
    "__name",
    "__auto",
];

const TOKEN: &str = "observability-token-0123456789abcdef";

/// Series the test's traffic makes `serve` export (metric, label, value), waited for before
/// the scrape that is checked.
const DRIVEN: [(&str, &str, &str); 6] = [
    ("converge_unavailable_total", "service", "store"),
    ("converge_rule_decisions_total", "role", "shadow"),
    ("converge_dead_letters_total", "kind", "undecodable"),
    ("converge_dead_letters_total", "kind", "rejected"),
    ("converge_rule_swaps_total", "result", "refused"),
    ("converge_admin_refusals_total", "reason", "no_token"),
];

fn workspace_file(path: &str) -> (PathBuf, String) {
    let path = build::workspace_root().join(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    (path, text)
}

// ---------------------------------------------------------------------------------------------
// What the dashboard and the alerts read

/// One PromQL expression and where it comes from, with what is printed from its labels (a
/// panel's legend, an alert's annotations).
#[derive(Debug)]
struct Query {
    origin: String,
    expr: String,
    /// Texts with `{{label}}` (legends) or `{{ $labels.label }}` (alert templates).
    templates: Vec<String>,
}

/// A `label_values(selector, label)` templating query.
#[derive(Debug)]
struct LabelValues {
    origin: String,
    selector: String,
    label: String,
}

/// Every expression of the dashboard, and its templating queries.
fn dashboard_queries(dashboard: &Value) -> (Vec<Query>, Vec<LabelValues>) {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let reference = target["refId"].as_str().unwrap_or("?");
            queries.push(Query {
                origin: format!("dashboard panel {title:?} target {reference}"),
                expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                templates: target["legendFormat"]
                    .as_str()
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
            });
        }
    }
    let mut label_values = Vec::new();
    for variable in variables(dashboard) {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or("?");
        let origin = format!("dashboard variable {name}");
        let query = match &variable["query"] {
            Value::String(query) => query.as_str(),
            // Newer Grafana writes `{"query": "...", "refId": ...}`.
            other => other["query"].as_str().unwrap_or_default(),
        };
        let Some(arguments) = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        else {
            panic!("{origin}: only label_values(selector, label) is checked, not {query:?}");
        };
        let Some((selector, label)) = arguments.rsplit_once(',') else {
            panic!("{origin}: label_values without a selector reads every metric: {query:?}");
        };
        label_values.push(LabelValues {
            origin,
            selector: selector.trim().to_owned(),
            label: label.trim().to_owned(),
        });
    }
    (queries, label_values)
}

/// The panels, rows' panels included (a collapsed row holds its own).
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

fn variables(dashboard: &Value) -> impl Iterator<Item = &Value> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
}

/// A Prometheus rule file, as far as it names metrics and labels. Unknown fields are refused,
/// so that a misspelt key (`exp:`) cannot hide an expression from the check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    // Fields declared only so that they are allowed (promtool checks their values) are never
    // read here: hence the `dead_code` allowances.
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    interval: Option<String>,
    rules: Vec<RuleEntry>,
}

/// One rule: an alert or a recording rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default, rename = "for")]
    #[allow(dead_code)]
    pending: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl RuleEntry {
    /// `("alert", name)` or `("record", name)`.
    fn kind_and_name(&self) -> (&'static str, &str) {
        match (&self.alert, &self.record) {
            (Some(alert), _) => ("alert", alert),
            (None, Some(record)) => ("record", record),
            (None, None) => ("rule", "(unnamed)"),
        }
    }
}

/// Every expression of the alert rules, with the alerts' annotations as templates.
fn alert_queries(rules: &[RuleEntry]) -> Vec<Query> {
    rules
        .iter()
        .map(|rule| Query {
            origin: {
                let (kind, name) = rule.kind_and_name();
                format!("{kind} {name}")
            },
            expr: rule.expr.clone(),
            templates: rule.annotations.values().cloned().collect(),
        })
        .collect()
}

fn alert_rules() -> Vec<RuleEntry> {
    let (path, text) = workspace_file(ALERTS);
    let file: RuleFile =
        serde_yaml::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    file.groups
        .into_iter()
        .flat_map(|group| group.rules)
        .collect()
}

fn dashboard() -> Value {
    let (path, text) = workspace_file(DASHBOARD);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Checking the expressions against the exposition

/// Grafana variables an expression uses: `$name`, `${name}`, `${name:format}`, `[[name]]`.
fn grafana_variables(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(['$', '[']) {
        let after = &rest[at + 1..];
        let name: String = if rest[at..].starts_with('$') {
            after
                .strip_prefix('{')
                .unwrap_or(after)
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        } else if let Some(inner) = after.strip_prefix('[') {
            inner
                .split_once("]]")
                .map(|(name, _)| name.to_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        if !name.is_empty() {
            found.push(name);
        }
        rest = after;
    }
    found
}

/// `expr` with Grafana's interval variables replaced by durations, ready to parse.
fn without_interval_variables(expr: &str) -> String {
    let mut parseable = expr.to_owned();
    for (variable, duration) in INTERVALS {
        parseable = parseable
            .replace(&format!("${{{variable}}}"), duration)
            .replace(&format!("${variable}"), duration);
    }
    parseable
}

/// The series an expression yields: computed from which metrics, carrying which labels.
#[derive(Debug, Default, Clone)]
struct Series {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

impl Series {
    fn union(mut self, other: Series) -> Series {
        self.metrics.extend(other.metrics);
        self.labels.extend(other.labels);
        self
    }
}

/// Checks expressions against an exposition, collecting every problem.
struct Checker<'a> {
    exposition: &'a Exposition,
    /// Metrics declared (`# TYPE`) but without samples: their names are real, their labels
    /// unknown.
    empty: BTreeSet<String>,
    problems: Vec<String>,
    /// Every metric an expression named.
    used: BTreeSet<String>,
    origin: String,
}

impl<'a> Checker<'a> {
    fn new(exposition: &'a Exposition) -> Self {
        Self {
            exposition,
            empty: exposition.declared_without_samples(),
            problems: Vec::new(),
            used: BTreeSet::new(),
            origin: String::new(),
        }
    }

    fn problem(&mut self, what: String) {
        self.problems.push(format!("{}: {what}", self.origin));
    }

    /// Parses and checks one expression; answers its series (`None`: a scalar or a string).
    fn query(&mut self, query: &Query) -> Option<Series> {
        self.origin = query.origin.clone();
        if query.expr.trim().is_empty() {
            self.problem("no expression".to_owned());
            return None;
        }
        let parsed = match parser::parse(&without_interval_variables(&query.expr)) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.problem(format!("{:?} does not parse: {error}", query.expr));
                return None;
            }
        };
        let series = self.expr(&parsed);
        for template in &query.templates {
            for label in printed_labels(template) {
                let carried = series
                    .as_ref()
                    .is_some_and(|series| series.labels.contains(&label));
                if !carried {
                    self.problem(format!(
                        "{template:?} prints label {label:?}, which the expression's series do not carry ({})",
                        series
                            .as_ref()
                            .map(|s| format!("{:?}", s.labels))
                            .unwrap_or_else(|| "a scalar".to_owned())
                    ));
                }
            }
        }
        series
    }

    fn expr(&mut self, expr: &Expr) -> Option<Series> {
        match expr {
            Expr::VectorSelector(selector) => self.selector(selector),
            Expr::MatrixSelector(matrix) => self.selector(&matrix.vs),
            Expr::Paren(paren) => self.expr(&paren.expr),
            Expr::Unary(unary) => self.expr(&unary.expr),
            Expr::Subquery(subquery) => self.expr(&subquery.expr),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => None,
            Expr::Aggregate(aggregate) => {
                if let Some(param) = &aggregate.param {
                    self.expr(param);
                }
                let inner = self.expr(&aggregate.expr).unwrap_or_default();
                let op = aggregate.op.to_string();
                let mut labels = match &aggregate.modifier {
                    Some(LabelModifier::Include(by)) => {
                        self.require(&inner, &by.labels, &format!("{op} by"));
                        by.labels.iter().cloned().collect()
                    }
                    Some(LabelModifier::Exclude(without)) => {
                        self.require(&inner, &without.labels, &format!("{op} without"));
                        let mut kept = inner.labels.clone();
                        for label in &without.labels {
                            kept.remove(label);
                        }
                        kept
                    }
                    None => BTreeSet::new(),
                };
                // count_values("label", v) adds the label it names.
                if op == "count_values"
                    && let Some(param) = &aggregate.param
                    && let Expr::StringLiteral(label) = param.as_ref()
                {
                    labels.insert(label.val.clone());
                }
                Some(Series {
                    metrics: inner.metrics,
                    labels,
                })
            }
            Expr::Binary(binary) => {
                let lhs = self.expr(&binary.lhs);
                let rhs = self.expr(&binary.rhs);
                let (lhs, rhs) = match (lhs, rhs) {
                    (Some(lhs), Some(rhs)) => (lhs, rhs),
                    (one, None) | (None, one) => return one,
                };
                let modifier = binary.modifier.as_ref();
                let matching = modifier.and_then(|modifier| modifier.matching.as_ref());
                if let Some(matching) = matching {
                    let keyword = if matching.is_include() {
                        "on"
                    } else {
                        "ignoring"
                    };
                    let labels = &matching.labels().labels;
                    self.require(&lhs, labels, keyword);
                    self.require(&rhs, labels, keyword);
                }
                let card = modifier.map(|modifier| &modifier.card);
                match card {
                    Some(VectorMatchCardinality::ManyToOne(extra)) => {
                        self.require(&rhs, &extra.labels, "group_left");
                    }
                    Some(VectorMatchCardinality::OneToMany(extra)) => {
                        self.require(&lhs, &extra.labels, "group_right");
                    }
                    _ => {}
                }
                let op = binary.op;
                let metrics: BTreeSet<String> = lhs.metrics.union(&rhs.metrics).cloned().collect();
                let labels = if op.is_set_operator() {
                    if op.to_string() == "or" {
                        lhs.labels.union(&rhs.labels).cloned().collect()
                    } else {
                        lhs.labels
                    }
                } else {
                    match (card, matching) {
                        (Some(VectorMatchCardinality::ManyToOne(extra)), _) => {
                            let mut labels = lhs.labels;
                            labels.extend(extra.labels.iter().cloned());
                            labels
                        }
                        (Some(VectorMatchCardinality::OneToMany(extra)), _) => {
                            let mut labels = rhs.labels;
                            labels.extend(extra.labels.iter().cloned());
                            labels
                        }
                        (_, Some(LabelModifier::Include(on))) => {
                            on.labels.iter().cloned().collect()
                        }
                        (_, Some(LabelModifier::Exclude(ignoring))) => {
                            let mut labels = lhs.labels;
                            for label in &ignoring.labels {
                                labels.remove(label);
                            }
                            labels
                        }
                        _ => lhs.labels,
                    }
                };
                Some(Series { metrics, labels })
            }
            Expr::Call(call) => {
                let args: Vec<Option<Series>> =
                    call.args.args.iter().map(|arg| self.expr(arg)).collect();
                let strings: Vec<Option<&str>> = call
                    .args
                    .args
                    .iter()
                    .map(|arg| match arg.as_ref() {
                        Expr::StringLiteral(literal) => Some(literal.val.as_str()),
                        _ => None,
                    })
                    .collect();
                let vector = args.iter().flatten().cloned().reduce(Series::union);
                match call.func.name {
                    "histogram_quantile" => {
                        let mut series = vector.unwrap_or_default();
                        if !series.labels.remove("le") {
                            self.problem(format!(
                                "histogram_quantile over series without le (from {:?})",
                                series.metrics
                            ));
                        }
                        Some(series)
                    }
                    "label_replace" | "label_join" => {
                        let mut series = vector.unwrap_or_default();
                        // label_replace(v, dst, replacement, src, regex);
                        // label_join(v, dst, separator, src...)
                        let sources: Vec<String> = if call.func.name == "label_replace" {
                            strings
                                .get(3)
                                .copied()
                                .flatten()
                                .into_iter()
                                .collect::<Vec<_>>()
                        } else {
                            strings.iter().skip(3).flatten().copied().collect()
                        }
                        .into_iter()
                        .map(str::to_owned)
                        .collect();
                        self.require(&series, &sources, call.func.name);
                        if let Some(Some(target)) = strings.get(1) {
                            series.labels.insert((*target).to_owned());
                        }
                        Some(series)
                    }
                    "vector" | "time" | "scalar" | "pi" => None,
                    _ => vector,
                }
            }
            Expr::Extension(_) => {
                self.problem("an extension expression".to_owned());
                None
            }
        }
    }

    fn selector(&mut self, selector: &VectorSelector) -> Option<Series> {
        let matchers: Vec<&Matcher> = selector
            .matchers
            .matchers
            .iter()
            .chain(selector.matchers.or_matchers.iter().flatten())
            .collect();
        let name = selector.name.clone().or_else(|| {
            matchers
                .iter()
                .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
                .map(|m| m.value.clone())
        });
        let Some(name) = name else {
            self.problem(format!("a selector without a metric name: {selector}"));
            return None;
        };
        self.used.insert(name.clone());
        let Some(exported) = self.exposition.labels(&name) else {
            if self.empty.contains(&name) {
                self.problem(format!(
                    "{name} is declared but has no sample after the traffic this test drives: drive it, or its labels cannot be checked"
                ));
            } else {
                self.problem(format!("unknown metric {name}: serve does not export it"));
            }
            return None;
        };
        let mut labels: BTreeSet<String> = exported.keys().cloned().collect();
        labels.extend(SCRAPE_LABELS.iter().map(|label| (*label).to_owned()));
        for matcher in matchers {
            if matcher.name == "__name__" {
                continue;
            }
            if !labels.contains(&matcher.name) {
                self.problem(format!(
                    "{name} has no label {:?} (it has {:?})",
                    matcher.name,
                    exported.keys().collect::<Vec<_>>()
                ));
                continue;
            }
            let scrape = SCRAPE_LABELS.contains(&matcher.name.as_str());
            if matcher.op == MatchOp::Equal && !scrape && !matcher.value.contains('$') {
                let values = &exported[&matcher.name];
                if !values.contains(&matcher.value) {
                    self.problem(format!(
                        "{name}{{{}={:?}}} matches a value converge does not export (it exports {values:?})",
                        matcher.name, matcher.value
                    ));
                }
            }
        }
        Some(Series {
            metrics: BTreeSet::from([name]),
            labels,
        })
    }

    /// Each of `labels` must be carried by `series` (`what` says where the expression uses it).
    fn require(&mut self, series: &Series, labels: &[String], what: &str) {
        for label in labels {
            if !series.labels.contains(label) {
                self.problem(format!(
                    "{what} ({label}): no series of {:?} carries label {label:?}",
                    series.metrics
                ));
            }
        }
    }
}

/// Labels a legend (`{{label}}`) or an alert template (`{{ $labels.label }}`) prints.
fn printed_labels(template: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let inner = rest[start + 2..start + end].trim();
        let label = match inner.strip_prefix("$labels.") {
            Some(label) => label.split_whitespace().next(),
            // Legends: a bare label name; alert templates: `$value`, pipelines and the like.
            None if !inner.starts_with('$')
                && !inner.is_empty()
                && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                Some(inner)
            }
            None => None,
        };
        labels.extend(label.map(str::to_owned));
        rest = &rest[start + end + 2..];
    }
    labels
}

/// Every problem of the dashboard's and the alerts' queries against `exposition`, and the
/// metrics they name.
fn problems_against(exposition: &Exposition) -> (Vec<String>, BTreeSet<String>) {
    let dashboard = dashboard();
    let (queries, label_values) = dashboard_queries(&dashboard);
    let queries = queries.into_iter().chain(alert_queries(&alert_rules()));
    let mut checker = Checker::new(exposition);
    for query in queries {
        checker.query(&query);
    }
    for variable in label_values {
        let series = checker.query(&Query {
            origin: variable.origin.clone(),
            expr: variable.selector.clone(),
            templates: Vec::new(),
        });
        if series.is_some_and(|series| !series.labels.contains(&variable.label)) {
            checker.problems.push(format!(
                "{}: no label {:?}",
                variable.origin, variable.label
            ));
        }
    }
    (checker.problems, checker.used)
}

// ---------------------------------------------------------------------------------------------
// Driving serve

async fn post_rule(admin: SocketAddr, query: &str, token: Option<&str>, body: Vec<u8>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("http://{admin}/rule{query}"))
        .header("content-type", "application/wasm")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .expect("admin answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observability_dashboard_and_alerts_name_only_what_serve_exports() {
    let topic = TestTopic::create("observability", 2).await;
    let dead_letters = TestTopic::create("observability-dlq", 1).await;
    let redis = TestStore::standalone("observability").await;
    let proxy = FaultProxy::start(redis_address()).await;
    let group = format!("{}-group", topic.name);
    let mut dir = tempfile::tempdir().expect("temp dir");
    let admin = free_loopback_addr();
    // A short store timeout and backoff: the outage below is counted within a second.
    let mut store = config::redis_store(&proxy.redis_url(), redis.store.prefix());
    if let StoreConfig::Redis(section) = &mut store {
        section.common.timeout_ms = 500;
    }
    let mut settings = config::kafka_serve(&topic.name, &dead_letters.name, &group, store);
    settings.pipeline.backoff_ms = 20;
    settings.pipeline.max_backoff_ms = 200;
    settings.admin = Some(AdminConfig {
        listen: admin,
        token: Some(Secret::new(TOKEN)),
        ..AdminConfig::default()
    });
    let log = dir.path().join("serve.log");
    let server = Server::start(&config::write(dir.path(), &settings), &log);

    // Orders, shuffled and duplicated (ignores by reason), one message that is not JSON and one
    // the rule rejects (dead letters of two kinds).
    let prefix = format!("observability-{:08x}-", rand::random::<u32>());
    let first = orders::generate(&prefix, 100, 30, rand::random());
    topic.produce(&first.events).await;
    topic
        .produce_raw(
            &format!("{prefix}poison"),
            &[
                b"{not json".to_vec(),
                br#"{"status":"shipped","version":1}"#.to_vec(),
            ],
        )
        .await;
    Convergence::new(&redis.store, &first.expected)
        .logs(&mut dir)
        .wait_with_offsets(async || topic.progress(&group))
        .await;

    // The admin endpoint: a swap without the token, a component the gates refuse, a shadow.
    assert_eq!(post_rule(admin, "", None, b"\0asm".to_vec()).await, 401);
    assert_eq!(
        post_rule(admin, "", Some(TOKEN), b"not a component".to_vec()).await,
        422
    );
    let shadow = std::fs::read(build::rule("version-rank")).expect("the version-rank rule");
    assert_eq!(
        post_rule(admin, "?role=shadow", Some(TOKEN), shadow).await,
        200
    );

    // Redis gone while more orders arrive: store calls fail and are retried until it is back.
    proxy.outage(Outage::Refuse);
    let second = orders::generate(&format!("{prefix}second-"), 100, 30, rand::random());
    topic.produce(&second.events).await;
    scrape_until(admin, &log, "the outage to be counted", |exposition| {
        exposition.has("converge_unavailable_total", "service", "store")
    })
    .await;
    proxy.restore();
    let expected: BTreeMap<String, Event> = first
        .expected
        .iter()
        .chain(&second.expected)
        .map(|(key, event)| (key.clone(), event.clone()))
        .collect();
    Convergence::new(&redis.store, &expected)
        .logs(&mut dir)
        .wait_with_offsets(async || topic.progress(&group))
        .await;

    // Consumer lag comes with librdkafka's statistics (every 5 s); the shadow's decisions with
    // the batches after it.
    let exposition = scrape_until(admin, &log, "every driven family", |exposition| {
        exposition.labels("converge_consumer_lag").is_some()
            && DRIVEN
                .iter()
                .all(|(metric, label, value)| exposition.has(metric, label, value))
    })
    .await;
    server.terminate();

    let (problems, used) = problems_against(&exposition);
    assert!(
        problems.is_empty(),
        "the dashboard or the alerts name what serve does not export:\n  {}\n\n/metrics:\n{exposition}",
        problems.join("\n  ")
    );
    eprintln!("checked {} metrics: {used:?}", used.len());
}

// ---------------------------------------------------------------------------------------------
// The files alone

#[test]
fn observability_every_file_has_expressions_and_the_dashboard_one_datasource() {
    let dashboard = dashboard();
    let (queries, label_values) = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "dashboard expressions: {queries:?}");
    assert!(
        !label_values.is_empty(),
        "the dashboard's instance variable"
    );
    let (path, text) = workspace_file(ALERTS);
    let rules = alert_rules();
    // Each rule the reading found is one the file declares, and none is missed.
    let declared = text
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            line.starts_with("- alert:") || line.starts_with("- record:")
        })
        .count();
    assert!(declared > 0, "{} declares no rule", path.display());
    assert_eq!(rules.len(), declared, "{rules:?}");
    for rule in &rules {
        assert!(!rule.expr.trim().is_empty(), "{rule:?} has no expression");
    }

    let mut problems = Vec::new();
    let expected = serde_json::json!({ "type": "prometheus", "uid": DATASOURCE_UID });
    let mut defined: BTreeSet<String> = GRAFANA_VARIABLES.iter().map(|v| (*v).to_owned()).collect();
    for variable in variables(&dashboard) {
        let name = variable["name"].as_str().unwrap_or_default().to_owned();
        match variable["type"].as_str() {
            Some("datasource") if name != "datasource" || variable["query"] != "prometheus" => {
                problems.push(format!(
                    "the data-source variable must be `datasource` of type prometheus: {variable}"
                ));
            }
            Some("datasource") => {}
            _ if variable.get("datasource").is_some() && variable["datasource"] != expected => {
                problems.push(format!(
                    "variable {name} reads {} instead of {expected}",
                    variable["datasource"]
                ));
            }
            _ => {}
        }
        defined.insert(name);
    }
    if !defined.contains("datasource") {
        problems.push("no `datasource` variable".to_owned());
    }
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if let Some(id) = panel["id"].as_u64()
            && !ids.insert(id)
        {
            problems.push(format!("panel {title:?}: id {id} is used twice"));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"] != expected {
            problems.push(format!(
                "panel {title:?} reads {} instead of {expected}",
                panel["datasource"]
            ));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?} has no expression"));
        }
        for target in &targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            if expr.trim().is_empty() {
                problems.push(format!("panel {title:?} has a target without expression"));
            }
            if target.get("datasource").is_some() && target["datasource"] != expected {
                problems.push(format!(
                    "panel {title:?} has a target reading {}",
                    target["datasource"]
                ));
            }
            for variable in grafana_variables(expr) {
                if !defined.contains(&variable) {
                    problems.push(format!(
                        "panel {title:?} uses ${variable}, which the dashboard does not define"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn observability_each_alert_links_its_readme_section() {
    let (_, readme) = workspace_file("README.md");
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && let Some(heading) = line.strip_prefix('#') {
            anchors.insert(anchor(heading.trim_start_matches('#')));
        }
    }
    let mut problems = Vec::new();
    for rule in alert_rules() {
        let Some(name) = &rule.alert else { continue };
        match rule
            .annotations
            .get("runbook_url")
            .and_then(|url| url.strip_prefix("README.md#"))
        {
            Some(target) if anchors.contains(target) => {}
            Some(target) => problems.push(format!(
                "{name}: README.md has no section #{target} (a heading \"{name}\")"
            )),
            None => problems.push(format!(
                "{name}: no runbook_url annotation README.md#<section>"
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn observability_the_checker_finds_what_a_scrape_lacks() {
    // A scrape as serve writes it, one family of each type; the checker must name each fault.
    let exposition = Exposition::parse(concat!(
        "# TYPE converge_decisions counter\n",
        "converge_decisions_total{decision=\"insert\"} 3\n",
        "# TYPE converge_store_duration_seconds histogram\n",
        "converge_store_duration_seconds_sum{operation=\"load\"} 0.5\n",
        "converge_store_duration_seconds_count{operation=\"load\"} 2\n",
        "converge_store_duration_seconds_bucket{le=\"0.1\",operation=\"load\"} 2\n",
        "converge_store_duration_seconds_bucket{le=\"+Inf\",operation=\"load\"} 2\n",
        "# TYPE converge_rule_swaps counter\n",
        "# TYPE converge_ignores counter\n",
        "converge_ignores_total{rule=\"r@1\",reason=\"say \\\"hi\\\", twice\"} 1\n",
        "# EOF\n",
    ));
    assert!(
        exposition.has("converge_ignores_total", "reason", "say \"hi\", twice"),
        "{exposition:?}"
    );
    let check = |expr: &str, legend: &str| {
        let mut checker = Checker::new(&exposition);
        checker.query(&Query {
            origin: "test".to_owned(),
            expr: expr.to_owned(),
            templates: vec![legend.to_owned()],
        });
        checker.problems
    };
    let fine = [
        (
            "sum by (decision, instance) (rate(converge_decisions_total{instance=~\"$instance\"}[$__rate_interval]))",
            "{{decision}} {{instance}}",
        ),
        (
            "histogram_quantile(0.99, sum by (le, operation) (rate(converge_store_duration_seconds_bucket[5m])))",
            "{{operation}}",
        ),
        (
            "sum(rate(converge_decisions_total{decision=\"insert\"}[5m])) > 0",
            "{{ $value | humanize }}",
        ),
    ];
    for (expr, legend) in fine {
        assert_eq!(check(expr, legend), Vec::<String>::new(), "{expr}");
    }
    let faulty = [
        ("sum(rate(converge_decision_total[5m]))", "unknown metric"),
        (
            "sum by (kind) (rate(converge_decisions_total[5m]))",
            "(kind)",
        ),
        ("converge_decisions_total{outcome=\"insert\"}", "no label"),
        (
            "converge_decisions_total{decision=\"inserted\"}",
            "does not export",
        ),
        (
            "histogram_quantile(0.9, sum by (operation) (rate(converge_store_duration_seconds_bucket[5m])))",
            "without le",
        ),
        (
            "sum by (le) (converge_store_duration_seconds_count)",
            "(le)",
        ),
        ("converge_rule_swaps_total", "no sample"),
        ("sum(converge_decisions_total)", "prints label"),
        ("sum(", "does not parse"),
        ("", "no expression"),
    ];
    for (expr, problem) in faulty {
        let legend = if problem == "prints label" {
            "{{decision}}"
        } else {
            ""
        };
        let problems = check(expr, legend);
        assert!(
            problems.iter().any(|found| found.contains(problem)),
            "{expr}: expected a problem with {problem:?}, got {problems:?}"
        );
    }
}

/// The partitions `serve` exports a consumer lag for, as scraped now.
fn lag_partitions(exposition: &Exposition) -> BTreeSet<String> {
    exposition
        .labels("converge_consumer_lag")
        .and_then(|labels| labels.get("partition"))
        .map(|values| values.iter().cloned().collect())
        .unwrap_or_default()
}

/// A partition handed to another member drops out of the lag the first one exports: otherwise
/// its last value stays exported for good, the lag alerts add it to the new owner's, and
/// `ConvergeNoBatches` fires for an instance that owns nothing any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observability_consumer_lag_is_exported_only_by_the_partition_owner() {
    const PARTITIONS: usize = 4;
    let topic = TestTopic::create("observability-lag", PARTITIONS as i32).await;
    let dead_letters = TestTopic::create("observability-lag-dlq", 1).await;
    let redis = TestStore::standalone("observability-lag").await;
    let group = format!("{}-group", topic.name);
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = format!("observability-lag-{:08x}-", rand::random::<u32>());
    let stream = orders::generate(&prefix, 400, 30, rand::random());
    let (first_half, second_half) = stream.events.split_at(stream.events.len() / 2);
    topic.produce(first_half).await;

    let start = |name: &str| {
        let admin = free_loopback_addr();
        let settings = config::kafka_serve_with_admin(
            &topic.name,
            &dead_letters.name,
            &group,
            redis.store.prefix(),
            admin,
        );
        let member_dir = dir.path().join(name);
        std::fs::create_dir_all(&member_dir).expect("member dir");
        let config = config::write(&member_dir, &settings);
        let log = member_dir.join("serve.log");
        (admin, log.clone(), Server::start(&config, &log))
    };
    let everything = |exposition: &Exposition| lag_partitions(exposition).len() == PARTITIONS;

    // Alone in the group, the first member owns (and reports) every partition.
    let (first_admin, first_log, first) = start("first");
    scrape_until(
        first_admin,
        &first_log,
        "lag for every partition",
        everything,
    )
    .await;

    // A second member takes some of them; each partition is then reported by exactly one.
    let (second_admin, second_log, second) = start("second");
    topic.produce(second_half).await;
    scrape_until(
        second_admin,
        &second_log,
        "the second member's lag",
        |exposition| !lag_partitions(exposition).is_empty(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let first_owns = lag_partitions(&scrape(first_admin).await.expect("admin answers"));
        let second_owns = lag_partitions(&scrape(second_admin).await.expect("admin answers"));
        let disjoint = first_owns.is_disjoint(&second_owns);
        if disjoint && first_owns.len() + second_owns.len() == PARTITIONS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "each partition's lag should come from its owner only: first reports {first_owns:?}, \
             second {second_owns:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    first.terminate();
    second.terminate();
}
