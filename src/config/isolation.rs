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
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            dynamic_users: true,
            dynamic_user_range: (1_879_048_192, 1_879_113_727),
            private_ipc_and_hostname: true,
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
