//! The Kubernetes collector tiers with the real Collector, natively on one host: the sidecar and
//! the demo app export to an agent (`collector-config/agent.yaml`), the agent spreads its batches
//! over two gateways (`gateway.yaml`), the gateways route every span by trace id to one of two
//! tier collectors, and the tier exports to Jaeger. Each trace must arrive whole at one tier
//! collector, although its spans reach the gateways in different batches.
//!
//! The Services are names in a hosts file of the agent's and the gateways' own (a mount
//! namespace each) that resolve to several loopback addresses, as a headless Service resolves to
//! its pods: the agent's round-robin balancer and the gateway's DNS resolver see two members.
//! Each tier collector and gateway stamps its name on what passes (test-only `yaml:` overrides
//! of the configs' pipelines), so the test sees which way each span went.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use support::{backends::*, *};

const SERVICE: &str = "gateway-tier-app";
const ITERATIONS: usize = 30;

/// Overrides that add a `resource` processor stamping `key=value` on every span of the traces
/// pipeline, before `processors` (the config's own, in order).
fn stamp(key: &str, value: &str, processors: &[&str]) -> Vec<String> {
    vec![
        format!(
            "processors::resource/test-stamp::attributes: [{{key: {key}, value: {value}, action: upsert}}]"
        ),
        format!("service::pipelines::traces::processors: [resource/test-stamp, {}]", processors.join(", ")),
    ]
}

/// A hosts file in which `name` resolves to every one of `addresses`.
fn hosts(name: &str, addresses: &[&str]) -> String {
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for address in addresses {
        hosts.push_str(&format!("{address} {name}\n"));
    }
    hosts
}

#[test]
fn every_trace_arrives_whole_through_the_agent_gateways_and_tier() {
    require_root();
    let _alone = one_sidecar_at_a_time();
    let jaeger = start_jaeger();

    // The tier: compose.yaml's Collector (OTLP in, Jaeger out), twice, on one port at two
    // addresses, as pods behind a headless Service.
    let tier_port = free_port();
    let tier_addresses = ["127.0.0.2", "127.0.0.3"];
    let mut running = Vec::new();
    for (name, address) in [("tier-a", tier_addresses[0]), ("tier-b", tier_addresses[1])] {
        let mut tier = Collector::new(name, "compose.yaml", address);
        tier.grpc_port = tier_port;
        tier.env.push(("JAEGER_ENDPOINT", jaeger.otlp.clone()));
        tier.overrides = stamp("test.tier", name, &["memory_limiter", "batch"]);
        running.push(tier.start());
    }

    // The gateways: gateway.yaml, resolving the tier's Service to both members.
    let gateway_port = free_port();
    let gateway_addresses = ["127.0.0.4", "127.0.0.5"];
    for (name, address) in [("gateway-1", gateway_addresses[0]), ("gateway-2", gateway_addresses[1])] {
        let mut gateway = Collector::new(name, "gateway.yaml", address);
        gateway.grpc_port = gateway_port;
        gateway.env.push(("OTEL_TIER_HEADLESS_SERVICE", "otel-tier.test".to_owned()));
        gateway.env.push(("OTEL_TIER_PORT", tier_port.to_string()));
        gateway.hosts = Some(hosts("otel-tier.test", &tier_addresses));
        gateway.overrides = stamp("test.gateway", name, &["memory_limiter"]);
        running.push(gateway.start());
    }

    // The node's agent, outside Kubernetes: its k8s_attributes processor in passthrough mode
    // (no API server to ask; the pipeline is otherwise agent.yaml's).
    let mut agent = Collector::new("agent", "agent.yaml", "127.0.0.1");
    agent.env.push(("K8S_NODE_NAME", "node-1".to_owned()));
    agent.env.push(("OTEL_GATEWAY_ENDPOINT", format!("otel-gateway.test:{gateway_port}")));
    agent.hosts = Some(hosts("otel-gateway.test", &gateway_addresses));
    agent.overrides.push("processors::k8s_attributes::passthrough: true".to_owned());
    let endpoint = format!("http://{}", agent.grpc());
    running.push(agent.start());

    let sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SENDMMSG_COMMS", "otel-sendmmsg-d"),
    ]);
    // The app holds its spans until it ends: they reach the agent long after the sidecar's
    // children of them, in other batches, so a trace's spans take different gateways.
    run_demo_app(&sidecar, SERVICE, &endpoint, ITERATIONS, &[("OTEL_BSP_SCHEDULE_DELAY", "60000")]);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let has = |trace: &Value, name: &str| !spans_named(trace, name).is_empty();
    let logs: Vec<&Running> = running.iter().collect();
    let found = traces_when(
        &jaeger,
        SERVICE,
        |traces| {
            traces.iter().filter(|t| has(t, "publish-batch") && has(t, "sendmmsg")).count() == ITERATIONS
        },
        &logs,
    );
    let mut tiers_used: BTreeSet<&str> = BTreeSet::new();
    let mut gateways_used: BTreeSet<&str> = BTreeSet::new();
    let mut split_at_the_gateways = 0;
    for trace in found.iter().filter(|t| has(t, "publish-batch")) {
        assert_eq!(spans(trace).len(), 2, "the batch and its sendmmsg: {trace:#}");
        let mut way: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for span in spans(trace) {
            for key in ["test.tier", "test.gateway"] {
                let value = process_tag(trace, span, key).and_then(Value::as_str);
                way.entry(key).or_default().insert(value.unwrap_or_else(|| panic!("no {key}: {trace:#}")));
            }
            assert_eq!(process_tag(trace, span, "k8s.node.name").and_then(Value::as_str), Some("node-1"));
        }
        assert_eq!(way["test.tier"].len(), 1, "a trace split over the tier: {trace:#}");
        tiers_used.extend(&way["test.tier"]);
        gateways_used.extend(&way["test.gateway"]);
        if way["test.gateway"].len() > 1 {
            split_at_the_gateways += 1;
        }
    }
    assert_eq!(tiers_used.len(), 2, "the gateways route to both tier collectors");
    assert_eq!(gateways_used.len(), 2, "the agent sends to both gateways");
    assert!(split_at_the_gateways > 0, "no trace took both gateways: nothing tested the routing");
}
