//! The TLS files of `OTEL_EXPORTER_OTLP_CERTIFICATE`, `..._CLIENT_CERTIFICATE` and
//! `..._CLIENT_KEY` (and their per-signal variants): read once at start-up and checked, so a
//! wrong path or a file that holds no certificate stops start-up naming the variable, instead of
//! every export failing its handshake later.

use std::{fmt, io::Read, path::Path};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// A PEM file's contents and where it came from (for messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub path: String,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Pem {
    // A client key is a secret: never its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pem({}, {} bytes)", self.path, self.bytes.len())
    }
}

/// What TLS an exporter uses when its endpoint is `https://`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// The CA that signs the collector's certificate, trusted instead of the system's roots
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`): a private CA's collector.
    pub ca: Option<Pem>,
    /// A client certificate chain and its key, for collectors that require one (mTLS).
    pub client: Option<ClientIdentity>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub certificate: Pem,
    pub key: Pem,
}

/// Certificates and keys are a few KiB; anything larger is not one.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The file at `path`, which must hold at least one PEM certificate.
pub fn certificates(path: &str) -> Result<Pem, &'static str> {
    let pem = read(path)?;
    let parsed: Result<Vec<CertificateDer<'_>>, _> = CertificateDer::pem_slice_iter(&pem.bytes).collect();
    match parsed {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        _ => Err("the path of a PEM file holding at least one certificate (-----BEGIN CERTIFICATE-----)"),
    }
}

/// The file at `path`, which must hold a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &str) -> Result<Pem, &'static str> {
    let pem = read(path)?;
    match PrivateKeyDer::from_pem_slice(&pem.bytes) {
        Ok(_) => Ok(pem),
        Err(_) => Err("the path of a PEM file holding a private key (-----BEGIN PRIVATE KEY----- or RSA/EC)"),
    }
}

fn read(path: &str) -> Result<Pem, &'static str> {
    const WHY: &str = "the path of a readable PEM file of at most 1 MiB";
    let file = std::fs::File::open(Path::new(path.trim())).map_err(|_| WHY)?;
    if !file.metadata().map_err(|_| WHY)?.is_file() {
        return Err(WHY);
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes).map_err(|_| WHY)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(WHY);
    }
    Ok(Pem { path: path.trim().to_owned(), bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, made by openssl for this test (not a secret).
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBeTCCAR+gAwIBAgIURj+6yga7igBgQ87VQfTpGKMj07QwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAeFw0yNjEyMDIwODE1MDdaFw0zNjExMjkwODE1
MDdaMBIxEDAOBgNVBAMMB3Rlc3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAT5zgngKSbQZOOo224/KKtNvIBIId5c7AhcfTkI9XIXuNRKOPCH3Q4mm1jkCCMS
MhD2qOovJgJndECF7EbwnxjMo1MwUTAdBgNVHQ4EFgQU9ZtR00ydsP8S6mLtiQN/
R6pfmnswHwYDVR0jBBgwFoAU9ZtR00ydsP8S6mLtiQN/R6pfmnswDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA6EhPmwx1xgOBst9Sk0upDXFiSdOQ
N1Z3sA/mzmZOd4QCIHJ+Hjb0nHKq1adcxWorfiH9vx5S4kiUtotrH8YAv5iO
-----END CERTIFICATE-----
";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgWzyl8EUmTF8CIH29
R3o9Fq3C9OrzPHBPDRmVZtjaD/2hRANCAAT5zgngKSbQZOOo224/KKtNvIBIId5c
7AhcfTkI9XIXuNRKOPCH3Q4mm1jkCCMSMhD2qOovJgJndECF7EbwnxjM
-----END PRIVATE KEY-----
";

    fn temp(name: &str, text: &str) -> String {
        let path = std::env::temp_dir().join(format!("otel-sendmmsg-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_file_without_a_certificate_or_key_is_refused() {
        let empty = temp("empty.pem", "");
        let text = temp("text.pem", "not a certificate\n");
        let cert = temp("cert.pem", CERT);
        assert!(certificates(&empty).is_err());
        assert!(certificates(&text).is_err());
        assert!(certificates("/nonexistent/ca.pem").is_err());
        assert!(certificates("/tmp").is_err(), "a directory");
        // PEM framing is what is checked here; the handshake checks the DER inside.
        assert_eq!(certificates(&cert).map(|p| p.bytes.len()), Ok(CERT.len()));
        assert!(private_key(&cert).is_err(), "a certificate is not a key");
        let key = temp("key.pem", KEY);
        assert!(private_key(&key).is_ok());
        let shown = format!("{:?}", private_key(&key).unwrap());
        assert!(!shown.contains("MIGHAgEA"), "a key's bytes are never shown: {shown}");
        for path in [empty, text, cert, key] {
            let _ = std::fs::remove_file(path);
        }
    }
}
