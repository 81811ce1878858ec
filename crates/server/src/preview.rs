//! Sandbox port previews: `/env/{env}/sandboxes/{sandbox}/ports/{port}/…` (and its host form
//! `<port>-<sandbox>--<env>.<apps-domain>`) reach a server listening on that port inside the sandbox,
//! through the agent's socket (no TCP path from the host into the sandbox). HTTP/1.1 is relayed
//! request by request; a `101 Switching Protocols` answer (WebSockets, e.g. Vite's hot reload) turns
//! the connection into a byte pipe. Container apps (`crate::apps_api`) are served through the same
//! [`relay`].

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use hyper_util::rt::TokioIo;
use protocol::EnvId;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;

#[derive(Deserialize)]
pub struct PortPath {
    env: String,
    sandbox: String,
    port: String,
    #[serde(default)]
    rest: String,
}

fn not_found() -> ApiError {
    ApiError::not_found("sandbox_port_not_found", "no such sandbox port")
}

pub async fn preview(
    State(state): State<AppState>,
    Path(p): Path<PortPath>,
    req: Request,
) -> Result<Response, ApiError> {
    let env = EnvId::parse(&p.env).map_err(|_| not_found())?;
    let port: u16 = p.port.parse().ok().filter(|p| *p > 0).ok_or_else(not_found)?;
    let sandboxes = state.sandboxes.as_ref().map_err(|_| not_found())?;
    let agent = sandboxes.agent(&env, &p.sandbox).map_err(|_| not_found())?;
    relay(&agent, port, &p.rest, req, (), None).await
}

/// Relays one request to `port` inside a sandbox, through its agent, as if the server there were
/// served at its root on localhost; a `101` answer turns the connection into a byte pipe. `keep` lives
/// until the response body (or the upgraded connection) ends: container apps hold their lease in it.
/// `served` counts the bytes sent back to the client (body and upgraded stream).
pub(crate) async fn relay<K: Send + Sync + 'static>(
    agent: &sandbox::AgentClient,
    port: u16,
    rest: &str,
    mut req: Request,
    keep: K,
    served: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
) -> Result<Response, ApiError> {
    let stream = agent.forward(port).await.map_err(|e| match e {
        sandbox::SandboxError::Agent(a) if a.code == "port_closed" => {
            ApiError::new(StatusCode::BAD_GATEWAY, "port_closed", format!("nothing listens on port {port}"))
        }
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "sandbox_unreachable", "the sandbox did not answer"),
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ApiError::new(StatusCode::BAD_GATEWAY, "sandbox_unreachable", "the port did not speak HTTP"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    // The app inside sees itself served at its root, on localhost.
    let path_and_query = match req.uri().query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    parts.uri = path_and_query.parse().map_err(|_| not_found())?;
    if let Ok(host) = header::HeaderValue::from_str(&format!("localhost:{port}")) {
        parts.headers.insert(header::HOST, host);
    }
    let upstream_req = http::Request::from_parts(parts, body);
    let mut resp = sender
        .send_request(upstream_req)
        .await
        .map_err(|_| ApiError::new(StatusCode::BAD_GATEWAY, "sandbox_unreachable", "the port closed the connection"))?;
    let keep = std::sync::Arc::new(keep);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (keep, served) = (keep.clone(), served.clone());
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) {
                let copied =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
                if let (Ok((_, to_client)), Some(s)) = (copied, &served) {
                    s.fetch_add(to_client, std::sync::atomic::Ordering::Relaxed);
                }
            }
            drop(keep);
        });
    }
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::map_frame(body, move |frame| {
        let _ = &keep;
        if let (Some(data), Some(s)) = (frame.data_ref(), &served) {
            s.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        frame
    });
    Ok(Response::from_parts(parts, Body::new(body)).into_response())
}
