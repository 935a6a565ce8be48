//! The request plan: every way a `StartJob` can be wrong is decided here, before the call takes a queue place,
//! and reported as a [`PlanError`] whose kind maps one-to-one onto a gRPC code; what is right becomes a
//! [`JobPlan`]: exactly what to exec, with which environment, timeout, kill grace and limits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::limits::Limits;
use super::{BASE_PATH, Config};
use crate::pb;

impl Config {
    /// Validates a `StartJob` against the catalog and policy, and resolves it into a [`JobPlan`].
    pub fn plan(&self, start: pb::StartJob) -> Result<JobPlan, PlanError> {
        use PlanError::{InvalidArgument, NotFound, PermissionDenied};
        let timeout = request_duration("timeout", start.timeout)?.filter(|d| !d.is_zero());
        let kill_grace = request_duration("kill_grace", start.kill_grace)?;
        no_nul("job", &start.job)?;
        for (i, a) in start.args.iter().enumerate() {
            no_nul(&format!("args[{i}]"), a)?;
        }
        for (i, a) in start.command.iter().enumerate() {
            no_nul(&format!("command[{i}]"), a)?;
        }
        for (k, v) in &start.env {
            check_env_entry(k, v).map_err(InvalidArgument)?;
        }
        let mut env = base_env();
        let (name, mut argv, max_timeout, limits, cwd, ids) = match (start.job.is_empty(), start.command.is_empty()) {
            (true, true) => {
                return Err(InvalidArgument(
                    "start names no work: set `job` (a catalog job) or `command` (a raw argv)".into(),
                ));
            }
            (false, false) => {
                return Err(InvalidArgument("start sets both `job` and `command`; set exactly one".into()));
            }
            (true, false) => {
                if !self.allow_raw_commands {
                    return Err(PermissionDenied(
                        "raw commands are not allowed on this server; run a catalog job (see ListJobs)".into(),
                    ));
                }
                if start.command[0].is_empty() {
                    return Err(InvalidArgument("command[0] (the program) is empty".into()));
                }
                env.extend(start.env);
                (format!("raw:{}", start.command[0]), start.command, self.raw_max_timeout, self.limits, None, None)
            }
            (false, true) => {
                let job =
                    self.jobs.iter().find(|j| j.name == start.job).ok_or_else(|| {
                        NotFound(format!("no job named `{}` in the catalog (see ListJobs)", start.job))
                    })?;
                if !start.args.is_empty() && !job.accepts_args {
                    return Err(PermissionDenied(format!("job `{}` does not accept arguments", job.name)));
                }
                if let Some(key) = start.env.keys().find(|k| !job.allowed_env.contains(k)) {
                    return Err(PermissionDenied(format!(
                        "job `{}` does not accept environment variable `{key}` (allowed: {:?})",
                        job.name, job.allowed_env
                    )));
                }
                env.extend(job.env.clone());
                env.extend(start.env);
                let limits = job.limits.or(self.limits);
                (job.name.clone(), job.command.clone(), job.max_timeout, limits, job.cwd.clone(), job.ids)
            }
        };
        argv.extend(start.args);
        let timeout = match (timeout, max_timeout) {
            (Some(t), Some(max)) => Some(t.min(max)),
            (t, max) => t.or(max),
        };
        let kill_grace = kill_grace.unwrap_or(self.default_kill_grace).min(self.max_kill_grace);
        Ok(JobPlan { name, argv, env, timeout, kill_grace, limits, cwd, ids })
    }
}

/// A validated request: exactly what the worker will be.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// Catalog name, or `raw:PROGRAM` for a raw command (for logs).
    pub name: String,
    /// The complete argv.
    pub argv: Vec<String>,
    /// The complete environment.
    pub env: BTreeMap<String, String>,
    /// Kill the job (reason `TIMED_OUT`) after this long.
    pub timeout: Option<Duration>,
    /// SIGTERM → SIGKILL grace when the job is killed.
    pub kill_grace: Duration,
    /// The job's limits (defaults merged in).
    pub limits: Limits,
    /// A fixed working directory; `None` = a fresh private one.
    pub cwd: Option<PathBuf>,
    /// `(uid, gid)` to run as.
    pub ids: Option<(u32, u32)>,
}

/// Why a `StartJob` was refused. Each kind is one gRPC status code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// Malformed request (`INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown job (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// Not allowed by policy (`PERMISSION_DENIED`).
    #[error("{0}")]
    PermissionDenied(String),
}

fn base_env() -> BTreeMap<String, String> {
    [("PATH", BASE_PATH), ("HOME", "/"), ("LANG", "C.UTF-8")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn no_nul(what: &str, value: &str) -> Result<(), PlanError> {
    if value.contains('\0') {
        return Err(PlanError::InvalidArgument(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

pub(super) fn check_env_entry(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("an environment variable has an empty name".into());
    }
    if key.contains('=') {
        return Err(format!("environment variable name {key:?} contains `=`"));
    }
    if key.contains('\0') || value.contains('\0') {
        return Err(format!("environment variable {key:?} contains a NUL byte"));
    }
    Ok(())
}

/// A protobuf duration from a request, refusing negative and malformed values.
fn request_duration(field: &str, d: Option<prost_types::Duration>) -> Result<Option<Duration>, PlanError> {
    let Some(d) = d else { return Ok(None) };
    let secs = u64::try_from(d.seconds);
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000);
    match (secs, nanos) {
        (Ok(s), Some(n)) => Ok(Some(Duration::new(s, n))),
        _ if d.seconds < 0 || d.nanos < 0 => {
            Err(PlanError::InvalidArgument(format!("{field} is negative ({}s {}ns)", d.seconds, d.nanos)))
        }
        _ => Err(PlanError::InvalidArgument(format!("{field} has invalid nanos {}", d.nanos))),
    }
}
