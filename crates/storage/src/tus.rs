//! TUS 1.0.0 resumable uploads, as Supabase Storage serves them at `/upload/resumable`.
//!
//! An upload's state is a row of the platform store (`storage_uploads`), so every instance sharing the
//! store sees it. Each PATCH streams its bytes into a blob of its own under the upload's prefix
//! (`envs/<env>/storage-uploads/<id>/…`; S3 cannot append), then moves the offset with a conditional
//! UPDATE (`WHERE upload_offset = <the offset it started from>`): of concurrent PATCHes at one offset
//! exactly one wins, the others get 409 and their blob is deleted. No lock is held while bytes flow.
//!
//! The PATCH that reaches the declared length also marks the row "completing" (a lease), then streams
//! the parts, in order, through [`Storage::upload`]: the same checks as a plain upload (policies as
//! the request role, MIME allow-list, size limit, quota) and the same atomic write (a new version's
//! blob, then the row switched in one transaction). Until then no object is visible. A refusal at
//! completion deletes the upload; an internal failure (or an instance that died holding the lease)
//! rolls the last part back so the client can send it again.

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use protocol::EnvId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::Conn;

use crate::{Access, MAX_OBJECT_BYTES, Object, Result, Storage, StorageError, UploadOptions, names};

/// The protocol version served.
pub const TUS_VERSION: &str = "1.0.0";
/// The extensions served.
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration";
/// How long an upload may take from its creation (as on Supabase's hosted platform: 24 hours).
pub const UPLOAD_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long a completion may hold an upload before another request may take it back.
const COMPLETE_LEASE_MS: i64 = 10 * 60 * 1000;
/// Expired uploads cleaned per sweep.
const SWEEP_BATCH: i64 = 50;

/// A new resumable upload (from `Upload-Length`, `Upload-Metadata` and `x-upsert`).
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub bucket_id: String,
    pub name: String,
    pub length: u64,
    pub content_type: String,
    pub cache_control: String,
    pub upsert: bool,
    pub user_metadata: Option<Value>,
    /// The end user the object will belong to (the caller's, or a signed URL's).
    pub owner: Option<String>,
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    pub id: String,
    pub length: u64,
    pub offset: u64,
    /// Unix milliseconds after which the upload is gone.
    pub expires_at_ms: i64,
}

/// What a PATCH did.
#[derive(Debug)]
pub enum Patched {
    /// The bytes were stored; the upload is at this offset.
    Progress(UploadState),
    /// That was the last chunk: the object is written.
    Complete(UploadState, Box<Object>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Options {
    content_type: String,
    cache_control: String,
    upsert: bool,
    owner: Option<String>,
    user_metadata: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    key: String,
    size: u64,
}

/// A row of `storage_uploads`.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    holder: String,
    bucket_id: String,
    name: String,
    length: u64,
    offset: u64,
    parts: Vec<Part>,
    options: Options,
    completing_until: i64,
    expires_at: i64,
}

impl Row {
    fn state(&self) -> UploadState {
        UploadState { id: self.id.clone(), length: self.length, offset: self.offset, expires_at_ms: self.expires_at }
    }
}

const ROW_COLS: &str =
    "id, holder, bucket_id, name, upload_length, upload_offset, parts, options, completing_until, expires_at";

fn read_row(r: &store::Row) -> Result<Row> {
    let bad = |e: serde_json::Error| StorageError::Internal(format!("stored upload: {e}"));
    Ok(Row {
        id: r.text(0)?,
        holder: r.text(1)?,
        bucket_id: r.text(2)?,
        name: r.text(3)?,
        length: u64::try_from(r.int(4)?).unwrap_or(0),
        offset: u64::try_from(r.int(5)?).unwrap_or(0),
        parts: serde_json::from_str(&r.text(6)?).map_err(bad)?,
        options: serde_json::from_str(&r.text(7)?).map_err(bad)?,
        completing_until: r.int(8)?,
        expires_at: r.int(9)?,
    })
}

fn json_text<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StorageError::Internal(e.to_string()))
}

