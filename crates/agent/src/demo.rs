//! The demo: one prompt that builds a todo app with sign-in and per-user row-level security, played by
//! the built-in `replay` model from a recorded transcript (`crates/agent/demo/transcript.json`), so it
//! runs without a model provider and gives the same app every time. `vibebase demo` drives it.
//!
//! The transcript was made with the gateway's `record` setting through the real loop, tools and
//! sandbox (see `tests/demo/README.md`); its requests are matched by content, so a different system
//! prompt, tool set or tool output is a request it has no answer for, and the run fails loudly.

/// The model name of the built-in replay model.
pub const MODEL: &str = "vibebase-demo";

/// The recordings the built-in model plays back.
pub const TRANSCRIPT: &str = include_str!("../demo/transcript.json");

/// The demo's one prompt (the transcript answers exactly this).
pub const PROMPT: &str = "Build a todo app: people sign up and sign in with email and password, each \
     person sees and manages only their own todos, and the page shows how many of your todos are still \
     open, counted by a cloud function. Deploy it.";
