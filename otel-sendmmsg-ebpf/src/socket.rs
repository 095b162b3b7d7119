//! The socket behind a call's fd, read from kernel structures at exit (when autobind has given
//! an unbound socket its local port): from the socket the call's messages went to when the
//! message hook named it, else walking from the fd (`current->files->fdt->fd[fd]->private_data`
//! is the `struct socket` when the file is one); its `sk` holds the addresses. Field offsets
//! come from user space, out of the running kernel's BTF.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use otel_sendmmsg_common::{KernelOffsets, SocketInfo};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Set by user space at load time; `valid == 0` (no BTF) turns socket context off.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    valid: 0,
    task_group_leader: 0,
    task_comm: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_type: 0,
    socket_file: 0,
    socket_sk: 0,
    sk_family: 0,
    sk_protocol: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
    task_start_boottime: 0,
    identity_valid: 0,
    task_mm: 0,
    mm_env_start: 0,
    mm_env_end: 0,
    mm_exe_file: 0,
    file_dentry: 0,
    dentry_name: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_name: 0,
    kernfs_parent: 0,
    task_fsbase: 0,
    sk_type: 0,
};

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a global the loader overwrites; volatile keeps the compiler from folding it.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: the helper checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// What a message hook hands over as the call's socket, which the call keeps (its `sk`, 0
/// until its first message) in a form that says which it is: a `struct sock *` with its lowest
/// bit set (the struct is 8-aligned), a `struct socket *` as it is (fexit programs get it as a
/// typed pointer, on which the verifier refuses any arithmetic). The exit then starts reading
/// the socket there instead of walking from the fd.
#[derive(Clone, Copy)]
pub enum MessageSocket {
    /// Nothing: the hook cannot see the socket.
    Unseen,
    /// A `struct sock *` (`sock:sock_send_length`'s `sk`, a plain number there).
    Sock,
    /// A `struct socket *` (the first argument of a protocol's sendmsg).
    Socket,
}

const SOCK_TAG: u64 = 1;

impl MessageSocket {
    /// `socket` as the call keeps it.
    #[inline(always)]
    pub fn tag(self, socket: u64) -> u64 {
        match self {
            MessageSocket::Unseen => 0,
            MessageSocket::Sock if socket != 0 => socket | SOCK_TAG,
            MessageSocket::Sock => 0,
            MessageSocket::Socket => socket,
        }
    }

    /// What [`MessageSocket::tag`] kept: what it points to, and the pointer.
    #[inline(always)]
    fn untag(kept: u64) -> (MessageSocket, u64) {
        if kept == 0 {
            (MessageSocket::Unseen, 0)
        } else if kept & SOCK_TAG != 0 {
            (MessageSocket::Sock, kept & !SOCK_TAG)
        } else {
            (MessageSocket::Socket, kept)
        }
    }
}

/// The current task's `fd`'s `struct socket`: `current->files->fdt->fd[fd]->private_data`,
/// when that file is a socket (only a socket's private data points back at its file).
#[inline(always)]
fn socket_of_fd(fd: i32, off: &KernelOffsets) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    // SAFETY: reading the current task pointer has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, off.task_files)?;
    let fdt: u64 = read(files, off.files_fdt)?;
    let max_fds: u32 = read(fdt, off.fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array: u64 = read(fdt, off.fdt_fd)?;
    let file: u64 = read(fd_array, fd as u32 * 8)?;
    let socket: u64 = read(file, off.file_private_data)?;
    if file == 0 || read::<u64>(socket, off.socket_file)? != file {
        return None;
    }
    Some(socket)
}

/// Fills `out` for the socket of the current task's `fd`: its kind (family, type, protocol),
/// and with `addresses` its ports and addresses too (a span's attributes, a series by peer; a
/// series needs only the kind, and is spared four reads). From `seen`, the call's messages'
/// socket as [`MessageSocket::tag`] kept it, when a message hook named it: one or two reads
/// then before the `struct sock`'s own, where the walk from the fd takes nine. `family` is
/// written last and only on success,
/// so family 0 means "unknown" and the other fields are then never read (they are not zeroed:
/// a 48-byte zeroing becomes a `memset` call the loader refuses).
#[inline(always)]
pub fn read_socket(fd: i32, seen: u64, out: &mut SocketInfo, addresses: bool) -> Option<()> {
    // SAFETY: a plain store; volatile keeps it from being merged into a memset.
    unsafe { core::ptr::write_volatile(&mut out.family, 0) };
    let off = offsets();
    if off.valid == 0 {
        return None;
    }
    let sk: u64 = match MessageSocket::untag(seen) {
        (MessageSocket::Sock, sk) if sk != 0 && off.sk_type != 0 => {
            out.sock_type = read::<u16>(sk, off.sk_type)?;
            sk
        }
        (MessageSocket::Socket, socket) if socket != 0 => {
            out.sock_type = read::<u16>(socket, off.socket_type)?;
            read(socket, off.socket_sk)?
        }
        _ => {
            let socket = socket_of_fd(fd, &off)?;
            out.sock_type = read::<u16>(socket, off.socket_type)?;
            read(socket, off.socket_sk)?
        }
    };
    let family: u16 = read(sk, off.sk_family)?;
    out.protocol = read(sk, off.sk_protocol)?;
    if !addresses {
        out.family = family;
        return Some(());
    }
    out.local_port = read(sk, off.sk_num)?;
    out.peer_port_be = read(sk, off.sk_dport)?;
    match family {
        AF_INET => {
            // IPv4 addresses fill the first 4 bytes; user space reads no more for AF_INET.
            let local: u32 = read(sk, off.sk_rcv_saddr)?;
            let peer: u32 = read(sk, off.sk_daddr)?;
            // SAFETY: 4 in-bounds bytes of a [u8; 16]; unaligned stores are fine in BPF.
            unsafe {
                core::ptr::write_unaligned(out.local_addr.as_mut_ptr().cast(), local);
                core::ptr::write_unaligned(out.peer_addr.as_mut_ptr().cast(), peer);
            }
        }
        AF_INET6 => {
            out.local_addr = read(sk, off.sk_v6_rcv_saddr)?;
            out.peer_addr = read(sk, off.sk_v6_daddr)?;
        }
        _ => {}
    }
    out.family = family;
    Some(())
}
