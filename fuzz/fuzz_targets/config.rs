//! Environments into the configuration. `Config::from_vars` returns a configuration or an error,
//! never panics, and:
//! - what it accepts is within what README.md's Configuration table documents;
//! - an error names a variable that is set, with its value as set (`invalid VAR="value"`);
//! - it reads the environment as the OTLP exporter and the SDK do (`getenv`): the first entry of
//!   a repeated name counts, names are case-sensitive (`otel_bsp_max_queue_size` is not
//!   `OTEL_BSP_MAX_QUEUE_SIZE`), and a standard `OTEL_*` variable set to the empty string is
//!   unset, as the OpenTelemetry specification requires;
//! - the export queue's settings are what was set, a batch never larger than the queue, 1 to
//!   16 exports in flight.
//!
//! The input is an environment as `/proc/PID/environ` holds it: `NAME=VALUE` entries separated by
//! NUL bytes (an entry without `=` is a name with an empty value; invalid UTF-8 is replaced). A
//! name of a single byte stands for one of the variables the settings read (`config::variables`;
//! byte & 0x7f, modulo their number), in lower case when the byte's high bit is set, so values
//! reach every variable's checks without the fuzzer having to spell the names; the dictionary
//! (scripts/fuzz.sh passes it) supplies the values' vocabulary.
#![no_main]

use std::{collections::HashSet, sync::OnceLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use otel_sendmmsg::config::{variables, Config, ConfigError, ParentRule, PREFIX};

/// Every variable the settings read.
fn known() -> &'static [String] {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN.get_or_init(variables)
}

fn environment(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, value) = match entry.iter().position(|&b| b == b'=') {
                Some(eq) => (&entry[..eq], &entry[eq + 1..]),
                None => (entry, &[][..]),
            };
            let name = match name {
                [b] => {
                    let known = &known()[usize::from(b & 0x7f) % known().len()];
                    if b & 0x80 != 0 {
                        known.to_ascii_lowercase()
                    } else {
                        known.clone()
                    }
                }
                _ => String::from_utf8_lossy(name).into_owned(),
            };
            (name, String::from_utf8_lossy(value).into_owned())
        })
        .collect()
}

/// The environment as `getenv` sees it: the first entry of each name.
fn first_entries(vars: &[(String, String)]) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    vars.iter().filter(|(name, _)| seen.insert(name.as_str())).cloned().collect()
}

/// Whether `name` could be one of the variables read: they are all upper case.
fn upper_case(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn check_accepted(config: &Config) {
    let rb = u64::from(config.ring_buffer_bytes);
    assert!(rb.is_power_of_two() && (4096..=1 << 30).contains(&rb), "{config:?}");
    assert!((1..=1 << 20).contains(&config.max_inflight), "{config:?}");
    assert!((1..=1 << 18).contains(&config.max_context_processes), "{config:?}");
    let f = &config.filters;
    assert!((0.0..=1.0).contains(&f.sampler.root_ratio), "{config:?}");
    if let ParentRule::TraceIdRatio(ratio) = f.sampler.with_parent {
        assert!((0.0..=1.0).contains(&ratio), "{config:?}");
    }
    assert!(f.pids.iter().all(|&p| p > 0), "{config:?}");
    assert!(f.comms.iter().all(|c| !c.is_empty() && c.len() <= 15 && !c.contains('\0')), "{config:?}");
    assert!(f.cgroups.iter().all(|c| !c.as_os_str().is_empty()), "{config:?}");
    assert!(!config.loss_report_interval.is_zero(), "{config:?}");
}

fn check_same(
    what: &str,
    vars: &[(String, String)],
    got: &Result<Config, ConfigError>,
    same: Vec<(String, String)>,
) {
    assert_eq!(*got, Config::from_vars(same.clone()), "{what}:\n{vars:?}\nvs\n{same:?}");
}

/// The export queue's settings are what was set, within their bounds.
fn check_batch(getenv: impl Fn(&str) -> Option<String>, config: &Config) {
    let batch = config.batch;
    assert!(batch.max_queue_size > 0 && batch.max_export_batch_size > 0, "{batch:?}");
    assert!(batch.max_export_batch_size <= batch.max_queue_size, "{batch:?}");
    assert!(batch.schedule_delay >= Duration::from_millis(1), "{batch:?}");
    assert!((1..=16).contains(&batch.max_concurrent_exports), "{batch:?}");
    let ms = |name: &str| {
        let value = getenv(name).filter(|v| !v.is_empty())?;
        Some(value.trim().parse::<u64>().unwrap_or_else(|_| panic!("{name}={value:?} was accepted")))
    };
    if let Some(n) = ms("OTEL_BSP_MAX_QUEUE_SIZE") {
        assert_eq!(batch.max_queue_size as u64, n, "{batch:?}");
    }
    if let Some(n) = ms("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        assert_eq!(batch.max_export_batch_size as u64, n.min(batch.max_queue_size as u64), "{batch:?}");
    }
    if let Some(n) = ms("OTEL_BSP_SCHEDULE_DELAY") {
        assert_eq!(batch.schedule_delay, Duration::from_millis(n.max(1)), "{batch:?}");
    }
    if let Some(n) = ms("OTEL_BSP_EXPORT_TIMEOUT") {
        assert_eq!(batch.export_timeout, (n > 0).then(|| Duration::from_millis(n)), "{batch:?}");
    }
    if let Some(n) = ms("OTEL_BSP_MAX_CONCURRENT_EXPORTS") {
        assert_eq!(batch.max_concurrent_exports as u64, n, "{batch:?}");
    }
}

fuzz_target!(|bytes: &[u8]| {
    let vars = environment(bytes);
    let got = Config::from_vars(vars.clone());
    match &got {
        Ok(config) => check_accepted(config),
        Err(error) => {
            // The value as set, except a header variable's: a secret, shown only by its size.
            let as_shown = |name: &str, value: &str| {
                if name.ends_with("_HEADERS") {
                    format!("<{} bytes, not shown>", value.len())
                } else {
                    value.to_owned()
                }
            };
            assert!(
                vars.iter()
                    .any(|(name, value)| *name == error.variable && as_shown(name, value) == error.value),
                "{error:?} names no variable as set in {vars:?}"
            );
            assert!(!error.accepts.is_empty(), "{error:?}");
        }
    }

    let env = first_entries(&vars);
    check_same("a repeated name: its first entry counts", &vars, &got, env.clone());
    // Other spellings of the names are other variables, read by nothing; but any
    // OTEL_SENDMMSG_ name is checked, to catch typos.
    let exact: Vec<_> =
        env.iter().filter(|(name, _)| upper_case(name) || name.starts_with(PREFIX)).cloned().collect();
    check_same("names are case-sensitive", &vars, &got, exact.clone());
    let set: Vec<_> = exact
        .iter()
        .filter(|(name, value)| !value.is_empty() || !name.starts_with("OTEL_") || name.starts_with(PREFIX))
        .cloned()
        .collect();
    check_same("an empty standard variable is unset", &vars, &got, set);

    if let Ok(config) = &got {
        check_batch(|name| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()), config);
    }
});
