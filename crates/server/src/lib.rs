//! The HTTP edge of vibebase: the listener, the router built from the route table, the one
//! authorization path ([`gate`]), and the mapping of errors to each surface's wire shape.

pub mod address;
pub mod agent_backend;
pub mod apps_api;
pub mod auth_api;
pub mod data;
mod der;
pub mod domains_api;
pub mod e2b;
pub mod egress;
pub mod error;
pub mod extract;
pub mod functions_api;
pub mod gate;
pub mod handlers;
pub mod idempotency;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod preview;
pub mod routes;
pub mod sandboxes;
pub mod sessions;
pub mod sites;
pub mod storage_api;
pub mod storage_tus;
pub mod surface;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use http::Method;
use platform::Platform;
use tower::ServiceExt as _;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};

use crate::error::ApiError;
use crate::routes::RouteSpec;

/// The largest JSON body the `/v1` API reads. Surfaces that take files set their own limits.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    /// Route path (as axum matched it) → the specs of its methods. Keyed by path alone so the lookup on
    /// every request borrows instead of allocating.
    specs: Arc<HashMap<&'static str, Vec<RouteSpec>>>,
    pub metrics: Arc<metrics::Metrics>,
    openapi: bytes::Bytes,
    /// The sandbox registry, or why this instance has none (no bubblewrap, no cgroups, not root).
    pub sandboxes: Result<sandbox::Sandboxes, String>,
    /// The model gateway (`/env/<env>/llm/v1`); without `--models` it knows no models.
    pub gateway: gateway::Gateway,
    /// E2B's polling directory watchers.
    pub watchers: Arc<e2b::Watchers>,
    /// Env app databases (migrations, the PostgREST data API).
    pub appdb: appdb::AppDbs,
    /// End-user auth (GoTrue) of every env.
    pub auth: auth::Auth,
    /// Static sites: deployments and their serving.
    pub hosting: hosting::Hosting,
    /// File storage (Supabase Storage) of every env.
    pub storage: storage::Storage,
    /// Custom domains: ownership checks and the Host → env lookup.
    pub domains: hosting::domains::Domains,
    /// Cloud functions (they run in sandboxes: none without them).
    pub functions: Result<functions::Functions, String>,
    functions_config: functions::FunctionsConfig,
    /// The agent runtime (sessions); rebuilt when the gateway or the sandboxes change.
    pub agent: agent::Agent,
    agent_config: agent::AgentConfig,
    /// Container apps (they run in sandboxes: none without them).
    pub apps: Result<functions::apps::Apps, String>,
    apps_config: functions::apps::AppsConfig,
}

impl AppState {
    pub fn new(platform: Platform) -> Self {
        let mut specs: HashMap<&'static str, Vec<RouteSpec>> = HashMap::new();
        for s in routes::route_table() {
            if let Some(prefix) = routes::bare_prefix(s.path) {
                specs.entry(prefix).or_default().push(s);
            }
            specs.entry(s.path).or_default().push(s);
        }
        let openapi = openapi::document().to_json().unwrap_or_else(|_| "{}".to_owned());
        let gateway = gateway::Gateway::empty(platform.clone());
        let agent_config = agent::AgentConfig::default();
        let agent = agent::Agent::new(platform.clone(), gateway.clone(), None, agent_config.clone());
        idempotency::register_delete_hook(&platform);
        let appdb = appdb::AppDbs::new(platform.clone());
        appdb.register_delete_hook();
        // Every env database holds its auth tables, so migrations can reference `auth.users`.
        appdb.register_schema(auth::schema_hook());
        // …and its storage tables (`storage.buckets`, `storage.objects`) and helper functions.
        appdb.register_schema(storage::Storage::schema_hook());
        let storage = storage::Storage::new(appdb.clone());
        storage.register_delete_hook();
        let auth = auth::Auth::new(platform.clone(), auth::AuthConfig::default());
        let hosting = hosting::Hosting::new(platform.clone());
        hosting.register_delete_hook();
        let domains =
            hosting::domains::Domains::new(platform.clone(), Arc::new(hosting::domains::UdpResolver::system()));
        domains.register_delete_hook();
        let mut state = Self {
            platform,
            specs: Arc::new(specs),
            metrics: Arc::default(),
            openapi: bytes::Bytes::from(openapi),
            sandboxes: Err("sandboxes are not configured on this instance".to_owned()),
            gateway,
            watchers: Arc::default(),
            appdb,
            auth,
            hosting,
            storage,
            domains,
            functions: Err("functions need sandboxes, which this instance does not have".to_owned()),
            functions_config: functions::FunctionsConfig::default(),
            apps: Err("apps need sandboxes, which this instance does not have".to_owned()),
            apps_config: functions::apps::AppsConfig::default(),
            agent,
            agent_config,
        };
        state.rebuild_agent();
        state
    }

