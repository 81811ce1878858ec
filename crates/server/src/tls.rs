//! The optional HTTPS listener with on-demand certificates: on a TLS hello naming a verified custom
//! domain (and only then: any other SNI gets no certificate and the connection is closed), the
//! certificate is taken from the platform store, or ordered from the ACME directory (HTTP-01, answered
//! by [`http01`] on the plain listener), stored, and reused until it nears expiry, when a renewal is
//! ordered in the background while the old one is still served. Keys live only in the platform store
//! and in this process's memory; no API reads them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use hosting::domains::{Domains, StoredCertificate};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use protocol::EnvId;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::AppState;
use crate::error::ApiError;

/// Renew a certificate once it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a certificate loaded into memory is used before the store is read again (a renewal made
/// by another instance is picked up within this).
const RELOAD_AFTER: Duration = Duration::from_secs(600);
/// Certificates kept in memory; emptied beyond that, so idle domains cost nothing beyond a bound.
const MAX_CACHED: usize = 1_000;
/// Longest a TLS hello waits for an order (the client gives up about then anyway).
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// After a failed order, hellos for the domain get no certificate for this long instead of a new
/// order each (a public CA rate-limits failed validations).
const RETRY_FAILED_ORDER_AFTER: Duration = Duration::from_secs(300);
/// How long a published HTTP-01 answer lives.
const CHALLENGE_TTL: Duration = Duration::from_secs(300);

/// What the HTTPS listener needs to order certificates.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The ACME directory URL (`https://…/directory`).
    pub acme_directory: String,
    /// Contact address registered with the account (`mailto:` added).
    pub acme_email: Option<String>,
    /// A PEM root to trust for the ACME directory's own HTTPS (a test CA); the system roots otherwise.
    pub acme_ca_root: Option<PathBuf>,
}

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the ACME order ended {0:?}")]
    Order(OrderStatus),
    #[error("the ACME order took longer than {0:?}")]
    Timeout(Duration),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Hosting(#[from] hosting::HostingError),
}

struct Cached {
    config: Arc<ServerConfig>,
    not_after_ms: i64,
    loaded: Instant,
}

