//! Compiles the OTEP 4947 thread context (src/thread_context.c) into the library, and makes the
//! cdylib export its TLS symbol.

use std::{env, ffi::OsString, fs, path::Path, process::Command};

/// The TLS symbol external readers look up in `.dynsym` (OTEP 4947).
const TLS_SYMBOL: &str = "otel_thread_ctx_v1";

fn main() {
    println!("cargo:rerun-if-changed=src/thread_context.c");
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();

    let mut build = cc::Build::new();
    // PIC: the same object goes into the cdylib, and into PIE executables through the rlib and
    // staticlib.
    build.file("src/thread_context.c").pic(true);
    // The OTEP recommends the TLSDESC dialect, the cheapest dynamic TLS access for the writer.
    // aarch64 has no other; x86-64 needs gnu2 (GCC 4.4+, Clang 19+). An older compiler keeps the
    // legacy general-dynamic dialect, which the OTEP still supports: warn rather than fail.
    if target_arch == "x86_64" {
        if build.is_flag_supported("-mtls-dialect=gnu2").unwrap_or(false) {
            build.flag("-mtls-dialect=gnu2");
        } else {
            println!(
                "cargo:warning=the C compiler lacks -mtls-dialect=gnu2: {TLS_SYMBOL} uses the legacy \
                 TLS dialect instead of the TLSDESC one OTEP 4947 recommends"
            );
        }
    }
    build.compile("otel_sendmmsg_thread_ctx");

    export_from_cdylib();
}

/// rustc links a cdylib with a version script of its own, `{ global: <the Rust #[no_mangle]
/// items>; local: *; }`, which makes every C symbol local: the TLS symbol would not reach
/// `.dynsym`, and the library's own accesses would be bound locally. `--export-dynamic-symbol` and
/// `--dynamic-list` do not override a version script's `local: *`; a second version script
/// naming the symbol does, as an exact name wins over a wildcard. lld merges the two anonymous
/// scripts; GNU ld refuses to (`anonymous version tag cannot be combined with other version
/// tags`), and the cdylib is built whenever the rlib is, so passing it blindly would break every
/// dependent's build with GNU ld (rustc's default linker everywhere but x86_64-unknown-linux-gnu).
/// Hence a probe: link an empty cdylib with the same rustc, target, flags and linker, plus a
/// second script; pass the script only if that links.
fn export_from_cdylib() {
    let out_dir = env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    let out_dir = Path::new(&out_dir);
    let script = out_dir.join("export-thread-ctx.map");
    fs::write(&script, format!("{{\n  global:\n    {TLS_SYMBOL};\n}};\n")).expect("writing into OUT_DIR");
    if linker_merges_version_scripts(out_dir) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={}", script.display());
    } else {
        println!(
            "cargo:warning=this linker takes one version script only (GNU ld): \
             libotel_sendmmsg_context.so will not export {TLS_SYMBOL}; link it with lld (rustc's \
             default on x86_64-unknown-linux-gnu), or use the rlib or the staticlib"
        );
    }
}

fn linker_merges_version_scripts(out_dir: &Path) -> bool {
    let probe = out_dir.join("version_script_probe.rs");
    let script = out_dir.join("version_script_probe.map");
    // Names a symbol rustc's own script exports too: the probe asks whether the linker takes a
    // second anonymous script, not whether it exports anything.
    let written = fs::write(&probe, "#[no_mangle]\npub extern \"C\" fn otel_sendmmsg_probe() {}\n")
        .and_then(|()| fs::write(&script, "{\n  global:\n    otel_sendmmsg_probe;\n};\n"));
    if written.is_err() {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let mut command = Command::new(rustc);
    command.arg("--crate-type=cdylib").arg("--crate-name=version_script_probe");
    if let Ok(target) = env::var("TARGET") {
        command.arg(format!("--target={target}"));
    }
    // The flags and linker the library itself is built with: they choose the linker.
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        command.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut arg = OsString::from("-Clinker=");
        arg.push(linker);
        command.arg(arg);
    }
    let mut link_arg = OsString::from("-Clink-arg=-Wl,--version-script=");
    link_arg.push(&script);
    command.arg(link_arg).arg("--out-dir").arg(out_dir).arg(&probe);
    command.output().is_ok_and(|o| o.status.success())
}
