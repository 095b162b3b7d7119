//! Least privilege, end to end, as root: the real sidecar started as `nobody` with only the
//! capabilities `privileges::CAPABILITIES` documents traces real calls, even another user's
//! inside that user's spans (published through the OTEP 4947 thread context, read through
//! `/proc/PID/map_files`); without a required one it stops naming it; without the optional one
//! (`CAP_CHECKPOINT_RESTORE`) it says so, traces, and still reads that thread context, finding
//! the file by its path under `/proc/PID/root`. And the container way (non-root, file
//! capabilities from the Dockerfile's own `setcap` line, the rest decided by the bounding set)
//! works the same.

mod support;

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Write},
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
    time::{Duration, Instant},
};

use otel_sendmmsg::privileges::{Capability, Need, CAPABILITIES};
use support::*;

/// Another unprivileged user, for the app whose process the sidecar must look into.
const APP_USER: u32 = 4321;
const ITERATIONS: usize = 3;

/// setpriv's spelling: `bpf`, `sys_ptrace`.
fn setpriv_name(c: &Capability) -> String {
    c.short_name().to_ascii_lowercase()
}

fn names(caps: impl IntoIterator<Item = &'static Capability>) -> Vec<String> {
    caps.into_iter().map(setpriv_name).collect()
}

fn required() -> impl Iterator<Item = &'static Capability> {
    CAPABILITIES.iter().filter(|c| c.need == Need::Required)
}

/// A copy of a binary that other users can run, removed again when dropped (each is around
/// 100 MB, and every run makes some).
struct Copied(PathBuf);

impl Copied {
    fn of(binary: &Path, name: &str) -> Copied {
        Copied(copy_for_other_users(binary, name))
    }
}

impl std::ops::Deref for Copied {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Copied {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        // The directory goes with its last copy.
        let _ = self.0.parent().map(std::fs::remove_dir);
    }
}

/// The sidecar, where `nobody` can run it.
fn sidecar_binary() -> Copied {
    Copied::of(Path::new(SIDECAR), "otel-sendmmsg")
}

fn otlp_vars(receiver: &Receiver) -> Vec<(&str, &str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
}

/// [`otlp_vars`], with the thread-context scan's debug lines, which say how each file was
/// reached.
fn otlp_vars_debug(receiver: &Receiver) -> Vec<(&str, &str)> {
    let mut vars = otlp_vars(receiver);
    vars.push(("RUST_LOG", "info,otel_sendmmsg::probes::thread_context=debug"));
    vars
}

fn start_as_nobody(
    binary: &Path,
    caps: &[String],
    vars: &[(&str, &str)],
) -> Result<Sidecar, (std::process::ExitStatus, String)> {
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    Sidecar::try_start_command(in_own_bpffs(&setpriv(NOBODY, &caps, true, binary)), vars)
}

fn mask(caps: impl IntoIterator<Item = &'static Capability>) -> u64 {
    caps.into_iter().fold(0, |m, c| m | 1 << c.number)
}

/// The udp4 scenario's one call, traced and exported with its exact result.
fn assert_traces_a_call(receiver: &Receiver, sidecar: Sidecar) -> Stopped {
    let calls = run_workload(&["udp4"]);
    let stopped = stop_cleanly(sidecar);
    let spans = receiver.spans_of(calls[0].pid);
    assert_eq!(spans.len(), 1, "one span for the workload's call:\n{}", stopped.stderr);
    assert_eq!(spans[0].int("sendmmsg.sent"), Some(8));
    assert_eq!(spans[0].int("sendmmsg.messages.attempted"), Some(8));
    stopped
}

#[test]
fn the_capability_numbers_are_the_names_the_kernel_tools_give_them() {
    for c in CAPABILITIES {
        let out = Command::new("capsh").arg(format!("--decode={:x}", 1u64 << c.number)).output();
        let out = out.expect("capsh (Debian's libcap2-bin) is needed: run scripts/setup.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.trim().ends_with(&format!("={}", c.setcap_name())), "{}: capsh says {text}", c.name);
    }
}

#[test]
fn with_only_the_documented_capabilities_a_non_root_sidecar_traces() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let binary = sidecar_binary();
    let receiver = Receiver::start(Protocol::Grpc);
    let sidecar = start_as_nobody(&binary, &names(CAPABILITIES), &otlp_vars(&receiver))
        .unwrap_or_else(|(status, log)| panic!("it did not start ({status}):\n{log}"));
    // Really unprivileged: nobody, with these capabilities and no other.
    assert_eq!(status_field(sidecar.pid(), "Uid"), NOBODY.to_string());
    let effective = u64::from_str_radix(&status_field(sidecar.pid(), "CapEff"), 16).unwrap();
    assert_eq!(effective, mask(CAPABILITIES), "effective set {effective:#x}");
    let stopped = assert_traces_a_call(&receiver, sidecar);
    assert!(!stopped.stderr.contains("missing CAP_"), "{}", stopped.stderr);
}

