//! Every timestamp the function outputs is RFC 3339 in UTC with a `Z` suffix
//! (SPEC section 4). Fractions appear only when not zero.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// Formats `t` as `2026-06-01T00:00:00Z` (or `...00.250Z`).
pub fn format(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `#[serde(serialize_with = "rfc3339::serialize")]`
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

/// `#[serde(serialize_with = "rfc3339::serialize_option")]`
pub fn serialize_option<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn utc_with_z_and_fraction_only_when_needed() {
        let t = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        assert_eq!(format(&t), "2026-06-01T00:00:00Z");
        let t = t + chrono::TimeDelta::milliseconds(250);
        assert_eq!(format(&t), "2026-06-01T00:00:00.250Z");
    }
}
