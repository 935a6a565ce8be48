//! The jobs' seccomp filter: a deny list of system calls no job needs, which fail with EPERM (a clear error
//! where a program checks it, and no job is killed by a call it merely probes). Built once, in classic BPF.
//!
//! Denied: loading kernel code (`init_module`, `finit_module`, `delete_module`, `kexec_load`,
//! `kexec_file_load`), `reboot`, swap, setting the clock, kernel keyrings (`keyctl`, `add_key`,
//! `request_key`), `bpf`, `perf_event_open`, `userfaultfd`, files by handle (`open_by_handle_at`,
//! `name_to_handle_at`), `acct`, `quotactl`, `syslog`, mounting (`mount`, `umount2`, `pivot_root` and the new
//! mount API), namespace changes (`unshare`, `setns`, `clone` with a `CLONE_NEW*` flag; `clone3`, whose flags a
//! filter cannot see, gets ENOSYS and the C library falls back to `clone`), `ioperm`/`iopl`; and every system
//! call of another ABI (i386 through `int 0x80`, x32), which would get around a list of numbers.

use std::sync::OnceLock;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
/// `offsetof(struct seccomp_data, nr)` and `arch`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// `offsetof(struct seccomp_data, args[0])`, its low 32 bits on these little-endian machines.
const ARG0: u32 = 16;
/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`.
const CLONE_NEW_FLAGS: u32 = 0x7e02_0000;

#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xc000_00b7;
/// x32 system calls are x86_64's numbers with this bit.
#[cfg(target_arch = "x86_64")]
const X32_BIT: u32 = 0x4000_0000;

/// The denied system calls.
fn denied() -> Vec<libc::c_long> {
    let mut calls = vec![
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([libc::SYS_ioperm, libc::SYS_iopl]);
    calls
}

/// The filter program, built once. `None` where forkpool has no filter for the architecture.
pub(crate) fn filter() -> Option<&'static libc::sock_fprog> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        /// The instructions and the program pointing at them, both 'static.
        struct Program(libc::sock_fprog);
        // SAFETY: the program only points at a leaked, never-written Vec: sharing it between threads is sound.
        unsafe impl Send for Program {}
        // SAFETY: as above.
        unsafe impl Sync for Program {}
        static PROGRAM: OnceLock<Program> = OnceLock::new();
        let program = PROGRAM.get_or_init(|| {
            let code: &'static [libc::sock_filter] = Vec::leak(instructions());
            Program(libc::sock_fprog { len: code.len() as u16, filter: code.as_ptr().cast_mut() })
        });
        Some(&program.0)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    None
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn instructions() -> Vec<libc::sock_filter> {
    let op = |code, jt: usize, jf: usize, k| libc::sock_filter { code, jt: jt as u8, jf: jf as u8, k };
    let deny = RET_ERRNO | libc::EPERM as u32;
    let calls = denied();
    let x32 = usize::from(cfg!(target_arch = "x86_64"));
    // Where each part starts; a jump's offset is `target - (index + 1)`.
    let clone3 = 4 + x32;
    let clone = clone3 + 2;
    let flags = clone + 2;
    let first_call = flags + 1;
    let allow = first_call + calls.len();
    let deny_at = allow + 1;
    let to = |from: usize, target: usize| target - from - 1;
    let mut code =
        vec![op(LD_W_ABS, 0, 0, ARCH), op(JEQ_K, 1, 0, NATIVE_ARCH), op(RET_K, 0, 0, deny), op(LD_W_ABS, 0, 0, NR)];
    #[cfg(target_arch = "x86_64")]
    code.push(op(JGE_K, to(4, deny_at), 0, X32_BIT));
    // clone3 passes its flags in memory, out of a filter's reach: ENOSYS, and the C library falls back to
    // clone, whose flags are checked.
    code.push(op(JEQ_K, 0, 1, libc::SYS_clone3 as u32));
    code.push(op(RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32));
    // clone with any CLONE_NEW* flag: a new namespace, as unshare would make.
    code.push(op(JEQ_K, 0, to(clone, first_call), libc::SYS_clone as u32));
    code.push(op(LD_W_ABS, 0, 0, ARG0));
    code.push(op(JSET_K, to(flags, deny_at), to(flags, allow), CLONE_NEW_FLAGS));
    for (n, call) in calls.into_iter().enumerate() {
        code.push(op(JEQ_K, to(first_call + n, deny_at), 0, call as u32));
    }
    code.push(op(RET_K, 0, 0, RET_ALLOW));
    code.push(op(RET_K, 0, 0, deny));
    code
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn every_jump_lands_inside_and_every_denied_call_on_the_deny() {
        let code = super::instructions();
        let deny = code.len() - 1;
        assert_eq!(code[deny].k, super::RET_ERRNO | libc::EPERM as u32);
        assert_eq!(code[deny - 1].k, super::RET_ALLOW);
        for (i, op) in code.iter().enumerate() {
            if op.code == super::JEQ_K || op.code == super::JGE_K || op.code == super::JSET_K {
                assert!(i + 1 + usize::from(op.jt) <= deny && i + 1 + usize::from(op.jf) <= deny, "instruction {i}");
            }
        }
        // Each denied call's check jumps to the deny.
        let calls = super::denied();
        let checks: Vec<(usize, &libc::sock_filter)> = code
            .iter()
            .enumerate()
            .filter(|(_, op)| op.code == super::JEQ_K && calls.contains(&(op.k as libc::c_long)))
            .collect();
        assert_eq!(checks.len(), calls.len());
        for (i, op) in checks {
            assert_eq!(i + 1 + usize::from(op.jt), deny, "instruction {i}");
        }
        // clone with a namespace flag is denied, without one allowed.
        let jset = code.iter().position(|op| op.code == super::JSET_K).expect("jset");
        assert_eq!(jset + 1 + usize::from(code[jset].jt), deny);
        assert_eq!(jset + 1 + usize::from(code[jset].jf), deny - 1);
    }
}
