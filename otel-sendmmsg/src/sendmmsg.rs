//! Making `sendmmsg(2)` calls: the start-up self-test and the test workload both need batches
//! whose buffers outlive the call.

use std::{
    io,
    mem::{size_of, zeroed},
    net::SocketAddr,
    os::fd::RawFd,
};

/// One call's messages and everything they point to.
pub struct Batch {
    // Never read directly: the iovecs point into them.
    _payloads: Vec<Vec<u8>>,
    _iovecs: Vec<libc::iovec>,
    _addrs: Vec<libc::sockaddr_storage>,
    msgs: Vec<libc::mmsghdr>,
}

impl Batch {
    /// Messages of these sizes; `dests[i]` is message i's explicit destination (missing or None:
    /// the connected peer).
    pub fn new(sizes: &[usize], dests: &[Option<SocketAddr>]) -> Batch {
        let mut payloads: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0xab; n]).collect();
        let mut iovecs: Vec<libc::iovec> = payloads
            .iter_mut()
            .map(|p| libc::iovec { iov_base: p.as_mut_ptr().cast(), iov_len: p.len() })
            .collect();
        let dest = |i: usize| dests.get(i).copied().flatten();
        let mut addrs: Vec<libc::sockaddr_storage> =
            (0..sizes.len()).map(|i| dest(i).map(sockaddr).unwrap_or_else(|| unsafe { zeroed() })).collect();
        let msgs = (0..sizes.len())
            .map(|i| {
                // SAFETY: an all-zero mmsghdr is a valid "no name, no control" message.
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_iov = &mut iovecs[i];
                m.msg_hdr.msg_iovlen = 1;
                if let Some(d) = dest(i) {
                    m.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                    m.msg_hdr.msg_namelen = sockaddr_len(&d);
                }
                m
            })
            .collect();
        // Moving the Vecs into the struct keeps their heap buffers where the pointers say.
        Batch { _payloads: payloads, _iovecs: iovecs, _addrs: addrs, msgs }
    }

    pub fn msgvec(&mut self) -> *mut libc::mmsghdr {
        self.msgs.as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Points message i's `msg_name` at arbitrary memory, to see how a bad pointer is handled.
    pub fn set_msg_name(&mut self, i: usize, name: *mut libc::c_void, len: libc::socklen_t) {
        self.msgs[i].msg_hdr.msg_name = name;
        self.msgs[i].msg_hdr.msg_namelen = len;
    }

    /// The bytes the kernel reported sent for message i (`msg_len`).
    pub fn sent_len(&self, i: usize) -> u32 {
        self.msgs[i].msg_len
    }

    /// Sends the whole batch: messages sent, or the error.
    pub fn send(&mut self, fd: RawFd, flags: i32) -> io::Result<usize> {
        // SAFETY: msgvec and everything it points to live as long as self.
        let ret = unsafe { libc::sendmmsg(fd, self.msgvec(), self.len() as u32, flags as _) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }
}

fn sockaddr(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is large and aligned enough for either family, and all-zero is a
    // valid value of each.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
        }
        SocketAddr::V6(a) => {
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
        }
    }
    storage
}

fn sockaddr_len(addr: &SocketAddr) -> libc::socklen_t {
    (match addr {
        SocketAddr::V4(_) => size_of::<libc::sockaddr_in>(),
        SocketAddr::V6(_) => size_of::<libc::sockaddr_in6>(),
    }) as libc::socklen_t
}

/// The calling thread's kernel task id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}
