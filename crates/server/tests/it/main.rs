#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod blobs;
mod delete;
mod envs;
mod gotrue;
mod harness;
mod ledger;
mod matrix;
mod surfaces;
mod webhooks;
