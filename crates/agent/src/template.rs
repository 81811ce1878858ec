//! The built-in app template: a Vite + React + supabase-js project (its sources are in
//! `crates/agent/template`, built into the binary) with its dependencies installed, stored as a
//! copy-on-write sandbox template. Every agent sandbox starts from it, so a new sandbox has a project that
//! builds at once, in milliseconds, whatever the size of `node_modules`.
//!
//! The template is made on the first call that needs it, on this instance: a sandbox gets the sources,
//! `npm ci` installs the locked dependencies (through the egress proxy, which lets only the npm
//! registry through), and the workspace becomes the template. Its name carries a hash of the sources,
//! so a binary with other sources makes (and uses) a new one.

use std::sync::OnceLock;

use platform::Actor;
use protocol::EnvId;
use protocol::sandbox::CreateSandboxRequest;
use sandbox::Sandboxes;
use sandbox::client::OutputLimit;
use sandbox::proto::ExecSpec;
use sha2::Digest as _;

/// The template's files (path in the workspace, content).
pub const FILES: &[(&str, &str)] = &[
    ("package.json", include_str!("../template/package.json")),
    ("package-lock.json", include_str!("../template/package-lock.json")),
    ("index.html", include_str!("../template/index.html")),
    ("vite.config.js", include_str!("../template/vite.config.js")),
    ("README.md", include_str!("../template/README.md")),
    (".gitignore", include_str!("../template/.gitignore")),
    ("public/favicon.svg", include_str!("../template/public/favicon.svg")),
    ("src/main.jsx", include_str!("../template/src/main.jsx")),
    ("src/App.jsx", include_str!("../template/src/App.jsx")),
    ("src/supabase.js", include_str!("../template/src/supabase.js")),
    ("src/index.css", include_str!("../template/src/index.css")),
];

/// The file the platform writes into every agent sandbox's workspace: the env's publishable key for
/// Vite (`import.meta.env.VITE_SUPABASE_ANON_KEY`). It is safe in a browser; no secret is written.
pub const ENV_FILE: &str = ".env.local";

/// The registries the template build may reach.
const BUILD_EGRESS: &[&str] = &["registry.npmjs.org"];
/// Largest template archive.
const MAX_ARCHIVE: usize = 1024 * 1024 * 1024;

/// The template's name: `app-` and a hash of its files.
pub fn name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut h = sha2::Sha256::new();
        for (path, content) in FILES {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(content.as_bytes());
            h.update([0]);
        }
        format!("app-{}", &hex::encode(h.finalize())[..12])
    })
}

/// The content of [`ENV_FILE`] for an env's publishable key.
pub fn env_file(publishable_key: &str) -> String {
    format!(
        "# Written by vibebase. The env's APIs are on the published site's own origin; this is the\n\
         # publishable key (safe in a browser). Do not put secrets here.\n\
         VITE_SUPABASE_ANON_KEY={publishable_key}\n"
    )
}

/// Makes the template unless this instance has it; one build at a time (`lock`). The build runs in a
/// sandbox of `env` (the first env that needed it). Returns the template's name.
pub(crate) async fn ensure(
    sandboxes: &Sandboxes,
    lock: &tokio::sync::Mutex<()>,
    env: &EnvId,
    actor: &Actor,
) -> Result<&'static str, String> {
    let name = name();
    if sandboxes.templates().iter().any(|t| t == name) {
        return Ok(name);
    }
    let _building = lock.lock().await;
    if sandboxes.templates().iter().any(|t| t == name) {
        return Ok(name);
    }
    tracing::info!(template = name, env = %env, "building the app template (npm ci in a sandbox)");
    let req = CreateSandboxRequest {
        timeout_seconds: Some(1800),
        memory_mb: Some(1024),
        disk_mb: Some(2048),
        allow_egress: BUILD_EGRESS.iter().map(|h| (*h).to_owned()).collect(),
        ..Default::default()
    };
    let record = sandboxes.create(actor, env, req).await.map_err(|e| format!("could not start a sandbox: {e}"))?;
    let built = build_in(sandboxes, env, &record.id, name).await;
    let _ = sandboxes.kill(env, &record.id).await;
    built.map(|()| name)
}

async fn build_in(sandboxes: &Sandboxes, env: &EnvId, sandbox: &str, name: &str) -> Result<(), String> {
    let client = sandboxes.agent(env, sandbox).map_err(|e| e.to_string())?;
    for (path, content) in FILES {
        client.write_file(path, content.as_bytes(), None).await.map_err(|e| format!("writing {path}: {e}"))?;
    }
    // The npm cache stays outside the workspace, so it is not part of the template.
    let spec = ExecSpec {
        argv: ["bash", "-lc", "npm ci --no-audit --no-fund --loglevel=error --cache /tmp/npm-cache"]
            .map(str::to_owned)
            .to_vec(),
        timeout_ms: Some(1_200_000),
        ..Default::default()
    };
    let done = client.run(spec, None, OutputLimit(64 * 1024)).await.map_err(|e| e.to_string())?;
    if done.exit_code != 0 {
        return Err(format!(
            "npm ci exited with {}: {}",
            done.exit_code,
            String::from_utf8_lossy(&done.stderr).chars().take(2000).collect::<String>()
        ));
    }
    let archive = sandboxes.archive_dir(env, sandbox, ".", MAX_ARCHIVE).await.map_err(|e| e.to_string())?;
    sandboxes.put_template(name, archive).await.map_err(|e| e.to_string())?;
    tracing::info!(template = name, "the app template is ready");
    Ok(())
}
