//! Per-sandbox control groups, on cgroup v1 (a hierarchy per controller) or v2 (one unified tree),
//! whichever the host offers: memory, pids and CPU limits, the freezer, usage, and a kill that leaves
//! nothing behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 at this mount, with the memory, pids and cpu controllers.
    V2(PathBuf),
    /// cgroup v1: one mount per controller under this root (`memory/`, `pids/`, `cpu/`, `cpuacct/`,
    /// `freezer/`).
    V1(PathBuf),
}

/// Errors from the cgroup filesystem.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a usable v2 tree nor the v1 controllers are mounted.
    #[error("no usable cgroup hierarchy (need memory, pids, cpu and freezer controllers)")]
    Unavailable,
    /// A cgroup file could not be read or written.
    #[error("cgroup {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// Processes stayed in the group after repeated kills.
    #[error("cgroup {0} could not be emptied")]
    Stuck(String),
}

const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];

impl Hierarchy {
    /// Finds the host's layout under `/sys/fs/cgroup` (or `root`, for tests).
    pub fn detect(root: &Path) -> Result<Self, CgroupError> {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") && has("cpu") {
            return Ok(Self::V2(root.to_owned()));
        }
        if V1_CONTROLLERS.iter().all(|c| root.join(c).join("cgroup.procs").exists()) {
            return Ok(Self::V1(root.to_owned()));
        }
        Err(CgroupError::Unavailable)
    }

    pub fn version(&self) -> u8 {
        match self {
            Self::V2(_) => 2,
            Self::V1(_) => 1,
        }
    }
}

/// The limits a sandbox runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// CPU time per period, as a percentage of one core (100 = one core).
    pub cpu_percent: u32,
}

const CPU_PERIOD_US: u64 = 100_000;

/// One sandbox's group (a directory per controller on v1).
#[derive(Debug, Clone)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    /// Path below the hierarchy root, e.g. `vibebase/env-a/sb-123`.
    rel: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.display().to_string(), source }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io(path))
}

impl Cgroup {
    /// Creates the group with its limits.
    pub fn create(hierarchy: &Hierarchy, rel: &Path, limits: Limits) -> Result<Self, CgroupError> {
        let cg = Self { hierarchy: hierarchy.clone(), rel: rel.to_owned() };
        match hierarchy {
            Hierarchy::V2(root) => {
                // Each ancestor must delegate the controllers to its children.
                let mut dir = root.clone();
                for part in rel.iter() {
                    let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu");
                    dir.push(part);
                    if !dir.exists() {
                        std::fs::create_dir(&dir).map_err(io(&dir))?;
                    }
                }
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                let quota = CPU_PERIOD_US * u64::from(limits.cpu_percent) / 100;
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            Hierarchy::V1(_) => {
                for c in V1_CONTROLLERS {
                    let dir = cg.dir(c);
                    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                }
                let mem = cg.dir("memory");
                write(&mem.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
                // Without swap accounting the file is absent; the limit above still holds RAM.
                let _ = std::fs::write(mem.join("memory.memsw.limit_in_bytes"), limits.memory_bytes.to_string());
                write(&cg.dir("pids").join("pids.max"), &limits.pids.to_string())?;
                let cpu = cg.dir("cpu");
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let quota = CPU_PERIOD_US * u64::from(limits.cpu_percent) / 100;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        Ok(cg)
    }

    fn dir(&self, controller: &str) -> PathBuf {
        match &self.hierarchy {
            Hierarchy::V2(root) => root.join(&self.rel),
            Hierarchy::V1(root) => root.join(controller).join(&self.rel),
        }
    }

    /// Every directory of this group (one on v2, one per controller on v1).
    fn dirs(&self) -> Vec<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V2(_) => vec![self.dir("")],
            Hierarchy::V1(_) => V1_CONTROLLERS.iter().map(|c| self.dir(c)).collect(),
        }
    }

    /// Moves a process into the group (every controller).
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for d in self.dirs() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the group.
    pub fn pids(&self) -> Vec<u32> {
        let dir = self.dir("pids");
        let list = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        list.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    pub fn freeze(&self) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V2(_) => write(&self.dir("").join("cgroup.freeze"), "1"),
            Hierarchy::V1(_) => write(&self.dir("freezer").join("freezer.state"), "FROZEN"),
        }
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V2(_) => write(&self.dir("").join("cgroup.freeze"), "0"),
            Hierarchy::V1(_) => write(&self.dir("freezer").join("freezer.state"), "THAWED"),
        }
    }

