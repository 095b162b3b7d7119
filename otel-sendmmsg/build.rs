//! Builds the BPF crate for `bpfel-unknown-none` and leaves its objects in `OUT_DIR`, so a plain
//! `cargo build` of the sidecar builds everything: the sidecar's two (`otel-sendmmsg.bpf.o`, and
//! `otel-sendmmsg-hash-map.bpf.o` for kernels without task-local storage) and the overhead
//! benchmark's empty programs (`otel-sendmmsg-floor.bpf.o`, which only the bench loads). It also
//! finds what `--version` says: the git commit the sources are at, and the SHA-256 of each of the
//! sidecar's objects, the bytes `probes/load.rs` compiles in.
//!
//! It runs cargo itself rather than through `aya-build`: aya-build 0.2.0 asks for
//! `-Z build-std=core` (and so rust-src) whenever `RUSTC_BOOTSTRAP` is set, while Debian's Rust
//! ships a prebuilt `core` for the BPF target that needs neither (see scripts/setup.sh).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The rustup toolchain that `scripts/setup.sh` links to Debian's Rust.
const BPF_TOOLCHAIN: &str = "system";
const BPF_TARGET: &str = "bpfel-unknown-none";
const BPF_PACKAGE: &str = "otel-sendmmsg-ebpf";
/// The BPF crate's binaries, each copied to `OUT_DIR` as `<name>.bpf.o`.
const BPF_BINARIES: [&str; 3] = ["otel-sendmmsg", "otel-sendmmsg-hash-map", "otel-sendmmsg-floor"];

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("the sidecar crate sits in the workspace")?;
    for input in
        ["otel-sendmmsg-ebpf/src", "otel-sendmmsg-ebpf/Cargo.toml", "otel-sendmmsg-common/src", "Cargo.lock"]
    {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    // The workload tool publishes the OTEP 4947 thread context (WORKLOAD_THREAD_CONTEXT): readers
    // look its variable up in .dynsym, which an executable fills only with what it is told to.
    println!("cargo:rustc-link-arg-bin=sendmmsg-workload=-Wl,--export-dynamic-symbol=otel_thread_ctx_v1");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let objects = build_bpf(workspace, &out_dir.join("bpf-target"))?;
    for binary in BPF_BINARIES {
        let object = objects.join(binary);
        std::fs::copy(&object, out_dir.join(format!("{binary}.bpf.o")))
            .with_context(|| format!("copying {}", object.display()))?;
    }
    for (binary, variable) in
        [(BPF_BINARIES[0], "BUILD_BPF_OBJECT_SHA256"), (BPF_BINARIES[1], "BUILD_BPF_HASH_MAP_OBJECT_SHA256")]
    {
        let embedded = out_dir.join(format!("{binary}.bpf.o"));
        let bytes = std::fs::read(&embedded).with_context(|| format!("reading {}", embedded.display()))?;
        println!("cargo:rustc-env={variable}={}", hex(&Sha256::digest(&bytes)));
    }
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={}", git_commit(workspace));
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The commit the workspace is checked out at, or `unknown` when it is not a git checkout of its
/// own (the image build leaves `.git` out; a source tree unpacked inside another repository must
/// not report that one's commit) or git is missing: a version string is never worth a failed
/// build. Uncommitted changes are not noted: telling would mean running this script on every
/// change of every file.
fn git_commit(workspace: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").current_dir(workspace).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let own_checkout = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| Path::new(&top).canonicalize().ok())
        .is_some_and(|top| workspace.canonicalize().is_ok_and(|w| w == top));
    let commit = own_checkout.then(|| git(&["rev-parse", "--verify", "HEAD"])).flatten();
    let Some(commit) = commit.filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit())) else {
        return "unknown".to_owned();
    };
    // Run again when HEAD moves: a checkout rewrites HEAD, a commit the branch's ref (loose, or
    // in packed-refs). `--git-path` knows where a worktree keeps each. Only files that exist:
    // cargo would take a missing one as changed on every build.
    let branch = git(&["symbolic-ref", "--quiet", "HEAD"]);
    for file in ["HEAD", "packed-refs"].into_iter().map(str::to_owned).chain(branch) {
        if let Some(path) = git(&["rev-parse", "--git-path", &file]) {
            let path = workspace.join(path);
            if path.is_file() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    commit
}

/// Builds every binary of the BPF crate; returns the directory they are in.
fn build_bpf(workspace: &Path, target_dir: &Path) -> Result<PathBuf> {
    let linker = find_bpf_linker()?;
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(workspace)
        .args(["build", "--release", "--locked", "--package", BPF_PACKAGE, "--target", BPF_TARGET])
        .arg("--target-dir")
        .arg(target_dir);
    // The outer cargo's settings are for the host toolchain and target: none may leak in.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cargo.env_remove(var);
    }
    cargo
        .env("RUSTUP_TOOLCHAIN", BPF_TOOLCHAIN)
        // aya-ebpf uses feature gates; Debian's stable compiler allows them with this.
        .env("RUSTC_BOOTSTRAP", "1")
        // BTF in the object lets aya load it with type information for maps and globals.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Clink-arg=--btf")
        // The kernel's `pt_regs` (kprobes' arguments and return values) is the sidecar's
        // architecture's, not the build machine's: aya-ebpf's and our BPF crate's build scripts
        // take the host's unless told, which made a cross-built aarch64 sidecar read x86-64
        // registers.
        .env("AYA_BPF_TARGET_ARCH", env::var("CARGO_CFG_TARGET_ARCH")?)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker);
    let status = cargo.status().context("running cargo for the BPF crate")?;
    if !status.success() {
        bail!(
            "building the BPF crate failed ({status}); run `scripts/setup.sh` once to install the \
             BPF toolchain (Debian's Rust, LLVM 22, bpf-linker)"
        );
    }
    Ok(target_dir.join(BPF_TARGET).join("release"))
}

/// bpf-linker lives in cargo's bin directory, which the build environment may not have on PATH.
fn find_bpf_linker() -> Result<PathBuf> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let candidates = cargo_home
        .map(|h| h.join("bin"))
        .into_iter()
        .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>());
    for dir in candidates {
        let path = dir.join("bpf-linker");
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("bpf-linker not found; run `scripts/setup.sh` once to install the BPF toolchain")
}
