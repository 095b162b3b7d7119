//! `https://` export, end to end, against the real Collector (tools/otelcol) as the TLS
//! endpoint: certificates made now by openssl (a private CA, the collector's certificate for
//! 127.0.0.1, a client certificate), the Collector requiring a client certificate (mTLS) on its
//! gRPC and HTTP receivers and passing what it accepts to the test's plain OTLP receiver. With the
//! CA and the client certificate every call's span, and the sidecar's own metrics, arrive;
//! without the client certificate, or trusting only the system's roots, nothing does and every
//! span is counted as failed.

mod support;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use support::{backends::*, *};

/// A private CA, a server certificate for 127.0.0.1 and a client certificate, in a directory of
/// their own.
struct Certificates(PathBuf);

impl Certificates {
    fn make() -> Certificates {
        let dir = std::env::temp_dir().join(format!("otel-sendmmsg-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let ca = ["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=otel-sendmmsg test CA"];
        openssl(&[&["req", "-x509"][..], &key, &ca].concat());
        for (name, extension) in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), extension).unwrap();
            let csr = format!("{name}.csr");
            openssl(
                &[
                    &["req", "-new"][..],
                    &key,
                    &["-keyout", &format!("{name}.key"), "-out", &csr, "-subj", &format!("/CN={name}")],
                ]
                .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        Certificates(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Collector as a TLS endpoint requiring client certificates, forwarding to `to` (a plain
/// gRPC endpoint): (process, its gRPC address, its HTTP address).
fn tls_collector(certs: &Certificates, to: &str) -> (Running, String, String) {
    let (grpc, http, health) = (free_port(), free_port(), free_port());
    let tls = format!(
        "tls: {{cert_file: {}, key_file: {}, client_ca_file: {}}}",
        certs.path("server.pem"),
        certs.path("server.key"),
        certs.path("ca.pem")
    );
    let config = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{endpoint: 127.0.0.1:{grpc}, {tls}}}\n      \
         http: {{endpoint: 127.0.0.1:{http}, {tls}}}\n\
         exporters:\n  otlp_grpc: {{endpoint: {to}, tls: {{insecure: true}}}}\n\
         extensions:\n  health_check: {{endpoint: 127.0.0.1:{health}}}\n\
         service:\n  extensions: [health_check]\n  telemetry: {{metrics: {{level: none}}}}\n  pipelines:\n    \
         traces: {{receivers: [otlp], exporters: [otlp_grpc]}}\n    \
         metrics: {{receivers: [otlp], exporters: [otlp_grpc]}}\n"
    );
    let file = certs.0.join("collector.yaml");
    std::fs::write(&file, config).unwrap();
    let mut collector = Running::start(
        "collector",
        Command::new(backend("otelcol")).arg(format!("--config={}", file.display())),
    );
    let health = format!("127.0.0.1:{health}");
    collector.wait("healthy", || http_get(&health, "/").is_some_and(|(s, _)| s == 200));
    (collector, format!("https://127.0.0.1:{grpc}"), format!("https://127.0.0.1:{http}"))
}

#[test]
fn https_export_with_a_private_ca_and_a_client_certificate() {
    require_root();
    let _one = one_sidecar_at_a_time();
    let certs = Certificates::make();
    let receiver = Receiver::start(Protocol::Grpc);
    let to = receiver.endpoint.trim_start_matches("http://").to_owned();
    let (collector, grpc, http) = tls_collector(&certs, &to);
    let (ca, cert, key) = (certs.path("ca.pem"), certs.path("client.pem"), certs.path("client.key"));
    let mutual: &[(&str, &str)] = &[
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
    ];
    let without_client: &[(&str, &str)] = &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)];
    for (protocol, endpoint) in [(Protocol::Grpc, &grpc), (Protocol::HttpProtobuf, &http)] {
        // (what the sidecar is given, whether the collector takes its spans)
        for (tls, accepted) in [(mutual, true), (without_client, false), (&[][..], false)] {
            let mut vars = vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
                ("OTEL_BSP_EXPORT_TIMEOUT", "3000"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
            ];
            vars.extend_from_slice(tls);
            let points_before = receiver.metric_points().len();
            let sidecar = Sidecar::start(&vars);
            let calls = run_workload(&["udp4", "refused-mid-batch"]);
            let pid = calls[0].pid;
            if accepted {
                // Through the Collector, which batches: wait until every span is there.
                let deadline = Instant::now() + Duration::from_secs(30);
                while receiver.spans_of(pid).len() < calls.len() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let stopped = sidecar.stop();
            assert!(stopped.status.success(), "{}", stopped.stderr);
            let what = format!("{protocol:?} with {} TLS settings", tls.len());
            if accepted {
                assert_eq!(receiver.spans_of(pid).len(), calls.len(), "{what}:\n{}", stopped.stderr);
                assert_eq!(summary_count(&stopped.stderr, "export_failed"), 0, "{what}");
                // The sidecar's own metrics took the same TLS (its final export at the latest).
                let deadline = Instant::now() + Duration::from_secs(10);
                while receiver.metric_points().len() == points_before && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                assert!(receiver.metric_points().len() > points_before, "{what}: no metrics arrived");
            } else {
                assert!(receiver.spans_of(pid).is_empty(), "{what}: the collector took spans");
                // Every span of the calls, and of nothing else the sidecar saw, failed.
                let failed = summary_count(&stopped.stderr, "export_failed");
                assert!(failed >= calls.len() as u64, "{what}: {failed} failed:\n{}", stopped.stderr);
                assert_eq!(summary_count(&stopped.stderr, "exported"), 0, "{what}:\n{}", stopped.stderr);
            }
        }
    }
    drop(collector);
}
