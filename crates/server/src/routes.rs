//! The route table: every route the server answers, with the access rule the gate enforces before any
//! handler runs. The router, the OpenAPI document and the cross-tenant test matrix are all generated from
//! this one table, so a new route cannot skip authorization, documentation or the matrix.

use axum::routing::{MethodRouter, any, delete, get, head, patch, post, put};
use tenancy::{Access, EnvKeyAccess, Plane};

use crate::surface::Surface;
use crate::{AppState, apps_api, auth_api, domains_api, functions_api, handlers, sandboxes, sessions, sites};

/// How the gate scopes a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// No credential.
    Public,
    /// The path names an env (`{env}`); the CAM resource is `vrn:vibebase:env/<env>`.
    Env,
    /// Platform-wide; the CAM resource is `vrn:vibebase:platform`. Env-bound keys never pass.
    Platform,
    /// Platform-wide, but decided per env by the handler (list filters, create checks the new id) with
    /// the same [`tenancy::authorize`]; env-bound keys never pass.
    PerEnv,
}

/// One route of the table.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// HTTP method, or `ANY` for a surface's catch-all.
    pub method: &'static str,
    /// axum path template.
    pub path: &'static str,
    pub access: Access,
    pub scope: Scope,
    pub surface: Surface,
    pub summary: &'static str,
    /// Schema name of the JSON request body.
    pub request: Option<&'static str>,
    /// Success status and schema name of its JSON body (`None` = no body or not JSON).
    pub response: (u16, Option<&'static str>),
    /// Query parameters: (name, type, description).
    pub query: &'static [(&'static str, QueryType, &'static str)],
    /// False while the surface is routed and guarded but its protocol is not built yet (501).
    pub built: bool,
}

const fn access(action: &'static str, plane: Plane, env_keys: EnvKeyAccess) -> Access {
    Access { action, plane, env_keys }
}

/// The type of a query parameter, for the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    String,
    /// An integer in an inclusive range.
    Integer(i64, i64),
    /// An RFC 3339 time.
    DateTime,
    /// One of these strings.
    OneOf(&'static [&'static str]),
}

const PUBLIC: Access = access("public:Get", Plane::Public, EnvKeyAccess::Any);
/// Largest page a listing returns.
pub const MAX_PAGE: i64 = 1000;
const PAGE_QUERY: &[(&str, QueryType, &str)] = &[
    ("cursor", QueryType::String, "Continue after this cursor."),
    ("limit", QueryType::Integer(1, MAX_PAGE), "Page size."),
];
const AUDIT_QUERY: &[(&str, QueryType, &str)] = &[
    ("cursor", QueryType::Integer(i64::MIN, i64::MAX), "Continue below this sequence number."),
    ("limit", QueryType::Integer(1, MAX_PAGE), "Page size."),
];
const PLATFORM_AUDIT_QUERY: &[(&str, QueryType, &str)] = &[
    ("env", QueryType::String, "Only this env id (live or deleted)."),
    ("cursor", QueryType::Integer(i64::MIN, i64::MAX), "Continue below this sequence number."),
    ("limit", QueryType::Integer(1, MAX_PAGE), "Page size."),
];
const USAGE_QUERY: &[(&str, QueryType, &str)] = &[
    ("from", QueryType::DateTime, "Start (default: 30 days ago)."),
    ("to", QueryType::DateTime, "End (default: now)."),
    ("granularity", QueryType::OneOf(&["total", "minute"]), "Totals (default) or minute buckets."),
    ("format", QueryType::OneOf(&["json", "csv"]), "Response format (default JSON)."),
];

struct R {
    spec: RouteSpec,
    handler: MethodRouter<AppState>,
}

impl R {
    fn query(mut self, query: &'static [(&'static str, QueryType, &'static str)]) -> Self {
        self.spec.query = query;
        self
    }
}

