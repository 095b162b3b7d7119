//! The command line: `--help` and `--version`, and nothing else. Settings come from the
//! environment ([`crate::config`]); an argument is only ever a question about the program, so
//! it is answered before anything else happens: no configuration read, no privilege checked,
//! nothing loaded. Anything else is refused with one line and exit code 2, so a flag meant for
//! another tool (or a typo of ours) never starts tracing the whole host.
//!
//! Hand-written rather than with clap (not in the tree): two flags and no values do not need a
//! parser, and clap would add about ten crates to the build for them.

use std::{ffi::OsString, io::Write, process::ExitCode};

use crate::{
    config::documented,
    privileges::{Need, CAPABILITIES},
};

/// Exit code: something about the host refused the sidecar (privileges, tracefs, the kernel's
/// BPF), not its settings.
pub const EXIT_ENVIRONMENT: u8 = 1;
/// Exit code: a setting or argument the user must fix.
pub const EXIT_CONFIG: u8 = 2;

const NAME: &str = env!("CARGO_PKG_NAME");
/// The help's width: wide enough for the README's sentences, narrow enough for a terminal.
const WIDTH: usize = 100;

/// What the command line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// No argument: trace.
    Run,
    Help,
    Version,
}

/// An argument the sidecar does not take, as given (lossy where it is not UTF-8).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{NAME}: unexpected argument {argument:?}: it takes only --help or --version, its settings \
     come from the environment (see {NAME} --help)"
)]
pub struct UnexpectedArgument {
    pub argument: String,
}

/// The arguments after the program's name. Every one must be known: `--help` wins over
/// `--version` in either order. The message quotes the argument escaped, so it stays one line
/// whatever the argument holds.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Action, UnexpectedArgument> {
    let mut action = Action::Run;
    for arg in args {
        let asked = match arg.to_str() {
            Some("-h" | "--help") => Action::Help,
            Some("-V" | "--version") => Action::Version,
            _ => return Err(UnexpectedArgument { argument: arg.to_string_lossy().into_owned() }),
        };
        if action != Action::Help {
            action = asked;
        }
    }
    Ok(action)
}

/// `--version`: the version, the commit it was built from (`unknown` outside a git checkout,
/// e.g. in the image build, which leaves `.git` out), and the SHA-256 of each BPF object compiled
/// in (what `sha256sum` says of the `otel-sendmmsg.bpf.o` and `otel-sendmmsg-hash-map.bpf.o` the
/// build left in its `OUT_DIR`), so two binaries that carry the same kernel side can be told from
/// two that do not. All are found by `build.rs`.
pub fn version() -> String {
    format!(
        "{NAME} {}\ngit commit: {}\nBPF object sha256: {}\nBPF object sha256 (hash map): {}\n",
        env!("CARGO_PKG_VERSION"),
        env!("BUILD_GIT_COMMIT"),
        env!("BUILD_BPF_OBJECT_SHA256"),
        env!("BUILD_BPF_HASH_MAP_OBJECT_SHA256"),
    )
}

/// Examples in the help, each (what it does, the command). Every variable they set is one the
/// settings read (a test checks).
const EXAMPLES: &[(&str, &str)] = &[
    ("One line per call on stdout (no collector set):", "otel-sendmmsg"),
    (
        "Failed calls only, one JSON object per span, for jq:",
        "OTEL_SENDMMSG_CONSOLE_FORMAT=json OTEL_SENDMMSG_ERRORS_ONLY=true otel-sendmmsg | jq .attributes",
    ),
    (
        "To a collector over gRPC:",
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc otel-sendmmsg",
    ),
];

