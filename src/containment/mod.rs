//! A job's containment, from before its worker exists until nothing of it is left.
//!
//! [`Containment::prepare`] makes the job's cgroup (cgroup mode) and private working directory, and
//! [`Containment::command`] turns the plan into a [`Command`] that joins the cgroup, sets the rlimits the
//! cgroup does not enforce, changes directory and user. When the worker has exited, [`Containment::end`]
//! kills whatever is left — the whole cgroup, or (fallback mode) the escapers found by
//! [`crate::process::kill::sweep_escapers`] — and waits until it is all reaped, so the job's `exited` lists every orphan.
//! [`Containment::release`] removes the cgroup and the directory ([`Containment::release_after`] may keep them
//! for later jobs instead, see [`cgroup`], [`netns`] and [`workdir`]).
//!
//! Guarantees: in cgroup mode every process the job ever started dies with it, whatever it did (`setsid`,
//! double fork, stopping itself). In fallback mode the same holds for processes in the job's session or
//! group, or holding its pipes or terminal; a process that left the session *and* closed them survives.
//! Should the server die, the [`crate::containment::guardian`] kills the same sets (and the next start cleans up again).

pub(crate) mod cgroup;
pub mod guardian;
pub(crate) mod jobdir;
mod leftovers;
pub(crate) mod netns;
pub(crate) mod users;
pub(crate) mod workdir;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep};
use tracing::{info, warn};

use cgroup::{CgroupTree, JobCgroup};
use guardian::Guardian;
use users::{DynamicUser, DynamicUsers};
use workdir::WorkRoot;

use crate::config::{CgroupMode, Config, JobPlan};
use crate::pb;
use crate::process::registry::{JobReaps, Registry, SessionWatch};
use crate::process::spawn::{Command, Namespaces, SpawnError, TerminalSpec};

/// How long to wait for a job's leftovers to die and be reaped.
const LEFTOVERS_WAIT: Duration = Duration::from_secs(5);

/// The server's containment mode and places.
#[derive(Debug)]
pub(crate) struct Containment {
    cgroups: Option<CgroupTree>,
    work_root: WorkRoot,
    registry: Arc<Registry>,
    populated_after_end: prometheus_client::metrics::counter::Counter,
    guarded: bool,
    /// Dynamic users for jobs that name none (a root server with `isolation.dynamic_users`).
    users: Option<Arc<DynamicUsers>>,
    /// The server can empty its jobs' capability bounding sets (it has CAP_SETPCAP).
    drops_capabilities: bool,
    /// The namespaces (and filter) this server can give its jobs, each probed at start.
    available: Namespaces,
    /// What is off, and why, for `GetStatus`.
    unavailable: Vec<String>,
    /// What a job asks for when neither it nor its catalog entry says otherwise: the shape of warm
    /// sandboxes.
    default_shape: (crate::config::isolation::IsolationPlan, crate::config::limits::Limits),
    /// Network namespaces that finished jobs left as they were made, for the next ones.
    nets: netns::NetPool,
}

/// The namespaces and cgroup limits of a warm sandbox, which only a job of the same shape may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WarmShape {
    namespaces: Namespaces,
    limits: crate::config::limits::Limits,
}

/// One job's cgroup and working directory.
#[derive(Debug)]
pub(crate) struct JobContainer {
    cgroup: Option<JobCgroup>,
    private_dir: Option<PathBuf>,
    cwd: PathBuf,
    /// The job's network namespace, while it may go back to the pool afterwards (see [`netns`]).
    net: Option<netns::Netns>,
    /// What the job could do cannot outlive it in its network namespace or its directory: they may be reused
    /// once it is gone (see [`Containment::reusable`]).
    reusable: bool,
    /// The job could not write its cgroup's files (not root, no capability, not in a user namespace of its
    /// own, whose owner owns the server's cgroups): emptied, its cgroup is as it was made, and may be reused.
    cgroup_reusable: bool,
}

impl JobContainer {
    /// Takes a warm sandbox's cgroup and network namespace as the job's.
    pub(crate) fn adopt_sandbox(&mut self, cgroup: Option<JobCgroup>, net: Option<netns::Netns>) {
        self.cgroup = cgroup;
        self.net = net;
    }

    /// The cgroup name, for the reaper's attribution.
    pub(crate) fn cgroup_name(&self) -> Option<String> {
        self.cgroup.as_ref().map(|c| c.name().to_string())
    }

