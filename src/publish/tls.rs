//! TLS for the viewer's server (rustls with the ring provider; no OpenSSL): the certificate and
//! key of `[http] tls_cert` / `tls_key` (PEM), or, when the viewer listens on a non-loopback
//! address without them, a self-signed pair made once under `STATE/tls/` (rcgen) so that patient
//! data never crosses the network in the clear. [`Tls`] holds the configuration in force and
//! swaps in re-read files on `Reload()`; its fingerprints (SHA-256 of the certificate, and of its
//! public key in base64 as browsers pin it) are logged and shown by `pocusd status`.
//! Files and crypto only: must not depend on the daemon, D-Bus or the HTTP routes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};

/// What goes wrong setting up TLS; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("{} holds no PEM {what}: {message}", path.display())]
    Pem {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("the certificate {} and the key {} do not go together: {message}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("cannot make the self-signed certificate in {}: {message}", dir.display())]
    SelfSigned { dir: PathBuf, message: String },
}

/// A certificate's identity as a client pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    /// SHA-256 of the certificate (DER), upper-case hex pairs joined by ':' (as `openssl x509
    /// -fingerprint -sha256` prints it).
    pub cert_sha256: String,
    /// SHA-256 of the SubjectPublicKeyInfo, base64 (Chromium's
    /// `--ignore-certificate-errors-spki-list`, HPKP pins).
    pub spki_sha256_base64: String,
}

/// The files in force and the rustls configuration made of them.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    /// Made by the daemon (`STATE/tls/`), not given in the configuration.
    pub self_signed: bool,
    current: RwLock<(Arc<rustls::ServerConfig>, Fingerprints)>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Base64 (standard alphabet, padded).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The fingerprints of a DER certificate.
pub fn fingerprints(cert: &CertificateDer<'_>) -> Result<Fingerprints, String> {
    use sha2::Digest;
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("{e:?}"))?;
    let spki = parsed.subject_public_key_info();
    Ok(Fingerprints {
        cert_sha256: sha2::Sha256::digest(cert.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
        spki_sha256_base64: base64(&sha2::Sha256::digest(spki.as_ref())),
    })
}

/// Reads a PEM certificate chain and key and makes a server configuration (TLS 1.3 and 1.2,
/// HTTP/1.1).
fn load(cert: &Path, key: &Path) -> Result<(Arc<rustls::ServerConfig>, Fingerprints), TlsError> {
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_path_buf(),
            what: "certificate",
            message: e.to_string(),
        })?;
    let first = chain.first().cloned().ok_or_else(|| TlsError::Pem {
        path: cert.to_path_buf(),
        what: "certificate",
        message: "no CERTIFICATE block".into(),
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        what: "private key",
        message: e.to_string(),
    })?;
    let mismatch = |message: String| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| mismatch(e.to_string()))?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let fp = fingerprints(&first).map_err(|e| TlsError::Pem {
        path: cert.to_path_buf(),
        what: "certificate",
        message: e,
    })?;
    Ok((Arc::new(config), fp))
}

/// The self-signed pair under `dir` (`cert.pem`, `key.pem` readable by the daemon only), made
/// when missing for the names `names` (the listen address, `localhost`, the host name).
pub fn self_signed(dir: &Path, names: Vec<String>) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    let err = |message: String| TlsError::SelfSigned {
        dir: dir.to_path_buf(),
        message,
    };
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| err(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)
            .map_err(|e| err(e.to_string()))?;
        std::io::Write::write_all(&mut f, made.key_pair.serialize_pem().as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    crate::files::write_atomic(&cert, made.cert.pem().as_bytes())
        .map_err(|e| err(e.to_string()))?;
    Ok((cert, key))
}

impl Tls {
    /// Loads `cert` and `key`.
    pub fn new(cert: PathBuf, key: PathBuf, self_signed: bool) -> Result<Self, TlsError> {
        let current = load(&cert, &key)?;
        Ok(Self {
            cert,
            key,
            self_signed,
            current: RwLock::new(current),
        })
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The fingerprints of the certificate in force.
    pub fn fingerprints(&self) -> Fingerprints {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// The certificate file in force.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// Re-reads the files (a rotated certificate); a broken pair is refused and the old one
    /// keeps serving. Returns whether the certificate changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let next = load(&self.cert, &self.key)?;
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        let changed = cur.1 != next.1;
        *cur = next;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_loads_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) =
            self_signed(dir.path(), vec!["localhost".into(), "10.77.0.1".into()]).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let tls = Tls::new(cert.clone(), key.clone(), true).unwrap();
        let fp = tls.fingerprints();
        assert_eq!(fp.cert_sha256.len(), 32 * 3 - 1);
        assert_eq!(fp.spki_sha256_base64.len(), 44);
        // Made once: a second call keeps the pair.
        assert_eq!(
            self_signed(dir.path(), vec!["x".into()]).unwrap(),
            (cert.clone(), key.clone())
        );
        assert!(!tls.reload().unwrap());
        // A broken file is refused, naming it; the old certificate stays.
        std::fs::write(&cert, "not pem").unwrap();
        let e = tls.reload().unwrap_err().to_string();
        assert!(e.contains("cert.pem"), "{e}");
        assert_eq!(tls.fingerprints(), fp);
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
