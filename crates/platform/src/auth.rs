//! Credential resolution: a bearer string in, a verified [`Principal`] out (or a stable error).

use protocol::EnvId;
use protocol::api::{EnvStatus, KeyKind};
use tenancy::credential::{self, CredentialError};
use tenancy::policy::Policy;
use tenancy::{EnvRole, Principal};

use crate::{Platform, PlatformError, Result};

/// What [`Platform::authenticate`] learned besides the principal.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    /// The minted token's session, for billing.
    pub session: Option<String>,
}

impl Platform {
    /// Resolves a presented credential. Never trusts anything but the credential itself: the env a key
    /// belongs to comes from the key's row, not from the request.
    pub async fn authenticate(&self, presented: &str) -> Result<Authenticated> {
        let hash = credential::hash_key(presented);
        if credential::constant_time_eq(hash.as_bytes(), self.inner.admin_key_hash.as_bytes()) {
            return Ok(Authenticated { principal: Principal::Admin, session: None });
        }
        let parsed = credential::parse(presented).map_err(|e| match e {
            CredentialError::BadChecksum => {
                PlatformError::unauthenticated("invalid_key", "key checksum does not match")
            }
            CredentialError::Malformed | CredentialError::BadPrefix => {
                PlatformError::unauthenticated("invalid_key", "not a valid key")
            }
        })?;
        if parsed.kind == KeyKind::Admin {
            // Admin keys are compared above; a well-formed one that did not match is a stale or forged key.
            return Err(PlatformError::unauthenticated("invalid_key", "unknown key"));
        }
        let now = self.clock().now_ms();
        let row = self
            .db()
            .tx(move |conn| {
                Ok::<_, PlatformError>(conn.query_opt(
                    "SELECT k.id, k.kind, k.env_id, k.principal_id, k.expires_at, k.revoked_at, k.session, k.holder, k.actions, p.policy \
                     FROM keys k LEFT JOIN principals p ON p.id = k.principal_id WHERE k.hash = $1",
                    &[hash.into()],
                )?)
            })
            .await?
            .ok_or_else(|| PlatformError::unauthenticated("invalid_key", "unknown key"))?;
        if row.opt_int(5)?.is_some_and(|t| t <= now) {
            return Err(PlatformError::unauthenticated("key_revoked", "this key has been revoked"));
        }
        if row.opt_int(4)?.is_some_and(|t| t <= now) {
            return Err(PlatformError::unauthenticated("key_expired", "this key has expired"));
        }
        let key_id = row.text(0)?;
        let kind = KeyKind::parse(&row.text(1)?).ok_or(store::StoreError::Type(1))?;
        let env = || -> Result<EnvId> {
            row.opt_text(2)?.and_then(|e| EnvId::parse(&e).ok()).ok_or(PlatformError::Store(store::StoreError::Type(2)))
        };
        let principal = match kind {
            KeyKind::Secret => Principal::EnvKey { env: env()?, role: EnvRole::Service, key_id },
            KeyKind::Publishable => Principal::EnvKey { env: env()?, role: EnvRole::Anon, key_id },
            KeyKind::Minted => {
                let env = env()?;
                let actions: Vec<String> =
                    serde_json::from_str(&row.opt_text(8)?.unwrap_or_default()).unwrap_or_default();
                let policy = tenancy::authz::minted_policy(&env, &actions)
                    .map_err(|e| PlatformError::Invalid { code: "invalid_actions", message: e.to_string() })?;
                Principal::Minted { env, token_id: key_id, session: row.opt_text(6)?, holder: row.opt_text(7)?, policy }
            }
            KeyKind::Principal => {
                let id = row.opt_text(3)?.ok_or(store::StoreError::Type(3))?;
                let policy = Policy::from_json_str(&row.opt_text(9)?.unwrap_or_default())
                    .map_err(|e| PlatformError::Invalid { code: "policy_invalid", message: e.to_string() })?;
                Principal::SubAccount { id, policies: vec![policy] }
            }
            KeyKind::Admin => return Err(PlatformError::unauthenticated("invalid_key", "unknown key")),
        };
        let session = match &principal {
            Principal::Minted { session, .. } => session.clone(),
            _ => None,
        };
        Ok(Authenticated { principal, session })
    }

    /// The status of an env, or `env_not_found` (also for envs being deleted).
    pub async fn env_status(&self, env: &EnvId) -> Result<EnvStatus> {
        let id = env.to_string();
        let status =
            self.db().tx(move |conn| Ok::<_, PlatformError>(crate::envs::load(conn, &id)?.map(|r| r.status))).await?;
        match status {
            Some(EnvStatus::Deleting) | None => Err(PlatformError::NotFound { what: "env" }),
            Some(s) => Ok(s),
        }
    }
}
