//! The fentry family, for kernels with BTF and BPF trampolines: the cheapest hooks. Each program
//! is bound to its target function when user space loads it, so a function needs a program of
//! its own.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::{
    pairing::{self, CallArgs},
    socket::MessageSocket,
};

/// `int __sys_sendmmsg(int fd, struct mmsghdr __user *mmsg, unsigned int vlen,
/// unsigned int flags, bool forbid_cmsg_compat)`: the syscall's body on every architecture.
#[fentry(function = "__sys_sendmmsg")]
pub fn sendmmsg_fentry_enter(ctx: FEntryContext) -> u32 {
    pairing::on_entry(CallArgs {
        sockfd: ctx.arg::<i32>(0),
        msgvec: ctx.arg::<u64>(1),
        vlen: ctx.arg::<u32>(2),
        flags: ctx.arg::<u32>(3),
    });
    0
}

/// The same function's return: fexit sees the arguments, then the return value after them.
#[fexit(function = "__sys_sendmmsg")]
pub fn sendmmsg_fexit_exit(ctx: FExitContext) -> u32 {
    pairing::on_exit(ctx.arg::<i32>(5) as i64);
    0
}

/// Per message, on a protocol's `int X_sendmsg(struct socket *sock, struct msghdr *msg,
/// size_t len)`: the socket identifies the call's messages, the return value (after the three
/// arguments) is bytes sent or a negative errno. These are reached for every message, unlike
/// `sock_sendmsg` (skipped for repeated destinations before 6.6, never called since).
macro_rules! fexit_protocol_sendmsg {
    ($program:ident, $function:literal) => {
        #[fexit(function = $function)]
        pub fn $program(ctx: FExitContext) -> u32 {
            pairing::on_message(ctx.arg::<u64>(0), MessageSocket::Socket, ctx.arg::<i32>(3) as i64);
            0
        }
    };
}

fexit_protocol_sendmsg!(sendmmsg_fexit_inet_sendmsg, "inet_sendmsg");
fexit_protocol_sendmsg!(sendmmsg_fexit_inet6_sendmsg, "inet6_sendmsg");
fexit_protocol_sendmsg!(sendmmsg_fexit_unix_dgram_sendmsg, "unix_dgram_sendmsg");
