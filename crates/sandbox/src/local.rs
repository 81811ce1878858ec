//! The local backend: bubblewrap namespaces + cgroups on this host, with the agent inside.
//!
//! Per sandbox the host keeps a run directory (`<run_root>/sb/<id>`) holding the agent's socket
//! directory and the sandbox's `/etc/passwd`, and, for a persistent workspace, mounts the workspace's
//! ext4 image (a fixed-size file: the filesystem itself enforces the disk quota) under
//! `<run_root>/mnt/<id>`. A disposable workspace is a size-limited tmpfs instead.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

use crate::agent::{RUN_DIR, SOCKET_NAME, WORKSPACE};
use crate::cgroup::{Cgroup, Hierarchy, Limits};
use crate::client::AgentClient;
use crate::launch::LaunchPlan;
use crate::{Backend, Instance, SandboxError, StartPlan, Usage};

/// Where the agent binary lives inside every sandbox.
const AGENT_PATH: &str = "/.vb/agent";
/// The uid and gid processes have inside (E2B's `user`).
const INNER_ID: u32 = 1000;
/// Files of the host's `/etc` a sandbox may read: TLS roots, name-service and locale basics.
const ETC_ALLOWED: &[&str] = &[
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
    // The host's registry settings (mirror, CA file), for installs through the egress proxy.
    "/etc/npmrc",
    "/etc/pip.conf",
];

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Host directory for run dirs and mount points; must be traversable by `uid`.
    pub run_root: PathBuf,
    /// The `vibebase` executable (agent and launcher).
    pub exe: PathBuf,
    /// The unprivileged host uid and gid sandboxes run as (never 0).
    pub uid: u32,
    pub gid: u32,
    pub bwrap: PathBuf,
    /// `/sys/fs/cgroup`, or a test root.
    pub cgroup_root: PathBuf,
    /// Where templates persist (in the data dir); bind-mounted at `<run_root>/templates` so the
    /// overlay options a sandbox can read name no data-dir path.
    pub template_root: PathBuf,
}

/// The bubblewrap backend.
pub struct LocalBackend {
    config: LocalConfig,
    hierarchy: Hierarchy,
    /// The agent binary as placed in the run root (readable by the sandbox uid).
    agent: PathBuf,
}

fn start_err(what: &str) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |e| SandboxError::Start(format!("{what}: {e}"))
}

impl LocalBackend {
    /// Checks the host (bubblewrap, cgroups, the uid) and prepares the run root.
    pub fn new(config: LocalConfig) -> Result<Self, SandboxError> {
        if config.uid == 0 || config.gid == 0 {
            return Err(SandboxError::Unavailable("sandboxes must not run as uid or gid 0".to_owned()));
        }
        if !config.bwrap.exists() {
            return Err(SandboxError::Unavailable(format!(
                "{} not found (install the Debian package bubblewrap)",
                config.bwrap.display()
            )));
        }
        let hierarchy = Hierarchy::detect(&config.cgroup_root).map_err(|e| SandboxError::Unavailable(e.to_string()))?;
        for dir in [config.run_root.clone(), config.run_root.join("sb"), config.run_root.join("mnt")] {
            std::fs::create_dir_all(&dir).map_err(start_err("run root"))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(start_err("run root"))?;
        }
        // The binary, linked (or copied) into the run root: the sandbox uid may not be able to reach
        // the original, and its path must not show inside.
        let agent = config.run_root.join("agent");
        let tmp = config.run_root.join(format!("agent.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&config.exe, &tmp).is_err() {
            std::fs::copy(&config.exe, &tmp).map_err(start_err("copy agent"))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(start_err("agent"))?;
        std::fs::rename(&tmp, &agent).map_err(start_err("agent"))?;
        let backend = Self { config, hierarchy, agent };
        backend.sweep();
        backend.mount_templates()?;
        Ok(backend)
    }

    fn templates_dir(&self) -> PathBuf {
        self.config.run_root.join("templates")
    }

    /// Binds the template store into the run root (once per run root).
    fn mount_templates(&self) -> Result<(), SandboxError> {
        let store = &self.config.template_root;
        let target = self.templates_dir();
        for dir in [store, &target] {
            std::fs::create_dir_all(dir).map_err(start_err("templates"))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(start_err("templates"))?;
        }
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*target.to_string_lossy()));
        if !mounted {
            let status = std::process::Command::new("mount")
                .arg("--bind")
                .arg(store)
                .arg(&target)
                .stdin(Stdio::null())
                .status()
                .map_err(start_err("templates"))?;
            if !status.success() {
                return Err(SandboxError::Unavailable("cannot bind the template store".to_owned()));
            }
        }
        Ok(())
    }

