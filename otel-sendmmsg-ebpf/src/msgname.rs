//! Each message's explicit destination (`msg_name`), read from the caller's memory at entry.
//! The caller may pass anything: an unreadable pointer is recorded, never an error.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated},
    macros::map,
    maps::PerCpuArray,
};
use otel_sendmmsg_common::{name_status, Destination, MessageResult, MAX_MESSAGE_DETAIL};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `struct mmsghdr` in the 64-bit user ABI: `struct msghdr` (56 bytes) then `msg_len`, padded.
const MMSGHDR_SIZE: u64 = 64;

/// The head of `struct msghdr`: `void *msg_name; int msg_namelen;` (+ padding).
#[repr(C)]
#[derive(Clone, Copy)]
struct NameHead {
    name: u64,
    namelen: i32,
    _pad: u32,
}

/// The shortest `msg_namelen` the kernel sends to, per family: `sizeof(struct sockaddr_in)`
/// (`udp_sendmsg`, `raw_sendmsg`) and `SIN6_LEN_RFC2133` (`udpv6_sendmsg`, `rawv6_sendmsg`).
/// A shorter name is refused with EINVAL, so it names no destination.
const SOCKADDR_IN_LEN: i32 = 16;
const SIN6_LEN_RFC2133: i32 = 24;
/// `sa_family`, the least any name must hold.
const FAMILY_LEN: i32 = 2;
/// [`SockaddrHead`].
const HEAD_LEN: i32 = 8;

/// `sockaddr_in6` up to its address; its first 8 bytes are laid out as `sockaddr_in`'s.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrHead {
    family: u16,
    port_be: u16,
    v4_or_flowinfo: [u8; 4],
}

/// `msg_len` follows `struct msghdr` in `struct mmsghdr`.
const MSG_LEN_OFFSET: u64 = 56;

/// The bytes of the first [`MAX_MESSAGE_DETAIL`] `struct mmsghdr`s.
const HEADERS_SIZE: usize = MAX_MESSAGE_DETAIL * MMSGHDR_SIZE as usize;

/// The call's `struct mmsghdr`s, copied from the caller in one read: one helper call per call
/// instead of one per message (in the benchmark at vlen 64: the entry program 7493 ns a call
/// before, 1121 after; the exit's, detail `sizes`, 7602 and 1510).
#[map]
static HEADERS: PerCpuArray<[u8; HEADERS_SIZE]> = PerCpuArray::with_max_entries(1, 0);

/// The first `n` (at most [`MAX_MESSAGE_DETAIL`]) of the caller's `struct mmsghdr`s at `msgvec`,
/// in this CPU's [`HEADERS`]; None when any of them cannot be read (then each is read alone, so
/// the readable ones still count). Reads exactly the `n` the call declared, nothing past them.
#[inline(always)]
fn copy_headers(msgvec: u64, n: u32) -> Option<*const u8> {
    let buf = HEADERS.get_ptr_mut(0)?;
    let size = n * MMSGHDR_SIZE as u32;
    if size == 0 || size > HEADERS_SIZE as u32 {
        return None;
    }
    // SAFETY: `size` bytes fit this CPU's buffer (checked above); the helper reads user memory
    // and fails cleanly on a bad address.
    let failed = unsafe { generated::bpf_probe_read_user(buf.cast(), size, msgvec as *const _) };
    (failed == 0).then_some(buf.cast::<u8>().cast_const())
}

/// The value of type `T` at `offset` in the call's headers: from the copy [`copy_headers`] made,
/// or, without one, read alone from the caller (None when that fails too).
#[inline(always)]
fn header_field<T: Copy>(copy: Option<*const u8>, msgvec: u64, offset: u64) -> Option<T> {
    match copy {
        // SAFETY: callers stay within the copied headers, inside the buffer, at offsets aligned
        // to `T` (a map value is 8-byte aligned).
        Some(headers) => Some(unsafe { core::ptr::read(headers.add(offset as usize).cast::<T>()) }),
        // SAFETY: user memory read through the helper, which fails cleanly on a bad address.
        None => unsafe { bpf_probe_read_user((msgvec + offset) as *const T) }.ok(),
    }
}