    /// The job's private directory, for its input and output files; new files belong to `owner`. A job with a
    /// fixed `cwd` has none (the config refuses files for such a job).
    pub(crate) fn files_dir(&self, owner: Option<(u32, u32)>) -> io::Result<jobdir::JobDir> {
        let dir = self.private_dir.as_ref().ok_or_else(|| io::Error::other("the job has no private directory"))?;
        jobdir::JobDir::open(dir, owner)
    }
}

/// What is known of a job once everything of it is dead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobEnd {
    /// The OOM killer killed something in the job.
    pub(crate) oom_killed: bool,
    /// The job cgroup's peak memory, when there is one.
    pub(crate) memory_peak: Option<u64>,
}

/// A name for this server process's instance (cgroup, working directories): unique even between servers
/// with the same pid (PID 1 of two containers sharing a volume).
fn instance_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("instance-{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

impl Containment {
    /// Chooses the mode (logging it), cleans what a crashed server left, prepares the work root and tells the
    /// guardian (if any) what to kill should the server die. `populated_after_end` counts job cgroups that
    /// could not be emptied.
    pub(crate) async fn start(
        config: &Config,
        registry: Arc<Registry>,
        populated_after_end: prometheus_client::metrics::counter::Counter,
        guardian: Option<Arc<Guardian>>,
    ) -> io::Result<Containment> {
        let instance = instance_name();
        let companions: Vec<i32> = guardian.iter().map(|g| g.pid()).collect();
        let cgroups = match config.cgroups {
            CgroupMode::Off => {
                info!("containment: process groups (cgroups turned off by configuration)");
                None
            }
            CgroupMode::Auto => match CgroupTree::discover(config.cgroup_root.as_deref(), &companions, &instance).await
            {
                Ok(tree) => {
                    info!(detail = %tree.describe(), "containment: per-job cgroups");
                    Some(tree)
                }
                Err(reason) => {
                    warn!(%reason, "containment: process groups only (no writable cgroup v2); a job that leaves \
                        its session and closes its pipes can outlive it");
                    None
                }
            },
        };
        match (&guardian, &cgroups) {
            (Some(guardian), Some(tree)) => {
                guardian.watch_cgroup(tree.instance());
                for dir in tree.v1_instances() {
                    guardian.watch_v1_dir(&dir);
                }
            }
            (Some(guardian), None) => registry.guard_sessions(Arc::clone(guardian) as Arc<dyn SessionWatch>),
            (None, _) => warn!("no guardian: if the server crashes, processes of its jobs can outlive it"),
        }
        let work_root = WorkRoot::prepare(&config.work_root, &instance)?;
        let root = nix::unistd::geteuid().is_root();
        let (first, last) = config.isolation.dynamic_user_range;
        let mapped = users::range_is_mapped(first, last);
        let users = (root && config.isolation.dynamic_users && mapped).then(|| DynamicUsers::new(first, last));
        match &users {
            Some(users) => info!(range = %users.describe(), "jobs that name no user run as dynamic users"),
            None if root && config.isolation.dynamic_users => warn!(
                first,
                last,
                "dynamic users are off: the range is not mapped in this user namespace (/proc/self/uid_map); jobs \
                 that name no user run as root (without capabilities)"
            ),
            None if root => warn!("dynamic users are off: jobs that name no user run as root (without capabilities)"),
            None => info!("the server is not root: jobs run as its user"),
        }
        if users.is_some()
            && let Some(closed) = users::closed_ancestor(&config.work_root)
        {
            warn!(
                work_root = %config.work_root.display(), closed = %closed.display(),
                "other users cannot pass this directory: jobs running as dynamic users cannot enter their working \
                 directories (give it o+x, or move work_root)"
            );
        }
        let (available, unavailable) = probe_isolation(config, root, work_root.path());
        // Emptying a job's bounding set needs CAP_SETPCAP (a root server in a container may lack it).
        let can_drop = users::has_effective_capability(8);
        if root && !can_drop {
            warn!("the server lacks CAP_SETPCAP: jobs keep the server's capability bounding set");
        }
        Ok(Containment {
            cgroups,
            work_root,
            registry,
            populated_after_end,
            guarded: guardian.is_some(),
            users,
            drops_capabilities: can_drop,
            available,
            unavailable,
            default_shape: (config.isolation.plan(&Default::default()), config.limits),
            nets: netns::NetPool::default(),
        })
    }

    /// Whether workers must announce their sessions to the guardian (fallback mode with a guardian).
    pub(crate) fn sessions_guarded(&self) -> bool {
        self.guarded && self.cgroups.is_none()
    }

    /// The mode for `GetStatus`.
    pub(crate) fn mode(&self) -> (pb::ContainmentMode, String) {
        let guardian = match (self.guarded, self.registry.guardian_died()) {
            (false, _) => "no guardian: a crash of the server leaves jobs' processes until the next start",
            (true, true) => "the guardian DIED: a crash of the server leaves jobs' processes until the next start",
            (true, false) => "a guardian kills them if the server dies",
        };
        let who = match (&self.users, nix::unistd::geteuid().is_root()) {
            (Some(users), _) => format!("jobs run as dynamic users {} (or their catalog user)", users.describe()),
            (None, true) => "jobs run as root (dynamic users off) or their catalog user".to_string(),
            (None, false) => "jobs run as the server's user".to_string(),
        };
        let capabilities =
            if self.drops_capabilities { "no capabilities" } else { "the server's capability bounding set" };
        let namespaces = describe_isolation(self.available, &self.unavailable);
        let privileges = format!("{who}, with no_new_privs and {capabilities}; {namespaces}");
        match &self.cgroups {
            Some(tree) => (pb::ContainmentMode::Cgroup, format!("{}; {guardian}; {privileges}", tree.describe())),
            None => (
                pb::ContainmentMode::ProcessGroup,
                format!("process groups and subreaper sweeps; {guardian} (their sessions and groups); {privileges}"),
            ),
        }
    }

    /// A dynamic user for a job that names none (`None` when it names one, or dynamic users are off). Every uid
    /// of the range in use is `QuotaExceeded` (`RESOURCE_EXHAUSTED`).
    pub(crate) fn dynamic_user(&self, plan: &JobPlan) -> io::Result<Option<DynamicUser>> {
        match (&self.users, plan.ids) {
            (Some(users), None) => users.allocate().map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::QuotaExceeded,
                    format!("every dynamic user of the range {} is in use", users.describe()),
                )
            }),
            _ => Ok(None),
        }
    }

    /// Removes this server's instance directories, once every job is over (a clean exit).
    pub(crate) fn close(&self) {
        if let Some(tree) = &self.cgroups {
            tree.remove_instance();
        }
        self.work_root.remove();
    }

    /// Makes the job's working directory (its cgroup comes with its slot: [`Containment::add_cgroup`], or a
    /// warm sandbox's).
    pub(crate) fn prepare(&self, job_id: &str, plan: &JobPlan) -> io::Result<JobContainer> {
        let (cwd, private_dir) = match &plan.cwd {
            Some(cwd) => (cwd.clone(), None),
            None => {
                let dir = self.work_root.create(job_id, plan.ids)?;
                (dir.clone(), Some(dir))
            }
        };
        let ns = self.namespaces_for(plan);
        let unprivileged = plan.keep_capabilities == 0 && plan.ids.is_some_and(|(uid, _)| uid != 0);
        let reusable = plan.cwd.is_none() && unprivileged && self.reusable(ns);
        let cgroup_reusable = unprivileged && !ns.user;
        Ok(JobContainer { cgroup: None, private_dir, cwd, net: None, reusable, cgroup_reusable })
    }

    /// Whether a job in namespaces `ns` (with a private directory, not root, no capability kept) leaves nothing
    /// behind in its network namespace or its directory once it is gone, so that they may be reused (see
    /// [`netns`], [`workdir`]): a pid namespace (its end is the end of every process of the job); a network
    /// namespace of its own (no abstract unix socket shared with another job); and nowhere writable but its
    /// own directory, `/tmp` and `/dev/shm` (`read_only_root`), so no place where it could hand another job a
    /// socket or an open file of its namespace or directory, which would keep a view into the next job's use of
    /// them. Other jobs' directories must be out of sight too (the work root under the private `/tmp` or
    /// `/dev/shm`, as by default): else a job could open its own to others and listen there.
    fn reusable(&self, ns: Namespaces) -> bool {
        let hidden = ["/tmp", "/dev/shm"].iter().any(|dir| self.work_root.path().starts_with(dir));
        ns.no_network && ns.pid && ns.private_tmp && ns.read_only_root && !ns.user && self.drops_capabilities && hidden
    }

    /// Makes the job's cgroup (cgroup mode), with its limits, and takes a reusable network namespace for it
    /// if one is ready (a cold start: a warm sandbox comes with both).
    pub(crate) fn add_cgroup(&self, container: &mut JobContainer, job_id: &str, plan: &JobPlan) -> io::Result<()> {
        let limits = self.limits_for(plan);
        container.cgroup = self.cgroups.as_ref().map(|tree| tree.create(job_id, &limits)).transpose()?;
        if container.reusable && container.net.is_none() {
            container.net = self.nets.take();
        }
        Ok(())
    }

    /// A reusable network namespace for a warm sandbox of `shape`, if one is ready.
    pub(crate) fn spare_network(&self, shape: &WarmShape) -> Option<netns::Netns> {
        self.reusable_shape(shape).then(|| self.nets.take()).flatten()
    }

    /// The network namespace of the waiting init `pid` of a new warm sandbox, opened while the registry holds it
    /// unreaped (so the number is its own).
    pub(crate) fn new_network_of(&self, pid: i32) -> Option<netns::Netns> {
        self.registry.with_live_worker(pid, |pid| netns::Netns::of_new(pid).ok()).flatten()
    }

    /// Whether the jobs of sandboxes of `shape` may leave their network namespaces for reuse.
    pub(crate) fn reusable_shape(&self, shape: &WarmShape) -> bool {
        self.reusable(shape.namespaces)
    }

    /// The shape of warm sandboxes: that of a job asking for nothing special. `None` where jobs get no pid
    /// namespace (a sandbox is a waiting init).
    pub(crate) fn warm_shape(&self) -> Option<WarmShape> {
        let (isolation, limits) = self.default_shape;
        let namespaces = self.namespaces_of(isolation);
        // Inside a user namespace (a server that is not root) the init would lose its capabilities at its own
        // exec, before it could set up a job: jobs there are spawned cold.
        (namespaces.pid && !namespaces.user)
            .then(|| WarmShape { namespaces, limits: self.limits_of(limits, namespaces) })
    }

    /// Whether `plan` runs in a sandbox of `shape`: same namespaces and limits, a private directory (which
    /// the sandbox's init reaches through the work root), and no capability kept where sandboxes empty their
    /// bounding sets ahead.
    pub(crate) fn fits(&self, plan: &JobPlan, shape: &WarmShape) -> bool {
        plan.cwd.is_none()
            && (plan.keep_capabilities == 0 || !self.drops_capabilities)
            && self.namespaces_for(plan) == shape.namespaces
            && self.limits_for(plan) == shape.limits
    }

    /// A warm sandbox's cgroup (`name`) and command, of `shape`.
    pub(crate) fn stage(&self, name: &str, shape: &WarmShape) -> io::Result<(Command, Option<JobCgroup>)> {
        let cgroup = self.cgroups.as_ref().map(|tree| tree.create(name, &shape.limits)).transpose()?;
        let v1_procs = cgroup.as_ref().map(JobCgroup::v1_procs_files).unwrap_or_default();
        let command = Command::new(&["/proc/self/exe".to_string()], &Default::default())
            .and_then(|c| c.cgroup(cgroup.as_ref().map(JobCgroup::dir)))
            .and_then(|c| c.join_cgroups(&v1_procs))
            .and_then(|c| c.namespaces(shape.namespaces))
            .and_then(|c| c.warm(self.work_root.path(), self.drops_capabilities))
            .map_err(|e| io::Error::other(e.to_string()));
        match command {
            Ok(command) => Ok((command, cgroup)),
            Err(e) => {
                if let Some(cgroup) = &cgroup {
                    let _ = cgroup.remove();
                }
                Err(e)
            }
        }
    }

    /// Removes the cgroup of a warm sandbox that was never used, once its init is gone.
    pub(crate) async fn discard(&self, cgroup: Option<JobCgroup>) {
        let container = JobContainer {
            cgroup,
            private_dir: None,
            cwd: PathBuf::from("/"),
            net: None,
            reusable: false,
            cgroup_reusable: false,
        };
        if let Some(cgroup) = &container.cgroup {
            let _ = cgroup.kill_and_wait(LEFTOVERS_WAIT).await;
        }
        self.release(container).await;
    }

    /// The command that runs `plan` inside `container`.
    pub(crate) fn command(&self, plan: &JobPlan, container: &JobContainer) -> Result<Command, SpawnError> {
        let mut env = plan.env.clone();
        if container.private_dir.is_some() {
            env.insert("HOME".into(), container.cwd.display().to_string());
        }
        let enforces = |limit| self.cgroups.as_ref().is_some_and(|tree| tree.enforces(limit));
        let ns = self.namespaces_for(plan);
        let command = Command::new(&plan.argv, &env)?
            .cwd(&container.cwd)?
            .rlimits(self.limits_for(plan).rlimits(enforces("memory"), enforces("pids")))
            .user(plan.ids)
            .privileges(self.drops_capabilities || ns.user, plan.keep_capabilities)
            .namespaces(ns)?
            .terminal(plan.terminal.map(|t| TerminalSpec { rows: t.rows, cols: t.cols, echo: t.echo }));
        self.place(command, container)
    }

    /// Puts `command` (from [`Containment::command`], not placed yet) into `container`'s cgroups and its reused
    /// network namespace, where it has them: for a cold start, whose cgroup is made after the command.
    pub(crate) fn place(&self, command: Command, container: &JobContainer) -> Result<Command, SpawnError> {
        let v1_procs = container.cgroup.as_ref().map(JobCgroup::v1_procs_files).unwrap_or_default();
        let command = command.cgroup(container.cgroup.as_ref().map(JobCgroup::dir))?.join_cgroups(&v1_procs)?;
        // (Without a spare fd, a new namespace.)
        Ok(match container.net.as_ref().and_then(|net| net.fd().ok()) {
            Some(net) => command.join_network(net),
            None => command,
        })
    }

    /// The job's limits, its process limit counting forkpool's init besides the job's own processes.
    fn limits_for(&self, plan: &JobPlan) -> crate::config::limits::Limits {
        self.limits_of(plan.limits, self.namespaces_for(plan))
    }

    fn limits_of(&self, mut limits: crate::config::limits::Limits, ns: Namespaces) -> crate::config::limits::Limits {
        if ns.pid {
            limits.processes = limits.processes.map(|n| n.saturating_add(1));
        }
        limits
    }

    /// The namespaces a job gets: what it asks for, of what this server can give.
    fn namespaces_for(&self, plan: &JobPlan) -> Namespaces {
        self.namespaces_of(plan.isolation)
    }

    fn namespaces_of(&self, want: crate::config::isolation::IsolationPlan) -> Namespaces {
        let can = self.available;
        let mut ns = Namespaces {
            user: false,
            pid: want.pid_namespace && can.pid,
            private_tmp: want.private_tmp && can.private_tmp,
            read_only_root: want.read_only_root && can.read_only_root,
            no_network: want.no_network && can.no_network,
            ipc_and_hostname: want.private_ipc_and_hostname && can.ipc_and_hostname,
            seccomp: want.seccomp && can.seccomp,
        };
        // A server that is not root gets the others through a user namespace of the job's own.
        ns.user = can.user && (ns.pid || ns.private_tmp || ns.no_network || ns.ipc_and_hostname);
        ns
    }

    /// Kills everything left of the job once its worker is gone and waits (bounded) until it is reaped.
    /// `stdio_links` are the job's stdio as `/proc/PID/fd` shows them (how processes that left its group are
    /// recognised without cgroups).
    pub(crate) async fn end(
        &self,
        worker: i32,
        container: &JobContainer,
        reaps: &JobReaps,
        stdio_links: &[String],
        in_pid_namespace: bool,
    ) -> JobEnd {
        // A pid namespace's init killed and reaped everything of the job before it reported (nothing of a job
        // can leave its namespace): the init's own exit is awaited by `release_after`.
        if in_pid_namespace {
            return JobEnd {
                oom_killed: container.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0),
                memory_peak: container.cgroup.as_ref().and_then(JobCgroup::memory_peak),
            };
        }
        let give_up = Instant::now() + LEFTOVERS_WAIT;
        match &container.cgroup {
            Some(cgroup) => {
                let members = cgroup.pids();
                if !cgroup.kill_and_wait(LEFTOVERS_WAIT).await {
                    self.populated_after_end.inc();
                    warn!(cgroup = cgroup.name(), "the job's cgroup is still populated after SIGKILL");
                }
                // Dead now; wait until each is reaped (and so recorded) too.
                while members.iter().any(|pid| cgroup.holds(*pid)) && Instant::now() < give_up {
                    wait_for_reaps(reaps).await;
                }
            }
            None => loop {
                let pending = crate::process::kill::sweep_escapers(&self.registry, worker, stdio_links);
                if pending == 0 && !crate::process::signal::group_exists(worker) {
                    break;
                }
                if Instant::now() >= give_up {
                    warn!(pending, "processes of the job are still present {LEFTOVERS_WAIT:?} after its worker exited");
                    break;
                }
                wait_for_reaps(reaps).await;
            },
        }
        while crate::process::signal::group_exists(worker) && Instant::now() < give_up {
            wait_for_reaps(reaps).await;
        }
        JobEnd {
            oom_killed: container.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0),
            memory_peak: container.cgroup.as_ref().and_then(JobCgroup::memory_peak),
        }
    }

    /// Kills a job's cgroup before its worker is known (a spawn the call gave up on).
    pub(crate) fn kill_early(&self, container: &JobContainer) {
        if let Some(cgroup) = &container.cgroup {
            let _ = cgroup.kill();
        }
    }

    /// Removes the job's cgroup and private directory once its pid namespace's init (if any) is gone: `init_gone`
    /// fires when the reaper has it (bounded: the cgroup is then killed).
    /// A network namespace the job left as it was made goes back to the pool then.
    pub(crate) async fn release_after(
        &self,
        mut container: JobContainer,
        init_gone: Option<tokio::sync::oneshot::Receiver<()>>,
    ) {
        let net = container.net.take();
        let mut reuse = false;
        let mut emptied = false;
        if let Some(gone) = init_gone {
            let reaped = matches!(tokio::time::timeout(LEFTOVERS_WAIT, gone).await, Ok(Ok(())));
            if !reaped {
                warn!("a job's init is still there {LEFTOVERS_WAIT:?} after its report");
            }
            // (Killed if the init is still there.)
            let empty = match &container.cgroup {
                Some(cgroup) => cgroup.kill_and_wait(LEFTOVERS_WAIT).await,
                None => true,
            };
            emptied = reaped && empty;
            reuse = emptied && container.reusable;
            if let Some(net) = net.filter(|_| reuse) {
                let kept = self.nets.give_back(net);
                tracing::debug!(kept, "network namespace after the job");
            }
        }
        // The cgroup: once its init is reaped and it is empty, nothing of the job is left to attribute to it.
        // It is kept after the directory is gone (whose files' page cache it was charged).
        let cgroup = if emptied && container.cgroup_reusable { container.cgroup.take() } else { None };
        self.remove(container, reuse).await;
        if let Some(cgroup) = cgroup {
            let not_kept = self.cgroups.as_ref().and_then(|tree| tree.keep(cgroup));
            if let Some(cgroup) = not_kept {
                remove_cgroup(cgroup).await;
            }
        }
    }

    /// Removes the job's cgroup and private directory.
    pub(crate) async fn release(&self, container: JobContainer) {
        self.remove(container, false).await;
    }

    /// Removes the job's cgroup (if not kept) and private directory, or keeps the directory for another job if
    /// `reuse` (see [`workdir`]: every process of the job is gone, and it could not have handed the directory
    /// on).
    async fn remove(&self, container: JobContainer, reuse: bool) {
        if let Some(cgroup) = container.cgroup {
            remove_cgroup(cgroup).await;
        }
        if let Some(dir) = container.private_dir
            && !(reuse && self.work_root.recycle(&dir))
            && let Err(e) = remove_tree(dir.clone()).await
        {
            warn!(path = %dir.display(), error = %e, "cannot remove the job's working directory");
        }
    }
}

