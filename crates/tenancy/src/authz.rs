//! The authorization decision. Every request, on every surface, is decided here and only here, from a
//! principal resolved from verified credentials and the access rule of the route it matched.

use protocol::EnvId;

use crate::policy::{self, AccessRequest, Context, Policy};

/// The database role an env key acts as on the data plane (as on Supabase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvRole {
    /// `service_role`: full power over the env, bypassing row-level security.
    Service,
    /// `anon`: what a browser may do; row-level security applies.
    Anon,
}

/// Who is calling, as established from a verified credential.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The platform admin key: every action on every env.
    Admin,
    /// An env's secret (service) or publishable (anon) key.
    EnvKey { env: EnvId, role: EnvRole, key_id: String },
    /// A token minted for the hands. Its `policy` is generated at mint time and never names another env.
    Minted { env: EnvId, token_id: String, session: Option<String>, holder: Option<String>, policy: Policy },
    /// A CAM-style sub-account; it may do exactly what its policies allow.
    SubAccount { id: String, policies: Vec<Policy> },
}

impl Principal {
    /// The env a credential is bound to; `None` for platform-wide principals.
    pub fn bound_env(&self) -> Option<&EnvId> {
        match self {
            Self::Admin | Self::SubAccount { .. } => None,
            Self::EnvKey { env, .. } | Self::Minted { env, .. } => Some(env),
        }
    }

    /// How the principal is named in the audit log.
    pub fn actor(&self) -> String {
        match self {
            Self::Admin => "admin".to_owned(),
            Self::EnvKey { role: EnvRole::Service, key_id, .. } => format!("secret:{key_id}"),
            Self::EnvKey { role: EnvRole::Anon, key_id, .. } => format!("publishable:{key_id}"),
            Self::Minted { token_id, .. } => format!("token:{token_id}"),
            Self::SubAccount { id, .. } => format!("principal:{id}"),
        }
    }
}

/// Which side of the platform a route is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// No credential needed (health, metrics, OpenAPI, published sites).
    Public,
    /// The `/v1` platform API.
    Control,
    /// An env's wire-compatible surfaces (`/env/<env>/…`).
    Data,
}

/// Who an env-bound key may be on a route. Admin and sub-accounts are decided by policy instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKeyAccess {
    /// Only platform principals (admin, sub-accounts): env lifecycle, limits, platform-wide routes.
    None,
    /// The env's secret key too (tenant self-service on the control plane; service role on the data plane).
    Secret,
    /// The secret key and minted tokens (data plane the hands use, e.g. the model gateway).
    SecretOrMinted,
    /// Any key of the env, publishable included (browser-facing data plane).
    Any,
}

/// The access rule a route declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// CAM action, e.g. `env:Delete`.
    pub action: &'static str,
    pub plane: Plane,
    pub env_keys: EnvKeyAccess,
}

/// Why a request is refused. Each maps to one stable error code at the HTTP edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// An env-bound credential was used on another env, or on a platform-wide route.
    #[error("this credential is not valid for this environment")]
    WrongEnv,
    /// The principal's kind may not use this route at all (e.g. a publishable key on `/v1`).
    #[error("this credential may not use this route")]
    CredentialKind,
    /// A policy (sub-account or minted token) does not allow the action, or explicitly denies it.
    #[error("not allowed by policy")]
    Policy,
}

/// Decides whether `principal` may perform `access` on `resource` of `env` (None = platform-wide).
pub fn authorize(
    principal: &Principal,
    access: &Access,
    env: Option<&EnvId>,
    resource: &str,
    context: &Context,
) -> Result<(), Denial> {
    if access.plane == Plane::Public {
        return Ok(());
    }
    let request = AccessRequest { action: access.action, resource, context };
    match principal {
        Principal::Admin => Ok(()),
        Principal::SubAccount { policies, .. } => {
            if policy::evaluate_all(policies, &request).is_allowed() {
                Ok(())
            } else {
                Err(Denial::Policy)
            }
        }
        Principal::EnvKey { env: own, role, .. } => {
            if env != Some(own) {
                return Err(Denial::WrongEnv);
            }
            let allowed = match (access.env_keys, role) {
                (EnvKeyAccess::None, _) => false,
                (EnvKeyAccess::Secret | EnvKeyAccess::SecretOrMinted, EnvRole::Service) => true,
                (EnvKeyAccess::Secret | EnvKeyAccess::SecretOrMinted, EnvRole::Anon) => false,
                (EnvKeyAccess::Any, _) => true,
            };
            if allowed { Ok(()) } else { Err(Denial::CredentialKind) }
        }
        Principal::Minted { env: own, policy, .. } => {
            if env != Some(own) {
                return Err(Denial::WrongEnv);
            }
            // The hands never reach the control plane, whatever their token says.
            if access.plane != Plane::Data
                || access.env_keys == EnvKeyAccess::None
                || access.env_keys == EnvKeyAccess::Secret
            {
                return Err(Denial::CredentialKind);
            }
            if policy.evaluate(&request).is_allowed() { Ok(()) } else { Err(Denial::Policy) }
        }
    }
}

/// The policy of a minted token: `actions` (CAM patterns; empty = every action) on its env only.
pub fn minted_policy(env: &EnvId, actions: &[String]) -> Result<Policy, policy::PolicyError> {
    let actions: Vec<&str> = if actions.is_empty() { vec!["*"] } else { actions.iter().map(String::as_str).collect() };
    Policy::parse(&serde_json::json!({
        "version": "2.0",
        "statement": [{
            "effect": "allow",
            "action": actions,
            "resource": [policy::env_resource(env), format!("{}/*", policy::env_resource(env))],
        }]
    }))
}
