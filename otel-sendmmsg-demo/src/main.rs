//! A UDP metrics publisher, the kind of app otel-sendmmsg is for: every interval it opens a span
//! `publish-batch`, encodes a batch of statsd lines and sends them with one `sendmmsg` call.
//! The span goes to the app's collector like any OpenTelemetry app's; the only additions for
//! otel-sendmmsg are `publish_current()`, which publishes the span as this thread's OTEP 4947
//! context so the sidecar makes the syscall span its child, and build.rs, which exports the
//! context's TLS variable where the sidecar looks it up.
//!
//! Environment: `OTEL_SERVICE_NAME` (default `my-app`), the standard `OTEL_EXPORTER_OTLP_*`,
//! `DEMO_TARGET` (default `127.0.0.1:8125`), `DEMO_INTERVAL_MS` (default 500),
//! `DEMO_BATCH` (messages per call, default 16), `DEMO_ITERATIONS` (default: forever),
//! `DEMO_WAIT_FOR_STDIN=1` (start when a line arrives: lets a test attach first),
//! `DEMO_OVERSIZED_EVERY=N` (every Nth batch, counting from the first, carries one datagram over
//! UDP's 65,507-byte limit in its middle: the kernel refuses it with EMSGSIZE and the call stops
//! there, the partial send a syscall span is for; default 0, never).
//! A `heartbeat` thread also sends, without publishing a span: its syscall spans stay roots.

use std::{
    io::BufRead,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use opentelemetry::{
    global,
    trace::{Span, TraceContextExt, Tracer},
    Context, KeyValue,
};
use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sends each payload as one datagram, all in one `sendmmsg` call; returns messages sent.
fn send_batch(socket: &UdpSocket, payloads: &[Vec<u8>]) -> std::io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> =
        payloads.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() }).collect();
    let mut msgs: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: all-zero is a valid mmsghdr (no name: the connected peer; no control data).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs and everything they point to outlive the call.
    let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Prints the thread's kernel id, for tests that give it a context the way OBI would.
fn announce(thread: &str) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    println!("thread {thread} {tid}");
}

/// Larger than any UDP payload (65,535 minus the IPv4 and UDP headers).
const OVERSIZED: usize = 70_000;

fn publish_batch(socket: &UdpSocket, batch: usize, seq: u64, oversized: bool) {
    let tracer = global::tracer("otel-sendmmsg-demo");
    let mut span = tracer.start("publish-batch");
    span.set_attribute(KeyValue::new("batch.size", batch as i64));
    let cx = Context::current_with_span(span);
    let _active = cx.clone().attach();
    // The one line otel-sendmmsg needs: this thread's sendmmsg calls are children of the span
    // until the guard drops.
    let _published = otel_sendmmsg_context::publish_current();
    let mut payloads: Vec<Vec<u8>> =
        (0..batch).map(|i| format!("demo.sent:{}|c|#seq:{seq}", i + 1).into_bytes()).collect();
    if oversized {
        payloads[batch / 2] = vec![b'x'; OVERSIZED];
    }
    match send_batch(socket, &payloads) {
        Ok(sent) => {
            cx.span().set_attribute(KeyValue::new("batch.sent", sent as i64));
            // sendmmsg reports how many went, not why the rest did not: the syscall span says.
            if sent < batch {
                cx.span().set_status(opentelemetry::trace::Status::error(format!("sent {sent} of {batch}")));
            }
        }
        Err(e) => cx.span().set_status(opentelemetry::trace::Status::error(e.to_string())),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "my-app".into());
    let resource = Resource::builder().with_service_name(service.clone()).build();
    // The same resource for the sidecar, as an OTEP 4719 process context: its sendmmsg spans go
    // under exactly the resource of this app's own spans (the library publishes strings).
    let attributes: Vec<(String, String)> =
        resource.iter().map(|(k, v)| (k.to_string(), v.as_str().into_owned())).collect();
    let attributes: Vec<(&str, &str)> = attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Err(e) = otel_sendmmsg_context::publish_resource(&service, &attributes) {
        eprintln!("publishing the process context: {e}; the sidecar reads the environment instead");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(opentelemetry_otlp::SpanExporter::builder().build()?)
        .with_resource(resource)
        .build();
    global::set_tracer_provider(provider.clone());

    let target: SocketAddr = env_or("DEMO_TARGET", "127.0.0.1:8125".parse()?);
    let interval = Duration::from_millis(env_or("DEMO_INTERVAL_MS", 500));
    let batch: usize = env_or("DEMO_BATCH", 16);
    let iterations: u64 = env_or("DEMO_ITERATIONS", u64::MAX);
    let oversized_every: u64 = env_or("DEMO_OVERSIZED_EVERY", 0);
    let wait = std::env::var("DEMO_WAIT_FOR_STDIN").is_ok_and(|v| v == "1");

    let socket = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    socket.connect(target)?;
    let heartbeat_socket = socket.try_clone()?;
    // Both threads and main wait here, so a test can see the threads' ids before they send.
    let start = std::sync::Arc::new(std::sync::Barrier::new(3));
    // Spans are started and published on plain threads: a context belongs to a thread, and an
    // async task could move between threads mid-span.
    let go = start.clone();
    let publisher = std::thread::Builder::new().name("publisher".into()).spawn(move || {
        announce("publisher");
        go.wait();
        for seq in 0..iterations {
            let oversized = oversized_every > 0 && seq % oversized_every == 0 && batch > 0;
            publish_batch(&socket, batch, seq, oversized);
            std::thread::sleep(interval);
        }
    })?;
    let go = start.clone();
    let heartbeat = std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
        announce("heartbeat");
        go.wait();
        for _ in 0..iterations {
            let _ = send_batch(&heartbeat_socket, &[b"demo.alive:1|g".to_vec()]);
            std::thread::sleep(interval);
        }
    })?;
    if wait {
        println!("waiting");
        std::io::stdin().lock().lines().next();
    }
    start.wait();
    publisher.join().map_err(|_| "publisher panicked")?;
    heartbeat.join().map_err(|_| "heartbeat panicked")?;
    provider.shutdown()?;
    Ok(())
}
