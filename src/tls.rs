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

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, certificate not verified (libpq's default).
    Prefer,
    /// TLS, certificate not verified.
    Require,
    /// TLS, certificate chain verified, host name not.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            // libpq's `allow` tries plain first; TLS-if-offered is the closest safe reading.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// The mode `tokio-postgres` is given: it decides only whether TLS is used.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            Self::Disable => Pg::Disable,
            Self::Prefer => Pg::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Pg::Require,
        }
    }

    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Reads `sslmode` from a connection string (URL or key/value form) and returns
/// the string with the mode removed, for `tokio-postgres` to parse, plus the
/// mode (`prefer` when none is named; the last one wins, as in libpq). The
/// error names the bad value only, never the rest of the string.
pub fn split_sslmode(conn: &str) -> Result<(String, SslMode), String> {
    let trimmed = conn.trim();
    let (rest, values) =
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            without_url_sslmode(trimmed)
        } else {
            without_key_value_sslmode(trimmed)
        };
    let mode = match values.last() {
        None => SslMode::Prefer,
        Some(value) => SslMode::parse(value).ok_or_else(|| {
            format!(
                "sslmode {value:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )
        })?,
    };
    Ok((rest, mode))
}

/// The URL without its `sslmode` parameters, and their values in order.
fn without_url_sslmode(url: &str) -> (String, Vec<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), Vec::new());
    };
    let mut values = Vec::new();
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("sslmode", value)) => {
                values.push(value.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, values)
}

/// The key/value string without its `sslmode` pairs, and their values in order.
fn without_key_value_sslmode(s: &str) -> (String, Vec<String>) {
    let params = key_value_params(s);
    let mut rest = s.to_owned();
    // Removed back to front so earlier ranges stay valid.
    for param in params.iter().rev().filter(|p| p.key == "sslmode") {
        rest.replace_range(param.whole.clone(), "");
    }
    let values = params
        .into_iter()
        .filter(|p| p.key == "sslmode")
        .map(|p| p.value)
        .collect();
    // Whitespace between pairs is free; inside a quoted value it must stay as it is.
    (rest.trim().to_owned(), values)
}

/// One `key=value` of a key/value connection string: its key, unquoted value,
/// and the byte range it takes.
struct Param {
    key: String,
    value: String,
    whole: std::ops::Range<usize>,
}

/// `host=h sslmode='verify-full'` with libpq's quoting (`'...'`, backslash escapes).
fn key_value_params(s: &str) -> Vec<Param> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let begin = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[begin..i].to_owned();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            break; // malformed: left for tokio-postgres to report
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        let quoted = i < bytes.len() && bytes[i] == b'\'';
        if quoted {
            i += 1;
        }
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if i + 1 < bytes.len() => {
                    value.push(bytes[i + 1]);
                    i += 2;
                    continue;
                }
                b'\'' if quoted => {
                    i += 1;
                    break;
                }
                c if !quoted && c.is_ascii_whitespace() => break,
                c => value.push(c),
            }
            i += 1;
        }
        out.push(Param {
            key,
            value: String::from_utf8_lossy(&value).into_owned(),
            whole: begin..i,
        });
    }
    out
}

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

    fn split(s: &str) -> (String, SslMode) {
        split_sslmode(s).unwrap()
    }

    #[test]
    fn url_form() {
        assert_eq!(
            split("postgres://u:p@h/db"),
            ("postgres://u:p@h/db".into(), SslMode::Prefer)
        );
        assert_eq!(
            split("postgres://u:p@h/db?sslmode=verify-full"),
            ("postgres://u:p@h/db".into(), SslMode::VerifyFull)
        );
        assert_eq!(
            split("postgresql://h/db?sslmode=verify-ca&connect_timeout=3"),
            (
                "postgresql://h/db?connect_timeout=3".into(),
                SslMode::VerifyCa
            )
        );
        assert_eq!(
            split("postgres://h/db?connect_timeout=3&sslmode=disable&application_name=x"),
            (
                "postgres://h/db?connect_timeout=3&application_name=x".into(),
                SslMode::Disable
            )
        );
        assert_eq!(
            split("postgres://h/db?sslmode=require&sslmode=verify-full").1,
            SslMode::VerifyFull
        );
    }

    #[test]
    fn key_value_form() {
        assert_eq!(
            split("host=h user=u password='a  b\\'c' sslmode=verify-full dbname=d"),
            (
                "host=h user=u password='a  b\\'c'  dbname=d".into(),
                SslMode::VerifyFull
            )
        );
        assert_eq!(
            split("host=h sslmode = 'verify-ca'"),
            ("host=h".into(), SslMode::VerifyCa)
        );
        assert_eq!(split("host=h sslmode=require").1, SslMode::Require);
        assert_eq!(split("host=h").1, SslMode::Prefer);
        // A value that merely contains the word is not the option.
        assert_eq!(
            split("host=h password=sslmode=disable"),
            ("host=h password=sslmode=disable".into(), SslMode::Prefer)
        );
    }

    #[test]
    fn rewritten_strings_parse_and_bad_modes_are_named() {
        for s in [
            "postgres://u:p@h:5/db?sslmode=verify-full&connect_timeout=3",
            "host=h port=5 user=u password='x y' sslmode=verify-ca",
        ] {
            let (rest, mode) = split(s);
            let mut config: tokio_postgres::Config = rest.parse().expect(&rest);
            config.ssl_mode(mode.negotiation());
            assert_eq!(
                config.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require
            );
        }
        let e = split_sslmode("postgres://u:hunter2@h/db?sslmode=verify_full").unwrap_err();
        assert!(e.contains("\"verify_full\""), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

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
