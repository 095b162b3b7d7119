//! End to end, as root: an unprivileged user's processes map files meant to mislead the
//! sidecar's discovery of the OTEP 4947 thread context (files defining the TLS variable
//! `otel_thread_ctx_v1`) — a path with a space and a newline, a FIFO named as the part before
//! the space, a device node, a symlink to a defining library and a deleted file where mapped
//! files were, files on FUSE filesystems that stop answering — and many processes running
//! distinct defining executables. The sidecar runs as `nobody` with exactly its documented
//! capabilities. It must keep tracing, never block, never open the FIFO or the device, look
//! into the genuine files only (the debug line `otel_thread_ctx_v1 defined in PATH (...,
//! through VIA)` says which, and how it reached each), read at most
//! `OTEL_SENDMMSG_MAX_CONTEXT_PROCESSES` processes at once, give a slot freed by an exit to a
//! process refused before, and forget processes when they exit.

mod support;

use std::{
    collections::{HashMap, HashSet},
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
use otel_sendmmsg_common::thread_context::SYMBOL;
use support::*;

/// The unprivileged user whose processes map the files.
const APP_USER: u32 = 4322;
const WAIT: Duration = Duration::from_secs(60);

/// gcc's output for `source` with `args`, which every user may run.
fn compiled(dir: &Path, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let status = Command::new("gcc").args(args).arg("-o").arg(&out).arg(&src).status().expect("running gcc");
    assert!(status.success(), "gcc {name}");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    out
}

/// A small library defining `otel_thread_ctx_v1` as the OTEP has it (TLS, exported), with an
/// accessor, so a TLSDESC relocation names it as in a library that publishes through it.
fn defining_library(dir: &Path) -> Vec<u8> {
    let source = format!("__thread void *{SYMBOL};\nvoid *thread_ctx(void) {{ return {SYMBOL}; }}\n");
    let args = ["-shared", "-fPIC", "-O2", "-mtls-dialect=gnu2"];
    std::fs::read(compiled(dir, "libctx.so", &source, &args)).unwrap()
}

/// What the debug line says of a defining library built by [`defining_library`] and looked into
/// through `via`: `otel_thread_ctx_v1 defined in PATH (.dynsym, 1 relocations, through VIA`.
fn defined_line(path: &str, via: &str) -> String {
    format!("thread context: {SYMBOL} defined in {path} (.dynsym, 1 relocations, through {via}")
}

/// The debug lines saying a file under `dir` was looked into and defines the variable.
fn defined_lines<'a>(log: &'a str, dir: &str) -> Vec<&'a str> {
    let prefix = format!("thread context: {SYMBOL} defined in {dir}/");
    log.lines().filter(|l| l.contains(&prefix)).collect()
}

