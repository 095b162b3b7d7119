//! End to end, as root: a process that publishes an OTEP 4719 process context has its spans
//! under that resource, not its environment's; an update shows within a sweep; a context caught
//! mid-update or malformed falls back to the environment and is counted.

mod support;

use support::*;

const VALID: &str = "valid:service.name=ctx-svc,service.instance.id=inst-7f3a,service.version=1.0,\
                     deployment.environment.name=staging";
const UPDATED: &str = "1:service.name=ctx-svc,service.instance.id=inst-7f3a,service.version=2.0,\
                       deployment.environment.name=staging";

#[test]
fn a_published_context_is_the_resource_and_bad_ones_fall_back_to_the_environment() {
    require_root();
    let _one = one_sidecar_at_a_time();
    let receiver = Receiver::start(Protocol::Grpc);
    let sidecar = Sidecar::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", Protocol::Grpc.env_value()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    receiver.wait_until_draining();
    let environment =
        [("OTEL_SERVICE_NAME", "env-svc"), ("OTEL_RESOURCE_ATTRIBUTES", "service.version=env,team=from-env")];
    // Publishes, then updates after 1 s; runs past the next sweep (every 10 s) and then some.
    let mut env = environment.to_vec();
    env.extend([("WORKLOAD_PROCESS_CONTEXT", VALID), ("WORKLOAD_PROCESS_CONTEXT_UPDATE", UPDATED)]);
    let published = loop_workload(13.0, 2, 20, &env).spawn().unwrap();
    // Forever mid-update (timestamp 0), and a payload that is not protobuf.
    let bad = |service: &'static str, context: &'static str| {
        let mut env = vec![("OTEL_SERVICE_NAME", service), ("WORKLOAD_PROCESS_CONTEXT", context)];
        env.push(environment[1]);
        loop_workload(2.0, 2, 20, &env).spawn().unwrap()
    };
    let torn = bad("torn-env", "torn:service.name=never");
    let malformed = bad("malformed-env", "malformed");
    let (torn, malformed) = (loop_report(torn), loop_report(malformed));
    let published = loop_report(published);
    let stopped = sidecar.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let mut spans = receiver.spans_of(published.pid);
    assert_eq!(spans.len() as u64, published.calls, "one span per call:\n{}", stopped.stderr);
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    for span in &spans {
        let resource = &span.resource;
        assert_eq!(str_attr(resource, "service.name"), Some("ctx-svc"), "{resource:#?}");
        assert_eq!(str_attr(resource, "service.instance.id"), Some("inst-7f3a"), "{resource:#?}");
        assert_eq!(str_attr(resource, "deployment.environment.name"), Some("staging"), "{resource:#?}");
        assert_eq!(str_attr(resource, "team"), None, "the context replaces the environment: {resource:#?}");
        assert!(matches!(str_attr(resource, "service.version"), Some("1.0" | "2.0")), "{resource:#?}");
        // What the sidecar adds stays.
        assert_eq!(int_attr(resource, "process.pid"), Some(published.pid as i64), "{resource:#?}");
        assert_eq!(str_attr(resource, "process.executable.name"), Some("sendmmsg-workload"));
    }
    let version = |s: &ReceivedSpan| str_attr(&s.resource, "service.version").map(str::to_owned);
    assert_eq!(version(&spans[0]).as_deref(), Some("1.0"), "before the update");
    assert_eq!(version(spans.last().unwrap()).as_deref(), Some("2.0"), "the update, within a sweep");
    // Once the update is seen, never the old version again.
    let first_new = spans.iter().position(|s| version(s).as_deref() == Some("2.0")).unwrap();
    assert!(spans[first_new..].iter().all(|s| version(s).as_deref() == Some("2.0")));

    for (report, service) in [(&torn, "torn-env"), (&malformed, "malformed-env")] {
        let spans = receiver.spans_of(report.pid);
        assert_eq!(spans.len() as u64, report.calls, "{service}:\n{}", stopped.stderr);
        for span in &spans {
            assert_eq!(str_attr(&span.resource, "service.name"), Some(service), "{:#?}", span.resource);
            assert_eq!(str_attr(&span.resource, "team"), Some("from-env"), "{:#?}", span.resource);
            assert_eq!(str_attr(&span.resource, "service.version"), Some("env"), "{:#?}", span.resource);
        }
    }
    assert!(
        summary_count(&stopped.stderr, "process_contexts_refused") >= 2,
        "both bad contexts are counted:\n{}",
        stopped.stderr
    );
}
