//! The `weir` command line. Parses arguments, sets up logging and signals, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use weir::app;
use weir::config::Config;

/// Weir: an edge gateway for the factory floor. One MQTT broker (3.1.1 and 5.0, over TCP and WebSocket) that
/// every device talks to, instead of every device talking to every other.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway. Without --config it starts on safe local defaults: MQTT on 127.0.0.1:1883, MQTT over
    /// WebSocket on ws://127.0.0.1:8083/mqtt, anonymous clients allowed (loopback only), data in ./data.
    Serve {
        /// TOML configuration file (see README.md for the keys).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Directory for everything the gateway writes; overrides `data_dir` in the file.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Check a configuration file and print the listeners it defines, without starting anything.
    CheckConfig {
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, data_dir } => {
            let mut config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(serve(config))
        }
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            for l in &config.listeners {
                println!("{}: {:?} on {} (anonymous {})", l.name, l.protocol, l.bind, l.allow_anonymous);
            }
            println!("data directory: {}", config.data_dir.display());
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listeners = app::bind(&config).await?;
    for l in &listeners {
        let addr = l.local_addr()?;
        match l.config.protocol {
            weir::mqtt::net::Protocol::Tcp => println!("weir: MQTT on mqtt://{addr}"),
            weir::mqtt::net::Protocol::WebSocket => {
                println!("weir: MQTT over WebSocket on ws://{addr}{}", l.config.ws_path)
            }
        }
    }
    println!("weir: data directory {}", config.data_dir.display());
    app::run(config, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Human-readable logs on stderr; `RUST_LOG` overrides the default `info` level.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
