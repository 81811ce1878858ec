//! The launcher: a short-lived process (the hidden `vibebase __sandbox-launch`) that the platform
//! starts as root for each sandbox. It joins the sandbox's cgroups (so everything the sandbox ever
//! starts is counted and limited from its first instruction), drops to the unprivileged sandbox uid,
//! and replaces itself with bubblewrap. bubblewrap reads its arguments from a pipe (`--args`), so the
//! sandbox's `/proc/1/cmdline` shows no host paths.

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;

use serde::{Deserialize, Serialize};

/// What the platform sends the launcher on its stdin (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub struct LaunchPlan {
    /// `cgroup.procs` files to write the launcher's pid into.
    pub cgroup_procs: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub bwrap: String,
    /// bubblewrap's options (passed through the pipe).
    pub args: Vec<String>,
    /// The command bubblewrap runs inside (on its visible command line, which holds no host paths).
    pub command: Vec<String>,
}

/// Runs the launcher; returns only on failure (with an exit code).
pub fn run() -> i32 {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        return fail(&format!("read plan: {e}"));
    }
    let plan: LaunchPlan = match serde_json::from_slice(&input) {
        Ok(p) => p,
        Err(e) => return fail(&format!("bad plan: {e}")),
    };
    if plan.uid == 0 || plan.gid == 0 {
        return fail("refusing to start a sandbox as root");
    }
    let pid = std::process::id().to_string();
    for procs in &plan.cgroup_procs {
        if let Err(e) = std::fs::write(procs, &pid) {
            return fail(&format!("join cgroup {procs}: {e}"));
        }
    }
    let (reader, mut writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(&format!("pipe: {e}")),
    };
    let mut payload = Vec::new();
    for a in &plan.args {
        payload.extend_from_slice(a.as_bytes());
        payload.push(0);
    }
    // The pipe holds 64 KiB; the plan's arguments are a few KiB.
    if let Err(e) = writer.write_all(&payload) {
        return fail(&format!("write args: {e}"));
    }
    drop(writer);
    // bubblewrap inherits exactly this descriptor besides stdio.
    if let Err(e) = rustix::io::fcntl_setfd(&reader, rustix::io::FdFlags::empty()) {
        return fail(&format!("fcntl: {e}"));
    }
    let fd = reader.as_raw_fd().to_string();
    let err = std::process::Command::new(&plan.bwrap)
        .arg("--args")
        .arg(&fd)
        .arg("--")
        .args(&plan.command)
        .uid(plan.uid)
        .gid(plan.gid)
        .stdin(std::process::Stdio::null())
        .exec();
    fail(&format!("exec {}: {err}", plan.bwrap))
}

fn fail(message: &str) -> i32 {
    let _ = writeln!(std::io::stderr(), "vibebase launcher: {message}");
    1
}