/// Reads what the kernel wrote into the first `min(sent, MAX_MESSAGE_DETAIL)` messages'
/// `msg_len` at exit; returns the number read and their sum.
#[inline(always)]
pub fn read_sent_lengths(
    msgvec: u64,
    sent: u32,
    detail: &mut [MessageResult; MAX_MESSAGE_DETAIL],
) -> (u32, u64) {
    let (mut read, mut bytes) = (0u32, 0u64);
    let headers = copy_headers(msgvec, sent.min(MAX_MESSAGE_DETAIL as u32));
    for (i, slot) in detail.iter_mut().enumerate() {
        if i as u32 >= sent {
            break;
        }
        let Some(len) = header_field::<u32>(headers, msgvec, i as u64 * MMSGHDR_SIZE + MSG_LEN_OFFSET) else {
            break;
        };
        slot.ret = len as i32;
        slot.offset_ns = 0;
        read += 1;
        bytes += u64::from(len);
    }
    (read, bytes)
}

/// Reads the destinations of the first `min(vlen, MAX_MESSAGE_DETAIL)` messages into `detail`.
#[inline(always)]
pub fn read_destinations(msgvec: u64, vlen: u32, detail: &mut [MessageResult; MAX_MESSAGE_DETAIL]) {
    let headers = copy_headers(msgvec, vlen.min(MAX_MESSAGE_DETAIL as u32));
    for (i, slot) in detail.iter_mut().enumerate() {
        if i as u32 >= vlen {
            break;
        }
        slot.dest.status = match header_field::<NameHead>(headers, msgvec, i as u64 * MMSGHDR_SIZE) {
            Some(head) => read_name(head, &mut slot.dest),
            None => name_status::UNREADABLE,
        };
    }
}

/// Fills what `dest`'s status says is valid (the family, when it was within the declared
/// length; the port and address when read) and returns that status; nothing else is written,
/// so no zeroing `memset` is needed. Reads only the `msg_namelen` bytes the caller declared:
/// past them may be another object of the caller's, or unmapped.
#[inline(always)]
fn read_name(head: NameHead, dest: &mut Destination) -> u8 {
    // The kernel's order (`__copy_msghdr`): no pointer is no name whatever the length; then a
    // negative length is refused; a zero one is no name.
    if head.name == 0 {
        return name_status::NONE; // the connected peer
    }
    let namelen = head.namelen;
    if namelen < 0 {
        return name_status::BAD_LENGTH;
    }
    if namelen == 0 {
        return name_status::NONE;
    }
    if namelen < FAMILY_LEN {
        return name_status::BAD_LENGTH;
    }
    if namelen < HEAD_LEN {
        // Too short for any IP address: only the family is declared.
        // SAFETY: as above.
        let Ok(family) = (unsafe { bpf_probe_read_user(head.name as *const u16) }) else {
            return name_status::UNREADABLE;
        };
        dest.family = family;
        return if family == AF_INET || family == AF_INET6 {
            name_status::BAD_LENGTH
        } else {
            name_status::OTHER_FAMILY
        };
    }
    // SAFETY: as above; 8 bytes, within the declared length.
    let Ok(sa) = (unsafe { bpf_probe_read_user(head.name as *const SockaddrHead) }) else {
        return name_status::UNREADABLE;
    };
    dest.family = sa.family;
    dest.port_be = sa.port_be;
    match sa.family {
        AF_INET if namelen < SOCKADDR_IN_LEN => name_status::BAD_LENGTH,
        AF_INET => {
            // SAFETY: 4 in-bounds bytes of a [u8; 16].
            unsafe { core::ptr::write_unaligned(dest.addr.as_mut_ptr().cast(), sa.v4_or_flowinfo) };
            name_status::READ
        }
        AF_INET6 if namelen < SIN6_LEN_RFC2133 => name_status::BAD_LENGTH,
        // sin6_addr follows sin6_flowinfo, at offset 8: bytes 8..24, within the declared length.
        AF_INET6 => match unsafe { bpf_probe_read_user((head.name + 8) as *const [u8; 16]) } {
            Ok(addr) => {
                dest.addr = addr;
                name_status::READ
            }
            Err(_) => name_status::UNREADABLE,
        },
        _ => name_status::OTHER_FAMILY,
    }
}
