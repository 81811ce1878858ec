//! The in-sandbox agent: the first process inside every sandbox. It binds its socket, confines itself
//! (Landlock, seccomp) so everything it starts inherits the confinement, says `ready` on stdout, and
//! then serves [`crate::proto`] requests: processes (exec, stdin, signals, PTY, background) and files.

use std::collections::HashMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::confine;
use crate::proto::{
    AgentError, Bytes, CHUNK, Chunk, EntryInfo, ExecEvent, ExecInput, ExecSpec, ProcessInfo, Reply, Request,
    WatchEvent, read_frame, write_frame,
};

/// Where the workspace is, inside every sandbox (E2B's home directory).
pub const WORKSPACE: &str = "/home/user";
/// The agent's directory inside the sandbox (bind-mounted from the host; holds the socket).
pub const RUN_DIR: &str = "/run/vb";
/// The socket's file name inside [`RUN_DIR`].
pub const SOCKET_NAME: &str = "agent.sock";
/// The egress proxy's socket inside [`RUN_DIR`] (the host listens on it).
pub const EGRESS_SOCKET: &str = "egress.sock";
/// The loopback port inside every sandbox where the agent relays to the egress proxy
/// (`HTTP_PROXY` / `HTTPS_PROXY` point here).
pub const EGRESS_PORT: u16 = 3128;

/// Runs the agent until the sandbox is torn down. Returns a process exit code.
pub fn run() -> i32 {
    let socket = Path::new(RUN_DIR).join(SOCKET_NAME);
    let _ = std::fs::remove_file(&socket);
    let listener = match std::os::unix::net::UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => return fail(&format!("bind {}: {e}", socket.display())),
    };
    // Confinement comes before any other thread exists, so it covers the whole process.
    if let Err(e) = confine::landlock(&confine::Writable { workspace: WORKSPACE }) {
        return fail(&e.to_string());
    }
    if let Err(e) = confine::seccomp() {
        return fail(&e.to_string());
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("runtime: {e}")),
    };
    runtime.block_on(async move {
        if listener.set_nonblocking(true).is_err() {
            return fail("socket setup failed");
        }
        let listener = match UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return fail(&format!("socket: {e}")),
        };
        // The host waits for this line before it reports the sandbox ready.
        let mut out = tokio::io::stdout();
        if out.write_all(b"ready\n").await.is_err() || out.flush().await.is_err() {
            return 1;
        }
        // Sandboxed code may signal the agent (same uid, same Landlock domain): every catchable
        // signal is taken and dropped, so only SIGKILL, which ends the sandbox, can stop it.
        ignore_signals();
        tokio::spawn(relay_egress());
        let agent = Agent::default();
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let agent = agent.clone();
                    tokio::spawn(async move { agent.serve(conn).await });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            }
        }
    })
}

/// Relays connections to the in-sandbox proxy port to the host's egress proxy, byte for byte; the host
/// decides what may pass.
async fn relay_egress() {
    let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", EGRESS_PORT)).await else { return };
    let socket = Path::new(RUN_DIR).join(EGRESS_SOCKET);
    while let Ok((mut tcp, _)) = listener.accept().await {
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Ok(mut host) = UnixStream::connect(&socket).await {
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut host).await;
            }
        });
    }
}

fn ignore_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [
        SignalKind::hangup(),
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::quit(),
        SignalKind::alarm(),
        SignalKind::pipe(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        if let Ok(mut s) = signal(kind) {
            tokio::spawn(async move { while s.recv().await.is_some() {} });
        }
    }
}

fn fail(message: &str) -> i32 {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "vibebase agent: {message}");
    1
}

/// A process the agent started and that is still running.
struct Proc {
    info: ProcessInfo,
    /// Where events go: every attached connection.
    subscribers: Vec<mpsc::Sender<ExecEvent>>,
    stdin: Option<mpsc::Sender<ExecInput>>,
    /// The terminal's master side, for resizing.
    pty: Option<Arc<OwnedFd>>,
}

#[derive(Clone, Default)]
struct Agent {
    procs: Arc<Mutex<HashMap<u32, Proc>>>,
}

type Conn = UnixStream;