    /// Ends what a previous run with the same run root left behind (after a crash): its sandboxes'
    /// processes and cgroups, workspace mounts and run directories.
    fn sweep(&self) {
        let base = Cgroup::existing(&self.hierarchy, &self.cgroup_base());
        for env in base.children() {
            let env_group = Cgroup::existing(&self.hierarchy, &self.cgroup_base().join(&env));
            for sb in env_group.children() {
                let group = Cgroup::existing(&self.hierarchy, &self.cgroup_base().join(&env).join(sb));
                for _ in 0..50 {
                    if !group.kill_round() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                group.remove_if_empty();
            }
            env_group.remove_if_empty();
        }
        if let Ok(rd) = std::fs::read_dir(self.config.run_root.join("mnt")) {
            for m in rd.flatten() {
                let _ = std::process::Command::new("umount").arg("-l").arg(m.path()).stderr(Stdio::null()).status();
                let _ = std::fs::remove_dir(m.path());
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.config.run_root.join("sb")) {
            for d in rd.flatten() {
                let ws = d.path().join("ws");
                let _ = std::process::Command::new("umount").arg("-l").arg(&ws).stderr(Stdio::null()).status();
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }

    /// This instance's cgroup subtree (named after its run root, so instances never collide).
    fn cgroup_base(&self) -> PathBuf {
        let tag =
            self.config.run_root.file_name().map_or_else(|| "default".into(), |n| n.to_string_lossy().into_owned());
        PathBuf::from("vibebase").join(tag)
    }

    fn bwrap_args(&self, plan: &StartPlan, run: &Path, workspace: Option<&Path>) -> Vec<String> {
        let mut a: Vec<String> = [
            "--unshare-user",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
            "--clearenv",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/sbin",
            "/sbin",
            "--symlink",
            "usr/lib",
            "/lib",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
        let id = INNER_ID.to_string();
        push(&["--uid", &id, "--gid", &id]);
        if Path::new("/usr/lib64").exists() {
            push(&["--symlink", "usr/lib64", "/lib64"]);
        }
        for etc in ETC_ALLOWED {
            push(&["--ro-bind-try", etc, etc]);
        }
        let passwd = run.join("passwd");
        let group = run.join("group");
        let sock = run.join("sock");
        let agent = self.agent.to_string_lossy().into_owned();
        push(&["--ro-bind", &passwd.to_string_lossy(), "/etc/passwd"]);
        push(&["--ro-bind", &group.to_string_lossy(), "/etc/group"]);
        push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        match workspace {
            Some(dir) => push(&["--bind", &dir.to_string_lossy(), WORKSPACE]),
            None => push(&["--size", &plan.disk_bytes.to_string(), "--tmpfs", WORKSPACE]),
        }
        push(&["--bind", &sock.to_string_lossy(), RUN_DIR]);
        push(&["--ro-bind", &agent, AGENT_PATH]);
        push(&["--chdir", WORKSPACE]);
        let mut env: BTreeMap<&str, &str> = BTreeMap::from([
            ("HOME", WORKSPACE),
            ("USER", "user"),
            ("LOGNAME", "user"),
            ("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"),
            ("LANG", "C.UTF-8"),
            ("TERM", "xterm-256color"),
            ("SHELL", "/bin/bash"),
        ]);
        for (k, v) in &plan.env_vars {
            env.insert(k, v);
        }
        for (k, v) in env {
            push(&["--setenv", k, v]);
        }
        a
    }
}

/// A sandbox's host-side resources.
struct LocalInstance {
    /// Accepts the sandbox's outbound connections for the egress proxy.
    egress: Option<tokio::task::JoinHandle<()>>,
    cgroup: Cgroup,
    run: PathBuf,
    workspace_mount: Option<PathBuf>,
    child: tokio::sync::Mutex<tokio::process::Child>,
    agent: AgentClient,
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> String {
        format!("bubblewrap/cgroup-v{}", self.hierarchy.version())
    }

    async fn put_template(&self, name: &str, archive: Vec<u8>) -> Result<(), SandboxError> {
        let store = &self.config.template_root;
        let suffix = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        );
        let fresh = store.join(format!(".{name}.new-{suffix}"));
        tokio::fs::create_dir(&fresh).await.map_err(start_err("template"))?;
        std::os::unix::fs::chown(&fresh, Some(self.config.uid), Some(self.config.gid))
            .map_err(start_err("template"))?;
        // Unpacked as the sandbox uid: the files are the sandbox user's inside (so copy-up works), and
        // the archive cannot write anything that uid could not.
        let mut child = tokio::process::Command::new("tar")
            .args(["-xzf", "-", "--no-same-owner", "-C"])
            .arg(&fresh)
            .uid(self.config.uid)
            .gid(self.config.gid)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(start_err("tar"))?;
        let mut stdin = child.stdin.take();
        let write = async move {
            if let Some(s) = &mut stdin {
                let _ = s.write_all(&archive).await;
            }
        };
        let (out, ()) = tokio::join!(async { child.wait_with_output().await }, write);
        let out = out.map_err(start_err("tar"))?;
        if !out.status.success() {
            let _ = tokio::fs::remove_dir_all(&fresh).await;
            return Err(SandboxError::Invalid {
                code: "invalid_archive",
                message: format!("not a tar.gz archive: {}", String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        let _ = tokio::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).await;
        let target = store.join(name);
        let old = store.join(format!(".{name}.old-{suffix}"));
        let had_old = tokio::fs::rename(&target, &old).await.is_ok();
        tokio::fs::rename(&fresh, &target).await.map_err(start_err("template"))?;
        if had_old {
            let _ = tokio::fs::remove_dir_all(&old).await;
        }
        Ok(())
    }

    fn templates(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.config.template_root)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| crate::valid_template_name(n))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn delete_template(&self, name: &str) -> Result<(), SandboxError> {
        tokio::fs::remove_dir_all(self.config.template_root.join(name)).await.map_err(|_| SandboxError::NotFound)
    }

    async fn shutdown(&self) {
        self.sweep();
        let _ = run_tool("umount", &["-l", &self.templates_dir().to_string_lossy()]).await;
        Cgroup::existing(&self.hierarchy, &self.cgroup_base()).remove_if_empty();
        let _ = tokio::fs::remove_dir_all(&self.config.run_root).await;
    }

    async fn start(&self, plan: StartPlan) -> Result<Box<dyn Instance>, SandboxError> {
        let run = self.config.run_root.join("sb").join(&plan.id);
        let cgroup_rel = self.cgroup_base().join(format!("env-{}", plan.env)).join(format!("sb-{}", plan.id));
        let limits =
            Limits { memory_bytes: plan.memory_bytes, pids: plan.max_processes, cpu_percent: plan.cpu_percent };
        let mut mount = None;
        let mut cgroup = None;
        let started = std::time::Instant::now();
        let result = async {
            prepare_run_dir(&run, self.config.uid, self.config.gid).await?;
            tracing::debug!(us = started.elapsed().as_micros() as u64, "sandbox start: run dir");
            if let Some(image) = &plan.workspace_image {
                let target = self.config.run_root.join("mnt").join(&plan.id);
                mount_image(image, &target, plan.disk_bytes, self.config.uid, self.config.gid).await?;
                mount = Some(target);
            } else if let Some(template) = &plan.template {
                let target = self.config.run_root.join("mnt").join(&plan.id);
                let lower = self.templates_dir().join(template);
                mount_overlay(&lower, &run.join("ws"), &target, plan.disk_bytes, self.config.uid, self.config.gid)
                    .await?;
                mount = Some(target);
            }
            tracing::debug!(us = started.elapsed().as_micros() as u64, "sandbox start: workspace");
            let cg =
                Cgroup::create(&self.hierarchy, &cgroup_rel, limits).map_err(|e| SandboxError::Start(e.to_string()))?;
            tracing::debug!(us = started.elapsed().as_micros() as u64, "sandbox start: cgroup");
            let procs = cg_procs(&self.hierarchy, &cgroup_rel);
            cgroup = Some(cg.clone());
            let args = self.bwrap_args(&plan, &run, mount.as_deref());
            let launch = LaunchPlan {
                cgroup_procs: procs,
                uid: self.config.uid,
                gid: self.config.gid,
                bwrap: self.config.bwrap.to_string_lossy().into_owned(),
                args,
                command: vec![AGENT_PATH.to_owned(), crate::AGENT_COMMAND.to_owned()],
            };
            let child = spawn_launcher(&self.config.exe, &launch).await?;
            tracing::debug!(us = started.elapsed().as_micros() as u64, "sandbox start: agent ready");
            Ok::<_, SandboxError>((cg, child))
        }
        .await;
        match result {
            Ok((cgroup, child)) => {
                let socket = run.join("sock").join(SOCKET_NAME);
                let egress = match &plan.egress {
                    Some((ctx, handler)) => match listen_egress(&run, ctx.clone(), handler.clone()) {
                        Ok(task) => Some(task),
                        Err(e) => {
                            tracing::warn!(sandbox = %plan.id, error = %e, "no egress proxy for this sandbox");
                            None
                        }
                    },
                    None => None,
                };
                Ok(Box::new(LocalInstance {
                    egress,
                    cgroup,
                    run,
                    workspace_mount: mount,
                    child: tokio::sync::Mutex::new(child),
                    agent: AgentClient::new(socket),
                }))
            }
            Err(e) => {
                if let Some(cg) = cgroup {
                    let _ = cg.kill_and_remove().await;
                }
                if let Some(m) = mount {
                    unmount(&m).await;
                }
                if plan.template.is_some() {
                    unmount(&run.join("ws")).await;
                }
                let _ = tokio::fs::remove_dir_all(&run).await;
                Err(e)
            }
        }
    }
}

fn cg_procs(h: &Hierarchy, rel: &Path) -> Vec<String> {
    match h {
        Hierarchy::V2(root) => vec![root.join(rel).join("cgroup.procs").to_string_lossy().into_owned()],
        Hierarchy::V1(root) => ["memory", "pids", "cpu", "cpuacct", "freezer"]
            .iter()
            .map(|c| root.join(c).join(rel).join("cgroup.procs").to_string_lossy().into_owned())
            .collect(),
    }
}

/// Listens on the sandbox's egress socket (in its run dir, reachable from inside as
/// `/run/vb/egress.sock`) and hands each connection to the platform's proxy.
fn listen_egress(
    run: &Path,
    ctx: crate::EgressContext,
    handler: crate::EgressHandler,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = run.join("sock").join(crate::agent::EGRESS_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            handler(ctx.clone(), conn);
        }
    }))
}

async fn prepare_run_dir(run: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    let sock = run.join("sock");
    tokio::fs::create_dir_all(&sock).await.map_err(start_err("run dir"))?;
    tokio::fs::set_permissions(run, std::fs::Permissions::from_mode(0o711)).await.map_err(start_err("run dir"))?;
    std::os::unix::fs::chown(&sock, Some(uid), Some(gid)).map_err(start_err("run dir"))?;
    tokio::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o700)).await.map_err(start_err("run dir"))?;
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\nuser:x:{INNER_ID}:{INNER_ID}:user:{WORKSPACE}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nuser:x:{INNER_ID}:\nnogroup:x:65534:\n");
    for (name, body) in [("passwd", passwd), ("group", group)] {
        let p = run.join(name);
        tokio::fs::write(&p, body).await.map_err(start_err("run dir"))?;
        tokio::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).await.map_err(start_err("run dir"))?;
    }
    Ok(())
}

