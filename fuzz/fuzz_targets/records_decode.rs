//! Arbitrary bytes, as a ring-buffer item: `Decoder::decode_record` returns a call, an identity
//! or an error, never panics or reads past the item (AddressSanitizer: libFuzzer passes a buffer of exactly the
//! input's length); what it accepts has the shape and the invariants the span mapping relies on;
//! and every call it returns maps to spans and a console line as README.md says (`map_call`);
//! every identity stays within its record's bounds and becomes a process's resource
//! (`map_identity`: its environment block parsed as `/proc/PID/environ` is).
//!
//! Random bytes rarely pass the version/size/length checks; the seeds (real records encoded from
//! `CallRecord` by `fuzz/seed-records`, written by scripts/fuzz.sh) start the fuzzer past them.
//! `records_structured` gets past them by construction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_sendmmsg::{
    clock::WallClock,
    records::{Decoder, Record},
};
use otel_sendmmsg_common::{
    IdentityRecord, MessageResult, DETAIL_OFFSET, IDENTITY_RECORD_VERSION, MAX_MESSAGE_DETAIL, MAX_VLEN,
    RECORD_VERSION,
};
use otel_sendmmsg_fuzz::{map_call, map_identity};

fuzz_target!(|bytes: &[u8]| {
    let call = match Decoder::default().decode_record(bytes) {
        Ok(Record::Call(call)) => call,
        Ok(Record::Identity(identity)) => {
            assert_eq!(bytes[..4], IDENTITY_RECORD_VERSION.to_ne_bytes());
            assert_eq!(bytes.len(), size_of::<IdentityRecord>());
            map_identity(&identity);
            return;
        }
        Err(_) => return,
    };
    // The header as the BPF side writes it, and exactly the detail slots the call can use.
    assert_eq!(bytes[..4], RECORD_VERSION.to_ne_bytes());
    let slots = (call.vlen as usize).min(MAX_MESSAGE_DETAIL);
    assert_eq!(bytes.len(), DETAIL_OFFSET + slots * size_of::<MessageResult>());
    assert_eq!(call.destinations.len(), slots);
    assert_eq!(call.detail.len(), (call.messages.seen as usize).min(MAX_MESSAGE_DETAIL));
    // The counters and times are consistent.
    assert!(call.messages.seen <= MAX_VLEN && call.messages.failed <= call.messages.seen, "{call:?}");
    assert_eq!(call.messages.first_error.is_some(), call.messages.failed > 0);
    assert!(call.start_ns <= call.end_ns);
    map_call(&call, &WallClock::from_readings(0, 0));
});