impl Agent {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Proc>> {
        self.procs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn serve(&self, mut conn: Conn) {
        let request: Request = match read_frame(&mut conn).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = reply_err(&mut conn, AgentError::new("bad_request", e.to_string())).await;
                return;
            }
        };
        let result = match request {
            Request::Ping => write_frame(&mut conn, &Reply::Pong).await,
            Request::Exec(spec) => self.exec(conn, spec).await,
            Request::Connect { pid } => self.connect(conn, pid).await,
            Request::Input { pid, data, eof } => {
                let r = self.input(pid, data, eof).await;
                answer(&mut conn, r.map(|()| Reply::Ok)).await
            }
            Request::Signal { pid, signal } => answer(&mut conn, self.signal(pid, signal).map(|()| Reply::Ok)).await,
            Request::Resize { pid, cols, rows } => {
                answer(&mut conn, self.resize(pid, cols, rows).map(|()| Reply::Ok)).await
            }
            Request::List => {
                let processes = self.table().values().map(|p| p.info.clone()).collect();
                write_frame(&mut conn, &Reply::Processes { processes }).await
            }
            Request::Read { path } => read_file(&mut conn, &path).await,
            Request::Write { path, mode } => {
                let r = write_file(&mut conn, &path, mode).await;
                answer(&mut conn, r).await
            }
            Request::ListDir { path, depth } => {
                let r = blocking(move || list_dir(&path, depth)).await;
                answer(&mut conn, r.map(|entries| Reply::Entries { entries })).await
            }
            Request::Stat { path } => {
                let r = blocking(move || {
                    let p = resolve(&path)?;
                    entry_info(&p).map_err(|e| AgentError::io("stat", &e))
                })
                .await;
                answer(&mut conn, r.map(|entry| Reply::Entry { entry })).await
            }
            Request::MakeDir { path } => {
                let r = blocking(move || {
                    let p = resolve(&path)?;
                    if p.is_dir() {
                        return Err(AgentError::new("exists", format!("{} exists", p.display())));
                    }
                    std::fs::create_dir_all(&p).map_err(|e| AgentError::io("mkdir", &e))?;
                    entry_info(&p).map_err(|e| AgentError::io("stat", &e))
                })
                .await;
                answer(&mut conn, r.map(|entry| Reply::Entry { entry })).await
            }
            Request::Move { from, to } => {
                let r = blocking(move || {
                    let (from, to) = (resolve(&from)?, resolve(&to)?);
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| AgentError::io("move", &e))?;
                    }
                    std::fs::rename(&from, &to).map_err(|e| AgentError::io("move", &e))?;
                    entry_info(&to).map_err(|e| AgentError::io("stat", &e))
                })
                .await;
                answer(&mut conn, r.map(|entry| Reply::Entry { entry })).await
            }
            Request::Remove { path } => {
                let r = blocking(move || {
                    let p = resolve(&path)?;
                    let meta = std::fs::symlink_metadata(&p).map_err(|e| AgentError::io("remove", &e))?;
                    if meta.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }
                        .map_err(|e| AgentError::io("remove", &e))
                })
                .await;
                answer(&mut conn, r.map(|()| Reply::Ok)).await
            }
            Request::Watch { path, recursive } => watch(&mut conn, &path, recursive).await,
            Request::Forward { port } => forward_port(conn, port).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended");
        }
    }

    /// Starts a process and streams it on `conn` until it exits or the connection closes (then the
    /// process goes on in the background).
    async fn exec(&self, mut conn: Conn, spec: ExecSpec) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel(64);
        let started = match self.start(spec, tx) {
            Ok(pid) => pid,
            Err(e) => {
                return write_frame(
                    &mut conn,
                    &ExecEvent::Exited { exit_code: 127, signal: None, timed_out: false, error: Some(e.to_string()) },
                )
                .await;
            }
        };
        write_frame(&mut conn, &ExecEvent::Started { pid: started }).await?;
        self.pump(conn, started, rx).await
    }

    async fn connect(&self, mut conn: Conn, pid: u32) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel(64);
        let found = match self.table().get_mut(&pid) {
            Some(p) => {
                p.subscribers.push(tx);
                true
            }
            None => false,
        };
        if !found {
            return reply_err(&mut conn, no_process(pid)).await;
        }
        write_frame(&mut conn, &ExecEvent::Started { pid }).await?;
        self.pump(conn, pid, rx).await
    }

    /// Forwards events out and inputs in until the process exits or the peer leaves.
    async fn pump(&self, conn: Conn, pid: u32, mut events: mpsc::Receiver<ExecEvent>) -> std::io::Result<()> {
        let (mut rd, mut wr) = conn.into_split();
        let stdin = self.table().get(&pid).and_then(|p| p.stdin.clone());
        let inputs = async move {
            while let Ok(Some(input)) = read_frame::<_, ExecInput>(&mut rd).await {
                match (&input, &stdin) {
                    (ExecInput::Signal { signal }, _) => {
                        let _ = signal_group(pid, *signal);
                    }
                    (_, Some(tx)) => {
                        let _ = tx.send(input).await;
                    }
                    (_, None) => {}
                }
            }
        };
        let outputs = async move {
            while let Some(event) = events.recv().await {
                let last = matches!(event, ExecEvent::Exited { .. });
                write_frame(&mut wr, &event).await?;
                if last {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::pin!(outputs);
        tokio::select! {
            r = &mut outputs => r,
            () = inputs => Ok(()),
        }
    }

    fn start(&self, spec: ExecSpec, subscriber: mpsc::Sender<ExecEvent>) -> Result<u32, AgentError> {
        let Some(program) = spec.argv.first() else {
            return Err(AgentError::new("bad_request", "argv is empty"));
        };
        let cwd = match &spec.cwd {
            Some(c) => resolve(c)?,
            None => PathBuf::from(WORKSPACE),
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&spec.argv[1..]).current_dir(&cwd).envs(&spec.env).kill_on_drop(false);
        let mut pty_master = None;
        if let Some(size) = spec.pty {
            let (master, slave) = open_pty(size).map_err(|e| AgentError::new("spawn_failed", format!("pty: {e}")))?;
            let [a, b, c] = [slave.try_clone(), slave.try_clone(), Ok(slave)]
                .map(|f| f.map_err(|e| AgentError::new("spawn_failed", format!("pty: {e}"))));
            cmd.stdin(Stdio::from(a?)).stdout(Stdio::from(b?)).stderr(Stdio::from(c?));
            cmd.env("TERM", "xterm-256color");
            // SAFETY: between fork and exec only async-signal-safe system calls run (setsid, ioctl,
            // open, write, close through rustix, which does not allocate).
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::setsid()?;
                    rustix::process::ioctl_tiocsctty(std::io::stdin().as_fd())?;
                    raise_oom_score();
                    Ok(())
                });
            }
            pty_master = Some(Arc::new(master));
        } else {
            cmd.process_group(0)
                .stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: as above; only rustix system calls that do not allocate.
            unsafe {
                cmd.pre_exec(|| {
                    raise_oom_score();
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| AgentError::new("spawn_failed", format!("{program}: {e}")))?;
        let pid = child.id().ok_or_else(|| AgentError::new("spawn_failed", "process vanished"))?;
        let (stdin_tx, stdin_rx) = mpsc::channel::<ExecInput>(16);
        let stdin_writer: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = match &pty_master {
            Some(m) => m.try_clone().ok().map(|fd| Box::new(tokio::fs::File::from_std(std::fs::File::from(fd))) as _),
            None => child.stdin.take().map(|s| Box::new(s) as _),
        };
        let has_stdin = stdin_writer.is_some();
        if let Some(w) = stdin_writer {
            tokio::spawn(feed_stdin(w, stdin_rx));
        }
        let info = ProcessInfo { pid, argv: spec.argv.clone(), cwd: spec.cwd.clone(), tag: spec.tag.clone() };
        self.table().insert(
            pid,
            Proc { info, subscribers: vec![subscriber], stdin: has_stdin.then_some(stdin_tx), pty: pty_master.clone() },
        );
        let mut readers = Vec::new();
        match &pty_master {
            Some(m) => {
                if let Ok(fd) = m.try_clone() {
                    let file = tokio::fs::File::from_std(std::fs::File::from(fd));
                    readers.push(tokio::spawn(self.clone().forward(pid, file, true)));
                }
            }
            None => {
                if let Some(out) = child.stdout.take() {
                    readers.push(tokio::spawn(self.clone().forward(pid, out, true)));
                }
                if let Some(err) = child.stderr.take() {
                    readers.push(tokio::spawn(self.clone().forward(pid, err, false)));
                }
            }
        }
        let agent = self.clone();
        let timeout = spec.timeout_ms.map(Duration::from_millis);
        tokio::spawn(async move {
            let (status, timed_out) = match timeout {
                Some(t) => match tokio::time::timeout(t, child.wait()).await {
                    Ok(s) => (s, false),
                    Err(_) => {
                        let _ = signal_group(pid, libc::SIGKILL);
                        (child.wait().await, true)
                    }
                },
                None => (child.wait().await, false),
            };
            // Output still in the pipes comes first; a grandchild that keeps them open is not waited for.
            for r in readers {
                let _ = tokio::time::timeout(Duration::from_millis(200), r).await;
            }
            let event = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    let signal = s.signal();
                    let exit_code = s.code().unwrap_or_else(|| 128 + signal.unwrap_or(0));
                    ExecEvent::Exited { exit_code, signal, timed_out, error: None }
                }
                Err(e) => ExecEvent::Exited { exit_code: 255, signal: None, timed_out, error: Some(e.to_string()) },
            };
            let subscribers = agent.table().remove(&pid).map(|p| p.subscribers).unwrap_or_default();
            for s in subscribers {
                let _ = s.send(event.clone()).await;
            }
        });
        Ok(pid)
    }

    /// Copies a process's output to its subscribers. A subscriber that stops reading slows the process
    /// (back-pressure); one that is gone is dropped; with none, output is discarded.
    async fn forward(self, pid: u32, mut from: impl tokio::io::AsyncRead + Unpin, stdout: bool) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = Bytes(buf[..n].to_vec());
            let event = if stdout { ExecEvent::Stdout { data } } else { ExecEvent::Stderr { data } };
            let subscribers = self.table().get(&pid).map(|p| p.subscribers.clone()).unwrap_or_default();
            let mut gone = Vec::new();
            for s in &subscribers {
                if s.send(event.clone()).await.is_err() {
                    gone.push(s.clone());
                }
            }
            if !gone.is_empty()
                && let Some(p) = self.table().get_mut(&pid)
            {
                p.subscribers.retain(|s| !gone.iter().any(|g| g.same_channel(s)));
            }
        }
    }

    async fn input(&self, pid: u32, data: Bytes, eof: bool) -> Result<(), AgentError> {
        let tx = self.table().get(&pid).map(|p| p.stdin.clone()).ok_or_else(|| no_process(pid))?;
        let tx = tx.ok_or_else(|| AgentError::new("bad_request", "the process was started without stdin"))?;
        if !data.0.is_empty() {
            tx.send(ExecInput::Stdin { data }).await.map_err(|_| no_process(pid))?;
        }
        if eof {
            tx.send(ExecInput::CloseStdin).await.map_err(|_| no_process(pid))?;
        }
        Ok(())
    }

    fn signal(&self, pid: u32, signal: i32) -> Result<(), AgentError> {
        if !self.table().contains_key(&pid) {
            return Err(no_process(pid));
        }
        signal_group(pid, signal)
    }

    fn resize(&self, pid: u32, cols: u16, rows: u16) -> Result<(), AgentError> {
        let pty = self.table().get(&pid).map(|p| p.pty.clone()).ok_or_else(|| no_process(pid))?;
        let pty = pty.ok_or_else(|| AgentError::new("bad_request", "the process has no terminal"))?;
        let size = rustix::termios::Winsize { ws_col: cols, ws_row: rows, ws_xpixel: 0, ws_ypixel: 0 };
        rustix::termios::tcsetwinsize(&*pty, size).map_err(|e| AgentError::io("resize", &e.into()))
    }
}

