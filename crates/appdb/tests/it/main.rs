#![allow(clippy::unwrap_used, clippy::expect_used)]

mod parser;
mod translate;
