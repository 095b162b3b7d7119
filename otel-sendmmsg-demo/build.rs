//! OTEP 4947 readers find the thread context's TLS variable, `otel_thread_ctx_v1`, in the
//! executable's `.dynsym`, which lists nothing an executable does not import or export. The
//! context library cannot ask for it: a dependency's build script cannot add link arguments to
//! its dependents' binaries.

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=otel_thread_ctx_v1");
}