/// Children are the first the OOM killer picks inside the sandbox's memory limit, never the agent.
fn raise_oom_score() {
    if let Ok(fd) = rustix::fs::open(c"/proc/self/oom_score_adj", rustix::fs::OFlags::WRONLY, rustix::fs::Mode::empty())
    {
        let _ = rustix::io::write(&fd, b"1000");
    }
}

fn open_pty(size: crate::proto::PtySize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let ws = rustix::termios::Winsize { ws_col: size.cols, ws_row: size.rows, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(&master, ws)?;
    Ok((master, slave))
}

async fn feed_stdin(mut w: Box<dyn tokio::io::AsyncWrite + Send + Unpin>, mut rx: mpsc::Receiver<ExecInput>) {
    while let Some(input) = rx.recv().await {
        match input {
            ExecInput::Stdin { data } => {
                if w.write_all(&data.0).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
            ExecInput::CloseStdin => break,
            ExecInput::Signal { .. } => {}
        }
    }
}

fn signal_group(pid: u32, signal: i32) -> Result<(), AgentError> {
    let sig = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| AgentError::new("bad_request", format!("unknown signal {signal}")))?;
    let pid = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw).ok_or_else(|| no_process(pid))?;
    // The process leads its own group (or session, on a terminal); its children get the signal too.
    rustix::process::kill_process_group(pid, sig)
        .or_else(|_| rustix::process::kill_process(pid, sig))
        .map_err(|e| AgentError::io("signal", &e.into()))
}

