//! What the agent applies to itself, and so to every process it starts, before anything else runs
//! inside the sandbox: a Landlock ruleset (writes only to the workspace, `/tmp` and `/dev`; no new
//! sockets in the agent's own directory; no signals or abstract sockets outside the sandbox) and a
//! seccomp filter (no ptrace, mount, namespaces, keyrings, BPF, kernel modules, …).

use std::collections::BTreeMap;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    path_beneath_rules,
};
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};

/// Where confinement failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The kernel refused the Landlock ruleset.
    #[error("landlock: {0}")]
    Landlock(String),
    /// The kernel does not enforce Landlock (the sandbox would be weaker than promised).
    #[error("landlock is not enforced by this kernel")]
    LandlockUnavailable,
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// Paths the sandbox may write, as the sandbox sees them.
pub struct Writable<'a> {
    pub workspace: &'a str,
}

/// Applies Landlock to the calling thread (call it while the process has one thread).
pub fn landlock(w: &Writable<'_>) -> Result<(), ConfineError> {
    let abi = ABI::V6;
    let err = |e: landlock::RulesetError| ConfineError::Landlock(e.to_string());
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(err)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(["/"], read))
        .map_err(err)?
        .add_rules(path_beneath_rules([w.workspace, "/tmp", "/dev"], all))
        .map_err(err)?
        // Children raise their own OOM score through /proc/self.
        .add_rules(path_beneath_rules(["/proc"], read | AccessFs::WriteFile))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(ConfineError::LandlockUnavailable);
    }
    Ok(())
}

/// System calls no sandboxed process may make (EPERM).
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_lookup_dcookie,
    libc::SYS_iopl,
    libc::SYS_ioperm,
];

/// `clone` flags that would create namespaces.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Installs the seccomp filters on the calling thread (inherited by every child).
pub fn seccomp() -> Result<(), ConfineError> {
    let err = |e: seccompiler::Error| ConfineError::Seccomp(e.to_string());
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| ConfineError::Seccomp(e.to_string()))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|s| (*s, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*flag), *flag)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    // clone3 passes its flags in memory a filter cannot read: answer ENOSYS so libc falls back to clone.
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    for filter in [deny, clone3] {
        let program: seccompiler::BpfProgram =
            filter.try_into().map_err(|e: seccompiler::BackendError| ConfineError::Seccomp(e.to_string()))?;
        seccompiler::apply_filter(&program).map_err(err)?;
    }
    Ok(())
}
