//! The TLS identity of the API's TCP listener: a certificate and private key
//! kept on /var (`/var/lib/carapace/api/cert.pem`, `key.pem`, mode 0600),
//! taken from the user data or generated on first boot (self-signed, ECDSA
//! P-256). Clients pin it by the SHA-256 of the certificate's DER, which the
//! server prints on the console and reports in status.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the identity lives on the node.
pub const DIR: &str = carapace_contract::paths::API_TLS_DIR;

/// A certificate chain with its key, ready to serve.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.fingerprint())
    }
}

impl Identity {
    /// Parses PEM texts: the chain (leaf first) and the private key.
    pub fn from_pem(certificate: &str, key: &str) -> Result<Identity, String> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(certificate.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
        if chain.is_empty() {
            return Err("the certificate PEM holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| format!("the private key is not valid PEM: {e}"))?;
        let identity = Identity { chain, key };
        // Refuse a key that does not belong to the certificate now, not at
        // the first handshake.
        identity.server_config()?;
        Ok(identity)
    }

    /// A new self-signed identity naming `names`.
    pub fn generate(names: &[String]) -> Result<Identity, String> {
        let generated = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| format!("cannot generate a certificate: {e}"))?;
        let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
            .map_err(|e| format!("cannot use the generated key: {e}"))?;
        Ok(Identity {
            chain: vec![generated.cert.der().clone()],
            key,
        })
    }

    /// SHA-256 of the leaf certificate's DER, lowercase hex.
    pub fn fingerprint(&self) -> String {
        let der = self.chain.first().map(|c| c.as_ref()).unwrap_or(&[]);
        Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The rustls server configuration (ring provider, TLS 1.2 and 1.3).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
        Ok(Arc::new(config))
    }

    fn to_pem(&self) -> (String, String) {
        let mut cert = String::new();
        for c in &self.chain {
            cert.push_str(&pem("CERTIFICATE", c.as_ref()));
        }
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        (cert, pem(label, self.key.secret_der()))
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The files of an identity in `dir`.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Writes `identity` into `dir` (key mode 0600), each file whole and durable
/// ([`carapace_model::persist::write_file`]).
pub fn store(dir: &Path, identity: &Identity) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (cert_path, key_path) = paths(dir);
    let (cert, key) = identity.to_pem();
    for (path, text, mode) in [(&key_path, key, 0o600), (&cert_path, cert, 0o644)] {
        carapace_model::persist::write_file(path, text.as_bytes(), mode)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Reads the identity kept in `dir`; None when there is none.
pub fn load(dir: &Path) -> Result<Option<Identity>, String> {
    let (cert_path, key_path) = paths(dir);
    let cert = match std::fs::read_to_string(&cert_path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", cert_path.display())),
    };
    let key = std::fs::read_to_string(&key_path)
        .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    Identity::from_pem(&cert, &key)
        .map(Some)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// The identity to serve with: the one kept in `dir`, else a new one that is
/// stored there. A kept identity that is unreadable is replaced (and said).
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<(Identity, Option<String>), String> {
    let problem = match load(dir) {
        Ok(Some(identity)) => return Ok((identity, None)),
        Ok(None) => None,
        Err(e) => Some(format!("{e}; a new certificate was generated")),
    };
    let identity = Identity::generate(names)?;
    store(dir, &identity)?;
    Ok((identity, problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_certificate_is_where_clients_and_the_health_check_pin_it() {
        assert_eq!(
            paths(Path::new(DIR)).0,
            Path::new(carapace_contract::paths::API_CERTIFICATE)
        );
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn a_generated_identity_is_kept_and_comes_back_with_the_same_fingerprint() {
        let d = dir("keep");
        let (first, problem) = load_or_create(&d, &["carapace".into()]).expect("created");
        assert_eq!(problem, None);
        assert_eq!(first.fingerprint().len(), 64);
        let (again, _) = load_or_create(&d, &["carapace".into()]).expect("loaded");
        assert_eq!(
            again.fingerprint(),
            first.fingerprint(),
            "kept, not regenerated"
        );
        let mode = std::fs::metadata(d.join("key.pem"))
            .expect("key")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_pem_pair_from_user_data_round_trips_and_a_mismatched_key_is_refused() {
        let a = Identity::generate(&["a".into()]).expect("a");
        let b = Identity::generate(&["b".into()]).expect("b");
        let (cert_a, key_a) = a.to_pem();
        let (_, key_b) = b.to_pem();
        let parsed = Identity::from_pem(&cert_a, &key_a).expect("a pair");
        assert_eq!(parsed.fingerprint(), a.fingerprint());
        let err = Identity::from_pem(&cert_a, &key_b).expect_err("mismatch");
        assert!(err.contains("do not make a TLS identity"), "{err}");
        let err =
            Identity::from_pem("-----BEGIN CERTIFICATE-----\n!!\n", &key_a).expect_err("garbage");
        assert!(err.contains("certificate"), "{err}");
    }

    #[test]
    fn an_unreadable_kept_identity_is_replaced_and_reported() {
        let d = dir("broken");
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("cert.pem"), "torn").expect("cert");
        std::fs::write(d.join("key.pem"), "torn").expect("key");
        let (identity, problem) = load_or_create(&d, &["carapace".into()]).expect("replaced");
        assert!(problem.expect("reported").contains("new certificate"));
        let (again, problem) = load_or_create(&d, &["carapace".into()]).expect("loaded");
        assert_eq!(problem, None);
        assert_eq!(again.fingerprint(), identity.fingerprint());
        std::fs::remove_dir_all(&d).ok();
    }
}
