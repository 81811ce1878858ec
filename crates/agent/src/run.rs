//! The driver of one run: the loop of model calls and tool calls, under a lease kept alive by a
//! heartbeat. Every step is written to the log before the next one acts on it.

use std::time::{Duration, Instant};

use gateway::ir::{ChatRequest, Event as ModelEvent, Message, Part, Role};
use protocol::EnvId;
use serde_json::json;
use tokio::sync::watch;

use crate::event::{Event, custom};
use crate::hands::{Binding, SandboxHolder};
use crate::history::History;
use crate::tools::{self, Outcome};
use crate::{Agent, AgentError};

/// The system prompt of every session.
pub const SYSTEM_PROMPT: &str = include_str!("system_prompt.md");

/// Streamed text and arguments are written in batches at most this far apart.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Why a run stopped before the model was done.
#[derive(Debug)]
enum Stop {
    /// The user asked it to.
    Interrupted,
    /// Another instance holds the session now: this driver must write nothing more.
    LeaseLost,
    /// The run failed (model error, turn limit, store error).
    Failed { code: String, message: String },
}

impl From<AgentError> for Stop {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::LeaseLost => Stop::LeaseLost,
            other => Stop::Failed { code: other.code().to_owned(), message: other.to_string() },
        }
    }
}

/// A recorded tool call: (id, name, arguments).
type Call = (String, String, String);

/// What the heartbeat (or an interrupt on this instance) tells the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Go,
    Interrupt,
    LeaseLost,
}

impl Agent {
    pub(crate) fn spawn_driver(&self, env: EnvId, id: String, run_id: String) {
        let agent = self.clone();
        tokio::spawn(async move { agent.drive(env, id, run_id).await });
    }

