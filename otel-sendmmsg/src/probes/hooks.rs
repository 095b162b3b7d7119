//! The catalogue of hooks: which BPF program goes where, for each attach family, and what the
//! kernel must offer for it. Cheapest first, after the kernel's own trigger benchmark:
//! fentry/fexit ~3-10 ns a hit, tracepoints ~10 ns, kprobes ~15 ns and kretprobes ~40 ns.
//! [`super::attach`] turns an entry into a hook in the kernel; nothing here touches it.

use std::fmt;

use super::{attach::Point, kernel::Kernel, kretprobe_events::MAXACTIVE_MAX};
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

/// One hook: a program of the BPF object, where it goes, and what the kernel must offer first.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub program: &'static str,
    pub kind: Kind,
    pub needs: Needs,
}

/// Where a program goes.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Tracepoint {
        category: &'static str,
        event: &'static str,
    },
    Kprobe {
        function: Function,
    },
    Kretprobe {
        function: Function,
        maxactive: Maxactive,
    },
    /// Bound to the function's BTF type when loaded: one program per function.
    Fentry {
        function: &'static str,
    },
    Fexit {
        function: &'static str,
    },
}

/// A kernel function, or the one only the running kernel can name.
#[derive(Clone, Copy, Debug)]
pub enum Function {
    /// The architecture's `sendmmsg` syscall symbol ([`Kernel::syscall_symbol`]).
    Syscall,
    Named(&'static str),
}

/// How many calls of its function a kretprobe follows at once; the returns of any more are
/// missed ([`super::kretprobe_events`]).
#[derive(Clone, Copy, Debug)]
pub enum Maxactive {
    /// As many as the in-flight map holds: a missed return would be a call left in flight.
    InflightCalls,
    /// The kernel's limit: every send of the host's sockets passes there, not only sendmmsg's.
    KernelLimit,
}

/// What the kernel must offer before attaching is worth trying; checked first, so the reason a
/// hook is unusable names what is missing rather than how an attach failed.
#[derive(Clone, Copy, Debug)]
pub enum Needs {
    /// The tracepoint in tracefs; the text says which kernels lack it.
    Tracepoint(&'static str),
    /// kprobes (CONFIG_KPROBES), and the function in `/proc/kallsyms`.
    Kprobes,
    /// The kernel's BTF.
    Btf,
    /// Nothing to check: the attach itself says.
    Nothing,
}

/// An entry/exit pair. The exit is attached first, so no call is entered without its exit hook
/// in place, and detached last.
pub struct EntryExit {
    pub entry: Hook,
    pub exit: Hook,
}

const NO_SYSCALL_TRACEPOINTS: &str = "kernel without CONFIG_FTRACE_SYSCALLS?";

impl Family {
    pub fn entry_exit(self) -> EntryExit {
        match self {
            Family::Tracepoint => EntryExit {
                entry: Hook {
                    program: program::TP_ENTER,
                    kind: Kind::Tracepoint { category: "syscalls", event: "sys_enter_sendmmsg" },
                    needs: Needs::Tracepoint(NO_SYSCALL_TRACEPOINTS),
                },
                exit: Hook {
                    program: program::TP_EXIT,
                    kind: Kind::Tracepoint { category: "syscalls", event: "sys_exit_sendmmsg" },
                    needs: Needs::Tracepoint(NO_SYSCALL_TRACEPOINTS),
                },
            },
            Family::Kprobe => EntryExit {
                entry: Hook {
                    program: program::KPROBE_ENTER,
                    kind: Kind::Kprobe { function: Function::Syscall },
                    needs: Needs::Kprobes,
                },
                exit: Hook {
                    program: program::KRETPROBE_EXIT,
                    kind: Kind::Kretprobe {
                        function: Function::Syscall,
                        maxactive: Maxactive::InflightCalls,
                    },
                    needs: Needs::Kprobes,
                },
            },
            Family::Fentry => EntryExit {
                entry: Hook {
                    program: program::FENTRY_ENTER,
                    kind: Kind::Fentry { function: "__sys_sendmmsg" },
                    needs: Needs::Btf,
                },
                exit: Hook {
                    program: program::FEXIT_EXIT,
                    kind: Kind::Fexit { function: "__sys_sendmmsg" },
                    needs: Needs::Btf,
                },
            },
        }
    }
}

/// The programs of a per-message hook, attached in this order.
pub struct MessageHooks {
    pub hooks: &'static [Hook],
    /// Those whose function the kernel has are enough (at least one): a protocol the kernel
    /// was built without sends no message.
    pub those_present: bool,
}

impl MessageHooks {
    /// Where each program goes on this kernel, in attach order; Err says why the hook is
    /// unusable here.
    pub fn points<'k>(
        &self,
        kernel: &'k Kernel,
        inflight_maxactive: u32,
    ) -> Result<Vec<(&'static str, Point<'k>)>, String> {
        for hook in self.hooks {
            hook.check(kernel)?;
        }
        let hooks: Vec<&Hook> =
            self.hooks.iter().filter(|hook| !self.those_present || hook.present(kernel)).collect();
        if hooks.is_empty() {
            return Err("none of its functions is in /proc/kallsyms".into());
        }
        hooks.iter().map(|hook| Ok((hook.program, hook.point(kernel, inflight_maxactive)?))).collect()
    }
}

const fn kretprobe_message(function: &'static str) -> Hook {
    Hook {
        program: program::KRETPROBE_MESSAGE,
        kind: Kind::Kretprobe { function: Function::Named(function), maxactive: Maxactive::KernelLimit },
        needs: Needs::Kprobes,
    }
}

const fn fexit_message(program: &'static str, function: &'static str) -> Hook {
    Hook { program, kind: Kind::Fexit { function }, needs: Needs::Btf }
}

impl MessageHook {
    pub fn hooks(self) -> MessageHooks {
        const TRACEPOINT: &[Hook] = &[Hook {
            program: program::TP_MESSAGE,
            kind: Kind::Tracepoint { category: "sock", event: "sock_send_length" },
            needs: Needs::Tracepoint("added in Linux 6.3"),
        }];
        const KRETPROBE_SOCK_SENDMSG: &[Hook] = &[kretprobe_message("sock_sendmsg")];
        const KRETPROBE_PROTOCOL: &[Hook] = &[
            kretprobe_message(PROTOCOL_SENDMSG[0]),
            kretprobe_message(PROTOCOL_SENDMSG[1]),
            kretprobe_message(PROTOCOL_SENDMSG[2]),
        ];
        const FEXIT_PROTOCOL: &[Hook] = &[
            fexit_message(program::FEXIT_PROTOCOL[0].0, program::FEXIT_PROTOCOL[0].1),
            fexit_message(program::FEXIT_PROTOCOL[1].0, program::FEXIT_PROTOCOL[1].1),
            fexit_message(program::FEXIT_PROTOCOL[2].0, program::FEXIT_PROTOCOL[2].1),
        ];
        match self {
            MessageHook::FexitProtocol => MessageHooks { hooks: FEXIT_PROTOCOL, those_present: true },
            MessageHook::Tracepoint => MessageHooks { hooks: TRACEPOINT, those_present: false },
            MessageHook::KretprobeSockSendmsg => {
                MessageHooks { hooks: KRETPROBE_SOCK_SENDMSG, those_present: false }
            }
            MessageHook::KretprobeProtocol => MessageHooks { hooks: KRETPROBE_PROTOCOL, those_present: true },
        }
    }
}

/// Drops a thread's published trace context when it exits or execs ([`super::context_cleanup`]).
pub const CONTEXT_CLEANUP: [Hook; 2] = [
    Hook {
        program: program::CONTEXT_THREAD_EXIT,
        kind: Kind::Tracepoint { category: "sched", event: "sched_process_exit" },
        needs: Needs::Nothing,
    },
    Hook {
        program: program::CONTEXT_EXEC,
        kind: Kind::Tracepoint { category: "sched", event: "sched_process_exec" },
        needs: Needs::Nothing,
    },
];

/// Lets a process that execs be captured again ([`super::Probes::start_identity_capture`]).
pub const IDENTITY_EXEC: Hook = Hook {
    program: program::IDENTITY_EXEC,
    kind: Kind::Tracepoint { category: "sched", event: "sched_process_exec" },
    needs: Needs::Nothing,
};

impl Hook {
    /// Whether the running kernel offers the facility this hook needs; Err says what is missing.
    /// The function itself is looked for by [`Hook::point`].
    pub fn check(&self, kernel: &Kernel) -> Result<(), String> {
        match (self.needs, self.kind) {
            (Needs::Tracepoint(absent), Kind::Tracepoint { category, event }) => {
                if !Kernel::has_tracepoint(category, event) {
                    return Err(format!("tracepoint {category}:{event} not present ({absent})"));
                }
                Ok(())
            }
            (Needs::Kprobes, _) => kernel.kprobes.clone(),
            (Needs::Btf, _) => kernel.btf.as_ref().map(drop).map_err(Clone::clone),
            _ => Ok(()),
        }
    }