/// Starts the launcher, hands it the plan, and waits for the agent's `ready`.
async fn spawn_launcher(exe: &Path, plan: &LaunchPlan) -> Result<tokio::process::Child, SandboxError> {
    let mut child = tokio::process::Command::new(exe)
        .arg(crate::LAUNCH_COMMAND)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(start_err("launcher"))?;
    let body = serde_json::to_vec(plan).map_err(|e| SandboxError::Start(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body).await.map_err(start_err("launcher"))?;
    }
    let mut stdout = child.stdout.take().map(tokio::io::BufReader::new);
    let mut line = String::new();
    let ready = match &mut stdout {
        Some(out) => tokio::time::timeout(Duration::from_secs(20), out.read_line(&mut line)).await,
        None => return Err(SandboxError::Start("launcher has no stdout".to_owned())),
    };
    if matches!(ready, Ok(Ok(_))) && line.trim() == "ready" {
        return Ok(child);
    }
    let _ = child.start_kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut err)).await;
    }
    let _ = child.wait().await;
    Err(SandboxError::Start(format!("the sandbox did not start: {}", err.trim())))
}

/// Mounts a workspace image, creating and formatting it (sparse, owned by the sandbox uid) first
/// when it does not exist yet.
async fn mount_image(image: &Path, target: &Path, bytes: u64, uid: u32, gid: u32) -> Result<(), SandboxError> {
    if !image.exists() {
        if let Some(parent) = image.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(start_err("workspace"))?;
        }
        let tmp = image.with_extension("img.new");
        let file = tokio::fs::File::create(&tmp).await.map_err(start_err("workspace"))?;
        file.set_len(bytes).await.map_err(start_err("workspace"))?;
        drop(file);
        let owner = format!("root_owner={uid}:{gid},lazy_itable_init=1,lazy_journal_init=1");
        run_tool("mkfs.ext4", &["-q", "-F", "-m", "0", "-E", &owner, &tmp.to_string_lossy()]).await?;
        tokio::fs::rename(&tmp, image).await.map_err(start_err("workspace"))?;
    }
    tokio::fs::create_dir_all(target).await.map_err(start_err("workspace"))?;
    run_tool("mount", &["-o", "loop,nosuid,nodev", &image.to_string_lossy(), &target.to_string_lossy()]).await?;
    // The image's lost+found is root's; nothing else in the workspace is.
    let _ = tokio::fs::remove_dir(target.join("lost+found")).await;
    Ok(())
}

