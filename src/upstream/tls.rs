//! TLS client configuration for Discord: rustls with the ring provider and
//! the Mozilla root set (webpki-roots), so no system certificate store is
//! needed, plus the extra roots an operator trusts on top of them (the
//! config's `tls_ca_file` and the standard `SSL_CERT_FILE` variable: a
//! TLS-inspecting egress proxy's CA, or a test CA).
//!
//! The extra roots are handed over once at start-up
//! ([`trust_extra_roots`], from [`Config::load`](crate::config::Config::load)),
//! before the first connection builds the shared [`client_config`].

use rustls_pki_types::{pem::PemObject, CertificateDer, TrustAnchor};
use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

/// The environment variable naming a PEM file of extra roots (as OpenSSL
/// and most TLS clients read it); its roots are added, not substituted.
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// Root certificates trusted on top of webpki-roots.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExtraRoots {
    anchors: Vec<TrustAnchor<'static>>,
    /// `path: N certificates` per file read, for the log.
    sources: Vec<String>,
}

impl fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraRoots").field("roots", &self.anchors.len()).field("from", &self.sources).finish()
    }
}

/// Why a file of root certificates was refused.
#[derive(Debug)]
pub enum RootsError {
    /// The file could not be read.
    Read(PathBuf, io::Error),
    /// The file is not PEM.
    Pem(PathBuf, rustls_pki_types::pem::Error),
    /// The file has no `CERTIFICATE` block.
    NoCertificates(PathBuf),
    /// A certificate (0-based index among the file's certificates) cannot be a trust anchor.
    BadCertificate(PathBuf, usize, rustls::Error),
}

impl fmt::Display for RootsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            Self::Pem(path, e) => write!(f, "{} is not a PEM file: {e}", path.display()),
            Self::NoCertificates(path) => write!(
                f,
                "{} has no certificate in it (expected PEM blocks `-----BEGIN CERTIFICATE-----`)",
                path.display()
            ),
            Self::BadCertificate(path, i, e) => {
                write!(f, "certificate #{} in {} is not usable as a root: {e}", i + 1, path.display())
            }
        }
    }
}

impl std::error::Error for RootsError {}

impl ExtraRoots {
    /// Adds every certificate of the PEM file at `path` (other PEM blocks
    /// are ignored); returns how many were added. `strict`: a certificate
    /// that cannot be a trust anchor is an error; otherwise it is skipped
    /// (system bundles such as `SSL_CERT_FILE`'s may hold a few that
    /// webpki does not parse). A file without any usable certificate is
    /// an error either way.
    pub fn add_pem_file(&mut self, path: &Path, strict: bool) -> Result<usize, RootsError> {
        let pem = std::fs::read(path).map_err(|e| RootsError::Read(path.to_owned(), e))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| RootsError::Pem(path.to_owned(), e))?;
        let mut store = rustls::RootCertStore::empty();
        let mut skipped = 0;
        for (i, cert) in certs.into_iter().enumerate() {
            if let Err(e) = store.add(cert) {
                if strict {
                    return Err(RootsError::BadCertificate(path.to_owned(), i, e));
                }
                skipped += 1;
            }
        }
        if store.roots.is_empty() {
            return Err(RootsError::NoCertificates(path.to_owned()));
        }
        let added = store.roots.len();
        self.sources.push(if skipped == 0 {
            format!("{}: {added}", path.display())
        } else {
            format!("{}: {added} ({skipped} unusable skipped)", path.display())
        });
        self.anchors.extend(store.roots);
        Ok(added)
    }

    /// Number of extra roots.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

static EXTRA_ROOTS: OnceLock<ExtraRoots> = OnceLock::new();
static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();

/// Makes `roots` trusted (on top of webpki-roots) by every TLS connection
/// of the process. Once only, before the first connection: `Err` gives the
/// roots back when roots were already set or a connection already built
/// the client configuration.
pub fn trust_extra_roots(roots: ExtraRoots) -> Result<(), ExtraRoots> {
    if CONFIG.get().is_some() {
        return Err(roots);
    }
    EXTRA_ROOTS.set(roots)
}

/// The extra roots in force, if any were set.
pub fn extra_roots() -> Option<&'static ExtraRoots> {
    EXTRA_ROOTS.get()
}

/// The shared rustls client configuration.
pub fn client_config() -> rustls::ClientConfig {
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            if let Some(extra) = EXTRA_ROOTS.get().filter(|e| !e.is_empty()) {
                log::info!(
                    "TLS: trusting {} extra root certificates besides webpki-roots ({})",
                    extra.len(),
                    extra.sources.join(", ")
                );
                roots.roots.extend(extra.anchors.iter().cloned());
            }
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth()
        })
        .clone()
}

/// Says what a failed TLS connection to `host` means: the rustls error
/// behind `e` (a certificate for another name, an unknown issuer, ...),
/// with a hint for the operator where there is one. Other errors are
/// returned unchanged.
pub fn explain(host: &str, e: io::Error) -> io::Error {
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return e;
    };
    let hint = if matches!(tls, rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) {
        " (its issuer is not a trusted root: webpki-roots, the config's `tls_ca_file` or SSL_CERT_FILE)"
    } else {
        ""
    };
    io::Error::new(e.kind(), format!("TLS handshake with {host} failed: {tls}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("gateway-proxy-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn refuses_files_without_usable_certificates() {
        let mut roots = ExtraRoots::default();
        let missing = Path::new("/nonexistent/gateway-proxy/ca.pem");
        assert!(matches!(roots.add_pem_file(missing, true), Err(RootsError::Read(..))));
        let empty = temp_file("empty.pem", b"not a certificate\n");
        let e = roots.add_pem_file(&empty, true).unwrap_err();
        assert!(e.to_string().contains("has no certificate"), "{e}");
        let garbage = temp_file("garbage.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let e = roots.add_pem_file(&garbage, true).unwrap_err();
        assert!(e.to_string().contains("certificate #1"), "{e}");
        // Lenient: the unusable one is skipped, and with nothing left the file is refused.
        assert!(matches!(roots.add_pem_file(&garbage, false), Err(RootsError::NoCertificates(_))));
        assert!(roots.is_empty());
        let _ = std::fs::remove_file(empty);
        let _ = std::fs::remove_file(garbage);
    }

    #[test]
    fn adds_every_certificate_of_a_bundle() {
        let pem: String = (0..2)
            .map(|i| {
                let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                params.distinguished_name.push(rcgen::DnType::CommonName, format!("test root {i}"));
                params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
            })
            .collect();
        let bundle = temp_file("bundle.pem", format!("# two roots\n{pem}").as_bytes());
        let mut roots = ExtraRoots::default();
        assert_eq!(roots.add_pem_file(&bundle, true).unwrap(), 2);
        assert_eq!(roots.len(), 2);
        assert!(format!("{roots:?}").contains("bundle.pem: 2"));
        let _ = std::fs::remove_file(bundle);
    }

    #[test]
    fn explains_rustls_errors_and_passes_others_through() {
        let bad = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let e = explain("gateway.discord.gg", bad).to_string();
        assert!(e.starts_with("TLS handshake with gateway.discord.gg failed: invalid peer certificate"), "{e}");
        assert!(e.contains("tls_ca_file"), "{e}");
        let other = explain("h", io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(other.to_string(), "refused");
    }
}
