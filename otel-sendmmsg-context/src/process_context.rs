//! Publishes the application's resource as its OTEP 4719 "process context"
//! (oteps/profiles/4719-process-ctx.md), which otel-sendmmsg and the OpenTelemetry eBPF profiler
//! read to put their telemetry under the application's own resource.
//!
//! Publication follows the OTEP: a memfd named `OTEL_CTX` (`MFD_CLOEXEC | MFD_ALLOW_SEALING |
//! MFD_NOEXEC_SEAL`, without the last on kernels that lack it), mapped privately and closed; an
//! anonymous mapping when memfd is refused; `MADV_DONTFORK` so a child never shows its parent's
//! resource; the mapping named `OTEL_CTX` with `prctl(PR_SET_VMA_ANON_NAME)` (an error on kernels
//! without `CONFIG_ANON_VMA_NAME` is ignored, except for the anonymous fallback, which readers
//! could not find). The 32-byte header sits at the start of the mapping; the payload, a protobuf
//! `ProcessContext{Resource resource = 1; repeated KeyValue attributes = 2}`, in memory of its
//! own. `monotonic_published_at_ns` (`CLOCK_BOOTTIME`) is written last, after a full fence, and
//! set to 0 while an update changes the payload, so a reader never takes a half-written context.
//!
//! Every payload carries, in `attributes`, the thread context's reference data (OTEP 4947):
//! `threadlocal.schema_version` and `threadlocal.attribute_key_map`. Readers look for the TLS
//! variable only once they have seen them, so the first span a thread publishes publishes a
//! context without a resource if the application has not published one; [`publish_resource`]
//! then replaces it.
//!
//! The payload is encoded here by hand: the message needs three field kinds (varint lengths,
//! strings, nested messages), a few dozen lines, and this library is linked into applications
//! that should not carry a protobuf runtime for it.

use std::{
    ffi::CStr,
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, Ordering},
        Mutex, Once, TryLockError,
    },
};

use crate::thread_context::{ATTRIBUTE_KEYS, SCHEMA_VERSION};

/// The header's size; the mapping is one page.
const HEADER_BYTES: usize = 32;
const SIGNATURE: &[u8; 8] = b"OTEL_CTX";
const VERSION: u32 = 2;
/// The OTEP's readers take at most 64 KiB.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// `MFD_NOEXEC_SEAL` (Linux 6.3), by value: older libc crates do not name it.
const MFD_NOEXEC_SEAL: libc::c_uint = 0x0008;
/// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, ...)` (Linux 5.17).
const PR_SET_VMA: libc::c_int = 0x5356_4d41;
const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;
const NAME: &CStr = c"OTEL_CTX";

/// Why the context could not be published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The encoded resource is over [`MAX_PAYLOAD`].
    TooLarge,
    /// A system call failed with this errno.
    Os(i32),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::TooLarge => write!(f, "the resource encodes to more than {MAX_PAYLOAD} bytes"),
            PublishError::Os(errno) => write!(f, "{}", std::io::Error::from_raw_os_error(*errno)),
        }
    }
}

impl std::error::Error for PublishError {}

/// The published context: the OTEP allows one per process.
struct Published {
    /// The process that mapped it: a child after `fork` has no such mapping (`MADV_DONTFORK`).
    pid: libc::pid_t,
    header: *mut u8,
    page: usize,
    /// The payload the header points to; replaced, never changed in place.
    payload: Box<[u8]>,
    published_at_ns: u64,
}

// SAFETY: `header` is a mapping only this module touches, always under the mutex.
unsafe impl Send for Published {}

static PUBLISHED: Mutex<Option<Published>> = Mutex::new(None);

/// Publishes the process's resource (`service.name` and other string attributes), or, when it
/// is published already, updates it following the OTEP's updating protocol.
pub fn publish_resource(service_name: &str, attributes: &[(&str, &str)]) -> Result<(), PublishError> {
    let payload = encode(service_name, attributes).into_boxed_slice();
    if payload.len() > MAX_PAYLOAD {
        return Err(PublishError::TooLarge);
    }
    let mut published = PUBLISHED.lock().unwrap_or_else(|p| p.into_inner());
    put_payload(&mut published, payload)?;
    mark_thread_context_announced();
    Ok(())
}