/// A copy-on-write workspace: the template read-only below, a size-limited tmpfs (owned by the
/// sandbox uid) above. Nothing is copied, so it is ready in milliseconds whatever the template's size.
async fn mount_overlay(
    lower: &Path,
    layer: &Path,
    target: &Path,
    bytes: u64,
    uid: u32,
    gid: u32,
) -> Result<(), SandboxError> {
    if !lower.is_dir() {
        return Err(SandboxError::Invalid { code: "template_not_found", message: "no such template".to_owned() });
    }
    tokio::fs::create_dir_all(layer).await.map_err(start_err("workspace"))?;
    let opts = format!("size={bytes},mode=0755,uid={uid},gid={gid}");
    run_tool("mount", &["-t", "tmpfs", "-o", &opts, "vbws", &layer.to_string_lossy()]).await?;
    for d in ["upper", "work"] {
        let p = layer.join(d);
        tokio::fs::create_dir(&p).await.map_err(start_err("workspace"))?;
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(start_err("workspace"))?;
    }
    tokio::fs::create_dir_all(target).await.map_err(start_err("workspace"))?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        layer.join("upper").display(),
        layer.join("work").display()
    );
    run_tool("mount", &["-t", "overlay", "-o", &opts, "vbws", &target.to_string_lossy()]).await
}

