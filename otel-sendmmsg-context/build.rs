//! Compiles the OTEP 4947 thread context (src/thread_context.c) into the library.

use std::env;

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
}
