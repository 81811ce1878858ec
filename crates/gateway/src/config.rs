//! The models file (`vibebase serve --models FILE`, JSON): providers, models with their routes and
//! prices, and budgets. Validated once at start; a bad file stops the server with a message naming the
//! field.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The wire protocol of an upstream provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible Chat Completions API (OpenAI, DeepSeek, Qwen, vLLM, Ollama, OpenRouter, …).
    Openai,
    /// The Anthropic Messages API.
    Anthropic,
    /// Recorded responses played back from a file (demos and tests).
    Replay,
}

/// One upstream provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Base URL up to and including the version, e.g. `https://api.openai.com/v1`.
    #[serde(default)]
    pub base_url: String,
    /// Name of the environment variable that holds the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Recordings file of a `replay` provider (relative to the models file).
    #[serde(default)]
    pub recordings: Option<String>,
    /// A recordings file (relative to the models file) that every answer of this network provider is
    /// added to, for a `replay` provider to play back.
    #[serde(default)]
    pub record: Option<String>,
    /// Prefixes whose following word is masked in recording keys (ids, URLs: values that differ from
    /// run to run); written into the file `record` makes.
    #[serde(default)]
    pub volatile: Vec<String>,
    /// Time to connect and receive the response headers.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest silence between two chunks of a response (also the first byte).
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Name of the output limit in OpenAI-compatible requests: `max_tokens` (most compatible servers)
    /// or `max_completion_tokens` (OpenAI's reasoning models).
    #[serde(default = "default_max_tokens_param")]
    pub max_tokens_param: String,
    /// Default weight of this provider's routes in balancing.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker rejects before letting one trial request through.
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
}

/// One route of a model: which provider serves it and under which upstream name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub provider: String,
    /// The model name the provider knows (default: the model's own name).
    #[serde(default)]
    pub model: Option<String>,
    /// Routes of equal priority are balanced by weight; lower priorities are tried first. Default: the
    /// route's position, so a plain list is an ordered fallback chain.
    #[serde(default)]
    pub priority: Option<u32>,
    /// Default: the provider's weight.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// One model callers can name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub routes: Vec<RouteConfig>,
    /// Price of one input token in micro-units of money (fractions allowed).
    #[serde(default)]
    pub input_price: f64,
    /// Price of one output token in micro-units of money.
    #[serde(default)]
    pub output_price: f64,
    /// Largest prompt (estimated tokens) the model accepts; larger prompts get 413.
    #[serde(default = "default_context_window")]
    pub context_window: u64,
    /// Output tokens reserved (and asked of the upstream) when the caller sets no maximum.
    #[serde(default = "default_max_output")]
    pub default_max_tokens: u64,
}

/// Budgets that apply to every env and session. Per-env budgets per period are set through the
/// platform's limits API as hard quotas on `llm_tokens_in`, `llm_tokens_out` and `llm_cost`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    /// Tokens (input + output) one session may use over its life.
    #[serde(default)]
    pub session_tokens: Option<i64>,
    /// Money (micro-units) one session may spend over its life.
    #[serde(default)]
    pub session_cost: Option<i64>,
}

/// The whole models file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub providers: HashMap<String, ProviderConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub budgets: BudgetsConfig,
    /// Largest request body accepted (413 above).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Attempts per request across all routes (first try included).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per retry.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Directory the models file lives in (recordings paths are relative to it).
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
    /// Recordings built into the binary, by replay provider name ([`Config::add_builtin_replay`]).
    #[serde(skip)]
    pub builtin_recordings: HashMap<String, &'static str>,
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_read_timeout_ms() -> u64 {
    120_000
}
fn default_max_tokens_param() -> String {
    "max_tokens".to_owned()
}
fn default_weight() -> u32 {
    1
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_ms() -> u64 {
    30_000
}
fn default_context_window() -> u64 {
    200_000
}
fn default_max_output() -> u64 {
    4096
}
fn default_max_request_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_max_attempts() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    100
}

