//! Span -> the SDK's `SpanData` and the resource it is exported under, built directly (no
//! tracer, no provider): every span is already finished, and its resource is its process's.

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::{
    resource::{ResourceDetector, TelemetryResourceDetector},
    trace::{IdGenerator, SpanData, SpanEvents, SpanLinks},
    Resource,
};

use crate::{
    config::ResourceSettings,
    process::ProcessInfo,
    spans::{SyscallSpan, MESSAGE_SPAN_NAME, SPAN_NAME},
};

/// The span a call's span is the child of: a span of the traced application, in its trace.
pub type Parent = (TraceId, SpanId);

/// The parent a call's span names. Today it is the application span the calling thread had
/// published in the shared trace-context map, which the record carries. Another source (a trace
/// id and parent span id the application passes explicitly) would be chosen here, before this
/// one or instead of it; [`span_data`] takes whichever is given.
pub fn parent_of(span: &SyscallSpan) -> Option<Parent> {
    span.parent.map(|p| (TraceId::from_bytes(p.trace_id), SpanId::from_bytes(p.span_id)))
}

/// The instrumentation scope of every span: this sidecar, at this version.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(env!("CARGO_PKG_NAME")).with_version(env!("CARGO_PKG_VERSION")).build()
}

/// The call's span, then one span per message child (`SyscallSpan::children`), in order.
///
/// With a `parent`, the call's span joins the parent's trace as a child of a remote span (one
/// another process exported); without one it starts a trace of its own. Children are in the
/// call's trace, children of the call's span. Every span is sampled: which calls are traced
/// was decided in the kernel.
pub fn span_data(
    span: SyscallSpan,
    parent: Option<Parent>,
    ids: &dyn IdGenerator,
    scope: &InstrumentationScope,
) -> Vec<SpanData> {
    let trace_id = parent.map_or_else(|| ids.new_trace_id(), |(trace_id, _)| trace_id);
    let call_id = ids.new_span_id();
    let context =
        |span_id| SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, false, TraceState::default());
    let mut events = SpanEvents::default();
    events.events = span.events;
    let mut out = Vec::with_capacity(1 + span.children.len());
    out.push(SpanData {
        span_context: context(call_id),
        parent_span_id: parent.map_or(SpanId::INVALID, |(_, span_id)| span_id),
        parent_span_is_remote: parent.is_some(),
        span_kind: SpanKind::Internal,
        name: SPAN_NAME.into(),
        start_time: span.start,
        end_time: span.end,
        attributes: span.attributes,
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: span.status,
        instrumentation_scope: scope.clone(),
    });
    out.extend(span.children.into_iter().map(|child| SpanData {
        span_context: context(ids.new_span_id()),
        parent_span_id: call_id,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: MESSAGE_SPAN_NAME.into(),
        start_time: child.start,
        end_time: child.end,
        attributes: child.attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: child.status,
        instrumentation_scope: scope.clone(),
    }));
    out
}

/// The sidecar's own resource attributes, which every process's resource starts from: the
/// SDK's `telemetry.sdk.*` and `OTEL_RESOURCE_ATTRIBUTES` (e.g. `host.name`, `k8s.node.name`).
/// The sidecar's own `OTEL_SERVICE_NAME` is not among them: a span's service is its process's.
pub fn base_resource(settings: &ResourceSettings) -> Vec<KeyValue> {
    let sdk = TelemetryResourceDetector.detect();
    let sdk = sdk.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    let configured = settings.attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    sdk.chain(configured).collect()
}

