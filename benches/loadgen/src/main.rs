//! `weir-loadgen`: load generator for comparing Weir with Mosquitto.
//!
//! It speaks MQTT through `rumqttc`, never through Weir's own codec, so that a codec bug cannot hide itself. Each
//! scenario run prints a human summary on stderr and one JSON line (a [`Report`]) on stdout or appended to
//! `--out`; `weir-loadgen report` turns such lines into the Markdown table of `docs/BENCHMARKS.md`.

mod proc_stats;
mod report;
mod scenarios;
mod tls;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weir-loadgen", about = "MQTT load generator for Weir vs Mosquitto benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N publishers -> 1 subscriber (`bench/.../fan-in/<i>`, subscriber on `.../+`).
    FanIn(RunArgs),
    /// 1 publisher -> N subscribers on one topic.
    FanOut(RunArgs),
    /// N publisher/subscriber pairs, each pair on its own topic.
    Pairs(RunArgs),
    /// N clients connecting as fast as they can: connects/s and time until all are connected.
    ConnectStorm(RunArgs),
    /// N idle connections held for --duration seconds: broker memory per connection.
    Idle(RunArgs),
    /// N retained topics, then 500 subscriptions one at a time: SUBSCRIBE to retained message, and memory.
    Retained(RunArgs),
    /// Print a Markdown comparison table from JSON result lines.
    Report(ReportArgs),
    /// Print half of the lowest publish rate (msg/s) any broker reached in the named run (for fixed-rate runs).
    HalfRate(HalfRateArgs),
}

/// What every scenario takes. Not every field matters to every scenario (QoS and payload do not matter to
/// `connect-storm` or `idle`).
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Broker port.
    #[arg(long, default_value_t = 21883)]
    pub(crate) port: u16,
    /// PID of the broker process: its RSS (VmRSS) and CPU time (utime+stime) are read before and after.
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,
    /// Label of the broker configuration (a column of the report), e.g. `weir-synced`, `mosquitto-persist`.
    #[arg(long, default_value = "broker")]
    pub(crate) broker: String,
    /// Label of the run (a row group of the report); defaults to a description of the parameters.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Number of clients: publishers (fan-in), subscribers (fan-out), pairs, or connections.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub(crate) clients: usize,
    /// QoS of publications and subscriptions (0, 1 or 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) qos: u8,
    /// Payload size in bytes (at least 16: send time in ns and sequence number, then padding).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub(crate) payload: u64,
    /// Total publish rate in messages/s over all publishers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Seconds to publish (pub/sub scenarios) or to hold the connections (idle).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Longest wait, in seconds, for acknowledgements and deliveries still in flight after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) drain: f64,
    /// Connections opened at once (connect-storm, idle; 0 = all of them).
    #[arg(long, default_value_t = 0)]
    pub(crate) concurrency: usize,
    /// Keep alive in seconds.
    #[arg(long, default_value_t = 60)]
    pub(crate) keep_alive: u64,
    /// Seconds to wait for each CONNACK / SUBACK.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) connect_timeout: f64,
    /// User name for CONNECT (with --password). `{n}` is replaced by the client's number, so that every client
    /// can be a user of its own (`device-{n}`).
    #[arg(long)]
    pub(crate) username: Option<String>,
    /// Password for CONNECT.
    #[arg(long)]
    pub(crate) password: Option<String>,
    #[command(flatten)]
    pub(crate) tls: tls::TlsArgs,
    /// Append the JSON result line to this file instead of printing it on stdout.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Files of JSON result lines.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Fail (exit 1) unless every run connected all its clients and, for pub/sub runs, received messages and
    /// measured a latency. Speeds are never checked.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Args)]
struct HalfRateArgs {
    /// File of JSON result lines.
    file: PathBuf,
    /// The run's name (`--name` of the runs).
    name: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::FanIn(a) => scenarios::run(scenarios::Kind::FanIn, a),
        Command::FanOut(a) => scenarios::run(scenarios::Kind::FanOut, a),
        Command::Pairs(a) => scenarios::run(scenarios::Kind::Pairs, a),
        Command::ConnectStorm(a) => scenarios::run(scenarios::Kind::ConnectStorm, a),
        Command::Idle(a) => scenarios::run(scenarios::Kind::Idle, a),
        Command::Retained(a) => scenarios::run(scenarios::Kind::Retained, a),
        Command::Report(a) => report::print_table(&a.files, a.check),
        Command::HalfRate(a) => report::print_half_rate(&a.file, &a.name),
    }
}
