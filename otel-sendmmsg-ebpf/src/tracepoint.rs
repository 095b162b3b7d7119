//! The tracepoint family: stable ABI, works wherever the tracepoints exist (syscall tracepoints
//! everywhere; `sock:sock_send_length` since about 6.3). Field offsets come from each event's
//! `/sys/kernel/tracing/events/<group>/<name>/format`; they are part of the tracepoint ABI.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext, EbpfContext};

use crate::{
    pairing::{self, CallArgs},
    socket::MessageSocket,
};

/// The field of type `T` at `offset` in the event's record, loaded straight from the context
/// the program gets: the verifier lets a tracepoint program read its record directly (aligned,
/// within the record), where aya's `read_at` calls `bpf_probe_read_kernel` for each field, on
/// every call and every message (the message program: 306 ns a run with it, 200 without, in
/// the benchmark, together with the one-read msgvec of `msgname`).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: offsets from the event's format file (see above), each aligned to its type.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

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
    // The kernel takes the low 32 bits of each slot as the C argument type.
    pairing::on_entry(CallArgs {
        sockfd: field::<u64>(&ctx, ENTER_FD) as i32,
        msgvec: field(&ctx, ENTER_MMSG),
        vlen: field::<u64>(&ctx, ENTER_VLEN) as u32,
        flags: field::<u64>(&ctx, ENTER_FLAGS) as u32,
    });
    0
}

/// `sock:sock_send_length`, fired by `sock_sendmsg_nosec` once per message on every send path:
/// `TP_PROTO(struct sock *sk, int ret, int flags)`.
#[tracepoint]
pub fn sendmmsg_message(ctx: TracePointContext) -> u32 {
    pairing::on_message(
        field(&ctx, SEND_LENGTH_SK),
        MessageSocket::Sock,
        i64::from(field::<i32>(&ctx, SEND_LENGTH_RET)),
    );
    0
}

/// `syscalls:sys_exit_sendmmsg`: `long ret`.
#[tracepoint]
pub fn sendmmsg_exit(ctx: TracePointContext) -> u32 {
    pairing::on_exit(field(&ctx, EXIT_RET));
    0
}
