//! README.md's Configuration table and the settings cannot drift apart: every variable read is
//! documented, every documented variable is read, and a documented default is the default.

use std::collections::BTreeSet;

use super::{variables, Config};

const README: &str = include_str!("../../../README.md");

/// The table's rows: (variable, default cell), one variable per row.
fn documented() -> Vec<(String, String)> {
    let section = README.split("\n## Configuration\n").nth(1).expect("README.md has a Configuration section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let names = code_spans(cells[0]);
            assert_eq!(names.len(), 1, "one variable per row: {line}");
            (names[0].to_owned(), cells.get(1).copied().unwrap_or_default().to_owned())
        })
        .collect()
}

/// The `code` spans of a cell, in order.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
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