/// Why a models file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The file is not valid JSON of the expected shape.
    #[error("parse {path}: {source}")]
    Parse { path: String, source: serde_json::Error },
    /// The content is inconsistent (unknown provider, duplicate model name, …).
    #[error("models file: {0}")]
    Invalid(String),
}

impl ProviderConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }
}

impl Config {
    /// Reads and validates a models file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut config: Config = serde_json::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.validate()?;
        Ok(config)
    }

    /// Parses a models file from text (tests, in-process callers).
    pub fn from_json(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Config =
            serde_json::from_str(text).map_err(|source| ConfigError::Parse { path: "<inline>".to_owned(), source })?;
        config.base_dir = base_dir.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (name, p) in &self.providers {
            match p.kind {
                ProviderKind::Openai | ProviderKind::Anthropic => {
                    if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                        return bad(format!("provider {name}: base_url must be an http(s) URL"));
                    }
                }
                ProviderKind::Replay => {
                    if p.recordings.is_none() && !self.builtin_recordings.contains_key(name) {
                        return bad(format!("provider {name}: a replay provider needs `recordings`"));
                    }
                    if p.record.is_some() {
                        return bad(format!("provider {name}: a replay provider cannot `record`"));
                    }
                }
            }
            if !matches!(p.max_tokens_param.as_str(), "max_tokens" | "max_completion_tokens") {
                return bad(format!("provider {name}: max_tokens_param must be max_tokens or max_completion_tokens"));
            }
            if p.breaker_failures == 0 {
                return bad(format!("provider {name}: breaker_failures must be at least 1"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for m in &self.models {
            if m.routes.is_empty() {
                return bad(format!("model {}: needs at least one route", m.name));
            }
            for n in std::iter::once(&m.name).chain(&m.aliases) {
                if n.is_empty() || !names.insert(n.clone()) {
                    return bad(format!("model name or alias {n:?} is empty or used twice"));
                }
            }
            for r in &m.routes {
                if !self.providers.contains_key(&r.provider) {
                    return bad(format!("model {}: unknown provider {:?}", m.name, r.provider));
                }
            }
            let price_ok = |p: f64| p.is_finite() && p >= 0.0;
            if !price_ok(m.input_price) || !price_ok(m.output_price) {
                return bad(format!("model {}: prices must be finite and not negative", m.name));
            }
            if m.default_max_tokens == 0 {
                return bad(format!("model {}: default_max_tokens must be at least 1", m.name));
            }
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".to_owned());
        }
        Ok(())
    }

    /// Adds a model answered by recordings built into the binary (a replay provider of the same name),
    /// unless the file defines a model or provider of that name already (the file wins).
    pub fn add_builtin_replay(&mut self, name: &str, recordings: &'static str) {
        if self.providers.contains_key(name) || self.model(name).is_some() {
            return;
        }
        let provider: ProviderConfig = serde_json::from_value(serde_json::json!({"kind": "replay"}))
            .unwrap_or_else(|e| unreachable!("a replay provider's defaults parse: {e}"));
        self.providers.insert(name.to_owned(), provider);
        self.builtin_recordings.insert(name.to_owned(), recordings);
        let model: ModelConfig =
            serde_json::from_value(serde_json::json!({"name": name, "routes": [{"provider": name}]}))
                .unwrap_or_else(|e| unreachable!("a replay model's defaults parse: {e}"));
        self.models.push(model);
    }

    /// The model a caller's name (or alias) refers to.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name || m.aliases.iter().any(|a| a == name))
    }
}

impl ModelConfig {
    /// Cost in micro-units of `input` and `output` tokens, rounded up.
    pub fn cost(&self, input: u64, output: u64) -> i64 {
        let c = input as f64 * self.input_price + output as f64 * self.output_price;
        c.ceil().min(i64::MAX as f64) as i64
    }
}