/// Certificates for verified custom domains, on demand.
pub struct TlsManager {
    domains: Domains,
    settings: TlsSettings,
    account: tokio::sync::OnceCell<Account>,
    cache: Mutex<HashMap<String, Cached>>,
    /// Domains whose last order failed, and when (bounded like the cache).
    failed: Mutex<HashMap<String, Instant>>,
    /// One order at a time per process: a burst of hellos for a new domain makes one order.
    ordering: tokio::sync::Mutex<()>,
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() * 1000
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsManager {
    pub fn new(domains: Domains, settings: TlsSettings) -> Arc<Self> {
        Arc::new(Self {
            domains,
            settings,
            account: tokio::sync::OnceCell::new(),
            cache: Mutex::default(),
            failed: Mutex::default(),
            ordering: tokio::sync::Mutex::new(()),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server configuration for a TLS hello naming `sni`, or `None` when `sni` is not a verified
    /// custom domain (or no certificate could be had).
    pub async fn config_for(self: &Arc<Self>, sni: &str) -> Option<Arc<ServerConfig>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        let env = self.domains.lookup(&sni).await?;
        if let Some(c) = self.cache().get(&sni)
            && c.loaded.elapsed() < RELOAD_AFTER
        {
            self.renew_if_due(&sni, &env, c.not_after_ms);
            return Some(c.config.clone());
        }
        let result = match self.load(&sni, &env).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => {
                if self.failed_recently(&sni) {
                    return None;
                }
                let ordered = tokio::time::timeout(ORDER_TIMEOUT, self.order(&sni, &env))
                    .await
                    .unwrap_or(Err(TlsError::Timeout(ORDER_TIMEOUT)));
                if ordered.is_err() {
                    let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
                    if failed.len() >= MAX_CACHED {
                        failed.clear();
                    }
                    failed.insert(sni.clone(), Instant::now());
                }
                ordered
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((config, not_after_ms)) => {
                self.renew_if_due(&sni, &env, not_after_ms);
                Some(config)
            }
            Err(e) => {
                tracing::warn!(domain = %sni, error = %e, "no certificate for a verified domain");
                None
            }
        }
    }

    fn failed_recently(&self, domain: &str) -> bool {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed.get(domain).is_some_and(|at| at.elapsed() < RETRY_FAILED_ORDER_AFTER)
    }

    /// The stored certificate when it is still valid (renewal is separate), cached.
    async fn load(&self, domain: &str, env: &EnvId) -> Result<Option<(Arc<ServerConfig>, i64)>, TlsError> {
        let Some(stored) = self.domains.certificate(domain).await? else { return Ok(None) };
        if &stored.env != env || stored.not_after_ms <= now_ms() {
            return Ok(None);
        }
        let config = server_config(&stored.cert_pem, &stored.key_pem)?;
        self.remember(domain, config.clone(), stored.not_after_ms);
        Ok(Some((config, stored.not_after_ms)))
    }

    fn remember(&self, domain: &str, config: Arc<ServerConfig>, not_after_ms: i64) {
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(domain.to_owned(), Cached { config, not_after_ms, loaded: Instant::now() });
    }

    fn renew_if_due(self: &Arc<Self>, domain: &str, env: &EnvId, not_after_ms: i64) {
        let left = not_after_ms.saturating_sub(now_ms());
        if left > i64::try_from(RENEW_BEFORE.as_millis()).unwrap_or(i64::MAX) {
            return;
        }
        // The old certificate keeps being served meanwhile; the order lock makes it one renewal.
        let (this, domain, env) = (self.clone(), domain.to_owned(), env.clone());
        tokio::spawn(async move {
            if let Err(e) = this.renew(&domain, &env, not_after_ms).await {
                tracing::warn!(domain = %domain, error = %e, "certificate renewal failed");
            }
        });
    }

    async fn renew(&self, domain: &str, env: &EnvId, old_not_after_ms: i64) -> Result<(), TlsError> {
        let _one = self.ordering.lock().await;
        if let Some(stored) = self.domains.certificate(domain).await?
            && stored.not_after_ms > old_not_after_ms
        {
            // Renewed meanwhile (here or by another instance).
            let config = server_config(&stored.cert_pem, &stored.key_pem)?;
            self.remember(domain, config, stored.not_after_ms);
            return Ok(());
        }
        self.issue(domain, env).await.map(drop)
    }

    async fn order(&self, domain: &str, env: &EnvId) -> Result<(Arc<ServerConfig>, i64), TlsError> {
        let _one = self.ordering.lock().await;
        if let Some(found) = self.load(domain, env).await? {
            return Ok(found);
        }
        self.issue(domain, env).await
    }

    async fn account(&self) -> Result<&Account, TlsError> {
        self.account
            .get_or_try_init(|| async {
                let builder = || match &self.settings.acme_ca_root {
                    Some(root) => Account::builder_with_root(root),
                    None => Account::builder(),
                };
                let directory = &self.settings.acme_directory;
                if let Some(json) = self.domains.acme_account(directory).await? {
                    let credentials: AccountCredentials = serde_json::from_str(&json)
                        .map_err(|e| TlsError::Certificate(format!("stored ACME account: {e}")))?;
                    return Ok(builder()?.from_credentials(credentials).await?);
                }
                let contact = self.settings.acme_email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) = builder()?.create(&new, directory.clone(), None).await?;
                let json = serde_json::to_string(&credentials)
                    .map_err(|e| TlsError::Certificate(format!("ACME account: {e}")))?;
                let kept = self.domains.put_acme_account(directory, json.clone()).await?;
                if kept == json {
                    return Ok(account);
                }
                // Another instance registered first: use its account.
                let credentials: AccountCredentials = serde_json::from_str(&kept)
                    .map_err(|e| TlsError::Certificate(format!("stored ACME account: {e}")))?;
                Ok(builder()?.from_credentials(credentials).await?)
            })
            .await
    }

    /// Orders a certificate (HTTP-01), stores it and caches it.
    async fn issue(&self, domain: &str, env: &EnvId) -> Result<(Arc<ServerConfig>, i64), TlsError> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(domain.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut tokens = Vec::new();
        let answered = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(TlsError::Certificate(format!("authorization is {other:?}"))),
                }
                let mut challenge = authz
                    .challenge(ChallengeType::Http01)
                    .ok_or_else(|| TlsError::Certificate("the CA offers no http-01 challenge".to_owned()))?;
                let key_authorization = challenge.key_authorization();
                self.domains.put_challenge(&challenge.token, key_authorization.as_str(), CHALLENGE_TTL).await?;
                tokens.push(challenge.token.clone());
                challenge.set_ready().await?;
            }
            Ok(())
        }
        .await;
        let issued = match answered {
            Ok(()) => finish(&mut order).await,
            Err(e) => Err(e),
        };
        for token in tokens {
            if let Err(e) = self.domains.remove_challenge(&token).await {
                tracing::debug!(error = %e, "could not remove an ACME challenge");
            }
        }
        let (cert_pem, key_pem) = issued?;
        let not_after_ms = not_after_ms(&cert_pem)?;
        let config = server_config(&cert_pem, &key_pem)?;
        let stored = StoredCertificate { env: env.clone(), cert_pem, key_pem, not_after_ms };
        if !self.domains.put_certificate(env, domain, stored).await? {
            return Err(TlsError::Certificate("the domain was detached while its certificate was ordered".to_owned()));
        }
        self.remember(domain, config.clone(), not_after_ms);
        tracing::info!(domain, "certificate issued");
        Ok((config, not_after_ms))
    }
}

