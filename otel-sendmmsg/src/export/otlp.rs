//! The OTLP exporter: sends requests already encoded (the batcher's, put together from encoded
//! spans by [`otlp_encode`](super::otlp_encode), and the call metrics') over gRPC or
//! HTTP/protobuf as [`transport`](super::transport) configures it, retried as the SDK's
//! exporter retries ([`retry`](super::retry)).
//!
//! Why not the SDK's exporter: it takes `SpanData` and does its own encoding, through copies
//! that cost several times what making the spans did (see `otlp_encode`); it has no way to
//! be handed bytes. What reaches the collector is the same request.

use std::{fmt, time::Duration};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use prost::Message as _;
use tonic::{
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{http::uri::PathAndQuery, Bytes, GrpcMethod},
    metadata::MetadataMap,
    transport::Channel,
    Status,
};
use tonic_types::StatusExt as _;
use tracing::{debug, warn};

use super::{
    batcher::Sender,
    retry::{self, SDK_POLICY},
    transport::{grpc_channel, grpc_compression, grpc_metadata, http_client, http_headers},
};
use crate::config::{Compression, Otlp, Protocol};

/// The signal a request carries, which names the gRPC service it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn service(self) -> &'static str {
        match self {
            Signal::Traces => "opentelemetry.proto.collector.trace.v1.TraceService",
            Signal::Metrics => "opentelemetry.proto.collector.metrics.v1.MetricsService",
        }
    }

    fn export_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    /// What a partial success counts as rejected.
    fn items(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "data points",
        }
    }
}
/// An OTLP answer is a few bytes; a collector sending more is not read further.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One exporter: one connection to the collector, one export at a time.
pub struct OtlpExporter {
    connection: Connection,
    signal: Signal,
    /// The limit of one export, retries included (`OTEL_EXPORTER_OTLP_TIMEOUT`), as the SDK's.
    timeout: Duration,
}

enum Connection {
    Grpc {
        client: Grpc<Channel>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        endpoint: String,
        headers: reqwest::header::HeaderMap,
        compression: Compression,
    },
}

impl fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.connection {
            Connection::Grpc { .. } => Protocol::Grpc,
            Connection::Http { .. } => Protocol::HttpProtobuf,
        };
        f.debug_struct("OtlpExporter")
            .field("signal", &self.signal)
            .field("protocol", &protocol.name())
            .finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// The exporter of `signal` that `otlp` describes, over a connection of its own (opened at
    /// the first export). Must run inside the tokio runtime.
    pub fn new(otlp: &Otlp, signal: Signal) -> anyhow::Result<OtlpExporter> {
        let connection = match otlp.protocol {
            Protocol::Grpc => {
                let mut client = Grpc::new(grpc_channel(otlp)?);
                if let Some(encoding) = grpc_compression(otlp) {
                    client = client.send_compressed(encoding).accept_compressed(encoding);
                }
                Connection::Grpc { client, metadata: grpc_metadata(otlp)? }
            }
            Protocol::HttpProtobuf => Connection::Http {
                client: http_client(otlp)?,
                endpoint: otlp.endpoint.clone(),
                headers: http_headers(otlp)?,
                compression: otlp.compression,
            },
        };
        Ok(OtlpExporter { connection, signal, timeout: otlp.timeout })
    }
}

