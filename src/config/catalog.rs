//! The job catalog: what a client may run by name, and the demo catalog a server without a config file
//! offers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Config;
use super::limits::Limits;
use crate::pb;

/// One job of the catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogJob {
    /// The name clients use in `StartJob.job`.
    pub name: String,
    /// Shown by `ListJobs`.
    #[serde(default)]
    pub description: String,
    /// The argv; `command[0]` is looked up in the job's `PATH` unless it contains a `/`.
    pub command: Vec<String>,
    /// Whether `StartJob.args` may append arguments.
    #[serde(default)]
    pub accepts_args: bool,
    /// Fixed environment entries, on top of the base environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment keys a request may set.
    #[serde(default)]
    pub allowed_env: Vec<String>,
    /// Longest the job may run; also its timeout when the request names none.
    #[serde(default, deserialize_with = "super::units::optional_duration")]
    pub max_timeout: Option<Duration>,
    /// Limits for this job, over the server-wide defaults.
    #[serde(default)]
    pub limits: Limits,
    /// Working directory; without it each run gets a fresh private directory, removed afterwards.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Run as this user (name or uid); the server must run as root.
    #[serde(default)]
    pub user: Option<String>,
    /// Run with this group (name or gid) [default: the user's primary group].
    #[serde(default)]
    pub group: Option<String>,
    /// Whether a request may send input files and ask for output files (`StartJob.inputs`, `outputs`). Not
    /// with a fixed `cwd` (files go to the job's private directory).
    #[serde(default)]
    pub files: bool,
    /// Capabilities the job keeps in its bounding set (`CAP_NET_BIND_SERVICE`, ...): all others are dropped. They
    /// take effect for a job that runs as root (`user = "root"`, or without dynamic users).
    #[serde(default)]
    pub keep_capabilities: Vec<String>,
    /// Whether a request may run this job under a terminal (`StartJob.terminal`).
    #[serde(default = "yes")]
    pub terminal: bool,
    /// How this job is isolated, over the server-wide `[isolation]` table.
    #[serde(default)]
    pub isolation: super::isolation::JobIsolation,
    /// `(uid, gid)` resolved from `user`/`group` by [`Config::prepare`].
    #[serde(skip)]
    pub ids: Option<(u32, u32)>,
}

fn yes() -> bool {
    true
}

/// The demo catalog's interactive job: it prompts only on a terminal and reads the password with echo off
/// (turned off before the prompt is shown, as `getpass` does, so nothing typed after it can be echoed).
const PROMPT_SCRIPT: &str = r#"if [ ! -t 0 ]; then echo "prompt: needs a terminal (StartJob.terminal, forkpool run -t)" >&2; exit 2; fi
printf 'Name: '; read -r name
stty -echo; printf 'Password: '; read -r password; stty echo; echo
echo "Hello, $name. Your password has ${#password} characters."
"#;

/// The demo catalog used when no config file is given: harmless jobs to try the service with.
pub(super) fn builtin_catalog() -> Vec<CatalogJob> {
    let job = |name: &str, description: &str, command: &str, accepts_args, max_secs| CatalogJob {
        name: name.into(),
        description: description.into(),
        command: vec![command.into()],
        accepts_args,
        env: BTreeMap::new(),
        allowed_env: Vec::new(),
        max_timeout: Some(Duration::from_secs(max_secs)),
        limits: Limits::default(),
        cwd: None,
        user: None,
        group: None,
        files: false,
        keep_capabilities: Vec::new(),
        terminal: true,
        isolation: Default::default(),
        ids: None,
    };
    let mut prompt =
        job("prompt", "Asks for a name and a password; needs a terminal (`forkpool run -t`).", "sh", false, 600);
    prompt.command.extend(["-c".into(), PROMPT_SCRIPT.into()]);
    let mut sort =
        job("sort", "Sorts the lines of input file `input.txt` into output file `sorted.txt`.", "sort", false, 600);
    sort.command.extend(["-o".into(), "sorted.txt".into(), "--".into(), "input.txt".into()]);
    sort.files = true;
    vec![
        job("echo", "Prints its arguments.", "echo", true, 10),
        job("sleep", "Sleeps for the given number of seconds.", "sleep", true, 3600),
        job("cat", "Copies stdin to stdout.", "cat", false, 3600),
        prompt,
        sort,
    ]
}

impl Config {
    /// The catalog as `ListJobs` shows it.
    pub fn job_infos(&self) -> Vec<pb::JobInfo> {
        self.jobs
            .iter()
            .map(|j| pb::JobInfo {
                name: j.name.clone(),
                description: j.description.clone(),
                command: j.command.clone(),
                accepts_args: j.accepts_args,
                max_timeout: j.max_timeout.and_then(|d| prost_types::Duration::try_from(d).ok()),
                accepts_files: j.files,
                terminal_allowed: j.terminal && self.max_terminals > 0,
            })
            .collect()
    }
}
