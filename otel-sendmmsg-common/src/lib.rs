//! Records shared by the BPF programs (which write them) and the sidecar (which reads them).
//!
//! Everything here is `#[repr(C)]` with explicit padding, so both sides agree on the layout
//! byte for byte; the sizes are checked at compile time below.
#![cfg_attr(target_arch = "bpf", no_std)]

/// Bumped whenever [`CallRecord`]'s layout changes, so a sidecar never misreads records from a
/// BPF object of another layout.
pub const RECORD_VERSION: u32 = 5;

pub mod call_metrics;

/// How many messages of one call get their own result and time in a record.
///
/// Batched senders commonly use 32 to 64 messages per call (QUIC stacks and DNS servers batch up
/// to 64), so 64 covers a whole typical batch; beyond it, the counters still cover every message.
/// 64 slots keep a record at about 2.7 KiB, so a 4 MiB ring buffer holds ~1,500 calls.
pub const MAX_MESSAGE_DETAIL: usize = 64;

/// The kernel clamps `vlen` to `UIO_MAXIOV` (1024), so no call has more messages than this.
pub const MAX_VLEN: u32 = 1024;

/// What became of reading a message's explicit destination (`msg_name`) at entry.
pub mod name_status {
    /// No `msg_name`: the message goes to the connected peer.
    pub const NONE: u8 = 0;
    /// Read: an IPv4 or IPv6 address and port.
    pub const READ: u8 = 1;
    /// The pointer (or the `msgvec` entry holding it) could not be read.
    pub const UNREADABLE: u8 = 2;
    /// Read, but of another family (only the family is kept).
    pub const OTHER_FAMILY: u8 = 3;
    /// `msg_namelen` is negative, or shorter than the address of the family it declares (the
    /// kernel's minimums: `sizeof(struct sockaddr_in)` = 16 in `udp_sendmsg`,
    /// `SIN6_LEN_RFC2133` = 24 in `udpv6_sendmsg`; 2 for any family). The kernel refuses the
    /// message (EINVAL), so there is no destination to report; nothing past the declared length
    /// was read. The family is kept when the declared length covers it.
    pub const BAD_LENGTH: u8 = 4;
}

/// A message's explicit destination, as the caller gave it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    /// One of [`name_status`].
    pub status: u8,
    pub _pad: u8,
    /// `AF_INET`, `AF_INET6`, ...
    pub family: u16,
    /// Network byte order, as in the sockaddr.
    pub port_be: u16,
    pub _pad2: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
}

/// The result of one message of a call, as the per-message hook saw it, and its destination
/// as the entry hook read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageResult {
    /// Bytes sent (>= 0) or a negative errno.
    pub ret: i32,
    pub _pad: u32,
    /// When the message's send returned, in ns since the call's entry.
    pub offset_ns: u64,
    pub dest: Destination,
}

/// The socket a call sent on, read from the kernel's `struct sock` at exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketInfo {
    /// 0 when unknown: no kernel BTF, not a socket, or the fd was gone.
    pub family: u16,
    /// `sk_protocol`: `IPPROTO_UDP`, `IPPROTO_TCP`, ... (0 for unix sockets).
    pub protocol: u16,
    /// `SOCK_DGRAM`, `SOCK_STREAM`, ...
    pub sock_type: u16,
    /// Host byte order (`skc_num`).
    pub local_port: u16,
    /// Network byte order (`skc_dport`); 0 when not connected.
    pub peer_port_be: u16,
    pub _pad: [u16; 3],
    /// IPv4 in the first 4 bytes, or IPv6; all zero when unbound or not connected.
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
}

/// A thread's active span, as OpenTelemetry eBPF Instrumentation shares it in its pinned map
/// `/sys/fs/bpf/otel/traces_ctx_v1` (key: `u64 pid_tgid`); the OpenTelemetry eBPF profiler
/// reads the same map. Byte order as in the W3C `traceparent`. Aligned to 8 (same size and
/// offsets as OBI's byte arrays) so BPF copies it with three loads, not a `memmove` call.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