/// An executable defining the variable and accessing it only itself: local-exec, so the
/// sidecar locates it without reading the process's memory. It waits for a signal.
fn defining_program(dir: &Path) -> PathBuf {
    let source = format!(
        "#include <unistd.h>\n__thread void *{SYMBOL};\nint main(void) {{ {SYMBOL} = 0; pause(); return 0; }}\n"
    );
    let export = format!("-Wl,--export-dynamic-symbol={SYMBOL}");
    compiled(dir, "ctx-app", &source, &["-O2", &export])
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

/// The hostile user's scene; then a genuine defining library mapped afterwards must be looked
/// into.
fn hostile_scene(caps: &[&Capability]) -> (Stopped, SharedDir, u32, u32) {
    let scratch = SharedDir::new(if caps.len() == CAPABILITIES.len() { "all" } else { "nocheckpoint" });
    let dir = &scratch.0;
    let library = defining_library(dir);
    let mapper = mapper(dir);
    // A defining library under a name with a space and a newline; the old parser took the part
    // before the space for the path, where a FIFO waits (opening it for reading blocks).
    let spaced = scratch.file("lib x\ndefines.so", &library);
    mkfifo(&dir.join("lib"));
    // Files mapped, then unlinked and replaced by a device node, a symlink to a defining library
    // elsewhere, or nothing (a deleted defining library, still mapped).
    let device = scratch.file("dev.so", b"not ELF: the original of the device decoy");
    let symlinked = scratch.file("sym.so", b"not ELF: the original of the symlink decoy");
    let deleted = scratch.file("gone.so", &library);
    let elsewhere = scratch.file("elsewhere.so", &library);
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

    // The scan thread still goes on: a genuine defining library mapped now (by a process it
    // has never seen: found by the scan of new processes) is looked into.
    let later = scratch.file("later.so", &library);
    let genuine = Mapper::start(&mapper, &[&later]);
    let looked_into = format!("{SYMBOL} defined in {} (", later.display());
    wait_for(&sidecar, "the later library looked into", |log| log.contains(&looked_into));
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

#[test]
fn with_every_capability_hostile_mappings_neither_block_nor_mislead_it() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let all: Vec<&Capability> = CAPABILITIES.iter().collect();
    let (stopped, scratch, decoys, genuine) = hostile_scene(&all);
    let log = &stopped.stderr;
    let dir = scratch.0.display().to_string();
    let defined = defined_lines(log, &dir);
    // Read through map_files, the kernel's link to the very file mapped: the file with the odd
    // name (logged escaped, on one line), the deleted one, and the later one; never the
    // symlink's target under the symlink's name, nor a decoy.
    let map_files = |pid: u32| format!("/proc/{pid}/map_files/");
    let expected = [
        defined_line(&format!("{dir}/lib x\\ndefines.so"), &map_files(decoys)),
        defined_line(&format!("{dir}/gone.so"), &map_files(decoys)),
        defined_line(&format!("{dir}/later.so"), &map_files(genuine)),
    ];
    for line in &expected {
        assert_eq!(defined.iter().filter(|l| l.contains(line.as_str())).count(), 1, "{line}:\n{log}");
    }
    assert_eq!(defined.len(), expected.len(), "{log}");
    // Through map_files the device and symlink decoys are their mapped originals (not ELF):
    // nothing is refused, and nothing else is read.
    let refused: Vec<&str> =
        log.lines().filter(|l| l.contains("not looked into") && l.contains(&dir)).collect();
    assert!(refused.is_empty(), "{refused:#?}");
    assert!(!log.lines().any(|l| l.starts_with("defines.so")), "a forged log line:\n{log}");
}

#[test]
fn without_checkpoint_restore_the_path_fallback_refuses_every_decoy() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let required: Vec<&Capability> = CAPABILITIES.iter().filter(|c| c.need == Need::Required).collect();
    assert_eq!(
        CAPABILITIES.iter().filter(|c| c.need != Need::Required).map(|c| c.name).collect::<Vec<_>>(),
        ["CAP_CHECKPOINT_RESTORE"],
        "the one left out here is what map_files needs"
    );
    let (stopped, scratch, decoys, genuine) = hostile_scene(&required);
    let log = &stopped.stderr;
    let dir = scratch.0.display().to_string();
    // Without map_files, each genuine file is found by its path under the process's root.
    let defined = defined_lines(log, &dir);
    let root = |pid: u32, name: &str| format!("/proc/{pid}/root{dir}/{name})");
    let expected = [
        defined_line(&format!("{dir}/lib x\\ndefines.so"), &root(decoys, "lib x\\ndefines.so")),
        defined_line(&format!("{dir}/later.so"), &root(genuine, "later.so")),
    ];
    for line in &expected {
        assert_eq!(defined.iter().filter(|l| l.contains(line.as_str())).count(), 1, "{line}:\n{log}");
    }
    assert_eq!(defined.len(), expected.len(), "no decoy was read:\n{log}");
    assert!(!log.lines().any(|l| l.starts_with("defines.so")), "a forged log line:\n{log}");
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

/// A process of [`APP_USER`] running a program that waits for a signal; killed and reaped when
/// dropped.
struct Running(Child);

impl Running {
    /// Returns once the process runs `program` itself, no longer `setpriv`: a process is looked
    /// into as it is when the scan first sees it (and again only at its first `sendmmsg` call,
    /// which this one never makes).
    fn start(program: &Path) -> Running {
        let child = setpriv(APP_USER, &[], false, program)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let running = Running(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{}/exe", running.pid())).ok().as_deref() != Some(program) {
            assert!(Instant::now() < deadline, "{} never ran", program.display());
            std::thread::sleep(Duration::from_millis(5));
        }
        running
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The info line of a process whose thread context is read from now on.
const READING: (&str, &str) = ("thread context: reading otel_thread_ctx_v1 of process ", " (defined in ");
/// The debug line of a reached process that exited.
const FORGOTTEN: (&str, &str) = ("thread context: process ", " forgotten");

/// The pid between `prefix` and `suffix` on `line`, if it is such a line.
fn pid_in(line: &str, (prefix, suffix): (&str, &str)) -> Option<u32> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[end..].starts_with(suffix).then(|| rest[..end].parse().ok())?
}

/// The pids of the lines of one kind, in the order logged.
fn pids(log: &str, kind: (&str, &str)) -> Vec<u32> {
    log.lines().filter_map(|l| pid_in(l, kind)).collect()
}

/// The processes read now, by the log: reached and not forgotten since.
fn live_reached(log: &str) -> HashSet<u32> {
    let mut live = HashSet::new();
    for line in log.lines() {
        if let Some(pid) = pid_in(line, READING) {
            live.insert(pid);
        } else if let Some(pid) = pid_in(line, FORGOTTEN) {
            live.remove(&pid);
        }
    }
    live
}

#[test]
fn many_defining_processes_are_capped_counted_and_forgotten_when_they_exit() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    const COPIES: usize = 12;
    const CAP: usize = 4;
    let scratch = SharedDir::new("many");
    let built = defining_program(&scratch.0);
    // Distinct files: what is capped is processes, whatever files they run.
    let copies: Vec<PathBuf> = (0..COPIES)
        .map(|i| {
            let copy = scratch.0.join(format!("copy{i}"));
            copy_executable(&built, &copy);
            copy
        })
        .collect();
    // Running before the sidecar starts, so its first scan sees each as it stays.
    let apps: Vec<Running> = copies.iter().map(|c| Running::start(c)).collect();
    let ours: HashMap<u32, &PathBuf> = apps.iter().map(Running::pid).zip(&copies).collect();
    let cap = CAP.to_string();
    let refusal = format!(": {CAP} processes are read already");
    let refused_line = ("thread context: not read in process ", refusal.as_str());
    let all: Vec<&Capability> = CAPABILITIES.iter().collect();
    let (sidecar, _copy) = start_sidecar(
        &all,
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_SENDMMSG_MAX_CONTEXT_PROCESSES", cap.as_str()),
            // The "forgotten" line is the event loop's (probes), the rest the scan's.
            ("RUST_LOG", "info,otel_sendmmsg::probes=debug"),
        ],
    );
    let mine = |pids: Vec<u32>| -> Vec<u32> { pids.into_iter().filter(|p| ours.contains_key(p)).collect() };
    // Processes of others that define the variable (another test binary's), which compete for
    // the slots: when there are none, the counts below are exact.
    let others = |log: &str| -> Vec<u32> {
        let mut all = pids(log, READING);
        all.extend(pids(log, refused_line));
        all.retain(|p| !ours.contains_key(p));
        all
    };
    let log = wait_for(&sidecar, "each of ours read or refused", |log| {
        let decided: HashSet<u32> = pids(log, READING).into_iter().chain(pids(log, refused_line)).collect();
        ours.keys().all(|p| decided.contains(p))
    });
    let reached = mine(pids(&log, READING));
    let refused = mine(pids(&log, refused_line));
    assert_eq!(reached.len() + refused.len(), COPIES, "each once, read or refused:\n{log}");
    assert!(!reached.is_empty() && reached.len() <= CAP, "{log}");
    if others(&log).is_empty() {
        assert_eq!(reached.len(), CAP, "{log}");
    }
    for pid in &reached {
        // Local-exec: an 8-byte TLS block of its own, right below the thread pointer.
        let line = format!(
            "reading otel_thread_ctx_v1 of process {pid} (defined in {}, static TLS at thread pointer -8)",
            ours[pid].display()
        );
        assert!(log.contains(&line), "{line}:\n{log}");
    }
    assert!(log.contains("raise it to read more"), "the cap is logged with its remedy:\n{log}");

    // A few more scans change nothing (a process refused is told once, not at every scan), and
    // nothing is held per process read.
    std::thread::sleep(Duration::from_secs(3));
    let log = sidecar.stderr();
    assert_eq!(
        (mine(pids(&log, READING)), mine(pids(&log, refused_line))),
        (reached.clone(), refused.clone())
    );
    assert!(live_reached(&log).len() <= CAP, "{:?} read at once:\n{log}", live_reached(&log));
    let held = descriptors(sidecar.pid()).len();

    // The processes read exit: each is forgotten, and processes refused take their slots.
    let (gone, kept): (Vec<Running>, Vec<Running>) =
        apps.into_iter().partition(|a| reached.contains(&a.pid()));
    drop(gone);
    wait_for(&sidecar, "the exited ones forgotten, a refused one read", |log| {
        let forgotten = pids(log, FORGOTTEN);
        let now = pids(log, READING);
        reached.iter().all(|p| forgotten.contains(p)) && refused.iter().any(|p| now.contains(p))
    });
    // The rest of that scan's lines, and another scan.
    std::thread::sleep(Duration::from_millis(1500));
    let log = sidecar.stderr();
    let now = pids(&log, READING);
    let taken: Vec<u32> = refused.iter().copied().filter(|p| now.contains(p)).collect();
    assert!(taken.len() <= CAP, "{log}");
    if others(&log).is_empty() {
        assert_eq!(taken.len(), reached.len().min(refused.len()), "every free slot taken:\n{log}");
    }
    assert!(live_reached(&log).len() <= CAP, "{:?} read at once:\n{log}", live_reached(&log));
    assert_eq!(mine(pids(&log, refused_line)), refused, "no refusal again:\n{log}");

    // The rest exit: every one of ours read is forgotten, and nothing is left of them.
    drop(kept);
    let log = wait_for(&sidecar, "every one of ours forgotten", |log| {
        let forgotten = pids(log, FORGOTTEN);
        reached.iter().chain(&taken).all(|p| forgotten.contains(p))
    });
    let left: Vec<u32> = live_reached(&log).into_iter().filter(|p| ours.contains_key(p)).collect();
    assert!(left.is_empty(), "{left:?} still read:\n{log}");
    let after = descriptors(sidecar.pid()).len();
    assert!(
        held <= after + 2,
        "{held} descriptors with {} processes read, {after} with none of ours:\n{:?}",
        reached.len(),
        descriptors(sidecar.pid())
    );
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let refusals = pids(&stopped.stderr, refused_line).len();
    assert_eq!(
        summary_count(&stopped.stderr, "context_processes_refused"),
        refusals as u64,
        "{}",
        stopped.stderr
    );
    assert!(refusals >= COPIES - CAP, "{}", stopped.stderr);
    if others(&stopped.stderr).is_empty() {
        assert_eq!(refusals, COPIES - CAP, "{}", stopped.stderr);
    }
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
    let library = defining_library(&scratch.0);
    let mapper = mapper(&scratch.0);
    let (mounted, detached) = (scratch.0.join("mounted"), scratch.0.join("detached"));
    for dir in [&mounted, &detached] {
        std::fs::create_dir(dir).unwrap();
    }
    // Two FUSE filesystems serving a defining library: one stays mounted, the other is detached
    // once the file is mapped. Neither answers anything from then on.
    let fuse = FuseFile::mount(&mounted, "lib.so", library.clone());
    let gone = FuseFile::mount(&detached, "lib.so", library.clone());
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

    // The scan goes on: a genuine library mapped now is looked into; a call arrives as a span.
    let later = scratch.file("later.so", &library);
    let genuine = Mapper::start(&mapper, &[&later]);
    let looked_into =
        defined_line(&later.display().to_string(), &format!("/proc/{}/map_files/", genuine.pid()));
    wait_for(&sidecar, "the later library looked into", |log| log.contains(&looked_into));
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
    for name in [format!("{}/lib.so", mounted.display()), "/lib.so".to_owned()] {
        let read = format!("{SYMBOL} defined in {name} (");
        assert!(!stopped.stderr.contains(&read), "{read}:\n{}", stopped.stderr);
    }
}
