//! The auth library against a real env database: SQLite by default, a fresh PostgreSQL database when
//! `VIBEBASE_TEST_DATABASE_URL` is set (created for the test and dropped after), so every query runs on
//! both dialects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod flows;
