//! This process's own process context, found and read the way an OTEP 4719 reader does.

/// The address of the process context's header, from /proc/self/maps as a reader finds it.
pub fn mapped_context() -> Option<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps.lines().find(|l| l.contains("OTEL_CTX"))?;
    Some(usize::from_str_radix(line.split('-').next().unwrap(), 16).unwrap())
}

/// The header's payload, read the way the OTEP's reader does (minus the retries: nothing else
/// publishes here).
pub fn payload(header: usize) -> Vec<u8> {
    // SAFETY: a live mapping of this process (found in its maps, never unmapped in this test),
    // holding a 32-byte header that points at the payload it describes.
    unsafe {
        let header = header as *const u8;
        assert_eq!(std::slice::from_raw_parts(header, 8), b"OTEL_CTX");
        assert_ne!(header.add(16).cast::<u64>().read(), 0, "published");
        let size = header.add(12).cast::<u32>().read() as usize;
        let payload = header.add(24).cast::<u64>().read() as *const u8;
        std::slice::from_raw_parts(payload, size).to_vec()
    }
}
