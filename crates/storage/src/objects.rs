//! Objects: upload (streamed, atomic), download (ranged), list, move, copy, remove, signed URLs.

use appdb::RequestAuth;
use appdb::sqlgen::Cmd;
use bytes::Bytes;
use futures_util::Stream;
use protocol::{EnvId, Meter};
use serde_json::{Value, json};
use store::{Conn, Dialect, Value as V};

use crate::sign::{self, Claims, Grant};
use crate::{
    Access, ListOptions, MAX_BATCH, MAX_EXPIRY_SECS, MAX_OBJECT_BYTES, OBJECT_COLS, Object, Result, Storage,
    StorageError, UPLOAD_URL_SECS, UploadOptions, check, filter, names, object_row, opt_text, sql,
};

/// The row an upload or copy writes.
struct NewRow {
    id: String,
    bucket_id: String,
    name: String,
    owner: Option<String>,
    metadata: Value,
    user_metadata: Option<Value>,
    version: String,
    now: String,
}

/// Writes the row of a new object version in one transaction (insert, or with `upsert` replace the
/// existing row); returns the replaced version. Policies: INSERT's WITH CHECK for a new row;
/// SELECT and UPDATE (USING and WITH CHECK) to replace one.
fn commit(c: &mut dyn Conn, auth: &RequestAuth, row: &NewRow, upsert: bool) -> Result<Option<String>> {
    let d = c.dialect();
    let meta = row.metadata.to_string();
    let user_meta = row.user_metadata.as_ref().map(Value::to_string);
    if upsert {
        let f = filter(c, auth, "storage.objects", Cmd::Select)?;
        let lock = if d == Dialect::Postgres { " FOR UPDATE" } else { "" };
        let q = format!(
            "{}{f}{lock}",
            sql(d, "SELECT id::text, version FROM storage.objects WHERE bucket_id = $1 AND name = $2")
        );
        if let Some(existing) = c.query_opt(&q, &[row.bucket_id.clone().into(), row.name.clone().into()])? {
            let (id, old) = (existing.text(0)?, existing.opt_text(1)?);
            let f = filter(c, auth, "storage.objects", Cmd::Update)?;
            let q = format!(
                "{}{f}",
                sql(
                    d,
                    "UPDATE storage.objects SET version = $2, metadata = $3::text::jsonb, user_metadata = $4::text::jsonb, \
                     owner = $5::text::uuid, owner_id = $5, updated_at = $6::text::timestamptz, last_accessed_at = $6::text::timestamptz \
                     WHERE id = $1::text::uuid"
                )
            );
            let params = [
                id.clone().into(),
                row.version.clone().into(),
                meta.into(),
                opt_text(user_meta),
                opt_text(row.owner.clone()),
                row.now.clone().into(),
            ];
            if c.execute(&q, &params)? == 0 {
                return Err(crate::rls_denied());
            }
            check(c, auth, "storage.objects", Cmd::Update, &id)?;
            return Ok(old);
        }
    }
    let q = sql(
        d,
        "INSERT INTO storage.objects (id, bucket_id, name, owner, owner_id, metadata, user_metadata, version, created_at, updated_at, last_accessed_at) \
         VALUES ($1::text::uuid, $2, $3, $4::text::uuid, $4, $5::text::jsonb, $6::text::jsonb, $7, $8::text::timestamptz, $8::text::timestamptz, $8::text::timestamptz)",
    );
    c.execute(
        &q,
        &[
            row.id.clone().into(),
            row.bucket_id.clone().into(),
            row.name.clone().into(),
            opt_text(row.owner.clone()),
            meta.into(),
            opt_text(user_meta),
            row.version.clone().into(),
            row.now.clone().into(),
        ],
    )?;
    check(c, auth, "storage.objects", Cmd::Insert, &row.id)?;
    Ok(None)
}

impl NewRow {
    fn object(&self) -> Object {
        Object {
            id: self.id.clone(),
            bucket_id: self.bucket_id.clone(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone(),
            user_metadata: self.user_metadata.clone().unwrap_or(Value::Null),
            created_at: self.now.clone(),
            updated_at: self.now.clone(),
            last_accessed_at: self.now.clone(),
        }
    }
}

impl Storage {
    /// The hard `storage_bytes` quota of the env and the bytes used now, if it has one.
    pub(crate) async fn quota(&self, env: &EnvId) -> Result<Option<(i64, i64)>> {
        let limits = self.platform().get_env_limits(env).await.map_err(|e| StorageError::Internal(e.to_string()))?;
        let Some(limit) =
            limits.quotas.iter().filter(|q| q.meter == Meter::StorageBytes.name()).filter_map(|q| q.hard_limit).min()
        else {
            return Ok(None);
        };
        Ok(Some((limit, self.used_bytes(env).await?)))
    }

