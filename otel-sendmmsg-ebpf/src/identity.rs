//! Who a traced process is, captured in the kernel while it is certainly alive: at its first
//! traced call, before that call's record, so a process that exits (or `exec`s) right after its
//! call still has its own resource in user space, with no race against a `/proc` read.
//!
//! Once per process: `IDENTITY_SEEN` maps each tgid to the start time of the process captured
//! under it; a pid reused by another process has another start time and is captured anew. An
//! `exec` keeps pid and start time but brings another program and environment:
//! `identity_exec` forgets the tgid then, so the new program's first call captures again, and
//! its record follows the old program's last call records in the ring buffer.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::{map, tracepoint},
    maps::{Array, LruHashMap},
    programs::TracePointContext,
};
use otel_sendmmsg_common::{
    identity_flags, Counter, IdentityRecord, ENV_PAGE, ENV_WINDOW, IDENTITY_NAME_LEN, IDENTITY_RECORD_VERSION,
};

use crate::{
    pairing::{count, RECORDS},
    socket::{offsets, read},
};

/// tgid -> start time of the process whose identity was sent. LRU: an entry evicted while its
/// process still runs costs one more capture, never a wrong one.
#[map]
static IDENTITY_SEEN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// `[0] == 1`: capture. User space sets it once the kernel's offsets are known and
/// `identity_exec` is attached (without it an exec'd program would keep the old identity).
#[map]
static IDENTITY_ON: Array<u32> = Array::with_max_entries(1, 0);

/// At a traced call's entry, in the calling task: sends the process's identity unless it was
/// already sent for this process (`start`: `task::process_start_ns`, read once per call).
#[inline(always)]
pub fn capture_once(tgid: u32, start: u64) {
    if IDENTITY_ON.get(0).copied() != Some(1) {
        return;
    }
    if start == 0 {
        return;
    }
    // SAFETY: a copy of the value is taken at once.
    if unsafe { IDENTITY_SEEN.get(&tgid) }.copied() == Some(start) {
        return;
    }
    if send(tgid, start) {
        let _ = IDENTITY_SEEN.insert(&tgid, &start, 0);
    }
}

/// Reserves an identity record in the ring buffer, fills it from the current task and submits
/// it. False when the ring buffer is full (counted; the next call tries again).
#[inline(always)]
fn send(tgid: u32, start: u64) -> bool {
    let Some(mut entry) = RECORDS.reserve::<IdentityRecord>(0) else {
        count(Counter::IdentitiesDropped);
        return false;
    };
    let rec = entry.as_mut_ptr();
    let off = offsets();
    // SAFETY: `rec` is the reserved record, all of it writable; every field is written before
    // it is read in user space, or covered by a length that says it was not.
    unsafe {
        (*rec).version = IDENTITY_RECORD_VERSION;
        (*rec).size = core::mem::size_of::<IdentityRecord>() as u32;
        (*rec).pid = tgid;
        (*rec).process_start_ns = start;
        (*rec).cgroup_id = bpf_get_current_cgroup_id();
        (*rec)._pad = 0;
        let mut flags = 0;
        let task = bpf_get_current_task();
        // The group leader's name, as /proc/PID/stat shows it.
        let leader = read::<u64>(task, off.task_group_leader).unwrap_or(0);
        // Two words, volatile: LLVM would make a `memset`/`memcpy` call of a 16-byte copy or
        // zeroing, which the loader refuses (see pairing's doc).
        let comm = read::<[u64; 2]>(leader, off.task_comm).unwrap_or([0; 2]);
        let dst = (*rec).comm.as_mut_ptr().cast::<u64>();
        core::ptr::write_unaligned(dst, core::ptr::read_volatile(&comm[0]));
        core::ptr::write_unaligned(dst.add(1), core::ptr::read_volatile(&comm[1]));
        let mm = read::<u64>(task, off.task_mm).unwrap_or(0);
        flags |= read_env(mm, &off, rec);
        let exe = read::<u64>(mm, off.mm_exe_file)
            .and_then(|file| read::<u64>(file, off.file_dentry))
            .and_then(|dentry| read::<u64>(dentry, off.dentry_name));
        match read_name(exe, (*rec).exe.as_mut_ptr()) {
            Some(len) if len > 0 => (*rec).exe_len = len,
            _ => {
                (*rec).exe_len = 0;
                flags |= identity_flags::EXE_UNREADABLE;
            }
        }
        let kn = read::<u64>(task, off.task_cgroups)
            .and_then(|cset| read::<u64>(cset, off.css_set_dfl_cgrp))
            .and_then(|cgroup| read::<u64>(cgroup, off.cgroup_kn));
        let name = kn.and_then(|kn| read::<u64>(kn, off.kernfs_name));
        // The root cgroup's name is empty: read, not missing.
        let cgroup_len = read_name(name, (*rec).cgroup.as_mut_ptr());
        (*rec).cgroup_len = cgroup_len.unwrap_or(0);
        let parent = kn
            .and_then(|kn| read::<u64>(kn, off.kernfs_parent))
            .filter(|&p| p != 0)
            .and_then(|p| read::<u64>(p, off.kernfs_name));
        (*rec).cgroup_parent_len = read_name(parent, (*rec).cgroup_parent.as_mut_ptr()).unwrap_or(0);
        if cgroup_len.is_none() {
            flags |= identity_flags::CGROUP_UNREADABLE;
        }
        (*rec).flags = flags;
        count(Counter::IdentitiesCaptured);
        if flags & identity_flags::INCOMPLETE != 0 {
            count(Counter::IdentitiesIncomplete);
        }
    }
    // The call's own record follows; whichever wakes the reader, or its timer, brings both.
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
    true
}

