#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod appdb;
mod blobs;
mod delete;
mod domains;
mod envs;
mod functions;
mod gotrue;
mod harness;
mod hosting;
mod idempotency;
mod ledger;
mod llm;
mod matrix;
mod mcp;
mod sessions;
mod storage;
mod surfaces;
mod webhooks;
