//! End to end, as root: an unprivileged user's processes map files meant to mislead the
//! sidecar's context-marker discovery — a path with a space and a newline, a FIFO named as the
//! part before the space, a device node, a symlink to a marker library and a deleted file where
//! mapped files were — and many distinct marker libraries. The sidecar runs as `nobody` with
//! exactly its documented capabilities. It must keep tracing, never block, never open the
//! FIFO or the device, attach to the genuine files only, at most
//! `OTEL_SENDMMSG_MAX_CONTEXT_FILES` of them, and release them when their processes exit.

mod support;

use std::{
    collections::HashMap,
    ffi::CString,
    io::{BufRead, BufReader},
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::PermissionsExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use otel_sendmmsg::privileges::{Capability, Need, CAPABILITIES};
use otel_sendmmsg_common::CONTEXT_MARKER_SYMBOL;
use support::*;

/// The unprivileged user whose processes map the files.
const APP_USER: u32 = 4322;
const WAIT: Duration = Duration::from_secs(60);

/// gcc's output for `source` with `args`, as bytes.
fn compiled(dir: &Path, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let status = Command::new("gcc").args(args).arg("-o").arg(&out).arg(&src).status().expect("running gcc");
    assert!(status.success(), "gcc {name}");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    out
}

/// A small library defining the context marker.
fn marker_library(dir: &Path) -> Vec<u8> {
    let source = format!("void {CONTEXT_MARKER_SYMBOL}(void) {{}}\n");
    std::fs::read(compiled(dir, "libmarker.so", &source, &["-shared", "-fPIC"])).unwrap()
}

/// A program that maps each file named on its command line executable (as the loader maps a
/// library), says `mapped`, and exits when its stdin closes.
fn mapper(dir: &Path) -> PathBuf {
    compiled(
        dir,
        "mapper",
        r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) { perror(argv[i]); return 1; }
        if (mmap(0, st.st_size, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0) == MAP_FAILED) {
            perror("mmap"); return 1;
        }
        close(fd);
    }
    printf("mapped\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    return 0;
}
"#,
        &[],
    )
}

/// A mapper running as [`APP_USER`], once it has mapped its files.
struct Mapper(Child);

impl Mapper {
    fn start(program: &Path, files: &[&Path]) -> Mapper {
        let mut command = setpriv(APP_USER, &[], false, program);
        let mut child = command
            .args(files)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the mapper");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "mapped\n", "the mapper failed on {files:?}");
        Mapper(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A copy of the sidecar `nobody` can run, removed when dropped (it is around 100 MB).
struct SidecarCopy(PathBuf);

impl Drop for SidecarCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = self.0.parent().map(std::fs::remove_dir);
    }
}

/// The sidecar as `nobody` with `caps` and nothing else.
fn start_sidecar(caps: &[&Capability], vars: &[(&str, &str)]) -> (Sidecar, SidecarCopy) {
    let binary = SidecarCopy(copy_for_other_users(Path::new(SIDECAR), "otel-sendmmsg-hostile"));
    let names: Vec<String> = caps.iter().map(|c| c.short_name().to_ascii_lowercase()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let sidecar = Sidecar::try_start_command(setpriv(NOBODY, &names, true, &binary.0), vars)
        .unwrap_or_else(|(status, log)| panic!("it did not start ({status}):\n{log}"));
    (sidecar, binary)
}

fn wait_for(sidecar: &Sidecar, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = sidecar.stderr();
        if done(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "never saw {what}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every descriptor of `pid` (target of its link, and its open flags).
fn descriptors(pid: u32) -> Vec<(PathBuf, u32)> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.path()).ok()?;
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_str()?))
                .ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
            Some((target, u32::from_str_radix(flags, 8).ok()?))
        })
        .collect()
}

/// Each thread of `pid`, with its state and where it sleeps in the kernel.
fn threads(pid: u32) -> Vec<(String, char, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let state = rest.chars().next()?;
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            Some((name.to_owned(), state, wchan))
        })
        .collect()
}

fn mkfifo(path: &Path) {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated name.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o666) }, 0, "mkfifo {}", path.display());
}

