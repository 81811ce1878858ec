//! The object store: the local filesystem by default, any S3-compatible server with
//! `--object-store-url s3://bucket[/prefix]`. Every env's objects live under the prefix
//! [`tenancy::EnvLayout`] derives, and are only reached through that prefix.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, path::Path as ObjectPath};
use sha2::Digest as _;

/// Bytes gathered before a streamed write becomes a multipart upload (and the size of each part).
/// Smaller objects are written with one request.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// What can go wrong with the object store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The object store backend failed (I/O, network, credentials).
    #[error("object store: {0}")]
    Backend(#[from] object_store::Error),
    /// `--object-store-url` is neither `file://…` nor `s3://…`.
    #[error("unsupported object store url {0:?} (expected file:///dir or s3://bucket[/prefix])")]
    BadUrl(String),
    /// An object key is empty, absolute, or has `.`/`..` segments.
    #[error("invalid object key {0:?}")]
    BadKey(String),
    /// A streamed write grew past the limit it was given; nothing was written.
    #[error("object larger than {0} bytes")]
    TooLarge(u64),
    /// The stream a write read from failed (e.g. the client went away); nothing was written.
    #[error("body: {0}")]
    Body(String),
    /// A ranged read asked for bytes the object does not have.
    #[error("range not satisfiable")]
    BadRange,
}

/// What a streamed write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
}

/// An object's size and entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub size: u64,
    pub etag: Option<String>,
}

/// A streamed read: the bytes of `range` (end exclusive) of an object of `size` bytes.
pub struct BlobRead {
    pub size: u64,
    pub range: std::ops::Range<u64>,
    pub stream: BoxStream<'static, Result<Bytes, BlobError>>,
}

/// A handle on the platform's object store, cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    inner: Arc<dyn ObjectStore>,
    /// Prefix inside the bucket (empty for the local filesystem).
    root: String,
    description: String,
}

impl Blobs {
    /// A store on the local filesystem under `dir` (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BlobError::Backend(object_store::Error::Generic { store: "local", source: Box::new(e) }))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        Ok(Self { inner: Arc::new(store), root: String::new(), description: format!("file://{}", dir.display()) })
    }

    /// A store from a URL: `file:///dir` or `s3://bucket[/prefix]`. S3 credentials, region and endpoint
    /// come from the usual `AWS_*` environment variables (`AWS_ENDPOINT_URL` for S3-compatible servers).
    pub fn from_url(url: &str) -> Result<Self, BlobError> {
        if let Some(dir) = url.strip_prefix("file://") {
            return Self::local(std::path::Path::new(dir));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(BlobError::BadUrl(url.to_owned()));
        };
        let (bucket, root) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BlobError::BadUrl(url.to_owned()));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
        }
        let store = builder.build()?;
        let root = root.trim_matches('/');
        let root = if root.is_empty() { String::new() } else { format!("{root}/") };
        Ok(Self { inner: Arc::new(store), root, description: url.to_owned() })
    }

    /// Where the blobs are, for logs.
    pub fn describe(&self) -> &str {
        &self.description
    }

    fn path(&self, key: &str) -> Result<ObjectPath, BlobError> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|s| s == "." || s == "..") {
            return Err(BlobError::BadKey(key.to_owned()));
        }
        ObjectPath::parse(format!("{}{key}", self.root)).map_err(|_| BlobError::BadKey(key.to_owned()))
    }

    /// Writes an object atomically: readers see the old object or the new one, never a part.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError> {
        self.inner.put(&self.path(key)?, PutPayload::from(data)).await?;
        Ok(())
    }

    /// Writes an object from a stream without holding it in memory (parts of [`PART_SIZE`]). Atomic:
    /// readers see the object whole or not at all. If the stream fails or exceeds `max` bytes,
    /// nothing is left behind (the upload is aborted) and the error says why.
    pub async fn put_stream<S, E>(&self, key: &str, mut body: S, max: u64) -> Result<Written, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let path = self.path(key)?;
        let mut hash = sha2::Sha256::new();
        let mut size: u64 = 0;
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0usize;
        let mut upload: Option<Box<dyn object_store::MultipartUpload>> = None;
        let result: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > max {
                    return Err(BlobError::TooLarge(max));
                }
                hash.update(&chunk);
                pending_len += chunk.len();
                pending.push(chunk);
                if pending_len >= PART_SIZE {
                    let part: PutPayload = std::mem::take(&mut pending).into_iter().collect();
                    pending_len = 0;
                    if upload.is_none() {
                        upload = Some(self.inner.put_multipart(&path).await?);
                    }
                    if let Some(u) = upload.as_mut() {
                        u.put_part(part).await?;
                    }
                }
            }
            let rest: PutPayload = std::mem::take(&mut pending).into_iter().collect();
            match upload.as_mut() {
                None => {
                    self.inner.put(&path, rest).await?;
                }
                Some(u) => {
                    if rest.content_length() > 0 {
                        u.put_part(rest).await?;
                    }
                    u.complete().await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            if let Some(mut u) = upload
                && let Err(abort) = u.abort().await
            {
                tracing::warn!(error = %abort, "could not abort a multipart upload");
            }
            return Err(e);
        }
        Ok(Written { size, sha256: hash.finalize().iter().map(|b| format!("{b:02x}")).collect() })
    }

    /// Streams an object, or the bytes `start..end` of it (`end` exclusive; `None`: to the end).
    /// `None` if it does not exist; [`BlobError::BadRange`] if `start` is past its end.
    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Option<BlobRead>, BlobError> {
        let path = self.path(key)?;
        let mut options = GetOptions::default();
        if let Some((start, end)) = range {
            options.range = Some(match end {
                Some(end) if end <= start => return Err(BlobError::BadRange),
                Some(end) => GetRange::Bounded(start..end),
                None => GetRange::Offset(start),
            });
        }
        match self.inner.get_opts(&path, options).await {
            Ok(r) => {
                let (size, range) = (r.meta.size, r.range.clone());
                Ok(Some(BlobRead { size, range, stream: r.into_stream().map_err(BlobError::from).boxed() }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(object_store::Error::NotModified { .. }) => Err(BlobError::BadRange),
            Err(e) if range.is_some() && e.to_string().to_lowercase().contains("range") => Err(BlobError::BadRange),
            Err(e) => Err(e.into()),
        }
    }

    /// An object's size and entity tag; `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError> {
        match self.inner.head(&self.path(key)?).await {
            Ok(m) => Ok(Some(BlobMeta { size: m.size, etag: m.e_tag })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies an object inside the store (server-side on S3). The copy appears whole.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), BlobError> {
        self.inner.copy(&self.path(from)?, &self.path(to)?).await?;
        Ok(())
    }

    /// Deletes one object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.inner.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a whole object; `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        match self.inner.get(&self.path(key)?).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Keys (relative to the store root) of every object under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let prefix_path = self.path(prefix.trim_end_matches('/'))?;
        let mut keys: Vec<String> = self
            .inner
            .list(Some(&prefix_path))
            .map_ok(|m| m.location.as_ref().strip_prefix(self.root.as_str()).unwrap_or(m.location.as_ref()).to_owned())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }

    /// Deletes every object under `prefix` (an env's prefix on env delete). Returns how many went.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, BlobError> {
        let prefix_path = self.path(prefix.trim_end_matches('/'))?;
        let locations = self.inner.list(Some(&prefix_path)).map_ok(|m| m.location).boxed();
        let deleted: Vec<ObjectPath> = self.inner.delete_stream(locations).try_collect().await?;
        Ok(deleted.len())
    }
}
