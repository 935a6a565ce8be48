//! The child side of a spawn: everything that runs between `clone` and `exec`, and `clone3` itself.
//!
//! Every function here runs in a `CLONE_VM | CLONE_VFORK` child that shares the server's memory while the
//! spawner thread is suspended: async-signal-safe calls only, no allocation, no lock, no panic path.

use std::ffi::c_char;
use std::os::fd::RawFd;

use nix::errno::Errno;

/// Everything the child needs, as raw pointers into memory the spawner thread keeps alive (and does not
/// touch) until the child has exec'd or exited.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct ChildPlan {
    pub(super) program: *const c_char,
    pub(super) argv: *const *const c_char,
    pub(super) envp: *const *const c_char,
    pub(super) cwd: *const c_char,
    pub(super) cgroup_procs: *const *const c_char,
    pub(super) cgroup_count: usize,
    /// Index of the first procs file the child must write (1 when `clone3` already placed it in the v2
    /// cgroup, which is the first).
    pub(super) cgroup_first: usize,
    pub(super) rlimits: *const (libc::c_int, u64),
    pub(super) rlimit_count: usize,
    pub(super) ids: Option<(u32, u32)>,
    /// Empty the capability bounding set, but for `keep_caps` (bit N = capability N), up to `cap_last`.
    pub(super) drop_capabilities: bool,
    pub(super) keep_caps: u64,
    pub(super) cap_last: libc::c_int,
    pub(super) stdio: [RawFd; 3],
    /// A terminal job's pty slave, made the controlling terminal of the worker's new session; -1 otherwise.
    pub(super) ctty: RawFd,
    pub(super) report: RawFd,
    pub(super) server_pid: libc::pid_t,
    /// The server's end of the guardian's socket, or -1: the worker announces its session on it before exec
    /// if `announce` (fallback mode), then closes it at once.
    pub(super) guardian: RawFd,
    pub(super) announce: bool,
    /// The server's fd limit, read before the clone: the slow fd-closing fallback closes up to it (the job's
    /// own, lower limit may already be in force then).
    pub(super) fd_limit: libc::c_int,
    /// Namespace flags (`CLONE_NEWIPC`, `CLONE_NEWUTS`, `CLONE_NEWPID`, ...) the child is created with.
    pub(super) namespaces: libc::c_int,
    /// Files to write first thing in a new user namespace (`setgroups`, `uid_map`, `gid_map`).
    pub(super) user_maps: *const FileWrite,
    pub(super) user_map_count: usize,
    /// The mount namespace's set-up, in order.
    pub(super) fs_ops: *const FsOp,
    pub(super) fs_op_count: usize,
    /// Bring the new network namespace's loopback interface up.
    pub(super) loopback: bool,
    /// A network namespace to join (an fd) instead of a new one, or -1.
    pub(super) join_net: RawFd,
    /// The seccomp filter to install last, or null.
    pub(super) seccomp: *const libc::sock_fprog,
    /// With a pid namespace: forkpool's executable (an fd), exec'd as the namespace's init instead of the
    /// program, which the init then starts; -1 otherwise.
    pub(super) init_exe: RawFd,
    /// The init's report pipe (the job's status and the orphans it reaped), handed over as fd 3.
    pub(super) init_report: RawFd,
    /// The signal the child sends its parent when it exits: SIGCHLD for a worker; 0 for a probe, which
    /// makes it a "clone" child that the reaper's waits do not see.
    pub(super) exit_signal: libc::c_int,
    /// A probe of the set-up: exit 0 where the exec would be.
    pub(super) probe: bool,
    /// A warm sandbox: no privilege drop here (its init does that when it gets its job).
    pub(super) warm: bool,
    /// A warm sandbox's end of the request socket, handed to its init as fd 5; -1 otherwise.
    pub(super) warm_request: RawFd,
    /// A warm sandbox: the directory of job directories, opened before the mounts cover it and handed to its
    /// init as fd 6 (jobs' directories are bound in from there, from the init's own mount namespace); null
    /// otherwise.
    pub(super) warm_root: *const c_char,
}

/// One file write of the set-up: `len` bytes at `data` to the file `path`.
#[derive(Clone, Copy)]
pub(super) struct FileWrite {
    pub(super) path: *const c_char,
    pub(super) data: *const u8,
    pub(super) len: usize,
}