pub mod record_flags {
    /// `CallRecord::parent` holds the caller's active span.
    pub const PARENT: u32 = 1;
    /// The detail slots hold each sent message's `msg_len`, read from the caller's `msgvec` at
    /// exit (no per-message hook: no errors, no times, `min(ret, 64)` slots).
    pub const SIZES_FROM_MSG_LEN: u32 = 2;
    /// The call is counted in the call metrics but left out of spans (the sampler, or spans
    /// turned off): the exit hook submits no record for it.
    pub const NO_SPAN: u32 = 4;
}

/// OTEP 4947 (opentelemetry-specification `oteps/profiles/4947-thread-ctx.md`): the ELF TLS
/// symbol through which an SDK or tracer publishes each thread's active span, a pointer to a
/// Thread-Local Context Record.
pub mod thread_context {
    /// The symbol's name, as `.dynsym` holds it.
    pub const SYMBOL: &str = "otel_thread_ctx_v1";
    /// The record's fixed header: trace-id[16], span-id[8], valid u8, trace-flags u8,
    /// attrs-data-size u16 (packed, host-endian). Nothing past it is ever read: the attributes
    /// are for profilers, a span needs only the ids.
    pub const HEADER_BYTES: usize = 28;
    pub const VALID_AT: usize = 24;
    pub const FLAGS_AT: usize = 25;
    pub const ATTRS_SIZE_AT: usize = 26;
    /// The OTEP recommends a whole record of at most 640 bytes (the eBPF profiler's limit): a
    /// header claiming more attributes than fit is not a record a conformant writer made.
    pub const MAX_ATTRS_BYTES: u16 = 640 - HEADER_BYTES as u16;
    /// The W3C trace flag "sampled".
    pub const FLAG_SAMPLED: u8 = 1;
}

/// How the BPF side reaches a thread's `otel_thread_ctx_v1` in one process, worked out by user
/// space from the process's ELF files and relocations (x86-64: the thread pointer is the task's
/// `fsbase`; variant II TLS, the DTV pointer at TP+8 in glibc and musl).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadContextAccess {
    /// The process's start as `/proc/PID/stat` gives it (clock ticks), and the ns per tick: the
    /// BPF side compares it with its leader's `start_boottime`, so an entry is used only by the
    /// process it was made for, never by a later one given the same pid.
    pub start_ticks: u64,
    pub ns_per_tick: u64,
    /// 0: the variable is in static TLS, at `TP + offset`. Otherwise its module's id: the
    /// variable is at `dtv[module] + offset`.
    pub module: u64,
    pub offset: i64,
    /// Bytes per DTV entry (glibc 16, musl 8), for `module` != 0.
    pub dtv_stride: u32,
    /// Where the DTV's length is, in bytes from the DTV pointer (glibc `dtv[-1]`: -16; musl
    /// `dtv[0]`: 0): a module id past it is not the thread's yet.
    pub dtv_len_at: i32,
}

