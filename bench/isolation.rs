//! The cost of each isolation level that exists: start latency with dynamic users and IPC/UTS namespaces (and
//! the privilege drop every job gets) against the same server with both off, in the same run.

/// A config with dynamic users and namespaces off (jobs run as root in the server's namespaces, still without
/// capabilities and with `no_new_privs`).
pub(super) fn config_without_dynamic_users() -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("forkpool-bench-root-{}.toml", std::process::id()));
    std::fs::write(&path, "[isolation]\ndynamic_users = false\nprivate_ipc_and_hostname = false\n")?;
    Ok(path)
}
