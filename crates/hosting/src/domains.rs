//! Custom domains: an env attaches a DNS name, proves it owns it with a TXT record
//! (`_vibebase-challenge.<domain>` = a token the platform chose), and from then on the name is served
//! like `<env>.<apps-domain>`. Several envs may hold a pending claim on one name (so nobody can squat
//! a name they do not control); only one may hold it verified (a unique index), and which one is never
//! revealed to another env.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use platform::audit::{self, Record};
use platform::runtime::rfc3339;
use platform::{Actor, Platform};
use protocol::EnvId;
use protocol::hosting::{DOMAIN_CHALLENGE_LABEL, DomainList, DomainRecord, DomainStatus, DomainVerification};

use crate::{HostingError, Result};

/// The most domains (pending or verified) one env may attach.
pub const MAX_DOMAINS_PER_ENV: i64 = 50;
/// How long a Host → env answer read from the database is trusted (other instances see a verify or a
/// delete within this; the instance that made the change forgets at once).
pub const LOOKUP_TTL: Duration = Duration::from_secs(1);
/// Entries of the Host cache (hits and misses); emptied beyond that, so it stays bounded.
const MAX_CACHED_HOSTS: usize = 10_000;

/// Checks and normalizes a custom domain: lowercase ASCII letters, digits and hyphens in labels of
/// 1–63 characters, at least two labels, at most 253 characters, no IP literal, and nothing under
/// `apps_domain` (whose names belong to the platform) or `localhost`.
pub fn parse_domain(input: &str, apps_domain: &str) -> Result<String> {
    let invalid = |message: &str| HostingError::invalid("invalid_domain", message.to_owned());
    let name = input.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err(invalid("a domain is required"));
    }
    if name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok() {
        return Err(HostingError::invalid("domain_is_ip_address", "an IP address is not a domain; attach a DNS name"));
    }
    if name.len() > 253 {
        return Err(invalid("a domain is at most 253 characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid("a domain has at least two labels (example.com)"));
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("each label of a domain is 1 to 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(invalid(
                "a domain holds only letters, digits, hyphens and dots (use the punycode form of an IDN)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label of a domain neither starts nor ends with a hyphen"));
        }
    }
    // A numeric top-level label is an IPv4 address in some spelling (`127.1`, `0x7f.1`) to resolvers.
    if labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(HostingError::invalid("domain_is_ip_address", "an IP address is not a domain; attach a DNS name"));
    }
    let apps = apps_domain.trim_end_matches('.').to_ascii_lowercase();
    let under = |parent: &str| name == parent || name.ends_with(&format!(".{parent}"));
    if under(&apps) || under("localhost") {
        return Err(HostingError::invalid(
            "domain_reserved",
            "the apps domain and its subdomains belong to the platform; every env already has its address there",
        ));
    }
    Ok(name)
}

/// Why a DNS lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name does not exist (NXDOMAIN).
    #[error("no such name")]
    NoSuchName,
    /// No answer in time from the server.
    #[error("the DNS server did not answer in time")]
    Timeout,
    /// The server answered with an error code, or something that is not a DNS answer to our question.
    #[error("bad DNS answer: {0}")]
    BadAnswer(String),
    /// The socket failed.
    #[error("DNS query failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A future of a TXT lookup.
pub type TxtFuture<'a> = Pin<Box<dyn Future<Output = std::result::Result<Vec<String>, ResolveError>> + Send + 'a>>;

/// Looks up TXT records (the ownership proof). Pluggable: [`UdpResolver`] in production, a
/// [`StaticResolver`] in tests, since real DNS is outside the machine.
pub trait Resolver: Send + Sync {
    /// The TXT records of `name`, each record's strings joined.
    fn txt<'a>(&'a self, name: &'a str) -> TxtFuture<'a>;
}

/// One DNS TXT question over UDP to one server (the system's first `nameserver` by default).
pub struct UdpResolver {
    server: SocketAddr,
    timeout: Duration,
}

impl UdpResolver {
    pub fn new(server: SocketAddr) -> Self {
        Self { server, timeout: Duration::from_secs(3) }
    }