fn no_process(pid: u32) -> AgentError {
    AgentError::new("no_such_process", format!("no running process {pid}"))
}

async fn answer(conn: &mut Conn, r: Result<Reply, AgentError>) -> std::io::Result<()> {
    match r {
        Ok(reply) => write_frame(conn, &reply).await,
        Err(e) => reply_err(conn, e).await,
    }
}

async fn reply_err(conn: &mut Conn, error: AgentError) -> std::io::Result<()> {
    write_frame(conn, &Reply::Error { error }).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AgentError::new("io", e.to_string()))?
}

/// A path as the sandbox sees it: absolute, or relative to the workspace. `..` is resolved lexically
/// here; symlinks are followed by the kernel, inside the sandbox's own mount namespace and Landlock
/// domain, so no spelling of a path reaches anything the sandbox itself could not.
pub fn resolve(path: &str) -> Result<PathBuf, AgentError> {
    if path.is_empty() || path.len() > 4096 || path.contains('\0') {
        return Err(AgentError::new("invalid_path", "paths are 1..=4096 bytes without NUL"));
    }
    let joined = if path.starts_with('/') { PathBuf::from(path) } else { Path::new(WORKSPACE).join(path) };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

fn entry_info(p: &Path) -> std::io::Result<EntryInfo> {
    let meta = std::fs::symlink_metadata(p)?;
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    Ok(EntryInfo {
        name: p.file_name().map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned()),
        path: p.to_string_lossy().into_owned(),
        kind: kind.to_owned(),
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        modified: meta.mtime(),
        symlink_target: ft
            .is_symlink()
            .then(|| std::fs::read_link(p).ok())
            .flatten()
            .map(|t| t.to_string_lossy().into_owned()),
    })
}

