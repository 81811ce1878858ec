//! CAM-style access policies (Tencent Cloud CAM / AWS IAM semantics).
//!
//! A policy is a JSON document:
//!
//! ```json
//! {"version": "2.0",
//!  "statement": [{
//!     "effect": "allow",
//!     "action": ["db:*", "functions:Invoke"],
//!     "resource": ["vrn:vibebase:env/my-app/*"],
//!     "condition": {"ip_equal": {"vb:source_ip": ["10.0.0.0/8", "::1/128"]}}
//!  }]}
//! ```
//!
//! Grammar (everything is checked by [`Policy::parse`]; unknown fields are errors):
//!
//! - `version`: exactly `"2.0"`.
//! - `statement`: a non-empty array of at most [`MAX_STATEMENTS`] statements.
//! - `effect`: `"allow"` or `"deny"` (ASCII case-insensitive).
//! - `action`: a string or a non-empty array of strings; each is `*` or `service:Name`, where
//!   `service` is `[a-z][a-z0-9_-]*` and `Name` is `[A-Za-z0-9*?]+` (`*` and `?` are wildcards).
//!   Matching is ASCII case-insensitive.
//! - `resource`: a string or a non-empty array of strings; each is `*` or starts with
//!   [`RESOURCE_PREFIX`] (`vrn:vibebase:`), may use `*` and `?` wildcards, at most
//!   [`MAX_RESOURCE_LEN`] bytes. Matching is case-sensitive; `*` also matches `/`.
//! - `condition` (optional): `{ "<operator>": { "<key>": value | [values] } }`; see [`keys`] for
//!   the keys the platform supplies. Operators: `string_equal`, `string_not_equal`,
//!   `string_equal_ignore_case`, `string_not_equal_ignore_case`, `string_like`, `string_not_like`,
//!   `numeric_equal`, `numeric_not_equal`, `numeric_less_than`, `numeric_less_than_equal`,
//!   `numeric_greater_than`, `numeric_greater_than_equal`, `date_equal`, `date_not_equal`,
//!   `date_less_than`, `date_less_than_equal`, `date_greater_than`, `date_greater_than_equal`,
//!   `ip_equal`, `ip_not_equal`, `bool_equal`; each also with the `_if_exist` suffix.
//!   Values are typed at parse time: IPs are addresses or CIDRs, dates are RFC 3339, numbers are
//!   JSON numbers or numeric strings, booleans are `true`/`false` or `"true"`/`"false"`.
//!   Condition keys are ASCII case-insensitive.
//!
//! Evaluation follows IAM: default deny; a matching deny statement wins over any allow; statement
//! order is irrelevant. A statement matches when the action matches one of its action patterns,
//! the resource matches one of its resource patterns and every condition holds. Inside a
//! condition block every key must hold; several values for one key are OR-ed for positive
//! operators, while negated operators (`*_not_equal`, `string_not_like`) hold only when no value
//! matches. A key absent from the request context makes `_if_exist` conditions and negated
//! operators hold and positive operators fail. A context value of the wrong type for the operator
//! makes the condition fail (whatever the operator).
//!
//! Input size is bounded structurally (statement/list/value limits below); callers should still
//! bound the size of the raw text they accept.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use protocol::EnvId;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The only supported policy language version.
pub const POLICY_VERSION: &str = "2.0";
/// Every resource name (other than the bare `*`) starts with this.
pub const RESOURCE_PREFIX: &str = "vrn:vibebase:";
/// The most statements a policy may hold.
pub const MAX_STATEMENTS: usize = 100;
/// The most entries in any list (actions, resources, values of one condition key) and the most
/// condition keys in one statement.
pub const MAX_LIST_ENTRIES: usize = 100;
/// The longest resource pattern, in bytes.
pub const MAX_RESOURCE_LEN: usize = 1024;
/// The longest action pattern, in bytes.
pub const MAX_ACTION_LEN: usize = 256;
/// The longest condition key, in bytes.
pub const MAX_CONDITION_KEY_LEN: usize = 256;
/// The longest string value in a condition, in bytes.
pub const MAX_CONDITION_VALUE_LEN: usize = 1024;

