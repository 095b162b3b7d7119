//! Any bytes into the bounded ELF scan for the OTEP 4947 TLS variable, as a file another process
//! controls. It never panics; what it returns stays within its caps (16 relocations, 256 program
//! headers); and it asks for at most `READ_BUDGET` bytes,
//! however large the sizes the bytes claim. Each input is scanned twice: as a file of its own
//! length, and as the start of a sparse 1 TiB file (zeros after the input), where a claimed table
//! of gigabytes is inside the file and only the budget bounds what is read and allocated.
//! scripts/fuzz.sh runs it with `-malloc_limit_mb` a little above the budget, so one allocation
//! beyond it fails the run.
#![no_main]

use std::{cell::Cell, io};

use libfuzzer_sys::fuzz_target;
use otel_sendmmsg::probes::thread_context::elf_tls::{thread_context_variable, Defined, ReadAt, READ_BUDGET};

/// The input, then zeros up to `size`; counts the bytes asked for.
struct Sparse<'a> {
    data: &'a [u8],
    size: u64,
    asked: Cell<u64>,
}

impl ReadAt for Sparse<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.asked.set(self.asked.get() + buf.len() as u64);
        let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= self.size);
        end.ok_or(io::ErrorKind::UnexpectedEof)?;
        // Whole slices, not byte by byte: the scan may read its whole budget of this file, and
        // a byte loop over 64 MiB under AddressSanitizer outlasts libFuzzer's timeout.
        buf.fill(0);
        if let Some(input) = usize::try_from(offset).ok().and_then(|at| self.data.get(at..)) {
            let n = input.len().min(buf.len());
            buf[..n].copy_from_slice(&input[..n]);
        }
        Ok(())
    }
}

/// What the scan returns is bounded whatever the file claims.
fn check(defined: &Defined) {
    if let Defined::Tls(variable) = defined {
        assert!(variable.relocations.len() <= 16 && variable.loads.len() <= 256, "{variable:?}");
        assert!(variable.exported || variable.relocations.is_empty(), "relocations name .dynsym only");
    }
}

fuzz_target!(|data: &[u8]| {
    check(&thread_context_variable(data));
    let sparse = Sparse { data, size: 1 << 40, asked: Cell::new(0) };
    check(&thread_context_variable(&sparse));
    assert!(sparse.asked.get() <= READ_BUDGET + 64, "asked for {} bytes", sparse.asked.get());
});