    /// Uploads an object from a stream. Nothing is visible until the whole body is stored; an upload
    /// that is refused (limits, MIME type, policies, duplicate) or fails leaves no object and no bytes.
    pub async fn upload<S, E>(
        &self,
        env: &EnvId,
        access: &Access,
        bucket_id: &str,
        name: &str,
        opts: UploadOptions,
        body: S,
    ) -> Result<Object>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        names::bucket_id(bucket_id)?;
        names::object_name(name)?;
        let bucket = self.get_bucket(env, &Access::Trusted, bucket_id).await?;
        if !names::mime_allowed(&bucket.allowed_mime_types, &opts.content_type) {
            return Err(StorageError::InvalidMimeType(opts.content_type.clone()));
        }
        let file_limit = bucket.file_size_limit.map_or(MAX_OBJECT_BYTES, |l| (l.max(0) as u64).min(MAX_OBJECT_BYTES));
        let quota = self.quota(env).await?;
        let room = match quota {
            Some((limit, used)) if used >= limit => return Err(StorageError::QuotaExceeded { used, limit }),
            Some((limit, used)) => Some((limit - used) as u64),
            None => None,
        };
        if let Some(len) = opts.content_length {
            if len > file_limit {
                return Err(StorageError::EntityTooLarge);
            }
            if let (Some(room), Some((limit, used))) = (room, quota)
                && len > room
            {
                return Err(StorageError::QuotaExceeded { used, limit });
            }
        }
        let max = room.map_or(file_limit, |r| r.min(file_limit));
        let version = appdb::backend::random_uuid();
        let key = self.blob_key(env, &version);
        let written = match self.platform().blobs().put_stream(&key, body, max).await {
            Ok(w) => w,
            Err(store::BlobError::TooLarge(_)) => {
                return Err(match quota {
                    Some((limit, used)) if max < file_limit => StorageError::QuotaExceeded { used, limit },
                    _ => StorageError::EntityTooLarge,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let now = self.now();
        let metadata = json!({
            "eTag": format!("\"{}\"", &written.sha256[..32]),
            "size": written.size,
            "mimetype": opts.content_type,
            "cacheControl": opts.cache_control,
            "lastModified": now,
            "contentLength": written.size,
            "httpStatusCode": 200,
        });
        let row = NewRow {
            id: appdb::backend::random_uuid(),
            bucket_id: bucket_id.to_owned(),
            name: name.to_owned(),
            owner: opts.owner.clone(),
            metadata,
            user_metadata: opts.user_metadata.clone(),
            version,
            now,
        };
        self.commit_version(env, access, row, opts.upsert, &key).await
    }

    /// Commits a stored version's row (retrying an upsert that raced with a first insert); on any
    /// failure the version's bytes are deleted. Deletes the replaced version after the commit.
    async fn commit_version(
        &self,
        env: &EnvId,
        access: &Access,
        row: NewRow,
        upsert: bool,
        key: &str,
    ) -> Result<Object> {
        let row = std::sync::Arc::new(row);
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let (auth, r) = (access.auth(), row.clone());
            let out = self.tx(env, access.role(), move |c| commit(c, &auth, &r, upsert)).await;
            match out {
                Err(StorageError::Duplicate) if upsert && attempt < 3 => continue,
                other => break other,
            }
        };
        match result {
            Ok(old) => {
                if let Some(old) = old {
                    self.delete_blobs(env, &[old]).await;
                }
                self.record_size(env).await;
                Ok(row.object())
            }
            Err(e) => {
                if let Err(d) = self.platform().blobs().delete(key).await {
                    tracing::warn!(error = %d, "could not delete the bytes of a refused upload");
                }
                Err(e)
            }
        }
    }

    /// An object's row as `access` may see it.
    pub async fn object(&self, env: &EnvId, access: &Access, bucket_id: &str, name: &str) -> Result<Object> {
        names::bucket_id(bucket_id).map_err(|_| StorageError::NoSuchBucket)?;
        names::object_name(name)?;
        if !self.appdb.exists(env).await? {
            return Err(StorageError::NoSuchBucket);
        }
        let (auth, b, n) = (access.auth(), bucket_id.to_owned(), name.to_owned());
        self.tx(env, access.role(), move |c| {
            let f = filter(c, &auth, "storage.objects", Cmd::Select)?;
            let q = format!(
                "{}{f}",
                sql(
                    c.dialect(),
                    &format!("SELECT {OBJECT_COLS} FROM storage.objects WHERE bucket_id = $1 AND name = $2")
                )
            );
            c.query_opt(&q, &[b.into(), n.into()])?.as_ref().map(object_row).transpose()?.ok_or(StorageError::NoSuchKey)
        })
        .await
    }

    /// Streams an object's bytes, or `start..end` of them (`end` exclusive; `None`: to the end).
    pub async fn read(
        &self,
        env: &EnvId,
        object: &Object,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<store::BlobRead> {
        match self.platform().blobs().get_stream(&self.blob_key(env, &object.version), range).await? {
            Some(read) => Ok(read),
            None => Err(StorageError::NoSuchKey),
        }
    }

    /// Succeeds if the bucket exists and is public (its objects are readable without credentials).
    pub async fn public_bucket(&self, env: &EnvId, bucket_id: &str) -> Result<()> {
        names::bucket_id(bucket_id).map_err(|_| StorageError::NoSuchBucket)?;
        if !self.appdb.exists(env).await? || !self.get_bucket(env, &Access::Trusted, bucket_id).await?.public {
            return Err(StorageError::NoSuchBucket);
        }
        Ok(())
    }

    /// Lists the folders and objects directly under a prefix, as Supabase's `list` does.
    pub async fn list(&self, env: &EnvId, access: &Access, bucket_id: &str, o: ListOptions) -> Result<Vec<Value>> {
        let mut prefix = o.prefix.trim_start_matches('/').to_owned();
        names::prefix(&prefix)?;
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        if o.search.contains(['/', '\0']) {
            return Err(StorageError::InvalidRequest("search must not contain '/'".to_owned()));
        }
        self.get_bucket(env, &Access::Trusted, bucket_id).await?;
        let (auth, b, p) = (access.auth(), bucket_id.to_owned(), prefix.clone());
        let rows = self
            .tx(env, access.role(), move |c| {
                let f = filter(c, &auth, "storage.objects", Cmd::Select)?;
                let base = format!("SELECT {OBJECT_COLS} FROM storage.objects WHERE bucket_id = $1 AND substr(name, 1, length($2::text)) = $2::text");
                let q = format!("{}{f}", sql(c.dialect(), &base));
                c.query(&q, &[b.into(), p.into()])?.iter().map(object_row).collect::<Result<Vec<_>>>()
            })
            .await?;
        let search = o.search.to_lowercase();
        let mut folders: Vec<String> = Vec::new();
        let mut files: Vec<(String, Object)> = Vec::new();
        for obj in rows {
            let rest = obj.name[prefix.len()..].to_owned();
            let (item, is_folder) = match rest.split_once('/') {
                Some((dir, _)) => (dir.to_owned(), true),
                None => (rest, false),
            };
            if !item.to_lowercase().starts_with(&search) {
                continue;
            }
            if is_folder {
                if !folders.contains(&item) {
                    folders.push(item);
                }
            } else {
                files.push((item, obj));
            }
        }
        let mut items: Vec<(String, Value)> = folders
            .into_iter()
            .map(|f| {
                (f.clone(), json!({"name": f, "id": null, "updated_at": null, "created_at": null, "last_accessed_at": null, "metadata": null}))
            })
            .collect();
        for (item, obj) in files {
            let mut v = obj.to_json();
            v["name"] = json!(item);
            items.push((item, v));
        }
        let col = match o.sort_column.as_str() {
            "created_at" | "updated_at" | "last_accessed_at" => o.sort_column.clone(),
            _ => "name".to_owned(),
        };
        items.sort_by(|(an, a), (bn, b)| {
            let ord = if col == "name" {
                an.cmp(bn)
            } else {
                let ka = a.get(&col).and_then(Value::as_str).unwrap_or("");
                let kb = b.get(&col).and_then(Value::as_str).unwrap_or("");
                ka.cmp(kb).then_with(|| an.cmp(bn))
            };
            if o.sort_desc { ord.reverse() } else { ord }
        });
        Ok(items.into_iter().skip(o.offset).take(o.limit).map(|(_, v)| v).collect())
    }

    /// Moves (renames) an object, possibly to another bucket. Metadata only: the bytes stay put.
    /// `from` and `to` are (bucket, name).
    pub async fn move_object(&self, env: &EnvId, access: &Access, from: (&str, &str), to: (&str, &str)) -> Result<()> {
        let ((bucket_id, from), (to_bucket, to)) = (from, to);
        names::object_name(to)?;
        let source = self.object(env, access, bucket_id, from).await?;
        self.get_bucket(env, &Access::Trusted, to_bucket).await?;
        let (auth, id, tb, tn, now) = (access.auth(), source.id, to_bucket.to_owned(), to.to_owned(), self.now());
        self.tx(env, access.role(), move |c| {
            let f = filter(c, &auth, "storage.objects", Cmd::Update)?;
            let q = format!(
                "{}{f}",
                sql(c.dialect(), "UPDATE storage.objects SET bucket_id = $2, name = $3, updated_at = $4::text::timestamptz WHERE id = $1::text::uuid")
            );
            if c.execute(&q, &[id.clone().into(), tb.into(), tn.into(), now.into()])? == 0 {
                return Err(crate::rls_denied());
            }
            check(c, &auth, "storage.objects", Cmd::Update, &id)
        })
        .await
    }

    /// Copies an object (bytes copied inside the object store) to a new name, possibly in another
    /// bucket; `upsert` replaces an existing destination.
    /// `from` and `to` are (bucket, name).
    pub async fn copy_object(
        &self,
        env: &EnvId,
        access: &Access,
        from: (&str, &str),
        to: (&str, &str),
        upsert: bool,
    ) -> Result<Object> {
        let ((bucket_id, from), (to_bucket, to)) = (from, to);
        names::object_name(to)?;
        let source = self.object(env, access, bucket_id, from).await?;
        let bucket = self.get_bucket(env, &Access::Trusted, to_bucket).await?;
        if !names::mime_allowed(&bucket.allowed_mime_types, source.mimetype()) {
            return Err(StorageError::InvalidMimeType(source.mimetype().to_owned()));
        }
        if bucket.file_size_limit.is_some_and(|l| source.size() > l) {
            return Err(StorageError::EntityTooLarge);
        }
        if let Some((limit, used)) = self.quota(env).await?
            && used + source.size() > limit
        {
            return Err(StorageError::QuotaExceeded { used, limit });
        }
        let version = appdb::backend::random_uuid();
        let key = self.blob_key(env, &version);
        self.platform().blobs().copy(&self.blob_key(env, &source.version), &key).await?;
        let now = self.now();
        let mut metadata = source.metadata.clone();
        metadata["lastModified"] = json!(now);
        let owner = access.owner();
        let row = NewRow {
            id: appdb::backend::random_uuid(),
            bucket_id: to_bucket.to_owned(),
            name: to.to_owned(),
            owner,
            metadata,
            user_metadata: Some(source.user_metadata.clone()).filter(|v| !v.is_null()),
            version,
            now,
        };
        self.commit_version(env, access, row, upsert, &key).await
    }

    /// Removes objects by name; returns those removed (names the caller may not delete, or that do
    /// not exist, are left out, as on Supabase).
    pub async fn remove(
        &self,
        env: &EnvId,
        access: &Access,
        bucket_id: &str,
        names_: Vec<String>,
    ) -> Result<Vec<Object>> {
        if names_.len() > MAX_BATCH {
            return Err(StorageError::InvalidRequest(format!("at most {MAX_BATCH} names per request")));
        }
        for n in &names_ {
            names::object_name(n)?;
        }
        self.get_bucket(env, &Access::Trusted, bucket_id).await?;
        if names_.is_empty() {
            return Ok(vec![]);
        }
        let (auth, b) = (access.auth(), bucket_id.to_owned());
        let removed = self
            .tx(env, access.role(), move |c| {
                let f = filter(c, &auth, "storage.objects", Cmd::Delete)?;
                let marks: Vec<String> = (0..names_.len()).map(|i| format!("${}", i + 2)).collect();
                let q = format!(
                    "{}{f} RETURNING {}",
                    sql(
                        c.dialect(),
                        &format!("DELETE FROM storage.objects WHERE bucket_id = $1 AND name IN ({})", marks.join(", "))
                    ),
                    sql(c.dialect(), OBJECT_COLS)
                );
                let mut params: Vec<V> = vec![b.into()];
                params.extend(names_.into_iter().map(V::Text));
                c.query(&q, &params)?.iter().map(object_row).collect::<Result<Vec<_>>>()
            })
            .await?;
        let versions: Vec<String> = removed.iter().map(|o| o.version.clone()).collect();
        self.delete_blobs(env, &versions).await;
        self.record_size(env).await;
        Ok(removed)
    }

    fn now_secs(&self) -> i64 {
        self.platform().clock().now_ms() / 1000
    }

    /// A signed download URL path (`/object/sign/<bucket>/<name>?token=…`) valid for `expires_in`
    /// seconds, for an object `access` may read.
    pub async fn sign_download(
        &self,
        env: &EnvId,
        access: &Access,
        bucket_id: &str,
        name: &str,
        expires_in: i64,
    ) -> Result<String> {
        if !(1..=MAX_EXPIRY_SECS).contains(&expires_in) {
            return Err(StorageError::InvalidRequest(format!("expiresIn must be 1..={MAX_EXPIRY_SECS} seconds")));
        }
        self.object(env, access, bucket_id, name).await?;
        let now = self.now_secs();
        let url = format!("{bucket_id}/{name}");
        let claims = Claims {
            url: url.clone(),
            grant: Grant::Download,
            iat: now,
            exp: now + expires_in,
            upsert: false,
            owner: None,
        };
        let token = sign::sign(&self.signing_secret(env), &claims)?;
        Ok(format!("/object/sign/{url}?token={token}"))
    }

    /// Whether the policies let `access` create (or with `upsert` replace) `bucket/name` now: the row
    /// is written in a transaction that is rolled back.
    pub(crate) async fn probe_upload(
        &self,
        env: &EnvId,
        access: &Access,
        bucket_id: &str,
        name: &str,
        upsert: bool,
        owner: Option<String>,
    ) -> Result<()> {
        let row = NewRow {
            id: appdb::backend::random_uuid(),
            bucket_id: bucket_id.to_owned(),
            name: name.to_owned(),
            owner,
            metadata: json!({}),
            user_metadata: None,
            version: String::new(),
            now: self.now(),
        };
        let auth = access.auth();
        let probe = self
            .tx(env, access.role(), move |c| {
                commit(c, &auth, &row, upsert)?;
                Err::<(), _>(StorageError::DryRun)
            })
            .await;
        match probe {
            Err(StorageError::DryRun) => Ok(()),
            Err(e) => Err(e),
            Ok(()) => Err(StorageError::Internal("dry run committed".to_owned())),
        }
    }

    /// A signed upload URL path (`/object/upload/sign/<bucket>/<name>?token=…`) and its token, valid
    /// for two hours, if `access` may create (or with `upsert` replace) the object now.
    pub async fn sign_upload(
        &self,
        env: &EnvId,
        access: &Access,
        bucket_id: &str,
        name: &str,
        upsert: bool,
    ) -> Result<(String, String)> {
        names::object_name(name)?;
        self.get_bucket(env, &Access::Trusted, bucket_id).await?;
        let owner = access.owner();
        self.probe_upload(env, access, bucket_id, name, upsert, owner.clone()).await?;
        let now = self.now_secs();
        let url = format!("{bucket_id}/{name}");
        let claims =
            Claims { url: url.clone(), grant: Grant::Upload, iat: now, exp: now + UPLOAD_URL_SECS, upsert, owner };
        let token = sign::sign(&self.signing_secret(env), &claims)?;
        Ok((format!("/object/upload/sign/{url}?token={token}"), token))
    }

    /// Checks a signed URL's token for `grant` on `bucket/name`.
    pub fn verify_token(&self, env: &EnvId, token: &str, grant: Grant, bucket_id: &str, name: &str) -> Result<Claims> {
        sign::verify(&self.signing_secret(env), token, grant, &format!("{bucket_id}/{name}"), self.now_secs())
    }
}