fn list_dir(path: &str, depth: u32) -> Result<Vec<EntryInfo>, AgentError> {
    let root = resolve(path)?;
    let mut out = Vec::new();
    let mut queue = vec![(root, 1u32)];
    while let Some((dir, level)) = queue.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| AgentError::io("list", &e))?;
        for entry in rd.flatten() {
            let p = entry.path();
            let Ok(info) = entry_info(&p) else { continue };
            if info.kind == "dir" && level < depth.max(1) {
                queue.push((p, level + 1));
            }
            out.push(info);
            if out.len() >= 10_000 {
                return Ok(out);
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

async fn read_file(conn: &mut Conn, path: &str) -> std::io::Result<()> {
    let opened = match resolve(path) {
        Ok(p) => match tokio::fs::File::open(&p).await {
            Ok(f) => match f.metadata().await {
                Ok(m) if m.is_dir() => {
                    Err(AgentError::new("is_a_directory", format!("{} is a directory", p.display())))
                }
                Ok(_) => Ok(f),
                Err(e) => Err(AgentError::io("read", &e)),
            },
            Err(e) => Err(AgentError::io("read", &e)),
        },
        Err(e) => Err(e),
    };
    let mut file = match opened {
        Ok(f) => f,
        Err(e) => return reply_err(conn, e).await,
    };
    write_frame(conn, &Reply::Ok).await?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return write_frame(conn, &Chunk::End).await;
        }
        write_frame(conn, &Chunk::Data { data: Bytes(buf[..n].to_vec()) }).await?;
    }
}

