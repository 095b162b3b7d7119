//! The shared library is what a C, Java or Python application loads: readers must find
//! `otel_thread_ctx_v1` in its `.dynsym` as a TLS symbol (OTEP 4947), and the library's own
//! accesses must go through the dynamic TLS model the OTEP recommends, TLSDESC, bound to that
//! symbol (a version script that made it local would leave a TLSDESC against the module, naming
//! nothing). Read from the file, as a reader would.

use std::{path::PathBuf, process::Command};

use object::{
    elf, Object, ObjectSymbol, ObjectSymbolTable, RelocationFlags, RelocationTarget, SymbolKind, SymbolScope,
};

const TLS_SYMBOL: &str = "otel_thread_ctx_v1";

#[cfg(target_arch = "x86_64")]
const R_TLSDESC: u32 = elf::R_X86_64_TLSDESC;
#[cfg(target_arch = "aarch64")]
const R_TLSDESC: u32 = elf::R_AARCH64_TLSDESC;

/// The shared library cargo built along with this test: `deps/libotel_sendmmsg_context.so`
/// beside the test executable (cargo builds the library with all its crate types for the test,
/// but copies them up to `target/<profile>/` only for `cargo build`, so the copy there can be
/// stale). Built with `cargo build` if neither exists.
fn cdylib() -> PathBuf {
    let deps_dir = std::env::current_exe().unwrap().parent().unwrap().to_owned();
    let profile_dir = deps_dir.parent().unwrap().to_owned();
    let name = "libotel_sendmmsg_context.so";
    if deps_dir.join(name).exists() {
        return deps_dir.join(name);
    }
    if !profile_dir.join(name).exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--package", "otel-sendmmsg-context"])
            .args(profile_dir.ends_with("release").then_some("--release"))
            .status()
            .expect("running cargo");
        assert!(status.success(), "building the context library");
    }
    profile_dir.join(name)
}

#[test]
fn the_cdylib_exports_the_tls_symbol_and_reaches_it_through_tlsdesc() {
    let path = cdylib();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let file = object::File::parse(&*bytes).unwrap();

    let symbol = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(TLS_SYMBOL))
        .unwrap_or_else(|| panic!("{TLS_SYMBOL} is not in the .dynsym of {}", path.display()));
    assert_eq!(symbol.kind(), SymbolKind::Tls, "STT_TLS");
    assert!(symbol.is_global() && !symbol.is_undefined(), "a GLOBAL definition");
    assert_eq!(symbol.scope(), SymbolScope::Dynamic, "DEFAULT visibility");
    assert_eq!(symbol.size(), 8, "a pointer");

    let dynsym = file.dynamic_symbol_table().unwrap();
    let tlsdesc_to_it = file.dynamic_relocations().into_iter().flatten().any(|(_, relocation)| {
        let RelocationFlags::Elf { r_type } = relocation.flags() else { return false };
        let RelocationTarget::Symbol(index) = relocation.target() else { return false };
        r_type == R_TLSDESC && dynsym.symbol_by_index(index).is_ok_and(|s| s.name() == Ok(TLS_SYMBOL))
    });
    assert!(tlsdesc_to_it, "no TLSDESC relocation names {TLS_SYMBOL} in {}", path.display());
}
