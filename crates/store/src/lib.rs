//! Platform persistence. Metadata (envs, keys, principals, audit, usage ledger, webhooks) lives in
//! SQLite by default or PostgreSQL for scale-out, behind [`Db`]; blobs live in an [`object_store`]
//! backend (local filesystem by default, S3-compatible for scale-out), behind [`Blobs`].

pub mod blob;
pub mod db;
pub mod schema;

pub use blob::{BlobError, BlobMeta, BlobRead, Blobs, Written};
pub use db::{Conn, Db, Dialect, PgPool, Row, StoreError, Value, sqlite_form};