/// Receives a file and puts it in place with a rename, so readers never see a partial file.
async fn write_file(conn: &mut Conn, path: &str, mode: Option<u32>) -> Result<Reply, AgentError> {
    let target = resolve(path)?;
    let parent = target.parent().ok_or_else(|| AgentError::new("invalid_path", "cannot write the root"))?;
    tokio::fs::create_dir_all(parent).await.map_err(|e| AgentError::io("write", &e))?;
    if tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir()) {
        return Err(AgentError::new("is_a_directory", format!("{} is a directory", target.display())));
    }
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.vbtmp{}", std::process::id()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| AgentError::io("write", &e))?;
        loop {
            match read_frame::<_, Chunk>(conn).await {
                Ok(Some(Chunk::Data { data })) => {
                    file.write_all(&data.0).await.map_err(|e| AgentError::io("write", &e))?
                }
                Ok(Some(Chunk::End)) => break,
                Ok(None) | Err(_) => return Err(AgentError::new("bad_request", "upload ended early")),
            }
        }
        file.sync_all().await.map_err(|e| AgentError::io("write", &e))?;
        if let Some(m) = mode {
            tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m & 0o7777))
                .await
                .map_err(|e| AgentError::io("chmod", &e))?;
        }
        tokio::fs::rename(&tmp, &target).await.map_err(|e| AgentError::io("write", &e))
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    let entry = entry_info(&target).map_err(|e| AgentError::io("stat", &e))?;
    Ok(Reply::Entry { entry })
}

/// Splices the connection with a TCP connection to a port inside the sandbox.
async fn forward_port(mut conn: Conn, port: u16) -> std::io::Result<()> {
    let mut tcp = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(t) => t,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::ConnectionRefused { "port_closed" } else { "io" };
            return reply_err(&mut conn, AgentError::new(code, format!("port {port}: {e}"))).await;
        }
    };
    // The relay forwards whole chunks as they come; Nagle would hold a request's second write (its
    // body after its head) for the peer's delayed ACK, 40 ms on Linux.
    let _ = tcp.set_nodelay(true);
    write_frame(&mut conn, &Reply::Ok).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut tcp).await.map(|_| ())
}

/// Polls a directory tree and reports what changed, until the peer goes away.
async fn watch(conn: &mut Conn, path: &str, recursive: bool) -> std::io::Result<()> {
    let root = match resolve(path) {
        Ok(p) if p.is_dir() => p,
        Ok(p) => {
            return reply_err(conn, AgentError::new("not_a_directory", format!("{} is not a directory", p.display())))
                .await;
        }
        Err(e) => return reply_err(conn, e).await,
    };
    write_frame(conn, &Reply::Ok).await?;
    let depth = if recursive { 32 } else { 1 };
    let snapshot = move |root: PathBuf| {
        let listed = list_dir(&root.to_string_lossy(), depth).unwrap_or_default();
        listed.into_iter().map(|e| (e.path.clone(), (e.modified, e.size, e.mode))).collect::<HashMap<_, _>>()
    };
    let mut before = {
        let r = root.clone();
        tokio::task::spawn_blocking(move || snapshot(r)).await.unwrap_or_default()
    };
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = root.clone();
        let after = tokio::task::spawn_blocking(move || snapshot(r)).await.unwrap_or_default();
        let mut events = Vec::new();
        for (p, v) in &after {
            match before.get(p) {
                None => events.push(WatchEvent { path: p.clone(), kind: "create".to_owned() }),
                Some(old) if old.2 != v.2 => events.push(WatchEvent { path: p.clone(), kind: "chmod".to_owned() }),
                Some(old) if old != v => events.push(WatchEvent { path: p.clone(), kind: "write".to_owned() }),
                Some(_) => {}
            }
        }
        for p in before.keys().filter(|p| !after.contains_key(*p)) {
            events.push(WatchEvent { path: p.clone(), kind: "remove".to_owned() });
        }
        for event in events {
            write_frame(conn, &Reply::Watch { event }).await?;
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn paths_resolve_inside_the_sandbox_namespace() {
        assert_eq!(resolve("a/b").ok(), Some("/home/user/a/b".into()));
        assert_eq!(resolve("../../etc/passwd").ok(), Some("/etc/passwd".into()));
        assert_eq!(resolve("/../../x").ok(), Some("/x".into()));
        assert!(resolve("").is_err());
        assert!(resolve("a\0b").is_err());
    }
}