/// The resource of a process's spans: `base`, overridden by what the process says of itself
/// (`service.name` always its own).
pub fn resource_for(base: &[KeyValue], process: &ProcessInfo) -> Resource {
    let mut own = vec![
        KeyValue::new("service.name", process.service_name.clone()),
        KeyValue::new("process.pid", i64::from(process.pid)),
    ];
    if let Some(name) = &process.executable_name {
        own.push(KeyValue::new("process.executable.name", name.clone()));
    }
    if let Some(id) = &process.container_id {
        own.push(KeyValue::new("container.id", id.clone()));
    }
    // Later attributes win.
    Resource::builder_empty().with_attributes(base.iter().cloned().chain(own)).build()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry::{
        trace::{Event, Status},
        Key, Value,
    };
    use opentelemetry_sdk::trace::RandomIdGenerator;
    use otel_sendmmsg_common::TraceContext;

    use super::*;
    use crate::spans::MessageSpan;

    fn call(children: usize) -> SyscallSpan {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        SyscallSpan {
            pid: 7,
            parent: None,
            start,
            end: start + Duration::from_micros(30),
            attributes: vec![KeyValue::new("sendmmsg.vlen", 3)],
            events: vec![Event::new("message", start, vec![], 0)],
            children: (0..children)
                .map(|i| MessageSpan {
                    start: start + Duration::from_micros(10 * i as u64),
                    end: start + Duration::from_micros(10 * (i as u64 + 1)),
                    attributes: vec![KeyValue::new("sendmmsg.message.index", i as i64)],
                    status: if i == 2 { Status::error("EMSGSIZE") } else { Status::Unset },
                })
                .collect(),
            status: Status::error("message 2 of 3 failed: EMSGSIZE"),
        }
    }

    #[test]
    fn a_call_without_a_parent_starts_its_own_trace() {
        let span = call(0);
        let data = span_data(span.clone(), parent_of(&span), &RandomIdGenerator::default(), &scope());
        assert_eq!(data.len(), 1);
        let call = &data[0];
        assert!(call.span_context.is_valid() && call.span_context.is_sampled());
        assert_eq!(call.parent_span_id, SpanId::INVALID);
        assert!(!call.parent_span_is_remote);
        assert_eq!((call.name.as_ref(), call.span_kind.clone()), (SPAN_NAME, SpanKind::Internal));
        assert_eq!((call.start_time, call.end_time), (span.start, span.end));
        assert_eq!(call.attributes, span.attributes);
        assert_eq!(call.events.events, span.events);
        assert_eq!(call.status, span.status);
        assert_eq!(call.instrumentation_scope.name(), "otel-sendmmsg");
        assert_eq!(call.instrumentation_scope.version(), Some(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn a_published_context_is_the_remote_parent() {
        let mut span = call(0);
        span.parent = Some(TraceContext { trace_id: [0xab; 16], span_id: [0xcd; 8] });
        let data = span_data(span.clone(), parent_of(&span), &RandomIdGenerator::default(), &scope());
        assert_eq!(data[0].span_context.trace_id(), TraceId::from_bytes([0xab; 16]));
        assert_eq!(data[0].parent_span_id, SpanId::from_bytes([0xcd; 8]));
        assert!(data[0].parent_span_is_remote);
    }

    #[test]
    fn each_message_is_a_child_span_of_the_call_in_its_trace() {
        let span = call(3);
        let parent = Some((TraceId::from(42), SpanId::from(43)));
        let data = span_data(span.clone(), parent, &RandomIdGenerator::default(), &scope());
        assert_eq!(data.len(), 4);
        let call_context = &data[0].span_context;
        let mut span_ids = std::collections::HashSet::new();
        for (i, (child, want)) in data[1..].iter().zip(&span.children).enumerate() {
            assert_eq!(child.span_context.trace_id(), TraceId::from(42), "child {i}");
            assert_eq!(child.parent_span_id, call_context.span_id(), "child {i}");
            assert!(!child.parent_span_is_remote, "child {i}");
            assert_eq!(
                (child.name.as_ref(), child.span_kind.clone()),
                (MESSAGE_SPAN_NAME, SpanKind::Internal)
            );
            assert_eq!((child.start_time, child.end_time), (want.start, want.end));
            assert_eq!(child.attributes, want.attributes);
            assert_eq!(child.status, want.status);
            assert!(child.events.is_empty());
            span_ids.insert(child.span_context.span_id());
        }
        span_ids.insert(call_context.span_id());
        assert_eq!(span_ids.len(), 4, "every span its own id");
    }

    fn attr(resource: &Resource, key: &'static str) -> Option<Value> {
        resource.get(&Key::from_static_str(key))
    }

    #[test]
    fn a_process_resource_is_its_own_over_the_sidecars() {
        let base = vec![
            KeyValue::new("host.name", "node-1"),
            KeyValue::new("service.name", "from-resource-attributes"),
            KeyValue::new("telemetry.sdk.language", "rust"),
        ];
        let process = ProcessInfo {
            pid: 4242,
            executable_name: Some("checkout-server".into()),
            service_name: "checkout".into(),
            container_id: Some("ab".repeat(32)),
        };
        let resource = resource_for(&base, &process);
        assert_eq!(attr(&resource, "service.name"), Some(Value::from("checkout")));
        assert_eq!(attr(&resource, "process.pid"), Some(Value::I64(4242)));
        assert_eq!(attr(&resource, "process.executable.name"), Some(Value::from("checkout-server")));
        assert_eq!(attr(&resource, "container.id"), Some(Value::from("ab".repeat(32))));
        assert_eq!(attr(&resource, "host.name"), Some(Value::from("node-1")));
        assert_eq!(resource.len(), 6);

        let bare = ProcessInfo { executable_name: None, container_id: None, ..process };
        let resource = resource_for(&[], &bare);
        assert_eq!(attr(&resource, "process.executable.name"), None);
        assert_eq!(attr(&resource, "container.id"), None);
        assert_eq!(resource.len(), 2);
    }

    #[test]
    fn the_base_resource_is_the_sdks_without_a_service_name() {
        let settings = ResourceSettings {
            attributes: vec![("host.name".into(), "node-1".into())],
            service_name: "the-sidecars-own".into(),
        };
        let base = base_resource(&settings);
        assert!(base.iter().any(|kv| kv.key.as_str() == "telemetry.sdk.name"), "{base:?}");
        assert!(base.contains(&KeyValue::new("host.name", "node-1")), "{base:?}");
        // The SDK's fallback `unknown_service` must not be added, nor the sidecar's own name.
        assert!(!base.iter().any(|kv| kv.key.as_str() == "service.name"), "{base:?}");
    }
}
