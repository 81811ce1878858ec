//! Identifier newtypes. Each one validates on construction, so code that holds one never re-checks it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest environment id: short enough that `<port>-<sandbox>--<env>.<domain>` stays a DNS label.
pub const ENV_ID_MAX_LEN: usize = 30;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("id is empty")]
    Empty,
    /// The string is longer than the id kind allows.
    #[error("id is longer than {max} characters")]
    TooLong { max: usize },
    /// The string has a character outside `a-z`, `0-9` and `-`.
    #[error("id may contain only lowercase letters, digits and single hyphens")]
    BadCharacter,
    /// The string starts or ends with a hyphen, or holds `--` (reserved as the host-form separator).
    #[error("id may not start or end with a hyphen or contain `--`")]
    BadHyphen,
    /// The string does not start with a letter.
    #[error("id must start with a lowercase letter")]
    BadStart,
}

/// An environment id: a DNS label of lowercase letters and digits with single hyphens, at most 30
/// characters, starting with a letter and never containing `--` (design.md, "Addresses").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EnvId(String);

impl EnvId {
    /// Validates `s` as an environment id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        validate_label(s, ENV_ID_MAX_LEN)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the DNS-label grammar shared by every id that appears in a host name.
pub fn validate_label(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { max });
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(IdError::BadCharacter);
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err(IdError::BadHyphen);
    }
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(IdError::BadStart);
    }
    Ok(())
}

impl fmt::Display for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for EnvId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for EnvId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for EnvId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[a-z](?:[a-z0-9]|-[a-z0-9])*$"))
            .max_length(Some(ENV_ID_MAX_LEN))
            .description(Some("Environment id: a DNS label (lowercase letters, digits, single hyphens)."))
            .into()
    }
}
impl utoipa::ToSchema for EnvId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_ids_follow_the_dns_label_rule() {
        for ok in ["a", "app", "my-app-2", "a1b2", &"a".repeat(30)] {
            assert!(EnvId::parse(ok).is_ok(), "{ok}");
        }
        let cases: [(&str, IdError); 8] = [
            ("", IdError::Empty),
            (&"a".repeat(31), IdError::TooLong { max: 30 }),
            ("App", IdError::BadCharacter),
            ("a_b", IdError::BadCharacter),
            ("-a", IdError::BadHyphen),
            ("a-", IdError::BadHyphen),
            ("a--b", IdError::BadHyphen),
            ("1abc", IdError::BadStart),
        ];
        for (bad, err) in cases {
            assert_eq!(EnvId::parse(bad), Err(err), "{bad:?}");
        }
    }
}
