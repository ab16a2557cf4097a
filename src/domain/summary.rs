//! Building the payload (SPEC section 4) from the warehouse's per-bucket counts.
//!
//! Pure: no I/O, so every rule about sparseness and ordering is unit-tested here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::rfc3339;
use crate::domain::window::Granularity;

/// One row of the exposures query: identities whose first in-window exposure
/// fell in `bucket` under `variant`, or the quarantined identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Count {
    /// `identities` first saw `variant` in the bucket starting at `bucket`.
    FirstExposures {
        /// Start of the UTC bucket.
        bucket: DateTime<Utc>,
        /// The variant key, verbatim.
        variant: String,
        /// Number of identities.
        identities: u64,
    },
    /// `identities` saw more than one variant inside the window.
    Quarantined {
        /// Number of identities.
        identities: u64,
    },
}

/// The stored snapshot payload: increments only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payload {
    /// Identities seen with more than one variant, counted nowhere else.
    pub excluded_identities: u64,
    /// New identities per bucket and variant.
    pub timeseries: Timeseries,
}

/// Sparse series of first exposures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeseries {
    /// The bucket width used by the query.
    pub granularity: Granularity,
    /// Buckets with at least one first exposure, ascending.
    pub points: Vec<Point>,
}

/// One bucket of the series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Point {
    /// Start of the UTC hour or day.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub bucket: DateTime<Utc>,
    /// New identities per variant; variants without any are absent.
    pub new_identities: BTreeMap<String, u64>,
}

impl Payload {
    /// Folds the query's rows into a payload. Rows may come in any order and
    /// may repeat a (bucket, variant) pair; zero counts are dropped.
    pub fn build(granularity: Granularity, counts: impl IntoIterator<Item = Count>) -> Self {
        let mut excluded_identities = 0;
        let mut buckets: BTreeMap<DateTime<Utc>, BTreeMap<String, u64>> = BTreeMap::new();
        for count in counts {
            match count {
                Count::Quarantined { identities } => excluded_identities += identities,
                Count::FirstExposures { identities: 0, .. } => {}
                Count::FirstExposures {
                    bucket,
                    variant,
                    identities,
                } => {
                    *buckets
                        .entry(bucket)
                        .or_default()
                        .entry(variant)
                        .or_default() += identities;
                }
            }
        }
        Self {
            excluded_identities,
            timeseries: Timeseries {
                granularity,
                points: buckets
                    .into_iter()
                    .map(|(bucket, new_identities)| Point {
                        bucket,
                        new_identities,
                    })
                    .collect(),
            },
        }
    }

    /// Distinct identities counted in the series (not the quarantined ones).
    pub fn identities(&self) -> u64 {
        self.timeseries
            .points
            .iter()
            .flat_map(|p| p.new_identities.values())
            .sum()
    }
}

/// Identities counted in a stored payload's points (0 for anything that is not one).
pub fn identities_in(payload: &serde_json::Value) -> u64 {
    payload["timeseries"]["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["new_identities"].as_object())
        .flat_map(|counts| counts.values())
        .fold(0, |sum, n| sum.saturating_add(n.as_u64().unwrap_or(0)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    pub(crate) fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, d, 0, 0, 0).unwrap()
    }

    pub(crate) fn first(d: u32, variant: &str, identities: u64) -> Count {
        Count::FirstExposures {
            bucket: day(d),
            variant: variant.into(),
            identities,
        }
    }

    #[test]
    fn builds_the_contract_example() {
        let payload = Payload::build(
            Granularity::Day,
            [
                first(3, "variant_a", 12),
                Count::Quarantined { identities: 4 },
                first(1, "variant_a", 295),
                first(1, "control", 310),
            ],
        );
        assert_eq!(
            serde_json::to_value(&payload).unwrap(),
            json!({
                "excluded_identities": 4,
                "timeseries": {"granularity": "day", "points": [
                    {"bucket": "2026-06-01T00:00:00Z", "new_identities": {"control": 310, "variant_a": 295}},
                    {"bucket": "2026-06-03T00:00:00Z", "new_identities": {"variant_a": 12}}
                ]}
            })
        );
        assert_eq!(payload.identities(), 617);
    }

    #[test]
    fn empty_input_is_an_empty_series() {
        let payload = Payload::build(Granularity::Hour, []);
        assert_eq!(
            serde_json::to_value(&payload).unwrap(),
            json!({"excluded_identities": 0, "timeseries": {"granularity": "hour", "points": []}})
        );
    }

    #[test]
    fn zero_counts_are_sparse_and_repeats_add_up() {
        let payload = Payload::build(
            Granularity::Day,
            [
                first(2, "a", 0),
                first(1, "a", 1),
                first(1, "a", 2),
                first(1, "b", 0),
            ],
        );
        assert_eq!(payload.timeseries.points.len(), 1);
        assert_eq!(
            payload.timeseries.points[0].new_identities,
            BTreeMap::from([("a".into(), 3)])
        );
    }

    #[test]
    fn no_variant_name_is_reserved() {
        let payload = Payload::build(
            Granularity::Day,
            [
                first(1, "$multiple", 2),
                first(1, "", 1),
                Count::Quarantined { identities: 1 },
            ],
        );
        let v = serde_json::to_value(&payload).unwrap();
        assert_eq!(
            v["timeseries"]["points"][0]["new_identities"],
            json!({"": 1, "$multiple": 2})
        );
        assert_eq!(v["excluded_identities"], 1);
    }
}
