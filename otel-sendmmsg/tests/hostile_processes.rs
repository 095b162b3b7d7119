//! Traced processes that attack the sidecar through their own `/proc` files, end to end: the
//! real sidecar runs as `nobody` with exactly its documented capabilities (as in
//! `privileges.rs`), and the hostile processes are small C programs run as another unprivileged
//! user. Any process may point its environment (`/proc/PID/environ`) at a mapping of its own
//! with `prctl(PR_SET_MM, PR_SET_MM_MAP)`, no privilege needed:
//! - at 4 GiB of untouched anonymous memory, which costs the host nothing but costs a reader
//!   that keeps what it reads 4 GiB;
//! - at memory whose reading never returns: the process holds its own mmap lock in a FUSE read
//!   that never returns and queues a writer behind it, so `/proc/PID/environ` (which takes that
//!   lock) blocks whoever reads it, in the kernel. (Pointing the environment at the FUSE file's
//!   mapping itself does not work: the kernel reads environ with `FOLL_ANON`, so file-backed
//!   memory there reads as nothing, at once. See `hostile/environ.c`.)
//!
//! The sidecar must read a bounded part of the first, give up on the second after its 1 s
//! deadline without any other thread or process paying for it, and still stop cleanly. The
//! kernel's identity capture at the first call reads neither (it copies only resident pages and
//! takes no lock): it marks both incomplete, so they are read from `/proc` as before, and the
//! stuck one's spans go under what was captured (its executable) at the deadline.

mod support;

