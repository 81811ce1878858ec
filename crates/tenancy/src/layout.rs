//! Every name an environment owns, derived from its id in one place. Nothing else in the codebase builds
//! an env's path, database name, object key or cache key by hand, so two envs can never share one.

use std::path::{Path, PathBuf};

use protocol::EnvId;

/// The names an environment owns on every backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLayout {
    /// The env's private directory under the platform data dir.
    pub data_dir: PathBuf,
    /// Prefix of all of the env's objects in the object store (ends with `/`).
    pub object_prefix: String,
    /// Name of the env's PostgreSQL database (scale-out app database).
    pub database_name: String,
    /// Name of the env's SQLite file inside `data_dir` (embedded app database).
    pub sqlite_file: PathBuf,
    /// Prefix of the env's keys in any shared cache (ends with `:`).
    pub cache_prefix: String,
    /// The env's cgroup, relative to the platform's cgroup root.
    pub cgroup: String,
}

impl EnvLayout {
    /// The one derivation from env id to names. Env ids are DNS labels (no `/`, `.`, `_` or upper case),
    /// so every derived name is unique per env and safe as a path segment and an SQL identifier.
    pub fn new(data_root: &Path, env: &EnvId) -> Self {
        let id = env.as_str();
        let data_dir = data_root.join("envs").join(id);
        Self {
            sqlite_file: data_dir.join("app.db"),
            data_dir,
            object_prefix: format!("envs/{id}/"),
            database_name: format!("vb_env_{}", id.replace('-', "_")),
            cache_prefix: format!("env:{id}:"),
            cgroup: format!("vibebase/env-{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_different_envs_never_collide_or_nest() {
        let root = Path::new("/data");
        let ids = ["app", "app2", "app-2", "a", "ap"];
        let layouts: Vec<EnvLayout> =
            ids.iter().filter_map(|i| EnvId::parse(i).ok()).map(|e| EnvLayout::new(root, &e)).collect();
        assert_eq!(layouts.len(), ids.len());
        for (i, a) in layouts.iter().enumerate() {
            for b in &layouts[i + 1..] {
                assert!(
                    !a.object_prefix.starts_with(&b.object_prefix) && !b.object_prefix.starts_with(&a.object_prefix)
                );
                assert!(!a.data_dir.starts_with(&b.data_dir) && !b.data_dir.starts_with(&a.data_dir));
                assert_ne!(a.database_name, b.database_name);
                assert!(!a.cache_prefix.starts_with(&b.cache_prefix));
            }
        }
    }
}
