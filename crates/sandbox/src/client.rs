//! The host's side of the agent protocol: one connection per request.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

use crate::SandboxError;
use crate::proto::{
    AgentError, Bytes, CHUNK, Chunk, EntryInfo, ExecEvent, ExecInput, ExecSpec, ProcessInfo, Reply, Request,
    read_frame, write_frame,
};

/// A byte stream to an agent.
pub trait AgentStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AgentStream for T {}

/// How to reach one sandbox's agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

/// Output limits of [`AgentClient::run`].
#[derive(Debug, Clone, Copy)]
pub struct OutputLimit(pub usize);

/// A finished command.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub pid: u32,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub error: Option<String>,
}

fn lost(e: std::io::Error) -> SandboxError {
    SandboxError::AgentLost(e.to_string())
}

impl AgentClient {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    async fn open(&self, request: &Request) -> Result<UnixStream, SandboxError> {
        let mut conn = UnixStream::connect(&self.socket).await.map_err(lost)?;
        write_frame(&mut conn, request).await.map_err(lost)?;
        Ok(conn)
    }

    /// Sends a request that has one reply.
    async fn call(&self, request: &Request) -> Result<Reply, SandboxError> {
        let mut conn = self.open(request).await?;
        match read_frame::<_, Reply>(&mut conn).await.map_err(lost)? {
            Some(Reply::Error { error }) => Err(SandboxError::Agent(error)),
            Some(r) => Ok(r),
            None => Err(SandboxError::AgentLost("no reply".to_owned())),
        }
    }

    pub async fn ping(&self) -> Result<(), SandboxError> {
        self.call(&Request::Ping).await.map(|_| ())
    }

    /// Starts a process and returns its event stream (the first event is `Started`).
    pub async fn exec(&self, spec: ExecSpec) -> Result<ExecStream, SandboxError> {
        let conn = self.open(&Request::Exec(spec)).await?;
        Ok(ExecStream { conn })
    }

    /// Attaches to a running process.
    pub async fn connect(&self, pid: u32) -> Result<ExecStream, SandboxError> {
        let mut conn = self.open(&Request::Connect { pid }).await?;
        // The agent answers Started, or an error reply; peek at the first frame.
        let first: serde_json::Value = read_frame(&mut conn).await.map_err(lost)?.unwrap_or_default();
        if let Ok(Reply::Error { error }) = serde_json::from_value::<Reply>(first.clone()) {
            return Err(SandboxError::Agent(error));
        }
        Ok(ExecStream { conn })
    }

    /// Runs a command to completion, keeping at most `limit` bytes of each output stream. Input is
    /// written while output is read, so a process that writes before it reads cannot deadlock.
    pub async fn run(
        &self,
        spec: ExecSpec,
        stdin: Option<Vec<u8>>,
        limit: OutputLimit,
    ) -> Result<Finished, SandboxError> {
        let ExecStream { conn } = self.exec(spec).await?;
        let (mut rd, mut wr) = conn.into_split();
        let feed = async move {
            if let Some(data) = stdin {
                for piece in data.chunks(CHUNK) {
                    write_frame(&mut wr, &ExecInput::Stdin { data: Bytes(piece.to_vec()) }).await?;
                }
                write_frame(&mut wr, &ExecInput::CloseStdin).await?;
            }
            // Keeps the write half open until the output is done.
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        };
        let collect = async move {
            let mut done = Finished::default();
            while let Some(event) = read_frame::<_, ExecEvent>(&mut rd).await.map_err(lost)? {
                match event {
                    ExecEvent::Started { pid } => done.pid = pid,
                    ExecEvent::Stdout { data } => keep(&mut done.stdout, &data.0, limit.0, &mut done.truncated),
                    ExecEvent::Stderr { data } => keep(&mut done.stderr, &data.0, limit.0, &mut done.truncated),
                    ExecEvent::Exited { exit_code, signal, timed_out, error } => {
                        done.exit_code = exit_code;
                        done.signal = signal;
                        done.timed_out = timed_out;
                        done.error = error;
                        return Ok(done);
                    }
                }
            }
            Err(SandboxError::AgentLost("the process stream ended without an exit".to_owned()))
        };
        tokio::pin!(collect);
        tokio::select! {
            r = &mut collect => r,
            // A process that exits without reading its input closes the pipe: output still decides.
            _ = feed => collect.await,
        }
    }

    pub async fn input(&self, pid: u32, data: Vec<u8>, eof: bool) -> Result<(), SandboxError> {
        self.call(&Request::Input { pid, data: Bytes(data), eof }).await.map(|_| ())
    }

    pub async fn signal(&self, pid: u32, signal: i32) -> Result<(), SandboxError> {
        self.call(&Request::Signal { pid, signal }).await.map(|_| ())
    }

    pub async fn resize(&self, pid: u32, cols: u16, rows: u16) -> Result<(), SandboxError> {
        self.call(&Request::Resize { pid, cols, rows }).await.map(|_| ())
    }

    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, SandboxError> {
        match self.call(&Request::List).await? {
            Reply::Processes { processes } => Ok(processes),
            _ => Err(unexpected()),
        }
    }

