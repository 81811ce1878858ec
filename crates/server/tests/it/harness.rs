//! A platform on a temp dir (or, with `VIBEBASE_TEST_DATABASE_URL` / `VIBEBASE_TEST_OBJECT_STORE_URL`,
//! on PostgreSQL and S3), driven through the real router with `oneshot`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode};
use platform::{Clock, Config, OsEntropy, Platform};
use protocol::api::EnvRecord;
use serde_json::Value;
use store::{Blobs, Db};
use time::OffsetDateTime;

/// A clock tests can move.
pub struct TestClock(Mutex<OffsetDateTime>);

impl TestClock {
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap();
        *t += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

pub struct Harness {
    pub platform: Platform,
    pub router: axum::Router,
    pub admin: String,
    pub clock: Arc<TestClock>,
    pub dir: tempfile::TempDir,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

fn unique(prefix: &str) -> String {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let s: String = (0..12).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect();
    format!("{prefix}{s}")
}

/// Auth for tests: still argon2id, at a cost that keeps hundreds of sign-ups fast.
fn test_auth_config(smtp: Option<auth::SmtpConfig>) -> auth::AuthConfig {
    auth::AuthConfig { smtp, hash_cost: auth::HashCost { memory_kib: 256, iterations: 1 } }
}

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

impl Harness {
    pub async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    pub async fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = match std::env::var("VIBEBASE_TEST_DATABASE_URL") {
            Ok(url) => {
                let schema = unique("t_");
                let admin = Db::connect_postgres(&url).await.unwrap();
                let s = schema.clone();
                admin
                    .tx(move |c| {
                        c.batch(&format!("CREATE SCHEMA {s}"))?;
                        Ok::<_, store::StoreError>(())
                    })
                    .await
                    .unwrap();
                let sep = if url.contains('?') { '&' } else { '?' };
                Db::connect_postgres(&format!("{url}{sep}options=-csearch_path%3D{schema}")).await.unwrap()
            }
            Err(_) => Db::open_sqlite(&dir.path().join("platform.db")).unwrap(),
        };
        store::schema::migrate(&db).await.unwrap();
        let blobs = match std::env::var("VIBEBASE_TEST_OBJECT_STORE_URL") {
            Ok(url) => Blobs::from_url(&format!("{}/{}", url.trim_end_matches('/'), unique("run-"))).unwrap(),
            Err(_) => Blobs::local(&dir.path().join("objects")).unwrap(),
        };
        let mut config = Config::new(dir.path().to_path_buf(), "http://127.0.0.1:8787".to_owned());
        config.site_port_suffix = ":8787".to_owned();
        adjust(&mut config);
        let clock = Arc::new(TestClock(Mutex::new(OffsetDateTime::now_utc())));
        let platform = Platform::new(config, db, blobs, ADMIN_KEY, clock.clone(), Arc::new(OsEntropy));
        let router = server::router(server::AppState::new(platform.clone()).with_auth_config(test_auth_config(None)));
        Self { platform, router, admin: ADMIN_KEY.to_owned(), clock, dir }
    }

    /// The same platform served with another auth configuration (e.g. an SMTP relay).
    pub fn with_smtp(mut self, smtp: auth::SmtpConfig) -> Self {
        let state = server::AppState::new(self.platform.clone()).with_auth_config(test_auth_config(Some(smtp)));
        self.router = server::router(state);
        self
    }

    /// Sends a request; `key` goes in `Authorization: Bearer`.
    pub async fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Resp {
        let mut headers = vec![];
        if let Some(k) = key {
            headers.push(("authorization", format!("Bearer {k}")));
        }
        self.send(method, path, &headers, body.map(|b| b.to_string())).await
    }

    /// Sends a request with explicit headers and a raw body (JSON content type when a body is given,
    /// unless the headers set one).
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, String)], body: Option<String>) -> Resp {
        let mut req = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(path);
        let has_ct = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if body.is_some() && !has_ct {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
        let apps_domain = self.platform.config().apps_domain.clone();
        let response = server::handle(self.router.clone(), &apps_domain, req).await;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, text, json }
    }

    /// Creates an env as admin and returns its record (with the secret key).
    pub async fn create_env(&self, id: &str) -> EnvRecord {
        let r = self.call("POST", "/v1/envs", Some(&self.admin), Some(serde_json::json!({"id": id}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        serde_json::from_value(r.json).unwrap()
    }
}

impl EnvKeysExt for EnvRecord {
    fn secret(&self) -> &str {
        self.keys.secret.as_deref().unwrap()
    }
    fn publishable(&self) -> &str {
        &self.keys.publishable
    }
}

pub trait EnvKeysExt {
    fn secret(&self) -> &str;
    fn publishable(&self) -> &str;
}
