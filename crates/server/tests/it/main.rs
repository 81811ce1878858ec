#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod appdb;
mod blobs;
mod delete;
mod envs;
mod functions;
mod gotrue;
mod harness;
mod ledger;
mod llm;
mod matrix;
mod surfaces;
mod webhooks;