/// A character device node like /dev/null (1:3), where nothing expects one.
fn mknod_null(path: &Path) {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated name.
    let made = unsafe { libc::mknod(name.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(made, 0, "mknod {}", path.display());
}

/// The hostile user's scene; then a genuine marker library mapped afterwards must be attached.
fn hostile_scene(caps: &[&Capability]) -> (Stopped, SharedDir, u32, u32) {
    let scratch = SharedDir::new(if caps.len() == CAPABILITIES.len() { "all" } else { "nosysadmin" });
    let dir = &scratch.0;
    let marker = marker_library(dir);
    let mapper = mapper(dir);
    // A marker library under a name with a space and a newline; the old parser took the part
    // before the space for the path, where a FIFO waits (opening it for reading blocks).
    let spaced = scratch.file("lib x\nmarker.so", &marker);
    mkfifo(&dir.join("lib"));
    // Files mapped, then unlinked and replaced by a device node, a symlink to a marker library
    // elsewhere, or nothing (a deleted marker library, still mapped).
    let device = scratch.file("dev.so", b"not ELF: the original of the device decoy");
    let symlinked = scratch.file("sym.so", b"not ELF: the original of the symlink decoy");
    let deleted = scratch.file("gone.so", &marker);
    let elsewhere = scratch.file("elsewhere.so", &marker);
    let decoys = Mapper::start(&mapper, &[&spaced, &device, &symlinked, &deleted]);
    std::fs::remove_file(&device).unwrap();
    mknod_null(&device);
    std::fs::remove_file(&symlinked).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &symlinked).unwrap();
    std::fs::remove_file(&deleted).unwrap();

    // Started once the scene is set, so its first scan sees every decoy in place (a scan in
    // between would see the files before they were swapped).
    let receiver = Receiver::start(Protocol::Grpc);
    let (sidecar, _copy) = start_sidecar(
        caps,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "info,otel_sendmmsg::probes::thread_context=debug"),
        ],
    );

    // Watch the sidecar while it scans: never a descriptor on the FIFO or the device other than
    // O_PATH (which opens neither), never a thread stuck.
    let watched = |what: &str| {
        for (target, flags) in descriptors(sidecar.pid()) {
            if target == dir.join("lib") || target == device {
                assert_ne!(
                    flags & libc::O_PATH as u32,
                    0,
                    "{what}: {} open, flags {flags:o}",
                    target.display()
                );
            }
        }
        for (name, state, wchan) in threads(sidecar.pid()) {
            let stuck = ["fifo", "pipe", "partner"].iter().any(|w| wchan.contains(w));
            assert!(!stuck, "{what}: thread {name} in {state} at {wchan}");
        }
    };
    let scene = Instant::now();
    while scene.elapsed() < Duration::from_secs(3) {
        watched("during the scan");
        std::thread::sleep(Duration::from_millis(5));
    }

    // The scan thread still goes on: a genuine marker library mapped now is found.
    let later = scratch.file("later.so", &marker);
    let genuine = Mapper::start(&mapper, &[&later]);
    let later_line = format!("/proc/{}/root{}", genuine.pid(), later.display());
    // The event loop's word on it ("attached to" or "not attached to"), not the scan's debug
    // line "found in", which comes first.
    let outcome = format!("attached to {later_line}");
    wait_for(&sidecar, "the later library", |log| log.lines().any(|l| l.contains(&outcome)));
    watched("after the scan");

    // The ring buffer's reader still goes on: a call made now arrives as a span.
    let calls = run_workload(&["udp4"]);
    let deadline = Instant::now() + WAIT;
    while receiver.spans_of(calls[0].pid).is_empty() {
        assert!(Instant::now() < deadline, "the workload's call never arrived:\n{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(receiver.spans_of(calls[0].pid)[0].int("sendmmsg.sent"), Some(8));

    let (decoys_pid, genuine_pid) = (decoys.pid(), genuine.pid());
    drop((decoys, genuine));
    let mut sidecar = sidecar;
    assert!(sidecar.is_running());
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}:\n{}", stopped.status, stopped.stderr);
    (stopped, scratch, decoys_pid, genuine_pid)
}

/// The log lines that say a file was attached (or refused by the kernel).
fn marker_lines<'a>(log: &'a str, outcome: &str) -> Vec<&'a str> {
    let prefix = format!("context marker: {outcome} ");
    log.lines().filter(|l| l.contains(&prefix)).collect()
}

