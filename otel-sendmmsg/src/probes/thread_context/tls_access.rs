//! Where a process's threads keep `otel_thread_ctx_v1`, from the file that defines it, where the
//! process mapped that file, and what its dynamic linker wrote at the relocations naming the
//! variable: the three access models OTEP 4947 requires readers to handle, on x86-64.
//!
//! - TLSDESC: the descriptor's argument is the variable's offset from the thread pointer when
//!   the linker gave the module static TLS (negative: variant II), else a pointer to
//!   {module id, offset} for the thread's DTV.
//! - Global-dynamic (`DTPMOD64` + `DTPOFF64`): {module id, offset}.
//! - Initial-exec (`TPOFF64`): the offset from the thread pointer.
//! - Local-exec, an executable's own variable, leaves no relocation: the executable's TLS block
//!   ends at the thread pointer, so the offset is `st_value - roundup(p_memsz, p_align)`.
//!
//! Every value read from the process is its own to choose: it can only make us read its own
//! memory at the wrong place, where a record must still prove itself (`valid` = 1, non-zero ids).

use otel_sendmmsg_common::ThreadContextAccess;

use super::elf_tls::{RelocationKind, TlsRelocation, TlsVariable};
use crate::process::process_context::Memory;

/// The C library whose TLS layout the process uses (told from its dynamic loader's name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Libc {
    Glibc,
    /// Its dynamic TLS layout is written from musl's source (`dtv[0]` is the length, 8-byte
    /// entries); no musl process has been run against it here.
    Musl,
}

impl Libc {
    /// (DTV entry size, where the DTV's length is from the DTV pointer).
    fn dtv(self) -> (u32, i32) {
        match self {
            // `dtv_t` is {pointer, to_free}; `dtv[-1].counter` is the length.
            Libc::Glibc => (16, -16),
            Libc::Musl => (8, 0),
        }
    }
}

/// The file defining the variable, as one process maps it.
pub struct Module<'a> {
    pub variable: &'a TlsVariable,
    /// What the process added to the file's addresses where it mapped it.
    pub bias: u64,
    /// The process's executable (module 1), whose own accesses are local-exec.
    pub executable: bool,
}

/// Why no access could be worked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// Not yet: the dynamic linker has not filled in the descriptor (lazy TLSDESC); try later.
    NotYet(&'static str),
    Never(String),
}

/// Where a process's threads keep the variable (`start_ticks` left for the caller).
pub fn resolve(module: &Module, libc: Libc, memory: &impl Memory) -> Result<ThreadContextAccess, Unresolved> {
    let (dtv_stride, dtv_len_at) = libc.dtv();
    let access = |module, offset| ThreadContextAccess {
        module,
        offset,
        dtv_stride,
        dtv_len_at,
        ..ThreadContextAccess::default()
    };
    let mut not_yet = None;
    for relocation in &module.variable.relocations {
        match follow(relocation, module.bias, memory) {
            Ok(Location::Static(offset)) => return Ok(access(0, offset)),
            Ok(Location::Dynamic { module, offset }) => return Ok(access(module, offset)),
            Err(Unresolved::NotYet(why)) => not_yet = Some(why),
            Err(Unresolved::Never(_)) => {}
        }
    }
    if let Some(why) = not_yet {
        return Err(Unresolved::NotYet(why));
    }
    if module.executable {
        let (memsz, align) = module.variable.tls_segment.ok_or_else(|| {
            Unresolved::Never("the executable defines the variable but has no TLS segment".into())
        })?;
        let block =
            memsz.checked_next_multiple_of(align.max(1)).ok_or_else(|| never("absurd TLS segment"))?;
        let offset = i64::try_from(module.variable.offset).ok().zip(i64::try_from(block).ok());
        let (offset, block) = offset.ok_or_else(|| never("absurd TLS segment"))?;
        return Ok(access(0, offset - block));
    }
    Err(if module.variable.relocations.is_empty() {
        never("a library that never accesses the variable itself (no relocation names it)")
    } else {
        never("none of the relocations naming the variable could be read")
    })
}

