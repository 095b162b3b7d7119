//! End to end, as root: the shared trace-context map `/sys/fs/bpf/otel/traces_ctx_v1` cannot be
//! used by another user to blind or steer the sidecar. A directory or pin of another user, one
//! open to others, a symlink, or a map of another type, shape or flags is refused with one log
//! line, and tracing goes on with a private map; a fresh start creates the directory 0700 and the
//! pin 0600; a context does not outlive its thread (a reused tid, an exec).
//!
//! Each sidecar runs in a mount namespace of its own over a bpffs of the test's own (mounted at a
//! temporary directory, bind-mounted over `/sys/fs/bpf` for the sidecar only): the host's
//! `/sys/fs/bpf` is never touched, and what a test leaves goes with its mount.

mod support;

use std::{
    ffi::OsStr,
    net::UdpSocket,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt, fs::PermissionsExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use otel_sendmmsg::sendmmsg::{gettid, Batch};
use otel_sendmmsg_common::TraceContext;
use support::*;

const REFUSED: &str = "not using /sys/fs/bpf/otel/traces_ctx_v1: ";
/// Another user, owner of the hostile directories and pins.
const MALLORY: u32 = 4321;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

const CONTEXT: TraceContext = TraceContext {
    trace_id: [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
    ],
    span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
};

/// A bpffs instance of this test's own, unmounted when dropped.
struct Bpffs {
    root: PathBuf,
}

impl Bpffs {
    /// A fresh, empty bpffs whose root has `mode` (1777 is what the host here has).
    fn mount(mode: &str) -> Bpffs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("otel-sendmmsg-bpffs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        run(Command::new("mount").args(["-t", "bpf", "-o", &format!("mode={mode}"), "bpf"]).arg(&root));
        Bpffs { root }
    }

    fn otel(&self) -> PathBuf {
        self.root.join("otel")
    }

    fn pin(&self) -> PathBuf {
        self.otel().join("traces_ctx_v1")
    }

    /// A root-owned directory `otel` with `mode`.
    fn make_dir(&self, mode: u32) -> PathBuf {
        let dir = self.otel();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    /// `command`, run in a mount namespace of its own where this bpffs is `/sys/fs/bpf`. It
    /// execs `command` in the end, so its pid is the command's.
    fn around(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("unshare");
        wrapped
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /sys/fs/bpf && exec "$@""#)
            .arg(&self.root)
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    }

    /// The sidecar as root, on this bpffs, exporting to `receiver`.
    fn sidecar(&self, receiver: &Receiver) -> Sidecar {
        Sidecar::try_start_command(self.around(&Command::new(SIDECAR)), &otlp_vars(receiver))
            .unwrap_or_else(|(status, log)| panic!("the sidecar did not start ({status}):\n{log}"))
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        // Lazily: a sidecar being torn down may still hold it.
        let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        let _ = std::fs::remove_dir(&self.root);
    }
}

fn run(command: &mut Command) {
    let status = command.status().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(status.success(), "{command:?}: {status}");
}

fn otlp_vars(receiver: &Receiver) -> Vec<(&str, &str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> libc::c_long {
    // SAFETY: attr is a zero-padded bpf_attr of 128 bytes, as large as any command here reads.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) }
}

/// A map created the way any user's tool would (`BPF_MAP_CREATE`), pinned at `path`.
fn pin_new_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, flags: u32) {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map_type) | u64::from(key_size) << 32;
    attr[1] = u64::from(value_size) | 1024 << 32;
    attr[2] = u64::from(flags);
    let fd = sys_bpf(0 /* BPF_MAP_CREATE */, &mut attr);
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u64;
    assert_eq!(
        sys_bpf(6 /* BPF_OBJ_PIN */, &mut attr),
        0,
        "BPF_OBJ_PIN: {}",
        std::io::Error::last_os_error()
    );
}

fn context_map(pin: &Path) -> BpfHashMap<MapData, u64, TraceContext> {
    let data = MapData::from_pin(pin).unwrap_or_else(|e| panic!("opening {}: {e}", pin.display()));
    BpfHashMap::try_from(Map::LruHashMap(data)).unwrap()
}

fn key(tid: u32) -> u64 {
    u64::from(std::process::id()) << 32 | u64::from(tid)
}

/// One `sendmmsg` of two messages over loopback UDP, from the calling thread.
fn send() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.connect(rx.local_addr().unwrap()).unwrap();
    Batch::new(&[32, 32], &[]).send(tx.as_raw_fd(), 0).expect("sendmmsg");
}

/// A new thread of this process: `publish(tid)` runs while it waits, then it calls `sendmmsg`
/// and exits. Returns its tid.
fn call_on_new_thread(publish: impl FnOnce(u32)) -> u32 {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        go_rx.recv().unwrap();
        send();
    });
    let tid = tid_rx.recv().unwrap();
    publish(tid);
    go_tx.send(()).unwrap();
    thread.join().unwrap();
    tid
}

