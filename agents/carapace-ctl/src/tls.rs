//! TLS to a node: its certificate is self-signed, so instead of a chain to
//! a trusted root the client pins the SHA-256 of the end-entity certificate.
//! The handshake signatures are still checked with the ring provider's
//! algorithms, so a peer must hold the pinned certificate's private key.

use crate::endpoint::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};

/// The server name sent when the endpoint's host is not a DNS name (an IP
/// address): the node's certificate is not checked against it anyway.
pub const FALLBACK_SERVER_NAME: &str = "carapace";

/// Accepts exactly the certificate whose fingerprint is pinned.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
    /// The fingerprint of the last certificate presented, to tell the user
    /// what the node offered when it was not the pinned one.
    seen: Mutex<Option<Fingerprint>>,
}

impl PinnedCertVerifier {
    /// A verifier pinning `expected`, checking signatures with the ring
    /// provider's algorithms.
    pub fn new(expected: Fingerprint) -> PinnedCertVerifier {
        PinnedCertVerifier {
            expected,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            seen: Mutex::new(None),
        }
    }

    /// The fingerprint of the certificate the server presented last, if any.
    pub fn seen(&self) -> Option<Fingerprint> {
        match self.seen.lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = Fingerprint::of(end_entity.as_ref());
        match self.seen.lock() {
            Ok(mut g) => *g = Some(actual),
            Err(poisoned) => *poisoned.into_inner() = Some(actual),
        }
        if actual == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client configuration (ring, TLS 1.2 and 1.3) trusting only what
/// `verifier` accepts.
pub fn client_config(
    verifier: Arc<PinnedCertVerifier>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The SNI name for `host`: itself if it is a DNS name, else
/// [`FALLBACK_SERVER_NAME`].
pub fn server_name(host: &str) -> ServerName<'static> {
    match ServerName::try_from(host.to_string()) {
        Ok(name @ ServerName::DnsName(_)) => name,
        _ => ServerName::try_from(FALLBACK_SERVER_NAME)
            .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(v: &PinnedCertVerifier, der: &[u8]) -> Result<ServerCertVerified, rustls::Error> {
        v.verify_server_cert(
            &CertificateDer::from(der.to_vec()),
            &[],
            &server_name("node"),
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn only_the_pinned_certificate_is_accepted() {
        let cert = b"pretend this is DER".as_slice();
        let v = PinnedCertVerifier::new(Fingerprint::of(cert));
        assert_eq!(v.seen(), None);
        assert!(verify(&v, cert).is_ok());
        assert_eq!(v.seen(), Some(Fingerprint::of(cert)));

        let other = b"another certificate".as_slice();
        let refused = verify(&v, other);
        assert!(
            matches!(
                refused,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure
                ))
            ),
            "{refused:?}"
        );
        assert_eq!(
            v.seen(),
            Some(Fingerprint::of(other)),
            "what was offered is kept"
        );
    }

    #[test]
    fn handshake_signature_schemes_come_from_the_provider() {
        let v = PinnedCertVerifier::new(Fingerprint::of(b""));
        let schemes = v.supported_verify_schemes();
        assert!(schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
        assert!(schemes.contains(&SignatureScheme::ED25519));
    }

    #[test]
    fn sni_is_the_dns_name_or_the_fallback() {
        assert_eq!(server_name("node1.example").to_str(), "node1.example");
        assert_eq!(server_name("10.0.0.1").to_str(), FALLBACK_SERVER_NAME);
        assert_eq!(server_name("fe80::1").to_str(), FALLBACK_SERVER_NAME);
    }
}