/// One step of a mount namespace's set-up.
#[derive(Clone, Copy)]
pub(super) enum FsOp {
    /// `mount(source, target, fstype, flags, data)`; null pointers where the call takes none.
    Mount {
        source: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: libc::c_ulong,
        data: *const c_char,
    },
    /// `mkdir(path, 0755)`; an existing directory is fine.
    Mkdir(*const c_char),
    /// `chdir(path)`.
    Chdir(*const c_char),
    /// `mount_setattr(path, AT_RECURSIVE, {set, clr})`: read-only on, or off.
    SetAttr { path: *const c_char, set: u64, clr: u64 },
}

use super::init::warm::{CapData, CapHeader, drop_bounding_set};
pub(super) use super::init::{
    EXEC_STEP, FORK_STEP, INIT_REPORT_FD, INIT_SPAWN_REPORT_FD, WARM_REQUEST_FD, WARM_ROOT_FD,
};

/// The setup steps in the child, in order; a failure reports its index.
pub(super) const STEPS: [&str; 18] = [
    "setsid",
    "set the controlling terminal",
    "set the parent-death signal",
    "check the parent",
    "map the user namespace",
    "join the job's cgroup",
    "set resource limits",
    "change to the working directory",
    "set up the mount namespace",
    "enter the network namespace (bring up its loopback)",
    "restrict privileges",
    "switch user",
    "set up stdio",
    "close fds",
    "install the seccomp filter",
    "exec",
    "exec forkpool's init",
    "fork the program in the init",
];

/// The kernel's `struct clone_args` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Creates the child: `clone3(CLONE_VM | CLONE_VFORK | CLONE_PARENT_SETTID | CLONE_INTO_CGROUP)` where the
/// kernel has it (born inside its cgroup, so no migration, which waits for an RCU grace period, about 1 ms,
/// is needed), else `clone` with the same flags, the child then writing itself into its cgroup. Either way
/// the kernel stores the child's pid at `parent_tid` before the child runs, so the reaper can tell an
/// instant exit from an orphan while this thread is still suspended. Returns when the child has exec'd or
/// exited.
pub(super) fn clone_child(
    plan: &mut ChildPlan,
    stack: &mut [u8],
    cgroup_fd: Option<RawFd>,
    parent_tid: *mut libc::c_int,
) -> Result<i32, Errno> {
    if let Some(fd) = cgroup_fd {
        plan.cgroup_first = 1;
        match clone3(plan, stack, fd, parent_tid) {
            Err(Errno::ENOSYS | Errno::EINVAL | Errno::E2BIG | Errno::EOPNOTSUPP) => plan.cgroup_first = 0,
            other => return other,
        }
    }
    /// Runs on the child's own stack; never returns.
    extern "C" fn entry(plan: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `plan` points into the suspended parent's frame (CLONE_VFORK); see `child_main`.
        unsafe { child_main(*plan.cast::<ChildPlan>()) }
    }
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID | plan.exit_signal | plan.namespaces;
    // SAFETY: the child runs `entry` on its own stack (`top`, 16-byte aligned, inside `stack`) while this
    // thread is suspended (CLONE_VFORK) until it execs or exits, so `plan`, everything it points to, the stack
    // and `parent_tid` stay valid and untouched for the child's whole life before exec. All signals are
    // blocked in this thread, so the child starts with every signal blocked and no inherited handler can
    // run. `child_main` only makes async-signal-safe calls, allocates nothing and never returns.
    let pid =
        unsafe { libc::clone(entry, top as *mut libc::c_void, flags, (plan as *mut ChildPlan).cast(), parent_tid) };
    if pid < 0 { Err(Errno::last()) } else { Ok(pid) }
}