use std::{
    io::{BufRead, BufReader},
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use support::*;

/// The unprivileged user the hostile processes run as.
const HOSTILE_USER: u32 = 4321;
/// What the hostile program does once its environment is in place: `CALLS` calls of `VLEN`.
const CALLS: usize = 3;
const VLEN: i64 = 2;
/// The name the hostile program gives its thread (`prctl(PR_SET_NAME)`), unlike its executable's.
const HOSTILE_THREAD: &str = "hostile-thread";
/// A plain process's resource, by its `OTEL_SERVICE_NAME`.
const BYSTANDER: &str = "bystander";
/// How long spans are waited for: generous, this is no performance limit.
const SPANS_WAIT: Duration = Duration::from_secs(30);
/// The sidecar's peak resident set size while it reads a 4 GiB environment, at most.
const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

const HOSTILE_SOURCE: &str = include_str!("hostile/environ.c");
const STUCK_FUSE_SOURCE: &str = include_str!("hostile/stuck_fuse.py");

/// `binary` copied where `nobody` and the hostile user can run it.
fn copied(dir: &SharedDir, binary: &str, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(name);
    copy_executable(Path::new(binary), &path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The hostile program, compiled now into `dir` under the executable name `name`.
fn compile_hostile(dir: &SharedDir, name: &str) -> PathBuf {
    let source = dir.path().join("environ.c");
    std::fs::write(&source, HOSTILE_SOURCE).unwrap();
    let out = dir.path().join(name);
    let status = Command::new("gcc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("running gcc (Debian's gcc)");
    assert!(status.success(), "compiling the hostile program");
    out
}

fn status_kib(pid: u32, field: &str) -> u64 {
    status_field(pid, field).parse().unwrap()
}

/// The sidecar as `nobody` with exactly its documented capabilities, in a bpffs of its own.
fn start_sidecar(dir: &SharedDir, receiver: &Receiver) -> Sidecar {
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    start_as_nobody(dir, &vars)
}

/// A hostile process as [`HOSTILE_USER`], alive until dropped (its stdin closes, then it is
/// killed and reaped).
struct Hostile {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl Hostile {
    /// Starts `binary BYTES PORT [FILE]` and waits until it has made its calls.
    fn start(binary: &Path, bytes: u64, sink: &UdpSocket, file: Option<&Path>) -> Hostile {
        let mut command = setpriv(HOSTILE_USER, &[], false, binary);
        command.arg(bytes.to_string()).arg(sink.local_addr().unwrap().port().to_string());
        if let Some(file) = file {
            command.arg(file);
        }
        let mut child = command
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the hostile program");
        let stdin = child.stdin.take();
        let lines = lines_of(child.stdout.take().unwrap());
        let mut hostile = Hostile { child, stdin, pid: 0 };
        let pid_line = hostile.line(&lines);
        hostile.pid = pid_line.trim().parse().unwrap_or_else(|_| panic!("not a pid: {pid_line:?}"));
        assert_eq!(hostile.pid, hostile.child.id(), "setpriv execs the program");
        let sent = hostile.line(&lines);
        assert_eq!(sent.trim(), format!("sent {CALLS} calls of {VLEN}"));
        hostile
    }

    fn line(&mut self, lines: &mpsc::Receiver<String>) -> String {
        lines.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            let _ = self.child.kill();
            let out = self.child.wait_with_output_ref();
            panic!("the hostile program did not report ({out})")
        })
    }
}

trait WaitOutput {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitOutput for Child {
    fn wait_with_output_ref(&mut self) -> String {
        let status = self.wait().map(|s| s.to_string()).unwrap_or_default();
        let mut stderr = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        format!("{status}: {stderr}")
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        // Its thread stuck in the FUSE read dies only once the FUSE server is gone (the page
        // lock it waits on is not killable): wait a little, never forever.
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A pipe's lines, as they come, from a thread of their own.
fn lines_of(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits until `count` spans of `pid` arrived (or the generous wait passed), and returns them.
fn spans_of(receiver: &Receiver, pid: u32, count: usize, sidecar: &Sidecar) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + SPANS_WAIT;
    loop {
        let spans = receiver.spans_of(pid);
        if spans.len() >= count || Instant::now() > deadline {
            // Anything late would come now: the exporter sends every 100 ms.
            std::thread::sleep(Duration::from_millis(300));
            let spans = receiver.spans_of(pid);
            assert_eq!(
                spans.len(),
                count,
                "spans of pid {pid} after {SPANS_WAIT:?} at most:\n{}",
                sidecar.stderr()
            );
            return spans;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn resource<'a>(span: &'a ReceivedSpan, key: &str) -> Option<&'a str> {
    str_attr(&span.resource, key)
}

/// The hostile process's calls, exactly, under a resource whose service is `service`.
fn assert_hostile_spans(spans: &[ReceivedSpan], service: &str, executable: &str) {
    assert_eq!(spans.len(), CALLS);
    for span in spans {
        assert_eq!(span.int("sendmmsg.sent"), Some(VLEN), "{span:?}");
        assert_eq!(span.str("thread.name"), Some(HOSTILE_THREAD), "{span:?}");
        assert_eq!(resource(span, "service.name"), Some(service), "{:?}", span.resource);
        assert_eq!(resource(span, "process.executable.name"), Some(executable), "{:?}", span.resource);
    }
}

/// A plain process of `uid`'s (root when `None`) calling for a second, with `OTEL_SERVICE_NAME`.
fn bystander(workload: &Path, uid: Option<u32>, service: &str) -> LoopReport {
    let mut command = match uid {
        Some(uid) => setpriv(uid, &[], false, workload),
        None => Command::new(workload),
    };
    let child = command
        .args(["loop", "1", "2", "20"])
        .env("OTEL_SERVICE_NAME", service)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the workload");
    loop_report(child)
}

#[test]
fn a_four_gib_environment_is_scanned_within_bounds() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let dir = SharedDir::new("4g");
    let workload = copied(&dir, WORKLOAD, "sendmmsg-workload");
    let hostile_binary = compile_hostile(&dir, "hostile-4g-env");
    let receiver = Receiver::start(Protocol::Grpc);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sidecar = start_sidecar(&dir, &receiver);
    // Start-up (parsing the kernel's BTF) peaks on its own; what matters here is what reading
    // the environment adds, so the peak is reset (clear_refs 5) once the sidecar is ready.
    let startup_peak = status_kib(sidecar.pid(), "VmHWM");
    std::fs::write(format!("/proc/{}/clear_refs", sidecar.pid()), "5").unwrap();
    let ready_rss = status_kib(sidecar.pid(), "VmHWM");

    // Zero pages, never touched: the host pays nothing for them, a reader that keeps them 4 GiB.
    let hostile = Hostile::start(&hostile_binary, 4 << 30, &sink, None);
    let environ_size = std::fs::metadata(format!("/proc/{}/environ", hostile.pid)).map(|m| m.len());
    let hostile_spans = spans_of(&receiver, hostile.pid, CALLS, &sidecar);
    // A plain process meanwhile, while the hostile one still lives.
    let plain = bystander(&workload, None, BYSTANDER);
    let plain_spans = spans_of(&receiver, plain.pid, plain.calls as usize, &sidecar);

    let peak = status_kib(sidecar.pid(), "VmHWM");
    eprintln!(
        "sidecar peak RSS: {startup_peak} KiB at start-up, {ready_rss} KiB when ready, \
         {peak} KiB after the 4 GiB environment (limit {PEAK_RSS_LIMIT_KIB} KiB); environ stat size {environ_size:?}"
    );
    let stopped = stop_cleanly(sidecar);
    drop(hostile);

    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "the sidecar's peak RSS reached {peak} KiB reading a 4 GiB environment:\n{}",
        stopped.stderr
    );
    // Named after its executable, as read from /proc in time: the environment names no service.
    assert_hostile_spans(&hostile_spans, "hostile-4g-env", "hostile-4g-env");
    assert!(plain.calls > 0);
    for span in &plain_spans {
        assert_eq!(resource(span, "service.name"), Some(BYSTANDER), "{:?}", span.resource);
        assert_eq!(resource(span, "process.executable.name"), Some("sendmmsg-workload"));
    }
    assert_eq!(summary_count(&stopped.stderr, "process_metadata_unavailable"), 0, "{}", stopped.stderr);
}

/// The FUSE filesystem whose reads never return, mounted in a directory of its own; unmounted
/// (lazily), its server killed and its directory removed when dropped, whatever happened.
struct StuckFuse {
    server: Child,
    reads: mpsc::Receiver<String>,
    mountpoint: PathBuf,
    /// Removed after the unmount (fields drop after `Drop::drop`).
    _dir: SharedDir,
}

impl StuckFuse {
    fn mount() -> StuckFuse {
        let dir = SharedDir::new("fuse");
        let script = dir.path().join("stuck_fuse.py");
        std::fs::write(&script, STUCK_FUSE_SOURCE).unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        // Debian's python, which has python3-fusepy; not whatever python3 is first on PATH.
        let mut server = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "starting the FUSE server (/usr/bin/python3 with python3-fusepy: scripts/setup.sh --tests)",
            );
        let reads = lines_of(server.stdout.take().unwrap());
        let fuse = StuckFuse { server, reads, mountpoint, _dir: dir };
        match fuse.reads.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line == "mounted" => {}
            other => panic!("the FUSE server did not mount: {other:?}"),
        }
        fuse
    }

    fn file(&self) -> PathBuf {
        self.mountpoint.join("environ")
    }
}

impl Drop for StuckFuse {
    fn drop(&mut self) {
        // Killing the server aborts the connection: every read stuck on it returns an error.
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
    }
}

/// The sidecar's threads blocked in the kernel (state `D`), as `tid comm wchan`.
fn blocked_threads(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        if state == Some("D") {
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            found.push(format!("{} {} {wchan}", task.file_name().to_string_lossy(), comm.trim()));
        }
    }
    found
}

#[test]
fn an_environment_whose_reading_never_returns_costs_only_its_own_metadata() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let fuse = StuckFuse::mount();
    let dir = SharedDir::new("stuck");
    let workload = copied(&dir, WORKLOAD, "sendmmsg-workload");
    let hostile_binary = compile_hostile(&dir, "hostile-stuck-env");
    let receiver = Receiver::start(Protocol::Grpc);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sidecar = start_sidecar(&dir, &receiver);

    // From its first call on, reading its environment never returns.
    let hostile = Hostile::start(&hostile_binary, 64 * 1024, &sink, Some(&fuse.file()));
    let stuck_read = fuse.reads.recv_timeout(SPANS_WAIT);
    // Its spans go after the deadline, under what the kernel captured at its first call (its
    // executable: its environment's pages were not there to read).
    let hostile_spans = spans_of(&receiver, hostile.pid, CALLS, &sidecar);
    let stuck_threads = blocked_threads(sidecar.pid());
    // The rest goes on: a plain process's calls made after the hostile one's arrive, exactly,
    // with their own resource.
    let plain = bystander(&workload, None, BYSTANDER);
    let plain_spans = spans_of(&receiver, plain.pid, plain.calls as usize, &sidecar);
    // Another process of the hostile user's, while the read is stuck: answered at once from the
    // identity the kernel captured, not read (a second stuck read would cost another thread).
    let same_user = bystander(&workload, Some(HOSTILE_USER), "same-user");
    let same_user_spans = spans_of(&receiver, same_user.pid, same_user.calls as usize, &sidecar);
    let still_stuck = blocked_threads(sidecar.pid());
    eprintln!("sidecar threads blocked in the kernel: {stuck_threads:?}, later {still_stuck:?}");

    let stopped = stop_cleanly(sidecar);
    // The FUSE server first: its end is what lets the hostile process's stuck thread die.
    drop(fuse);
    drop(hostile);

    let stuck_read = stuck_read.unwrap_or_else(|_| panic!("the hostile process never read the FUSE file"));
    assert!(stuck_read.starts_with("read "), "{stuck_read}");
    // The process jams whatever waits on its memory lock: the /proc reader that asked for its
    // environment, and (when the thread-context scan looks at it once jammed: its first call
    // has it looked at again) the look into one of its mapped files through
    // /proc/PID/map_files. One of each at most, and nothing else: both stop asking that user's
    // processes once one of theirs stalls.
    let count = |threads: &[String], name: &str| threads.iter().filter(|t| t.contains(name)).count();
    assert_eq!(count(&stuck_threads, "proc-reader"), 1, "the reader is blocked: {stuck_threads:?}");
    for threads in [&stuck_threads, &still_stuck] {
        assert!(
            threads.iter().all(|t| t.contains("proc-reader") || t.contains("context-look")),
            "only the reader and a thread-context look: {threads:?}"
        );
        assert!(count(threads, "proc-reader") <= 1 && count(threads, "context-look") <= 1, "{threads:?}");
    }
    assert!(stuck_threads.iter().all(|t| still_stuck.contains(t)), "still the same ones: {still_stuck:?}");
    assert_hostile_spans(&hostile_spans, "hostile-stuck-env", "hostile-stuck-env");
    assert!(plain.calls > 0);
    for span in &plain_spans {
        assert_eq!(resource(span, "service.name"), Some(BYSTANDER), "{:?}", span.resource);
        assert_eq!(resource(span, "process.executable.name"), Some("sendmmsg-workload"));
    }
    assert!(same_user.calls > 0);
    for span in &same_user_spans {
        // Its own service, captured in the kernel: no read of that user's processes needed.
        assert_eq!(resource(span, "service.name"), Some("same-user"), "{:?}", span.resource);
    }
    let unavailable = summary_count(&stopped.stderr, "process_metadata_unavailable");
    assert!(unavailable >= 1, "the hostile process's read: {unavailable}\n{}", stopped.stderr);
    assert!(summary_count(&stopped.stderr, "identities_incomplete") >= 1, "{}", stopped.stderr);
}
