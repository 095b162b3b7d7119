//! What each variable means, as README.md's Configuration table says it: the one description of
//! every variable. The settings' fields name the variables ([`super::variables`]); this table
//! says what each accepts and what its absence means. `--help` prints it (compiled in, so the
//! help cannot say anything the README does not), and the tests in `readme.rs` hold it to the
//! fields and its defaults to the parser.

const README: &str = include_str!("../../../README.md");

/// One row of the table, its cells as written (Markdown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Documented {
    /// The first cell: one `code` span, the variable's name (`readme.rs` checks there is one).
    pub variable: &'static str,
    /// What the variable's absence means: one `value`, or words (`all`, `as ...`).
    pub default: &'static str,
    /// What it accepts and does.
    pub accepts: &'static str,
}

/// The table's rows, in the README's order. Empty if the section is gone, which the tests in
/// `readme.rs` refuse; nothing here panics, since `--help` runs it.
pub fn documented() -> Vec<Documented> {
    let Some(section) = README.split("\n## Configuration\n").nth(1) else { return Vec::new() };
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let mut cells = line.trim().trim_matches('|').split(" | ").map(str::trim);
            let name = cells.next().unwrap_or_default();
            Documented {
                variable: name,
                default: cells.next().unwrap_or_default(),
                accepts: cells.next().unwrap_or_default(),
            }
        })
        .collect()
}

/// The `code` spans of a cell, in order.
pub fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// A cell as plain text for a terminal: Markdown's code marks and escaped bars gone.
pub fn plain(cell: &str) -> String {
    cell.replace('`', "").replace("\\|", "|")
}
