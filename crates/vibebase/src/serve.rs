//! `vibebase serve`: opens the stores, migrates, and serves until SIGINT or SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use platform::{Config, OsEntropy, Platform, SystemClock};
use store::{Blobs, Db};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787", env = "VIBEBASE_LISTEN")]
    listen: SocketAddr,
    /// Directory for the embedded databases, env directories and (by default) blobs.
    #[arg(long, default_value = ".vibebase", env = "VIBEBASE_DATA_DIR")]
    data_dir: PathBuf,
    /// Keep platform metadata in PostgreSQL instead of SQLite (postgres://…).
    #[arg(long, env = "VIBEBASE_DATABASE_URL")]
    database_url: Option<String>,
    /// Keep blobs in an S3-compatible store (s3://bucket[/prefix]; AWS_* variables configure access).
    #[arg(long, env = "VIBEBASE_OBJECT_STORE_URL")]
    object_store_url: Option<String>,
    /// Domain whose subdomains serve env sites and APIs (`<env>.<domain>`).
    #[arg(long, default_value = "localhost", env = "VIBEBASE_APPS_DOMAIN")]
    apps_domain: String,
    /// Base URL clients use to reach this server (default: http://<listen>).
    #[arg(long, env = "VIBEBASE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Prefix of every key this platform issues.
    #[arg(long, default_value = "vb", env = "VIBEBASE_KEY_PREFIX")]
    key_prefix: String,
    /// White-label mode: nothing end users' browsers receive names vibebase.
    #[arg(long, env = "VIBEBASE_WHITE_LABEL")]
    white_label: bool,
    /// Default per-env request rate limit (requests per second).
    #[arg(long, default_value_t = 1000, env = "VIBEBASE_RATE_LIMIT")]
    rate_limit: u32,
    /// Queue webhook deliveries without sending them (staging, maintenance, conformance runs).
    #[arg(long, env = "VIBEBASE_NO_WEBHOOK_DELIVERY")]
    no_webhook_delivery: bool,
    /// Host uid (and gid) sandboxes run as; never 0.
    #[arg(long, default_value_t = 100_000, env = "VIBEBASE_SANDBOX_UID")]
    sandbox_uid: u32,
    /// Host directory for sandbox sockets and mount points (default: /run/vibebase/<hash of data dir>).
    #[arg(long, env = "VIBEBASE_SANDBOX_RUN_DIR")]
    sandbox_run_dir: Option<PathBuf>,
    /// Models file (JSON) of the model gateway: providers, models, routes, prices, budgets.
    #[arg(long, env = "VIBEBASE_MODELS")]
    models: Option<PathBuf>,
    /// The model of agent sessions that name none (a model of the models file).
    #[arg(long, env = "VIBEBASE_AGENT_MODEL")]
    agent_model: Option<String>,
    /// How long an agent session's lease lasts without a heartbeat, in seconds: a session whose
    /// driving instance died is resumed by another (or by this one after a restart) after it.
    #[arg(long, default_value_t = 15, env = "VIBEBASE_AGENT_LEASE_SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    agent_lease_seconds: u64,
    /// Start agent sandboxes with an empty workspace instead of the built-in app template (Vite +
    /// React + supabase-js, made on first use with `npm ci`, which needs the npm registry).
    #[arg(long, env = "VIBEBASE_NO_APP_TEMPLATE")]
    no_app_template: bool,
    /// SMTP relay for end-user auth mail (smtp://host[:port]); without it mail goes to each env's outbox.
    #[arg(long, env = "VIBEBASE_SMTP_URL")]
    smtp_url: Option<String>,
    /// Sender address of end-user auth mail.
    #[arg(long, default_value = "no-reply@localhost", env = "VIBEBASE_SMTP_FROM")]
    smtp_from: String,
    /// DNS server (ip:port) asked for custom domains' TXT ownership records (default: the first
    /// nameserver of /etc/resolv.conf).
    #[arg(long, env = "VIBEBASE_DNS_SERVER")]
    dns_server: Option<SocketAddr>,
    /// Also serve HTTPS on this address, for verified custom domains, with certificates ordered on
    /// demand from --acme-directory.
    #[arg(long, env = "VIBEBASE_TLS_LISTEN", requires = "acme_directory")]
    tls_listen: Option<SocketAddr>,
    /// ACME directory URL certificates are ordered from (e.g. Let's Encrypt's).
    #[arg(long, env = "VIBEBASE_ACME_DIRECTORY")]
    acme_directory: Option<String>,
    /// Contact address of the ACME account.
    #[arg(long, env = "VIBEBASE_ACME_EMAIL")]
    acme_email: Option<String>,
    /// PEM root certificate to trust for the ACME directory's HTTPS (a private or test CA).
    #[arg(long, env = "VIBEBASE_ACME_CA_ROOT")]
    acme_ca_root: Option<PathBuf>,
    /// How long a request to a stopped or starting container app waits for it to become healthy
    /// (then 503), in seconds.
    #[arg(long, default_value_t = 60, env = "VIBEBASE_APP_WAKE_TIMEOUT")]
    app_wake_timeout: u64,
    /// First restart delay of a crashed container app, in milliseconds (doubled per crash in a row).
    #[arg(long, default_value_t = 500, env = "VIBEBASE_APP_BACKOFF_MS")]
    app_backoff_ms: u64,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"], env = "VIBEBASE_LOG_FORMAT")]
    log_format: String,
}

