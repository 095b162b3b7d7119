//! What the current task says about its process.

use aya_ebpf::helpers::bpf_get_current_task;

use crate::socket::{offsets, read};

/// When the current process started: its thread group leader's `start_boottime` (ns after
/// boot; `/proc/PID/stat` shows the same in clock ticks). 0 when the kernel's BTF did not give
/// the offsets. A pid alone is reused; with this, user space knows which process a call came
/// from even when the pid names another by the time the record is read.
#[inline(always)]
pub fn process_start_ns() -> u64 {
    let off = offsets();
    if off.valid == 0 || off.task_start_boottime == 0 {
        return 0;
    }
    // SAFETY: reading the current task pointer has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    read::<u64>(task, off.task_group_leader)
        .and_then(|leader| read(leader, off.task_start_boottime))
        .unwrap_or(0)
}
