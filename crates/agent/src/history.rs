//! Folding a session's log back into what the loop needs: the conversation in the gateway's neutral
//! form, and what a crashed driver left open (a text message never ended, tool calls whose outcome is
//! unknown, a run never finished).

use gateway::ir::{Message, Part, Role};

use crate::event::{Event, custom};

/// A session's log, folded.
#[derive(Debug, Default)]
pub struct History {
    pub messages: Vec<Message>,
    /// The run that started and has not ended.
    pub open_run: Option<String>,
    /// A text message that started and has not ended.
    pub open_text: Option<String>,
    /// Tool calls (id, name) recorded as complete intents with no result: their outcome is unknown.
    pub unanswered: Vec<(String, String)>,
    /// Tool calls (id, name) whose arguments never finished: they were never run.
    pub unfinished: Vec<(String, String)>,
    /// Tool calls (id, name, arguments) waiting for a person's decision: never run yet, and not to be
    /// reported as interrupted.
    pub awaiting_approval: Vec<(String, String, String)>,
    /// Model requests of the open run (turns taken).
    pub turns_in_run: u32,
    /// Model requests over the session's life.
    pub turns_total: u64,
    /// The sequence number the latest compaction covers (0: none).
    pub compacted_up_to: i64,
}

/// A tool call as the fold tracks it.
#[derive(Default)]
struct Call {
    id: String,
    name: String,
    arguments: String,
    ended: bool,
    answered: bool,
    /// A person's decision was asked for.
    requested: bool,
    /// …and given (the call then ran, or was denied with its result in the same write).
    decided: bool,
}

/// How a summary stands in for the conversation it replaced.
pub const SUMMARY_PREFIX: &str = "[Summary of the earlier conversation, written when the context window filled]\n";

impl History {
    /// Folds a whole log (sequence numbers with events). State (open run, pending calls, turns) comes
    /// from every event; the conversation starts from the latest compaction when there is one: its
    /// summary, then the events after the sequence number it covers.
    pub fn fold_log(events: &[(i64, Event)]) -> Self {
        let mut h = Self::fold(events.iter().map(|(_, e)| e));
        let latest = events.iter().rev().find_map(|(_, e)| match e {
            Event::Custom { name, value } if name == custom::COMPACTION => {
                Some((value["upTo"].as_i64().unwrap_or(0), value["summary"].as_str().unwrap_or_default().to_owned()))
            }
            _ => None,
        });
        if let Some((up_to, summary)) = latest {
            let rest = Self::fold(events.iter().filter(|(s, _)| *s > up_to).map(|(_, e)| e));
            let mut messages = vec![Message {
                role: Role::User,
                content: vec![Part::Text { text: format!("{SUMMARY_PREFIX}{summary}") }],
            }];
            messages.extend(rest.messages);
            h.messages = messages;
            h.compacted_up_to = up_to;
        }
        h
    }

    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut h = History::default();
        let mut assistant: Option<Message> = None;
        let mut results: Vec<Part> = Vec::new();
        // Tool calls seen, in order.
        let mut calls: Vec<Call> = Vec::new();

        fn flush(msgs: &mut Vec<Message>, assistant: &mut Option<Message>, results: &mut Vec<Part>, calls: &[Call]) {
            if let Some(a) = assistant.take()
                && !a.content.is_empty()
            {
                msgs.push(a);
            }
            if !results.is_empty() {
                // In the order of the calls: calls to different hands finish in any order.
                let place = |p: &Part| match p {
                    Part::ToolResult { call_id, .. } => calls.iter().rposition(|c| &c.id == call_id),
                    _ => None,
                };
                results.sort_by_key(place);
                msgs.push(Message { role: Role::User, content: std::mem::take(results) });
            }
        }

