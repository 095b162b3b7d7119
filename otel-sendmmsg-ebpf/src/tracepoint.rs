//! The tracepoint family: stable ABI, works wherever the tracepoints exist (syscall tracepoints
//! everywhere; `sock:sock_send_length` since about 6.3). Field offsets come from each event's
//! `/sys/kernel/tracing/events/<group>/<name>/format`; they are part of the tracepoint ABI.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::pairing::{self, CallArgs};

// syscalls/sys_enter_sendmmsg: every argument is widened to an 8-byte slot after the 8-byte
// common header and `__syscall_nr` (+ padding).
const ENTER_FD: usize = 16;
const ENTER_MMSG: usize = 24;
const ENTER_VLEN: usize = 32;
const ENTER_FLAGS: usize = 40;
// syscalls/sys_exit_sendmmsg: `long ret`.
const EXIT_RET: usize = 16;
// sock/sock_send_length: `void *sk` at 8, `int ret` at 20.
const SEND_LENGTH_SK: usize = 8;
const SEND_LENGTH_RET: usize = 20;

/// `syscalls:sys_enter_sendmmsg`:
/// `int sendmmsg(int fd, struct mmsghdr *mmsg, unsigned int vlen, unsigned int flags)`.
#[tracepoint]
pub fn sendmmsg_enter(ctx: TracePointContext) -> u32 {
    match try_enter(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

fn try_enter(ctx: &TracePointContext) -> Result<(), ()> {
    // SAFETY: offsets from the event's format file (see above).
    let read = |offset| unsafe { ctx.read_at::<u64>(offset) }.map_err(|_| ());
    // The kernel takes the low 32 bits of each slot as the C argument type.
    pairing::on_entry(CallArgs {
        sockfd: read(ENTER_FD)? as i32,
        msgvec: read(ENTER_MMSG)?,
        vlen: read(ENTER_VLEN)? as u32,
        flags: read(ENTER_FLAGS)? as u32,
    });
    Ok(())
}

/// `sock:sock_send_length`, fired by `sock_sendmsg_nosec` once per message on every send path:
/// `TP_PROTO(struct sock *sk, int ret, int flags)`.
#[tracepoint]
pub fn sendmmsg_message(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the event's format file (see above).
    let sk = unsafe { ctx.read_at::<u64>(SEND_LENGTH_SK) };
    let ret = unsafe { ctx.read_at::<i32>(SEND_LENGTH_RET) };
    if let (Ok(sk), Ok(ret)) = (sk, ret) {
        pairing::on_message(sk, ret as i64);
    }
    0
}

/// `syscalls:sys_exit_sendmmsg`: `long ret`.
#[tracepoint]
pub fn sendmmsg_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the event's format file (see above).
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(EXIT_RET) } {
        pairing::on_exit(ret);
    }
    0
}
