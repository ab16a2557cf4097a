//! Anytime-valid sequential sample-ratio-mismatch (SRM) test.
//!
//! The Dirichlet-multinomial test of Lindon & Malek, "Anytime-Valid Inference
//! for Multinomial Count Data" (2022), as implemented by Optimizely's
//! `ssrm-test` 0.1.5: prior Dirichlet(A·p) with A = 10000 around the null
//! probabilities p, Bayes factor of that Dirichlet-multinomial against
//! multinomial(p), p-value = min(1, min over points of 1/BF).
//!
//! ssrm-test sums per-point log predictive ratios; their multinomial
//! coefficients cancel and the sum telescopes, so with cumulative counts n
//! (N = Σn, α = A·p)
//!
//! ```text
//! log BF = lnΓ(A) − lnΓ(A+N) + Σ_v [lnΓ(α_v+n_v) − lnΓ(α_v)] − Σ_v n_v ln p_v
//! ```
//!
//! Evaluating that literally fails at the sizes we need: at N ≈ 1e9 each
//! lnΓ is ≈ 2e10, so float rounding alone leaves errors of several 1e-6 in
//! log BF, i.e. in the relative p-value (6e-6 on our fixture; ssrm-test's
//! per-point sums drift to 2e-5). Splitting
//! lnΓ(x) = (x−½)ln x − x + ½ln 2π + R(x) (R = Binet's remainder, ≈ 1/12x)
//! makes the huge parts cancel algebraically, leaving only terms of the
//! size of the answer:
//!
//! ```text
//! log BF = Σ_v X p_v f(u_v) − ½ ln(Π_v (x_v/α_v) · A/X)
//!        + Σ_v [R(x_v) − R(α_v)] − [R(X) − R(A)]
//! x_v = α_v + n_v,  X = A + N,  u_v = (n_v − N p_v) / (X p_v),
//! f(u) = (1+u) ln(1+u) − u   (≥ 0; ≈ u²/2 near the null)
//! ```
//!
//! The first sum is X·KL(x/X ‖ p); its error depends on rounding in
//! `n_v − N p_v` only through f'(u) = ln(1+u), which is tiny near the null,
//! and it does not rely on the f64 probabilities summing to exactly 1.
//! Against a 50-digit reference the log BF stays within 5e-11 absolute up
//! to 1e9 identities, most of it from p itself being rounded to f64.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::sample_ratio::{Status, MISMATCH_P_VALUE};
use crate::domain::rfc3339;

/// `sample_ratio.sequential`: the test over the payload's points, in bucket order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sequential {
    /// `mismatch` when `p_value` is below 0.001, else `ok`.
    pub status: Status,
    /// min(1, min over the points so far of 1/BF).
    pub p_value: f64,
    /// The bucket of the first point at which the running p-value fell below 0.001.
    #[serde(serialize_with = "rfc3339::serialize_option")]
    pub onset_bucket: Option<DateTime<Utc>>,
}

impl Sequential {
    /// The answer after the last point: `onset_bucket` is the bucket of the
    /// point at which `test.onset()` says the p-value first fell below 0.001.
    pub(super) fn of(test: &SequentialTest, onset_bucket: Option<DateTime<Utc>>) -> Self {
        let p_value = test.p_value();
        Self {
            status: if p_value < MISMATCH_P_VALUE {
                Status::Mismatch
            } else {
                Status::Ok
            },
            p_value,
            onset_bucket,
        }
    }
}

/// Prior concentration of ssrm-test (`dirichlet_concentration` default).
const CONCENTRATION: f64 = 10_000.0;

/// Level whose first crossing by the running p-value is reported as onset.
pub const ONSET_LEVEL: f64 = MISMATCH_P_VALUE;

/// Binet's remainder is evaluated by its asymptotic series from here up;
/// five terms then truncate below 2e-14.
const BINET_SERIES_MIN: f64 = 10.0;

/// Below this |u| the Taylor series of f is used: it avoids a log call and
/// the cancellation in (1+u)ln(1+u) − u; 11 terms reach < 1e-18 relative.
const SERIES_U_MAX: f64 = 1.0 / 32.0;

/// Renormalise the running product of ratios before it can overflow.
const PRODUCT_LIMIT: f64 = 1e150;