/// `clone3` into the cgroup directory `cgroup_fd`, or the error where the kernel lacks it (`ENOSYS` etc.).
#[cfg(target_arch = "x86_64")]
fn clone3(plan: &ChildPlan, stack: &mut [u8], cgroup_fd: RawFd, parent_tid: *mut libc::c_int) -> Result<i32, Errno> {
    /// Runs on the child's own stack; never returns.
    extern "C" fn entry(plan: *const ChildPlan) -> ! {
        // SAFETY: `plan` points into the suspended parent's frame (CLONE_VFORK); see `child_main`.
        unsafe { child_main(*plan) }
    }
    // The kernel starts the child with its stack pointer at stack + stack_size: keep that 16-byte aligned.
    let base = stack.as_mut_ptr() as usize;
    let aligned = (base + 15) & !15;
    let size = (stack.len() - (aligned - base)) & !15;
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID | plan.namespaces) as u64
            | CLONE_INTO_CGROUP,
        parent_tid: parent_tid as u64,
        exit_signal: plan.exit_signal as u64,
        stack: aligned as u64,
        stack_size: size as u64,
        cgroup: cgroup_fd as u64,
        ..CloneArgs::default()
    };
    let ret: i64;
    // SAFETY: the raw clone3 syscall. In the parent it returns the pid (or -errno) like any syscall; the
    // child starts at the next instruction with rax = 0 on the new stack and, sharing our registers, finds
    // `plan` in r12 and `entry` in r13, clears the frame pointer and calls `entry`, which never returns.
    // The parent is suspended until the child execs or exits (CLONE_VFORK), so `plan`, `args`, `parent_tid`
    // and the stack stay valid and untouched for the child's whole life before exec. rcx and r11 are
    // clobbered by `syscall`.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &mut args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") plan as *const ChildPlan,
            in("r13") entry as extern "C" fn(*const ChildPlan) -> !,
            out("rcx") _,
            out("r11") _,
        );
    }
    if ret < 0 { Err(Errno::from_raw(-ret as i32)) } else { Ok(ret as i32) }
}

/// Elsewhere, `clone3` is not used: the child writes itself into its cgroup.
#[cfg(not(target_arch = "x86_64"))]
fn clone3(_: &ChildPlan, _: &mut [u8], _: RawFd, _: *mut libc::c_int) -> Result<i32, Errno> {
    Err(Errno::ENOSYS)
}

