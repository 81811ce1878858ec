//! Supabase Storage for every environment.
//!
//! Buckets and object metadata are rows of `storage.buckets` / `storage.objects` in the env's own
//! database (Supabase's columns), so the env's migrations put policies on them with
//! `CREATE POLICY … ON storage.objects` and every request runs as its role: PostgreSQL enforces the
//! policies itself; on SQLite the stored, translated policy expressions are applied here through
//! [`appdb::sqlgen::stored_policy`] (the one policy engine the data API uses too).
//!
//! Object bytes live in the platform's object store ([`store::Blobs`]), each version under a fresh
//! random key (`envs/<env>/storage/<version>`). A write streams the bytes to a new key first, then
//! switches the metadata row in one transaction and only then deletes the replaced version: readers
//! see the old object or the new one, concurrent overwrites are last-writer-wins, and a failed or
//! refused upload leaves no row (its bytes are deleted).

pub mod names;
pub mod schema;
pub mod sign;
pub mod tus;

use appdb::sqlgen::{Cmd, stored_policy};
use appdb::{AppDbError, AppDbs, RequestAuth, Role};
use protocol::{EnvId, Meter};
use serde_json::{Value, json};
use store::{Conn, Dialect, StoreError, Value as V};

pub use schema::schema_ddl;

/// Largest object when neither the bucket nor the env sets a smaller limit (S3's single-object limit).
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Most names one remove or signing request may name.
pub const MAX_BATCH: usize = 1000;
/// Longest expiry of a signed URL (one year, in seconds).
pub const MAX_EXPIRY_SECS: i64 = 365 * 24 * 3600;
/// How long a signed upload URL is valid (as on Supabase: two hours).
pub const UPLOAD_URL_SECS: i64 = 2 * 3600;

const TABLES: [&str; 2] = ["storage.objects", "storage.buckets"];

/// Why a storage operation failed. Each variant maps to Supabase Storage's status and code.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The bucket does not exist (or the caller may not see it).
    #[error("Bucket not found")]
    NoSuchBucket,
    /// The object does not exist (or the caller may not see it).
    #[error("Object not found")]
    NoSuchKey,
    /// A bucket or object of that name exists already.
    #[error("The resource already exists")]
    Duplicate,
    /// A bucket with objects cannot be deleted.
    #[error("The bucket you tried to delete is not empty")]
    BucketNotEmpty,
    /// The bucket id is not one Supabase accepts.
    #[error("{0}")]
    InvalidBucketName(String),
    /// The object name is not one Supabase accepts (traversal, odd characters, too long).
    #[error("{0}")]
    InvalidKey(String),
    /// The upload is larger than the bucket's (or the platform's) file size limit.
    #[error("The object exceeded the maximum allowed size")]
    EntityTooLarge,
    /// The upload's content type is not in the bucket's allowed MIME types.
    #[error("mime type {0} is not supported")]
    InvalidMimeType(String),
    /// A row-level security policy refused the operation.
    #[error("{0}")]
    AccessDenied(String),
    /// A signed URL's token is malformed, forged, expired or for another object.
    #[error("{0}")]
    InvalidSignature(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// The env's hard `storage_bytes` quota leaves no room for this upload.
    #[error("storage quota exceeded: {used} of {limit} bytes used")]
    QuotaExceeded { used: i64, limit: i64 },
    /// The request body could not be read (client went away, bad framing).
    #[error("{0}")]
    Body(String),
    /// The database or object store failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// A resumable upload id that does not exist, or belongs to another env or caller.
    #[error("Upload not found")]
    NoSuchUpload,
    /// A resumable upload that expired (its parts are deleted).
    #[error("Upload expired")]
    UploadExpired,
    /// A resumable upload's `Upload-Offset` is not where the upload stands (or another request
    /// moved it first).
    #[error("Upload-Offset conflict: the upload is at offset {0}")]
    OffsetConflict(u64),
    /// A resumable upload is being assembled into its object right now.
    #[error("The upload is being completed; retry later")]
    UploadLocked,
    /// A dry run's deliberate rollback (checking policies before signing an upload URL); never
    /// leaves the crate.
    #[error("dry run")]
    DryRun,
}

