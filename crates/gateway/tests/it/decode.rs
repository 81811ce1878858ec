//! Upstream decoders on documented stream shapes and on broken ones.

use std::collections::VecDeque;

use gateway::config::ProviderKind;
use gateway::ir::{Completion, Event, FinishReason};
use gateway::upstream::Decoder;

fn decode(kind: ProviderKind, wire: &str) -> Result<Completion, String> {
    let mut d = Decoder::new(kind);
    let mut out = VecDeque::new();
    // Byte-by-byte: the worst chunking a proxy can produce.
    for b in wire.as_bytes().chunks(1) {
        d.push(b, &mut out).map_err(|e| e.code)?;
    }
    d.end(&mut out).map_err(|e| e.code)?;
    let mut c = Completion::default();
    for e in &out {
        c.apply(e);
    }
    assert!(matches!(out.front(), Some(Event::Start { .. })), "{out:?}");
    Ok(c)
}

const OPENAI_TOOLS: &str = concat!(
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null},\"finish_reason\":null}]}\n\n",
    ": keep-alive\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"location\\\":\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":82,\"completion_tokens\":18,\"total_tokens\":100}}\n\n",
    "data: [DONE]\n\n",
);

const ANTHROPIC_TOOLS: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco\\\"}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn openai_tool_call_deltas_and_final_usage() {
    let c = decode(ProviderKind::Openai, OPENAI_TOOLS).unwrap();
    assert_eq!(c.tool_calls.len(), 2);
    assert_eq!((c.tool_calls[0].id.as_str(), c.tool_calls[0].name.as_str()), ("call_1", "get_weather"));
    assert_eq!(c.tool_calls[0].arguments, "{\"location\":\"Paris\"}");
    assert_eq!(c.tool_calls[1].arguments, "{}");
    assert_eq!(c.finish, Some(FinishReason::ToolCalls));
    assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (82, 18));
}

#[test]
fn anthropic_text_then_tool_use_with_cumulative_usage() {
    let c = decode(ProviderKind::Anthropic, ANTHROPIC_TOOLS).unwrap();
    assert_eq!(c.text, "Okay");
    assert_eq!(c.tool_calls[0].arguments, "{\"location\": \"San Francisco\"}");
    assert_eq!(c.finish, Some(FinishReason::ToolCalls));
    assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (472, 89));
}

#[test]
fn half_written_and_garbage_streams_are_errors() {
    let cut = &OPENAI_TOOLS[..OPENAI_TOOLS.len() / 2];
    assert_eq!(decode(ProviderKind::Openai, cut).unwrap_err(), "upstream_stream_error");
    let cut = &ANTHROPIC_TOOLS[..ANTHROPIC_TOOLS.len() - 40];
    assert_eq!(decode(ProviderKind::Anthropic, cut).unwrap_err(), "upstream_stream_error");
    assert_eq!(decode(ProviderKind::Openai, "data: <html>502</html>\n\n").unwrap_err(), "upstream_stream_error");
    assert_eq!(
        decode(ProviderKind::Anthropic, "event: message_start\ndata: nope\n\n").unwrap_err(),
        "upstream_stream_error"
    );
    // [DONE] without any finish reason is not a complete answer.
    assert_eq!(
        decode(
            ProviderKind::Openai,
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n"
        )
        .unwrap_err(),
        "upstream_stream_error"
    );
    // A provider error event mid-stream.
    let err = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"error\":{\"message\":\"boom\"}}\n\n";
    assert_eq!(decode(ProviderKind::Openai, err).unwrap_err(), "upstream_stream_error");
}

#[test]
fn openai_stream_closed_after_finish_without_done_is_complete() {
    let wire = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n";
    let c = decode(ProviderKind::Openai, wire).unwrap();
    assert_eq!(c.text, "hi");
}