/// Byte offsets of the kernel fields/// Byte offsets of the kernel fields the BPF side reads, found in the running kernel's BTF by
/// user space at load time, so no offset is compiled in for one kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 when every offset below was found; 0 leaves socket context out.
    pub valid: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_type: u32,
    pub socket_file: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    /// `task_struct.start_boottime` (`real_start_time` before Linux 5.5), or 0 when the kernel
    /// has neither: the process's start time then stays unknown.
    pub task_start_boottime: u32,
    /// 1 when every offset below was found (and `task_start_boottime` too): the entry hook may
    /// then capture each traced process's identity ([`IdentityRecord`]); 0 leaves that to `/proc`.
    pub identity_valid: u32,
    pub task_mm: u32,
    /// `mm_struct.env_start` / `env_end`: the environment block's user addresses.
    pub mm_env_start: u32,
    pub mm_env_end: u32,
    pub mm_exe_file: u32,
    /// `file.f_path.dentry` (the two offsets added up).
    pub file_dentry: u32,
    /// `dentry.d_name.name` (the two offsets added up).
    pub dentry_name: u32,
    /// `task_struct.cgroups` (a `css_set`), `css_set.dfl_cgrp` (the cgroup v2 one).
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`, its directory's kernfs node.
    pub cgroup_kn: u32,
    /// `kernfs_node.name` and `kernfs_node.parent` (`__parent` since Linux 6.15).
    pub kernfs_name: u32,
    pub kernfs_parent: u32,
    /// `task_struct.thread.fsbase` (the two offsets added up): the thread pointer, on x86-64. 0
    /// when the kernel has none (other architectures): no OTEP 4947 thread context is read.
    pub task_fsbase: u32,
    /// `sock.sk_type`: a socket's type read from its `struct sock`, when a message hook handed
    /// that over (the same value as `socket.type`); 0 when not found, and the socket is then
    /// found from the fd.
    pub sk_type: u32,
}

/// Which filters are on, and their scalar settings; the sets live in BPF hash maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterSettings {
    /// Bits of [`filter`].
    pub flags: u32,
    /// With [`filter::SAMPLE_ROOTS`]: a call without a parent is traced when a random u32 falls
    /// below this.
    pub root_below: u32,
    /// Calls shorter than this are dropped at exit (0: none).
    pub min_duration_ns: u64,
    /// With [`filter::TRACE_ID_RATIO`]: a call with a parent is traced when the lowest 56 bits
    /// of the parent's trace id fall below this (`1 << 56`: every one), whatever its flag.
    pub trace_id_below: u64,
}

pub mod filter {
    /// Trace only processes whose pid is in the PIDS map.
    pub const PIDS: u32 = 1;
    /// Trace only threads whose process name (`comm` of the thread group leader) is in COMMS.
    pub const COMMS: u32 = 2;
    /// Trace only tasks whose cgroup v2 id is in CGROUPS.
    pub const CGROUPS: u32 = 4;
    /// Export only calls that failed or had a failed message.
    pub const ERRORS_ONLY: u32 = 8;
    /// Trace a random share of the calls without a parent (head sampling, decided at entry).
    pub const SAMPLE_ROOTS: u32 = 16;
    /// A call with a parent is decided by the parent's trace id (`trace_id_below`), not by the
    /// parent's sampled flag (the samplers that are not parent-based).
    pub const TRACE_ID_RATIO: u32 = 32;
    /// The filters that are properties of the process, not draws.
    pub const PROCESS: u32 = PIDS | COMMS | CGROUPS;
    /// How many of the lowest bits of a trace id are its randomness, as the W3C Trace Context
    /// (level 2) and OpenTelemetry's consistent samplers use them.
    pub const TRACE_ID_RANDOM_BITS: u32 = 56;
}

/// One `sendmmsg` call, from entry to exit.
///
/// The BPF side keeps one of these per thread while the call is in flight and submits it to the
/// ring buffer at exit. Invariant: `version` and `size` stay the first two fields, whatever else
/// changes: the decoder checks them before it trusts anything else.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallRecord {
    /// [`RECORD_VERSION`] of the BPF object that wrote this record.
    pub version: u32,
    /// `size_of::<CallRecord>()` as the BPF object saw it (the layout, not the bytes sent:
    /// see [`CallRecord::wire_len`]).
    pub size: u32,
    /// Thread group id (the process id user space sees).
    pub pid: u32,
    /// Kernel task id (the thread id user space sees).
    pub tid: u32,
    /// Entry and exit times, `CLOCK_MONOTONIC` ns (`bpf_ktime_get_ns`).
    pub start_ns: u64,
    pub end_ns: u64,
    /// The caller's `msgvec` pointer, as passed.
    pub msgvec: u64,
    /// The syscall's return value: messages sent, or a negative errno.
    pub ret: i64,
    pub sockfd: i32,
    /// `vlen` as passed (before the kernel clamps it to [`MAX_VLEN`]).
    pub vlen: u32,
    pub flags: u32,
    /// Messages the per-message hook saw (at most [`MAX_VLEN`]).
    pub messages: u32,
    /// Messages among them whose send failed.
    pub messages_failed: u32,
    /// The first failed message's negative errno (0 when none failed) and its index.
    pub first_error: i32,
    pub first_error_index: u32,
    /// Bits of [`record_flags`].
    pub flags_out: u32,
    /// Bytes sent by all successful messages.
    pub bytes: u64,
    /// Kernel socket address of the first message, to tell the call's messages from stray sends
    /// on the same thread, marked with what it points to (the BPF side's `MessageSocket::tag`).
    /// Kernel-side only: the exit hook zeroes it before submitting.
    pub sk: u64,
    /// When the calling process started (its thread group leader's `start_boottime`, ns after
    /// boot), so user space can tell it from a later process given the same pid; 0 when unknown.
    pub process_start_ns: u64,
    /// The thread's `comm` at entry, NUL-padded.
    pub comm: [u8; 16],
    pub socket: SocketInfo,
    /// The calling thread's active span at entry, when [`record_flags::PARENT`] says so.
    pub parent: TraceContext,
    /// Per message: `ret` and `offset_ns` for the first `min(messages, MAX_MESSAGE_DETAIL)`,
    /// `dest` for the first `min(vlen, MAX_MESSAGE_DETAIL)`; the rest is garbage.
    pub detail: [MessageResult; MAX_MESSAGE_DETAIL],
}

impl CallRecord {
    /// How many entries of [`CallRecord::detail`] are valid.
    pub fn detail_len(&self) -> usize {
        (self.messages as usize).min(MAX_MESSAGE_DETAIL)
    }

    /// How many entries of [`CallRecord::detail`] have their destination read.
    pub fn destinations_len(&self) -> usize {
        (self.vlen as usize).min(MAX_MESSAGE_DETAIL)
    }

    /// The bytes of a record on the ring buffer: the header and the detail slots the call can
    /// have used, `min(vlen, MAX_MESSAGE_DETAIL)` (an 8-message call takes ~500 bytes, not the
    /// whole 2.7 KiB).
    #[inline(always)]
    pub fn wire_len(&self) -> usize {
        let slots =
            if (self.vlen as usize) < MAX_MESSAGE_DETAIL { self.vlen as usize } else { MAX_MESSAGE_DETAIL };
        DETAIL_OFFSET + slots * core::mem::size_of::<MessageResult>()
    }

    /// The record as the ring buffer carries it: its first [`CallRecord::wire_len`] bytes.
    /// What user space decodes; tests and fuzz seeds encode records with it.
    pub fn wire_bytes(&self) -> &[u8] {
        // SAFETY: `#[repr(C)]` integers and arrays of integers with every padding byte an
        // explicit field (the layout asserts below), so every byte is initialized; `wire_len()`
        // is at most the record's size.
        unsafe { core::slice::from_raw_parts((self as *const CallRecord).cast::<u8>(), self.wire_len()) }
    }
}

