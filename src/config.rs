//! Configuration from environment variables (SPEC section 6).
//!
//! Everything is read and validated once, at start-up, so a bad setting fails
//! the cold start with a message naming the variable instead of failing every
//! invocation later.

use std::fmt;
use std::time::Duration;

use chrono::TimeDelta;

use crate::domain::health::Limits;

/// A value that must never be printed (passwords, connection strings).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is handed to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A setting that could not be used; names the variable, never its value.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self {
            variable,
            reason: reason.into(),
        }
    }
}

/// Every variable the function reads (the README documents each one).
pub const VARIABLES: &[&str] = &[
    "CLICKHOUSE_URL",
    "CLICKHOUSE_USER",
    "CLICKHOUSE_PASSWORD",
    "CLICKHOUSE_PASSWORD_SECRET_ARN",
    "CLICKHOUSE_DATABASE",
    "CLICKHOUSE_CA_FILE",
    "EXPOSURES_CLICKHOUSE_ATTEMPTS",
    "EXPOSURES_EVENTS_TABLE",
    "DATABASE_URL",
    "DATABASE_URL_SECRET_ARN",
    "DATABASE_CA_FILE",
    "EXPOSURES_EXPERIMENTS_RELATION",
    "EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS",
    "EXPOSURES_QUERY_TIMEOUT_SECONDS",
    "EXPOSURES_SWEEP_CONCURRENCY",
    "EXPOSURES_API_ALLOWED_ENVIRONMENTS",
    "EXPOSURES_NO_EXPOSURES_AFTER_HOURS",
    "EXPOSURES_STALLED_AFTER_HOURS",
    "EXPOSURES_STALE_AFTER_SECONDS",
    "EXPOSURES_METRICS_NAMESPACE",
    "EXPOSURES_METRICS_PER_EXPERIMENT",
];

/// Everything the function needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct Config {
    /// ClickHouse HTTP(S) endpoint.
    pub clickhouse_url: String,
    /// ClickHouse user.
    pub clickhouse_user: String,
    /// ClickHouse password.
    pub clickhouse_password: Secret,
    /// ClickHouse database holding the events table.
    pub clickhouse_database: String,
    /// Name of the exposure events table (or `Distributed` table).
    pub events_table: String,
    /// PostgreSQL connection string.
    pub database_url: Secret,
    /// Table or view with the experiments (optionally `schema.name`).
    pub experiments_relation: String,
    /// Minimum time between two accepted API refreshes of one experiment.
    pub refresh_min_interval: Duration,
    /// Upper bound on one ClickHouse query, enforced by the server and the client.
    pub query_timeout: Duration,
    /// When set, the API serves only experiments in these environments (others: 403).
    pub api_allowed_environments: Option<Vec<String>>,
    /// Refreshes a sweep runs at once.
    pub sweep_concurrency: usize,
    /// Extra CA certificates (PEM) trusted for PostgreSQL TLS, e.g. the RDS bundle.
    pub database_ca_file: Option<String>,
    /// Extra CA certificates (PEM) trusted for ClickHouse over `https://`.
    pub clickhouse_ca_file: Option<String>,
    /// Attempts a ClickHouse query gets when it fails transiently (1 = no retry).
    pub clickhouse_attempts: u32,
    /// When a condition becomes a finding (SPEC 5.6).
    pub limits: Limits,
    /// CloudWatch namespace of the metrics (SPEC 7b).
    pub metrics_namespace: String,
    /// Whether refresh metrics also carry the `ExperimentId` dimension.
    pub metrics_per_experiment: bool,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str, default: &str| -> String {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };

        let clickhouse_url = get("CLICKHOUSE_URL", "http://127.0.0.1:8123");
        if !(clickhouse_url.starts_with("http://") || clickhouse_url.starts_with("https://")) {
            return Err(ConfigError::new(
                "CLICKHOUSE_URL",
                "must be an http:// or https:// URL of the ClickHouse HTTP interface",
            ));
        }

        let database_url = get(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        // The parser's message never echoes the string, so the password stays out of it.
        crate::conninfo::parse(&database_url)
            .map_err(|reason| ConfigError::new("DATABASE_URL", reason))?;

        Ok(Self {
            clickhouse_url,
            clickhouse_user: get("CLICKHOUSE_USER", "default"),
            clickhouse_password: Secret::new(lookup("CLICKHOUSE_PASSWORD").unwrap_or_default()),
            clickhouse_database: identifier(
                "CLICKHOUSE_DATABASE",
                get("CLICKHOUSE_DATABASE", "default"),
            )?,
            events_table: identifier(
                "EXPOSURES_EVENTS_TABLE",
                get("EXPOSURES_EVENTS_TABLE", "events"),
            )?,
            database_url: Secret::new(database_url),
            experiments_relation: identifier(
                "EXPOSURES_EXPERIMENTS_RELATION",
                get("EXPOSURES_EXPERIMENTS_RELATION", "experiments"),
            )?,
            refresh_min_interval: Duration::from_secs(number(
                "EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS",
                &get("EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS", "300"),
                0..=31 * 86_400,
            )?),
            query_timeout: Duration::from_secs(number(
                "EXPOSURES_QUERY_TIMEOUT_SECONDS",
                &get("EXPOSURES_QUERY_TIMEOUT_SECONDS", "120"),
                1..=3_600,
            )?),
            sweep_concurrency: number(
                "EXPOSURES_SWEEP_CONCURRENCY",
                &get("EXPOSURES_SWEEP_CONCURRENCY", "4"),
                1..=64,
            )? as usize,
            database_ca_file: lookup("DATABASE_CA_FILE").filter(|v| !v.trim().is_empty()),
            clickhouse_ca_file: lookup("CLICKHOUSE_CA_FILE").filter(|v| !v.trim().is_empty()),
            clickhouse_attempts: number(
                "EXPOSURES_CLICKHOUSE_ATTEMPTS",
                &get("EXPOSURES_CLICKHOUSE_ATTEMPTS", "3"),
                1..=10,
            )? as u32,
            limits: Limits {
                no_exposures_after: TimeDelta::hours(number(
                    "EXPOSURES_NO_EXPOSURES_AFTER_HOURS",
                    &get("EXPOSURES_NO_EXPOSURES_AFTER_HOURS", "24"),
                    1..=24 * 366,
                )? as i64),
                stalled_after: TimeDelta::hours(number(
                    "EXPOSURES_STALLED_AFTER_HOURS",
                    &get("EXPOSURES_STALLED_AFTER_HOURS", "24"),
                    1..=24 * 366,
                )? as i64),
                stale_after: TimeDelta::seconds(number(
                    "EXPOSURES_STALE_AFTER_SECONDS",
                    &get("EXPOSURES_STALE_AFTER_SECONDS", "3600"),
                    1..=366 * 86_400,
                )? as i64),
            },
            metrics_namespace: namespace(get("EXPOSURES_METRICS_NAMESPACE", "Exposures"))?,
            metrics_per_experiment: match get("EXPOSURES_METRICS_PER_EXPERIMENT", "true")
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ConfigError::new(
                        "EXPOSURES_METRICS_PER_EXPERIMENT",
                        "must be true or false",
                    ))
                }
            },
            api_allowed_environments: lookup("EXPOSURES_API_ALLOWED_ENVIRONMENTS")
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.split(',')
                        .map(|e| e.trim().to_owned())
                        .filter(|e| !e.is_empty())
                        .collect()
                }),
        })
    }
}

