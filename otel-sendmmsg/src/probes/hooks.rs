//! The catalogue of hooks: which BPF program goes where, for each attach family. Cheapest first,
//! after the kernel's own trigger benchmark: fentry/fexit ~3-10 ns a hit, tracepoints ~10 ns,
//! kprobes ~15 ns and kretprobes ~40 ns.

use std::fmt;

pub use crate::config::Family;

/// The protocol send functions every message passes through, whatever its destination.
pub const PROTOCOL_SENDMSG: &[&str] = &["inet_sendmsg", "inet6_sendmsg", "unix_dgram_sendmsg"];

/// Where each message's result can be seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageHook {
    /// fexit on the protocol send functions: result and socket.
    FexitProtocol,
    /// `sock:sock_send_length`, fired in `sock_sendmsg_nosec` for every message (Linux >= 6.3).
    Tracepoint,
    /// The design's original hook: `sock_sendmsg`'s return. Skipped for repeated destinations
    /// before 6.6 and never called by `sendmmsg` since, so the self-test usually rejects it.
    KretprobeSockSendmsg,
    /// kretprobe on the protocol send functions: result only, matched to the call by count.
    KretprobeProtocol,
}

impl MessageHook {
    pub const BY_COST: [MessageHook; 4] = [
        MessageHook::FexitProtocol,
        MessageHook::Tracepoint,
        MessageHook::KretprobeSockSendmsg,
        MessageHook::KretprobeProtocol,
    ];

    pub fn family(self) -> Family {
        match self {
            MessageHook::FexitProtocol => Family::Fentry,
            MessageHook::Tracepoint => Family::Tracepoint,
            MessageHook::KretprobeSockSendmsg | MessageHook::KretprobeProtocol => Family::Kprobe,
        }
    }

    /// The candidates to try when entry and exit use `family`: its own first (cheapest first),
    /// then the others, since a per-message hook of another family mixes fine.
    pub fn candidates(family: Family) -> Vec<MessageHook> {
        let (own, others): (Vec<_>, Vec<_>) = Self::BY_COST.iter().partition(|h| h.family() == family);
        own.into_iter().chain(others).collect()
    }
}

impl fmt::Display for MessageHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageHook::FexitProtocol => write!(f, "fexit {}", PROTOCOL_SENDMSG.join("/")),
            MessageHook::Tracepoint => write!(f, "tracepoint sock:sock_send_length"),
            MessageHook::KretprobeSockSendmsg => write!(f, "kretprobe sock_sendmsg"),
            MessageHook::KretprobeProtocol => write!(f, "kretprobe {}", PROTOCOL_SENDMSG.join("/")),
        }
    }
}

/// BPF program names, as in the BPF crate.
pub mod program {
    pub const TP_ENTER: &str = "sendmmsg_enter";
    pub const TP_EXIT: &str = "sendmmsg_exit";
    pub const TP_MESSAGE: &str = "sendmmsg_message";
    pub const KPROBE_ENTER: &str = "sendmmsg_kprobe_enter";
    pub const KRETPROBE_EXIT: &str = "sendmmsg_kretprobe_exit";
    pub const KRETPROBE_MESSAGE: &str = "sendmmsg_kretprobe_message";
    pub const FENTRY_ENTER: &str = "sendmmsg_fentry_enter";
    pub const FEXIT_EXIT: &str = "sendmmsg_fexit_exit";
    pub const CONTEXT_MARKER: &str = "sendmmsg_context_marker";
    /// `sched:sched_process_exit`: drops an exiting thread's published context.
    pub const CONTEXT_THREAD_EXIT: &str = "context_thread_exit";
    /// `sched:sched_process_exec`: drops the context of a thread that runs a new program.
    pub const CONTEXT_EXEC: &str = "context_exec";
    /// (program, target function), one program per function: fexit binds at load time.
    pub const FEXIT_PROTOCOL: [(&str, &str); 3] = [
        ("sendmmsg_fexit_inet_sendmsg", "inet_sendmsg"),
        ("sendmmsg_fexit_inet6_sendmsg", "inet6_sendmsg"),
        ("sendmmsg_fexit_unix_dgram_sendmsg", "unix_dgram_sendmsg"),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requested_family_goes_first_then_the_rest_by_cost() {
        use MessageHook::*;
        assert_eq!(
            MessageHook::candidates(Family::Kprobe),
            vec![KretprobeSockSendmsg, KretprobeProtocol, FexitProtocol, Tracepoint]
        );
        assert_eq!(
            MessageHook::candidates(Family::Tracepoint),
            vec![Tracepoint, FexitProtocol, KretprobeSockSendmsg, KretprobeProtocol]
        );
        assert_eq!(MessageHook::candidates(Family::Fentry), MessageHook::BY_COST.to_vec());
    }
}
