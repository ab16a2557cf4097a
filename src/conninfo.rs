//! libpq's connection-string `sslmode`, which `tokio-postgres` cannot parse in
//! full (module `tls` chooses the verification each mode means).

use std::str::FromStr;
use std::time::Duration;

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
    pub(crate) fn parse(value: &str) -> Option<Self> {
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

/// The connection string as `tokio-postgres` takes it, and libpq's `sslmode`.
/// The error names what is wrong, never the string (it may hold a password).
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, SslMode), String> {
    let (rest, mode) = split_sslmode(url)?;
    let mut pg = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| format!("not a PostgreSQL connection string ({e})"))?;
    pg.ssl_mode(mode.negotiation());
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    Ok((pg, mode))
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
}
