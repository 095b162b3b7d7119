//! Runs commands inside another kernel: Debian's cloud kernels (see [`Debian`]), booted under
//! qemu with an initramfs that holds busybox and the given files at the paths the test binaries
//! expect them, so a test binary runs there unchanged.

use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Where scripts/setup-kernels.sh writes, per kernel, the path of the unpacked vmlinuz.
const KERNEL_POINTERS: &str = "/var/cache/otel-sendmmsg/kernels";

/// The kernels of the matrix besides the machine's own, as scripts/setup-kernels.sh prepares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Debian {
    /// Debian 11's 5.10: the oldest kernel in wide use with BTF; no `sock:sock_send_length`.
    V5_10,
    /// Debian 12's 6.1: kprobes and BTF, no `sock:sock_send_length`.
    V6_1,
    /// Debian 12's 6.12: kprobes, BTF and `sock:sock_send_length`; `sock_sendmsg` off
    /// sendmmsg's path, as on every kernel from 6.6 on.
    V6_12,
}

impl Debian {
    pub fn name(self) -> &'static str {
        match self {
            Debian::V5_10 => "5.10",
            Debian::V6_1 => "6.1",
            Debian::V6_12 => "6.12",
        }
    }
}
/// Printed by /init after the script, with its exit code.
const DONE_MARKER: &str = "GUEST-EXIT";

/// A kernel and the root file system it boots into; the staged files are removed on drop.
pub struct Guest {
    kernel: PathBuf,
    dir: PathBuf,
}

pub struct GuestRun {
    pub console: String,
    /// The script's exit code, if the guest got that far.
    pub exit_code: Option<i32>,
    pub duration: Duration,
}

impl Guest {
    /// The 6.1 kernel, booting into busybox plus `files` (see [`Guest::debian`]).
    pub fn debian_6_1(files: &[(&Path, &Path)]) -> Guest {
        Guest::debian(Debian::V6_1, files)
    }

