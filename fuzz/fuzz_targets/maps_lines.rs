//! Any text into the `/proc/PID/maps` parser, as another process's mapped paths make it. It never
//! panics, and every mapping it returns is one the sidecar may safely try to open: a non-empty
//! range, and paths (the parsed one and each literal reading) that are absolute and hold no NUL.
//! Mappings come from lines, one at most each.
#![no_main]

use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use otel_sendmmsg::probes::thread_context::proc_maps::executable_mappings;

fuzz_target!(|text: &[u8]| {
    let mappings = executable_mappings(text);
    assert!(mappings.len() <= text.split(|&b| b == b'\n').count());
    for mapping in &mappings {
        assert!(mapping.start < mapping.end, "{mapping:?}");
        assert_eq!(mapping.map_files_name(), format!("{:x}-{:x}", mapping.start, mapping.end));
        let candidates = mapping.candidate_paths();
        assert_eq!(candidates.first(), Some(&mapping.path));
        for path in candidates {
            assert!(path.is_absolute(), "{path:?}");
            assert!(!path.as_os_str().as_bytes().contains(&0), "{path:?}");
        }
    }
});
