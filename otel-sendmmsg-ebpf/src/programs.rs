// The modules of both sidecar objects (`main.rs`, `main_hash_map.rs`),
// which differ only in their store of calls in flight (`inflight`). Included, not a module: each
// object is a crate root of its own.

mod call_metrics;
mod context;
mod fentry;
mod filters;
mod identity;
mod kprobe;
mod msgname;
mod pairing;
mod socket;
mod task;
mod thread_context;
mod tracepoint;

include!("runtime.rs");
