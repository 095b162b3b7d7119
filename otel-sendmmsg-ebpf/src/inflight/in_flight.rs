// The interface both stores of calls in flight give `pairing` (`hash_map.rs`, `task_storage.rs`):
// included by each, as each object holds only one of them.

/// A thread's call between entry and exit, as the store keeps it.
pub trait InFlight: PairedCall + Sized + 'static {
    /// Where the thread's new call is put together. A call of the thread still in flight there
    /// had its exit missed, which the store counts. None when there is no room for it (the caller
    /// counts the call as refused).
    fn slot(tid: u32) -> Option<*mut Self>;
    /// Makes the call put together in [`InFlight::slot`] the thread's call in flight. False
    /// when the store refuses it (the caller counts it).
    fn begin(tid: u32, call: *mut Self) -> bool;
    /// The thread's call in flight.
    fn current(tid: u32) -> Option<*mut Self>;
    /// The thread's call, its end written, is done.
    fn end(tid: u32);
}
