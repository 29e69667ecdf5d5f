//! TLS to the backends, with rustls everywhere (no OpenSSL in the image or the build).
//!
//! Each driver turns TLS on from its own URL: `mysql://…?ssl-mode=REQUIRED|VERIFY_CA|
//! VERIFY_IDENTITY`, `rediss://…`, `mongodb://…?tls=true` or `mongodb+srv://…` (TLS by
//! default). What this module adds is one trust setting for all three:
//! `SWITCHBOARD_TLS_CA_FILE` names a PEM bundle trusted *besides* the system roots, the usual
//! need of a private CA (a cloud provider's database CA, a company CA) without giving up the
//! public roots other backends rely on. The drivers disagree on how they take a CA (sqlx adds
//! its `ssl-ca` to the system roots, redis and mongodb replace their roots with it), so the
//! bundle handed to the last two is the system roots plus the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The extra trust of `SWITCHBOARD_TLS_CA_FILE`, read and checked once at start.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    extra: Option<ExtraCa>,
}

#[derive(Clone, Debug)]
struct ExtraCa {
    path: PathBuf,
    pem: Vec<u8>,
}

impl Trust {
    /// Reads the CA file: it must hold at least one PEM certificate, so a typo in the path
    /// or a key file given by mistake fails the start instead of the first TLS handshake.
    pub fn load(ca_file: Option<&Path>) -> Result<Self, String> {
        let Some(path) = ca_file else { return Ok(Self::default()) };
        let pem = std::fs::read(path).map_err(|e| format!("SWITCHBOARD_TLS_CA_FILE {}: {e}", path.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("SWITCHBOARD_TLS_CA_FILE {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("SWITCHBOARD_TLS_CA_FILE {} holds no PEM certificate", path.display()));
        }
        Ok(Self { extra: Some(ExtraCa { path: path.to_owned(), pem }) })
    }

    /// The MySQL URL with `ssl-ca` set to the extra CA, unless the URL names one itself.
    /// sqlx adds that file to the system roots; `ssl-mode` still decides whether TLS is used
    /// and how much is verified.
    pub fn mysql_url(&self, url: &str) -> String {
        let Some(extra) = &self.extra else { return url.to_owned() };
        if !url.starts_with("mysql:") && !url.starts_with("mariadb:") {
            return url.to_owned();
        }
        let query = url.split_once('?').map_or("", |(_, q)| q);
        if query.split('&').any(|p| p.starts_with("ssl-ca=") || p.starts_with("sslca=")) {
            return url.to_owned();
        }
        let path: String = form_urlencoded::byte_serialize(extra.path.to_string_lossy().as_bytes()).collect();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}ssl-ca={path}")
    }

    /// A Redis client for `redis://` or `rediss://`. With an extra CA a `rediss://` client
    /// trusts the system roots and the file.
    pub fn redis_client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        match &self.extra {
            Some(extra) if url.starts_with("rediss://") => {
                let root_cert = Some(self.bundle(extra).map_err(redis::RedisError::from)?);
                redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls: None, root_cert })
            }
            _ => redis::Client::open(url),
        }
    }

    /// A Redis Cluster client builder for `redis://` or `rediss://` node URLs, with the same
    /// trust as [`Trust::redis_client`].
    pub fn redis_cluster(&self, urls: &[String]) -> redis::RedisResult<redis::cluster::ClusterClientBuilder> {
        let builder = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str));
        match &self.extra {
            Some(extra) if urls.iter().any(|u| u.starts_with("rediss://")) => {
                let root_cert = Some(self.bundle(extra).map_err(redis::RedisError::from)?);
                Ok(builder.certs(redis::TlsCertificates { client_tls: None, root_cert }))
            }
            _ => Ok(builder),
        }
    }

    /// Points a TLS-enabled MongoDB client at the system roots plus the extra CA, unless its
    /// URL names a `tlsCAFile` itself. The driver reads a CA only from a file, once, when
    /// the client is built: the returned guard holds that file and removes it when dropped,
    /// so keep it until `mongodb::Client::with_options` has returned.
    pub fn mongo(&self, options: &mut mongodb::options::ClientOptions) -> std::io::Result<Option<BundleFile>> {
        use mongodb::options::Tls;
        let (Some(extra), Some(Tls::Enabled(tls))) = (&self.extra, options.tls.as_mut()) else {
            return Ok(None);
        };
        if tls.ca_file_path.is_some() {
            return Ok(None);
        }
        let file = BundleFile::write(&self.bundle(extra)?)?;
        tls.ca_file_path = Some(file.path.clone());
        Ok(Some(file))
    }

    /// The system roots as PEM, followed by the extra CA file.
    fn bundle(&self, extra: &ExtraCa) -> std::io::Result<Vec<u8>> {
        let system = rustls_native_certs::load_native_certs();
        if system.certs.is_empty()
            && let Some(e) = system.errors.first()
        {
            tracing::warn!(error = %e, "no system root certificates; trusting only SWITCHBOARD_TLS_CA_FILE");
        }
        let mut out = Vec::new();
        for cert in &system.certs {
            out.extend_from_slice(pem_certificate(cert).as_bytes());
        }
        out.extend_from_slice(&extra.pem);
        out.push(b'\n');
        Ok(out)
    }
}

