//! How jobs are kept from the server, from each other and from what they were not given: the `[isolation]`
//! table, and the capability names a catalog job may keep.

use serde::Deserialize;

/// The `[isolation]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Isolation {
    /// When the server runs as root, a job that names no `user` runs as a dynamic user: a uid (and gid of the
    /// same number) from `dynamic_user_range`, distinct per concurrent job, like systemd's `DynamicUser`.
    pub dynamic_users: bool,
    /// `[first, last]` uids (inclusive) for dynamic users. The default, 1879048192–1879113727, lies in a range
    /// systemd leaves unused (above its per-container ranges, below its foreign-image range 2147352576…).
    pub dynamic_user_range: (u32, u32),
    /// Each job gets IPC and UTS namespaces of its own (SysV IPC, POSIX message queues, hostname): no job sees
    /// or touches another's shared memory, semaphores or queues. Needs a server with CAP_SYS_ADMIN (root on a
    /// host); elsewhere it is off, and the log says so.
    pub private_ipc_and_hostname: bool,
    /// Each job gets a pid namespace of its own under forkpool's init: it sees and can signal only its own
    /// processes, and none of them outlives the init (the kernel kills a namespace whose init dies).
    pub pid_namespace: bool,
    /// Each job gets a mount namespace of its own with private `/tmp` and `/dev/shm` (empty tmpfs) and, with
    /// a pid namespace, its own `/proc`; its working directory stays where it is.
    pub private_tmp: bool,
    /// The job sees the whole file system read-only, but for its working directory, `/tmp` and `/dev/shm`
    /// (needs `private_tmp`).
    pub read_only_root: bool,
    /// `"none"`: an empty network namespace with only a loopback interface of its own; `"host"`: the server's
    /// network.
    pub network: Network,
    /// A seccomp filter denies (EPERM) the system calls no job needs: loading kernel modules or kexec images,
    /// rebooting, swap, the clock, keyrings, bpf, perf events, userfaultfd, handles to files by number, mount
    /// and namespace changes; and every 32-bit (i386/x32) system call.
    pub seccomp: bool,
    /// Where the server is not root, get the namespaces above from an unprivileged user namespace (the job's
    /// uid and gid map to the server's own), if the kernel allows it.
    pub user_namespace: bool,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            dynamic_users: true,
            dynamic_user_range: (1_879_048_192, 1_879_113_727),
            private_ipc_and_hostname: true,
            pid_namespace: true,
            private_tmp: true,
            read_only_root: false,
            network: Network::None,
            seccomp: true,
            user_namespace: true,
        }
    }
}

/// A job's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The server's network namespace.
    Host,
    /// A network namespace of its own with only a loopback interface.
    None,
}

/// A catalog job's `isolation` table: each key unset takes the server-wide `[isolation]` value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobIsolation {
    /// See [`Isolation::pid_namespace`].
    pub pid_namespace: Option<bool>,
    /// See [`Isolation::private_tmp`].
    pub private_tmp: Option<bool>,
    /// See [`Isolation::read_only_root`].
    pub read_only_root: Option<bool>,
    /// See [`Isolation::network`].
    pub network: Option<Network>,
    /// See [`Isolation::seccomp`].
    pub seccomp: Option<bool>,
    /// See [`Isolation::private_ipc_and_hostname`].
    pub private_ipc_and_hostname: Option<bool>,
}

/// What one job asks for (before the server's abilities are taken into account).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolationPlan {
    /// Own pid namespace under forkpool's init.
    pub pid_namespace: bool,
    /// Own mount namespace, private `/tmp` and `/dev/shm`.
    pub private_tmp: bool,
    /// Read-only view of the system.
    pub read_only_root: bool,
    /// Own empty network namespace.
    pub no_network: bool,
    /// The seccomp deny list.
    pub seccomp: bool,
    /// Own IPC and UTS namespaces.
    pub private_ipc_and_hostname: bool,
}

impl Isolation {
    /// The plan for a job with these overrides (a raw command has none).
    pub fn plan(&self, job: &JobIsolation) -> IsolationPlan {
        IsolationPlan {
            pid_namespace: job.pid_namespace.unwrap_or(self.pid_namespace),
            private_tmp: job.private_tmp.unwrap_or(self.private_tmp),
            read_only_root: job.read_only_root.unwrap_or(self.read_only_root),
            no_network: job.network.unwrap_or(self.network) == Network::None,
            seccomp: job.seccomp.unwrap_or(self.seccomp),
            private_ipc_and_hostname: job.private_ipc_and_hostname.unwrap_or(self.private_ipc_and_hostname),
        }
    }
}

impl Isolation {
    /// Checks the range.
    pub(super) fn validate(&self) -> Result<(), String> {
        let (first, last) = self.dynamic_user_range;
        if first > last || first < 1000 || last == u32::MAX {
            return Err(format!(
                "isolation.dynamic_user_range [{first}, {last}] must be ordered, start at 1000 or above, and end below \
                 4294967295"
            ));
        }
        if self.read_only_root && !self.private_tmp {
            return Err("isolation.read_only_root needs isolation.private_tmp (a job needs somewhere to write)".into());
        }
        Ok(())
    }
}

/// Linux capability names, by number (`CAP_LAST_CAP` is 40 on current kernels).
const CAPABILITIES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The bit set of capability names (`CAP_NET_BIND_SERVICE` or `net_bind_service`, any case).
pub fn capability_mask(names: &[String]) -> Result<u64, String> {
    names.iter().try_fold(0u64, |mask, name| {
        let lower = name.to_ascii_lowercase();
        let short = lower.strip_prefix("cap_").unwrap_or(&lower);
        let number = CAPABILITIES
            .iter()
            .position(|c| *c == short)
            .ok_or_else(|| format!("unknown capability {name:?} (e.g. CAP_NET_BIND_SERVICE)"))?;
        Ok(mask | 1 << number)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_and_ranges() {
        assert_eq!(capability_mask(&["CAP_NET_BIND_SERVICE".into(), "kill".into()]), Ok(1 << 10 | 1 << 5));
        assert!(capability_mask(&["CAP_FLY".into()]).is_err());
        assert!(Isolation::default().validate().is_ok());
        assert!(Isolation { dynamic_user_range: (10, 20), ..Isolation::default() }.validate().is_err());
        assert!(Isolation { dynamic_user_range: (5000, 4000), ..Isolation::default() }.validate().is_err());
    }
}