        for e in events {
            match e {
                Event::Custom { name, value } if name == custom::USER_MESSAGE => {
                    flush(&mut h.messages, &mut assistant, &mut results, &calls);
                    let text = value["content"].as_str().unwrap_or_default().to_owned();
                    h.messages.push(Message { role: Role::User, content: vec![Part::Text { text }] });
                }
                Event::Custom { name, .. } if name == custom::MODEL_REQUEST => {
                    flush(&mut h.messages, &mut assistant, &mut results, &calls);
                    assistant = Some(Message { role: Role::Assistant, content: Vec::new() });
                    h.turns_in_run += 1;
                    h.turns_total += 1;
                }
                Event::RunStarted { run_id, .. } => {
                    h.open_run = Some(run_id.clone());
                    h.turns_in_run = 0;
                }
                Event::RunFinished { .. } | Event::RunError { .. } => h.open_run = None,
                Event::TextMessageStart { message_id, .. } => h.open_text = Some(message_id.clone()),
                Event::TextMessageEnd { .. } => h.open_text = None,
                Event::TextMessageContent { delta, .. } => {
                    let a = assistant.get_or_insert_with(|| Message { role: Role::Assistant, content: Vec::new() });
                    match a.content.last_mut() {
                        Some(Part::Text { text }) => text.push_str(delta),
                        _ => a.content.push(Part::Text { text: delta.clone() }),
                    }
                }
                Event::ToolCallStart { tool_call_id, tool_call_name, .. } => {
                    let a = assistant.get_or_insert_with(|| Message { role: Role::Assistant, content: Vec::new() });
                    a.content.push(Part::ToolCall {
                        id: tool_call_id.clone(),
                        name: tool_call_name.clone(),
                        arguments: String::new(),
                    });
                    calls.push(Call { id: tool_call_id.clone(), name: tool_call_name.clone(), ..Call::default() });
                }
                Event::ToolCallArgs { tool_call_id, delta } => {
                    if let Some(c) = calls.iter_mut().rev().find(|c| &c.id == tool_call_id) {
                        c.arguments.push_str(delta);
                    }
                    if let Some(a) = assistant.as_mut()
                        && let Some(Part::ToolCall { arguments, .. }) = a
                            .content
                            .iter_mut()
                            .rev()
                            .find(|p| matches!(p, Part::ToolCall { id, .. } if id == tool_call_id))
                    {
                        arguments.push_str(delta);
                    }
                }
                Event::ToolCallEnd { tool_call_id } => {
                    // The latest call of that id: upstreams (and replays) may reuse ids across answers.
                    if let Some(c) = calls.iter_mut().rev().find(|c| &c.id == tool_call_id) {
                        c.ended = true;
                    }
                }
                Event::ToolCallResult { tool_call_id, content, is_error, .. } => {
                    if let Some(a) = assistant.take()
                        && !a.content.is_empty()
                    {
                        h.messages.push(a);
                    }
                    results.push(Part::ToolResult {
                        call_id: tool_call_id.clone(),
                        content: content.clone(),
                        is_error: *is_error,
                    });
                    // The latest call of that id: upstreams (and replays) may reuse ids across answers.
                    if let Some(c) = calls.iter_mut().rev().find(|c| &c.id == tool_call_id) {
                        c.answered = true;
                    }
                }
                Event::Custom { name, value } if name == custom::APPROVAL_REQUESTED || name == custom::APPROVAL => {
                    let id = value["toolCallId"].as_str().unwrap_or_default();
                    if let Some(c) = calls.iter_mut().rev().find(|c| c.id == id) {
                        if name == custom::APPROVAL {
                            c.decided = true;
                        } else {
                            c.requested = true;
                        }
                    }
                }
                Event::StateSnapshot { .. } | Event::Custom { .. } => {}
            }
        }
        flush(&mut h.messages, &mut assistant, &mut results, &calls);
        for c in calls {
            match (c.ended, c.answered) {
                (true, false) if c.requested && !c.decided => h.awaiting_approval.push((c.id, c.name, c.arguments)),
                (true, false) => h.unanswered.push((c.id, c.name)),
                (false, false) => h.unfinished.push((c.id, c.name)),
                _ => {}
            }
        }
        h
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user(text: &str) -> Event {
        Event::custom(custom::USER_MESSAGE, json!({"messageId": "u", "content": text}))
    }