impl StorageError {
    /// HTTP status, as Supabase Storage answers.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoSuchBucket | Self::NoSuchKey | Self::NoSuchUpload => 404,
            Self::UploadExpired => 410,
            Self::OffsetConflict(_) => 409,
            Self::UploadLocked => 423,
            Self::Duplicate | Self::BucketNotEmpty => 409,
            Self::InvalidBucketName(_)
            | Self::InvalidKey(_)
            | Self::InvalidSignature(_)
            | Self::InvalidRequest(_)
            | Self::Body(_) => 400,
            Self::EntityTooLarge => 413,
            Self::InvalidMimeType(_) => 415,
            Self::AccessDenied(_) => 403,
            Self::QuotaExceeded { .. } => 402,
            Self::Internal(_) | Self::DryRun => 500,
        }
    }

    /// Supabase Storage's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoSuchBucket => "NoSuchBucket",
            Self::NoSuchKey => "NoSuchKey",
            Self::NoSuchUpload => "NoSuchUpload",
            Self::UploadExpired => "UploadExpired",
            Self::OffsetConflict(_) => "InvalidUploadOffset",
            Self::UploadLocked => "ResourceLocked",
            Self::Duplicate => "Duplicate",
            Self::BucketNotEmpty => "InvalidRequest",
            Self::InvalidBucketName(_) => "InvalidBucketName",
            Self::InvalidKey(_) => "InvalidKey",
            Self::EntityTooLarge => "EntityTooLarge",
            Self::InvalidMimeType(_) => "InvalidMimeType",
            Self::AccessDenied(_) => "AccessDenied",
            Self::InvalidSignature(_) => "InvalidSignature",
            Self::InvalidRequest(_) | Self::Body(_) => "InvalidRequest",
            Self::QuotaExceeded { .. } => "quota_exceeded_storage_bytes",
            Self::Internal(_) | Self::DryRun => "InternalError",
        }
    }
}

fn rls_denied() -> StorageError {
    StorageError::AccessDenied("new row violates row-level security policy".to_owned())
}

impl From<StoreError> for StorageError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Conflict => Self::Duplicate,
            StoreError::Postgres(pg) if pg.code() == Some(&postgres_code::INSUFFICIENT_PRIVILEGE) => rls_denied(),
            _ => Self::Internal(e.to_string()),
        }
    }
}

mod postgres_code {
    pub use postgres::error::SqlState;
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState::INSUFFICIENT_PRIVILEGE;
}

