//! The deployment files, checked where no Docker engine, collector or cluster runs: docker-compose
//! validates the compose file; every collector configuration is complete and has no leftovers;
//! the Kubernetes manifests hang together; the agent collector adds Kubernetes metadata by
//! `container.id` and may read exactly what that needs; and the Dockerfile, docker-compose.yml and
//! the DaemonSet grant exactly the capabilities `privileges::CAPABILITIES` lists, no more, no fewer;
//! and the images build with Debian's docker (Docker 20.10's own Dockerfile parser).

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use otel_sendmmsg::{config::Config, privileges::CAPABILITIES};
use support::backends::backend;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn parse_all(text: &str, what: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
}

fn parse(relative: &str) -> Yaml {
    let mut docs = parse_all(&read(relative), relative);
    assert_eq!(docs.len(), 1, "{relative}: one document");
    docs.remove(0)
}

/// The value at a dotted path of keys (`BadValue` if any is missing).
fn at<'a>(yaml: &'a Yaml, path: &str) -> &'a Yaml {
    path.split('.').fold(yaml, |y, key| &y[key])
}

fn string(yaml: &Yaml, what: &str) -> String {
    match yaml {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("{what}: expected a scalar, found {other:?}"),
    }
}

fn strings(yaml: &Yaml, what: &str) -> Vec<String> {
    match yaml {
        Yaml::Array(items) => items.iter().map(|i| string(i, what)).collect(),
        other => panic!("{what}: expected a list, found {other:?}"),
    }
}