/// Puts `payload` in the context: an update of this process's, else a new one.
fn put_payload(published: &mut Option<Published>, payload: Box<[u8]>) -> Result<(), PublishError> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    match published.as_mut() {
        Some(current) if current.pid == pid => current.update(payload),
        // A context inherited through fork is not mapped here: a fresh one.
        _ => *published = Some(Published::create(pid, payload)?),
    }
    Ok(())
}

/// Whether this process's context already carries the thread context's reference data, or an
/// attempt to publish it failed (it is not retried on every span).
static THREAD_CONTEXT_ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// Makes sure a process context names the thread context's schema before a span is published:
/// one relaxed load on every publish, the rest once per process.
#[inline]
pub(crate) fn ensure_thread_context_announced() {
    if !THREAD_CONTEXT_ANNOUNCED.load(Ordering::Relaxed) {
        announce_thread_context();
    }
}

fn mark_thread_context_announced() {
    // A child after fork has no mapping (MADV_DONTFORK) but a copy of the flag: let its first
    // span announce again. Registered once, before the flag is first set; handlers survive fork.
    static AT_FORK: Once = Once::new();
    AT_FORK.call_once(|| {
        extern "C" fn in_child() {
            THREAD_CONTEXT_ANNOUNCED.store(false, Ordering::Relaxed);
        }
        // SAFETY: registers a handler that only stores to an atomic. Failing (ENOMEM) only
        // means a forked child's spans go unannounced.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
    THREAD_CONTEXT_ANNOUNCED.store(true, Ordering::Relaxed);
}

#[cold]
fn announce_thread_context() {
    // Not `lock`: in a child forked while another thread held the lock, it would never be
    // released. Busy means another thread is publishing, and every payload carries the
    // reference data: try again on a later span.
    let mut published = match PUBLISHED.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    // SAFETY: getpid has no preconditions.
    let ours = published.as_ref().is_some_and(|p| p.pid == unsafe { libc::getpid() });
    if !ours {
        // A failure leaves the thread context working, and readers without the schema, which
        // they treat as no thread context; a later `publish_resource` may still succeed.
        let _ = put_payload(&mut published, encode_payload(None).into_boxed_slice());
    }
    mark_thread_context_announced();
}

/// The same as [`publish_resource`], for code that reads better saying it updates.
pub fn update_resource(service_name: &str, attributes: &[(&str, &str)]) -> Result<(), PublishError> {
    publish_resource(service_name, attributes)
}

/// Removes the published context (e.g. at SDK shutdown); the OTEP also allows keeping it to the
/// end of the process. Spans published after it do not publish a new one.
pub fn unpublish_resource() {
    let mut published = PUBLISHED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(current) = published.take() {
        // SAFETY: getpid has no preconditions; the mapping is ours (same pid) and nothing else
        // refers to it once taken out of PUBLISHED.
        if current.pid == unsafe { libc::getpid() } {
            unsafe { libc::munmap(current.header.cast(), current.page) };
        }
    }
}

impl Published {
    fn create(pid: libc::pid_t, payload: Box<[u8]>) -> Result<Published, PublishError> {
        // SAFETY: sysconf has no preconditions.
        let page =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(HEADER_BYTES);
        let (header, memfd) = map(page)?;
        let mut published = Published { pid, header, page, payload, published_at_ns: 0 };
        // SAFETY: `header` is a fresh private mapping of `page` bytes.
        let advised = unsafe { libc::madvise(header.cast(), page, libc::MADV_DONTFORK) };
        if advised != 0 {
            let errno = errno();
            // SAFETY: as above; nothing refers to the mapping yet.
            unsafe { libc::munmap(header.cast(), page) };
            return Err(PublishError::Os(errno));
        }
        // SAFETY: the header lies at the start of the mapping, `HEADER_BYTES` <= `page`.
        unsafe {
            std::ptr::copy_nonoverlapping(SIGNATURE.as_ptr(), header, 8);
            std::ptr::write_volatile(header.add(8).cast::<u32>(), VERSION);
        }
        published.point_at_payload();
        fence(Ordering::SeqCst);
        published.stamp(now_ns());
        if !published.name() && !memfd {
            // Neither a memfd nor a named mapping: no reader could find it (the OTEP's rule).
            // SAFETY: our mapping, not handed out.
            unsafe { libc::munmap(header.cast(), page) };
            return Err(PublishError::Os(libc::ENOTSUP));
        }
        Ok(published)
    }

    /// The OTEP's updating protocol: timestamp 0, fence, new payload fields, fence, new
    /// timestamp (later than the last), name again.
    fn update(&mut self, payload: Box<[u8]>) {
        self.published_at().store(0, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let old = std::mem::replace(&mut self.payload, payload);
        self.point_at_payload();
        fence(Ordering::SeqCst);
        self.stamp(now_ns().max(self.published_at_ns + 1));
        // A reader that copied the old payload sees the new timestamp and reads again.
        drop(old);
        self.name();
    }

    fn point_at_payload(&mut self) {
        let size = u32::try_from(self.payload.len()).expect("at most MAX_PAYLOAD");
        // SAFETY: inside the header, aligned (the mapping is page-aligned).
        unsafe {
            std::ptr::write_volatile(self.header.add(12).cast::<u32>(), size);
            std::ptr::write_volatile(self.header.add(24).cast::<u64>(), self.payload.as_ptr() as u64);
        }
    }

    fn stamp(&mut self, ns: u64) {
        self.published_at_ns = ns;
        self.published_at().store(ns, Ordering::SeqCst);
    }

    fn published_at(&self) -> &AtomicU64 {
        // SAFETY: offset 16 of a page-aligned mapping is 8-byte aligned, and lives as long as
        // `self` (unmapped only after `self` is taken out of PUBLISHED).
        unsafe { &*self.header.add(16).cast::<AtomicU64>() }
    }

    /// Names the mapping `OTEL_CTX`; `false` where the kernel cannot.
    fn name(&self) -> bool {
        // SAFETY: names our own mapping; the name is a NUL-terminated constant.
        unsafe {
            libc::prctl(
                PR_SET_VMA,
                PR_SET_VMA_ANON_NAME,
                self.header as libc::c_ulong,
                self.page,
                NAME.as_ptr(),
            ) == 0
        }
    }
}

/// A private, writable page: of a memfd named `OTEL_CTX` when the kernel allows (`true`), else
/// anonymous.
fn map(page: usize) -> Result<(*mut u8, bool), PublishError> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a NUL-terminated name.
    let mut fd = unsafe { libc::memfd_create(NAME.as_ptr(), flags | MFD_NOEXEC_SEAL) };
    if fd < 0 {
        // SAFETY: as above; kernels before 6.3 refuse MFD_NOEXEC_SEAL.
        fd = unsafe { libc::memfd_create(NAME.as_ptr(), flags) };
    }
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let length = libc::off_t::try_from(page).unwrap_or(4096);
    // SAFETY: `fd` is ours; the mapping is checked below; the fd is closed once mapped.
    let mapped = unsafe {
        if fd >= 0 && libc::ftruncate(fd, length) == 0 {
            let mapped = libc::mmap(std::ptr::null_mut(), page, rw, libc::MAP_PRIVATE, fd, 0);
            libc::close(fd);
            (mapped != libc::MAP_FAILED).then_some((mapped, true))
        } else {
            if fd >= 0 {
                libc::close(fd);
            }
            None
        }
    };
    let (mapped, memfd) = match mapped {
        Some(m) => m,
        None => {
            // SAFETY: a fresh anonymous mapping.
            let mapped = unsafe {
                libc::mmap(std::ptr::null_mut(), page, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
            };
            if mapped == libc::MAP_FAILED {
                return Err(PublishError::Os(errno()));
            }
            (mapped, false)
        }
    };
    Ok((mapped.cast(), memfd))
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64).max(1)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// The payload for a resource of `service.name` (first, when not empty) and `attributes`:
/// `ProcessContext{resource = 1: Resource{attributes = 1: repeated KeyValue}, attributes = 2:
/// repeated KeyValue}`, the second with the thread context's reference data.
pub fn encode(service_name: &str, attributes: &[(&str, &str)]) -> Vec<u8> {
    let mut resource = Vec::new();
    let service = (!service_name.is_empty()).then_some(("service.name", service_name));
    for (key, value) in
        service.into_iter().chain(attributes.iter().copied().filter(|(k, _)| *k != "service.name"))
    {
        key_value(&mut resource, 1, key, &string_value(value));
    }
    encode_payload(Some(&resource))
}

/// `resource` is an encoded `Resource`; `None` leaves the field out, which the proto defines as
/// "no resource info is known" (a reader falls back on what it knows of the process).
fn encode_payload(resource: Option<&[u8]>) -> Vec<u8> {
    let mut context = Vec::new();
    if let Some(resource) = resource {
        field(&mut context, 1, resource);
    }
    // OTEP 4947, "Thread-Local Reference Data".
    key_value(&mut context, 2, "threadlocal.schema_version", &string_value(SCHEMA_VERSION));
    let mut names = Vec::new();
    for name in ATTRIBUTE_KEYS {
        field(&mut names, 1, &string_value(name)); // ArrayValue.values = 1, by key index
    }
    let mut key_map = Vec::new();
    field(&mut key_map, 5, &names); // AnyValue.array_value = 5, present even when empty
    key_value(&mut context, 2, "threadlocal.attribute_key_map", &key_map);
    context
}

/// Field `number` of `out`: a `KeyValue{key = 1, value = 2}` of an encoded `AnyValue`.
fn key_value(out: &mut Vec<u8>, number: u64, key: &str, any_value: &[u8]) {
    let mut kv = Vec::new();
    field(&mut kv, 1, key.as_bytes());
    field(&mut kv, 2, any_value);
    field(out, number, &kv);
}

/// `AnyValue{string_value = 1}`.
fn string_value(value: &str) -> Vec<u8> {
    let mut any_value = Vec::new();
    field(&mut any_value, 1, value.as_bytes());
    any_value
}

/// A length-delimited field (wire type 2): strings and nested messages alike.
fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, number << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
#[path = "../tests/support/protobuf.rs"]
mod protobuf;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_otep_message() {
        // Checked by hand against the protos: 0a (resource) len, 0a (attribute) len,
        // 0a 01 'k' (key), 12 03 (value) 0a 01 'v' (string_value); the attributes follow.
        let resource = [0x0a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'k', 0x12, 0x03, 0x0a, 0x01, b'v'];
        assert!(encode("", &[("k", "v")]).starts_with(&resource));
        let long = "x".repeat(300);
        let bytes = encode(&long, &[]);
        // A 300-byte string's length is the two-byte varint ac 02.
        assert!(bytes.windows(2).any(|w| w == [0xac, 0x02]));
        assert_eq!(encode("s", &[("service.name", "ignored")]), encode("s", &[]));
    }

    #[test]
    fn every_payload_names_the_thread_context_schema() {
        let decoded = protobuf::process_context(&encode("svc", &[("service.version", "1")]));
        let resource = [("service.name", "svc"), ("service.version", "1")];
        let resource = resource.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec();
        assert_eq!(decoded.resource, Some(resource));
        assert_eq!(decoded.attributes, protobuf::threadlocal_attributes());

        // Before the application publishes a resource: no resource field at all.
        let decoded = protobuf::process_context(&encode_payload(None));
        assert_eq!(decoded.resource, None);
        assert_eq!(decoded.attributes, protobuf::threadlocal_attributes());
        // The empty key map is still an array: 12 (value) 02, 2a 00 (array_value, empty).
        assert!(encode_payload(None).ends_with(b"attribute_key_map\x12\x02\x2a\x00"));
    }

    #[test]
    fn publishing_maps_a_header_readers_can_find_and_updates_restamp_it() {
        publish_resource("svc", &[("service.version", "1")]).unwrap();
        let (header, first) = {
            let published = PUBLISHED.lock().unwrap();
            let p = published.as_ref().unwrap();
            (p.header as usize, p.published_at_ns)
        };
        // SAFETY: our own live mapping; the test reads the header as a reader would.
        let bytes = unsafe { std::slice::from_raw_parts(header as *const u8, HEADER_BYTES) };
        assert_eq!(&bytes[..8], SIGNATURE);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 2);
        let size = u32::from_ne_bytes(bytes[12..16].try_into().unwrap()) as usize;
        assert_eq!(size, encode("svc", &[("service.version", "1")]).len());
        assert_ne!(first, 0);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps.lines().find(|l| l.starts_with(&format!("{header:x}-"))).unwrap();
        assert!(line.contains("OTEL_CTX"), "{line}");

        publish_resource("svc", &[("service.version", "2")]).unwrap();
        let published = PUBLISHED.lock().unwrap();
        let p = published.as_ref().unwrap();
        assert_eq!(p.header as usize, header, "updated in place");
        assert!(p.published_at_ns > first);
        assert_eq!(p.published_at().load(Ordering::SeqCst), p.published_at_ns);
        drop(published);
        unpublish_resource();
        assert!(PUBLISHED.lock().unwrap().is_none());
    }
}
