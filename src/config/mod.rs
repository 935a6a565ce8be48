//! Configuration: the TOML file and its defaults, the job catalog, and the validation that turns a client's
//! `StartJob` into a [`JobPlan`]: exactly what to exec, with which environment, timeout and kill grace.
//!
//! Every way a `StartJob` can be wrong is decided here, before the call takes a queue place, and reported as
//! a [`PlanError`] whose kind maps one-to-one onto a gRPC code.

mod catalog;
pub mod files;
pub mod isolation;
pub mod limits;
mod plan;
pub mod units;

pub use catalog::CatalogJob;
use catalog::builtin_catalog;
use plan::check_env_entry;
pub use plan::{DEFAULT_COLS, DEFAULT_ROWS, DEFAULT_TERM, JobPlan, PlanError, TerminalPlan, window_size};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use limits::Limits;

/// Where the server listens when neither the config nor the command line says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// The small, safe environment every job starts from; the catalog or the request adds to it. The server's
/// own environment never reaches a job.
pub const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The server's whole configuration. Every field has a default, so an empty file (or none) is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Concurrent jobs; 0 means the number of CPUs.
    pub workers: usize,
    /// Calls that may wait for a worker slot; beyond that, `RESOURCE_EXHAUSTED`.
    pub queue: usize,
    /// An upload of input files is dropped (`DEADLINE_EXCEEDED`) when no chunk comes for this long.
    #[serde(deserialize_with = "units::duration")]
    pub upload_idle_timeout: Duration,
    /// Terminal jobs (queued or running) at once; beyond that, `RESOURCE_EXHAUSTED`. Each holds a
    /// pseudo-terminal, of which the system has `/proc/sys/kernel/pty/max`; 0 = no terminal jobs.
    pub max_terminals: usize,
    /// Whether `StartJob.command` (a raw argv) is accepted.
    pub allow_raw_commands: bool,
    /// SIGTERM → SIGKILL grace when the request names none.
    #[serde(deserialize_with = "units::duration")]
    pub default_kill_grace: Duration,
    /// Upper bound for a requested grace.
    #[serde(deserialize_with = "units::duration")]
    pub max_kill_grace: Duration,
    /// Upper bound for a raw command's timeout; none = unlimited.
    #[serde(deserialize_with = "units::optional_duration")]
    pub raw_max_timeout: Option<Duration>,
    /// Interval of HTTP/2 and TCP keepalive probes, so a peer that vanished silently is noticed.
    #[serde(deserialize_with = "units::duration")]
    pub keepalive_interval: Duration,
    /// How long an HTTP/2 keepalive ping may go unanswered before the connection (and its jobs) is dropped.
    #[serde(deserialize_with = "units::duration")]
    pub keepalive_timeout: Duration,
    /// A new connection must send its HTTP/2 preface within this long, or it is dropped.
    #[serde(deserialize_with = "units::duration")]
    pub handshake_timeout: Duration,
    /// Largest request message accepted (bytes); larger ones get `RESOURCE_EXHAUSTED`.
    #[serde(deserialize_with = "units::size")]
    pub max_message_size: u64,
    /// Concurrent calls per HTTP/2 connection; further ones wait for a free stream.
    pub max_concurrent_streams: u32,
    /// A connection older than this is sent GOAWAY (its running calls go on), so that clients reconnect and
    /// re-resolve, and replicas started later get calls too (gRPC A9); none = never.
    #[serde(deserialize_with = "units::optional_duration")]
    pub max_connection_age: Option<Duration>,
    /// How long calls still running on a connection past `max_connection_age` may go on before it is closed;
    /// none = until they end.
    #[serde(deserialize_with = "units::optional_duration")]
    pub max_connection_age_grace: Option<Duration>,
    /// Send a `heartbeat` event on a call that has sent nothing for this long, so that proxies with idle
    /// timeouts (they do not forward HTTP/2 pings) keep a quiet job's stream open; none = only for calls that
    /// ask (`StartJob.heartbeat_interval`).
    #[serde(deserialize_with = "units::optional_duration")]
    pub heartbeat_interval: Option<Duration>,
    /// On SIGTERM, new calls are refused and health turns NOT_SERVING at once, and this long after (or at the
    /// drain timeout, if sooner) every connection is sent GOAWAY and no new one is accepted: health checkers see
    /// the change first, then clients and proxies take new calls elsewhere, while running calls go on.
    #[serde(deserialize_with = "units::duration")]
    pub drain_goaway_delay: Duration,
    /// Warm sandboxes kept ready for jobs of the default shape (see `src/job/warm.rs`); none = as many as
    /// `workers`, at least 4, at most 8; 0 = every job is spawned cold.
    pub warm_sandboxes: Option<usize>,
    /// PEM certificate (chain) for TLS; with `tls_key`, the server speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens, one per line (optionally followed by the jobs the token may run).
    pub auth_token_file: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`); none = not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Server-wide default limits; each catalog job may override them.
    pub limits: Limits,
    /// `auto`: per-job cgroups when a writable cgroup v2 tree is found, else process groups; `off`:
    /// process groups only.
    pub cgroups: CgroupMode,
    /// The cgroup v2 directory for job cgroups [default: discovered].
    pub cgroup_root: Option<PathBuf>,
    /// Where private working directories are made.
    pub work_root: PathBuf,
    /// How jobs are isolated (`[isolation]`).
    pub isolation: isolation::Isolation,
    /// The job catalog (`[[job]]` tables).
    #[serde(rename = "job")]
    pub jobs: Vec<CatalogJob>,
}

/// Whether to use per-job cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Use cgroups when possible.
    Auto,
    /// Never use cgroups.
    Off,
}

/// The shortest heartbeat interval a config or a call may ask for.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("DEFAULT_LISTEN is a valid address"),
            workers: 0,
            queue: 64,
            max_terminals: 256,
            upload_idle_timeout: Duration::from_secs(60),
            allow_raw_commands: false,
            default_kill_grace: Duration::from_secs(2),
            max_kill_grace: Duration::from_secs(60),
            raw_max_timeout: None,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 4 << 20,
            max_concurrent_streams: 1000,
            max_connection_age: None,
            max_connection_age_grace: None,
            heartbeat_interval: None,
            drain_goaway_delay: Duration::from_secs(1),
            warm_sandboxes: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth_token_file: None,
            metrics_listen: None,
            limits: Limits::server_default(),
            cgroups: CgroupMode::Auto,
            cgroup_root: None,
            work_root: std::env::temp_dir().join("forkpool"),
            isolation: isolation::Isolation::default(),
            jobs: builtin_catalog(),
        }
    }
}

/// The meaningful lines of a token file (`--auth-token-file` for the server, `--token-file` for the CLI), with
/// their 0-based numbers: trimmed, without blanks and `#` comments.
pub(crate) fn token_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// A validated config whose jobs' users are resolved: made only by [`Config::prepare`].
#[derive(Debug, Clone)]
pub struct Prepared(Config);

