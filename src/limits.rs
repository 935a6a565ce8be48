//! Resource limits: server-wide defaults in `[limits]`, overridden per catalog job by `[job.limits]`.
//!
//! How each is enforced depends on the containment mode (see [`crate::cgroup`]): memory is `memory.max`
//! (v2) or `memory.limit_in_bytes` (v1 on hybrid hosts) in cgroup mode and `RLIMIT_AS` otherwise; processes
//! are `pids.max` in cgroup mode and `RLIMIT_NPROC` otherwise (which the kernel ignores for root: give such
//! jobs a `user`); CPU time, open files and file size are always rlimits; the CPU share is `cpu.max` (or
//! v1 CFS quota) where a cpu controller is available; the output cap is enforced by the server.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Limits for one job. `None` = unlimited (or: inherit the server-wide default when merging).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Memory, bytes (`"512MiB"` or a number).
    #[serde(deserialize_with = "size")]
    pub memory: Option<u64>,
    /// Processes (and threads, in cgroup mode).
    pub processes: Option<u64>,
    /// CPU time (`RLIMIT_CPU`), whole seconds.
    #[serde(deserialize_with = "crate::config::optional_duration")]
    pub cpu_time: Option<Duration>,
    /// Open files (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Largest file the job may write, bytes (`RLIMIT_FSIZE`).
    #[serde(deserialize_with = "size")]
    pub file_size: Option<u64>,
    /// CPU share in cores (`1.5` = one and a half CPUs), cgroup mode only.
    pub cpu: Option<f64>,
    /// Total stdout + stderr bytes; a job over it is killed with `EXIT_REASON_OUTPUT_LIMIT`.
    #[serde(deserialize_with = "size")]
    pub output: Option<u64>,
}

impl Limits {
    /// The server-wide defaults when the config names none: bounded processes and open files.
    pub fn server_default() -> Limits {
        Limits { processes: Some(4096), open_files: Some(4096), ..Limits::default() }
    }

    /// `self` with every unset field taken from `defaults`.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            memory: self.memory.or(defaults.memory),
            processes: self.processes.or(defaults.processes),
            cpu_time: self.cpu_time.or(defaults.cpu_time),
            open_files: self.open_files.or(defaults.open_files),
            file_size: self.file_size.or(defaults.file_size),
            cpu: self.cpu.or(defaults.cpu),
            output: self.output.or(defaults.output),
        }
    }

    /// The rlimits the worker sets before exec. `memory` and `processes` are included only when the
    /// cgroup does not enforce them.
    ///
    /// Each value is capped at the server's own hard limit: the job is bound by it anyway, and asking for
    /// more would fail the job's exec setup instead of limiting it.
    pub fn rlimits(&self, cgroup_memory: bool, cgroup_pids: bool) -> Vec<(libc::c_int, u64)> {
        use nix::sys::resource::{Resource, getrlimit};
        let mut out = Vec::new();
        let mut push = |resource: libc::__rlimit_resource_t, own: Resource, value: Option<u64>| {
            if let Some(v) = value {
                let hard = getrlimit(own).map_or(u64::MAX, |(_, hard)| hard);
                out.push((resource as libc::c_int, v.min(hard)));
            }
        };
        push(libc::RLIMIT_CPU, Resource::RLIMIT_CPU, self.cpu_time.map(|d| d.as_secs().max(1)));
        push(libc::RLIMIT_NOFILE, Resource::RLIMIT_NOFILE, self.open_files);
        push(libc::RLIMIT_FSIZE, Resource::RLIMIT_FSIZE, self.file_size);
        if !cgroup_memory {
            push(libc::RLIMIT_AS, Resource::RLIMIT_AS, self.memory);
        }
        if !cgroup_pids {
            push(libc::RLIMIT_NPROC, Resource::RLIMIT_NPROC, self.processes);
        }
        out
    }
}

/// Parses `"64MiB"`, `"2G"`, `"1024"` (bytes) or a TOML integer.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("invalid size unit {other:?} in {s:?} (use KiB, MiB, GiB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("size {s:?} is too large"))
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(s) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Deserializes a required size (`"4MiB"` or a number of bytes).
pub(crate) fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    size(d)?.ok_or_else(|| serde::de::Error::custom("a size is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn job_limits_override_defaults_field_by_field() {
        let job = Limits { memory: Some(1), ..Limits::default() };
        let merged = job.or(Limits::server_default());
        assert_eq!((merged.memory, merged.processes), (Some(1), Some(4096)));
        let rl = merged.rlimits(false, true);
        assert!(rl.contains(&(libc::RLIMIT_AS as libc::c_int, 1)));
        assert!(!rl.iter().any(|(r, _)| *r == libc::RLIMIT_NPROC as libc::c_int));
    }
}