/// Copies the pages holding the environment block (`mm->env_start..env_end`) into `rec.env`,
/// the first from its page's start: whole pages at constant offsets, which is what the
/// verifier can bound. Returns the [`identity_flags`] that apply.
#[inline(always)]
unsafe fn read_env(mm: u64, off: &otel_sendmmsg_common::KernelOffsets, rec: *mut IdentityRecord) -> u32 {
    // Volatile: three neighbouring zero stores would become a `memset` call.
    unsafe {
        core::ptr::write_volatile(&mut (*rec).env_len, 0);
        core::ptr::write_volatile(&mut (*rec).env_skip, 0);
        core::ptr::write_volatile(&mut (*rec).env_read, 0);
    }
    let (Some(start), Some(end)) = (read::<u64>(mm, off.mm_env_start), read::<u64>(mm, off.mm_env_end))
    else {
        return identity_flags::ENV_UNREADABLE;
    };
    if mm == 0 || end < start {
        return identity_flags::ENV_UNREADABLE;
    }
    let len = end - start;
    let skip = start % ENV_PAGE as u64;
    let first_page = start - skip;
    // Pages the block touches, at most the window's.
    let pages = (skip + len).div_ceil(ENV_PAGE as u64);
    let mut flags = if skip + len > ENV_WINDOW as u64 { identity_flags::ENV_CUT } else { 0 };
    unsafe {
        (*rec).env_len = len;
        (*rec).env_skip = skip as u32;
    }
    let mut read_bytes = 0u32;
    for i in 0..ENV_WINDOW / ENV_PAGE {
        if i as u64 >= pages {
            break;
        }
        let at = i * ENV_PAGE;
        // SAFETY: `at + ENV_PAGE <= ENV_WINDOW`: inside the record's `env`; the helper checks
        // the user address and fails cleanly on a page that is not present.
        let failed = unsafe {
            bpf_probe_read_user(
                (*rec).env.as_mut_ptr().add(at).cast(),
                ENV_PAGE as u32,
                (first_page + at as u64) as *const _,
            )
        } != 0;
        if failed {
            flags |= identity_flags::ENV_UNREADABLE;
            break;
        }
        read_bytes = (at + ENV_PAGE) as u32;
    }
    unsafe { (*rec).env_read = read_bytes };
    flags
}

/// Reads the NUL-terminated kernel string at `name` into `dst` (IDENTITY_NAME_LEN bytes);
/// returns its length without the NUL, `None` when unreadable.
#[inline(always)]
unsafe fn read_name(name: Option<u64>, dst: *mut u8) -> Option<u32> {
    let name = name.filter(|&n| n != 0)?;
    // SAFETY: `dst` has IDENTITY_NAME_LEN writable bytes; the helper checks the source.
    let n = unsafe { bpf_probe_read_kernel_str(dst.cast(), IDENTITY_NAME_LEN as u32, name as *const _) };
    if n > 0 {
        Some((n - 1) as u32)
    } else {
        None
    }
}

/// `sched:sched_process_exec`, in the task that exec'd: the process is another program now, with
/// another environment and other TLS; its next traced call captures it again (which tells user
/// space to look for the new program's thread context).
#[tracepoint]
pub fn identity_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    crate::thread_context::forget(tgid);
    // A lookup takes no lock; most exec'ing processes were never captured.
    // SAFETY: only the presence is used.
    if unsafe { IDENTITY_SEEN.get(&tgid) }.is_some() {
        let _ = IDENTITY_SEEN.remove(&tgid);
    }
    0
}