/// One DER certificate as a PEM block.
fn pem_certificate(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A CA bundle written for a driver that only reads files; removed on drop.
pub struct BundleFile {
    path: PathBuf,
}

impl BundleFile {
    fn write(pem: &[u8]) -> std::io::Result<Self> {
        use rand::RngExt;
        let name = format!("switchboard-ca-{}-{:016x}.pem", std::process::id(), rand::rng().random::<u64>());
        let path = std::env::temp_dir().join(name);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        file.write_all(pem)?;
        Ok(Self { path })
    }
}

impl Drop for BundleFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "\
        -----BEGIN CERTIFICATE-----\n\
        MIIBgzCCASmgAwIBAgIUNQOyTdAZ7xVxOwidHRvjD030v+cwCgYIKoZIzj0EAwIw\n\
        FzEVMBMGA1UEAwwMdW5pdC10ZXN0LWNhMB4XDTI2MTEyOTIzMzQxMFoXDTM2MTEy\n\
        NjIzMzQxMFowFzEVMBMGA1UEAwwMdW5pdC10ZXN0LWNhMFkwEwYHKoZIzj0CAQYI\n\
        KoZIzj0DAQcDQgAEpxD4YD4rabcnZWPPAApXZhjjdiNfROisq5R/PSqI23VuEcCi\n\
        Ud1qxaOSoghfWFFw08a3HQKe2b6TJaxShu5sbaNTMFEwHQYDVR0OBBYEFC5g7R8p\n\
        nH8+0MJt7be0XltO+AYMMB8GA1UdIwQYMBaAFC5g7R8pnH8+0MJt7be0XltO+AYM\n\
        MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgYdY7GL/mS8sDgSdm\n\
        D2/B4R8QZeDoIGKOh8Xn0xKybzICIQC91xBebwqjwdZVUGw8fOiSMCutndGZNIZQ\n\
        b+/Lo2p04Q==\n\
        -----END CERTIFICATE-----\n\
    ";

    fn ca_file(text: &str) -> (PathBuf, impl Drop) {
        let file = BundleFile::write(text.as_bytes()).expect("write");
        (file.path.clone(), file)
    }

    #[test]
    fn the_ca_file_must_hold_a_certificate() {
        assert!(Trust::load(None).expect("none").extra.is_none());
        assert!(Trust::load(Some(Path::new("/nonexistent/ca.pem"))).is_err());
        let (path, _guard) = ca_file("not a certificate\n");
        assert!(Trust::load(Some(&path)).expect_err("no PEM").contains("no PEM certificate"));
        let (path, _guard) = ca_file(CERT);
        assert!(Trust::load(Some(&path)).is_ok());
    }

    #[test]
    fn mysql_urls_get_the_ca_unless_they_name_one() {
        let (path, _guard) = ca_file(CERT);
        let trust = Trust::load(Some(&path)).expect("load");
        let p: String = form_urlencoded::byte_serialize(path.to_string_lossy().as_bytes()).collect();
        assert_eq!(trust.mysql_url("mysql://h/db"), format!("mysql://h/db?ssl-ca={p}"));
        assert_eq!(
            trust.mysql_url("mysql://h/db?ssl-mode=VERIFY_CA"),
            format!("mysql://h/db?ssl-mode=VERIFY_CA&ssl-ca={p}")
        );
        assert_eq!(trust.mysql_url("mysql://h/db?ssl-ca=/x.pem"), "mysql://h/db?ssl-ca=/x.pem");
        assert_eq!(trust.mysql_url("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(Trust::default().mysql_url("mysql://h/db"), "mysql://h/db");
    }

    #[test]
    fn the_bundle_is_the_system_roots_and_the_file() {
        let (path, _guard) = ca_file(CERT);
        let trust = Trust::load(Some(&path)).expect("load");
        let extra = trust.extra.as_ref().expect("extra");
        let bundle = trust.bundle(extra).expect("bundle");
        let system = rustls_native_certs::load_native_certs().certs.len();
        let parsed = CertificateDer::pem_slice_iter(&bundle).collect::<Result<Vec<_>, _>>().expect("parses");
        assert_eq!(parsed.len(), system + 1);
    }
}
