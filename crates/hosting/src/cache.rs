//! Per-process caches of the serving path, all bounded, so idle envs cost no memory beyond a bound:
//! which deployment an env publishes (1 s, so other instances see a publish within a second), parsed
//! deployments (immutable once ready, so never stale), and hot small files keyed by env and hash.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::EnvId;

use crate::compress::Encoding;
use crate::deploy::Deployment;

/// How long an alias read from the database is trusted.
pub const ALIAS_TTL: Duration = Duration::from_secs(1);
const MAX_ALIASES: usize = 10_000;
const MAX_DEPLOYMENTS: usize = 1_000;
/// Files up to this size are kept in memory once served.
pub const MAX_CACHED_FILE: usize = 512 * 1024;
/// Total bytes of cached files.
const FILE_BUDGET: usize = 64 * 1024 * 1024;

type FileKey = (EnvId, String, Encoding);

#[derive(Default)]
struct Files {
    map: HashMap<FileKey, Bytes>,
    order: VecDeque<FileKey>,
    bytes: usize,
}

#[derive(Default)]
pub struct Caches {
    aliases: Mutex<HashMap<EnvId, (Option<String>, Instant)>>,
    deployments: Mutex<HashMap<(EnvId, String), Arc<Deployment>>>,
    files: Mutex<Files>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Caches {
    /// The published deployment of `env` if read less than [`ALIAS_TTL`] ago.
    pub fn alias(&self, env: &EnvId) -> Option<Option<String>> {
        let aliases = lock(&self.aliases);
        let (dpl, at) = aliases.get(env)?;
        (at.elapsed() < ALIAS_TTL).then(|| dpl.clone())
    }

    pub fn set_alias(&self, env: &EnvId, deployment: Option<String>) {
        let mut aliases = lock(&self.aliases);
        if aliases.len() >= MAX_ALIASES {
            aliases.clear();
        }
        aliases.insert(env.clone(), (deployment, Instant::now()));
    }

    pub fn deployment(&self, env: &EnvId, id: &str) -> Option<Arc<Deployment>> {
        lock(&self.deployments).get(&(env.clone(), id.to_owned())).cloned()
    }

    pub fn put_deployment(&self, env: &EnvId, d: Arc<Deployment>) {
        let mut map = lock(&self.deployments);
        if map.len() >= MAX_DEPLOYMENTS {
            map.clear();
        }
        map.insert((env.clone(), d.id.clone()), d);
    }

    pub fn file(&self, env: &EnvId, sha: &str, enc: Encoding) -> Option<Bytes> {
        lock(&self.files).map.get(&(env.clone(), sha.to_owned(), enc)).cloned()
    }

    /// Keeps a small file, evicting the oldest entries beyond the budget.
    pub fn put_file(&self, env: &EnvId, sha: &str, enc: Encoding, data: Bytes) {
        if data.len() > MAX_CACHED_FILE {
            return;
        }
        let mut files = lock(&self.files);
        let key = (env.clone(), sha.to_owned(), enc);
        if files.map.contains_key(&key) {
            return;
        }
        files.bytes += data.len();
        files.map.insert(key.clone(), data);
        files.order.push_back(key);
        while files.bytes > FILE_BUDGET {
            let Some(old) = files.order.pop_front() else { break };
            if let Some(b) = files.map.remove(&old) {
                files.bytes -= b.len();
            }
        }
    }

    /// Drops everything of a deleted env.
    pub fn forget_env(&self, env: &EnvId) {
        lock(&self.aliases).remove(env);
        lock(&self.deployments).retain(|(e, _), _| e != env);
        let mut files = lock(&self.files);
        files.order.retain(|(e, _, _)| e != env);
        let gone: Vec<FileKey> = files.map.keys().filter(|(e, _, _)| e == env).cloned().collect();
        for k in gone {
            if let Some(b) = files.map.remove(&k) {
                files.bytes -= b.len();
            }
        }
    }
}