/// The spans of this process's thread `tid`, oldest first, once `count` have arrived.
fn spans_of_thread(receiver: &Receiver, tid: u32, count: usize) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut spans: Vec<ReceivedSpan> = receiver
            .spans_of(std::process::id())
            .into_iter()
            .filter(|s| s.int("thread.id") == Some(i64::from(tid)))
            .collect();
        if spans.len() >= count || Instant::now() > deadline {
            spans.sort_by_key(|s| s.span.start_time_unix_nano);
            return spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn parent(span: &ReceivedSpan) -> Option<(Vec<u8>, Vec<u8>)> {
    (!span.span.parent_span_id.is_empty())
        .then(|| (span.span.trace_id.clone(), span.span.parent_span_id.clone()))
}

fn published() -> Option<(Vec<u8>, Vec<u8>)> {
    Some((CONTEXT.trace_id.to_vec(), CONTEXT.span_id.to_vec()))
}

/// Runs the sidecar on `bpffs`; a thread whose context was written into `planted` (a map the
/// sidecar must not use) makes one call. Checks the one refusal line (containing `reason`), that
/// the call is traced and that it has no parent; returns the log.
fn assert_refused(
    bpffs: &Bpffs,
    planted: Option<&mut BpfHashMap<MapData, u64, TraceContext>>,
    reason: &str,
) -> String {
    let receiver = Receiver::start(Protocol::Grpc);
    let sidecar = bpffs.sidecar(&receiver);
    let tid = call_on_new_thread(|tid| {
        if let Some(map) = planted {
            map.insert(key(tid), CONTEXT, 0).unwrap();
        }
    });
    let spans = spans_of_thread(&receiver, tid, 1);
    let stopped = sidecar.stop();
    let log = stopped.stderr;
    assert_eq!(spans.len(), 1, "tracing goes on: the call is a span:\n{log}");
    assert_eq!(parent(&spans[0]), None, "the planted context must not become a parent:\n{log}");
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains(REFUSED)).collect();
    assert_eq!(refusals.len(), 1, "one refusal line, naming why:\n{log}");
    assert!(refusals[0].contains(reason), "the refusal should say {reason:?}:\n{log}");
    assert!(!log.contains("sharing trace context through"), "{log}");
    log
}

#[test]
fn another_users_directory_and_pin_are_refused_and_tracing_goes_on() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let bpffs = Bpffs::mount("1777");
    // What any user can do on a host whose bpffs is 1777: a directory of their own, 0700, with a
    // map of exactly the agreed shape, holding a context for the thread about to call.
    let dir = bpffs.make_dir(0o700);
    pin_new_map(&bpffs.pin(), BPF_MAP_TYPE_LRU_HASH, 8, 24, 0);
    std::os::unix::fs::lchown(bpffs.pin(), Some(MALLORY), Some(MALLORY)).unwrap();
    std::os::unix::fs::lchown(&dir, Some(MALLORY), Some(MALLORY)).unwrap();
    let mut planted = context_map(&bpffs.pin());
    assert_refused(
        &bpffs,
        Some(&mut planted),
        &format!("the directory /sys/fs/bpf/otel belongs to uid {MALLORY}"),
    );
    // Nothing was pinned or replaced in their directory.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [OsStr::new("traces_ctx_v1")]);
}

#[test]
fn another_users_pin_in_a_root_directory_is_refused() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let bpffs = Bpffs::mount("0700");
    bpffs.make_dir(0o700);
    pin_new_map(&bpffs.pin(), BPF_MAP_TYPE_LRU_HASH, 8, 24, 0);
    std::os::unix::fs::lchown(bpffs.pin(), Some(MALLORY), Some(MALLORY)).unwrap();
    let mut planted = context_map(&bpffs.pin());
    assert_refused(&bpffs, Some(&mut planted), &format!("belongs to uid {MALLORY}"));
}

