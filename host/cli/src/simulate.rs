//! `converge simulate`: the order system's stand-in, publishing its changes through a network
//! that shuffles, duplicates and delays them.

use std::io::{self, IsTerminal as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use converge::simulator::{MessageShape, Publisher, Simulator, SimulatorConfig};

use crate::progress_bar::Bar;

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// Orders to create and move through their lifecycle.
    #[arg(long, value_name = "N", default_value_t = SimulatorConfig::default().orders)]
    orders: usize,
    /// Order ids are this prefix and a number.
    #[arg(long, value_name = "PREFIX", default_value = "order-")]
    key_prefix: String,
    /// What a message carries: the whole order, or only its id (to be enriched).
    #[arg(long, value_enum, default_value_t = Messages::Full)]
    messages: Messages,
    /// Percent of messages published twice.
    #[arg(long, value_name = "PERCENT", default_value_t = SimulatorConfig::default().duplicate_percent)]
    duplicate_percent: u8,
    /// Messages held at once and let out in random order (1: keep the order).
    #[arg(long, value_name = "N", default_value_t = SimulatorConfig::default().shuffle_window)]
    shuffle_window: usize,
    /// Hold each message up to this long before publishing it.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    max_delay_ms: u64,
    /// Status changes per second; 0: as fast as possible. Paced runs are open-loop: each Kafka
    /// record's timestamp is the time it was scheduled for, even when it goes out late.
    #[arg(long, value_name = "N", default_value_t = 0)]
    rate: u32,
    /// Stop after this many seconds (with --rate: after rate × seconds changes); orders not yet
    /// final stay on their last status. Default: every order runs to its end.
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Seed of the simulation; the same seed makes the same orders and disorder.
    #[arg(long, value_name = "N", default_value_t = SimulatorConfig::default().seed)]
    seed: u64,
    /// Kafka bootstrap servers; without them, messages are written to stdout as JSON lines.
    #[arg(long, value_name = "HOST:PORT,...")]
    brokers: Option<String>,
    /// The topic to publish to.
    #[arg(long, value_name = "TOPIC", default_value = "orders")]
    topic: String,
    /// A librdkafka producer property (e.g. security.protocol=SASL_SSL). Repeatable.
    #[arg(long = "property", value_name = "NAME=VALUE")]
    properties: Vec<String>,
    /// Serve the order API (GET /orders/{id}, POST /orders, POST /orders/{id}/advance) here.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Write every order's final state here (JSON, by order id): what a converged store holds.
    #[arg(long, value_name = "FILE")]
    expected: Option<PathBuf>,
    /// Keep serving the order API after publishing, until SIGINT or SIGTERM.
    #[arg(long, requires = "listen")]
    serve: bool,
}

/// What a published message carries ([`MessageShape`], as the command line names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Messages {
    /// The whole order: key, status, version, timestamp_ms, payload.
    Full,
    /// Only `{"key": id}`: the consumer fetches the order from `GET /orders/{id}`.
    IdOnly,
}

impl From<Messages> for MessageShape {
    fn from(messages: Messages) -> Self {
        match messages {
            Messages::Full => MessageShape::Full,
            Messages::IdOnly => MessageShape::IdOnly,
        }
    }
}

pub(crate) fn simulate(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut properties = std::collections::BTreeMap::new();
    for property in &args.properties {
        let (name, value) = property
            .split_once('=')
            .with_context(|| format!("--property {property:?} is not NAME=VALUE"))?;
        properties.insert(name.to_owned(), value.to_owned());
    }
    let config = SimulatorConfig {
        orders: args.orders,
        key_prefix: args.key_prefix.clone(),
        shape: args.messages.into(),
        duplicate_percent: args.duplicate_percent.min(100),
        shuffle_window: args.shuffle_window,
        max_delay: Duration::from_millis(args.max_delay_ms),
        rate: args.rate,
        duration: args
            .seconds
            .map(|seconds| {
                Duration::try_from_secs_f64(seconds)
                    .with_context(|| format!("--seconds {seconds} is not a duration"))
            })
            .transpose()?,
        seed: args.seed,
    };
    let runtime = crate::runtime::multi_thread()?;
    let shutdown = crate::runtime::signals(&runtime);
    runtime.block_on(async {
        let publisher = match &args.brokers {
            #[cfg(feature = "kafka")]
            Some(brokers) => Publisher::kafka(brokers, &args.topic, &properties)?,
            #[cfg(not(feature = "kafka"))]
            Some(_) => {
                return Err(crate::features::needs_feature(
                    "converge simulate --brokers",
                    "kafka",
                ));
            }
            None => Publisher::Lines(Box::new(io::BufWriter::new(io::stdout()))),
        };
        let simulator = Simulator::new(config, publisher);
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        #[cfg(not(feature = "http"))]
        drop(api_stopped);
        let api: Option<tokio::task::JoinHandle<io::Result<()>>> = match args.listen {
            #[cfg(feature = "http")]
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                eprintln!(
                    "order API on http://{}/orders/{{id}}",
                    listener.local_addr()?
                );
                Some(tokio::spawn(simulator.serve_api(listener, async move {
                    let _ = api_stopped.await;
                })))
            }
            #[cfg(not(feature = "http"))]
            Some(_) => {
                return Err(crate::features::needs_feature(
                    "converge simulate --listen",
                    "http",
                ));
            }
            None => None,
        };
        // Not over JSON lines written to the same terminal: the two would mix.
        let bar = Bar::shown_if(args.brokers.is_some() || !io::stdout().is_terminal());
        let summary = simulator.run_with_progress(&bar).await?;
        bar.finish();
        if let Some(path) = &args.expected {
            let json = serde_json::to_string_pretty(&summary.expected)?;
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        eprintln!("{}", serde_json::to_string(&summary)?);
        if args.serve {
            eprintln!("serving the order API until SIGINT or SIGTERM");
            shutdown.wait().await;
            simulator.drain().await?;
        }
        let _ = stop_api.send(());
        if let Some(api) = api {
            api.await??;
        }
        Ok(ExitCode::SUCCESS)
    })
}
