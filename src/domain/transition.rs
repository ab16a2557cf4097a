//! Incremental arithmetic on a stored payload: identities leave their stored
//! place and take a new one (README "Incremental refresh").
//!
//! Pure: no I/O, so every move and every refusal is unit-tested here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::rfc3339;
use crate::domain::summary::{Count, Payload, Point, Timeseries};
use crate::domain::window::Granularity;

/// Where one identity is counted in a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityState {
    /// Not in the window.
    Absent,
    /// In `excluded_identities`.
    Quarantined,
    /// First exposed in `bucket` under `variant`.
    Counted {
        /// Start of the UTC bucket.
        bucket: DateTime<Utc>,
        /// The variant key.
        variant: String,
    },
}

/// `identities` identities moved from `old` (the stored payload) to `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Their state in the stored payload.
    pub old: IdentityState,
    /// Their state now.
    pub new: IdentityState,
    /// How many.
    pub identities: u64,
}

/// Why a stored payload cannot take an incremental change (the refresh computes in full).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The stored JSON is not a payload.
    #[error("the stored payload cannot be read: {0}")]
    Unreadable(String),
    /// Day buckets cannot be split into hours.
    #[error("the stored payload is bucketed by {stored}, the refresh by {wanted}")]
    Granularity {
        /// Granularity of the stored payload.
        stored: &'static str,
        /// Granularity of the refresh.
        wanted: &'static str,
    },
    /// An identity to remove is not in the stored payload (it does not match the data).
    #[error("the stored payload has fewer identities in {place} than leave it")]
    Missing {
        /// The bucket and variant, or `excluded_identities`.
        place: String,
    },
}

