//! The programs of `main.rs`, each thread's call kept in a hash map keyed by thread id: for
//! kernels whose tracing programs have no task-local storage (before 5.12), or when
//! `OTEL_SENDMMSG_CALL_STORE=hash-map` asks for it.
#![no_std]
#![no_main]

#[path = "inflight/hash_map.rs"]
mod inflight;

include!("programs.rs");
