//! Start-up refuses bad configuration with exit code 2 and a message naming the variable, before
//! it touches the kernel (so these need no root).

mod support;

use std::process::Command;

fn start_with(var: &str, value: &str) -> (Option<i32>, String) {
    let out = Command::new(support::SIDECAR)
        .env_clear()
        .env("NO_COLOR", "1")
        .env(var, value)
        .output()
        .expect("running the sidecar");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn each_bad_value_exits_2_naming_the_variable_and_what_it_accepts() {
    for (var, value, accepts) in [
        ("OTEL_SENDMMSG_RING_BUFFER_BYTES", "3MiB", "power of two"),
        ("OTEL_SENDMMSG_MAX_INFLIGHT", "lots", "whole number"),
        ("OTEL_SENDMMSG_RING_BUFER_BYTES", "8MiB", "OTEL_SENDMMSG_RING_BUFFER_BYTES"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "grpc or http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317", "http://"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "milliseconds"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "otlp, console or none"),
        ("OTEL_METRICS_EXPORTER", "prometheus", "otlp or none"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1m", "milliseconds"),
        ("OTEL_SENDMMSG_CONSOLE_FORMAT", "yaml", "text or json"),
    ] {
        let (code, stderr) = start_with(var, value);
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(&format!("{var}=\"{value}\"")), "{var}: {stderr}");
        assert!(stderr.contains(accepts), "{var}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A variable that is not UTF-8 (any process can be started with one) is a value to refuse, or
/// to ignore when it is not ours, never a panic.
#[test]
fn an_environment_that_is_not_utf8_is_refused_not_a_panic() {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt};
    let out = Command::new(support::SIDECAR)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("OTEL_SENDMMSG_MESSAGE_DETAIL", OsStr::from_bytes(b"spans\xff"))
        .env(OsStr::from_bytes(b"UNRELATED_\xfe"), "x")
        .output()
        .expect("running the sidecar");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("OTEL_SENDMMSG_MESSAGE_DETAIL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
