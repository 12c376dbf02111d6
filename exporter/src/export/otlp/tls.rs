//! TLS for both OTLP transports: one rustls client configuration (ring as
//! the crypto provider), shared by the HTTP client and the gRPC channel
//! through hyper-rustls' connector. The roots are the CA file when one is
//! given (as in the OTel SDKs, it replaces the system's roots), else the
//! system's (rustls-native-certs: `/etc/ssl/certs`, `SSL_CERT_FILE`,
//! `SSL_CERT_DIR`).

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};

use super::settings::Tls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {error}")]
    Pem { path: String, error: String },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: String },
    #[error("a client certificate needs its key (tls.cert_file and tls.key_file go together)")]
    Unpaired,
    #[error("no CA certificates found on this system; give a CA file (otlp.tls.ca_file)")]
    NoRoots,
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.display().to_string(),
        error: match e {
            rustls::pki_types::pem::Error::Io(io) => io.to_string(),
            other => other.to_string(),
        },
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        error: match e {
            rustls::pki_types::pem::Error::Io(io) => io.to_string(),
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key in it".into(),
            other => other.to_string(),
        },
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and parses every file the settings name: what configuration
/// validation calls, so a bad file stops start-up with one line.
pub fn check(tls: &Tls) -> Result<(), TlsError> {
    client_config(tls, Vec::new(), false).map(drop)
}

/// The client configuration for `tls`, offering `alpn` (e.g. `h2`).
/// `system_roots`: load the system's roots when no CA file is given
/// (validation skips it).
pub fn client_config(
    tls: &Tls,
    alpn: Vec<Vec<u8>>,
    system_roots: bool,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in certificates(path)? {
                roots.add(cert)?;
            }
        }
        None if system_roots => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() && !tls.insecure_skip_verify {
                return Err(TlsError::NoRoots);
            }
        }
        None => {}
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(
                provider.signature_verification_algorithms,
            )))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(certificates(cert)?, private_key(key)?)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::Unpaired),
    };
    config.alpn_protocols = alpn;
    Ok(config)
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's
/// signatures are still checked against it.
#[derive(Debug)]
struct AcceptAnyServer(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_empty_files_name_the_path() {
        let tls = Tls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Tls::default()
        };
        let e = check(&tls).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/ca.pem: "), "{e}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let tls = Tls {
            ca_file: Some(empty.path().into()),
            ..Tls::default()
        };
        let e = check(&tls).unwrap_err().to_string();
        assert!(e.ends_with("no PEM certificate in it"), "{e}");
        let tls = Tls {
            key_file: Some(empty.path().into()),
            ..Tls::default()
        };
        assert!(matches!(check(&tls), Err(TlsError::Unpaired)));
    }
}