fn keys(yaml: &Yaml) -> Vec<String> {
    match yaml {
        Yaml::Hash(h) => h.keys().map(|k| string(k, "a key")).collect(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => panic!("expected a mapping, found {other:?}"),
    }
}

/// The capabilities as Docker and Kubernetes name them: `BPF`, `SYS_PTRACE`.
fn documented_capabilities() -> BTreeSet<String> {
    CAPABILITIES.iter().map(|c| c.short_name().to_owned()).collect()
}

fn as_set(items: Vec<String>) -> BTreeSet<String> {
    let set: BTreeSet<String> = items.iter().cloned().collect();
    assert_eq!(set.len(), items.len(), "no duplicates in {items:?}");
    set
}

/// The sidecar really accepts these variables: its own configuration check says so.
fn assert_sidecar_accepts(vars: &BTreeMap<String, String>, where_: &str) {
    if let Err(e) = Config::from_vars(vars.clone()) {
        panic!("{where_}: the sidecar would refuse its environment: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

fn docker_compose(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new("docker-compose").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("cannot run docker-compose ({e}): run scripts/setup.sh, which installs it")
    })
}

#[test]
fn docker_compose_accepts_the_compose_file() {
    let out = docker_compose(&["--file", "docker-compose.yml", "config", "--quiet"], &repo());
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));
    // And it is a real check: a wrongly typed key fails it.
    let dir = std::env::temp_dir().join(format!("otel-sendmmsg-compose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("docker-compose.yml"), "services:\n  x:\n    image: busybox\n    cap_add: BPF\n")
        .unwrap();
    let out = docker_compose(&["config", "--quiet"], &dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success(), "docker-compose accepted cap_add: BPF (not a list)");
}

fn compose_service(name: &str) -> Yaml {
    let compose = parse("docker-compose.yml");
    let service = at(&compose, &format!("services.{name}")).clone();
    assert!(!service.is_badvalue(), "docker-compose.yml has no service {name}");
    service
}

fn compose_environment(service: &Yaml, name: &str) -> BTreeMap<String, String> {
    let env = &service["environment"];
    keys(env).into_iter().map(|k| (k.clone(), string(&env[k.as_str()], name))).collect()
}

#[test]
fn the_compose_sidecar_is_unprivileged_with_exactly_the_documented_capabilities() {
    let sidecar = compose_service("sidecar");
    assert!(matches!(sidecar["privileged"], Yaml::BadValue | Yaml::Boolean(false)), "privileged");
    assert_eq!(strings(&sidecar["cap_drop"], "cap_drop"), ["ALL"]);
    assert_eq!(as_set(strings(&sidecar["cap_add"], "cap_add")), documented_capabilities());
    assert_eq!(string(&sidecar["pid"], "pid"), "host", "sees every process of the host");
    assert_eq!(string(&sidecar["user"], "user"), "65534:65534", "runs as nobody");
    assert_eq!(sidecar["read_only"], Yaml::Boolean(true), "read-only root file system");
    let security = if sidecar["security_opt"].is_badvalue() {
        Vec::new()
    } else {
        strings(&sidecar["security_opt"], "security_opt")
    };
    assert!(
        !security.iter().any(|o| o.starts_with("no-new-privileges") && !o.ends_with(":false")),
        "no-new-privileges would void the binary's file capabilities"
    );
    // Exactly what it reads, read-only; bpffs read-write for the pinned map.
    let volumes = as_set(strings(&sidecar["volumes"], "volumes"));
    let expected: BTreeSet<String> = [
        "/sys/kernel/tracing:/sys/kernel/tracing:ro",
        "/sys/kernel/btf:/sys/kernel/btf:ro",
        "/sys/fs/bpf:/sys/fs/bpf",
    ]
    .map(String::from)
    .into();
    assert_eq!(volumes, expected);
    let env = compose_environment(&sidecar, "sidecar");
    assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://collector:4317");
    assert_eq!(env["OTEL_EXPORTER_OTLP_PROTOCOL"], "grpc");
    assert_sidecar_accepts(&env, "docker-compose.yml sidecar");
}

/// What a Collector's `${env:NAME:-default}` gives when NAME is unset (the compose stack sets none
/// of them); any other value as it is.
fn env_default(value: &str) -> &str {
    value
        .strip_prefix("${env:")
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|inner| inner.split_once(":-"))
        .map_or(value, |(_, default)| default)
}

#[test]
fn the_compose_services_connect() {
    let compose = parse("docker-compose.yml");
    let services = keys(&compose["services"]);
    for name in ["app", "sidecar", "collector", "jaeger"] {
        assert!(services.contains(&name.to_owned()), "service {name}");
    }
    // The collector: the checked-in config, and gRPC on the port the sidecar and app use.
    let collector = compose_service("collector");
    let mounts = strings(&collector["volumes"], "collector volumes");
    assert!(
        mounts.iter().any(|m| m.starts_with("./collector-config/compose.yaml:") && m.ends_with(":ro")),
        "{mounts:?}"
    );
    let config = parse("collector-config/compose.yaml");
    let grpc = string(at(&config, "receivers.otlp.protocols.grpc.endpoint"), "grpc endpoint");
    assert_eq!(env_default(&grpc), "0.0.0.0:4317", "reachable from the other containers");
    // ... and it exports to the jaeger service over OTLP.
    let to_jaeger = string(at(&config, "exporters.otlp_grpc/jaeger.endpoint"), "jaeger endpoint");
    assert_eq!(env_default(&to_jaeger), "jaeger:4317");
    let jaeger = compose_service("jaeger");
    assert!(strings(&jaeger["ports"], "jaeger ports").iter().any(|p| p == "16686:16686"), "the UI");

    let app = compose_service("app");
    let env = compose_environment(&app, "app");
    assert_eq!(env["OTEL_SERVICE_NAME"], "my-app");
    assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://collector:4317");
    assert_eq!(env["OTEL_EXPORTER_OTLP_PROTOCOL"], "grpc");
    // The demo parses DEMO_TARGET as an address and falls back to its default otherwise.
    let target = &env["DEMO_TARGET"];
    assert!(target.parse::<SocketAddr>().is_ok(), "DEMO_TARGET={target} is not an IP:port");
    assert_eq!(string(&compose_service("udp-sink")["network_mode"], "udp-sink"), "service:app");

    // Images from registries are pinned to a version.
    for name in &services {
        let service = &compose["services"][name.as_str()];
        if service["build"].is_badvalue() {
            let image = string(&service["image"], name);
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                tag.chars().next().is_some_and(|c| c.is_ascii_digit()),
                "{name}: image {image} is not pinned to a version"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Collector configurations

/// Components a configuration of the contrib distribution may use here: a typo in a type is
/// caught before a collector refuses to start.
const KNOWN_TYPES: &[(&str, &[&str])] = &[
    ("receivers", &["otlp"]),
    ("processors", &["memory_limiter", "batch", "resource", "k8s_attributes"]),
    ("exporters", &["otlp_grpc", "load_balancing", "debug"]),
    ("extensions", &["health_check"]),
];

/// What is wrong with a collector configuration: components a pipeline names but nobody
/// defines, defined ones no pipeline uses, unknown types.
fn collector_problems(config: &Yaml) -> Vec<String> {
    let mut problems = Vec::new();
    let pipelines = at(config, "service.pipelines");
    if keys(pipelines).is_empty() {
        problems.push("no pipelines".to_owned());
    }
    for (section, known) in KNOWN_TYPES {
        let defined: BTreeSet<String> = keys(&config[*section]).into_iter().collect();
        let mut used = BTreeSet::new();
        if *section == "extensions" {
            if !config["service"]["extensions"].is_badvalue() {
                used.extend(strings(&config["service"]["extensions"], "service.extensions"));
            }
        } else {
            for pipeline in keys(pipelines) {
                let list = &pipelines[pipeline.as_str()][*section];
                if list.is_badvalue() {
                    if *section != "processors" {
                        problems.push(format!("pipeline {pipeline} has no {section}"));
                    }
                    continue;
                }
                used.extend(strings(list, &format!("{pipeline}.{section}")));
            }
        }
        for name in used.difference(&defined) {
            problems.push(format!("{section}: {name} is used but not defined"));
        }
        for name in defined.difference(&used) {
            problems.push(format!("{section}: {name} is defined but no pipeline uses it"));
        }
        for name in &defined {
            let kind = name.split_once('/').map_or(name.as_str(), |(kind, _)| kind);
            if !known.contains(&kind) {
                problems.push(format!("{section}: {name} is of an unknown type {kind}"));
            }
        }
    }
    problems
}

fn collector_configs() -> Vec<(String, Yaml)> {
    let mut configs: Vec<(String, Yaml)> = std::fs::read_dir(repo().join("collector-config"))
        .expect("collector-config/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            let name = format!("collector-config/{}", p.file_name().unwrap().to_string_lossy());
            let config = parse(&name);
            (name, config)
        })
        .collect();
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["collector-config/agent.yaml", "collector-config/compose.yaml", "collector-config/gateway.yaml"]
    );
    configs
}

#[test]
fn every_collector_config_defines_what_its_pipelines_use_and_uses_what_it_defines() {
    for (name, config) in collector_configs() {
        assert_eq!(collector_problems(&config), Vec::<String>::new(), "{name}");
        for pipeline in keys(at(&config, "service.pipelines")) {
            let processors = &config["service"]["pipelines"][pipeline.as_str()]["processors"];
            let processors = strings(processors, &pipeline);
            // The memory limiter must see data first to refuse it in time.
            assert!(
                processors.first().is_some_and(|p| p.starts_with("memory_limiter")),
                "{name}: {processors:?}"
            );
            if let Some(i) = processors.iter().position(|p| p.starts_with("batch")) {
                assert_eq!(i, processors.len() - 1, "{name}: batch comes last: {processors:?}");
            }
        }
    }
}

#[test]
fn the_config_check_finds_what_is_missing_and_what_is_left_over() {
    let broken = &parse_all(
        "receivers: {otlp: {}}\n\
         processors: {batch: {}, batch/unused: {}}\n\
         exporters: {otlp_grpc/jaeger: {}, otlphttp: {}}\n\
         service:\n  pipelines:\n    traces:\n      receivers: [otlp, zipkin]\n      \
         processors: [batch]\n      exporters: [otlp_grpc/jaeger, otlp_grpc/missing]\n",
        "the broken example",
    )[0];
    assert_eq!(
        collector_problems(broken),
        [
            "receivers: zipkin is used but not defined",
            "processors: batch/unused is defined but no pipeline uses it",
            "exporters: otlp_grpc/missing is used but not defined",
            "exporters: otlphttp is defined but no pipeline uses it",
            "exporters: otlphttp is of an unknown type otlphttp",
        ]
    );
}

#[test]
fn the_gateway_balances_by_trace_id() {
    let gateway = parse("collector-config/gateway.yaml");
    assert_eq!(string(at(&gateway, "exporters.load_balancing.routing_key"), "routing_key"), "traceID");
    let resolver = keys(at(&gateway, "exporters.load_balancing.resolver"));
    assert!(!resolver.is_empty(), "a resolver for the tier's members");
    let agent = parse("collector-config/agent.yaml");
    assert_eq!(keys(at(&agent, "exporters")), ["otlp_grpc/gateway"], "the agent forwards to the gateway");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn manifests() -> Vec<(String, Yaml)> {
    let dir = repo().join("deploy/kubernetes");
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("deploy/kubernetes/").map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with(".yaml"), "deploy/kubernetes/{name}: only .yaml manifests here");
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in parse_all(&text, &name) {
            for field in ["apiVersion", "kind", "metadata.name"] {
                assert!(!at(&doc, field).is_badvalue(), "{name}: a document without {field}");
            }
            docs.push((name.clone(), doc));
        }
    }
    docs
}

/// Kinds that live outside any namespace.
const CLUSTER_SCOPED: &[&str] = &["Namespace", "ClusterRole", "ClusterRoleBinding"];

fn find<'a>(docs: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| string(&d["kind"], "kind") == kind && string(at(d, "metadata.name"), "name") == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes/"))
}