impl std::ops::Deref for Prepared {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// The values are inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: shown, source },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: "<text>".into(), source: Box::new(source) })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: unique names, usable argv and environment, consistent bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.default_kill_grace > self.max_kill_grace {
            return invalid("default_kill_grace exceeds max_kill_grace".into());
        }
        if self.max_message_size < 1024 || self.max_concurrent_streams == 0 {
            return invalid("max_message_size must be at least 1 KiB and max_concurrent_streams at least 1".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert and tls_key go together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return invalid("tls_client_ca needs tls_cert and tls_key".into());
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return invalid("keepalive_interval and keepalive_timeout must be positive".into());
        }
        if self.upload_idle_timeout.is_zero() {
            return invalid("upload_idle_timeout must be positive".into());
        }
        if self.max_connection_age.is_some_and(|d| d.is_zero()) {
            return invalid("max_connection_age must be positive (leave it out for none)".into());
        }
        if self.heartbeat_interval.is_some_and(|d| d < MIN_HEARTBEAT_INTERVAL) {
            return invalid(format!("heartbeat_interval must be at least {MIN_HEARTBEAT_INTERVAL:?}"));
        }
        self.isolation.validate().or_else(invalid)?;
        let (first, last) = self.isolation.dynamic_user_range;
        // Running, queued and uploading calls each hold one (uploads: up to workers + queue more).
        let needed = 2 * (self.worker_count() + self.queue) as u64;
        if u64::from(last - first) + 1 < needed {
            return invalid(format!(
                "isolation.dynamic_user_range holds fewer uids than 2 × (workers + queue) = {needed}"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for job in &self.jobs {
            if job.name.is_empty() || job.name.contains('\0') {
                return invalid("a job has an empty name or a name with a NUL byte".into());
            }
            if !seen.insert(job.name.as_str()) {
                return invalid(format!("job `{}` is defined twice", job.name));
            }
            if job.command.first().is_none_or(String::is_empty) {
                return invalid(format!("job `{}` has an empty command", job.name));
            }
            if let Some(arg) = job.command.iter().find(|a| a.contains('\0')) {
                return invalid(format!("job `{}`: command argument {arg:?} contains a NUL byte", job.name));
            }
            for (key, value) in &job.env {
                check_env_entry(key, value).or_else(|m| invalid(format!("job `{}`: {m}", job.name)))?;
            }
            if job.files && job.cwd.is_some() {
                return invalid(format!(
                    "job `{}` sets both `files` and `cwd`: files go to a private working directory",
                    job.name
                ));
            }
            let wanted = self.isolation.plan(&job.isolation);
            if wanted.read_only_root && !wanted.private_tmp {
                return invalid(format!(
                    "job `{}`: isolation.read_only_root needs isolation.private_tmp (a job needs somewhere to write)",
                    job.name
                ));
            }
            if let Err(m) = isolation::capability_mask(&job.keep_capabilities) {
                return invalid(format!("job `{}`: {m}", job.name));
            }
            let runs_as_root = match job.user.as_deref() {
                Some(user) => user == "root" || user == "0",
                None => !self.isolation.dynamic_users,
            };
            if !job.keep_capabilities.is_empty() && !runs_as_root {
                return invalid(format!(
                    "job `{}` keeps capabilities, which only a job running as root can use: set user = \"root\"",
                    job.name
                ));
            }
            for key in &job.allowed_env {
                check_env_entry(key, "").or_else(|m| invalid(format!("job `{}`: allowed_env: {m}", job.name)))?;
            }
        }
        Ok(())
    }

    /// Validates, then resolves each job's `user`/`group` to ids (a job with a user needs a root server): the
    /// only way to the [`Prepared`] config a server runs with, so no job can run as root because its user
    /// was never looked up.
    pub fn prepare(mut self) -> Result<Prepared, ConfigError> {
        self.validate()?;
        let root = nix::unistd::geteuid().is_root();
        for job in &mut self.jobs {
            let Some(user) = &job.user else {
                if job.group.is_some() {
                    return Err(ConfigError::Invalid(format!("job `{}` sets `group` without `user`", job.name)));
                }
                continue;
            };
            if !root {
                return Err(ConfigError::Invalid(format!("job `{}` sets `user`, which needs a root server", job.name)));
            }
            let invalid = |m: String| ConfigError::Invalid(format!("job `{}`: {m}", job.name));
            let found = match user.parse::<u32>() {
                Ok(uid) => nix::unistd::User::from_uid(uid.into()),
                Err(_) => nix::unistd::User::from_name(user),
            };
            let user = found.ok().flatten().ok_or_else(|| invalid(format!("unknown user {user:?}")))?;
            let gid = match &job.group {
                None => user.gid.as_raw(),
                Some(group) => match group.parse::<u32>() {
                    Ok(gid) => gid,
                    Err(_) => nix::unistd::Group::from_name(group)
                        .ok()
                        .flatten()
                        .ok_or_else(|| invalid(format!("unknown group {group:?}")))?
                        .gid
                        .as_raw(),
                },
            };
            job.ids = Some((user.uid.as_raw(), gid));
        }
        Ok(Prepared(self))
    }

    /// Worker slots, with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 { self.workers } else { std::thread::available_parallelism().map_or(1, usize::from) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn raw_config() -> Config {
        Config { allow_raw_commands: true, ..Config::default() }
    }

    fn start(job: &str, command: &[&str]) -> pb::StartJob {
        pb::StartJob { job: job.into(), command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn catalog_job_gets_base_env_and_capped_timeout() {
        let mut s = start("sleep", &[]);
        s.args = vec!["1".into()];
        s.timeout = Some(prost_types::Duration { seconds: 99_999, nanos: 0 });
        let plan = Config::default().plan(s).expect("valid");
        assert_eq!(plan.argv, ["sleep", "1"]);
        assert_eq!(plan.timeout, Some(Duration::from_secs(3600)));
        assert_eq!(plan.env.get("PATH").map(String::as_str), Some(BASE_PATH));
        assert_eq!(plan.kill_grace, Duration::from_secs(2));
    }

    #[test]
    fn each_bad_start_gets_its_own_kind() {
        let c = Config::default();
        assert!(matches!(c.plan(start("", &[])), Err(PlanError::InvalidArgument(_))));
        assert!(matches!(c.plan(start("echo", &["x"])), Err(PlanError::InvalidArgument(_))));
        assert!(matches!(c.plan(start("nope", &[])), Err(PlanError::NotFound(_))));
        assert!(matches!(c.plan(start("", &["ls"])), Err(PlanError::PermissionDenied(_))));
        let mut s = start("cat", &[]);
        s.args = vec!["/etc/passwd".into()];
        assert!(matches!(c.plan(s), Err(PlanError::PermissionDenied(_))));
        let mut s = start("echo", &[]);
        s.env.insert("X".into(), "1".into());
        assert!(matches!(c.plan(s), Err(PlanError::PermissionDenied(_))));
        let mut s = start("", &["ls"]);
        s.env.insert("A=B".into(), "1".into());
        assert!(matches!(raw_config().plan(s), Err(PlanError::InvalidArgument(_))));
        let mut s = start("", &["ls"]);
        s.kill_grace = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        assert!(matches!(raw_config().plan(s), Err(PlanError::InvalidArgument(_))));
        assert!(matches!(raw_config().plan(start("", &["ls", "a\0b"])), Err(PlanError::InvalidArgument(_))));
    }

    #[test]
    fn config_file_round_trip_and_validation() {
        let c = Config::parse(
            r#"
            workers = 3
            default_kill_grace = "500ms"
            [[job]]
            name = "convert"
            command = ["convert", "-"]
            allowed_env = ["QUALITY"]
            max_timeout = "1m"
            "#,
        )
        .expect("valid");
        assert_eq!(c.worker_count(), 3);
        assert_eq!(c.default_kill_grace, Duration::from_millis(500));
        assert_eq!(c.jobs[0].max_timeout, Some(Duration::from_secs(60)));
        assert!(Config::parse("[[job]]\nname='a'\ncommand=[]").is_err());
        assert!(Config::parse("[[job]]\nname='a'\ncommand=['x']\n[[job]]\nname='a'\ncommand=['y']").is_err());
        assert!(Config::parse("bogus = 1").is_err());
        let both = "[[job]]\nname='a'\ncommand=['x']\nfiles=true\ncwd='/srv'";
        assert!(matches!(Config::parse(both), Err(ConfigError::Invalid(m)) if m.contains("files")));
        assert!(Config::parse("default_kill_grace = 'soon'").is_err());
    }
}