impl From<AppDbError> for StorageError {
    fn from(e: AppDbError) -> Self {
        match e {
            AppDbError::Store(s) => s.into(),
            AppDbError::Postgres(pg) if pg.code() == Some(&postgres_code::INSUFFICIENT_PRIVILEGE) => rls_denied(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<store::BlobError> for StorageError {
    fn from(e: store::BlobError) -> Self {
        match e {
            store::BlobError::TooLarge(_) => Self::EntityTooLarge,
            store::BlobError::Body(m) => Self::Body(m),
            store::BlobError::BadRange => Self::InvalidRequest("range not satisfiable".to_owned()),
            other => Self::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A bucket row.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub id: String,
    pub name: String,
    pub owner: Option<String>,
    pub public: bool,
    pub file_size_limit: Option<i64>,
    pub allowed_mime_types: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Bucket {
    /// As Supabase's `GET /bucket` answers it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "owner": self.owner.clone().unwrap_or_default(),
            "public": self.public,
            "type": "STANDARD",
            "file_size_limit": self.file_size_limit,
            "allowed_mime_types": if self.allowed_mime_types.is_empty() { Value::Null } else { json!(self.allowed_mime_types) },
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// An object row.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub id: String,
    pub bucket_id: String,
    pub name: String,
    pub owner: Option<String>,
    /// The version: names the blob holding the bytes.
    pub version: String,
    /// `size`, `mimetype`, `eTag`, `cacheControl`, `lastModified`, `contentLength`, `httpStatusCode`.
    pub metadata: Value,
    pub user_metadata: Value,
    pub created_at: String,
    pub updated_at: String,
    pub last_accessed_at: String,
}

impl Object {
    pub fn size(&self) -> i64 {
        self.metadata.get("size").and_then(Value::as_i64).unwrap_or(0)
    }
    pub fn mimetype(&self) -> &str {
        self.metadata.get("mimetype").and_then(Value::as_str).unwrap_or("application/octet-stream")
    }
    pub fn etag(&self) -> &str {
        self.metadata.get("eTag").and_then(Value::as_str).unwrap_or("")
    }
    pub fn cache_control(&self) -> &str {
        self.metadata.get("cacheControl").and_then(Value::as_str).unwrap_or("no-cache")
    }

    /// As Supabase's list and remove answers show an object.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "bucket_id": self.bucket_id,
            "owner": self.owner.clone().unwrap_or_default(),
            "owner_id": self.owner.clone().unwrap_or_default(),
            "id": self.id,
            "version": self.version,
            "updated_at": self.updated_at,
            "created_at": self.created_at,
            "last_accessed_at": self.last_accessed_at,
            "metadata": self.metadata,
            "user_metadata": self.user_metadata,
        })
    }

    /// As Supabase's `GET /object/info/…` answers.
    pub fn info_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "bucket_id": self.bucket_id,
            "size": self.size(),
            "content_type": self.mimetype(),
            "cache_control": self.cache_control(),
            "etag": self.etag(),
            "metadata": self.user_metadata,
            "last_modified": self.updated_at,
            "created_at": self.created_at,
        })
    }
}

/// What an upload says about itself.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    pub content_type: String,
    pub cache_control: String,
    pub upsert: bool,
    pub user_metadata: Option<Value>,
    /// The declared length, when the client sent one (checked against limits before any byte is read).
    pub content_length: Option<u64>,
    /// The end user the object belongs to (`owner`, `owner_id`).
    pub owner: Option<String>,
}

/// The owner an upload by `auth` gets: the end user's id, none for keys.
pub fn owner_of(auth: &RequestAuth) -> Option<String> {
    auth.sub().filter(|_| auth.role == appdb::RequestRole::Authenticated).map(str::to_owned)
}

/// Options of `POST /object/list/{bucket}`.
#[derive(Debug, Clone)]
pub struct ListOptions {
    pub prefix: String,
    pub limit: usize,
    pub offset: usize,
    pub search: String,
    pub sort_column: String,
    pub sort_desc: bool,
}

/// Who is asking: a request role (RLS applies), or trusted platform code (public buckets, signed URLs).
#[derive(Debug, Clone)]
pub enum Access {
    Request(RequestAuth),
    Trusted,
}

impl Access {
    fn role(&self) -> Role {
        match self {
            Self::Request(a) => Role::Request(a.clone()),
            Self::Trusted => Role::Owner,
        }
    }
    fn auth(&self) -> RequestAuth {
        match self {
            Self::Request(a) => a.clone(),
            Self::Trusted => RequestAuth::service_role(),
        }
    }

    /// The owner what this caller writes gets: the end user's id, none for keys and trusted code.
    pub fn owner(&self) -> Option<String> {
        match self {
            Self::Request(a) => owner_of(a),
            Self::Trusted => None,
        }
    }
}

/// The storage service of every env. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    appdb: AppDbs,
}

fn sql(d: Dialect, pg: &str) -> String {
    match d {
        Dialect::Postgres => pg.to_owned(),
        Dialect::Sqlite => {
            store::sqlite_form(&pg.replace("array_to_json(allowed_mime_types)", "allowed_mime_types"), &TABLES)
        }
    }
}

/// `AND (policy)` for SQLite when RLS applies to `cmd`, else empty.
fn filter(c: &mut dyn Conn, auth: &RequestAuth, table: &str, cmd: Cmd) -> Result<String> {
    Ok(stored_policy(c, table, auth, cmd, true)?.map(|p| format!(" AND ({p})")).unwrap_or_default())
}