#[test]
fn a_directory_or_pin_open_to_others_is_refused() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let bpffs = Bpffs::mount("1777");
    bpffs.make_dir(0o777);
    pin_new_map(&bpffs.pin(), BPF_MAP_TYPE_LRU_HASH, 8, 24, 0);
    let mut planted = context_map(&bpffs.pin());
    assert_refused(&bpffs, Some(&mut planted), "the directory /sys/fs/bpf/otel has mode 0777");

    let bpffs = Bpffs::mount("0700");
    bpffs.make_dir(0o700);
    pin_new_map(&bpffs.pin(), BPF_MAP_TYPE_LRU_HASH, 8, 24, 0);
    std::fs::set_permissions(bpffs.pin(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut planted = context_map(&bpffs.pin());
    assert_refused(&bpffs, Some(&mut planted), "the pin /sys/fs/bpf/otel/traces_ctx_v1 has mode 0666");
}

#[test]
fn maps_of_another_type_shape_or_flags_are_refused() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    for (map_type, key_size, value_size, flags, reason) in [
        (BPF_MAP_TYPE_HASH, 8, 24, 0, "its map is a Hash, not an LruHash"),
        (BPF_MAP_TYPE_LRU_HASH, 8, 32, 0, "its key/value sizes are 8/32 bytes, expected 8/24"),
        (BPF_MAP_TYPE_LRU_HASH, 8, 24, BPF_F_RDONLY_PROG, "its map flags are 0x80"),
    ] {
        let bpffs = Bpffs::mount("0700");
        bpffs.make_dir(0o700);
        pin_new_map(&bpffs.pin(), map_type, key_size, value_size, flags);
        assert_refused(&bpffs, None, reason);
    }
}

#[test]
fn symlinks_are_not_followed() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    // Each link leads to a directory and pin that would be accepted where they are.
    let bpffs = Bpffs::mount("1777");
    let elsewhere = bpffs.root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    pin_new_map(&elsewhere.join("traces_ctx_v1"), BPF_MAP_TYPE_LRU_HASH, 8, 24, 0);
    std::os::unix::fs::symlink(&elsewhere, bpffs.otel()).unwrap();
    let mut planted = context_map(&elsewhere.join("traces_ctx_v1"));
    assert_refused(&bpffs, Some(&mut planted), "/sys/fs/bpf/otel is a symbolic link, not a directory");

    let bpffs = Bpffs::mount("0700");
    let elsewhere = bpffs.root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    pin_new_map(&elsewhere.join("traces_ctx_v1"), BPF_MAP_TYPE_LRU_HASH, 8, 24, 0);
    bpffs.make_dir(0o700);
    std::os::unix::fs::symlink("../elsewhere/traces_ctx_v1", bpffs.pin()).unwrap();
    let mut planted = context_map(&elsewhere.join("traces_ctx_v1"));
    assert_refused(
        &bpffs,
        Some(&mut planted),
        "/sys/fs/bpf/otel/traces_ctx_v1 is a symbolic link, not a pin",
    );
}

/// Root's pin (0600) of the agreed shape, as OBI makes it, in root's directory: OBI's is 0700,
/// older versions of this sidecar made it 0755 (others may look, not change). Used as it is: a
/// context written into it becomes the calling thread's parent.
#[test]
fn a_root_pin_of_the_agreed_shape_is_used() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let bpffs = Bpffs::mount("0700");
    bpffs.make_dir(0o755);
    pin_new_map(&bpffs.pin(), BPF_MAP_TYPE_LRU_HASH, 8, 24, 0);
    let mut map = context_map(&bpffs.pin());
    let receiver = Receiver::start(Protocol::Grpc);
    let sidecar = bpffs.sidecar(&receiver);
    let tid = call_on_new_thread(|tid| map.insert(key(tid), CONTEXT, 0).unwrap());
    let spans = spans_of_thread(&receiver, tid, 1);
    let log = sidecar.stop().stderr;
    assert!(!log.contains(REFUSED), "{log}");
    assert!(
        log.contains("sharing trace context through the pinned map /sys/fs/bpf/otel/traces_ctx_v1 (root's"),
        "{log}"
    );
    assert_eq!(spans.len(), 1, "{log}");
    assert_eq!(parent(&spans[0]), published(), "{log}");
}

fn mode_and_owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.mode() & 0o7777, meta.uid())
}

