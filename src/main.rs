//! The `weir` command line: parses arguments, sets up logging and signals, starts one runtime, and hands over to
//! the library: `app` for `serve`, the operations layer (`ops`) for everything else. It only presents results.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use weir::app;
use weir::config::Config;
use weir::mqtt::net::Protocol;
use weir::ops::certs::IssueRequest;

use weir::ops::{self, Actor, Ops};
use weir::store::history::PayloadView;
use weir::timefmt;

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
    /// Manage MQTT users (passwords are read from a prompt or standard input, never from the command line).
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[command(flatten)]
        place: Place,
    },
    /// Manage topic access rules. Users have no access until a rule allows it (the `admin` role may do
    /// everything); anonymous clients are restricted only once a rule names `anonymous`.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
        #[command(flatten)]
        place: Place,
    },
    /// Issue, list, show and revoke device certificates from Weir's own CA.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
        #[command(flatten)]
        place: Place,
    },
    /// Weir's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        #[command(flatten)]
        place: Place,
    },
    /// Import users and access rules from another broker.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
        #[command(flatten)]
        place: Place,
    },
    /// Print the audit log of security and configuration events, newest first.
    Audit {
        #[command(flatten)]
        place: Place,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Write an encrypted backup of the configuration (users, rules, certificates, audit log) and the CA, and
    /// with --with-journal the message journal; the passphrase is read from a prompt or standard input.
    Backup {
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
        #[arg(long)]
        with_journal: bool,
        #[command(flatten)]
        place: Place,
    },
    /// Check a backup completely and stage it: the gateway applies it at its next start, keeping what it
    /// replaces in <data_dir>/replaced-<time>/.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        place: Place,
    },
    /// Bearer tokens for machines, such as a Prometheus scraper of the console's /metrics.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        place: Place,
    },
    /// Read the message history in the data directory (works while the gateway runs).
    History {
        #[command(subcommand)]
        command: HistoryCommand,
    },
    /// Presence: the history of connects, disconnects and losses, uptime figures, and the birth and death
    /// messages published for matching clients.
    Presence {
        #[command(subcommand)]
        command: PresenceCommand,
        #[command(flatten)]
        place: Place,
    },
    /// Sparkplug B: actions on the edge nodes, carried out by the running gateway.
    Sparkplug {
        #[command(subcommand)]
        command: SparkplugCommand,
        #[command(flatten)]
        place: Place,
    },
    /// Forward to Apache Kafka and back: upstream clusters, routes, their status. Changes apply to the running
    /// gateway within a second.
    Kafka {
        #[command(subcommand)]
        command: KafkaCommand,
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Debug, Subcommand)]
enum SparkplugCommand {
    /// Ask an edge node to republish its births (the `Node Control/Rebirth` NCMD). The running gateway sends it
    /// within a second: at most once per node every 10 s, only to a node it knows, written to the audit log.
    /// Asks for confirmation unless --yes.
    Rebirth {
        /// The Sparkplug group id.
        group: String,
        /// The edge node id.
        node: String,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
        /// Seconds to wait for the gateway's answer; the request is withdrawn after them.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
enum PresenceCommand {
    /// Print connects, disconnects and losses (with time, client, user, address, reason), newest first.
    History {
        #[command(flatten)]
        range: PresenceRange,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        oldest_first: bool,
        /// One JSON object per line instead of text.
        #[arg(long)]
        jsonl: bool,
    },
    /// Per client: time online, connects and losses over a range (by default the last day).
    Uptime {
        #[command(flatten)]
        range: PresenceRange,
    },
    /// Birth and death messages.
    Rule {
        #[command(subcommand)]
        command: PresenceRuleCommand,
    },
}

/// Which client, over which time range.
#[derive(Debug, clap::Args)]
struct PresenceRange {
    /// One client id (all clients without it).
    #[arg(long)]
    client: Option<String>,
    /// From this time on: 2026-11-25T10:00:00Z, 2026-11-25, unix milliseconds, or 15m / 2h / 7d ago.
    #[arg(long)]
    since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PresenceRuleCommand {
    /// Add a rule, e.g. `weir presence rule add birth 'client:sensor-*' 'plant/%c/state'
    /// --payload '{"online":true,"ts":%t}' --qos 1 --retain`. A client's birth or death is published only
    /// where the access rules let that client publish.
    Add {
        /// `birth` (on connect) or `death` (on a normal disconnect; a lost client gets its will instead).
        event: String,
        /// `user:PATTERN`, `role:NAME` or `client:PATTERN` (`*` any characters, `?` one).
        matcher: String,
        /// Topic template: `%c` the client id, `%u` the user name.
        topic: String,
        /// Payload template: `%c`, `%u`, `%t` unix ms, `%T` RFC 3339 time, `%%` a percent sign.
        #[arg(long, default_value = "")]
        payload: String,
        #[arg(long, default_value_t = 1)]
        qos: u8,
        #[arg(long)]
        retain: bool,
    },
    /// Delete a rule by its id.
    Del { id: i64 },
    /// List the rules with their ids.
    List,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user; asks for the password twice on a terminal, else reads one line from standard input.
    Add {
        name: String,
        /// A role the user has (repeatable); `admin` may do everything.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// Change a user's password.
    Passwd { name: String },
    /// Replace a user's roles (none given: no roles).
    Roles {
        name: String,
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// Delete a user.
    Del { name: String },
    /// List users and their roles.
    List,
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a certificate with a key made here. Writes NAME.crt, NAME.key (mode 0600) and NAME-bundle.pem
    /// (certificate, CA, key) into --out; with --p12, also NAME.p12, protected by a password read from a prompt or
    /// standard input. The key is not kept by Weir.
    Issue {
        name: String,
        /// Subject alternative name (repeatable): DNS:host, IP:addr, email:x@y, URI:spiffe://...
        #[arg(long = "san", value_name = "SAN")]
        sans: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// p256 (default), p384 or ed25519.
        #[arg(long, default_value = "p256")]
        key_type: String,
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        #[arg(long)]
        p12: bool,
    },
    /// Sign a device's certificate request (PEM); the key never leaves the device. Writes NAME.crt into --out.
    Sign {
        csr: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u64,
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// List issued certificates.
    List,
    /// Show one certificate (by name or serial), with its PEM.
    Show { name: String },
    /// Revoke a certificate (by name or serial): refused at the next handshake, live connections closed.
    Revoke {
        name: String,
        /// Why, as the CRL will say: unspecified, key-compromise, affiliation-changed, superseded,
        /// cessation-of-operation or privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Write a certificate (by name or serial) with the CA chain as a PEM bundle (Weir never keeps keys).
    Export {
        name: String,
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token; it is printed once and not kept (only its SHA-256 is).
    Add { name: String },
    /// List tokens (never their values) with when they were made and last used.
    List,
    /// Delete a token: it stops working at once.
    Del { name: String },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the CA certificate (PEM), for devices' trust stores.
    Export {
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Use an existing CA (an enterprise PKI's issuing CA) instead of Weir's own: certificate and unencrypted
    /// PKCS#8 key, PEM. Refused if Weir already has a CA unless --replace (then re-issue device certificates).
    Import {
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// A Mosquitto password file (hashes kept, upgraded to argon2id at each user's next login) and ACL file.
    Mosquitto {
        #[arg(long, value_name = "FILE")]
        passwd: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        acl: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AclCommand {
    /// Add a rule, e.g. `weir acl add role:operators allow both 'plant/a/#'` or
    /// `weir acl add anyone allow publish 'devices/%u/#'`.
    Add {
        /// `user:NAME`, `role:NAME`, `anyone` (every authenticated user) or `anonymous`.
        subject: String,
        /// `allow` or `deny` (a matching deny wins).
        effect: String,
        /// `publish`, `subscribe` or `both`.
        action: String,
        /// A topic filter; `%u` and `%c` stand for the user name and the client id.
        filter: String,
    },
    /// Delete a rule by its id.
    Del { id: i64 },
    /// List the rules with their ids.
    List,
}

/// Where the gateway keeps its data.
#[derive(Debug, clap::Args)]
struct Place {
    /// Configuration file, to find the data directory.
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
}

impl Place {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(match (&self.data_dir, &self.config) {
            (Some(dir), _) => dir.clone(),
            (None, Some(path)) => Config::load(path)?.data_dir,
            (None, None) => Config::default().data_dir,
        })
    }
}

#[derive(Debug, Subcommand)]
enum HistoryCommand {
    /// Print matching messages, newest first.
    Query {
        #[command(flatten)]
        select: Selection,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        oldest_first: bool,
        /// One JSON object per line instead of text.
        #[arg(long)]
        jsonl: bool,
    },
    /// Write matching messages, oldest first, as CSV or JSON lines. Streams: any size runs in constant memory.
    Export {
        #[command(flatten)]
        select: Selection,
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// Write here instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Which messages, from where.
#[derive(Debug, clap::Args)]
struct Selection {
    /// Configuration file, to find the data directory.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// MQTT topic filter; + and # allowed.
    #[arg(long, default_value = "#")]
    filter: String,
    /// From this time on: 2026-11-25T10:00:00Z, 2026-11-25, unix milliseconds, or 15m / 2h / 7d ago.
    #[arg(long)]
    since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// How payloads are shown.
    #[arg(long, value_enum, default_value = "text")]
    payload: PayloadFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PayloadFormat {
    Text,
    Json,
    Hex,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, data_dir } => {
            let mut config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            serve(config).await
        }
        Command::Kafka { command, place } => kafka(command, place).await,
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            for l in &config.listeners {
                println!("{}: {:?} on {} (anonymous {})", l.name, l.protocol, l.bind, l.allow_anonymous);
            }
            println!("data directory: {}", config.data_dir.display());
            Ok(())
        }
        Command::User { command, place } => user(command, &Ops::open(&place.data_dir()?).await?).await,
        Command::Acl { command, place } => acl(command, &Ops::open(&place.data_dir()?).await?).await,
        Command::Cert { command, place } => cert(command, &Ops::open(&place.data_dir()?).await?).await,
        Command::Ca { command, place } => ca(command, &Ops::open(&place.data_dir()?).await?).await,
        Command::Import { command: ImportCommand::Mosquitto { passwd, acl }, place } => {
            let (passwd, acl) =
                (passwd.as_deref().map(read).transpose()?, acl.as_deref().map(read).transpose()?);
            let ops = Ops::open(&place.data_dir()?).await?;
            let summary = ops.import_mosquitto(passwd.as_deref(), acl.as_deref(), &Actor::cli()).await?;
            for warning in &summary.warnings {
                eprintln!("weir: warning: {warning}");
            }
            eprintln!("weir: imported {} users and {} rules", summary.users, summary.rules);
            Ok(())
        }
        Command::Audit { place, limit } => {
            let mut out = std::io::stdout().lock();
            for e in ops::audit::entries(&place.data_dir()?, limit).await? {
                writeln!(out, "{} {} {} {}", timefmt::format(e.ts), e.actor, e.action, e.detail)?;
            }
            Ok(())
        }
        Command::History { command } => history(command).await,
        Command::Token { command, place } => {
            let ops = Ops::open(&place.data_dir()?).await?;
            match command {
                TokenCommand::Add { name } => println!("{}", ops.add_token(&name, &Actor::cli()).await?),
                TokenCommand::Del { name } => {
                    ops.delete_token(&name, &Actor::cli()).await?;
                    eprintln!("weir: token {name} deleted");
                }
                TokenCommand::List => {
                    for t in ops.list_tokens().await? {
                        let used = t.last_used.map_or_else(|| "never".to_owned(), timefmt::format);
                        println!("{}\t{}\t{used}", t.name, timefmt::format(t.created));
                    }
                }
            }
            Ok(())
        }
        Command::Backup { out, with_journal, place } => {
            let data_dir = place.data_dir()?;
            let passphrase = read_new_password("the backup")?;
            let tmp = out.with_extension("partial");
            let file =
                std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            let made =
                ops::backup::create(&data_dir, &passphrase, with_journal, std::io::BufWriter::new(file))
                    .await;
            if let Err(e) = made {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            std::fs::rename(&tmp, &out).with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("weir: wrote {}", out.display());
            Ok(())
        }
        Command::Restore { file, place } => {
            let data_dir = place.data_dir()?;
            let passphrase = read_password("the backup")?;
            let backup =
                std::fs::File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let manifest =
                ops::backup::stage(&data_dir, std::io::BufReader::new(backup), &passphrase).await?;
            let journal = if manifest.has_journal { " and the journal" } else { "" };
            eprintln!(
                "weir: the backup is good (CA {}{journal}); restart the gateway to apply it",
                manifest.ca
            );
            Ok(())
        }
        Command::Presence { command, place } => presence(command, &place.data_dir()?).await,
        Command::Sparkplug { command, place } => sparkplug(command, &place.data_dir()?).await,
    }
}

async fn sparkplug(command: SparkplugCommand, data_dir: &Path) -> anyhow::Result<()> {
    match command {
        SparkplugCommand::Rebirth { group, node, yes, timeout } => {
            ops::sparkplug::check_ids(&group, &node)?;
            if !yes {
                anyhow::ensure!(
                    std::io::stdin().is_terminal(),
                    "not confirmed: pass --yes to send a rebirth request without a prompt"
                );
                eprint!(
                    "Ask edge node {group}/{node} to rebirth (it republishes all its births and metrics)? [y/N] "
                );
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                    anyhow::bail!("not confirmed: nothing sent");
                }
            }
            let ops = Ops::open(data_dir).await?;
            let timeout = std::time::Duration::from_secs(timeout.max(1));
            let done = ops.request_rebirth(&group, &node, &Actor::cli(), timeout).await?;
            eprintln!("weir: {done}");
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // SIGTERM is handled from before the listeners are bound: one that arrives while the gateway starts (systemd
    // stopping the unit, a test) stops it gracefully instead of killing it by the signal's default action.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let listeners = app::bind(&config).await?;
    // Whoever started us may stop reading our output: that is no reason to stop serving.
    let mut out = std::io::stdout();
    for l in &listeners.mqtt {
        let addr = l.local_addr()?;
        let _ = match l.config.protocol {
            Protocol::Tcp => writeln!(out, "weir: MQTT on mqtt://{addr}"),
            Protocol::Tls => writeln!(out, "weir: MQTT over TLS on mqtts://{addr}"),
            Protocol::SecureWebSocket => {
                writeln!(out, "weir: MQTT over secure WebSocket on wss://{addr}{}", l.config.ws_path)
            }
            Protocol::WebSocket => {
                writeln!(out, "weir: MQTT over WebSocket on ws://{addr}{}", l.config.ws_path)
            }
        };
    }
    if let Some(console) = &listeners.console {
        let _ = writeln!(out, "weir: console on {}", console.url()?);
    }
    let _ = writeln!(out, "weir: data directory {}", config.data_dir.display());
    // systemd (Type=notify): `app::run` polls this future only once the gateway has started on the bound
    // listeners, so READY=1 means "serving"; STOPPING=1 when the signal to stop arrives.
    let shutdown = async move {
        weir::systemd::notify_ready();
        tokio::select! {
            _ = shutdown_signal() => {},
            _ = terminate.recv() => {},
        }
        weir::systemd::notify_stopping();
    };
    app::run(config, listeners, shutdown).await?;
    Ok(())
}

async fn user(command: UserCommand, ops: &Ops) -> anyhow::Result<()> {
    let actor = Actor::cli();
    match command {
        UserCommand::Add { name, roles } => {
            ops.add_user(&name, &read_new_password(&name)?, &roles, &actor).await?;
            eprintln!("weir: user {name} added");
        }
        UserCommand::Passwd { name } => {
            ops.set_password(&name, &read_new_password(&name)?, &actor).await?;
            eprintln!("weir: password of {name} changed");
        }
        UserCommand::Roles { name, roles } => {
            ops.set_roles(&name, &roles, &actor).await?;
            eprintln!("weir: roles of {name} set");
        }
        UserCommand::Del { name } => {
            ops.delete_user(&name, &actor).await?;
            eprintln!("weir: user {name} deleted");
        }
        UserCommand::List => {
            for u in ops.list_users().await? {
                println!("{}\t{}\t{}", u.username, u.roles.join(","), timefmt::format(u.created));
            }
        }
    }
    Ok(())
}

async fn acl(command: AclCommand, ops: &Ops) -> anyhow::Result<()> {
    match command {
        AclCommand::Add { subject, effect, action, filter } => {
            let rule = ops::rules::parse_rule(&subject, &effect, &action, &filter)?;
            let id = ops.add_rule(&rule, &Actor::cli()).await?;
            eprintln!("weir: rule #{id} added");
        }
        AclCommand::Del { id } => {
            ops.delete_rule(id, &Actor::cli()).await?;
            eprintln!("weir: rule #{id} deleted");
        }
        AclCommand::List => {
            for entry in ops.list_rules().await? {
                println!("{}\t{}", entry.id, serde_json::to_string(&entry.rule)?);
            }
        }
    }
    Ok(())
}

async fn cert(command: CertCommand, ops: &Ops) -> anyhow::Result<()> {
    let actor = Actor::cli();
    match command {
        CertCommand::Issue { name, sans, days, key_type, out, p12 } => {
            let key_type = ops::certs::parse_key_type(&key_type)?;
            let p12_password = if p12 { Some(read_new_password(&format!("{name}.p12"))?) } else { None };
            let request = IssueRequest { name, sans, days, key_type, p12_password };
            let issued = ops.issue_cert(&request, &actor).await?;
            report_written(&ops::certs::write_files(&out, &issued.files)?);
            eprintln!("weir: issued {}, serial {}", issued.name, issued.serial);
        }
        CertCommand::Sign { csr, days, out } => {
            let issued = ops.sign_csr(&read(&csr)?, days, &actor).await?;
            report_written(&ops::certs::write_files(&out, &issued.files)?);
            eprintln!("weir: signed {}, serial {}", issued.name, issued.serial);
        }
        CertCommand::List => {
            for c in ops.list_certs().await? {
                let state = match (&c.revoked_at, &c.revocation_reason) {
                    (Some(_), Some(reason)) => format!("revoked ({reason})"),
                    (Some(_), None) => "revoked".to_owned(),
                    (None, _) => "valid".to_owned(),
                };
                println!("{}\t{}\t{}\t{}", c.serial, c.common_name, timefmt::format(c.not_after), state);
            }
        }
        CertCommand::Show { name } => {
            let c = ops.find_cert(&name).await?;
            println!("{}", serde_json::to_string_pretty(&c)?);
            print!("{}", c.cert_pem);
        }
        CertCommand::Export { name, out } => {
            let bundle = ops.export_cert(&name).await?;
            write_or_print(out.as_deref(), &bundle)?;
        }
        CertCommand::Revoke { name, reason } => {
            let reason = ops::certs::parse_reason(&reason)?;
            let c = ops.revoke_cert(&name, reason, &actor).await?;
            eprintln!("weir: revoked {} (serial {}): {}", c.common_name, c.serial, reason.as_str());
        }
    }
    Ok(())
}

async fn ca(command: CaCommand, ops: &Ops) -> anyhow::Result<()> {
    match command {
        CaCommand::Export { out } => write_or_print(out.as_deref(), &ops.ca_pem()?),
        CaCommand::Import { cert, key, replace } => {
            let subject = ops.import_ca(&read(&cert)?, &read(&key)?, replace, &Actor::cli()).await?;
            eprintln!("weir: imported CA {subject}; restart the gateway to use it");
            Ok(())
        }
    }
}

async fn presence(command: PresenceCommand, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let selection = |range: PresenceRange| ops::presence::PresenceSelection {
        client: range.client,
        since: range.since,
        until: range.until,
    };
    let mut out = std::io::stdout().lock();
    match command {
        PresenceCommand::History { range, limit, oldest_first, jsonl } => {
            let journal = ops::history::open(data_dir).await?;
            for e in ops::presence::history(&journal, &selection(range), limit, oldest_first).await? {
                if jsonl {
                    writeln!(out, "{}", serde_json::to_string(&e)?)?;
                } else {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        timefmt::format(e.ts),
                        e.client_id,
                        e.state,
                        e.reason.as_deref().unwrap_or("-"),
                        e.username.as_deref().unwrap_or("-"),
                        e.peer.as_deref().unwrap_or("-"),
                    )?;
                }
            }
        }
        PresenceCommand::Uptime { range } => {
            let journal = ops::history::open(data_dir).await?;
            writeln!(out, "client\tuptime\tonline\tconnects\tlosses\tnow")?;
            for u in ops::presence::uptime(&journal, &selection(range)).await? {
                writeln!(
                    out,
                    "{}\t{:.2}%\t{}s\t{}\t{}\t{}",
                    u.client_id,
                    u.fraction * 100.0,
                    u.online_ms / 1000,
                    u.connects,
                    u.losses,
                    if u.online_now { "online" } else { "offline" },
                )?;
            }
        }
        PresenceCommand::Rule { command } => {
            let ops = Ops::open(data_dir).await?;
            match command {
                PresenceRuleCommand::Add { event, matcher, topic, payload, qos, retain } => {
                    let rule = ops::presence::NewPresenceRule { matcher, event, topic, payload, qos, retain };
                    let id = ops.add_presence_rule(&rule, &Actor::cli()).await?;
                    eprintln!("weir: presence rule #{id} added");
                }
                PresenceRuleCommand::Del { id } => {
                    ops.delete_presence_rule(id, &Actor::cli()).await?;
                    eprintln!("weir: presence rule #{id} deleted");
                }
                PresenceRuleCommand::List => {
                    for r in ops.list_presence_rules().await? {
                        writeln!(
                            out,
                            "{}\t{}\t{}\t{}\tqos {}{}\t{}",
                            r.id,
                            r.event,
                            r.matcher,
                            r.topic,
                            r.qos,
                            if r.retain { " retain" } else { "" },
                            r.payload
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn history(command: HistoryCommand) -> anyhow::Result<()> {
    let select = match &command {
        HistoryCommand::Query { select, .. } | HistoryCommand::Export { select, .. } => select,
    };
    let data_dir = match (&select.data_dir, &select.config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(path)) => Config::load(path)?.data_dir,
        (None, None) => Config::default().data_dir,
    };
    let journal = ops::history::open(&data_dir).await?;
    let selection = ops::history::Selection {
        filter: select.filter.clone(),
        since: select.since.clone(),
        until: select.until.clone(),
    };
    let view = match select.payload {
        PayloadFormat::Text => PayloadView::Text,
        PayloadFormat::Json => PayloadView::Json,
        PayloadFormat::Hex => PayloadView::Hex,
    };
    match command {
        HistoryCommand::Query { limit, oldest_first, jsonl, .. } => {
            let page = ops::history::query(&journal, &selection, limit, oldest_first).await?;
            let mut out = std::io::stdout().lock();
            for m in &page.messages {
                if jsonl {
                    writeln!(out, "{}", weir::store::export::json(m, view))?;
                } else {
                    writeln!(out, "{}", ops::history::text_line(m, view))?;
                }
            }
        }
        HistoryCommand::Export { format, output, .. } => {
            let format = match format {
                ExportFormat::Csv => weir::store::export::Format::Csv,
                ExportFormat::Jsonl => weir::store::export::Format::Jsonl,
            };
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let terminal = std::io::stderr().is_terminal();
            let written = ops::history::export(&journal, &selection, format, view, &mut out, |n| {
                if terminal {
                    eprint!("\rexported {n} messages");
                }
            })
            .await?;
            if terminal {
                eprintln!();
            }
            if let Some(path) = output {
                eprintln!("weir: exported {written} messages to {}", path.display());
            }
        }
    }
    Ok(())
}

/// A file the operator named, as text.
fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// To the file if one is named, else to standard output.
fn write_or_print(out: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            weir::files::write_atomic(path, text.as_bytes(), 0o644)?;
            eprintln!("weir: wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn report_written(paths: &[PathBuf]) {
    for path in paths {
        eprintln!("weir: wrote {}", path.display());
    }
}

/// A password: prompted once without echo on a terminal, else the first line of standard input.
fn read_password(what: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        Ok(rpassword::prompt_password(format!("passphrase of {what}: "))?)
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    }
}

/// A new password: prompted twice without echo on a terminal, else the first line of standard input.
fn read_new_password(user: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {user}: "))?;
        let again = rpassword::prompt_password("again: ")?;
        anyhow::ensure!(first == again, "the passwords differ");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    }
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
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: under systemd stderr is the journal, which would keep the escape codes.
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

// --- `weir kafka ...` (issue 12): thin adapters over `weir::forward::ops`.

#[derive(Debug, Subcommand)]
enum KafkaCommand {
    /// Upstream Kafka clusters.
    Upstream {
        #[command(subcommand)]
        command: KafkaUpstreamCommand,
    },
    /// Uplink routes, MQTT to Kafka (and `list`, `show`, `pause`, `resume`, `del` for downlinks too).
    Route {
        #[command(subcommand)]
        command: KafkaRouteCommand,
    },
    /// Downlink routes, Kafka to MQTT.
    Downlink {
        #[command(subcommand)]
        command: KafkaDownlinkCommand,
    },
    /// Per route: state, lag in messages and age, rate, last acknowledgement, last error.
    Status,
}

#[derive(Debug, Subcommand)]
enum KafkaUpstreamCommand {
    /// Add or replace an upstream. acks=all and idempotence are always on.
    Set {
        name: String,
        /// HOST:PORT[,HOST:PORT...]
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        tls: bool,
        /// CA certificates (PEM) to verify the brokers with (implies --tls).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Client certificate (PEM), with --client-key.
        #[arg(long, value_name = "FILE")]
        client_cert: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        client_key: Option<PathBuf>,
        /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
        #[arg(long, value_name = "M")]
        sasl_mechanism: Option<String>,
        #[arg(long, value_name = "U")]
        sasl_user: Option<String>,
        /// Read the SASL password from the first line of standard input.
        #[arg(long)]
        sasl_password_stdin: bool,
        /// none, gzip, snappy, lz4 (default) or zstd.
        #[arg(long)]
        compression: Option<String>,
        /// The largest record sent (librdkafka's message.max.bytes, default 1000000); larger ones are dead
        /// letters.
        #[arg(long, value_name = "BYTES")]
        max_message_bytes: Option<u32>,
    },
    /// List upstreams (never their passwords).
    List,
    /// Delete an upstream no route uses.
    Del { name: String },
    /// Test the connection: a metadata request, answered (brokers, topics) or failed (unreachable,
    /// authentication, TLS) within seconds.
    Test { name: String },
}

#[derive(Debug, Subcommand)]
enum KafkaRouteCommand {
    /// Add an uplink route.
    Add {
        name: String,
        #[arg(long)]
        upstream: String,
        /// MQTT topic filter.
        #[arg(long)]
        filter: String,
        /// Kafka topic; {N} is MQTT topic level N (from 1), e.g. plant.{2}.
        #[arg(long)]
        topic: String,
        /// Record key: topic, client or level:N.
        #[arg(long, default_value = "topic")]
        key: String,
        /// raw (the payload), json (an envelope with topic, payload, properties, timestamp) or sparkplug
        /// (Sparkplug B decoded to JSON, aliases resolved; other messages are dead letters).
        #[arg(long, default_value = "raw")]
        format: String,
        /// now, oldest, or a time (2026-11-25T10:00:00Z, unix ms, 2h ...) to replay from.
        #[arg(long, default_value = "now")]
        from: String,
        /// Seconds of lag after which an alarm is logged and shown.
        #[arg(long, value_name = "SECS")]
        lag_alarm: Option<u64>,
    },
    List,
    /// A route, its status and its dead letters.
    Show {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Delete a route; its journal cursor is released.
    Del {
        name: String,
    },
    /// Send a route's dead letters again (after raising a size limit, say): those acknowledged leave the list,
    /// those refused stay with the new reason.
    Replay {
        name: String,
        /// Every dead letter of the route.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        all: bool,
        /// One dead letter, by the id `route show` gives.
        #[arg(long, value_name = "N")]
        id: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum KafkaDownlinkCommand {
    /// Add a downlink route.
    Add {
        name: String,
        #[arg(long)]
        upstream: String,
        /// Kafka topic to read.
        #[arg(long)]
        topic: String,
        /// MQTT topic to publish to: {key} is the record key, {header:NAME} a header.
        #[arg(long, value_name = "TEMPLATE")]
        mqtt_topic: String,
        #[arg(long, default_value_t = 1)]
        qos: u8,
        #[arg(long)]
        retain: bool,
        /// The user whose access rules must allow each publish.
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
        /// Kafka consumer group (default weir-<gateway>-<route>).
        #[arg(long)]
        group: Option<String>,
    },
}

async fn kafka(command: KafkaCommand, place: Place) -> anyhow::Result<()> {
    use std::io::Write;
    use weir::forward::ops;
    let data_dir = place.data_dir()?;
    let mut out = std::io::stdout().lock();
    if let KafkaCommand::Status = command {
        let view = ops::status(&data_dir);
        let Some(report) = view.report.filter(|_| view.running) else {
            anyhow::bail!("the gateway is not running (no fresh status in {})", data_dir.display());
        };
        writeln!(out, "gateway {}", report.gateway)?;
        if !report.live {
            writeln!(
                out,
                "(no runtime directory: counters as of {}, when something else last changed)",
                weir::timefmt::format(report.written_ms)
            )?;
        }
        for r in &report.routes {
            let gap = match r.last_gap {
                Some((from, to, at)) => {
                    format!(" gap={} (last: journal ids {from}-{to} at {})", r.gap, weir::timefmt::format(at))
                }
                None => String::new(),
            };
            writeln!(
                out,
                "{} {} {} state={} forwarded={} rate={:.1}/s lag={} msgs {:.1}s{}{gap} dead_letters={} skipped_duplicates={} last_ack={} last_error={}",
                r.name,
                r.kind,
                r.upstream,
                r.state.as_str(),
                r.forwarded,
                r.rate,
                r.lag_messages,
                r.lag_ms as f64 / 1000.0,
                if r.lag_alarm { " ALARM" } else { "" },
                r.dead_letters,
                r.skipped_duplicates,
                r.last_ack_ms.map_or("never".to_owned(), weir::timefmt::format),
                match (&r.last_error, r.last_error_ms) {
                    (Some(e), Some(t)) => format!("{} {e:?}", weir::timefmt::format(t)),
                    _ => "none".to_owned(),
                },
            )?;
        }
        return Ok(());
    }
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (pool, _) =
        weir::store::open(&data_dir, weir::store::Database::Config, weir::store::Synchronous::Full, None)
            .await?;
    let actor = Actor::cli().as_str().to_owned();
    match command {
        KafkaCommand::Status => {}
        KafkaCommand::Upstream { command } => match command {
            KafkaUpstreamCommand::Set {
                name,
                bootstrap,
                tls,
                ca,
                client_cert,
                client_key,
                sasl_mechanism,
                sasl_user,
                sasl_password_stdin,
                compression,
                max_message_bytes,
            } => {
                let sasl_password = if sasl_password_stdin {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    Some(line.trim_end_matches(['\n', '\r']).to_owned())
                } else {
                    None
                };
                let request = ops::SetUpstream {
                    name,
                    bootstrap,
                    tls,
                    ca,
                    client_cert,
                    client_key,
                    sasl_mechanism,
                    sasl_user,
                    sasl_password,
                    compression,
                    max_message_bytes,
                    ..ops::SetUpstream::default()
                };
                let view = ops::upstream_set(&pool, request, &actor).await?;
                eprintln!("weir: upstream {} set", view.name);
            }
            KafkaUpstreamCommand::List => {
                for u in ops::upstream_list(&pool).await? {
                    let sasl = match (&u.sasl_mechanism, &u.sasl_user) {
                        (Some(m), Some(user)) => format!(" sasl={m} user={user}"),
                        _ => String::new(),
                    };
                    let ca = match (&u.ca, &u.ca_pem) {
                        (Some(file), _) => format!(" ca={}", file.display()),
                        (None, Some(pem)) => format!(" ca={pem:?}"),
                        (None, None) => String::new(),
                    };
                    let client = if u.client_key { " client_cert=set" } else { "" };
                    writeln!(
                        out,
                        "{} {} tls={}{ca}{client}{sasl} compression={}",
                        u.name,
                        u.bootstrap.join(","),
                        u.tls,
                        u.compression
                    )?;
                }
            }
            KafkaUpstreamCommand::Del { name } => ops::upstream_del(&pool, &name, &actor).await?,
            KafkaUpstreamCommand::Test { name } => {
                let reached = ops::upstream_test(&pool, &name, &actor).await?;
                writeln!(out, "{reached}")?;
            }
        },
        KafkaCommand::Route { command } => match command {
            KafkaRouteCommand::Add { name, upstream, filter, topic, key, format, from, lag_alarm } => {
                let request = ops::AddRoute {
                    name,
                    upstream,
                    filter,
                    topic,
                    key,
                    format,
                    from,
                    lag_alarm_secs: lag_alarm,
                };
                let view = ops::route_add(&pool, request, &actor).await?;
                eprintln!("weir: route {} added", view.name);
            }
            KafkaRouteCommand::List => {
                for r in ops::route_list(&pool).await? {
                    writeln!(
                        out,
                        "{} {} {} {} -> {} {}{}",
                        r.name,
                        r.kind,
                        r.upstream,
                        r.from,
                        r.to,
                        r.options.join(" "),
                        if r.paused { " PAUSED" } else { "" }
                    )?;
                }
            }
            KafkaRouteCommand::Show { name, limit } => {
                let d = ops::route_show(&pool, &data_dir, &name, limit).await?;
                let r = &d.route;
                writeln!(out, "route {} ({}), upstream {}", r.name, r.kind, r.upstream)?;
                writeln!(out, "  {} -> {}", r.from, r.to)?;
                writeln!(out, "  {}{}", r.options.join(" "), if r.paused { " PAUSED" } else { "" })?;
                match &d.status {
                    Some(s) => writeln!(
                        out,
                        "  state={} forwarded={} position={} lag={} msgs last_error={}",
                        s.state.as_str(),
                        s.forwarded,
                        s.position,
                        s.lag_messages,
                        s.last_error.as_deref().unwrap_or("none")
                    )?,
                    None => writeln!(out, "  (the gateway is not running)")?,
                }
                writeln!(out, "dead letters: {}", d.dead_letter_count)?;
                for l in &d.dead_letters {
                    writeln!(
                        out,
                        "  id={} {} journal_id={} {} -> {} ({} bytes): {}",
                        l.id,
                        weir::timefmt::format(l.ts),
                        l.journal_id.map_or("-".to_owned(), |i| i.to_string()),
                        l.source,
                        l.destination,
                        l.payload_bytes,
                        l.reason
                    )?;
                }
            }
            KafkaRouteCommand::Pause { name } => ops::route_pause(&pool, &name, &actor).await?,
            KafkaRouteCommand::Resume { name } => ops::route_resume(&pool, &name, &actor).await?,
            KafkaRouteCommand::Del { name } => ops::route_del(&pool, &name, &actor).await?,
            KafkaRouteCommand::Replay { name, all: _, id } => {
                let which = id.map_or(ops::ReplayWhich::All, ops::ReplayWhich::Id);
                let report = ops::route_replay(&pool, &data_dir, &name, which, &actor).await?;
                writeln!(out, "sent {}, kept {}", report.sent, report.kept.len())?;
                for (id, reason) in &report.kept {
                    writeln!(out, "  kept {id}: {reason}")?;
                }
            }
        },
        KafkaCommand::Downlink {
            command:
                KafkaDownlinkCommand::Add { name, upstream, topic, mqtt_topic, qos, retain, as_user, group },
        } => {
            let request = ops::AddDownlink { name, upstream, topic, mqtt_topic, qos, retain, as_user, group };
            let view = ops::downlink_add(&pool, request, &actor).await?;
            eprintln!("weir: downlink {} added", view.name);
        }
    }
    Ok(())
}