    /// Whether the kernel has this hook's function; tracepoints have none and always count.
    pub fn present(&self, kernel: &Kernel) -> bool {
        match self.kind {
            Kind::Kprobe { function: Function::Named(f) }
            | Kind::Kretprobe { function: Function::Named(f), .. }
            | Kind::Fentry { function: f }
            | Kind::Fexit { function: f } => kernel.has_symbol(f),
            Kind::Kprobe { function: Function::Syscall }
            | Kind::Kretprobe { function: Function::Syscall, .. } => kernel.syscall_symbol.is_some(),
            Kind::Tracepoint { .. } => true,
        }
    }

    /// Where the hook goes on this kernel, once [`Hook::check`] passed; Err says which function
    /// a kprobe cannot find. `inflight_maxactive` is [`Maxactive::InflightCalls`] as the
    /// settings size it.
    pub fn point<'k>(&self, kernel: &'k Kernel, inflight_maxactive: u32) -> Result<Point<'k>, String> {
        let maxactive = |m| match m {
            Maxactive::InflightCalls => inflight_maxactive,
            Maxactive::KernelLimit => MAXACTIVE_MAX,
        };
        let btf = || kernel.btf.as_ref().map_err(Clone::clone);
        Ok(match self.kind {
            Kind::Tracepoint { category, event } => Point::Tracepoint { category, event },
            Kind::Kprobe { function } => Point::Kprobe { function: kprobe_target(function, kernel)? },
            Kind::Kretprobe { function, maxactive: m } => {
                Point::Kretprobe { function: kprobe_target(function, kernel)?, maxactive: maxactive(m) }
            }
            Kind::Fentry { function } => Point::Fentry { function, btf: btf()? },
            Kind::Fexit { function } => Point::Fexit { function, btf: btf()? },
        })
    }
}

/// The function a kprobe goes on, by its name in `/proc/kallsyms`.
fn kprobe_target(function: Function, kernel: &Kernel) -> Result<&str, String> {
    match function {
        Function::Named(name) if kernel.has_symbol(name) => Ok(name),
        Function::Named(name) => Err(format!("{name} is not in /proc/kallsyms")),
        Function::Syscall => kernel
            .syscall_symbol
            .as_ref()
            .map(|(symbol, _)| symbol.as_str())
            .ok_or_else(|| "no sendmmsg syscall symbol in /proc/kallsyms".to_owned()),
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
    /// `sched:sched_process_exit`: drops an exiting thread's published context.
    pub const CONTEXT_THREAD_EXIT: &str = "context_thread_exit";
    /// `sched:sched_process_exec`: drops the context of a thread that runs a new program.
    pub const CONTEXT_EXEC: &str = "context_exec";
    /// `sched:sched_process_exec`: forgets a process's captured identity, and where its threads
    /// kept their OTEP 4947 context, when it runs a new program, so the new program's next call
    /// captures it again.
    pub const IDENTITY_EXEC: &str = "identity_exec";
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
