//! Exposure health: a sample ratio mismatch test and the multiple-exposure
//! share, computed from a stored payload and the experiment's current
//! `variant_weights` each time a snapshot is answered (never stored, so a
//! change of weights shows in the next answer without a refresh).
//!
//! Pure: no I/O, so every status, reason and boundary is unit-tested here,
//! and the p-value against a reference table made by SciPy.

mod findings;
mod sample_ratio;
mod sequential;
mod weights;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::Value;

pub use findings::{Code, Facts, Finding, Limits, Severity};
pub use sample_ratio::{
    chi_squared_sf, Reason, SampleRatio, Status, MIN_IDENTITIES, MISMATCH_P_VALUE,
};
pub use sequential::{Sequential, SequentialTest};
pub use weights::Weights;

/// Multiple exposure warns from this share of identities on...
pub const WARNING_SHARE_PERCENT: u64 = 1;
/// ...when at least this many identities are excluded.
pub const WARNING_MIN_EXCLUDED: u64 = 10;

/// Health of one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Does the split look like the intended one?
    pub sample_ratio: SampleRatio,
    /// How many identities saw more than one variant.
    pub multiple_exposure: MultipleExposure,
    /// What is wrong now, most severe first (SPEC 5.6).
    pub findings: Vec<Finding>,
}

/// Identities quarantined for seeing more than one variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MultipleExposure {
    /// As in the payload.
    pub excluded_identities: u64,
    /// Excluded over excluded plus first-exposed; 0 when both are 0.
    pub share: f64,
    /// Share of at least 1% and at least 10 identities excluded.
    pub warning: bool,
}