/// The admin key: `VIBEBASE_ADMIN_KEY`, else the one saved in the data dir, else a new one saved there
/// (mode 0600) and printed once.
fn admin_key(data_dir: &Path, prefix: &str) -> anyhow::Result<String> {
    if let Ok(key) = std::env::var("VIBEBASE_ADMIN_KEY") {
        if key.len() < tenancy::credential::MIN_ADMIN_KEY_LEN {
            bail!("VIBEBASE_ADMIN_KEY must be at least {} characters", tenancy::credential::MIN_ADMIN_KEY_LEN);
        }
        return Ok(key);
    }
    let path = data_dir.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(key) => return Ok(key.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    let key =
        tenancy::credential::generate(prefix, protocol::api::KeyKind::Admin, &mut platform::Entropy::rng(&OsEntropy))
            .key;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("create {}", path.display()))?;
    file.write_all(key.as_bytes()).context("write admin key")?;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\nGenerated the platform admin key (shown once; saved to {} with mode 0600):\n\n    {key}\n",
        path.display()
    );
    Ok(key)
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    tenancy::credential::validate_prefix(&args.key_prefix).context("--key-prefix")?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("create data dir {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize().context("resolve data dir")?;
    let db = match &args.database_url {
        Some(url) => Db::connect_postgres(url).await.context("connect to --database-url")?,
        None => Db::open_sqlite(&data_dir.join("platform.db")).context("open platform.db")?,
    };
    let version = store::schema::migrate(&db).await.context("migrate platform schema")?;
    let blobs = match &args.object_store_url {
        Some(url) => Blobs::from_url(url).context("open --object-store-url")?,
        None => Blobs::local(&data_dir.join("objects")).context("open local object store")?,
    };
    let admin_key = admin_key(&data_dir, &args.key_prefix)?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let local = listener.local_addr().context("listener address")?;
    let public_url = args.public_url.clone().unwrap_or_else(|| {
        let host = if local.ip().is_unspecified() { "127.0.0.1".to_owned() } else { local.ip().to_string() };
        format!("http://{}", SocketAddr::new(host.parse().unwrap_or(local.ip()), local.port()))
    });
    let mut config = Config::new(data_dir.clone(), public_url.clone());
    config.apps_domain = args.apps_domain.to_ascii_lowercase();
    config.site_port_suffix = if local.port() == 80 { String::new() } else { format!(":{}", local.port()) };
    config.key_prefix = args.key_prefix.clone();
    config.white_label = args.white_label;
    config.default_rate_per_second = args.rate_limit.max(1);
    config.webhook_delivery = !args.no_webhook_delivery;
    let smtp = match &args.smtp_url {
        Some(url) => Some(auth::SmtpConfig::from_url(url, &args.smtp_from).context("--smtp-url / --smtp-from")?),
        None => None,
    };
    let platform = Platform::new(config, db, blobs, &admin_key, Arc::new(SystemClock), Arc::new(OsEntropy));
    let mut models = match &args.models {
        Some(path) => gateway::Config::load(path).with_context(|| format!("--models {}", path.display()))?,
        None => gateway::Config::from_json("{}", &data_dir).context("default models")?,
    };
    // The demo's replay model (`vibebase demo`): it answers only the requests its transcript recorded.
    models.add_builtin_replay(agent::demo::MODEL, agent::demo::TRANSCRIPT);
    let gateway = gateway::Gateway::new(platform.clone(), models).context("--models")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = platform.spawn_background(stop_rx.clone());
    tracing::info!(
        listen = %local, %public_url, data_dir = %data_dir.display(), schema_version = version,
        metadata = if args.database_url.is_some() { "postgres" } else { "sqlite" },
        blobs = platform.blobs().describe(), models = gateway.models().len(), "vibebase is serving"
    );
    // Function secrets are sealed with this key; a bad one stops the start rather than the first deploy.
    let master_key = std::env::var("VIBEBASE_MASTER_KEY").ok().filter(|k| !k.is_empty());
    functions::seal::MasterKey::load(master_key.as_deref(), &data_dir).context("master key")?;
    let apps_config = functions::apps::AppsConfig {
        master_key: master_key.clone(),
        wake_timeout: std::time::Duration::from_secs(args.app_wake_timeout.max(1)),
        backoff_base: std::time::Duration::from_millis(args.app_backoff_ms.max(1)),
        ..Default::default()
    };
    let functions_config = functions::FunctionsConfig { master_key, ..Default::default() };
    let sandboxes = start_sandboxes(&platform, &args, &data_dir);
    let mut state = server::AppState::new(platform)
        .with_gateway(gateway.clone())
        .with_auth_config(auth::AuthConfig { smtp, hash_cost: auth::HashCost::OWASP })
        .with_functions_config(functions_config)
        .with_agent_config(agent::AgentConfig {
            default_model: args.agent_model.clone(),
            lease_ttl: std::time::Duration::from_secs(args.agent_lease_seconds),
            // Look for orphaned sessions several times per lease.
            sweep_every: std::time::Duration::from_millis((args.agent_lease_seconds * 1000 / 4).clamp(250, 2000)),
            app_template: !args.no_app_template,
            ..Default::default()
        })
        .with_apps_config(apps_config)
        .with_sandboxes(sandboxes.clone());
    let apps = state.apps.clone();
    if let Some(dns) = args.dns_server {
        state = state.with_domain_resolver(Arc::new(hosting::domains::UdpResolver::new(dns)));
    }
    let tls_stop = tokio::sync::watch::Sender::new(false);
    let tls = match (args.tls_listen, &args.acme_directory) {
        (Some(addr), Some(directory)) => {
            let tls_listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--tls-listen {addr}"))?;
            let settings = server::tls::TlsSettings {
                acme_directory: directory.clone(),
                acme_email: args.acme_email.clone(),
                acme_ca_root: args.acme_ca_root.clone(),
            };
            let manager = server::tls::TlsManager::new(state.domains.clone(), settings);
            tracing::info!(tls_listen = %tls_listener.local_addr().unwrap_or(addr), acme_directory = %directory, "serving HTTPS for verified custom domains");
            let stop = stop_rx_for_tls(&tls_stop);
            Some(tokio::spawn(server::tls::serve_tls(tls_listener, state.clone(), manager, stop)))
        }
        _ => None,
    };
    // Resumes sessions whose driver died (here before a restart, or on another instance).
    let sweeper = state.agent.spawn_background(stop_rx.clone());
    server::serve(listener, state, shutdown_signal()).await.context("serve")?;
    let _ = tls_stop.send(true);
    if let Some(task) = tls {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "TLS listener failed"),
            Err(e) => tracing::warn!(error = %e, "TLS listener task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Ok(apps) = &apps {
        tracing::info!("shutting down: stopping container apps");
        apps.shutdown().await;
    }
    if let Ok(s) = &sandboxes {
        tracing::info!("shutting down: killing sandboxes");
        s.shutdown().await;
    }
    let unsettled = gateway.drain(std::time::Duration::from_secs(10)).await;
    if unsettled > 0 {
        tracing::warn!(unsettled, "model calls still unsettled at shutdown");
    }
    tracing::info!("shutting down: flushing meters");
    let _ = stop_tx.send(true);
    let _ = sweeper.await;
    for task in background {
        let _ = task.await;
    }
    Ok(())
}

/// The local sandbox backend, or why this host cannot run sandboxes (the rest of the platform serves
/// either way; sandbox routes then answer 503 `sandboxes_unavailable`).
fn start_sandboxes(platform: &Platform, args: &ServeArgs, data_dir: &Path) -> Result<sandbox::Sandboxes, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the vibebase executable: {e}"))?;
    let run_root = args.sandbox_run_dir.clone().unwrap_or_else(|| sandbox::local::default_run_root(data_dir));
    let templates = data_dir.join("templates");
    let backend =
        sandbox::local::LocalBackend::new(sandbox::local::host_config(exe, run_root, templates, args.sandbox_uid))
            .map_err(|e| e.to_string());
    match backend {
        Ok(b) => {
            let s = sandbox::Sandboxes::new(platform.clone(), Arc::new(b), sandbox::SandboxDefaults::default());
            tracing::info!(backend = %s.backend_name(), "sandboxes ready");
            Ok(s)
        }
        Err(why) => {
            tracing::warn!(%why, "sandboxes unavailable");
            Err(why)
        }
    }
}

/// Resolves once the serve loop ends (the stop signal is sent).
fn stop_rx_for_tls(stop: &tokio::sync::watch::Sender<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