/// SQLite: the row `id` must pass the WITH CHECK of `cmd`'s policies.
fn check(c: &mut dyn Conn, auth: &RequestAuth, table: &str, cmd: Cmd, id: &str) -> Result<()> {
    if let Some(p) = stored_policy(c, table, auth, cmd, false)? {
        let q = format!("SELECT 1 FROM \"{table}\" WHERE id = $1 AND ({p})");
        if c.query_opt(&q, &[id.into()])?.is_none() {
            return Err(rls_denied());
        }
    }
    Ok(())
}

const BUCKET_COLS: &str = "id, name, owner::text, public, file_size_limit, array_to_json(allowed_mime_types)::text, \
                           auth.vb_ts(created_at), auth.vb_ts(updated_at)";
const OBJECT_COLS: &str = "id::text, bucket_id, name, owner::text, version, metadata::text, user_metadata::text, \
                           auth.vb_ts(created_at), auth.vb_ts(updated_at), auth.vb_ts(last_accessed_at)";

fn bucket_row(r: &store::Row) -> Result<Bucket> {
    let mimes = r.opt_text(5)?.and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok()).unwrap_or_default();
    Ok(Bucket {
        id: r.text(0)?,
        name: r.text(1)?,
        owner: r.opt_text(2)?,
        public: r.int(3)? != 0,
        file_size_limit: r.opt_int(4)?,
        allowed_mime_types: mimes,
        created_at: r.text(6)?,
        updated_at: r.text(7)?,
    })
}

fn object_row(r: &store::Row) -> Result<Object> {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
    Ok(Object {
        id: r.text(0)?,
        bucket_id: r.text(1)?,
        name: r.text(2)?,
        owner: r.opt_text(3)?,
        version: r.opt_text(4)?.unwrap_or_default(),
        metadata: json(r.opt_text(5)?),
        user_metadata: json(r.opt_text(6)?),
        created_at: r.text(7)?,
        updated_at: r.text(8)?,
        last_accessed_at: r.text(9)?,
    })
}

/// The allowed MIME types as the bound value of each dialect (PostgreSQL array literal or JSON).
fn mimes_value(d: Dialect, mimes: &Option<Vec<String>>) -> V {
    match mimes {
        None => V::Null,
        Some(m) if m.is_empty() => V::Null,
        Some(m) => match d {
            Dialect::Postgres => V::Text(format!("{{{}}}", m.join(","))),
            Dialect::Sqlite => V::Text(json!(m).to_string()),
        },
    }
}

fn opt_int(v: Option<i64>) -> V {
    v.map_or(V::Null, V::Int)
}

fn opt_text(v: Option<String>) -> V {
    v.map_or(V::Null, V::Text)
}

/// A new bucket.
#[derive(Debug, Clone, Default)]
pub struct NewBucket {
    pub id: String,
    pub public: bool,
    pub file_size_limit: Option<i64>,
    pub allowed_mime_types: Option<Vec<String>>,
}

/// A change to a bucket: fields left `None` stay as they are.
#[derive(Debug, Clone, Default)]
pub struct BucketChange {
    pub public: Option<bool>,
    pub file_size_limit: Option<Option<i64>>,
    pub allowed_mime_types: Option<Option<Vec<String>>>,
}

impl Storage {
    pub fn new(appdb: AppDbs) -> Self {
        Self { appdb }
    }

    /// The schema hook to register with appdb (before serving).
    pub fn schema_hook() -> appdb::SchemaHook {
        appdb::SchemaHook {
            name: "storage".to_owned(),
            sqlite: schema_ddl(Dialect::Sqlite).to_owned(),
            postgres: schema_ddl(Dialect::Postgres).to_owned(),
        }
    }

    fn platform(&self) -> &platform::Platform {
        self.appdb.platform()
    }

    fn now(&self) -> String {
        let ms = self.platform().clock().now_ms();
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
    }

    /// The object-store key of an object version.
    pub fn blob_key(&self, env: &EnvId, version: &str) -> String {
        format!("{}storage/{version}", self.platform().layout(env).object_prefix)
    }

    /// The secret signed URLs of `env` are keyed with.
    fn signing_secret(&self, env: &EnvId) -> String {
        self.platform().derive_secret(&format!("storage-sign:{env}"))
    }