    /// Debian's `kernel` prepared by scripts/setup-kernels.sh, booting into busybox plus
    /// `files`: each `(host path, path in the guest)` with the shared libraries it needs. A test
    /// without the kernel fails, saying so.
    pub fn debian(kernel: Debian, files: &[(&Path, &Path)]) -> Guest {
        let pointer = Path::new(KERNEL_POINTERS).join(format!("debian-{}", kernel.name()));
        let kernel = std::fs::read_to_string(&pointer)
            .map(|p| PathBuf::from(p.trim()))
            .ok()
            .filter(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "no {} kernel prepared: run scripts/setup.sh --tests (scripts/setup-kernels.sh)",
                    kernel.name()
                )
            });
        let guest = Guest { kernel, dir: tempdir() };
        let root = guest.root();
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        copy_to(&busybox(), &root.join("bin/busybox"));
        for (host, path) in files {
            stage(host, &under(&root, path));
            for lib in shared_libraries(host) {
                copy_to(&lib, &under(&root, &lib));
            }
        }
        guest
    }

    /// The kernel's release, from its file name (`vmlinuz-6.1.0-57-cloud-amd64`).
    pub fn kernel_release(&self) -> String {
        let name = self.kernel.file_name().unwrap().to_string_lossy();
        name.strip_prefix("vmlinuz-").unwrap_or(&name).to_owned()
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Boots, runs `script` (busybox sh) as root with proc, sys, devtmpfs, tracefs, debugfs,
    /// bpffs and cgroup2 mounted and loopback up, then powers off; `timeout` bounds the whole
    /// boot. Each run starts from the staged files: nothing carries over from an earlier run.
    pub fn run(&self, script: &str, timeout: Duration) -> GuestRun {
        self.run_booted_with("", script, timeout)
    }

    /// Like [`Guest::run`], with `kernel_args` added to the kernel's command line (e.g.
    /// `lockdown=confidentiality`).
    pub fn run_booted_with(&self, kernel_args: &str, script: &str, timeout: Duration) -> GuestRun {
        let root = self.root();
        let init = format!(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
             mount -t tracefs nodev /sys/kernel/tracing; mount -t debugfs nodev /sys/kernel/debug\n\
             mount -t bpf bpf /sys/fs/bpf; mount -t cgroup2 none /sys/fs/cgroup\n\
             mount -t securityfs none /sys/kernel/security\n\
             ip link set lo up; export PATH=/bin HOME=/root; cd /tmp\n\
             ( {script} )\n\
             echo \"{DONE_MARKER} $?\"\n\
             poweroff -f\n"
        );
        std::fs::write(root.join("init"), init).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(root.join("init"), mode).unwrap();
        let initrd = self.dir.join("initrd");
        let cpio = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && find . | cpio -o -H newc > {} 2>/dev/null",
                root.display(),
                initrd.display()
            ))
            .status()
            .expect("running cpio (scripts/setup-kernels.sh installs it)");
        assert!(cpio.success(), "building the initramfs");

        let started = Instant::now();
        // KVM on this machine kind fails to emulate cmpxchg16b: software emulation, always.
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "3072", "-smp", "2", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 quiet loglevel=3 {kernel_args}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting qemu-system-x86_64 (scripts/setup-kernels.sh installs it)");
        let mut out = qemu.stdout.take().unwrap();
        // Also written as it comes, for whoever watches a long boot (`tail -f .../console`).
        let mut live = std::fs::File::create(self.dir.join("console")).ok();
        let reader = std::thread::spawn(move || {
            let mut console = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut chunk) {
                console.extend_from_slice(&chunk[..n]);
                if let Some(file) = live.as_mut() {
                    let _ = std::io::Write::write_all(file, &chunk[..n]);
                }
            }
            String::from_utf8_lossy(&console).into_owned()
        });
        while qemu.try_wait().unwrap().is_none() {
            if started.elapsed() > timeout {
                let _ = qemu.kill();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let console = reader.join().unwrap();
        let _ = std::fs::remove_file(&initrd);
        let exit_code = console
            .lines()
            .find_map(|l| l.trim().strip_prefix(DONE_MARKER))
            .and_then(|c| c.trim().parse().ok());
        GuestRun { console, exit_code, duration: started.elapsed() }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The release build of `package`'s binaries, by name, built now (nothing to do when it is up
/// to date), for guests: software emulation multiplies the debug builds' slowness (BTF parsing
/// and the self-test at start-up, the workload's calls) several times.
pub fn release_binaries(package: &str) -> HashMap<String, PathBuf> {
    cargo_executables(&["build", "--release", "--locked", "--package", package, "--bins"])
}

/// This package's test binaries `tests` (`tests/<name>.rs`), by name, in this test's profile:
/// `cargo test` built them all before it ran the first, so this only asks cargo where they are.
pub fn test_binaries(tests: &[&str]) -> HashMap<String, PathBuf> {
    let mut args = vec!["test", "--no-run", "--locked", "--package", "otel-sendmmsg"];
    for test in tests {
        args.extend(["--test", test]);
    }
    if std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().ends_with("release") {
        args.push("--release");
    }
    cargo_executables(&args)
}

/// The executables a cargo command produced, by target name.
fn cargo_executables(args: &[&str]) -> HashMap<String, PathBuf> {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo");
    assert!(out.status.success(), "cargo {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            let executable = m["executable"].as_str()?;
            Some((m["target"]["name"].as_str()?.to_owned(), PathBuf::from(executable)))
        })
        .collect()
}

fn tempdir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("otel-sendmmsg-guest-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn busybox() -> PathBuf {
    ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("busybox (scripts/setup-kernels.sh installs busybox-static)")
}

/// `path` (absolute) inside `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Copies `file` to `target` without its debug information (the initramfs lives in the
/// guest's memory, and a debug test binary is mostly DWARF: 140 MB against 20); a file that is
/// not ELF is copied as it is.
fn stage(file: &Path, target: &Path) {
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(file)
        .arg(target)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        copy_to(file, target);
    }
}

/// Copies `file` to `target`, following links.
fn copy_to(file: &Path, target: &Path) {
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(file, target).unwrap_or_else(|e| panic!("copying {}: {e}", file.display()));
}

/// What the dynamic loader needs for `file`, by `ldd` (the loader included).
fn shared_libraries(file: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(file).output().expect("running ldd");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}
