//! What every query shares: the filter on one experiment's rows, how window
//! bounds are written for the column's type, and how bucket starts come back.

use chrono::{DateTime, Utc};
use clickhouse::sql::Identifier;

use super::Warehouse;

/// The `event` value of exposures.
pub const EXPOSURE_EVENT: &str = "$flag_exposure";

/// How the events table stores `timestamp`; decides how window bounds are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampKind {
    /// `DateTime`: whole seconds.
    DateTime,
    /// `DateTime64(p)`: sub-second precision, compared in milliseconds.
    DateTime64,
}

impl TimestampKind {
    /// Reads a ClickHouse type name such as `DateTime64(3, 'UTC')`.
    pub fn from_type_name(type_name: &str) -> Option<Self> {
        let inner = type_name
            .strip_prefix("Nullable(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or(type_name);
        if inner.starts_with("DateTime64") {
            Some(Self::DateTime64)
        } else if inner.starts_with("DateTime") {
            Some(Self::DateTime)
        } else {
            None
        }
    }
}

/// What one experiment's exposures are filtered on.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `environment_key` of the experiment.
    pub environment_key: &'a str,
    /// `feature_name` of the experiment's flag.
    pub feature_name: &'a str,
}

/// The rows a refresh counts; bound twice, once per read of the events table.
/// `{bound}` turns a bound number into the column's type.
const FILTER: &str = "environment_key = ? AND event = ? AND feature_name = ?
          AND timestamp >= {bound} AND timestamp < {bound}
          AND identifier != ''";

/// A row's content hash: every column a refresh reads from a counted row goes
/// in, so a change of any of them changes the window's wrapping sum (the
/// fingerprint). `cityHash64` of several arguments exists on 18.16 and on
/// current servers and gives the same value on both.
const ROW_HASH: &str = "cityHash64(identifier, value, {epoch})";

/// A bucket start sent as Unix seconds.
pub(super) fn bucket_start(secs: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(secs), 0).unwrap_or_default()
}

/// The SQL text for the column's type: `{filter}` and `{delta}` are reads of the
/// experiment's rows, `{bound}` turns a bound number into the column's type,
/// `{row_hash}` is a row's 64-bit content hash (the fingerprint's term, README
/// "Incremental refresh"), `{epoch}` a row's timestamp as an unsigned number.
pub(super) fn render(template: &str, kind: TimestampKind) -> String {
    let (bound, epoch) = match kind {
        TimestampKind::DateTime => ("toDateTime(?)", "toUInt64(toUInt32(timestamp))"),
        TimestampKind::DateTime64 => (
            "fromUnixTimestamp64Milli(toInt64(?))",
            "toUInt64(toUnixTimestamp64Milli(timestamp))",
        ),
    };
    template
        .replace("{filter}", FILTER)
        .replace("{delta}", FILTER)
        .replace("{row_hash}", ROW_HASH)
        .replace("{bound}", bound)
        .replace("{epoch}", epoch)
}

/// Binds one window bound in the column's unit.
pub(super) fn bind_time(
    query: clickhouse::query::Query,
    kind: TimestampKind,
    t: DateTime<Utc>,
) -> clickhouse::query::Query {
    match kind {
        // A `DateTime` holds whole seconds, so `t >= x` is `t >= ceil(x)` and `t < y` is `t < ceil(y)`.
        TimestampKind::DateTime => query.bind(ceil_seconds(t)),
        TimestampKind::DateTime64 => query.bind(t.timestamp_millis()),
    }
}

fn ceil_seconds(t: DateTime<Utc>) -> i64 {
    let secs = t.timestamp();
    if t.timestamp_subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

impl Warehouse {
    /// Binds the table and the filter of one read of `[from, to)`.
    pub(super) fn bind_read(
        &self,
        query: clickhouse::query::Query,
        kind: TimestampKind,
        target: Target<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> clickhouse::query::Query {
        bind_filter(query.bind(Identifier(&self.table)), kind, target, from, to)
    }
}

/// Binds the filter of one read of `[from, to)` (its table bound already).
pub(super) fn bind_filter(
    query: clickhouse::query::Query,
    kind: TimestampKind,
    target: Target<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> clickhouse::query::Query {
    let query = query
        .bind(target.environment_key)
        .bind(EXPOSURE_EVENT)
        .bind(target.feature_name);
    bind_time(bind_time(query, kind, from), kind, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamp_kinds() {
        assert_eq!(
            TimestampKind::from_type_name("DateTime"),
            Some(TimestampKind::DateTime)
        );
        assert_eq!(
            TimestampKind::from_type_name("DateTime('Asia/Kolkata')"),
            Some(TimestampKind::DateTime)
        );
        assert_eq!(
            TimestampKind::from_type_name("DateTime64(3, 'UTC')"),
            Some(TimestampKind::DateTime64)
        );
        assert_eq!(
            TimestampKind::from_type_name("Nullable(DateTime64(3))"),
            Some(TimestampKind::DateTime64)
        );
        assert_eq!(TimestampKind::from_type_name("String"), None);
    }

    #[test]
    fn whole_second_bounds_round_up() {
        let t = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        assert_eq!(ceil_seconds(t), t.timestamp());
        assert_eq!(
            ceil_seconds(t + chrono::TimeDelta::milliseconds(1)),
            t.timestamp() + 1
        );
    }
}
