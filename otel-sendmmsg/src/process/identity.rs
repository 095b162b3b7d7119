//! What a process declares about itself, as its own OpenTelemetry SDK would read it: its
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`. Both come from the process, so both are
//! hostile input: bounded, and a malformed value is refused whole (as the specification asks of
//! an SDK) rather than half-used.

use opentelemetry::KeyValue;

use crate::resource_attributes::parse_resource_attributes;

/// What a process says of itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Declared {
    /// `OTEL_SERVICE_NAME`, else `service.name` from `OTEL_RESOURCE_ATTRIBUTES`.
    pub service_name: Option<String>,
    /// The other attributes of `OTEL_RESOURCE_ATTRIBUTES`, in order, each key once (the last
    /// entry of a repeated key wins, as in the SDKs).
    pub attributes: Vec<KeyValue>,
    /// `OTEL_RESOURCE_ATTRIBUTES` was set but refused (malformed or over the bounds).
    pub refused: bool,
}

/// The declaration in a process's two variables, as found in its environment (raw bytes; an
/// empty value is unset, as the specification says).
pub fn declared(service_name: Option<&[u8]>, resource_attributes: Option<&[u8]>) -> Declared {
    let service_name =
        service_name.map(String::from_utf8_lossy).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let parsed = resource_attributes
        .map(String::from_utf8_lossy)
        .filter(|raw| !raw.trim().is_empty())
        .map(|raw| parse_resource_attributes(&raw));
    let (pairs, refused) = match parsed {
        None => (Vec::new(), false),
        Some(Ok(pairs)) => (pairs, false),
        Some(Err(_)) => (Vec::new(), true),
    };
    let mut declared = Declared { service_name, attributes: Vec::with_capacity(pairs.len()), refused };
    for (key, value) in pairs {
        if key == "service.name" {
            // OTEL_SERVICE_NAME wins over the attribute.
            if declared.service_name.is_none() && !value.is_empty() {
                declared.service_name = Some(value);
            }
            continue;
        }
        declared.attributes.retain(|kv| kv.key.as_str() != key);
        declared.attributes.push(KeyValue::new(key, value));
    }
    declared
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource_attributes::{Malformed, MAX_ATTRIBUTES, MAX_VALUE_BYTES};

    fn attrs(d: &Declared) -> Vec<(String, String)> {
        d.attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect()
    }

    #[test]
    fn attributes_are_percent_decoded_and_the_last_of_a_key_wins() {
        let d = declared(
            None,
            Some(b"service.namespace=shop, deployment.environment.name=prod%20eu,service.version=1.2,service.namespace=checkout"),
        );
        assert_eq!(
            attrs(&d),
            [
                ("deployment.environment.name", "prod eu"),
                ("service.version", "1.2"),
                ("service.namespace", "checkout")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(!d.refused);
    }

    #[test]
    fn otel_service_name_wins_over_the_attribute() {
        let both = declared(Some(b"from-name"), Some(b"service.name=from-attributes"));
        assert_eq!(both.service_name.as_deref(), Some("from-name"));
        assert!(both.attributes.is_empty(), "service.name is the service, not another attribute");
        let attribute_only = declared(Some(b"  "), Some(b"service.name=from-attributes"));
        assert_eq!(attribute_only.service_name.as_deref(), Some("from-attributes"));
        assert_eq!(declared(None, None), Declared::default());
    }

    #[test]
    fn a_malformed_or_oversized_value_is_refused_whole() {
        for bad in ["a=1,novalue", "=x", "a=%zz", "a=%ff%fe", "a=1,b"] {
            let d = declared(Some(b"svc"), Some(bad.as_bytes()));
            assert!(d.refused && d.attributes.is_empty(), "{bad}: {d:?}");
            assert_eq!(d.service_name.as_deref(), Some("svc"), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_ATTRIBUTES).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_resource_attributes(&many.join(",")), Err(Malformed::TooLarge));
        assert_eq!(
            parse_resource_attributes(&many[..MAX_ATTRIBUTES].join(",")).map(|p| p.len()),
            Ok(MAX_ATTRIBUTES)
        );
        let long_value = format!("k={}", "v".repeat(MAX_VALUE_BYTES + 1));
        assert_eq!(parse_resource_attributes(&long_value), Err(Malformed::TooLarge));
        assert_eq!(parse_resource_attributes("a=1,,b=2,").map(|p| p.len()), Ok(2));
    }
}