/// `--help`: what the sidecar does, its flags, every variable it reads with its default and
/// what it accepts (README.md's Configuration table, compiled in: see
/// [`crate::config::documented`]), examples, and the exit codes.
pub fn help() -> String {
    let mut out = String::new();
    let mut line = |text: &str| {
        out.push_str(text);
        out.push('\n');
    };
    line(&format!(
        "{NAME} {}: every sendmmsg(2) call on this host as an OpenTelemetry span\n",
        env!("CARGO_PKG_VERSION")
    ));
    line(&format!("Usage: {NAME} [-h | --help | -V | --version]\n"));
    let required: Vec<&str> =
        CAPABILITIES.iter().filter(|c| c.need == Need::Required).map(|c| c.name).collect();
    let optional: Vec<&str> =
        CAPABILITIES.iter().filter(|c| c.need != Need::Required).map(|c| c.name).collect();
    line(&wrap(
        &format!(
            "Traces every sendmmsg(2) call on the host with eBPF and makes each one a span: the \
             call's arguments and result, each message's outcome and destination, the socket, and \
             the calling process as the span's resource. Spans go to an OpenTelemetry collector \
             over OTLP when an endpoint is set, else one line per call is printed on stdout; logs \
             go to stderr. Needs root, or {} ({} optional). SIGINT or SIGTERM stops it after \
             flushing what is pending. Every setting comes from the environment; README.md says \
             more.",
            and_list(&required),
            and_list(&optional),
        ),
        "",
        "",
    ));
    line("");
    line("Options:");
    line("  -h, --help     Print this help and exit.");
    line("  -V, --version  Print the version, the git commit it was built from and the SHA-256 of");
    line("                 its BPF object, and exit.");
    line("");
    line(&wrap(
        "Environment (read once at start-up; a bad value, or an OTEL_SENDMMSG_* name that is not \
         one of these, exits 2):",
        "",
        "",
    ));
    for row in documented::documented() {
        let variable = documented::plain(row.variable);
        let default = documented::plain(row.default);
        line(&wrap(&format!("{variable} (default: {default})"), "  ", "    "));
        line(&wrap(&documented::plain(row.accepts), "      ", "      "));
    }
    line("");
    line("Examples:");
    for (what, command) in EXAMPLES {
        line(&format!("  {what}"));
        line(&format!("    {command}"));
    }
    line("");
    line("Exit status:");
    line("  0  stopped by SIGINT or SIGTERM, or after --help or --version");
    line(&format!(
        "  {EXIT_ENVIRONMENT}  the host refused: missing privileges, no tracefs, BPF refused by the kernel"
    ));
    line(&format!(
        "  {EXIT_CONFIG}  a setting or argument to fix: a bad or unknown variable, an attach family the"
    ));
    line("     kernel cannot give, a cgroup that does not exist, an unexpected argument");
    out
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// `text` in lines of at most [`WIDTH`] columns, the first starting with `first`, the others
/// with `rest` (a word longer than a line gets a line of its own).
fn wrap(text: &str, first: &str, rest: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut indent = first.len();
    let mut current = String::from(first);
    for word in text.split_whitespace() {
        if current.len() > indent && current.len() + 1 + word.len() > WIDTH {
            lines.push(std::mem::replace(&mut current, String::from(rest)));
            indent = rest.len();
        }
        if current.len() > indent {
            current.push(' ');
        }
        current.push_str(word);
    }
    lines.push(current);
    lines.join("\n")
}

/// Prints `text` on stdout. A reader that went away (`--help | head`) had what it wanted: not
/// an error; any other failure to write is the host's (exit 1), never a panic.
pub fn print(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{NAME}: writing to stdout: {e}");
            ExitCode::from(EXIT_ENVIRONMENT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::variables;

    fn parsed(args: &[&str]) -> Result<Action, UnexpectedArgument> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn only_help_and_version_are_taken() {
        assert_eq!(parsed(&[]), Ok(Action::Run));
        for help in [&["-h"][..], &["--help"], &["--version", "-h"], &["-h", "-V"]] {
            assert_eq!(parsed(help), Ok(Action::Help), "{help:?}");
        }
        for version in [&["-V"][..], &["--version"], &["-V", "--version"]] {
            assert_eq!(parsed(version), Ok(Action::Version), "{version:?}");
        }
        for (args, refused) in [
            (&["--bogus"][..], "--bogus"),
            (&["run"], "run"),
            (&["--help", "extra"], "extra"),
            (&["-hV"], "-hV"),
            (&["--help=all"], "--help=all"),
            (&["--"], "--"),
            (&["-v"], "-v"),
            (&[""], ""),
        ] {
            assert_eq!(parsed(args), Err(UnexpectedArgument { argument: refused.to_owned() }), "{args:?}");
        }
    }

    #[test]
    fn a_refused_argument_is_named_on_one_line_whatever_it_holds() {
        use std::os::unix::ffi::OsStringExt;
        let message = parsed(&["--x\nERROR forged\x1b[2J"]).unwrap_err().to_string();
        assert!(!message.contains(|c: char| c.is_control()), "{message:?}");
        assert!(message.contains(r#""--x\nERROR forged\u{1b}[2J""#), "{message}");
        assert!(message.contains("--help"), "{message}");
        let not_utf8 = parse([OsString::from_vec(b"--\xffx".to_vec())]).unwrap_err();
        assert_eq!(not_utf8.argument, "--\u{fffd}x");
    }

    #[test]
    fn the_help_names_every_variable_with_its_documented_default() {
        let help = help();
        let unwrapped = help.replace("\n    ", " ").replace("  ", " ");
        for row in documented::documented() {
            let heading =
                format!(" {} (default: {})", documented::plain(row.variable), documented::plain(row.default));
            assert!(unwrapped.contains(&heading), "{heading:?} not in:\n{help}");
        }
        for variable in variables() {
            assert!(help.contains(&format!("\n  {variable} (default: ")), "{variable} not in:\n{help}");
        }
        assert!(help.lines().all(|l| l.len() <= WIDTH || !l.trim().contains(' ')), "{help}");
        assert!(!help.contains('`'), "Markdown left in the help:\n{help}");
    }

    #[test]
    fn the_examples_set_only_variables_that_are_read() {
        let read = variables();
        for (_, command) in EXAMPLES {
            for word in command.split_whitespace() {
                if let Some((name, _)) = word.split_once('=') {
                    assert!(read.iter().any(|v| v == name), "{name} in the example {command:?}");
                }
            }
        }
    }

    #[test]
    fn the_help_gives_the_exit_codes_main_uses() {
        let help = help();
        let status = help.split("\nExit status:\n").nth(1).unwrap();
        for code in [0, EXIT_ENVIRONMENT, EXIT_CONFIG] {
            assert!(status.contains(&format!("\n  {code}  ")) || status.starts_with(&format!("  {code}  ")));
        }
    }

    #[test]
    fn the_version_names_the_commit_and_the_bpf_objects_hash() {
        let version = version();
        let lines: Vec<&str> = version.lines().collect();
        assert_eq!(lines[0], format!("otel-sendmmsg {}", env!("CARGO_PKG_VERSION")));
        let commit = lines[1].strip_prefix("git commit: ").unwrap();
        assert!(
            commit == "unknown" || (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{commit}"
        );
        let hashes = [
            lines[2].strip_prefix("BPF object sha256: "),
            lines[3].strip_prefix("BPF object sha256 (hash map): "),
        ]
        .map(Option::unwrap);
        for hash in hashes {
            assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");
        }
        assert_ne!(hashes[0], hashes[1], "two objects, two hashes");
    }

    #[test]
    fn wrapping_keeps_lines_within_the_width() {
        let text = "word ".repeat(100);
        let wrapped = wrap(&text, "  ", "    ");
        let lines: Vec<&str> = wrapped.lines().collect();
        assert!(lines[0].starts_with("  word") && !lines[0].starts_with("   "), "{wrapped}");
        assert!(lines[1..].iter().all(|l| l.starts_with("    word")), "{wrapped}");
        assert!(lines.iter().all(|l| l.len() <= WIDTH), "{wrapped}");
        assert!(lines[..lines.len() - 1].iter().all(|l| l.len() > WIDTH - 5), "lines filled: {wrapped}");
        assert_eq!(wrapped.split_whitespace().count(), 100);
        assert_eq!(wrap("", "  ", ""), "  ");
    }
}