    /// Reads a whole file (up to `limit` bytes; more is an error).
    pub async fn read_file(&self, path: &str, limit: usize) -> Result<Vec<u8>, SandboxError> {
        let mut conn = self.open(&Request::Read { path: path.to_owned() }).await?;
        match read_frame::<_, Reply>(&mut conn).await.map_err(lost)? {
            Some(Reply::Ok) => {}
            Some(Reply::Error { error }) => return Err(SandboxError::Agent(error)),
            _ => return Err(unexpected()),
        }
        let mut out = Vec::new();
        loop {
            match read_frame::<_, Chunk>(&mut conn).await.map_err(lost)? {
                Some(Chunk::Data { data }) => {
                    if out.len() + data.0.len() > limit {
                        return Err(SandboxError::Agent(AgentError::new(
                            "too_large",
                            format!("the file is larger than {limit} bytes"),
                        )));
                    }
                    out.extend_from_slice(&data.0);
                }
                Some(Chunk::End) => return Ok(out),
                None => return Err(SandboxError::AgentLost("file stream cut".to_owned())),
            }
        }
    }

    /// Writes a whole file (atomically: readers see the old or the new content).
    pub async fn write_file(&self, path: &str, data: &[u8], mode: Option<u32>) -> Result<EntryInfo, SandboxError> {
        let mut conn = self.open(&Request::Write { path: path.to_owned(), mode }).await?;
        let mut sent = Ok(());
        for piece in data.chunks(CHUNK) {
            sent = write_frame(&mut conn, &Chunk::Data { data: Bytes(piece.to_vec()) }).await;
            if sent.is_err() {
                break;
            }
        }
        if sent.is_ok() {
            sent = write_frame(&mut conn, &Chunk::End).await;
        }
        // An agent that fails mid-upload (no space, no permission) answers and hangs up: its reply
        // explains a failed send.
        match read_frame::<_, Reply>(&mut conn).await {
            Ok(reply @ Some(_)) => entry(reply),
            Ok(None) => Err(sent.err().map_or_else(unexpected, lost)),
            Err(e) => Err(lost(sent.err().unwrap_or(e))),
        }
    }

    pub async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>, SandboxError> {
        match self.call(&Request::ListDir { path: path.to_owned(), depth }).await? {
            Reply::Entries { entries } => Ok(entries),
            _ => Err(unexpected()),
        }
    }

    pub async fn stat(&self, path: &str) -> Result<EntryInfo, SandboxError> {
        entry(Some(self.call(&Request::Stat { path: path.to_owned() }).await?))
    }

    pub async fn mkdir(&self, path: &str) -> Result<EntryInfo, SandboxError> {
        entry(Some(self.call(&Request::MakeDir { path: path.to_owned() }).await?))
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<EntryInfo, SandboxError> {
        entry(Some(self.call(&Request::Move { from: from.to_owned(), to: to.to_owned() }).await?))
    }

    /// Watches a directory: the stream yields changes until it is dropped.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<WatchStream, SandboxError> {
        let mut conn = self.open(&Request::Watch { path: path.to_owned(), recursive }).await?;
        match read_frame::<_, Reply>(&mut conn).await.map_err(lost)? {
            Some(Reply::Ok) => Ok(WatchStream { conn }),
            Some(Reply::Error { error }) => Err(SandboxError::Agent(error)),
            _ => Err(unexpected()),
        }
    }

    /// A byte stream to `127.0.0.1:port` inside the sandbox.
    pub async fn forward(&self, port: u16) -> Result<UnixStream, SandboxError> {
        let mut conn = self.open(&Request::Forward { port }).await?;
        match read_frame::<_, Reply>(&mut conn).await.map_err(lost)? {
            Some(Reply::Ok) => Ok(conn),
            Some(Reply::Error { error }) => Err(SandboxError::Agent(error)),
            _ => Err(unexpected()),
        }
    }

    pub async fn remove(&self, path: &str) -> Result<(), SandboxError> {
        self.call(&Request::Remove { path: path.to_owned() }).await.map(|_| ())
    }
}

fn entry(reply: Option<Reply>) -> Result<EntryInfo, SandboxError> {
    match reply {
        Some(Reply::Entry { entry }) => Ok(entry),
        Some(Reply::Error { error }) => Err(SandboxError::Agent(error)),
        _ => Err(unexpected()),
    }
}

fn unexpected() -> SandboxError {
    SandboxError::AgentLost("unexpected reply".to_owned())
}

fn keep(into: &mut Vec<u8>, data: &[u8], limit: usize, truncated: &mut bool) {
    let room = limit.saturating_sub(into.len());
    if data.len() > room {
        *truncated = true;
    }
    into.extend_from_slice(&data[..data.len().min(room)]);
}

/// The events of one process, and a way to send it input.
pub struct ExecStream {
    conn: UnixStream,
}

impl ExecStream {
    /// The next event; `None` when the agent closed the stream.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, SandboxError> {
        read_frame(&mut self.conn).await.map_err(lost)
    }

    pub async fn send(&mut self, input: &ExecInput) -> Result<(), SandboxError> {
        write_frame(&mut self.conn, input).await.map_err(lost)
    }
}

/// Changes under a watched directory.
pub struct WatchStream {
    conn: UnixStream,
}

impl WatchStream {
    /// The next change; `None` when the agent closed the stream.
    pub async fn next(&mut self) -> Result<Option<crate::proto::WatchEvent>, SandboxError> {
        loop {
            match read_frame::<_, Reply>(&mut self.conn).await.map_err(lost)? {
                Some(Reply::Watch { event }) => return Ok(Some(event)),
                Some(Reply::Error { error }) => return Err(SandboxError::Agent(error)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}