#[test]
fn a_fresh_start_creates_the_directory_0700_and_the_pin_0600_of_its_own_user() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let bpffs = Bpffs::mount("1777");
    let receiver = Receiver::start(Protocol::Grpc);
    // With umask 0, a directory made with the default mode (create_dir_all) would be 0777.
    let mut sidecar_command = Command::new("sh");
    sidecar_command.args(["-c", r#"umask 0 && exec "$0""#, SIDECAR]);
    let sidecar = Sidecar::try_start_command(bpffs.around(&sidecar_command), &otlp_vars(&receiver))
        .unwrap_or_else(|(status, log)| panic!("the sidecar did not start ({status}):\n{log}"));
    assert_eq!(mode_and_owner(&bpffs.otel()), (0o700, 0));
    assert_eq!(mode_and_owner(&bpffs.pin()), (0o600, 0));
    let log = sidecar.stop().stderr;
    assert!(log.contains("sharing trace context through the pinned map /sys/fs/bpf/otel/traces_ctx_v1 (created it, mode 0600"), "{log}");

    // As the least-privilege deployment runs it: nobody, with only the documented capabilities,
    // on a bpffs mounted 0700 as systemd does.
    let bpffs = Bpffs::mount("0700");
    let binary = copy_for_other_users(Path::new(SIDECAR), "otel-sendmmsg");
    let caps: Vec<String> =
        otel_sendmmsg::privileges::CAPABILITIES.iter().map(|c| c.short_name().to_ascii_lowercase()).collect();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let sidecar = Sidecar::try_start_command(
        bpffs.around(&setpriv(NOBODY, &caps, true, &binary)),
        &otlp_vars(&receiver),
    )
    .unwrap_or_else(|(status, log)| panic!("the sidecar did not start as nobody ({status}):\n{log}"));
    assert_eq!(mode_and_owner(&bpffs.otel()), (0o700, NOBODY));
    assert_eq!(mode_and_owner(&bpffs.pin()), (0o600, NOBODY));
    let log = sidecar.stop().stderr;
    let _ = std::fs::remove_file(&binary);
    let _ = binary.parent().map(std::fs::remove_dir);
    assert!(log.contains("(created it, mode 0600"), "{log}");
}

/// Where nothing is mounted at /sys/fs/bpf, the sidecar mounts bpffs, closed to other users.
#[test]
fn the_sidecar_mounts_bpffs_0700() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let receiver = Receiver::start(Protocol::Grpc);
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"umount /sys/fs/bpf 2>/dev/null; exec "$0""#)
        .arg(SIDECAR);
    let sidecar = Sidecar::try_start_command(command, &otlp_vars(&receiver))
        .unwrap_or_else(|(status, log)| panic!("the sidecar did not start ({status}):\n{log}"));
    // Seen through the sidecar's own mount namespace.
    let root = PathBuf::from(format!("/proc/{}/root/sys/fs/bpf", sidecar.pid()));
    let (mode, owner) = mode_and_owner(&root);
    let log = sidecar.stop().stderr;
    assert!(log.contains("mounted bpffs at /sys/fs/bpf with mode 0700"), "{log}");
    assert_eq!((mode & 0o777, owner), (0o700, 0), "{log}");
}

/// Writes `tid - 1` as the last pid handed out, so the kernel's next pid is `tid` (CRIU's way);
/// other processes may take it first, hence the retries of the caller.
fn next_pid_is(tid: u32) {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (tid - 1).to_string()).expect("writing ns_last_pid");
}

/// A thread publishes a context, calls (its span has that parent: the map is in use), and exits.
/// A new thread that the kernel gives the same tid calls too: its span has no parent.
#[test]
fn a_reused_tid_does_not_inherit_a_dead_threads_parent() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let bpffs = Bpffs::mount("0700");
    let receiver = Receiver::start(Protocol::Grpc);
    let sidecar = bpffs.sidecar(&receiver);
    let mut map = context_map(&bpffs.pin());
    let tid = call_on_new_thread(|tid| map.insert(key(tid), CONTEXT, 0).unwrap());

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reused = false;
    while !reused && Instant::now() < deadline {
        next_pid_is(tid);
        reused = std::thread::spawn(move || {
            let mine = gettid() == tid;
            if mine {
                send();
            }
            mine
        })
        .join()
        .unwrap();
        if !reused {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(reused, "the kernel never gave tid {tid} again");
    let spans = spans_of_thread(&receiver, tid, 2);
    let log = sidecar.stop().stderr;
    assert_eq!(spans.len(), 2, "{log}");
    assert_eq!(parent(&spans[0]), published(), "the publishing thread's own call:\n{log}");
    assert_eq!(parent(&spans[1]), None, "the new thread with the dead one's tid:\n{log}");
    assert!(map.get(&key(tid), 0).is_err(), "the dead thread's entry is gone");
}

/// A process that publishes a context and then execs another program: the new program's call
/// (same pid, same tid) has no parent.
#[test]
fn an_exec_drops_the_context() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let bpffs = Bpffs::mount("0700");
    let receiver = Receiver::start(Protocol::Grpc);
    let sidecar = bpffs.sidecar(&receiver);
    let mut map = context_map(&bpffs.pin());
    let mut child = Command::new("sh")
        .args(["-c", r#"read go && exec "$0" udp4"#, WORKLOAD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    map.insert(u64::from(pid) << 32 | u64::from(pid), CONTEXT, 0).unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.spans_of(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let spans = receiver.spans_of(pid);
    let log = sidecar.stop().stderr;
    assert_eq!(spans.len(), 1, "the exec'd workload's one call:\n{log}");
    assert_eq!(spans[0].int("thread.id"), Some(i64::from(pid)), "same tid as before the exec");
    assert_eq!(parent(&spans[0]), None, "{log}");
}
