//! Runs commands inside another kernel: Debian's cloud kernels (see [`Debian`]), x86-64 or arm64
//! (see [`Arch`]), booted under qemu with an initramfs that holds busybox and the given files at
//! the paths the test binaries expect them, so a test binary runs there unchanged.

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

/// The machine a guest emulates, and what its binaries are built and staged with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// This machine's architecture: the guest runs the binaries cargo built for the host.
    X86_64,
    /// Debian's arm64 kernels on qemu's `virt` board; the binaries are cross-built
    /// ([`Arch::Aarch64`]'s [`cross_release_binaries`]) and link against Debian's arm64 cross
    /// libc (`libc6-arm64-cross`, in /usr/aarch64-linux-gnu).
    Aarch64,
}

/// Where Debian's arm64 cross packages keep arm64's shared libraries (`libc6-arm64-cross`).
const AARCH64_SYSROOT: &str = "/usr/aarch64-linux-gnu";

impl Arch {
    /// The Rust target the guest's binaries are built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The suffix scripts/setup-kernels.sh gives this architecture's pointer files.
    fn pointer_suffix(self) -> &'static str {
        match self {
            Arch::X86_64 => "",
            Arch::Aarch64 => "-arm64",
        }
    }

    /// The binutils that read and strip this architecture's ELF files (Debian's cross binutils
    /// for arm64, which come with `gcc-aarch64-linux-gnu`).
    fn binutils(self, tool: &str) -> String {
        match self {
            Arch::X86_64 => tool.to_owned(),
            Arch::Aarch64 => format!("aarch64-linux-gnu-{tool}"),
        }
    }
}

/// Printed by /init after the script, with its exit code.
const DONE_MARKER: &str = "GUEST-EXIT";

