//! The request plan: every way a `StartJob` can be wrong is decided here, before the call takes a queue place,
//! and reported as a [`PlanError`] whose kind maps one-to-one onto a gRPC code; what is right becomes a
//! [`JobPlan`]: exactly what to exec, with which environment, timeout, kill grace and limits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::files::{FilesPlan, plan_files};
use super::limits::Limits;
use super::{BASE_PATH, Config};
use crate::pb;

impl Config {
    /// Validates a `StartJob` against the catalog and policy, and resolves it into a [`JobPlan`].
    pub fn plan(&self, start: pb::StartJob) -> Result<JobPlan, PlanError> {
        use PlanError::{InvalidArgument, NotFound, PermissionDenied};
        let timeout = request_duration("timeout", start.timeout)?.filter(|d| !d.is_zero());
        let heartbeat = match request_duration("heartbeat_interval", start.heartbeat_interval)? {
            Some(d) if d < super::MIN_HEARTBEAT_INTERVAL => {
                return Err(InvalidArgument(format!(
                    "heartbeat_interval {d:?} is below the minimum of {:?}",
                    super::MIN_HEARTBEAT_INTERVAL
                )));
            }
            Some(d) => Some(d),
            None => self.heartbeat_interval,
        };
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
        let (
            name,
            mut argv,
            max_timeout,
            limits,
            cwd,
            ids,
            terminal_allowed,
            files_allowed,
            keep_capabilities,
            isolation,
        ) = match (start.job.is_empty(), start.command.is_empty()) {
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
                let name = format!("raw:{}", start.command[0]);
                let isolation = self.isolation.plan(&Default::default());
                (name, start.command, self.raw_max_timeout, self.limits, None, None, true, true, 0, isolation)
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
                let command = job.command.clone();
                let cwd = job.cwd.clone();
                // Checked when the config was loaded.
                let keep = super::isolation::capability_mask(&job.keep_capabilities).unwrap_or(0);
                let isolation = self.isolation.plan(&job.isolation);
                let (ids, terminal, files) = (job.ids, job.terminal, job.files);
                (job.name.clone(), command, job.max_timeout, limits, cwd, ids, terminal, files, keep, isolation)
            }
        };
        argv.extend(start.args);
        let timeout = match (timeout, max_timeout) {
            (Some(t), Some(max)) => Some(t.min(max)),
            (t, max) => t.or(max),
        };
        let kill_grace = kill_grace.unwrap_or(self.default_kill_grace).min(self.max_kill_grace);
        let terminal = match start.terminal {
            None => None,
            Some(_) if self.max_terminals == 0 => {
                return Err(PermissionDenied("this server runs no terminal jobs (max_terminals = 0)".into()));
            }
            Some(_) if !terminal_allowed => {
                return Err(PermissionDenied(format!("job `{name}` may not run with a terminal (terminal = false)")));
            }
            Some(terminal) => {
                let (rows, cols) = window_size(
                    if terminal.rows == 0 { DEFAULT_ROWS } else { terminal.rows },
                    if terminal.cols == 0 { DEFAULT_COLS } else { terminal.cols },
                )
                .map_err(InvalidArgument)?;
                let term = if terminal.term.is_empty() { DEFAULT_TERM.to_string() } else { terminal.term };
                check_env_entry("TERM", &term).map_err(|m| InvalidArgument(format!("terminal.term: {m}")))?;
                env.insert("TERM".into(), term);
                Some(TerminalPlan { rows, cols, echo: !terminal.no_echo })
            }
        };
        let wants_files = !start.inputs.is_empty() || !start.outputs.is_empty();
        if wants_files && !files_allowed {
            return Err(PermissionDenied(format!("job `{name}` does not take files (files = false)")));
        }
        let files = plan_files(start.inputs, start.outputs, &limits)?;
        Ok(JobPlan {
            name,
            argv,
            env,
            timeout,
            kill_grace,
            limits,
            cwd,
            ids,
            terminal,
            files,
            keep_capabilities,
            isolation,
            heartbeat,
        })
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
    /// Run under a pseudo-terminal like this (its `TERM` is in `env` already).
    pub terminal: Option<TerminalPlan>,
    /// Input and output files, if the request has any.
    pub files: Option<FilesPlan>,
    /// Capabilities (bit N = capability N) left in the job's bounding set; every other one is dropped.
    pub keep_capabilities: u64,
    /// The namespaces and filters the job asks for.
    pub isolation: super::isolation::IsolationPlan,
    /// Send a heartbeat event when the call has sent nothing for this long.
    pub heartbeat: Option<Duration>,
}

/// A terminal job's pseudo-terminal, as it is at exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalPlan {
    /// Window rows.
    pub rows: u16,
    /// Window columns.
    pub cols: u16,
    /// Whether the terminal echoes input (`no_echo` turns it off).
    pub echo: bool,
}

/// `Terminal.rows` when the request leaves it 0.
pub const DEFAULT_ROWS: u32 = 24;
/// `Terminal.cols` when the request leaves it 0.
pub const DEFAULT_COLS: u32 = 80;
/// The job's `TERM` when `Terminal.term` is empty.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// A window size from a request (`Terminal` or `Resize`): each dimension from 1 to 65535, as the kernel's
/// `struct winsize` holds it.
pub fn window_size(rows: u32, cols: u32) -> Result<(u16, u16), String> {
    match (u16::try_from(rows), u16::try_from(cols)) {
        (Ok(r), Ok(c)) if r > 0 && c > 0 => Ok((r, c)),
        _ => Err(format!("window size {rows}x{cols} (rows x cols) is out of range: each must be 1 to 65535")),
    }
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
    /// Over a cap of the job (`RESOURCE_EXHAUSTED`), e.g. its input files' total size.
    #[error("{0}")]
    ResourceExhausted(String),
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