#[test]
fn with_every_capability_hostile_mappings_neither_block_nor_mislead_it() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let all: Vec<&Capability> = CAPABILITIES.iter().collect();
    let (stopped, scratch, decoys, genuine) = hostile_scene(&all);
    let log = &stopped.stderr;
    let dir = scratch.0.display().to_string();
    let root = |pid: u32, name: &str| format!("context marker: attached to /proc/{pid}/root{dir}/{name}");
    let attached: Vec<&str> =
        marker_lines(log, "attached to").into_iter().filter(|l| l.contains(&dir)).collect();
    // Through map_files: the file with the odd name (logged escaped, on one line), the deleted
    // one, and the later one; never the symlink's target under the symlink's name, nor a decoy.
    let expected =
        [root(decoys, "lib x\\nmarker.so"), root(decoys, "gone.so (deleted)"), root(genuine, "later.so")];
    for line in &expected {
        assert_eq!(attached.iter().filter(|l| l.ends_with(line.as_str())).count(), 1, "{line}:\n{log}");
    }
    assert_eq!(attached.len(), expected.len(), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("marker.so")), "a forged log line:\n{log}");
}

#[test]
fn without_sys_admin_the_path_fallback_refuses_every_decoy() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let required: Vec<&Capability> = CAPABILITIES.iter().filter(|c| c.need == Need::Required).collect();
    let (stopped, scratch, decoys, genuine) = hostile_scene(&required);
    let log = &stopped.stderr;
    let dir = scratch.0.display().to_string();
    // Found through the path (the kernel then refuses the uprobe without CAP_SYS_ADMIN).
    let tried: Vec<&str> =
        marker_lines(log, "not attached to").into_iter().filter(|l| l.contains(&dir)).collect();
    for name in [
        format!("/proc/{decoys}/root{dir}/lib x\\nmarker.so:"),
        format!("/proc/{genuine}/root{dir}/later.so:"),
    ] {
        let line = tried.iter().find(|l| l.contains(&name)).unwrap_or_else(|| panic!("{name}:\n{log}"));
        assert!(line.contains("perf_event_open"), "{line}");
    }
    assert_eq!(tried.len(), 2, "no decoy got as far as the kernel:\n{log}");
    // Each decoy was looked at and refused for what it is.
    let looked = |name: &str, why: &str| {
        log.lines()
            .any(|l| l.contains("not looked into") && l.contains(&format!("{dir}/{name}")) && l.contains(why))
    };
    assert!(looked("dev.so", "not a regular file"), "{log}");
    // O_PATH|O_NOFOLLOW opens a trailing symlink itself (S_IFLNK, 0120000), never its target.
    assert!(looked("sym.so", "not a regular file (mode 120"), "{log}");
    assert!(looked("gone.so", "No such file"), "{log}");
}