fn env_list(container: &Yaml) -> Vec<(String, Yaml)> {
    match &container["env"] {
        Yaml::Array(items) => items.iter().map(|e| (string(&e["name"], "env name"), e.clone())).collect(),
        _ => Vec::new(),
    }
}

/// The DaemonSet's probes ask the sidecar's own health endpoints, on the port it serves them.
#[test]
fn the_daemonsets_probes_use_the_sidecars_health_endpoints() {
    let docs = manifests();
    let ds = find(&docs, "DaemonSet", "otel-sendmmsg");
    let container = &at(ds, "spec.template.spec.containers")[0];
    let env = env_list(container);
    let (_, endpoint) = env
        .iter()
        .find(|(n, _)| n == "OTEL_SENDMMSG_HEALTH_ENDPOINT")
        .expect("the health endpoints are on in the DaemonSet");
    let endpoint: SocketAddr = string(&endpoint["value"], "health endpoint").parse().expect("IP:port");
    let ports = container["ports"].as_vec().expect("container ports");
    let health = ports.iter().find(|p| p["name"].as_str() == Some("health")).expect("a port named health");
    assert_eq!(health["containerPort"], Yaml::Integer(i64::from(endpoint.port())));
    assert!(endpoint.ip().is_unspecified(), "the kubelet reaches the pod's address, not loopback");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let get = at(&container[probe], "httpGet");
        assert_eq!(string(&get["path"], probe), path);
        assert_eq!(string(&get["port"], probe), "health");
    }
    let compose = compose_environment(&compose_service("sidecar"), "sidecar");
    assert!(compose.contains_key("OTEL_SENDMMSG_HEALTH_ENDPOINT"), "on in the compose file too");
}

