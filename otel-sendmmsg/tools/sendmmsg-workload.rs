//! A tool, not part of the sidecar: makes real `sendmmsg(2)` calls for the end-to-end tests, the
//! overhead benchmark, the soak test (scripts/soak.sh) and by hand. Each scenario sets up its
//! sockets, makes its calls, and prints one JSON line per call with what user space saw (fd,
//! msgvec, flags, return value, errno, the kernel's `msg_len`s), so a test can check the spans
//! the sidecar exported against it.
//!
//!     sendmmsg-workload SCENARIO...       scenarios: udp4 udp6 udp4-unconnected unix bad-fd
//!                                         not-socket bad-msgvec refused-mid-batch vlen-zero
//!                                         bad-msg-name udp4-in-thread slow-unix null-msgvec
//!                                         vlen-over-limit killed-mid-call exec-mid-call
//!                                         short-msg-name threads-N blocked-N
//!                                         udp4-then-exec msgvec-at-page-end
//!     sendmmsg-workload loop SECONDS VLEN [CALLS_PER_SECOND] [THREADS] [PAYLOAD_BYTES]
//!                                         THREADS senders (default 1), each with its own UDP
//!                                         socket connected to a loopback receiver that a thread
//!                                         of its own drains; calls of VLEN messages of
//!                                         PAYLOAD_BYTES (default 64) back to back, or paced to
//!                                         CALLS_PER_SECOND in all (0: unpaced); prints one JSON
//!                                         line at the end (calls, messages, seconds, rates)
//!     sendmmsg-workload at-pid PID SCENARIO...
//!                                         runs the scenarios in a child process that gets
//!                                         exactly pid PID (clone3 with set_tid; root only), as a
//!                                         reused pid would; exits with the child's status
//!
//! `$WORKLOAD_PROCESS_CONTEXT=KIND[:KEY=VALUE,...]` first publishes an OTEP 4719 process context
//! with these string attributes, written here to the OTEP's layout (not through our context
//! library, so the sidecar is checked against an independent writer): KIND `valid`, `torn`
//! (its timestamp left at 0, forever mid-update) or `malformed` (a payload that is not
//! protobuf). `$WORKLOAD_PROCESS_CONTEXT_UPDATE=SECONDS:KEY=VALUE,...` republishes it with these
//! attributes after SECONDS, by the OTEP's updating protocol.
//!
//! `$WORKLOAD_THREAD_CONTEXT=1`: each `loop` sender publishes a sampled span through the context
//! library (OTEP 4947) before its calls, so the benchmark measures reading it at every call.

use otel_sendmmsg::sendmmsg::{gettid, Batch};
use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::{
        fd::{AsRawFd, RawFd},
        unix::net::UnixDatagram,
    },
    process::ExitCode,
    time::{Duration, Instant},
};

/// Bigger than any UDP datagram can be (65,507 bytes of payload over IPv4), so the kernel refuses
/// that one message with EMSGSIZE while the others of the batch go out.
const OVERSIZED: usize = 70_000;

/// A socket address as getsockname/getpeername see it ("" for none or a non-IP socket).
fn address(fd: RawFd, peer: bool) -> String {
    // SAFETY: sockaddr_storage fits any address; the kernel writes at most `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut storage as *mut libc::sockaddr_storage).cast();
    let ret = unsafe {
        if peer {
            libc::getpeername(fd, ptr, &mut len)
        } else {
            libc::getsockname(fd, ptr, &mut len)
        }
    };
    if ret != 0 {
        return String::new();
    }
    let port = |p: u16| u16::from_be(p);
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            let sin = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            SocketAddr::new(ip.into(), port(sin.sin_port)).to_string()
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in6) };
            SocketAddr::new(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into(), port(sin6.sin6_port)).to_string()
        }
        _ => String::new(),
    }
}

/// A page that is mapped but inaccessible: the kernel's copies from it fault.
fn inaccessible_page() -> io::Result<*mut libc::c_void> {
    // SAFETY: a fresh anonymous mapping, never touched by us.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(page)
    }
}

