//! The command line, through the real binary: `--help` and `--version` answer and do nothing
//! else, whatever the environment holds, and any other argument exits 2 naming it. "Nothing
//! else" is checked the one race-free way: each run is under a seccomp filter that kills the
//! process at its first `bpf(2)`, `perf_event_open(2)`, `mount(2)` or `capset(2)` (every
//! start-up makes one of them: `the_guard_stops_a_real_start_up` proves it of the same
//! settings), as root, and as `nobody` with the image's file capabilities (so raising them,
//! which the privilege check does first, would be caught too); and as `nobody` with no
//! capability at all. Without root the guard runs as the calling user, who is then the
//! unprivileged one.

mod support;

use std::{
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use otel_sendmmsg::privileges::CAPABILITIES;
use support::{SharedDir, NOBODY, SIDECAR};

/// A bad environment: start-up would refuse each of these with exit 2, and none may stop
/// `--help` or `--version`.
const BAD_ENVIRONMENT: &[(&str, &str)] = &[
    ("OTEL_SENDMMSG_RING_BUFFER_BYTES", "3MiB"),
    ("OTEL_SENDMMSG_NO_SUCH_SETTING", "1"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
];

/// The sidecar with `args`, only `vars` in its environment.
fn sidecar(program: &Path, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(program);
    command.args(args).env_clear().envs(vars.iter().copied()).stdin(Stdio::null());
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("running the sidecar")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Kills the process (SIGSYS) at its first call of a syscall that tracing needs and a question
/// about the program must never make: loading or attaching BPF, opening perf events, mounting
/// tracefs or bpffs, raising capabilities. Then, when `user` is given (as root), becomes that
/// user before the exec, so file capabilities still apply: root may install the filter without
/// `no_new_privs`, which would void them; anyone else must set it. Inherited across the exec.
/// x86-64 numbers; a process of another architecture is killed at once.
fn guarded(command: &mut Command, user: Option<u32>) {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const ARCH_OFFSET: u32 = 4; // seccomp_data.arch
    const NR_OFFSET: u32 = 0; // seccomp_data.nr
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let forbidden = [libc::SYS_bpf, libc::SYS_perf_event_open, libc::SYS_mount, libc::SYS_capset];
    let load =
        |k| libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k };
    let ret = |k| libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k };
    let kill = ret(libc::SECCOMP_RET_KILL_PROCESS);
    // A jump's targets count from the next instruction: equal falls through to the kill below
    // it, anything else skips it.
    let mut program =
        vec![load(ARCH_OFFSET), libc::sock_filter { code: JEQ, jt: 1, jf: 0, k: AUDIT_ARCH_X86_64 }];
    program.extend([kill, load(NR_OFFSET)]);
    for nr in forbidden {
        program.extend([libc::sock_filter { code: JEQ, jt: 0, jf: 1, k: nr as u32 }, kill]);
    }
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    assert!(user.is_none() || is_root(), "only root can become another user");
    let no_new_privs = !is_root();
    // SAFETY: between fork and exec, only raw syscalls (async-signal-safe) on memory the closure
    // owns, which the fork copied.
    unsafe {
        command.pre_exec(move || {
            let filter = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
            let failed = |r: libc::c_long| if r != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            if no_new_privs {
                failed(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
            }
            failed(libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &filter as *const _).into())?;
            if let Some(id) = user {
                failed(libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()))?;
                failed(libc::syscall(libc::SYS_setresgid, id, id, id))?;
                failed(libc::syscall(libc::SYS_setresuid, id, id, id))?;
            }
            Ok(())
        });
    }
}

/// Copies of the sidecar that `nobody` can run, one with the image's file capabilities
/// (`setcap ...=p`, every capability the sidecar uses), removed with their directory.
struct Copies {
    dir: SharedDir,
}

