//! The floor of the overhead benchmark: programs that do nothing, on exactly the tracepoint
//! family's hooks. Attached instead of the real ones, they measure what merely having a BPF
//! program on these hooks costs (the syscall tracepoints also send every syscall of every task
//! through the slow path), so the benchmark can tell that apart from what our programs do.
//!
//! A BPF object of its own (`otel-sendmmsg-floor`): only the benchmark loads it
//! (`benches/overhead/floor.rs`), and the sidecar's object carries nothing it never runs.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

/// `syscalls:sys_enter_sendmmsg`, doing nothing.
#[tracepoint]
pub fn floor_sendmmsg_enter(_ctx: TracePointContext) -> u32 {
    0
}

/// `sock:sock_send_length`, doing nothing.
#[tracepoint]
pub fn floor_sendmmsg_message(_ctx: TracePointContext) -> u32 {
    0
}

/// `sock:sock_send_length` as a raw tracepoint, doing nothing: what the per-message hook would
/// cost run as one, which gets the event's arguments as they are, where a tracepoint program
/// gets a record of its fields built for it first (issue 15's lead, measured by the benchmark).
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn floor_sendmmsg_message_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

/// `syscalls:sys_exit_sendmmsg`, doing nothing.
#[tracepoint]
pub fn floor_sendmmsg_exit(_ctx: TracePointContext) -> u32 {
    0
}

include!("runtime.rs");