/// Names are quoted wherever they are used; this only rejects what cannot be a name.
fn identifier(variable: &'static str, value: String) -> Result<String, ConfigError> {
    let bad = value.chars().any(|c| c.is_control() || c == '`')
        || value.split('.').any(|part| part.trim().is_empty());
    if bad {
        return Err(ConfigError::new(
            variable,
            "must be a table or database name (letters, digits, `_`, optionally `schema.name`)",
        ));
    }
    Ok(value)
}

/// A CloudWatch namespace: 1 to 255 of the characters CloudWatch allows
/// (ASCII letters and digits, `.`, `-`, `_`, `/`, `#`, `:` and space), not
/// beginning with `:` or the reserved `AWS/`.
fn namespace(value: String) -> Result<String, ConfigError> {
    let value = value.trim().to_owned();
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c);
    if value.is_empty()
        || value.len() > 255
        || !value.chars().all(allowed)
        || value.starts_with(':')
        || value.starts_with("AWS/")
    {
        return Err(ConfigError::new(
            "EXPOSURES_METRICS_NAMESPACE",
            "must be a CloudWatch namespace: 1 to 255 ASCII letters, digits, spaces or . - _ / # :, not starting with : or AWS/",
        ));
    }
    Ok(value)
}

/// Bounded, so that later arithmetic on times and counts cannot overflow.
fn number(
    variable: &'static str,
    value: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            variable,
            format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.clickhouse_url, "http://127.0.0.1:8123");
        assert_eq!(c.clickhouse_user, "default");
        assert_eq!(c.clickhouse_password.expose(), "");
        assert_eq!(c.clickhouse_database, "default");
        assert_eq!(c.events_table, "events");
        assert_eq!(
            c.database_url.expose(),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(c.experiments_relation, "experiments");
        assert_eq!(c.refresh_min_interval, Duration::from_secs(300));
        assert_eq!(c.sweep_concurrency, 4);
        assert_eq!(c.api_allowed_environments, None);
        assert_eq!(c.clickhouse_attempts, 3);
        assert_eq!(c.clickhouse_ca_file, None);
    }

    #[test]
    fn lists_and_counts() {
        let c = config(&[
            ("EXPOSURES_API_ALLOWED_ENVIRONMENTS", " prod, staging ,,"),
            ("EXPOSURES_SWEEP_CONCURRENCY", "8"),
        ])
        .unwrap();
        assert_eq!(
            c.api_allowed_environments,
            Some(vec!["prod".into(), "staging".into()])
        );
        assert_eq!(c.sweep_concurrency, 8);
        for (variable, value) in [
            ("EXPOSURES_SWEEP_CONCURRENCY", "0"),
            ("EXPOSURES_SWEEP_CONCURRENCY", "65"),
            ("EXPOSURES_QUERY_TIMEOUT_SECONDS", "0"),
            ("EXPOSURES_CLICKHOUSE_ATTEMPTS", "0"),
            ("EXPOSURES_CLICKHOUSE_ATTEMPTS", "11"),
            (
                "EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS",
                "18446744073709551615",
            ),
            ("EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS", "-1"),
        ] {
            let e = config(&[(variable, value)]).unwrap_err();
            assert_eq!(e.variable, variable);
            assert!(e.reason.starts_with("must be a whole number from"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_variable_and_hide_secrets() {
        let e = config(&[("EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS", "soon")]).unwrap_err();
        assert_eq!(e.variable, "EXPOSURES_REFRESH_MIN_INTERVAL_SECONDS");
        let e = config(&[("CLICKHOUSE_URL", "127.0.0.1:8123")]).unwrap_err();
        assert_eq!(e.variable, "CLICKHOUSE_URL");
        let e = config(&[("DATABASE_URL", "postgres://u:hunter2@[bad")]).unwrap_err();
        assert_eq!(e.variable, "DATABASE_URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = config(&[("EXPOSURES_EXPERIMENTS_RELATION", "public.")]).unwrap_err();
        assert_eq!(e.variable, "EXPOSURES_EXPERIMENTS_RELATION");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = config(&[
            ("CLICKHOUSE_PASSWORD", "hunter2"),
            ("DATABASE_URL", "postgres://u:hunter3@db/x"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
    }

    #[test]
    fn findings_limits_and_metrics_settings() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.limits,
            Limits {
                no_exposures_after: TimeDelta::hours(24),
                stalled_after: TimeDelta::hours(24),
                stale_after: TimeDelta::seconds(3600),
            }
        );
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.metrics_namespace, "Exposures");
        assert!(c.metrics_per_experiment);

        let c = config(&[
            ("EXPOSURES_NO_EXPOSURES_AFTER_HOURS", "48"),
            ("EXPOSURES_STALLED_AFTER_HOURS", " 6 "),
            ("EXPOSURES_STALE_AFTER_SECONDS", "1"),
            ("EXPOSURES_METRICS_NAMESPACE", "Team/Exposures prod"),
            ("EXPOSURES_METRICS_PER_EXPERIMENT", "False"),
        ])
        .unwrap();
        assert_eq!(c.limits.no_exposures_after, TimeDelta::hours(48));
        assert_eq!(c.limits.stalled_after, TimeDelta::hours(6));
        assert_eq!(c.limits.stale_after, TimeDelta::seconds(1));
        assert_eq!(c.metrics_namespace, "Team/Exposures prod");
        assert!(!c.metrics_per_experiment);
        assert!(
            config(&[("EXPOSURES_METRICS_PER_EXPERIMENT", "TRUE")])
                .unwrap()
                .metrics_per_experiment
        );
        // Blank means the default, as for every variable.
        assert_eq!(
            config(&[("EXPOSURES_METRICS_NAMESPACE", "  ")])
                .unwrap()
                .metrics_namespace,
            "Exposures"
        );

        // The thresholds are positive whole numbers.
        for variable in [
            "EXPOSURES_NO_EXPOSURES_AFTER_HOURS",
            "EXPOSURES_STALLED_AFTER_HOURS",
            "EXPOSURES_STALE_AFTER_SECONDS",
        ] {
            for value in ["0", "-1", "1.5", "24h", "99999999999"] {
                let e = config(&[(variable, value)]).unwrap_err();
                assert_eq!(e.variable, variable, "{value}");
                assert!(
                    e.reason.starts_with("must be a whole number from 1 to"),
                    "{e}"
                );
            }
        }
        for value in ["yes", "1", "on", "no"] {
            let e = config(&[("EXPOSURES_METRICS_PER_EXPERIMENT", value)]).unwrap_err();
            assert_eq!(e.variable, "EXPOSURES_METRICS_PER_EXPERIMENT", "{value}");
            assert!(e.to_string().contains("true or false"), "{e}");
        }
        let long = "N".repeat(256);
        for value in [
            "AWS/Lambda",
            ":Exposures",
            "Expo\u{e9}sures",
            "a\tb",
            "a*b",
            long.as_str(),
        ] {
            let e = config(&[("EXPOSURES_METRICS_NAMESPACE", value)]).unwrap_err();
            assert_eq!(e.variable, "EXPOSURES_METRICS_NAMESPACE", "{value}");
        }
        assert_eq!(
            config(&[("EXPOSURES_METRICS_NAMESPACE", &"N".repeat(255))])
                .unwrap()
                .metrics_namespace
                .len(),
            255
        );
    }
}
