//! A child after fork has no process context (`MADV_DONTFORK`) and must not show its parent's
//! resource; its first span publishes one of its own, so readers still find its thread contexts.
//! A test binary of its own: nothing else may hold the library's lock when it forks.

#[path = "support/protobuf.rs"]
mod protobuf;
#[path = "support/reader.rs"]
mod reader;

use reader::{mapped_context, payload};

#[test]
fn a_forked_child_announces_its_thread_context_again_without_the_parents_resource() {
    otel_sendmmsg_context::publish_resource("parent", &[]).unwrap();
    let _parent_span = otel_sendmmsg_context::publish([1; 16], [2; 8], true);
    assert!(mapped_context().is_some());

    // SAFETY: the child runs the checks below and leaves with _exit, never returning into the
    // test harness.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        let checked = std::panic::catch_unwind(|| {
            assert_eq!(mapped_context(), None, "the parent's context is not inherited");
            let _span = otel_sendmmsg_context::publish([3; 16], [4; 8], true);
            let header = mapped_context().expect("the child's first span publishes a context");
            let decoded = protobuf::process_context(&payload(header));
            assert_eq!(decoded.resource, None, "not the parent's resource");
            assert_eq!(decoded.attributes, protobuf::threadlocal_attributes());
        });
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(if checked.is_ok() { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child's checks failed");
}
