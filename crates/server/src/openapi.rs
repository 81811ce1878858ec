//! The OpenAPI 3.1 document, generated from the route table and the wire types, so it covers every
//! `/v1` route by construction.

use protocol::api::*;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
    ResponseBuilder, Schema,
};

use crate::routes::{QueryType, RouteSpec, Scope, route_table};
use crate::surface::Surface;

fn list_of(item: &str, paged: bool) -> Schema {
    let mut o = ObjectBuilder::new()
        .property("items", ArrayBuilder::new().items(Ref::from_schema_name(item)))
        .required("items");
    if paged {
        o = o.property("next_cursor", ObjectBuilder::new().schema_type(Type::String));
    }
    o.into()
}

fn components() -> utoipa::openapi::Components {
    ComponentsBuilder::new()
        .schema_from::<ErrorBody>()
        .schema_from::<protocol::EnvId>()
        .schema_from::<Quota>()
        .schema_from::<RotatableKey>()
        .schema_from::<QuotaPeriod>()
        .schema_from::<EnvStatus>()
        .schema_from::<EnvUrls>()
        .schema_from::<EnvKeys>()
        .schema_from::<KeyKind>()
        .schema_from::<UsageTotal>()
        .schema_from::<UsageBucket>()
        .schema_from::<Health>()
        .schema_from::<CreateEnvRequest>()
        .schema_from::<EnvRecord>()
        .schema_from::<KeyRecord>()
        .schema_from::<RotateKeyRequest>()
        .schema_from::<RotatedKey>()
        .schema_from::<MintTokenRequest>()
        .schema_from::<MintedToken>()
        .schema_from::<SqlRequest>()
        .schema_from::<SqlResult>()
        .schema_from::<AuditEntry>()
        .schema_from::<UsageReport>()
        .schema_from::<UsageEventInput>()
        .schema_from::<UsageEventAccepted>()
        .schema_from::<EnvLimits>()
        .schema_from::<QuotaAlert>()
        .schema_from::<MeterInfo>()
        .schema_from::<CreatePrincipalRequest>()
        .schema_from::<PrincipalRecord>()
        .schema_from::<SetPolicyRequest>()
        .schema_from::<OwnerPolicyRequest>()
        .schema_from::<CreateWebhookRequest>()
        .schema_from::<WebhookRecord>()
        .schema_from::<DeliveryRecord>()
        .schema_from::<protocol::apps::HealthCheck>()
        .schema_from::<protocol::apps::PutAppRequest>()
        .schema_from::<protocol::apps::AppFromSandboxRequest>()
        .schema_from::<protocol::apps::AppStatus>()
        .schema_from::<protocol::apps::AppSource>()
        .schema_from::<protocol::apps::AppUrls>()
        .schema_from::<protocol::apps::AppRecord>()
        .schema_from::<protocol::apps::AppList>()
        .schema_from::<protocol::apps::AppLogLine>()
        .schema_from::<protocol::apps::AppLogList>()
        .schema_from::<protocol::functions::FunctionVersion>()
        .schema_from::<protocol::functions::FunctionVersionList>()
        .schema_from::<protocol::functions::FunctionRecord>()
        .schema_from::<protocol::functions::FunctionList>()
        .schema_from::<protocol::functions::RollbackRequest>()
        .schema_from::<protocol::functions::SetSecretsRequest>()
        .schema_from::<protocol::functions::SecretNames>()
        .schema_from::<protocol::functions::SetScheduleRequest>()
        .schema_from::<protocol::functions::InvocationOutcome>()
        .schema_from::<protocol::functions::InvocationLog>()
        .schema_from::<protocol::functions::InvocationLogList>()
        .schema_from::<protocol::agent::CreateSessionRequest>()
        .schema_from::<protocol::agent::SessionRecord>()
        .schema_from::<protocol::agent::SessionList>()
        .schema_from::<protocol::agent::SendMessageRequest>()
        .schema_from::<protocol::agent::RunStarted>()
        .schema_from::<protocol::agent::InterruptResult>()
        .schema_from::<protocol::agent::Decision>()
        .schema_from::<protocol::agent::ApprovalRequest>()
        .schema_from::<protocol::agent::RevertRequest>()
        .schema_from::<protocol::agent::RevertResult>()
        .schema_from::<protocol::sandbox::CreateSandboxRequest>()
        .schema_from::<protocol::sandbox::SandboxState>()
        .schema_from::<protocol::sandbox::SandboxRecord>()
        .schema_from::<protocol::sandbox::SandboxList>()
        .schema_from::<protocol::sandbox::SetTimeoutRequest>()
        .schema_from::<protocol::sandbox::ExecRequest>()
        .schema_from::<protocol::sandbox::ExecResult>()
        .schema_from::<protocol::sandbox::FileEntry>()
        .schema_from::<protocol::sandbox::FileList>()
        .schema_from::<protocol::sandbox::MakeDirRequest>()
        .schema_from::<protocol::sandbox::MoveRequest>()
        .schema_from::<protocol::sandbox::SnapshotRecord>()
        .schema_from::<protocol::sandbox::SnapshotList>()
        .schema_from::<protocol::sandbox::RestoreRequest>()
        .schema_from::<protocol::sandbox::TemplateList>()
        .schema_from::<protocol::hosting::CreateDeploymentRequest>()
        .schema_from::<protocol::hosting::CreatedDeployment>()
        .schema_from::<protocol::hosting::DeploymentRecord>()
        .schema_from::<protocol::hosting::DeploymentStatus>()
        .schema_from::<protocol::hosting::DeploymentUrls>()
        .schema_from::<protocol::hosting::DeploymentList>()
        .schema_from::<protocol::hosting::SandboxDeployRequest>()
        .schema_from::<protocol::hosting::AddDomainRequest>()
        .schema_from::<protocol::hosting::DomainStatus>()
        .schema_from::<protocol::hosting::DomainVerification>()
        .schema_from::<protocol::hosting::DomainRecord>()
        .schema_from::<protocol::hosting::DomainList>()
        .schema_from::<protocol::auth::AuthSettings>()
        .schema_from::<protocol::auth::AuthSettingsPatch>()
        .schema_from::<protocol::auth::OutboxMail>()
        .schema("OutboxList", list_of("OutboxMail", false))
        .schema(
            "AuthErrorBody",
            ObjectBuilder::new()
                .property("code", ObjectBuilder::new().schema_type(Type::Integer))
                .property("error_code", ObjectBuilder::new().schema_type(Type::String))
                .property("msg", ObjectBuilder::new().schema_type(Type::String))
                .required("code")
                .required("error_code")
                .required("msg"),
        )
        .schema("EnvPage", list_of("EnvRecord", true))
        .schema("AuditPage", list_of("AuditEntry", true))
        .schema("KeyList", list_of("KeyRecord", false))
        .schema("AlertList", list_of("QuotaAlert", false))
        .schema("MeterList", list_of("MeterInfo", false))
        .schema("PrincipalList", list_of("PrincipalRecord", false))
        .schema("WebhookList", list_of("WebhookRecord", false))
        .schema("DeliveryList", list_of("DeliveryRecord", false))
        .security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()))
        .build()
}

