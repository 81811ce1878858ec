//! The HTTP surface under each env's `/env/<env>/llm/v1`: `GET models`, `GET models/{id}`,
//! `POST chat/completions`, `POST responses`, `POST messages`, `POST messages/count_tokens`.
//! Errors come back as [`GatewayError`]; the server renders them in the protocol's shape (Anthropic
//! under `/messages`, OpenAI elsewhere). Once a stream has started, errors are sent inside it.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

use crate::budget::Bill;
use crate::error::GatewayError;
use crate::ir::ChatRequest;
use crate::protocols::{self, Encoder, Meta, Options};
use crate::{Answer, Gateway};

/// Header on every answer a replay provider gave.
pub const REPLAYED_HEADER: &str = "x-vibebase-replayed";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Chat,
    Responses,
    Messages,
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Answers one request of the gateway surface. `rest` is the path after `/llm/v1/`.
pub async fn handle(
    gw: &Gateway,
    bill: Bill,
    method: &Method,
    rest: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    let rest = rest.trim_matches('/');
    // The Anthropic SDK appends `/v1/messages` to its base URL; with the env's `urls.llm` (which ends in
    // `/v1`) as that base, its paths arrive as `v1/...`. Both forms are served.
    let rest = rest.strip_prefix("v1/").unwrap_or(rest);
    let not_found = || GatewayError::new(404, "route_not_found", format!("no such route: /llm/v1/{rest}"));
    let anthropic_client = headers.contains_key("anthropic-version");
    match (method, rest) {
        (&Method::GET, "models") => Ok(json_response(StatusCode::OK, &models(gw, anthropic_client))),
        (&Method::GET, r) if r.starts_with("models/") => {
            let id = &r["models/".len()..];
            let m =
                gw.models().into_iter().find(|m| m.id == id).ok_or_else(|| {
                    GatewayError::new(404, "model_not_found", format!("the model {id:?} does not exist"))
                })?;
            Ok(json_response(StatusCode::OK, &model_json(&m.id, anthropic_client)))
        }
        (&Method::POST, "chat/completions") => chat(gw, bill, Protocol::Chat, body).await,
        (&Method::POST, "responses") => chat(gw, bill, Protocol::Responses, body).await,
        (&Method::POST, "messages") => chat(gw, bill, Protocol::Messages, body).await,
        (&Method::POST, "messages/count_tokens") => {
            let v = read_json(gw, body).await?;
            let mut v = v;
            // count_tokens takes a messages body without max_tokens or stream.
            if let Some(o) = v.as_object_mut() {
                o.remove("stream");
            }
            let (req, _) = protocols::messages::parse(&v)?;
            if gw.config().model(&req.model).is_none() {
                return Err(GatewayError::new(
                    404,
                    "model_not_found",
                    format!("the model {:?} does not exist", req.model),
                ));
            }
            Ok(json_response(StatusCode::OK, &json!({"input_tokens": req.estimate_input_tokens()})))
        }
        (_, "models" | "chat/completions" | "responses" | "messages" | "messages/count_tokens") => {
            Err(GatewayError::new(405, "method_not_allowed", "method not allowed on this route"))
        }
        _ => Err(not_found()),
    }
}

fn model_json(id: &str, anthropic: bool) -> Value {
    if anthropic {
        json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"})
    } else {
        json!({"id": id, "object": "model", "created": 0, "owned_by": "platform"})
    }
}

fn models(gw: &Gateway, anthropic: bool) -> Value {
    let data: Vec<Value> = gw.models().iter().map(|m| model_json(&m.id, anthropic)).collect();
    if anthropic {
        let first = data.first().map(|m| m["id"].clone()).unwrap_or(Value::Null);
        let last = data.last().map(|m| m["id"].clone()).unwrap_or(Value::Null);
        json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
    } else {
        json!({"object": "list", "data": data})
    }
}

async fn read_json(gw: &Gateway, body: Body) -> Result<Value, GatewayError> {
    let limit = gw.config().max_request_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        GatewayError::new(413, "request_too_large", format!("the request body is larger than {limit} bytes"))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| GatewayError::invalid("invalid_json", format!("the body is not valid JSON: {e}")))
}

fn parse(p: Protocol, v: &Value) -> Result<(ChatRequest, Options), GatewayError> {
    match p {
        Protocol::Chat => protocols::chat::parse(v),
        Protocol::Responses => protocols::responses::parse(v),
        Protocol::Messages => protocols::messages::parse(v),
    }
}

async fn chat(gw: &Gateway, bill: Bill, p: Protocol, body: Body) -> Result<Response, GatewayError> {
    let v = read_json(gw, body).await?;
    let (req, opts) = parse(p, &v)?;
    let input_estimate = req.estimate_input_tokens();
    let mut answer = gw.start(bill, req).await?;
    answer.settle_in_background();
    let meta = Meta { id: answer.id.clone(), model: answer.model.clone(), created: answer.created };
    let replayed = answer.replayed;
    let mut response = if opts.stream {
        let encoder: Box<dyn Encoder> = match p {
            Protocol::Chat => {
                Box::new(protocols::chat::Stream { meta, include_usage: opts.include_usage, started: false })
            }
            Protocol::Responses => Box::new(protocols::responses::Stream::new(meta)),
            Protocol::Messages => Box::new(protocols::messages::Stream::new(meta, input_estimate)),
        };
        let mut r = Response::new(Body::from_stream(stream(answer, encoder)));
        r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        let c = answer.collect().await?;
        let v = match p {
            Protocol::Chat => protocols::chat::render(&meta, &c),
            Protocol::Responses => protocols::responses::render(&meta, &c),
            Protocol::Messages => protocols::messages::render(&meta, &c),
        };
        json_response(StatusCode::OK, &v)
    };
    if replayed {
        response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

struct StreamState {
    answer: Answer,
    encoder: Box<dyn Encoder>,
    queue: std::collections::VecDeque<Bytes>,
    ended: bool,
}

/// The SSE body: events encoded as they arrive. Dropping it (client gone) drops the answer, which
/// cancels the upstream request and settles the call with its estimated usage.
fn stream(
    answer: Answer,
    encoder: Box<dyn Encoder>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let state = StreamState { answer, encoder, queue: Default::default(), ended: false };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(b) = s.queue.pop_front() {
                return Some((Ok(b), s));
            }
            if s.ended {
                return None;
            }
            let mut out = Vec::new();
            match s.answer.next().await {
                Some(Ok(e)) => s.encoder.event(&e, &mut out),
                Some(Err(e)) => {
                    s.encoder.error(&e, s.answer.completion(), &mut out);
                    s.ended = true;
                }
                None => {
                    s.encoder.finish(s.answer.completion(), &mut out);
                    s.ended = true;
                }
            }
            s.queue.extend(out);
        }
    })
}