struct Arm {
    p: f64,
    inv_p: f64,
    alpha: f64,
    inv_alpha: f64,
    binet_alpha: f64,
    count: u64,
}

/// Running sequential SRM test over a series of points (buckets).
pub struct SequentialTest {
    arms: Vec<Arm>,
    total: u64,
    binet_a: f64,
    points: usize,
    log_bf: f64,
    max_log_bf: f64,
    onset: Option<usize>,
}

impl SequentialTest {
    /// `null_probabilities` are normalised by their sum, so raw allocation
    /// weights (e.g. `[1.0, 2.0, 7.0]`) work too. `None` for fewer than two
    /// arms, any weight that is not a finite positive number, or one so
    /// small relative to the rest that its prior parameter would be
    /// subnormal.
    pub fn new(null_probabilities: &[f64]) -> Option<Self> {
        if null_probabilities.len() < 2
            || null_probabilities
                .iter()
                .any(|w| !(w.is_finite() && *w > 0.0))
        {
            return None;
        }
        let sum: f64 = null_probabilities.iter().sum();
        if !sum.is_finite() {
            return None;
        }
        let mut arms = Vec::with_capacity(null_probabilities.len());
        for &w in null_probabilities {
            let p = w / sum;
            let alpha = CONCENTRATION * p;
            if !p.is_normal() || !alpha.is_normal() {
                return None;
            }
            arms.push(Arm {
                p,
                inv_p: 1.0 / p,
                alpha,
                inv_alpha: 1.0 / alpha,
                binet_alpha: binet(alpha),
                count: 0,
            });
        }
        Some(SequentialTest {
            arms,
            total: 0,
            binet_a: binet(CONCENTRATION),
            points: 0,
            log_bf: 0.0,
            max_log_bf: 0.0,
            onset: None,
        })
    }

    /// Adds one point: the counts of each arm in that bucket, in arm order
    /// (the caller builds them from the arms, so the lengths always agree).
    pub fn observe(&mut self, counts: &[u64]) {
        debug_assert_eq!(counts.len(), self.arms.len(), "one count per arm");
        let index = self.points;
        self.points += 1;
        let mut added = 0u64;
        for (arm, &c) in self.arms.iter_mut().zip(counts) {
            arm.count = arm.count.saturating_add(c);
            added = added.saturating_add(c);
        }
        if added == 0 {
            // Cumulative counts, hence BF and p-value, are unchanged.
            return;
        }
        self.total = self.total.saturating_add(added);
        self.log_bf = self.compute_log_bf();
        if self.log_bf > self.max_log_bf {
            self.max_log_bf = self.log_bf;
        }
        if self.onset.is_none() && self.p_value() < ONSET_LEVEL {
            self.onset = Some(index);
        }
    }

    /// Natural log of the Bayes factor for the cumulative counts so far
    /// (0 before any identity is seen).
    pub fn log_bayes_factor(&self) -> f64 {
        self.log_bf
    }

    /// Anytime-valid p-value: min(1, min over points so far of 1/BF).
    /// Underflows to 0 once the true value is below ~1e-308. Counts are
    /// held exactly, but cumulative totals beyond 2^53 lose precision.
    pub fn p_value(&self) -> f64 {
        if self.max_log_bf > 0.0 {
            (-self.max_log_bf).exp()
        } else {
            1.0
        }
    }

    /// Index (0-based, counting empty points) of the first point at which
    /// the running p-value fell below [`ONSET_LEVEL`].
    pub fn onset(&self) -> Option<usize> {
        self.onset
    }

    /// Number of points observed so far.
    pub fn points(&self) -> usize {
        self.points
    }