impl Sender for OtlpExporter {
    async fn send(&self, body: Bytes) -> OTelSdkResult {
        match &self.connection {
            Connection::Grpc { client, metadata } => {
                let verdict = |status: &Status| {
                    retry::grpc(
                        status.code(),
                        status.get_details_retry_info().and_then(|info| info.retry_delay),
                    )
                };
                let sent = retry::with_backoff(SDK_POLICY, self.timeout, verdict, || {
                    send_grpc(client.clone(), metadata.clone(), self.signal, body.clone())
                })
                .await;
                sent.map_err(|status| {
                    // The collector's message stays out of the error, which is logged: it may
                    // echo credentials. A local failure (connect, TLS) says what went wrong.
                    debug!("OTLP gRPC export failed: {status:?}");
                    let mut message = format!("OTLP gRPC export failed with code {:?}", status.code());
                    let mut source = std::error::Error::source(&status);
                    while let Some(cause) = source {
                        message.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    OTelSdkError::InternalFailure(message)
                })
            }
            Connection::Http { client, endpoint, headers, compression } => {
                let (body, encoding) = compress(*compression, body).map_err(OTelSdkError::InternalFailure)?;
                let verdict =
                    |failure: &HttpFailure| retry::http(failure.status, failure.retry_after.as_deref());
                let sent = retry::with_backoff(SDK_POLICY, self.timeout, verdict, || {
                    send_http(client, endpoint, headers, encoding, self.signal, body.clone())
                })
                .await;
                sent.map_err(|failure| OTelSdkError::InternalFailure(failure.message))
            }
        }
    }
}

async fn send_grpc(
    mut client: Grpc<Channel>,
    metadata: MetadataMap,
    signal: Signal,
    body: Bytes,
) -> Result<(), Status> {
    client.ready().await.map_err(|e| Status::unknown(format!("the gRPC connection is not ready: {e}")))?;
    let mut request = tonic::Request::new(body);
    *request.metadata_mut() = metadata;
    request.extensions_mut().insert(GrpcMethod::new(signal.service(), "Export"));
    let path = PathAndQuery::from_static(signal.export_path());
    let response = client.unary(request, path, RequestCodec).await?;
    warn_partial(signal, response.into_inner().partial_success);
    Ok(())
}

/// An HTTP export that did not succeed: its status (0 when no answer came) and `Retry-After`.
#[derive(Debug)]
struct HttpFailure {
    status: u16,
    retry_after: Option<String>,
    message: String,
}

async fn send_http(
    client: &reqwest::Client,
    endpoint: &str,
    headers: &reqwest::header::HeaderMap,
    encoding: Option<&'static str>,
    signal: Signal,
    body: Bytes,
) -> Result<(), HttpFailure> {
    use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
    let network = |e: reqwest::Error| HttpFailure {
        status: 0,
        retry_after: None,
        message: format!("OTLP HTTP export failed: {}", e.without_url()),
    };
    let mut request = client.post(endpoint).header(CONTENT_TYPE, "application/x-protobuf");
    if let Some(encoding) = encoding {
        request = request.header(CONTENT_ENCODING, encoding);
    }
    // The configured headers last: they win, as with the SDK's exporter.
    let mut request = request.body(body).build().map_err(network)?;
    for (name, value) in headers {
        request.headers_mut().insert(name, value.clone());
    }
    let mut response = client.execute(request).await.map_err(network)?;
    let status = response.status();
    if !status.is_success() {
        let retry_after =
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        return Err(HttpFailure {
            status: status.as_u16(),
            retry_after,
            message: format!("OTLP HTTP export failed with status code {}", status.as_u16()),
        });
    }
    let mut answer = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        if answer.len() + chunk.len() > MAX_RESPONSE_BYTES {
            // Accepted all the same: the status said so.
            debug!("OTLP HTTP answer longer than {MAX_RESPONSE_BYTES} bytes, not read");
            return Ok(());
        }
        answer.extend_from_slice(&chunk);
    }
    match ExportTraceServiceResponse::decode(answer.as_slice()) {
        Ok(answer) => warn_partial(signal, answer.partial_success),
        Err(e) => debug!("reading the OTLP HTTP answer: {e}"),
    }
    Ok(())
}

/// The HTTP body compressed as configured, and its `Content-Encoding`.
fn compress(compression: Compression, body: Bytes) -> Result<(Bytes, Option<&'static str>), String> {
    use std::io::Write as _;
    let compressed = match compression {
        Compression::None => return Ok((body, None)),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(&body).and_then(|()| encoder.finish()).map(|b| (b, "gzip"))
        }
        Compression::Zstd => zstd::bulk::compress(&body, 0).map(|b| (b, "zstd")),
    };
    compressed
        .map(|(bytes, encoding)| (Bytes::from(bytes), Some(encoding)))
        .map_err(|e| format!("compressing the OTLP request: {e}"))
}

/// A collector that took the request but refused some spans (data points) says so: logged, as
/// the SDK does (they count as exported; the collector, not the sidecar, dropped them).
fn warn_partial(signal: Signal, partial: Option<ExportTracePartialSuccess>) {
    if let Some(partial) = partial.filter(|p| p.rejected_spans > 0 || !p.error_message.is_empty()) {
        warn!(
            "the collector rejected {} {} of an export: {:?}",
            partial.rejected_spans,
            signal.items(),
            partial.error_message
        );
    }
}

/// The gRPC codec of a request already encoded: its bytes go out as they are; the answer is
/// decoded as the trace service defines it, which the metrics service's answer matches field
/// for field (`partial_success`: the count rejected, 1, and a message, 2).
#[derive(Clone, Copy, Debug, Default)]
struct RequestCodec;

impl Codec for RequestCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RequestCodec;
    type Decoder = RequestCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RequestCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestCodec
    }
}

impl Encoder for RequestCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use prost::bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RequestCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ExportTraceServiceResponse>, Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the collector's answer: {e}")))
    }
}