    /// CPU time used, in microseconds.
    pub fn cpu_usage_us(&self) -> u64 {
        match &self.hierarchy {
            Hierarchy::V2(_) => read(&self.dir("").join("cpu.stat"))
                .ok()
                .and_then(|s| s.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse().ok())))
                .unwrap_or(0),
            Hierarchy::V1(_) => read(&self.dir("cpuacct").join("cpuacct.usage"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(0, |ns| ns / 1000),
        }
    }

    /// Memory in use, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        let file = match &self.hierarchy {
            Hierarchy::V2(_) => self.dir("").join("memory.current"),
            Hierarchy::V1(_) => self.dir("memory").join("memory.usage_in_bytes"),
        };
        read(&file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// How often the pids limit refused a fork (`pids.events` max).
    pub fn pids_refused(&self) -> u64 {
        read(&self.dir("pids").join("pids.events"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("max ").and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0)
    }

    /// How often the memory limit killed a process.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match &self.hierarchy {
            Hierarchy::V2(_) => (self.dir("").join("memory.events"), "oom_kill "),
            Hierarchy::V1(_) => (self.dir("memory").join("memory.oom_control"), "oom_kill "),
        };
        read(&file)
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0)
    }

    /// One round of a kill: freeze (so nothing forks meanwhile), SIGKILL each process, thaw (so the
    /// kills are delivered). False when the group was already empty.
    pub fn kill_round(&self) -> bool {
        let pids = self.pids();
        if pids.is_empty() {
            return false;
        }
        let _ = self.freeze();
        for pid in pids {
            if let Some(p) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        let _ = self.thaw();
        true
    }

    /// Kills everything in the group, round after round until it is empty; then removes it, retrying
    /// until the kernel lets go.
    pub async fn kill_and_remove(&self) -> Result<(), CgroupError> {
        for _ in 0..100 {
            if !self.kill_round() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.pids().is_empty() {
            return Err(CgroupError::Stuck(self.rel.display().to_string()));
        }
        for _ in 0..200 {
            let mut left = false;
            for d in self.dirs() {
                if d.exists() && std::fs::remove_dir(&d).is_err() {
                    left = true;
                }
            }
            if !left {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(CgroupError::Stuck(self.rel.display().to_string()))
    }

    /// A group by path, for sweeping what a previous run left behind.
    pub fn existing(hierarchy: &Hierarchy, rel: &Path) -> Self {
        Self { hierarchy: hierarchy.clone(), rel: rel.to_owned() }
    }

    /// Child groups (by name) of this group.
    pub fn children(&self) -> Vec<String> {
        std::fs::read_dir(self.dir("pids"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the group's directories if empty (best effort).
    pub fn remove_if_empty(&self) {
        for d in self.dirs() {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Removes the env's parent group once its sandboxes are gone (best effort).
    pub fn remove_empty_parent(&self) {
        if let Some(parent) = self.rel.parent() {
            let parent = Self { hierarchy: self.hierarchy.clone(), rel: parent.to_owned() };
            for d in parent.dirs() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The v2 layout's file protocol, on a directory shaped like a cgroup2 mount (this host runs v1,
    /// where the real enforcement is tested by the attack suite).
    #[test]
    fn v2_groups_get_their_limits_and_freeze_through_the_unified_files() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        let h = Hierarchy::detect(root.path()).unwrap();
        assert_eq!(h.version(), 2);
        let limits = Limits { memory_bytes: 64 << 20, pids: 32, cpu_percent: 50 };
        let cg = Cgroup::create(&h, Path::new("vibebase/run/env-a/sb-1"), limits).unwrap();
        let dir = root.path().join("vibebase/run/env-a/sb-1");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "32");
        assert_eq!(read("cpu.max"), "50000 100000");
        // Every ancestor delegates the controllers to its children.
        let parent = std::fs::read_to_string(root.path().join("vibebase/run/env-a/cgroup.subtree_control")).unwrap();
        assert_eq!(parent, "+memory +pids +cpu");
        cg.freeze().unwrap();
        assert_eq!(read("cgroup.freeze"), "1");
        cg.thaw().unwrap();
        assert_eq!(read("cgroup.freeze"), "0");
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1234\nuser_usec 1000\n").unwrap();
        assert_eq!(cg.cpu_usage_us(), 1234);
        std::fs::write(dir.join("pids.events"), "max 7\n").unwrap();
        assert_eq!(cg.pids_refused(), 7);
    }

    #[test]
    fn a_host_without_the_controllers_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "hugetlb\n").unwrap();
        assert!(matches!(Hierarchy::detect(root.path()), Err(CgroupError::Unavailable)));
    }
}