/// The child, between clone and exec.
///
/// # Safety
/// Only to be run as the entry of a `CLONE_VM | CLONE_VFORK` child whose `plan` pointers are valid. Every
/// call below is async-signal-safe (rt_sigaction, setsid, ioctl, getpid, send, prctl, capget, capset, getppid,
/// poll, open, write, close, setrlimit, chdir, mount, mkdir, mount_setattr, socket, setgroups/setresgid/setresuid
/// as raw syscalls, dup2, fcntl, close_range, sigprocmask, execve, execveat, _exit) and no memory is allocated or shared state written, except `errno`,
/// which lives in the suspended parent thread's TLS and is not read by it before it is set again.
unsafe fn child_main(plan: ChildPlan) -> ! {
    // SAFETY (whole body): see the function's contract.
    unsafe {
        // 1. Default dispositions for every signal: handlers belong to the server, and SIG_IGN (Rust ignores
        //    SIGPIPE; a supervisor may ignore others) would be inherited across exec. All signals are still
        //    blocked.
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                reset_signal(sig);
            }
        }
        // 2. Own session and process group: nothing the job does to its group can reach the server.
        if libc::setsid() < 0 {
            fail(plan.report, 0);
        }
        //    A terminal job: its pty becomes the session's controlling terminal (and the session's group its
        //    foreground group), so `/dev/tty`, Ctrl-C and SIGWINCH all reach the job, never the server.
        if plan.ctty >= 0 && libc::ioctl(plan.ctty, libc::TIOCSCTTY, 0) < 0 {
            fail(plan.report, 1);
        }
        //    Announce the session to the guardian before anything of the job can run, so that a crash of the
        //    server from now on cannot leave the job's processes behind (fallback mode; best effort: the
        //    guardian logs what it could not track, and a full socket must not stop the job).
        if plan.guardian >= 0 {
            // (A pid namespace's init needs none: the namespace dies with it, and it with the server.)
            if plan.announce && plan.namespaces & libc::CLONE_NEWPID == 0 {
                announce_session(plan.guardian);
            }
            // The guardian learns of the server's death when every copy of this end is closed.
            libc::close(plan.guardian);
        }
        // 3. Die when the server (the spawner thread) dies; if it already has, we were reparented: exit.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
            fail(plan.report, 2);
        }
        if !server_alive(&plan) {
            *libc::__errno_location() = libc::ESRCH;
            fail(plan.report, 3);
        }
        //    A new user namespace (a server that is not root): map the job's uid and gid to the server's own.
        for i in 0..plan.user_map_count {
            let write = *plan.user_maps.add(i);
            let fd = libc::open(write.path, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, write.data.cast(), write.len) != write.len as isize {
                fail(plan.report, 4);
            }
            libc::close(fd);
        }
        // 4. Join the job's cgroup(s) before anything else can be started, so nothing escapes them.
        for i in plan.cgroup_first..plan.cgroup_count {
            let fd = libc::open(*plan.cgroup_procs.add(i), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(plan.report, 5);
            }
            libc::close(fd);
        }
        // 5. Resource limits, soft = hard, so the job cannot raise them; but for RLIMIT_NOFILE, whose hard limit
        //    is only raised here (while the child may), and which is set last: a low one would refuse the fds
        //    the set-up still makes (the fd shuffle below, a socket).
        for i in 0..plan.rlimit_count {
            let (resource, value) = *plan.rlimits.add(i);
            if resource == libc::RLIMIT_NOFILE as libc::c_int {
                // Raised now if the job's is higher (the set-up gets the room too); lowered at the end.
                let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) == 0 && (value > now.rlim_cur || value > now.rlim_max)
                {
                    now.rlim_cur = now.rlim_cur.max(value);
                    now.rlim_max = now.rlim_max.max(value);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &now) < 0 {
                        fail(plan.report, 6);
                    }
                }
                continue;
            }
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            if libc::setrlimit(resource as libc::__rlimit_resource_t, &limit) < 0 {
                fail(plan.report, 6);
            }
        }
        // 6. Working directory (before the mounts: a private /tmp may cover it, and it is bound back from here).
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) < 0 {
            fail(plan.report, 7);
        }
        //    A warm sandbox's init reaches its jobs' directories through the work root, opened before a private
        //    /tmp covers it.
        let mut warm_root = -1;
        if !plan.warm_root.is_null() {
            warm_root = libc::open(plan.warm_root, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            if warm_root < 0 {
                fail(plan.report, 8);
            }
        }
        //    The mount namespace: private propagation, private /tmp and /dev/shm, the working directory bound
        //    back, /proc of the job's own pid namespace, a read-only system.
        for i in 0..plan.fs_op_count {
            if !fs_op(*plan.fs_ops.add(i)) {
                fail(plan.report, 8);
            }
        }
        //    A new network namespace has a loopback interface, down. A reused one (joined while the child
        //    still has every capability) has it up already.
        if plan.join_net >= 0 && libc::setns(plan.join_net, libc::CLONE_NEWNET) < 0 {
            fail(plan.report, 9);
        }
        if plan.loopback && !loopback_up() {
            fail(plan.report, 9);
        }
        // 7. No privilege can be gained from here on (setuid binaries, file capabilities), and, from a root
        //    server, none kept but what the job's config names: the bounding set limits what even a root job
        //    gets at exec. Needs CAP_SETPCAP, so before the user switch.
        if plan.drop_capabilities && drop_bounding_set(plan.keep_caps, plan.cap_last).is_err() {
            fail(plan.report, 10);
        }
        //    The inheritable and ambient sets need no privilege to shrink, and could hand capabilities to a root
        //    job at exec whatever the bounding set says (kernels before 4.3 have no ambient set: EINVAL). (A
        //    warm sandbox's init does all of this itself when it gets its job.)
        let mut header = CapHeader { version: 0x2008_0522, pid: 0 };
        let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        if !plan.warm {
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
        }
        if !plan.warm && libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) == 0 {
            data[0].inheritable &= plan.keep_caps as u32;
            data[1].inheritable &= (plan.keep_caps >> 32) as u32;
            if libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) < 0 {
                fail(plan.report, 10);
            }
        }
        if !plan.warm && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) < 0 {
            fail(plan.report, 10);
        }
        // 8. Drop privileges with raw syscalls: the C library's set*id wrappers would try to signal every
        //    thread of the (shared-memory) parent.
        if let Some((uid, gid)) = plan.ids {
            let groups = [gid];
            if libc::syscall(libc::SYS_setgroups, 1usize, groups.as_ptr()) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
            {
                fail(plan.report, 11);
            }
            //    A change of the effective uid or gid clears the parent-death signal (prctl(2)): set it again,
            //    and look again whether the server is still there.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                fail(plan.report, 11);
            }
            if !server_alive(&plan) {
                *libc::__errno_location() = libc::ESRCH;
                fail(plan.report, 11);
            }
        }
        // 9. stdin/stdout/stderr from the pipes (or all three the pty slave). dup2 clears close-on-exec on the
        //    copy.
        for (target, fd) in (0..).zip(plan.stdio) {
            let ok = if fd == target { libc::fcntl(fd, libc::F_SETFD, 0) >= 0 } else { libc::dup2(fd, target) >= 0 };
            if !ok {
                fail(plan.report, 12);
            }
        }
        // 10. No other fd survives exec. Marking them close-on-exec (rather than closing) keeps the report
        //    pipe usable until the exec itself closes it.
        let marked =
            libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC);
        if marked < 0
            && !close_fds_slowly(
                [plan.report, plan.init_report, plan.init_exe, plan.warm_request, warm_root],
                plan.fd_limit,
            )
        {
            fail(plan.report, 13);
        }
        //    The init keeps two of them: its report pipe as fd 3, the spawn's as fd 4 (moved out of the way
        //    first, as either may sit at 3 or 4 now).
        let mut report = plan.report;
        let mut init_exe = plan.init_exe;
        if plan.init_exe >= 0 {
            let init_report = libc::fcntl(plan.init_report, libc::F_DUPFD_CLOEXEC, 10);
            let spawn_report = libc::fcntl(plan.report, libc::F_DUPFD_CLOEXEC, 10);
            // Each moved out of the way first, as any may sit at 3 to 6 now (the init's executable too).
            init_exe = libc::fcntl(plan.init_exe, libc::F_DUPFD_CLOEXEC, 10);
            let root = warm_root;
            let warm_root = if root >= 0 { libc::fcntl(root, libc::F_DUPFD_CLOEXEC, 10) } else { -1 };
            let request =
                if plan.warm_request >= 0 { libc::fcntl(plan.warm_request, libc::F_DUPFD_CLOEXEC, 10) } else { -1 };
            if init_report < 0
                || spawn_report < 0
                || init_exe < 0
                || (root >= 0 && warm_root < 0)
                || libc::dup2(init_report, INIT_REPORT_FD) < 0
                || libc::dup2(spawn_report, INIT_SPAWN_REPORT_FD) < 0
                || (plan.warm_request >= 0 && (request < 0 || libc::dup2(request, WARM_REQUEST_FD) < 0))
                || (warm_root >= 0 && libc::dup2(warm_root, WARM_ROOT_FD) < 0)
            {
                fail(plan.report, 13);
            }
            report = INIT_SPAWN_REPORT_FD;
        }
        //    The job's RLIMIT_NOFILE, now that no fd is made any more.
        for i in 0..plan.rlimit_count {
            let (resource, value) = *plan.rlimits.add(i);
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            if resource == libc::RLIMIT_NOFILE as libc::c_int && libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
                fail(report, 6);
            }
        }
        // 11. The seccomp filter, last: it may deny calls the set-up needs.
        if !plan.seccomp.is_null()
            && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER as libc::c_ulong, plan.seccomp, 0, 0) < 0
        {
            fail(report, 14);
        }
        // 12. Unblock everything (dispositions are all default now) and exec; the init unblocks after its own
        //     set-up, and its program before exec.
        if plan.probe {
            libc::_exit(0);
        }
        if plan.init_exe >= 0 {
            libc::syscall(libc::SYS_execveat, init_exe, c"".as_ptr(), plan.argv, plan.envp, libc::AT_EMPTY_PATH);
            fail(report, 16)
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(report, EXEC_STEP)
    }
}

