//! What another process shows us in `/proc`, as it could shape it: its environment block, its
//! cgroup file, its stat line. The parsers never panic, keep to their byte caps, and agree with
//! plain reference readings of the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_sendmmsg::process::{
    container_id, parse_stat,
    read::{find_variable, ENV_VALUE_CAP},
    service_name_from_environ,
};

const NAME: &[u8] = b"OTEL_SERVICE_NAME";

/// The first `OTEL_SERVICE_NAME` entry of the first `cap` bytes, as getenv would find it,
/// refused when longer than the cap on values or cut short by the scan cap.
fn reference(block: &[u8], cap: usize) -> Option<Vec<u8>> {
    let scanned = &block[..block.len().min(cap)];
    let mut entries: Vec<&[u8]> = scanned.split(|b| *b == 0).collect();
    // The last piece is a whole entry only if the block ended before the cap.
    if block.len() >= cap || scanned.last() == Some(&0) {
        entries.pop();
    }
    let value = entries.into_iter().find_map(|e| e.strip_prefix(NAME)?.strip_prefix(b"="))?;
    (value.len() <= ENV_VALUE_CAP).then(|| value.to_vec())
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, data)) = input.split_first() else { return };
    match which % 3 {
        0 => {
            // A small scan cap, so the cut falls inside the fuzzer's inputs too.
            let cap = 1 + usize::from(which / 3) * 16;
            let found = find_variable(data, NAME, cap as u64);
            assert_eq!(found, reference(data, cap), "cap {cap}");
            let service = service_name_from_environ(data, cap as u64);
            if let Some(service) = &service {
                assert!(!service.is_empty() && service.trim() == service);
            }
            let expected =
                found.map(|v| String::from_utf8_lossy(&v).trim().to_owned()).filter(|v| !v.is_empty());
            assert_eq!(service, expected);
        }
        1 => {
            let text = String::from_utf8_lossy(data);
            if let Some(id) = container_id(&text) {
                assert!(id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
                assert!(text.contains(&id));
            }
        }
        _ => {
            let text = String::from_utf8_lossy(data);
            if let Some(stat) = parse_stat(&text) {
                assert!(text.contains(&format!("({})", stat.comm)));
            }
        }
    }
});
