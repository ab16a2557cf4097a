//! TLS for both servers: libpq's `sslmode` for PostgreSQL, and an extra CA
//! bundle for ClickHouse over `https://`.
//!
//! `tokio-postgres` knows only `disable`, `prefer` and `require`, and verifies
//! the certificate in every mode that uses TLS, which is not what libpq does:
//! a stock server with a self-signed certificate fails with `prefer` (the
//! default) or `require`. So the connection string's mode is read here, handed
//! to `tokio-postgres` as the nearest mode it knows, and the verification libpq
//! would do is chosen here:
//!
//! | `sslmode` | TLS | certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it | not verified |
//! | `require` | always | not verified |
//! | `verify-ca` | always | chain verified, host name not |
//! | `verify-full` | always | chain and host name verified |
//!
//! Verification trusts the Mozilla roots plus the configured extra bundle. The
//! handshake's signatures are checked in every mode, so even an unverified
//! session is encrypted with the key of the certificate the server showed.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::ConfigError;
use crate::conninfo::SslMode;

/// The Mozilla roots plus the PEM certificates of `ca_file`; errors name `variable`.
pub fn roots(ca_file: Option<&str>, variable: &'static str) -> Result<RootCertStore, ConfigError> {
    let fail = |reason: String| ConfigError { variable, reason };
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read {path} ({e})")))?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| fail(format!("{path} is not a PEM bundle ({e})")))?;
        if certs.is_empty() {
            return Err(fail(format!("{path} holds no certificate")));
        }
        let (_, ignored) = roots.add_parsable_certificates(certs);
        if ignored > 0 {
            tracing::warn!(variable, ignored, "some CA certificates could not be used");
        }
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    rustls::crypto::ring::default_provider().into()
}

/// A client configuration verifying server certificates as `mode` says.
pub fn client_config(
    mode: SslMode,
    roots: RootCertStore,
    variable: &'static str,
) -> Result<rustls::ClientConfig, ConfigError> {
    let fail = |reason: String| ConfigError { variable, reason };
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(format!("TLS setup failed ({e})")))?;
    let verified = || {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), Arc::clone(&provider))
            .build()
            .map_err(|e| fail(format!("TLS setup failed ({e})")))
    };
    let lenient = |chain| {
        Arc::new(Lenient {
            chain,
            provider: Arc::clone(&provider),
        })
    };
    let builder = match mode {
        SslMode::VerifyFull => builder.with_webpki_verifier(verified()?),
        SslMode::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(lenient(Some(verified()?))),
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(lenient(None)),
    };
    Ok(builder.with_no_client_auth())
}

/// The modes libpq verifies less than fully: `prefer` / `require` accept any
/// certificate (`chain` is `None`), `verify-ca` checks the chain but not the
/// host name. The handshake signatures are verified against the certificate
/// shown in every mode, so the session is bound to its key.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // The chain is checked before the name, so a name error means the chain was good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_builds_a_client_configuration() {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(SslMode::parse(mode.as_str()), Some(mode));
            client_config(mode, roots(None, "DATABASE_CA_FILE").unwrap(), "X").unwrap();
        }
        let e = roots(Some("/nonexistent/ca.pem"), "DATABASE_CA_FILE").unwrap_err();
        assert_eq!(e.variable, "DATABASE_CA_FILE");
    }
}
