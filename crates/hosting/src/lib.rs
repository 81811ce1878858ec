//! Static site hosting for every environment.
//!
//! A deployment is an immutable map of site paths to content hashes. Files are content-addressed
//! (SHA-256) and stored once per env under `envs/<env>/site/files/<sha256>` (with `.br` and `.gz`
//! variants made at upload), so a redeploy uploads only what changed, and no answer depends on what
//! another env holds. Publishing moves the env's alias to a ready deployment in one transaction; a
//! rollback is the same move to an older one. Serving ([`serve`]) resolves a request against a
//! deployment's manifest only, so no spelling of a path reaches anything the deployment does not list.

pub mod archive;
pub mod cache;
pub mod compress;
pub mod config;
pub mod deploy;
pub mod dns;
pub mod domains;
pub mod path;
pub mod serve;

use std::sync::Arc;

use platform::{Platform, PlatformError};
use protocol::EnvId;

pub use deploy::Target;

/// Why a hosting operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostingError {
    /// The request's content is invalid (bad path, bad hash, bad archive entry, bad config).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The deployment, file or site does not exist in this env.
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The request conflicts with the deployment's state (finalized twice, files missing, not ready).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// An archive, file or file count over its limit.
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// The platform (database, object store) failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

impl HostingError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { code, message: message.into() }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict { code, message: message.into() }
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::TooLarge { code, message: message.into() }
    }
}

impl From<store::StoreError> for HostingError {
    fn from(e: store::StoreError) -> Self {
        Self::Platform(e.into())
    }
}

impl From<store::BlobError> for HostingError {
    fn from(e: store::BlobError) -> Self {
        Self::Platform(e.into())
    }
}

pub type Result<T, E = HostingError> = std::result::Result<T, E>;

/// The hosting service of a platform. Cheap to clone.
#[derive(Clone)]
pub struct Hosting {
    platform: Platform,
    caches: Arc<cache::Caches>,
}

impl Hosting {
    pub fn new(platform: Platform) -> Self {
        Self { platform, caches: Arc::default() }
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Removes an env's deployment rows when the env is deleted (its objects go with the env's prefix).
    /// Holds the caches weakly, so the platform and the hosting service do not keep each other alive.
    pub fn register_delete_hook(&self) {
        let db = self.platform.db().clone();
        let caches = Arc::downgrade(&self.caches);
        self.platform.on_env_delete(Arc::new(move |env: EnvId| {
            let db = db.clone();
            let caches = caches.clone();
            Box::pin(async move {
                db.delete_env_rows(env.as_str(), &["site_aliases", "site_deployments", "site_files"])
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(c) = caches.upgrade() {
                    c.forget_env(&env);
                }
                Ok(())
            })
        }));
    }
}