/// Finds out which namespaces and filters jobs can get here, each tried for real in a child that sets it up
/// and exits: a root server with CAP_SYS_ADMIN makes them itself; another gets them inside a user namespace,
/// if `isolation.user_namespace` and the kernel allow. Logs what is off and why.
fn probe_isolation(config: &Config, root: bool, cwd: &std::path::Path) -> (Namespaces, Vec<String>) {
    let mut unavailable = Vec::new();
    let direct = root && users::has_effective_capability(21);
    let mut base = Namespaces::default();
    if !direct {
        let why = if root { "the server lacks CAP_SYS_ADMIN" } else { "the server is not root" };
        if !config.isolation.user_namespace {
            let reason = format!("no namespaces: {why}, and isolation.user_namespace is off");
            warn!("isolation: {reason}");
            unavailable.push(reason);
            let seccomp = crate::process::spawn::probe(Namespaces { seccomp: true, ..base }, cwd).is_ok();
            return (Namespaces { seccomp, ..base }, unavailable);
        }
        match crate::process::spawn::probe(Namespaces { user: true, ..base }, cwd) {
            Ok(()) => base.user = true,
            Err(e) => {
                let reason = format!("no namespaces: {why}, and a user namespace cannot be made ({e})");
                warn!("isolation: {reason}");
                unavailable.push(reason);
                let seccomp = crate::process::spawn::probe(Namespaces { seccomp: true, ..base }, cwd).is_ok();
                return (Namespaces { seccomp, ..base }, unavailable);
            }
        }
    }
    let mut available = base;
    let features = [
        ("pid namespace", Namespaces { pid: true, ..base }),
        ("private /tmp", Namespaces { private_tmp: true, ..base }),
        ("read-only root", Namespaces { private_tmp: true, read_only_root: true, ..base }),
        ("network namespace", Namespaces { no_network: true, ..base }),
        ("IPC and UTS namespaces", Namespaces { ipc_and_hostname: true, ..base }),
        ("seccomp filter", Namespaces { seccomp: true, ..base }),
    ];
    for (name, trial) in features {
        match crate::process::spawn::probe(trial, cwd) {
            // (The read-only root's trial includes the private /tmp it needs, which has its own.)
            Ok(()) => {
                available = available.with(if trial.read_only_root {
                    Namespaces { read_only_root: true, ..base }
                } else {
                    trial
                })
            }
            Err(e) => {
                let reason = format!("{name} off: {e}");
                warn!("isolation: {reason}");
                unavailable.push(reason);
            }
        }
    }
    info!(detail = %describe_isolation(available, &unavailable), "isolation");
    (available, unavailable)
}