    fn compute_log_bf(&self) -> f64 {
        let n_tot = self.total as f64;
        let x_tot = CONCENTRATION + n_tot;
        let inv_x_tot = 1.0 / x_tot;
        let mut kl = 0.0;
        let mut binet_sum = 0.0;
        // Π(x_v/α_v)·A/X, folded into logs only when it gets large.
        let mut prod = CONCENTRATION / x_tot;
        let mut log_acc = 0.0;
        for arm in &self.arms {
            let n = arm.count as f64;
            let d = n - n_tot * arm.p;
            let u = d * inv_x_tot * arm.inv_p;
            kl += if u.abs() <= SERIES_U_MAX {
                // X p_v f(u) with X p_v u = d.
                d * u * f_series(u)
            } else if (-0.5..=1.0).contains(&u) {
                x_tot * arm.p * ((1.0 + u) * u.ln_1p() - u)
            } else {
                // Far from the null: direct form, no cancellation to fear.
                let xp = x_tot * arm.p;
                let x = arm.alpha + n;
                let ratio = x / xp;
                let ln_ratio = if ratio.is_finite() && ratio > 0.0 {
                    ratio.ln()
                } else {
                    x.ln() - xp.ln()
                };
                x * ln_ratio - d
            };
            if arm.count != 0 {
                let x = arm.alpha + n;
                binet_sum += binet(x) - arm.binet_alpha;
                let r = 1.0 + n * arm.inv_alpha;
                if r < PRODUCT_LIMIT {
                    prod *= r;
                    if prod > PRODUCT_LIMIT {
                        log_acc += prod.ln();
                        prod = 1.0;
                    }
                } else {
                    log_acc += x.ln() - arm.alpha.ln();
                }
            }
        }
        kl - 0.5 * (log_acc + prod.ln()) + binet_sum - (binet(x_tot) - self.binet_a)
    }
}

/// Runs the whole series; returns (final p-value, onset index), or `None`
/// when the probabilities are invalid.
#[cfg(test)]
fn sequential_p_value<I>(null_probabilities: &[f64], points: I) -> Option<(f64, Option<usize>)>
where
    I: IntoIterator,
    I::Item: AsRef<[u64]>,
{
    let mut test = SequentialTest::new(null_probabilities)?;
    for point in points {
        test.observe(point.as_ref());
    }
    Some((test.p_value(), test.onset()))
}

/// f(u)/u² = Σ_{k≥2} (−u)^(k−2) / (k(k−1)), for |u| ≤ SERIES_U_MAX.
/// Estrin's scheme: this sits on the hot path and a Horner chain of 10
/// dependent steps was its bottleneck.
#[inline]
fn f_series(u: f64) -> f64 {
    const C: [f64; 11] = [
        1.0 / 2.0,
        -1.0 / 6.0,
        1.0 / 12.0,
        -1.0 / 20.0,
        1.0 / 30.0,
        -1.0 / 42.0,
        1.0 / 56.0,
        -1.0 / 72.0,
        1.0 / 90.0,
        -1.0 / 110.0,
        1.0 / 132.0,
    ];
    let u2 = u * u;
    let u4 = u2 * u2;
    let p01 = C[0] + C[1] * u;
    let p23 = C[2] + C[3] * u;
    let p45 = C[4] + C[5] * u;
    let p67 = C[6] + C[7] * u;
    let p89 = C[8] + C[9] * u;
    let p0_3 = p01 + u2 * p23;
    let p4_7 = p45 + u2 * p67;
    let p8_10 = p89 + u2 * C[10];
    p0_3 + u4 * (p4_7 + u4 * p8_10)
}

/// (x − ½) ln x − x: the part of lnΓ whose differences cancel exactly.
#[inline]
fn stirling_main(x: f64) -> f64 {
    (x - 0.5) * x.ln() - x
}

/// Binet's remainder R(x) = lnΓ(x) − (x−½)ln x + x − ½ln 2π, for x > 0.
/// Small arguments are shifted up with lnΓ(x) = lnΓ(x+k) − ln Π(x+j).
fn binet(x: f64) -> f64 {
    if x >= BINET_SERIES_MIN {
        return binet_series(x);
    }
    let mut y = x;
    let mut prod = 1.0;
    while y < BINET_SERIES_MIN {
        prod *= y;
        y += 1.0;
    }
    binet_series(y) + stirling_main(y) - stirling_main(x) - prod.ln()
}

#[inline]
fn binet_series(x: f64) -> f64 {
    let z = 1.0 / x;
    let z2 = z * z;
    if x >= 1000.0 {
        // The dropped terms are below 1e-18 here; this is the hot case.
        return z * (1.0 / 12.0 - z2 * (1.0 / 360.0));
    }
    z * (1.0 / 12.0
        + z2 * (-1.0 / 360.0 + z2 * (1.0 / 1260.0 + z2 * (-1.0 / 1680.0 + z2 * (1.0 / 1188.0)))))
}

#[cfg(test)]
#[path = "sequential_tests.rs"]
mod tests;