fn never(why: &str) -> Unresolved {
    Unresolved::Never(why.to_owned())
}

enum Location {
    /// Offset from the thread pointer.
    Static(i64),
    Dynamic {
        module: u64,
        offset: i64,
    },
}

/// What the dynamic linker wrote at one relocation. The variable is at the relocation's target
/// minus its addend (`st_value + addend` is what the linker resolved).
fn follow(relocation: &TlsRelocation, bias: u64, memory: &impl Memory) -> Result<Location, Unresolved> {
    let at = bias.wrapping_add(relocation.at);
    let words = |address: u64| {
        let mut bytes = [0u8; 16];
        memory.read(address, &mut bytes).then(|| {
            let word = |i: usize| u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            (word(0), word(1))
        })
    };
    let unreadable = || never("the process's relocated entry is unreadable");
    let addend = relocation.addend;
    match relocation.kind {
        RelocationKind::TpOff => {
            let mut bytes = [0u8; 8];
            if !memory.read(at, &mut bytes) {
                return Err(unreadable());
            }
            Ok(Location::Static((i64::from_ne_bytes(bytes)).wrapping_sub(addend)))
        }
        RelocationKind::DtpMod => {
            let (module, offset) = words(at).ok_or_else(unreadable)?;
            dynamic(module, offset, addend)
        }
        RelocationKind::TlsDesc => {
            let (resolver, argument) = words(at).ok_or_else(unreadable)?;
            if resolver == 0 {
                return Err(Unresolved::NotYet("its TLS descriptor is not resolved yet"));
            }
            // Static TLS lies below the thread pointer: a negative argument is an offset, a
            // pointer (user space is the lower half) is the dynamic case's {module, offset}.
            if (argument as i64) < 0 {
                return Ok(Location::Static((argument as i64).wrapping_sub(addend)));
            }
            let (module, offset) = words(argument).ok_or_else(unreadable)?;
            dynamic(module, offset, addend)
        }
    }
}

fn dynamic(module: u64, offset: u64, addend: i64) -> Result<Location, Unresolved> {
    // glibc and musl number modules from 1 and never reach millions; anything else was not
    // written by a dynamic linker.
    if module == 0 || module > 1 << 20 {
        return Err(never("the module id the process holds is not one"));
    }
    Ok(Location::Dynamic { module, offset: (offset as i64).wrapping_sub(addend) })
}