fn int(v: u64) -> store::Value {
    store::Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Who may continue an upload: the role and end user that created it (another user's id is unknown).
fn holder(access: &Access) -> String {
    match access {
        Access::Request(a) => format!("{}:{}", a.role.name(), a.sub().unwrap_or("")),
        Access::Trusted => "trusted:".to_owned(),
    }
}

/// Whether a failed completion was the request's fault (refused: the upload is dropped) rather than
/// the platform's (retryable: the last part is rolled back).
fn refused(e: &StorageError) -> bool {
    !matches!(e, StorageError::Internal(_) | StorageError::Body(_) | StorageError::DryRun)
}

impl Storage {
    fn now_ms(&self) -> i64 {
        self.platform().clock().now_ms()
    }

    /// The object-store prefix of an upload's parts.
    fn upload_prefix(&self, env: &EnvId, id: &str) -> String {
        format!("{}storage-uploads/{id}/", self.platform().layout(env).object_prefix)
    }

    /// Creates a resumable upload after the checks a plain upload makes up front: bucket, name, MIME
    /// type, file size limit (413 when `Upload-Length` is over it), quota, and the policies as the
    /// request role. An empty upload completes at once.
    pub async fn tus_create(&self, env: &EnvId, access: &Access, new: NewUpload) -> Result<UploadState> {
        names::bucket_id(&new.bucket_id)?;
        names::object_name(&new.name)?;
        let bucket = self.get_bucket(env, &Access::Trusted, &new.bucket_id).await?;
        if !names::mime_allowed(&bucket.allowed_mime_types, &new.content_type) {
            return Err(StorageError::InvalidMimeType(new.content_type.clone()));
        }
        let file_limit = bucket.file_size_limit.map_or(MAX_OBJECT_BYTES, |l| (l.max(0) as u64).min(MAX_OBJECT_BYTES));
        if new.length > file_limit {
            return Err(StorageError::EntityTooLarge);
        }
        if let Some((limit, used)) = self.quota(env).await?
            && used.saturating_add(i64::try_from(new.length).unwrap_or(i64::MAX)) > limit
        {
            return Err(StorageError::QuotaExceeded { used, limit });
        }
        let owner = new.owner.clone();
        self.probe_upload(env, access, &new.bucket_id, &new.name, new.upsert, owner.clone()).await?;
        self.tus_sweep().await;
        let now = self.now_ms();
        let row = Row {
            id: appdb::backend::random_uuid(),
            holder: holder(access),
            bucket_id: new.bucket_id,
            name: new.name,
            length: new.length,
            offset: 0,
            parts: vec![],
            options: Options {
                content_type: new.content_type,
                cache_control: new.cache_control,
                upsert: new.upsert,
                owner,
                user_metadata: new.user_metadata,
            },
            completing_until: 0,
            expires_at: now + UPLOAD_TTL_MS,
        };
        let params: Vec<store::Value> = vec![
            env.to_string().into(),
            row.id.clone().into(),
            row.holder.clone().into(),
            row.bucket_id.clone().into(),
            row.name.clone().into(),
            int(row.length),
            json_text(&row.parts)?.into(),
            json_text(&row.options)?.into(),
            now.into(),
            row.expires_at.into(),
        ];
        self.platform()
            .db()
            .tx(move |c: &mut dyn Conn| {
                c.execute(
                    "INSERT INTO storage_uploads (env_id, id, holder, bucket_id, name, upload_length, upload_offset, parts, \
                     options, completing_until, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, 0, $9, $10)",
                    &params,
                )?;
                Ok::<_, StorageError>(())
            })
            .await?;
        if row.length == 0 {
            let mut claimed = row.clone();
            claimed.completing_until = now + COMPLETE_LEASE_MS;
            self.claim(env, &row, &claimed).await?;
            self.finish(env, access, &row, claimed).await?;
        }
        Ok(row.state())
    }

    /// The bucket and object name of upload `id` of `env`, whoever created it (to check a signed
    /// upload URL's token against).
    pub async fn tus_target(&self, env: &EnvId, id: &str) -> Result<(String, String)> {
        if !valid_id(id) {
            return Err(StorageError::NoSuchUpload);
        }
        let (env_s, id_s) = (env.to_string(), id.to_owned());
        self.platform()
            .db()
            .tx(move |c: &mut dyn Conn| {
                let r = c.query_opt(
                    "SELECT bucket_id, name FROM storage_uploads WHERE env_id = $1 AND id = $2",
                    &[env_s.into(), id_s.into()],
                )?;
                match r {
                    Some(r) => Ok((r.text(0)?, r.text(1)?)),
                    None => Err(StorageError::NoSuchUpload),
                }
            })
            .await
    }

    /// Where an upload stands (`HEAD`).
    pub async fn tus_state(&self, env: &EnvId, access: &Access, id: &str) -> Result<UploadState> {
        Ok(self.load(env, access, id).await?.state())
    }

    /// Appends a chunk at `offset` (`PATCH`). The body may not run past the declared length (413,
    /// nothing stored); a PATCH at any other offset than the upload's gets 409.
    pub async fn tus_patch<S, E>(
        &self,
        env: &EnvId,
        access: &Access,
        id: &str,
        offset: u64,
        content_length: Option<u64>,
        body: S,
    ) -> Result<Patched>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let row = self.load(env, access, id).await?;
        if offset != row.offset {
            return Err(StorageError::OffsetConflict(row.offset));
        }
        let remaining = row.length - row.offset;
        if content_length.is_some_and(|l| l > remaining) {
            return Err(StorageError::EntityTooLarge);
        }
        let key = format!("{}{}", self.upload_prefix(env, id), appdb::backend::random_uuid());
        let blobs = self.platform().blobs().clone();
        let written = blobs.put_stream(&key, body, remaining).await?;
        if written.size == 0 {
            return Ok(Patched::Progress(row.state()));
        }
        let mut next = row.clone();
        next.offset += written.size;
        next.parts.push(Part { key: key.clone(), size: written.size });
        let last = next.offset == next.length;
        if last {
            next.completing_until = self.now_ms() + COMPLETE_LEASE_MS;
        }
        if let Err(e) = self.claim(env, &row, &next).await {
            delete_quietly(&blobs, &key).await;
            return Err(e);
        }
        if !last {
            return Ok(Patched::Progress(next.state()));
        }
        let object = self.finish(env, access, &row, next.clone()).await?;
        Ok(Patched::Complete(next.state(), Box::new(object)))
    }

    /// Deletes an upload and its parts (`DELETE`, termination).
    pub async fn tus_terminate(&self, env: &EnvId, access: &Access, id: &str) -> Result<()> {
        let row = self.load(env, access, id).await?;
        let (env_s, id_s, offset) = (env.to_string(), row.id.clone(), row.offset);
        let gone = self
            .platform()
            .db()
            .tx(move |c: &mut dyn Conn| {
                Ok::<_, StorageError>(c.execute(
                    "DELETE FROM storage_uploads WHERE env_id = $1 AND id = $2 AND upload_offset = $3 AND completing_until = 0",
                    &[env_s.into(), id_s.into(), int(offset)],
                )?)
            })
            .await?;
        if gone == 0 {
            // A PATCH moved it meanwhile: let the caller look again.
            return Err(StorageError::UploadLocked);
        }
        self.delete_parts(env, id).await;
        Ok(())
    }

    /// Deletes expired uploads and their parts, platform-wide (a bounded batch per call).
    pub async fn tus_sweep(&self) {
        let now = self.now_ms();
        let expired = self
            .platform()
            .db()
            .tx(move |c: &mut dyn Conn| {
                let rows = c.query(
                    "SELECT env_id, id FROM storage_uploads WHERE expires_at < $1 AND completing_until < $1 LIMIT $2",
                    &[now.into(), SWEEP_BATCH.into()],
                )?;
                rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?))).collect::<Result<Vec<_>, StorageError>>()
            })
            .await;
        match expired {
            Ok(list) => {
                for (env, id) in list {
                    if let Ok(env) = EnvId::parse(&env) {
                        self.drop_upload(&env, &id).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list expired uploads"),
        }
    }

    /// Removes an env's upload rows when the env is deleted (their parts go with the env's prefix).
    /// Holds only the store, so the platform and this service do not keep each other alive.
    pub fn register_delete_hook(&self) {
        let db = self.platform().db().clone();
        self.platform().on_env_delete(std::sync::Arc::new(move |env: EnvId| {
            let db = db.clone();
            Box::pin(
                async move { db.delete_env_rows(env.as_str(), &["storage_uploads"]).await.map_err(|e| e.to_string()) },
            )
        }));
    }

    /// The upload `id` of `env` as `access` may see it: expired ones are deleted (410), one being
    /// completed answers 423, and one whose completing instance died is rolled back first.
    async fn load(&self, env: &EnvId, access: &Access, id: &str) -> Result<Row> {
        if !valid_id(id) {
            return Err(StorageError::NoSuchUpload);
        }
        for _ in 0..3 {
            let (env_s, id_s) = (env.to_string(), id.to_owned());
            let row = self
                .platform()
                .db()
                .tx(move |c: &mut dyn Conn| {
                    c.query_opt(
                        &format!("SELECT {ROW_COLS} FROM storage_uploads WHERE env_id = $1 AND id = $2"),
                        &[env_s.into(), id_s.into()],
                    )?
                    .as_ref()
                    .map(read_row)
                    .transpose()
                })
                .await?;
            let Some(row) = row.filter(|r| r.holder == holder(access)) else {
                return Err(StorageError::NoSuchUpload);
            };
            let now = self.now_ms();
            if row.completing_until > now {
                return Err(StorageError::UploadLocked);
            }
            if row.expires_at <= now {
                self.drop_upload(env, id).await;
                return Err(StorageError::UploadExpired);
            }
            if row.completing_until == 0 {
                return Ok(row);
            }
            // The instance completing it went away: take the last part back, then look again.
            let mut back = row.clone();
            back.completing_until = 0;
            let last = back.parts.pop();
            if let Some(last) = &last {
                back.offset -= last.size;
            }
            if self.claim(env, &row, &back).await.is_ok()
                && let Some(last) = last
            {
                delete_quietly(self.platform().blobs(), &last.key).await;
            }
        }
        Err(StorageError::UploadLocked)
    }

    /// Moves `from` to `to` if nobody moved it since it was read (offset and lease unchanged).
    async fn claim(&self, env: &EnvId, from: &Row, to: &Row) -> Result<()> {
        let params: Vec<store::Value> = vec![
            env.to_string().into(),
            from.id.clone().into(),
            int(to.offset),
            json_text(&to.parts)?.into(),
            to.completing_until.into(),
            int(from.offset),
            from.completing_until.into(),
        ];
        let moved = self
            .platform()
            .db()
            .tx(move |c: &mut dyn Conn| {
                Ok::<_, StorageError>(c.execute(
                    "UPDATE storage_uploads SET upload_offset = $3, parts = $4, completing_until = $5 \
                     WHERE env_id = $1 AND id = $2 AND upload_offset = $6 AND completing_until = $7",
                    &params,
                )?)
            })
            .await?;
        if moved == 0 {
            let now = self.load_offset(env, &from.id).await?;
            return Err(StorageError::OffsetConflict(now));
        }
        Ok(())
    }

    async fn load_offset(&self, env: &EnvId, id: &str) -> Result<u64> {
        let (env_s, id_s) = (env.to_string(), id.to_owned());
        self.platform()
            .db()
            .tx(move |c: &mut dyn Conn| {
                let r = c.query_opt(
                    "SELECT upload_offset FROM storage_uploads WHERE env_id = $1 AND id = $2",
                    &[env_s.into(), id_s.into()],
                )?;
                match r {
                    Some(r) => Ok(u64::try_from(r.int(0)?).unwrap_or(0)),
                    None => Err(StorageError::NoSuchUpload),
                }
            })
            .await
    }

    /// Streams the parts of a claimed upload into its object through [`Storage::upload`]. On success
    /// or refusal the upload is deleted; on an internal failure its last part is rolled back.
    async fn finish(&self, env: &EnvId, access: &Access, before: &Row, claimed: Row) -> Result<Object> {
        let blobs = self.platform().blobs().clone();
        // Boxed: a named, `Send` stream type (the combinator chain's is not provably `Send` for every
        // lifetime the handlers' futures need).
        let parts: futures_util::stream::BoxStream<'static, std::result::Result<Bytes, store::BlobError>> =
            futures_util::stream::iter(claimed.parts.clone())
                .then(move |part| {
                    let blobs = blobs.clone();
                    async move {
                        match blobs.get_stream(&part.key, None).await {
                            Ok(Some(read)) => Ok(read.stream),
                            Ok(None) => Err(store::BlobError::Body("a part of the upload is missing".to_owned())),
                            Err(e) => Err(e),
                        }
                    }
                })
                .try_flatten()
                .boxed();
        let opts = UploadOptions {
            content_type: claimed.options.content_type.clone(),
            cache_control: claimed.options.cache_control.clone(),
            upsert: claimed.options.upsert,
            user_metadata: claimed.options.user_metadata.clone(),
            content_length: Some(claimed.length),
            owner: claimed.options.owner.clone(),
        };
        let result = self.upload(env, access, &claimed.bucket_id, &claimed.name, opts, parts).await;
        match result {
            Ok(object) => {
                self.drop_upload(env, &claimed.id).await;
                Ok(object)
            }
            Err(e) if refused(&e) => {
                self.drop_upload(env, &claimed.id).await;
                Err(e)
            }
            Err(e) => {
                let mut back = claimed.clone();
                if let Some(last) = back.parts.pop() {
                    back.offset = before.offset;
                    back.completing_until = 0;
                    if self.claim(env, &claimed, &back).await.is_ok() {
                        delete_quietly(self.platform().blobs(), &last.key).await;
                    }
                }
                Err(e)
            }
        }
    }

    /// Deletes an upload's row, then its parts.
    async fn drop_upload(&self, env: &EnvId, id: &str) {
        let (env_s, id_s) = (env.to_string(), id.to_owned());
        let deleted = self
            .platform()
            .db()
            .tx(move |c: &mut dyn Conn| {
                c.execute("DELETE FROM storage_uploads WHERE env_id = $1 AND id = $2", &[env_s.into(), id_s.into()])?;
                Ok::<_, StorageError>(())
            })
            .await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "could not delete an upload");
            return;
        }
        self.delete_parts(env, id).await;
    }

    async fn delete_parts(&self, env: &EnvId, id: &str) {
        if let Err(e) = self.platform().blobs().delete_prefix(&self.upload_prefix(env, id)).await {
            // Orphaned parts cost bytes but no row names them: never served.
            tracing::warn!(error = %e, "could not delete the parts of an upload");
        }
    }
}

/// Ids are uuids; anything else names no upload (and never reaches a query or a key).
fn valid_id(id: &str) -> bool {
    id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

async fn delete_quietly(blobs: &store::Blobs, key: &str) {
    if let Err(e) = blobs.delete(key).await {
        tracing::warn!(error = %e, "could not delete an upload part");
    }
}
