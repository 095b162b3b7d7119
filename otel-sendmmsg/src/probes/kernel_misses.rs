//! Runs of our programs that the kernel skipped, as it counts them itself
//! (`bpf_prog_info.recursion_misses`): an fentry/fexit or raw tracepoint program entered again
//! on a CPU where it was already running, and, since Linux 6.7 (`trace_call_bpf`), a kprobe or
//! tracepoint program not run because another BPF program was running on that CPU. A skipped
//! entry or exit is a call lost or left without its exit; a skipped per-message run is a
//! message missing from its call.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `BPF_OBJ_GET_INFO_BY_FD`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Where `recursion_misses` sits in `struct bpf_prog_info` (`include/uapi/linux/bpf.h`; the
/// field was added in 5.12, after `run_cnt`), and the struct's size up to `attach_btf_id`.
const RECURSION_MISSES_OFFSET: usize = 208;
const PROG_INFO_SIZE: usize = 232;

/// The argument of `BPF_OBJ_GET_INFO_BY_FD` (`attr.info`).
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The program's skipped runs; 0 from kernels before 5.12, which do not count them.
pub fn recursion_misses(program: BorrowedFd<'_>) -> io::Result<u64> {
    let mut info = [0u64; PROG_INFO_SIZE / 8];
    let mut attr = InfoAttr {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: PROG_INFO_SIZE as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` and the buffer it points to live across the call; the kernel writes at
    // most `info_len` bytes and updates `info_len` to what it filled.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // An older kernel fills less, and says so.
    if (attr.info_len as usize) < RECURSION_MISSES_OFFSET + 8 {
        return Ok(0);
    }
    Ok(info[RECURSION_MISSES_OFFSET / 8])
}
