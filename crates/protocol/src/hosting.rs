//! Request and response bodies of the static hosting API (`/v1/envs/{env}/deployments`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most files one deployment may hold.
pub const MAX_DEPLOYMENT_FILES: usize = 20_000;
/// Largest single file of a deployment (bytes).
pub const MAX_SITE_FILE_BYTES: usize = 64 * 1024 * 1024;
/// Largest uncompressed total of an archive deploy (bytes): a decompression bomb stops here.
pub const MAX_ARCHIVE_UNPACKED_BYTES: u64 = 512 * 1024 * 1024;
/// Largest archive body (bytes).
pub const MAX_ARCHIVE_BYTES: usize = 128 * 1024 * 1024;
/// The per-deployment configuration file (headers and redirects), read at finalize and never served.
pub const CONFIG_FILE: &str = "vibebase.json";

/// `POST /v1/envs/{env}/deployments`: the site's files as path → SHA-256 (lowercase hex).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDeploymentRequest {
    /// Site-relative paths (`index.html`, `assets/app.3f9a1c.js`) → SHA-256 of the file's bytes.
    pub files: BTreeMap<String, String>,
}

/// Where a deployment can be opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentUrls {
    /// Host form (`<deployment>--<env>.<apps-domain>`), what a browser opens.
    pub preview: String,
    /// Path form on the listen address, for clients that cannot set a Host.
    pub preview_path: String,
    /// The env's published site (host form).
    pub site: String,
}

/// A deployment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Created; waiting for missing files and finalize.
    Pending,
    /// Complete and immutable; can be previewed and published.
    Ready,
}

/// A deployment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentRecord {
    pub id: String,
    pub env: String,
    pub status: DeploymentStatus,
    /// True while the env's site alias points at it.
    pub published: bool,
    pub file_count: u64,
    /// Sum of the files' sizes (known once ready).
    pub total_bytes: u64,
    pub created_at: String,
    pub urls: DeploymentUrls,
}

/// The answer to creating a deployment: the record, and the hashes the env does not hold yet (upload
/// each with `PUT …/files/{sha256}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedDeployment {
    pub deployment: DeploymentRecord,
    pub missing: Vec<String>,
}

/// `GET /v1/envs/{env}/deployments`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentList {
    pub items: Vec<DeploymentRecord>,
}

/// `POST /v1/envs/{env}/sandboxes/{sandbox}/deploy`: deploy a directory of a running sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxDeployRequest {
    /// The built site inside the sandbox: absolute, or relative to `/home/user` (e.g. `dist`).
    #[schema(min_length = 1, max_length = 1024)]
    pub path: String,
    /// Publish it as the env's site once complete.
    #[serde(default)]
    pub publish: bool,
}

/// The DNS name a custom domain's ownership token is published under: `_vibebase-challenge.<domain>`.
pub const DOMAIN_CHALLENGE_LABEL: &str = "_vibebase-challenge";

/// `POST /v1/envs/{env}/domains`: attach a custom domain to the env.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDomainRequest {
    /// A DNS name such as `www.example.com` (not an IP address, not under the apps domain).
    #[schema(min_length = 1, max_length = 253)]
    pub domain: String,
}

/// Whether a custom domain is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DomainStatus {
    /// Attached; not served until its ownership is proven.
    Pending,
    /// Ownership proven: served by Host (and over TLS when the instance has a TLS listener).
    Verified,
}

/// How to prove ownership of a domain: publish a DNS TXT record `name` = `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DomainVerification {
    /// Always `dns_txt`.
    pub kind: String,
    /// `_vibebase-challenge.<domain>`.
    pub name: String,
    /// The token the TXT record must hold.
    pub value: String,
}

/// A custom domain of an env.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DomainRecord {
    pub domain: String,
    pub env: String,
    pub status: DomainStatus,
    pub verification: DomainVerification,
    pub created_at: String,
    pub verified_at: Option<String>,
    /// `http://<domain>/` (what a browser opens once the domain is verified and points here).
    pub url: String,
}

/// `GET /v1/envs/{env}/domains`, in name order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DomainList {
    pub items: Vec<DomainRecord>,
}
