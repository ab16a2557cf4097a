//! The sample ratio test: Pearson's chi-squared goodness of fit of the
//! observed split to the weights (SPEC 5.5).

use std::collections::BTreeMap;

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::sequential::Sequential;
use super::Weights;

/// Fewer identities than this over all variants: too few for the test.
pub const MIN_IDENTITIES: u64 = 100;
/// A p-value below this is a mismatch.
pub const MISMATCH_P_VALUE: f64 = 0.001;

/// Verdict of the sample ratio test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The split is consistent with the weights.
    Ok,
    /// The split is unlikely under the weights, or unexpected variants were seen.
    Mismatch,
    /// The test was not run; `reason` says why.
    Skipped,
}

/// Why the test was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No usable `variant_weights`.
    NoWeights,
    /// Fewer than two variants with a positive weight.
    SingleArm,
    /// Fewer than [`MIN_IDENTITIES`] identities over all variants.
    TooFewIdentities,
}

/// Pearson's chi-squared goodness of fit of the observed split to the weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleRatio {
    /// `ok`, `mismatch` or `skipped`.
    pub status: Status,
    /// Set only when skipped.
    pub reason: Option<Reason>,
    /// First-exposed identities per variant seen, and 0 for arms never seen.
    pub observed: BTreeMap<String, u64>,
    /// Per arm: identities over the arms times the arm's share of the weights.
    pub expected: Option<BTreeMap<String, f64>>,
    /// The test statistic.
    pub chi_squared: Option<f64>,
    /// Arms minus one.
    pub degrees_of_freedom: Option<u64>,
    /// Upper tail of the chi-squared distribution at `chi_squared`.
    pub p_value: Option<f64>,
    /// Variants seen that are not arms (sorted); empty without weights.
    pub unexpected_variants: Vec<String>,
    /// The anytime-valid test (SPEC 5.6); `None` without weights or with one arm.
    pub sequential: Option<Sequential>,
}

/// The test over the variants `seen` (identities per variant) under `weights`.
pub(super) fn compute(
    seen: BTreeMap<String, u64>,
    identities: u64,
    weights: Option<&Weights>,
    sequential: Option<Sequential>,
) -> SampleRatio {
    let skipped = |reason, observed, unexpected_variants, sequential| SampleRatio {
        status: Status::Skipped,
        reason: Some(reason),
        observed,
        expected: None,
        chi_squared: None,
        degrees_of_freedom: None,
        p_value: None,
        unexpected_variants,
        sequential,
    };
    let Some(weights) = weights else {
        return skipped(Reason::NoWeights, seen, Vec::new(), None);
    };
    let arms = weights.arms();
    let unexpected: Vec<String> = seen
        .keys()
        .filter(|v| !arms.contains_key(v.as_str()))
        .cloned()
        .collect();
    let mut observed = seen;
    for arm in arms.keys() {
        observed.entry((*arm).to_owned()).or_insert(0);
    }
    if arms.len() < 2 {
        return skipped(Reason::SingleArm, observed, unexpected, None);
    }
    // Valid at any size, so kept below MIN_IDENTITIES too.
    if identities < MIN_IDENTITIES {
        return skipped(Reason::TooFewIdentities, observed, unexpected, sequential);
    }

    let in_arms = arms
        .keys()
        .fold(0_u64, |n, a| n.saturating_add(observed[*a])) as f64;
    let total_weight: f64 = arms.values().sum();
    let expected: BTreeMap<String, f64> = arms
        .iter()
        .map(|(arm, w)| ((*arm).to_owned(), in_arms * w / total_weight))
        .collect();
    // With no identity in any arm every expectation is 0 and so is every
    // observation: no evidence either way (the unexpected variants still decide).
    let chi_squared: f64 = expected
        .iter()
        .filter(|(_, e)| **e > 0.0)
        .map(|(arm, e)| (observed[arm] as f64 - e).powi(2) / e)
        .sum();
    let degrees_of_freedom = arms.len() as u64 - 1;
    let p_value = chi_squared_sf(chi_squared, degrees_of_freedom);
    let status = if p_value < MISMATCH_P_VALUE || !unexpected.is_empty() {
        Status::Mismatch
    } else {
        Status::Ok
    };
    SampleRatio {
        status,
        reason: None,
        observed,
        expected: Some(expected),
        chi_squared: Some(chi_squared),
        degrees_of_freedom: Some(degrees_of_freedom),
        p_value: Some(p_value),
        unexpected_variants: unexpected,
        sequential,
    }
}