    async fn drive(&self, env: EnvId, id: String, run_id: String) {
        let (tx, rx) = watch::channel(Signal::Go);
        let tx = std::sync::Arc::new(tx);
        let key = (env.to_string(), id.clone());
        self.drivers().insert(key.clone(), tx.clone());
        let beat = {
            let agent = self.clone();
            let (env, id) = (env.clone(), id.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(agent.inner.config.lease_ttl / 3).await;
                    match agent.inner.log.heartbeat(&env, &id, &agent.inner.holder, agent.lease_until()).await {
                        Ok(Some(true)) => {
                            let _ = tx.send(Signal::Interrupt);
                        }
                        Ok(Some(false)) => {}
                        Ok(None) => {
                            let _ = tx.send(Signal::LeaseLost);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "session heartbeat failed"),
                    }
                }
            })
        };
        let run_id_of_failed = run_id.clone();
        let outcome = self.turns(&env, &id, rx).await;
        beat.abort();
        self.drivers().remove(&key);
        let end = match outcome {
            Ok(()) => Event::RunFinished { thread_id: id.clone(), run_id },
            Err(Stop::LeaseLost) => {
                tracing::warn!(env = %env, session = %id, "lost a session's lease; another instance drives it");
                return;
            }
            Err(Stop::Interrupted) => {
                Event::RunError { message: "the run was interrupted".to_owned(), code: Some("interrupted".to_owned()) }
            }
            Err(Stop::Failed { code, message }) => Event::RunError { message, code: Some(code) },
        };
        let hook = match &end {
            Event::RunFinished { run_id, .. } => {
                self.inner.platform.event("session.run_finished", Some(&env), json!({"session": id, "run_id": run_id}))
            }
            Event::RunError { code, message } => self.inner.platform.event(
                "session.run_failed",
                Some(&env),
                json!({"session": id, "run_id": run_id_of_failed, "code": code, "message": message}),
            ),
            _ => return,
        };
        match self.inner.log.finish(&env, &id, &self.inner.holder, end, hook, self.now()).await {
            Ok(_) => self.notifier(&env, &id).notify_waiters(),
            Err(e) => tracing::error!(error = %e, env = %env, session = %id, "could not end a run"),
        }
    }

    /// Model call after model call until the model answers without tools.
    /// A turn whose tools may have changed the workspace or the backend ends with a checkpoint, so a
    /// sandbox lost in a later turn is replaced by one that has this turn's work.
    async fn turns(&self, env: &EnvId, id: &str, mut signal: watch::Receiver<Signal>) -> Result<(), Stop> {
        loop {
            check(&signal)?;
            let history = self.close_open(env, id).await?;
            // Calls still waiting for a person (a driver stopped while they waited) come first.
            if !history.awaiting_approval.is_empty() {
                if self.run_calls(env, id, &history.awaiting_approval, true, &mut signal).await? {
                    self.checkpoint(env, id).await?;
                }
                continue;
            }
            if history.turns_in_run >= self.inner.config.max_turns {
                return Err(Stop::Failed {
                    code: "turn_limit".to_owned(),
                    message: format!("the run reached its limit of {} model calls", self.inner.config.max_turns),
                });
            }
            let session = self.session(env, id).await?;
            if let Some(cap) = session.caps.max_turns
                && history.turns_total >= cap as u64
            {
                return Err(Stop::Failed {
                    code: "session_turn_cap".to_owned(),
                    message: format!("the session reached its cap of {cap} model calls"),
                });
            }
            let model = session.model.clone().or(self.inner.config.default_model.clone()).ok_or(AgentError::NoModel)?;
            let caps = gateway::SessionCaps { tokens: session.caps.max_tokens, cost: session.caps.max_cost };
            let history = self.compact_if_full(env, id, &model, caps, history).await?;
            self.append(
                env,
                id,
                vec![Event::custom(custom::MODEL_REQUEST, json!({"model": model, "turn": history.turns_in_run}))],
            )
            .await?;
            let req = chat_request(model, SYSTEM_PROMPT, history.messages, tools::specs());
            let calls = self.stream_answer(env, id, caps, req, &mut signal).await?;
            if calls.is_empty() {
                break;
            }
            if self.run_calls(env, id, &calls, false, &mut signal).await? {
                self.checkpoint(env, id).await?;
            }
        }
        Ok(())
    }

    /// Compacts the conversation when the next prompt would fill more than `compact_at` of the model's
    /// context window: everything before the latest user message (that no compaction covers yet) is
    /// summarized by the model, and the summary — a durable `vibebase.compaction` event; the raw log is
    /// kept — stands in for it from then on. The cut is at a user message, so a tool call is never
    /// separated from its result.
    async fn compact_if_full(
        &self,
        env: &EnvId,
        id: &str,
        model: &str,
        caps: gateway::SessionCaps,
        history: History,
    ) -> Result<History, Stop> {
        let Some(window) = self.inner.gateway.config().model(model).map(|m| m.context_window) else {
            return Ok(history);
        };
        let probe = chat_request(model.to_owned(), SYSTEM_PROMPT, history.messages.clone(), tools::specs());
        if (probe.estimate_input_tokens() as f64) < window as f64 * self.inner.config.compact_at {
            return Ok(history);
        }
        let events = self.inner.log.read_all(env, id).await?;
        let latest_user = events
            .iter()
            .rev()
            .find(|(_, e)| matches!(e, Event::Custom { name, .. } if name == custom::USER_MESSAGE))
            .map(|(s, _)| *s);
        let Some(cut) = latest_user.filter(|c| c - 1 > history.compacted_up_to) else { return Ok(history) };
        let before: Vec<(i64, Event)> = events.iter().filter(|(s, _)| *s < cut).cloned().collect();
        let mut messages = History::fold_log(&before).messages;
        if messages.is_empty() {
            return Ok(history);
        }
        messages.push(Message { role: Role::User, content: vec![Part::Text { text: SUMMARIZE.to_owned() }] });
        let req = chat_request(model.to_owned(), SUMMARIZER, messages, Vec::new());
        let summary = match self.inner.gateway.chat_capped(env, Some(id), caps, req).await {
            Ok(answer) => answer.collect().await.map_err(|e| Stop::Failed { code: e.code, message: e.message })?.text,
            Err(e) => return Err(Stop::Failed { code: e.code, message: e.message }),
        };
        let event = Event::custom(custom::COMPACTION, json!({"summary": summary, "upTo": cut - 1}));
        self.append(env, id, vec![event]).await?;
        Ok(History::fold_log(&self.inner.log.read_all(env, id).await?))
    }

    /// Runs recorded tool calls (id, name, arguments), asking a person first where the session says so
    /// (`requested`: the question was asked already, by a driver that stopped). The calls of one hand
    /// (tools without a sandbox go with the main hand) run in order; different hands run concurrently.
    /// Every call's intent is in the log already (the answer's events were written before this runs).
    /// Returns whether any of them may have changed the workspace.
    async fn run_calls(
        &self,
        env: &EnvId,
        id: &str,
        calls: &[(String, String, String)],
        requested: bool,
        signal: &mut watch::Receiver<Signal>,
    ) -> Result<bool, Stop> {
        let mut groups: Vec<(String, Vec<Call>)> = Vec::new();
        for call in calls {
            let hand = match tools::split_hand(&call.1, &call.2) {
                Ok((Some(hand), _)) => hand,
                _ => tools::MAIN_HAND.to_owned(),
            };
            match groups.iter_mut().find(|(h, _)| *h == hand) {
                Some((_, group)) => group.push(call.clone()),
                None => groups.push((hand, vec![call.clone()])),
            }
        }
        let starting = std::sync::Arc::new(tokio::sync::Mutex::new(()));
        let runs = groups.iter().map(|(_, group)| {
            let (mut signal, starting) = (signal.clone(), starting.clone());
            async move { self.run_hand_calls(env, id, group, requested, &mut signal, starting).await }
        });
        let mut changed = false;
        let mut stop = None;
        for outcome in futures_util::future::join_all(runs).await {
            match outcome {
                Ok(c) => changed |= c,
                // A lost lease outranks the rest: this driver must write nothing more.
                Err(Stop::LeaseLost) => stop = Some(Stop::LeaseLost),
                Err(e) if stop.is_none() => stop = Some(e),
                Err(_) => {}
            }
        }
        match stop {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// Runs the calls of one hand in order (see [`Self::run_calls`]).
    async fn run_hand_calls(
        &self,
        env: &EnvId,
        id: &str,
        calls: &[(String, String, String)],
        requested: bool,
        signal: &mut watch::Receiver<Signal>,
        starting: std::sync::Arc<tokio::sync::Mutex<()>>,
    ) -> Result<bool, Stop> {
        let mut changed = false;
        for (i, (call_id, name, arguments)) in calls.iter().enumerate() {
            if *signal.borrow() != Signal::Go {
                self.not_run(env, id, &calls[i..], "not run: the run was interrupted").await?;
                check(signal)?;
            }
            let session = self.session(env, id).await?;
            if session.approval_tools.contains(name) && !session.always_allowed.contains(name) {
                if !requested {
                    let ask = json!({"toolCallId": call_id, "toolName": name, "arguments": arguments});
                    self.append(env, id, vec![Event::custom(custom::APPROVAL_REQUESTED, ask)]).await?;
                }
                let Some(decision) = self.decision(env, id, call_id, signal).await? else {
                    self.not_run(env, id, &calls[i..], "not run: the run was interrupted while it waited for approval")
                        .await?;
                    check(signal)?;
                    continue;
                };
                let decided = Event::custom(custom::APPROVAL, json!({"toolCallId": call_id, "decision": decision}));
                if decision == "deny" {
                    // The decision and its result in one write: a denied call is never left open.
                    let denied = result(call_id, Outcome::error("denied: a person did not allow this tool call"));
                    self.append(env, id, vec![decided, denied]).await?;
                    continue;
                }
                self.append(env, id, vec![decided]).await?;
            }
            let holder = LoopHolder { agent: self, env, id, starting: starting.clone() };
            let outcome = self.run_tool_for(env, &holder, name, arguments).await?;
            changed |= tools::mutates_workspace(name) || tools::changes_backend(name);
            self.append(env, id, vec![result(call_id, outcome)]).await?;
        }
        Ok(changed)
    }

    /// Results for recorded calls that will not run, so none is left open.
    async fn not_run(&self, env: &EnvId, id: &str, calls: &[(String, String, String)], why: &str) -> Result<(), Stop> {
        let results = calls.iter().map(|(c, _, _)| result(c, Outcome::error(why))).collect();
        self.append(env, id, results).await?;
        Ok(())
    }

    /// Waits for a person's decision on a call; `None` when the run is told to stop meanwhile.
    async fn decision(
        &self,
        env: &EnvId,
        id: &str,
        call: &str,
        signal: &mut watch::Receiver<Signal>,
    ) -> Result<Option<String>, Stop> {
        loop {
            let notify = self.notifier(env, id);
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(d) = self.inner.log.decision(env, id, call).await? {
                return Ok(Some(d));
            }
            if *signal.borrow() != Signal::Go {
                return Ok(None);
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = signal.changed() => {}
                // Decisions taken on another instance are found by looking again.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Folds the log and closes what a stopped driver left open: a text message never ended, tool calls
    /// cut off mid-arguments (never run), and intents with no result (outcome unknown: reported to the
    /// model as interrupted, never run again).
    async fn close_open(&self, env: &EnvId, id: &str) -> Result<History, AgentError> {
        let events = self.inner.log.read_all(env, id).await?;
        let history = History::fold_log(&events);
        let mut fix = Vec::new();
        if let Some(m) = &history.open_text {
            fix.push(Event::TextMessageEnd { message_id: m.clone() });
        }
        for (call, _) in &history.unfinished {
            fix.push(Event::ToolCallEnd { tool_call_id: call.clone() });
            fix.push(result(
                call,
                Outcome::error("not run: the model's answer was cut off before this call was complete"),
            ));
        }
        for (call, _) in &history.unanswered {
            fix.push(result(
                call,
                Outcome::error(
                    "interrupted: the platform stopped while this tool ran, so its outcome is unknown. \
                     Check the workspace before running it again.",
                ),
            ));
        }
        if fix.is_empty() {
            return Ok(history);
        }
        self.append(env, id, fix).await?;
        let events = self.inner.log.read_all(env, id).await?;
        Ok(History::fold_log(&events))
    }

    /// Calls the model and writes its answer as it streams; returns the complete tool calls (id, name,
    /// arguments), each recorded as an intent (TOOL_CALL_END) before this returns.
    async fn stream_answer(
        &self,
        env: &EnvId,
        id: &str,
        caps: gateway::SessionCaps,
        req: ChatRequest,
        signal: &mut watch::Receiver<Signal>,
    ) -> Result<Vec<(String, String, String)>, Stop> {
        let mut answer = match self.inner.gateway.chat_capped(env, Some(id), caps, req).await {
            Ok(a) => a,
            Err(e) => return Err(Stop::Failed { code: e.code, message: e.message }),
        };
        let message_id = format!("msg_{}", self.inner.platform.random_id(20));
        let mut text_open = false;
        let mut call_ids: Vec<String> = Vec::new();
        let mut batch: Vec<Event> = Vec::new();
        // When the unwritten batch got its first event.
        let mut pending_since: Option<Instant> = None;
        let failure = loop {
            let next = tokio::select! {
                e = answer.next() => e,
                _ = signal.changed() => {
                    if *signal.borrow() == Signal::Go { continue }
                    break None;
                }
            };
            match next {
                None => break None,
                Some(Err(e)) => break Some(Stop::Failed { code: e.code, message: e.message }),
                Some(Ok(event)) => match event {
                    ModelEvent::TextDelta { text } if !text.is_empty() => {
                        if !text_open {
                            text_open = true;
                            batch.push(Event::TextMessageStart {
                                message_id: message_id.clone(),
                                role: "assistant".into(),
                            });
                        }
                        match batch.last_mut() {
                            Some(Event::TextMessageContent { delta, .. }) => delta.push_str(&text),
                            _ => batch.push(Event::TextMessageContent { message_id: message_id.clone(), delta: text }),
                        }
                    }
                    ModelEvent::ToolCallStart { index, id: _, name } => {
                        // The loop's own id, never the provider's: providers reuse ids across answers,
                        // and a session's ids must be unique (results, approvals and AG-UI clients
                        // match on them). The model gets these ids back with the history.
                        let call = format!("call_{}", self.inner.platform.random_id(20));
                        while call_ids.len() <= index {
                            call_ids.push(String::new());
                        }
                        call_ids[index].clone_from(&call);
                        batch.push(Event::ToolCallStart {
                            tool_call_id: call,
                            tool_call_name: name,
                            parent_message_id: Some(message_id.clone()),
                        });
                    }
                    ModelEvent::ToolCallDelta { index, arguments } if !arguments.is_empty() => {
                        let Some(call) = call_ids.get(index).cloned() else { continue };
                        match batch.last_mut() {
                            Some(Event::ToolCallArgs { tool_call_id, delta }) if *tool_call_id == call => {
                                delta.push_str(&arguments)
                            }
                            _ => batch.push(Event::ToolCallArgs { tool_call_id: call, delta: arguments }),
                        }
                    }
                    _ => {}
                },
            }
            if batch.is_empty() {
                continue;
            }
            let since = *pending_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= FLUSH_EVERY {
                self.append(env, id, std::mem::take(&mut batch)).await?;
                pending_since = None;
            }
        };
        let stopped = failure.is_some() || *signal.borrow() != Signal::Go;
        if stopped {
            // What streamed so far stays in the log; close_open ends it before anything else runs.
            drop(answer);
            self.append(env, id, batch).await?;
            self.close_open(env, id).await?;
            check(signal)?;
            return Err(failure.unwrap_or(Stop::Interrupted));
        }
        let completion = answer.completion().clone();
        if text_open {
            batch.push(Event::TextMessageEnd { message_id });
        }
        let mut calls = Vec::new();
        for (i, call) in completion.tool_calls.iter().enumerate() {
            let Some(call_id) = call_ids.get(i).filter(|c| !c.is_empty()).cloned() else { continue };
            batch.push(Event::ToolCallEnd { tool_call_id: call_id.clone() });
            calls.push((call_id, call.name.clone(), call.arguments.clone()));
        }
        batch.push(Event::custom(
            custom::MODEL_RESPONSE,
            json!({"usage": completion.usage, "finish": completion.finish}),
        ));
        self.append(env, id, batch).await?;
        Ok(calls)
    }

    /// Records a checkpoint: the workspace snapshot of the main hand (so a fresh sandbox of any hand,
    /// after a crash or a revert, starts from it; other hands' workspaces are not kept), the env's
    /// migration position and its published deployment.
    /// Installed dependencies (`node_modules`) are left out: they come back from the template or the
    /// lockfile. Without a live main sandbox (it died in this turn, or only other hands were used) the
    /// checkpoint keeps the last snapshot.
    async fn checkpoint(&self, env: &EnvId, id: &str) -> Result<(), AgentError> {
        let session = self.session(env, id).await?;
        let mut snapshot = session.workspace_snapshot.clone();
        if let (Some(sandboxes), Some(sb)) = (&self.inner.sandboxes, session.sandbox_id) {
            match sandboxes.snapshot(env, &sb, CHECKPOINT_EXCLUDES).await {
                Ok(snap) => {
                    self.inner.log.set_sandbox(env, id, Some(&sb), Some(&snap.id)).await?;
                    snapshot = Some(snap.id);
                }
                Err(e) => tracing::warn!(error = %e, env = %env, session = %id, "workspace checkpoint failed"),
            }
        }
        let position = match self.inner.backend.get() {
            Some(backend) => match backend.position(env).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, env = %env, session = %id, "checkpoint: backend position unknown");
                    tools::BackendPosition::default()
                }
            },
            None => tools::BackendPosition::default(),
        };
        let value = json!({"snapshot": snapshot, "migration": position.migration, "deployment": position.deployment});
        // AG-UI clients follow the app's state through STATE_SNAPSHOT; the custom event is the checkpoint.
        let state = Event::StateSnapshot {
            snapshot: json!({
                "workspace": {"snapshot": snapshot},
                "database": {"migration": position.migration},
                "site": {"deployment": position.deployment},
            }),
        };
        self.append(env, id, vec![Event::custom(custom::CHECKPOINT, value), state]).await?;
        Ok(())
    }
}

/// A run keeps its hands' sandboxes in the session's row and `agent_hands` (and says so in its log), so
/// a resumed run, on any instance, finds them.
struct LoopHolder<'a> {
    agent: &'a Agent,
    env: &'a EnvId,
    id: &'a str,
    /// Shared by the calls of one answer.
    starting: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl SandboxHolder for LoopHolder<'_> {
    fn session(&self) -> &str {
        self.id
    }

    fn actor(&self) -> platform::Actor {
        platform::Actor { name: format!("agent:{}", self.id), request_id: format!("agent-{}", self.id) }
    }

    fn start_lock(&self) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.starting.clone()
    }

    async fn binding(&self, hand: &str) -> Result<Binding, AgentError> {
        let b = self.agent.inner.log.bindings(self.env, self.id).await?;
        let sandbox = b.hands.iter().find(|(h, _)| h == hand).map(|(_, sb)| sb.clone());
        Ok(Binding { sandbox, snapshot: b.snapshot, attached: b.hands.len() })
    }

    async fn attach(&self, hand: &str, sandbox: &str) -> Result<(), AgentError> {
        self.agent.inner.log.set_hand(self.env, self.id, hand, Some(sandbox), self.agent.now()).await?;
        let attach = Event::custom(custom::SANDBOX_ATTACH, json!({"sandbox": sandbox, "hand": hand}));
        self.agent.append(self.env, self.id, vec![attach]).await?;
        Ok(())
    }

    async fn detach(&self, hand: &str, sandbox: &str, reason: &str) -> Result<(), AgentError> {
        self.agent.inner.log.set_hand(self.env, self.id, hand, None, self.agent.now()).await?;
        let detach = Event::custom(custom::SANDBOX_DETACH, json!({"sandbox": sandbox, "hand": hand, "reason": reason}));
        self.agent.append(self.env, self.id, vec![detach]).await?;
        Ok(())
    }
}