/// The request-context keys the platform fills in, for use in `condition` blocks.
pub mod keys {
    /// The client's IP address ([`ContextValue::Ip`](super::ContextValue::Ip)); use `ip_equal`/`ip_not_equal`.
    pub const SOURCE_IP: &str = "vb:source_ip";
    /// The time the request was received ([`ContextValue::Time`](super::ContextValue::Time)); use `date_*`.
    pub const CURRENT_TIME: &str = "vb:current_time";
    /// Whether the request came over TLS ([`ContextValue::Bool`](super::ContextValue::Bool)); use `bool_equal`.
    pub const SECURE_TRANSPORT: &str = "vb:secure_transport";
    /// The environment id the request targets ([`ContextValue::String`](super::ContextValue::String)).
    pub const ENV: &str = "vb:env";
    /// The id of the principal making the request ([`ContextValue::String`](super::ContextValue::String)).
    pub const PRINCIPAL: &str = "vb:principal";
    /// The id of the session the request belongs to ([`ContextValue::String`](super::ContextValue::String)).
    pub const SESSION: &str = "vb:session";
}

/// The value type each platform key carries, so a policy using the wrong operator family on a
/// platform key is rejected at parse time instead of silently never holding.
fn platform_key_kind(key: &str) -> Option<Kind> {
    match key {
        keys::SOURCE_IP => Some(Kind::Ip),
        keys::CURRENT_TIME => Some(Kind::Date),
        keys::SECURE_TRANSPORT => Some(Kind::Bool),
        keys::ENV | keys::PRINCIPAL | keys::SESSION => Some(Kind::String),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a policy document was rejected. Every message starts with the path to the problem, e.g.
/// `statement[1].action[0]: ...`; the root object is called `policy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text given to [`Policy::from_json_str`] is not JSON.
    #[error("policy: not valid JSON: {message}")]
    Json { message: String },
    /// A value has the wrong JSON type (e.g. a number where a string is expected).
    #[error("{path}: expected {expected}")]
    WrongType { path: String, expected: &'static str },
    /// A required field is absent.
    #[error("{path}: missing required field `{field}`")]
    MissingField { path: String, field: &'static str },
    /// An object holds a field the grammar does not define.
    #[error("{path}: unknown field `{field}`")]
    UnknownField { path: String, field: String },
    /// `version` is not `"2.0"`.
    #[error("{path}: unsupported policy version {found}, expected \"2.0\"")]
    UnsupportedVersion { path: String, found: String },
    /// A list or object that must hold at least one entry is empty.
    #[error("{path}: must not be empty")]
    Empty { path: String },
    /// A list or object holds more entries than allowed.
    #[error("{path}: more than {max} entries")]
    TooMany { path: String, max: usize },
    /// `effect` is neither `allow` nor `deny`.
    #[error("{path}: effect must be \"allow\" or \"deny\", got {found:?}")]
    BadEffect { path: String, found: String },
    /// An action pattern is not `*` or `service:Name`.
    #[error("{path}: invalid action {found:?}: {reason}")]
    BadAction { path: String, found: String, reason: &'static str },
    /// A resource pattern is not `*`, does not start with `vrn:vibebase:`, or is malformed.
    #[error("{path}: invalid resource {found:?}: {reason}")]
    BadResource { path: String, found: String, reason: &'static str },
    /// A condition block names an operator this policy language does not define.
    #[error("{path}: unknown condition operator {operator:?}")]
    UnknownOperator { path: String, operator: String },
    /// A condition key is malformed, duplicated, or used with an operator of the wrong type.
    #[error("{path}: invalid condition key {key:?}: {reason}")]
    BadConditionKey { path: String, key: String, reason: &'static str },
    /// A condition value does not fit its operator (bad IP, bad date, non-number, ...).
    #[error("{path}: invalid condition value {found}: {reason}")]
    BadConditionValue { path: String, found: String, reason: &'static str },
}

impl PolicyError {
    /// A stable machine-readable code; every code starts with `policy_`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Json { .. } => "policy_malformed_json",
            Self::UnsupportedVersion { .. } => "policy_unsupported_version",
            Self::TooMany { .. } => "policy_too_large",
            Self::UnknownOperator { .. } => "policy_unknown_operator",
            Self::WrongType { .. }
            | Self::MissingField { .. }
            | Self::UnknownField { .. }
            | Self::Empty { .. }
            | Self::BadEffect { .. }
            | Self::BadAction { .. }
            | Self::BadResource { .. }
            | Self::BadConditionKey { .. }
            | Self::BadConditionValue { .. } => "policy_invalid",
        }
    }
}

/// Shortens user-supplied text before it goes into an error message.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A short rendering of an arbitrary JSON value for error messages.
fn clip_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", clip(s)),
        Value::Array(_) => "(array)".to_owned(),
        Value::Object(_) => "(object)".to_owned(),
        other => clip(&other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Request side
// ---------------------------------------------------------------------------------------------

/// A typed value in the request context.
#[derive(Clone, Debug, PartialEq)]
pub enum ContextValue {
    String(String),
    Ip(IpAddr),
    Time(OffsetDateTime),
    Bool(bool),
    Number(f64),
}

/// The facts about a request that conditions test. Keys are ASCII case-insensitive.
#[derive(Default, Clone, Debug)]
pub struct Context {
    values: HashMap<String, ContextValue>,
}

impl Context {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder form of [`Context::insert`].
    pub fn with(mut self, key: &str, value: ContextValue) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value`, replacing any earlier value.
    pub fn insert(&mut self, key: &str, value: ContextValue) {
        self.values.insert(key.to_ascii_lowercase(), value);
    }

    pub fn get(&self, key: &str) -> Option<&ContextValue> {
        if key.bytes().any(|b| b.is_ascii_uppercase()) {
            self.values.get(&key.to_ascii_lowercase())
        } else {
            self.values.get(key)
        }
    }
}

/// One authorization question: may `action` be done on `resource`, given `context`?
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest<'a> {
    pub action: &'a str,
    pub resource: &'a str,
    pub context: &'a Context,
}

/// The outcome of evaluating policies against a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Some allow statement matched and no deny statement did.
    Allow,
    /// Some deny statement matched.
    ExplicitDeny,
    /// Nothing matched (the default).
    ImplicitDeny,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}

// ---------------------------------------------------------------------------------------------
// Policy model
// ---------------------------------------------------------------------------------------------

/// A parsed, validated policy. Construct with [`Policy::parse`], [`Policy::from_json_str`],
/// `str::parse`, serde, or [`owner_of_env`].
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
struct Statement {
    effect: Effect,
    /// Action patterns as written (for `to_json`) and ASCII-lowercased (for matching).
    actions: Vec<(String, String)>,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Number,
    Date,
    Ip,
    Bool,
}

/// The positive test behind an operator; negation is kept separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    StringEqual,
    StringEqualIgnoreCase,
    StringLike,
    NumericEqual,
    NumericLessThan,
    NumericLessThanEqual,
    NumericGreaterThan,
    NumericGreaterThanEqual,
    DateEqual,
    DateLessThan,
    DateLessThanEqual,
    DateGreaterThan,
    DateGreaterThanEqual,
    IpEqual,
    BoolEqual,
}

impl Test {
    fn kind(self) -> Kind {
        match self {
            Test::StringEqual | Test::StringEqualIgnoreCase | Test::StringLike => Kind::String,
            Test::NumericEqual
            | Test::NumericLessThan
            | Test::NumericLessThanEqual
            | Test::NumericGreaterThan
            | Test::NumericGreaterThanEqual => Kind::Number,
            Test::DateEqual
            | Test::DateLessThan
            | Test::DateLessThanEqual
            | Test::DateGreaterThan
            | Test::DateGreaterThanEqual => Kind::Date,
            Test::IpEqual => Kind::Ip,
            Test::BoolEqual => Kind::Bool,
        }
    }
}

/// Operator names (without `_if_exist`), the test they run, and whether they are negated.
const OPERATORS: &[(&str, Test, bool)] = &[
    ("string_equal", Test::StringEqual, false),
    ("string_not_equal", Test::StringEqual, true),
    ("string_equal_ignore_case", Test::StringEqualIgnoreCase, false),
    ("string_not_equal_ignore_case", Test::StringEqualIgnoreCase, true),
    ("string_like", Test::StringLike, false),
    ("string_not_like", Test::StringLike, true),
    ("numeric_equal", Test::NumericEqual, false),
    ("numeric_not_equal", Test::NumericEqual, true),
    ("numeric_less_than", Test::NumericLessThan, false),
    ("numeric_less_than_equal", Test::NumericLessThanEqual, false),
    ("numeric_greater_than", Test::NumericGreaterThan, false),
    ("numeric_greater_than_equal", Test::NumericGreaterThanEqual, false),
    ("date_equal", Test::DateEqual, false),
    ("date_not_equal", Test::DateEqual, true),
    ("date_less_than", Test::DateLessThan, false),
    ("date_less_than_equal", Test::DateLessThanEqual, false),
    ("date_greater_than", Test::DateGreaterThan, false),
    ("date_greater_than_equal", Test::DateGreaterThanEqual, false),
    ("ip_equal", Test::IpEqual, false),
    ("ip_not_equal", Test::IpEqual, true),
    ("bool_equal", Test::BoolEqual, false),
];

const IF_EXIST_SUFFIX: &str = "_if_exist";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Operator {
    /// Index into [`OPERATORS`].
    index: usize,
    test: Test,
    negated: bool,
    if_exist: bool,
}

impl Operator {
    fn parse(name: &str) -> Option<Operator> {
        let (base, if_exist) = match name.strip_suffix(IF_EXIST_SUFFIX) {
            Some(base) => (base, true),
            None => (name, false),
        };
        OPERATORS.iter().enumerate().find(|(_, (n, _, _))| *n == base).map(|(index, &(_, test, negated))| Operator {
            index,
            test,
            negated,
            if_exist,
        })
    }

    fn name(self) -> String {
        let base = OPERATORS.get(self.index).map_or("", |(n, _, _)| *n);
        if self.if_exist { format!("{base}{IF_EXIST_SUFFIX}") } else { base.to_owned() }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    op: Operator,
    /// ASCII-lowercased.
    key: String,
    values: Vec<CondValue>,
}

#[derive(Debug, Clone, PartialEq)]
enum CondValue {
    Str(String),
    Num(f64),
    Time { at: OffsetDateTime, raw: String },
    Ip { net: IpNet, raw: String },
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn parse(s: &str) -> Option<IpNet> {
        let (addr_part, prefix_part) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_part.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_part {
            None => max,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n: u8 = p.parse().ok()?;
                if n > max {
                    return None;
                }
                n
            }
        };
        // An IPv4-mapped IPv6 network that covers only mapped addresses is the IPv4 network.
        if let IpAddr::V6(v6) = addr
            && prefix >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Some(IpNet { addr: IpAddr::V4(v4), prefix: prefix - 96 });
        }
        Some(IpNet { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_u32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_u128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)
}

fn mask_u128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

impl Policy {
    /// Parses and validates a policy document; never panics on any input.
    pub fn parse(json: &Value) -> Result<Policy, PolicyError> {
        let root = "policy";
        let obj = json.as_object().ok_or_else(|| wrong_type(root, "a policy object"))?;
        reject_unknown_fields(obj, root, &["version", "statement"])?;
        let version =
            obj.get("version").ok_or_else(|| PolicyError::MissingField { path: root.to_owned(), field: "version" })?;
        if version.as_str() != Some(POLICY_VERSION) {
            return Err(PolicyError::UnsupportedVersion { path: "version".to_owned(), found: clip_value(version) });
        }
        let statements = obj
            .get("statement")
            .ok_or_else(|| PolicyError::MissingField { path: root.to_owned(), field: "statement" })?;
        let list = statements.as_array().ok_or_else(|| wrong_type("statement", "a non-empty array of statements"))?;
        if list.is_empty() {
            return Err(PolicyError::Empty { path: "statement".to_owned() });
        }
        if list.len() > MAX_STATEMENTS {
            return Err(PolicyError::TooMany { path: "statement".to_owned(), max: MAX_STATEMENTS });
        }
        let statements = list
            .iter()
            .enumerate()
            .map(|(i, s)| parse_statement(s, &format!("statement[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { statements })
    }

    /// Parses policy text; see [`Policy::parse`].
    pub fn from_json_str(s: &str) -> Result<Policy, PolicyError> {
        let value: Value = serde_json::from_str(s).map_err(|e| PolicyError::Json { message: e.to_string() })?;
        Policy::parse(&value)
    }

    /// The canonical JSON form; `Policy::parse(&p.to_json())` gives back an equal policy.
    /// Actions and resources are always written as arrays and effects in lowercase.
    pub fn to_json(&self) -> Value {
        let statements = self.statements.iter().map(Statement::to_json).collect();
        let mut obj = Map::new();
        obj.insert("version".to_owned(), Value::String(POLICY_VERSION.to_owned()));
        obj.insert("statement".to_owned(), Value::Array(statements));
        Value::Object(obj)
    }

    /// Evaluates this policy alone: explicit deny if any deny statement matches, else allow if any
    /// allow statement matches, else implicit deny.
    pub fn evaluate(&self, request: &AccessRequest<'_>) -> Decision {
        let prepared = Prepared::new(request);
        self.evaluate_prepared(&prepared)
    }

    fn evaluate_prepared(&self, request: &Prepared<'_>) -> Decision {
        let mut allowed = false;
        for statement in &self.statements {
            if statement.effect == Effect::Allow && allowed {
                continue;
            }
            if statement.matches(request) {
                match statement.effect {
                    Effect::Deny => return Decision::ExplicitDeny,
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed { Decision::Allow } else { Decision::ImplicitDeny }
    }
}

impl std::str::FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::from_json_str(s)
    }
}

impl fmt::Display for Policy {
    /// The canonical JSON text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl serde::Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Policy::parse(&value).map_err(serde::de::Error::custom)
    }
}

fn wrong_type(path: &str, expected: &'static str) -> PolicyError {
    PolicyError::WrongType { path: path.to_owned(), expected }
}

fn reject_unknown_fields(obj: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), PolicyError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(field) => Err(PolicyError::UnknownField { path: path.to_owned(), field: clip(field) }),
        None => Ok(()),
    }
}

fn parse_statement(v: &Value, path: &str) -> Result<Statement, PolicyError> {
    let obj = v.as_object().ok_or_else(|| wrong_type(path, "a statement object"))?;
    reject_unknown_fields(obj, path, &["effect", "action", "resource", "condition"])?;
    let field = |name: &'static str| {
        obj.get(name).ok_or_else(|| PolicyError::MissingField { path: path.to_owned(), field: name })
    };

    let effect_path = format!("{path}.effect");
    let effect = match field("effect")? {
        Value::String(s) if s.eq_ignore_ascii_case("allow") => Effect::Allow,
        Value::String(s) if s.eq_ignore_ascii_case("deny") => Effect::Deny,
        Value::String(s) => {
            return Err(PolicyError::BadEffect { path: effect_path, found: clip(s) });
        }
        _ => return Err(wrong_type(&effect_path, "the string \"allow\" or \"deny\"")),
    };

    let action_path = format!("{path}.action");
    let actions = string_list(field("action")?, &action_path)?
        .into_iter()
        .map(|(p, s)| validate_action(s, &p).map(|()| (s.to_owned(), s.to_ascii_lowercase())))
        .collect::<Result<Vec<_>, _>>()?;

    let resource_path = format!("{path}.resource");
    let resources = string_list(field("resource")?, &resource_path)?
        .into_iter()
        .map(|(p, s)| validate_resource(s, &p).map(|()| s.to_owned()))
        .collect::<Result<Vec<_>, _>>()?;

    let conditions = match obj.get("condition") {
        None => Vec::new(),
        Some(c) => parse_conditions(c, &format!("{path}.condition"))?,
    };

    Ok(Statement { effect, actions, resources, conditions })
}

/// A string or a non-empty array of strings, each with its path.
fn string_list<'v>(v: &'v Value, path: &str) -> Result<Vec<(String, &'v str)>, PolicyError> {
    const EXPECTED: &str = "a string or a non-empty array of strings";
    match v {
        Value::String(s) => Ok(vec![(path.to_owned(), s.as_str())]),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(PolicyError::Empty { path: path.to_owned() });
            }
            if items.len() > MAX_LIST_ENTRIES {
                return Err(PolicyError::TooMany { path: path.to_owned(), max: MAX_LIST_ENTRIES });
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let item_path = format!("{path}[{i}]");
                    match item {
                        Value::String(s) => Ok((item_path, s.as_str())),
                        _ => Err(wrong_type(&item_path, "a string")),
                    }
                })
                .collect()
        }
        _ => Err(wrong_type(path, EXPECTED)),
    }
}

fn validate_action(s: &str, path: &str) -> Result<(), PolicyError> {
    let bad = |reason| PolicyError::BadAction { path: path.to_owned(), found: clip(s), reason };
    if s == "*" {
        return Ok(());
    }
    if s.len() > MAX_ACTION_LEN {
        return Err(bad("longer than 256 bytes"));
    }
    let Some((service, name)) = s.split_once(':') else {
        return Err(bad("expected `*` or `service:Name`"));
    };
    let mut service_bytes = service.bytes();
    match service_bytes.next() {
        Some(b) if b.is_ascii_lowercase() => {}
        _ => return Err(bad("service must start with a lowercase letter")),
    }
    if !service_bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
        return Err(bad("service may hold only lowercase letters, digits, `_` and `-`"));
    }
    if name.is_empty() {
        return Err(bad("action name is empty"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?') {
        return Err(bad("action name may hold only letters, digits, `*` and `?`"));
    }
    Ok(())
}

fn validate_resource(s: &str, path: &str) -> Result<(), PolicyError> {
    let bad = |reason| PolicyError::BadResource { path: path.to_owned(), found: clip(s), reason };
    if s == "*" {
        return Ok(());
    }
    if s.len() > MAX_RESOURCE_LEN {
        return Err(bad("longer than 1024 bytes"));
    }
    if !s.starts_with(RESOURCE_PREFIX) {
        return Err(bad("must be `*` or start with `vrn:vibebase:`"));
    }
    if s.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    Ok(())
}

fn parse_conditions(v: &Value, path: &str) -> Result<Vec<Condition>, PolicyError> {
    let blocks = v.as_object().ok_or_else(|| wrong_type(path, "an object of condition operators"))?;
    let mut out: Vec<Condition> = Vec::new();
    for (op_name, block) in blocks {
        let op_path = format!("{path}.{}", clip(op_name));
        let op = Operator::parse(op_name)
            .ok_or_else(|| PolicyError::UnknownOperator { path: path.to_owned(), operator: clip(op_name) })?;
        let entries = block.as_object().ok_or_else(|| wrong_type(&op_path, "an object of condition keys"))?;
        if entries.is_empty() {
            return Err(PolicyError::Empty { path: op_path });
        }
        let first_of_block = out.len();
        for (raw_key, values) in entries {
            let key_path = format!("{op_path}.{}", clip(raw_key));
            let key = validate_condition_key(raw_key, op, &op_path)?;
            if out.get(first_of_block..).is_some_and(|block| block.iter().any(|c| c.key == key)) {
                return Err(PolicyError::BadConditionKey {
                    path: op_path,
                    key: clip(raw_key),
                    reason: "appears twice in this operator block (keys are case-insensitive)",
                });
            }
            if out.len() >= MAX_LIST_ENTRIES {
                return Err(PolicyError::TooMany { path: path.to_owned(), max: MAX_LIST_ENTRIES });
            }
            let values = parse_values(values, op.test.kind(), &key_path)?;
            out.push(Condition { op, key, values });
        }
    }
    // A canonical order, so equality and `to_json` do not depend on how the JSON map iterates.
    out.sort_by(|a, b| (a.op.index, a.op.if_exist, &a.key).cmp(&(b.op.index, b.op.if_exist, &b.key)));
    Ok(out)
}

fn validate_condition_key(raw: &str, op: Operator, path: &str) -> Result<String, PolicyError> {
    let bad = |reason| PolicyError::BadConditionKey { path: path.to_owned(), key: clip(raw), reason };
    if raw.is_empty() {
        return Err(bad("is empty"));
    }
    if raw.len() > MAX_CONDITION_KEY_LEN {
        return Err(bad("longer than 256 bytes"));
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'.' | b'/')) {
        return Err(bad("may hold only letters, digits and `:_-./`"));
    }
    let key = raw.to_ascii_lowercase();
    if let Some(kind) = platform_key_kind(&key)
        && kind != op.test.kind()
    {
        return Err(bad("platform key used with an operator of the wrong type"));
    }
    Ok(key)
}

fn parse_values(v: &Value, kind: Kind, path: &str) -> Result<Vec<CondValue>, PolicyError> {
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(PolicyError::Empty { path: path.to_owned() });
            }
            if items.len() > MAX_LIST_ENTRIES {
                return Err(PolicyError::TooMany { path: path.to_owned(), max: MAX_LIST_ENTRIES });
            }
            items.iter().enumerate().map(|(i, item)| parse_value(item, kind, &format!("{path}[{i}]"))).collect()
        }
        single => Ok(vec![parse_value(single, kind, path)?]),
    }
}

fn parse_value(v: &Value, kind: Kind, path: &str) -> Result<CondValue, PolicyError> {
    let bad = |reason| PolicyError::BadConditionValue { path: path.to_owned(), found: clip_value(v), reason };
    if let Value::String(s) = v
        && s.len() > MAX_CONDITION_VALUE_LEN
    {
        return Err(bad("longer than 1024 bytes"));
    }
    match (kind, v) {
        (Kind::String, Value::String(s)) => Ok(CondValue::Str(s.clone())),
        (Kind::String, _) => Err(bad("expected a string")),
        (Kind::Number, Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(CondValue::Num(f)),
            _ => Err(bad("not a finite number")),
        },
        (Kind::Number, Value::String(s)) => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(CondValue::Num(f)),
            _ => Err(bad("expected a number")),
        },
        (Kind::Number, _) => Err(bad("expected a number")),
        (Kind::Date, Value::String(s)) => match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(at) => Ok(CondValue::Time { at, raw: s.clone() }),
            Err(_) => Err(bad("expected an RFC 3339 date-time")),
        },
        (Kind::Date, _) => Err(bad("expected an RFC 3339 date-time string")),
        (Kind::Ip, Value::String(s)) => match IpNet::parse(s) {
            Some(net) => Ok(CondValue::Ip { net, raw: s.clone() }),
            None => Err(bad("expected an IPv4/IPv6 address or CIDR")),
        },
        (Kind::Ip, _) => Err(bad("expected an IP address or CIDR string")),
        (Kind::Bool, Value::Bool(b)) => Ok(CondValue::Bool(*b)),
        (Kind::Bool, Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(CondValue::Bool(true)),
        (Kind::Bool, Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(CondValue::Bool(false)),
        (Kind::Bool, _) => Err(bad("expected true or false")),
    }
}

// ---------------------------------------------------------------------------------------------
// Serialization
// ---------------------------------------------------------------------------------------------

impl Statement {
    fn to_json(&self) -> Value {
        let mut obj = Map::new();
        let effect = match self.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        obj.insert("effect".to_owned(), Value::String(effect.to_owned()));
        obj.insert(
            "action".to_owned(),
            Value::Array(self.actions.iter().map(|(raw, _)| Value::String(raw.clone())).collect()),
        );
        obj.insert(
            "resource".to_owned(),
            Value::Array(self.resources.iter().map(|r| Value::String(r.clone())).collect()),
        );
        if !self.conditions.is_empty() {
            let mut blocks = Map::new();
            for c in &self.conditions {
                let block = blocks.entry(c.op.name()).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(block) = block {
                    block.insert(c.key.clone(), Value::Array(c.values.iter().map(CondValue::to_json).collect()));
                }
            }
            obj.insert("condition".to_owned(), Value::Object(blocks));
        }
        Value::Object(obj)
    }
}

impl CondValue {
    fn to_json(&self) -> Value {
        match self {
            CondValue::Str(s) => Value::String(s.clone()),
            CondValue::Num(n) => {
                serde_json::Number::from_f64(*n).map_or_else(|| Value::String(n.to_string()), Value::Number)
            }
            CondValue::Time { raw, .. } | CondValue::Ip { raw, .. } => Value::String(raw.clone()),
            CondValue::Bool(b) => Value::Bool(*b),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// A request with its action lowercased once for all statements.
struct Prepared<'a> {
    action: String,
    resource: &'a str,
    context: &'a Context,
}

impl<'a> Prepared<'a> {
    fn new(request: &AccessRequest<'a>) -> Self {
        Prepared { action: request.action.to_ascii_lowercase(), resource: request.resource, context: request.context }
    }
}

impl Statement {
    fn matches(&self, request: &Prepared<'_>) -> bool {
        self.actions.iter().any(|(_, lower)| glob(lower, &request.action))
            && self.resources.iter().any(|r| glob(r, request.resource))
            && self.conditions.iter().all(|c| c.holds(request.context))
    }
}

impl Condition {
    fn holds(&self, context: &Context) -> bool {
        let Some(actual) = context.get(&self.key) else {
            return self.op.if_exist || self.op.negated;
        };
        let mut any = self.values.iter().map(|v| test(self.op.test, actual, v));
        // `None` means the context value has the wrong type: the condition fails.
        let mut matched = false;
        for outcome in &mut any {
            match outcome {
                None => return false,
                Some(true) => matched = true,
                Some(false) => {}
            }
        }
        matched != self.op.negated
    }
}

/// Runs one positive test; `None` when `actual` is of the wrong type for the test.
fn test(t: Test, actual: &ContextValue, expected: &CondValue) -> Option<bool> {
    use std::cmp::Ordering;
    match (t, actual, expected) {
        (Test::StringEqual, ContextValue::String(a), CondValue::Str(e)) => Some(a == e),
        (Test::StringEqualIgnoreCase, ContextValue::String(a), CondValue::Str(e)) => {
            Some(a.to_lowercase() == e.to_lowercase())
        }
        (Test::StringLike, ContextValue::String(a), CondValue::Str(e)) => Some(glob(e, a)),
        (_, ContextValue::Number(a), CondValue::Num(e)) => {
            let ord = a.partial_cmp(e)?;
            Some(match t {
                Test::NumericEqual => ord == Ordering::Equal,
                Test::NumericLessThan => ord == Ordering::Less,
                Test::NumericLessThanEqual => ord != Ordering::Greater,
                Test::NumericGreaterThan => ord == Ordering::Greater,
                Test::NumericGreaterThanEqual => ord != Ordering::Less,
                _ => return None,
            })
        }
        (_, ContextValue::Time(a), CondValue::Time { at: e, .. }) => {
            let ord = a.cmp(e);
            Some(match t {
                Test::DateEqual => ord == Ordering::Equal,
                Test::DateLessThan => ord == Ordering::Less,
                Test::DateLessThanEqual => ord != Ordering::Greater,
                Test::DateGreaterThan => ord == Ordering::Greater,
                Test::DateGreaterThanEqual => ord != Ordering::Less,
                _ => return None,
            })
        }
        (Test::IpEqual, ContextValue::Ip(a), CondValue::Ip { net, .. }) => Some(net.contains(*a)),
        (Test::BoolEqual, ContextValue::Bool(a), CondValue::Bool(e)) => Some(a == e),
        _ => None,
    }
}

/// Glob match where `*` matches any run of characters (including `/`) and `?` exactly one
/// character. Iterative with single-star backtracking: O(len(pattern) * len(text)) worst case.
fn glob(pattern: &str, text: &str) -> bool {
    fn next(s: &str, i: usize) -> Option<char> {
        s.get(i..).and_then(|rest| rest.chars().next())
    }
    let (mut p, mut t) = (0usize, 0usize);
    // Pattern index just after the last `*`, and the text index that star currently ends at.
    let mut star: Option<(usize, usize)> = None;
    while let Some(tc) = next(text, t) {
        match next(pattern, p) {
            Some('*') => {
                p += 1;
                star = Some((p, t));
                continue;
            }
            Some(pc) if pc == '?' || pc == tc => {
                p += pc.len_utf8();
                t += tc.len_utf8();
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                // Let the star swallow one more character and retry.
                let swallowed = next(text, st).map_or(1, char::len_utf8);
                p = sp;
                t = st + swallowed;
                star = Some((sp, t));
            }
            None => return false,
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.bytes().all(|b| b == b'*'))
}

// ---------------------------------------------------------------------------------------------
// Combining and standard policies
// ---------------------------------------------------------------------------------------------

/// Combines several policies attached to one principal: any explicit deny wins, else any allow,
/// else implicit deny.
pub fn evaluate_all(policies: &[Policy], request: &AccessRequest<'_>) -> Decision {
    let prepared = Prepared::new(request);
    let mut allowed = false;
    for policy in policies {
        match policy.evaluate_prepared(&prepared) {
            Decision::ExplicitDeny => return Decision::ExplicitDeny,
            Decision::Allow => allowed = true,
            Decision::ImplicitDeny => {}
        }
    }
    if allowed { Decision::Allow } else { Decision::ImplicitDeny }
}

/// The standard "owner of environment X" policy: allow every action on `vrn:vibebase:env/<id>` and
/// `vrn:vibebase:env/<id>/*`. Env ids are DNS labels (no `/`, `*` or `?`), so the patterns cannot
/// reach into another environment, even one whose id has this one's as a prefix.
pub fn owner_of_env(env: &EnvId) -> Policy {
    let base = env_resource(env);
    Policy {
        statements: vec![Statement {
            effect: Effect::Allow,
            actions: vec![("*".to_owned(), "*".to_owned())],
            resources: vec![format!("{base}/*"), base],
            conditions: Vec::new(),
        }],
    }
}

/// The resource name of an environment: `vrn:vibebase:env/<id>`.
pub fn env_resource(env: &EnvId) -> String {
    format!("{RESOURCE_PREFIX}env/{}", env.as_str())
}

/// The resource name of a thing inside an environment: `vrn:vibebase:env/<id>/<kind>/<name>`.
/// `kind` and `name` are inserted verbatim; whatever they hold, the result stays under the
/// environment's own prefix (matching never interprets `..` or wildcards in the request).
pub fn env_child_resource(env: &EnvId, kind: &str, name: &str) -> String {
    format!("{RESOURCE_PREFIX}env/{}/{kind}/{name}", env.as_str())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn glob_basics() {
        assert!(glob("*", ""));
        assert!(glob("*", "a/b/c"));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a*c", "ac"));
        assert!(!glob("a*c", "ab"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("é?ü*", "éxüyz"));
        assert!(glob("?", "é"));
        assert!(!glob("??", "é"));
        assert!(glob("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!glob("*a*b*c*d", "xxaxxbxxcxx"));
        assert!(glob("a**b", "ab"));
        assert!(!glob("", "a"));
        assert!(glob("", ""));
    }

    #[test]
    fn glob_is_not_exponential() {
        let text = "a".repeat(2000);
        let pattern = format!("{}b", "a*".repeat(200));
        assert!(!glob(&pattern, &text));
    }

    #[test]
    fn ip_nets() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.255.1.2".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(!IpNet::parse("0.0.0.0/0").unwrap().contains("::1".parse().unwrap()));
        assert!(IpNet::parse("::/0").unwrap().contains("::1".parse().unwrap()));
        let mapped = IpNet::parse("::ffff:192.168.0.0/112").unwrap();
        assert_eq!(mapped.prefix, 16);
        assert!(mapped.contains("192.168.4.4".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::1/129", "10.0.0.0/", "10.0.0.0/+8", "10.0.0", "x", "/8", "1.2.3.4/08x"] {
            assert!(IpNet::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_operator_name_round_trips() {
        for (name, _, _) in OPERATORS {
            let op = Operator::parse(name).unwrap();
            assert_eq!(op.name(), *name);
            let op = Operator::parse(&format!("{name}_if_exist")).unwrap();
            assert_eq!(op.name(), format!("{name}_if_exist"));
        }
        assert!(Operator::parse("string_equal_if_exist_if_exist").is_none());
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(100);
        let clipped = clip(&s);
        assert!(clipped.ends_with("..."));
        assert!(clipped.len() <= 67);
    }
}