#[test]
fn the_manifests_share_one_namespace_and_their_references_resolve() {
    let docs = manifests();
    let namespaces: Vec<&Yaml> =
        docs.iter().map(|(_, d)| d).filter(|d| d["kind"].as_str() == Some("Namespace")).collect();
    assert_eq!(namespaces.len(), 1);
    let namespace = string(at(namespaces[0], "metadata.name"), "namespace");
    for (file, doc) in &docs {
        let kind = string(&doc["kind"], file);
        if CLUSTER_SCOPED.contains(&kind.as_str()) {
            assert!(at(doc, "metadata.namespace").is_badvalue(), "{file}: a {kind} has no namespace");
        } else {
            assert_eq!(string(at(doc, "metadata.namespace"), file), namespace, "{file}");
        }
    }
    // A binding names a role and service accounts that are all here.
    for (file, binding) in
        docs.iter().filter(|(_, d)| matches!(d["kind"].as_str(), Some("ClusterRoleBinding" | "RoleBinding")))
    {
        let role = &binding["roleRef"];
        assert_eq!(string(&role["apiGroup"], file), "rbac.authorization.k8s.io", "{file}");
        find(&docs, &string(&role["kind"], file), &string(&role["name"], file));
        let subjects = binding["subjects"].as_vec().unwrap_or_else(|| panic!("{file}: subjects"));
        assert!(!subjects.is_empty(), "{file}: a binding without subjects");
        for subject in subjects {
            assert_eq!(string(&subject["kind"], file), "ServiceAccount", "{file}");
            assert_eq!(string(&subject["namespace"], file), namespace, "{file}");
            find(&docs, "ServiceAccount", &string(&subject["name"], file));
        }
    }
    for (file, ds) in docs.iter().filter(|(_, d)| d["kind"].as_str() == Some("DaemonSet")) {
        let spec = at(ds, "spec.template.spec");
        let account = string(&spec["serviceAccountName"], file);
        find(&docs, "ServiceAccount", &account);
        // The selector picks the pods the template makes.
        let selector = at(ds, "spec.selector.matchLabels");
        for key in keys(selector) {
            assert_eq!(
                at(ds, "spec.template.metadata.labels")[key.as_str()],
                selector[key.as_str()],
                "{file}"
            );
        }
        for volume in spec["volumes"].as_vec().unwrap() {
            if let Some(map) = volume["configMap"]["name"].as_str() {
                find(&docs, "ConfigMap", map);
            }
        }
        for container in spec["containers"].as_vec().unwrap() {
            let what = format!("{file}: {}", string(&container["name"], "container name"));
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        !container["resources"][kind][resource].is_badvalue(),
                        "{what}: {kind}.{resource}"
                    );
                }
            }
            let security = &container["securityContext"];
            assert!(matches!(security["privileged"], Yaml::Boolean(false)), "{what}: privileged: false");
            assert_eq!(strings(at(security, "capabilities.drop"), &what), ["ALL"], "{what}");
            assert_eq!(security["readOnlyRootFilesystem"], Yaml::Boolean(true), "{what}");
        }
    }
}

