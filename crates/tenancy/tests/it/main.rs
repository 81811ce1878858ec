//! Integration tests for the `tenancy` crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod policy;