    /// The first `nameserver` of `/etc/resolv.conf`, else 127.0.0.1:53.
    pub fn system() -> Self {
        let server = std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|conf| {
                conf.lines().find_map(|l| {
                    let rest = l.trim().strip_prefix("nameserver")?;
                    rest.trim().parse::<IpAddr>().ok()
                })
            })
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Self::new(SocketAddr::new(server, 53))
    }

    async fn query(&self, name: &str) -> std::result::Result<Vec<String>, ResolveError> {
        let id: u16 = {
            use rand::{Rng as _, SeedableRng as _};
            rand::rngs::StdRng::from_os_rng().random()
        };
        let question = crate::dns::txt_query(id, name).map_err(|e| ResolveError::BadAnswer(e.to_owned()))?;
        let bind: SocketAddr = if self.server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = tokio::net::UdpSocket::bind(bind).await?;
        socket.connect(self.server).await?;
        let exchange = async {
            socket.send(&question).await?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = socket.recv(&mut buf).await?;
                // Stray datagrams (another id) are skipped, not taken as the answer.
                match crate::dns::parse_txt_answer(id, &buf[..n]) {
                    Err(crate::dns::AnswerError::OtherId) => continue,
                    other => return Ok::<_, ResolveError>(other),
                }
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(ResolveError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(records))) => Ok(records),
            Ok(Ok(Err(crate::dns::AnswerError::NoSuchName))) => Err(ResolveError::NoSuchName),
            Ok(Ok(Err(e))) => Err(ResolveError::BadAnswer(e.to_string())),
        }
    }
}

impl Resolver for UdpResolver {
    fn txt<'a>(&'a self, name: &'a str) -> TxtFuture<'a> {
        Box::pin(self.query(name))
    }
}

/// A resolver answering from a table (tests: DNS is outside this machine).
#[derive(Default)]
pub struct StaticResolver {
    records: Mutex<HashMap<String, Vec<String>>>,
}

impl StaticResolver {
    pub fn set_txt(&self, name: &str, values: &[&str]) {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        records.insert(name.to_ascii_lowercase(), values.iter().map(|v| (*v).to_owned()).collect());
    }
}

impl Resolver for StaticResolver {
    fn txt<'a>(&'a self, name: &'a str) -> TxtFuture<'a> {
        let found =
            self.records.lock().unwrap_or_else(PoisonError::into_inner).get(&name.to_ascii_lowercase()).cloned();
        Box::pin(async move { found.ok_or(ResolveError::NoSuchName) })
    }
}

/// A certificate and its private key for one domain (PEM), as kept in the platform store.
#[derive(Clone)]
pub struct StoredCertificate {
    pub env: EnvId,
    pub cert_pem: String,
    pub key_pem: String,
    /// Expiry, Unix milliseconds.
    pub not_after_ms: i64,
}

struct DomainRow {
    domain: String,
    token: String,
    created_at: i64,
    verified_at: Option<i64>,
}

/// Host → the env serving it (`None`: not a verified domain), with when it was read.
type HostCache = Mutex<HashMap<String, (Option<EnvId>, Instant)>>;

/// The custom-domain service. Cheap to clone.
#[derive(Clone)]
pub struct Domains {
    platform: Platform,
    resolver: Arc<dyn Resolver>,
    cache: Arc<HostCache>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found() -> HostingError {
    HostingError::NotFound { what: "domain" }
}

fn taken() -> HostingError {
    HostingError::conflict("domain_taken", "this domain is already served by another environment")
}

fn load(
    conn: &mut dyn store::Conn,
    env: &str,
    domain: &str,
) -> std::result::Result<Option<DomainRow>, store::StoreError> {
    conn.query_opt(
        "SELECT domain, token, created_at, verified_at FROM custom_domains WHERE env_id = $1 AND domain = $2",
        &[env.into(), domain.into()],
    )?
    .map(|r| row(&r))
    .transpose()
}

fn row(r: &store::Row) -> std::result::Result<DomainRow, store::StoreError> {
    Ok(DomainRow { domain: r.text(0)?, token: r.text(1)?, created_at: r.int(2)?, verified_at: r.opt_int(3)? })
}

impl Domains {
    pub fn new(platform: Platform, resolver: Arc<dyn Resolver>) -> Self {
        Self { platform, resolver, cache: Arc::default() }
    }