fn json_content(schema: RefOr<Schema>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

/// The error statuses any guarded `/v1` route may answer.
const ERROR_STATUSES: &[(&str, &str)] = &[
    ("400", "Invalid request (bad JSON, wrong types, unknown fields, invalid values)."),
    ("401", "Missing, malformed, unknown, revoked or expired credential."),
    ("402", "A hard quota is used up."),
    ("403", "The credential may not do this (other env, kind, policy, suspended env)."),
    ("404", "Not found."),
    ("409", "Conflicts with existing state."),
    ("413", "Body too large."),
    ("415", "Body is not JSON."),
    ("429", "Rate limited; see Retry-After."),
];

/// The error statuses a GoTrue route may answer.
const AUTH_ERROR_STATUSES: &[(&str, &str)] = &[
    ("400", "Invalid request or credentials."),
    ("401", "Missing or unknown key, or no access token where one is needed."),
    ("402", "A hard quota is used up."),
    ("403", "Another env's key, an invalid or expired access token, or a session that ended."),
    ("404", "Not found."),
    ("413", "Body too large."),
    ("415", "Body is not JSON."),
    ("422", "Refused: user exists, weak password, sign-ups disabled."),
    ("429", "Rate limited; see Retry-After."),
];

fn operation(spec: &RouteSpec) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new().summary(Some(spec.summary)).operation_id(Some(format!(
        "{}_{}",
        spec.method.to_lowercase(),
        spec.path.replace(['/', '{', '}', '.'], "_").trim_matches('_')
    )));
    for segment in spec.path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))) {
        let schema: RefOr<Schema> = if segment == "env" {
            <protocol::EnvId as utoipa::PartialSchema>::schema()
        } else {
            ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(128)).into()
        };
        op = op.parameter(
            ParameterBuilder::new()
                .name(segment)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(schema)),
        );
    }
    for (name, ty, description) in spec.query {
        let schema = match ty {
            QueryType::String => ObjectBuilder::new().schema_type(Type::String),
            QueryType::Integer(min, max) => {
                ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(*min)).maximum(Some(*max))
            }
            QueryType::DateTime => ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime))),
            QueryType::OneOf(values) => {
                ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.iter().copied()))
            }
        };
        op = op.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(*description))
                .schema(Some(schema)),
        );
    }
    if let Some(request) = spec.request {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content("application/json", json_content(Ref::from_schema_name(request).into()))
                .build(),
        ));
    }
    let (status, body) = spec.response;
    let mut ok = ResponseBuilder::new().description("Success.");
    ok = match (spec.path, body) {
        ("/metrics", _) => ok.content(
            "text/plain",
            ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build(),
        ),
        ("/openapi.json", _) | ("/v1/policies/owner", _) => {
            ok.content("application/json", json_content(ObjectBuilder::new().schema_type(Type::Object).into()))
        }
        (_, Some(name)) => {
            let mut r = ok.content("application/json", json_content(Ref::from_schema_name(name).into()));
            if spec.query.iter().any(|q| q.0 == "format") {
                r = r.content(
                    "text/csv",
                    ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build(),
                );
            }
            r
        }
        (_, None) => ok,
    };
    op = op.response(status.to_string(), ok.build());
    if spec.surface == Surface::Auth {
        // GoTrue's own error shape and statuses (422 for validation, 303 redirects from mail links).
        if spec.scope != Scope::Public {
            op = op.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        for (code, description) in AUTH_ERROR_STATUSES {
            op = op.response(
                *code,
                ResponseBuilder::new()
                    .description(*description)
                    .content("application/json", json_content(Ref::from_schema_name("AuthErrorBody").into()))
                    .build(),
            );
        }
    } else if spec.scope != Scope::Public {
        op = op.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        for (code, description) in ERROR_STATUSES {
            op = op.response(
                *code,
                ResponseBuilder::new()
                    .description(*description)
                    .content("application/json", json_content(Ref::from_schema_name("ErrorBody").into()))
                    .build(),
            );
        }
    } else if spec.path.contains('{') {
        // A public route naming something (an ACME challenge token) answers 404 when it does not exist.
        op = op.response(
            "404",
            ResponseBuilder::new()
                .description("Not found.")
                .content("application/json", json_content(Ref::from_schema_name("ErrorBody").into()))
                .build(),
        );
    }
    op.build()
}

/// Whether a route of the table is in the document. Supabase Storage's routes (its catch-all and TUS's
/// resumable-upload routes) speak that protocol, with its own error shape and statuses (TUS's 412, 460
/// …): they are the protocol's, not this document's.
pub fn documented(spec: &crate::routes::RouteSpec) -> bool {
    spec.method != "ANY" && spec.built && !spec.path.contains("{*") && spec.surface != Surface::Storage
}

/// Builds the document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    // Surfaces not built yet are routed and guarded but not part of the documented API; wire-protocol
    // catch-alls (`{*rest}`, e.g. Storage's signed URLs) are their protocol's, not this document's.
    for spec in route_table().iter().filter(|s| documented(s)) {
        let method = match spec.method {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            "PUT" => HttpMethod::Put,
            "PATCH" => HttpMethod::Patch,
            "HEAD" => HttpMethod::Head,
            "OPTIONS" => HttpMethod::Options,
            _ => HttpMethod::Delete,
        };
        paths = paths.path(spec.path, PathItem::new(method, operation(spec)));
    }
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("vibebase platform API").version(env!("CARGO_PKG_VERSION")).build())
        .paths(paths)
        .components(Some(components()))
        .build()
}
