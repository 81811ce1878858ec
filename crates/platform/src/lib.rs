//! The platform's services, independent of HTTP: environments, credentials, sub-accounts, the audit
//! log, the usage ledger (with quotas and rate limits) and webhooks. The server crate calls these; so do
//! later surfaces that need to meter, audit or mint.

pub mod audit;
pub mod auth;
pub mod envs;
pub mod error;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod principals;
pub mod runtime;
pub mod webhooks;

use std::path::PathBuf;
use std::sync::Arc;

use protocol::EnvId;
use store::{Blobs, Db};
use tenancy::EnvLayout;

pub use error::{PlatformError, Result};
pub use runtime::{Clock, Entropy, OsEntropy, SystemClock};

/// Settings the platform runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where SQLite files, env directories and (by default) blobs live.
    pub data_dir: PathBuf,
    /// Base URL of the listener, used for path-form URLs (`http://127.0.0.1:8787`).
    pub public_url: String,
    /// Apps domain for host-form URLs (`localhost` by default).
    pub apps_domain: String,
    /// Scheme and port suffix for host-form URLs, e.g. `http` and `:8787`.
    pub site_scheme: String,
    pub site_port_suffix: String,
    /// Prefix of every key this platform issues (`vb`).
    pub key_prefix: String,
    /// White-label mode: nothing an end user's browser receives names vibebase.
    pub white_label: bool,
    /// Default per-env request rate (requests per second) when an env sets none.
    pub default_rate_per_second: u32,
    /// How often buffered meters are written to the ledger.
    pub meter_flush_interval: std::time::Duration,
    /// How often the webhook worker looks for due deliveries.
    pub webhook_poll_interval: std::time::Duration,
    /// Whether this instance sends webhook deliveries. Off, deliveries are still queued and logged, and
    /// an instance with it on (or a later start) sends them.
    pub webhook_delivery: bool,
}

impl Config {
    /// Defaults for a data dir and listen URL; the binary overrides from flags.
    pub fn new(data_dir: PathBuf, public_url: String) -> Self {
        Self {
            data_dir,
            public_url,
            apps_domain: "localhost".to_owned(),
            site_scheme: "http".to_owned(),
            site_port_suffix: String::new(),
            key_prefix: "vb".to_owned(),
            white_label: false,
            default_rate_per_second: 1000,
            meter_flush_interval: std::time::Duration::from_secs(1),
            webhook_poll_interval: std::time::Duration::from_millis(500),
            webhook_delivery: true,
        }
    }
}

/// The platform: shared state behind every request. Cheap to clone.
#[derive(Clone)]
pub struct Platform {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    db: Db,
    blobs: Blobs,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    admin_key_hash: String,
    meters: ledger::MeterBuffer,
    limiter: limits::Limiter,
    /// Identifies this process in idempotency keys of the events it emits.
    instance: String,
    /// What other capabilities remove when an env is deleted (e.g. its app database).
    env_delete_hooks: std::sync::RwLock<Vec<EnvDeleteHook>>,
}

/// Removes what a capability keeps for an env outside the platform's own tables and directories; run by
/// [`Platform::delete_env`] before the env's data directory goes. Must be idempotent.
pub type EnvDeleteHook = Arc<
    dyn Fn(EnvId) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<(), String>> + Send>>
        + Send
        + Sync,
>;

impl Platform {
    /// Builds the platform on an open (migrated) database and object store.
    pub fn new(
        config: Config,
        db: Db,
        blobs: Blobs,
        admin_key: &str,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Self {
        let instance = tenancy::credential::random_id(&mut entropy.rng(), 12);
        Self {
            inner: Arc::new(Inner {
                admin_key_hash: tenancy::credential::hash_key(admin_key),
                meters: ledger::MeterBuffer::default(),
                limiter: limits::Limiter::default(),
                config,
                db,
                blobs,
                clock,
                entropy,
                instance,
                env_delete_hooks: std::sync::RwLock::new(Vec::new()),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.inner.clock
    }

    /// The names `env` owns (data dir, object prefix, database name, cache prefix, cgroup).
    pub fn layout(&self, env: &EnvId) -> EnvLayout {
        EnvLayout::new(&self.inner.config.data_dir, env)
    }

    /// A secret derived from the admin key for `purpose` (hex of HMAC-SHA256): the same on every
    /// instance sharing the admin key, different per purpose. Used e.g. for env database passwords.
    pub fn derive_secret(&self, purpose: &str) -> String {
        use hmac::Mac as _;
        // HMAC takes keys of any length, so this never fails.
        let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(self.inner.admin_key_hash.as_bytes())
        else {
            return String::new();
        };
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Registers a hook run for every deleted env (see [`EnvDeleteHook`]).
    pub fn on_env_delete(&self, hook: EnvDeleteHook) {
        self.inner.env_delete_hooks.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(hook);
    }

    /// Registers a delete hook on behalf of a service that holds the platform: the hook holds the
    /// service's state (`owner`) weakly, so the two never keep each other alive, and does nothing once
    /// the service is gone.
    pub fn on_env_delete_weak<T, F, Fut>(&self, owner: &Arc<T>, hook: F)
    where
        T: Send + Sync + 'static,
        F: Fn(Arc<T>, EnvId) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let weak = Arc::downgrade(owner);
        let hook = Arc::new(hook);
        self.on_env_delete(Arc::new(move |env| {
            let (owner, hook) = (weak.upgrade(), hook.clone());
            Box::pin(async move {
                match owner {
                    Some(owner) => hook(owner, env).await,
                    None => Ok(()),
                }
            })
        }));
    }

    pub(crate) fn env_delete_hooks(&self) -> Vec<EnvDeleteHook> {
        self.inner.env_delete_hooks.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A random lowercase id of `len` characters.
    pub fn random_id(&self, len: usize) -> String {
        tenancy::credential::random_id(&mut self.inner.entropy.rng(), len)
    }

    /// A new key of `kind` with this platform's prefix.
    pub fn new_key(&self, kind: protocol::api::KeyKind) -> tenancy::credential::NewKey {
        tenancy::credential::generate(&self.inner.config.key_prefix, kind, &mut self.inner.entropy.rng())
    }

    /// Starts the background tasks (meter flushing, key housekeeping, webhook delivery). They stop when `shutdown` fires,
    /// after a last flush.
    pub fn spawn_background(&self, shutdown: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![
            tokio::spawn(ledger::flush_loop(self.clone(), shutdown.clone())),
            tokio::spawn(keys::housekeeping_loop(self.clone(), shutdown.clone())),
        ];
        if self.inner.config.webhook_delivery {
            tasks.push(tokio::spawn(webhooks::delivery_loop(self.clone(), shutdown)));
        }
        tasks
    }
}

/// Who performs a mutation, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub request_id: String,
}