/// `bytes` copied to the very end of a readable page whose next page is inaccessible: a read
/// of even one byte past them faults.
fn at_page_end(bytes: &[u8]) -> io::Result<*mut libc::c_void> {
    // SAFETY: a fresh anonymous mapping of two pages; the second is made inaccessible, the
    // bytes are written inside the first.
    unsafe {
        let pages = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if pages == libc::MAP_FAILED
            || libc::mprotect(pages.cast::<u8>().add(4096).cast(), 4096, libc::PROT_NONE) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let start = pages.cast::<u8>().add(4096 - bytes.len());
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), start, bytes.len());
        Ok(start.cast())
    }
}

/// Calls sendmmsg with exactly these arguments and prints what happened, with each message's
/// destination as given (`dests`: "" for the connected peer).
fn call(
    scenario: &str,
    fd: RawFd,
    msgvec: *mut libc::mmsghdr,
    vlen: u32,
    flags: i32,
    sizes: &[usize],
    dests: &[String],
    batch: Option<&Batch>,
) {
    // SAFETY: msgvec is either a live Batch's messages or a pointer the scenario wants the kernel
    // to refuse (the kernel checks it; we never dereference it).
    // Timed as the caller sees it (the benchmark's first-call cost: a process's first traced
    // call is the one whose identity the sidecar captures).
    let before = monotonic_ns();
    let ret = unsafe { libc::sendmmsg(fd, msgvec, vlen, flags as _) };
    let errno = if ret < 0 { io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { 0 };
    let call_ns = monotonic_ns().saturating_sub(before);
    let msg_len: Vec<String> = batch
        .map(|b| (0..ret.max(0) as usize).map(|i| b.sent_len(i).to_string()).collect())
        .unwrap_or_default();
    let sizes: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    let dests: Vec<String> = dests.iter().map(|d| format!("\"{d}\"")).collect();
    println!(
        "{{\"scenario\":\"{scenario}\",\"pid\":{},\"tid\":{},\"sockfd\":{fd},\"msgvec\":{},\"vlen\":{vlen},\"flags\":{flags},\"ret\":{ret},\"errno\":{errno},\"sizes\":[{}],\"msg_len\":[{}],\"local\":\"{}\",\"peer\":\"{}\",\"dests\":[{}],\"call_ns\":{call_ns}}}",
        std::process::id(),
        gettid(),
        msgvec as u64,
        sizes.join(","),
        msg_len.join(","),
        address(fd, false),
        address(fd, true),
        dests.join(",")
    );
}

/// `CLOCK_MONOTONIC` in ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn send_batch(scenario: &str, fd: RawFd, sizes: &[usize], dests: &[Option<SocketAddr>], flags: i32) {
    let mut batch = Batch::new(sizes, dests);
    let ptr = batch.msgvec();
    let given: Vec<String> = (0..sizes.len())
        .map(|i| dests.get(i).copied().flatten().map(|d| d.to_string()).unwrap_or_default())
        .collect();
    call(scenario, fd, ptr, sizes.len() as u32, flags, sizes, &given, Some(&batch));
}

/// A receiver on loopback and a socket connected to it.
fn connected_udp(v6: bool) -> io::Result<(UdpSocket, UdpSocket)> {
    let any: SocketAddr = if v6 { (Ipv6Addr::LOCALHOST, 0).into() } else { (Ipv4Addr::LOCALHOST, 0).into() };
    let receiver = UdpSocket::bind(any)?;
    let sender = UdpSocket::bind(any)?;
    sender.connect(receiver.local_addr()?)?;
    Ok((sender, receiver))
}

