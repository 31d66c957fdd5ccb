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
    /// Read the message history in the data directory (works while the gateway runs).
    History {
        #[command(subcommand)]
        command: HistoryCommand,
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
    Revoke { name: String },
    /// Write a certificate (by name or serial) with the CA chain as a PEM bundle (Weir never keeps keys).
    Export {
        name: String,
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
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
        Command::User { command, place } => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(user(command, place))
        }
        Command::Acl { command, place } => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(acl(command, place))
        }
        Command::Cert { command, place } => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(cert(command, place))
        }
        Command::Ca { command: CaCommand::Import { cert, key, replace }, place } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let (cert, key) = (read(&cert)?, read(&key)?);
            let dir = place.data_dir()?.join("pki");
            let on_existing =
                if replace { weir::pki::OnExisting::Replace } else { weir::pki::OnExisting::Refuse };
            let ca = weir::pki::CertificateAuthority::import(&dir, &cert, &key, on_existing)?;
            // The server certificate was issued by the previous CA: the next start issues a new one.
            let _ = std::fs::remove_file(dir.join(weir::tls::SERVER_CERT_FILE));
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let (pool, _) = weir::store::open(
                    &place.data_dir()?,
                    weir::store::Database::Config,
                    weir::store::Synchronous::Full,
                    None,
                )
                .await?;
                weir::store::audit(&pool, &cli_actor(), "ca.import", &ca.info().subject).await?;
                anyhow::Ok(())
            })?;
            eprintln!("weir: imported CA {}; restart the gateway to use it", ca.info().subject);
            Ok(())
        }
        Command::Ca { command: CaCommand::Export { out }, place } => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let ca = runtime.block_on(async { anyhow::Ok(open_certificates(&place).await?.ca()?) })?;
            match out {
                Some(path) => std::fs::write(&path, ca.cert_pem())
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{}", ca.cert_pem()),
            }
            Ok(())
        }
        Command::Import { command: ImportCommand::Mosquitto { passwd, acl }, place } => {
            anyhow::ensure!(passwd.is_some() || acl.is_some(), "give --passwd FILE, --acl FILE or both");
            let read = |path: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
                path.as_ref()
                    .map(|p| {
                        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
                    })
                    .transpose()
            };
            let (passwd, acl) = (read(&passwd)?, read(&acl)?);
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let security = open_security(&place).await?;
                let summary =
                    security.import_mosquitto(passwd.as_deref(), acl.as_deref(), &cli_actor()).await?;
                for warning in &summary.warnings {
                    eprintln!("weir: warning: {warning}");
                }
                eprintln!("weir: imported {} users and {} rules", summary.users, summary.rules);
                anyhow::Ok(())
            })
        }
        Command::Audit { place, limit } => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(audit(place, limit))
        }
        Command::History { command } => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(history(command))
        }
        Command::Kafka { command, place } => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(kafka(command, place))
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
    use std::io::Write;
    let listeners = app::bind(&config).await?;
    // Whoever started us may stop reading our output: that is no reason to stop serving.
    let mut out = std::io::stdout();
    for l in &listeners {
        let addr = l.local_addr()?;
        let _ = match l.config.protocol {
            weir::mqtt::net::Protocol::Tcp => writeln!(out, "weir: MQTT on mqtt://{addr}"),
            weir::mqtt::net::Protocol::Tls => writeln!(out, "weir: MQTT over TLS on mqtts://{addr}"),
            weir::mqtt::net::Protocol::SecureWebSocket => {
                writeln!(out, "weir: MQTT over secure WebSocket on wss://{addr}{}", l.config.ws_path)
            }
            weir::mqtt::net::Protocol::WebSocket => {
                writeln!(out, "weir: MQTT over WebSocket on ws://{addr}{}", l.config.ws_path)
            }
        };
    }
    let _ = writeln!(out, "weir: data directory {}", config.data_dir.display());
    app::run(config, listeners, shutdown_signal()).await?;
    Ok(())
}

async fn user(command: UserCommand, place: Place) -> anyhow::Result<()> {
    let security = open_security(&place).await?;
    let actor = cli_actor();
    match command {
        UserCommand::Add { name, roles } => {
            let password = read_new_password(&name)?;
            security.add_user(&name, &password, &roles, &actor).await?;
            eprintln!("weir: user {name} added");
        }
        UserCommand::Passwd { name } => {
            let password = read_new_password(&name)?;
            security.set_password(&name, &password, &actor).await?;
            eprintln!("weir: password of {name} changed");
        }
        UserCommand::Del { name } => {
            security.delete_user(&name, &actor).await?;
            eprintln!("weir: user {name} deleted");
        }
        UserCommand::List => {
            for u in security.list_users().await? {
                println!("{}\t{}\t{}", u.username, u.roles.join(","), weir::timefmt::format(u.created));
            }
        }
    }
    Ok(())
}