#[test]
fn without_any_one_required_capability_start_up_stops_naming_it() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let binary = sidecar_binary();
    for missing in required() {
        let caps = names(CAPABILITIES.iter().filter(|c| *c != missing));
        let (status, log) = match start_as_nobody(&binary, &caps, &[("OTEL_TRACES_EXPORTER", "none")]) {
            Ok(sidecar) => panic!("it started without {}:\n{}", missing.name, stop_cleanly(sidecar).stderr),
            Err(failed) => failed,
        };
        assert_eq!(status.code(), Some(1), "without {}: {status}\n{log}", missing.name);
        assert!(
            log.contains(&format!("missing {} ({})", missing.name, missing.purpose)),
            "without {}:\n{log}",
            missing.name
        );
        assert_eq!(log.matches("missing CAP_").count(), 1, "only that one is named:\n{log}");
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// The demo app as another unprivileged user, stopped before it sends.
struct App {
    child: Child,
    stdin: ChildStdin,
    binary: Copied,
}

impl App {
    fn start(endpoint: &str, sink: &UdpSocket) -> App {
        let binary = Copied::of(&build_demo_app(), "otel-sendmmsg-demo");
        let target = sink.local_addr().unwrap();
        let mut child =
            demo_app(&mut setpriv(APP_USER, &[], false, &binary), "my-app", endpoint, target, ITERATIONS, 20)
                .spawn()
                .expect("starting the demo app");
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("the demo app did not get ready");
            if line == "waiting" {
                break;
            }
        }
        assert_eq!(status_field(child.id(), "Uid"), APP_USER.to_string());
        App { child, stdin, binary }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the sidecar reads this process's `otel_thread_ctx_v1`, found in this very
    /// binary, and returns the scan's debug line on the binary (which says through which path
    /// it was read).
    fn wait_until_read(&self, sidecar: &Sidecar) -> String {
        let pid = self.pid();
        let binary = self.binary.0.display();
        let reading =
            format!("thread context: reading otel_thread_ctx_v1 of process {pid} (defined in {binary}, ");
        let not_read = format!("thread context: process {pid} defines otel_thread_ctx_v1, not read");
        let defined = format!("thread context: otel_thread_ctx_v1 defined in {binary} (");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = sidecar.stderr();
            assert!(!log.contains(&not_read), "the demo's thread context cannot be located:\n{log}");
            if log.contains(&reading) {
                let line = log.lines().find(|l| l.contains(&defined));
                return line.unwrap_or_else(|| panic!("no word on the demo's binary:\n{log}")).to_owned();
            }
            assert!(Instant::now() < deadline, "the sidecar never read the demo's thread context:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run(mut self) -> u32 {
        writeln!(self.stdin, "go").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the demo app failed: {status}");
        self.child.id()
    }
}

/// What the app exported of its own and what the sidecar exported of its calls.
fn app_and_syscall_spans(receiver: &Receiver, pid: u32) -> (Vec<ReceivedSpan>, Vec<ReceivedSpan>) {
    let app: Vec<_> = receiver.spans().into_iter().filter(|s| s.span.name == "publish-batch").collect();
    let calls = receiver
        .spans_of(pid)
        .into_iter()
        .filter(|s| s.span.name == "sendmmsg" && s.str("thread.name") == Some("publisher"))
        .collect();
    assert_eq!(app.len(), ITERATIONS, "the app's own spans");
    (app, calls)
}

#[test]
fn with_them_another_users_calls_land_inside_that_users_spans() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let binary = sidecar_binary();
    let receiver = Receiver::start(Protocol::Grpc);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sidecar = start_as_nobody(&binary, &names(CAPABILITIES), &otlp_vars_debug(&receiver))
        .unwrap_or_else(|(status, log)| panic!("it did not start ({status}):\n{log}"));
    let app = App::start(&receiver.endpoint, &sink);
    // Through the kernel's link to the file the process maps (CAP_CHECKPOINT_RESTORE).
    let defined = app.wait_until_read(&sidecar);
    assert!(defined.contains(&format!("through /proc/{}/map_files/", app.pid())), "{defined}");
    let pid = app.run();
    let stopped = stop_cleanly(sidecar);
    let (app_spans, calls) = app_and_syscall_spans(&receiver, pid);
    let parents: HashSet<&Vec<u8>> = app_spans.iter().map(|s| &s.span.span_id).collect();
    assert_eq!(calls.len(), ITERATIONS, "{}", stopped.stderr);
    for call in &calls {
        assert!(parents.contains(&call.span.parent_span_id), "not inside an app span: {:?}", call.span);
        // Read from the other user's /proc/PID/environ and /proc/PID/exe.
        assert_eq!(str_attr(&call.resource, "service.name"), Some("my-app"));
        assert_eq!(str_attr(&call.resource, "process.executable.name"), Some("otel-sendmmsg-demo"));
    }
}

/// CAP_CHECKPOINT_RESTORE is listed for one reason: following `/proc/PID/map_files`. Without
/// it the sidecar says so at start-up, traces as before, and finds the file defining
/// `otel_thread_ctx_v1` by its path instead: the app's calls still land inside its spans.
#[test]
fn without_checkpoint_restore_it_traces_and_reads_the_thread_context_by_path() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let binary = sidecar_binary();
    let optional: Vec<&Capability> = CAPABILITIES.iter().filter(|c| c.need == Need::MapFiles).collect();
    assert_eq!(optional.iter().map(|c| c.name).collect::<Vec<_>>(), ["CAP_CHECKPOINT_RESTORE"]);
    assert_eq!(optional.len() + required().count(), CAPABILITIES.len(), "no other kind of need");
    let receiver = Receiver::start(Protocol::Grpc);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sidecar = start_as_nobody(&binary, &names(required()), &otlp_vars_debug(&receiver))
        .unwrap_or_else(|(status, log)| panic!("it did not start ({status}):\n{log}"));
    let log = sidecar.stderr();
    assert!(log.contains(&format!("missing CAP_CHECKPOINT_RESTORE ({})", optional[0].purpose)), "{log}");
    assert_eq!(log.matches("missing CAP_").count(), 1, "only that one is named:\n{log}");
    let app = App::start(&receiver.endpoint, &sink);
    let defined = app.wait_until_read(&sidecar);
    let by_path = format!("through /proc/{}/root{})", app.pid(), app.binary.0.display());
    assert!(defined.ends_with(&by_path), "{defined}");
    let pid = app.run();
    let stopped = stop_cleanly(sidecar);
    let (app_spans, calls) = app_and_syscall_spans(&receiver, pid);
    let parents: HashSet<&Vec<u8>> = app_spans.iter().map(|s| &s.span.span_id).collect();
    assert_eq!(calls.len(), ITERATIONS, "traced all the same:\n{}", stopped.stderr);
    for call in &calls {
        assert!(parents.contains(&call.span.parent_span_id), "not inside an app span: {:?}", call.span);
    }
}