/// Indexes of the BPF side's loss and anomaly counters (a per-CPU array of `u64`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A finished call found the ring buffer full; its record was dropped.
    RingBufferFull = 0,
    /// The in-flight map refused a new call: full (raise `OTEL_SENDMMSG_MAX_INFLIGHT`), or, rarely,
    /// its lock was taken. The call's record is lost.
    InflightFull = 1,
    /// A per-message hit on a thread with a call in flight that was not one of the call's
    /// messages (beyond `vlen`, or another socket); it was ignored.
    StrayMessages = 2,
    /// An exit the entry hook never saw: the call began before the sidecar attached. Calls left
    /// out by the filters or refused at entry are not counted here.
    ExitWithoutEntry = 3,
    /// A traced call dropped at exit by the duration or errors-only filter (not a loss).
    FilteredAtExit = 4,
    /// A call whose exit never ran (a kretprobe out of instances, a program the kernel skipped),
    /// found when the thread's next call entered. User space adds those of threads that died
    /// first, which it removes from the in-flight map.
    ExitMissed = 5,
    /// A process's identity (environment, executable, cgroup) was captured at its first traced
    /// call ([`IdentityRecord`]): the span's resource needs no `/proc` read.
    IdentitiesCaptured = 6,
    /// ...of them, those with something missing: the environment block cut at
    /// [`ENV_WINDOW`] or a page of it unreadable, or the executable or cgroup unreadable. User
    /// space completes them from `/proc` while the process lives.
    IdentitiesIncomplete = 7,
    /// An identity could not be put in the full ring buffer; the process's next call tries again
    /// (its spans meanwhile come from `/proc`, as without capture).
    IdentitiesDropped = 8,
    /// A call whose thread published an OTEP 4947 record with the sampled flag clear: the app
    /// does not export that trace, so the call is not traced (the parent-based sampler's rule).
    ParentNotSampled = 9,
    /// A thread's context pointer, or the record it points to, could not be read (unmapped or
    /// paged-out memory): the call is traced as if nothing were published.
    ThreadContextUnreadable = 10,
    /// A record whose `attrs-data-size` claims more than a record may hold: refused whole, as
    /// nothing a conformant writer makes (the call is traced without that parent).
    ThreadContextMalformed = 11,
    /// A call the call metrics could not count: its series was new and the series map was full
    /// (raise `OTEL_SENDMMSG_MAX_METRIC_SERIES`). Its span, if it has one, is unaffected.
    MetricSeriesFull = 12,
}

