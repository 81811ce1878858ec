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
    /// Real sandboxes (bubblewrap), or why this host has none.
    pub sandboxes: Result<sandbox::Sandboxes, String>,
    /// The model gateway, once [`Harness::use_models`] configured one.
    pub gateway: Option<gateway::Gateway>,
    /// The DNS the custom-domain ownership check reads (DNS is outside this machine).
    pub dns: Arc<hosting::domains::StaticResolver>,
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

/// One bubblewrap backend per test process, driving the `vibebase` binary cargo built next to the
/// test binaries (its hidden subcommands are the agent and the launcher).
fn local_backend() -> Result<Arc<dyn sandbox::Backend>, String> {
    static BACKEND: std::sync::OnceLock<Result<Arc<dyn sandbox::Backend>, String>> = std::sync::OnceLock::new();
    BACKEND
        .get_or_init(|| {
            sweep_dead_test_backends();
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let bin = exe.parent().and_then(|d| d.parent()).map(|d| d.join("vibebase")).ok_or("no target dir")?;
            let run_root = std::path::PathBuf::from("/run/vibebase").join(format!("test-{}", std::process::id()));
            let templates = run_root.join("store");
            sandbox::local::LocalBackend::new(sandbox::local::host_config(bin, run_root, templates, 100_000))
                .map(|b| Arc::new(b) as Arc<dyn sandbox::Backend>)
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Test processes exit without a shutdown; the next one removes what the dead ones left.
fn sweep_dead_test_backends() {
    let Ok(rd) = std::fs::read_dir("/run/vibebase") else { return };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("test-") else { continue };
        if std::path::Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(entry.path().join("templates"))
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(entry.path());
        for controller in ["", "memory", "pids", "cpu", "cpuacct", "freezer"] {
            let base = std::path::Path::new("/sys/fs/cgroup").join(controller).join("vibebase").join(&name);
            if let Ok(envs) = std::fs::read_dir(&base) {
                for env in envs.flatten() {
                    if let Ok(sbs) = std::fs::read_dir(env.path()) {
                        sbs.flatten().filter(|e| e.path().is_dir()).for_each(|sb| drop(std::fs::remove_dir(sb.path())));
                    }
                    let _ = std::fs::remove_dir(env.path());
                }
            }
            let _ = std::fs::remove_dir(base);
        }
    }
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
        let sandboxes = local_backend().map(|backend| {
            let defaults =
                sandbox::SandboxDefaults { timeout: std::time::Duration::from_secs(120), ..Default::default() };
            sandbox::Sandboxes::new(platform.clone(), backend, defaults)
        });
        let dns = Arc::new(hosting::domains::StaticResolver::default());
        let state = server::AppState::new(platform.clone())
            .with_auth_config(test_auth_config(None))
            .with_domain_resolver(dns.clone())
            .with_sandboxes(sandboxes.clone());
        let router = server::router(state);
        Self { platform, router, admin: ADMIN_KEY.to_owned(), clock, dir, sandboxes, gateway: None, dns }
    }

    /// Serves the model gateway with this models file (JSON) from now on.
    pub fn use_models(&mut self, models_json: &str) -> gateway::Gateway {
        let config = gateway::Config::from_json(models_json, self.dir.path()).unwrap();
        let gw = gateway::Gateway::new(self.platform.clone(), config).unwrap();
        let state = server::AppState::new(self.platform.clone())
            .with_auth_config(test_auth_config(None))
            .with_domain_resolver(self.dns.clone())
            .with_gateway(gw.clone());
        self.router = server::router(state.with_sandboxes(self.sandboxes.clone()));
        self.gateway = Some(gw.clone());
        gw
    }

    /// The same platform served with another auth configuration (e.g. an SMTP relay).
    pub fn with_smtp(mut self, smtp: auth::SmtpConfig) -> Self {
        let state = server::AppState::new(self.platform.clone())
            .with_auth_config(test_auth_config(Some(smtp)))
            .with_domain_resolver(self.dns.clone());
        self.router = server::router(state.with_sandboxes(self.sandboxes.clone()));
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

    /// The env's usage totals by meter, after flushing the meter buffer (0 for meters without usage).
    pub async fn usage_totals(&self, env: &str) -> std::collections::HashMap<String, i64> {
        self.platform.flush_meters().await.unwrap();
        let usage = self.call("GET", &format!("/v1/envs/{env}/usage"), Some(&self.admin), None).await;
        assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
        usage.json["totals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["meter"].as_str().unwrap().to_owned(), t["quantity"].as_i64().unwrap()))
            .collect()
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
