//! `OTEL_RESOURCE_ATTRIBUTES` as the specification defines it: `key=value` pairs separated by
//! commas, values percent-encoded; a value that does not parse is discarded whole. The
//! sidecar's own variable and each traced process's are read the same way; the latter is
//! hostile input, so the list is bounded.

/// Attributes in one `OTEL_RESOURCE_ATTRIBUTES`, at most; a longer list is refused. The SDKs set no limit; resources in practice carry a dozen.
pub const MAX_ATTRIBUTES: usize = 64;
/// The longest key kept, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// The longest value kept, in bytes, after percent-decoding.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Why an `OTEL_RESOURCE_ATTRIBUTES` value is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// An entry without `=`, or with an empty key.
    Entry,
    /// A `%` not followed by two hex digits, or a value that is not UTF-8 once decoded.
    Encoding,
    /// More than [`MAX_ATTRIBUTES`] entries, or a key or value over its bound.
    TooLarge,
}

/// `key1=value1,key2=value2`: keys and values trimmed, values percent-decoded; an empty list
/// entry (`a=1,,b=2`) is skipped.
pub fn parse_resource_attributes(raw: &str) -> Result<Vec<(String, String)>, Malformed> {
    let mut pairs = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (key, value) = entry.split_once('=').ok_or(Malformed::Entry)?;
        let key = key.trim();
        if key.is_empty() {
            return Err(Malformed::Entry);
        }
        let value = percent_decode(value.trim()).ok_or(Malformed::Encoding)?;
        if pairs.len() == MAX_ATTRIBUTES || key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
            return Err(Malformed::TooLarge);
        }
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// `%XX` escapes decoded; `None` when one is malformed or the result is not UTF-8.
pub fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
