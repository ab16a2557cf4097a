//! Why a warehouse call failed, and which failures are worth another attempt (SPEC 7a).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::causes::with_causes;
use crate::retry::{Class, Retryable};

/// Why the warehouse could not answer.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The server refused the query or could not be reached.
    #[error("ClickHouse query failed: {}", with_causes(.0))]
    Query(#[from] clickhouse::error::Error),
    /// No answer within the configured timeout.
    #[error("ClickHouse did not answer within {0:?}")]
    Timeout(Duration),
    /// The invocation's deadline stopped the query (time was kept to stamp the failure).
    #[error("ClickHouse query stopped after {0:?}: the invocation's time ran out")]
    OutOfTime(Duration),
    /// A variant code of the answer had no name or two (module doc); a retry reads it again.
    #[error(
        "ClickHouse answer: the variant of {identities} identities in bucket {bucket} \
         could not be named exactly (a variant key appeared during the query, or two \
         variant keys share a 64-bit hash)"
    )]
    UnresolvedVariant {
        /// Start of the row's bucket.
        bucket: DateTime<Utc>,
        /// Identities in the row.
        identities: u64,
    },
    /// The answer decoded, but into values the query cannot produce (not ClickHouse's answer).
    #[error("ClickHouse answer cannot be decoded: {0}")]
    Malformed(String),
    /// The events table is missing or lacks a usable `timestamp` column.
    #[error("ClickHouse table `{table}`: {reason}")]
    Table {
        /// The configured table name.
        table: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// ClickHouse server error codes (`ErrorCodes.cpp`) worth another attempt: the
/// server, or a replica behind a `Distributed` table, is overloaded, restarting
/// or unreachable. Every other code (unknown table or column 60/47/16, syntax
/// 62, access 192/193/497/516, limits such as 158/241, ...) is permanent.
pub const TRANSIENT_SERVER_CODES: &[(u32, &str)] = &[
    (3, "UNEXPECTED_END_OF_FILE"),
    // A replica behind a `Distributed` table died mid-query ("Attempt to read after eof").
    (32, "ATTEMPT_TO_READ_AFTER_EOF"),
    (202, "TOO_MANY_SIMULTANEOUS_QUERIES"),
    (203, "NO_FREE_CONNECTION"),
    (209, "SOCKET_TIMEOUT"),
    (210, "NETWORK_ERROR"),
    (236, "ABORTED"),
    (279, "ALL_CONNECTION_TRIES_FAILED"),
    (285, "TOO_FEW_LIVE_REPLICAS"),
    // Every replica of a shard lags more than max_replica_delay_for_distributed_queries.
    (369, "ALL_REPLICAS_ARE_STALE"),
    (394, "QUERY_WAS_CANCELLED"),
    (425, "SYSTEM_ERROR"),
    (999, "KEEPER_EXCEPTION"),
];

/// The query's own `max_execution_time` ran out: class `timeout`, not retried.
const TIMEOUT_EXCEEDED: u32 = 159;

/// The server's error code in a ClickHouse error text (`Code: 60. DB::Exception ...`).
fn server_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// True when a TLS error (a certificate the client does not trust) is behind `error`.
fn is_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        // io::Error skips its inner error in `source()` (and hyper-rustls wraps one
        // io::Error in another): look inside instead.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

impl Retryable for WarehouseError {
    fn class(&self) -> Class {
        use clickhouse::error::Error as Ch;
        match self {
            WarehouseError::Timeout(_) | WarehouseError::OutOfTime(_) => Class::Timeout,
            // A variant key that appeared during the query is read right on the next try.
            WarehouseError::UnresolvedVariant { .. } => Class::Transient,
            WarehouseError::Table { .. } | WarehouseError::Malformed(_) => Class::Permanent,
            WarehouseError::Query(error) => match error {
                // Refused, reset, cut short: the network, not the query. A certificate
                // the client does not trust stays untrusted, though.
                Ch::Network(inner) if is_tls_error(inner.as_ref()) => Class::Permanent,
                Ch::Network(_) => Class::Transient,
                Ch::TimedOut => Class::Timeout,
                Ch::BadResponse(message) => match server_code(message) {
                    Some(TIMEOUT_EXCEEDED) => Class::Timeout,
                    Some(code) if TRANSIENT_SERVER_CODES.iter().any(|(c, _)| *c == code) => {
                        Class::Transient
                    }
                    Some(_) => Class::Permanent,
                    // No server code: a proxy in front of ClickHouse answered. The crate
                    // gives the status line when the body is empty, else the body (a
                    // proxy's page names its status, e.g. `<title>503 Service ...`).
                    None if ["502 ", "503 ", "504 "].iter().any(|s| message.contains(s)) => {
                        Class::Transient
                    }
                    None => Class::Permanent,
                },
                // An answer that cannot be decoded will not decode better next time.
                _ => Class::Permanent,
            },
        }
    }

    fn out_of_time(allowed: Duration) -> Self {
        WarehouseError::OutOfTime(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified() {
        use clickhouse::error::Error as Ch;
        let class = |e: Ch| WarehouseError::Query(e).class();
        let bad = |m: &str| class(Ch::BadResponse(m.into()));
        assert_eq!(
            bad("Code: 202. DB::Exception: Too many simultaneous queries. Maximum: 100"),
            Class::Transient
        );
        assert_eq!(
            bad("Code: 210, e.displayText() = DB::NetException: Connection reset by peer"),
            Class::Transient
        );
        assert_eq!(
            bad("Code: 60, e.displayText() = DB::Exception: Table default.nope doesn't exist."),
            Class::Permanent
        );
        assert_eq!(
            bad("Code: 62. DB::Exception: Syntax error"),
            Class::Permanent
        );
        assert_eq!(
            bad("Code: 516. DB::Exception: default: Authentication failed"),
            Class::Permanent
        );
        assert_eq!(
            bad("Code: 159. DB::Exception: Timeout exceeded: elapsed 2.1 seconds"),
            Class::Timeout
        );
        assert_eq!(bad("503 Service Unavailable"), Class::Transient);
        assert_eq!(bad("502 Bad Gateway"), Class::Transient);
        assert_eq!(bad("504 Gateway Timeout"), Class::Transient);
        assert_eq!(bad("404 Not Found"), Class::Permanent);
        assert_eq!(
            bad("<html><head><title>503 Service Temporarily Unavailable</title></head></html>"),
            Class::Transient
        );
        assert_eq!(class(Ch::NotEnoughData), Class::Permanent);
        assert_eq!(
            class(Ch::Network("connection reset".into())),
            Class::Transient
        );
        // As hyper-rustls reports it: an io::Error around tokio-rustls' io::Error.
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(class(Ch::Network(Box::new(tls))), Class::Permanent);
        assert_eq!(
            WarehouseError::Timeout(Duration::from_secs(1)).class(),
            Class::Timeout
        );
        assert_eq!(
            WarehouseError::out_of_time(Duration::from_secs(1)).class(),
            Class::Timeout
        );
        for (code, name) in TRANSIENT_SERVER_CODES {
            assert_eq!(
                bad(&format!("Code: {code}. DB::Exception: ({name})")),
                Class::Transient
            );
        }
    }
}