impl Counter {
    pub const ALL: [Counter; 13] = [
        Counter::RingBufferFull,
        Counter::InflightFull,
        Counter::StrayMessages,
        Counter::ExitWithoutEntry,
        Counter::FilteredAtExit,
        Counter::ExitMissed,
        Counter::IdentitiesCaptured,
        Counter::IdentitiesIncomplete,
        Counter::IdentitiesDropped,
        Counter::ParentNotSampled,
        Counter::ThreadContextUnreadable,
        Counter::ThreadContextMalformed,
        Counter::MetricSeriesFull,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub fn name(self) -> &'static str {
        match self {
            Counter::RingBufferFull => "ring_buffer_full",
            Counter::InflightFull => "inflight_full",
            Counter::StrayMessages => "stray_messages",
            Counter::ExitWithoutEntry => "exit_without_entry",
            Counter::FilteredAtExit => "filtered_at_exit",
            Counter::ExitMissed => "exit_missed",
            Counter::IdentitiesCaptured => "identities_captured",
            Counter::IdentitiesIncomplete => "identities_incomplete",
            Counter::IdentitiesDropped => "identities_dropped",
            Counter::ParentNotSampled => "parent_not_sampled",
            Counter::ThreadContextUnreadable => "thread_context_unreadable",
            Counter::ThreadContextMalformed => "thread_context_malformed",
            Counter::MetricSeriesFull => "metric_series_full",
        }
    }
}

/// Tells an [`IdentityRecord`] from a [`CallRecord`]: every record starts with a `u32` that is
/// [`RECORD_VERSION`] for a call and this for an identity (its own layout version in the low
/// byte), so call records keep decoding exactly as before.
pub const IDENTITY_RECORD_VERSION: u32 = 0x1d00_0001;

/// Bytes of a process's environment block an [`IdentityRecord`] carries: eight pages, read page
/// by page from the page that holds the block's start. Real environments are a few KiB; one cut
/// here is completed from `/proc` while its process lives.
pub const ENV_WINDOW: usize = 32 * 1024;
/// The unit of those reads (`bpf_probe_read_user` does not fault pages in, so each page is read
/// on its own and the first one missing ends the read).
pub const ENV_PAGE: usize = 4096;
/// Room for a file or cgroup name: `NAME_MAX` (255) and its NUL.
pub const IDENTITY_NAME_LEN: usize = 256;

pub mod identity_flags {
    /// The environment block goes on past [`super::ENV_WINDOW`].
    pub const ENV_CUT: u32 = 1;
    /// A page of the environment block (or the mm holding its address) could not be read.
    pub const ENV_UNREADABLE: u32 = 2;
    /// The executable's name could not be read (a kernel thread, an `exe_file` gone).
    pub const EXE_UNREADABLE: u32 = 4;
    /// The cgroup's names could not be read.
    pub const CGROUP_UNREADABLE: u32 = 8;
    /// Any of the above: user space completes the identity from `/proc` if it can.
    pub const INCOMPLETE: u32 = ENV_CUT | ENV_UNREADABLE | EXE_UNREADABLE | CGROUP_UNREADABLE;
}