#[test]
fn the_daemonset_is_unprivileged_with_exactly_the_documented_capabilities() {
    let docs = manifests();
    let ds = find(&docs, "DaemonSet", "otel-sendmmsg");
    let spec = at(ds, "spec.template.spec");
    assert_eq!(spec["hostPID"], Yaml::Boolean(true), "sees every process of the node");
    let containers = spec["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert!(matches!(security["privileged"], Yaml::Boolean(false)));
    assert_eq!(
        as_set(strings(at(security, "capabilities.add"), "capabilities.add")),
        documented_capabilities()
    );
    assert_eq!(security["runAsNonRoot"], Yaml::Boolean(true));
    assert_eq!(security["runAsUser"], Yaml::Integer(65534));
    assert_ne!(
        security["allowPrivilegeEscalation"],
        Yaml::Boolean(false),
        "no_new_privs would void the binary's file capabilities"
    );

    // Host paths: exactly what it reads, read-only; bpffs read-write for the pinned map.
    let volumes: BTreeMap<String, String> = spec["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| (string(&v["name"], "volume"), string(at(v, "hostPath.path"), "hostPath")))
        .collect();
    let mut mounted = BTreeMap::new();
    for mount in container["volumeMounts"].as_vec().unwrap() {
        let path = &volumes[&string(&mount["name"], "mount")];
        assert_eq!(string(&mount["mountPath"], "mountPath"), *path, "mounted where the host has it");
        mounted.insert(path.clone(), mount["readOnly"] == Yaml::Boolean(true));
    }
    let expected: BTreeMap<String, bool> = [
        ("/sys/kernel/tracing".to_owned(), true),
        ("/sys/kernel/btf".to_owned(), true),
        ("/sys/fs/bpf".to_owned(), false),
    ]
    .into();
    assert_eq!(mounted, expected, "host path -> read-only");

    // The node's collector, from the downward API; Kubernetes expands $(HOST_IP) only when
    // HOST_IP is defined earlier in the list.
    let env = env_list(container);
    let position =
        |name: &str| env.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("env {name}"));
    let host_ip = &env[position("HOST_IP")].1;
    assert_eq!(string(at(host_ip, "valueFrom.fieldRef.fieldPath"), "HOST_IP"), "status.hostIP");
    let endpoint = position("OTEL_EXPORTER_OTLP_ENDPOINT");
    assert!(position("HOST_IP") < endpoint);
    assert_eq!(string(&env[endpoint].1["value"], "endpoint"), "http://$(HOST_IP):4317");
    // What the sidecar will see, with the node's address filled in, passes its own check.
    let vars: BTreeMap<String, String> = env
        .iter()
        .filter_map(|(name, e)| e["value"].as_str().map(|v| (name.clone(), v.to_owned())))
        .map(|(name, v)| (name, v.replace("$(HOST_IP)", "10.0.0.7").replace("$(NODE_NAME)", "node-1")))
        .collect();
    assert_eq!(vars["OTEL_EXPORTER_OTLP_PROTOCOL"], "grpc");
    assert_sidecar_accepts(&vars, "the DaemonSet");

    // Something listens there: the agent publishes OTLP gRPC on every node's port 4317.
    let agent = find(&docs, "DaemonSet", "otel-collector-agent");
    let ports = at(agent, "spec.template.spec.containers")[0]["ports"].as_vec().unwrap().clone();
    assert!(ports
        .iter()
        .any(|p| p["hostPort"] == Yaml::Integer(4317) && p["containerPort"] == Yaml::Integer(4317)));
}

#[test]
fn the_agent_runs_the_checked_in_agent_config() {
    let docs = manifests();
    let map = find(&docs, "ConfigMap", "otel-collector-agent");
    let inline = string(&map["data"]["agent.yaml"], "agent.yaml");
    assert_eq!(parse_all(&inline, "the ConfigMap's agent.yaml")[0], parse("collector-config/agent.yaml"));
    let agent = find(&docs, "DaemonSet", "otel-collector-agent");
    let container = &at(agent, "spec.template.spec.containers")[0];
    assert_eq!(strings(&container["args"], "args"), ["--config=/etc/otelcol-contrib/agent.yaml"]);
    let env: Vec<String> = env_list(container).into_iter().map(|(n, _)| n).collect();
    assert!(env.contains(&"K8S_NODE_NAME".to_owned()), "agent.yaml reads ${{env:K8S_NODE_NAME}}");
}

/// The agent's k8s_attributes processor (the only one of that type).
fn k8s_attributes(agent: &Yaml) -> (String, &Yaml) {
    let names: Vec<String> = keys(&agent["processors"])
        .into_iter()
        .filter(|n| n.split('/').next() == Some("k8s_attributes"))
        .collect();
    assert_eq!(names.len(), 1, "one k8s_attributes processor in agent.yaml: {names:?}");
    let processor = &agent["processors"][names[0].as_str()];
    (names[0].clone(), processor)
}

/// What the k8s_attributes processor reads through the API for what it is configured to extract,
/// as (API group, resource): its README ("Cluster-scoped RBAC", collector 0.129.0) asks for pods
/// and namespaces always, replicasets for the deployment's name or uid, nodes for the node's uid
/// or labels and annotations; and deployments for a deployment's labels and annotations.
fn resources_read_by(processor: &Yaml) -> BTreeSet<(String, String)> {
    let metadata = as_set(strings(at(processor, "extract.metadata"), "extract.metadata"));
    let from: BTreeSet<String> = ["labels", "annotations"]
        .iter()
        .filter_map(|kind| processor["extract"][*kind].as_vec())
        .flatten()
        .map(|rule| if rule["from"].is_badvalue() { "pod".to_owned() } else { string(&rule["from"], "from") })
        .collect();
    let mut needed: BTreeSet<(String, String)> =
        [("", "pods"), ("", "namespaces")].map(|(g, r)| (g.to_owned(), r.to_owned())).into();
    if metadata.contains("k8s.deployment.name") || metadata.contains("k8s.deployment.uid") {
        needed.insert(("apps".to_owned(), "replicasets".to_owned()));
    }
    if metadata.contains("k8s.node.uid") || from.contains("node") {
        needed.insert((String::new(), "nodes".to_owned()));
    }
    if from.contains("deployment") {
        needed.insert(("apps".to_owned(), "deployments".to_owned()));
    }
    needed
}

#[test]
fn the_agent_adds_the_kubernetes_metadata_of_each_spans_container() {
    let agent = parse("collector-config/agent.yaml");
    let (name, processor) = k8s_attributes(&agent);

    // In every traces and metrics pipeline, after the memory limiter and before the batch.
    let pipelines = at(&agent, "service.pipelines");
    assert!(keys(pipelines).iter().any(|p| p.starts_with("traces")), "agent.yaml has a traces pipeline");
    for pipeline in
        keys(pipelines).into_iter().filter(|p| p.starts_with("traces") || p.starts_with("metrics"))
    {
        let processors = strings(&pipelines[pipeline.as_str()]["processors"], &pipeline);
        let position = |wanted: &str| {
            processors
                .iter()
                .position(|p| p == wanted)
                .unwrap_or_else(|| panic!("agent.yaml {pipeline}: no {wanted} in {processors:?}"))
        };
        let (limiter, k8s, batch) = (position("memory_limiter"), position(&name), position("batch"));
        assert!(limiter < k8s && k8s < batch, "agent.yaml {pipeline}: {processors:?}");
    }

    // It looks pods up itself (not passthrough) with the pod's service account.
    assert!(!matches!(processor["passthrough"], Yaml::Boolean(true)), "passthrough extracts nothing");
    if !processor["auth_type"].is_badvalue() {
        assert_eq!(string(&processor["auth_type"], "auth_type"), "serviceAccount");
    }

    // By the resource's container.id, and never by connection: every span arrives from the
    // sidecar, so the connection's address would name the sidecar's pod for all of them (and
    // an empty list means exactly that).
    let associations: Vec<Vec<(String, String)>> = processor["pod_association"]
        .as_vec()
        .expect("pod_association: a list (none means by connection)")
        .iter()
        .map(|association| {
            association["sources"]
                .as_vec()
                .expect("pod_association: sources")
                .iter()
                .map(|source| {
                    let name = if source["name"].is_badvalue() {
                        String::new()
                    } else {
                        string(&source["name"], "name")
                    };
                    (string(&source["from"], "from"), name)
                })
                .collect()
        })
        .collect();
    let by_container_id = vec![("resource_attribute".to_owned(), "container.id".to_owned())];
    assert!(associations.contains(&by_container_id), "associated by container.id: {associations:?}");
    assert!(
        associations.iter().flatten().all(|(from, _)| from != "connection"),
        "not by connection: {associations:?}"
    );

    // What it adds. A container attribute is needed too: without one the processor does not
    // index pods by their containers' ids, and container.id matches nothing.
    let metadata = as_set(strings(at(processor, "extract.metadata"), "extract.metadata"));
    for field in ["k8s.pod.name", "k8s.namespace.name", "k8s.deployment.name", "k8s.container.name"] {
        assert!(metadata.contains(field), "extract.metadata lacks {field}: {metadata:?}");
    }

    // Only this node's pods: the variable it reads is the agent's node, from the downward API.
    let variable = string(at(processor, "filter.node_from_env_var"), "filter.node_from_env_var");
    let docs = manifests();
    let daemonset = find(&docs, "DaemonSet", "otel-collector-agent");
    let container = &at(daemonset, "spec.template.spec.containers")[0];
    let env = env_list(container);
    let (_, node) = env
        .iter()
        .find(|(n, _)| *n == variable)
        .unwrap_or_else(|| panic!("the agent's container does not set {variable}"));
    assert_eq!(string(at(node, "valueFrom.fieldRef.fieldPath"), &variable), "spec.nodeName");

    // Association by container.id matches nothing before collector 0.129.0.
    let image = string(&container["image"], "image");
    let (repository, tag) = image.rsplit_once(':').unwrap_or_else(|| panic!("{image}: pinned"));
    assert_eq!(
        repository, "otel/opentelemetry-collector-contrib",
        "the contrib distribution has k8s_attributes"
    );
    let version: Vec<u32> =
        tag.split('.').map(|part| part.parse().unwrap_or_else(|_| panic!("{image}: a version"))).collect();
    assert!(version >= vec![0, 129, 0], "{image}: k8s_attributes matches container.id from 0.129.0 on");
}

#[test]
fn the_agent_may_read_exactly_what_its_k8s_attributes_processor_needs() {
    let agent = parse("collector-config/agent.yaml");
    let needed = resources_read_by(k8s_attributes(&agent).1);
    let docs = manifests();
    let daemonset = find(&docs, "DaemonSet", "otel-collector-agent");
    let spec = at(daemonset, "spec.template.spec");
    let account_name = string(&spec["serviceAccountName"], "serviceAccountName");
    let account = find(&docs, "ServiceAccount", &account_name);
    let namespace = string(at(daemonset, "metadata.namespace"), "namespace");

    // The pod has the account's token: the pod's setting wins over the account's.
    let mounted = match spec["automountServiceAccountToken"] {
        Yaml::Boolean(pod) => pod,
        _ => account["automountServiceAccountToken"] != Yaml::Boolean(false),
    };
    assert!(mounted, "the agent's pod mounts no service account token: the processor cannot read");

    // Everything bound to the account, in every namespace its pods may be: cluster-wide.
    let bindings: Vec<&Yaml> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRoleBinding" | "RoleBinding")))
        .filter(|d| {
            d["subjects"].as_vec().is_some_and(|subjects| {
                subjects.iter().any(|s| {
                    s["kind"].as_str() == Some("ServiceAccount")
                        && s["name"].as_str() == Some(account_name.as_str())
                        && s["namespace"].as_str() == Some(namespace.as_str())
                })
            })
        })
        .collect();
    assert!(!bindings.is_empty(), "no ClusterRoleBinding binds the ServiceAccount {account_name}");
    let mut granted = BTreeSet::new();
    for binding in bindings {
        let what = string(at(binding, "metadata.name"), "binding");
        assert_eq!(string(&binding["kind"], &what), "ClusterRoleBinding", "{what}: pods of all namespaces");
        assert_eq!(string(at(binding, "roleRef.kind"), &what), "ClusterRole", "{what}");
        let role = find(&docs, "ClusterRole", &string(at(binding, "roleRef.name"), &what));
        assert!(role["aggregationRule"].is_badvalue(), "{what}: an aggregated role grants what it collects");
        for rule in role["rules"].as_vec().unwrap_or_else(|| panic!("{what}: rules")) {
            // Read only, and all three: the processor lists, then watches.
            let verbs = as_set(strings(&rule["verbs"], "verbs"));
            assert_eq!(verbs, ["get", "list", "watch"].map(String::from).into(), "{what}: {rule:?}");
            assert!(rule["nonResourceURLs"].is_badvalue(), "{what}: {rule:?}");
            assert!(
                rule["resourceNames"].is_badvalue(),
                "{what}: the processor reads every object: {rule:?}"
            );
            for group in strings(&rule["apiGroups"], "apiGroups") {
                for resource in strings(&rule["resources"], "resources") {
                    granted.insert((group.clone(), resource));
                }
            }
        }
    }
    assert_eq!(granted, needed, "granted (API group, resource) vs what the processor reads");
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles

/// A Dockerfile's instructions, continuation lines joined, comments left out.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()) {
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_image_gives_the_binary_exactly_the_documented_capabilities_and_runs_as_nobody() {
    let dockerfile = read("Dockerfile");
    let words: Vec<&str> = dockerfile.split_whitespace().collect();
    let setcaps: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "setcap")
        .map(|w| w[1])
        .filter(|a| a.starts_with("cap_"))
        .collect();
    assert_eq!(setcaps.len(), 1, "one setcap: {setcaps:?}");
    let (list, flags) = setcaps[0].split_once('=').expect("setcap caps=flags");
    assert_eq!(flags, "p", "permitted only: the sidecar raises them itself and names any missing");
    let listed = as_set(list.split(',').map(str::to_owned).collect());
    let documented: BTreeSet<String> = CAPABILITIES.iter().map(|c| c.setcap_name()).collect();
    assert_eq!(listed, documented);

    let instructions = instructions(&dockerfile);
    let from: Vec<&str> = instructions.iter().filter_map(|l| l.strip_prefix("FROM ")).collect();
    assert_eq!(from, ["rust:1.95-bookworm AS build", "debian:bookworm-slim"]);
    let run = |what: &str| instructions.iter().any(|l| l.starts_with("RUN ") && l.contains(what));
    assert!(run("scripts/setup.sh"), "the BPF toolchain from the project's own script");
    assert!(run("cargo build --release --locked --package otel-sendmmsg "));
    let users: Vec<&String> = instructions.iter().filter(|l| l.starts_with("USER ")).collect();
    assert_eq!(users, ["USER 65534:65534"]);
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/otel-sendmmsg"]"#));

    let demo = read("otel-sendmmsg-demo/Dockerfile");
    assert!(demo.contains("cargo build --release --locked --package otel-sendmmsg-demo"));
    assert!(demo.contains(r#"ENTRYPOINT ["/usr/local/bin/otel-sendmmsg-demo"]"#));
    let compose = parse("docker-compose.yml");
    for (service, file) in [("sidecar", "Dockerfile"), ("app", "otel-sendmmsg-demo/Dockerfile")] {
        let build = &compose["services"][service]["build"];
        assert_eq!(string(&build["context"], service), ".", "{service}: the workspace is the context");
        assert_eq!(string(&build["dockerfile"], service), file);
    }
}

/// Both images build with Debian 12's docker.io and docker-compose, whose builder is Docker's
/// classic one: tools/dockerfile-check (Docker 20.10's Dockerfile parser and the classic builder's
/// refusals) accepts them, and refuses what only BuildKit builds.
#[test]
fn the_images_build_with_debians_docker_without_buildkit() {
    let check = |path: &Path| Command::new(backend("dockerfile-check")).arg(path).output().unwrap();
    for file in ["Dockerfile", "otel-sendmmsg-demo/Dockerfile"] {
        let out = check(&repo().join(file));
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = std::env::temp_dir().join(format!("otel-sendmmsg-dockerfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (line, refusal) in [
        ("RUN --mount=type=bind,from=build,source=/a,target=/b true", "RUN --mount needs BuildKit"),
        ("COPY --chmod=0755 a /a", "COPY --chmod needs BuildKit"),
        ("COPY --link a /a", "Unknown flag: link"),
        ("RUN <<EOF\necho heredoc\nEOF", "unknown instruction: ECHO"),
    ] {
        let file = dir.join("Dockerfile");
        std::fs::write(&file, format!("FROM debian:bookworm-slim\n{line}\n")).unwrap();
        let out = check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(refusal), "{line}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kubectl apply -f deploy/kubernetes/` applies the files in name order: the namespace must
/// exist before the first object that lives in it, or a fresh cluster refuses that object.
#[test]
fn the_namespace_is_applied_before_anything_in_it() {
    let docs = manifests();
    let first_namespaced = docs
        .iter()
        .position(|(_, doc)| !at(doc, "metadata.namespace").is_badvalue())
        .expect("namespaced objects");
    let namespace = docs
        .iter()
        .position(|(_, doc)| at(doc, "kind").as_str() == Some("Namespace"))
        .expect("a Namespace manifest");
    assert!(
        namespace < first_namespaced,
        "{} (the Namespace) comes after {}, which lives in it",
        docs[namespace].0,
        docs[first_namespaced].0
    );
}

/// The version `module` is required at in the Go module `dir` (tools/otelcol, tools/jaeger).
fn go_requirement(dir: &str, module: &str) -> String {
    let go_mod = read(&format!("{dir}/go.mod"));
    go_mod
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(module)).then(|| words.next().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("{dir}/go.mod requires no {module}"))
}

/// The images the compose file and the DaemonSet's agent run are the releases the tests build
/// and run (tools/otelcol, tools/jaeger): what is tested is what is deployed.
#[test]
fn the_deployed_images_are_the_releases_the_tests_run() {
    let collector = go_requirement("tools/otelcol", "go.opentelemetry.io/collector/otelcol");
    let collector = collector.trim_start_matches('v');
    let compose = string(&compose_service("collector")["image"], "collector");
    assert_eq!(compose, format!("otel/opentelemetry-collector-contrib:{collector}"));
    let agent = read("deploy/kubernetes/collector-agent.yaml");
    assert!(
        agent.contains(&format!("image: otel/opentelemetry-collector-contrib:{collector}\n")),
        "the agent runs the collector release the tests build ({collector})"
    );
    // tools/jaeger/go.mod pins module github.com/jaegertracing/jaeger v1.N, and names the Jaeger
    // v2 release that is.
    let jaeger_mod = read("tools/jaeger/go.mod");
    let module = go_requirement("tools/jaeger", "github.com/jaegertracing/jaeger");
    let release = jaeger_mod
        .split(&format!("{module} is Jaeger v"))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .map(|v| v.trim_end_matches('.'))
        .expect("tools/jaeger/go.mod names the Jaeger release of its module version");
    assert_eq!(
        string(&compose_service("jaeger")["image"], "jaeger"),
        format!("jaegertracing/jaeger:{release}")
    );
}