impl Copies {
    fn new(test: &str) -> Copies {
        let dir = SharedDir::new(&format!("cli-{test}"));
        for name in ["plain", "file-caps"] {
            support::copy_executable(Path::new(SIDECAR), &dir.path().join(name));
        }
        let caps: Vec<String> = CAPABILITIES.iter().map(|c| c.setcap_name()).collect();
        let status = Command::new("setcap")
            .arg(format!("{}=p", caps.join(",")))
            .arg(dir.path().join("file-caps"))
            .status()
            .expect("setcap (Debian's libcap2-bin) is needed: run scripts/setup.sh");
        assert!(status.success(), "setcap refused");
        // Readable and runnable by nobody.
        for name in ["plain", "file-caps"] {
            let _ = Command::new("chmod").arg("0755").arg(dir.path().join(name)).status();
        }
        Copies { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The ways a question must be answered with nothing else happening, each (what, command).
fn settings(args: &[&str], vars: &[(&str, &str)], copies: Option<&Copies>) -> Vec<(&'static str, Command)> {
    let mut root_or_self = sidecar(Path::new(SIDECAR), args, vars);
    guarded(&mut root_or_self, None);
    let mut settings =
        vec![(if is_root() { "as root, guarded" } else { "as this user, guarded" }, root_or_self)];
    if let Some(copies) = copies {
        let mut image = sidecar(&copies.path("file-caps"), args, vars);
        guarded(&mut image, Some(NOBODY));
        settings.push(("as nobody with the image's file capabilities, guarded", image));
        let mut bare = support::setpriv(NOBODY, &[], false, &copies.path("plain"));
        bare.args(args).env_clear().envs(vars.iter().copied()).stdin(Stdio::null());
        settings.push(("as nobody without any capability", bare));
    }
    settings
}

/// The copies, when the test runs as root (who alone can become `nobody`).
fn copies(test: &str) -> Option<Copies> {
    is_root().then(|| Copies::new(test))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// Each answer to `args` under a bad environment, in every setting.
fn answers(args: &[&str], copies: Option<&Copies>) -> Vec<(&'static str, Output)> {
    settings(args, BAD_ENVIRONMENT, copies).into_iter().map(|(how, command)| (how, run(command))).collect()
}

/// The guard is no formality: started for real in the same settings, the sidecar dies at its
/// first privileged syscall (nobody with file capabilities: raising them), or, with no
/// privilege at all, is refused before it makes one.
#[test]
fn the_guard_stops_a_real_start_up() {
    let copies = copies("guard");
    let vars = [("PATH", "/usr/bin:/bin"), ("OTEL_TRACES_EXPORTER", "none")];
    for (how, command) in settings(&[], &vars, copies.as_ref()) {
        let out = run(command);
        let stderr = text(&out.stderr);
        if how.contains("guarded") && (is_root() || how.contains("file capabilities")) {
            assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{how}: {:?}: {stderr}", out.status);
        } else {
            assert_eq!(out.status.code(), Some(1), "{how}: {stderr}");
            assert!(stderr.contains("missing CAP_BPF"), "{how}: {stderr}");
        }
    }
}

#[test]
fn help_names_every_variable_and_does_nothing_else() {
    let variables = otel_sendmmsg::config::variables();
    assert!(variables.len() > 30, "{variables:?}");
    let copies = copies("help");
    let mut helps = Vec::new();
    for flag in ["--help", "-h"] {
        for (how, out) in answers(&[flag], copies.as_ref()) {
            let stdout = text(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{flag}, {how}: {:?} {}", out.status, text(&out.stderr));
            assert_eq!(text(&out.stderr), "", "{flag}, {how}: nothing logged, nothing started");
            for variable in &variables {
                assert!(stdout.contains(&format!("\n  {variable} (default: ")), "{flag}, {how}: {variable}");
            }
            for part in ["Usage: otel-sendmmsg", "\nOptions:\n", "\nExamples:\n", "\nExit status:\n"] {
                assert!(stdout.contains(part), "{flag}, {how}: {part:?} in\n{stdout}");
            }
            helps.push(stdout);
        }
    }
    assert!(helps.windows(2).all(|w| w[0] == w[1]), "every way to ask gets the same help");
}

#[test]
fn version_is_cargos_with_the_commit_and_the_bpf_objects_hash() {
    let sha256 = |object: &str| {
        let sha256sum = Command::new("sha256sum").arg(object).output().expect("running sha256sum");
        text(&sha256sum.stdout).split_whitespace().next().unwrap().to_owned()
    };
    let object_hash = sha256(concat!(env!("OUT_DIR"), "/otel-sendmmsg.bpf.o"));
    let hash_map_object_hash = sha256(concat!(env!("OUT_DIR"), "/otel-sendmmsg-hash-map.bpf.o"));
    let expected = format!(
        "otel-sendmmsg {}\ngit commit: {}\nBPF object sha256: {object_hash}\n\
         BPF object sha256 (hash map): {hash_map_object_hash}\n",
        env!("CARGO_PKG_VERSION"),
        checked_out_commit().unwrap_or_else(|| "unknown".to_owned()),
    );
    let copies = copies("version");
    for flag in ["--version", "-V"] {
        for (how, out) in answers(&[flag], copies.as_ref()) {
            assert_eq!(out.status.code(), Some(0), "{flag}, {how}: {:?} {}", out.status, text(&out.stderr));
            assert_eq!(text(&out.stderr), "", "{flag}, {how}");
            assert_eq!(text(&out.stdout), expected, "{flag}, {how}");
        }
    }
}

/// The commit the workspace is checked out at, when it is a git checkout of its own (as the
/// build script decides).
fn checked_out_commit() -> Option<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git").current_dir(workspace).args(args).output().ok()?;
        out.status.success().then(|| text(&out.stdout).trim().to_owned())
    };
    let top = Path::new(&git(&["rev-parse", "--show-toplevel"])?).canonicalize().ok()?;
    (top == workspace.canonicalize().ok()?).then(|| git(&["rev-parse", "HEAD"])).flatten()
}

#[test]
fn any_other_argument_exits_2_naming_it_in_one_line() {
    let copies = copies("unexpected");
    for args in [&["--bogus"][..], &["trace"], &["--help", "extra"], &["-v"], &["--", "--help"], &["-x\ny"]] {
        let refused = args.iter().find(|a| !matches!(**a, "--help" | "-h")).unwrap();
        for (how, out) in answers(args, copies.as_ref()) {
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}, {how}: {:?} {stderr}", out.status);
            assert_eq!(text(&out.stdout), "", "{args:?}, {how}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}, {how}: one line: {stderr}");
            assert!(stderr.contains(&format!("{refused:?}")), "{args:?}, {how}: names {refused:?}: {stderr}");
            assert!(stderr.contains("--help"), "{args:?}, {how}: {stderr}");
        }
    }
}

/// `otel-sendmmsg --help | head -1`: the reader leaves early, and that is no failure and no
/// panic.
#[test]
fn a_reader_that_leaves_early_is_not_an_error() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both were just opened and are owned here alone.
    let (read_end, write_end) = unsafe {
        use std::os::fd::{FromRawFd, OwnedFd};
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    drop(read_end);
    let mut command = sidecar(Path::new(SIDECAR), &["--help"], &[]);
    let out = command.stdout(Stdio::from(write_end)).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}: {}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}
