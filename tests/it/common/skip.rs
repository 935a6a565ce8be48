//! Skip or require: tests that need cgroup mode (or a tool) print `SKIPPED` and pass where it is missing,
//! unless CI requires it (`FORKPOOL_REQUIRE_CGROUPS=1`, `FORKPOOL_REQUIRE_TOOLS=1`), where they fail.
#![allow(dead_code, unreachable_pub, missing_docs)]

use forkpool::pb;

/// Whether the server runs in cgroup mode; if not, says `SKIPPED (what)` (or fails where CI requires it).
pub fn cgroup_mode(status: &pb::GetStatusResponse, what: &str) -> bool {
    if status.containment == pb::ContainmentMode::Cgroup as i32 {
        return true;
    }
    assert!(
        std::env::var("FORKPOOL_REQUIRE_CGROUPS").as_deref() != Ok("1"),
        "{what}: cgroup mode required but unavailable: {}",
        status.containment_detail
    );
    eprintln!("SKIPPED ({what}): no writable cgroup v2 hierarchy: {}", status.containment_detail);
    false
}

/// Whether `available`; if not, says `SKIPPED (what)` (or fails where CI requires the tools).
pub fn tool(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(std::env::var("FORKPOOL_REQUIRE_TOOLS").as_deref() != Ok("1"), "{what}: required but unavailable");
    eprintln!("SKIPPED: {what} is not available here");
    false
}

/// The cgroup v2 mount: `/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on pure v2 ones.
pub fn cgroup_v2_mount() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
}

/// A cgroup root of a test's own (`cgroup_root` in its config), on whichever cgroup v2 mount this host has:
/// any other server starting meanwhile would clean a dead instance in a shared one.
pub fn test_cgroup_root(name: &str) -> std::path::PathBuf {
    cgroup_v2_mount()
        .unwrap_or_else(|| std::path::PathBuf::from("/sys/fs/cgroup"))
        .join(format!("forkpool-{name}-{}", std::process::id()))
}

/// The one instance cgroup a server made under `root` (its `cgroup_root`).
pub fn instance_cgroup(root: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(root)
        .expect("the cgroup root")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("instance-")))
        .expect("the server's instance cgroup")
}

/// The job cgroups (`job-*`) in a server's instance cgroup `instance`: its jobs', its warm sandboxes', and
/// the emptied ones it keeps for reuse.
pub fn job_cgroups(instance: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(instance)
        .map(|d| {
            d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("job-")).map(|e| e.path()).collect()
        })
        .unwrap_or_default()
}

/// The containment modes a test can ask a server for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Cgroup,
    Fallback,
}

/// Both modes, cgroup mode first.
pub const MODES: [Mode; 2] = [Mode::Cgroup, Mode::Fallback];

impl Mode {
    /// A config for this mode: raw commands allowed, jobs' working directories under `work_root`, then `extra`.
    pub fn toml(self, work_root: &std::path::Path, extra: &str) -> String {
        let cgroups = if self == Mode::Cgroup { "auto" } else { "off" };
        format!("allow_raw_commands = true\ncgroups = \"{cgroups}\"\nwork_root = \"{}\"\n{extra}", work_root.display())
    }
}

/// This test process's run lock, `forkpool-test-run-PID.lock` in the temporary directory, locked (`flock`) for
/// as long as the process lives: how another test process, perhaps in another pid namespace sharing the
/// directory, knows this one's directories are in use.
fn hold_run_lock() {
    static HELD: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("forkpool-test-run-{}.lock", std::process::id()));
        let file = std::fs::File::create(path).ok()?;
        // SAFETY: flock on an fd this function owns.
        let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) };
        (locked == 0).then_some(file)
    });
}

/// Whether the test process `pid` is gone: its run lock exists and nobody holds it (a directory without one,
/// from before run locks, is left alone).
fn run_gone(pid: &str) -> bool {
    let path = std::env::temp_dir().join(format!("forkpool-test-run-{pid}.lock"));
    let Ok(file) = std::fs::File::open(path) else { return false };
    // SAFETY: flock on an fd this function owns; the lock goes with it.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes the test directories (`forkpool-test-…-PID`, in the temporary directory and `/var/tmp`) of test
/// processes that are gone (see [`hold_run_lock`]), then their run locks: a run leaves its own behind, the next
/// one takes them away. Once per process.
pub fn sweep_stale_test_dirs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        hold_run_lock();
        let mut gone_runs = std::collections::BTreeSet::new();
        for base in [std::env::temp_dir(), std::path::PathBuf::from("/var/tmp")] {
            let Ok(entries) = std::fs::read_dir(&base) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix("forkpool-test-").and_then(|rest| rest.rsplit('-').next()) else {
                    continue;
                };
                if pid.parse::<u32>().is_ok_and(|p| p != std::process::id()) && run_gone(pid) {
                    let _ = std::fs::remove_dir_all(entry.path());
                    gone_runs.insert(pid.to_string());
                }
            }
        }
        for pid in gone_runs {
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!("forkpool-test-run-{pid}.lock")));
        }
    });
}

/// A fresh working-directory root for the test `name` in `mode`: `<temp>/forkpool-test-<prefix>-<name>-<mode>-<pid>/work`.
pub fn fresh_work_root(prefix: &str, name: &str, mode: Mode) -> std::path::PathBuf {
    sweep_stale_test_dirs();
    // Under the system's temporary directory, not the checkout: jobs run as dynamic users, who must be able to
    // reach their directories (a checkout under /root is not reachable).
    let dir = std::env::temp_dir().join(format!("forkpool-test-{prefix}-{name}-{mode:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("work")
}

/// Starts a server with config `toml` (made by [`Mode::toml`]) and `env` added to its environment, and checks
/// that it runs in `mode`; `None` (after saying so) where cgroup mode is not available here.
pub async fn start_in_mode(mode: Mode, toml: &str, env: &[(&str, &str)], name: &str) -> Option<super::TestServer> {
    let server = super::TestServer::with_config_env(toml, &[], env);
    let mut client = server.client().await;
    let status = super::get_status(&mut client).await;
    let expected = if mode == Mode::Cgroup { pb::ContainmentMode::Cgroup } else { pb::ContainmentMode::ProcessGroup };
    if status.containment != expected as i32 {
        assert_eq!(mode, Mode::Cgroup, "fallback mode must always be available");
        assert!(!cgroup_mode(&status, name));
        return None;
    }
    Some(server)
}
