//! How an OTLP exporter reaches its collector, from one signal's settings ([`Otlp`]): endpoint,
//! timeout, headers, compression and TLS for the span exporter (export/otlp.rs: a gRPC channel
//! or an HTTP client, and the headers) and on the SDK's metrics exporter builders. TLS is rustls on aws-lc-rs for both protocols: tonic's own
//! configuration for gRPC, a rustls client configuration for reqwest over HTTP. A private CA
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`) is trusted instead of the system's roots, as the SDKs do.

use std::{collections::HashMap, sync::Arc};

use anyhow::{anyhow, Context as _, Result};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tonic::{
    codec::CompressionEncoding,
    metadata::MetadataMap,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::config::{Compression, Otlp, Tls};

fn compression(otlp: &Otlp) -> Option<opentelemetry_otlp::Compression> {
    match otlp.compression {
        Compression::None => None,
        Compression::Gzip => Some(opentelemetry_otlp::Compression::Gzip),
        Compression::Zstd => Some(opentelemetry_otlp::Compression::Zstd),
    }
}

/// The configured headers as gRPC metadata.
pub fn grpc_metadata(otlp: &Otlp) -> Result<MetadataMap> {
    let mut metadata = MetadataMap::new();
    for (key, value) in &otlp.headers.0 {
        // config has checked both: a key is a header name, a value has no control character.
        // HTTP/2 wants the keys lower-cased.
        let key = tonic::metadata::MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
            .context("a configured header name")?;
        metadata.insert(key, value.parse().context("a configured header value")?);
    }
    Ok(metadata)
}

/// The settings on a gRPC exporter builder (the SDK's, for metrics).
pub fn grpc_settings<B: WithExportConfig + WithTonicConfig>(builder: B, otlp: &Otlp) -> Result<B> {
    let mut builder =
        builder.with_endpoint(&otlp.endpoint).with_timeout(otlp.timeout).with_metadata(grpc_metadata(otlp)?);
    if let Some(compression) = compression(otlp) {
        builder = builder.with_compression(compression);
    }
    if otlp.is_https() {
        builder = builder.with_tls_config(grpc_tls(&otlp.tls));
    }
    Ok(builder)
}

/// The span exporter's `User-Agent`, which the OTLP specification asks exporters to send: which
/// exporter, in which language, at which version (the SDK's exporter sent its own). A configured
/// `User-Agent` header still wins over HTTP; over gRPC tonic adds its own after it.
pub const USER_AGENT: &str =
    concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"), " (OTLP exporter, Rust)");

/// The span exporter's gRPC channel (export/otlp.rs), as the SDK's exporter builds one from the
/// same settings: TLS for `https://`, the request timeout, connected at the first export.
pub fn grpc_channel(otlp: &Otlp) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(otlp.endpoint.clone())
        .with_context(|| format!("the OTLP endpoint {}", otlp.endpoint))?
        .user_agent(USER_AGENT)
        .context("the User-Agent")?;
    let endpoint = match otlp.is_https() {
        true => endpoint.tls_config(grpc_tls(&otlp.tls)).context("the gRPC TLS settings")?,
        false => endpoint,
    };
    Ok(endpoint.timeout(otlp.timeout).connect_lazy())
}

/// The span exporter's gRPC compression.
pub fn grpc_compression(otlp: &Otlp) -> Option<CompressionEncoding> {
    match otlp.compression {
        Compression::None => None,
        Compression::Gzip => Some(CompressionEncoding::Gzip),
        Compression::Zstd => Some(CompressionEncoding::Zstd),
    }
}

/// The configured headers of the span exporter's HTTP requests.
pub fn http_headers(otlp: &Otlp) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (key, value) in &otlp.headers.0 {
        let name = HeaderName::from_bytes(key.as_bytes()).context("a configured header name")?;
        headers.insert(name, HeaderValue::from_str(value).context("a configured header value")?);
    }
    Ok(headers)
}

/// The settings on an HTTP exporter builder (the SDK's, for metrics; its client comes from
/// [`http_client`] or [`blocking_http_client`], which carry the TLS settings).
pub fn http_settings<B: WithExportConfig + WithHttpConfig>(builder: B, otlp: &Otlp) -> B {
    let headers: HashMap<String, String> = otlp.headers.0.iter().cloned().collect();
    let builder = builder.with_endpoint(&otlp.endpoint).with_timeout(otlp.timeout).with_headers(headers);
    match compression(otlp) {
        Some(compression) => builder.with_compression(compression),
        None => builder,
    }
}

fn grpc_tls(tls: &Tls) -> ClientTlsConfig {
    let config = match &tls.ca {
        Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.bytes)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    match &tls.client {
        Some(client) => config.identity(Identity::from_pem(&client.certificate.bytes, &client.key.bytes)),
        None => config,
    }
}

/// The client the span exporter sends OTLP/HTTP with, from the tokio export task.
pub fn http_client(otlp: &Otlp) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(otlp.timeout)
        .tls_backend_preconfigured(http_tls(otlp)?)
        .build()
        .context("building the HTTP client")
}

/// The client the metrics exporter sends OTLP/HTTP with, from the SDK's reader thread. Built on
/// a thread of its own: a blocking client cannot be made inside the tokio runtime.
pub fn blocking_http_client(otlp: &Otlp) -> Result<reqwest::blocking::Client> {
    let tls = http_tls(otlp)?;
    let timeout = otlp.timeout;
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder().timeout(timeout).tls_backend_preconfigured(tls).build()
    })
    .join()
    .map_err(|_| anyhow!("building the blocking HTTP client panicked"))?
    .context("building the blocking HTTP client")
}

/// The TLS an HTTP client is built with. Always ours, also over `http://`: left to itself,
/// reqwest loads the system's roots for every client and refuses to build one where there are
/// none (a slim container image, a minimal guest), although plain HTTP never uses them.
fn http_tls(otlp: &Otlp) -> Result<rustls::ClientConfig> {
    let tls = &otlp.tls;
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        _ if !otlp.is_https() => {}
        Some(ca) => {
            for cert in CertificateDer::pem_slice_iter(&ca.bytes) {
                let cert = cert.with_context(|| format!("reading {}", ca.path))?;
                roots.add(cert).with_context(|| format!("a certificate in {}", ca.path))?;
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            // Unusable entries of the system's store are skipped, as browsers and curl do.
            roots.add_parsable_certificates(system.certs);
            if roots.is_empty() {
                return Err(anyhow!(
                    "no trusted roots in the system's store ({:?}): set OTEL_EXPORTER_OTLP_CERTIFICATE \
                     to the CA of the collector's certificate",
                    system.errors.first()
                ));
            }
        }
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
    let mut config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&client.certificate.bytes)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("reading {}", client.certificate.path))?;
            let key = PrivateKeyDer::from_pem_slice(&client.key.bytes)
                .with_context(|| format!("reading {}", client.key.path))?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!("the client certificate {} and key {}", client.certificate.path, client.key.path)
            })?
        }
    };
    // OTLP/HTTP is HTTP/1.1 or h2; offering both lets the collector choose.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
