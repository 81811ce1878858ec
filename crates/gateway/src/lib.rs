//! The model gateway (MaaS): one OpenAI- and Anthropic-compatible endpoint per env for many models.
//!
//! A call goes: parse the inbound protocol into [`ir::ChatRequest`] → resolve the model (name or alias)
//! → reserve budget ([`budget`]) → try the model's routes in order (weighted within a priority, circuit
//! breaker per provider, retries with backoff on 429/5xx/timeouts/broken streams, all before the first
//! event is handed out) → stream [`ir::Event`]s to the caller's encoder → settle (ledger, then release).
//! The HTTP surface ([`http`]) and in-process callers ([`Gateway::chat`]) share this one path.

pub mod budget;
pub mod config;
pub mod error;
pub mod http;
pub mod ir;
mod protocols;
pub mod replay;
pub mod sse;
pub mod upstream;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::Platform;
use protocol::EnvId;
use rand::Rng as _;

pub use budget::{Bill, SessionCaps};
pub use config::Config;
use config::{ModelConfig, ProviderConfig, ProviderKind};
pub use error::GatewayError;
use ir::{ChatRequest, Completion, Event, Usage};

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Provider {
    name: String,
    config: ProviderConfig,
    api_key: Option<String>,
    replay: Option<replay::Recordings>,
    recorder: Option<Arc<replay::Recorder>>,
    breaker: Mutex<Breaker>,
}

/// A circuit breaker: opens after `breaker_failures` consecutive failures, rejects for the cooldown, then
/// lets one trial through (half-open); a success closes it.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

struct Inner {
    config: Config,
    platform: Platform,
    http: reqwest::Client,
    providers: HashMap<String, Provider>,
    budgets: budget::Budgets,
    rng: Mutex<rand::rngs::StdRng>,
    /// Calls reserved but not yet settled.
    in_flight: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A model as `/models` lists it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
    /// The canonical name when `id` is an alias.
    pub alias_of: Option<String>,
}