#[test]
fn many_marker_files_are_capped_counted_and_released_with_their_processes() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    const COPIES: usize = 12;
    const CAP: usize = 4;
    let scratch = SharedDir::new("many");
    let marker = marker_library(&scratch.0);
    let mapper = mapper(&scratch.0);
    let copies: Vec<PathBuf> = (0..COPIES).map(|i| scratch.file(&format!("copy{i}.so"), &marker)).collect();
    let cap = CAP.to_string();
    let all: Vec<&Capability> = CAPABILITIES.iter().collect();
    let (sidecar, _copy) = start_sidecar(
        &all,
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_SENDMMSG_MAX_CONTEXT_FILES", cap.as_str()),
            ("RUST_LOG", "info,otel_sendmmsg::probes::thread_context=debug"),
        ],
    );
    // Settle: whatever else runs on the host is attached before our baseline.
    std::thread::sleep(Duration::from_secs(3));
    let before = descriptors(sidecar.pid()).len();
    let attached_before = live_attachments(&sidecar.stderr());

    let dir = scratch.0.display().to_string();
    let mine = |l: &&str| l.contains(&dir);
    let mappers: Vec<Mapper> = copies.iter().map(|c| Mapper::start(&mapper, &[c])).collect();
    let log = wait_for(&sidecar, "every copy attached or refused", |log| {
        let attached = marker_lines(log, "attached to").into_iter().filter(mine).count();
        let refused = log.lines().filter(|l| l.contains("files are attached already")).filter(mine).count();
        attached + refused == COPIES
    });
    let attached: Vec<&str> = marker_lines(&log, "attached to").into_iter().filter(mine).collect();
    assert!(!attached.is_empty() && attached.len() <= CAP, "{log}");
    assert!(log.contains("raise it to trace more"), "the cap is logged with its remedy:\n{log}");
    // A few more scans change nothing, and no descriptor is kept per file: the sidecar holds
    // one perf event per uprobe, and nothing for the files themselves.
    std::thread::sleep(Duration::from_secs(3));
    let log = sidecar.stderr();
    assert_eq!(marker_lines(&log, "attached to").into_iter().filter(mine).count(), attached.len(), "{log}");
    let live = live_attachments(&log);
    assert!(live <= CAP, "{live} attached at once:\n{log}");
    let after = descriptors(sidecar.pid()).len();
    assert!(
        after <= before + live.saturating_sub(attached_before) + 2,
        "{before} descriptors before, {after} with {live} files attached:\n{:?}",
        descriptors(sidecar.pid())
    );

    // The processes exit: every one of our files is released, and the slots are free again.
    drop(mappers);
    let log = wait_for(&sidecar, "our files released", |log| {
        let attached = marker_lines(log, "attached to").into_iter().filter(mine).count();
        marker_lines(log, "released").into_iter().filter(mine).count() == attached
    });
    assert!(live_attachments(&log) <= attached_before, "{log}");
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let refusals = stopped.stderr.lines().filter(|l| l.contains("files are attached already")).count();
    assert_eq!(
        summary_count(&stopped.stderr, "context_files_refused"),
        refusals as u64,
        "{}",
        stopped.stderr
    );
    assert!(refusals >= COPIES - CAP, "{}", stopped.stderr);
}

/// Files attached and not released, from the log, checked never to exceed what it says.
fn live_attachments(log: &str) -> usize {
    let mut live: HashMap<String, ()> = HashMap::new();
    for line in log.lines() {
        if let Some(name) = line.split("context marker: attached to ").nth(1) {
            live.insert(name.to_owned(), ());
        } else if let Some(rest) = line.split("context marker: released ").nth(1) {
            let name = rest.split(" (no process maps it").next().unwrap_or(rest);
            live.remove(name);
        }
    }
    live.len()
}

