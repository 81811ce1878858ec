//! The protocol between the host and the in-sandbox agent, spoken over the agent's Unix socket.
//!
//! Every message is one frame: a 4-byte big-endian length, then that many bytes of JSON. A connection
//! carries one request: the host writes a [`Request`] frame, then both sides exchange the frames that
//! request defines (an exec streams [`ExecEvent`]s out and takes [`ExecInput`]s in; a file write takes
//! [`Chunk`]s in). Bytes travel base64-encoded inside JSON, so output that is not UTF-8 survives intact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// The largest payload a data chunk carries (before base64).
pub const CHUNK: usize = 256 * 1024;

/// What a connection asks the agent to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness: answered with [`Reply::Pong`].
    Ping,
    /// Starts a process and streams its events on this connection until it exits.
    Exec(ExecSpec),
    /// Attaches to a running process: its events from now on, and its input.
    Connect {
        pid: u32,
    },
    /// Writes to a running process's stdin (`eof` closes it).
    Input {
        pid: u32,
        data: Bytes,
        eof: bool,
    },
    /// Sends a signal to a running process (its whole process group).
    Signal {
        pid: u32,
        signal: i32,
    },
    /// Resizes a process's terminal.
    Resize {
        pid: u32,
        cols: u16,
        rows: u16,
    },
    /// The processes the agent started that are still running.
    List,
    /// Streams a file out as [`Chunk`]s.
    Read {
        path: String,
    },
    /// Writes a file from the [`Chunk`]s that follow (replacing it atomically).
    Write {
        path: String,
        mode: Option<u32>,
    },
    /// Lists a directory (to `depth` levels).
    ListDir {
        path: String,
        depth: u32,
    },
    Stat {
        path: String,
    },
    MakeDir {
        path: String,
    },
    Move {
        from: String,
        to: String,
    },
    Remove {
        path: String,
    },
    /// Reports changes under a directory until the connection closes.
    Watch {
        path: String,
        recursive: bool,
    },
    /// Connects to `127.0.0.1:port` inside the sandbox; after the `Ok` reply the connection carries
    /// that TCP stream's bytes both ways (port forwarding, WebSockets included).
    Forward {
        port: u16,
    },
}

/// How to start a process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the workspace).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Keep stdin open for [`ExecInput`]s; otherwise it reads as empty.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the process group after this long.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run on a pseudo-terminal of this size (stdout carries the terminal's output).
    #[serde(default)]
    pub pty: Option<PtySize>,
    /// A caller's label, returned by [`Request::List`].
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

/// What an exec connection receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    Stdout {
        data: Bytes,
    },
    Stderr {
        data: Bytes,
    },
    /// The process ended. `exit_code` follows the shell's convention (128 + signal when killed).
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        timed_out: bool,
        error: Option<String>,
    },
}

/// What an exec connection may send after its request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum ExecInput {
    Stdin { data: Bytes },
    CloseStdin,
    Signal { signal: i32 },
}

/// One piece of a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "chunk", rename_all = "snake_case")]
pub enum Chunk {
    Data { data: Bytes },
    End,
}

/// Metadata of a file or directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    pub name: String,
    /// Absolute path inside the sandbox.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    /// Seconds since the epoch.
    pub modified: i64,
    /// Where a symlink points.
    pub symlink_target: Option<String>,
}

/// A running process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub tag: Option<String>,
}

/// A change seen by a watch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchEvent {
    pub path: String,
    /// `create`, `write`, `remove` or `chmod`.
    pub kind: String,
}

/// The answer to every request that is not a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Pong,
    Ok,
    Entry { entry: EntryInfo },
    Entries { entries: Vec<EntryInfo> },
    Processes { processes: Vec<ProcessInfo> },
    Watch { event: WatchEvent },
    Error { error: AgentError },
}

/// A failure inside the sandbox, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AgentError {
    /// `not_found`, `permission_denied`, `exists`, `not_a_directory`, `is_a_directory`, `no_space`,
    /// `invalid_path`, `no_such_process`, `spawn_failed`, `io`, `bad_request`.
    pub code: String,
    pub message: String,
}

impl AgentError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into() }
    }

    /// Maps an OS error to a stable code.
    pub fn io(context: &str, e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let code = match e.kind() {
            K::NotFound => "not_found",
            K::PermissionDenied | K::ReadOnlyFilesystem => "permission_denied",
            K::AlreadyExists => "exists",
            K::NotADirectory => "not_a_directory",
            K::IsADirectory => "is_a_directory",
            K::StorageFull | K::QuotaExceeded => "no_space",
            K::DirectoryNotEmpty => "not_empty",
            K::InvalidInput | K::InvalidFilename => "invalid_path",
            _ => "io",
        };
        Self::new(code, format!("{context}: {e}"))
    }
}

/// Bytes that serialize as base64.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map(Bytes).map_err(serde::de::Error::custom)
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
    }
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(r: &mut R) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