impl Gateway {
    /// Builds the gateway; reads provider keys from the environment variables the config names and
    /// loads replay recordings. Fails on a missing key variable or a bad recordings file.
    pub fn new(platform: Platform, config: Config) -> Result<Self, config::ConfigError> {
        let mut providers = HashMap::new();
        for (name, p) in &config.providers {
            let api_key = match &p.api_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    config::ConfigError::Invalid(format!(
                        "provider {name}: environment variable {var} (its API key) is not set"
                    ))
                })?),
                None => None,
            };
            let replay = match (&p.kind, &p.recordings, config.builtin_recordings.get(name)) {
                (ProviderKind::Replay, Some(file), _) => Some(replay::Recordings::load(&config.base_dir.join(file))?),
                (ProviderKind::Replay, None, Some(text)) => Some(replay::Recordings::parse(text, name)?),
                _ => None,
            };
            let recorder = p
                .record
                .as_ref()
                .map(|file| Arc::new(replay::Recorder::new(config.base_dir.join(file), p.volatile.clone())));
            providers.insert(
                name.clone(),
                Provider {
                    name: name.clone(),
                    config: p.clone(),
                    api_key,
                    replay,
                    recorder,
                    breaker: Mutex::default(),
                },
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| config::ConfigError::Invalid(format!("HTTP client: {e}")))?;
        let budgets = budget::Budgets::new(config.budgets.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                platform,
                http,
                providers,
                budgets,
                rng: Mutex::new(rand::SeedableRng::from_os_rng()),
                in_flight: Default::default(),
            }),
        })
    }

    /// A gateway with no models (every call answers `model_not_found`).
    pub fn empty(platform: Platform) -> Self {
        Self {
            inner: Arc::new(Inner {
                config: Config::default(),
                platform,
                http: reqwest::Client::new(),
                providers: HashMap::new(),
                budgets: budget::Budgets::new(config::BudgetsConfig::default()),
                rng: Mutex::new(rand::SeedableRng::from_os_rng()),
                in_flight: Default::default(),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Calls started and not yet settled (streams in progress, settlements being written).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until every started call is settled, or `timeout` passes (graceful shutdown, tests).
    /// Returns the calls still unsettled.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.in_flight()
    }

    /// Every model name and alias callers may use.
    pub fn models(&self) -> Vec<ModelInfo> {
        let mut out = Vec::new();
        for m in &self.inner.config.models {
            out.push(ModelInfo { id: m.name.clone(), alias_of: None });
            out.extend(m.aliases.iter().map(|a| ModelInfo { id: a.clone(), alias_of: Some(m.name.clone()) }));
        }
        out
    }

    /// In-process entry (the agent loop): the same path as HTTP, with the env's rate limit applied here
    /// because no gate stands in front.
    pub async fn chat(&self, env: &EnvId, session: Option<&str>, req: ChatRequest) -> Result<Answer, GatewayError> {
        self.chat_capped(env, session, SessionCaps::default(), req).await
    }

    /// [`Self::chat`] for a session with caps of its own (tokens and cost over its life).
    pub async fn chat_capped(
        &self,
        env: &EnvId,
        session: Option<&str>,
        caps: SessionCaps,
        req: ChatRequest,
    ) -> Result<Answer, GatewayError> {
        self.inner.platform.check_rate(env).await.map_err(GatewayError::from_platform)?;
        let status = self.inner.platform.env_status(env).await.map_err(GatewayError::from_platform)?;
        match status {
            protocol::api::EnvStatus::Active => {}
            protocol::api::EnvStatus::Suspended => {
                return Err(GatewayError::new(403, "env_suspended", "this environment is suspended"));
            }
            protocol::api::EnvStatus::Deleting => {
                return Err(GatewayError::new(404, "env_not_found", "environment not found"));
            }
        }
        self.start(Bill { env: env.clone(), session: session.map(str::to_owned), caps }, req).await
    }

    /// Starts a call for an already admitted caller: resolves the model, reserves budget, and returns
    /// once an upstream has started answering (so every retry and fallback happens before this returns).
    pub async fn start(&self, bill: Bill, req: ChatRequest) -> Result<Answer, GatewayError> {
        let inner = &self.inner;
        let model = inner.config.model(&req.model).ok_or_else(|| {
            GatewayError::new(404, "model_not_found", format!("the model {:?} does not exist", req.model))
        })?;
        if req.messages.is_empty() {
            return Err(GatewayError::invalid("invalid_request", "messages must not be empty"));
        }
        let input = req.estimate_input_tokens();
        if input > model.context_window {
            return Err(GatewayError::new(
                413,
                "context_length_exceeded",
                format!(
                    "the prompt (about {input} tokens) exceeds the model's context window of {}",
                    model.context_window
                ),
            ));
        }
        let want_out = req.max_tokens.unwrap_or(model.default_max_tokens).max(1);
        let (reservation, max_out) = inner.budgets.reserve(&inner.platform, &bill, model, input, want_out).await?;
        let call_id = inner.platform.random_id(24);
        inner.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let settle = Settle {
            inner: Some(self.inner.clone()),
            reservation,
            call_id: call_id.clone(),
            model: model.name.clone(),
            input_estimate: input,
            output_chars: 0,
        };
        let mut answer = Answer {
            id: call_id,
            model: req.model.clone(),
            created: inner.platform.clock().now_ms() / 1000,
            replayed: false,
            source: Source::Done,
            pending: VecDeque::new(),
            completion: Completion::default(),
            settle,
            finished: false,
            background_settlement: false,
            record: None,
        };
        let mut last_err = None;
        let order = self.route_order(model);
        let attempts = inner.config.max_attempts as usize;
        let mut tried = 0;
        for (i, provider_name) in order.iter().cycle().take(order.len().max(attempts)).enumerate() {
            if tried >= attempts {
                break;
            }
            let Some(provider) = inner.providers.get(&provider_name.0) else { continue };
            if !provider.admit() {
                last_err.get_or_insert_with(|| {
                    GatewayError::new(
                        503,
                        "upstream_unavailable",
                        "every provider of this model is failing (circuit open)",
                    )
                });
                continue;
            }
            if tried > 0 {
                let backoff = inner.config.backoff_ms.saturating_mul(1 << (tried - 1).min(10));
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
            tried += 1;
            match self.attempt(provider, &provider_name.1, &req, max_out, &mut answer).await {
                Ok(()) => {
                    provider.succeeded();
                    return Ok(answer);
                }
                Err(Attempt::Fatal(e)) => {
                    answer.settle.release();
                    return Err(e);
                }
                Err(Attempt::Retry(e)) => {
                    provider.failed();
                    tracing::warn!(provider = %provider.name, attempt = i + 1, code = %e.code, error = %e.message, "upstream attempt failed");
                    last_err = Some(e);
                }
            }
        }
        answer.settle.release();
        Err(last_err.unwrap_or_else(|| GatewayError::unavailable("no provider could serve this model")))
    }

    /// Providers to try, in order: by priority, weighted-random within a priority.
    fn route_order(&self, model: &ModelConfig) -> Vec<(String, String)> {
        let mut rng = lock(&self.inner.rng);
        let mut keyed: Vec<(u32, f64, String, String)> = model
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let weight = r
                    .weight
                    .or_else(|| self.inner.providers.get(&r.provider).map(|p| p.config.weight))
                    .unwrap_or(1)
                    .max(1);
                // Weighted random order (Efraimidis–Spirakis): sort by u^(1/w), larger first.
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                let priority = r.priority.unwrap_or(u32::try_from(i).unwrap_or(u32::MAX));
                (
                    priority,
                    -u.powf(1.0 / f64::from(weight)),
                    r.provider.clone(),
                    r.model.clone().unwrap_or_else(|| model.name.clone()),
                )
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        keyed.into_iter().map(|(_, _, p, m)| (p, m)).collect()
    }

    async fn attempt(
        &self,
        provider: &Provider,
        upstream_model: &str,
        req: &ChatRequest,
        max_out: u64,
        answer: &mut Answer,
    ) -> Result<(), Attempt> {
        if let Some(rec) = &provider.replay {
            let completion = rec.answer(&provider.name, req).map_err(Attempt::Fatal)?;
            answer.replayed = true;
            answer.id = format!("replay_{}", answer.id);
            answer.source = Source::Replay;
            answer.pending = completion.to_events().into();
            return Ok(());
        }
        let cfg = &provider.config;
        let url = format!("{}{}", cfg.base_url.trim_end_matches('/'), upstream::endpoint(cfg.kind));
        let body = upstream::request_body(cfg, req, upstream_model, max_out);
        let mut rb = self.inner.http.post(&url).json(&body).header("accept", "text/event-stream");
        if let Some(key) = &provider.api_key {
            rb = match cfg.kind {
                ProviderKind::Anthropic => rb.header("x-api-key", key),
                ProviderKind::Openai | ProviderKind::Replay => rb.bearer_auth(key),
            };
        }
        if cfg.kind == ProviderKind::Anthropic {
            rb = rb.header("anthropic-version", "2023-06-01");
        }
        let resp = match tokio::time::timeout(cfg.connect_timeout(), rb.send()).await {
            Err(_) => {
                return Err(Attempt::Retry(GatewayError::new(
                    504,
                    "upstream_timeout",
                    "the upstream did not answer in time",
                )));
            }
            Ok(Err(e)) => {
                return Err(Attempt::Retry(GatewayError::unavailable(format!(
                    "the upstream could not be reached: {}",
                    upstream::without_url(&e)
                ))));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        if status != 200 {
            let text = tokio::time::timeout(cfg.read_timeout(), resp.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let detail = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let detail: String = detail.chars().take(500).collect();
            return Err(match status {
                429 | 500..=599 | 408 => {
                    Attempt::Retry(GatewayError::unavailable(format!("the upstream answered {status}")))
                }
                400 | 404 | 413 | 422 => Attempt::Fatal(GatewayError::new(
                    if status == 404 { 400 } else { status },
                    "upstream_rejected_request",
                    format!("the upstream refused the request ({status}): {detail}"),
                )),
                _ => Attempt::Retry(GatewayError::unavailable(format!("the upstream answered {status}"))),
            });
        }
        answer.record = provider.recorder.as_ref().map(|r| {
            let (key, note) = r.start(req);
            (r.clone(), key, note)
        });
        answer.source = Source::Http {
            resp: Box::new(resp),
            decoder: upstream::Decoder::new(cfg.kind),
            read_timeout: cfg.read_timeout(),
        };
        answer.pending.clear();
        // Wait for the first content (or the end) so a stream broken at its start is retried elsewhere.
        loop {
            if answer.pending.iter().any(|e| !matches!(e, Event::Start { .. })) {
                return Ok(());
            }
            match answer.source.fill(&mut answer.pending).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => {
                    answer.source = Source::Done;
                    answer.pending.clear();
                    return Err(Attempt::Retry(e));
                }
            }
        }
    }
}

impl Inner {
    fn done(&self) {
        self.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

enum Attempt {
    Retry(GatewayError),
    Fatal(GatewayError),
}

impl Provider {
    fn admit(&self) -> bool {
        let mut b = lock(&self.breaker);
        match b.open_until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                // Half-open: this request is the trial; others wait for another cooldown.
                b.open_until = Some(Instant::now() + Duration::from_millis(self.config.breaker_cooldown_ms));
                true
            }
            None => true,
        }
    }

    fn succeeded(&self) {
        let mut b = lock(&self.breaker);
        b.failures = 0;
        b.open_until = None;
    }

    fn failed(&self) {
        let mut b = lock(&self.breaker);
        b.failures += 1;
        if b.failures >= self.config.breaker_failures {
            b.open_until = Some(Instant::now() + Duration::from_millis(self.config.breaker_cooldown_ms));
        }
    }
}

enum Source {
    Http { resp: Box<reqwest::Response>, decoder: upstream::Decoder, read_timeout: Duration },
    Replay,
    Done,
}

impl Source {
    /// Reads more events into `out`; false at the end of the stream.
    async fn fill(&mut self, out: &mut VecDeque<Event>) -> Result<bool, GatewayError> {
        match self {
            Source::Http { resp, decoder, read_timeout } => {
                if decoder.done {
                    return Ok(false);
                }
                match upstream::next_chunk(resp, *read_timeout).await? {
                    Some(chunk) => decoder.push(&chunk, out)?,
                    None => decoder.end(out)?,
                }
                Ok(true)
            }
            Source::Replay | Source::Done => Ok(false),
        }
    }
}

/// Settles a call exactly once: on completion with the upstream's usage, or (when the answer is dropped
/// or fails midway) with an estimate, so cut-off streams are charged.
struct Settle {
    inner: Option<Arc<Inner>>,
    reservation: budget::Reservation,
    call_id: String,
    model: String,
    input_estimate: u64,
    output_chars: usize,
}

impl Settle {
    fn release(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.budgets.release(&self.reservation);
            inner.done();
        }
    }

    fn estimate(&self) -> Usage {
        Usage { input_tokens: self.input_estimate, output_tokens: ir::estimate_tokens(self.output_chars) }
    }

    async fn settle(&mut self, usage: Usage) -> Result<(), GatewayError> {
        let Some(inner) = self.inner.take() else { return Ok(()) };
        let cost = inner.config.model(&self.model).map_or(0, |m| m.cost(usage.input_tokens, usage.output_tokens));
        let result =
            inner.budgets.settle(&inner.platform, &self.reservation, &self.call_id, &self.model, usage, cost).await;
        inner.done();
        result
    }
}

impl Settle {
    /// Settles in a background task (the caller does not wait for the ledger write); outside a runtime
    /// the reservation is only released.
    fn settle_in_background(&mut self, usage: Usage) {
        let Some(inner) = self.inner.take() else { return };
        let (reservation, call_id, model) = (self.reservation.clone(), self.call_id.clone(), self.model.clone());
        let cost = inner.config.model(&model).map_or(0, |m| m.cost(usage.input_tokens, usage.output_tokens));
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) =
                        inner.budgets.settle(&inner.platform, &reservation, &call_id, &model, usage, cost).await
                    {
                        tracing::error!(error = %e, call_id, "settling a model call failed");
                    }
                    inner.done();
                });
            }
            Err(_) => {
                inner.budgets.release(&reservation);
                inner.done();
            }
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if self.inner.is_some() {
            tracing::info!(call_id = %self.call_id, "model call cut off; charging its estimated usage");
            let usage = self.estimate();
            self.settle_in_background(usage);
        }
    }
}

