//! Resource limits: server-wide defaults in `[limits]`, overridden per catalog job by `[job.limits]`.
//!
//! How each is enforced depends on the containment mode (see [`crate::containment::cgroup`]): memory is `memory.max`
//! (v2) or `memory.limit_in_bytes` (v1 on hybrid hosts) in cgroup mode and `RLIMIT_AS` otherwise; processes
//! are `pids.max` in cgroup mode and `RLIMIT_NPROC` otherwise (which the kernel ignores for root: give such
//! jobs a `user`); CPU time, open files and file size are always rlimits; the CPU share is `cpu.max` (or
//! v1 CFS quota) where a cpu controller is available; the output cap and the file caps (`input_bytes`,
//! `output_file_bytes`, `output_files_bytes`, `file_count`) are enforced by the server.

use std::time::Duration;

use serde::Deserialize;

/// Limits for one job. `None` = unlimited (or: inherit the server-wide default when merging).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Memory, bytes (`"512MiB"` or a number).
    #[serde(deserialize_with = "super::units::optional_size")]
    pub memory: Option<u64>,
    /// Processes (and threads, in cgroup mode).
    pub processes: Option<u64>,
    /// CPU time (`RLIMIT_CPU`), whole seconds.
    #[serde(deserialize_with = "super::units::optional_duration")]
    pub cpu_time: Option<Duration>,
    /// Open files (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Largest file the job may write, bytes (`RLIMIT_FSIZE`).
    #[serde(deserialize_with = "super::units::optional_size")]
    pub file_size: Option<u64>,
    /// CPU share in cores (`1.5` = one and a half CPUs), cgroup mode only.
    pub cpu: Option<f64>,
    /// Total stdout + stderr bytes; a job over it is killed with `EXIT_REASON_OUTPUT_LIMIT`.
    #[serde(deserialize_with = "super::units::optional_size")]
    pub output: Option<u64>,
    /// All input files of a job, bytes [default: 256 MiB]; over it, `RESOURCE_EXHAUSTED` before anything is
    /// written.
    #[serde(deserialize_with = "super::units::optional_size")]
    pub input_bytes: Option<u64>,
    /// One output file, bytes [default: 256 MiB]; a larger one is not sent (`OUTPUT_STATE_TOO_LARGE`).
    #[serde(deserialize_with = "super::units::optional_size")]
    pub output_file_bytes: Option<u64>,
    /// All output files of a job, bytes [default: 256 MiB].
    #[serde(deserialize_with = "super::units::optional_size")]
    pub output_files_bytes: Option<u64>,
    /// Input files plus sent output files [default: 1000].
    pub file_count: Option<u64>,
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
            input_bytes: self.input_bytes.or(defaults.input_bytes),
            output_file_bytes: self.output_file_bytes.or(defaults.output_file_bytes),
            output_files_bytes: self.output_files_bytes.or(defaults.output_files_bytes),
            file_count: self.file_count.or(defaults.file_count),
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

#[cfg(test)]
mod tests {
    use super::*;

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