    async fn tx<T, F>(&self, env: &EnvId, role: Role, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T> + Send + 'static,
    {
        self.appdb.with_conn(env, role, f).await
    }

    // ---------------------------------------------------------------------------------------------
    // Buckets

    pub async fn list_buckets(&self, env: &EnvId, access: &Access) -> Result<Vec<Bucket>> {
        // Reads never create the env's database.
        if !self.appdb.exists(env).await? {
            return Ok(vec![]);
        }
        let auth = access.auth();
        self.tx(env, access.role(), move |c| {
            let f = filter(c, &auth, "storage.buckets", Cmd::Select)?;
            let q = format!(
                "{} WHERE 1 = 1{f} ORDER BY name",
                sql(c.dialect(), &format!("SELECT {BUCKET_COLS} FROM storage.buckets"))
            );
            c.query(&q, &[])?.iter().map(bucket_row).collect()
        })
        .await
    }

    pub async fn get_bucket(&self, env: &EnvId, access: &Access, id: &str) -> Result<Bucket> {
        names::bucket_id(id).map_err(|_| StorageError::NoSuchBucket)?;
        if !self.appdb.exists(env).await? {
            return Err(StorageError::NoSuchBucket);
        }
        let (auth, id) = (access.auth(), id.to_owned());
        self.tx(env, access.role(), move |c| {
            let f = filter(c, &auth, "storage.buckets", Cmd::Select)?;
            let q =
                format!("{}{f}", sql(c.dialect(), &format!("SELECT {BUCKET_COLS} FROM storage.buckets WHERE id = $1")));
            c.query_opt(&q, &[id.into()])?.as_ref().map(bucket_row).transpose()?.ok_or(StorageError::NoSuchBucket)
        })
        .await
    }

    pub async fn create_bucket(&self, env: &EnvId, access: &Access, b: NewBucket) -> Result<()> {
        names::bucket_id(&b.id)?;
        for m in b.allowed_mime_types.iter().flatten() {
            names::mime_pattern(m)?;
        }
        let (auth, now) = (access.auth(), self.now());
        self.tx(env, access.role(), move |c| {
            let d = c.dialect();
            let q = sql(
                d,
                "INSERT INTO storage.buckets (id, name, owner, owner_id, public, file_size_limit, allowed_mime_types, created_at, updated_at) \
                 VALUES ($1, $1, $2::text::uuid, $2, ($3::bigint = 1), $4::bigint, $5::text::text[], $6::text::timestamptz, $6::text::timestamptz)",
            );
            let owner = owner_of(&auth);
            c.execute(
                &q,
                &[b.id.clone().into(), opt_text(owner), V::Int(i64::from(b.public)), opt_int(b.file_size_limit), mimes_value(d, &b.allowed_mime_types), now.into()],
            )?;
            check(c, &auth, "storage.buckets", Cmd::Insert, &b.id)
        })
        .await
    }

    pub async fn update_bucket(&self, env: &EnvId, access: &Access, id: &str, change: BucketChange) -> Result<()> {
        names::bucket_id(id).map_err(|_| StorageError::NoSuchBucket)?;
        for m in change.allowed_mime_types.iter().flatten().flatten() {
            names::mime_pattern(m)?;
        }
        let (auth, now, id) = (access.auth(), self.now(), id.to_owned());
        self.tx(env, access.role(), move |c| {
            let d = c.dialect();
            let f = filter(c, &auth, "storage.buckets", Cmd::Update)?;
            let mut sets = vec!["updated_at = $2::text::timestamptz".to_owned()];
            let mut params: Vec<V> = vec![id.clone().into(), now.into()];
            if let Some(p) = change.public {
                params.push(V::Int(i64::from(p)));
                sets.push(format!("public = (${}::bigint = 1)", params.len()));
            }
            if let Some(l) = change.file_size_limit {
                params.push(opt_int(l));
                sets.push(format!("file_size_limit = ${}::bigint", params.len()));
            }
            if let Some(m) = &change.allowed_mime_types {
                params.push(mimes_value(d, m));
                sets.push(format!("allowed_mime_types = ${}::text::text[]", params.len()));
            }
            let q = format!("{}{f}", sql(d, &format!("UPDATE storage.buckets SET {} WHERE id = $1", sets.join(", "))));
            if c.execute(&q, &params)? == 0 {
                return Err(StorageError::NoSuchBucket);
            }
            check(c, &auth, "storage.buckets", Cmd::Update, &id)
        })
        .await
    }

    /// Deletes every object of a bucket the caller may delete; returns how many went.
    pub async fn empty_bucket(&self, env: &EnvId, access: &Access, id: &str) -> Result<usize> {
        self.get_bucket(env, access, id).await?;
        let (auth, bid) = (access.auth(), id.to_owned());
        let versions = self
            .tx(env, access.role(), move |c| {
                let f = filter(c, &auth, "storage.objects", Cmd::Delete)?;
                let q = format!(
                    "{}{f} RETURNING version",
                    sql(c.dialect(), "DELETE FROM storage.objects WHERE bucket_id = $1")
                );
                Ok(c.query(&q, &[bid.into()])?.iter().filter_map(|r| r.opt_text(0).ok().flatten()).collect::<Vec<_>>())
            })
            .await?;
        self.delete_blobs(env, &versions).await;
        self.record_size(env).await;
        Ok(versions.len())
    }

    pub async fn delete_bucket(&self, env: &EnvId, access: &Access, id: &str) -> Result<()> {
        names::bucket_id(id).map_err(|_| StorageError::NoSuchBucket)?;
        let (auth, id) = (access.auth(), id.to_owned());
        self.tx(env, access.role(), move |c| {
            let d = c.dialect();
            if c.query_opt(&sql(d, "SELECT 1 FROM storage.objects WHERE bucket_id = $1 LIMIT 1"), &[id.clone().into()])?
                .is_some()
            {
                return Err(StorageError::BucketNotEmpty);
            }
            let f = filter(c, &auth, "storage.buckets", Cmd::Delete)?;
            let q = format!("{}{f}", sql(d, "DELETE FROM storage.buckets WHERE id = $1"));
            if c.execute(&q, &[id.into()])? == 0 {
                return Err(StorageError::NoSuchBucket);
            }
            Ok(())
        })
        .await
    }
}

mod objects;

impl Storage {
    /// Total bytes of the env's objects.
    pub async fn used_bytes(&self, env: &EnvId) -> Result<i64> {
        if !self.appdb.exists(env).await? {
            return Ok(0);
        }
        self.tx(env, Role::Owner, |c| {
            let q = match c.dialect() {
                Dialect::Postgres => {
                    "SELECT coalesce(sum((metadata->>'size')::bigint), 0)::bigint FROM storage.objects"
                }
                Dialect::Sqlite => "SELECT coalesce(sum(json_extract(metadata, '$.size')), 0) FROM \"storage.objects\"",
            };
            Ok(c.query_opt(q, &[])?.map(|r| r.int(0)).transpose()?.unwrap_or(0))
        })
        .await
    }

    /// Records the env's stored bytes as a `storage_bytes` gauge event.
    pub async fn record_size(&self, env: &EnvId) {
        let size = match self.used_bytes(env).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not measure storage_bytes");
                return;
            }
        };
        let input = protocol::api::UsageEventInput {
            meter: Meter::StorageBytes.name().to_owned(),
            quantity: size,
            source: "storage".to_owned(),
            event_id: format!("size-{}", self.platform().random_id(16)),
            at: None,
            dimensions: Default::default(),
        };
        if let Err(e) = self.platform().record_usage(env, input).await {
            tracing::warn!(error = %e, "could not record storage_bytes");
        }
    }

    async fn delete_blobs(&self, env: &EnvId, versions: &[String]) {
        for v in versions {
            if let Err(e) = self.platform().blobs().delete(&self.blob_key(env, v)).await {
                // An orphaned blob costs bytes but is never served: no row names it.
                tracing::warn!(error = %e, "could not delete a replaced object version");
            }
        }
    }
}
