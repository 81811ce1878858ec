//! The surfaces the router serves, and each one's own error shape, so every client understands the
//! errors it gets (design.md: "every wire-compatible surface answers in its own protocol's error shape").

use http::StatusCode;
use serde_json::{Value, json};

/// A family of routes that speaks one wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Surface {
    /// `/healthz`, `/metrics`, `/openapi.json` and the `/v1` platform API.
    Platform,
    /// PostgREST (`/rest/v1`).
    Rest,
    /// GoTrue (`/auth/v1`).
    Auth,
    /// Supabase Storage (`/storage/v1`).
    Storage,
    /// Supabase Functions (`/functions/v1`).
    Functions,
    /// The model gateway (`/llm/v1`): OpenAI shapes, Anthropic shapes under `/messages`.
    Llm,
    /// E2B control plane and envd.
    E2b,
    /// MCP over streamable HTTP (JSON-RPC).
    Mcp,
    /// Published sites, previews, container apps and sandbox ports: plain HTTP for browsers.
    Hosting,
}

impl Surface {
    /// The `surface` dimension of the `api_requests` meter.
    pub fn name(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Rest => "rest",
            Self::Auth => "auth",
            Self::Storage => "storage",
            Self::Functions => "functions",
            Self::Llm => "llm",
            Self::E2b => "e2b",
            Self::Mcp => "mcp",
            Self::Hosting => "hosting",
        }
    }

    /// The error body in this surface's shape. `path` picks between OpenAI and Anthropic on the gateway.
    pub fn error_body(self, status: StatusCode, code: &str, message: &str, request_id: &str, path: &str) -> ErrorBody {
        let json = match self {
            Self::Platform => json!({"code": code, "message": message, "request_id": request_id}),
            Self::Rest => json!({"code": code, "message": message, "details": Value::Null, "hint": Value::Null}),
            Self::Auth => json!({"code": status.as_u16(), "error_code": code, "msg": message}),
            // Supabase Storage puts its code in both `error` and `code`.
            Self::Storage => json!({
                "statusCode": status.as_u16().to_string(),
                "error": code,
                "message": message,
                "code": code,
            }),
            // envd's RPC methods answer as Connect does, so the SDK's Connect client reads the code.
            Self::E2b if path.contains(".Process/") || path.contains(".Filesystem/") => {
                json!({"code": crate::e2b::connect_code(status), "message": message})
            }
            Self::Functions | Self::E2b => json!({"code": status.as_u16(), "error_code": code, "message": message}),
            Self::Llm if path.contains("/messages") => json!({
                "type": "error",
                "error": {"type": anthropic_error_type(status), "message": message},
                "request_id": request_id,
            }),
            Self::Llm => {
                json!({"error": {"message": message, "type": openai_error_type(status), "param": Value::Null, "code": code}})
            }
            Self::Mcp => {
                json!({"jsonrpc": "2.0", "id": Value::Null, "error": {
                    "code": agent::mcp::rpc_code(code), "message": message, "data": {"code": code}
                }})
            }
            Self::Hosting => {
                let head = format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
                // A 503 says why (a container app still waking, or one that did not come up); other
                // errors say only their status, so nothing about an env leaks to a guessing visitor.
                return ErrorBody::Text(if status == StatusCode::SERVICE_UNAVAILABLE {
                    format!("{head}{code}: {message}\n")
                } else {
                    head
                });
            }
        };
        ErrorBody::Json(json)
    }
}

/// A rendered error body.
pub enum ErrorBody {
    Json(Value),
    Text(String),
}

fn openai_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "insufficient_quota",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "invalid_request_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}