/// Whether the server (the spawner thread that created the child) still exists. In the server's pid
/// namespace: the parent is still the server. In a new one, where `getppid` is 0 whoever the parent is: the
/// server's end of the report pipe is still open.
///
/// # Safety
/// Same contract as [`child_main`].
unsafe fn server_alive(plan: &ChildPlan) -> bool {
    // SAFETY: getppid and poll are async-signal-safe; `fd` is a local.
    unsafe {
        if plan.namespaces & libc::CLONE_NEWPID == 0 {
            return libc::getppid() == plan.server_pid;
        }
        let mut fd = libc::pollfd { fd: plan.report, events: 0, revents: 0 };
        libc::poll(&mut fd, 1, 0) >= 0 && fd.revents & libc::POLLERR == 0
    }
}

/// Runs one step of the mount namespace's set-up.
///
/// # Safety
/// Same contract as [`child_main`]; the op's pointers are valid C strings or null.
unsafe fn fs_op(op: FsOp) -> bool {
    // SAFETY: mount, mkdir, chdir and mount_setattr are plain system calls; `attr` is a local.
    unsafe {
        match op {
            FsOp::Mount { source, target, fstype, flags, data } => {
                libc::mount(source, target, fstype, flags, data.cast()) == 0
            }
            FsOp::Mkdir(path) => libc::mkdir(path, 0o755) == 0 || *libc::__errno_location() == libc::EEXIST,
            FsOp::Chdir(path) => libc::chdir(path) == 0,
            FsOp::SetAttr { path, set, clr } => {
                let attr = MountAttr { set, clr, propagation: 0, userns_fd: 0 };
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    path,
                    libc::AT_RECURSIVE as libc::c_uint,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ) == 0
            }
        }
    }
}