async fn run_tool(program: &str, args: &[&str]) -> Result<(), SandboxError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| SandboxError::Start(format!("{program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Start(format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

async fn unmount(target: &Path) {
    for _ in 0..50 {
        if run_tool("umount", &[&target.to_string_lossy()]).await.is_ok() {
            let _ = tokio::fs::remove_dir(target).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still busy: detach it so the image is freed once the last user is gone.
    let _ = run_tool("umount", &["-l", &target.to_string_lossy()]).await;
    let _ = tokio::fs::remove_dir(target).await;
}

#[async_trait]
impl Instance for LocalInstance {
    fn agent(&self) -> AgentClient {
        self.agent.clone()
    }

    async fn pause(&self) -> Result<(), SandboxError> {
        self.cgroup.freeze().map_err(|e| SandboxError::Start(e.to_string()))
    }

    async fn resume(&self) -> Result<(), SandboxError> {
        self.cgroup.thaw().map_err(|e| SandboxError::Start(e.to_string()))
    }

    fn usage(&self) -> Usage {
        Usage {
            cpu_us: self.cgroup.cpu_usage_us(),
            memory_bytes: self.cgroup.memory_bytes(),
            pids_refused: self.cgroup.pids_refused(),
            oom_kills: self.cgroup.oom_kills(),
        }
    }

    async fn alive(&self) -> bool {
        matches!(self.child.lock().await.try_wait(), Ok(None))
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        if let Some(task) = &self.egress {
            task.abort();
        }
        let killed = self.cgroup.kill_and_remove().await;
        {
            let mut child = self.child.lock().await;
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        self.cgroup.remove_empty_parent();
        if let Some(m) = &self.workspace_mount {
            unmount(m).await;
        }
        // A template workspace's writable layer (a tmpfs), if any.
        if tokio::fs::metadata(self.run.join("ws")).await.is_ok() {
            unmount(&self.run.join("ws")).await;
        }
        let _ = tokio::fs::remove_dir_all(&self.run).await;
        killed.map_err(|e| SandboxError::Start(e.to_string()))
    }
}

/// The default run root for a platform whose data dir is `data_dir`: under `/run/vibebase`, one per
/// data dir, so several instances on one host never share agent copies or mount points.
pub fn default_run_root(data_dir: &Path) -> PathBuf {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    data_dir.hash(&mut h);
    PathBuf::from("/run/vibebase").join(format!("{:012x}", h.finish() & 0xffff_ffff_ffff))
}

/// The local backend with this host's defaults: `/usr/bin/bwrap`, `/sys/fs/cgroup`.
pub fn host_config(exe: PathBuf, run_root: PathBuf, template_root: PathBuf, uid: u32) -> LocalConfig {
    LocalConfig {
        template_root,
        run_root,
        exe,
        uid,
        gid: uid,
        bwrap: PathBuf::from("/usr/bin/bwrap"),
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
    }
}