fn scenario(name: &str) -> io::Result<()> {
    let sizes8: Vec<usize> = (100..108).collect();
    match name {
        "udp4" | "udp6" => {
            let (tx, _rx) = connected_udp(name == "udp6")?;
            send_batch(name, tx.as_raw_fd(), &sizes8, &[], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
        }
        "udp4-unconnected" => {
            let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let (a, b) = (Some(a.local_addr()?), Some(b.local_addr()?));
            // Repeated destinations take a different kernel path (before 6.6) than changing ones.
            send_batch(
                name,
                tx.as_raw_fd(),
                &[60, 61, 62, 63, 64, 65],
                &[a, a, b, b, a, b],
                libc::MSG_DONTWAIT,
            );
        }
        "unix" => {
            let (tx, _rx) = UnixDatagram::pair()?;
            send_batch(name, tx.as_raw_fd(), &[10, 20, 30, 40, 50], &[], 0);
        }
        "bad-fd" => {
            // An fd that was open a moment ago and is closed now: certainly not open.
            let fd = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.as_raw_fd();
            send_batch(name, fd, &[10, 20], &[], 0);
        }
        "not-socket" => {
            let file = std::fs::File::open("/dev/null")?;
            send_batch(name, file.as_raw_fd(), &[10, 20], &[], 0);
        }
        "bad-msgvec" => {
            let (tx, _rx) = connected_udp(false)?;
            call(name, tx.as_raw_fd(), inaccessible_page()?.cast(), 4, 0, &[], &[], None);
        }
        "bad-msg-name" => {
            // Message 1's destination pointer faults: the kernel sends message 0, fails 1 with
            // EFAULT before sending it, and returns 1 without reporting the error.
            let to = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let to = Some(to.local_addr()?);
            let mut batch = Batch::new(&[30, 31, 32], &[to, to, to]);
            batch.set_msg_name(1, inaccessible_page()?, std::mem::size_of::<libc::sockaddr_in>() as u32);
            let dest = to.map(|d| d.to_string()).unwrap_or_default();
            let ptr = batch.msgvec();
            let dests = [dest.clone(), "unreadable".into(), dest];
            call(name, tx.as_raw_fd(), ptr, 3, 0, &[30, 31, 32], &dests, Some(&batch));
        }
        "msgvec-at-page-end" => {
            // The msgvec ends where the caller's memory does: messages 0 and 1 end a readable
            // page, message 2 (of vlen 3) would lie in the inaccessible page after it. The
            // kernel sends 0 and 1, faults copying 2's header and returns 2; a tracer that reads
            // the whole msgvec at once must still see the destinations of the readable ones.
            let to = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let to = Some(to.local_addr()?);
            let mut batch = Batch::new(&[30, 31], &[to, to]);
            // SAFETY: the batch's two mmsghdrs, alive until after the call (they point into it).
            let headers = unsafe {
                std::slice::from_raw_parts(
                    batch.msgvec().cast::<u8>(),
                    2 * std::mem::size_of::<libc::mmsghdr>(),
                )
            };
            let msgvec = at_page_end(headers)?;
            let dest = to.map(|d| d.to_string()).unwrap_or_default();
            let dests = [dest.clone(), dest, "unreadable".into()];
            // No batch: the kernel writes msg_len into the copy, not into the batch.
            call(name, tx.as_raw_fd(), msgvec.cast(), 3, 0, &[30, 31], &dests, None);
            drop(batch);
        }
        "short-msg-name" => {
            // A destination whose msg_namelen is shorter than its family's address, ending where
            // the caller's memory ends: the kernel refuses it (EINVAL) and reads nothing past
            // the declared length; a tracer must not either. One call per case, each a udp4 or
            // udp6 socket's single message: an IPv4 head declared as 8 bytes (of the 16 the
            // kernel wants), an IPv6 name declared as 20 (of 24), and 1 byte.
            let v4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let v6 = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0))?;
            let mut sin = [0u8; 8];
            sin[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            sin[2..4].copy_from_slice(&53u16.to_be_bytes());
            sin[4..8].copy_from_slice(&[127, 0, 0, 1]);
            let mut sin6 = [0u8; 20];
            sin6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            sin6[2..4].copy_from_slice(&53u16.to_be_bytes());
            sin6[8..20].copy_from_slice(&Ipv6Addr::LOCALHOST.octets()[..12]);
            let family = (libc::AF_INET as u16).to_ne_bytes();
            let cases = [
                ("short-msg-name-v4", v4.as_raw_fd(), &sin[..]),
                ("short-msg-name-v6", v6.as_raw_fd(), &sin6[..]),
                ("short-msg-name-1", v4.as_raw_fd(), &family[..1]),
            ];
            for (label, fd, name) in cases {
                let mut batch = Batch::new(&[40], &[]);
                batch.set_msg_name(0, at_page_end(name)?, name.len() as u32);
                let ptr = batch.msgvec();
                call(label, fd, ptr, 1, 0, &[40], &["bad-length".into()], Some(&batch));
            }
        }
        "udp4-in-thread" => {
            // A worker thread with a name of its own, as in most servers.
            let worker = std::thread::Builder::new().name("sender-thread".into()).spawn(move || {
                let (tx, _rx) = connected_udp(false)?;
                send_batch("udp4-in-thread", tx.as_raw_fd(), &(100..108).collect::<Vec<_>>(), &[], 0);
                io::Result::Ok(())
            })?;
            worker.join().map_err(|_| io::Error::other("sender thread panicked"))??;
        }
        "slow-unix" => {
            // A blocking send into a full stream socket: the call lasts until a reader drains it
            // 100 ms later, so its duration is known to be at least that.
            let (tx, rx) = std::os::unix::net::UnixStream::pair()?;
            tx.set_nonblocking(true)?;
            let chunk = [0u8; 4096];
            while (&tx).write(&chunk).is_ok() {}
            tx.set_nonblocking(false)?;
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                rx.set_read_timeout(Some(Duration::from_millis(300))).ok();
                let mut buf = [0u8; 65536];
                while (&rx).read(&mut buf).is_ok_and(|n| n > 0) {}
            });
            send_batch(name, tx.as_raw_fd(), &[1000], &[], 0);
            reader.join().map_err(|_| io::Error::other("reader panicked"))?;
        }
        "refused-mid-batch" => {
            let (tx, _rx) = connected_udp(false)?;
            send_batch(name, tx.as_raw_fd(), &[10, 20, OVERSIZED, 30], &[], 0);
        }
        "vlen-zero" => {
            let (tx, _rx) = connected_udp(false)?;
            let mut batch = Batch::new(&[], &[]);
            let ptr = batch.msgvec();
            call(name, tx.as_raw_fd(), ptr, 0, 0, &[], &[], Some(&batch));
        }
        "null-msgvec" => {
            let (tx, _rx) = connected_udp(false)?;
            call(name, tx.as_raw_fd(), std::ptr::null_mut(), 4, 0, &[], &[], None);
        }
        "vlen-over-limit" => {
            // The kernel clamps vlen to UIO_MAXIOV (1024) and sends that many.
            let (tx, _rx) = connected_udp(false)?;
            send_batch(name, tx.as_raw_fd(), &[8; 1100], &[], libc::MSG_DONTWAIT);
        }
        "killed-mid-call" => {
            // The process exits with a thread blocked inside its call, killing it there.
            // Nothing is printed for that call.
            let reader = block_a_thread_in_sendmmsg()?;
            println!("{{\"scenario\":\"{name}\",\"pid\":{}}}", std::process::id());
            // The reader stays open: closing it first would wake the sender with ECONNRESET.
            std::mem::forget(reader);
            // SAFETY: ends the process now, with the sender thread still blocked in its call.
            unsafe { libc::_exit(0) };
        }
        "udp4-then-exec" => {
            // One udp4 call, then at once exec $WORKLOAD_EXEC_INTO (default: this binary) to
            // make one more udp4 call and exit, with the environment changed by every
            // WORKLOAD_EXEC_ENV_<NAME>=<value> (set as NAME=value): two programs, each with its
            // own identity, under one pid and one start time, gone as soon as they called.
            scenario("udp4")?;
            io::stdout().flush()?;
            let target = std::env::var_os("WORKLOAD_EXEC_INTO").unwrap_or_else(|| "/proc/self/exe".into());
            let mut next = std::process::Command::new(&target);
            next.arg("udp4");
            for (key, value) in std::env::vars_os() {
                let key = key.to_string_lossy().into_owned();
                if let Some(name) = key.strip_prefix("WORKLOAD_EXEC_ENV_") {
                    next.env(name, value).env_remove(&key);
                }
            }
            let err = std::os::unix::process::CommandExt::exec(&mut next);
            return Err(io::Error::other(format!("exec {}: {err}", target.to_string_lossy())));
        }
        "exec-mid-call" => {
            // A thread blocked inside its call, one call of this program, then exec into
            // $WORKLOAD_EXEC_INTO (default: this binary) to run `udp4` (and linger, see main): the exec kills the
            // blocked thread inside its call, and the same pid goes on as another program.
            let reader = block_a_thread_in_sendmmsg()?;
            scenario("udp4")?;
            io::stdout().flush()?;
            // Long enough for a tracer to read the first call while this program still runs.
            std::thread::sleep(Duration::from_millis(300));
            let target = std::env::var_os("WORKLOAD_EXEC_INTO").unwrap_or_else(|| "/proc/self/exe".into());
            let mut next = std::process::Command::new(&target);
            next.arg("udp4").env("WORKLOAD_LINGER_MS", "300");
            let err = std::os::unix::process::CommandExt::exec(&mut next);
            drop(reader);
            return Err(io::Error::other(format!("exec {}: {err}", target.to_string_lossy())));
        }
        blocked if blocked.starts_with("blocked-") => {
            let n: usize = blocked["blocked-".len()..].parse().map_err(|_| io::Error::other("blocked-N"))?;
            blocked_at_once(n)?;
        }
        threads if threads.starts_with("threads-") => {
            // N threads, one udp4 call each, all at once.
            let n: usize = threads["threads-".len()..].parse().map_err(|_| io::Error::other("threads-N"))?;
            // Two sockets a thread: more than the usual soft limit of 1024 files.
            raise_open_files_limit();
            let start = std::sync::Arc::new(std::sync::Barrier::new(n));
            let workers: Vec<_> = (0..n)
                .map(|_| {
                    let start = start.clone();
                    std::thread::spawn(move || {
                        let sockets = connected_udp(false);
                        // Every thread reaches the barrier, or the others would wait forever.
                        start.wait();
                        let (tx, _rx) = sockets?;
                        send_batch("threads", tx.as_raw_fd(), &[16, 16], &[], 0);
                        io::Result::Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| io::Error::other("thread panicked"))??;
            }
        }
        other => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unknown scenario {other}")))
        }
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one (a shell's 1024 is common, where the hard
/// limit allows 4096 or more).
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out-pointer; then the same struct back, soft limit raised.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `blocked-N`: one thread blocks in `sendmmsg` at once ("blocked-early"); then, after a line
/// (or the end) of stdin, so a tracer can be started in between, N more ("blocked"); once all
/// N + 1 are inside their call at the same time, every one is released. Each prints its call.
fn blocked_at_once(n: usize) -> io::Result<()> {
    let mut blocked = vec![blocked_sender("blocked-early")?];
    wait_inside_sendmmsg(&blocked)?;
    let mut line = String::new();
    io::stdin().read_line(&mut line)?;
    for _ in 0..n {
        blocked.push(blocked_sender("blocked")?);
    }
    wait_inside_sendmmsg(&blocked)?;
    let readers: Vec<_> = blocked
        .iter_mut()
        .map(|b| {
            let rx = b.rx.take().expect("a reader end");
            std::thread::spawn(move || {
                rx.set_read_timeout(Some(Duration::from_millis(300))).ok();
                let mut buf = [0u8; 65536];
                while (&rx).read(&mut buf).is_ok_and(|n| n > 0) {}
            })
        })
        .collect();
    for b in blocked {
        b.sender.join().map_err(|_| io::Error::other("sender panicked"))?;
    }
    for r in readers {
        r.join().map_err(|_| io::Error::other("reader panicked"))?;
    }
    Ok(())
}

/// A thread about to block in `sendmmsg` on a full stream socket, and that socket's other end.
struct BlockedSender {
    tid: u32,
    sender: std::thread::JoinHandle<()>,
    rx: Option<std::os::unix::net::UnixStream>,
}

fn blocked_sender(label: &'static str) -> io::Result<BlockedSender> {
    let (tx, rx) = std::os::unix::net::UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    while (&tx).write(&[0u8; 4096]).is_ok() {}
    tx.set_nonblocking(false)?;
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        let _ = tid_tx.send(gettid());
        send_batch(label, tx.as_raw_fd(), &[4096], &[], 0);
    });
    let tid = tid_rx.recv().map_err(|_| io::Error::other("sender thread died"))?;
    Ok(BlockedSender { tid, sender, rx: Some(rx) })
}

