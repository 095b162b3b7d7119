//! What a process publishes as its OTEP 4719 process context, as it could shape it: any bytes
//! as the header and as the payload, and any `/proc/PID/maps` text. The header checks, the
//! payload decoder and the maps scan never panic, and what the decoder accepts keeps to the
//! bounds of a resource.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry::Value;
use otel_sendmmsg::{
    process::process_context::{
        decode_payload, parse_header, scan_maps, HEADER_BYTES, MAX_ARRAY_ELEMENTS, MAX_PAYLOAD,
    },
    resource_attributes::{MAX_ATTRIBUTES, MAX_KEY_BYTES, MAX_VALUE_BYTES},
};

fuzz_target!(|input: &[u8]| {
    let Some((&which, data)) = input.split_first() else { return };
    match which % 3 {
        0 => {
            if let Ok(decoded) = decode_payload(data) {
                assert!(decoded.attributes.len() <= MAX_ATTRIBUTES);
                if let Some(name) = &decoded.service_name {
                    assert!(!name.is_empty() && name.trim() == name && name.len() <= MAX_VALUE_BYTES);
                }
                for (i, kv) in decoded.attributes.iter().enumerate() {
                    let key = kv.key.as_str();
                    assert!(!key.is_empty() && key.len() <= MAX_KEY_BYTES && key != "service.name");
                    assert!(decoded.attributes[i + 1..].iter().all(|other| other.key != kv.key), "each key once");
                    match &kv.value {
                        Value::String(s) => assert!(s.as_str().len() <= MAX_VALUE_BYTES),
                        Value::Array(array) => assert!(array_len(array) <= MAX_ARRAY_ELEMENTS),
                        _ => {}
                    }
                }
            }
        }
        1 => {
            let mut header = [0u8; HEADER_BYTES];
            let n = data.len().min(HEADER_BYTES);
            header[..n].copy_from_slice(&data[..n]);
            if let Ok((size, _)) = parse_header(&header) {
                assert!(size > 0 && size <= MAX_PAYLOAD);
                assert_eq!(&header[..8], b"OTEL_CTX");
            }
        }
        _ => {
            let maps = scan_maps(data);
            assert!(maps.candidates.len() <= 4);
            assert!(maps.readable.iter().all(|(start, end)| start < end));
            assert!(maps.candidates.iter().all(|c| maps.readable.iter().any(|(start, _)| start == c)));
        }
    }
});

fn array_len(array: &opentelemetry::Array) -> usize {
    match array {
        opentelemetry::Array::Bool(v) => v.len(),
        opentelemetry::Array::I64(v) => v.len(),
        opentelemetry::Array::F64(v) => v.len(),
        opentelemetry::Array::String(v) => v.len(),
        _ => 0,
    }
}