/// Who a process is, captured in the kernel at its first traced call (and again after an
/// `exec`), before that call's own record: so a process that exits right after its call still
/// gets its own resource. Reserved in the ring buffer directly (~33 KiB, far above the BPF
/// stack); sent whole. Invariant: `version` and `size` first, as in [`CallRecord`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IdentityRecord {
    /// [`IDENTITY_RECORD_VERSION`].
    pub version: u32,
    /// `size_of::<IdentityRecord>()` as the BPF object saw it.
    pub size: u32,
    /// Thread group id.
    pub pid: u32,
    /// Bits of [`identity_flags`].
    pub flags: u32,
    /// The thread group leader's `start_boottime`, as in [`CallRecord::process_start_ns`].
    pub process_start_ns: u64,
    /// The cgroup v2 id (its directory's inode number).
    pub cgroup_id: u64,
    /// `env_end - env_start`: the block's length as the kernel has it (a claim: the process can
    /// move both with `prctl(PR_SET_MM)`).
    pub env_len: u64,
    /// Where in `env` the block starts (`env_start` modulo the page size).
    pub env_skip: u32,
    /// Bytes of `env` read, whole pages from its start; the rest of `env` is garbage.
    pub env_read: u32,
    /// Bytes of `exe`, `cgroup` and `cgroup_parent` that hold the name (no NUL); the rest is
    /// garbage.
    pub exe_len: u32,
    pub cgroup_len: u32,
    pub cgroup_parent_len: u32,
    pub _pad: u32,
    /// The thread group leader's `comm`, NUL-padded (what `/proc/PID/stat` shows).
    pub comm: [u8; 16],
    /// The executable's file name (`mm->exe_file`'s dentry).
    pub exe: [u8; IDENTITY_NAME_LEN],
    /// The process's cgroup v2 directory's name (`docker-<id>.scope`, `<id>`, ...), and its
    /// parent's (podman puts the process in `libpod-<id>.scope/container`).
    pub cgroup: [u8; IDENTITY_NAME_LEN],
    pub cgroup_parent: [u8; IDENTITY_NAME_LEN],
    /// The pages holding the environment block, from the one where it starts.
    pub env: [u8; ENV_WINDOW],
}

/// Where the detail slots start; everything before is the fixed header.
pub const DETAIL_OFFSET: usize = core::mem::offset_of!(CallRecord, detail);

// The layout is part of the kernel/user contract: catch accidental changes at compile time.
const _: () = assert!(core::mem::size_of::<Destination>() == 24);
const _: () = assert!(core::mem::size_of::<MessageResult>() == 40);
const _: () = assert!(core::mem::size_of::<SocketInfo>() == 48);
const _: () = assert!(core::mem::size_of::<TraceContext>() == 24);
const _: () = assert!(core::mem::size_of::<CallRecord>() == 192 + 40 * MAX_MESSAGE_DETAIL);
const _: () = assert!(core::mem::align_of::<CallRecord>() == 8);
const _: () = assert!(core::mem::offset_of!(CallRecord, socket) == 120);
const _: () = assert!(core::mem::offset_of!(CallRecord, parent) == 168);
const _: () = assert!(core::mem::offset_of!(CallRecord, detail) == 192);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 34 * 4);
const _: () = assert!(core::mem::size_of::<ThreadContextAccess>() == 40);
const _: () = assert!(core::mem::size_of::<FilterSettings>() == 24);
const _: () = assert!(core::mem::size_of::<IdentityRecord>() == 64 + 16 + 3 * IDENTITY_NAME_LEN + ENV_WINDOW);
const _: () = assert!(core::mem::offset_of!(IdentityRecord, env) % 8 == 0);
const _: () = assert!(ENV_WINDOW.is_multiple_of(ENV_PAGE));
// Never mistaken for a call record's version, nor the other way round.
const _: () = assert!(IDENTITY_RECORD_VERSION != RECORD_VERSION && IDENTITY_RECORD_VERSION > 0xffff);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data: `#[repr(C)]`, only integers and arrays of integers, no padding
    // that is not an explicit field.
    unsafe impl aya::Pod for super::CallRecord {}
    unsafe impl aya::Pod for super::MessageResult {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::FilterSettings {}
    unsafe impl aya::Pod for super::TraceContext {}
    unsafe impl aya::Pod for super::ThreadContextAccess {}
    unsafe impl aya::Pod for super::IdentityRecord {}
    unsafe impl aya::Pod for super::call_metrics::SeriesKey {}
    unsafe impl aya::Pod for super::call_metrics::SeriesValue {}
    unsafe impl aya::Pod for super::call_metrics::MetricSettings {}
    unsafe impl aya::Pod for super::call_metrics::CountedCall {}
}
