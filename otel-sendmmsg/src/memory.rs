//! Memory the sidecar is done with, handed back to the system.

/// Returns the allocator's free pages to the system (glibc keeps them otherwise).
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no preconditions; it only releases memory malloc no longer uses.
    unsafe {
        libc::malloc_trim(0);
    }
}