/// The load bias of a mapping of the file at `offset` in it, starting at `start`: the `PT_LOAD`
/// segment it maps says which address of the file that is.
pub fn bias(variable: &TlsVariable, start: u64, offset: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    variable
        .loads
        .iter()
        .find(|(p_offset, _, _)| p_offset & !(PAGE - 1) == offset)
        .map(|(_, p_vaddr, _)| start.wrapping_sub(p_vaddr & !(PAGE - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory as (address, bytes) regions.
    struct Regions(Vec<(u64, Vec<u8>)>);

    impl Memory for Regions {
        fn read(&self, address: u64, into: &mut [u8]) -> bool {
            self.0.iter().any(|(start, bytes)| {
                let Some(from) = address.checked_sub(*start).map(|d| d as usize) else { return false };
                let Some(source) = bytes.get(from..from + into.len()) else { return false };
                into.copy_from_slice(source);
                true
            })
        }
    }

    fn words(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    fn variable(offset: u64, relocations: Vec<TlsRelocation>) -> TlsVariable {
        TlsVariable {
            offset,
            exported: true,
            tls_segment: Some((24, 16)),
            loads: vec![(0, 0, 0x1000), (0x1000, 0x1000, 0x800), (0x2df0, 0x3df0, 0x200)],
            relocations,
        }
    }

    fn relocation(kind: RelocationKind, at: u64, addend: i64) -> TlsRelocation {
        TlsRelocation { at, kind, addend }
    }

    const BIAS: u64 = 0x7f00_0000_0000;

    #[test]
    fn each_model_locates_the_variable_as_the_linker_resolved_it() {
        let got = BIAS + 0x3fd0;
        let descriptor = 0x5555_0000_1000;
        let cases = [
            // TLSDESC given static TLS by the linker: the argument is the offset.
            (
                RelocationKind::TlsDesc,
                0,
                vec![(got, words(&[0x7f11_2233_4455, (-0x48i64) as u64]))],
                (0, -0x48),
            ),
            // TLSDESC, dynamic: the argument points to {module, offset}.
            (
                RelocationKind::TlsDesc,
                0,
                vec![(got, words(&[0x7f11_2233_4455, descriptor])), (descriptor, words(&[3, 8]))],
                (3, 8),
            ),
            (RelocationKind::DtpMod, 0, vec![(got, words(&[2, 16]))], (2, 16)),
            (RelocationKind::TpOff, 0, vec![(got, words(&[(-0x80i64) as u64]))], (0, -0x80)),
            // A relocation against the variable plus 8 resolves 8 past it.
            (RelocationKind::TpOff, 8, vec![(got, words(&[(-0x78i64) as u64]))], (0, -0x80)),
        ];
        for (kind, addend, memory, (module, offset)) in cases {
            let variable = variable(0, vec![relocation(kind, 0x3fd0, addend)]);
            let module_file = Module { variable: &variable, bias: BIAS, executable: false };
            let access = resolve(&module_file, Libc::Glibc, &Regions(memory)).unwrap();
            assert_eq!((access.module, access.offset), (module, offset), "{kind:?} {addend}");
            assert_eq!((access.dtv_stride, access.dtv_len_at), (16, -16));
        }
    }

    #[test]
    fn an_unresolved_descriptor_is_tried_again_and_unreadable_entries_are_refused() {
        let variable = variable(0, vec![relocation(RelocationKind::TlsDesc, 0x3fd0, 0)]);
        let module = Module { variable: &variable, bias: BIAS, executable: false };
        let unresolved = Regions(vec![(BIAS + 0x3fd0, words(&[0, 0]))]);
        assert!(matches!(resolve(&module, Libc::Glibc, &unresolved), Err(Unresolved::NotYet(_))));
        assert!(matches!(resolve(&module, Libc::Glibc, &Regions(vec![])), Err(Unresolved::Never(_))));
        // A "module id" no dynamic linker writes.
        let gd = variable_with(RelocationKind::DtpMod);
        let module = Module { variable: &gd, bias: BIAS, executable: false };
        for bogus in [0, u64::MAX] {
            let memory = Regions(vec![(BIAS + 0x3fd0, words(&[bogus, 0]))]);
            assert!(matches!(resolve(&module, Libc::Glibc, &memory), Err(Unresolved::Never(_))));
        }
    }

    fn variable_with(kind: RelocationKind) -> TlsVariable {
        variable(0, vec![relocation(kind, 0x3fd0, 0)])
    }

    #[test]
    fn an_executables_own_variable_is_local_exec_below_the_thread_pointer() {
        // 24 bytes of TLS aligned to 16: the block is 32 bytes below TP; the variable 8 into it.
        let variable = variable(8, vec![]);
        let module = Module { variable: &variable, bias: BIAS, executable: true };
        let access = resolve(&module, Libc::Musl, &Regions(vec![])).unwrap();
        assert_eq!((access.module, access.offset), (0, 8 - 32));
        assert_eq!((access.dtv_stride, access.dtv_len_at), (8, 0));
        // The same variable in a library with no relocation for it cannot be located.
        let module = Module { variable: &variable, bias: BIAS, executable: false };
        assert!(matches!(resolve(&module, Libc::Glibc, &Regions(vec![])), Err(Unresolved::Never(_))));
    }

    #[test]
    fn the_bias_comes_from_the_segment_the_mapping_maps() {
        let variable = variable(0, vec![]);
        assert_eq!(bias(&variable, BIAS + 0x1000, 0x1000), Some(BIAS));
        // A segment whose file offset is not page-aligned is mapped from the page it starts in.
        assert_eq!(bias(&variable, BIAS + 0x3000, 0x2000), Some(BIAS));
        assert_eq!(bias(&variable, BIAS, 0x9000), None);
    }
}