/// Survival function (upper tail) of the chi-squared distribution with
/// `degrees_of_freedom` at `statistic`, i.e. the regularized upper incomplete
/// gamma function `Q(df/2, statistic/2)`, by `statrs`. Its accuracy is what the
/// contract asks (1e-9 relative for every p-value of at least 1e-300): the unit
/// tests hold it against a SciPy table (`tests/fixtures/chi2_sf.csv`). NaN for
/// zero degrees of freedom or a NaN statistic; never panics.
pub fn chi_squared_sf(statistic: f64, degrees_of_freedom: u64) -> f64 {
    match ChiSquared::new(degrees_of_freedom as f64) {
        Ok(distribution) if !statistic.is_nan() => distribution.sf(statistic),
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::health::tests::{health, one_point, payload};
    use serde_json::{json, Value};

    #[test]
    fn no_weights_skips_and_lists_nothing_unexpected() {
        let p = one_point(json!({"control": 600, "b": 400}));
        let h = health(&p, None);
        let s = &h.sample_ratio;
        assert_eq!(
            (s.status, s.reason),
            (Status::Skipped, Some(Reason::NoWeights))
        );
        assert_eq!(
            s.observed,
            BTreeMap::from([("b".into(), 400), ("control".into(), 600)])
        );
        assert_eq!(
            (
                s.expected.as_ref(),
                s.chi_squared,
                s.degrees_of_freedom,
                s.p_value
            ),
            (None, None, None, None)
        );
        assert!(s.unexpected_variants.is_empty());
        let v = serde_json::to_value(s).unwrap();
        for key in ["expected", "chi_squared", "degrees_of_freedom", "p_value"] {
            assert_eq!(v[key], Value::Null, "{key} is present and null");
        }
    }

    #[test]
    fn fewer_than_two_arms_is_single_arm() {
        let p = one_point(json!({"control": 600, "b": 400}));
        for w in [
            json!({}),
            json!({"control": 1}),
            json!({"control": 1, "b": 0}),
            json!({"control": 0, "b": 0}),
        ] {
            let s = health(&p, Some(w.clone())).sample_ratio;
            assert_eq!(
                (s.status, s.reason),
                (Status::Skipped, Some(Reason::SingleArm)),
                "{w}"
            );
            assert_eq!(s.p_value, None);
        }
        // Variants outside the arms are still named.
        let s = health(&p, Some(json!({"control": 1, "b": 0}))).sample_ratio;
        assert_eq!(s.unexpected_variants, vec!["b".to_owned()]);
    }

    #[test]
    fn too_few_identities_boundary_is_100_over_all_variants() {
        let w = Some(json!({"control": 1, "b": 1}));
        let s = health(&one_point(json!({"control": 50, "b": 49})), w.clone()).sample_ratio;
        assert_eq!(
            (s.status, s.reason),
            (Status::Skipped, Some(Reason::TooFewIdentities))
        );
        assert_eq!(s.chi_squared, None);
        let s = health(&one_point(json!({"control": 50, "b": 50})), w.clone()).sample_ratio;
        assert_eq!(
            (s.status, s.reason, s.p_value),
            (Status::Ok, None, Some(1.0))
        );
        // An unexpected variant counts towards the 100 and makes it a mismatch.
        let s = health(
            &one_point(json!({"control": 49, "b": 50, "c": 1})),
            w.clone(),
        )
        .sample_ratio;
        assert_eq!((s.status, s.reason), (Status::Mismatch, None));
        assert_eq!(s.expected.unwrap()["control"], 49.5);
        // Identities are summed over points, quarantined ones are not among them.
        let p = payload(
            json!([
                {"bucket": "2026-06-01T00:00:00Z", "new_identities": {"control": 30, "b": 30}},
                {"bucket": "2026-06-02T00:00:00Z", "new_identities": {"control": 20, "b": 19}}
            ]),
            50,
        );
        let s = health(&p, w).sample_ratio;
        assert_eq!(s.reason, Some(Reason::TooFewIdentities));
        assert_eq!(
            s.observed,
            BTreeMap::from([("b".into(), 49), ("control".into(), 50)])
        );
    }

    #[test]
    fn mismatch_by_p_value_at_the_threshold() {
        let w = Some(json!({"control": 1, "b": 1}));
        // 1000 identities: 551/449 gives chi2 = 10.404 (p ~ 0.00126), 552/448 gives 10.816 (p ~ 0.00101),
        // 553/447 gives 11.236 (p ~ 0.0008).
        let s = health(&one_point(json!({"control": 552, "b": 448})), w.clone()).sample_ratio;
        assert_eq!(s.status, Status::Ok, "{:?}", s.p_value);
        assert!(s.p_value.unwrap() > MISMATCH_P_VALUE);
        let s = health(&one_point(json!({"control": 553, "b": 447})), w).sample_ratio;
        assert_eq!(s.status, Status::Mismatch, "{:?}", s.p_value);
        assert!(s.p_value.unwrap() < MISMATCH_P_VALUE);
        assert!(s.unexpected_variants.is_empty());
        assert!((s.chi_squared.unwrap() - 11.236).abs() < 1e-9);
    }

    #[test]
    fn weighted_arm_never_observed_is_observed_as_zero() {
        let s = health(
            &one_point(json!({"control": 100, "b": 100})),
            Some(json!({"control": 1, "b": 1, "c": 1})),
        )
        .sample_ratio;
        assert_eq!(s.observed["c"], 0);
        assert_eq!(s.degrees_of_freedom, Some(2));
        let e = s.expected.unwrap();
        assert!((e["c"] - 200.0 / 3.0).abs() < 1e-9);
        assert!((s.chi_squared.unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(s.status, Status::Mismatch);
    }

    #[test]
    fn variants_outside_the_weights_are_unexpected_and_a_mismatch() {
        let s = health(
            &one_point(json!({"control": 500, "b": 500, "zz": 1, "$multiple": 2})),
            Some(json!({"control": 1, "b": 1, "retired": 0})),
        )
        .sample_ratio;
        assert_eq!(
            s.unexpected_variants,
            vec!["$multiple".to_owned(), "zz".to_owned()]
        );
        assert_eq!(s.status, Status::Mismatch);
        assert!(s.p_value.unwrap() > 0.5);
        // The zero-weight variant is not an arm: not observed as 0, not expected.
        assert!(!s.observed.contains_key("retired"));
        assert!(!s.expected.unwrap().contains_key("retired"));
        // N counts arms only.
        assert_eq!(s.chi_squared, Some(0.0));
    }

    #[test]
    fn only_unexpected_variants_observed() {
        let s = health(
            &one_point(json!({"other": 150})),
            Some(json!({"control": 1, "b": 1})),
        )
        .sample_ratio;
        assert_eq!(s.status, Status::Mismatch);
        assert_eq!(s.chi_squared, Some(0.0));
        assert_eq!(s.p_value, Some(1.0));
        assert_eq!(s.expected.unwrap()["b"], 0.0);
    }

    #[test]
    fn weights_on_any_scale_give_the_same_answer() {
        let p = one_point(json!({"control": 330, "b": 350, "c": 320}));
        let reference = health(&p, Some(json!({"control": 1, "b": 1, "c": 1})));
        for w in [
            json!({"control": 33.3, "b": 33.3, "c": 33.3}),
            json!({"control": 1e-300, "b": 1e-300, "c": 1e-300}),
            json!({"control": 1e308, "b": 1e308, "c": 1e308}),
            json!({"control": 2, "b": 2, "c": 2, "off": 0}),
        ] {
            let h = health(&p, Some(w.clone()));
            assert_eq!(h.sample_ratio.status, reference.sample_ratio.status, "{w}");
            let e = h.sample_ratio.expected.unwrap();
            for (arm, x) in reference.sample_ratio.expected.as_ref().unwrap() {
                assert!((e[arm] / x - 1.0).abs() < 1e-12, "{w}");
            }
            let (p1, p0) = (
                h.sample_ratio.p_value.unwrap(),
                reference.sample_ratio.p_value.unwrap(),
            );
            assert!((p1 / p0 - 1.0).abs() < 1e-12, "{w}");
        }
        // Unequal weights: 10/90.
        let s = health(
            &one_point(json!({"control": 100, "b": 900})),
            Some(json!({"control": 0.1, "b": 0.9})),
        )
        .sample_ratio;
        assert_eq!(s.chi_squared.map(|c| (c * 1e9).round()), Some(0.0));
        assert_eq!(s.status, Status::Ok);
    }

    #[test]
    fn survival_function_edges() {
        assert_eq!(chi_squared_sf(0.0, 1), 1.0);
        assert_eq!(chi_squared_sf(f64::INFINITY, 3), 0.0);
        assert!(chi_squared_sf(f64::NAN, 3).is_nan());
        assert!(chi_squared_sf(1.0, 0).is_nan());
        assert_eq!(chi_squared_sf(-1.0, 2), 1.0);
        // Closed forms: df 2 is exp(-x/2); df 1 at 1e-300-ish tails stays normal.
        for x in [0.5, 3.0, 40.0, 1300.0] {
            let exact = (-x / 2.0_f64).exp();
            assert!((chi_squared_sf(x, 2) / exact - 1.0).abs() < 1e-13, "{x}");
        }
        // Many arms: no overflow in Γ, a sensible tail.
        let p = chi_squared_sf(999.0, 999);
        assert!(p > 0.4 && p < 0.6, "{p}");
    }

    /// The reference table (SciPy, `scripts/chi2_reference.py`): the largest
    /// relative error over every p-value of at least 1e-300 must stay below 1e-9.
    #[test]
    fn survival_function_matches_the_reference_table() {
        let table = include_str!("../../../tests/fixtures/chi2_sf.csv");
        let mut worst = (0.0_f64, 0_u64, 0.0_f64);
        let mut checked = 0;
        let mut dfs = std::collections::BTreeSet::new();
        let (mut smallest_x, mut largest_x) = (f64::INFINITY, 0.0_f64);
        for line in table.lines().filter(|l| !l.starts_with('#')) {
            let mut fields = line.split(',');
            let mut next = || fields.next().expect("three columns");
            let df: u64 = next().parse().unwrap();
            let x: f64 = next().parse().unwrap();
            let reference: f64 = next().parse().unwrap();
            let ours = chi_squared_sf(x, df);
            smallest_x = smallest_x.min(x);
            largest_x = largest_x.max(x);
            dfs.insert(df);
            if reference >= 1e-300 {
                let error = (ours / reference - 1.0).abs();
                if error > worst.0 || error.is_nan() {
                    worst = (error, df, x);
                }
                checked += 1;
            } else {
                // Below the accuracy range: still tiny, never garbage.
                assert!(ours < 1e-290, "df {df} x {x}: {ours} vs {reference}");
            }
        }
        println!(
            "chi-squared survival function: {checked} reference values (df {:?}..={:?}, statistic {smallest_x:e}..{largest_x}), largest relative error {:e} (df {}, statistic {})",
            dfs.first(), dfs.last(), worst.0, worst.1, worst.2
        );
        assert_eq!(dfs.len(), 20);
        assert!(smallest_x <= 1e-6 && largest_x >= 2000.0);
        assert!(worst.0 < 1e-9, "largest relative error {worst:?}");
    }
}