/// A one-file FUSE filesystem served from this test process through /dev/fuse, which can be told
/// to stop answering: what a user who mounts their own FUSE filesystem can do to anyone who
/// looks at their files. Dropping it closes the device, which aborts every pending request.
struct FuseFile {
    mountpoint: PathBuf,
    stalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// The threads whose requests were read once it stopped answering (other processes on the
    /// host may look at the mapped file too: a sidecar of another build, a backup tool).
    unanswered: Arc<Mutex<Vec<u32>>>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl FuseFile {
    const ROOT: u64 = 1;
    const FILE: u64 = 2;

    /// Mounts it on `mountpoint` with one regular file, `name`, holding `contents`; other users
    /// may use it (allow_other).
    fn mount(mountpoint: &Path, name: &str, contents: Vec<u8>) -> FuseFile {
        let device = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").expect("/dev/fuse");
        let options = format!("fd={},rootmode=40000,user_id=0,group_id=0,allow_other", device.as_raw_fd());
        let (source, target, fstype, data) = (
            CString::new("otel-sendmmsg-test").unwrap(),
            CString::new(mountpoint.as_os_str().as_bytes()).unwrap(),
            CString::new("fuse").unwrap(),
            CString::new(options).unwrap(),
        );
        // SAFETY: NUL-terminated strings; the fd stays open in this process.
        let mounted = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(mounted, 0, "mount fuse: {}", std::io::Error::last_os_error());
        let (stalled, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let unanswered = Arc::new(Mutex::new(Vec::new()));
        let (stalled_flag, stop_flag, count, name) =
            (stalled.clone(), stop.clone(), unanswered.clone(), name.to_owned());
        let server =
            std::thread::spawn(move || serve(device, &name, &contents, &stalled_flag, &stop_flag, &count));
        FuseFile { mountpoint: mountpoint.to_owned(), stalled, stop, unanswered, server: Some(server) }
    }

    /// Detaches the mount (`umount -l`): files already mapped stay mapped, and their filesystem
    /// is in nobody's mount table any more.
    fn detach(&self) {
        let target = CString::new(self.mountpoint.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }, 0, "umount -l");
    }

    /// The threads of process `pid` left waiting on it. A thread waiting on a request the
    /// server has read cannot end before it is answered, so it is still there.
    fn unanswered(&self, pid: u32) -> Vec<u32> {
        let tids = self.unanswered.lock().unwrap().clone();
        tids.into_iter().filter(|tid| Path::new(&format!("/proc/{pid}/task/{tid}")).exists()).collect()
    }

    /// From now on, requests are read and never answered.
    fn stop_answering(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

impl Drop for FuseFile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        let target = CString::new(self.mountpoint.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The FUSE protocol (linux/fuse.h), just enough for a file to be looked up, opened, mapped and
/// read; requests other than these get ENOSYS.
fn serve(
    device: std::fs::File,
    name: &str,
    contents: &[u8],
    stalled: &AtomicBool,
    stop: &AtomicBool,
    unanswered: &Mutex<Vec<u32>>,
) {
    const LOOKUP: u32 = 1;
    const FORGET: u32 = 2;
    const GETATTR: u32 = 3;
    const OPEN: u32 = 14;
    const READ: u32 = 15;
    const RELEASE: u32 = 18;
    const FLUSH: u32 = 25;
    const INIT: u32 = 26;
    const OPENDIR: u32 = 27;
    const RELEASEDIR: u32 = 29;
    const INTERRUPT: u32 = 36;
    const BATCH_FORGET: u32 = 42;
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let attr = |node: u64| {
        let (mode, size) = if node == FuseFile::ROOT {
            (libc::S_IFDIR | 0o755, 0)
        } else {
            (libc::S_IFREG | 0o755, contents.len() as u64)
        };
        let mut a = Vec::with_capacity(88);
        for v in [node, size, size.div_ceil(512), 0, 0, 0] {
            a.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u32, 0, 0, mode, 1, 0, 0, 0, 4096, 0] {
            a.extend_from_slice(&v.to_le_bytes());
        }
        a
    };
    let mut buffer = vec![0u8; (1 << 20) + 4096];
    let fd = device.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, 50) } <= 0 {
            continue;
        }
        // SAFETY: reading into our own buffer of that length.
        let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n < 40 {
            continue;
        }
        let request = &buffer[..n as usize];
        let (opcode, unique, node) = (u32_at(request, 4), u64_at(request, 8), u64_at(request, 16));
        let body = &request[40..];
        if matches!(opcode, FORGET | BATCH_FORGET | INTERRUPT) {
            continue;
        }
        if stalled.load(Ordering::SeqCst) {
            // fuse_in_header.pid: the calling thread.
            unanswered.lock().unwrap().push(u32_at(request, 32));
            continue;
        }
        let (error, payload): (i32, Vec<u8>) = match opcode {
            INIT => {
                let mut out = Vec::with_capacity(64);
                for v in [7u32, 31, u32_at(body, 8), 0] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&[0; 4]); // max_background, congestion_threshold
                out.extend_from_slice(&4096u32.to_le_bytes()); // max_write
                out.extend_from_slice(&1u32.to_le_bytes()); // time_gran
                out.resize(64, 0);
                (0, out)
            }
            LOOKUP if node == FuseFile::ROOT && body.split(|&b| b == 0).next() == Some(name.as_bytes()) => {
                // Names stay cached for an hour; attributes are asked for every time.
                let mut out = Vec::new();
                for v in [FuseFile::FILE, 0, 3600, 0] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&[0; 8]);
                out.extend(attr(FuseFile::FILE));
                (0, out)
            }
            LOOKUP => (-libc::ENOENT, Vec::new()),
            GETATTR => {
                let mut out = vec![0; 16];
                out.extend(attr(node));
                (0, out)
            }
            OPEN | OPENDIR => (0, vec![0; 16]),
            READ => {
                let (offset, size) = (u64_at(body, 8) as usize, u32_at(body, 16) as usize);
                let start = offset.min(contents.len());
                (0, contents[start..(start + size).min(contents.len())].to_vec())
            }
            RELEASE | FLUSH | RELEASEDIR => (0, Vec::new()),
            _ => (-libc::ENOSYS, Vec::new()),
        };
        let mut reply = Vec::with_capacity(16 + payload.len());
        reply.extend_from_slice(&(16 + payload.len() as u32).to_le_bytes());
        reply.extend_from_slice(&error.to_le_bytes());
        reply.extend_from_slice(&unique.to_le_bytes());
        reply.extend(payload);
        // SAFETY: writing our own buffer.
        unsafe { libc::write(fd, reply.as_ptr().cast(), reply.len()) };
    }
    // Closing the device (dropping it here) aborts the connection: pending requests fail.
}

