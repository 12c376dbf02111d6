//! rustls server configuration from a validated [`TlsSpec`]: reads the
//! certificate, key and client CA (each capped at 1 MiB), and maps the
//! exporter-toolkit settings onto rustls's.
//!
//! rustls with the ring provider: no OpenSSL to link or keep patched, and
//! TLS 1.2/1.3 only. Go's `RequestClientCert` and `RequireAnyClientCert`
//! (ask for a certificate but do not verify it; the toolkit calls them
//! insecure) have no rustls equivalent, so [`UnverifiedClientCert`]
//! implements them: the handshake signature is still checked, so the
//! client does hold the key of the certificate it sent.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore, ServerConfig,
    SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, UnixTime,
    pem::{PemObject, SectionKind},
};

use super::config::{ClientAuth, Pem, TlsSpec, TlsVersion};
use crate::vocab::bounded;

/// Resolves a path from the web configuration: relative paths are relative
/// to the configuration file's directory, as in the toolkit.
pub fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// The files a TLS configuration reads (watched for changes).
pub fn files(spec: &TlsSpec, dir: &Path) -> Vec<PathBuf> {
    [Some(&spec.cert), Some(&spec.key), spec.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|p| match p {
            Pem::File(f) => Some(resolve(dir, f)),
            Pem::Inline(_) => None,
        })
        .collect()
}

fn pem_bytes(p: &Pem, dir: &Path, what: &str) -> Result<Vec<u8>, String> {
    match p {
        Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
        Pem::File(f) => {
            let path = resolve(dir, f);
            bounded::read(&path, bounded::MAX_PEM_BYTES)
                .map_err(|e| format!("tls_server_config.{what}_file: {}: {e}", path.display()))
        }
    }
}

fn certificates(p: &Pem, dir: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = pem_bytes(p, dir, what)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_server_config.{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_server_config.{what}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
        ));
    }
    Ok(certs)
}

fn private_key(p: &Pem, dir: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = pem_bytes(p, dir, "key")?;
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(&bytes) {
        let (kind, der) = item.map_err(|e| format!("tls_server_config.key: not PEM: {e}"))?;
        let key = match kind {
            SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.into()),
            SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
            SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.into()),
            _ => continue,
        };
        return Ok(key);
    }
    Err("tls_server_config.key: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".into())
}

fn provider(spec: &TlsSpec) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    if !spec.cipher_suites.is_empty() {
        // Go applies cipher_suites to TLS 1.2 only; 1.3 suites stay.
        let tls13: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied()
            .collect();
        let mut chosen = Vec::new();
        for name in &spec.cipher_suites {
            if let Some(s) = p
                .cipher_suites
                .iter()
                .find(|s| s.suite().as_str() == Some(*name))
            {
                chosen.push(*s);
            }
        }
        chosen.extend(tls13);
        p.cipher_suites = chosen;
    }
    if !spec.curves.is_empty() {
        let mut groups = Vec::new();
        for c in &spec.curves {
            let named = match *c {
                "X25519" => rustls::NamedGroup::X25519,
                "CurveP256" => rustls::NamedGroup::secp256r1,
                _ => rustls::NamedGroup::secp384r1,
            };
            if let Some(g) = p.kx_groups.iter().find(|g| g.name() == named) {
                groups.push(*g);
            }
        }
        p.kx_groups = groups;
    }
    p
}

/// Builds the rustls configuration, reading every file it names. Every
/// error names the key it comes from.
pub fn build(spec: &TlsSpec, dir: &Path) -> Result<ServerConfig, String> {
    let provider = Arc::new(provider(spec));
    let certs = certificates(&spec.cert, dir, "cert")?;
    let key = private_key(&spec.key, dir)?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (spec.min_version..=spec.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let verifier: Arc<dyn ClientCertVerifier> = match spec.client_auth {
        ClientAuth::NoClientCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            Arc::new(UnverifiedClientCert {
                mandatory: spec.client_auth == ClientAuth::RequireAnyClientCert,
                provider: provider.clone(),
            })
        }
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let ca = spec
                .client_ca
                .as_ref()
                .ok_or("tls_server_config: client_ca_file is needed to verify clients")?;
            let mut roots = RootCertStore::empty();
            for c in certificates(ca, dir, "client_ca")? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls_server_config.client_ca: {e}"))?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if spec.client_auth == ClientAuth::VerifyClientCertIfGiven {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build()
                .map_err(|e| format!("tls_server_config.client_ca: {e}"))?
        }
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_server_config: certificate and key: {e}"))?;
    cfg.ignore_client_order = spec.prefer_server_cipher_suites;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Go's RequestClientCert / RequireAnyClientCert: a certificate is asked
/// for (and required if `mandatory`) but not verified against any CA.
#[derive(Debug)]
struct UnverifiedClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for UnverifiedClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