impl Payload {
    /// Reads a stored payload (the JSON this type serializes to).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ApplyError> {
        let bad = |what: &str| ApplyError::Unreadable(what.to_owned());
        let excluded_identities = value["excluded_identities"]
            .as_u64()
            .ok_or_else(|| bad("excluded_identities"))?;
        let granularity = match value["timeseries"]["granularity"].as_str() {
            Some("hour") => Granularity::Hour,
            Some("day") => Granularity::Day,
            _ => return Err(bad("timeseries.granularity")),
        };
        let mut points = Vec::new();
        for point in value["timeseries"]["points"]
            .as_array()
            .ok_or_else(|| bad("timeseries.points"))?
        {
            let bucket = point["bucket"]
                .as_str()
                .and_then(|b| DateTime::parse_from_rfc3339(b).ok())
                .ok_or_else(|| bad("a point's bucket"))?
                .with_timezone(&Utc);
            let new_identities = point["new_identities"]
                .as_object()
                .ok_or_else(|| bad("a point's new_identities"))?
                .iter()
                .map(|(variant, n)| Some((variant.clone(), n.as_u64()?)))
                .collect::<Option<BTreeMap<_, _>>>()
                .ok_or_else(|| bad("a point's counts"))?;
            points.push(Point {
                bucket,
                new_identities,
            });
        }
        Ok(Self {
            excluded_identities,
            timeseries: Timeseries {
                granularity,
                points,
            },
        })
    }

    /// The payload after `transitions`, at `granularity`: each identity leaves its
    /// stored place and takes its new one. Hourly points fold exactly into daily ones
    /// (a UTC day is 24 whole UTC hours). Fails rather than going below zero: that
    /// would mean the stored payload does not describe the data.
    pub fn apply(
        &self,
        granularity: Granularity,
        transitions: &[Transition],
    ) -> Result<Self, ApplyError> {
        let stored = self.timeseries.granularity;
        if stored == Granularity::Day && granularity == Granularity::Hour {
            return Err(ApplyError::Granularity {
                stored: stored.as_str(),
                wanted: granularity.as_str(),
            });
        }
        let width = i64::from(granularity.seconds());
        let rebucket = |t: DateTime<Utc>| {
            DateTime::from_timestamp(t.timestamp().div_euclid(width) * width, 0).unwrap_or(t)
        };
        let mut excluded = self.excluded_identities;
        let mut buckets: BTreeMap<DateTime<Utc>, BTreeMap<String, u64>> = BTreeMap::new();
        for point in &self.timeseries.points {
            let slot = buckets.entry(rebucket(point.bucket)).or_default();
            for (variant, n) in &point.new_identities {
                *slot.entry(variant.clone()).or_default() += n;
            }
        }
        for t in transitions {
            match &t.old {
                IdentityState::Absent => {}
                IdentityState::Quarantined => {
                    excluded =
                        excluded
                            .checked_sub(t.identities)
                            .ok_or_else(|| ApplyError::Missing {
                                place: "excluded_identities".into(),
                            })?;
                }
                IdentityState::Counted { bucket, variant } => {
                    let missing = || ApplyError::Missing {
                        place: format!("{} {variant:?}", rfc3339::format(bucket)),
                    };
                    let n = buckets
                        .get_mut(bucket)
                        .and_then(|b| b.get_mut(variant))
                        .ok_or_else(missing)?;
                    *n = n.checked_sub(t.identities).ok_or_else(missing)?;
                }
            }
        }
        let mut counts: Vec<Count> = buckets
            .into_iter()
            .flat_map(|(bucket, variants)| {
                variants
                    .into_iter()
                    .map(move |(variant, identities)| Count::FirstExposures {
                        bucket,
                        variant,
                        identities,
                    })
            })
            .collect();
        counts.push(Count::Quarantined {
            identities: excluded,
        });
        counts.extend(transitions.iter().filter_map(|t| match &t.new {
            IdentityState::Absent => None,
            IdentityState::Quarantined => Some(Count::Quarantined {
                identities: t.identities,
            }),
            IdentityState::Counted { bucket, variant } => Some(Count::FirstExposures {
                bucket: *bucket,
                variant: variant.clone(),
                identities: t.identities,
            }),
        }));
        Ok(Self::build(granularity, counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::summary::tests::{day, first};
    use serde_json::json;

    fn counted(d: u32, variant: &str) -> IdentityState {
        IdentityState::Counted {
            bucket: day(d),
            variant: variant.into(),
        }
    }

    fn moved(old: IdentityState, new: IdentityState, identities: u64) -> Transition {
        Transition {
            old,
            new,
            identities,
        }
    }

    #[test]
    fn stored_payloads_read_back() {
        let payload = Payload::build(
            Granularity::Day,
            [
                first(1, "control", 3),
                first(2, "$multiple", 1),
                Count::Quarantined { identities: 2 },
            ],
        );
        let json = serde_json::to_value(&payload).unwrap();
        assert_eq!(Payload::from_json(&json).unwrap(), payload);
        assert!(matches!(
            Payload::from_json(&json!({"excluded_identities": -1})),
            Err(ApplyError::Unreadable(_))
        ));
    }

    #[test]
    fn transitions_move_identities_between_places() {
        let stored = Payload::build(
            Granularity::Day,
            [
                first(1, "control", 3),
                first(2, "variant_a", 2),
                Count::Quarantined { identities: 1 },
            ],
        );
        let next = stored
            .apply(
                Granularity::Day,
                &[
                    // new identities
                    moved(IdentityState::Absent, counted(3, "control"), 4),
                    // returning: nothing changes
                    moved(counted(1, "control"), counted(1, "control"), 2),
                    // a counted identity shows a second variant
                    moved(counted(2, "variant_a"), IdentityState::Quarantined, 2),
                    // a late event earlier than the first exposure moves the bucket
                    moved(
                        counted(1, "control"),
                        IdentityState::Counted {
                            bucket: day(1) - chrono::TimeDelta::days(1),
                            variant: "control".into(),
                        },
                        1,
                    ),
                    // already quarantined stays so
                    moved(IdentityState::Quarantined, IdentityState::Quarantined, 1),
                ],
            )
            .unwrap();
        assert_eq!(
            serde_json::to_value(&next).unwrap(),
            json!({"excluded_identities": 3, "timeseries": {"granularity": "day", "points": [
                {"bucket": "2026-05-31T00:00:00Z", "new_identities": {"control": 1}},
                {"bucket": "2026-06-01T00:00:00Z", "new_identities": {"control": 2}},
                {"bucket": "2026-06-03T00:00:00Z", "new_identities": {"control": 4}}
            ]}})
        );
    }

    #[test]
    fn hourly_points_fold_into_days() {
        let hour = |h: i64| day(1) + chrono::TimeDelta::hours(h);
        let stored = Payload::build(
            Granularity::Hour,
            [
                Count::FirstExposures {
                    bucket: hour(1),
                    variant: "a".into(),
                    identities: 2,
                },
                Count::FirstExposures {
                    bucket: hour(23),
                    variant: "a".into(),
                    identities: 3,
                },
                Count::FirstExposures {
                    bucket: hour(24),
                    variant: "b".into(),
                    identities: 1,
                },
            ],
        );
        let next = stored
            .apply(
                Granularity::Day,
                &[moved(counted(1, "a"), IdentityState::Quarantined, 1)],
            )
            .unwrap();
        assert_eq!(
            next,
            Payload::build(
                Granularity::Day,
                [
                    first(1, "a", 4),
                    first(2, "b", 1),
                    Count::Quarantined { identities: 1 }
                ]
            )
        );
        assert!(matches!(
            next.apply(Granularity::Hour, &[]),
            Err(ApplyError::Granularity { .. })
        ));
    }

    #[test]
    fn removing_more_than_is_stored_fails() {
        let stored = Payload::build(Granularity::Day, [first(1, "a", 1)]);
        let err = stored
            .apply(
                Granularity::Day,
                &[moved(counted(1, "a"), IdentityState::Quarantined, 2)],
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("2026-06-01T00:00:00Z \"a\""),
            "{err}"
        );
        assert!(stored
            .apply(
                Granularity::Day,
                &[moved(counted(1, "b"), counted(1, "a"), 1)]
            )
            .is_err());
        assert!(stored
            .apply(
                Granularity::Day,
                &[moved(IdentityState::Quarantined, counted(1, "a"), 1)]
            )
            .is_err());
    }
}
