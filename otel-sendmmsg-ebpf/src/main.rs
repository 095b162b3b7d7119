//! BPF programs of otel-sendmmsg: one module per attach family (`tracepoint`, `kprobe`,
//! `fentry`), all feeding one body of pairing logic in `pairing`, which owns the maps. User
//! space loads only the programs of the hooks it chooses. The benchmark's empty programs are a
//! binary of their own (`floor.rs`), so they never ship in this object.
#![no_std]
#![no_main]

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