    #[test]
    fn a_tool_round_folds_into_assistant_call_then_result() {
        let events = vec![
            Event::RunStarted { thread_id: "t".into(), run_id: "r".into() },
            user("hi"),
            Event::custom(custom::MODEL_REQUEST, json!({"model": "m", "turn": 0})),
            Event::TextMessageStart { message_id: "m1".into(), role: "assistant".into() },
            Event::TextMessageContent { message_id: "m1".into(), delta: "let me ".into() },
            Event::TextMessageContent { message_id: "m1".into(), delta: "look".into() },
            Event::TextMessageEnd { message_id: "m1".into() },
            Event::ToolCallStart { tool_call_id: "c1".into(), tool_call_name: "bash".into(), parent_message_id: None },
            Event::ToolCallArgs { tool_call_id: "c1".into(), delta: "{\"command\":".into() },
            Event::ToolCallArgs { tool_call_id: "c1".into(), delta: "\"ls\"}".into() },
            Event::ToolCallEnd { tool_call_id: "c1".into() },
            Event::ToolCallResult {
                message_id: "t1".into(),
                tool_call_id: "c1".into(),
                content: "a.txt".into(),
                role: Some("tool".into()),
                is_error: false,
            },
            Event::custom(custom::MODEL_REQUEST, json!({"model": "m", "turn": 1})),
        ];
        let h = History::fold(&events);
        assert_eq!(h.messages.len(), 3, "{:#?}", h.messages);
        assert_eq!(h.messages[1].content[0], Part::Text { text: "let me look".into() });
        assert_eq!(
            h.messages[1].content[1],
            Part::ToolCall { id: "c1".into(), name: "bash".into(), arguments: "{\"command\":\"ls\"}".into() }
        );
        assert!(matches!(&h.messages[2].content[0], Part::ToolResult { call_id, .. } if call_id == "c1"));
        assert_eq!(h.open_run.as_deref(), Some("r"));
        assert_eq!(h.turns_in_run, 2);
        assert!(h.unanswered.is_empty() && h.unfinished.is_empty());
    }

    #[test]
    fn a_tool_call_id_reused_by_a_later_answer_is_a_new_call() {
        let round = |result: &str| {
            vec![
                Event::ToolCallStart {
                    tool_call_id: "call_0".into(),
                    tool_call_name: "bash".into(),
                    parent_message_id: None,
                },
                Event::ToolCallArgs { tool_call_id: "call_0".into(), delta: "{}".into() },
                Event::ToolCallEnd { tool_call_id: "call_0".into() },
                Event::ToolCallResult {
                    message_id: format!("t-{result}"),
                    tool_call_id: "call_0".into(),
                    content: result.into(),
                    role: Some("tool".into()),
                    is_error: false,
                },
            ]
        };
        let mut events = vec![Event::RunStarted { thread_id: "t".into(), run_id: "r".into() }, user("go")];
        events.extend(round("first"));
        events.extend(round("second"));
        let h = History::fold(&events);
        assert!(h.unanswered.is_empty() && h.unfinished.is_empty(), "{:?} {:?}", h.unanswered, h.unfinished);
        // An intent of that id with no result yet is open, whatever earlier calls of that id did.
        events.extend(round("third")[..3].to_vec());
        let h = History::fold(&events);
        assert_eq!(h.unanswered, vec![("call_0".to_owned(), "bash".to_owned())]);
        assert!(h.unfinished.is_empty());
    }

    #[test]
    fn a_crash_leaves_unknown_outcomes_and_unfinished_calls() {
        let events = vec![
            Event::RunStarted { thread_id: "t".into(), run_id: "r".into() },
            user("build"),
            Event::custom(custom::MODEL_REQUEST, json!({})),
            Event::ToolCallStart { tool_call_id: "c1".into(), tool_call_name: "bash".into(), parent_message_id: None },
            Event::ToolCallEnd { tool_call_id: "c1".into() },
            Event::ToolCallStart { tool_call_id: "c2".into(), tool_call_name: "bash".into(), parent_message_id: None },
            Event::TextMessageStart { message_id: "m".into(), role: "assistant".into() },
        ];
        let h = History::fold(&events);
        assert_eq!(h.unanswered, vec![("c1".to_owned(), "bash".to_owned())]);
        assert_eq!(h.unfinished, vec![("c2".to_owned(), "bash".to_owned())]);
        assert_eq!(h.open_text.as_deref(), Some("m"));
        assert!(h.open_run.is_some());
    }

    #[test]
    fn results_of_parallel_calls_fold_in_the_order_of_the_calls() {
        let call = |id: &str| {
            vec![
                Event::ToolCallStart {
                    tool_call_id: id.into(),
                    tool_call_name: "bash".into(),
                    parent_message_id: None,
                },
                Event::ToolCallEnd { tool_call_id: id.into() },
            ]
        };
        let result = |id: &str| Event::ToolCallResult {
            message_id: format!("r-{id}"),
            tool_call_id: id.into(),
            content: id.into(),
            role: Some("tool".into()),
            is_error: false,
        };
        let mut events = vec![user("go"), Event::custom(custom::MODEL_REQUEST, json!({}))];
        events.extend(call("a"));
        events.extend(call("b"));
        events.extend([result("b"), Event::custom(custom::SANDBOX_ATTACH, json!({})), result("a")]);
        let h = History::fold(&events);
        let ids: Vec<&str> = h.messages[2]
            .content
            .iter()
            .filter_map(|p| match p {
                Part::ToolResult { call_id, .. } => Some(call_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
