//! Filters applied in the kernel, so untraced processes cost one check at entry and one map
//! miss at exit. Set once by user space at load time.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_prandom_u32, generated::bpf_get_current_comm,
    },
    macros::map,
    maps::HashMap,
};
use otel_sendmmsg_common::{filter, CallRecord, FilterSettings};

use crate::socket::{offsets, read};

#[unsafe(no_mangle)]
static FILTERS: FilterSettings =
    FilterSettings { flags: 0, root_below: 0, min_duration_ns: 0, trace_id_below: 0 };

/// Process ids (thread group ids) to trace.
#[map]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Process names (the thread group leader's `comm`, NUL-padded) to trace.
#[map]
static FILTER_COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(1024, 0);

/// cgroup v2 ids (the cgroup directory's inode number) to trace.
#[map]
static FILTER_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn settings() -> FilterSettings {
    // SAFETY: a global the loader overwrites; volatile keeps the compiler from folding it.
    unsafe { core::ptr::read_volatile(&FILTERS) }
}

/// The sampler's decision for a call without a parent: a random draw when roots are sampled.
#[inline(always)]
pub fn sampled_as_root(flags: u32) -> bool {
    flags & filter::SAMPLE_ROOTS == 0 || unsafe { bpf_get_prandom_u32() } < settings().root_below
}

/// The sampler's decision for a call under a parent span: the parent's own sampled flag (the
/// parent-based samplers), or the parent's trace id against the ratio, so that every span of a
/// trace gets the same answer, here and in any SDK that samples by the trace id's randomness.
#[inline(always)]
pub fn sampled_with_parent(flags: u32, parent_sampled: bool, trace_id: &[u8; 16]) -> bool {
    if flags & filter::TRACE_ID_RATIO == 0 {
        return parent_sampled;
    }
    let mut random = 0u64;
    // Byte by byte (big-endian, the trace id's own order): a slice copy would be a `memcpy`.
    for byte in &trace_id[16 - (filter::TRACE_ID_RANDOM_BITS / 8) as usize..] {
        random = random << 8 | u64::from(*byte);
    }
    random < settings().trace_id_below
}

/// Whether the current task matches every process filter that is on (pids, cgroups, names).
#[inline(always)]
pub fn process_traced(tgid: u32, flags: u32) -> bool {
    if flags & filter::PIDS != 0 && unsafe { FILTER_PIDS.get(&tgid) }.is_none() {
        return false;
    }
    if flags & filter::CGROUPS != 0 {
        // SAFETY: no preconditions.
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        if unsafe { FILTER_CGROUPS.get(&cgroup) }.is_none() {
            return false;
        }
    }
    if flags & filter::COMMS != 0 {
        let Some(comm) = process_name() else {
            return false;
        };
        if unsafe { FILTER_COMMS.get(&comm) }.is_none() {
            return false;
        }
    }
    true
}

/// The process's name: its thread group leader's `comm` (a worker thread's own name differs).
/// Without BTF offsets, the thread's own name is the best there is.
#[inline(always)]
fn process_name() -> Option<[u8; 16]> {
    let off = offsets();
    if off.valid == 0 {
        let mut comm = core::mem::MaybeUninit::<[u8; 16]>::uninit();
        // SAFETY: the helper writes all 16 bytes, or zeroes them on failure; no stack zeroing
        // first, which would be a `memset` call the loader refuses.
        unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), 16) };
        return Some(unsafe { comm.assume_init() });
    }
    // SAFETY: reading the current task pointer has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let leader: u64 = read(task, off.task_group_leader)?;
    let mut comm: [u8; 16] = read(leader, off.task_comm)?;
    // Older kernels set `comm` with strlcpy, which leaves a longer earlier name's bytes after
    // the NUL ("dns-publisher\0" over a test binary's name, on Debian's 5.10): the key is the
    // name and zeroes, as user space writes it and bpf_get_current_comm pads it.
    let mut ended = false;
    for byte in comm.iter_mut() {
        ended |= *byte == 0;
        if ended {
            *byte = 0;
        }
    }
    Some(comm)
}

/// Whether a finished call is exported, by the filters decided at exit.
#[inline(always)]
pub fn kept_at_exit(rec: &CallRecord, settings: &FilterSettings) -> bool {
    if rec.end_ns.wrapping_sub(rec.start_ns) < settings.min_duration_ns {
        return false;
    }
    if settings.flags & filter::ERRORS_ONLY != 0 && rec.ret >= 0 && rec.messages_failed == 0 {
        return false;
    }
    true
}
