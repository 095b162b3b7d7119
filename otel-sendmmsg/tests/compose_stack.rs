//! End to end with the real backends of docker-compose.yml, run natively (no Docker engine
//! here): Jaeger v2 with in-memory storage, an OpenTelemetry Collector built from the upstream
//! modules (`tools/otelcol`, the components `collector-config/` uses) running
//! `collector-config/compose.yaml` itself, the demo app, and the sidecar as `nobody` with exactly
//! the compose file's capabilities. What a user would see is asked of Jaeger's query API.
//! Every collector config is also checked by the real binary's `validate`.
//!
//! The binaries are built by `scripts/setup.sh --tests` (scripts/setup-observability.sh).

mod support;

use std::{path::Path, process::Command};

use serde_json::Value;
use support::{backends::*, *};

const SERVICE: &str = "compose-stack-app";
const ITERATIONS: usize = 5;

/// The compose stack: the demo app's `publish-batch` spans reach Jaeger with the sidecar's
/// `sendmmsg` spans as their children, as a user would see them, a partial send among them; the
/// sidecar's own metrics reach the Collector.
#[test]
fn jaeger_shows_the_demo_apps_spans_with_their_sendmmsg_children() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let jaeger = start_jaeger();
    let mut collector = Collector::new("collector", "compose.yaml", "127.0.0.1");
    collector.env.push(("JAEGER_ENDPOINT", jaeger.otlp.clone()));
    // The debug exporter names each metric it passes on at this verbosity (the file's `basic`
    // only counts them).
    collector.overrides.push("exporters::debug::verbosity: detailed".to_owned());
    let endpoint = format!("http://{}", collector.grpc());
    let collector = collector.start();
    // The sidecar as the compose file runs it: nobody, exactly its capabilities.
    let caps = compose_capabilities();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let binary = copy_for_other_users(Path::new(SIDECAR), "otel-sendmmsg-compose");
    let sidecar = Sidecar::try_start_command(
        in_own_bpffs(&setpriv(NOBODY, &caps, true, &binary)),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    )
    .unwrap_or_else(|(status, log)| panic!("the sidecar did not start ({status}):\n{log}"));
    // The app as the compose file configures it, but for where it sends (this host's ports).
    let app_env = compose_environment("app");
    let oversized_every: usize = app_env
        .iter()
        .find(|(k, _)| k == "DEMO_OVERSIZED_EVERY")
        .map(|(_, v)| v.parse().unwrap())
        .expect("the compose file's app sends an oversized datagram now and then");
    assert!(oversized_every > 0);
    let app_env: Vec<(&str, &str)> = app_env
        .iter()
        .filter(|(k, _)| k.starts_with("DEMO_") && k != "DEMO_TARGET")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let pid = run_demo_app(&sidecar, SERVICE, &endpoint, ITERATIONS, &app_env);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    // What Jaeger shows: every batch's trace, whole.
    let has = |trace: &Value, name: &str| !spans_named(trace, name).is_empty();
    let found = traces_when(
        &jaeger,
        SERVICE,
        |traces| {
            traces.iter().filter(|t| has(t, "publish-batch") && has(t, "sendmmsg")).count() == ITERATIONS
        },
        &[&collector],
    );
    // The demo's heartbeat thread publishes no span: its calls are traces of their own, one root
    // span each.
    let heartbeats: Vec<&Value> = found.iter().filter(|t| !has(t, "publish-batch")).collect();
    assert!(!heartbeats.is_empty(), "{found:#?}");
    for trace in heartbeats {
        let spans = spans(trace);
        assert_eq!(spans.len(), 1, "{trace:#}");
        assert_eq!(spans[0]["operationName"], "sendmmsg");
        assert!(spans[0]["references"].as_array().is_none_or(Vec::is_empty), "a root: {trace:#}");
        assert_eq!(tag(&spans[0], "thread.name").and_then(Value::as_str), Some("heartbeat"));
    }
    let mut partial = 0;
    for trace in found.iter().filter(|t| has(t, "publish-batch")) {
        let parents = spans_named(trace, "publish-batch");
        assert_eq!(parents.len(), 1, "{trace:#}");
        let parent = parents[0];
        let children = spans_named(trace, "sendmmsg");
        assert_eq!(children.len(), 1, "one sendmmsg per batch: {trace:#}");
        let child = children[0];
        let reference = &child["references"][0];
        assert_eq!(
            (reference["refType"].as_str(), &reference["spanID"]),
            (Some("CHILD_OF"), &parent["spanID"])
        );
        let (p0, pd) = (parent["startTime"].as_u64().unwrap(), parent["duration"].as_u64().unwrap());
        let (c0, cd) = (child["startTime"].as_u64().unwrap(), child["duration"].as_u64().unwrap());
        assert!(p0 <= c0 && c0 + cd <= p0 + pd, "the syscall lies inside its batch: {trace:#}");
        // Both under the app's own service (the sidecar read its process context).
        for span in [parent, child] {
            assert_eq!(
                process_tag(trace, span, "service.name").and_then(Value::as_str),
                Some(SERVICE),
                "{trace:#}"
            );
        }
        let int = |key| tag(child, key).and_then(Value::as_i64);
        let text = |span, key| tag(span, key).and_then(Value::as_str);
        assert_eq!(text(child, "span.kind"), Some("internal"), "{child:#}");
        assert_eq!(text(child, "network.transport"), Some("udp"), "{child:#}");
        assert_eq!(int("process.pid"), Some(i64::from(pid)), "{child:#}");
        let vlen = int("sendmmsg.vlen").expect("sendmmsg.vlen");
        let batch_sent = tag(parent, "batch.sent").and_then(Value::as_i64);
        if batch_sent == Some(vlen) {
            assert_eq!(int("sendmmsg.messages.failed"), Some(0), "{child:#}");
            assert_eq!(int("sendmmsg.sent"), Some(vlen), "{child:#}");
            assert!(text(child, "otel.status_code").is_none_or(|s| s == "OK"), "{child:#}");
        } else {
            // The oversized datagram in the middle: the kernel sent the messages before it and
            // refused it; the app saw only the count, the syscall span says which and why.
            partial += 1;
            let refused = vlen / 2;
            assert_eq!(batch_sent, Some(refused), "{parent:#}");
            assert_eq!(text(parent, "otel.status_code"), Some("ERROR"), "{parent:#}");
            assert_eq!(int("sendmmsg.sent"), Some(refused), "{child:#}");
            assert_eq!(int("sendmmsg.messages.failed"), Some(1), "{child:#}");
            assert_eq!(text(child, "error.type"), Some("EMSGSIZE"), "{child:#}");
            assert_eq!(text(child, "otel.status_code"), Some("ERROR"), "{child:#}");
            assert_eq!(
                text(child, "otel.status_description"),
                Some(format!("message {refused} of {vlen} failed: EMSGSIZE").as_str()),
                "{child:#}"
            );
        }
    }
    assert_eq!(partial, ITERATIONS.div_ceil(oversized_every), "batches with an oversized datagram");
    // The sidecar's own metrics went through the Collector's metrics pipeline, by name. The demo
    // app sets up no meter provider, so every metric there is the sidecar's.
    let log = collector.log();
    for metric in ["otel_sendmmsg.spans", "otel_sendmmsg.spans.exported"] {
        assert!(
            log.contains(&format!("-> Name: {metric}\n")),
            "{metric} did not reach the collector:\n{log}"
        );
    }
}

/// Each collector config as the real binary of the release the tests run checks it.
#[test]
fn every_collector_config_is_valid_for_the_collector_release_we_build() {
    for config in ["compose.yaml", "agent.yaml", "gateway.yaml"] {
        let path = workspace().join("collector-config").join(config);
        let out = Command::new(backend("otelcol"))
            .arg("validate")
            .arg(format!("--config={}", path.display()))
            .env("K8S_NODE_NAME", "node-1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{config}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
