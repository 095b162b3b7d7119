//! How one variable's text becomes a value, shared by the project's own variables and the
//! standard ones, and which variables a settings struct reads.

use std::time::Duration;

use serde::{
    de::{self, Visitor},
    Deserialize, Deserializer,
};

use super::ConfigError;

pub(super) fn invalid(variable: &str, value: &str, accepts: impl Into<String>) -> ConfigError {
    ConfigError { variable: variable.to_owned(), value: value.to_owned(), accepts: accepts.into() }
}

/// The names of the fields of a settings struct: with envy, the variables it reads. The struct
/// is the one definition of its variables; the list of known names, the typo check and the
/// README's table are checked against it.
pub(super) fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut names = FieldNames(&[]);
    // Stops with an error right after serde has named the fields.
    let _ = T::deserialize(&mut names);
    names.0
}

/// A deserializer that only records the field names a struct asks for.
struct FieldNames(&'static [&'static str]);

impl<'de> Deserializer<'de> for &mut FieldNames {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(de::Error::custom("only the field names are wanted"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The non-empty items of a comma-separated value.
pub(super) fn list(value: &Option<String>) -> impl Iterator<Item = &str> {
    value.as_deref().unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A whole number from 1 to `max` (`None` when unset).
pub(super) fn bounded_int(
    variable: &str,
    value: &Option<String>,
    max: u64,
) -> Result<Option<u32>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let n = parse_int(v).filter(|n| (1..=max).contains(n)).and_then(|n| u32::try_from(n).ok());
    n.map(Some).ok_or_else(|| invalid(variable, v, format!("a whole number from 1 to {max}")))
}

/// A number of milliseconds (`None` when unset).
pub(super) fn millis(variable: &str, value: &Option<String>) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let ms = parse_int(v).ok_or_else(|| invalid(variable, v, "a whole number of milliseconds"))?;
    Ok(Some(Duration::from_millis(ms)))
}

/// A duration above zero, such as `example` (`None` when unset or empty).
pub(super) fn positive_duration(
    variable: &str,
    value: &Option<String>,
    example: &str,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = value.as_ref().filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    let d = humantime::parse_duration(v.trim()).ok().filter(|d| !d.is_zero());
    d.map(Some).ok_or_else(|| invalid(variable, v, format!("a duration above zero, e.g. {example}")))
}

/// `true`/`1` or `false`/`0`/empty, in any case.
pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" | "" => Some(false),
        _ => None,
    }
}

pub(super) fn parse_int(v: &str) -> Option<u64> {
    v.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Two {
        first: Option<String>,
        second_one: Option<String>,
    }

    #[test]
    fn a_structs_fields_are_its_variables() {
        assert_eq!(fields::<Two>(), ["first", "second_one"]);
    }
}
