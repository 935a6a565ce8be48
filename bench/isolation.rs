//! The cost of each isolation level that exists: start latency with dynamic users (and the privilege drop
//! every job gets) against the same server with dynamic users off, in the same run.

/// A config with dynamic users off (jobs run as root, still without capabilities and with `no_new_privs`).
pub(super) fn config_without_dynamic_users() -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("forkpool-bench-root-{}.toml", std::process::id()));
    std::fs::write(&path, "[isolation]\ndynamic_users = false\n")?;
    Ok(path)
}
