//! The object store: the local filesystem by default, any S3-compatible server with
//! `--object-store-url s3://bucket[/prefix]`. Every env's objects live under the prefix
//! [`tenancy::EnvLayout`] derives, and are only reached through that prefix.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as ObjectPath};

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
