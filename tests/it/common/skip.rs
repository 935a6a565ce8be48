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