async fn acl(command: AclCommand, place: Place) -> anyhow::Result<()> {
    use weir::auth::acl::{Action, Effect, Rule, Subject};
    let security = open_security(&place).await?;
    let actor = cli_actor();
    match command {
        AclCommand::Add { subject, effect, action, filter } => {
            let subject = match subject.split_once(':') {
                Some(("user", name)) if !name.is_empty() => Subject::User(name.to_owned()),
                Some(("role", name)) if !name.is_empty() => Subject::Role(name.to_owned()),
                None if subject == "anyone" => Subject::Anyone,
                None if subject == "anonymous" => Subject::Anonymous,
                _ => anyhow::bail!("subject {subject:?}: use user:NAME, role:NAME, anyone or anonymous"),
            };
            let effect = match effect.as_str() {
                "allow" => Effect::Allow,
                "deny" => Effect::Deny,
                other => anyhow::bail!("effect {other:?}: use allow or deny"),
            };
            let action = match action.as_str() {
                "publish" => Action::Publish,
                "subscribe" => Action::Subscribe,
                "both" => Action::Both,
                other => anyhow::bail!("action {other:?}: use publish, subscribe or both"),
            };
            let id = security.add_rule(&Rule::new(subject, effect, action, filter), &actor).await?;
            eprintln!("weir: rule #{id} added");
        }
        AclCommand::Del { id } => {
            security.delete_rule(id, &actor).await?;
            eprintln!("weir: rule #{id} deleted");
        }
        AclCommand::List => {
            for (id, rule) in security.list_rules().await? {
                println!("{id}\t{}", serde_json::to_string(&rule)?);
            }
        }
    }
    Ok(())
}

async fn open_certificates(place: &Place) -> anyhow::Result<weir::certs::Certificates> {
    use weir::store;
    let data_dir = place.data_dir()?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (pool, _) = store::open(&data_dir, store::Database::Config, store::Synchronous::Full, None).await?;
    Ok(weir::certs::Certificates::new(pool, &data_dir))
}

async fn cert(command: CertCommand, place: Place) -> anyhow::Result<()> {
    let certs = open_certificates(&place).await?;
    let actor = cli_actor();
    let write = |path: PathBuf, text: &[u8], private: bool| -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(text)?;
        eprintln!("weir: wrote {}", path.display());
        Ok(())
    };
    match command {
        CertCommand::Issue { name, sans, days, key_type, out, p12 } => {
            let key_type = match key_type.as_str() {
                "p256" => weir::pki::KeyType::EcdsaP256,
                "p384" => weir::pki::KeyType::EcdsaP384,
                "ed25519" => weir::pki::KeyType::Ed25519,
                other => anyhow::bail!("key type {other:?}: use p256, p384 or ed25519"),
            };
            let password = if p12 { Some(read_new_password(&format!("{name}.p12"))?) } else { None };
            let issued = certs.issue(&name, &sans, days, key_type, &actor).await?;
            let ca = certs.ca()?;
            let key = issued.key_pem.clone().unwrap_or_default();
            write(out.join(format!("{name}.crt")), issued.cert_pem.as_bytes(), false)?;
            write(out.join(format!("{name}.key")), key.as_bytes(), true)?;
            let bundle = weir::pki::pem_bundle(&issued.cert_pem, Some(&key), ca.chain_pem());
            write(out.join(format!("{name}-bundle.pem")), bundle.as_bytes(), true)?;
            if let Some(password) = password {
                let p12 = weir::pki::pkcs12(&issued.cert_pem, &key, ca.chain_pem(), &password, &name)?;
                write(out.join(format!("{name}.p12")), &p12, true)?;
            }
            eprintln!("weir: issued {name}, serial {}", issued.info.serial.as_str());
        }
        CertCommand::Sign { csr, days, out } => {
            let pem =
                std::fs::read_to_string(&csr).with_context(|| format!("cannot read {}", csr.display()))?;
            let issued = certs.sign_csr(&pem, days, &actor).await?;
            let name =
                issued.info.common_name.clone().unwrap_or_else(|| issued.info.serial.as_str().to_owned());
            write(out.join(format!("{name}.crt")), issued.cert_pem.as_bytes(), false)?;
            eprintln!("weir: signed {name}, serial {}", issued.info.serial.as_str());
        }
        CertCommand::List => {
            for c in certs.list().await? {
                let state = if c.revoked_at.is_some() { "revoked" } else { "valid" };
                println!(
                    "{}\t{}\t{}\t{}",
                    c.serial,
                    c.common_name,
                    weir::timefmt::format(c.not_after),
                    state
                );
            }
        }
        CertCommand::Show { name } => {
            let c = certs.find(&name).await?;
            println!("{}", serde_json::to_string_pretty(&c)?);
            print!("{}", c.cert_pem);
        }
        CertCommand::Export { name, out } => {
            let c = certs.find(&name).await?;
            let bundle = weir::pki::pem_bundle(&c.cert_pem, None, certs.ca()?.chain_pem());
            match out {
                Some(path) => write(path, bundle.as_bytes(), false)?,
                None => print!("{bundle}"),
            }
        }
        CertCommand::Revoke { name } => {
            let c = certs.revoke(&name, &actor).await?;
            eprintln!("weir: revoked {} (serial {})", c.common_name, c.serial);
        }
    }
    Ok(())
}