    /// The same service asking another resolver.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    fn record(&self, env: &EnvId, r: &DomainRow) -> DomainRecord {
        let c = self.platform.config();
        DomainRecord {
            domain: r.domain.clone(),
            env: env.to_string(),
            status: if r.verified_at.is_some() { DomainStatus::Verified } else { DomainStatus::Pending },
            verification: DomainVerification {
                kind: "dns_txt".to_owned(),
                name: format!("{DOMAIN_CHALLENGE_LABEL}.{}", r.domain),
                value: r.token.clone(),
            },
            created_at: rfc3339(r.created_at),
            verified_at: r.verified_at.map(rfc3339),
            url: format!("{}://{}{}/", c.site_scheme, r.domain, c.site_port_suffix),
        }
    }

    fn parse(&self, domain: &str) -> Result<String> {
        parse_domain(domain, &self.platform.config().apps_domain)
    }

    /// Attaches `domain` to `env`, pending until [`Self::verify`].
    pub async fn add(&self, actor: &Actor, env: &EnvId, domain: &str) -> Result<DomainRecord> {
        let domain = self.parse(domain)?;
        let token = format!("vb-verify-{}", self.platform.random_id(32));
        let now = self.platform.clock().now_ms();
        let (e, actor) = (env.to_string(), actor.clone());
        let row = self
            .platform
            .db()
            .tx(move |conn| {
                if load(conn, &e, &domain)?.is_some() {
                    return Err(HostingError::conflict("domain_exists", "this env already has this domain"));
                }
                let verified_elsewhere = conn.query_opt(
                    "SELECT 1 FROM custom_domains WHERE domain = $1 AND verified_at IS NOT NULL",
                    &[domain.as_str().into()],
                )?;
                if verified_elsewhere.is_some() {
                    return Err(taken());
                }
                let count = conn
                    .query_opt("SELECT COUNT(*) FROM custom_domains WHERE env_id = $1", &[e.as_str().into()])?
                    .map(|r| r.int(0))
                    .transpose()?
                    .unwrap_or(0);
                if count >= MAX_DOMAINS_PER_ENV {
                    return Err(HostingError::conflict(
                        "too_many_domains",
                        format!("an env may attach at most {MAX_DOMAINS_PER_ENV} domains"),
                    ));
                }
                conn.execute(
                    "INSERT INTO custom_domains (env_id, domain, token, created_at, verified_at) VALUES ($1, $2, $3, $4, NULL)",
                    &[e.as_str().into(), domain.as_str().into(), token.as_str().into(), now.into()],
                )?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "domains:Add", env: Some(&e), target: Some(&domain), result: "ok" },
                )?;
                load(conn, &e, &domain)?.ok_or_else(not_found)
            })
            .await?;
        Ok(self.record(env, &row))
    }

    pub async fn list(&self, env: &EnvId) -> Result<DomainList> {
        let e = env.to_string();
        let rows = self
            .platform
            .db()
            .tx(move |conn| {
                conn.query(
                    "SELECT domain, token, created_at, verified_at FROM custom_domains WHERE env_id = $1 ORDER BY domain",
                    &[e.as_str().into()],
                )?
                .iter()
                .map(row)
                .collect::<std::result::Result<Vec<_>, _>>()
            })
            .await?;
        Ok(DomainList { items: rows.iter().map(|r| self.record(env, r)).collect() })
    }

    pub async fn get(&self, env: &EnvId, domain: &str) -> Result<DomainRecord> {
        // A name that cannot be a domain is no domain of this env.
        let domain = self.parse(domain).map_err(|_| not_found())?;
        let e = env.to_string();
        let row = self.platform.db().tx(move |conn| load(conn, &e, &domain)).await?.ok_or_else(not_found)?;
        Ok(self.record(env, &row))
    }

    /// Looks for the TXT record and marks the domain verified when it holds the token. Verifying a
    /// verified domain answers it as is.
    pub async fn verify(&self, actor: &Actor, env: &EnvId, domain: &str) -> Result<DomainRecord> {
        let current = self.get(env, domain).await?;
        if current.status == DomainStatus::Verified {
            return Ok(current);
        }
        let name = current.verification.name.clone();
        let found = self.resolver.txt(&name).await.map_err(|e| {
            HostingError::invalid("domain_verification_failed", format!("could not read the TXT record {name}: {e}"))
        })?;
        if !found.iter().any(|v| v.trim() == current.verification.value) {
            return Err(HostingError::invalid(
                "domain_verification_failed",
                format!("no TXT record {name} holds the verification token yet"),
            ));
        }
        let now = self.platform.clock().now_ms();
        let (e, d, actor) = (env.to_string(), current.domain.clone(), actor.clone());
        let row = self
            .platform
            .db()
            .tx(move |conn| {
                let changed = conn.execute(
                    "UPDATE custom_domains SET verified_at = $3 WHERE env_id = $1 AND domain = $2 AND verified_at IS NULL",
                    &[e.as_str().into(), d.as_str().into(), now.into()],
                );
                match changed {
                    // The unique index on verified names: another env proved it first.
                    Err(store::StoreError::Conflict) => return Err(taken()),
                    other => other?,
                };
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "domains:Verify", env: Some(&e), target: Some(&d), result: "ok" },
                )?;
                load(conn, &e, &d)?.ok_or_else(not_found)
            })
            .await?;
        self.forget(&current.domain);
        Ok(self.record(env, &row))
    }

    /// Detaches a domain; it stops being served at once on this instance (within [`LOOKUP_TTL`] on
    /// others), and its certificate goes with it.
    pub async fn delete(&self, actor: &Actor, env: &EnvId, domain: &str) -> Result<()> {
        let domain = self.parse(domain).map_err(|_| not_found())?;
        let now = self.platform.clock().now_ms();
        let (e, d, actor) = (env.to_string(), domain.clone(), actor.clone());
        self.platform
            .db()
            .tx(move |conn| {
                let removed = conn.execute(
                    "DELETE FROM custom_domains WHERE env_id = $1 AND domain = $2",
                    &[e.as_str().into(), d.as_str().into()],
                )?;
                if removed == 0 {
                    return Err(not_found());
                }
                conn.execute(
                    "DELETE FROM tls_certificates WHERE env_id = $1 AND domain = $2",
                    &[e.as_str().into(), d.as_str().into()],
                )?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "domains:Delete", env: Some(&e), target: Some(&d), result: "ok" },
                )?;
                Ok::<_, HostingError>(())
            })
            .await?;
        self.forget(&domain);
        Ok(())
    }

    fn forget(&self, domain: &str) {
        lock(&self.cache).remove(domain);
    }

    /// The env a Host header (port allowed) is a verified custom domain of. Hosts that cannot be a
    /// custom domain (IP literals, single labels, the apps domain) answer `None` without a query.
    pub async fn lookup(&self, host: &str) -> Option<EnvId> {
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        if !name.contains('.') || self.parse(&name).ok()? != name {
            return None;
        }
        if let Some((env, at)) = lock(&self.cache).get(&name)
            && at.elapsed() < LOOKUP_TTL
        {
            return env.clone();
        }
        let n = name.clone();
        let env = self
            .platform
            .db()
            .tx(move |conn| {
                conn.query_opt(
                    "SELECT env_id FROM custom_domains WHERE domain = $1 AND verified_at IS NOT NULL",
                    &[n.as_str().into()],
                )?
                .map(|r| r.text(0))
                .transpose()
            })
            .await;
        let env = match env {
            Ok(env) => env.and_then(|e| EnvId::parse(&e).ok()),
            Err(e) => {
                // Not cached: the next request asks again.
                tracing::warn!(error = %e, "custom domain lookup failed");
                return None;
            }
        };
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED_HOSTS {
            cache.clear();
        }
        cache.insert(name, (env.clone(), Instant::now()));
        env
    }

    /// The stored certificate of a domain, if any.
    pub async fn certificate(&self, domain: &str) -> Result<Option<StoredCertificate>> {
        let d = domain.to_owned();
        let row = self
            .platform
            .db()
            .tx(move |conn| {
                conn.query_opt(
                    "SELECT env_id, cert_pem, key_pem, not_after FROM tls_certificates WHERE domain = $1",
                    &[d.as_str().into()],
                )?
                .map(|r| Ok::<_, store::StoreError>((r.text(0)?, r.text(1)?, r.text(2)?, r.int(3)?)))
                .transpose()
            })
            .await?;
        Ok(row.and_then(|(env, cert_pem, key_pem, not_after_ms)| {
            Some(StoredCertificate { env: EnvId::parse(&env).ok()?, cert_pem, key_pem, not_after_ms })
        }))
    }

    /// Keeps a certificate issued for a domain verified by `env` (replacing an older one). Nothing is
    /// stored when the domain is no longer verified by that env (deleted while the order ran).
    pub async fn put_certificate(&self, env: &EnvId, domain: &str, cert: StoredCertificate) -> Result<bool> {
        let (e, d) = (env.to_string(), domain.to_owned());
        let now = self.platform.clock().now_ms();
        let stored = self
            .platform
            .db()
            .tx(move |conn| {
                let still = conn.query_opt(
                    "SELECT 1 FROM custom_domains WHERE env_id = $1 AND domain = $2 AND verified_at IS NOT NULL",
                    &[e.as_str().into(), d.as_str().into()],
                )?;
                if still.is_none() {
                    return Ok::<_, store::StoreError>(false);
                }
                conn.execute("DELETE FROM tls_certificates WHERE domain = $1", &[d.as_str().into()])?;
                conn.execute(
                    "INSERT INTO tls_certificates (domain, env_id, cert_pem, key_pem, not_after, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        d.as_str().into(),
                        e.as_str().into(),
                        cert.cert_pem.as_str().into(),
                        cert.key_pem.as_str().into(),
                        cert.not_after_ms.into(),
                        now.into(),
                    ],
                )?;
                Ok(true)
            })
            .await?;
        Ok(stored)
    }

    /// The ACME account credentials (JSON) kept for a directory URL.
    pub async fn acme_account(&self, directory: &str) -> Result<Option<String>> {
        let d = directory.to_owned();
        let found = self
            .platform
            .db()
            .tx(move |conn| {
                conn.query_opt("SELECT credentials FROM acme_accounts WHERE directory = $1", &[d.as_str().into()])?
                    .map(|r| r.text(0))
                    .transpose()
            })
            .await?;
        Ok(found)
    }

    /// Keeps the account created at a directory; when another instance stored one first, that one is
    /// answered (and used), so all instances share one account.
    pub async fn put_acme_account(&self, directory: &str, credentials: String) -> Result<String> {
        let d = directory.to_owned();
        let now = self.platform.clock().now_ms();
        let kept = self
            .platform
            .db()
            .tx(move |conn| {
                if let Some(r) =
                    conn.query_opt("SELECT credentials FROM acme_accounts WHERE directory = $1", &[d.as_str().into()])?
                {
                    return r.text(0);
                }
                conn.execute(
                    "INSERT INTO acme_accounts (directory, credentials, created_at) VALUES ($1, $2, $3)",
                    &[d.as_str().into(), credentials.as_str().into(), now.into()],
                )?;
                Ok(credentials)
            })
            .await?;
        Ok(kept)
    }

    /// Publishes an HTTP-01 key authorization (in the store, so whichever instance the CA reaches
    /// answers it).
    pub async fn put_challenge(&self, token: &str, key_authorization: &str, ttl: Duration) -> Result<()> {
        let (t, k) = (token.to_owned(), key_authorization.to_owned());
        let now = self.platform.clock().now_ms();
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        self.platform
            .db()
            .tx(move |conn| {
                conn.execute(
                    "DELETE FROM acme_challenges WHERE token = $1 OR expires_at < $2",
                    &[t.as_str().into(), now.into()],
                )?;
                conn.execute(
                    "INSERT INTO acme_challenges (token, key_authorization, expires_at) VALUES ($1, $2, $3)",
                    &[t.as_str().into(), k.as_str().into(), expires.into()],
                )?;
                Ok::<_, store::StoreError>(())
            })
            .await?;
        Ok(())
    }

    /// The key authorization of a live HTTP-01 challenge.
    pub async fn challenge(&self, token: &str) -> Result<Option<String>> {
        let t = token.to_owned();
        let now = self.platform.clock().now_ms();
        let found = self
            .platform
            .db()
            .tx(move |conn| {
                conn.query_opt(
                    "SELECT key_authorization FROM acme_challenges WHERE token = $1 AND expires_at >= $2",
                    &[t.as_str().into(), now.into()],
                )?
                .map(|r| r.text(0))
                .transpose()
            })
            .await?;
        Ok(found)
    }

    pub async fn remove_challenge(&self, token: &str) -> Result<()> {
        let t = token.to_owned();
        self.platform
            .db()
            .tx(move |conn| conn.execute("DELETE FROM acme_challenges WHERE token = $1", &[t.as_str().into()]))
            .await?;
        Ok(())
    }

    /// Removes an env's domains and certificates when the env is deleted.
    pub fn register_delete_hook(&self) {
        let db = self.platform.db().clone();
        let cache = Arc::downgrade(&self.cache);
        self.platform.on_env_delete(Arc::new(move |env: EnvId| {
            let db = db.clone();
            let cache = cache.clone();
            Box::pin(async move {
                db.delete_env_rows(env.as_str(), &["custom_domains", "tls_certificates"])
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(c) = cache.upgrade() {
                    lock(&c).retain(|_, (owner, _)| owner.as_ref() != Some(&env));
                }
                Ok(())
            })
        }));
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized_and_bad_ones_refused_with_stable_codes() {
        let ok = |s: &str| parse_domain(s, "apps.example.com").unwrap();
        assert_eq!(ok("WWW.Shop.Example."), "www.shop.example");
        assert_eq!(ok("xn--bcher-kva.example"), "xn--bcher-kva.example");
        let code = |s: &str| match parse_domain(s, "apps.example.com") {
            Err(HostingError::Invalid { code, .. }) => code,
            other => panic!("{s}: {:?}", other.map(|_| ())),
        };
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        for (input, want) in [
            ("", "invalid_domain"),
            ("com", "invalid_domain"),
            ("a..b.com", "invalid_domain"),
            ("-a.example.com", "invalid_domain"),
            ("a-.example.com", "invalid_domain"),
            ("under_score.example.com", "invalid_domain"),
            ("bücher.example", "invalid_domain"),
            ("evil.com/path", "invalid_domain"),
            ("evil.com:443", "invalid_domain"),
            ("a b.com", "invalid_domain"),
            (long_label.as_str(), "invalid_domain"),
            (long_name.as_str(), "invalid_domain"),
            ("127.0.0.1", "domain_is_ip_address"),
            ("[::1]", "domain_is_ip_address"),
            ("::1", "domain_is_ip_address"),
            ("10.1", "domain_is_ip_address"),
            ("apps.example.com", "domain_reserved"),
            ("shop.apps.example.com", "domain_reserved"),
            ("x.y.apps.example.com.", "domain_reserved"),
            ("shop.localhost", "domain_reserved"),
        ] {
            assert_eq!(code(input), want, "{input:?}");
        }
        // A label of exactly 63 is fine; the apps domain's look-alikes are not its subdomains.
        ok(&format!("{}.com", "a".repeat(63)));
        ok("evilapps.example.com");
    }

    proptest::proptest! {
        /// Whatever is accepted is its own normal form and is never under the apps domain.
        #[test]
        fn accepted_domains_are_normal(s in "\\PC{0,40}") {
            if let Ok(d) = parse_domain(&s, "apps.example.com") {
                proptest::prop_assert_eq!(parse_domain(&d, "apps.example.com").ok(), Some(d.clone()));
                proptest::prop_assert!(!d.ends_with(".apps.example.com") && d != "apps.example.com");
                proptest::prop_assert!(d.len() <= 253);
            }
        }
    }
}