/// The kernel's `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    set: u64,
    clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The kernel's `struct ifreq`, as `SIOCGIFFLAGS`/`SIOCSIFFLAGS` use it (40 bytes).
#[repr(C)]
struct InterfaceFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Sets the loopback interface of the (new) network namespace up.
///
/// # Safety
/// Same contract as [`child_main`].
unsafe fn loopback_up() -> bool {
    // SAFETY: socket, ioctl and close are async-signal-safe; `request` is a local of the kernel's layout.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return false;
        }
        let mut request = InterfaceFlags { name: [0; 16], flags: 0, _pad: [0; 22] };
        request.name[..2].copy_from_slice(b"lo");
        let ok = libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request as *mut InterfaceFlags) == 0 && {
            request.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(socket, libc::SIOCSIFFLAGS, &request as *const InterfaceFlags) == 0
        };
        libc::close(socket);
        ok
    }
}

/// Sets `sig` to its default disposition with the raw syscall: the C library's `sigaction` refuses the
/// signals it reserves (32 and 33 in glibc), yet an ignored one would still be inherited across exec.
///
/// # Safety
/// Same contract as [`child_main`].
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn reset_signal(sig: libc::c_int) {
    /// The kernel's `struct sigaction` on these architectures (not the C library's).
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    // SAFETY: rt_sigaction is async-signal-safe; `default` is a local of the kernel's layout and the size
    // argument is the kernel's sigset size (8 bytes).
    unsafe {
        libc::syscall(libc::SYS_rt_sigaction, sig, &default as *const KernelSigaction, std::ptr::null::<u8>(), 8usize);
    }
}

/// See the other `reset_signal`; elsewhere the C library's `sigaction` is used.
///
/// # Safety
/// Same contract as [`child_main`].
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn reset_signal(sig: libc::c_int) {
    // SAFETY: sigaction is async-signal-safe; `default` is a local.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &default, std::ptr::null_mut());
    }
}

/// Fallback where `close_range` is missing (kernels before 5.11) or refused (seccomp filters of older
/// container runtimes): closes every fd from 3 up to the server's fd limit (`limit`, read before the job's own
/// limit was set) except `keep` (the report pipes and the init's executable), which are close-on-exec already.
///
/// # Safety
/// Same contract as [`child_main`].
unsafe fn close_fds_slowly(keep: [RawFd; 5], limit: libc::c_int) -> bool {
    // SAFETY: close is async-signal-safe.
    unsafe {
        for fd in 3..limit {
            if !keep.contains(&fd) {
                libc::close(fd);
            }
        }
        true
    }
}

/// Sends `+<own pid>` (the worker's session, after `setsid`) on the guardian's socket, without blocking and
/// without SIGPIPE.
///
/// # Safety
/// Same contract as [`child_main`].
unsafe fn announce_session(socket: RawFd) {
    // SAFETY: getpid as a raw syscall (the C library may cache the parent's pid) and send are
    // async-signal-safe; `message` is a local.
    unsafe {
        let mut pid = libc::syscall(libc::SYS_getpid) as u32;
        // `+` and ten digits, zero-padded: constant indices, so no bounds check can fail.
        let mut message = [b'+'; 11];
        for i in (1..11).rev() {
            message[i] = b'0' + (pid % 10) as u8;
            pid /= 10;
        }
        let length = message.len();
        libc::send(socket, message.as_ptr().cast(), length, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
    }
}

/// Reports `(step, errno)` on the report pipe and exits. No allocation, no panic path.
///
/// # Safety
/// Same contract as [`child_main`].
unsafe fn fail(report: RawFd, step: u32) -> ! {
    // SAFETY: reading errno, write and _exit are async-signal-safe; `buf` is a local.
    unsafe {
        let errno = *libc::__errno_location();
        let s = step.to_ne_bytes();
        let e = errno.to_ne_bytes();
        let buf = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
        libc::write(report, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_init_reports_the_steps_it_means() {
        assert_eq!(super::STEPS[super::EXEC_STEP as usize], "exec");
        assert_eq!(super::STEPS[super::FORK_STEP as usize], "fork the program in the init");
    }
}
