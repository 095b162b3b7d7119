//! Reads back the process context payload, for tests: just enough protobuf for the messages
//! process_context.rs writes (every field length-delimited), written apart from the encoder so
//! a test does not check the encoder against itself. Panics on anything else.

/// A message's fields in order, as (field number, bytes).
pub fn fields(mut bytes: &[u8]) -> Vec<(u64, &[u8])> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let tag = varint(&mut bytes);
        assert_eq!(tag & 7, 2, "only length-delimited fields are written");
        let len = usize::try_from(varint(&mut bytes)).unwrap();
        assert!(len <= bytes.len(), "a field runs past the message");
        let (value, rest) = bytes.split_at(len);
        fields.push((tag >> 3, value));
        bytes = rest;
    }
    fields
}

fn varint(bytes: &mut &[u8]) -> u64 {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().expect("a varint runs past the message");
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return value;
        }
    }
    panic!("a varint over 10 bytes")
}

/// A `KeyValue`: its key, and its `AnyValue`'s fields (the one set, for a well-formed value).
pub type Attribute = (String, Vec<(u64, Vec<u8>)>);

/// The decoded `ProcessContext`.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessContext {
    /// `resource` (1): its attributes, strings only; `None` when the field is absent.
    pub resource: Option<Vec<(String, String)>>,
    /// `attributes` (2): key and the `AnyValue`'s fields.
    pub attributes: Vec<Attribute>,
}

/// `KeyValue{key = 1, value = 2}`.
fn key_value(bytes: &[u8]) -> Attribute {
    let mut key = String::new();
    let mut value = Vec::new();
    for (number, bytes) in fields(bytes) {
        match number {
            1 => key = String::from_utf8(bytes.to_vec()).unwrap(),
            2 => value = fields(bytes).into_iter().map(|(n, b)| (n, b.to_vec())).collect(),
            other => panic!("KeyValue has no field {other}"),
        }
    }
    (key, value)
}

pub fn process_context(payload: &[u8]) -> ProcessContext {
    let mut context = ProcessContext::default();
    for (number, bytes) in fields(payload) {
        match number {
            1 => {
                let attributes = fields(bytes).into_iter().map(|(n, kv)| {
                    assert_eq!(n, 1, "Resource.attributes");
                    let (key, value) = key_value(kv);
                    assert_eq!(value.len(), 1, "one AnyValue field");
                    assert_eq!(value[0].0, 1, "AnyValue.string_value");
                    (key, String::from_utf8(value[0].1.clone()).unwrap())
                });
                context.resource = Some(attributes.collect());
            }
            2 => context.attributes.push(key_value(bytes)),
            other => panic!("ProcessContext has no field {other}"),
        }
    }
    context
}

/// The `threadlocal.*` attributes OTEP 4947 asks for, as this library publishes them: schema
/// `tlsdesc_v1_dev` (`AnyValue.string_value` = 1) and an empty key map (`AnyValue.array_value` =
/// 5, an `ArrayValue` with no `values`).
pub fn threadlocal_attributes() -> Vec<Attribute> {
    vec![
        ("threadlocal.schema_version".into(), vec![(1, b"tlsdesc_v1_dev".to_vec())]),
        ("threadlocal.attribute_key_map".into(), vec![(5, Vec::new())]),
    ]
}
