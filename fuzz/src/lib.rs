//! What the record targets share: every decoded call goes through the span mapping with each
//! set of options the sidecar can run with, through the OTLP encoder (whose bytes must be the
//! SDK's for the same spans), and through the console exporter's lines (text and JSON), and the
//! results are checked against what README.md ("The span") promises.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use opentelemetry::{
    trace::{SpanId, Status, TraceId},
    KeyValue,
};
use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{common::tonic::ResourceAttributesWithSchema, trace::tonic::group_spans_by_resource_and_scope},
};
use opentelemetry_sdk::trace::IdGenerator;
use otel_sendmmsg::{
    clock::WallClock,
    config::MessageView,
    export::{
        console_line,
        json_lines::json_line,
        otlp_encode::{request, EncodedResource, Encoder},
    },
    process::{info_from_identity, ProcessInfo},
    records::{Call, Identity},
    span::{finished, resource::resource_for, SpanOptions},
};
use prost::Message as _;

/// Ids counted up from 1: the same for the SDK's spans and the encoder's.
#[derive(Debug, Default)]
struct Counted(AtomicU64);

impl IdGenerator for Counted {
    fn new_trace_id(&self) -> TraceId {
        TraceId::from(u128::from(self.0.fetch_add(1, Relaxed) + 1))
    }

    fn new_span_id(&self) -> SpanId {
        SpanId::from(self.0.fetch_add(1, Relaxed) + 1)
    }
}

/// Every way a span can show messages, with and without a per-message hook.
pub const ALL_OPTIONS: [SpanOptions; 6] = {
    let views = [MessageView::Events, MessageView::Spans, MessageView::None];
    let mut all = [SpanOptions { per_message: false, view: MessageView::Events, msgvec_address: false }; 6];
    let mut i = 0;
    while i < 6 {
        all[i] = SpanOptions { per_message: i % 2 == 1, view: views[i / 2], msgvec_address: i % 2 == 0 };
        i += 1;
    }
    all
};

/// OpenTelemetry attribute keys are unique within a span or an event: a repeated key is
/// overwritten or dropped by the SDK and backends, so the mapping must never emit one.
fn assert_unique_keys(attributes: &[KeyValue], what: &str) {
    let mut seen = HashSet::new();
    for kv in attributes {
        assert!(seen.insert(kv.key.as_str()), "{what}: attribute {} twice in {attributes:?}", kv.key);
    }
}

/// Maps `call` to a span for each option set and prints it as the console exporter would,
/// checking what README.md says of spans and of the console output.
pub fn map_call(call: &Call, clock: &WallClock) {
    // The service name comes from the traced process's environment: as untrusted as its comm.
    let process = ProcessInfo {
        pid: call.pid,
        executable_name: Some(call.comm.clone()),
        service_name: call.comm.clone(),
        container_id: None,
        attributes: Vec::new(),
    };
    let resource = resource_for(&[], &process);
    let encoded_resource = EncodedResource::new(&resource);
    let sdk_resource = ResourceAttributesWithSchema::from(&resource);
    for options in ALL_OPTIONS {
        let (spans, _) = finished(call, clock, options, &Counted::default());
        // What goes to a collector is written straight from the record: byte for byte what the
        // SDK's exporter would send for the spans above.
        let (encoded, written) = Encoder::default().call(call, clock, options, &Counted::default());
        assert_eq!(written.spans, spans.len(), "{options:?}");
        let ours = request(&encoded_resource, &[encoded]);
        let resource_spans = group_spans_by_resource_and_scope(spans.clone(), &sdk_resource);
        let sdks = ExportTraceServiceRequest { resource_spans }.encode_to_vec();
        assert!(ours[..] == sdks[..], "{options:?}: the OTLP bytes differ from the SDK's");
        let (span, children) = spans.split_first().expect("a call's own span comes first");
        assert!(span.end_time >= span.start_time, "a call ends after it starts: {options:?}");
        // Per-message detail comes from the per-message hook, or from sizes read at exit.
        let shown = if options.per_message || call.sizes_only { call.detail.len() } else { 0 };
        match options.view {
            MessageView::Events => {
                assert_eq!(span.events.len(), shown, "{options:?}");
                assert!(children.is_empty(), "{options:?}");
            }
            MessageView::Spans => {
                assert_eq!(children.len(), shown, "{options:?}");
                assert!(span.events.is_empty(), "{options:?}");
            }
            MessageView::None => assert!(span.events.is_empty() && children.is_empty()),
        }
        // "Status is ERROR when the call failed or any message failed" (as far as the hooks
        // can tell: sizes read at exit know of no failed message).
        let message_failed = options.per_message && !call.sizes_only && call.messages.failed > 0;
        assert_eq!(
            matches!(span.status, Status::Error { .. }),
            call.ret < 0 || message_failed,
            "{options:?}: {:?}",
            span.status
        );
        // `sendmmsg.sent`: absent when the call failed.
        let sent = span.attributes.iter().any(|kv| kv.key.as_str() == "sendmmsg.sent");
        assert_eq!(sent, call.ret >= 0, "{options:?}");
        assert_unique_keys(&span.attributes, "span");
        for event in span.events.iter() {
            assert_unique_keys(&event.attributes, "event");
        }
        for child in children {
            assert_unique_keys(&child.attributes, "message span");
        }

        // One line per call: the thread name (any process can set its own, `prctl(PR_SET_NAME)`)
        // and the service name (from the process's environment) must not break it, nor carry
        // control characters (terminal escapes) to whoever reads the output.
        let line = console_line(span, &resource);
        assert!(!line.contains(|c: char| c.is_control()), "a control character in {line:?}");
        // As JSON, each span is a line of its own (children too), escaped the same way.
        for span in &spans {
            let line = json_line(span, &resource);
            assert!(!line.contains(|c: char| c.is_control()), "a control character in {line:?}");
            assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        }
    }
}

/// A decoded identity as the sidecar uses it: its bounds as the record's layout allows, and the
/// process's resource made from it (its environment block parsed as `/proc/PID/environ` is).
pub fn map_identity(identity: &Identity) {
    use otel_sendmmsg_common::{ENV_WINDOW, IDENTITY_NAME_LEN};
    assert!(identity.environ.len() <= ENV_WINDOW, "{} bytes of environment", identity.environ.len());
    for name in [&identity.executable, &identity.cgroup, &identity.cgroup_parent].into_iter().flatten() {
        // Lossy UTF-8 may triple a byte; never more than the field holds.
        assert!(!name.is_empty() && name.len() <= 3 * IDENTITY_NAME_LEN, "{name:?}");
    }
    assert!(identity.comm.len() <= 3 * 16);
    let info = info_from_identity(identity);
    assert_eq!(info.pid, identity.pid);
    assert!(!info.service_name.is_empty());
    if let Some(id) = &info.container_id {
        assert_eq!(id.len(), 64, "{id:?}");
    }
    let resource = resource_for(&[], &info);
    assert!(resource.len() >= 2);
}
