//! BPF programs of otel-sendmmsg: one module per attach family (`tracepoint`, `kprobe`,
//! `fentry`), all feeding one body of pairing logic in `pairing`, which owns the maps. User
//! space loads only the programs of the hooks it chooses. This object keeps each thread's call
//! in task-local storage (Linux 5.12+); `main_hash_map.rs` builds the same programs over a hash
//! map for older kernels. The benchmark's empty programs are a binary of their own
//! (`floor.rs`), so they never ship in these objects.
#![no_std]
#![no_main]

#[path = "inflight/task_storage.rs"]
mod inflight;

include!("programs.rs");