    /// Settings of the agent runtime (default model, limits). Call it before [`Self::with_gateway`] and
    /// [`Self::with_sandboxes`], which rebuild the runtime with what they bring.
    pub fn with_agent_config(mut self, config: agent::AgentConfig) -> Self {
        self.agent_config = config;
        self.rebuild_agent();
        self
    }

    fn rebuild_agent(&mut self) {
        self.agent = agent::Agent::new(
            self.platform.clone(),
            self.gateway.clone(),
            self.sandboxes.as_ref().ok().cloned(),
            self.agent_config.clone(),
        );
        self.agent.set_backend(Arc::new(agent_backend::AgentBackend {
            platform: self.platform.clone(),
            appdb: self.appdb.clone(),
            hosting: self.hosting.clone(),
            storage: self.storage.clone(),
            sandboxes: self.sandboxes.as_ref().ok().cloned(),
            functions: self.functions.as_ref().ok().cloned(),
            apps: self.apps.as_ref().ok().cloned(),
        }));
    }

    /// Process-wide settings of cloud functions (master key, idle timeout). Call it before
    /// [`Self::with_sandboxes`], which starts the functions registry.
    pub fn with_functions_config(mut self, config: functions::FunctionsConfig) -> Self {
        self.functions_config = config;
        self
    }

    /// Process-wide settings of container apps (wake timeout, backoff). Call it before
    /// [`Self::with_sandboxes`], which starts the apps registry.
    pub fn with_apps_config(mut self, config: functions::apps::AppsConfig) -> Self {
        self.apps_config = config;
        self
    }

    /// The same state with a configured model gateway. Call it before [`Self::with_sandboxes`]: the
    /// sandboxes' egress proxy serves their model calls with the state it is given.
    pub fn with_gateway(mut self, gateway: gateway::Gateway) -> Self {
        self.gateway = gateway;
        self.rebuild_agent();
        self
    }

    /// Attaches the sandbox registry (or the reason there is none), and gives its sandboxes their
    /// egress proxy (which dispatches their API calls through this state's router).
    pub fn with_sandboxes(mut self, sandboxes: Result<sandbox::Sandboxes, String>) -> Self {
        self.sandboxes = sandboxes;
        if let Ok(s) = &self.sandboxes {
            self.functions =
                Ok(functions::Functions::new(self.platform.clone(), s.clone(), self.functions_config.clone()));
            self.apps = Ok(functions::apps::Apps::new(self.platform.clone(), s.clone(), self.apps_config.clone()));
        }
        self.rebuild_agent();
        if let Ok(s) = &self.sandboxes {
            // The proxy serves data-plane surfaces only, none of which needs the registry; leaving it
            // (and the functions, which hold it) out of the proxy's state also keeps registry → proxy →
            // state → registry from being a cycle that would never free the platform (and its database
            // connections). The same holds for the agent runtime, which holds the registry too.
            let mut proxied = self.clone();
            proxied.sandboxes = Err("sandboxes are not reachable through the egress proxy".to_owned());
            proxied.functions = Err("functions cannot invoke functions".to_owned());
            proxied.apps = Err("apps are not reachable through the egress proxy".to_owned());
            // Last: the proxied runtime's backend must hold none of the above (they hold the registry).
            proxied.rebuild_agent();
            s.set_egress(egress::handler(proxied));
        }
        self
    }

    /// Replaces the auth service's process-wide configuration (SMTP relay, password hash cost). Call
    /// it before [`Self::with_sandboxes`], like [`Self::with_gateway`].
    pub fn with_auth_config(mut self, config: auth::AuthConfig) -> Self {
        self.auth = auth::Auth::new(self.platform.clone(), config);
        self
    }

    /// Proves domain ownership with this resolver (a test double, or a chosen DNS server).
    pub fn with_domain_resolver(mut self, resolver: Arc<dyn hosting::domains::Resolver>) -> Self {
        self.domains = self.domains.with_resolver(resolver);
        self
    }

    /// The route a matched path and method belong to.
    fn spec(&self, method: &Method, path: &str) -> Option<&RouteSpec> {
        let specs = self.specs.get(path)?;
        specs
            .iter()
            .find(|s| s.method == method.as_str())
            // axum answers HEAD with the GET handler; the GET rule applies.
            .or_else(|| specs.iter().find(|s| *method == Method::HEAD && s.method == "GET"))
            .or_else(|| specs.iter().find(|s| s.method == "ANY"))
    }