/// What the isolation is, for `GetStatus` and the log.
fn describe_isolation(ns: Namespaces, unavailable: &[String]) -> String {
    let mut parts = Vec::new();
    if ns.pid {
        parts.push("a pid namespace under forkpool's init");
    }
    if ns.private_tmp {
        parts.push("private /tmp and /dev/shm");
    }
    if ns.read_only_root {
        parts.push("a read-only root where configured");
    }
    if ns.no_network {
        parts.push("no network (where configured: network = \"none\")");
    }
    if ns.ipc_and_hostname {
        parts.push("IPC and UTS namespaces");
    }
    if ns.seccomp {
        parts.push("a seccomp deny list");
    }
    let via = if ns.user { " (inside a user namespace: the server is not root)" } else { "" };
    let mut text =
        if parts.is_empty() { "no namespaces".to_string() } else { format!("each job in {}{via}", parts.join(", ")) };
    for reason in unavailable {
        text.push_str("; ");
        text.push_str(reason);
    }
    text
}

/// Removes a job's directory. An empty one (the common case) is a single rmdir; a tree is removed on a
/// thread of its own, or here if no thread can be had: never through tokio's blocking pool, which panics when
/// the OS refuses a thread (as it does at a process limit), and that would lose the call's exit status.
async fn remove_tree(dir: PathBuf) -> io::Result<()> {
    match std::fs::remove_dir(&dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let (done, removed) = tokio::sync::oneshot::channel();
    let target = dir.clone();
    let spawned = std::thread::Builder::new().name("forkpool-rmtree".into()).spawn(move || {
        let _ = done.send(std::fs::remove_dir_all(&target));
    });
    match spawned {
        Ok(_) => removed.await.unwrap_or(Ok(())),
        Err(_) => std::fs::remove_dir_all(&dir),
    }
}

/// Removes a job's cgroup (emptied), retrying a while.
async fn remove_cgroup(cgroup: JobCgroup) {
    let mut attempts = 0;
    while let Err(e) = cgroup.remove() {
        attempts += 1;
        if attempts == 20 {
            warn!(cgroup = cgroup.name(), error = %e, "cannot remove the job's cgroup");
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the reaper to record an orphan, or 5 ms.
async fn wait_for_reaps(reaps: &JobReaps) {
    tokio::select! {
        () = reaps.notify.notified() => {}
        () = sleep(Duration::from_millis(5)) => {}
    }
}
