//! Readers look for a process's thread context only once its OTEP 4719 process context names the
//! schema (OTEP 4947, "Process Initialization"): an application that publishes spans but no
//! resource must still get one. A test binary of its own, so that nothing else in the process
//! has published a context first.

#[path = "support/protobuf.rs"]
mod protobuf;
#[path = "support/reader.rs"]
mod reader;

use reader::{mapped_context, payload};

#[test]
fn the_first_span_publishes_a_process_context_that_publish_resource_then_replaces() {
    assert_eq!(mapped_context(), None, "a fresh process has no context");

    let span = otel_sendmmsg_context::publish([1; 16], [2; 8], true);
    let header = mapped_context().expect("publishing a span published a process context");
    let decoded = protobuf::process_context(&payload(header));
    assert_eq!(decoded.resource, None, "no resource published yet");
    assert_eq!(decoded.attributes, protobuf::threadlocal_attributes());
    drop(span);

    otel_sendmmsg_context::publish_resource("checkout", &[("service.version", "1.4.2")]).unwrap();
    assert_eq!(mapped_context(), Some(header), "updated in place");
    let decoded = protobuf::process_context(&payload(header));
    let resource = vec![
        ("service.name".to_owned(), "checkout".to_owned()),
        ("service.version".to_owned(), "1.4.2".to_owned()),
    ];
    assert_eq!(decoded.resource, Some(resource));
    assert_eq!(decoded.attributes, protobuf::threadlocal_attributes(), "the thread context stays announced");
}