    /// The access rule of a route of the table (for handler-level decisions on per-env routes).
    fn spec_access(&self, method: &str, path: &'static str) -> tenancy::Access {
        self.specs.get(path).and_then(|specs| specs.iter().find(|s| s.method == method)).map_or(
            // Unknown routes are a programming error; deny-only access keeps it safe.
            tenancy::Access {
                action: "none:None",
                plane: tenancy::Plane::Control,
                env_keys: tenancy::EnvKeyAccess::None,
            },
            |s| s.access,
        )
    }
}

async fn route_not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(http::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}

/// The application as an axum router: table routes behind the gate, then the edge layers.
pub fn router(state: AppState) -> axum::Router {
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(ExposeHeaders::list([
            http::HeaderName::from_static(protocol::REQUEST_ID_HEADER),
            http::header::RETRY_AFTER,
            http::header::CONTENT_RANGE,
            // TUS (tus-js-client in browsers reads these).
            http::header::LOCATION,
            http::HeaderName::from_static("upload-offset"),
            http::HeaderName::from_static("upload-length"),
            http::HeaderName::from_static("upload-expires"),
            http::HeaderName::from_static("tus-resumable"),
            http::HeaderName::from_static("tus-version"),
            http::HeaderName::from_static("tus-extension"),
            http::HeaderName::from_static("tus-max-size"),
        ]))
        .max_age(std::time::Duration::from_secs(3600));
    let domains = state.domains.clone();
    let inner = routes::router()
        .route_layer(from_fn_with_state(state.clone(), gate::gate))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(cors)
        .layer(from_fn_with_state(state.clone(), gate::edge))
        .with_state(state);
    // Custom domains need a (cached) lookup, so their rewrite is async and runs here, in front of the
    // routes; apps-domain hosts were rewritten before (`rewrite_host`) and are never custom domains.
    axum::Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let (inner, domains) = (inner.clone(), domains.clone());
        async move { inner.oneshot(rewrite_custom_domain(&domains, req).await).await }
    }))
}

/// ACME HTTP-01 answers are served on every Host (the CA asks on the domain being certified).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Rewrites a request whose Host is a verified custom domain to its env's path form, like
/// `<env>.<apps-domain>`. Any other Host is left as it is (and so gets the platform's own routes, which
/// say nothing about envs without a credential).
pub async fn rewrite_custom_domain(domains: &hosting::domains::Domains, mut req: Request) -> Request {
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri().host());
    let Some(host) = host.map(str::to_owned) else { return req };
    if req.uri().path().starts_with(ACME_CHALLENGE_PREFIX) {
        return req;
    }
    let Some(env) = domains.lookup(&host).await else { return req };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = address::path_form(&address::HostTarget::Env(env), pq).parse() {
        *req.uri_mut() = uri;
    }
    req
}

/// Rewrites host-form requests (`<env>.<apps-domain>`, …) to their path form before routing.
pub fn rewrite_host(apps_domain: &str, mut req: Request) -> Request {
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri().host());
    let Some(target) = host.and_then(|h| address::parse_host(h, apps_domain)) else { return req };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = address::path_form(&target, pq).parse() {
        *req.uri_mut() = uri;
    }
    req
}

/// Handles one request the way the listener does (host rewrite, then the router). For tests.
pub async fn handle(router: axum::Router, apps_domain: &str, req: Request) -> Response {
    let req = rewrite_host(apps_domain, req);
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// How long a client may take to send a request's headers (slow clients are cut off, so a trickle of
/// bytes cannot hold a connection open forever).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, shutdown, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with a given header read timeout (tests shorten it).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    header_read_timeout: std::time::Duration,
) -> std::io::Result<()> {
    let apps_domain = state.platform.config().apps_domain.clone();
    let router = router(state);
    let app = tower::util::MapRequestLayer::new(move |req: Request| rewrite_host(&apps_domain, req));
    let service = tower::Layer::layer(&app, router);
    accept_loop(listener, shutdown, header_read_timeout, move |tcp, peer, builder, watcher| {
        let service = service.clone();
        async move {
            let hyper_service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                service.clone().oneshot(req.map(axum::body::Body::new))
            });
            let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tcp), hyper_service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    })
    .await
}

/// Accepts connections until `shutdown`, hands each (with the shared HTTP/1 connection builder and a
/// graceful-shutdown watcher) to `handle` on a task of its own, then waits for open connections to end.
/// The plain listener and the TLS listener share it.
pub(crate) async fn accept_loop<H, Fut>(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    header_read_timeout: std::time::Duration,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(
        tokio::net::TcpStream,
        std::net::SocketAddr,
        hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
        hyper_util::server::graceful::Watcher,
    ) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streamed responses (the model gateway's SSE) are many small writes: without TCP_NODELAY each
        // one after the first waits for the client's delayed ACK (about 40 ms on Linux).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        tokio::spawn(handle(tcp, peer, builder.clone(), graceful.watcher()));
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
