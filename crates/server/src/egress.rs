//! The egress proxy: the only way out of a sandbox. The agent relays the sandbox's proxy port
//! (`HTTP_PROXY`, `HTTPS_PROXY`) to a Unix socket the platform listens on; here each connection is
//! served as an HTTP/1.1 proxy that lets through exactly:
//! - plain requests to the platform (`http://vibebase.internal`, the address sandboxes are given, the
//!   platform's public address, or no address at all: `http://127.0.0.1:<proxy port>/…`) whose path is the sandbox's own env's data plane
//!   (`/env/<env>/{rest,auth,storage,functions,llm,site}/…`), dispatched in process through the router,
//!   so the gate authenticates the sandbox's token like any other request;
//! - `CONNECT` tunnels to hosts on the sandbox's allow-list (ports 443 and 80), only to public
//!   addresses (an allow-listed name that resolves to a private or loopback address is refused).
//!
//! Never `/v1`, never another env, never anything else on the host. Tunnelled bytes are metered as
//! `sandbox_egress_bytes`.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::response::Response;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use protocol::api::UsageEventInput;
use sandbox::{EgressContext, EgressHandler};
use tower::ServiceExt as _;

use crate::AppState;

/// The data-plane surfaces a sandbox may call on its own env.
const ALLOWED_SURFACES: &[&str] = &["rest", "auth", "storage", "functions", "llm", "site"];

/// The proxy, as a handler the sandbox backend calls for each outbound connection.
pub fn handler(state: AppState) -> EgressHandler {
    let router: Arc<OnceLock<axum::Router>> = Arc::default();
    Arc::new(move |ctx, stream| {
        let (state, router) = (state.clone(), router.clone());
        tokio::spawn(async move {
            let router = router.get_or_init(|| crate::router(state.clone())).clone();
            serve(state, router, ctx, stream).await;
        });
    })
}

async fn serve(state: AppState, router: axum::Router, ctx: EgressContext, stream: tokio::net::UnixStream) {
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let (state, router, ctx) = (state.clone(), router.clone(), ctx.clone());
        async move { Ok::<_, Infallible>(proxy(&state, router, &ctx, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

/// Meters the bytes a tunnel carried.
async fn meter(state: &AppState, ctx: &EgressContext, bytes: u64) {
    if bytes == 0 {
        return;
    }
    let mut dimensions = std::collections::BTreeMap::new();
    if let Some(s) = &ctx.session {
        dimensions.insert("session".to_owned(), s.clone());
    }
    let event = UsageEventInput {
        meter: "sandbox_egress_bytes".to_owned(),
        quantity: i64::try_from(bytes).unwrap_or(i64::MAX),
        source: "sandbox-egress".to_owned(),
        event_id: format!("{}:{}", ctx.sandbox, state.platform.random_id(16)),
        at: None,
        dimensions,
    };
    if let Err(e) = state.platform.record_usage(&ctx.env, event).await {
        tracing::warn!(error = %e, "could not record sandbox egress");
    }
}

fn deny(status: StatusCode, why: &str) -> Response {
    let mut r = Response::new(Body::from(format!("egress_denied: {why}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The platform's own address as sandboxes see it (the authority of `--public-url`).
fn platform_authority(state: &AppState) -> String {
    let url = &state.platform.config().public_url;
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    rest.split('/').next().unwrap_or("").to_ascii_lowercase()
}

async fn proxy(state: &AppState, router: axum::Router, ctx: &EgressContext, req: http::Request<Incoming>) -> Response {
    // A request without a destination was sent to the proxy port as if it were the platform (Node's
    // `fetch` ignores `HTTP_PROXY`, so function runners use `http://127.0.0.1:<port>/env/<env>`): it
    // can only mean the platform, and gets the same checks as a proxied one.
    let authority = req.uri().authority().map(|a| a.as_str().to_ascii_lowercase());
    let own = platform_authority(state);
    let is_platform = authority.as_ref().is_none_or(|authority| {
        *authority == own || authority.trim_end_matches(":80") == sandbox::manager::SANDBOX_API_HOST
    });
    if authority.is_none() && req.method() == Method::CONNECT {
        return deny(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    }
    if req.method() == Method::CONNECT {
        if is_platform {
            return deny(StatusCode::FORBIDDEN, "tunnels to the platform are not allowed; send plain requests");
        }
        return tunnel(state, req, ctx).await;
    }
    if !is_platform {
        return deny(StatusCode::FORBIDDEN, "plain HTTP goes only to the env's own APIs");
    }
    let path = req.uri().path().to_owned();
    let prefix = format!("/env/{}/", ctx.env);
    let surface = path.strip_prefix(&prefix).and_then(|r| r.split('/').next()).unwrap_or("");
    if !ALLOWED_SURFACES.contains(&surface) {
        return deny(StatusCode::FORBIDDEN, "only the sandbox's own env's data-plane APIs are reachable");
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = match parts.uri.path_and_query().map(|pq| pq.as_str().parse()) {
        Some(Ok(uri)) => uri,
        _ => return deny(StatusCode::BAD_REQUEST, "bad request target"),
    };
    match router.oneshot(http::Request::from_parts(parts, Body::new(body))).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Whether an address is outside the host's and the private networks (not loopback, private,
/// link-local, shared, multicast). Documentation ranges pass: some networks put their registry mirror
/// there.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1])
                || v4.octets()[0] >= 224)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg & 0xfe00) == 0xfc00
                || (seg & 0xffc0) == 0xfe80)
                && v6.to_ipv4_mapped().is_none_or(|v4| is_public(IpAddr::V4(v4)))
        }
    }
}

async fn tunnel(state: &AppState, req: http::Request<Incoming>, ctx: &EgressContext) -> Response {
    let Some(authority) = req.uri().authority().cloned() else {
        return deny(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16().unwrap_or(443);
    if !ctx.allows(&host) {
        return deny(StatusCode::FORBIDDEN, &format!("{host} is not on this sandbox's egress allow-list"));
    }
    if port != 443 && port != 80 {
        return deny(StatusCode::FORBIDDEN, "only ports 443 and 80");
    }
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(a) => a.filter(|a| is_public(a.ip())).collect(),
        Err(_) => return deny(StatusCode::BAD_GATEWAY, &format!("cannot resolve {host}")),
    };
    if addrs.is_empty() {
        return deny(StatusCode::FORBIDDEN, &format!("{host} does not resolve to a public address"));
    }
    let upstream = match tokio::net::TcpStream::connect(addrs.as_slice()).await {
        Ok(s) => s,
        Err(e) => return deny(StatusCode::BAD_GATEWAY, &format!("cannot connect to {host}: {e}")),
    };
    let (state, ctx) = (state.clone(), ctx.clone());
    tokio::spawn(async move {
        let mut upstream = upstream;
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut client = TokioIo::new(upgraded);
            let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await.unwrap_or((0, 0));
            meter(&state, &ctx, up + down).await;
        }
    });
    Response::new(Body::empty())
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn only_public_addresses_are_reachable() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))), "{private}");
        }
        for public in ["104.16.0.1", "8.8.8.8", "203.0.113.80", "2606:4700::1"] {
            assert!(is_public(public.parse().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))), "{public}");
        }
    }
}