/// A kernel and the root file system it boots into; the staged files are removed on drop.
pub struct Guest {
    kernel: PathBuf,
    arch: Arch,
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
        Guest::debian_on(Arch::X86_64, kernel, files)
    }

    /// Like [`Guest::debian`], the `arch` build of Debian's `kernel` (x86-64 or arm64), booted
    /// under that architecture's qemu; `files` must be built for `arch`.
    pub fn debian_on(arch: Arch, kernel: Debian, files: &[(&Path, &Path)]) -> Guest {
        let name = format!("{}{}", kernel.name(), arch.pointer_suffix());
        let kernel = prepared(&format!("debian-{name}"))
            .unwrap_or_else(|| panic!("no {name} kernel prepared: {SETUP}"));
        let guest = Guest { kernel, arch, dir: tempdir() };
        let root = guest.root();
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        copy_to(&busybox(arch), &root.join("bin/busybox"));
        for (host, path) in files {
            stage(arch, host, &under(&root, path));
            match arch {
                Arch::X86_64 => {
                    for lib in shared_libraries(host) {
                        copy_to(&lib, &under(&root, &lib));
                    }
                }
                Arch::Aarch64 => {
                    for (lib, path) in aarch64_shared_libraries(host) {
                        copy_to(&lib, &under(&root, &path));
                    }
                }
            }
        }
        guest
    }

    /// The kernel's release, from its file name (`vmlinuz-6.1.0-57-cloud-amd64`).
    /// The same string `uname -r` gives in the guest.
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
        let (qemu, machine, console): (_, &[&str], _) = match self.arch {
            // KVM on this machine kind fails to emulate cmpxchg16b: software emulation, always.
            // One host thread for both vCPUs: with a thread per vCPU (qemu 7.2, Debian 12's), a
            // vCPU goes on running kernel text another vCPU has just patched as it was, and
            // fentry attaching while a workload calls sendmmsg brings the guest down (a stress
            // of 15 attaches under traffic: a soft lockup in an int3 loop on 6.1, `Oops: int3`
            // at the patched site on 6.12, at the first to third attach; with one thread, 15 of
            // 15 on both). kprobes and static keys patch text the same way. Each guest then
            // takes one host core, and the kernel matrix runs as many at once as there are.
            Arch::X86_64 => ("qemu-system-x86_64", &["-accel", "tcg,thread=single", "-cpu", "max"], "ttyS0"),
            // Software emulation of another architecture; `virt` is the board Debian's arm64
            // kernels boot on (its PL011 UART is ttyAMA0). Pointer authentication by an
            // implementation-defined hash instead of the architected QARMA: the kernel signs
            // return addresses in most functions, and QARMA costs qemu about three times the
            // whole run (Debian's 6.1, two sidecar runs: 19 s against 6 s).
            Arch::Aarch64 => (
                "qemu-system-aarch64",
                &["-M", "virt", "-cpu", "max,pauth-impdef=on", "-accel", "tcg"],
                "ttyAMA0",
            ),
        };
        let mut qemu = Command::new(qemu)
            .args(machine)
            .args(["-m", "3072", "-smp", "2", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            // An oops or a locked-up CPU ends the boot at once, with the kernel's report on the
            // console, rather than at the timeout.
            .arg(format!(
                "console={console} panic=-1 oops=panic softlockup_panic=1 quiet loglevel=3 {kernel_args}"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {qemu} (scripts/setup-kernels.sh installs it): {e}"));
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
    if super::profile_dir().ends_with("release") {
        args.push("--release");
    }
    cargo_executables(&args)
}

/// Like [`release_binaries`], cross-built for `arch` with Debian's cross toolchain, in cargo's
/// directory for that target (`target/<triple>/release`): the host's builds stay as they are.
/// The linker and C compiler (aws-lc-sys and zstd-sys build C) are set for this command only,
/// through cargo's per-target variables: nothing else in the workspace needs them.
pub fn cross_release_binaries(arch: Arch, package: &str) -> HashMap<String, PathBuf> {
    let target = arch.rust_target();
    let args = ["build", "--release", "--locked", "--package", package, "--bins", "--target", target];
    let gcc = arch.binutils("gcc");
    let triple = target.replace('-', "_");
    let env = [
        (format!("CARGO_TARGET_{}_LINKER", triple.to_uppercase()), gcc.clone()),
        (format!("CC_{triple}"), gcc),
        (format!("AR_{triple}"), arch.binutils("ar")),
    ];
    cargo_executables_with(&args, &env)
}

/// The executables a cargo command produced, by target name.
fn cargo_executables(args: &[&str]) -> HashMap<String, PathBuf> {
    cargo_executables_with(args, &[])
}

/// The executables a cargo command run with `env` added produced, by target name.
fn cargo_executables_with(args: &[&str], env: &[(String, String)]) -> HashMap<String, PathBuf> {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
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

/// What to run when a kernel or busybox is missing.
const SETUP: &str = "run scripts/setup.sh --tests (scripts/setup-kernels.sh)";

/// The file scripts/setup-kernels.sh prepared under `name`, if it did.
fn prepared(name: &str) -> Option<PathBuf> {
    std::fs::read_to_string(Path::new(KERNEL_POINTERS).join(name))
        .map(|p| PathBuf::from(p.trim()))
        .ok()
        .filter(|p| p.is_file())
}

/// A static busybox for `arch`: the machine's own for x86-64, Debian's arm64 `busybox-static`
/// unpacked by scripts/setup-kernels.sh for arm64.
fn busybox(arch: Arch) -> PathBuf {
    match arch {
        Arch::X86_64 => ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("busybox (scripts/setup-kernels.sh installs busybox-static)"),
        Arch::Aarch64 => prepared("busybox-arm64").unwrap_or_else(|| panic!("no arm64 busybox: {SETUP}")),
    }
}

/// `path` (absolute) inside `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Copies `file` to `target` without its debug information (the initramfs lives in the
/// guest's memory, and a debug test binary is mostly DWARF: 140 MB against 20); a file that is
/// not ELF is copied as it is.
fn stage(arch: Arch, file: &Path, target: &Path) {
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let stripped = Command::new(arch.binutils("objcopy"))
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

/// What the dynamic loader needs for the arm64 `file`, each as (file on this machine, path in
/// the guest): `ldd` runs the loader, which cannot run a foreign binary, so this follows the
/// ELF's own records instead, as the loader would: its interpreter (`PT_INTERP`,
/// /lib/ld-linux-aarch64.so.1) and its `DT_NEEDED` libraries, and theirs, from Debian's arm64
/// cross libc, placed where an arm64 Debian keeps them (/lib/aarch64-linux-gnu, which the
/// loader searches without a cache). Empty for a static executable or a file that is not ELF.
fn aarch64_shared_libraries(file: &Path) -> Vec<(PathBuf, PathBuf)> {
    let sysroot_lib = Path::new(AARCH64_SYSROOT).join("lib");
    let mut found: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut pending = vec![file.to_path_buf()];
    while let Some(elf) = pending.pop() {
        let out = Command::new(Arch::Aarch64.binutils("readelf"))
            .args(["--program-headers", "--dynamic", "--wide"])
            .arg(&elf)
            .output()
            .expect("running aarch64-linux-gnu-readelf (scripts/setup-kernels.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let (host, guest) = if let Some(interp) =
                line.split("[Requesting program interpreter: ").nth(1).and_then(|r| r.strip_suffix(']'))
            {
                let name = Path::new(interp).file_name().unwrap();
                (sysroot_lib.join(name), PathBuf::from(interp))
            } else if line.contains("(NEEDED)") {
                let name = line.split("Shared library: [").nth(1).and_then(|r| r.strip_suffix(']'));
                let name = name.unwrap_or_else(|| panic!("unexpected readelf line: {line}"));
                (sysroot_lib.join(name), Path::new("/lib/aarch64-linux-gnu").join(name))
            } else {
                continue;
            };
            assert!(
                host.is_file(),
                "{} needs {}: install libc6-dev-arm64-cross",
                elf.display(),
                host.display()
            );
            if !found.iter().any(|(_, g)| *g == guest) {
                pending.push(host.clone());
                found.push((host, guest));
            }
        }
    }
    found
}