/// A started answer: its events, then the settlement. Dropping it midway cancels the upstream request
/// and charges the estimated usage.
pub struct Answer {
    /// Id of this call (`replay_` prefix when replayed).
    pub id: String,
    /// The model name the caller asked for.
    pub model: String,
    /// Unix seconds.
    pub created: i64,
    /// True when a replay provider answered.
    pub replayed: bool,
    source: Source,
    pending: VecDeque<Event>,
    completion: Completion,
    settle: Settle,
    finished: bool,
    /// Settle after the last event without making the caller wait for the ledger write.
    background_settlement: bool,
    /// Where the whole answer is recorded (key, note), when its provider records.
    record: Option<(Arc<replay::Recorder>, String, String)>,
}

impl Answer {
    /// The last event is handed out without waiting for the ledger write; the reservation is still held
    /// until the write is done, so budgets stay exact (only the usage report lags by that write).
    pub fn settle_in_background(&mut self) {
        self.background_settlement = true;
    }

    /// The next event; `None` after the last one (the call is then settled). An error ends the stream
    /// (the call is settled with its estimated usage).
    pub async fn next(&mut self) -> Option<Result<Event, GatewayError>> {
        if self.finished {
            return None;
        }
        loop {
            if let Some(e) = self.pending.pop_front() {
                match &e {
                    Event::TextDelta { text } => self.settle.output_chars += text.len(),
                    Event::ToolCallDelta { arguments, .. } => self.settle.output_chars += arguments.len(),
                    Event::ToolCallStart { name, .. } => self.settle.output_chars += name.len(),
                    _ => {}
                }
                self.completion.apply(&e);
                return Some(Ok(e));
            }
            match self.source.fill(&mut self.pending).await {
                Ok(true) => {}
                Ok(false) => {
                    self.finished = true;
                    if let Some((recorder, key, note)) = self.record.take() {
                        recorder.add(key, note, self.completion.clone());
                    }
                    let mut usage = self.completion.usage;
                    if usage.input_tokens == 0 && usage.output_tokens == 0 {
                        usage = self.settle.estimate();
                    }
                    if self.background_settlement {
                        self.settle.settle_in_background(usage);
                    } else if let Err(e) = self.settle.settle(usage).await {
                        tracing::error!(error = %e, "settling a model call failed");
                    }
                    return None;
                }
                Err(e) => {
                    self.finished = true;
                    self.source = Source::Done;
                    let usage = self.settle.estimate();
                    if let Err(err) = self.settle.settle(usage).await {
                        tracing::error!(error = %err, "settling a failed model call failed");
                    }
                    return Some(Err(e));
                }
            }
        }
    }

    /// Reads the whole answer.
    pub async fn collect(mut self) -> Result<Completion, GatewayError> {
        while let Some(e) = self.next().await {
            e?;
        }
        Ok(std::mem::take(&mut self.completion))
    }

    /// What has been gathered so far (the whole answer after the last event).
    pub fn completion(&self) -> &Completion {
        &self.completion
    }
}