async fn finish(order: &mut instant_acme::Order) -> Result<(String, String), TlsError> {
    let retries = RetryPolicy::new().timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        return Err(TlsError::Order(status));
    }
    let key_pem = order.finalize().await?;
    let cert_pem = order.poll_certificate(&retries).await?;
    Ok((cert_pem, key_pem))
}

/// A server configuration serving one certificate chain (HTTP/1.1).
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let bad = |what: &str| TlsError::Certificate(what.to_owned());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("unreadable certificate chain"))?;
    if chain.is_empty() {
        return Err(bad("empty certificate chain"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| bad("unreadable private key"))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The expiry (`notAfter`) of the first certificate of a PEM chain, in Unix milliseconds.
pub fn not_after_ms(cert_pem: &str) -> Result<i64, TlsError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| TlsError::Certificate("unreadable certificate".to_owned()))?;
    crate::der::certificate_not_after(&der)
        .ok_or_else(|| TlsError::Certificate("no validity in certificate".to_owned()))
}

/// `GET /.well-known/acme-challenge/{token}`: the key authorization of an order in progress.
pub async fn http01(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match state.domains.challenge(&token).await {
        Ok(Some(key_authorization)) => {
            ([(http::header::CONTENT_TYPE, "application/octet-stream")], key_authorization).into_response()
        }
        Ok(None) => ApiError::not_found("not_found", "not found").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Accepts TLS connections, picking the certificate by SNI, and serves them like the plain listener,
/// with the Host taken from the SNI (so the listener serves verified custom domains only).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: AppState,
    manager: Arc<TlsManager>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tower::ServiceExt as _;
    let router = crate::router(state);
    crate::accept_loop(listener, shutdown, crate::HEADER_READ_TIMEOUT, move |tcp, peer, builder, watcher| {
        let (manager, router) = (manager.clone(), router.clone());
        async move {
            let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
            let Ok(Ok(start)) = tokio::time::timeout(crate::HEADER_READ_TIMEOUT, acceptor).await else { return };
            let Some(sni) = start.client_hello().server_name().map(str::to_ascii_lowercase) else { return };
            // Unknown or unverified names get no certificate: the handshake is dropped.
            let Some(config) = manager.config_for(&sni).await else { return };
            let Ok(stream) = start.into_stream(config).await else { return };
            let Ok(host) = http::HeaderValue::from_str(&sni) else { return };
            let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                req.headers_mut().insert(http::header::HOST, host.clone());
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
            let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "TLS connection ended with an error");
            }
        }
    })
    .await
}