#[allow(clippy::too_many_arguments)]
fn r(
    method: &'static str,
    path: &'static str,
    access: Access,
    scope: Scope,
    summary: &'static str,
    request: Option<&'static str>,
    response: (u16, Option<&'static str>),
    handler: MethodRouter<AppState>,
) -> R {
    R {
        spec: RouteSpec {
            method,
            path,
            access,
            scope,
            surface: Surface::Platform,
            summary,
            request,
            response,
            query: &[],
            built: true,
        },
        handler,
    }
}

fn control(action: &'static str, env_keys: EnvKeyAccess) -> Access {
    access(action, Plane::Control, env_keys)
}

/// A data-plane surface whose protocol a later capability implements: routed and guarded now.
fn surface(
    path: &'static str,
    surface: Surface,
    action: &'static str,
    env_keys: EnvKeyAccess,
    summary: &'static str,
) -> R {
    let plane = if matches!(surface, Surface::Hosting) { Plane::Public } else { Plane::Data };
    let scope = if plane == Plane::Public { Scope::Public } else { Scope::Env };
    R {
        spec: RouteSpec {
            method: "ANY",
            path,
            access: access(action, plane, env_keys),
            scope,
            surface,
            summary,
            request: None,
            response: (501, None),
            query: &[],
            built: false,
        },
        handler: any(handlers::surface_not_built),
    }
}

/// A surface whose protocol is built: same access rule, real handler.
fn built(mut r: R, handler: MethodRouter<AppState>) -> R {
    r.spec.built = true;
    r.spec.response = (200, None);
    r.handler = handler;
    r
}

/// A GoTrue route under `/env/{env}/auth/v1`: data plane, GoTrue's error shape.
fn auth_route(
    method: &'static str,
    path: &'static str,
    env_keys: EnvKeyAccess,
    summary: &'static str,
    response: u16,
    handler: MethodRouter<AppState>,
) -> R {
    let action = if env_keys == EnvKeyAccess::Any { "auth:Request" } else { "auth:Admin" };
    R {
        spec: RouteSpec {
            method,
            path,
            access: access(action, Plane::Data, env_keys),
            scope: Scope::Env,
            surface: Surface::Auth,
            summary,
            request: None,
            response: (response, None),
            query: &[],
            built: true,
        },
        handler,
    }
}

/// A GoTrue route anyone may call (no key): what a browser opens from a mail link, and the JWKS.
fn auth_public(path: &'static str, summary: &'static str, handler: MethodRouter<AppState>, response: u16) -> R {
    R {
        spec: RouteSpec {
            method: "GET",
            path,
            access: PUBLIC,
            scope: Scope::Public,
            surface: Surface::Auth,
            summary,
            request: None,
            response: (response, None),
            query: &[],
            built: true,
        },
        handler,
    }
}

/// A Storage route behind a key of the env (the catch-all's rule) at a path that also has public methods.
fn storage_keyed(method: &'static str, path: &'static str, summary: &'static str) -> R {
    let handler = match method {
        "POST" => post(crate::storage_api::dispatch),
        "PUT" => put(crate::storage_api::dispatch),
        _ => delete(crate::storage_api::dispatch),
    };
    R {
        spec: RouteSpec {
            method,
            built: true,
            response: (200, None),
            ..surface(path, Surface::Storage, "storage:Request", EnvKeyAccess::Any, summary).spec
        },
        handler,
    }
}

/// A TUS resumable-upload route: behind a key of the env, like a plain upload.
fn storage_tus(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    response: u16,
    handler: MethodRouter<AppState>,
) -> R {
    R {
        spec: RouteSpec {
            method,
            built: true,
            response: (response, None),
            ..surface(path, Surface::Storage, "storage:Request", EnvKeyAccess::Any, summary).spec
        },
        handler,
    }
}

/// A Storage route anyone may call: public objects, and signed URLs whose token is the credential.
fn storage_public(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    handler: MethodRouter<AppState>,
) -> R {
    R {
        spec: RouteSpec {
            method,
            path,
            access: PUBLIC,
            scope: Scope::Public,
            surface: Surface::Storage,
            summary,
            request: None,
            response: (200, None),
            query: &[],
            built: true,
        },
        handler,
    }
}

const REDIRECT_QUERY: &[(&str, QueryType, &str)] =
    &[("redirect_to", QueryType::String, "Where links in the mail send the browser.")];
const TOKEN_QUERY: &[(&str, QueryType, &str)] =
    &[("grant_type", QueryType::OneOf(&["password", "refresh_token", "pkce"]), "The grant.")];
const LOGOUT_QUERY: &[(&str, QueryType, &str)] =
    &[("scope", QueryType::OneOf(&["global", "local", "others"]), "Which sessions end (default global).")];
const ADMIN_USERS_QUERY: &[(&str, QueryType, &str)] = &[
    ("page", QueryType::Integer(1, 1_000_000), "Page number (from 1)."),
    ("per_page", QueryType::Integer(1, 1000), "Users per page."),
];
const VERIFY_QUERY: &[(&str, QueryType, &str)] = &[
    ("token", QueryType::String, "The token hash from the mail link."),
    (
        "type",
        QueryType::String,
        "signup, email, recovery, invite, magiclink or email_change (others redirect with an error).",
    ),
    ("redirect_to", QueryType::String, "Where to send the browser afterwards."),
];
const OUTBOX_QUERY: &[(&str, QueryType, &str)] = &[("limit", QueryType::Integer(1, MAX_PAGE), "At most this many.")];

fn auth_routes() -> Vec<R> {
    use EnvKeyAccess::{Any, Secret};
    vec![
        auth_route("GET", "/env/{env}/auth/v1/health", Any, "GoTrue: health.", 200, get(auth_api::health)),
        auth_route("GET", "/env/{env}/auth/v1/settings", Any, "GoTrue: public settings.", 200, get(auth_api::settings)),
        auth_public(
            "/env/{env}/auth/v1/.well-known/jwks.json",
            "GoTrue: the env's public signing keys.",
            get(auth_api::jwks),
            200,
        ),
        auth_route(
            "POST",
            "/env/{env}/auth/v1/signup",
            Any,
            "GoTrue: sign up (email or anonymous).",
            200,
            post(auth_api::signup),
        )
        .query(REDIRECT_QUERY),
        auth_route(
            "POST",
            "/env/{env}/auth/v1/token",
            Any,
            "GoTrue: password or refresh-token grant.",
            200,
            post(auth_api::token),
        )
        .query(TOKEN_QUERY),
        auth_route("GET", "/env/{env}/auth/v1/user", Any, "GoTrue: the signed-in user.", 200, get(auth_api::get_user)),
        auth_route(
            "PUT",
            "/env/{env}/auth/v1/user",
            Any,
            "GoTrue: update the signed-in user.",
            200,
            put(auth_api::update_user),
        ),
        auth_route("POST", "/env/{env}/auth/v1/logout", Any, "GoTrue: sign out.", 204, post(auth_api::logout))
            .query(LOGOUT_QUERY),
        auth_route(
            "POST",
            "/env/{env}/auth/v1/recover",
            Any,
            "GoTrue: send a recovery mail.",
            200,
            post(auth_api::recover),
        )
        .query(REDIRECT_QUERY),
        auth_route(
            "POST",
            "/env/{env}/auth/v1/resend",
            Any,
            "GoTrue: resend a sign-up confirmation.",
            200,
            post(auth_api::resend),
        )
        .query(REDIRECT_QUERY),
        auth_route(
            "POST",
            "/env/{env}/auth/v1/verify",
            Any,
            "GoTrue: verify a mailed token or code.",
            200,
            post(auth_api::verify_post),
        ),
        auth_public(
            "/env/{env}/auth/v1/verify",
            "GoTrue: mail link; verifies and redirects.",
            get(auth_api::verify_get),
            303,
        )
        .query(VERIFY_QUERY),
        auth_route(
            "GET",
            "/env/{env}/auth/v1/admin/users",
            Secret,
            "GoTrue admin: list users.",
            200,
            get(auth_api::admin_list_users),
        )
        .query(ADMIN_USERS_QUERY),
        auth_route(
            "POST",
            "/env/{env}/auth/v1/admin/users",
            Secret,
            "GoTrue admin: create a user.",
            200,
            post(auth_api::admin_create_user),
        ),
        auth_route(
            "GET",
            "/env/{env}/auth/v1/admin/users/{user}",
            Secret,
            "GoTrue admin: get a user.",
            200,
            get(auth_api::admin_get_user),
        ),
        auth_route(
            "PUT",
            "/env/{env}/auth/v1/admin/users/{user}",
            Secret,
            "GoTrue admin: update a user.",
            200,
            put(auth_api::admin_update_user),
        ),
        auth_route(
            "DELETE",
            "/env/{env}/auth/v1/admin/users/{user}",
            Secret,
            "GoTrue admin: delete a user.",
            200,
            delete(auth_api::admin_delete_user),
        ),
        auth_route(
            "ANY",
            "/env/{env}/auth/v1/{*rest}",
            Any,
            "GoTrue: unknown endpoints.",
            404,
            any(auth_api::not_found),
        ),
        r(
            "GET",
            "/v1/envs/{env}/auth/settings",
            control("auth:GetSettings", Secret),
            Scope::Env,
            "The env's end-user auth settings.",
            None,
            (200, Some("AuthSettings")),
            get(auth_api::get_auth_settings),
        ),
        r(
            "PUT",
            "/v1/envs/{env}/auth/settings",
            control("auth:SetSettings", Secret),
            Scope::Env,
            "Change the env's end-user auth settings (fields left out keep their value).",
            Some("AuthSettingsPatch"),
            (200, Some("AuthSettings")),
            put(auth_api::put_auth_settings),
        ),
        r(
            "GET",
            "/v1/envs/{env}/auth/outbox",
            control("auth:ReadOutbox", Secret),
            Scope::Env,
            "Mails the env's auth service kept because no SMTP server is configured, newest first.",
            None,
            (200, Some("OutboxList")),
            get(auth_api::outbox),
        )
        .query(OUTBOX_QUERY),
    ]
}

fn table() -> Vec<R> {
    use EnvKeyAccess::{Any, None as Platform, Secret, SecretOrMinted};
    use Scope::{Env, PerEnv, Platform as Plat, Public};
    let mut routes = vec![
        r(
            "GET",
            "/healthz",
            PUBLIC,
            Public,
            "Liveness and version.",
            None,
            (200, Some("Health")),
            get(handlers::healthz),
        ),
        r("GET", "/metrics", PUBLIC, Public, "Prometheus metrics.", None, (200, None), get(handlers::metrics)),
        r("GET", "/openapi.json", PUBLIC, Public, "This document.", None, (200, None), get(handlers::openapi)),
        r(
            "POST",
            "/v1/envs",
            control("env:Create", Platform),
            PerEnv,
            "Create an environment.",
            Some("CreateEnvRequest"),
            (201, Some("EnvRecord")),
            post(handlers::create_env),
        ),
        r(
            "GET",
            "/v1/envs",
            control("env:List", Platform),
            PerEnv,
            "List environments.",
            None,
            (200, Some("EnvPage")),
            get(handlers::list_envs),
        )
        .query(PAGE_QUERY),
        r(
            "GET",
            "/v1/envs/{env}",
            control("env:Get", Secret),
            Env,
            "Get an environment.",
            None,
            (200, Some("EnvRecord")),
            get(handlers::get_env),
        ),
        r(
            "DELETE",
            "/v1/envs/{env}",
            control("env:Delete", Platform),
            Env,
            "Delete an environment and everything it owns.",
            None,
            (204, None),
            delete(handlers::delete_env),
        ),
        r(
            "POST",
            "/v1/envs/{env}/suspend",
            control("env:Suspend", Platform),
            Env,
            "Suspend an environment.",
            None,
            (200, Some("EnvRecord")),
            post(handlers::suspend_env),
        ),
        r(
            "POST",
            "/v1/envs/{env}/resume",
            control("env:Resume", Platform),
            Env,
            "Resume a suspended environment.",
            None,
            (200, Some("EnvRecord")),
            post(handlers::resume_env),
        ),
        r(
            "GET",
            "/v1/envs/{env}/keys",
            control("keys:List", Secret),
            Env,
            "List the env's keys and tokens (metadata only).",
            None,
            (200, Some("KeyList")),
            get(handlers::list_keys),
        ),
        r(
            "POST",
            "/v1/envs/{env}/keys/rotate",
            control("keys:Rotate", Secret),
            Env,
            "Rotate the secret or publishable key with an overlap window.",
            Some("RotateKeyRequest"),
            (200, Some("RotatedKey")),
            post(handlers::rotate_key),
        ),
        r(
            "POST",
            "/v1/envs/{env}/keys/{key}/revoke",
            control("keys:Revoke", Secret),
            Env,
            "Revoke a key or minted token now.",
            None,
            (200, Some("KeyRecord")),
            post(handlers::revoke_key),
        ),
        r(
            "POST",
            "/v1/envs/{env}/tokens",
            control("tokens:Mint", Secret),
            Env,
            "Mint a short-lived token for a sandbox or function.",
            Some("MintTokenRequest"),
            (201, Some("MintedToken")),
            post(handlers::mint_token),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sql",
            control("db:Migrate", Secret),
            Env,
            "Apply a migration (PostgreSQL dialect) to the env's database in one transaction.",
            Some("SqlRequest"),
            (200, Some("SqlResult")),
            // A migration of the largest allowed length may be several times longer once JSON-escaped:
            // the handler, not the body limit, answers `sql_too_long`.
            post(crate::data::sql).layer(axum::extract::DefaultBodyLimit::max(8 * 1024 * 1024)),
        ),
        r(
            "GET",
            "/v1/envs/{env}/audit",
            control("audit:Read", Secret),
            Env,
            "The env's audit log, newest first.",
            None,
            (200, Some("AuditPage")),
            get(handlers::audit_log),
        )
        .query(AUDIT_QUERY),
        r(
            "GET",
            "/v1/envs/{env}/usage",
            control("usage:Read", Secret),
            Env,
            "The env's usage (JSON or CSV).",
            None,
            (200, Some("UsageReport")),
            get(handlers::env_usage),
        )
        .query(USAGE_QUERY),
        r(
            "POST",
            "/v1/envs/{env}/usage/events",
            control("usage:Record", Platform),
            Env,
            "Record a usage event (idempotent).",
            Some("UsageEventInput"),
            (200, Some("UsageEventAccepted")),
            post(handlers::record_usage),
        ),
        r(
            "GET",
            "/v1/envs/{env}/limits",
            control("limits:Get", Secret),
            Env,
            "The env's quotas and rate limit.",
            None,
            (200, Some("EnvLimits")),
            get(handlers::get_limits),
        ),
        r(
            "PUT",
            "/v1/envs/{env}/limits",
            control("limits:Set", Platform),
            Env,
            "Set the env's quotas and rate limit.",
            Some("EnvLimits"),
            (200, Some("EnvLimits")),
            put(handlers::set_limits),
        ),
        r(
            "GET",
            "/v1/envs/{env}/alerts",
            control("usage:Read", Secret),
            Env,
            "Soft-limit alerts of the env.",
            None,
            (200, Some("AlertList")),
            get(handlers::alerts),
        ),
        r(
            "GET",
            "/v1/usage",
            control("usage:ReadPlatform", Platform),
            Plat,
            "Usage of every env (JSON or CSV).",
            None,
            (200, Some("UsageReport")),
            get(handlers::platform_usage),
        )
        .query(USAGE_QUERY),
        r(
            "GET",
            "/v1/audit",
            control("audit:Read", Platform),
            PerEnv,
            "The platform-wide audit log (also of deleted envs), newest first.",
            None,
            (200, Some("AuditPage")),
            get(handlers::platform_audit_log),
        )
        .query(PLATFORM_AUDIT_QUERY),
        r(
            "GET",
            "/v1/meters",
            control("meters:List", Platform),
            Plat,
            "The meter catalogue.",
            None,
            (200, Some("MeterList")),
            get(handlers::meters),
        ),
        r(
            "POST",
            "/v1/principals",
            control("principals:Create", Platform),
            Plat,
            "Create a sub-account with a CAM policy.",
            Some("CreatePrincipalRequest"),
            (201, Some("PrincipalRecord")),
            post(handlers::create_principal),
        ),
        r(
            "GET",
            "/v1/principals",
            control("principals:List", Platform),
            Plat,
            "List sub-accounts.",
            None,
            (200, Some("PrincipalList")),
            get(handlers::list_principals),
        ),
        r(
            "GET",
            "/v1/principals/{principal}",
            control("principals:Get", Platform),
            Plat,
            "Get a sub-account.",
            None,
            (200, Some("PrincipalRecord")),
            get(handlers::get_principal),
        ),
        r(
            "PUT",
            "/v1/principals/{principal}/policy",
            control("principals:SetPolicy", Platform),
            Plat,
            "Replace a sub-account's policy.",
            Some("SetPolicyRequest"),
            (200, Some("PrincipalRecord")),
            put(handlers::set_policy),
        ),
        r(
            "DELETE",
            "/v1/principals/{principal}",
            control("principals:Delete", Platform),
            Plat,
            "Delete a sub-account and its key.",
            None,
            (204, None),
            delete(handlers::delete_principal),
        ),
        r(
            "POST",
            "/v1/policies/owner",
            control("policies:Render", Platform),
            Plat,
            "The standard owner-of-environment policy.",
            Some("OwnerPolicyRequest"),
            (200, None),
            post(handlers::owner_policy),
        ),
        r(
            "POST",
            "/v1/webhooks",
            control("webhooks:Create", Platform),
            Plat,
            "Subscribe to platform events.",
            Some("CreateWebhookRequest"),
            (201, Some("WebhookRecord")),
            post(handlers::create_webhook),
        ),
        r(
            "GET",
            "/v1/webhooks",
            control("webhooks:List", Platform),
            Plat,
            "List webhooks.",
            None,
            (200, Some("WebhookList")),
            get(handlers::list_webhooks),
        ),
        r(
            "DELETE",
            "/v1/webhooks/{webhook}",
            control("webhooks:Delete", Platform),
            Plat,
            "Delete a webhook.",
            None,
            (204, None),
            delete(handlers::delete_webhook),
        ),
        r(
            "GET",
            "/v1/webhooks/{webhook}/deliveries",
            control("webhooks:List", Platform),
            Plat,
            "The delivery log of a webhook.",
            None,
            (200, Some("DeliveryList")),
            get(handlers::webhook_deliveries),
        ),
    ];
    routes.extend(sandbox_routes());
    routes.extend(session_routes());
    routes.extend(function_routes());
    routes.extend(app_routes());
    routes.extend(auth_routes());
    routes.extend(deployment_routes());
    routes.extend(domain_routes());
    routes.extend([
        R {
            spec: RouteSpec {
                built: true,
                response: (200, None),
                ..surface("/env/{env}/rest/v1/{*rest}", Surface::Rest, "db:Request", Any, "PostgREST data API.").spec
            },
            handler: any(crate::data::rest),
        },
        built(
            surface("/env/{env}/storage/v1/{*rest}", Surface::Storage, "storage:Request", Any, "Supabase Storage API."),
            any(crate::storage_api::dispatch),
        ),
        storage_public(
            "GET",
            "/env/{env}/storage/v1/object/public/{*rest}",
            "An object of a public bucket (also HEAD).",
            get(crate::storage_api::public_object),
        ),
        // A bucket may be named `public`: writes under that path are ordinary keyed storage calls.
        storage_keyed("POST", "/env/{env}/storage/v1/object/public/{*rest}", "Upload into the bucket named public."),
        storage_keyed("PUT", "/env/{env}/storage/v1/object/public/{*rest}", "Replace in the bucket named public."),
        storage_keyed("DELETE", "/env/{env}/storage/v1/object/public/{*rest}", "Delete from the bucket named public."),
        storage_public(
            "GET",
            "/env/{env}/storage/v1/object/sign/{*rest}",
            "Download with a signed URL (its token is the credential).",
            get(crate::storage_api::signed_download),
        ),
        storage_keyed("POST", "/env/{env}/storage/v1/object/sign/{*rest}", "Create signed download URLs."),
        storage_public(
            "PUT",
            "/env/{env}/storage/v1/object/upload/sign/{*rest}",
            "Upload with a signed upload URL (its token is the credential).",
            put(crate::storage_api::signed_upload),
        ),
        storage_keyed("POST", "/env/{env}/storage/v1/object/upload/sign/{*rest}", "Create a signed upload URL."),
        // TUS resumable uploads (tus-js-client). OPTIONS is answered by the CORS layer, with TUS's
        // capability headers added at the edge (`gate::edge`).
        storage_tus(
            "POST",
            "/env/{env}/storage/v1/upload/resumable",
            "TUS: create a resumable upload (Upload-Length, Upload-Metadata bucketName/objectName).",
            201,
            post(crate::storage_tus::create),
        ),
        storage_tus(
            "HEAD",
            "/env/{env}/storage/v1/upload/resumable/{id}",
            "TUS: the offset of a resumable upload.",
            200,
            head(crate::storage_tus::head),
        ),
        storage_tus(
            "PATCH",
            "/env/{env}/storage/v1/upload/resumable/{id}",
            "TUS: append a chunk at Upload-Offset (the last one writes the object).",
            204,
            patch(crate::storage_tus::patch),
        ),
        storage_tus(
            "DELETE",
            "/env/{env}/storage/v1/upload/resumable/{id}",
            "TUS: terminate a resumable upload.",
            204,
            delete(crate::storage_tus::terminate),
        ),
        // The signed variant: a signed upload URL's token in `x-signature` is the credential.
        storage_public(
            "POST",
            "/env/{env}/storage/v1/upload/resumable/sign",
            "TUS: create a resumable upload with a signed upload URL's token (x-signature).",
            post(crate::storage_tus::create_signed),
        ),
        storage_public(
            "HEAD",
            "/env/{env}/storage/v1/upload/resumable/sign/{id}",
            "TUS: the offset of a signed resumable upload.",
            head(crate::storage_tus::head_signed),
        ),
        storage_public(
            "PATCH",
            "/env/{env}/storage/v1/upload/resumable/sign/{id}",
            "TUS: append a chunk to a signed resumable upload.",
            patch(crate::storage_tus::patch_signed),
        ),
        storage_public(
            "DELETE",
            "/env/{env}/storage/v1/upload/resumable/sign/{id}",
            "TUS: terminate a signed resumable upload.",
            delete(crate::storage_tus::terminate_signed),
        ),
        built(
            surface(
                "/env/{env}/functions/v1/{*rest}",
                Surface::Functions,
                "functions:Invoke",
                Any,
                "Invoke a cloud function (supabase-js functions.invoke).",
            ),
            any(functions_api::invoke).layer(axum::extract::DefaultBodyLimit::max(functions_api::MAX_INVOKE_BODY)),
        ),
        // The model gateway: one catch-all, dispatched inside (`gateway::http`); ANY routes stay out of
        // the OpenAPI document, which describes `/v1`.
        built(
            surface(
                "/env/{env}/llm/v1/{*rest}",
                Surface::Llm,
                "llm:Request",
                SecretOrMinted,
                "Model gateway (OpenAI and Anthropic APIs).",
            ),
            any(handlers::llm),
        ),
        built(
            surface("/env/{env}/e2b/{*rest}", Surface::E2b, "sandboxes:Request", SecretOrMinted, "E2B control plane."),
            any(crate::e2b::control),
        ),
        built(
            surface(
                "/env/{env}/e2b/envd/{*rest}",
                Surface::E2b,
                sandbox::manager::ENVD_ACTION,
                SecretOrMinted,
                "E2B envd (Connect RPC) of the sandbox named by E2b-Sandbox-Id.",
            ),
            any(crate::e2b::envd),
        ),
        built(
            surface("/env/{env}/mcp", Surface::Mcp, "mcp:Request", Secret, "MCP (streamable HTTP): the env's tools."),
            any(crate::mcp::handle),
        ),
        R {
            spec: RouteSpec {
                method: "POST",
                built: true,
                response: (200, None),
                ..surface(
                    "/v1/envs/{env}/agent",
                    Surface::Platform,
                    "agent:Run",
                    Secret,
                    "AG-UI entry point: RunAgentInput in (threadId = session), the run's AG-UI events out (SSE).",
                )
                .spec
            },
            handler: post(sessions::ag_ui),
        },
        built(
            surface("/env/{env}/site/{*rest}", Surface::Hosting, "site:Get", Any, "The published site."),
            any(sites::site),
        ),
        built(
            surface(
                "/env/{env}/deployments/{deployment}/{*rest}",
                Surface::Hosting,
                "site:Get",
                Any,
                "A deployment preview.",
            ),
            any(sites::preview),
        ),
        built(
            surface("/env/{env}/apps/{app}/{*rest}", Surface::Hosting, "site:Get", Any, "A container app."),
            any(apps_api::serve),
        ),
        built(
            surface(
                "/env/{env}/sandboxes/{sandbox}/ports/{port}/{*rest}",
                Surface::Hosting,
                "site:Get",
                Any,
                "A sandbox port preview.",
            ),
            any(crate::preview::preview),
        ),
    ]);
    routes
}

const PUBLISH_QUERY: &[(&str, QueryType, &str)] =
    &[("publish", QueryType::OneOf(&["true", "false"]), "Publish as soon as the deployment is complete.")];
const DEPLOYMENT_LIST_QUERY: &[(&str, QueryType, &str)] =
    &[("limit", QueryType::Integer(1, MAX_PAGE), "At most this many, newest first.")];

/// Static site deployments of an env: content-addressed uploads, finalize, publish and roll back.
fn deployment_routes() -> Vec<R> {
    use EnvKeyAccess::Secret;
    use Scope::Env;
    const D: &str = "/v1/envs/{env}/deployments/{deployment}";
    vec![
        r(
            "POST",
            "/v1/envs/{env}/deployments",
            control("site:Deploy", Secret),
            Env,
            "Start a deployment from a manifest (path → SHA-256); answers the hashes to upload.",
            Some("CreateDeploymentRequest"),
            (201, Some("CreatedDeployment")),
            post(sites::create),
        ),
        r(
            "GET",
            "/v1/envs/{env}/deployments",
            control("site:List", Secret),
            Env,
            "The env's deployments, newest first.",
            None,
            (200, Some("DeploymentList")),
            get(sites::list),
        )
        .query(DEPLOYMENT_LIST_QUERY),
        r(
            "POST",
            "/v1/envs/{env}/deployments/archive",
            control("site:Deploy", Secret),
            Env,
            "Deploy a tar.gz archive (the raw body) in one call.",
            None,
            (201, Some("DeploymentRecord")),
            post(sites::archive).layer(axum::extract::DefaultBodyLimit::max(sites::MAX_ARCHIVE_BYTES)),
        )
        .query(PUBLISH_QUERY),
        r(
            "GET",
            D,
            control("site:List", Secret),
            Env,
            "Get a deployment.",
            None,
            (200, Some("DeploymentRecord")),
            get(sites::get),
        ),
        r(
            "PUT",
            "/v1/envs/{env}/deployments/{deployment}/files/{sha256}",
            control("site:Deploy", Secret),
            Env,
            "Upload one file of a pending deployment (the raw body; its SHA-256 must match).",
            None,
            (204, None),
            put(sites::upload).layer(axum::extract::DefaultBodyLimit::max(sites::MAX_FILE_BYTES)),
        ),
        r(
            "POST",
            "/v1/envs/{env}/deployments/{deployment}/finalize",
            control("site:Deploy", Secret),
            Env,
            "Complete a deployment once every file is uploaded; it is immutable from then on.",
            None,
            (200, Some("DeploymentRecord")),
            post(sites::finalize),
        )
        .query(PUBLISH_QUERY),
        r(
            "POST",
            "/v1/envs/{env}/deployments/{deployment}/publish",
            control("site:Publish", Secret),
            Env,
            "Serve this deployment as the env's site (moves the alias atomically).",
            None,
            (200, Some("DeploymentRecord")),
            post(sites::publish),
        ),
        r(
            "POST",
            "/v1/envs/{env}/deployments/{deployment}/rollback",
            control("site:Publish", Secret),
            Env,
            "Serve an earlier deployment again (no upload; fires deployment.rolled_back).",
            None,
            (200, Some("DeploymentRecord")),
            post(sites::rollback),
        ),
    ]
}

/// Custom domains of an env: attach, prove ownership (DNS TXT), detach; and the ACME HTTP-01 answers
/// the TLS listener's certificate orders need.
fn domain_routes() -> Vec<R> {
    use EnvKeyAccess::Secret;
    use Scope::Env;
    const D: &str = "/v1/envs/{env}/domains/{domain}";
    vec![
        r(
            "POST",
            "/v1/envs/{env}/domains",
            control("domains:Add", Secret),
            Env,
            "Attach a custom domain (pending until verified); answers the TXT record that proves ownership.",
            Some("AddDomainRequest"),
            (201, Some("DomainRecord")),
            post(domains_api::add),
        ),
        r(
            "GET",
            "/v1/envs/{env}/domains",
            control("domains:List", Secret),
            Env,
            "The env's custom domains.",
            None,
            (200, Some("DomainList")),
            get(domains_api::list),
        ),
        r(
            "GET",
            D,
            control("domains:List", Secret),
            Env,
            "Get a custom domain.",
            None,
            (200, Some("DomainRecord")),
            get(domains_api::get),
        ),
        r(
            "POST",
            "/v1/envs/{env}/domains/{domain}/verify",
            control("domains:Verify", Secret),
            Env,
            "Look for the TXT record; once it holds the token the domain is served.",
            None,
            (200, Some("DomainRecord")),
            post(domains_api::verify),
        ),
        r(
            "DELETE",
            D,
            control("domains:Delete", Secret),
            Env,
            "Detach a custom domain; it stops being served at once.",
            None,
            (204, None),
            delete(domains_api::delete),
        ),
        r(
            "GET",
            "/.well-known/acme-challenge/{token}",
            PUBLIC,
            Scope::Public,
            "ACME HTTP-01 key authorization of a certificate order in progress.",
            None,
            (200, None),
            get(crate::tls::http01),
        ),
    ]
}

/// The container apps API: definitions, sources, status, restarts and logs of an env's apps.
fn app_routes() -> Vec<R> {
    use EnvKeyAccess::Secret;
    use Scope::Env;
    const A: &str = "/v1/envs/{env}/apps/{app}";
    vec![
        r(
            "GET",
            "/v1/envs/{env}/apps",
            control("apps:List", Secret),
            Env,
            "List the env's container apps with their status.",
            None,
            (200, Some("AppList")),
            get(apps_api::list),
        ),
        r(
            "PUT",
            A,
            control("apps:Put", Secret),
            Env,
            "Create a container app or replace its definition (a running instance stops; the next request starts the new one).",
            Some("PutAppRequest"),
            (200, Some("AppRecord")),
            put(apps_api::put),
        ),
        r(
            "GET",
            A,
            control("apps:Get", Secret),
            Env,
            "Get a container app: definition, source, status and restarts.",
            None,
            (200, Some("AppRecord")),
            get(apps_api::get),
        ),
        r(
            "DELETE",
            A,
            control("apps:Delete", Secret),
            Env,
            "Delete a container app: its instance, definition and source.",
            None,
            (204, None),
            delete(apps_api::delete),
        ),
        r(
            "PUT",
            "/v1/envs/{env}/apps/{app}/archive",
            control("apps:Deploy", Secret),
            Env,
            "Upload the app's source (the raw body is a tar.gz archive; npm dependencies are installed).",
            None,
            (200, Some("AppRecord")),
            put(apps_api::upload).layer(axum::extract::DefaultBodyLimit::max(apps_api::MAX_ARCHIVE_BYTES)),
        ),
        r(
            "POST",
            "/v1/envs/{env}/apps/{app}/from-sandbox",
            control("apps:Deploy", Secret),
            Env,
            "Take the app's source from a directory of a running sandbox of the env (archived inside it).",
            Some("AppFromSandboxRequest"),
            (200, Some("AppRecord")),
            post(apps_api::from_sandbox),
        ),
        r(
            "POST",
            "/v1/envs/{env}/apps/{app}/restart",
            control("apps:Restart", Secret),
            Env,
            "Stop the app's instance and start a new one.",
            None,
            (200, Some("AppRecord")),
            post(apps_api::restart),
        ),
        r(
            "GET",
            "/v1/envs/{env}/apps/{app}/logs",
            control("apps:Logs", Secret),
            Env,
            "The last lines of the app's stdout and stderr and of its supervisor (starts, exits, restarts).",
            None,
            (200, Some("AppLogList")),
            get(apps_api::logs),
        )
        .query(apps_api::LOG_QUERY),
    ]
}

/// The functions API: deploy, versions, rollback, secrets, schedules and logs of an env's functions.
fn function_routes() -> Vec<R> {
    use EnvKeyAccess::Secret;
    use Scope::Env;
    let archive_limit = axum::extract::DefaultBodyLimit::max(functions_api::MAX_ARCHIVE_BYTES);
    vec![
        r(
            "POST",
            "/v1/envs/{env}/functions/{name}/deploy",
            control("functions:Deploy", Secret),
            Env,
            "Deploy a new version of a function (the raw body is a tar.gz archive) and serve it.",
            None,
            (201, Some("FunctionVersion")),
            post(functions_api::deploy).layer(archive_limit),
        )
        .query(functions_api::DEPLOY_QUERY),
        r(
            "GET",
            "/v1/envs/{env}/functions",
            control("functions:List", Secret),
            Env,
            "List the env's functions.",
            None,
            (200, Some("FunctionList")),
            get(functions_api::list),
        ),
        r(
            "GET",
            "/v1/envs/{env}/functions/{name}",
            control("functions:Get", Secret),
            Env,
            "Get a function and the version it serves.",
            None,
            (200, Some("FunctionRecord")),
            get(functions_api::get),
        ),
        r(
            "DELETE",
            "/v1/envs/{env}/functions/{name}",
            control("functions:Delete", Secret),
            Env,
            "Delete a function with its versions, secrets and logs.",
            None,
            (204, None),
            delete(functions_api::delete),
        ),
        r(
            "GET",
            "/v1/envs/{env}/functions/{name}/versions",
            control("functions:Get", Secret),
            Env,
            "The stored versions of a function, newest first.",
            None,
            (200, Some("FunctionVersionList")),
            get(functions_api::versions),
        ),
        r(
            "POST",
            "/v1/envs/{env}/functions/{name}/rollback",
            control("functions:Rollback", Secret),
            Env,
            "Serve a stored version from now on.",
            Some("RollbackRequest"),
            (200, Some("FunctionRecord")),
            post(functions_api::rollback),
        ),
        r(
            "PUT",
            "/v1/envs/{env}/functions/{name}/secrets",
            control("functions:SetSecrets", Secret),
            Env,
            "Set or remove environment variables of a function (encrypted at rest; values are never returned).",
            Some("SetSecretsRequest"),
            (200, Some("SecretNames")),
            put(functions_api::set_secrets),
        ),
        r(
            "PUT",
            "/v1/envs/{env}/functions/{name}/schedule",
            control("functions:SetSchedule", Secret),
            Env,
            "Set or remove the cron schedule (5 fields, UTC) that invokes a function.",
            Some("SetScheduleRequest"),
            (200, Some("FunctionRecord")),
            put(functions_api::set_schedule),
        ),
        r(
            "GET",
            "/v1/envs/{env}/functions/{name}/logs",
            control("functions:Logs", Secret),
            Env,
            "Invocation logs of a function (outcome, stdout, stderr), newest first.",
            None,
            (200, Some("InvocationLogList")),
            get(functions_api::logs),
        )
        .query(functions_api::LOG_QUERY),
    ]
}

const FILE_QUERY: &[(&str, QueryType, &str)] = &[("path", QueryType::String, "Absolute, or relative to /home/user.")];
const LIST_QUERY: &[(&str, QueryType, &str)] = &[
    ("path", QueryType::String, "Absolute, or relative to /home/user."),
    ("depth", QueryType::Integer(1, 32), "Levels to descend (default 1)."),
];

const SESSION_LIST_QUERY: &[(&str, QueryType, &str)] =
    &[("limit", QueryType::Integer(1, MAX_PAGE), "At most this many, newest first (default 100).")];
const SESSION_EVENTS_QUERY: &[(&str, QueryType, &str)] = &[
    ("after", QueryType::Integer(0, i64::MAX), "Start after this sequence number (Last-Event-ID wins)."),
    ("follow", QueryType::OneOf(&["true", "false"]), "false: end at the log's current end (default: follow)."),
];

/// The session API of the agent runtime (env secret key or platform keys).
fn session_routes() -> Vec<R> {
    use EnvKeyAccess::Secret;
    use Scope::Env;
    const S: &str = "/v1/envs/{env}/sessions/{session}";
    vec![
        r(
            "POST",
            "/v1/envs/{env}/sessions",
            control("sessions:Create", Secret),
            Env,
            "Create a session.",
            Some("CreateSessionRequest"),
            (201, Some("SessionRecord")),
            post(sessions::create),
        ),
        r(
            "GET",
            "/v1/envs/{env}/sessions",
            control("sessions:List", Secret),
            Env,
            "List the env's sessions, newest first.",
            None,
            (200, Some("SessionList")),
            get(sessions::list),
        )
        .query(SESSION_LIST_QUERY),
        r(
            "GET",
            S,
            control("sessions:Get", Secret),
            Env,
            "Get a session.",
            None,
            (200, Some("SessionRecord")),
            get(sessions::get),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sessions/{session}/messages",
            control("sessions:Send", Secret),
            Env,
            "Send a user message: starts a run, which goes on without any client connected.",
            Some("SendMessageRequest"),
            (202, Some("RunStarted")),
            post(sessions::send),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sessions/{session}/interrupt",
            control("sessions:Interrupt", Secret),
            Env,
            "Ask the session's run to stop.",
            None,
            (200, Some("InterruptResult")),
            post(sessions::interrupt),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sessions/{session}/approvals",
            control("sessions:Approve", Secret),
            Env,
            "Decide on a tool call waiting for approval: allow, allow_always (this tool for the rest of the session) or deny.",
            Some("ApprovalRequest"),
            (200, Some("ApprovalRequest")),
            post(sessions::approve),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sessions/{session}/revert",
            control("sessions:Revert", Secret),
            Env,
            "Return the session's workspace and site to a checkpoint (the seq of a vibebase.checkpoint event); the schema is not reverted.",
            Some("RevertRequest"),
            (200, Some("RevertResult")),
            post(sessions::revert),
        ),
        r(
            "GET",
            "/v1/envs/{env}/sessions/{session}/events",
            control("sessions:Get", Secret),
            Env,
            "The session's AG-UI events as SSE (id = sequence number); resumes after Last-Event-ID.",
            None,
            (200, None),
            get(sessions::events),
        )
        .query(SESSION_EVENTS_QUERY),
    ]
}

/// The sandbox API: lifecycle, exec and files of an env's sandboxes (secret key or platform keys), and
/// the platform's workspace templates.
fn sandbox_routes() -> Vec<R> {
    use EnvKeyAccess::{None as PlatformOnly, Secret};
    use Scope::{Env, Platform as Plat};
    let template_body_limit = axum::extract::DefaultBodyLimit::max(sandboxes::MAX_TEMPLATE_BYTES);
    let file_body_limit = axum::extract::DefaultBodyLimit::max(sandboxes::MAX_FILE_BYTES);
    const SB: &str = "/v1/envs/{env}/sandboxes/{sandbox}";
    vec![
        r(
            "PUT",
            "/v1/templates/{template}",
            control("templates:Put", PlatformOnly),
            Plat,
            "Store or replace a workspace template (the raw body is a tar.gz archive).",
            None,
            (200, Some("TemplateList")),
            put(sandboxes::put_template).layer(template_body_limit),
        ),
        r(
            "GET",
            "/v1/templates",
            control("templates:List", PlatformOnly),
            Plat,
            "List workspace templates.",
            None,
            (200, Some("TemplateList")),
            get(sandboxes::list_templates),
        ),
        r(
            "DELETE",
            "/v1/templates/{template}",
            control("templates:Delete", PlatformOnly),
            Plat,
            "Delete a workspace template.",
            None,
            (204, None),
            delete(sandboxes::delete_template),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes",
            control("sandboxes:Create", Secret),
            Env,
            "Start a sandbox.",
            Some("CreateSandboxRequest"),
            (201, Some("SandboxRecord")),
            post(sandboxes::create),
        ),
        r(
            "GET",
            "/v1/envs/{env}/sandboxes",
            control("sandboxes:List", Secret),
            Env,
            "List the env's live sandboxes.",
            None,
            (200, Some("SandboxList")),
            get(sandboxes::list),
        ),
        r(
            "GET",
            SB,
            control("sandboxes:Get", Secret),
            Env,
            "Get a sandbox.",
            None,
            (200, Some("SandboxRecord")),
            get(sandboxes::get),
        ),
        r(
            "DELETE",
            SB,
            control("sandboxes:Kill", Secret),
            Env,
            "Kill a sandbox (its workspace, if named, stays).",
            None,
            (204, None),
            delete(sandboxes::kill),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes/{sandbox}/pause",
            control("sandboxes:Pause", Secret),
            Env,
            "Freeze every process of a sandbox.",
            None,
            (200, Some("SandboxRecord")),
            post(sandboxes::pause),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes/{sandbox}/resume",
            control("sandboxes:Resume", Secret),
            Env,
            "Thaw a paused sandbox.",
            None,
            (200, Some("SandboxRecord")),
            post(sandboxes::resume),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes/{sandbox}/timeout",
            control("sandboxes:SetTimeout", Secret),
            Env,
            "Set the sandbox's remaining lifetime.",
            Some("SetTimeoutRequest"),
            (200, Some("SandboxRecord")),
            post(sandboxes::set_timeout),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes/{sandbox}/snapshot",
            control("sandboxes:Snapshot", Secret),
            Env,
            "Archive the sandbox's workspace into the object store.",
            None,
            (201, Some("SnapshotRecord")),
            post(sandboxes::snapshot),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes/{sandbox}/deploy",
            control("site:Deploy", Secret),
            Env,
            "Deploy a directory of the sandbox as a static site (archived inside the sandbox).",
            Some("SandboxDeployRequest"),
            (201, Some("DeploymentRecord")),
            post(crate::sites::from_sandbox),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes/{sandbox}/restore",
            control("sandboxes:Restore", Secret),
            Env,
            "Unpack a snapshot into the sandbox's workspace.",
            Some("RestoreRequest"),
            (200, Some("SandboxRecord")),
            post(sandboxes::restore),
        ),
        r(
            "GET",
            "/v1/envs/{env}/snapshots",
            control("sandboxes:List", Secret),
            Env,
            "The env's workspace snapshots.",
            None,
            (200, Some("SnapshotList")),
            get(sandboxes::snapshots),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes/{sandbox}/exec",
            control("sandboxes:Exec", Secret),
            Env,
            "Run a command in a sandbox.",
            Some("ExecRequest"),
            (200, Some("ExecResult")),
            post(sandboxes::exec),
        ),
        r(
            "GET",
            "/v1/envs/{env}/sandboxes/{sandbox}/files",
            control("sandboxes:ReadFile", Secret),
            Env,
            "Download a file from a sandbox.",
            None,
            (200, None),
            get(sandboxes::read_file),
        )
        .query(FILE_QUERY),
        r(
            "PUT",
            "/v1/envs/{env}/sandboxes/{sandbox}/files",
            control("sandboxes:WriteFile", Secret),
            Env,
            "Upload a file to a sandbox (the raw body; replaces it atomically).",
            None,
            (200, Some("FileEntry")),
            put(sandboxes::write_file).layer(file_body_limit),
        )
        .query(FILE_QUERY),
        r(
            "DELETE",
            "/v1/envs/{env}/sandboxes/{sandbox}/files",
            control("sandboxes:DeleteFile", Secret),
            Env,
            "Remove a file or directory tree.",
            None,
            (204, None),
            delete(sandboxes::remove_file),
        )
        .query(FILE_QUERY),
        r(
            "GET",
            "/v1/envs/{env}/sandboxes/{sandbox}/files/list",
            control("sandboxes:ListFiles", Secret),
            Env,
            "List a directory.",
            None,
            (200, Some("FileList")),
            get(sandboxes::list_files),
        )
        .query(LIST_QUERY),
        r(
            "GET",
            "/v1/envs/{env}/sandboxes/{sandbox}/files/stat",
            control("sandboxes:ListFiles", Secret),
            Env,
            "Metadata of a file.",
            None,
            (200, Some("FileEntry")),
            get(sandboxes::stat_file),
        )
        .query(FILE_QUERY),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes/{sandbox}/files/mkdir",
            control("sandboxes:WriteFile", Secret),
            Env,
            "Create a directory (and its parents).",
            Some("MakeDirRequest"),
            (200, Some("FileEntry")),
            post(sandboxes::make_dir),
        ),
        r(
            "POST",
            "/v1/envs/{env}/sandboxes/{sandbox}/files/move",
            control("sandboxes:WriteFile", Secret),
            Env,
            "Move or rename a file.",
            Some("MoveRequest"),
            (200, Some("FileEntry")),
            post(sandboxes::move_file),
        ),
    ]
}

/// The route table.
pub fn route_table() -> Vec<RouteSpec> {
    table().into_iter().map(|r| r.spec).collect()
}

/// The router for the table (without the gate and the outer layers; see [`crate::app`]).
pub(crate) fn router() -> axum::Router<AppState> {
    table().into_iter().fold(axum::Router::new(), |router, r| match bare_prefix(r.spec.path) {
        Some(prefix) => router.route(prefix, r.handler.clone()).route(r.spec.path, r.handler),
        None => router.route(r.spec.path, r.handler),
    })
}

/// A catch-all `…/{*rest}` also answers its bare prefix `…/` (a site's root), under the same spec.
pub(crate) fn bare_prefix(path: &'static str) -> Option<&'static str> {
    path.strip_suffix("{*rest}")
}