async fn open_security(place: &Place) -> anyhow::Result<weir::security::Security> {
    use weir::store;
    let data_dir = place.data_dir()?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (pool, _) = store::open(&data_dir, store::Database::Config, store::Synchronous::Full, None).await?;
    Ok(weir::security::Security::load(pool).await?)
}

fn cli_actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

async fn audit(place: Place, limit: i64) -> anyhow::Result<()> {
    use std::io::Write;
    let data_dir = place.data_dir()?;
    let pool = weir::store::open_for_reading(&data_dir, weir::store::Database::Config)
        .await
        .with_context(|| format!("no configuration database in {}", data_dir.display()))?;
    let mut out = std::io::stdout().lock();
    for entry in weir::store::audit_entries(&pool, limit).await? {
        writeln!(
            out,
            "{} {} {} {}",
            weir::timefmt::format(entry.ts),
            entry.actor,
            entry.action,
            entry.detail
        )?;
    }
    Ok(())
}

/// A new password: prompted twice without echo on a terminal, else the first line of standard input.
fn read_new_password(user: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
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

async fn history(command: HistoryCommand) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    use weir::store::{self, export, history};

    let select = match &command {
        HistoryCommand::Query { select, .. } | HistoryCommand::Export { select, .. } => select,
    };
    let data_dir = match (&select.data_dir, &select.config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(path)) => Config::load(path)?.data_dir,
        (None, None) => Config::default().data_dir,
    };
    let pool = store::open_for_reading(&data_dir, store::Database::Journal)
        .await
        .with_context(|| format!("no history in {} (is this the data directory?)", data_dir.display()))?;
    let now = weir::timefmt::now_ms();
    let mut query = history::HistoryQuery::new(&select.filter);
    query.since = select
        .since
        .as_deref()
        .map(|t| weir::timefmt::parse(t, now))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    query.until = select
        .until
        .as_deref()
        .map(|t| weir::timefmt::parse(t, now))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let view = match select.payload {
        PayloadFormat::Text => history::PayloadView::Text,
        PayloadFormat::Json => history::PayloadView::Json,
        PayloadFormat::Hex => history::PayloadView::Hex,
    };
    match command {
        HistoryCommand::Query { limit, oldest_first, jsonl, .. } => {
            query.limit = limit;
            if oldest_first {
                query.order = history::Order::OldestFirst;
            }
            let page = history::query(&pool, &query).await?;
            let mut out = std::io::stdout().lock();
            for m in &page.messages {
                if jsonl {
                    writeln!(out, "{}", export::json(m, view))?;
                } else {
                    let payload = match m.payload_as(view) {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    writeln!(out, "{} {} q{} {}", weir::timefmt::format(m.ts), m.topic, m.qos, payload)?;
                }
            }
        }
        HistoryCommand::Export { format, output, .. } => {
            let format = match format {
                ExportFormat::Csv => export::Format::Csv,
                ExportFormat::Jsonl => export::Format::Jsonl,
            };
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let terminal = std::io::stderr().is_terminal();
            let written = export::export(&pool, &query, format, view, &mut out, |n| {
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
    },
    /// List upstreams (never their passwords).
    List,
    /// Delete an upstream no route uses.
    Del { name: String },
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
        /// raw (the payload) or json (an envelope with topic, payload, properties, timestamp).
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
        for r in &report.routes {
            writeln!(
                out,
                "{} {} {} state={} forwarded={} rate={:.1}/s lag={} msgs {:.1}s{} dead_letters={} skipped_duplicates={} last_ack={} last_error={}",
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
    let actor = cli_actor();
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
                    let ca = u.ca.as_ref().map(|c| format!(" ca={}", c.display())).unwrap_or_default();
                    writeln!(
                        out,
                        "{} {} tls={}{ca}{sasl} compression={}",
                        u.name,
                        u.bootstrap.join(","),
                        u.tls,
                        u.compression
                    )?;
                }
            }
            KafkaUpstreamCommand::Del { name } => ops::upstream_del(&pool, &name, &actor).await?,
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
                        "  {} journal_id={} {} -> {} ({} bytes): {}",
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