impl Health {
    /// Health of a stored payload (JSON as in docs/contract.md, section 4)
    /// under `weights`, with the findings of `facts` under `limits`. Counts
    /// that are not unsigned integers are ignored rather than failing a read.
    pub fn compute(
        payload: &Value,
        weights: Option<&Weights>,
        facts: &Facts<'_>,
        limits: &Limits,
    ) -> Self {
        let points = payload["timeseries"]["points"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        // One pass over the points feeds both tests: the totals per variant and,
        // per point, the arms' counts for the sequential test (SPEC 5.6).
        let arms = weights.map(Weights::arms).unwrap_or_default();
        let arm_names: Vec<&str> = arms.keys().copied().collect();
        let arm_weights: Vec<f64> = arms.values().copied().collect();
        let mut sequential = SequentialTest::new(&arm_weights);
        let mut in_point = vec![0_u64; arm_names.len()];
        let mut onset_bucket = None;
        // Variant name (borrowed), total, arm index; sorted by name. A point's
        // variants come sorted too (serde_json's map), so the next entry is
        // almost always the one: one string comparison per variant and point,
        // where lookups cost most of the time (binary search otherwise).
        let mut seen: Vec<(&str, u64, Option<usize>)> = Vec::new();
        for point in points {
            in_point.fill(0);
            let mut next = 0;
            for (variant, n) in point["new_identities"].as_object().into_iter().flatten() {
                let n = n.as_u64().unwrap_or(0);
                let at = if seen.get(next).is_some_and(|(v, ..)| *v == variant) {
                    next
                } else {
                    match seen.binary_search_by(|(v, ..)| (*v).cmp(variant.as_str())) {
                        Ok(at) => at,
                        Err(at) => {
                            let arm = arm_names.iter().position(|a| *a == variant);
                            seen.insert(at, (variant, 0, arm));
                            at
                        }
                    }
                };
                let (_, total, arm) = &mut seen[at];
                *total = total.saturating_add(n);
                if let Some(arm) = *arm {
                    in_point[arm] = n;
                }
                next = at + 1;
            }
            if let Some(test) = sequential.as_mut() {
                test.observe(&in_point);
                if onset_bucket.is_none() && test.onset().is_some() {
                    onset_bucket = Some(bucket(point).unwrap_or_default());
                }
            }
        }
        let sequential = sequential.map(|test| Sequential::of(&test, onset_bucket));
        let seen: BTreeMap<String, u64> = seen
            .into_iter()
            .map(|(v, n, _)| (v.to_owned(), n))
            .collect();
        let excluded = payload["excluded_identities"].as_u64().unwrap_or(0);
        let identities = seen.values().fold(0_u64, |s, n| s.saturating_add(*n));
        let sample_ratio = sample_ratio::compute(seen, identities, weights, sequential);
        let multiple_exposure = multiple_exposure(excluded, identities);
        let series = findings::Series {
            identities,
            excluded,
            last_bucket_end: last_bucket_end(payload, points),
        };
        let findings =
            findings::findings(facts, limits, &series, &sample_ratio, &multiple_exposure);
        Self {
            sample_ratio,
            multiple_exposure,
            findings,
        }
    }
}

/// A point's bucket start.
fn bucket(point: &Value) -> Option<DateTime<Utc>> {
    let start = DateTime::parse_from_rfc3339(point["bucket"].as_str()?).ok()?;
    Some(start.with_timezone(&Utc))
}

/// The end of the last point's bucket: its start plus the payload's granularity.
fn last_bucket_end(payload: &Value, points: &[Value]) -> Option<DateTime<Utc>> {
    let width = match payload["timeseries"]["granularity"].as_str()? {
        "hour" => TimeDelta::hours(1),
        "day" => TimeDelta::days(1),
        _ => return None,
    };
    Some(bucket(points.last()?)? + width)
}

fn multiple_exposure(excluded: u64, identities: u64) -> MultipleExposure {
    let all = u128::from(excluded) + u128::from(identities);
    let share = if all == 0 {
        0.0
    } else {
        excluded as f64 / all as f64
    };
    MultipleExposure {
        excluded_identities: excluded,
        share,
        // In integers, so that exactly 1% is exactly on the boundary.
        warning: excluded >= WARNING_MIN_EXCLUDED
            && u128::from(excluded) * 100 >= u128::from(WARNING_SHARE_PERCENT) * all,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn payload(points: Value, excluded: u64) -> Value {
        json!({"excluded_identities": excluded,
               "timeseries": {"granularity": "day", "points": points}})
    }

    pub(crate) fn one_point(counts: Value) -> Value {
        payload(
            json!([{"bucket": "2026-06-01T00:00:00Z", "new_identities": counts}]),
            0,
        )
    }

    pub(crate) fn weights(v: Value) -> Weights {
        Weights::from_json(Some(&v)).unwrap().unwrap()
    }

    /// Facts under which only the payload can raise a finding.
    pub(crate) fn quiet() -> Facts<'static> {
        Facts {
            status: "completed",
            started_at: None,
            as_of: None,
            last_error_at: None,
            now: DateTime::UNIX_EPOCH,
        }
    }

    pub(crate) fn health(payload: &Value, w: Option<Value>) -> Health {
        Health::compute(
            payload,
            w.map(weights).as_ref(),
            &quiet(),
            &Limits::default(),
        )
    }

    #[test]
    fn the_contract_example() {
        let p = payload(
            json!([
                {"bucket": "2026-06-01T00:00:00Z", "new_identities": {"control": 500, "variant_a": 470}},
                {"bucket": "2026-06-02T00:00:00Z", "new_identities": {"control": 20, "variant_a": 10}}
            ]),
            4,
        );
        let h = health(&p, Some(json!({"control": 50, "variant_a": 50})));
        let sequential = h.sample_ratio.sequential.as_ref().unwrap().p_value;
        assert_eq!(
            serde_json::to_value(&h).unwrap(),
            json!({
                "sample_ratio": {
                    "status": "ok", "reason": null,
                    "observed": {"control": 520, "variant_a": 480},
                    "expected": {"control": 500.0, "variant_a": 500.0},
                    "chi_squared": 1.6, "degrees_of_freedom": 1,
                    "p_value": h.sample_ratio.p_value.unwrap(),
                    "unexpected_variants": [],
                    "sequential": {"status": "ok", "p_value": sequential, "onset_bucket": null}
                },
                "multiple_exposure": {"excluded_identities": 4, "share": 4.0 / 1004.0, "warning": false},
                "findings": []
            })
        );
        // ssrm-test 0.1.5: sequential_p_values([[500, 470], [20, 10]], [0.5, 0.5])[-1].
        assert!(
            (sequential / 0.9752351257848276 - 1.0).abs() < 1e-9,
            "{sequential}"
        );
        let p_value = h.sample_ratio.p_value.unwrap();
        assert!(
            (p_value / 0.20590321073206466 - 1.0).abs() < 1e-12,
            "{p_value}"
        );
    }

    #[test]
    fn multiple_exposure_warning_boundaries() {
        let share = |excluded: u64, first: u64| multiple_exposure(excluded, first);
        assert_eq!(
            share(0, 0),
            MultipleExposure {
                excluded_identities: 0,
                share: 0.0,
                warning: false
            }
        );
        // Exactly 1% with exactly 10 excluded warns.
        let m = share(10, 990);
        assert_eq!((m.share, m.warning), (0.01, true));
        // Just under 1%, or 1% with fewer than 10 excluded, does not.
        assert!(!share(10, 991).warning);
        assert!(!share(9, 891).warning);
        assert_eq!(share(9, 891).share, 0.01);
        assert!(share(11, 0).warning);
        assert_eq!(share(11, 0).share, 1.0);
        // Through a payload: all first-exposed identities, any variant.
        let h = health(
            &payload(
                json!([{"bucket": "2026-06-01T00:00:00Z", "new_identities": {"a": 500, "zz": 490}}]),
                10,
            ),
            None,
        );
        assert_eq!(
            h.multiple_exposure,
            MultipleExposure {
                excluded_identities: 10,
                share: 0.01,
                warning: true
            }
        );
    }

    #[test]
    fn an_empty_or_odd_payload_does_not_fail() {
        let h = health(&payload(json!([]), 0), Some(json!({"a": 1, "b": 1})));
        assert_eq!(h.sample_ratio.reason, Some(Reason::TooFewIdentities));
        assert_eq!(
            h.sample_ratio.observed,
            BTreeMap::from([("a".into(), 0), ("b".into(), 0)])
        );
        let h = health(&json!({"unexpected": true}), None);
        assert_eq!(h.multiple_exposure.share, 0.0);
    }
}
