//! The kprobe family, for kernels with `CONFIG_KPROBES` (most distributions): entry and exit on
//! the architecture's syscall symbol, per-message results on a send function's return. User
//! space picks the symbols from `/proc/kallsyms`.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::bpf_probe_read_kernel,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    pairing::{self, CallArgs},
    socket::MessageSocket,
};

/// 1 when the entry symbol is an architecture wrapper (`__x64_sys_sendmmsg`,
/// `__arm64_sys_sendmmsg`, ...) taking the user's registers as `const struct pt_regs *`; 0 when
/// it takes the C arguments directly (`__se_sys_sendmmsg` on kernels without wrappers). Set by
/// user space at load time.
#[unsafe(no_mangle)]
static SYSCALL_WRAPPER: u32 = 1;

/// Entry: `long __x64_sys_sendmmsg(const struct pt_regs *regs)` (wrapper) or
/// `long __se_sys_sendmmsg(long fd, long mmsg, long vlen, long flags)`.
#[kprobe]
pub fn sendmmsg_kprobe_enter(ctx: ProbeContext) -> u32 {
    match try_enter(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

fn try_enter(ctx: &ProbeContext) -> Result<(), ()> {
    // SAFETY: a global the loader overwrites; volatile keeps the compiler from folding it.
    let args = if unsafe { core::ptr::read_volatile(&SYSCALL_WRAPPER) } != 0 {
        let regs: *const pt_regs = ctx.arg(0).ok_or(())?;
        syscall_args(regs)?
    } else {
        [ctx.arg(0).ok_or(())?, ctx.arg(1).ok_or(())?, ctx.arg(2).ok_or(())?, ctx.arg(3).ok_or(())?]
    };
    // The syscall takes the low 32 bits of each register for its int arguments.
    pairing::on_entry(CallArgs {
        sockfd: args[0] as i32,
        msgvec: args[1],
        vlen: args[2] as u32,
        flags: args[3] as u32,
    });
    Ok(())
}

/// The first four syscall arguments from the user registers the wrapper was given. The syscall
/// ABI, not the C one: on x86-64 the fourth argument is in r10, not rcx.
#[cfg(bpf_target_arch = "x86_64")]
fn syscall_args(regs: *const pt_regs) -> Result<[u64; 4], ()> {
    // SAFETY: kernel memory read through the helper, which fails cleanly on a bad address.
    let read = |field: *const u64| unsafe { bpf_probe_read_kernel(field) }.map_err(|_| ());
    // SAFETY: only computes field addresses; nothing is dereferenced here.
    unsafe {
        Ok([
            read(core::ptr::addr_of!((*regs).rdi))?,
            read(core::ptr::addr_of!((*regs).rsi))?,
            read(core::ptr::addr_of!((*regs).rdx))?,
            read(core::ptr::addr_of!((*regs).r10))?,
        ])
    }
}

#[cfg(bpf_target_arch = "aarch64")]
fn syscall_args(regs: *const pt_regs) -> Result<[u64; 4], ()> {
    // SAFETY: as above; x0-x3 still hold the arguments at the wrapper's entry.
    let read =
        |i: usize| unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*regs).regs[i])) }.map_err(|_| ());
    Ok([read(0)?, read(1)?, read(2)?, read(3)?])
}

/// Architectures whose `pt_regs` this code does not know yet: the wrapper cannot be read, so the
/// start-up self-test rejects this family there instead of it reporting wrong arguments.
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
fn syscall_args(_regs: *const pt_regs) -> Result<[u64; 4], ()> {
    Err(())
}

/// Exit: the syscall symbol's return, `long`.
#[kretprobe]
pub fn sendmmsg_kretprobe_exit(ctx: RetProbeContext) -> u32 {
    pairing::on_exit(ctx.ret::<i64>());
    0
}

/// Per message: the return of a send function (`int sock_sendmsg(...)`, or a protocol's
/// `int inet_sendmsg(...)` and the like): bytes sent or a negative errno. A return probe cannot
/// see the socket, so the message is matched to the call by count alone.
#[kretprobe]
pub fn sendmmsg_kretprobe_message(ctx: RetProbeContext) -> u32 {
    // An `int` in a 64-bit register: only the low half is defined.
    pairing::on_message(0, MessageSocket::Unseen, ctx.ret::<i64>() as i32 as i64);
    0
}