/// The image's way: `nobody`, file capabilities from the Dockerfile's `setcap` line (permitted
/// only), and the container's bounding set (its `cap_add`) deciding which of them it gets.
#[test]
fn as_the_image_runs_it_file_capabilities_and_the_bounding_set_decide() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let dockerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))
        .expect("the sidecar's Dockerfile at the repository root");
    let words: Vec<&str> = dockerfile.split_whitespace().collect();
    let file_caps = words
        .windows(2)
        .find_map(|w| (w[0] == "setcap" && w[1].starts_with("cap_")).then_some(w[1]))
        .expect("a `setcap cap_...` command in the Dockerfile");
    let binary = Copied::of(Path::new(SIDECAR), "otel-sendmmsg-file-caps");
    let status = Command::new("setcap").arg(file_caps).arg(&*binary).status();
    let status = status.expect("setcap (Debian's libcap2-bin) is needed: run scripts/setup.sh");
    assert!(status.success(), "setcap {file_caps} refused");

    let receiver = Receiver::start(Protocol::Grpc);
    let all = names(CAPABILITIES);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let sidecar = Sidecar::try_start_command(
        in_own_bpffs(&setpriv(NOBODY, &all, false, &binary)),
        &otlp_vars(&receiver),
    )
    .unwrap_or_else(|(status, log)| panic!("it did not start ({status}):\n{log}"));
    let effective = u64::from_str_radix(&status_field(sidecar.pid(), "CapEff"), 16).unwrap();
    assert_eq!(effective, mask(CAPABILITIES), "raised from the permitted set: {effective:#x}");
    assert_traces_a_call(&receiver, sidecar);

    // A compose file or manifest that forgets one: the sidecar still runs, and names it.
    let without_perfmon: Vec<&str> = all.iter().copied().filter(|c| *c != "perfmon").collect();
    let failed = Sidecar::try_start_command(
        setpriv(NOBODY, &without_perfmon, false, &binary),
        &[("OTEL_TRACES_EXPORTER", "none")],
    );
    let (status, log) = failed.err().expect("it started without CAP_PERFMON");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("missing CAP_PERFMON ("), "{log}");
}