/// What a checkpoint's workspace snapshot leaves out.
const CHECKPOINT_EXCLUDES: &[&str] = &["node_modules"];

/// What the summarizing model call is told.
const SUMMARIZER: &str = "You summarize a conversation between a user and a coding agent so the agent can go on \
     without it: the user's goals, decisions taken, files and database objects created or changed, \
     deployments, and what is still open. Be concise and factual.";
const SUMMARIZE: &str = "Summarize the conversation above.";

fn chat_request(model: String, system: &str, messages: Vec<Message>, tools: Vec<gateway::ir::Tool>) -> ChatRequest {
    ChatRequest {
        model,
        system: Some(system.to_owned()),
        messages,
        tools,
        tool_choice: None,
        max_tokens: None,
        temperature: None,
        top_p: None,
        stop: Vec::new(),
        extra: Default::default(),
    }
}

fn result(call_id: &str, outcome: Outcome) -> Event {
    Event::ToolCallResult {
        message_id: format!("res_{call_id}"),
        tool_call_id: call_id.to_owned(),
        content: outcome.content,
        role: Some("tool".to_owned()),
        is_error: outcome.is_error,
    }
}

fn check(signal: &watch::Receiver<Signal>) -> Result<(), Stop> {
    match *signal.borrow() {
        Signal::Go => Ok(()),
        Signal::Interrupt => Err(Stop::Interrupted),
        Signal::LeaseLost => Err(Stop::LeaseLost),
    }
}