/// Waits until every thread is inside `sendmmsg` (its `/proc` `syscall` file names it), at most
/// 10 s.
fn wait_inside_sendmmsg(threads: &[BlockedSender]) -> io::Result<()> {
    let inside = |tid: u32| {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
            .is_ok_and(|s| s.split_whitespace().next() == Some(&libc::SYS_sendmmsg.to_string()))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !threads.iter().all(|t| inside(t.tid)) {
        if Instant::now() > deadline {
            return Err(io::Error::other("threads did not all block in sendmmsg within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Starts a thread that blocks in `sendmmsg` on a full stream socket nobody reads, and returns
/// once it is inside the call; the reader end is returned so the caller decides when it closes.
fn block_a_thread_in_sendmmsg() -> io::Result<std::os::unix::net::UnixStream> {
    let (tx, rx) = std::os::unix::net::UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    while (&tx).write(&[0u8; 4096]).is_ok() {}
    tx.set_nonblocking(false)?;
    std::thread::spawn(move || {
        let mut batch = Batch::new(&[4096], &[]);
        let _ = batch.send(tx.as_raw_fd(), 0);
    });
    std::thread::sleep(Duration::from_millis(200));
    Ok(rx)
}

/// What `loop` is asked to do.
struct LoopSpec {
    seconds: f64,
    vlen: usize,
    /// Calls per second over all threads; None: back to back.
    rate: Option<f64>,
    threads: usize,
    payload: usize,
}

/// One sender's totals, and when it started and stopped sending.
struct SenderTotals {
    calls: u64,
    messages: u64,
    failed_calls: u64,
    started: Instant,
    finished: Instant,
}

/// Calls for `seconds` on `threads` connected sockets, one per thread, back to back or paced to
/// `rate` calls/s in all; each socket's receiver is drained by a thread of its own so it never
/// fills. Every sender starts at the same moment; the report covers all of them.
fn run_loop(spec: LoopSpec) -> io::Result<()> {
    let LoopSpec { seconds, vlen, rate, threads, payload } = spec;
    // Senders start together once every socket is set up.
    let start = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let per_thread_rate = rate.map(|r| r / threads as f64);
    let mut senders = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (tx, rx) = connected_udp(false)?;
        // Blocks until the process exits, however slow the pace: a receiver that gave up would
        // close its socket and fail the sender's next call with ECONNREFUSED.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while rx.recv(&mut buf).is_ok() {}
        });
        let start = start.clone();
        let publish = std::env::var_os("WORKLOAD_THREAD_CONTEXT").is_some_and(|v| v == "1");
        senders.push(std::thread::spawn(move || {
            let _published = publish.then(|| otel_sendmmsg_context::publish([0x4b; 16], [0xf9; 8], true));
            let sizes = vec![payload; vlen];
            let mut batch = Batch::new(&sizes, &[]);
            start.wait();
            let started = Instant::now();
            let mut totals =
                SenderTotals { calls: 0, messages: 0, failed_calls: 0, started, finished: started };
            let deadline = started + Duration::from_secs_f64(seconds);
            while Instant::now() < deadline {
                // SAFETY: the batch's buffers live for the whole loop.
                let ret = unsafe { libc::sendmmsg(tx.as_raw_fd(), batch.msgvec(), vlen as u32, 0) };
                totals.calls += 1;
                if ret < 0 {
                    totals.failed_calls += 1;
                }
                totals.messages += ret.max(0) as u64;
                if let Some(rate) = per_thread_rate {
                    let due = started + Duration::from_secs_f64(totals.calls as f64 / rate);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
            totals.finished = Instant::now();
            totals
        }));
    }
    let totals = senders
        .into_iter()
        .map(|s| s.join().map_err(|_| io::Error::other("sender thread panicked")))
        .collect::<io::Result<Vec<_>>>()?;
    let (calls, messages, failed_calls) =
        totals.iter().fold((0, 0, 0), |(c, m, f), t| (c + t.calls, m + t.messages, f + t.failed_calls));
    // From the first sender's start to the last one's end.
    let first = totals.iter().map(|t| t.started).min().expect("at least one sender");
    let last = totals.iter().map(|t| t.finished).max().expect("at least one sender");
    let secs = last.duration_since(first).as_secs_f64();
    println!(
        "{{\"scenario\":\"loop\",\"pid\":{},\"calls\":{calls},\"messages\":{messages},\"seconds\":{secs:.3},\"calls_per_second\":{:.0},\"messages_per_second\":{:.0},\"failed_calls\":{failed_calls},\"threads\":{threads},\"vlen\":{vlen},\"payload\":{payload}}}",
        std::process::id(),
        calls as f64 / secs,
        messages as f64 / secs,
    );
    Ok(())
}

/// `loop`'s arguments: SECONDS VLEN [CALLS_PER_SECOND] [THREADS] [PAYLOAD_BYTES].
fn loop_spec(args: &[String]) -> io::Result<LoopSpec> {
    fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str, default: T) -> io::Result<T> {
        match args.get(i) {
            None => Ok(default),
            Some(s) => s.parse().map_err(|_| io::Error::other(format!("loop: bad {name} {s:?}"))),
        }
    }
    let spec = LoopSpec {
        seconds: arg(args, 0, "SECONDS", 1.0)?,
        vlen: arg(args, 1, "VLEN", 8)?,
        rate: Some(arg(args, 2, "CALLS_PER_SECOND", 0.0)?).filter(|r| *r > 0.0),
        threads: arg(args, 3, "THREADS", 1)?,
        payload: arg(args, 4, "PAYLOAD_BYTES", 64)?,
    };
    if spec.threads == 0 {
        return Err(io::Error::other("loop: THREADS must be at least 1"));
    }
    Ok(spec)
}

/// `clone3(2)`'s argument (linux/sched.h), up to `set_tid_size`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// Runs this program with `args` as a child whose pid is `pid`, and waits for it: the kernel
/// reuses pids, and this makes a reuse happen when a test wants it.
fn run_at_pid(pid: &str, args: &[String]) -> io::Result<ExitCode> {
    let pid: libc::pid_t = pid.parse().map_err(|_| io::Error::other("at-pid: PID must be a number"))?;
    // Everything the child needs is made before the clone: between clone and exec it may only
    // make system calls.
    let exe = std::ffi::CString::new("/proc/self/exe").expect("no NUL");
    let argv: Vec<std::ffi::CString> = std::iter::once("sendmmsg-workload")
        .chain(args.iter().map(String::as_str))
        .map(|a| std::ffi::CString::new(a).map_err(|_| io::Error::other("an argument holds a NUL")))
        .collect::<io::Result<_>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let set_tid = [pid];
    let clone = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: a valid clone_args of the size given; this program is single-threaded here (it
    // runs first in main), so the child may run on after the clone until its exec.
    let child = unsafe { libc::syscall(libc::SYS_clone3, &clone, std::mem::size_of::<CloneArgs>()) };
    if child < 0 {
        return Err(io::Error::other(format!("clone3 at pid {pid}: {}", io::Error::last_os_error())));
    }
    if child == 0 {
        // SAFETY: the pointers outlive the call (execv returns only on failure).
        unsafe {
            libc::execv(exe.as_ptr(), argv_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(child as libc::pid_t, &mut status, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A process context published by this process: the header's page, and the payloads it has
/// pointed to (kept, so a pointer never dangles).
struct PublishedContext {
    header: *mut u8,
    payloads: Vec<Vec<u8>>,
}

// SAFETY: the page is written by one thread at a time (the update thread, after main is done
// with it).
unsafe impl Send for PublishedContext {}

/// `KEY=VALUE,...` as a `ProcessContext{resource = 1}` payload.
fn context_payload(attributes: &str) -> Vec<u8> {
    use opentelemetry_proto::tonic::{
        common::v1::{any_value::Value, AnyValue, KeyValue},
        resource::v1::Resource,
    };
    use prost::Message;
    let attributes = attributes
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }),
            ..Default::default()
        })
        .collect();
    let resource = Resource { attributes, ..Default::default() }.encode_to_vec();
    // Field 1, length-delimited.
    let mut payload = vec![0x0a];
    prost::encoding::encode_varint(resource.len() as u64, &mut payload);
    payload.extend(resource);
    payload
}

fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `$WORKLOAD_PROCESS_CONTEXT`: maps a memfd named OTEL_CTX as the OTEP's publication protocol
/// does, and writes the header last-timestamp-last.
fn publish_context(spec: &str) -> io::Result<PublishedContext> {
    let (kind, attributes) = spec.split_once(':').unwrap_or((spec, ""));
    // SAFETY: plain syscalls; the mapping lives to the end of the process.
    let header = unsafe {
        let fd = libc::memfd_create(c"OTEL_CTX".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
        if fd < 0 || libc::ftruncate(fd, 4096) != 0 {
            return Err(io::Error::last_os_error());
        }
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            fd,
            0,
        );
        libc::close(fd);
        if page == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        libc::madvise(page, 4096, libc::MADV_DONTFORK);
        page.cast::<u8>()
    };
    let payload = match kind {
        "valid" | "torn" => context_payload(attributes),
        "malformed" => vec![0xff; 64],
        other => return Err(io::Error::other(format!("WORKLOAD_PROCESS_CONTEXT: unknown kind {other:?}"))),
    };
    // SAFETY: the header lies in the page mapped above, 8-byte aligned.
    unsafe {
        std::ptr::copy_nonoverlapping(b"OTEL_CTX".as_ptr(), header, 8);
        header.add(8).cast::<u32>().write_volatile(2);
        header.add(12).cast::<u32>().write_volatile(payload.len() as u32);
        header.add(24).cast::<u64>().write_volatile(payload.as_ptr() as u64);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let stamp = if kind == "torn" { 0 } else { boottime_ns() };
        (*header.add(16).cast::<std::sync::atomic::AtomicU64>())
            .store(stamp, std::sync::atomic::Ordering::SeqCst);
        libc::prctl(0x5356_4d41, 0, header as libc::c_ulong, 4096, c"OTEL_CTX".as_ptr());
    }
    Ok(PublishedContext { header, payloads: vec![payload] })
}

/// The OTEP's updating protocol: timestamp 0, new payload fields, a new (later) timestamp.
fn update_context(context: &mut PublishedContext, attributes: &str) {
    use std::sync::atomic::{fence, AtomicU64, Ordering};
    let payload = context_payload(attributes);
    // SAFETY: the header page of `publish_context`, which is never unmapped.
    unsafe {
        let stamp = &*context.header.add(16).cast::<AtomicU64>();
        let old = stamp.swap(0, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        context.header.add(12).cast::<u32>().write_volatile(payload.len() as u32);
        context.header.add(24).cast::<u64>().write_volatile(payload.as_ptr() as u64);
        fence(Ordering::SeqCst);
        stamp.store(boottime_ns().max(old + 1), Ordering::SeqCst);
    }
    context.payloads.push(payload);
}

/// `$WORKLOAD_PROCESS_CONTEXT` and `$WORKLOAD_PROCESS_CONTEXT_UPDATE`, if set.
fn process_context_from_env() -> io::Result<()> {
    let Ok(spec) = std::env::var("WORKLOAD_PROCESS_CONTEXT") else { return Ok(()) };
    let mut context = publish_context(&spec)?;
    match std::env::var("WORKLOAD_PROCESS_CONTEXT_UPDATE") {
        Ok(update) => {
            let (after, attributes) = update.split_once(':').unwrap_or((&update, ""));
            let after: f64 = after
                .parse()
                .map_err(|_| io::Error::other("WORKLOAD_PROCESS_CONTEXT_UPDATE: bad SECONDS"))?;
            let attributes = attributes.to_owned();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs_f64(after));
                update_context(&mut context, &attributes);
                // Kept published to the end of the process.
                std::mem::forget(context);
            });
        }
        Err(_) => std::mem::forget(context),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Before the context is published: the child of at-pid publishes its own.
    if let (Some("at-pid"), Some(pid)) = (args.first().map(String::as_str), args.get(1)) {
        return run_at_pid(pid, &args[2..]).unwrap_or_else(|e| {
            eprintln!("sendmmsg-workload: {e}");
            ExitCode::FAILURE
        });
    }
    if let Err(e) = process_context_from_env() {
        eprintln!("sendmmsg-workload: publishing the process context: {e}");
        return ExitCode::FAILURE;
    }
    let result = match args.first().map(String::as_str) {
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: sendmmsg-workload SCENARIO... | loop SECONDS VLEN [CALLS_PER_SECOND] [THREADS] [PAYLOAD_BYTES]",
        )),
        Some("loop") => loop_spec(&args[1..]).and_then(run_loop),
        Some(_) => args.iter().try_for_each(|s| scenario(s)),
    };
    // $WORKLOAD_LINGER_MS: stay a while after the calls, as a server would, so a tracer
    // finds the process still there when it reads them.
    if let Some(ms) = std::env::var("WORKLOAD_LINGER_MS").ok().and_then(|ms| ms.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sendmmsg-workload: {e}");
            ExitCode::FAILURE
        }
    }
}
