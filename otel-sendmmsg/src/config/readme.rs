//! README.md's Configuration table and the settings cannot drift apart: every variable read is
//! documented, every documented variable is read, and a documented default is the default.

use std::collections::BTreeSet;

use super::{documented::code_spans, variables, Config};

/// The table's rows: (variable, default cell), one variable per row.
fn documented() -> Vec<(String, String)> {
    let rows = super::documented::documented();
    assert!(!rows.is_empty(), "README.md has a Configuration section with a table");
    rows.iter()
        .map(|row| {
            let names = code_spans(row.variable);
            assert_eq!(names.len(), 1, "one variable per row: {row:?}");
            assert_eq!(row.variable, format!("`{}`", names[0]), "only the variable in its cell: {row:?}");
            (names[0].to_owned(), row.default.to_owned())
        })
        .collect()
}

#[test]
fn every_variable_read_is_documented_and_every_documented_one_is_read() {
    let rows = documented();
    let documented: BTreeSet<String> = rows.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(documented.len(), rows.len(), "a variable has two rows");
    let read: BTreeSet<String> = variables().into_iter().collect();
    let undocumented: Vec<_> = read.difference(&documented).collect();
    let unread: Vec<_> = documented.difference(&read).collect();
    assert!(
        undocumented.is_empty() && unread.is_empty(),
        "read but not in README.md's Configuration table: {undocumented:?}; \
         documented but read by nothing: {unread:?}"
    );
}

/// A default given as one value (`4MiB`) must be what the variable's absence means. Checked
/// with both exporters on, so the OTLP variables count; prose defaults ("all", "none", two
/// values) are not values to set.
#[test]
fn every_documented_default_is_the_default() {
    let base = [("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_METRICS_EXPORTER", "otlp")];
    let with = |extra: Option<(&str, &str)>| {
        let vars = base
            .iter()
            .filter(|(name, _)| extra.is_none_or(|(set, _)| set != *name))
            .chain(extra.as_ref())
            .map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_vars(vars)
    };
    let unset = with(None).expect("the defaults are valid");
    let mut checked = 0;
    for (name, default) in documented() {
        let spans = code_spans(&default);
        let [value] = spans.as_slice() else { continue };
        if default.trim() != format!("`{value}`") {
            continue;
        }
        let set = with(Some((&name, value))).unwrap_or_else(|e| panic!("README's default of {name}: {e}"));
        assert_eq!(set, unset, "README.md says {name} defaults to {value}; it does not");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} defaults checked: is the table still one variable per row?");
}