#[test]
fn files_on_fuse_are_never_asked_for_anything() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let scratch = SharedDir::new("fuse");
    let marker = marker_library(&scratch.0);
    let mapper = mapper(&scratch.0);
    let (mounted, detached) = (scratch.0.join("mounted"), scratch.0.join("detached"));
    for dir in [&mounted, &detached] {
        std::fs::create_dir(dir).unwrap();
    }
    // Two FUSE filesystems serving a marker library: one stays mounted, the other is detached
    // once the file is mapped. Neither answers anything from then on.
    let fuse = FuseFile::mount(&mounted, "lib.so", marker.clone());
    let gone = FuseFile::mount(&detached, "lib.so", marker.clone());
    let on_fuse = Mapper::start(&mapper, &[&mounted.join("lib.so"), &detached.join("lib.so")]);
    let gone_device =
        std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(detached.join("lib.so")).unwrap());
    gone.detach();
    fuse.stop_answering();
    gone.stop_answering();

    let receiver = Receiver::start(Protocol::Grpc);
    let all: Vec<&Capability> = CAPABILITIES.iter().collect();
    let (mut sidecar, _copy) = start_sidecar(
        &all,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "info,otel_sendmmsg::probes::thread_context=debug"),
        ],
    );
    // Dropped before the sidecar if the test fails: a thread waiting on a FUSE request the
    // server has read cannot be killed until the connection is aborted.
    let (fuse, gone, on_fuse) = (fuse, gone, on_fuse);
    let mounted_refused =
        format!("not looked into {}/lib.so: it is on a FUSE filesystem (fuse", mounted.display());
    wait_for(&sidecar, "the mounted FUSE file refused", |log| log.contains(&mounted_refused));
    // A detached mount's files are named from its own root: "/lib.so".
    let detached_refused = format!(
        "not looked into /lib.so: its filesystem (device {}:{}) is not mounted where the process is",
        libc::major(gone_device),
        libc::minor(gone_device)
    );
    wait_for(&sidecar, &detached_refused, |log| log.contains(&detached_refused));
    let asked = |pid| (fuse.unanswered(pid), gone.unanswered(pid));
    assert_eq!(asked(sidecar.pid()), (vec![], vec![]), "the sidecar's requests reached a FUSE server");
    let waiting_on_fuse: Vec<_> = threads(sidecar.pid())
        .into_iter()
        .filter(|(_, _, wchan)| wchan.contains("fuse") || wchan.contains("request_wait"))
        .collect();
    assert!(waiting_on_fuse.is_empty(), "{waiting_on_fuse:?}");

    // The scan goes on: a genuine library mapped now is attached; a call arrives as a span.
    let later = scratch.file("later.so", &marker);
    let genuine = Mapper::start(&mapper, &[&later]);
    let attached = format!("context marker: attached to /proc/{}/root{}", genuine.pid(), later.display());
    wait_for(&sidecar, "the later library", |log| log.lines().any(|l| l.ends_with(&attached)));
    let calls = run_workload(&["udp4"]);
    let deadline = Instant::now() + WAIT;
    while receiver.spans_of(calls[0].pid).is_empty() {
        assert!(Instant::now() < deadline, "the workload's call never arrived:\n{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(asked(sidecar.pid()), (vec![], vec![]), "the sidecar's requests reached a FUSE server");
    drop((genuine, on_fuse, fuse, gone));
    assert!(sidecar.is_running());
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}
